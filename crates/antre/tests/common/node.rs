//! Node.js clients the tests drive (amqplib). `.ci/run` installs Debian's
//! `nodejs` and unpacks the amqplib version it pins from npm's registry
//! into `target/ci-tools/node_modules` (amqplib has no dependencies, so no
//! npm is needed); `NODE_PATH` may point elsewhere.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::program;

/// Where the tests look for node modules: `NODE_PATH`, else the one
/// `.ci/run` fills.
fn node_path() -> PathBuf {
    std::env::var_os("NODE_PATH").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/ci-tools/node_modules"
            ))
        },
        PathBuf::from,
    )
}

fn node() -> Command {
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", node_path());
    cmd
}

/// Whether to go on: node can require `module`, or (outside CI) the test
/// says it skips.
pub fn module_or_skip(module: &str) -> bool {
    let found = node()
        .args(["-e", &format!("require({module:?})")])
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = format!("node with {module} in {}", node_path().display());
    program::present_or_skip(found, &missing)
}

/// Runs `node ARGS`, which must succeed and print "ok", within `limit`.
pub async fn run_ok(what: &str, args: Vec<String>, limit: Duration) {
    let mut cmd = node();
    cmd.args(args);
    program::run_ok(what, cmd, limit).await
}
