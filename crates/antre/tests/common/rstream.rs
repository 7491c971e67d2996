//! Runs the rstream (RabbitMQ's Python stream client) scripts of
//! crates/antre/tests/rstream against a stream listener. rstream comes
//! from PyPI (`.ci/run` installs the version it pins); without python3 and
//! rstream a test says so and passes, except under CI (`CI=true`), where
//! it fails.

use std::net::SocketAddr;
use std::process::Command;

fn rstream_available() -> bool {
    Command::new("python3")
        .args(["-c", "import rstream"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether to go on: python3 with rstream is there, or (outside CI) the
/// test says it skips.
pub fn rstream_or_skip() -> bool {
    if rstream_available() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "CI=true but python3 -c 'import rstream' fails: .ci/run installs rstream"
    );
    eprintln!("skipping: python3 with rstream is not installed (pip install rstream)");
    false
}

/// Runs tests/rstream/SCRIPT against the stream listener at `addr`; it
/// must print "ok".
pub async fn run_script(addr: SocketAddr, script: &str, stream: &str) {
    let path = format!("{}/tests/rstream/{script}", env!("CARGO_MANIFEST_DIR"));
    let stream = stream.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                path.as_str(),
                &addr.ip().to_string(),
                &addr.port().to_string(),
                &stream,
            ])
            .output()
            .expect("python3 runs")
    });
    let out = tokio::time::timeout(super::WAIT * 4, run)
        .await
        .expect("the rstream script finishes")
        .expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "rstream script {script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
