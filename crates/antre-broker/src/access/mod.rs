//! Users, their tags, and what they may do in each vhost: RabbitMQ's
//! internal authentication and authorisation backend.
//!
//! - users log in with a password, kept only as a salted hash in RabbitMQ's
//!   format ([`password`]); their tags say what the management API lets
//!   them do (the server enforces that);
//! - [`permissions`]: per-vhost `configure`/`write`/`read` expressions and
//!   topic permissions, and their compiled form ([`VhostPermissions`]);
//! - the `loopback_users` setting names users who may log in from loopback
//!   addresses only (`guest` by default), whatever their password: it is a
//!   setting, not a property of the user, so re-creating `guest` over the
//!   API cannot expose it to the network.
//!
//! - [`limits`]: vhost limits (`max-connections`, `max-queues`) and user
//!   limits (`max-connections`, `max-channels`), kept with the users, and
//!   the live counts of connections and channels they are checked against.
//!
//! Channels hold an `Arc<VhostPermissions>` and reload it when
//! [`AccessControl::generation`] moves, which every change does: a changed
//! permission applies to open channels from their next method on.
//!
//! Persistence: one file, `access.json`, rewritten whole (atomically) on
//! every change. That is a few milliseconds for thousands of users, and
//! changes to users are rare; imports save once for the whole batch.

pub mod limits;
pub mod password;
pub mod permissions;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
pub use limits::{LimitError, LimitRefusal, LimitScope, Limits, Usage};
pub use permissions::{
    InvalidPattern, Perm, Permission, ResourceKind, TopicPermission, VhostPermissions,
};

/// The file, in the data directory, that holds users and permissions.
pub const ACCESS_FILE: &str = "access.json";
/// Data format 1's users file, migrated into [`ACCESS_FILE`].
pub const V1_USERS_FILE: &str = "users.json";

/// A user as the broker keeps it, in the shape of RabbitMQ's definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Salted hash of the password, base64 (empty: no password login).
    pub password_hash: String,
    /// How `password_hash` was made (RabbitMQ's module name).
    pub hashing_algorithm: String,
    /// Tags (`administrator`, `monitoring`, `policymaker`, `management`,
    /// or anything else, which RabbitMQ keeps and ignores).
    pub tags: Vec<String>,
}

impl UserRecord {
    /// Whether the user has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// How a user proves who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A cleartext password, hashed with SHA-256 before it is kept.
    Password(String),
    /// A hash made elsewhere (a definitions file, RabbitMQ).
    Hash {
        /// base64 salt ++ digest.
        hash: String,
        /// RabbitMQ's module name for the algorithm.
        algorithm: String,
    },
    /// No password: the user cannot log in with one.
    None,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// The user.
    pub name: String,
    /// Their tags at login.
    pub tags: Vec<String>,
}

/// Why a login was refused. Callers must not tell the client which: an
/// unknown user and a wrong password look the same from outside.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password.
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    /// A user of `loopback_users` connecting from elsewhere.
    #[error("user '{0}' - User can only log in via localhost")]
    LoopbackOnly(String),
}

/// A change to the access data that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No such user.
    #[error("no user '{0}'")]
    NoSuchUser(String),
    /// No such vhost.
    #[error("no vhost '{0}'")]
    NoSuchVhost(String),
    /// A permission expression that does not compile.
    #[error(transparent)]
    InvalidPattern(#[from] InvalidPattern),
    /// A `password_hash` that is not base64.
    #[error("password_hash is not base64")]
    NotBase64,
    /// A limit that does not exist or is not an integer.
    #[error(transparent)]
    InvalidLimit(#[from] LimitError),
    /// Writing the access file failed.
    #[error("could not save users and permissions: {0}")]
    Storage(String),
}

/// Users and permissions, keyed for look-ups.
#[derive(Debug, Default, Clone)]
struct Data {
    users: BTreeMap<String, UserRecord>,
    /// By (user, vhost).
    permissions: BTreeMap<(String, String), Permission>,
    /// By (user, vhost, exchange).
    topic_permissions: BTreeMap<(String, String, String), TopicPermission>,
    /// By vhost; never empty.
    vhost_limits: BTreeMap<String, Limits>,
    /// By user; never empty.
    user_limits: BTreeMap<String, Limits>,
    /// The cluster's name, once set at run time (RabbitMQ's global
    /// parameter `cluster_name`); the `cluster_name` setting, then the
    /// node's name, otherwise.
    cluster_name: Option<String>,
}

/// Everything [`AccessControl`] keeps, as a cluster's metadata snapshot
/// carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessSnapshot {
    /// Users, with their password hashes.
    pub users: Vec<UserRecord>,
    /// Permissions.
    pub permissions: Vec<Permission>,
    /// Topic permissions.
    pub topic_permissions: Vec<TopicPermission>,
    /// Vhost limits.
    pub vhost_limits: Vec<VhostLimits>,
    /// User limits.
    pub user_limits: Vec<UserLimits>,
    /// The cluster's name, if set at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
}

/// `access.json` as written: lists, like a RabbitMQ definitions file.
/// Limits are left out while there are none, so a file without them is
/// what earlier versions wrote and read.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DataFile {
    users: Vec<UserRecord>,
    permissions: Vec<Permission>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermission>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vhost_limits: Vec<VhostLimits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_limits: Vec<UserLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_name: Option<String>,
}

/// A vhost's limits, in the shape of RabbitMQ's `GET /api/vhost-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostLimits {
    /// The vhost.
    pub vhost: String,
    /// Its limits.
    pub value: Limits,
}

/// A user's limits, in the shape of RabbitMQ's `GET /api/user-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLimits {
    /// The user.
    pub user: String,
    /// Their limits.
    pub value: Limits,
}

impl From<&Data> for DataFile {
    fn from(d: &Data) -> DataFile {
        DataFile {
            users: d.users.values().cloned().collect(),
            permissions: d.permissions.values().cloned().collect(),
            topic_permissions: d.topic_permissions.values().cloned().collect(),
            vhost_limits: d
                .vhost_limits
                .iter()
                .map(|(vhost, value)| VhostLimits {
                    vhost: vhost.clone(),
                    value: value.clone(),
                })
                .collect(),
            user_limits: d
                .user_limits
                .iter()
                .map(|(user, value)| UserLimits {
                    user: user.clone(),
                    value: value.clone(),
                })
                .collect(),
            cluster_name: d.cluster_name.clone(),
        }
    }
}

impl From<DataFile> for Data {
    fn from(f: DataFile) -> Data {
        Data {
            users: f.users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            permissions: f
                .permissions
                .into_iter()
                .map(|p| ((p.user.clone(), p.vhost.clone()), p))
                .collect(),
            topic_permissions: f
                .topic_permissions
                .into_iter()
                .map(|t| ((t.user.clone(), t.vhost.clone(), t.exchange.clone()), t))
                .collect(),
            vhost_limits: f
                .vhost_limits
                .into_iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.vhost, l.value))
                .collect(),
            user_limits: f
                .user_limits
                .into_iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.user, l.value))
                .collect(),
            cluster_name: f.cluster_name,
        }
    }
}

/// Data format 1's user: no tags (everyone could do everything) and a
/// per-user loopback flag, now the `loopback_users` setting.
#[derive(Debug, Deserialize)]
struct V1User {
    name: String,
    password_hash: String,
}

/// A (user, vhost) pair, the key of permissions.
type UserVhost = (String, String);

/// Permissions granting everything, as RabbitMQ's `default_permissions`.
pub fn full_permission(user: &str, vhost: &str) -> Permission {
    Permission {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

/// The broker's users, tags, permissions and topic permissions.
#[derive(Debug)]
pub struct AccessControl {
    data: RwLock<Data>,
    /// Compiled permissions by (user, vhost), filled on demand and emptied
    /// by every change; None caches "no permission".
    compiled: Mutex<HashMap<UserVhost, Option<Arc<VhostPermissions>>>>,
    generation: AtomicU64,
    loopback_users: RwLock<Vec<String>>,
    /// Open connections and channels, for limits.
    usage: Usage,
    file: Option<PathBuf>,
}

impl AccessControl {
    /// In memory, with RabbitMQ's first-start defaults: `guest`/`guest`,
    /// an administrator with every permission on `/`, loopback only.
    pub fn new() -> AccessControl {
        let access = AccessControl::empty(None);
        access.data.write().seed_guest();
        access
    }

    fn empty(file: Option<PathBuf>) -> AccessControl {
        AccessControl {
            data: RwLock::new(Data::default()),
            compiled: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            loopback_users: RwLock::new(vec!["guest".to_owned()]),
            usage: Usage::default(),
            file,
        }
    }

    /// Loads `access.json` from `data_dir`; on first start seeds the
    /// defaults, and a data directory of format 1 (`users.json`) is
    /// migrated: its users become administrators with every permission on
    /// every vhost in `vhosts`, which is what format 1 let them do.
    pub fn open(data_dir: &Path, vhosts: &[String]) -> Result<AccessControl, BrokerError> {
        let path = data_dir.join(ACCESS_FILE);
        let access = AccessControl::empty(Some(path.clone()));
        if let Some(raw) = read(&path)? {
            let file: DataFile = serde_json::from_slice(&raw).map_err(|e| {
                BrokerError::Internal(format!("unreadable {}: {e}", path.display()))
            })?;
            *access.data.write() = file.into();
            return Ok(access);
        }
        let v1 = data_dir.join(V1_USERS_FILE);
        {
            let mut data = access.data.write();
            match read(&v1)? {
                Some(raw) => {
                    let users: Vec<V1User> = serde_json::from_slice(&raw).map_err(|e| {
                        BrokerError::Internal(format!("unreadable {}: {e}", v1.display()))
                    })?;
                    data.migrate_v1(users, vhosts);
                }
                None => data.seed_guest(),
            }
            access
                .save(&data)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
        }
        if v1.exists() {
            std::fs::remove_file(&v1)
                .map_err(|e| BrokerError::Internal(format!("removing {}: {e}", v1.display())))?;
        }
        Ok(access)
    }

    /// Bumped by every change; channels reload their permissions when it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the `loopback_users` setting.
    pub fn set_loopback_users(&self, users: Vec<String>) {
        *self.loopback_users.write() = users;
    }

    /// The `loopback_users` setting.
    pub fn loopback_users(&self) -> Vec<String> {
        self.loopback_users.read().clone()
    }

    /// Checks a login: the password, then the loopback rule (as RabbitMQ,
    /// which refuses a loopback user only once the password is right).
    pub fn login(
        &self,
        name: &str,
        password: &str,
        from_loopback: bool,
    ) -> Result<LoggedIn, LoginError> {
        let data = self.data.read();
        let user = data
            .users
            .get(name)
            .filter(|u| password::verify(&u.hashing_algorithm, &u.password_hash, password))
            .ok_or_else(|| LoginError::InvalidCredentials(name.to_owned()))?;
        if !from_loopback && self.loopback_users.read().iter().any(|u| u == name) {
            return Err(LoginError::LoopbackOnly(name.to_owned()));
        }
        Ok(LoggedIn {
            name: user.name.clone(),
            tags: user.tags.clone(),
        })
    }

    /// Checks a login whose identity was established outside AMQP (SASL
    /// EXTERNAL: a verified TLS client certificate names the user): the
    /// user must exist, and the loopback rule applies, as in RabbitMQ.
    pub fn login_external(&self, name: &str, from_loopback: bool) -> Result<LoggedIn, LoginError> {
        let data = self.data.read();
        let user = data
            .users
            .get(name)
            .ok_or_else(|| LoginError::InvalidCredentials(name.to_owned()))?;
        if !from_loopback && self.loopback_users.read().iter().any(|u| u == name) {
            return Err(LoginError::LoopbackOnly(name.to_owned()));
        }
        Ok(LoggedIn {
            name: user.name.clone(),
            tags: user.tags.clone(),
        })
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<UserRecord> {
        self.data.read().users.values().cloned().collect()
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<UserRecord> {
        self.data.read().users.get(name).cloned()
    }

    /// Creates or replaces a user's credentials and tags (RabbitMQ's
    /// `PUT /api/users/{name}`); their permissions stay. Returns whether
    /// the user is new.
    pub fn put_user(
        &self,
        name: &str,
        credentials: Credentials,
        tags: Vec<String>,
    ) -> Result<bool, AccessError> {
        let (password_hash, hashing_algorithm) = match credentials {
            Credentials::Password(p) => (password::hash(&p), password::SHA256.to_owned()),
            Credentials::Hash { hash, algorithm } => {
                if !password::is_base64(&hash) {
                    return Err(AccessError::NotBase64);
                }
                (hash, algorithm)
            }
            Credentials::None => (String::new(), password::SHA256.to_owned()),
        };
        let record = UserRecord {
            name: name.to_owned(),
            password_hash,
            hashing_algorithm,
            tags,
        };
        self.change(|d| Ok(d.users.insert(name.to_owned(), record).is_none()))
    }

    /// Changes a user's password.
    pub fn change_password(&self, name: &str, new_password: &str) -> Result<(), AccessError> {
        self.change(|d| {
            let user = d
                .users
                .get_mut(name)
                .ok_or_else(|| AccessError::NoSuchUser(name.to_owned()))?;
            user.password_hash = password::hash(new_password);
            user.hashing_algorithm = password::SHA256.to_owned();
            Ok(())
        })
    }

    /// Replaces a user's tags.
    pub fn set_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AccessError> {
        self.change(|d| {
            d.users
                .get_mut(name)
                .ok_or_else(|| AccessError::NoSuchUser(name.to_owned()))?
                .tags = tags;
            Ok(())
        })
    }

    /// Deletes a user with their permissions; returns whether it existed.
    /// The caller closes the user's connections.
    pub fn delete_user(&self, name: &str) -> Result<bool, AccessError> {
        self.change(|d| {
            if d.users.remove(name).is_none() {
                return Ok(false);
            }
            d.permissions.retain(|(u, _), _| u != name);
            d.topic_permissions.retain(|(u, _, _), _| u != name);
            d.user_limits.remove(name);
            Ok(true)
        })
    }

    /// Every permission, by user then vhost.
    pub fn permissions(&self) -> Vec<Permission> {
        self.data.read().permissions.values().cloned().collect()
    }

    /// The permission of `user` in `vhost`.
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Permission> {
        let key = (user.to_owned(), vhost.to_owned());
        self.data.read().permissions.get(&key).cloned()
    }

    /// Sets a user's permission in a vhost (the caller checks that the
    /// vhost exists). Returns whether it is new.
    pub fn set_permission(&self, p: Permission) -> Result<bool, AccessError> {
        permissions::validate(&[&p.configure, &p.write, &p.read])?;
        self.change(|d| {
            if !d.users.contains_key(&p.user) {
                return Err(AccessError::NoSuchUser(p.user.clone()));
            }
            let key = (p.user.clone(), p.vhost.clone());
            Ok(d.permissions.insert(key, p).is_none())
        })
    }

    /// Removes a user's permission in a vhost; returns whether it existed.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> Result<bool, AccessError> {
        let key = (user.to_owned(), vhost.to_owned());
        self.change(|d| Ok(d.permissions.remove(&key).is_some()))
    }

    /// Every topic permission, by user, vhost, exchange.
    pub fn topic_permissions(&self) -> Vec<TopicPermission> {
        self.data
            .read()
            .topic_permissions
            .values()
            .cloned()
            .collect()
    }

    /// Sets a user's topic permission on an exchange. Returns whether it is new.
    pub fn set_topic_permission(&self, t: TopicPermission) -> Result<bool, AccessError> {
        permissions::validate_topic(&t)?;
        self.change(|d| {
            if !d.users.contains_key(&t.user) {
                return Err(AccessError::NoSuchUser(t.user.clone()));
            }
            let key = (t.user.clone(), t.vhost.clone(), t.exchange.clone());
            Ok(d.topic_permissions.insert(key, t).is_none())
        })
    }

    /// Removes a user's topic permissions in a vhost: on one exchange, or
    /// on all. Returns whether any existed.
    pub fn clear_topic_permission(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<bool, AccessError> {
        self.change(|d| {
            let before = d.topic_permissions.len();
            d.topic_permissions.retain(|(u, v, x), _| {
                !(u == user && v == vhost && exchange.is_none_or(|e| e == x))
            });
            Ok(d.topic_permissions.len() != before)
        })
    }

    /// Forgets every permission in a deleted vhost.
    pub fn remove_vhost(&self, vhost: &str) -> Result<(), AccessError> {
        self.change(|d| {
            d.permissions.retain(|(_, v), _| v != vhost);
            d.topic_permissions.retain(|(_, v, _), _| v != vhost);
            d.vhost_limits.remove(vhost);
            Ok(())
        })
    }

    /// Adds users and permissions from a definitions file in one change
    /// (one save), checking everything first: all or nothing.
    pub fn import(
        &self,
        users: Vec<UserRecord>,
        perms: Vec<Permission>,
        topics: Vec<TopicPermission>,
    ) -> Result<(), AccessError> {
        for u in &users {
            if !password::is_base64(&u.password_hash) {
                return Err(AccessError::NotBase64);
            }
        }
        for p in &perms {
            permissions::validate(&[&p.configure, &p.write, &p.read])?;
        }
        for t in &topics {
            permissions::validate_topic(t)?;
        }
        self.change(|d| {
            let known = |d: &Data, name: &str| {
                d.users.contains_key(name) || users.iter().any(|u| u.name == name)
            };
            if let Some(p) = perms.iter().find(|p| !known(d, &p.user)) {
                return Err(AccessError::NoSuchUser(p.user.clone()));
            }
            if let Some(t) = topics.iter().find(|t| !known(d, &t.user)) {
                return Err(AccessError::NoSuchUser(t.user.clone()));
            }
            for u in users {
                d.users.insert(u.name.clone(), u);
            }
            for p in perms {
                d.permissions.insert((p.user.clone(), p.vhost.clone()), p);
            }
            for t in topics {
                let key = (t.user.clone(), t.vhost.clone(), t.exchange.clone());
                d.topic_permissions.insert(key, t);
            }
            Ok(())
        })
    }

    /// Every user, permission and limit at once, as a cluster's metadata
    /// snapshot carries them.
    pub fn snapshot(&self) -> AccessSnapshot {
        let file = DataFile::from(&*self.data.read());
        AccessSnapshot {
            users: file.users,
            permissions: file.permissions,
            topic_permissions: file.topic_permissions,
            vhost_limits: file.vhost_limits,
            user_limits: file.user_limits,
            cluster_name: file.cluster_name,
        }
    }

    /// The cluster's name, if set at run time.
    pub fn cluster_name(&self) -> Option<String> {
        self.data.read().cluster_name.clone()
    }

    /// Sets the cluster's name (RabbitMQ's `rabbitmqctl set_cluster_name`):
    /// whether it changed.
    pub fn set_cluster_name(&self, name: &str) -> Result<bool, AccessError> {
        if self.data.read().cluster_name.as_deref() == Some(name) {
            return Ok(false);
        }
        self.change(|d| {
            d.cluster_name = Some(name.to_owned());
            Ok(true)
        })
    }

    /// Replaces every user, permission and limit with a snapshot's (a
    /// cluster node catching up from its metadata group's snapshot).
    pub fn replace_all(&self, snapshot: AccessSnapshot) -> Result<(), AccessError> {
        self.change(|d| {
            let mut next = Data {
                cluster_name: snapshot.cluster_name,
                ..Data::default()
            };
            for u in snapshot.users {
                next.users.insert(u.name.clone(), u);
            }
            for p in snapshot.permissions {
                next.permissions
                    .insert((p.user.clone(), p.vhost.clone()), p);
            }
            for t in snapshot.topic_permissions {
                let key = (t.user.clone(), t.vhost.clone(), t.exchange.clone());
                next.topic_permissions.insert(key, t);
            }
            for l in snapshot
                .vhost_limits
                .into_iter()
                .filter(|l| !l.value.is_empty())
            {
                next.vhost_limits.insert(l.vhost, l.value);
            }
            for l in snapshot
                .user_limits
                .into_iter()
                .filter(|l| !l.value.is_empty())
            {
                next.user_limits.insert(l.user, l.value);
            }
            *d = next;
            Ok(())
        })
    }

    /// Whether `user` may open `vhost` (has a permission entry there, as
    /// RabbitMQ's internal backend decides).
    pub fn vhost_access(&self, user: &str, vhost: &str) -> bool {
        let key = (user.to_owned(), vhost.to_owned());
        self.data.read().permissions.contains_key(&key)
    }

    /// The vhosts `user` has a permission in.
    pub fn vhosts_of(&self, user: &str) -> Vec<String> {
        let data = self.data.read();
        data.permissions
            .keys()
            .filter(|(u, _)| u == user)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The compiled permissions of `user` in `vhost`; None when the user has
    /// none there (everything is refused).
    pub fn compiled(&self, user: &str, vhost: &str) -> Option<Arc<VhostPermissions>> {
        let key = (user.to_owned(), vhost.to_owned());
        if let Some(hit) = self.compiled.lock().get(&key) {
            return hit.clone();
        }
        let data = self.data.read();
        let compiled = data.permissions.get(&key).and_then(|p| {
            let topics: Vec<&TopicPermission> = data
                .topic_permissions
                .range((user.to_owned(), vhost.to_owned(), String::new())..)
                .take_while(|((u, v, _), _)| u == user && v == vhost)
                .map(|(_, t)| t)
                .collect();
            // Expressions were validated when set; one that no longer
            // compiles (a file edited by hand) refuses everything.
            VhostPermissions::new(p, &topics)
                .map_err(|e| tracing::error!("permissions of '{user}' in '{vhost}': {e}"))
                .ok()
                .map(Arc::new)
        });
        // Only cache what is still current: a change since we read would
        // have emptied the cache, and must not be undone by this insert.
        let mut cache = self.compiled.lock();
        drop(data);
        cache.insert(key, compiled.clone());
        compiled
    }

    /// Checks one permission of `user` in `vhost` (for the management API;
    /// channels keep their compiled permissions).
    pub fn check(
        &self,
        user: &str,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        perm: Perm,
    ) -> Result<(), BrokerError> {
        match self.compiled(user, vhost) {
            Some(p) => p.check(kind, name, perm),
            None => Err(permissions::refused(kind, name, vhost, user)),
        }
    }

    /// Applies a change, saves it, and invalidates compiled permissions.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Data) -> Result<T, AccessError>,
    ) -> Result<T, AccessError> {
        let mut data = self.data.write();
        let mut next = data.clone();
        let result = f(&mut next)?;
        self.save(&next)?;
        *data = next;
        self.compiled.lock().clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(result)
    }

    /// Rewrites the access file of a persistent broker, atomically.
    fn save(&self, data: &Data) -> Result<(), AccessError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&DataFile::from(data))
            .map_err(|e| AccessError::Storage(e.to_string()))?;
        antre_store::definitions::write_atomic(path, &json)
            .map_err(|e| AccessError::Storage(format!("{}: {e}", path.display())))
    }
}

impl Default for AccessControl {
    fn default() -> Self {
        AccessControl::new()
    }
}

impl Data {
    fn seed_guest(&mut self) {
        self.users.insert(
            "guest".into(),
            UserRecord {
                name: "guest".into(),
                password_hash: password::hash("guest"),
                hashing_algorithm: password::SHA256.into(),
                tags: vec!["administrator".into()],
            },
        );
        self.permissions
            .insert(("guest".into(), "/".into()), full_permission("guest", "/"));
    }

    fn migrate_v1(&mut self, users: Vec<V1User>, vhosts: &[String]) {
        for u in users {
            for v in vhosts {
                self.permissions
                    .insert((u.name.clone(), v.clone()), full_permission(&u.name, v));
            }
            self.users.insert(
                u.name.clone(),
                UserRecord {
                    name: u.name,
                    password_hash: u.password_hash,
                    hashing_algorithm: password::SHA256.into(),
                    tags: vec!["administrator".into()],
                },
            );
        }
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, BrokerError> {
    antre_store::definitions::read(path)
        .map_err(|e| BrokerError::Internal(format!("reading {}: {e}", path.display())))
}
