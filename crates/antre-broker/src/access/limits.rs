//! Vhost and user limits (RabbitMQ's `rabbitmqctl set_vhost_limits` and
//! `set_user_limits`), and the live counts they are checked against.
//!
//! A limit is a named integer. A negative one means "no limit" (RabbitMQ
//! keeps the value as it was set, so `-1` reads back as `-1`); zero allows
//! nothing. The names:
//! - a vhost's `max-connections` and `max-queues`;
//! - a user's `max-connections` and `max-channels`, across the whole node.
//!
//! [`Usage`] counts open connections (per node, vhost and user) and
//! channels (per user). Admission checks a count against its limit and
//! takes a place in one step under one lock, so two clients racing for the
//! last place cannot both get it, and hands out a permit that gives the
//! place back when dropped: a count cannot leak with a connection that
//! ended by any path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AccessControl, AccessError, UserLimits, VhostLimits};

/// Most connections (of a vhost, or of a user).
pub const MAX_CONNECTIONS: &str = "max-connections";
/// Most queues of a vhost.
pub const MAX_QUEUES: &str = "max-queues";
/// Most channels a user has open, over all their connections.
pub const MAX_CHANNELS: &str = "max-channels";

/// What limits are about: a vhost or a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// `max-connections`, `max-queues`.
    Vhost,
    /// `max-connections`, `max-channels`.
    User,
}

impl LimitScope {
    /// The limit names this scope knows.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            LimitScope::Vhost => &[MAX_CONNECTIONS, MAX_QUEUES],
            LimitScope::User => &[MAX_CONNECTIONS, MAX_CHANNELS],
        }
    }

    /// RabbitMQ's name for the set of limits, in its validation errors.
    fn term(self) -> &'static str {
        match self {
            LimitScope::Vhost => "limits",
            LimitScope::User => "user-limits",
        }
    }
}

/// The limits of one vhost or user: name → value, as set (negative values
/// included). Serialised as RabbitMQ shows them: `{"max-connections": 10}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Limits(BTreeMap<String, i64>);

impl Limits {
    /// The value `name` was set to, if it was.
    pub fn value(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }

    /// The limit in effect: `None` when unset or negative.
    pub fn limit(&self, name: &str) -> Option<u64> {
        self.value(name).and_then(|v| u64::try_from(v).ok())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every limit set, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Sets `name` (which the caller checked) to `value`.
    pub(super) fn set(&mut self, name: &str, value: i64) {
        self.0.insert(name.to_owned(), value);
    }

    /// Removes `name`; returns whether it was set.
    pub(super) fn clear(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// Checks every name against `scope`.
    pub fn validate(&self, scope: LimitScope) -> Result<(), LimitError> {
        for (name, value) in self.iter() {
            check_name(scope, name, &Value::from(value))?;
        }
        Ok(())
    }
}

/// A limit that cannot be set: RabbitMQ's validation texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A name the scope does not have.
    #[error("Unrecognised terms [{{<<\"{name}\">>,{value}}}] in {term}")]
    Unknown {
        /// The name given.
        name: String,
        /// Its value, as Erlang would print it.
        value: String,
        /// RabbitMQ's name for the scope's limits.
        term: &'static str,
    },
    /// A value that is not an integer.
    #[error("{name} should be a number, actually was {value}")]
    NotInteger {
        /// The limit's name.
        name: String,
        /// The value given, as Erlang would print it.
        value: String,
    },
}

/// A JSON value as RabbitMQ's messages print the Erlang term it decodes to:
/// a string is a binary, `<<"x">>`.
fn erlang_term(value: &Value) -> String {
    match value {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

fn check_name(scope: LimitScope, name: &str, value: &Value) -> Result<(), LimitError> {
    if scope.names().contains(&name) {
        return Ok(());
    }
    Err(LimitError::Unknown {
        name: name.to_owned(),
        value: erlang_term(value),
        term: scope.term(),
    })
}

/// Checks a limit as given over the API (`{"value": 10}`): a known name and
/// an integer value.
pub fn parse_limit(scope: LimitScope, name: &str, value: &Value) -> Result<i64, LimitError> {
    check_name(scope, name, value)?;
    value.as_i64().ok_or_else(|| LimitError::NotInteger {
        name: name.to_owned(),
        value: erlang_term(value),
    })
}

/// Checks a whole set of limits given as a JSON object (a definitions file).
pub fn parse_limits(scope: LimitScope, object: &Value) -> Result<Limits, LimitError> {
    let mut limits = Limits::default();
    if let Value::Object(map) = object {
        for (name, value) in map {
            limits.set(name, parse_limit(scope, name, value)?);
        }
    }
    Ok(limits)
}

/// Why a connection or channel was refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// The node's connection limit (a server setting).
    NodeConnections(u64),
    /// The vhost's `max-connections`.
    VhostConnections(u64),
    /// The user's `max-connections`.
    UserConnections(u64),
    /// The user's `max-channels`.
    UserChannels(u64),
}

/// Open connections and channels, counted for limits.
#[derive(Debug, Default)]
pub struct Usage {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    connections: u64,
    vhost_connections: HashMap<String, u64>,
    user_connections: HashMap<String, u64>,
    user_channels: HashMap<String, u64>,
}

/// The limits a new connection is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionLimits {
    /// The node's.
    pub node: Option<u64>,
    /// Its vhost's `max-connections`.
    pub vhost: Option<u64>,
    /// Its user's `max-connections`.
    pub user: Option<u64>,
}

fn at(limit: Option<u64>, count: u64) -> bool {
    limit.is_some_and(|l| count >= l)
}

fn add(map: &mut HashMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

fn remove(map: &mut HashMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Usage {
    /// Takes a place for a connection of `user` to `vhost`, unless a limit
    /// is reached (checked in RabbitMQ's order: node, vhost, user).
    pub fn admit_connection(
        &self,
        user: &str,
        vhost: &str,
        limits: ConnectionLimits,
    ) -> Result<ConnectionPermit, LimitRefusal> {
        let mut counts = self.counts.lock();
        if at(limits.node, counts.connections) {
            return Err(LimitRefusal::NodeConnections(limits.node.unwrap_or(0)));
        }
        let of_vhost = counts.vhost_connections.get(vhost).copied().unwrap_or(0);
        if at(limits.vhost, of_vhost) {
            return Err(LimitRefusal::VhostConnections(limits.vhost.unwrap_or(0)));
        }
        let of_user = counts.user_connections.get(user).copied().unwrap_or(0);
        if at(limits.user, of_user) {
            return Err(LimitRefusal::UserConnections(limits.user.unwrap_or(0)));
        }
        counts.connections += 1;
        add(&mut counts.vhost_connections, vhost);
        add(&mut counts.user_connections, user);
        Ok(ConnectionPermit {
            counts: Arc::clone(&self.counts),
            user: user.to_owned(),
            vhost: vhost.to_owned(),
        })
    }

    /// Takes a place for a channel of `user`, unless `limit` is reached.
    pub fn admit_channel(
        &self,
        user: &str,
        limit: Option<u64>,
    ) -> Result<ChannelPermit, LimitRefusal> {
        let mut counts = self.counts.lock();
        let open = counts.user_channels.get(user).copied().unwrap_or(0);
        if at(limit, open) {
            return Err(LimitRefusal::UserChannels(limit.unwrap_or(0)));
        }
        add(&mut counts.user_channels, user);
        Ok(ChannelPermit {
            counts: Arc::clone(&self.counts),
            user: user.to_owned(),
        })
    }

    /// Open connections on the node.
    pub fn connections(&self) -> u64 {
        self.counts.lock().connections
    }

    /// Open connections to `vhost`.
    pub fn vhost_connections(&self, vhost: &str) -> u64 {
        let counts = self.counts.lock();
        counts.vhost_connections.get(vhost).copied().unwrap_or(0)
    }

    /// Open connections of `user`.
    pub fn user_connections(&self, user: &str) -> u64 {
        let counts = self.counts.lock();
        counts.user_connections.get(user).copied().unwrap_or(0)
    }

    /// Open channels of `user`.
    pub fn user_channels(&self, user: &str) -> u64 {
        let counts = self.counts.lock();
        counts.user_channels.get(user).copied().unwrap_or(0)
    }
}

/// A connection's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    counts: Arc<Mutex<Counts>>,
    user: String,
    vhost: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        counts.connections = counts.connections.saturating_sub(1);
        remove(&mut counts.vhost_connections, &self.vhost);
        remove(&mut counts.user_connections, &self.user);
    }
}

/// A channel's place in its user's count; dropping it gives the place back.
#[derive(Debug)]
pub struct ChannelPermit {
    counts: Arc<Mutex<Counts>>,
    user: String,
}

impl Drop for ChannelPermit {
    fn drop(&mut self) {
        remove(&mut self.counts.lock().user_channels, &self.user);
    }
}

impl AccessControl {
    /// The limits of `vhost` (empty if none is set).
    pub fn vhost_limits(&self, vhost: &str) -> Limits {
        let data = self.data.read();
        data.vhost_limits.get(vhost).cloned().unwrap_or_default()
    }

    /// Every vhost with limits set, by name.
    pub fn all_vhost_limits(&self) -> Vec<VhostLimits> {
        let data = self.data.read();
        data.vhost_limits
            .iter()
            .map(|(vhost, value)| VhostLimits {
                vhost: vhost.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Sets one limit of `vhost` (the caller checks that it exists).
    pub fn set_vhost_limit(&self, vhost: &str, name: &str, value: i64) -> Result<(), AccessError> {
        check_name(LimitScope::Vhost, name, &Value::from(value))?;
        self.change(|d| {
            d.vhost_limits
                .entry(vhost.to_owned())
                .or_default()
                .set(name, value);
            Ok(())
        })
    }

    /// Removes one limit of `vhost`; removing one that is not set succeeds.
    pub fn clear_vhost_limit(&self, vhost: &str, name: &str) -> Result<(), AccessError> {
        self.change(|d| {
            clear(&mut d.vhost_limits, vhost, name);
            Ok(())
        })
    }

    /// The limits of `user` (empty if none is set).
    pub fn user_limits(&self, user: &str) -> Limits {
        let data = self.data.read();
        data.user_limits.get(user).cloned().unwrap_or_default()
    }

    /// Every user with limits set, by name.
    pub fn all_user_limits(&self) -> Vec<UserLimits> {
        let data = self.data.read();
        data.user_limits
            .iter()
            .map(|(user, value)| UserLimits {
                user: user.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Sets one limit of `user`, who must exist.
    pub fn set_user_limit(&self, user: &str, name: &str, value: i64) -> Result<(), AccessError> {
        check_name(LimitScope::User, name, &Value::from(value))?;
        self.change(|d| {
            if !d.users.contains_key(user) {
                return Err(AccessError::NoSuchUser(user.to_owned()));
            }
            d.user_limits
                .entry(user.to_owned())
                .or_default()
                .set(name, value);
            Ok(())
        })
    }

    /// Removes one limit of `user`; removing one that is not set succeeds.
    pub fn clear_user_limit(&self, user: &str, name: &str) -> Result<(), AccessError> {
        self.change(|d| {
            if !d.users.contains_key(user) {
                return Err(AccessError::NoSuchUser(user.to_owned()));
            }
            clear(&mut d.user_limits, user, name);
            Ok(())
        })
    }

    /// Sets the limits of the given vhosts and users in one change (a
    /// definitions import, `rabbitmqctl set_vhost_limits`): a vhost's
    /// limits replace what was set (an empty set clears them), as RabbitMQ
    /// replaces the `vhost-limits` parameter; a user's are added to what
    /// was set, as RabbitMQ's import adds them. Users must exist.
    pub fn import_limits(
        &self,
        vhosts: Vec<VhostLimits>,
        users: Vec<UserLimits>,
    ) -> Result<(), AccessError> {
        for l in &vhosts {
            l.value.validate(LimitScope::Vhost)?;
        }
        for l in &users {
            l.value.validate(LimitScope::User)?;
        }
        self.change(|d| {
            if let Some(l) = users.iter().find(|l| !d.users.contains_key(&l.user)) {
                return Err(AccessError::NoSuchUser(l.user.clone()));
            }
            for l in vhosts {
                replace(&mut d.vhost_limits, l.vhost, l.value);
            }
            for l in users.into_iter().filter(|l| !l.value.is_empty()) {
                let limits = d.user_limits.entry(l.user).or_default();
                for (name, value) in l.value.iter() {
                    limits.set(name, value);
                }
            }
            Ok(())
        })
    }

    /// Takes a place for a connection of `user` to `vhost`, checking the
    /// node's limit `node` and the vhost's and user's `max-connections`.
    pub fn admit_connection(
        &self,
        user: &str,
        vhost: &str,
        node: Option<u64>,
    ) -> Result<ConnectionPermit, LimitRefusal> {
        let limits = {
            let data = self.data.read();
            let of = |map: &BTreeMap<String, Limits>, key: &str| {
                map.get(key).and_then(|l| l.limit(MAX_CONNECTIONS))
            };
            ConnectionLimits {
                node,
                vhost: of(&data.vhost_limits, vhost),
                user: of(&data.user_limits, user),
            }
        };
        self.usage.admit_connection(user, vhost, limits)
    }

    /// Takes a place for a channel of `user`, checking their `max-channels`.
    pub fn admit_channel(&self, user: &str) -> Result<ChannelPermit, LimitRefusal> {
        let limit = {
            let data = self.data.read();
            data.user_limits
                .get(user)
                .and_then(|l| l.limit(MAX_CHANNELS))
        };
        self.usage.admit_channel(user, limit)
    }

    /// Open connections and channels.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }
}

fn clear(map: &mut BTreeMap<String, Limits>, key: &str, name: &str) {
    if let Some(limits) = map.get_mut(key) {
        limits.clear(name);
        if limits.is_empty() {
            map.remove(key);
        }
    }
}

fn replace(map: &mut BTreeMap<String, Limits>, key: String, limits: Limits) {
    if limits.is_empty() {
        map.remove(&key);
    } else {
        map.insert(key, limits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn negative_limits_are_kept_but_do_not_limit() {
        let mut l = Limits::default();
        l.set(MAX_QUEUES, -1);
        l.set(MAX_CONNECTIONS, 0);
        assert_eq!(l.value(MAX_QUEUES), Some(-1));
        assert_eq!(l.limit(MAX_QUEUES), None);
        assert_eq!(l.limit(MAX_CONNECTIONS), Some(0));
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"max-connections": 0, "max-queues": -1})
        );
    }

    #[test]
    fn parse_refuses_as_rabbitmq_does() {
        let user = LimitScope::User;
        assert_eq!(parse_limit(user, MAX_CHANNELS, &json!(5)), Ok(5));
        let e = parse_limit(user, "max-bogus", &json!(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unrecognised terms [{<<\"max-bogus\">>,2}] in user-limits"
        );
        let e = parse_limit(LimitScope::Vhost, MAX_QUEUES, &json!("3")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "max-queues should be a number, actually was <<\"3\">>"
        );
        let e = parse_limit(LimitScope::Vhost, MAX_QUEUES, &json!(1.5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "max-queues should be a number, actually was 1.5"
        );
        assert!(parse_limit(LimitScope::Vhost, MAX_CHANNELS, &json!(1)).is_err());
        let all = parse_limits(user, &json!({"max-connections": 2, "max-channels": -1})).unwrap();
        assert_eq!(all.limit(MAX_CONNECTIONS), Some(2));
        assert!(parse_limits(user, &json!({"max-queues": 2})).is_err());
    }

    #[test]
    fn admission_counts_and_permits_give_places_back() {
        let usage = Usage::default();
        let limits = ConnectionLimits {
            node: Some(3),
            vhost: Some(2),
            user: None,
        };
        let a = usage.admit_connection("ann", "/", limits).unwrap();
        let _b = usage.admit_connection("bob", "/", limits).unwrap();
        assert_eq!(
            usage.admit_connection("cy", "/", limits).unwrap_err(),
            LimitRefusal::VhostConnections(2)
        );
        let _c = usage.admit_connection("cy", "eu", limits).unwrap();
        assert_eq!(
            usage.admit_connection("cy", "us", limits).unwrap_err(),
            LimitRefusal::NodeConnections(3)
        );
        drop(a);
        assert_eq!(usage.connections(), 2);
        assert_eq!(usage.vhost_connections("/"), 1);
        assert_eq!(usage.user_connections("ann"), 0);
        let zero = ConnectionLimits {
            user: Some(0),
            ..ConnectionLimits::default()
        };
        assert_eq!(
            usage.admit_connection("ann", "/", zero).unwrap_err(),
            LimitRefusal::UserConnections(0)
        );
    }

    #[test]
    fn channels_are_counted_per_user() {
        let usage = Usage::default();
        let one = usage.admit_channel("ann", Some(2)).unwrap();
        let _two = usage.admit_channel("ann", Some(2)).unwrap();
        assert_eq!(
            usage.admit_channel("ann", Some(2)).unwrap_err(),
            LimitRefusal::UserChannels(2)
        );
        let _other = usage.admit_channel("bob", Some(2)).unwrap();
        drop(one);
        assert_eq!(usage.user_channels("ann"), 1);
        assert!(usage.admit_channel("ann", Some(2)).is_ok());
    }
}
