//! The broker: its vhosts and users.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antre_store::{StoreOptions, WriteBuffers};
use parking_lot::RwLock;

use crate::access::limits::MAX_QUEUES;
pub use crate::access::LoginError;
use crate::access::{
    AccessControl, AccessError, Credentials, Permission, TopicPermission, UserRecord, VhostLimits,
};
use crate::alarm::Alarms;
use crate::clock::{Clock, SystemClock};
use crate::error::BrokerError;
use crate::metrics::BrokerMetrics;
use crate::queue::{MessageMemory, OutputBudget, Paging};
use crate::syncer::Syncer;
use crate::vhost::{dir_name, Vhost, VhostStorage};

/// How often the timer expires messages and queues: the precision of TTLs
/// and `x-expires` (messages are never delivered expired, whatever this is).
const TICK_INTERVAL: Duration = Duration::from_millis(25);

/// How a broker stores messages on disk.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Options for each durable queue's store.
    pub store: StoreOptions,
    /// Bytes of messages all queues together keep in memory; past this,
    /// they page to disk (see [`crate::queue::Paging`]).
    pub message_memory_limit: u64,
    /// How often the syncer sweeps durable queues for unsynced appends and
    /// acks when nobody asked for a sync.
    pub sync_interval: Duration,
    /// Index entries per page when queues page (see
    /// [`crate::queue::PAGE_ENTRIES`]).
    pub page_entries: usize,
    /// Bytes the write buffers of all stores (durable and scratch) may
    /// hold together beyond a small floor each (see
    /// [`antre_store::WriteBuffers`]); used unless `store` names a budget.
    pub write_buffer_limit: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            store: StoreOptions::default(),
            message_memory_limit: 32 * 1024 * 1024,
            sync_interval: Duration::from_millis(100),
            page_entries: crate::queue::PAGE_ENTRIES,
            write_buffer_limit: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct BrokerStorage {
    data_dir: PathBuf,
    options: StorageOptions,
    syncer: Syncer,
    paging: Paging,
}

/// Scratch stores (paged transient messages and index pages), under the
/// data directory and emptied at every start.
const SCRATCH_DIR: &str = "scratch";

/// Options of scratch stores: a small write buffer, since every queue that
/// pages keeps one.
fn scratch_options(store: &StoreOptions) -> StoreOptions {
    StoreOptions {
        write_buffer_size: 32 * 1024,
        ..store.clone()
    }
}

/// A user to create with a cleartext password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password (kept only as a salted hash).
    pub password: String,
    /// Tags, e.g. `administrator`.
    pub tags: Vec<String>,
}

/// The whole broker state that connections share.
#[derive(Debug)]
pub struct Broker {
    /// Shared with the timer thread (as a weak reference, so the thread ends
    /// with the broker).
    vhosts: Arc<RwLock<HashMap<String, Arc<Vhost>>>>,
    clock: Arc<dyn Clock>,
    access: AccessControl,
    next_id: AtomicU64,
    storage: Option<BrokerStorage>,
    /// Broker-wide message counters and latencies.
    pub metrics: Arc<BrokerMetrics>,
    /// The memory and disk alarms that block publishers.
    pub alarms: Arc<Alarms>,
    /// The bytes of deliveries all connections may have unwritten together
    /// (see [`OutputBudget`]); unlimited until set.
    pub output_budget: Arc<OutputBudget>,
    /// In a cluster, the metadata log every metadata change goes through
    /// (see [`crate::cluster`]); unset on a single node.
    pub(crate) metadata: std::sync::OnceLock<Arc<dyn crate::cluster::MetadataLog>>,
    /// In a cluster, how channels reach queues other nodes own (see
    /// [`crate::remote`]); unset on a single node.
    remote: std::sync::OnceLock<Arc<dyn crate::remote::RemoteQueues>>,
    /// The proxy channels other cluster nodes run here for their clients
    /// (`antre-cluster`'s forward module), by the connection id each acts
    /// as: the node that forwards it, which the management API shows as
    /// the channel of such a consumer.
    forwarded: parking_lot::Mutex<HashMap<u64, ForwardedFrom>>,
    /// In a cluster, where each node's listeners of other protocols than
    /// AMQP are (RabbitMQ's cluster-wide listener table): a stream
    /// client's metadata request names the node of each stream's leader
    /// and replicas by these. By (node, protocol).
    pub(crate) listeners: RwLock<std::collections::BTreeMap<(String, String), String>>,
    /// In a cluster, the nodes recorded as drained (maintenance mode; RabbitMQ's
    /// replicated maintenance-state table): a new queue's leader is not
    /// placed on one of them while another node can take it.
    pub(crate) drained: RwLock<std::collections::BTreeSet<String>>,
    /// In a cluster, the feature flags it enabled (see
    /// [`crate::feature_flags`]).
    pub(crate) feature_flags: RwLock<std::collections::BTreeSet<String>>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Broker {
    /// A broker that keeps everything in memory, with the default vhost `/`
    /// and the user guest/guest, allowed from loopback only.
    pub fn new() -> Broker {
        Broker::with_clock(Arc::new(SystemClock))
    }

    /// An in-memory broker on the given clock. It has no timer thread: tests
    /// move the clock and call [`Broker::tick`].
    pub fn with_clock(clock: Arc<dyn Clock>) -> Broker {
        let broker = Broker::empty(None, Arc::default(), clock, AccessControl::new());
        let root = Arc::new(Vhost::new(
            "/",
            Arc::clone(&broker.clock),
            Arc::clone(&broker.metrics),
        ));
        broker.vhosts.write().insert("/".into(), root);
        broker
    }

    fn empty(
        storage: Option<BrokerStorage>,
        metrics: Arc<BrokerMetrics>,
        clock: Arc<dyn Clock>,
        access: AccessControl,
    ) -> Broker {
        Broker {
            vhosts: Arc::default(),
            clock,
            access,
            next_id: AtomicU64::new(1),
            storage,
            metrics,
            alarms: Arc::default(),
            output_budget: Arc::default(),
            metadata: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
            forwarded: parking_lot::Mutex::default(),
            listeners: RwLock::default(),
            drained: RwLock::default(),
            feature_flags: RwLock::default(),
        }
    }

    /// A broker that persists durable definitions and persistent messages
    /// under `data_dir`, recovering what an earlier run left there.
    pub fn open(data_dir: &Path, options: StorageOptions) -> Result<Broker, BrokerError> {
        let broker = Broker::open_with_clock(data_dir, options, Arc::new(SystemClock))?;
        broker.start_timer(TICK_INTERVAL)?;
        Ok(broker)
    }

    /// As [`Broker::open`], on the given clock and without the timer thread
    /// (tests drive time with [`Broker::tick`]).
    pub fn open_with_clock(
        data_dir: &Path,
        mut options: StorageOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Broker, BrokerError> {
        if options.store.write_buffers.is_none() {
            options.store.write_buffers = Some(WriteBuffers::new(options.write_buffer_limit));
        }
        crate::data_format::check(data_dir)?;
        let vhosts_dir = data_dir.join("vhosts");
        std::fs::create_dir_all(&vhosts_dir).map_err(|e| {
            BrokerError::Internal(format!("creating {}: {e}", vhosts_dir.display()))
        })?;
        // Nothing paged by an earlier run is of use now: durable queues
        // rebuild their index from their own stores.
        let scratch_dir = data_dir.join(SCRATCH_DIR);
        match std::fs::remove_dir_all(&scratch_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BrokerError::Internal(format!(
                    "removing {}: {e}",
                    scratch_dir.display()
                )))
            }
        }
        let metrics = Arc::<BrokerMetrics>::default();
        let syncer = Syncer::start(options.sync_interval, Arc::clone(&metrics))
            .map_err(|e| BrokerError::Internal(format!("starting the sync thread: {e}")))?;
        let alarms = Arc::<Alarms>::default();
        let paging = Paging {
            memory: MessageMemory::new(options.message_memory_limit),
            scratch_dir,
            store_options: scratch_options(&options.store),
            alarms: Arc::clone(&alarms),
            page_entries: options.page_entries,
        };
        let mut broker = Broker::empty(
            Some(BrokerStorage {
                data_dir: data_dir.to_owned(),
                options,
                syncer,
                paging,
            }),
            metrics,
            clock,
            // Replaced once the vhosts are known (a format 1 migration
            // grants its users every vhost).
            AccessControl::new(),
        );
        broker.alarms = alarms;
        let entries = std::fs::read_dir(&vhosts_dir)
            .map_err(|e| BrokerError::Internal(format!("reading {}: {e}", vhosts_dir.display())))?;
        for entry in entries.flatten() {
            let file = entry.path().join("definitions.json");
            let Ok(Some(raw)) = antre_store::definitions::read(&file) else {
                continue;
            };
            let name = serde_json::from_slice::<crate::definitions::VhostDefinitions>(&raw)
                .map_err(|e| BrokerError::Internal(format!("unreadable {}: {e}", file.display())))?
                .name;
            broker.add_vhost(&name)?;
        }
        broker.add_vhost("/")?;
        let mut names: Vec<String> = broker.vhosts.read().keys().cloned().collect();
        names.sort();
        // The file is the truth: a deleted guest stays deleted.
        broker.access = AccessControl::open(data_dir, &names)?;
        for vhost in broker.vhosts() {
            broker.apply_vhost_limits(&vhost);
        }
        Ok(broker)
    }

    /// Creates a vhost if it does not exist (recovering it from disk if the
    /// broker is persistent); returns it.
    pub fn add_vhost(&self, name: &str) -> Result<Arc<Vhost>, BrokerError> {
        let mut vhosts = self.vhosts.write();
        if let Some(v) = vhosts.get(name) {
            return Ok(Arc::clone(v));
        }
        let vhost = match &self.storage {
            None => Vhost::new(name, Arc::clone(&self.clock), Arc::clone(&self.metrics)),
            Some(s) => Vhost::open(
                name,
                VhostStorage {
                    dir: s.data_dir.join("vhosts").join(dir_name(name)),
                    store_options: s.options.store.clone(),
                    paging: s.paging.clone(),
                    syncer: s.syncer.clone(),
                },
                Arc::clone(&self.clock),
                Arc::clone(&self.metrics),
            )?,
        };
        let vhost = Arc::new(vhost);
        if let Some(log) = self.metadata.get() {
            vhost.set_metadata_log(Arc::clone(log));
        }
        if let Some(remote) = self.remote.get() {
            vhost.set_forwarder(Arc::clone(remote));
        }
        self.apply_vhost_limits(&vhost);
        vhosts.insert(name.to_owned(), Arc::clone(&vhost));
        Ok(vhost)
    }

    /// Makes channels forward their work on queues other cluster nodes
    /// own through `remote`. Returns false if it was set already.
    pub fn set_remote_queues(&self, remote: Arc<dyn crate::remote::RemoteQueues>) -> bool {
        if self.remote.set(Arc::clone(&remote)).is_err() {
            return false;
        }
        // Dead letters and delayed releases are routed by the vhost itself.
        for v in self.vhosts() {
            v.set_forwarder(Arc::clone(&remote));
        }
        true
    }

    /// The forwarder to other nodes' queues, in a cluster.
    pub fn remote_queues(&self) -> Option<&Arc<dyn crate::remote::RemoteQueues>> {
        self.remote.get()
    }

    /// Hands a vhost the limits it enforces itself (`max-queues`).
    pub(crate) fn apply_vhost_limits_of(&self, vhost: &Vhost) {
        self.apply_vhost_limits(vhost);
    }

    fn apply_vhost_limits(&self, vhost: &Vhost) {
        let limits = self.access.vhost_limits(&vhost.name);
        vhost.set_max_queues(limits.limit(MAX_QUEUES));
    }

    /// Sets one limit of a vhost, which must exist (RabbitMQ's
    /// `rabbitmqctl set_vhost_limits`, one name at a time).
    pub fn set_vhost_limit(&self, vhost: &str, name: &str, value: i64) -> Result<(), AccessError> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| AccessError::NoSuchVhost(vhost.to_owned()))?;
        self.access.set_vhost_limit(vhost, name, value)?;
        self.apply_vhost_limits(&v);
        Ok(())
    }

    /// Removes one limit of a vhost, which must exist.
    pub fn clear_vhost_limit(&self, vhost: &str, name: &str) -> Result<(), AccessError> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| AccessError::NoSuchVhost(vhost.to_owned()))?;
        self.access.clear_vhost_limit(vhost, name)?;
        self.apply_vhost_limits(&v);
        Ok(())
    }

    /// Replaces the limits of vhosts, which must exist, and users (see
    /// [`AccessControl::import_limits`]).
    pub fn import_limits(
        &self,
        vhosts: Vec<VhostLimits>,
        users: Vec<crate::access::UserLimits>,
    ) -> Result<(), AccessError> {
        if let Some(l) = vhosts.iter().find(|l| self.vhost(&l.vhost).is_none()) {
            return Err(AccessError::NoSuchVhost(l.vhost.clone()));
        }
        let touched: Vec<String> = vhosts.iter().map(|l| l.vhost.clone()).collect();
        self.access.import_limits(vhosts, users)?;
        for name in touched {
            if let Some(v) = self.vhost(&name) {
                self.apply_vhost_limits(&v);
            }
        }
        Ok(())
    }

    /// The broker's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Time passes: expires messages and idle queues everywhere and routes
    /// the resulting dead letters.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        for v in self.vhosts() {
            v.tick(now);
        }
    }

    /// Starts a thread that calls [`Broker::tick`] every `interval`; it ends
    /// when the broker is dropped.
    fn start_timer(&self, interval: Duration) -> Result<(), BrokerError> {
        let vhosts = Arc::downgrade(&self.vhosts);
        let clock = Arc::clone(&self.clock);
        std::thread::Builder::new()
            .name("antre-timer".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(vhosts) = vhosts.upgrade() else {
                    return;
                };
                let list: Vec<Arc<Vhost>> = vhosts.read().values().cloned().collect();
                drop(vhosts);
                let now = clock.now_ms();
                for v in list {
                    v.tick(now);
                }
            })
            .map_err(|e| BrokerError::Internal(format!("starting the timer thread: {e}")))?;
        Ok(())
    }

    /// The node's message budget, if the broker pages (it has a data
    /// directory).
    pub fn message_memory(&self) -> Option<&Arc<MessageMemory>> {
        self.storage.as_ref().map(|s| &s.paging.memory)
    }

    /// The group-commit thread, if the broker persists messages.
    pub fn syncer(&self) -> Option<&Syncer> {
        self.storage.as_ref().map(|s| &s.syncer)
    }

    /// Makes what was written to `stores` durable now, in the caller's
    /// thread (for callers that answer once it is, like the management
    /// API's publish; channels go through the syncer instead).
    pub fn sync_now(&self, stores: &[Arc<dyn crate::durable::Durable>]) -> Result<(), BrokerError> {
        let failed = crate::syncer::sync_round(stores);
        match failed.first() {
            None => Ok(()),
            Some(d) => Err(BrokerError::Internal(format!(
                "could not write {} to disk",
                d.label()
            ))),
        }
    }

    /// Makes every vhost's pending definition changes durable now, for
    /// callers that answer once they are (the management API).
    pub fn sync_definitions(&self) -> Result<(), BrokerError> {
        let stores: Vec<Arc<dyn crate::durable::Durable>> = self
            .vhosts()
            .iter()
            .filter_map(|v| v.definitions_store())
            .filter(|d| d.is_dirty())
            .collect();
        self.sync_now(&stores)
    }

    /// Flushes and closes every message store: after this, a restart brings
    /// back no acked message. Call once no connection is left.
    pub fn close(&self) {
        for v in self.vhosts() {
            v.close();
        }
    }

    /// The vhost called `name`.
    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Every vhost.
    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.vhosts.read().values().cloned().collect()
    }

    /// Users, tags and permissions.
    pub fn access(&self) -> &AccessControl {
        &self.access
    }

    /// Adds or replaces a user, keeping their permissions.
    pub fn add_user(&self, user: User) -> Result<(), AccessError> {
        self.access
            .put_user(&user.name, Credentials::Password(user.password), user.tags)
            .map(drop)
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<UserRecord> {
        self.access.users()
    }

    /// Removes a user and their permissions; returns whether it existed.
    /// The server closes the user's connections.
    pub fn delete_user(&self, name: &str) -> Result<bool, AccessError> {
        self.access.delete_user(name)
    }

    /// Creates a vhost (see [`Broker::add_vhost`]) and, if it is new,
    /// grants `creator` every permission in it, as RabbitMQ's management
    /// API does for the user who creates a vhost.
    pub fn create_vhost(&self, name: &str, creator: &str) -> Result<bool, BrokerError> {
        let existed = self.vhost(name).is_some();
        self.add_vhost(name)?;
        if !existed && self.access.user(creator).is_some() {
            self.access
                .set_permission(crate::access::full_permission(creator, name))
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
        }
        Ok(!existed)
    }

    /// Sets a user's permission in a vhost, which must exist.
    pub fn set_permission(&self, p: Permission) -> Result<bool, AccessError> {
        if self.vhost(&p.vhost).is_none() {
            return Err(AccessError::NoSuchVhost(p.vhost));
        }
        self.access.set_permission(p)
    }

    /// Sets a user's topic permission in a vhost, which must exist.
    pub fn set_topic_permission(&self, t: TopicPermission) -> Result<bool, AccessError> {
        if self.vhost(&t.vhost).is_none() {
            return Err(AccessError::NoSuchVhost(t.vhost));
        }
        self.access.set_topic_permission(t)
    }

    /// Deletes a vhost: every queue in it (with its messages) and its
    /// definitions on disk. Returns whether it existed. Close the vhost's
    /// connections first; a channel still open on it sees no more topology.
    pub fn delete_vhost(&self, name: &str) -> Result<bool, BrokerError> {
        let Some(vhost) = self.vhosts.write().remove(name) else {
            return Ok(false);
        };
        for q in vhost.queues() {
            let owner = q.options.exclusive_owner.unwrap_or(0);
            vhost.delete_queue(&q.name, false, false, owner)?;
        }
        vhost.close();
        self.access
            .remove_vhost(name)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        if let Some(s) = &self.storage {
            let dir = s.data_dir.join("vhosts").join(dir_name(name));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    BrokerError::Internal(format!("removing {}: {e}", dir.display()))
                })?;
            }
        }
        Ok(true)
    }

    /// Checks a login (see [`AccessControl::login`]).
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        from_loopback: bool,
    ) -> Result<(), LoginError> {
        self.access.login(name, password, from_loopback).map(drop)
    }

    /// Checks a login whose identity was established outside AMQP (SASL
    /// EXTERNAL: a verified TLS client certificate names the user). The
    /// user must exist; there is no password to check. The loopback rule
    /// still applies, as in RabbitMQ.
    pub fn authenticate_external(&self, name: &str, from_loopback: bool) -> Result<(), LoginError> {
        self.access.login_external(name, from_loopback).map(drop)
    }

    /// A fresh id for a connection or a consumer.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that connection id `connection` is a proxy channel another
    /// cluster node runs here for one of its clients (`None`: it closed).
    pub fn set_forwarded_from(&self, connection: u64, from: Option<ForwardedFrom>) {
        let mut forwarded = self.forwarded.lock();
        match from {
            Some(from) => forwarded.insert(connection, from),
            None => forwarded.remove(&connection),
        };
    }

    /// The cluster node and user whose client connection id `connection`
    /// acts for, if it is a proxy channel.
    pub fn forwarded_from(&self, connection: u64) -> Option<ForwardedFrom> {
        self.forwarded.lock().get(&connection).cloned()
    }
}

/// Whom a proxy channel acts for: a client of another cluster node (see
/// [`Broker::set_forwarded_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedFrom {
    /// The node the client is connected to.
    pub node: Arc<str>,
    /// The client's user.
    pub user: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str) -> User {
        User {
            name: name.into(),
            password: password.into(),
            tags: vec![],
        }
    }

    #[test]
    fn users_and_permissions_survive_a_restart_and_deleted_guest_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let broker = Broker::open_with_clock(
                dir.path(),
                StorageOptions::default(),
                Arc::new(SystemClock),
            )
            .unwrap();
            assert!(
                broker.authenticate("guest", "guest", true).is_ok(),
                "seeded on first start"
            );
            broker.add_user(user("ops", "s3cret")).unwrap();
            broker.add_vhost("eu").unwrap();
            broker
                .set_permission(crate::access::full_permission("ops", "eu"))
                .unwrap();
            assert!(broker.delete_user("guest").unwrap());
            broker.close();
        }
        let broker =
            Broker::open_with_clock(dir.path(), StorageOptions::default(), Arc::new(SystemClock))
                .unwrap();
        assert!(broker.authenticate("ops", "s3cret", false).is_ok());
        assert!(broker.authenticate("guest", "guest", true).is_err());
        assert!(broker.access().vhost_access("ops", "eu"));
        assert!(!broker.access().vhost_access("ops", "/"));
    }

    #[test]
    fn vhost_limits_apply_after_a_restart_and_go_with_the_vhost() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Broker::open_with_clock(dir.path(), StorageOptions::default(), Arc::new(SystemClock))
                .unwrap()
        };
        {
            let broker = open();
            broker.add_vhost("eu").unwrap();
            broker.set_vhost_limit("eu", "max-queues", 3).unwrap();
            assert_eq!(broker.vhost("eu").unwrap().max_queues(), Some(3));
            assert_eq!(
                broker.set_vhost_limit("nope", "max-queues", 1),
                Err(AccessError::NoSuchVhost("nope".into()))
            );
            broker.close();
        }
        let broker = open();
        assert_eq!(broker.vhost("eu").unwrap().max_queues(), Some(3));
        broker.clear_vhost_limit("eu", "max-queues").unwrap();
        assert_eq!(broker.vhost("eu").unwrap().max_queues(), None);
        broker.set_vhost_limit("eu", "max-queues", 1).unwrap();
        broker.delete_vhost("eu").unwrap();
        broker.add_vhost("eu").unwrap();
        assert_eq!(broker.vhost("eu").unwrap().max_queues(), None);
    }

    #[test]
    fn deleting_a_vhost_forgets_its_permissions() {
        let broker = Broker::new();
        assert!(broker.create_vhost("eu", "guest").unwrap());
        assert!(
            broker.access().vhost_access("guest", "eu"),
            "the creator gets all"
        );
        broker.delete_vhost("eu").unwrap();
        assert!(!broker.access().vhost_access("guest", "eu"));
        broker.add_vhost("eu").unwrap();
        assert!(
            !broker.access().vhost_access("guest", "eu"),
            "not back with the name"
        );
    }

    #[test]
    fn permissions_need_an_existing_vhost_and_user() {
        let broker = Broker::new();
        assert_eq!(
            broker.set_permission(crate::access::full_permission("guest", "nope")),
            Err(AccessError::NoSuchVhost("nope".into()))
        );
        assert_eq!(
            broker.set_permission(crate::access::full_permission("nobody", "/")),
            Err(AccessError::NoSuchUser("nobody".into()))
        );
    }
}
