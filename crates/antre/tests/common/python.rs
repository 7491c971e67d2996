//! Python clients the tests drive (pika, rstream): they come from PyPI
//! (`.ci/run` installs the versions it pins). Without python3 and the
//! module a test says so and passes, except under CI (`CI=true`), where it
//! fails.

use std::process::{Command, Output};
use std::time::Duration;

/// Whether to go on: python3 can import `module`, or (outside CI) the test
/// says it skips.
pub fn module_or_skip(module: &str) -> bool {
    let installed = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return true;
    }
    assert!(
        !super::under_ci(),
        "CI=true but python3 -c 'import {module}' fails: .ci/run installs {module}"
    );
    eprintln!("skipping: python3 with {module} is not installed (pip install {module})");
    false
}

/// Runs `python3 ARGS` off the runtime's workers, within `limit`.
pub async fn run(what: &str, args: Vec<String>, limit: Duration) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .output()
            .expect("python3 runs")
    });
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {limit:?}"))
        .expect("script task")
}

/// Runs `python3 ARGS`, which must succeed and print "ok".
pub async fn run_ok(what: &str, args: Vec<String>, limit: Duration) {
    let out = run(what, args, limit).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
