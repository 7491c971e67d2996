//! pika, the Python client, against antre: crates/antre/tests/pika/*.py run
//! with the broker's URL. pika comes from PyPI (`.ci/run` installs the
//! version it pins); without python3 and pika the test says so and passes,
//! except under CI (`CI=true`), where it fails.

use crate::common;

use std::process::Command;

use common::*;

fn pika_available() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_client_paths_work() {
    if !pika_available() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI=true but python3 -c 'import pika' fails: .ci/run installs pika"
        );
        eprintln!("skipping: python3 with pika is not installed (pip install pika)");
        return;
    }
    let broker = TestBroker::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika/client_paths.py");
    let uri = broker.uri();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &uri])
            .output()
            .expect("python3 runs")
    });
    let out = within("the pika script", run).await.expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "pika script failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
