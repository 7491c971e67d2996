//! A strict parser of the Prometheus text exposition format (0.0.4), to
//! check that `/metrics` is what Prometheus accepts: valid names, quoted
//! and escaped labels, float values, a TYPE before every family's samples,
//! and histograms with cumulative buckets ending in `+Inf` = `_count`.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};

/// Prometheus's own checker: `PROMTOOL`, or `promtool` on the PATH. None
/// (the caller skips its check) outside CI, which installs it.
pub fn promtool() -> Option<String> {
    let found = std::env::var("PROMTOOL").ok().or_else(|| {
        let on_path = std::env::var("PATH")
            .ok()?
            .split(':')
            .any(|dir| std::path::Path::new(dir).join("promtool").is_file());
        on_path.then(|| "promtool".to_owned())
    });
    if found.is_none() {
        assert!(
            !super::under_ci(),
            "CI=true but promtool is missing: .ci/run installs it"
        );
        eprintln!("skipping: promtool is not installed (.ci/run installs it)");
    }
    found
}

/// Asserts that `promtool check metrics` accepts `text`, the page at `path`.
pub async fn promtool_accepts(promtool: &str, path: &str, text: String) {
    let promtool = promtool.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        child.wait_with_output().expect("promtool output")
    })
    .await
    .expect("promtool task");
    assert!(
        out.status.success(),
        "promtool check metrics {path}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t => t.parse().map_err(|_| format!("bad value '{t}'")),
    }
}

fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim();
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name '{name}'"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label '{name}' twice"));
        }
        rest = rest[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// The family a sample name belongs to, given the declared families.
fn family_of<'a>(name: &'a str, families: &HashMap<String, Family>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families
                .get(base)
                .is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
            {
                return Some(base);
            }
        }
    }
    None
}

pub fn parse(text: &str) -> Result<HashMap<String, Family>, String> {
    let mut families: HashMap<String, Family> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("TYPE without name".into()))?;
                    let kind = parts
                        .next()
                        .ok_or_else(|| err("TYPE without kind".into()))?;
                    if !valid_name(name) {
                        return Err(err("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("bad type '{kind}'")));
                    }
                    let f = families.entry(name.to_owned()).or_default();
                    if !f.kind.is_empty() || !f.samples.is_empty() {
                        return Err(err("TYPE repeated or after samples".into()));
                    }
                    f.kind = kind.to_owned();
                }
                Some("HELP") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("HELP without name".into()))?;
                    let f = families.entry(name.to_owned()).or_default();
                    f.help = Some(parts.next().unwrap_or("").to_owned());
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("sample without value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = family_of(name, &families)
            .ok_or_else(|| err("sample of a family with no TYPE".into()))?
            .to_owned();
        let f = families.get_mut(&family).expect("family");
        if f.kind.is_empty() {
            return Err(err("sample before its TYPE".into()));
        }
        if f.kind == "counter" && !family.ends_with("_total") {
            return Err(err("counter name without _total".into()));
        }
        f.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("HELP without TYPE for {name}"));
        }
        if f.kind == "histogram" {
            let buckets: Vec<&Sample> = f
                .samples
                .iter()
                .filter(|s| s.name.ends_with("_bucket"))
                .collect();
            let mut last = 0.0;
            let mut last_le = f64::NEG_INFINITY;
            for b in &buckets {
                let le = parse_value(
                    b.labels
                        .get("le")
                        .ok_or(format!("{name}: bucket without le"))?,
                )?;
                if le <= last_le || b.value < last {
                    return Err(format!("{name}: buckets not cumulative and sorted"));
                }
                last_le = le;
                last = b.value;
            }
            if last_le != f64::INFINITY {
                return Err(format!("{name}: no +Inf bucket"));
            }
            let count = f
                .samples
                .iter()
                .find(|s| s.name == format!("{name}_count"))
                .ok_or(format!("{name}: no _count"))?;
            if count.value != last {
                return Err(format!("{name}: +Inf bucket != _count"));
            }
            if !f.samples.iter().any(|s| s.name == format!("{name}_sum")) {
                return Err(format!("{name}: no _sum"));
            }
        }
    }
    Ok(families)
}
