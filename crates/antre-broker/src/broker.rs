//! The broker: its vhosts and users.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antre_store::StoreOptions;
use parking_lot::RwLock;

use crate::alarm::Alarms;
use crate::clock::{Clock, SystemClock};
use crate::error::BrokerError;
use crate::metrics::BrokerMetrics;
use crate::queue::{MessageMemory, Paging};
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
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            store: StoreOptions::default(),
            message_memory_limit: 32 * 1024 * 1024,
            sync_interval: Duration::from_millis(100),
            page_entries: crate::queue::PAGE_ENTRIES,
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

/// A user who may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Only connections from loopback addresses may log in as this user
    /// (RabbitMQ's rule for `guest`, so a default password is never exposed).
    pub loopback_only: bool,
}

/// A user as the broker keeps it: the password only as a salted hash, in
/// RabbitMQ's `rabbit_password_hashing_sha256` format (base64 of a 4-byte
/// salt followed by SHA-256(salt ++ password)), so hashes are portable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Salted SHA-256 of the password, base64.
    pub password_hash: String,
    /// Only connections from loopback addresses may log in as this user.
    pub loopback_only: bool,
}

impl UserRecord {
    fn new(user: &User) -> UserRecord {
        use base64::Engine;
        let salt: [u8; 4] = rand::random();
        let mut salted = salt.to_vec();
        salted.extend_from_slice(&sha256_salted(&salt, &user.password));
        UserRecord {
            name: user.name.clone(),
            password_hash: base64::engine::general_purpose::STANDARD.encode(salted),
            loopback_only: user.loopback_only,
        }
    }

    /// Whether `password` is this user's, compared without an early exit.
    fn verify(&self, password: &str) -> bool {
        use base64::Engine;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&self.password_hash) else {
            return false;
        };
        if raw.len() != 4 + 32 {
            return false;
        }
        let (salt, digest) = raw.split_at(4);
        constant_time_eq(&sha256_salted(salt, password), digest)
    }
}

fn sha256_salted(salt: &[u8], password: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().into()
}

const USERS_FILE: &str = "users.json";

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password.
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    /// A loopback-only user connecting from elsewhere.
    #[error("user '{0}' - User can only log in via localhost")]
    LoopbackOnly(String),
}

/// The whole broker state that connections share.
#[derive(Debug)]
pub struct Broker {
    /// Shared with the timer thread (as a weak reference, so the thread ends
    /// with the broker).
    vhosts: Arc<RwLock<HashMap<String, Arc<Vhost>>>>,
    clock: Arc<dyn Clock>,
    users: RwLock<HashMap<String, UserRecord>>,
    next_id: AtomicU64,
    storage: Option<BrokerStorage>,
    /// Broker-wide message counters and latencies.
    pub metrics: Arc<BrokerMetrics>,
    /// The memory and disk alarms that block publishers.
    pub alarms: Arc<Alarms>,
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
        let broker = Broker::empty(None, Arc::default(), clock);
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
    ) -> Broker {
        let broker = Broker {
            vhosts: Arc::default(),
            clock,
            users: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            storage,
            metrics,
            alarms: Arc::default(),
        };
        // Not through add_user: a persistent broker decides in open()
        // whether its users file replaces this first-start default.
        let guest = UserRecord::new(&User {
            name: "guest".into(),
            password: "guest".into(),
            loopback_only: true,
        });
        broker.users.write().insert(guest.name.clone(), guest);
        broker
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
        options: StorageOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Broker, BrokerError> {
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
        match Broker::load_users(data_dir)? {
            // The file is the truth: a deleted guest stays deleted.
            Some(list) => {
                *broker.users.write() = list.into_iter().map(|u| (u.name.clone(), u)).collect()
            }
            None => broker.save_users(&broker.users.read()),
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
        vhosts.insert(name.to_owned(), Arc::clone(&vhost));
        Ok(vhost)
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

    /// Adds or replaces a user.
    pub fn add_user(&self, user: User) {
        let mut users = self.users.write();
        users.insert(user.name.clone(), UserRecord::new(&user));
        self.save_users(&users);
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<UserRecord> {
        let mut users: Vec<UserRecord> = self.users.read().values().cloned().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Removes a user; returns whether it existed. Open connections of the
    /// user stay open (as in RabbitMQ).
    pub fn delete_user(&self, name: &str) -> bool {
        let mut users = self.users.write();
        let existed = users.remove(name).is_some();
        if existed {
            self.save_users(&users);
        }
        existed
    }

    /// Rewrites the users file of a persistent broker (atomically). A
    /// failure is logged: the change holds until the next restart.
    fn save_users(&self, users: &HashMap<String, UserRecord>) {
        let Some(s) = &self.storage else { return };
        let mut list: Vec<&UserRecord> = users.values().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let written = serde_json::to_vec_pretty(&list)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                antre_store::definitions::write_atomic(&s.data_dir.join(USERS_FILE), &json)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::error!("could not save users: {e}");
        }
    }

    /// Loads the users file; None when there is none yet (first start).
    fn load_users(data_dir: &Path) -> Result<Option<Vec<UserRecord>>, BrokerError> {
        let path = data_dir.join(USERS_FILE);
        match antre_store::definitions::read(&path) {
            Ok(Some(raw)) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| BrokerError::Internal(format!("unreadable {}: {e}", path.display()))),
            Ok(None) => Ok(None),
            Err(e) => Err(BrokerError::Internal(format!(
                "reading {}: {e}",
                path.display()
            ))),
        }
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

    /// Checks a login.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        from_loopback: bool,
    ) -> Result<(), LoginError> {
        let users = self.users.read();
        let user = users
            .get(name)
            .filter(|u| u.verify(password))
            .ok_or_else(|| LoginError::InvalidCredentials(name.to_owned()))?;
        if user.loopback_only && !from_loopback {
            return Err(LoginError::LoopbackOnly(name.to_owned()));
        }
        Ok(())
    }

    /// A fresh id for a connection or a consumer.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Compares secrets without an early exit, so timing does not reveal how
/// much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str) -> User {
        User {
            name: name.into(),
            password: password.into(),
            loopback_only: false,
        }
    }

    #[test]
    fn passwords_are_kept_hashed_and_salted() {
        let broker = Broker::new();
        broker.add_user(user("ops", "s3cret"));
        let record = broker
            .users()
            .into_iter()
            .find(|u| u.name == "ops")
            .unwrap();
        assert!(!record.password_hash.contains("s3cret"));
        assert!(broker.authenticate("ops", "s3cret", false).is_ok());
        assert!(broker.authenticate("ops", "s3cre", false).is_err());
        broker.add_user(user("other", "s3cret"));
        let other = broker
            .users()
            .into_iter()
            .find(|u| u.name == "other")
            .unwrap();
        assert_ne!(
            other.password_hash, record.password_hash,
            "salted: same password, other hash"
        );
        assert_eq!(
            broker.authenticate("guest", "guest", false),
            Err(LoginError::LoopbackOnly("guest".into()))
        );
    }

    #[test]
    fn users_survive_a_restart_and_deleted_guest_stays_deleted() {
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
            broker.add_user(user("ops", "s3cret"));
            assert!(broker.delete_user("guest"));
            broker.close();
        }
        let broker =
            Broker::open_with_clock(dir.path(), StorageOptions::default(), Arc::new(SystemClock))
                .unwrap();
        assert!(broker.authenticate("ops", "s3cret", false).is_ok());
        assert!(broker.authenticate("guest", "guest", true).is_err());
    }
}
