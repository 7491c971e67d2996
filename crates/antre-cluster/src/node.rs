//! A cluster node: starting it, proposing metadata changes, its status.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use antre_broker::cluster::{MetaCommand, MetaError, MetaOutcome, MetadataLog};
use antre_broker::Broker;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::log_store::LogStore;
use crate::network::{CallError, Connection, Link, NetworkFactory, PeerState};
use crate::state_machine::{AppliedHooks, StateMachine, Waiters};
use crate::wire::{Listing, ProposeRefusal, QueueAction, Request, Response};
use crate::{node_id_of, ClusterConfig, ClusterError, Member, NodeId, Proposal, Raft};

mod applied;
mod read_index;

/// A peer counts as running while it was heard from this recently.
const RUNNING_WITHIN: Duration = Duration::from_secs(5);

/// Whether a peer whose link is in `state` counts as running at `now`.
fn peer_running(state: &PeerState, now: SystemTime) -> bool {
    state.heard_within(RUNNING_WITHIN, now)
}

/// One member as [`Cluster::status`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// Cluster listener (as this node dials it).
    pub addr: Option<SocketAddr>,
    /// Raft id.
    pub id: NodeId,
    /// A voter of the metadata group (false: a learner catching up).
    pub voter: bool,
    /// Whether this is the node answering.
    pub this_node: bool,
    /// Whether it answers (this node: always).
    pub running: bool,
    /// Whether it leads the metadata group, as this node knows.
    pub leader: bool,
    /// When it was last heard from (this node: now).
    pub last_contact: Option<SystemTime>,
    /// Why it is unreachable, if it is.
    pub error: Option<String>,
    /// How many times this node checked whether it died (see
    /// [`PeerState::probes`](crate::network::PeerState::probes)).
    pub probes: u64,
    /// How many requests it sent this node (see
    /// [`PeerState::requests`](crate::network::PeerState::requests)).
    pub requests: u64,
    /// How many quorum queue heartbeats it sent this node (see
    /// [`PeerState::queue_heartbeats`](crate::network::PeerState::queue_heartbeats)).
    pub queue_heartbeats: u64,
    /// How many leases of idle quorum queues it sent this node (see
    /// [`PeerState::queue_leases`](crate::network::PeerState::queue_leases)).
    pub queue_leases: u64,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    /// The answering node.
    pub node: String,
    /// Its Raft role: leader, follower, candidate, learner.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// Every member, by name.
    pub members: Vec<MemberStatus>,
}

/// One Raft member's figures as the metrics export them (RabbitMQ's
/// `rabbitmq_raft_*` per quorum queue member).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RaftFigures {
    /// The member's current term.
    pub term: u64,
    /// Whether it leads its group.
    pub leader: bool,
    /// Its Raft role: leader, follower, candidate, learner, shutdown.
    pub role: &'static str,
    /// The last index in its log (appended, maybe not written yet).
    pub last_index: Option<u64>,
    /// The last index applied to its state machine.
    pub last_applied: Option<u64>,
    /// The last index its newest snapshot covers.
    pub snapshot: Option<u64>,
    /// How far its log is written and committed.
    pub log: crate::log_store::LogProgress,
}

impl RaftFigures {
    /// Reads a member's figures from its openraft metrics and its log.
    pub(crate) fn of<C: openraft::RaftTypeConfig<NodeId = NodeId>>(
        m: &openraft::RaftMetrics<NodeId, C::Node>,
        log: crate::log_store::LogProgress,
    ) -> RaftFigures {
        RaftFigures {
            term: m.current_term,
            leader: m.state == ServerState::Leader,
            role: role_name(m.state),
            last_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            log,
        }
    }
}

/// A Raft role's name, as the status and the metrics show it.
fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// A running cluster node.
pub struct Cluster {
    /// The link (settings, peers' states).
    pub link: Arc<Link>,
    /// The metadata group.
    pub raft: Raft,
    /// The quorum queue groups this node is a member of.
    pub queue_groups: Arc<crate::queue_group::QueueGroups>,
    log: LogStore,
    waiters: Waiters,
    hooks: AppliedHooks,
    next_request: AtomicU64,
    /// The broker's runtime (the one `start` was called on).
    pub(crate) runtime: tokio::runtime::Handle,
    /// The Raft groups' own threads ([`crate::raft_runtime`]).
    raft_runtime: Arc<crate::raft_runtime::RaftRuntime>,
    /// Peers this node is finding out whether they died
    /// ([`crate::failover`]).
    pub(crate) probing: Mutex<std::collections::HashSet<NodeId>>,
    /// Connections for forwarding changes to the leader, by target.
    forward: Mutex<HashMap<NodeId, Connection>>,
    /// Set by [`Cluster::shutdown`]: the ping tasks end.
    pub(crate) stopped: std::sync::atomic::AtomicBool,
    /// The listener's task, ended by [`Cluster::shutdown`] (so the
    /// address is free again).
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tells the tasks serving peers' connections to close them.
    stop: tokio::sync::watch::Sender<bool>,
    /// This node, for tasks it spawns.
    this: std::sync::OnceLock<std::sync::Weak<Cluster>>,
    /// Forwarding to queues other nodes own (the broker's `RemoteQueues`).
    pub forwarder: Arc<crate::forward::Forwarder>,
    /// What this node answers to its peers' management requests
    /// ([`Request::NodeInfo`], [`Request::Listing`],
    /// [`Request::CloseConnection`]): its server knows its memory,
    /// alarms and connections, this crate does not.
    management: std::sync::OnceLock<Arc<dyn LocalManagement>>,
    /// The broker whose metadata this node replicates (weak: the broker
    /// holds this node as its metadata log).
    broker: std::sync::Weak<Broker>,
    /// Held by the leader while it enables a feature flag and while it
    /// adds a member, so that a node lacking the flag cannot be added
    /// between the check that every member supports it and its entry.
    pub(crate) flag_changes: tokio::sync::Mutex<()>,
    /// The metadata state machine (a clone: openraft has the other), to
    /// stop it at shutdown.
    state_machine: StateMachine,
    /// The last catch-up with the metadata leader ([`read_index`]).
    catch_up: read_index::CatchUp,
    /// What the other members said they applied ([`applied`]).
    applied_members: applied::Members,
}

/// This node's management layer as its peers' management APIs need it:
/// a cluster's API shows every node's figures and lists every node's
/// connections, whichever node is asked (as RabbitMQ's does).
pub trait LocalManagement: Send + Sync {
    /// This node's figures, in the fields of `/api/nodes`.
    fn node_info(&self) -> serde_json::Value;

    /// This node's own rows of the listing `what` (only `vhost`'s, and
    /// only the object `name`'s, see [`Request::Listing`]).
    fn listing(
        &self,
        what: Listing,
        vhost: Option<&str>,
        name: Option<&str>,
    ) -> Vec<serde_json::Value>;

    /// Closes this node's client connection `name` with `reason` (320
    /// CONNECTION_FORCED); false if it has none of that name.
    fn close_connection(&self, name: &str, reason: &str) -> bool;

    /// Does `action` on this node's queue `queue` in `vhost` as `user`
    /// (name and tags): the API's answer, or its error's status and
    /// reason.
    fn queue_action(
        &self,
        vhost: &str,
        queue: &str,
        user: (&str, &[String]),
        action: QueueAction,
    ) -> Result<serde_json::Value, (u16, String)>;
}

fn wrong_kind() -> CallError {
    CallError::Network("answer of the wrong kind".into())
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.link.config.node_name)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts this node: opens its log and state machine under
    /// `config.dir`, listens for its peers, starts the metadata group
    /// (bootstrapping it with the peer list the first time), and makes
    /// `broker` send its metadata changes through it.
    pub async fn start(
        config: ClusterConfig,
        broker: Arc<Broker>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            ClusterError::Network(format!("cannot listen on {}: {e}", config.listen))
        })?;
        let me = config.node_id();
        let raft_runtime = crate::raft_runtime::RaftRuntime::start(&config.node_name)?;
        let raft_rt = raft_runtime.handle().clone();
        let log = LogStore::open(&config.dir)?;
        let waiters: Waiters = Arc::default();
        let hooks: AppliedHooks = Arc::default();
        let link = Arc::new(Link::new(config.clone()));
        let factory = NetworkFactory::new(Arc::clone(&link));
        let queue_groups = crate::queue_group::QueueGroups::new(
            factory.clone(),
            Arc::clone(&broker),
            &config.dir,
            raft_rt.clone(),
        );
        let sm = StateMachine::open(
            &config.dir,
            Arc::clone(&broker),
            me,
            &config.node_name,
            Arc::clone(&waiters),
            Arc::clone(&hooks),
            Arc::clone(&queue_groups),
        )?;
        let log = log.with_floor(Arc::clone(&sm.floor));
        let state_machine = sm.clone();
        let restorer = sm.clone();
        // The timing is a setting (crate::config::RaftTiming::METADATA by
        // default).
        let raft_config = openraft::Config {
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs.max(1)),
            // Some entries stay after a snapshot, so a follower a little
            // behind catches up from the log rather than a whole snapshot.
            max_in_snapshot_log_to_keep: (config.snapshot_logs / 10).min(100),
            ..config.metadata_timing.raft_config("antre".into())
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        // openraft spawns the core and its workers on the runtime it is
        // started on: the Raft runtime.
        let started = raft_rt.spawn(Raft::new(
            me,
            Arc::new(raft_config),
            factory,
            log.clone(),
            sm,
        ));
        let raft = started
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let forwarder = crate::forward::Forwarder::new(
            Arc::clone(&link),
            &broker,
            Arc::clone(&state_machine.progress),
        );
        let node = Arc::new(Cluster {
            forwarder: Arc::clone(&forwarder),
            management: std::sync::OnceLock::new(),
            link,
            raft,
            queue_groups,
            log,
            waiters,
            hooks,
            next_request: AtomicU64::new(rand::random::<u32>() as u64),
            runtime: tokio::runtime::Handle::current(),
            raft_runtime,
            probing: Mutex::default(),
            forward: Mutex::default(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            listener: Mutex::default(),
            stop: tokio::sync::watch::Sender::new(false),
            this: std::sync::OnceLock::new(),
            broker: Arc::downgrade(&broker),
            flag_changes: tokio::sync::Mutex::new(()),
            state_machine,
            catch_up: read_index::CatchUp::default(),
            applied_members: applied::Members::default(),
        });
        let _ = node.this.set(Arc::downgrade(&node));
        let weak = Arc::downgrade(&node);
        node.queue_groups
            .set_address_book(Box::new(move |id| weak.upgrade()?.recorded_addr(id)));
        node.queue_groups.set_forwarder(&node.forwarder);
        let weak = Arc::downgrade(&node);
        node.forwarder.set_address_book(Box::new(move |name| {
            weak.upgrade()?.addr_of(node_id_of(name))
        }));
        // Peers' Raft requests are answered on the Raft runtime too (the
        // listener was bound here: its socket moves with it).
        let listener = listener
            .into_std()
            .map_err(|e| ClusterError::Network(format!("cluster listener: {e}")))?;
        let serving = raft_rt.spawn(crate::server::serve_std(
            listener,
            Arc::downgrade(&node),
            node.stop.subscribe(),
        ));
        *node.listener.lock() = Some(serving);
        raft_rt.spawn(ping_members(Arc::downgrade(&node)));
        raft_rt.spawn(refresh_names(Arc::downgrade(&node)));
        raft_rt.spawn(crate::feature_flags::enable_when_supported(Arc::downgrade(
            &node,
        )));
        raft_rt.spawn(crate::election::run(
            node.queue_groups.network().clone(),
            None,
            node.raft.clone(),
            node.log.clone(),
            // The metadata group's leader always heartbeats: no leases.
            crate::election::Heard::default(),
            config.metadata_timing,
            Duration::ZERO,
        ));
        match config.join {
            // A joining node must not bootstrap a cluster of its own: it
            // waits for the leader to add it.
            Some(target) => {
                raft_rt.spawn(crate::membership::join(Arc::downgrade(&node), target));
            }
            None => {
                let members: BTreeMap<NodeId, Member> = config
                    .peers
                    .iter()
                    .map(|p| {
                        let member = Member {
                            name: p.name.clone(),
                            addr: p.recorded(),
                        };
                        (p.id(), member)
                    })
                    .collect();
                // Every node bootstraps with the same membership; once the
                // log has one (on later starts), openraft refuses and the
                // log's stands.
                match node.raft.initialize(members).await {
                    Ok(()) => {
                        tracing::info!("cluster bootstrapped with {} members", config.peers.len())
                    }
                    Err(RaftError::APIError(e)) => {
                        tracing::debug!("cluster already initialized: {e}")
                    }
                    Err(e) => return Err(ClusterError::Raft(e.to_string())),
                }
            }
        }
        if !broker.set_metadata_log(Arc::clone(&node) as Arc<dyn MetadataLog>) {
            return Err(ClusterError::Config(
                "the broker already has a cluster".into(),
            ));
        }
        broker.set_remote_queues(forwarder as Arc<dyn antre_broker::remote::RemoteQueues>);
        // What the broker keeps in memory only, back after a restart (the
        // bindings to other nodes' exclusive queues route there only once
        // the broker knows it is a cluster node).
        restorer.restore_transient();
        // This node's exclusive queues went with its restart: their names
        // are free again on every node.
        for release in restorer.released_by_restart() {
            node.propose_later(release);
        }
        tracing::info!(
            node = config.node_name,
            listen = %config.listen,
            "cluster node started ({} peers)",
            config.peers.len()
        );
        Ok(node)
    }

    /// Calls `hook` after each change this node applies (every node
    /// applies every change), for what the server must do on every node,
    /// such as closing a deleted user's connections.
    pub fn on_applied(&self, hook: impl Fn(&MetaCommand) + Send + Sync + 'static) {
        self.hooks.lock().push(Arc::new(hook));
    }

    /// Sets what this node answers its peers' management requests with;
    /// the first call wins (until then it answers with nothing).
    pub fn serve_management(&self, management: Arc<dyn LocalManagement>) {
        let _ = self.management.set(management);
    }

    /// Answers a peer's management request.
    pub(crate) fn local_management(&self, request: Request) -> Response {
        let m = self.management.get();
        match request {
            Request::NodeInfo => {
                let mut info = m.map_or_else(|| serde_json::json!({}), |m| m.node_info());
                if let Some(fields) = info.as_object_mut() {
                    fields.insert(
                        crate::feature_flags::NODE_INFO_FIELD.into(),
                        self.supported_feature_flags().into(),
                    );
                }
                Response::NodeInfo(info)
            }
            Request::Listing { what, vhost, name } => {
                Response::Listing(m.map_or_else(Vec::new, |m| {
                    m.listing(what, vhost.as_deref(), name.as_deref())
                }))
            }
            Request::QueueAction {
                vhost,
                queue,
                user,
                tags,
                action,
            } => Response::QueueAction(match m {
                Some(m) => m.queue_action(&vhost, &queue, (&user, &tags), action),
                None => Err((503, "this node's management API is not running".into())),
            }),
            Request::CloseConnection { name, reason } => {
                Response::CloseConnection(m.is_some_and(|m| m.close_connection(&name, &reason)))
            }
            other => {
                tracing::warn!("not a management request: {other:?}");
                Response::Pong
            }
        }
    }

    /// Asks the member `name` a management request, waiting at most `ttl`.
    async fn ask_management(
        &self,
        name: &str,
        request: Request,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        self.forward_request(node_id_of(name), &request, Instant::now() + ttl)
            .await
    }

    /// Asks the member `name` for its figures (memory, disk, alarms,
    /// connections), waiting at most `ttl`.
    pub async fn node_info(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<serde_json::Value, CallError> {
        match self.ask_management(name, Request::NodeInfo, ttl).await? {
            Response::NodeInfo(info) => Ok(info),
            _ => Err(wrong_kind()),
        }
    }

    /// Asks the member `node` for its own rows of the listing `what`
    /// (only `vhost`'s, and only the object `name`'s, if given), waiting
    /// at most `ttl`.
    pub async fn listing(
        &self,
        node: &str,
        what: Listing,
        vhost: Option<&str>,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<Vec<serde_json::Value>, CallError> {
        let request = Request::Listing {
            what,
            vhost: vhost.map(str::to_owned),
            name: name.map(str::to_owned),
        };
        match self.ask_management(node, request, ttl).await? {
            Response::Listing(rows) => Ok(rows),
            _ => Err(wrong_kind()),
        }
    }

    /// Asks the member `node`, which owns queue `queue` of `vhost`, to do
    /// `action` as `user` (name and tags), waiting at most `ttl`: its
    /// API's answer, or its error's status and reason.
    pub async fn queue_action(
        &self,
        node: &str,
        vhost: &str,
        queue: &str,
        user: (&str, &[String]),
        action: QueueAction,
        ttl: Duration,
    ) -> Result<Result<serde_json::Value, (u16, String)>, CallError> {
        let request = Request::QueueAction {
            vhost: vhost.to_owned(),
            queue: queue.to_owned(),
            user: user.0.to_owned(),
            tags: user.1.to_vec(),
            action,
        };
        match self.ask_management(node, request, ttl).await? {
            Response::QueueAction(answer) => Ok(answer),
            _ => Err(wrong_kind()),
        }
    }

    /// Asks the member `name` to close its client connection `conn` with
    /// `reason`; whether it had one of that name.
    pub async fn close_connection(
        &self,
        name: &str,
        conn: &str,
        reason: &str,
        ttl: Duration,
    ) -> Result<bool, CallError> {
        let request = Request::CloseConnection {
            name: conn.to_owned(),
            reason: reason.to_owned(),
        };
        match self.ask_management(name, request, ttl).await? {
            Response::CloseConnection(closed) => Ok(closed),
            _ => Err(wrong_kind()),
        }
    }

    /// Stops the metadata group and closes the log.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
        self.forwarder.shutdown();
        if let Some(task) = self.listener.lock().take() {
            task.abort();
        }
        self.queue_groups.shutdown().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("stopping raft: {e}");
        }
        self.state_machine.stop();
        self.log.close();
        self.raft_runtime.stop();
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.link.config.node_id()
    }

    /// Where Raft work is spawned.
    pub(crate) fn raft_handle(&self) -> &tokio::runtime::Handle {
        self.raft_runtime.handle()
    }

    /// The metadata group's log.
    pub(crate) fn log(&self) -> &LogStore {
        &self.log
    }

    /// Answers a peer's [`Request::PreVote`] for the metadata group
    /// (`group` none) or a quorum queue's group.
    pub(crate) async fn grants_pre_vote(
        &self,
        group: Option<&str>,
        dead: Option<NodeId>,
        theirs: Option<openraft::LogId<NodeId>>,
    ) -> crate::election::PreVoteAnswer {
        // The candidate's word that its leader died counts only if this
        // node cannot reach that leader either: a node that was cut off
        // (its dial refused, as a dead peer's is) and comes back still
        // thinks so, and must not persuade a member that hears the leader.
        let dead = dead.filter(|&d| {
            let Some(name) = self.name_of(d) else {
                return false;
            };
            // This node's own probe of that leader, if none ran (one runs
            // per peer at a time): if this node cannot reach it yet, so
            // that the candidate's next ask counts; if it cannot already,
            // so that this node stands too. A member whose log is longer
            // than the candidate's is the one that can win, and without a
            // probe of its own it waited for its election timer: seen in
            // the failover soak as a failover of 2 s instead of 0.3.
            if let Some(node) = self.arc() {
                crate::failover::link_closed(&node, &name);
            }
            self.link.unreachable(&name)
        });
        match group {
            None => {
                let timing = self.link.config.metadata_timing;
                let heard = crate::election::Heard::default();
                // No fence: the metadata group delivers no messages.
                let fence = Duration::ZERO;
                crate::election::grants(&self.raft, &self.log, &heard, dead, theirs, timing, fence)
                    .await
            }
            Some(g) => self.queue_groups.grants_pre_vote(g, dead, theirs).await,
        }
    }

    /// Whether node `id` leads the metadata group or a quorum queue group
    /// this node follows.
    pub(crate) fn led_by(&self, id: NodeId) -> bool {
        crate::failover::follows(&self.raft, id) || !self.queue_groups.led_by(id).is_empty()
    }

    /// This node's member of the metadata group, for the metrics.
    pub fn metadata_raft(&self) -> RaftFigures {
        RaftFigures::of::<crate::TypeConfig>(&self.raft.metrics().borrow(), self.log.progress())
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let cfg = &self.link.config;
        let leader = m.current_leader;
        let now = SystemTime::now();
        let members = self
            .members()
            .into_iter()
            .map(|p| {
                let this_node = p.name == cfg.node_name;
                let state = self.link.state(&p.name);
                let running = this_node || peer_running(&state, now);
                MemberStatus {
                    name: p.name.clone(),
                    addr: if this_node {
                        Some(cfg.advertised())
                    } else {
                        p.addr
                    },
                    id: p.id,
                    voter: p.voter,
                    this_node,
                    running,
                    leader: leader == Some(p.id),
                    last_contact: if this_node {
                        Some(now)
                    } else {
                        state.last_contact
                    },
                    error: if this_node { None } else { state.error },
                    probes: state.probes,
                    requests: state.requests,
                    queue_heartbeats: state.queue_heartbeats,
                    queue_leases: state.queue_leases,
                }
            })
            .collect();
        ClusterStatus {
            node: cfg.node_name.clone(),
            role: role_name(m.state).into(),
            term: m.current_term,
            leader: leader.and_then(|id| self.name_of(id)),
            members,
        }
    }

    /// Commits `proposal` as the leader: first checks that a quorum still
    /// follows it (so a leader cut off from its majority does not append
    /// what it cannot commit), then appends it and waits for the commit,
    /// all before `deadline`.
    pub async fn commit_as_leader(
        &self,
        proposal: Proposal,
        deadline: Instant,
    ) -> Result<(), ProposeRefusal> {
        let not_leader = |leader: Option<NodeId>| ProposeRefusal::NotLeader(leader);
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Err(_) => {
                return Err(ProposeRefusal::NoQuorum(
                    "no quorum of the cluster's nodes answers".into(),
                ))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(not_leader(f.leader_id))
            }
            Ok(Err(e)) => return Err(ProposeRefusal::NoQuorum(e.to_string())),
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout_at(deadline, self.raft.client_write(proposal)).await {
            Err(_) => Err(ProposeRefusal::Failed(
                "the change was not committed in time".into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(not_leader(f.leader_id))
            }
            Ok(Err(e)) => Err(ProposeRefusal::Failed(e.to_string())),
        }
    }

    /// Gets `proposal` committed by whoever leads, until `deadline`.
    async fn commit(&self, proposal: Proposal, deadline: Instant) -> Result<(), String> {
        let me = self.id();
        let mut metrics = self.raft.metrics();
        let mut last_error = "no leader is elected".to_owned();
        loop {
            if Instant::now() >= deadline {
                return Err(last_error);
            }
            let leader = metrics.borrow().current_leader;
            match leader {
                Some(l) if l == me => {
                    match self.commit_as_leader(proposal.clone(), deadline).await {
                        Ok(()) => return Ok(()),
                        Err(ProposeRefusal::Failed(e)) => return Err(e),
                        // Nothing was appended: safe to try again.
                        Err(ProposeRefusal::NoQuorum(e)) => last_error = e,
                        Err(ProposeRefusal::NotLeader(_)) => last_error = "leadership moved".into(),
                    }
                }
                Some(l) => {
                    let term = metrics.borrow().current_term;
                    match self.forward(l, &proposal, deadline).await {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(ProposeRefusal::Failed(e))) => return Err(e),
                        Ok(Err(ProposeRefusal::NoQuorum(e))) => last_error = e,
                        Ok(Err(ProposeRefusal::NotLeader(_))) => {
                            last_error = "leadership moved".into()
                        }
                        // Nothing was sent: safe to try again.
                        Err(CallError::Unreachable(e)) => {
                            let name = self.name_of(l).unwrap_or_else(|| "?".into());
                            last_error = format!("the leader {name} is unreachable: {e}");
                        }
                        // It may have been committed (trying again at once
                        // could apply it twice): known once a later leader
                        // logged something this node applied.
                        Err(CallError::Network(e)) => {
                            match self.fate(&proposal, l, term, deadline).await {
                                Some(true) => return Ok(()),
                                Some(false) => {
                                    let name = self.name_of(l).unwrap_or_else(|| "?".into());
                                    tracing::info!(
                                        "{}: the metadata leader {name} went while it had it ({e}), without committing it: proposed again",
                                        proposal.command.describe()
                                    );
                                    last_error = e;
                                    continue;
                                }
                                None => return Err(e),
                            }
                        }
                    }
                }
                None => {}
            }
            // Wait for news of a leader, or a little.
            let pause = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                _ = metrics.changed() => {}
                _ = pause => {}
            }
        }
    }

    /// The feature flag `command` needs that the cluster has not enabled,
    /// if any (see [`MetaCommand::feature_flag`]).
    fn flag_missing(&self, command: &MetaCommand) -> Option<&'static str> {
        command
            .feature_flag()
            .filter(|flag| !self.flag_enabled(flag))
    }

    /// The fate of this node's `proposal`, whose forward to the leader
    /// `leader` (seen in Raft term `term`) got no answer: `Some(true)` once
    /// it is applied here, `Some(false)` once it never will be, `None` if
    /// neither is known by `deadline`.
    ///
    /// It is known not to be once this node applied an entry logged by
    /// another leader in a later term: the leader that logged it had every
    /// committed entry of the earlier terms in its log, and applying it
    /// here means those were applied first (a committed proposal of this
    /// node's answers its waiter as it is applied); an entry of an earlier
    /// term that such a leader lacked is never committed. So a client's
    /// change is proposed again after its metadata leader died under it,
    /// rather than failing (541, closing the connection), without ever
    /// being applied twice. An entry this node got within a snapshot
    /// answers no waiter: it is taken as not applied, and applied again
    /// (metadata changes of one node are idempotent but for their answer).
    async fn fate(
        &self,
        proposal: &Proposal,
        leader: NodeId,
        term: u64,
        deadline: Instant,
    ) -> Option<bool> {
        let mut metrics = self.raft.metrics();
        loop {
            let applied = metrics.borrow().last_applied;
            // Waiters are answered before last_applied moves on.
            if !self.waiters.lock().contains_key(&proposal.request) {
                return Some(true);
            }
            let later =
                applied.is_some_and(|a| a.leader_id.term > term && a.leader_id.node_id != leader);
            if later {
                return Some(false);
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        proposal: &Proposal,
        deadline: Instant,
    ) -> Result<Result<(), ProposeRefusal>, CallError> {
        match self
            .forward_request(leader, &Request::Propose(proposal.clone()), deadline)
            .await?
        {
            Response::Propose(r) => Ok(r),
            _ => Err(CallError::Network("answer of the wrong kind".into())),
        }
    }

    /// Sends `request` to the node `leader` on this node's forwarding
    /// connection to it, and waits for the answer until `deadline`.
    pub(crate) async fn forward_request(
        &self,
        leader: NodeId,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, CallError> {
        let (Some(name), Some(addr)) = (self.name_of(leader), self.addr_of(leader)) else {
            return Err(CallError::Unreachable(format!(
                "unknown leader id {leader}"
            )));
        };
        let taken = self.forward.lock().remove(&leader);
        let mut conn =
            taken.unwrap_or_else(|| Connection::new(Arc::clone(&self.link), &name, addr));
        let ttl = deadline.saturating_duration_since(Instant::now());
        let result = conn.call(request, ttl).await;
        self.forward.lock().insert(leader, conn);
        result
    }

    /// The broker, while it lives.
    pub(crate) fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.upgrade()
    }

    /// Whether the cluster enabled feature flag `name` (false once the
    /// broker is gone).
    pub(crate) fn flag_enabled(&self, name: &str) -> bool {
        self.broker().is_some_and(|b| b.feature_flag_enabled(name))
    }

    /// This node as an `Arc`, for tasks it spawns (None once it is gone).
    pub(crate) fn arc(&self) -> Option<Arc<Cluster>> {
        self.this.get().and_then(std::sync::Weak::upgrade)
    }

    /// Proposes `command` and waits for this node's apply of it.
    pub(crate) async fn propose_async(
        &self,
        command: MetaCommand,
    ) -> Result<MetaOutcome, MetaError> {
        if let Some(flag) = self.flag_missing(&command) {
            return Err(MetaError::Unavailable(format!(
                "cluster metadata change '{}' needs feature flag {flag}, which the cluster has not enabled: it is enabled once every member runs a version of antre that has it (antre cluster feature-flags)",
                command.describe()
            )));
        }
        let deadline = Instant::now() + self.link.config.change_timeout;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(request, tx);
        let proposal = Proposal {
            origin: self.id(),
            request,
            command,
        };
        let what = proposal.command.describe();
        let declared = match &proposal.command {
            MetaCommand::DeclareQueue { vhost, name, .. } => Some((vhost.clone(), name.clone())),
            _ => None,
        };
        let result = match self.commit(proposal, deadline).await {
            Err(e) => Err(MetaError::Unavailable(format!(
                "cluster metadata change '{what}' failed: {e}"
            ))),
            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(result)) => result,
                _ => Err(MetaError::Unavailable(format!(
                    "cluster metadata change '{what}' was committed but not yet applied on this node"
                ))),
            },
        };
        self.waiters.lock().remove(&request);
        if let (Ok(_), Some((vhost, name))) = (&result, declared) {
            // A quorum queue: answer once its group has a leader.
            self.queue_groups.wait_ready(&vhost, &name, deadline).await;
        }
        result
    }
}

/// How often a node pings each peer.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Resolves again, every [`crate::config::PEER_REFRESH`] until the node
/// stops, the host names of its peer list and of the members recorded by
/// name that the list does not give.
async fn refresh_names(node: std::sync::Weak<Cluster>) {
    loop {
        tokio::time::sleep(crate::config::PEER_REFRESH).await;
        let Some(n) = node.upgrade() else { return };
        if n.stopped.load(Ordering::Relaxed) {
            return;
        }
        let link = Arc::clone(&n.link);
        drop(n);
        crate::config::refresh_peers(&link.config.peers).await;
        link.refresh_names().await;
    }
}

/// Keeps one ping task per member (other than this node): members come
/// and go with membership changes.
async fn ping_members(node: std::sync::Weak<Cluster>) {
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = match node.upgrade() {
            Some(n) if !n.stopped.load(Ordering::Relaxed) => n,
            _ => break,
        };
        let me = n.link.config.node_name.clone();
        let members: Vec<(String, SocketAddr)> = n
            .members()
            .into_iter()
            .filter(|m| m.name != me)
            .filter_map(|m| Some((m.name, m.addr?)))
            .collect();
        tasks.retain(|name, task| {
            let keep = members.iter().any(|(m, _)| m == name) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, addr) in members {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name) {
                let conn = Connection::new(Arc::clone(&n.link), slot.key(), addr);
                slot.insert(tokio::spawn(ping(conn, node.clone())));
            }
        }
    }
    for task in tasks.values() {
        task.abort();
    }
}

/// Pings one peer every second while the node lives; each answer (or
/// failure) updates what the node knows of the peer.
async fn ping(mut conn: Connection, node: std::sync::Weak<Cluster>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match node.upgrade() {
            Some(n) if !n.stopped.load(Ordering::Relaxed) => drop(n),
            _ => return,
        }
        let _ = conn.call(&Request::Ping, PING_EVERY).await;
    }
}

impl Cluster {
    /// Runs `work` to its end on the calling thread, for the broker's
    /// synchronous callers: on a worker of the multi-threaded runtime
    /// through `block_in_place` (the worker's other tasks move elsewhere
    /// while it waits), outside any runtime on the node's. None on a
    /// single-threaded runtime, whose one thread would wait for itself.
    fn wait_blocking<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                Some(tokio::task::block_in_place(|| h.block_on(work)))
            }
            Ok(_) => None,
            Err(_) => Some(self.runtime.block_on(work)),
        }
    }
}

impl MetadataLog for Cluster {
    fn node_name(&self) -> &str {
        &self.link.config.node_name
    }

    /// Voters that are running: as RabbitMQ's locators, placement skips a
    /// node that is down (a classic queue placed there could not be used
    /// until it came back).
    fn nodes(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|m| {
                m.voter
                    && (m.name == self.link.config.node_name
                        || peer_running(&self.link.state(&m.name), SystemTime::now()))
            })
            .map(|m| m.name)
            .collect()
    }

    /// Blocks the calling thread until the change is applied here or the
    /// change timeout passed. On a worker of the multi-threaded runtime it
    /// uses `block_in_place`, so the worker's other tasks move elsewhere
    /// while it waits.
    ///
    /// A change that succeeded is answered once every other running member
    /// applied it too (bounded, see [`applied`]), as RabbitMQ commits a
    /// change on every running node before it answers.
    fn propose(&self, command: MetaCommand) -> Result<MetaOutcome, MetaError> {
        self.wait_blocking(async {
            let result = self.propose_async(command).await;
            if result.is_ok() {
                self.applied_everywhere().await;
            }
            result
        })
        .unwrap_or_else(|| {
            Err(MetaError::Unavailable(
                "cluster metadata changes cannot wait on a single-threaded runtime".into(),
            ))
        })
    }

    fn created(&self, vhost: &str, created: antre_broker::cluster::Created<'_>) {
        self.queue_groups.created(vhost, created);
    }

    /// Blocks the calling thread as [`MetadataLog::propose`] does, for at
    /// most a second.
    fn catch_up(&self) -> bool {
        self.wait_blocking(self.catch_up_async()).unwrap_or(false)
    }

    fn may_log(&self, command: &MetaCommand) -> bool {
        self.flag_missing(command).is_none()
    }

    fn propose_later(&self, command: MetaCommand) {
        let Some(node) = self.arc() else {
            return;
        };
        self.runtime.spawn(async move {
            let what = command.describe();
            if let Err(e) = node.propose_async(command).await {
                tracing::warn!("{what}: {e}");
            }
        });
    }
}
