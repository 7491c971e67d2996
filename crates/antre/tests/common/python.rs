//! Python clients the tests drive (pika, aio-pika, rstream, kombu): they
//! come from PyPI (`.ci/run` installs the versions it pins).

use std::process::{Command, Output};
use std::time::Duration;

use super::program;

/// Whether to go on: python3 can import `module`, or (outside CI) the test
/// says it skips.
pub fn module_or_skip(module: &str) -> bool {
    let installed = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    program::present_or_skip(installed, &format!("python3 with {module}"))
}

/// `python3 ARGS`.
pub fn command(args: Vec<String>) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(args);
    cmd
}

/// Runs `python3 ARGS` off the runtime's workers, within `limit`.
pub async fn run(what: &str, args: Vec<String>, limit: Duration) -> Output {
    program::run(what, command(args), limit).await
}

/// Runs `python3 ARGS`, which must succeed and print "ok".
pub async fn run_ok(what: &str, args: Vec<String>, limit: Duration) {
    program::run_ok(what, command(args), limit).await
}
