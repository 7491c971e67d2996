//! The differential conformance suite: every scenario in
//! `conformance/scenarios/` is played against antre and its replies are
//! compared with the transcript recorded against RabbitMQ 3.10
//! (`conformance/transcripts/`). A scenario where antre differs on purpose
//! is listed, with the reason and antre's own transcript, in
//! `conformance/deviations.toml`, and nowhere else.
//!
//! `scripts/record-conformance.sh` re-records the transcripts: it runs this
//! test with `ANTRE_CONFORMANCE_RECORD=host:port` pointing at a RabbitMQ.
//! See `conformance/README.md` for the scenario language.

use crate::common;
#[path = "conformance/runner.rs"]
mod runner;
#[path = "conformance/script.rs"]
mod script;
#[path = "conformance/show.rs"]
mod show;
#[path = "conformance/transcript.rs"]
mod transcript;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::TestBroker;
use transcript::{Deviation, Transcript};

macro_rules! groups {
    ($($group:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $group() {
                check_group(stringify!($group)).await;
            }
        )*
        const GROUPS: &[&str] = &[$(stringify!($group)),*];
    };
}

groups!(connection, channel, exchange, queue, basic, confirm, tx, extensions, frames, quorum);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn scenarios(group: &str) -> Vec<script::Scenario> {
    let path = dir().join(format!("scenarios/{group}.amqp"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    script::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn record_target() -> Option<SocketAddr> {
    let target = std::env::var("ANTRE_CONFORMANCE_RECORD").ok()?;
    Some(
        target
            .parse()
            .unwrap_or_else(|_| panic!("ANTRE_CONFORMANCE_RECORD={target}: expected host:port")),
    )
}

async fn check_group(group: &str) {
    let scenarios = scenarios(group);
    let transcript_path = dir().join(format!("transcripts/{group}.txt"));
    if let Some(target) = record_target() {
        let mut recorded = Transcript::default();
        let mut unstable = Vec::new();
        for s in &scenarios {
            let outcome = runner::run(target, s).await;
            if let Some(v) = outcome.server_version {
                recorded.server.get_or_insert(v);
            }
            // A transcript is only worth keeping if the server gives it
            // every time: each scenario is played twice.
            let again = runner::run(target, s).await;
            if !transcript::same(&outcome.events, &again.events) {
                unstable.push(format!(
                    "{group}/{}:\n  first:\n    {}\n  second:\n    {}",
                    s.name,
                    outcome.events.join("\n    "),
                    again.events.join("\n    ")
                ));
            }
            recorded.scenarios.push((s.name.clone(), outcome.events));
        }
        assert!(
            unstable.is_empty(),
            "scenarios whose replies differ between two runs (make them deterministic):\n{}",
            unstable.join("\n")
        );
        std::fs::write(&transcript_path, recorded.render())
            .unwrap_or_else(|e| panic!("writing {}: {e}", transcript_path.display()));
        return;
    }
    let recorded = Transcript::read(&transcript_path);
    let deviations = Deviation::read_all(&dir().join("deviations.toml"));
    let broker = TestBroker::start_with(|c| c.http_listen = None).await;
    let mut failures = Vec::new();
    for s in &scenarios {
        let name = format!("{group}/{}", s.name);
        let Some(expected) = recorded.get(&s.name) else {
            failures.push(format!(
                "{name}: no transcript; run scripts/record-conformance.sh"
            ));
            continue;
        };
        let actual = runner::run(broker.addr(), s).await.events;
        let deviation = deviations.iter().find(|d| d.scenarios.contains(&name));
        let label = format!("{name} ({})", s.about);
        if let Some(problem) = transcript::judge(&label, expected, &actual, deviation) {
            failures.push(problem);
        }
    }
    if let Some(extra) = recorded
        .scenarios
        .iter()
        .find(|(n, _)| !scenarios.iter().any(|s| &s.name == n))
    {
        failures.push(format!(
            "{group}/{}: transcript of a scenario that no longer exists; re-record",
            extra.0
        ));
    }
    broker.server.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} of {} scenarios in {group} differ from RabbitMQ:\n\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_scenario_file_is_a_group_and_every_deviation_a_scenario() {
    let mut files: Vec<String> = std::fs::read_dir(dir().join("scenarios"))
        .expect("scenarios dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".amqp").map(str::to_owned)
        })
        .collect();
    files.sort();
    let mut groups: Vec<String> = GROUPS.iter().map(|g| g.to_string()).collect();
    groups.sort();
    assert_eq!(
        files, groups,
        "add each scenario file to groups! in this test"
    );

    let all: Vec<String> = GROUPS
        .iter()
        .flat_map(|g| {
            scenarios(g)
                .into_iter()
                .map(move |s| format!("{g}/{}", s.name))
        })
        .collect();
    let mut listed = Vec::new();
    for d in Deviation::read_all(&dir().join("deviations.toml")) {
        for s in &d.scenarios {
            assert!(all.contains(s), "deviation for unknown scenario {s}");
            assert!(
                !listed.contains(s),
                "{s} is listed twice in deviations.toml"
            );
            listed.push(s.clone());
        }
        assert!(
            !d.why.trim().is_empty(),
            "deviation {:?} gives no reason",
            d.scenarios
        );
        assert!(
            d.antre.is_some() == d.ignore.is_empty(),
            "deviation {:?}: give either antre's transcript or the fields to ignore",
            d.scenarios
        );
        assert!(
            d.antre.is_none() || d.scenarios.len() == 1,
            "deviation {:?}: a transcript belongs to one scenario",
            d.scenarios
        );
    }
}
