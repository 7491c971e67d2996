//! Node.js clients the tests drive (amqplib). `.ci/run` installs Debian's
//! `nodejs` and unpacks the amqplib version it pins from npm's registry
//! into `target/ci-tools/node_modules` (amqplib has no dependencies, so no
//! npm is needed); `NODE_PATH` may point elsewhere. Without node and the
//! module a test says so and passes, except under CI (`CI=true`), where it
//! fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

/// Whether to go on: node can require `module`, or (outside CI) the test
/// says it skips.
pub fn module_or_skip(module: &str) -> bool {
    let found = Command::new("node")
        .args(["-e", &format!("require({module:?})")])
        .env("NODE_PATH", node_path())
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(
        !super::under_ci(),
        "CI=true but node cannot require {module} from {}: .ci/run installs it",
        node_path().display()
    );
    eprintln!(
        "skipping: node with {module} in {} is not installed",
        node_path().display()
    );
    false
}

/// Runs `node ARGS`, which must succeed and print "ok", within `limit`.
pub async fn run_ok(what: &str, args: Vec<String>, limit: Duration) {
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(&args)
            .env("NODE_PATH", node_path())
            .output()
            .expect("node runs")
    });
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {limit:?}"))
        .expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
