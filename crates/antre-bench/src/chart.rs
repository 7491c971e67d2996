//! A self-contained SVG chart of a run: rates on top, latency below.
//!
//! Hand-written SVG rather than a plotting crate: two panels of polylines
//! need no dependency, and the file opens in any browser without scripts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::run::Report;
use crate::stats::{human_rate, Sample};

const W: f64 = 900.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

type Series<'a> = (&'a str, &'a str, &'a dyn Fn(&Sample) -> f64);

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn panel(
    svg: &mut String,
    r: &Report,
    y0: f64,
    title: &str,
    series: &[Series],
    fmt: &dyn Fn(f64) -> String,
) {
    let samples = &r.samples;
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1e-3);
    let v_max = nice_max(
        samples
            .iter()
            .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
            .fold(0.0, f64::max),
    );
    let plot_w = W - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| y0 + PANEL_H - v / v_max * PANEL_H;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{title}</text>"#,
        y0 - 8.0
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let v = v_max * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" font-size="11">{}</text>"##,
            W - RIGHT,
            LEFT - 5.0,
            y(v) + 4.0,
            fmt(v),
            yy = y(v)
        );
    }
    for i in 0..=5 {
        let t = t_max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">{t:.1}s</text>"#,
            x(t),
            y0 + PANEL_H + 14.0
        );
    }
    for (i, (name, color, f)) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), y(f(s))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let lx = LEFT + 10.0 + 150.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}" font-size="12">{name}</text>"#,
            y0 + 10.0,
            lx + 16.0,
            y0 + 15.0
        );
    }
}

/// Renders the chart of `r` as an SVG document.
pub fn svg(r: &Report) -> String {
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif">"#
    );
    svg.push('\n');
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="14">{} on {}: {} msg/s published, {} msg/s delivered</text>"#,
        escape(&r.label),
        escape(&r.broker),
        human_rate(r.publish_rate),
        human_rate(r.deliver_rate)
    );
    let rates: [Series; 3] = [
        ("published/s", "#1f77b4", &|s: &Sample| s.publish_rate),
        ("confirmed/s", "#2ca02c", &|s: &Sample| s.confirm_rate),
        ("delivered/s", "#d62728", &|s: &Sample| s.deliver_rate),
    ];
    panel(
        &mut svg,
        r,
        TOP + 10.0,
        "messages per second",
        &rates,
        &|v| human_rate(v),
    );
    let lat: [Series; 2] = [
        ("p50 latency", "#9467bd", &|s: &Sample| s.p50_us / 1e3),
        ("p99 latency", "#ff7f0e", &|s: &Sample| s.p99_us / 1e3),
    ];
    panel(
        &mut svg,
        r,
        TOP + 10.0 + PANEL_H + GAP,
        "end-to-end latency (ms)",
        &lat,
        &|v| format!("{v:.2}"),
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the chart to `path`: bare SVG, or an HTML page around it when the
/// name ends in `.html`.
pub fn write(path: &Path, r: &Report) -> Result<()> {
    let svg = svg(r);
    let doc = if path.extension().is_some_and(|e| e == "html") {
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{}</title><body>{svg}</body>\n",
            escape(&r.label)
        )
    } else {
        svg
    };
    std::fs::write(path, doc)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_line_per_series() {
        let r = Report {
            label: "a<b".into(),
            samples: (1..=5)
                .map(|i| Sample {
                    t: f64::from(i),
                    publish_rate: 1000.0 * f64::from(i),
                    deliver_rate: 900.0,
                    p50_us: 100.0,
                    p99_us: 900.0,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let s = svg(&r);
        assert_eq!(s.matches("<polyline").count(), 5);
        assert!(s.contains("a&lt;b"));
        assert!(s.ends_with("</svg>\n"));
        assert_eq!(nice_max(4300.0), 5000.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
