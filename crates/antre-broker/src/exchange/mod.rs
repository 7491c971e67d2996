//! Exchanges and bindings: where a published message goes.
//!
//! One module per routing rule that needs more than equality ([`topic`],
//! [`headers`]); direct and fanout are one line each in [`Exchange::matches`].

pub mod headers;
pub mod topic;

use antre_amqp::FieldTable;

use crate::error::BrokerError;

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

/// An exchange and the bindings that have it as their source.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Its name ("" is the default exchange).
    pub name: String,
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
    pub bindings: Vec<Binding>,
}

impl Exchange {
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
