//! Client programs the tests run (Python scripts, Node.js scripts, Java
//! and Go programs): whether their tools are installed, and running one.

use std::process::{Command, Output};
use std::time::Duration;

/// Whether to go on: `found`, or (outside CI) the test says it skips
/// because `missing` is not installed. Under CI (`CI=true`), where
/// `.ci/run` installs every tool, a missing one fails the test.
pub fn present_or_skip(found: bool, missing: &str) -> bool {
    if found {
        return true;
    }
    assert!(
        !super::under_ci(),
        "CI=true but {missing} is missing: .ci/run installs it"
    );
    eprintln!("skipping: {missing} is not installed");
    false
}

/// Runs `cmd` off the runtime's workers, within `limit`.
pub async fn run(what: &str, mut cmd: Command, limit: Duration) -> Output {
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("the program starts"));
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {limit:?}"))
        .expect("program task")
}

/// Runs `cmd`, which must succeed and print "ok", within `limit`.
pub async fn run_ok(what: &str, cmd: Command, limit: Duration) {
    let out = run(what, cmd, limit).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
