//! A cluster of real `antre` processes on loopback for tests: each node a
//! child process with its own ports (picked free, then passed explicitly so
//! a restarted node comes back where its peers expect it) and data
//! directory; its log lines are kept for assertions. `kill` is SIGKILL.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// The secret the nodes of a test cluster share.
pub const SECRET: &str = "test-cluster-secret-0123456789";

/// How long a metadata change may wait for the cluster in these tests.
pub const CHANGE_TIMEOUT_S: u64 = 3;

/// Upper bound on any single wait: a guard against hangs.
pub const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    pub http_port: u16,
    pub cluster_port: u16,
    pub dir: PathBuf,
    pub secret: String,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn amqp_uri_as(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Whether a log line of this node contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(text))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A test cluster; its processes are killed when it is dropped.
pub struct TestCluster {
    pub nodes: Vec<Node>,
    peers: String,
    _dir: tempfile::TempDir,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl TestCluster {
    /// Starts one node per secret (n1, n2, ...), all with the same peer
    /// list, and waits for each one's HTTP listener.
    pub async fn start(secrets: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| Node {
                name: format!("n{}", i + 1),
                amqp_port: free_port(),
                http_port: free_port(),
                cluster_port: free_port(),
                dir: dir.path().join(format!("n{}", i + 1)),
                secret: (*secret).to_owned(),
                child: None,
                log: Arc::default(),
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.name, n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            nodes,
            peers,
            _dir: dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_http(i).await;
        }
        cluster
    }

    /// Starts node `i`'s process (again).
    pub fn spawn(&mut self, i: usize) {
        let peers = self.peers.clone();
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} is running", n.name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_antre"))
            .arg("serve")
            .args(["--amqp-listen", &format!("127.0.0.1:{}", n.amqp_port)])
            .args(["--http-listen", &format!("127.0.0.1:{}", n.http_port)])
            .args(["--node-name", &n.name])
            .args(["--cluster-listen", &format!("127.0.0.1:{}", n.cluster_port)])
            .args(["--cluster-peers", &peers])
            .args(["--cluster-change-timeout", &CHANGE_TIMEOUT_S.to_string()])
            .arg("--data-dir")
            .arg(&n.dir)
            .env("ANTRE_CLUSTER_SECRET", &n.secret)
            .env("RUST_LOG", "info")
            .env_remove("ANTRE_CLUSTER_SECRET_FILE")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn antre");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::clone(&n.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().expect("log").push(line);
            }
        });
        n.child = Some(child);
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// Waits until node `i` answers HTTP.
    pub async fn wait_http(&self, i: usize) {
        let name = self.nodes[i].name.clone();
        self.until(&format!("{name}'s HTTP listener"), || async {
            self.try_api(i, "GET", "/api/overview", None)
                .await
                .is_some()
        })
        .await;
    }

    /// Polls `check` until it holds, failing after [`WAIT`].
    pub async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints every node's log (on failure).
    pub fn dump_logs(&self) {
        for n in &self.nodes {
            for l in n.log.lock().expect("log").iter() {
                eprintln!("[{}] {l}", n.name);
            }
        }
    }

    /// Calls node `i`'s API as guest; `None` if it does not answer.
    pub async fn try_api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.nodes[i].http());
        let method = method.to_owned();
        tokio::task::spawn_blocking(move || {
            let req = ureq::request(&method, &url)
                .set("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
                .timeout(Duration::from_secs(10));
            let result = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(_) => return None,
            };
            let status = resp.status();
            let text = resp.into_string().ok()?;
            let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Some((status, json))
        })
        .await
        .expect("HTTP task")
    }

    /// Calls node `i`'s API as guest.
    pub async fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        match self.try_api(i, method, path, body).await {
            Some(r) => r,
            None => {
                self.dump_logs();
                panic!("{} does not answer {method} {path}", self.nodes[i].name)
            }
        }
    }

    /// `GET /api/nodes` of node `i`.
    pub async fn nodes(&self, i: usize) -> Vec<Value> {
        let (status, body) = self.api(i, "GET", "/api/nodes", None).await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// The metadata leader's index, as node `i` sees it.
    pub async fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let nodes = self.try_api(i, "GET", "/api/nodes", None).await?.1;
        let name = nodes
            .as_array()?
            .iter()
            .find(|n| n["metadata_leader"] == Value::Bool(true))?["name"]
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.name == name)
    }
}
