//! `antre-bench compare`: one table out of the JSON reports of two brokers.
//!
//! Reports are paired by `label`; each row is one headline metric of one
//! scenario, and the last column says how many times better the second
//! broker is (higher rate, or lower CPU, latency, memory or recovery time).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::run::Report;
use crate::stats::human_rate;

/// Whether a higher value of `metric` is better.
fn higher_is_better(metric: &str) -> bool {
    metric.ends_with("rate")
}

fn unit(metric: &str) -> &'static str {
    match metric {
        "rate" | "publish_rate" | "deliver_rate" => "msg/s",
        "cpu" => "broker CPU µs/msg",
        "p50" => "p50 latency µs",
        "p99" => "p99 latency µs",
        "p999" => "p99.9 latency µs",
        "rss" => "broker RSS MiB",
        "recovery" => "recovery s",
        _ => "?",
    }
}

fn describe(metric: &str) -> String {
    match metric {
        "publish_rate" => "publish msg/s".into(),
        "deliver_rate" => "deliver msg/s".into(),
        m => unit(m).into(),
    }
}

fn show(metric: &str, v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if higher_is_better(metric) => human_rate(v),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// Reads every `*.json` report in `dir`.
pub fn load_dir(dir: &Path) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p)?;
        let r: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a report", p.display()))?;
        reports.push(r);
    }
    Ok(reports)
}

/// Renders the comparison of broker `a` against broker `b` as a Markdown table.
pub fn table(reports: &[Report], a: &str, b: &str) -> String {
    // label -> broker -> report, keeping the order labels first appear in.
    let mut order: Vec<&str> = Vec::new();
    let mut by: BTreeMap<(&str, &str), &Report> = BTreeMap::new();
    for r in reports {
        if !order.contains(&r.label.as_str()) {
            order.push(&r.label);
        }
        by.insert((&r.label, &r.broker), r);
    }
    let mut out =
        format!("| scenario | metric | {a} | {b} | {b} advantage |\n|---|---|---:|---:|---:|\n");
    for label in order {
        let ra = by.get(&(label, a));
        let rb = by.get(&(label, b));
        let headline = ra.or(rb).map(|r| r.headline.clone()).unwrap_or_default();
        for m in &headline {
            let va = ra.and_then(|r| r.metric(m));
            let vb = rb.and_then(|r| r.metric(m));
            let ratio = match (va, vb) {
                (Some(x), Some(y)) if x > 0.0 && y > 0.0 => {
                    let q = if higher_is_better(m) { y / x } else { x / y };
                    format!("{q:.2}×")
                }
                _ => "—".into(),
            };
            out.push_str(&format!(
                "| {label} | {} | {} | {} | {ratio} |\n",
                describe(m),
                show(m, va),
                show(m, vb)
            ));
        }
        for (name, r) in [(a, ra), (b, rb)] {
            for e in r.map(|r| r.errors.as_slice()).unwrap_or_default() {
                out.push_str(&format!("| {label} | error ({name}) | {e} | | |\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, broker: &str, rate: f64, cpu: f64) -> Report {
        Report {
            label: label.into(),
            broker: broker.into(),
            headline: vec!["rate".into(), "cpu".into()],
            delivered: 1,
            deliver_rate: rate,
            broker_cpu_us_per_msg: Some(cpu),
            ..Default::default()
        }
    }

    #[test]
    fn ratios_favour_the_better_broker() {
        let rs = vec![
            report("s1", "rabbitmq", 50_000.0, 20.0),
            report("s1", "antre", 200_000.0, 5.0),
            report("s2", "rabbitmq", 10_000.0, 40.0),
        ];
        let t = table(&rs, "rabbitmq", "antre");
        assert!(t.contains("| s1 | msg/s | 50.0k | 200.0k | 4.00× |"), "{t}");
        assert!(
            t.contains("| s1 | broker CPU µs/msg | 20.00 | 5.00 | 4.00× |"),
            "{t}"
        );
        assert!(t.contains("| s2 | msg/s | 10.0k | — | — |"), "{t}");
    }
}
