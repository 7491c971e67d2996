//! The antre binary as a child process, for tests that kill and restart it
//! (crash.rs, memory.rs).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A started `antre serve` and the addresses it logged.
pub struct Spawned {
    /// The process (the caller kills or waits for it).
    pub child: Child,
    /// The AMQP listener's address (`host:port`).
    pub amqp: String,
    /// The management API's base URL.
    pub http: String,
}

/// Starts the binary on ephemeral ports with `data_dir` and `args`, and
/// waits for its "listening on" line.
pub fn spawn_antre(data_dir: &Path, args: &[&str]) -> Spawned {
    spawn_antre_at(data_dir, "127.0.0.1:0", args)
}

/// [`spawn_antre`] with its AMQP listener on `amqp` (a restart on the
/// address its clients know).
pub fn spawn_antre_at(data_dir: &Path, amqp: &str, args: &[&str]) -> Spawned {
    let mut child = Command::new(env!("CARGO_BIN_EXE_antre"))
        .args([
            "serve",
            "--amqp-listen",
            amqp,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn antre");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut http = String::new();
    let amqp = loop {
        let line = lines
            .next()
            .expect("antre exited before listening")
            .expect("read stderr");
        if let Some(at) = line.find("API on http://") {
            http = line[at + "API on ".len()..]
                .trim()
                .trim_end_matches('/')
                .to_owned();
        }
        if let Some(at) = line.find("listening on amqp://") {
            break line[at + "listening on amqp://".len()..].trim().to_owned();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Spawned { child, amqp, http }
}
