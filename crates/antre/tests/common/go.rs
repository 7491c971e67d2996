//! RabbitMQ's Go client (amqp091-go) the tests drive: `.ci/run` installs
//! Debian's `golang-go` and `golang-github-rabbitmq-amqp091-go-dev`, whose
//! sources land in `/usr/share/gocode` (a GOPATH; `ANTRE_GOPATH` may name
//! another). Programs build in GOPATH mode, offline.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::program;

fn gopath() -> String {
    std::env::var("ANTRE_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".to_owned())
}

/// `go` with the environment of an offline GOPATH build, its build cache
/// under the target directory.
fn go() -> Command {
    let mut cmd = Command::new("go");
    cmd.env("GO111MODULE", "off")
        .env("GOPATH", gopath())
        .env("GOFLAGS", "")
        .env("GOCACHE", concat!(env!("CARGO_TARGET_TMPDIR"), "/go-build"));
    cmd
}

/// Whether to go on: go builds and the client's sources are there, or
/// (outside CI) the test says it skips.
pub fn client_or_skip() -> bool {
    let sources = client_sources();
    let found = sources.is_dir()
        && go()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    program::present_or_skip(found, &format!("go or {}", sources.display()))
}

/// The client's sources (the Debian package ships its tests too).
pub fn client_sources() -> std::path::PathBuf {
    Path::new(&gopath()).join("src/github.com/rabbitmq/amqp091-go")
}

/// Runs the client's own integration tests named `names` against
/// `amqp_url` (`go test -tags integration`), which must pass, within
/// `limit`.
pub async fn integration_tests(names: &[String], amqp_url: &str, limit: Duration) {
    let mut cmd = go();
    cmd.env("AMQP_URL", amqp_url)
        .args(["test", "-tags", "integration", "-count=1", "-v"])
        .arg(format!("-run=^({})$", names.join("|")))
        .arg("github.com/rabbitmq/amqp091-go");
    let out = program::run("amqp091-go's integration tests", cmd, limit).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = stdout.lines().filter(|l| l.starts_with("--- PASS")).count();
    assert!(
        out.status.success() && passed == names.len(),
        "amqp091-go's integration tests failed ({}, {passed} of {} passed):\n{stdout}\n{}",
        out.status,
        names.len(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Most a build of a program may take: on a new machine the build cache
/// is empty and the client builds first, beside the rest of the suite
/// (a cold build took under 4 s here; the limit only keeps a slow build
/// from being counted as the program's time).
const BUILD_LIMIT: Duration = Duration::from_secs(600);

/// Builds SOURCE, then runs it with ARGS; it must succeed and print
/// "ok" within `limit` (the build has [`BUILD_LIMIT`]: what is tested is
/// the program, not the compiler).
pub async fn run_ok(what: &str, source: &str, args: Vec<String>, limit: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = dir.path().join("program");
    let mut build = go();
    build.arg("build").arg("-o").arg(&binary).arg(source);
    let built = program::run(&format!("building the {what}"), build, BUILD_LIMIT).await;
    assert!(
        built.status.success(),
        "building the {what} failed ({}):\n{}",
        built.status,
        String::from_utf8_lossy(&built.stderr)
    );
    let mut cmd = Command::new(&binary);
    cmd.args(args);
    program::run_ok(what, cmd, limit).await
}
