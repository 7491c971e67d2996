//! RabbitMQ's Java client (amqp-client) the tests drive: `.ci/run`
//! installs Debian's `default-jdk-headless` (a single-file source program
//! needs the compiler) and `librabbitmq-client-java`, whose jars land in
//! `/usr/share/java`; `ANTRE_JAVA_CLASSPATH` may name others.

use std::process::Command;
use std::time::Duration;

use super::program;

/// The client's jars and slf4j's (the client logs through it; nop binds
/// it to nothing).
fn classpath() -> String {
    std::env::var("ANTRE_JAVA_CLASSPATH").unwrap_or_else(|_| {
        ["amqp-client", "slf4j-api", "slf4j-nop"]
            .map(|jar| format!("/usr/share/java/{jar}.jar"))
            .join(":")
    })
}

/// Whether to go on: a JDK and the jars are there, or (outside CI) the
/// test says it skips.
pub fn client_or_skip() -> bool {
    let jars = classpath();
    let found = jars.split(':').all(|j| std::path::Path::new(j).exists())
        && Command::new("javac")
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
    program::present_or_skip(found, &format!("a JDK or the Java client's jars ({jars})"))
}

/// `java` running the single-file program `source` with `args`.
pub fn program(source: &str, args: Vec<String>) -> Command {
    let mut cmd = Command::new("java");
    cmd.args(["-cp", &classpath(), source]).args(args);
    cmd
}

/// Runs the single-file program `source` with `args`, which must succeed
/// and print "ok", within `limit`.
pub async fn run_ok(what: &str, source: &str, args: Vec<String>, limit: Duration) {
    program::run_ok(what, program(source, args), limit).await
}
