//! The broker: its vhosts and users.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::vhost::Vhost;

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
    vhosts: RwLock<HashMap<String, Arc<Vhost>>>,
    users: RwLock<HashMap<String, User>>,
    next_id: AtomicU64,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Broker {
    /// A broker with the default vhost `/` and the user guest/guest, allowed
    /// from loopback only.
    pub fn new() -> Broker {
        let broker = Broker {
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        };
        broker.add_vhost("/");
        broker.add_user(User {
            name: "guest".into(),
            password: "guest".into(),
            loopback_only: true,
        });
        broker
    }

    /// Creates a vhost if it does not exist; returns it.
    pub fn add_vhost(&self, name: &str) -> Arc<Vhost> {
        Arc::clone(
            self.vhosts
                .write()
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Vhost::new(name))),
        )
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
        self.users.write().insert(user.name.clone(), user);
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
            .filter(|u| constant_time_eq(u.password.as_bytes(), password.as_bytes()))
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
