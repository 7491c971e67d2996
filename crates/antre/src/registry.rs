//! The open connections, for the management API and metrics.
//!
//! A connection registers once its handshake is done and unregisters when it
//! ends. What changes while it runs is kept in atomics (bytes in and out) or
//! behind a small mutex touched only when a channel opens or closes, so the
//! AMQP hot path pays a relaxed add per socket read or write and nothing more.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use antre_amqp::FieldTable;
use antre_broker::channel::{ChannelStats, PublishMode};
use antre_broker::metrics::OwnedCounter;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::tls::TlsInfo;

/// Every open connection, by id.
#[derive(Debug, Default)]
pub struct Registry {
    connections: RwLock<BTreeMap<u64, Arc<ConnectionEntry>>>,
    /// Connections registered and unregistered so far.
    opened: AtomicU64,
    closed: AtomicU64,
    /// Channels opened on connections that are gone. Changed only under
    /// the write lock of `connections`, so [`Registry::totals`] sees a
    /// connection's channels either here or on its entry, never twice.
    retired_channels_opened: AtomicU64,
    /// Per vhost, the traffic of connections that are gone (under the same
    /// write lock, for the same reason).
    retired_traffic: Mutex<HashMap<String, Traffic>>,
}

/// What connections carried in a vhost: their channels' `message_stats`
/// counters (in [`ChannelStats::counters`]' order) and their bytes, as
/// RabbitMQ's vhost figures add up its connections'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// The channels' counters.
    pub counters: [u64; 12],
    /// Bytes read from the sockets.
    pub recv_oct: u64,
    /// Bytes written to the sockets.
    pub send_oct: u64,
}

impl Traffic {
    fn add_counters(&mut self, stats: &ChannelStats) {
        for (sum, (_, n)) in self.counters.iter_mut().zip(stats.counters()) {
            *sum += n;
        }
    }

    fn add(&mut self, other: &Traffic) {
        for (sum, n) in self.counters.iter_mut().zip(other.counters) {
            *sum += n;
        }
        self.recv_oct += other.recv_oct;
        self.send_oct += other.send_oct;
    }
}

/// Connections and channels opened and closed since the start (RabbitMQ's
/// `connections_opened_total` and the like).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryTotals {
    /// Connections that finished their handshake.
    pub connections_opened: u64,
    /// Connections that ended after their handshake.
    pub connections_closed: u64,
    /// Channels opened.
    pub channels_opened: u64,
    /// Channels closed, including those of ended connections.
    pub channels_closed: u64,
}

/// What the broker shows about one connection.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// The broker's connection id (owner of its exclusive queues).
    pub id: u64,
    /// RabbitMQ's connection name: `PEER -> LOCAL`.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// Its vhost.
    pub vhost: String,
    /// Login mechanism (PLAIN, AMQPLAIN).
    pub auth_mechanism: String,
    /// When the handshake finished, in ms since the epoch.
    pub connected_at: u64,
    /// The client's properties from connection.start-ok.
    pub client_properties: FieldTable,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat, in seconds.
    pub heartbeat: u16,
    /// The TLS session, for an amqps connection.
    pub tls: Option<TlsInfo>,
    /// Bytes read from the socket.
    pub recv_oct: AtomicU64,
    /// Bytes written to the socket.
    pub send_oct: AtomicU64,
    /// Reads from the socket (RabbitMQ's `recv_cnt`).
    pub recv_cnt: OwnedCounter,
    /// Writes to the socket (`send_cnt`).
    pub send_cnt: OwnedCounter,
    /// Bytes of the write under way, waiting for the socket (`send_pend`).
    pub send_pend: AtomicU64,
    /// Blocked by a resource alarm.
    pub blocked: AtomicBool,
    /// The channels open now.
    channels: Mutex<BTreeMap<u16, OpenChannel>>,
    channels_opened: AtomicU64,
    /// The counters of its channels that closed.
    closed_channels: Mutex<Traffic>,
    close: Notify,
    close_reason: Mutex<Option<String>>,
}

/// An open channel as the registry knows it.
#[derive(Debug, Clone)]
struct OpenChannel {
    /// Whether it is in confirm or tx mode.
    mode: PublishMode,
    /// Its figures, written by the channel.
    stats: Arc<ChannelStats>,
}

impl ConnectionEntry {
    /// A connection that finished its handshake.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: String,
        vhost: String,
        auth_mechanism: String,
        client_properties: FieldTable,
        (frame_max, channel_max, heartbeat): (u32, u16, u16),
        tls: Option<TlsInfo>,
    ) -> ConnectionEntry {
        ConnectionEntry {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            auth_mechanism,
            connected_at: now_ms(),
            client_properties,
            frame_max,
            channel_max,
            heartbeat,
            tls,
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            recv_cnt: OwnedCounter::default(),
            send_cnt: OwnedCounter::default(),
            send_pend: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            channels: Mutex::default(),
            channels_opened: AtomicU64::new(0),
            closed_channels: Mutex::default(),
            close: Notify::new(),
            close_reason: Mutex::default(),
        }
    }

    /// Channel numbers open now.
    pub fn channels(&self) -> Vec<u16> {
        self.channels.lock().keys().copied().collect()
    }

    /// Records a channel opening, with the figures it keeps.
    pub fn channel_opened(&self, number: u16, stats: Arc<ChannelStats>) {
        let open = OpenChannel {
            mode: PublishMode::Plain,
            stats,
        };
        if self.channels.lock().insert(number, open).is_none() {
            self.channels_opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a channel closing.
    pub fn channel_closed(&self, number: u16) {
        if let Some(closed) = self.channels.lock().remove(&number) {
            self.closed_channels.lock().add_counters(&closed.stats);
        }
    }

    /// What this connection carried so far, its closed channels' included.
    pub fn traffic(&self) -> Traffic {
        let mut t = *self.closed_channels.lock();
        for open in self.channels.lock().values() {
            t.add_counters(&open.stats);
        }
        t.recv_oct = self.recv_oct.load(Ordering::Relaxed);
        t.send_oct = self.send_oct.load(Ordering::Relaxed);
        t
    }

    /// Records that a channel entered confirm or tx mode.
    pub fn channel_mode(&self, number: u16, mode: PublishMode) {
        if let Some(open) = self.channels.lock().get_mut(&number) {
            open.mode = mode;
        }
    }

    /// Whether channel `number` is in confirm or tx mode, and its figures
    /// (None once it closed).
    pub fn channel(&self, number: u16) -> Option<(PublishMode, Arc<ChannelStats>)> {
        let open = self.channels.lock().get(&number).cloned()?;
        Some((open.mode, open.stats))
    }

    /// Counts bytes read.
    pub fn received(&self, n: usize) {
        self.recv_cnt.inc();
        self.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts bytes written.
    pub fn sent(&self, n: usize) {
        self.send_cnt.inc();
        self.send_pend.store(0, Ordering::Relaxed);
        self.send_oct.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Asks the connection to close with 320 CONNECTION_FORCED and `reason`.
    pub fn force_close(&self, reason: &str) {
        *self.close_reason.lock() = Some(reason.to_owned());
        // notify_one keeps a permit if the connection is not waiting now.
        self.close.notify_one();
    }

    /// Resolves when [`ConnectionEntry::force_close`] was called; returns
    /// the reason.
    pub async fn closed(&self) -> String {
        self.close.notified().await;
        self.close_reason
            .lock()
            .clone()
            .unwrap_or_else(|| "closed by an operator".into())
    }
}

impl Registry {
    /// Adds a connection.
    pub fn register(&self, entry: Arc<ConnectionEntry>) {
        self.connections.write().insert(entry.id, entry);
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes a connection.
    pub fn unregister(&self, id: u64) {
        let mut connections = self.connections.write();
        if let Some(entry) = connections.remove(&id) {
            let channels = entry.channels_opened.load(Ordering::Relaxed);
            self.retired_channels_opened
                .fetch_add(channels, Ordering::Relaxed);
            self.retired_traffic
                .lock()
                .entry(entry.vhost.clone())
                .or_default()
                .add(&entry.traffic());
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections and channels opened and closed so far.
    pub fn totals(&self) -> RegistryTotals {
        let connections = self.connections.read();
        let (mut opened, mut open) = (self.retired_channels_opened.load(Ordering::Relaxed), 0u64);
        for c in connections.values() {
            opened += c.channels_opened.load(Ordering::Relaxed);
            open += c.channels.lock().len() as u64;
        }
        RegistryTotals {
            connections_opened: self.opened.load(Ordering::Relaxed),
            connections_closed: self.closed.load(Ordering::Relaxed),
            channels_opened: opened,
            channels_closed: opened.saturating_sub(open),
        }
    }

    /// What the connections to each vhost carried so far, gone ones
    /// included, in one pass over the connections (a vhost that never had
    /// one is missing).
    pub fn traffic(&self) -> HashMap<String, Traffic> {
        let connections = self.connections.read();
        let mut all = self.retired_traffic.lock().clone();
        for c in connections.values() {
            all.entry(c.vhost.clone()).or_default().add(&c.traffic());
        }
        all
    }

    /// Forgets the traffic of vhosts `keep` does not keep (deleted: one
    /// made again with the name starts from nothing, as in RabbitMQ).
    pub fn forget_traffic(&self, keep: impl Fn(&str) -> bool) {
        self.retired_traffic.lock().retain(|vhost, _| keep(vhost));
    }

    /// Every open connection, oldest first.
    pub fn connections(&self) -> Vec<Arc<ConnectionEntry>> {
        self.connections.read().values().cloned().collect()
    }

    /// The connection with this name.
    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionEntry>> {
        self.connections
            .read()
            .values()
            .find(|c| c.name == name)
            .cloned()
    }

    /// The connection with this id.
    pub fn get(&self, id: u64) -> Option<Arc<ConnectionEntry>> {
        self.connections.read().get(&id).cloned()
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.connections.read().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
