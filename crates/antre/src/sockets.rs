//! File descriptors, and the budget of client sockets that keeps them for
//! the message store.
//!
//! Every accepted client socket (AMQP, AMQPS, HTTP, HTTPS) takes a
//! [`SocketSlot`] from the node's [`Sockets`] before anything else happens
//! to it, and gives it back when it closes. The budget is what the
//! file-descriptor limit leaves once the store, definitions, logs and the
//! listeners have theirs (RabbitMQ's `sockets_total`): at start-up the soft
//! `RLIMIT_NOFILE` is raised to the hard limit and the budget is 90% of it
//! less 100, unless `max_sockets` says otherwise. So a flood of sockets
//! runs into the budget, never into `EMFILE` in the middle of a disk
//! write. HTTP connections have their own cap, `http_max_connections`,
//! inside the budget.
//!
//! When the budget (or the HTTP cap) is reached, a new socket does not
//! simply bounce: the longest-idle socket is closed to make room, as nginx
//! reuses its keep-alive connections. Idle means an HTTP connection with no
//! request in progress, or an AMQP connection that has not finished its
//! handshake; both are cheap to lose, and idle sockets are exactly what a
//! misbehaving client floods a server with, so a bystander who connects and
//! talks at once still gets in. Only when every socket is busy (HTTP
//! requests in progress, AMQP connections open) is the new one closed at
//! once, with a log line. Established AMQP connections are never closed to
//! make room: `max_connections` bounds them the AMQP way.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Descriptors kept out of the budget in any case (RabbitMQ reserves 100
/// plus 10%).
const RESERVED: u64 = 100;

/// How often a refusal is logged at most (with the count since the last).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// The file-descriptor limit: the soft `RLIMIT_NOFILE`, first raised to
/// the hard limit so the broker gets what the system allows; returns it
/// (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => tracing::debug!(
                    from = limit.current,
                    to = limit.maximum,
                    "raised the open file limit"
                ),
                Err(e) => tracing::warn!("could not raise the open file limit: {e}"),
            }
        }
        fd_limit()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The soft limit on open files now (`RLIM_INFINITY` counts as `u64::MAX`).
pub fn fd_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Some(limit.current.unwrap_or(u64::MAX))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// File descriptors open now (Linux; 0 elsewhere).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The default socket budget for a file-descriptor limit: 90% of it less
/// 100, as RabbitMQ computes `sockets_total` (at least 1).
pub fn default_budget(fd_limit: u64) -> u64 {
    (fd_limit.saturating_sub(RESERVED) / 10 * 9).max(1)
}

/// What a socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// AMQP or AMQPS.
    Amqp,
    /// HTTP or HTTPS.
    Http,
}

/// What an HTTP connection is doing, for its timeouts and for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request (or, on AMQP, in the handshake).
    Idle,
    /// The first bytes of a request head arrived; the rest has not.
    ReadingHead,
    /// A request is being served (or, on AMQP, the connection is open).
    Busy,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Idle,
            1 => Phase::ReadingHead,
            _ => Phase::Busy,
        }
    }
}

/// The client sockets of the node: the budget, the HTTP cap, and who may be
/// closed to make room.
#[derive(Debug)]
pub struct Sockets {
    total: usize,
    http_total: usize,
    state: Mutex<State>,
    refused: AtomicU64,
    evicted: AtomicU64,
    /// Refusals not yet logged, and when the last log line was written.
    refusal_log: Mutex<(u64, Option<Instant>)>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    used: usize,
    http_used: usize,
    /// Every open slot, by id.
    open: HashMap<u64, Arc<Shared>>,
    /// Idle slots of each kind by when they became idle (a sequence
    /// number), oldest first; with the sequence number of each.
    idle_amqp: BTreeMap<u64, u64>,
    idle_http: BTreeMap<u64, u64>,
    idle_since: HashMap<u64, u64>,
}

impl State {
    fn idle_of(&mut self, kind: SocketKind) -> &mut BTreeMap<u64, u64> {
        match kind {
            SocketKind::Amqp => &mut self.idle_amqp,
            SocketKind::Http => &mut self.idle_http,
        }
    }

    fn make_idle(&mut self, id: u64, kind: SocketKind) {
        self.next += 1;
        let seq = self.next;
        self.idle_of(kind).insert(seq, id);
        if let Some(old) = self.idle_since.insert(id, seq) {
            self.idle_of(kind).remove(&old);
        }
    }

    fn make_busy(&mut self, id: u64, kind: SocketKind) {
        if let Some(seq) = self.idle_since.remove(&id) {
            self.idle_of(kind).remove(&seq);
        }
    }

    /// Forgets a slot; returns whether it was still open.
    fn remove(&mut self, id: u64, kind: SocketKind) -> bool {
        if self.open.remove(&id).is_none() {
            return false;
        }
        self.make_busy(id, kind);
        self.used = self.used.saturating_sub(1);
        if kind == SocketKind::Http {
            self.http_used = self.http_used.saturating_sub(1);
        }
        true
    }

    /// Closes the longest-idle slot (of `kind`, or of any kind) to make
    /// room; returns whether there was one.
    fn evict(&mut self, kind: Option<SocketKind>) -> bool {
        let oldest = |m: &BTreeMap<u64, u64>| m.first_key_value().map(|(s, id)| (*s, *id));
        let victim = match kind {
            Some(k) => oldest(self.idle_of(k)).map(|(_, id)| (id, k)),
            None => match (oldest(&self.idle_amqp), oldest(&self.idle_http)) {
                (Some(a), Some(h)) if h.0 < a.0 => Some((h.1, SocketKind::Http)),
                (Some(a), _) => Some((a.1, SocketKind::Amqp)),
                (None, Some(h)) => Some((h.1, SocketKind::Http)),
                (None, None) => None,
            },
        };
        let Some((id, kind)) = victim else {
            return false;
        };
        if let Some(shared) = self.open.get(&id).cloned() {
            self.remove(id, kind);
            shared.evicted.store(true, Ordering::Release);
            shared.evict.notify_one();
        }
        true
    }
}

/// A slot's state, shared with the budget (which may evict it).
#[derive(Debug)]
struct Shared {
    phase: AtomicU8,
    /// When the phase last changed, in ns since [`epoch`].
    since: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl Sockets {
    /// A budget of `total` sockets, of which at most `http_total` HTTP.
    pub fn new(total: usize, http_total: usize) -> Arc<Sockets> {
        Arc::new(Sockets {
            total: total.max(1),
            http_total: http_total.max(1),
            state: Mutex::default(),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refusal_log: Mutex::new((0, None)),
        })
    }

    /// The node's budget: `max_sockets` if set, else what the
    /// file-descriptor limit (raised first) leaves; logged.
    pub fn for_node(max_sockets: Option<u64>, http_max: u64) -> Arc<Sockets> {
        let fds = raise_fd_limit();
        let computed = fds.map_or(u64::MAX, default_budget);
        let total = match max_sockets {
            Some(n) if n > computed => {
                tracing::warn!(
                    max_sockets = n,
                    fd_limit = fds,
                    "max_sockets is more than the open file limit leaves for sockets; using {computed}"
                );
                computed
            }
            Some(n) => n,
            None => computed,
        };
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        let http = usize::try_from(http_max).unwrap_or(usize::MAX);
        tracing::info!(
            fd_limit = fds,
            max_sockets = total,
            http_max_connections = http,
            "client sockets budgeted"
        );
        Sockets::new(total, http)
    }

    /// Takes a slot for a socket just accepted from `peer`, closing the
    /// longest-idle socket if that is what makes room; `None` (logged)
    /// when every socket is busy: close the new one.
    pub fn admit(self: &Arc<Self>, kind: SocketKind, peer: SocketAddr) -> Option<SocketSlot> {
        let mut state = self.state.lock();
        let mut evicted = 0;
        if kind == SocketKind::Http && state.http_used >= self.http_total {
            if !state.evict(Some(SocketKind::Http)) {
                drop(state);
                self.refuse(kind, peer, "http_max_connections");
                return None;
            }
            evicted += 1;
        }
        if state.used >= self.total {
            if !state.evict(None) {
                drop(state);
                self.refuse(kind, peer, "max_sockets");
                return None;
            }
            evicted += 1;
        }
        state.next += 1;
        let id = state.next;
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(Phase::Idle as u8),
            since: AtomicU64::new(now_ns()),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        state.open.insert(id, Arc::clone(&shared));
        state.used += 1;
        if kind == SocketKind::Http {
            state.http_used += 1;
        }
        state.make_idle(id, kind);
        drop(state);
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
            tracing::debug!(%peer, "closed the longest-idle socket to make room");
        }
        Some(SocketSlot {
            sockets: Arc::clone(self),
            id,
            kind,
            shared,
        })
    }

    fn refuse(&self, kind: SocketKind, peer: SocketAddr, limit: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut log = self.refusal_log.lock();
        log.0 += 1;
        if log.1.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        let (count, _) = std::mem::replace(&mut *log, (0, Some(Instant::now())));
        drop(log);
        let (used, http_used) = {
            let s = self.state.lock();
            (s.used, s.http_used)
        };
        tracing::warn!(
            %peer,
            ?kind,
            used,
            max_sockets = self.total,
            http_used,
            http_max_connections = self.http_total,
            refused = count,
            "closing new client sockets: {limit} reached and none idle to close"
        );
    }

    /// Client sockets open now.
    pub fn used(&self) -> usize {
        self.state.lock().used
    }

    /// HTTP connections open now.
    pub fn http_used(&self) -> usize {
        self.state.lock().http_used
    }

    /// The budget (RabbitMQ's `sockets_total`).
    pub fn total(&self) -> usize {
        self.total
    }

    /// The HTTP cap.
    pub fn http_total(&self) -> usize {
        self.http_total
    }

    /// Sockets closed at once since the start: every socket busy.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Idle sockets closed to make room since the start.
    pub fn evicted_total(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// One client socket's place in the budget; dropping it gives the place
/// back.
#[derive(Debug)]
pub struct SocketSlot {
    sockets: Arc<Sockets>,
    id: u64,
    kind: SocketKind,
    shared: Arc<Shared>,
}

impl SocketSlot {
    fn set_phase(&self, phase: Phase) {
        self.shared.phase.store(phase as u8, Ordering::Release);
        self.shared.since.store(now_ns(), Ordering::Release);
    }

    /// What the socket is doing, and since when.
    pub fn phase(&self) -> (Phase, Instant) {
        let phase = Phase::from_u8(self.shared.phase.load(Ordering::Acquire));
        let since = epoch() + Duration::from_nanos(self.shared.since.load(Ordering::Acquire));
        (phase, since)
    }

    /// The socket is busy (an AMQP connection opened, an HTTP request
    /// started): it is not closed to make room until [`SocketSlot::idle`].
    pub fn busy(&self) {
        self.set_phase(Phase::Busy);
        let mut state = self.sockets.state.lock();
        state.make_busy(self.id, self.kind);
    }

    /// The socket is idle again (an HTTP response went out).
    pub fn idle(&self) {
        self.set_phase(Phase::Idle);
        let mut state = self.sockets.state.lock();
        if state.open.contains_key(&self.id) {
            state.make_idle(self.id, self.kind);
        }
    }

    /// Bytes of a new request arrived on an idle HTTP connection: its
    /// header timeout starts (it stays closable to make room).
    pub fn reading(&self) {
        let idle = Phase::Idle as u8;
        let head = Phase::ReadingHead as u8;
        if self
            .shared
            .phase
            .compare_exchange(idle, head, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.shared.since.store(now_ns(), Ordering::Release);
        }
    }

    /// Bytes moved on an idle connection (a long response going out): its
    /// idle time starts again.
    pub fn touch(&self) {
        if self.shared.phase.load(Ordering::Relaxed) == Phase::Idle as u8 {
            self.shared.since.store(now_ns(), Ordering::Release);
        }
    }

    /// Resolves when the budget closed this socket to make room.
    pub async fn evicted(&self) {
        if self.shared.evicted.load(Ordering::Acquire) {
            return;
        }
        // One waiter per slot: notify_one keeps a permit if it is not
        // waiting at that moment.
        self.shared.evict.notified().await;
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.sockets.state.lock().remove(self.id, self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn the_default_budget_keeps_a_hundred_and_a_tenth_for_files() {
        assert_eq!(default_budget(1024), 828);
        assert_eq!(default_budget(20_000), 17_910);
        assert_eq!(default_budget(50), 1);
    }

    #[tokio::test]
    async fn a_full_budget_closes_the_longest_idle_socket_first() {
        let sockets = Sockets::new(3, 10);
        let old = sockets.admit(SocketKind::Amqp, peer()).unwrap();
        let open = sockets.admit(SocketKind::Amqp, peer()).unwrap();
        open.busy();
        let http = sockets.admit(SocketKind::Http, peer()).unwrap();
        let new = sockets.admit(SocketKind::Http, peer()).expect("room made");
        old.evicted().await;
        assert_eq!(sockets.used(), 3);
        assert_eq!(sockets.evicted_total(), 1);
        // The next one takes the HTTP connection idle longest.
        new.busy();
        let newer = sockets.admit(SocketKind::Amqp, peer()).expect("room made");
        http.evicted().await;
        drop(old);
        drop(http);
        assert_eq!(sockets.used(), 3, "evicted slots are not counted twice");
        // Every socket busy: the new one is refused.
        newer.busy();
        assert!(sockets.admit(SocketKind::Http, peer()).is_none());
        assert_eq!(sockets.refused_total(), 1);
        // A busy HTTP connection becomes idle again after its response.
        new.idle();
        let _last = sockets.admit(SocketKind::Amqp, peer()).expect("room made");
        new.evicted().await;
        drop(open);
        assert_eq!(sockets.used(), 2);
    }

    #[tokio::test]
    async fn the_http_cap_evicts_only_http_connections() {
        let sockets = Sockets::new(10, 2);
        let _amqp = sockets.admit(SocketKind::Amqp, peer()).unwrap();
        let a = sockets.admit(SocketKind::Http, peer()).unwrap();
        let b = sockets.admit(SocketKind::Http, peer()).unwrap();
        b.busy();
        let c = sockets.admit(SocketKind::Http, peer()).unwrap();
        a.evicted().await;
        assert_eq!(sockets.http_used(), 2);
        c.busy();
        assert!(
            sockets.admit(SocketKind::Http, peer()).is_none(),
            "an idle AMQP socket is not closed for HTTP's cap"
        );
        assert_eq!(sockets.used(), 3);
    }

    #[test]
    fn reading_starts_the_header_clock_once() {
        let sockets = Sockets::new(2, 2);
        let s = sockets.admit(SocketKind::Http, peer()).unwrap();
        assert_eq!(s.phase().0, Phase::Idle);
        s.reading();
        let (phase, since) = s.phase();
        assert_eq!(phase, Phase::ReadingHead);
        s.reading();
        assert_eq!(s.phase(), (Phase::ReadingHead, since));
        s.busy();
        s.reading();
        assert_eq!(s.phase().0, Phase::Busy, "bodies do not count");
        s.idle();
        assert_eq!(s.phase().0, Phase::Idle);
    }
}
