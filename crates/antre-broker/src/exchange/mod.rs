//! Exchanges and bindings: where a published message goes.
//!
//! One module per routing rule that needs more than equality ([`topic`],
//! [`headers`]); direct and fanout are one line each in [`Exchange::matches`].

pub mod bindings;
pub mod dedup;
pub mod delayed;
pub mod headers;
pub(crate) mod sender_selected;
pub mod topic;

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};

use crate::durable::OwnsStore;
use crate::error::BrokerError;
use crate::policy::AppliedPolicy;
pub use bindings::BindingTable;
use dedup::DedupCache;
use delayed::DelayedMessages;

/// The routing rule of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Routing key matches a `*`/`#` pattern.
    Topic,
    /// Message headers match the binding arguments.
    Headers,
}

impl ExchangeKind {
    /// Parses the `type` field of exchange.declare.
    pub fn parse(kind: &str) -> Result<ExchangeKind, BrokerError> {
        Ok(match kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            // RabbitMQ's two wordings: no type at all is invalid, a type
            // it has no module for is unknown.
            "" => {
                return Err(BrokerError::CommandInvalid(
                    "invalid exchange type ''".into(),
                ))
            }
            other => {
                return Err(BrokerError::CommandInvalid(format!(
                    "unknown exchange type '{other}'"
                )))
            }
        })
    }

    /// The name clients use for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// What a binding points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A queue, by name.
    Queue(String),
    /// Another exchange (RabbitMQ's exchange-to-exchange bindings).
    Exchange(String),
}

/// A binding from a source exchange to a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key (a pattern for topic exchanges).
    pub routing_key: String,
    /// Binding arguments (the match rules of a headers exchange).
    pub arguments: FieldTable,
}

/// What an exchange type declares: its routing rule and the plugin
/// behaviours antre builds in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeType {
    /// How it routes.
    pub routing: ExchangeKind,
    /// `x-delayed-message`: holds messages for their `x-delay`.
    pub delayed: bool,
    /// `x-message-deduplication` (type or argument): drops repeated keys.
    pub dedup: bool,
}

/// Every exchange type a declare takes, with RabbitMQ's description of
/// it (the management API's `exchange_types`).
pub const EXCHANGE_TYPES: [(&str, &str); 6] = [
    (
        "direct",
        "AMQP direct exchange, as per the AMQP specification",
    ),
    (
        "fanout",
        "AMQP fanout exchange, as per the AMQP specification",
    ),
    (
        "headers",
        "AMQP headers exchange, as per the AMQP specification",
    ),
    (
        "topic",
        "AMQP topic exchange, as per the AMQP specification",
    ),
    ("x-delayed-message", "Delayed Message Exchange."),
    ("x-message-deduplication", "Message Deduplication Exchange."),
];

impl ExchangeType {
    /// Parses exchange.declare's type and arguments: the four AMQP types,
    /// `x-delayed-message` (routing as its `x-delayed-type`),
    /// `x-message-deduplication` (routing as fanout, like the plugin), and
    /// any type with the argument `x-message-deduplication: true`.
    pub fn parse(kind: &str, args: &FieldTable) -> Result<ExchangeType, BrokerError> {
        let dedup_arg = matches!(
            args.get("x-message-deduplication"),
            Some(FieldValue::Bool(true))
        ) || args
            .get("x-message-deduplication")
            .and_then(FieldValue::as_str)
            == Some("true");
        Ok(match kind {
            "x-delayed-message" => {
                let inner = args
                    .get("x-delayed-type")
                    .and_then(FieldValue::as_str)
                    .and_then(|t| ExchangeKind::parse(t).ok())
                    .ok_or_else(|| {
                        BrokerError::PreconditionFailed(
                            "Invalid argument, 'x-delayed-type' must be an existing exchange type"
                                .into(),
                        )
                    })?;
                ExchangeType {
                    routing: inner,
                    delayed: true,
                    dedup: dedup_arg,
                }
            }
            "x-message-deduplication" => ExchangeType {
                routing: ExchangeKind::Fanout,
                delayed: false,
                dedup: true,
            },
            other => ExchangeType {
                routing: ExchangeKind::parse(other)?,
                delayed: false,
                dedup: dedup_arg,
            },
        })
    }
}

/// An exchange and the bindings that have it as their source.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Its name ("" is the default exchange).
    pub name: String,
    /// Its type as declared (e.g. "topic", "x-delayed-message").
    pub type_name: String,
    /// Its routing rule.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through other exchanges.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Bindings whose source this exchange is.
    pub bindings: BindingTable,
    /// Its deduplication cache, if it deduplicates.
    pub dedup: Option<Arc<DedupCache>>,
    /// Its schedule, if it is a delayed-message exchange.
    pub delayed: Option<Arc<DelayedMessages>>,
    /// The policy and operator policy that apply to it (set by its vhost).
    pub policy: AppliedPolicy,
}

impl Exchange {
    /// A copy of the exchange without its bindings: what a listing or a
    /// lookup shows. Copying every binding to show an exchange cost more
    /// than the rest of a listing (a topic exchange with 10,000 bindings).
    pub fn without_bindings(&self) -> Exchange {
        Exchange {
            name: self.name.clone(),
            type_name: self.type_name.clone(),
            kind: self.kind,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: self.internal,
            arguments: self.arguments.clone(),
            bindings: BindingTable::default(),
            dedup: self.dedup.clone(),
            delayed: self.delayed.clone(),
            policy: self.policy.clone(),
        }
    }

    /// A plain exchange of a built-in type, with no bindings.
    pub fn plain(name: &str, kind: ExchangeKind) -> Exchange {
        Exchange {
            name: name.to_owned(),
            type_name: kind.as_str().to_owned(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
            bindings: BindingTable::default(),
            dedup: None,
            delayed: None,
            policy: AppliedPolicy::default(),
        }
    }

    /// Where its unroutable messages go: the `alternate-exchange` argument,
    /// else its policy's (RabbitMQ's `get_arg` precedence).
    pub fn alternate_exchange(&self) -> Option<String> {
        match self.arguments.get("alternate-exchange") {
            Some(v) => v.as_str().map(str::to_owned),
            None => self.policy.alternate_exchange(),
        }
    }

    /// Removes its stores from disk (it was deleted).
    pub fn discard_stores(&self) {
        if let Some(d) = &self.dedup {
            d.delete_store();
        }
        if let Some(d) = &self.delayed {
            d.delete_store();
        }
    }

    /// Flushes and closes its stores (clean shutdown).
    pub fn close_stores(&self) {
        if let Some(d) = &self.dedup {
            d.close_store();
        }
        if let Some(d) = &self.delayed {
            d.close_store();
        }
    }

    /// Whether `binding` of this exchange matches a message.
    pub fn matches(
        &self,
        binding: &Binding,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> bool {
        match self.kind {
            ExchangeKind::Direct => binding.routing_key == routing_key,
            ExchangeKind::Fanout => true,
            ExchangeKind::Topic => topic::topic_matches(&binding.routing_key, routing_key),
            ExchangeKind::Headers => headers::headers_match(&binding.arguments, headers),
        }
    }
}

#[cfg(test)]
mod type_list_tests {
    use super::*;

    #[test]
    fn every_listed_type_declares() {
        let mut args = FieldTable::default();
        args.insert("x-delayed-type", FieldValue::LongString("direct".into()));
        for (name, _) in EXCHANGE_TYPES {
            assert!(ExchangeType::parse(name, &args).is_ok(), "{name}");
        }
    }
}
