//! The dialling side of the cluster link, and what this node knows of its
//! peers' reachability.
//!
//! openraft asks its network factory for one client per target; each
//! client keeps one TCP connection, authenticated once ([`crate::auth`]),
//! and sends one request at a time on it (openraft's replication to a
//! target is sequential). A failed connect or handshake backs off
//! exponentially (100 ms doubling to 2 s) before the next attempt, so a
//! node that is down costs its peers one connect per back-off period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::Member;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::auth::{self, AuthError};
use crate::stream::{idle_and_open, BoxStream};
use crate::wire::{Request, Response};
use crate::{ClusterConfig, NodeId, TypeConfig};

/// How long a TCP connect to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first and the longest wait before reconnecting to a peer.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// (A returning peer is found within this: longer, and a member back from
/// a restart waited for its leader past its election timeout.)
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What this node last saw of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    /// Whether the last exchange with it (either direction) succeeded.
    pub reachable: bool,
    /// Why it is not, when it is not.
    pub error: Option<String>,
    /// When a message from it last arrived (wall clock).
    pub last_contact: Option<SystemTime>,
    /// How many times this node checked whether it died, after a
    /// connection it had opened here closed.
    pub probes: u64,
    /// How many requests it sent this node (a batch of heartbeats is one).
    pub requests: u64,
    /// How many quorum queue heartbeats (empty appends) it sent this
    /// node, each group's counted, batched or not.
    pub queue_heartbeats: u64,
    /// How many leases of idle quorum queues it sent this node, each
    /// group's counted ([`crate::queue_group::leases`]).
    pub queue_leases: u64,
}

impl PeerState {
    /// Whether the last exchange with the peer succeeded and a message
    /// from it arrived less than `within` before `now`.
    pub fn heard_within(&self, within: Duration, now: SystemTime) -> bool {
        let recent = self
            .last_contact
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d < within);
        self.reachable && recent
    }
}

/// The link's shared state: who we are, the secret, our peers.
pub struct Link {
    /// This node's settings.
    pub config: ClusterConfig,
    states: Mutex<HashMap<String, PeerState>>,
    /// Members the membership records by host name and this node's list
    /// does not name (nodes that joined later): what each name resolved
    /// to last, None before its first answer. See [`Link::resolved`].
    names: Mutex<HashMap<String, Option<SocketAddr>>>,
    /// Set while the node is drained (see [`Link::set_draining`]).
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.config.node_name)
            .finish()
    }
}

/// Marks `peer` reachable, heard from now; its state.
fn touch<'a>(states: &'a mut HashMap<String, PeerState>, peer: &str) -> &'a mut PeerState {
    let s = states.entry(peer.to_owned()).or_default();
    if !s.reachable {
        tracing::info!(peer, "cluster peer {peer} is reachable");
    }
    s.reachable = true;
    s.error = None;
    s.last_contact = Some(SystemTime::now());
    s
}

impl Link {
    /// The link of a node with these settings.
    pub fn new(config: ClusterConfig) -> Link {
        Link {
            config,
            states: Mutex::default(),
            names: Mutex::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The address of a member recorded at `host` (`HOST:PORT`): an IP
    /// address as it is, a host name as last resolved by
    /// [`Link::refresh_names`] (which the first ask enrols it in). Never
    /// looked up here: this runs on the Raft runtime, for every request.
    pub fn resolved(&self, host: &str) -> Option<SocketAddr> {
        if let Ok(addr) = host.parse() {
            return Some(addr);
        }
        let mut names = self.names.lock();
        match names.get(host) {
            Some(found) => *found,
            None => {
                names.insert(host.to_owned(), None);
                None
            }
        }
    }

    /// Resolves again the host names [`Link::resolved`] was asked for.
    pub async fn refresh_names(&self) {
        let names: Vec<String> = self.names.lock().keys().cloned().collect();
        for host in names {
            let found = match crate::config::lookup(&host).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!("a member's address: {e}");
                    continue;
                }
            };
            let before = self.names.lock().insert(host.clone(), Some(found));
            if before != Some(Some(found)) {
                tracing::info!(host, %found, "a member's host name resolves to a new address");
            }
        }
    }

    /// Drains this node (maintenance mode) or revives it: while drained,
    /// its quorum queue and stream replicas do not stand for election,
    /// nor take a leadership handed to them (they still follow and vote),
    /// so the leaders moved away stay away until the node stops.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this node is drained.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records a successful exchange with `peer`.
    pub fn contact(&self, peer: &str) {
        touch(&mut self.states.lock(), peer);
    }

    /// Records a request `peer` sent this node (a successful exchange).
    pub fn received(&self, peer: &str) {
        touch(&mut self.states.lock(), peer).requests += 1;
    }

    /// Counts `n` quorum queue heartbeats `peer` sent this node.
    pub fn heartbeats_from(&self, peer: &str, n: usize) {
        if let Some(s) = self.states.lock().get_mut(peer) {
            s.queue_heartbeats += n as u64;
        }
    }

    /// Counts `n` leases of idle quorum queues `peer` sent this node.
    pub fn leases_from(&self, peer: &str, n: usize) {
        if let Some(s) = self.states.lock().get_mut(peer) {
            s.queue_leases += n as u64;
        }
    }

    /// Records a failed exchange with `peer` at `addr`, logging a new
    /// reason once.
    pub fn failed(&self, peer: &str, addr: SocketAddr, reason: &str, refused: bool) {
        let mut states = self.states.lock();
        let s = states.entry(peer.to_owned()).or_default();
        if s.error.as_deref() != Some(reason) {
            if refused {
                tracing::warn!(peer, %addr, "cluster peer {peer} at {addr} refused: {reason}");
            } else {
                tracing::info!(peer, %addr, "cluster peer {peer} at {addr} unreachable: {reason}");
            }
        }
        s.reachable = false;
        s.error = Some(reason.to_owned());
    }

    /// Counts a check of whether `peer` died.
    pub fn probing(&self, peer: &str) {
        self.states
            .lock()
            .entry(peer.to_owned())
            .or_default()
            .probes += 1;
    }

    /// Whether this node's last exchange with `peer` failed (false if it
    /// never had one).
    pub fn unreachable(&self, peer: &str) -> bool {
        self.states.lock().get(peer).is_some_and(|s| !s.reachable)
    }

    /// What this node knows of `peer`.
    pub fn state(&self, peer: &str) -> PeerState {
        self.states.lock().get(peer).cloned().unwrap_or_default()
    }
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (or authenticated): nothing was sent.
    #[error("{0}")]
    Unreachable(String),
    /// The request may have been sent, but no answer came back.
    #[error("{0}")]
    Network(String),
}

/// One authenticated connection to one peer, made when first needed.
///
/// A call may be cut off at any point: openraft drops an RPC's future at
/// its deadline (the heartbeat interval, for an append), and so does
/// [`Connection::call`]'s own timeout. What was under way is therefore
/// kept here rather than in the call's future: a dial goes on in a task of
/// its own, and an exchange keeps what it wrote of the request and read of
/// the answer ([`Exchange`]). The next call takes over from there (an
/// earlier call's late answer is read and dropped) instead of dialling
/// again. Dialling again within the next call's deadline cost a TCP
/// connect and a handshake of two round trips on top of the request's
/// own: over a link slower than about a fifth of the heartbeat interval,
/// one slow answer made every later call time out too, and the follower
/// was never replicated to again.
pub struct Connection {
    link: Arc<Link>,
    name: String,
    addr: SocketAddr,
    /// The address the membership records for it (a member this node's
    /// list does not name may be recorded by host name).
    member: Option<String>,
    /// Where the list or the membership put it when `addr` was last
    /// chosen ([`routed`]).
    routed: Option<SocketAddr>,
    stream: Option<BoxStream>,
    /// A dial started by a call that was cut off, still going.
    dialing: Option<tokio::task::JoinHandle<Result<BoxStream, AuthError>>>,
    /// An exchange a call that was cut off left unfinished.
    exchange: Option<Exchange>,
    /// Exchanges started, to tell whether a call that timed out had sent
    /// its request.
    exchanges: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

/// An unfinished exchange older than this is given up (its connection
/// closed) rather than waited for: the peer is paused or the route is
/// gone, and a new connection is the better bet.
const EXCHANGE_GIVE_UP: Duration = Duration::from_secs(2);

/// One request and its answer on a stream, resumable after its driving
/// future was dropped: every await in [`Exchange::run`] is a single
/// `write`, `flush` or `read`, which either made progress (recorded before
/// the next await) or did nothing.
struct Exchange {
    stream: BoxStream,
    request: Vec<u8>,
    written: usize,
    flushed: bool,
    head: [u8; 4],
    head_read: usize,
    body: Vec<u8>,
    body_read: usize,
    started: Instant,
}

impl Exchange {
    fn new(stream: BoxStream, request: Vec<u8>) -> Exchange {
        Exchange {
            stream,
            request,
            written: 0,
            flushed: false,
            head: [0; 4],
            head_read: 0,
            body: Vec::new(),
            body_read: 0,
            started: Instant::now(),
        }
    }

    /// Sends what is left of the request and reads what is left of the
    /// answer: the answer's body.
    async fn run(&mut self) -> std::io::Result<Vec<u8>> {
        use std::io::{Error, ErrorKind};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while self.written < self.request.len() {
            match self.stream.write(&self.request[self.written..]).await? {
                0 => return Err(ErrorKind::WriteZero.into()),
                n => self.written += n,
            }
        }
        if !self.flushed {
            self.stream.flush().await?;
            self.flushed = true;
        }
        let closed = || Error::new(ErrorKind::UnexpectedEof, "the peer closed the connection");
        while self.head_read < 4 {
            match self.stream.read(&mut self.head[self.head_read..]).await? {
                0 => return Err(closed()),
                n => self.head_read += n,
            }
        }
        let len = crate::wire::body_length(self.head)?;
        self.body.resize(len, 0);
        while self.body_read < len {
            match self.stream.read(&mut self.body[self.body_read..]).await? {
                0 => return Err(closed()),
                n => self.body_read += n,
            }
        }
        Ok(std::mem::take(&mut self.body))
    }
}

/// Where the peer `name` is now: at the address this node's list gives
/// it, else at what `member` (its address in the membership) resolves to,
/// both as last resolved.
pub(crate) fn routed(link: &Link, name: &str, member: Option<&str>) -> Option<SocketAddr> {
    match link.config.peers.iter().find(|p| p.name == name) {
        Some(peer) => peer.addr(),
        None => member.and_then(|m| link.resolved(m)),
    }
}

impl Connection {
    /// A connection to the peer `name` at `addr` (not made yet).
    pub fn new(link: Arc<Link>, name: &str, addr: SocketAddr) -> Connection {
        Connection::with_member(link, name, addr, None)
    }

    /// A connection to the member `name` recorded in the membership at
    /// `member`, dialled at `addr` for now (see [`routed`]).
    pub fn to_member(link: Arc<Link>, name: &str, addr: SocketAddr, member: &str) -> Connection {
        Connection::with_member(link, name, addr, Some(member.to_owned()))
    }

    fn with_member(
        link: Arc<Link>,
        name: &str,
        addr: SocketAddr,
        member: Option<String>,
    ) -> Connection {
        Connection {
            routed: routed(&link, name, member.as_deref()),
            member,
            link,
            name: name.to_owned(),
            addr,
            stream: None,
            dialing: None,
            exchange: None,
            exchanges: 0,
            failures: 0,
            retry_at: None,
        }
    }

    async fn connect(&mut self) -> Result<BoxStream, CallError> {
        if self.dialing.is_none() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    let why = self.link.state(&self.name).error.unwrap_or_default();
                    return Err(CallError::Unreachable(format!("backing off: {why}")));
                }
            }
            // A peer whose address moved since (its host name resolves
            // elsewhere: it restarted at a new address) is dialled where
            // it is now.
            let now = routed(&self.link, &self.name, self.member.as_deref());
            if now != self.routed {
                if let Some(addr) = now {
                    self.addr = addr;
                }
                self.routed = now;
            }
            let (link, name, addr) = (Arc::clone(&self.link), self.name.clone(), self.addr);
            self.dialing = Some(tokio::spawn(async move {
                authenticated(&link, &name, addr).await
            }));
        }
        let Some(dialing) = self.dialing.as_mut() else {
            return Err(CallError::Unreachable("no dial".into()));
        };
        let result = dialing
            .await
            .unwrap_or_else(|e| Err(AuthError::Io(format!("dial task failed: {e}"))));
        self.dialing = None;
        match result {
            Ok(s) => {
                self.failures = 0;
                self.retry_at = None;
                self.link.contact(&self.name);
                Ok(s)
            }
            Err(e) => {
                let refused = !matches!(e, AuthError::Io(_));
                self.link
                    .failed(&self.name, self.addr, &e.to_string(), refused);
                let wait = BACKOFF_MIN
                    .saturating_mul(1 << self.failures.min(5))
                    .min(BACKOFF_MAX);
                self.failures += 1;
                self.retry_at = Some(Instant::now() + wait);
                Err(CallError::Unreachable(e.to_string()))
            }
        }
    }

    /// Sends one request and reads its answer, within `ttl`.
    pub async fn call(&mut self, request: &Request, ttl: Duration) -> Result<Response, CallError> {
        let frame = crate::wire::encode_request(request)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let before = self.exchanges;
        match tokio::time::timeout(ttl, self.exchange(frame)).await {
            Ok(result) => result,
            Err(_) if self.exchanges != before => Err(CallError::Network(format!(
                "no answer from {} within {ttl:?}",
                self.name
            ))),
            Err(_) => Err(CallError::Unreachable(format!(
                "no connection to {} within {ttl:?}",
                self.name
            ))),
        }
    }

    async fn exchange(&mut self, frame: Vec<u8>) -> Result<Response, CallError> {
        // An earlier call's exchange first: its answer is dropped, its
        // connection kept.
        if let Some(earlier) = self.exchange.as_mut() {
            if earlier.started.elapsed() < EXCHANGE_GIVE_UP && earlier.run().await.is_ok() {
                self.stream = self.exchange.take().map(|e| e.stream);
            } else {
                self.exchange = None;
            }
        }
        // An idle connection has nothing to read: if it is readable, the
        // peer closed it (or broke the protocol), and a request sent on it
        // would be lost after all. Such a connection is replaced before
        // anything is sent, so the caller may safely try again elsewhere.
        let idle = self
            .stream
            .take()
            .and_then(|mut s| idle_and_open(&mut s).then_some(s));
        let stream = match idle {
            Some(s) => s,
            None => self.connect().await?,
        };
        self.exchanges += 1;
        let answer = self
            .exchange
            .insert(Exchange::new(stream, frame))
            .run()
            .await;
        let done = self.exchange.take();
        let response = answer.and_then(|body| crate::wire::decode_body::<Response>(&body));
        match response {
            Ok(response) => {
                self.stream = done.map(|e| e.stream);
                self.link.contact(&self.name);
                Ok(response)
            }
            Err(e) => {
                self.link
                    .failed(&self.name, self.addr, &e.to_string(), false);
                Err(CallError::Network(e.to_string()))
            }
        }
    }
}

/// Dials `name` at `addr` and authenticates the connection (TLS first if
/// the link has it).
async fn authenticated(link: &Link, name: &str, addr: SocketAddr) -> Result<BoxStream, AuthError> {
    let s = dial(addr).await.map_err(AuthError::Io)?;
    let cfg = &link.config;
    let mut s: BoxStream = match &cfg.tls {
        Some(tls) => tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, tls.connect(s))
            .await
            .map_err(|_| AuthError::Io("TLS handshake timed out".into()))?
            .map_err(|e| AuthError::Tls(e.to_string()))?,
        None => Box::new(s),
    };
    tokio::time::timeout(
        auth::HANDSHAKE_TIMEOUT,
        auth::client(&mut s, &cfg.node_name, name, cfg.keys()),
    )
    .await
    .map_err(|_| AuthError::Io("handshake timed out".into()))??;
    Ok(s)
}

/// openraft's network factory: a [`Connection`] per target, from a pool.
///
/// openraft keeps one client per target for replication, but asks for a
/// new one for every leadership check (`ensure_linearizable`, run before
/// each metadata change) and gives that check the heartbeat interval
/// (200 ms) in all, connecting included. A fresh connection costs a TCP
/// connect, the TLS handshake if any and the HMAC handshake (two round
/// trips): over a link of tens of milliseconds that alone passes 200 ms,
/// and every check would fail. So a client's connection goes back to a
/// pool when openraft drops it, the next client takes it, and when the
/// pool is empty a connection is made for it in the background, outside
/// openraft's timeout, while the current client dials its own.
#[derive(Clone)]
pub struct NetworkFactory {
    /// The shared link.
    pub link: Arc<Link>,
    pool: Arc<Pool>,
}

/// Idle authenticated connections by target, and the targets one is
/// being made for.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<NodeId, Vec<Connection>>>,
    warming: Mutex<std::collections::HashSet<NodeId>>,
}

/// Idle connections kept per target.
const POOL_MAX: usize = 4;

impl Pool {
    /// An idle connection to `target` at `addr`. Those to another
    /// address are dropped: the peer's host name resolves elsewhere now
    /// (it restarted at a new address), and the old one may lead nowhere
    /// or to another machine.
    fn take(&self, target: NodeId, addr: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&target)?;
        list.retain(|c| c.addr == addr);
        list.pop()
    }

    fn give_back(&self, target: NodeId, conn: Connection) {
        if conn.stream.is_none() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(target).or_default();
        if list.len() < POOL_MAX {
            list.push(conn);
        }
    }
}

impl NetworkFactory {
    /// The factory of a node's link.
    pub fn new(link: Arc<Link>) -> NetworkFactory {
        NetworkFactory {
            link,
            pool: Arc::default(),
        }
    }

    /// Makes a connection to `target` for the pool, in the background.
    fn warm(&self, target: NodeId, name: &str, addr: SocketAddr, member: &str) {
        if !self.pool.warming.lock().insert(target) {
            return;
        }
        let pool = Arc::clone(&self.pool);
        let mut conn = Connection::to_member(Arc::clone(&self.link), name, addr, member);
        tokio::spawn(async move {
            if let Ok(stream) = conn.connect().await {
                conn.stream = Some(stream);
                pool.give_back(target, conn);
            }
            pool.warming.lock().remove(&target);
        });
    }
}

/// A connection from a [`NetworkFactory`]'s pool, back in the pool when
/// dropped: what openraft's per-target clients hold, of the metadata
/// group and of quorum queue groups alike (one pool per node: the link's
/// requests name their group).
pub struct PooledConnection {
    target: NodeId,
    conn: Option<Connection>,
    pool: Arc<Pool>,
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(self.target, conn);
        }
    }
}

impl PooledConnection {
    /// Sends one request and reads its answer, within `ttl`.
    pub async fn call(&mut self, request: &Request, ttl: Duration) -> Result<Response, CallError> {
        match self.conn.as_mut() {
            Some(conn) => conn.call(request, ttl).await,
            None => Err(CallError::Unreachable("no connection".into())),
        }
    }
}

impl NetworkFactory {
    /// A connection to `target` (named `name`, recorded in the membership
    /// at `member`, dialled at `addr` if a new one is needed): an idle one
    /// from the pool, or a new one while another is made for the pool in
    /// the background.
    pub fn connection(
        &self,
        target: NodeId,
        name: &str,
        addr: SocketAddr,
        member: &str,
    ) -> PooledConnection {
        let conn = match self.pool.take(target, addr) {
            Some(conn) => conn,
            None => {
                self.warm(target, name, addr, member);
                Connection::to_member(Arc::clone(&self.link), name, addr, member)
            }
        };
        PooledConnection {
            target,
            conn: Some(conn),
            pool: Arc::clone(&self.pool),
        }
    }
}

/// openraft's client for one target of the metadata group.
pub struct PeerClient {
    target: NodeId,
    conn: PooledConnection,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            conn: crate::election::Voters::<TypeConfig>::connection(self, target, node),
        }
    }
}

impl crate::election::Voters<TypeConfig> for NetworkFactory {
    fn connection(&self, id: NodeId, node: &Member) -> PooledConnection {
        let name = if node.name.is_empty() {
            "unknown"
        } else {
            &node.name
        };
        let (name, addr) = crate::election::route(self, id, name, &node.addr);
        NetworkFactory::connection(self, id, &name, addr, &node.addr)
    }

    fn network(&self) -> &NetworkFactory {
        self
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn rpc(&mut self, request: Request, option: &RPCOption) -> Result<Response, CallError> {
        self.conn.call(&request, option.hard_ttl()).await
    }
}

fn rpc_error<E: std::error::Error>(e: CallError) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    let io = std::io::Error::other(e.to_string());
    match e {
        CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&io)),
        CallError::Network(_) => RPCError::Network(NetworkError::new(&io)),
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    rpc_error(CallError::Network("answer of the wrong kind".into()))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .rpc(Request::Append(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Response::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .rpc(Request::Snapshot(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Response::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self
            .rpc(Request::Vote(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }
}

/// Whether a connection to `addr` is a connection to itself.
fn reached_itself(s: &TcpStream, addr: SocketAddr) -> bool {
    s.local_addr().ok() == Some(addr)
}

/// Opens a TCP connection to a peer's cluster address (no delay on
/// small frames). A connection to an address nothing listens on, made from
/// that same address, connects to itself (TCP simultaneous open): a node
/// that keeps dialling a stopped peer on its own host could take the
/// peer's port that way and keep it from starting again. Such a
/// connection is closed and reported as a refusal.
pub(crate) async fn dial(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if reached_itself(&s, addr) {
        return Err(format!(
            "nothing listens on {addr} (the connection reached itself)"
        ));
    }
    let _ = s.set_nodelay(true);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SECRET: &str = "0123456789abcdef";

    fn link(me: &str, peers: &str) -> Arc<Link> {
        let config = ClusterConfig::for_test(me, peers);
        assert_eq!(config.secret, SECRET);
        Arc::new(Link::new(config))
    }

    /// A peer over a slow link: its handshake takes `handshake` longer,
    /// its first answer `first` longer, the others nothing. Counts the
    /// connections it accepted.
    async fn slow_peer(handshake: Duration, first: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let answers = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let answers = Arc::clone(&answers);
                tokio::spawn(async move {
                    tokio::time::sleep(handshake).await;
                    let peers = ["n1".to_owned(), "n2".to_owned()];
                    if auth::server(&mut s, "n2", &peers, SECRET.into())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    while let Ok(req) = crate::wire::read_request(&mut s).await {
                        assert!(matches!(req, Request::Ping));
                        if answers.fetch_add(1, Ordering::SeqCst) == 0 {
                            tokio::time::sleep(first).await;
                        }
                        if crate::wire::write_frame(&mut s, &Response::Pong)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// One late answer must not cost the connection: over a link whose
    /// handshake alone takes longer than a call may, redialling after it
    /// made every later call time out as well (a follower behind a slow
    /// link was never replicated to again).
    #[tokio::test]
    async fn a_late_answer_is_read_by_the_next_call_on_the_same_connection() {
        let ttl = Duration::from_millis(500);
        let (addr, accepted) =
            slow_peer(Duration::from_millis(600), Duration::from_millis(700)).await;
        let mut conn = Connection::new(link("n1", "n1=127.0.0.1:1,n2=127.0.0.1:2"), "n2", addr);
        // The first call dials (600 ms) and is cut off: the dial goes on.
        assert!(matches!(
            conn.call(&Request::Ping, ttl).await,
            Err(CallError::Unreachable(_))
        ));
        // The second finds the connection made and sends; the answer is
        // late (700 ms): cut off again, the exchange left half done.
        assert!(matches!(
            conn.call(&Request::Ping, ttl).await,
            Err(CallError::Network(_))
        ));
        // The third reads the late answer (200 ms to go), then its own.
        assert!(matches!(
            conn.call(&Request::Ping, ttl).await,
            Ok(Response::Pong)
        ));
        assert!(matches!(
            conn.call(&Request::Ping, ttl).await,
            Ok(Response::Pong)
        ));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
    }

    #[tokio::test]
    async fn a_member_recorded_by_name_is_looked_up_off_the_request_path() {
        let link = link("n1", "n1=127.0.0.1:1");
        let ip: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert_eq!(link.resolved("127.0.0.1:7"), Some(ip));
        assert_eq!(
            link.resolved("localhost:7"),
            None,
            "not looked up when asked"
        );
        link.refresh_names().await;
        let found = link
            .resolved("localhost:7")
            .expect("resolved by the refresh");
        assert!(found.ip().is_loopback() && found.port() == 7, "{found}");
        // A name that stops resolving keeps its last address.
        assert_eq!(link.resolved("n9.antre-test.invalid:7"), None);
        link.refresh_names().await;
        assert_eq!(link.resolved("n9.antre-test.invalid:7"), None);
        assert_eq!(link.resolved("localhost:7"), Some(found));
    }

    #[tokio::test]
    async fn a_connection_that_reached_itself_is_recognised() {
        // What a dial of a stopped peer's port can become when the kernel
        // picks that same port as the source: a socket bound to the
        // address it connects to (TCP simultaneous open).
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(addr).unwrap();
        let s = socket.connect(addr).await.unwrap();
        assert!(reached_itself(&s, addr));
        // An ordinary connection is not.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let s = TcpStream::connect(to).await.unwrap();
        assert!(!reached_itself(&s, to));
    }
}
