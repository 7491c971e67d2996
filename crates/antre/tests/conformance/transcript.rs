//! Transcripts (what a server answered, per scenario) and the deviations
//! file, and the comparison between a recorded transcript and antre's run.
//!
//! Order is compared per channel: within a channel the server's order is
//! the protocol's, across channels (each a separate process in RabbitMQ) it
//! is a race, so it is not part of the verdict.

use std::path::Path;

/// A group's recorded replies: `== name` starts a scenario, each following
/// line is one event.
#[derive(Debug, Default)]
pub struct Transcript {
    pub server: Option<String>,
    pub scenarios: Vec<(String, Vec<String>)>,
}

const HEADER: &str = "# Recorded by scripts/record-conformance.sh against RabbitMQ";

impl Transcript {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{HEADER} {}; do not edit.\n",
            self.server.as_deref().unwrap_or("(unknown version)")
        );
        for (name, events) in &self.scenarios {
            s.push_str(&format!("\n== {name}\n"));
            for e in events {
                s.push_str(e);
                s.push('\n');
            }
        }
        s
    }

    pub fn read(path: &Path) -> Transcript {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Transcript::parse(&text)
    }

    pub fn parse(text: &str) -> Transcript {
        let mut t = Transcript::default();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("== ") {
                t.scenarios.push((name.trim().to_owned(), Vec::new()));
            } else if let Some(rest) = line.strip_prefix(HEADER) {
                t.server = Some(rest.trim().trim_end_matches("; do not edit.").to_owned());
            } else if let Some((_, events)) = t.scenarios.last_mut() {
                if !line.trim().is_empty() {
                    events.push(line.to_owned());
                }
            }
        }
        t
    }

    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.scenarios
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.as_slice())
    }
}

/// One entry of deviations.toml: either antre's whole transcript for one
/// scenario (`antre`), or the fields that may differ in several
/// (`ignore`, e.g. `reply_text`): everything else must still match.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// `group/name` of each scenario it covers.
    pub scenarios: Vec<String>,
    /// Why antre differs on purpose.
    pub why: String,
    /// What antre answers instead: its transcript lines.
    #[serde(default)]
    pub antre: Option<String>,
    /// Fields whose values may differ.
    #[serde(default)]
    pub ignore: Vec<String>,
}

#[derive(serde::Deserialize)]
struct DeviationFile {
    #[serde(default)]
    deviation: Vec<Deviation>,
}

impl Deviation {
    pub fn read_all(path: &Path) -> Vec<Deviation> {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let file: DeviationFile =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        file.deviation
    }

    fn lines(&self) -> Vec<String> {
        self.antre
            .as_deref()
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The events of each channel (`0`, `1`, `b:1`, ...), in order.
fn by_channel(events: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for e in events {
        let ch = e.split(' ').next().unwrap_or("").to_owned();
        match out.iter_mut().find(|(c, _)| *c == ch) {
            Some((_, v)) => v.push(e.clone()),
            None => out.push((ch, vec![e.clone()])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn same(a: &[String], b: &[String]) -> bool {
    by_channel(a) == by_channel(b)
}

fn block(events: &[String]) -> String {
    events
        .iter()
        .map(|e| format!("    {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// None when antre behaves as recorded (or as its listed deviation says);
/// otherwise what is wrong.
pub fn judge(
    name: &str,
    rabbit: &[String],
    antre: &[String],
    deviation: Option<&Deviation>,
) -> Option<String> {
    match deviation {
        None if same(rabbit, antre) => None,
        None => Some(format!(
            "{name}:\n  RabbitMQ:\n{}\n  antre:\n{}",
            block(rabbit),
            block(antre)
        )),
        Some(_) if same(rabbit, antre) => Some(format!(
            "{name}: listed in deviations.toml but antre now answers as RabbitMQ does; remove the entry"
        )),
        Some(d) if d.antre.is_none() => {
            let masked = |events: &[String]| -> Vec<String> {
                events.iter().map(|e| mask(e, &d.ignore)).collect()
            };
            match same(&masked(rabbit), &masked(antre)) {
                true => None,
                false => Some(format!(
                    "{name}: differs from RabbitMQ beyond the fields deviations.toml lets differ ({}):\n  RabbitMQ:\n{}\n  antre:\n{}",
                    d.ignore.join(", "),
                    block(rabbit),
                    block(antre)
                )),
            }
        }
        Some(d) if same(&d.lines(), antre) => None,
        Some(d) => Some(format!(
            "{name}: a listed deviation, but antre's answer changed:\n  deviations.toml:\n{}\n  antre:\n{}",
            block(&d.lines()),
            block(antre)
        )),
    }
}

/// The event with each named field's value replaced by `*`. Values are
/// quoted strings (with backslash escapes) or single tokens.
fn mask(event: &str, fields: &[String]) -> String {
    let mut out = event.to_owned();
    for f in fields {
        let key = format!(" {f}=");
        let Some(at) = out.find(&key) else {
            continue;
        };
        let start = at + key.len();
        let rest = &out[start..];
        let len = if let Some(quoted) = rest.strip_prefix('"') {
            let mut escaped = false;
            let end = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closing = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closing
                })
                .map_or(quoted.len(), |(i, _)| i + 1);
            end + 1
        } else {
            rest.find(' ').unwrap_or(rest.len())
        };
        out.replace_range(start..start + len, "*");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_compared_separately() {
        let a: Vec<String> = ["1 x", "2 y", "1 z"].map(String::from).to_vec();
        let b: Vec<String> = ["2 y", "1 x", "1 z"].map(String::from).to_vec();
        let c: Vec<String> = ["1 z", "2 y", "1 x"].map(String::from).to_vec();
        assert!(same(&a, &b));
        assert!(!same(&a, &c));
    }

    #[test]
    fn masking_replaces_quoted_and_bare_values() {
        let e =
            r#"0 connection.close reply_code=501 reply_text="FRAME_ERROR - a \"q\" b" class_id=0"#;
        assert_eq!(
            mask(e, &["reply_text".into(), "reply_code".into()]),
            "0 connection.close reply_code=* reply_text=* class_id=0"
        );
    }

    #[test]
    fn transcripts_round_trip() {
        let t = Transcript {
            server: Some("3.10.8".into()),
            scenarios: vec![("a".into(), vec!["1 channel.open-ok".into()])],
        };
        let back = Transcript::parse(&t.render());
        assert_eq!(back.server.as_deref(), Some("3.10.8"));
        assert_eq!(back.scenarios, t.scenarios);
    }
}
