//! Queue arguments (`x-...`), parsed and validated once at declaration, with
//! RabbitMQ's names and its error texts for bad values.

use antre_amqp::{FieldTable, FieldValue};

use crate::equivalence::type_name;
use crate::error::{queue_ref, BrokerError};

/// What a queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages.
    #[default]
    DropHead,
    /// Refuse new messages (publishers with confirms get a nack).
    RejectPublish,
    /// Refuse new messages and dead-letter them.
    RejectPublishDlx,
}

/// How a quorum queue dead-letters (`x-dead-letter-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterStrategy {
    /// A dead letter leaves the queue as it is routed, whatever becomes
    /// of it (RabbitMQ's default, and the only way classic queues have).
    #[default]
    AtMostOnce,
    /// A dead letter stays in the queue, out of consumers' reach, until
    /// every queue it is routed to holds it safely; one that reaches no
    /// queue is retried (see [`QueueArgs::at_least_once`]).
    AtLeastOnce,
}

/// A queue's type (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QueueKind {
    /// RabbitMQ's classic queue (the default).
    #[default]
    Classic,
    /// A quorum queue. Until antre replicates, one that lives on this node
    /// but follows quorum-queue rules where they differ from classic ones:
    /// durable, not exclusive, not auto-delete, not server-named; no
    /// priorities or classic-only arguments; `x-delivery-count` on every
    /// redelivery and basic.get; no channel-global prefetch.
    Quorum,
    /// A stream.
    Stream,
}

impl QueueKind {
    /// The name clients use in `x-queue-type` and the API shows as `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }

    /// The module RabbitMQ names in errors about the type.
    pub fn rabbit_module(self) -> &'static str {
        match self {
            QueueKind::Classic => "rabbit_classic_queue",
            QueueKind::Quorum => "rabbit_quorum_queue",
            QueueKind::Stream => "rabbit_stream_queue",
        }
    }
}

/// Where a cluster places a new queue: its quorum queue's first leader
/// (`x-queue-leader-locator`, policy key `queue-leader-locator`) or the
/// node that holds a classic queue (`x-queue-master-locator`, policy key
/// `queue-master-locator`). On a single node every value places the queue
/// on that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locator {
    /// The node the declaring client is connected to (the default).
    #[default]
    ClientLocal,
    /// The node that leads the fewest quorum queues (`balanced`, and
    /// RabbitMQ's older names for it, `least-leaders` and `random`).
    Balanced,
    /// The node that holds the fewest classic queues (`min-masters`).
    MinMasters,
    /// Any node, at random (`random` for a classic queue).
    Random,
}

impl Locator {
    /// The locator `value` names for a queue of type `kind`, as the
    /// argument or the policy key spells it; `None` if it names none.
    pub fn parse(kind: QueueKind, value: &str) -> Option<Locator> {
        match (kind, value) {
            (_, "client-local") => Some(Locator::ClientLocal),
            (QueueKind::Classic, "min-masters") => Some(Locator::MinMasters),
            (QueueKind::Classic, "random") => Some(Locator::Random),
            (QueueKind::Quorum | QueueKind::Stream, "balanced" | "least-leaders" | "random") => {
                Some(Locator::Balanced)
            }
            _ => None,
        }
    }

    /// The argument that sets it for a queue of type `kind`.
    pub fn argument(kind: QueueKind) -> &'static str {
        match kind {
            QueueKind::Classic => "x-queue-master-locator",
            QueueKind::Quorum | QueueKind::Stream => "x-queue-leader-locator",
        }
    }

    /// The policy key that sets it for a queue of type `kind`.
    pub fn policy_key(kind: QueueKind) -> &'static str {
        match kind {
            QueueKind::Classic => "queue-master-locator",
            QueueKind::Quorum | QueueKind::Stream => "queue-leader-locator",
        }
    }
}

/// Arguments RabbitMQ 3.10 knows for some queue type but not for quorum
/// queues (`rabbit_quorum_queue:capabilities/0` against the others').
const NOT_FOR_QUORUM: [&str; 6] = [
    "x-max-priority",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// The features a queue's arguments turn on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueArgs {
    /// `x-message-ttl`: ms a message may wait in the queue.
    pub message_ttl: Option<u64>,
    /// `x-expires`: ms the queue may go unused before it is deleted.
    pub expires: Option<u64>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most bytes of ready message bodies.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-dead-letter-strategy` (quorum queues).
    pub dead_letter_strategy: DeadLetterStrategy,
    /// `x-max-priority`: highest priority level (0 = no priorities).
    pub max_priority: u8,
    /// `x-delivery-limit`: redeliveries allowed before dead-lettering.
    pub delivery_limit: Option<u64>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`: ms a delivery may stay unacked.
    pub consumer_timeout: Option<u64>,
    /// `x-message-deduplication`: refuse a message whose key is already in
    /// the queue.
    pub deduplication: bool,
    /// `x-queue-type`.
    pub kind: QueueKind,
    /// `x-queue-leader-locator` or `x-queue-master-locator` (whichever
    /// the type takes), if given.
    pub locator: Option<Locator>,
}

impl QueueArgs {
    /// Refuses (406, as RabbitMQ words it) a declaration whose
    /// `x-message-ttl` or `x-expires` is beyond ten years
    /// ([`crate::message::MAX_EXPIRY_MS`]). Checked where clients declare
    /// (AMQP, HTTP, definitions), not by [`QueueArgs::parse`]: a queue an
    /// older antre took with one (its definition on disk, or in a
    /// cluster's metadata log) still opens, alike on every node.
    pub fn check_expiries(args: &FieldTable, vhost: &str, queue: &str) -> Result<(), BrokerError> {
        for arg in ["x-message-ttl", "x-expires"] {
            let max = crate::message::MAX_EXPIRY_MS as i64;
            if let Some(n) = args
                .get(arg)
                .and_then(FieldValue::as_i64)
                .filter(|n| *n > max)
            {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid arg '{arg}' for {}: {{value_too_large,{n}}}",
                    queue_ref(vhost, queue)
                )));
            }
        }
        Ok(())
    }

    /// Parses a queue's arguments; a bad value is a 406 naming the argument,
    /// as RabbitMQ words it.
    pub fn parse(args: &FieldTable, vhost: &str, queue: &str) -> Result<QueueArgs, BrokerError> {
        let invalid = |arg: &str, why: String| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg '{arg}' for {}: {why}",
                queue_ref(vhost, queue)
            ))
        };
        let int = |arg: &str, min: i64| -> Result<Option<u64>, BrokerError> {
            match args.get(arg) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= min => Ok(Some(n as u64)),
                    Some(n) if min > 0 => Err(invalid(arg, format!("{{value_zero,{n}}}"))),
                    Some(n) => Err(invalid(arg, format!("{{value_negative,{n}}}"))),
                    None => Err(invalid(
                        arg,
                        format!("\"expected integer, got {}\"", type_name(v)),
                    )),
                },
            }
        };
        let string = |arg: &str| -> Result<Option<String>, BrokerError> {
            match args.get(arg) {
                None => Ok(None),
                Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| {
                    // RabbitMQ words this one differently from the others.
                    if arg == "x-dead-letter-exchange" {
                        return BrokerError::PreconditionFailed(format!(
                            "invalid type '{}' for arg '{arg}' in {}",
                            type_name(v),
                            queue_ref(vhost, queue)
                        ));
                    }
                    invalid(arg, format!("{{unacceptable_type,{}}}", type_name(v)))
                }),
            }
        };
        let boolean = |arg: &str| -> Result<bool, BrokerError> {
            match args.get(arg) {
                None => Ok(false),
                Some(FieldValue::Bool(b)) => Ok(*b),
                // Some clients send flags as strings.
                Some(v) if v.as_str() == Some("true") => Ok(true),
                Some(v) if v.as_str() == Some("false") => Ok(false),
                Some(v) => Err(invalid(
                    arg,
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                )),
            }
        };
        let overflow = match string("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(_) => return Err(invalid("x-overflow", "invalid_overflow".into())),
        };
        let max_priority = match int("x-max-priority", 0)? {
            None => 0,
            Some(p) if p <= 255 => p as u8,
            Some(p) => {
                return Err(invalid(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{p}}}"),
                ))
            }
        };
        let kind = match string("x-queue-type")?.as_deref() {
            None | Some("classic") => QueueKind::Classic,
            Some("quorum") => QueueKind::Quorum,
            Some("stream") => QueueKind::Stream,
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("\"unsupported queue type '{other}'\""),
                ))
            }
        };
        if kind == QueueKind::Quorum {
            if let Some(arg) = NOT_FOR_QUORUM.iter().find(|a| args.get(a).is_some()) {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid arg '{arg}' for {} of queue type {}",
                    queue_ref(vhost, queue),
                    kind.rabbit_module()
                )));
            }
        }
        if kind != QueueKind::Quorum && args.get("x-dead-letter-strategy").is_some() {
            return Err(BrokerError::PreconditionFailed(format!(
                "invalid arg 'x-dead-letter-strategy' for {} of queue type {}",
                queue_ref(vhost, queue),
                kind.rabbit_module()
            )));
        }
        let dead_letter_strategy = match string("x-dead-letter-strategy")?.as_deref() {
            None | Some("at-most-once") => DeadLetterStrategy::AtMostOnce,
            Some("at-least-once") => DeadLetterStrategy::AtLeastOnce,
            Some(_) => {
                return Err(invalid(
                    "x-dead-letter-strategy",
                    "invalid_dlx_strategy".into(),
                ))
            }
        };
        if kind == QueueKind::Classic && args.get("x-queue-leader-locator").is_some() {
            return Err(BrokerError::PreconditionFailed(format!(
                "invalid arg 'x-queue-leader-locator' for {} of queue type {}",
                queue_ref(vhost, queue),
                kind.rabbit_module()
            )));
        }
        let locator_arg = Locator::argument(kind);
        let locator = match string(locator_arg)? {
            None => None,
            // RabbitMQ 3.10 answers a bad x-queue-master-locator with a
            // crash of the channel (541 INTERNAL_ERROR); the 406 it gives
            // for a bad x-queue-leader-locator says what is wrong.
            Some(v) => Some(
                Locator::parse(kind, &v)
                    .ok_or_else(|| invalid(locator_arg, "invalid_queue_locator_arg".into()))?,
            ),
        };
        let overflow = match (kind, overflow) {
            (QueueKind::Quorum, Overflow::RejectPublishDlx) => {
                // RabbitMQ 3.10 logs and keeps its default.
                tracing::warn!(
                    "invalid overflow strategy reject-publish-dlx for quorum {}: drop-head applies",
                    queue_ref(vhost, queue)
                );
                Overflow::DropHead
            }
            (_, o) => o,
        };
        let parsed = QueueArgs {
            message_ttl: int("x-message-ttl", 0)?,
            expires: int("x-expires", 1)?,
            max_length: int("x-max-length", 0)?,
            max_length_bytes: int("x-max-length-bytes", 0)?,
            overflow,
            dead_letter_exchange: string("x-dead-letter-exchange")?,
            dead_letter_routing_key: string("x-dead-letter-routing-key")?,
            dead_letter_strategy,
            max_priority,
            delivery_limit: int("x-delivery-limit", 0)?,
            single_active_consumer: boolean("x-single-active-consumer")?,
            consumer_timeout: int("x-consumer-timeout", 1)?,
            deduplication: boolean("x-message-deduplication")?,
            kind,
            locator,
        };
        if parsed.dead_letter_routing_key.is_some() && parsed.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        Ok(parsed)
    }

    /// Whether time alone can change the queue (so the broker's timer must
    /// visit it).
    pub fn needs_timer(&self) -> bool {
        self.message_ttl.is_some() || self.expires.is_some()
    }

    /// Whether dead letters are kept until their targets hold them. As in
    /// RabbitMQ, `at-least-once` takes a quorum queue with a dead-letter
    /// exchange and `reject-publish` overflow: under drop-head the queue
    /// could only make room by dropping what it promised to keep, so it
    /// dead-letters at most once.
    pub fn at_least_once(&self) -> bool {
        self.kind == QueueKind::Quorum
            && self.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
            && self.overflow == Overflow::RejectPublish
            && self.dead_letter_exchange.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[(&str, FieldValue)]) -> Result<QueueArgs, BrokerError> {
        QueueArgs::parse(&entries.iter().cloned().collect(), "/", "q")
    }

    #[test]
    fn arguments_parse_in_any_integer_width() {
        let a = parse(&[
            ("x-message-ttl", FieldValue::I16(500)),
            ("x-max-length", FieldValue::I64(10)),
            ("x-overflow", FieldValue::string("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("x-max-priority", FieldValue::U8(5)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
        ])
        .unwrap();
        assert_eq!(a.message_ttl, Some(500));
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(a.max_priority, 5);
        assert!(a.single_active_consumer);
    }

    /// RabbitMQ 3.10's answers, recorded against it.
    #[test]
    fn the_dead_letter_strategy_is_a_quorum_queues_and_one_of_two() {
        let err = |entries: &[(&str, FieldValue)]| parse(entries).unwrap_err().to_string();
        let strategy = |s: &str| ("x-dead-letter-strategy", FieldValue::string(s));
        let quorum = ("x-queue-type", FieldValue::string("quorum"));
        assert!(err(&[strategy("at-least-once")]).contains(
            "invalid arg 'x-dead-letter-strategy' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        ));
        let stream = ("x-queue-type", FieldValue::string("stream"));
        assert!(err(&[stream, strategy("at-least-once")]).contains("rabbit_stream_queue"));
        assert!(err(&[quorum.clone(), strategy("bogus")]).contains(
            "invalid arg 'x-dead-letter-strategy' for queue 'q' in vhost '/': invalid_dlx_strategy"
        ));
        assert!(err(&[
            quorum.clone(),
            ("x-dead-letter-strategy", FieldValue::I32(1))
        ])
        .contains("{unacceptable_type,signedint}"));
        let dlx = ("x-dead-letter-exchange", FieldValue::string("dlx"));
        let reject = ("x-overflow", FieldValue::string("reject-publish"));
        let full = [
            quorum.clone(),
            strategy("at-least-once"),
            dlx.clone(),
            reject.clone(),
        ];
        assert!(parse(&full).unwrap().at_least_once());
        // Without reject-publish or a dead-letter exchange it does not apply.
        assert!(!parse(&full[..3]).unwrap().at_least_once());
        let no_dlx = [quorum.clone(), strategy("at-least-once"), reject];
        assert!(!parse(&no_dlx).unwrap().at_least_once());
        let most = parse(&[quorum, strategy("at-most-once"), dlx]).unwrap();
        assert_eq!(most.dead_letter_strategy, DeadLetterStrategy::AtMostOnce);
    }

    #[test]
    fn quorum_queues_refuse_classic_only_arguments_as_rabbitmq_does() {
        let quorum = ("x-queue-type", FieldValue::string("quorum"));
        let a = parse(&[quorum.clone(), ("x-delivery-limit", FieldValue::I32(3))]).unwrap();
        assert_eq!((a.kind, a.delivery_limit), (QueueKind::Quorum, Some(3)));
        let e = parse(&[quorum.clone(), ("x-max-priority", FieldValue::I32(3))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        );
        let dlx = parse(&[
            quorum,
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
        ]);
        assert_eq!(dlx.unwrap().overflow, Overflow::DropHead);
    }

    /// RabbitMQ refuses a TTL or expiry beyond ten years; antre took any.
    /// Refused where clients declare, but a definition an older antre took
    /// still parses (its queue opens after an upgrade).
    #[test]
    fn ttls_and_expiries_beyond_ten_years_are_refused_to_new_declarations() {
        let ten_years = crate::message::MAX_EXPIRY_MS as i64;
        let table =
            |arg: &str, n: i64| -> FieldTable { [(arg, FieldValue::I64(n))].into_iter().collect() };
        for arg in ["x-message-ttl", "x-expires"] {
            assert!(QueueArgs::check_expiries(&table(arg, ten_years), "/", "q").is_ok());
            let e = QueueArgs::check_expiries(&table(arg, ten_years + 1), "/", "q").unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("PRECONDITION_FAILED - invalid arg '{arg}' for queue 'q' in vhost '/': {{value_too_large,315360000001}}")
            );
            assert!(QueueArgs::parse(&table(arg, 1 << 40), "/", "q").is_ok());
        }
    }

    #[test]
    fn bad_values_are_precondition_failures_with_rabbitmq_wording() {
        let e = parse(&[("x-max-length", FieldValue::I32(-1))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert!(parse(&[("x-message-ttl", FieldValue::string("soon"))]).is_err());
        assert!(parse(&[("x-expires", FieldValue::I32(0))]).is_err());
        assert!(parse(&[("x-overflow", FieldValue::string("explode"))]).is_err());
        assert!(parse(&[("x-max-priority", FieldValue::I32(256))]).is_err());
        assert!(parse(&[("x-dead-letter-routing-key", FieldValue::string("k"))]).is_err());
    }

    #[test]
    fn locators_take_rabbitmqs_values_per_queue_type() {
        let quorum = ("x-queue-type", FieldValue::string("quorum"));
        let leader = |v: FieldValue| parse(&[quorum.clone(), ("x-queue-leader-locator", v)]);
        let master = |v: FieldValue| parse(&[("x-queue-master-locator", v)]);
        for (v, want) in [
            ("client-local", Locator::ClientLocal),
            ("balanced", Locator::Balanced),
            ("least-leaders", Locator::Balanced),
            ("random", Locator::Balanced),
        ] {
            assert_eq!(leader(FieldValue::string(v)).unwrap().locator, Some(want));
        }
        for (v, want) in [
            ("client-local", Locator::ClientLocal),
            ("min-masters", Locator::MinMasters),
            ("random", Locator::Random),
        ] {
            assert_eq!(master(FieldValue::string(v)).unwrap().locator, Some(want));
        }
        assert_eq!(parse(std::slice::from_ref(&quorum)).unwrap().locator, None);
        let text = |r: Result<QueueArgs, BrokerError>| r.unwrap_err().to_string();
        assert_eq!(
            text(leader(FieldValue::string("min-masters"))),
            "PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue 'q' in vhost '/': invalid_queue_locator_arg"
        );
        assert_eq!(
            text(leader(FieldValue::I32(5))),
            "PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue 'q' in vhost '/': {unacceptable_type,signedint}"
        );
        assert_eq!(
            text(master(FieldValue::string("balanced"))),
            "PRECONDITION_FAILED - invalid arg 'x-queue-master-locator' for queue 'q' in vhost '/': invalid_queue_locator_arg"
        );
        assert_eq!(
            text(parse(&[("x-queue-leader-locator", FieldValue::string("balanced"))])),
            "PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        );
    }
}
