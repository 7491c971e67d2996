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

/// Runs `cmd` off the runtime's workers, within `limit`. One that takes
/// longer is killed, and the test fails with what it printed so far (a
/// program stuck waiting tells where).
pub async fn run(what: &str, mut cmd: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the program starts");
    let pid = child.id();
    let mut run = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(limit, &mut run).await {
        Ok(out) => out.expect("program task").expect("the program's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let printed = match tokio::time::timeout(Duration::from_secs(10), run).await {
                Ok(Ok(Ok(out))) => format!(
                    "stdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                _ => "(its output could not be read)".to_owned(),
            };
            panic!("{what} did not finish in {limit:?}; killed. {printed}")
        }
    }
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

/// Runs the client program `make(uri)` through a crash of the broker it
/// uses: an antre process on an ephemeral port; once the program prints
/// "ready", antre is killed -9 and started again on the same port and
/// data directory, and the program is told so by a line on its stdin. It
/// must then print "ok" and succeed. A program stuck or failed is killed,
/// never left behind.
pub async fn through_a_crash(what: &str, make: impl FnOnce(String) -> Command) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = super::process::spawn_antre(dir.path(), &[]);
    let uri = format!("amqp://guest:guest@{}/%2f", broker.amqp);
    let mut client = make(uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the program starts");
    let stdout = client.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut next_line = async |limit: Duration| -> Option<String> {
        tokio::time::timeout(limit, lines.recv())
            .await
            .ok()
            .flatten()
    };
    if next_line(super::WAIT * 3).await.as_deref() != Some("ready") {
        let _ = client.kill();
        let out = client.wait_with_output().expect("the program ends");
        panic!(
            "{what} did not get ready:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    broker.child.kill().expect("kill -9");
    broker.child.wait().expect("reap");
    let mut restarted = super::process::spawn_antre_at(dir.path(), &broker.amqp, &[]);
    let mut stdin = client.stdin.take().expect("stdin");
    stdin.write_all(b"restarted\n").expect("tell the program");
    drop(stdin);

    let done = next_line(super::WAIT * 6).await;
    if done.as_deref() != Some("ok") {
        let _ = client.kill();
    }
    let out = tokio::task::spawn_blocking(move || client.wait_with_output())
        .await
        .expect("program task")
        .expect("the program ends");
    let _ = restarted.child.kill();
    let _ = restarted.child.wait();
    assert!(
        done.as_deref() == Some("ok") && out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
