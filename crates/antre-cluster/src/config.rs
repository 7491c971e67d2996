//! A node's identity and its peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use sha2::{Digest, Sha256};

use crate::{ClusterError, NodeId};

/// One member of the cluster as the peer list names it.
///
/// Its address may be a host name, resolved again every
/// [`PEER_REFRESH`] while the node runs ([`refresh_peers`]): in a
/// Kubernetes StatefulSet or a Compose project a restarted node comes back
/// under its name at a new address, and a peer not scheduled yet has no
/// address at all. Resolved once at start-up, as it was, the first kept
/// the others dialling the old address for good, and the second stopped
/// the node from starting.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node name (`n1`).
    pub name: String,
    /// Its cluster listener as the list gives it: `HOST:PORT`.
    pub host: String,
    /// What `host` resolved to last (None: nothing yet). Shared by the
    /// config's clones, so a new address reaches every user of it.
    resolved: Arc<RwLock<Option<SocketAddr>>>,
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        self.name == other.name && self.host == other.host
    }
}

impl Eq for Peer {}

impl Peer {
    /// A peer at a fixed address.
    pub fn new(name: &str, addr: SocketAddr) -> Peer {
        Peer {
            name: name.to_owned(),
            host: addr.to_string(),
            resolved: Arc::new(RwLock::new(Some(addr))),
        }
    }

    /// Its Raft id.
    pub fn id(&self) -> NodeId {
        node_id_of(&self.name)
    }

    /// Its cluster listener's address, as last resolved; None while its
    /// host name resolves to nothing.
    pub fn addr(&self) -> Option<SocketAddr> {
        *self.resolved.read()
    }

    /// Whether its address is a host name (resolved again), not an IP.
    pub fn is_named(&self) -> bool {
        self.host.parse::<SocketAddr>().is_err()
    }

    /// Dials the peer at `addr` from now on (until its name resolves
    /// elsewhere); returns the address it moved from, if it moved.
    pub fn set_addr(&self, addr: SocketAddr) -> Option<Option<SocketAddr>> {
        let mut resolved = self.resolved.write();
        let before = *resolved;
        *resolved = Some(addr);
        (before != Some(addr)).then_some(before)
    }

    /// Resolves its host name again. Returns the address it moved from and
    /// to, if it moved; a lookup that fails keeps the last address (a
    /// resolver out for a moment must not cut a running peer off).
    pub async fn refresh(&self) -> Result<Option<(Option<SocketAddr>, SocketAddr)>, String> {
        let found = lookup(&self.host).await?;
        Ok(self.set_addr(found).map(|before| (before, found)))
    }

    /// Its address as a membership records it: a host name as given
    /// (each member resolves it, again when it moves), an IP address as
    /// parsed.
    pub fn recorded(&self) -> String {
        match self.addr() {
            Some(addr) if !self.is_named() => addr.to_string(),
            _ => self.host.clone(),
        }
    }
}

/// How often a peer's host name (and a member's recorded by name) is
/// resolved again.
pub const PEER_REFRESH: Duration = Duration::from_secs(2);

/// Resolves the named peers of `peers` again.
pub async fn refresh_peers(peers: &[Peer]) {
    for p in peers.iter().filter(|p| p.is_named()) {
        match p.refresh().await {
            Ok(Some((Some(from), to))) => {
                tracing::info!(peer = p.name, host = p.host, %from, %to,
                    "a peer's host name resolves to a new address; dialling it there")
            }
            Ok(Some((None, to))) => {
                tracing::info!(peer = p.name, host = p.host, %to,
                    "a peer's host name resolves now")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(peer = p.name, host = p.host, "cannot resolve a peer: {e}")
            }
        }
    }
}

/// Everything a node needs to join its cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// This node's name; must be in `peers`.
    pub node_name: String,
    /// Where this node listens for the other nodes.
    pub listen: SocketAddr,
    /// Every member, this node included: the membership the cluster is
    /// bootstrapped with the first time.
    pub peers: Vec<Peer>,
    /// The shared secret every node proves it knows.
    pub secret: String,
    /// The cluster's previous secret, still accepted from peers (never
    /// proved with) while the secret is rotated node by node (see
    /// docs/clustering.md, "Rotating the secret").
    pub previous_secret: Option<String>,
    /// Where the Raft log, vote and snapshot live (`<data-dir>/cluster`).
    pub dir: PathBuf,
    /// How long a metadata change may wait for the cluster before it fails.
    pub change_timeout: Duration,
    /// How long a publish forwarded to another node's queue waits for that
    /// node's answer before it is nacked.
    pub forward_timeout: Duration,
    /// Bytes of forwarded publishes a node may have sent to one other node
    /// and not had answered; past it, the publishers that forward there are
    /// blocked (connection.blocked) until the owner catches up.
    pub forward_buffer: u64,
    /// A snapshot is built after this many log entries since the last one;
    /// the log before it is then compacted.
    pub snapshot_logs: u64,
    /// A member's cluster address: this node does not bootstrap a cluster
    /// from its peer list but asks the node there to add it (and, once it
    /// is a member, ignores this). See [`crate::membership`].
    /// `HOST:PORT`, resolved at each try (a name the cluster's DNS does
    /// not know yet is tried again).
    pub join: Option<String>,
    /// TLS on the link (mutual, against the cluster's CA); `None`: plain
    /// TCP.
    pub tls: Option<crate::stream::LinkTls>,
    /// Raft timing of the metadata group.
    pub metadata_timing: RaftTiming,
    /// Raft timing of every quorum queue's group.
    pub queue_timing: RaftTiming,
    /// Feature flags this node claims not to support, as a version
    /// without them would (`ANTRE_TEST_WITHOUT_FEATURE_FLAGS`): for
    /// rehearsing a rolling upgrade. Empty in production.
    pub without_feature_flags: Vec<String>,
}

/// The Raft timing of a kind of group: how often its leader sends
/// heartbeats, and how long a follower waits without one before it stands
/// for election.
///
/// openraft 0.9 also gives every append request the heartbeat interval to
/// be answered (the round trip, and the follower's write and fsync), so
/// the heartbeat interval must exceed the slowest round trip between
/// nodes; and a follower refuses votes during the leader's lease (the
/// longest election timeout after its last heartbeat), so a dead leader is
/// replaced after the lease plus an election timeout: 1.5 to 2 times
/// [`RaftTiming::election_max`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Between two heartbeats of the leader.
    pub heartbeat: Duration,
    /// The shortest election timeout; each follower draws its own between
    /// this and [`RaftTiming::election_max`] (twice this), so two rarely
    /// stand at once.
    pub election_min: Duration,
}

impl RaftTiming {
    /// The metadata group's default: heartbeats every 200 ms, elections
    /// after 1 to 2 s. Its changes are rare and can wait; a node busy with
    /// other work should not start needless elections.
    pub const METADATA: RaftTiming = RaftTiming {
        heartbeat: Duration::from_millis(200),
        election_min: Duration::from_millis(1000),
    };

    /// A quorum queue group's default: heartbeats every 100 ms, elections
    /// after 400 to 800 ms, so a dead leader is replaced in 1.2 to 1.6 s
    /// (publishers cannot wait as long as metadata changes can).
    pub const QUEUE: RaftTiming = RaftTiming {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(400),
    };

    /// The shortest heartbeat interval accepted.
    pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

    /// How many heartbeat intervals the shortest election timeout must
    /// span at least: a follower must not stand for election because one
    /// or two heartbeats were late.
    pub const MIN_RATIO: u32 = 3;

    /// The longest election timeout.
    pub fn election_max(&self) -> Duration {
        self.election_min * 2
    }

    /// How long a quorum queue's member that heard its leader votes for
    /// no other, even one that found the leader dead (the shortest
    /// election timeout); and so how long a leader that a majority heard
    /// may go on delivering without hearing from it again, less an
    /// eighth for the time its request took to arrive and the two
    /// clocks' drift (see `queue_group::fence`).
    pub fn fence(&self) -> Duration {
        self.election_min
    }

    /// Checks the timing of the group `what` (named in the error): a
    /// heartbeat interval of at least 10 ms and an election timeout of at
    /// least three heartbeat intervals, at most an hour.
    pub fn validate(&self, what: &str) -> Result<(), ClusterError> {
        if self.heartbeat < Self::MIN_HEARTBEAT {
            return Err(ClusterError::Config(format!(
                "the {what} heartbeat interval must be at least {:?}, not {:?}",
                Self::MIN_HEARTBEAT,
                self.heartbeat
            )));
        }
        if self.election_min < self.heartbeat * Self::MIN_RATIO {
            return Err(ClusterError::Config(format!(
                "the {what} election timeout ({:?}) must be at least {} times its heartbeat interval ({:?})",
                self.election_min,
                Self::MIN_RATIO,
                self.heartbeat
            )));
        }
        if self.election_min > Duration::from_secs(3600) {
            return Err(ClusterError::Config(format!(
                "the {what} election timeout must be at most an hour, not {:?}",
                self.election_min
            )));
        }
        Ok(())
    }

    /// openraft's settings for this timing; `name` names the group.
    pub(crate) fn raft_config(&self, name: String) -> openraft::Config {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: name,
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_min),
            election_timeout_max: ms(self.election_max()),
            // A snapshot (a quorum queue's messages, the metadata) may be
            // large: it gets far more than openraft's 200 ms default,
            // scaled with the timing for slow links.
            install_snapshot_timeout: ms(self.election_max() * 5),
            // crate::election runs the election timer, with a pre-vote.
            enable_elect: false,
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_name", &self.node_name)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &"<redacted>")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("dir", &self.dir)
            .field("change_timeout", &self.change_timeout)
            .field("forward_timeout", &self.forward_timeout)
            .field("forward_buffer", &self.forward_buffer)
            .field("snapshot_logs", &self.snapshot_logs)
            .field("join", &self.join)
            .field("tls", &self.tls.is_some())
            .field("metadata_timing", &self.metadata_timing)
            .field("queue_timing", &self.queue_timing)
            .field("without_feature_flags", &self.without_feature_flags)
            .finish()
    }
}

/// The default bound on a metadata change's wait for the cluster.
pub const DEFAULT_CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default bound on a forwarded publish's wait for its owner.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The default bound on what one node buffers for another's queues.
pub const DEFAULT_FORWARD_BUFFER: u64 = 64 << 20;

/// The default number of log entries between snapshots.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 1000;

/// A node's Raft id: the first 8 bytes (big-endian) of the SHA-256 of its
/// name. Derived from the name alone, so it does not change when the peer
/// list grows or is written in another order, and every node computes the
/// same id for a peer without asking it.
pub fn node_id_of(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// Parses a peer list: `n1=127.0.0.1:25672,n2=host:25673`. Host names are
/// resolved now, and again while the node runs ([`refresh_peers`]); one
/// that resolves to nothing yet (a peer not started yet, whose name its
/// DNS does not know yet) is left to the refresh.
pub fn parse_peers(list: &str) -> Result<Vec<Peer>, ClusterError> {
    let mut peers: Vec<Peer> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let malformed = || ClusterError::Config(format!("peer '{item}' is not NAME=HOST:PORT"));
        let (name, host) = item.split_once('=').ok_or_else(malformed)?;
        let (name, host) = (name.trim(), host.trim());
        check_name(name)?;
        if !is_host_port(host) {
            return Err(malformed());
        }
        if peers.iter().any(|p| p.name == name) {
            return Err(ClusterError::Config(format!(
                "peer '{name}' is listed twice"
            )));
        }
        let resolved = match resolve(host) {
            Ok(addr) => Some(addr),
            Err(e) => {
                tracing::warn!(
                    peer = name,
                    "{e}; resolving it again every {PEER_REFRESH:?}"
                );
                None
            }
        };
        peers.push(Peer {
            name: name.to_owned(),
            host: host.to_owned(),
            resolved: Arc::new(RwLock::new(resolved)),
        });
    }
    Ok(peers)
}

/// Whether `addr` has the form `HOST:PORT` (a name, an IPv4 address or a
/// bracketed IPv6 one, and a port), whether or not it resolves.
pub fn is_host_port(addr: &str) -> bool {
    matches!(addr.rsplit_once(':'), Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok())
}

/// Resolves `host:port` to its first address without blocking the
/// runtime.
pub async fn lookup(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve '{addr}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{addr}' resolves to no address"))
}

/// Resolves `host:port` to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr, ClusterError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| ClusterError::Config(format!("cannot resolve '{addr}': {e}")))?
        .next()
        .ok_or_else(|| ClusterError::Config(format!("'{addr}' resolves to no address")))
}

/// A node name: letters, digits, `-`, `_`, `.`, `@`; at most 255 bytes.
pub fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "node name '{name}' must be 1 to 255 letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

impl ClusterConfig {
    /// The secrets this node proves with and accepts.
    pub fn keys(&self) -> crate::auth::Keys<'_> {
        crate::auth::Keys {
            current: &self.secret,
            previous: self.previous_secret.as_deref(),
        }
    }

    /// Default settings for node `me` among `peers` (a peer list), with a
    /// valid secret, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(me: &str, peers: &str) -> ClusterConfig {
        ClusterConfig {
            node_name: me.into(),
            listen: "127.0.0.1:1".parse().expect("address"),
            peers: parse_peers(peers).expect("peer list"),
            secret: "0123456789abcdef".into(),
            previous_secret: None,
            dir: PathBuf::new(),
            change_timeout: DEFAULT_CHANGE_TIMEOUT,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            forward_buffer: DEFAULT_FORWARD_BUFFER,
            snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
            join: None,
            tls: None,
            metadata_timing: RaftTiming::METADATA,
            queue_timing: RaftTiming::QUEUE,
            without_feature_flags: Vec::new(),
        }
    }

    /// Checks the settings together: this node is in the peer list, the
    /// secret is long enough, no two names share an id.
    pub fn validate(&self) -> Result<(), ClusterError> {
        check_name(&self.node_name)?;
        if !self.peers.iter().any(|p| p.name == self.node_name) {
            return Err(ClusterError::Config(format!(
                "this node '{}' is not in the peer list",
                self.node_name
            )));
        }
        if self.secret.len() < 16 {
            return Err(ClusterError::Config(
                "the cluster secret must be at least 16 bytes".into(),
            ));
        }
        if self.previous_secret.as_ref().is_some_and(|p| p.len() < 16) {
            return Err(ClusterError::Config(
                "the previous cluster secret must be at least 16 bytes".into(),
            ));
        }
        let mut ids: Vec<NodeId> = self.peers.iter().map(Peer::id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() {
            return Err(ClusterError::Config("two node names hash to one id".into()));
        }
        self.metadata_timing.validate("metadata group's")?;
        self.queue_timing.validate("quorum queues'")?;
        Ok(())
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        node_id_of(&self.node_name)
    }

    /// This node's own cluster address as its peers should dial it: its
    /// entry in the peer list, or its listener.
    pub fn advertised(&self) -> SocketAddr {
        self.peers
            .iter()
            .find(|p| p.name == self.node_name)
            .and_then(Peer::addr)
            .unwrap_or(self.listen)
    }

    /// This node's own cluster address as it tells the others when it
    /// joins: its entry in the peer list as given (a host name stays a
    /// name, resolved by each member), or its listener.
    pub fn advertised_host(&self) -> String {
        self.peers
            .iter()
            .find(|p| p.name == self.node_name)
            .map_or_else(|| self.listen.to_string(), Peer::recorded)
    }

    /// The address the peer list gives for `id`, if it lists it. It wins
    /// over the membership's: each node may reach a peer by its own route
    /// (a proxy, a NAT), so the list is this node's view.
    pub fn listed_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers
            .iter()
            .find(|p| p.id() == id)
            .and_then(Peer::addr)
    }

    /// The name of the node with Raft id `id`, if it is a peer.
    pub fn name_of(&self, id: NodeId) -> Option<&str> {
        self.peers
            .iter()
            .find(|p| p.id() == id)
            .map(|p| p.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_ids_are_stable() {
        let peers = parse_peers("n1=127.0.0.1:25672, n2=127.0.0.1:25673").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1].name, "n2");
        assert_eq!(peers[1].addr().map(|a| a.port()), Some(25673));
        assert_eq!(node_id_of("n1"), node_id_of("n1"));
        assert_ne!(node_id_of("n1"), node_id_of("n2"));
        assert!(parse_peers("n1=127.0.0.1:1,n1=127.0.0.1:2").is_err());
        assert!(parse_peers("n1").is_err());
        assert!(parse_peers("bad name=127.0.0.1:1").is_err());
    }

    #[test]
    fn a_peer_whose_name_resolves_to_nothing_yet_is_kept_for_later() {
        let peers = parse_peers("n1=127.0.0.1:1,n2=n2.antre-test.invalid:25672").unwrap();
        assert_eq!(peers[1].host, "n2.antre-test.invalid:25672");
        assert_eq!(peers[1].addr(), None);
        assert!(peers[1].is_named());
        assert!(!peers[0].is_named());
        let c = ClusterConfig::for_test("n1", "n1=127.0.0.1:1,n2=n2.antre-test.invalid:25672");
        assert_eq!(c.listed_addr(node_id_of("n2")), None);
        // What is not HOST:PORT is still refused at once.
        for bad in ["n2=nohost", "n2=host:port", "n2=:25672", "n2=host:99999"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_named_peer_is_resolved_again_and_follows_its_name() {
        let peers = parse_peers("n1=localhost:25672").unwrap();
        let first = peers[0].addr().expect("localhost resolves");
        assert!(first.ip().is_loopback());
        // As if the name had pointed elsewhere when it was last resolved
        // (a peer since restarted at a new address).
        let stale: SocketAddr = "10.1.2.3:25672".parse().unwrap();
        let clone = peers[0].clone();
        assert_eq!(clone.set_addr(stale), Some(Some(first)));
        assert_eq!(peers[0].addr(), Some(stale), "clones share the address");
        let moved = peers[0].refresh().await.unwrap();
        assert_eq!(moved, Some((Some(stale), first)));
        assert_eq!(clone.addr(), Some(first));
        assert_eq!(peers[0].refresh().await.unwrap(), None, "no move, no news");

        // A lookup that fails keeps the last address.
        let gone = Peer {
            host: "n9.antre-test.invalid:25672".into(),
            ..Peer::new("n9", stale)
        };
        assert!(gone.refresh().await.is_err());
        assert_eq!(gone.addr(), Some(stale));
    }

    #[test]
    fn validate_wants_this_node_in_the_list_and_a_real_secret() {
        let mut c = ClusterConfig::for_test("n3", "n1=127.0.0.1:1,n2=127.0.0.1:2");
        assert!(c.validate().is_err());
        c.node_name = "n2".into();
        c.validate().unwrap();
        c.secret = "short".into();
        assert!(c.validate().is_err());
        assert!(!format!("{c:?}").contains("short"));
    }

    #[test]
    fn timing_wants_the_heartbeat_well_below_the_election_timeout() {
        RaftTiming::METADATA.validate("m").unwrap();
        RaftTiming::QUEUE.validate("q").unwrap();
        let t = RaftTiming {
            heartbeat: Duration::from_millis(500),
            election_min: Duration::from_millis(1400),
        };
        let e = t.validate("quorum queues'").unwrap_err().to_string();
        assert!(e.contains("at least 3 times"), "{e}");
        let t = RaftTiming {
            heartbeat: Duration::from_millis(5),
            election_min: Duration::from_millis(100),
        };
        assert!(t.validate("m").is_err());
        let c = RaftTiming {
            heartbeat: Duration::from_millis(500),
            election_min: Duration::from_millis(1500),
        }
        .raft_config("x".into());
        assert_eq!(
            (
                c.heartbeat_interval,
                c.election_timeout_min,
                c.election_timeout_max
            ),
            (500, 1500, 3000)
        );
        c.validate().unwrap();
    }
}
