//! Per-vhost permissions and topic permissions, as RabbitMQ's internal
//! backend has them, and their compiled form that channels check.
//!
//! A permission is three regular expressions, matched (unanchored, as
//! Erlang's `re:run`) against a resource name: `configure` for declaring
//! and deleting, `write` for publishing into and binding to, `read` for
//! consuming from and binding from. An empty expression matches nothing
//! (RabbitMQ reads `""` as `^$`). Expressions use the `regex` crate's
//! syntax, which is PCRE's without look-around and back-references.

use std::collections::HashMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// Which of a permission's three expressions a check uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Declare, delete.
    Configure,
    /// Publish into, bind to.
    Write,
    /// Consume, get, purge, bind from.
    Read,
}

/// The kind of resource a check names, for the refusal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

impl ResourceKind {
    fn label(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        }
    }
}

/// A user's permission in a vhost, as RabbitMQ's `/api/permissions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Names the user may declare and delete.
    pub configure: String,
    /// Names the user may publish into and bind to.
    pub write: String,
    /// Names the user may consume from and bind from.
    pub read: String,
}

/// A user's permission on the routing keys of one topic exchange, as
/// RabbitMQ's `/api/topic-permissions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: String,
    /// Routing keys the user may bind with.
    pub read: String,
}

/// A regular expression that RabbitMQ would accept but `regex` cannot
/// compile (or that is not valid at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regular expression '{pattern}': {reason}")]
pub struct InvalidPattern {
    /// The expression.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Compiles one permission expression; `""` matches nothing, as in RabbitMQ.
pub(crate) fn compile(pattern: &str) -> Result<Regex, InvalidPattern> {
    let source = if pattern.is_empty() { "^$" } else { pattern };
    Regex::new(source).map_err(|e| InvalidPattern {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })
}

/// Checks that every expression of a permission compiles.
pub(crate) fn validate(patterns: &[&str]) -> Result<(), InvalidPattern> {
    patterns.iter().try_for_each(|p| compile(p).map(drop))
}

/// Checks that a topic permission's expressions compile once their
/// variables are expanded (`{username}` alone is not a valid expression).
pub(crate) fn validate_topic(t: &TopicPermission) -> Result<(), InvalidPattern> {
    for pattern in [&t.write, &t.read] {
        compile(&expand(pattern, "user", "vhost")).map_err(|e| InvalidPattern {
            pattern: pattern.clone(),
            reason: e.reason,
        })?;
    }
    Ok(())
}

/// RabbitMQ's topic permission variables: `{username}` and `{vhost}` in an
/// expression stand for the user's name and the vhost's. They are literal
/// text, so they are escaped before substitution.
fn expand(pattern: &str, user: &str, vhost: &str) -> String {
    pattern
        .replace("{username}", &regex::escape(user))
        .replace("{vhost}", &regex::escape(vhost))
}

#[derive(Debug)]
struct CompiledTopic {
    write: Regex,
    read: Regex,
}

/// Everything one user may do in one vhost, compiled once per change of
/// the access data and shared by every channel of the user there.
#[derive(Debug)]
pub struct VhostPermissions {
    user: String,
    vhost: String,
    configure: Regex,
    write: Regex,
    read: Regex,
    topics: HashMap<String, CompiledTopic>,
}

impl VhostPermissions {
    pub(crate) fn new(
        permission: &Permission,
        topics: &[&TopicPermission],
    ) -> Result<VhostPermissions, InvalidPattern> {
        let (user, vhost) = (&permission.user, &permission.vhost);
        let mut compiled_topics = HashMap::new();
        for t in topics {
            compiled_topics.insert(
                t.exchange.clone(),
                CompiledTopic {
                    write: compile(&expand(&t.write, user, vhost))?,
                    read: compile(&expand(&t.read, user, vhost))?,
                },
            );
        }
        Ok(VhostPermissions {
            user: user.clone(),
            vhost: vhost.clone(),
            configure: compile(&permission.configure)?,
            write: compile(&permission.write)?,
            read: compile(&permission.read)?,
            topics: compiled_topics,
        })
    }

    /// The user these permissions are of.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether `perm` covers the resource `name` (the default exchange is
    /// checked as `amq.default`, as in RabbitMQ).
    pub fn allows(&self, kind: ResourceKind, name: &str, perm: Perm) -> bool {
        let name = resource_name(kind, name);
        match perm {
            Perm::Configure => self.configure.is_match(name),
            Perm::Write => self.write.is_match(name),
            Perm::Read => self.read.is_match(name),
        }
    }

    /// As [`VhostPermissions::allows`], with RabbitMQ's refusal.
    pub fn check(&self, kind: ResourceKind, name: &str, perm: Perm) -> Result<(), BrokerError> {
        if self.allows(kind, name, perm) {
            return Ok(());
        }
        Err(refused(kind, name, &self.vhost, &self.user))
    }

    /// Whether the user has topic permissions on `exchange` (without any,
    /// every routing key is allowed).
    pub fn has_topic_rules(&self, exchange: &str) -> bool {
        !self.topics.is_empty() && self.topics.contains_key(exchange)
    }

    /// Checks a routing key against the user's topic permission on a topic
    /// exchange (`perm` is [`Perm::Write`] to publish, [`Perm::Read`] to
    /// bind); allowed when the user has none for the exchange.
    pub fn check_topic(&self, exchange: &str, key: &str, perm: Perm) -> Result<(), BrokerError> {
        let Some(t) = self.topics.get(exchange) else {
            return Ok(());
        };
        let allowed = match perm {
            Perm::Read => t.read.is_match(key),
            _ => t.write.is_match(key),
        };
        if allowed {
            return Ok(());
        }
        Err(BrokerError::AccessRefused(format!(
            "access to topic '{key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        )))
    }
}

fn resource_name(kind: ResourceKind, name: &str) -> &str {
    match (kind, name) {
        (ResourceKind::Exchange, "") => "amq.default",
        _ => name,
    }
}

/// RabbitMQ's refusal: `access to queue 'q' in vhost '/' refused for user 'bob'`.
pub fn refused(kind: ResourceKind, name: &str, vhost: &str, user: &str) -> BrokerError {
    BrokerError::AccessRefused(format!(
        "access to {} '{}' in vhost '{vhost}' refused for user '{user}'",
        kind.label(),
        resource_name(kind, name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(configure: &str, write: &str, read: &str) -> VhostPermissions {
        let p = Permission {
            user: "bob".into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        };
        VhostPermissions::new(&p, &[]).unwrap()
    }

    #[test]
    fn expressions_match_anywhere_and_empty_matches_nothing() {
        let p = perms("^cfg", "w", "");
        assert!(p.allows(ResourceKind::Queue, "cfg.q", Perm::Configure));
        assert!(!p.allows(ResourceKind::Queue, "x.cfg", Perm::Configure));
        assert!(
            p.allows(ResourceKind::Queue, "the-w-queue", Perm::Write),
            "unanchored"
        );
        assert!(!p.allows(ResourceKind::Queue, "r", Perm::Read));
        assert!(!p.allows(ResourceKind::Queue, "anything", Perm::Read));
    }

    #[test]
    fn the_default_exchange_is_checked_as_amq_default() {
        let p = perms("", "^amq\\.default$", "");
        assert!(p.allows(ResourceKind::Exchange, "", Perm::Write));
        let e = perms("", "^x$", "")
            .check(ResourceKind::Exchange, "", Perm::Write)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'bob'"
        );
    }

    #[test]
    fn topic_permissions_expand_variables_literally() {
        let p = Permission {
            user: "a.b".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        let t = TopicPermission {
            user: "a.b".into(),
            vhost: "/".into(),
            exchange: "events".into(),
            write: "^{username}\\.".into(),
            read: "^r".into(),
        };
        let c = VhostPermissions::new(&p, &[&t]).unwrap();
        assert!(c.check_topic("events", "a.b.created", Perm::Write).is_ok());
        assert!(
            c.check_topic("events", "aXb.created", Perm::Write).is_err(),
            "escaped"
        );
        assert!(c.check_topic("events", "r.k", Perm::Read).is_ok());
        assert!(c.check_topic("other", "anything", Perm::Write).is_ok());
        assert_eq!(
            c.check_topic("events", "x", Perm::Write).unwrap_err().to_string(),
            "ACCESS_REFUSED - access to topic 'x' in exchange 'events' in vhost '/' refused for user 'a.b'"
        );
    }

    #[test]
    fn invalid_expressions_are_refused() {
        assert!(validate(&[".*", "(unclosed"]).is_err());
        assert!(validate(&["", ".*", "^a|b$"]).is_ok());
    }
}
