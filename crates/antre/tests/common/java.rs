//! RabbitMQ's Java client (amqp-client) the tests drive: `.ci/run`
//! installs Debian's `default-jdk-headless` (a single-file source program
//! needs the compiler) and `librabbitmq-client-java`, whose jars land in
//! `/usr/share/java`; `ANTRE_JAVA_CLASSPATH` may name others. Without
//! them a test says so and passes, except under CI (`CI=true`), where it
//! fails.

use std::process::Command;
use std::time::Duration;

/// The client's jars and slf4j's (the client logs through it; nop binds
/// it to nothing).
fn classpath() -> String {
    std::env::var("ANTRE_JAVA_CLASSPATH").unwrap_or_else(|_| {
        ["amqp-client", "slf4j-api", "slf4j-nop"]
            .map(|jar| format!("/usr/share/java/{jar}.jar"))
            .join(":")
    })
}

/// Whether to go on: java runs source programs and the jars are there,
/// or (outside CI) the test says it skips.
pub fn client_or_skip() -> bool {
    let jars = classpath();
    let found = jars.split(':').all(|j| std::path::Path::new(j).exists())
        && Command::new("javac")
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(
        !super::under_ci(),
        "CI=true but javac or the jars ({jars}) are missing: .ci/run installs them"
    );
    eprintln!("skipping: a JDK and the Java client's jars ({jars}) are not installed");
    false
}

/// Runs the single-file program `source` with `args`, which must succeed
/// and print "ok", within `limit`.
pub async fn run_ok(what: &str, source: &str, args: Vec<String>, limit: Duration) {
    let mut all = vec!["-cp".to_owned(), classpath(), source.to_owned()];
    all.extend(args);
    let run = tokio::task::spawn_blocking(move || {
        Command::new("java").args(&all).output().expect("java runs")
    });
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {limit:?}"))
        .expect("program task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
