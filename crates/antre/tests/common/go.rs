//! RabbitMQ's Go client (amqp091-go) the tests drive: `.ci/run` installs
//! Debian's `golang-go` and `golang-github-rabbitmq-amqp091-go-dev`, whose
//! sources land in `/usr/share/gocode` (a GOPATH; `ANTRE_GOPATH` may name
//! another). Programs build in GOPATH mode, offline. Without them a test
//! says so and passes, except under CI (`CI=true`), where it fails.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
    let sources = Path::new(&gopath()).join("src/github.com/rabbitmq/amqp091-go");
    let found = sources.is_dir()
        && go()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(
        !super::under_ci(),
        "CI=true but go or {} is missing: .ci/run installs them",
        sources.display()
    );
    eprintln!(
        "skipping: go and amqp091-go ({}) are not installed",
        sources.display()
    );
    false
}

/// Runs `go run SOURCE ARGS`, which must succeed and print "ok", within
/// `limit`.
pub async fn run_ok(what: &str, source: &str, args: Vec<String>, limit: Duration) {
    let source = source.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        go().arg("run")
            .arg(&source)
            .args(&args)
            .output()
            .expect("go runs")
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
