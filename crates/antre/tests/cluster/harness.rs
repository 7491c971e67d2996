//! A cluster of real `antre` processes on loopback for tests: each node a
//! child process with its own ports (picked free, then passed explicitly so
//! a restarted node comes back where its peers expect it) and data
//! directory; its log lines are kept for assertions. `kill` is SIGKILL.

#![allow(dead_code)]

use std::collections::BTreeSet;
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

/// A port no other part of this test process was given: the OS hands out
/// a port it just freed again, so without the record two nodes of the
/// tests running in parallel (one's cluster listener, another's AMQP one)
/// were once given the same port, and the first to bind it answered the
/// other's peers in the wrong protocol.
///
/// Below the kernel's range of ephemeral ports: a node binds its port a
/// moment after it is planned, and meanwhile any outgoing connection on
/// the machine (other nodes dial each other all the time) could be given
/// it as its local port. That once stopped a node with "the port is in
/// use" when a dozen clusters started at once.
pub fn free_port() -> u16 {
    use rand::Rng;
    let below = ephemeral_ports_start();
    loop {
        let port = rand::thread_rng().gen_range(FIRST_PLANNED_PORT..below);
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free && claim_port(port) {
            return port;
        }
    }
}

/// The lowest port [`free_port`] plans on: above the well-known and
/// registered ports brokers and their tools use by default.
const FIRST_PLANNED_PORT: u16 = 16384;

/// Where the kernel's ephemeral ports start (Linux's default when it
/// cannot be read).
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .filter(|&start: &u16| start > FIRST_PLANNED_PORT + 1024)
        .unwrap_or(32768)
}

/// Records `port` as given out in this test process; false when it was
/// given out before. Whatever binds port 0 itself and keeps the socket
/// (a proxy) claims its port too, so that no node is planned onto it.
pub fn claim_port(port: u16) -> bool {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    GIVEN.lock().expect("ports").insert(port)
}

/// Whether every thread of process `pid` is stopped (state `T` in
/// /proc; a thread that ended meanwhile counts as stopped).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
            // The state follows the command name, which is in parentheses
            // and may hold spaces.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    pub http_port: u16,
    pub cluster_port: u16,
    pub dir: PathBuf,
    pub secret: String,
    /// This node's own peer list, when it is not the cluster's (its own
    /// routes to the others, through proxies say).
    pub peers: Option<String>,
    /// More arguments for `antre serve` (TLS files, --cluster-join...).
    pub args: Vec<String>,
    /// More environment variables for it.
    pub env: Vec<(String, String)>,
    /// Another `antre` binary to run (an older release's, for an upgrade);
    /// `None`: this build's.
    pub bin: Option<PathBuf>,
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The cluster listener's address.
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
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
                // A paused node dies of SIGKILL all the same.
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
        let mut cluster = TestCluster::plan(secrets);
        cluster.launch().await;
        cluster
    }

    /// Starts every node of a [`TestCluster::plan`] and waits for each
    /// one's HTTP listener.
    pub async fn launch(&mut self) {
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        for i in 0..self.nodes.len() {
            self.wait_http(i).await;
        }
    }

    /// Picks ports and directories for one node per secret, without
    /// starting any: set their `peers` or `args` first, then
    /// [`TestCluster::launch`].
    pub fn plan(secrets: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| TestCluster::new_node(&dir, i + 1, secret))
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.name, n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        TestCluster {
            nodes,
            peers,
            _dir: dir,
        }
    }

    fn new_node(dir: &tempfile::TempDir, number: usize, secret: &str) -> Node {
        Node {
            name: format!("n{number}"),
            amqp_port: free_port(),
            http_port: free_port(),
            cluster_port: free_port(),
            dir: dir.path().join(format!("n{number}")),
            secret: secret.to_owned(),
            peers: None,
            args: Vec::new(),
            env: Vec::new(),
            bin: None,
            child: None,
            log: Arc::default(),
        }
    }

    /// Adds a node (not started) started with `--cluster-join` the
    /// cluster address of node `through`; returns its index.
    pub fn plan_joiner(&mut self, through: usize) -> usize {
        let number = self.nodes.len() + 1;
        let mut n = TestCluster::new_node(&self._dir, number, &self.nodes[0].secret.clone());
        n.peers = Some(format!("{}=127.0.0.1:{}", n.name, n.cluster_port));
        n.args = vec!["--cluster-join".into(), self.nodes[through].cluster_addr()];
        self.nodes.push(n);
        number - 1
    }

    /// The peer list every node gets unless it has its own.
    pub fn peer_list(&self) -> &str {
        &self.peers
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `i`'s process.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].pid().expect("node runs");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGSTOPs node `i`: it stops answering but keeps its sockets.
    /// Returns once every thread of it is stopped: the signal is only
    /// sent when `kill` returns, and on a loaded machine a thread already
    /// running could otherwise still take what a test sends next.
    pub fn pause(&self, i: usize) {
        self.signal(i, "STOP");
        let pid = self.nodes[i].pid().expect("node runs");
        let deadline = std::time::Instant::now() + WAIT;
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} did not stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONTs node `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, "CONT");
    }

    /// Starts node `i`'s process (again).
    pub fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let peers = n.peers.clone().unwrap_or_else(|| self.peers.clone());
        assert!(n.child.is_none(), "{} is running", n.name);
        let bin = n
            .bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_antre")));
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--amqp-listen", &format!("127.0.0.1:{}", n.amqp_port)])
            .args(["--http-listen", &format!("127.0.0.1:{}", n.http_port)])
            .args(["--node-name", &n.name])
            .args(["--cluster-listen", &format!("127.0.0.1:{}", n.cluster_port)])
            .args(["--cluster-peers", &peers])
            .args(["--cluster-change-timeout", &CHANGE_TIMEOUT_S.to_string()])
            .arg("--data-dir")
            .arg(&n.dir)
            .args(&n.args)
            .env("ANTRE_CLUSTER_SECRET", &n.secret)
            // The default filter (openraft's info and warnings left out);
            // ANTRE_TEST_LOG=info,openraft=info shows its elections too.
            .env(
                "RUST_LOG",
                std::env::var("ANTRE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("ANTRE_CLUSTER_SECRET_FILE")
            .envs(n.env.iter().map(|(k, v)| (k, v)))
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

    /// Stops node `i` as an operator does (SIGTERM) and reaps it; SIGKILL
    /// if it has not exited within [`WAIT`].
    pub fn stop(&mut self, i: usize) {
        let Some(mut c) = self.nodes[i].child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM: killed", self.nodes[i].name);
        let _ = c.kill();
        let _ = c.wait();
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

    /// Polls `attempt` until it gives something, failing after [`WAIT`].
    pub async fn until_some<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = attempt().await {
                return found;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints every node's log (on failure).
    /// How many lines each node has logged so far, for [`Self::dump_logs_since`].
    pub fn log_marks(&self) -> Vec<usize> {
        let len = |n: &Node| n.log.lock().expect("log").len();
        self.nodes.iter().map(len).collect()
    }

    /// Prints what each node logged after `marks`.
    pub fn dump_logs_since(&self, marks: &[usize]) {
        for (n, &from) in self.nodes.iter().zip(marks) {
            for l in n.log.lock().expect("log").iter().skip(from) {
                eprintln!("[{}] {l}", n.name);
            }
        }
    }

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
        self.try_api_as(i, ("guest", "guest"), method, path, body)
            .await
    }

    /// Calls node `i`'s API as `(user, password)`; `None` if it does not
    /// answer.
    pub async fn try_api_as(
        &self,
        i: usize,
        (user, password): (&str, &str),
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        use base64::Engine;
        let url = format!("{}{path}", self.nodes[i].http());
        let method = method.to_owned();
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        tokio::task::spawn_blocking(move || {
            let req = ureq::request(&method, &url)
                .set("Authorization", &auth)
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

    /// Flag `name`'s row of node `i`'s `/api/feature-flags`; `None` if the
    /// node does not answer 200 (an older version has no such endpoint) or
    /// does not list it.
    pub async fn feature_flag(&self, i: usize, name: &str) -> Option<Value> {
        let (200, flags) = self.try_api(i, "GET", "/api/feature-flags", None).await? else {
            return None;
        };
        flags
            .as_array()?
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
    }

    /// Waits until every node lists flag `name` enabled.
    pub async fn until_flag_enabled(&self, name: &str) {
        for i in 0..self.nodes.len() {
            let what = format!("node {i} to list feature flag {name} enabled");
            self.until(&what, || async {
                let flag = self.feature_flag(i, name).await;
                flag.is_some_and(|f| f["state"] == "enabled")
            })
            .await;
        }
    }

    /// A count node `i` keeps of node `peer` (`field` of `peer`'s entry
    /// in `i`'s `/api/nodes`, such as `link_requests`).
    pub async fn count_of_peer(&self, i: usize, peer: usize, field: &str) -> u64 {
        self.nodes(i)
            .await
            .iter()
            .find(|n| n["name"] == Value::String(self.nodes[peer].name.clone()))
            .and_then(|n| n[field].as_u64())
            .unwrap_or_else(|| panic!("node {i} counts no {field} of node {peer}"))
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

impl TestCluster {
    /// The leader every node of `members` sees, when they all see every
    /// member running and agree on one leader, itself one of `members`.
    pub async fn agreed_leader(&self, members: &[usize]) -> Option<usize> {
        let mut leaders = Vec::new();
        for &i in members {
            let Some((200, Value::Array(nodes))) = self.try_api(i, "GET", "/api/nodes", None).await
            else {
                return None;
            };
            let all_running = members.iter().all(|&m| {
                nodes
                    .iter()
                    .any(|n| n["name"] == self.nodes[m].name.as_str() && n["running"] == true)
            });
            let leader: Vec<&Value> = nodes
                .iter()
                .filter(|n| n["metadata_leader"] == true)
                .collect();
            if !all_running || leader.len() != 1 {
                return None;
            }
            leaders.push(leader[0]["name"].as_str()?.to_owned());
        }
        if leaders.windows(2).any(|w| w[0] != w[1]) {
            return None;
        }
        // A leader outside `members` is one they have not noticed is gone.
        let leader = self
            .nodes
            .iter()
            .position(|n| Some(&n.name) == leaders.first())?;
        members.contains(&leader).then_some(leader)
    }

    /// Waits until `members` agree on a leader; returns it.
    pub async fn until_leader(&self, members: &[usize]) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.agreed_leader(members).await {
                return l;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out waiting for {members:?} to agree on a leader");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `i`'s `/api/definitions`, comparable between nodes: the
    /// default user's password hash (salted on each node, which seeds it
    /// locally) left out, every list sorted.
    pub async fn definitions(&self, i: usize) -> Option<Value> {
        let (status, mut defs) = self.try_api(i, "GET", "/api/definitions", None).await?;
        if status != 200 {
            return None;
        }
        if let Some(users) = defs["users"].as_array_mut() {
            for u in users {
                if let Some(u) = u.as_object_mut() {
                    u.remove("password_hash");
                }
            }
        }
        if let Some(obj) = defs.as_object_mut() {
            for v in obj.values_mut() {
                if let Some(list) = v.as_array_mut() {
                    list.sort_by_key(|x| x.to_string());
                }
            }
        }
        Some(defs)
    }

    /// Waits until every node of `members` has the same definitions and
    /// `check` holds for them; returns them.
    pub async fn until_one_history(
        &self,
        members: &[usize],
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = Vec::new();
        loop {
            let mut all = Vec::new();
            for &i in members {
                all.push(self.definitions(i).await);
            }
            if let Some(Some(first)) = all.first() {
                if all.iter().all(|d| d.as_ref() == Some(first)) && check(first) {
                    return first.clone();
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("nodes {members:?} do not converge: {last:#?}");
            }
            last = all;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The names of the queues in a definitions document.
pub fn queue_names(defs: &Value) -> Vec<String> {
    defs["queues"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|q| q["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A lapin connection to `uri`, within 15 s (a node may still be starting).
pub async fn connect(uri: &str) -> lapin::Connection {
    tokio::time::timeout(
        Duration::from_secs(15),
        lapin::Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
    .expect("connect")
}

/// Quorum queues' replica management (tests/quorum_members.rs).
impl TestCluster {
    /// Declares durable queue `name` in `/` with `args` on node `i`,
    /// retrying while the metadata group may still be electing its first
    /// leader (the declare fails meanwhile) or the node does not take
    /// connections yet.
    pub async fn declare_durable(&self, i: usize, name: &str, args: lapin::types::FieldTable) {
        let deadline = Instant::now() + WAIT;
        loop {
            let attempt = async {
                let uri = self.nodes[i].amqp_uri();
                let conn = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
                    .await?;
                let ch = conn.create_channel().await?;
                let options = lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                ch.queue_declare(name, options, args.clone())
                    .await
                    .map(|_| ())
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(())) => return,
                other => assert!(
                    Instant::now() < deadline,
                    "could not declare {name}: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Takes every message of `queue` on node `i` (no-ack gets); their
    /// bodies.
    pub async fn drain(&self, i: usize, queue: &str) -> Vec<String> {
        let (bodies, failed) = self.try_drain(i, queue).await;
        if let Some(e) = failed {
            panic!("basic.get: {e:?}");
        }
        bodies
    }

    /// Takes messages of `queue` on node `i` (no-ack gets) until it is
    /// empty or a get fails (as one does while the queue's leader
    /// changes); their bodies, and the failure if one ended it.
    pub async fn try_drain(&self, i: usize, queue: &str) -> (Vec<String>, Option<lapin::Error>) {
        use lapin::options::BasicGetOptions;
        let conn = connect(&self.nodes[i].amqp_uri()).await;
        let ch = conn.create_channel().await.expect("channel");
        let mut bodies = Vec::new();
        loop {
            match ch.basic_get(queue, BasicGetOptions { no_ack: true }).await {
                Ok(Some(got)) => {
                    bodies.push(String::from_utf8_lossy(&got.delivery.data).into_owned())
                }
                Ok(None) => return (bodies, None),
                Err(e) => return (bodies, Some(e)),
            }
        }
    }

    /// Queue `name` in vhost `/` as node `i` lists it (`None`: not listed,
    /// or the node does not answer).
    pub async fn queue_on(&self, i: usize, name: &str) -> Option<Value> {
        match self
            .try_api(i, "GET", &format!("/api/queues/%2F/{name}"), None)
            .await
        {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The node a queue was placed on (its first member, for a quorum
    /// queue or stream the one its declare named to stand first), as node
    /// `i` lists it (which it must).
    pub async fn placed_on(&self, i: usize, name: &str) -> String {
        let q = self.queue_on(i, name).await.expect("the queue is listed");
        q["members"][0].as_str().unwrap_or_default().to_owned()
    }

    /// A quorum queue's members as node `i` lists them, sorted.
    pub async fn members_on(&self, i: usize, name: &str) -> Option<Vec<String>> {
        let q = self.queue_on(i, name).await?;
        let mut members: Vec<String> = serde_json::from_value(q["members"].clone()).ok()?;
        members.sort();
        Some(members)
    }

    /// Waits until every running node lists `members` for queue `name`.
    pub async fn until_members(&self, name: &str, members: &[&str]) {
        let want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            let what = format!("{} to list {name}'s members {want:?}", self.nodes[i].name);
            self.until(&what, || async {
                self.members_on(i, name).await.as_ref() == Some(&want)
            })
            .await;
        }
    }

    /// The running node that leads quorum queue `name` and has taken its
    /// engine over (it lists itself as the leader only then).
    pub async fn queue_leader(&self, name: &str) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.is_running() {
                continue;
            }
            if let Some(q) = self.queue_on(i, name).await {
                if q["leader"] == Value::String(n.name.clone()) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Runs the `antre` CLI against node `i` (`--url` added); its success,
    /// stdout and stderr.
    pub async fn cli(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--url".to_owned(), self.nodes[i].http()]);
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_antre"))
                .args(&all)
                .output()
                .expect("run antre")
        })
        .await
        .expect("CLI task");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Rebalances the quorum queues matching `pattern` through node `i`'s
    /// CLI (`antre queues rebalance`): its JSON report.
    pub async fn rebalance(&self, i: usize, pattern: &str) -> Value {
        let args = ["queues", "rebalance", "--pattern", pattern];
        let (ok, out, err) = self
            .cli(i, &[&args[..], &["--format", "json"]].concat())
            .await;
        assert!(ok, "{out}{err}");
        serde_json::from_str(&out).expect("JSON")
    }

    /// Whether node `i` holds no quorum queue replica data.
    /// Deletes queue (or stream) `name` in `/` through node 0's API and
    /// waits until no node holds a replica's data or lists it. A kill in
    /// the test before may have taken the metadata leader: while its group
    /// elects anew, a change is refused with 503 (seen in CI), as RabbitMQ
    /// refuses one without a quorum; a client asks again.
    pub async fn delete_everywhere(&self, name: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let path = format!("/api/queues/%2F/{name}");
            let (status, body) = self.api(0, "DELETE", &path, None).await;
            if status == 503 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(status, 204, "{body}");
            break;
        }
        for i in 0..self.nodes.len() {
            self.until("the replica's data removed", || async {
                self.no_replica_data(i)
            })
            .await;
            assert!(self.queue_on(i, name).await.is_none());
        }
    }

    pub fn no_replica_data(&self, i: usize) -> bool {
        let groups = self.nodes[i].dir.join("cluster").join("queues");
        std::fs::read_dir(&groups).map_or(true, |mut d| d.next().is_none())
    }
}

/// Publishes `body` (persistent) to `queue` on `ch`, a channel with
/// confirms, and waits for its confirm: Some(true) acked, Some(false)
/// nacked, None no answer in `within` (or the channel failed).
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    queue: &str,
    body: &[u8],
    within: Duration,
) -> Option<bool> {
    use lapin::publisher_confirm::Confirmation;
    let confirm = ch
        .basic_publish(
            "",
            queue,
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .ok()?;
    match tokio::time::timeout(within, confirm).await {
        Ok(Ok(Confirmation::Ack(_))) => Some(true),
        Ok(Ok(Confirmation::Nack(_))) => Some(false),
        _ => None,
    }
}
