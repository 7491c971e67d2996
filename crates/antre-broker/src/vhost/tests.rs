//! The one publish path, tested on a vhost in memory with a manual clock.

use std::sync::Arc;

use antre_amqp::{BasicProperties, FieldTable, FieldValue};
use bytes::Bytes;

use super::*;
use crate::clock::ManualClock;
use crate::exchange::Destination;
use crate::message::Message;
use crate::policy::PolicyKind;

struct Fixture {
    vhost: Vhost,
    clock: Arc<ManualClock>,
    metrics: Arc<BrokerMetrics>,
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::at(1_000_000));
    let metrics = Arc::<BrokerMetrics>::default();
    let vhost = Vhost::new(
        "/",
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::clone(&metrics),
    );
    Fixture {
        vhost,
        clock,
        metrics,
    }
}

fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
    entries.iter().cloned().collect()
}

impl Fixture {
    fn exchange(&self, name: &str, kind: &str, internal: bool, arguments: FieldTable) {
        self.vhost
            .declare_exchange(
                ExchangeDeclaration {
                    name: name.into(),
                    kind: kind.into(),
                    durable: false,
                    auto_delete: false,
                    internal,
                    arguments,
                },
                false,
            )
            .unwrap();
    }

    fn queue(&self, name: &str, arguments: FieldTable) {
        self.vhost
            .declare_queue(
                QueueDeclaration {
                    name: name.into(),
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    arguments,
                },
                false,
                1,
            )
            .unwrap();
    }

    fn bind(&self, exchange: &str, queue: &str, key: &str) {
        let dest = Destination::Queue(queue.into());
        let args = FieldTable::default();
        self.vhost.bind(exchange, dest, key, args, 1).unwrap();
    }

    fn publish(&self, exchange: &str, key: &str, headers: FieldTable) -> PublishOutcome {
        let properties = BasicProperties {
            headers: Some(headers),
            ..Default::default()
        };
        let message = Message::new(exchange.into(), key.into(), properties, Bytes::from("m"))
            .published_at(self.clock.now_ms());
        let options = PublishOptions::new(PublishSource::Client, true);
        self.vhost.publish(Arc::new(message), options).unwrap()
    }

    fn ready(&self, queue: &str) -> u32 {
        self.vhost.queue(queue, 1).unwrap().counts().ready
    }
}

/// Ten queues of length one, each dead-lettering into a fanout that all of
/// them are bound to: every dead letter overflows a queue and makes another,
/// and the cycle rule alone only stops a copy once it has been everywhere
/// (10! paths). The budget ends it, counted.
#[test]
fn a_dead_letter_storm_is_bounded_by_the_budget() {
    let f = fixture();
    f.exchange("dlx", "fanout", false, FieldTable::default());
    let args = table(&[
        ("x-max-length", FieldValue::I32(1)),
        ("x-dead-letter-exchange", FieldValue::string("dlx")),
    ]);
    for i in 0..10 {
        f.queue(&format!("q{i}"), args.clone());
        f.bind("dlx", &format!("q{i}"), "");
    }
    for i in 0..10 {
        f.publish("", &format!("q{i}"), FieldTable::default());
    }
    let outcome = f.publish("dlx", "", FieldTable::default());
    assert_eq!(outcome.routed, 10);
    let dropped = f.metrics.dead_letters_dropped.get();
    assert!(dropped > 0, "the budget was spent and the rest dropped");
    for i in 0..10 {
        assert_eq!(f.ready(&format!("q{i}")), 1, "each queue still holds one");
    }
    // The next publish starts with a fresh budget and ends too.
    f.publish("dlx", "", FieldTable::default());
    assert!(f.metrics.dead_letters_dropped.get() > dropped);
}

#[test]
fn an_exchange_routes_what_no_binding_matched_to_its_alternate() {
    let f = fixture();
    f.exchange("unrouted", "fanout", false, FieldTable::default());
    let alternate = table(&[("alternate-exchange", FieldValue::string("unrouted"))]);
    f.exchange("orders", "direct", false, alternate);
    f.queue("orders.created", FieldTable::default());
    f.queue("lost", FieldTable::default());
    f.bind("orders", "orders.created", "created");
    f.bind("unrouted", "lost", "");
    let routed = f.publish("orders", "created", FieldTable::default());
    assert_eq!((routed.routed, routed.returned), (1, false));
    let other = f.publish("orders", "cancelled", FieldTable::default());
    assert_eq!((other.routed, other.returned), (1, false));
    assert_eq!((f.ready("orders.created"), f.ready("lost")), (1, 1));
    assert_eq!(f.metrics.unroutable.get(), 0);
}

#[test]
fn dead_letters_may_go_to_an_internal_exchange_publishers_may_not() {
    let f = fixture();
    f.exchange("dlx", "fanout", true, FieldTable::default());
    f.queue("dead", FieldTable::default());
    f.bind("dlx", "dead", "");
    let args = table(&[
        ("x-message-ttl", FieldValue::I32(10)),
        ("x-dead-letter-exchange", FieldValue::string("dlx")),
    ]);
    f.queue("work", args);
    let message = Arc::new(Message::new(
        "dlx".into(),
        String::new(),
        BasicProperties::default(),
        Bytes::from("m"),
    ));
    let options = PublishOptions::new(PublishSource::Client, false);
    let refused = f.vhost.publish(message, options).unwrap_err();
    assert_eq!(refused.reply_code(), 403);
    f.publish("", "work", FieldTable::default());
    f.clock.advance(11);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!((f.ready("work"), f.ready("dead")), (0, 1));
}

#[test]
fn a_delayed_message_is_released_once_and_not_delayed_again() {
    let f = fixture();
    let args = table(&[("x-delayed-type", FieldValue::string("direct"))]);
    f.exchange("retry", "x-delayed-message", false, args);
    f.queue("retries", FieldTable::default());
    f.bind("retry", "retries", "k");
    let delay = table(&[("x-delay", FieldValue::I32(100))]);
    let outcome = f.publish("retry", "k", delay);
    assert!(outcome.delayed && !outcome.returned, "held, not returned");
    assert_eq!(f.ready("retries"), 0);
    f.clock.advance(100);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!(
        f.ready("retries"),
        0,
        "not before the due millisecond passed"
    );
    f.clock.advance(1);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!(f.ready("retries"), 1, "released, still carrying x-delay");
    f.clock.advance(1000);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!(f.ready("retries"), 1, "released once");
}

#[test]
fn max_queues_refuses_new_queues_with_406_but_not_redeclares() {
    let f = fixture();
    f.queue("a", FieldTable::default());
    f.vhost.set_max_queues(Some(2));
    f.queue("b", FieldTable::default());
    f.queue("a", FieldTable::default());
    let declare = |name: &str| {
        let d = QueueDeclaration {
            name: name.into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::default(),
        };
        f.vhost.declare_queue(d, false, 1)
    };
    // Checked against RabbitMQ 3.10.8.
    assert_eq!(
        declare("c").unwrap_err(),
        BrokerError::PreconditionFailed(
            "cannot declare queue 'c': queue limit in vhost '/' (2) is reached".into()
        )
    );
    // Direct reply-to's addresses are not queues to the limit.
    let reply = f.vhost.declare_reply_queue(1).unwrap();
    assert_eq!(f.vhost.queue_count(), 2);
    f.vhost.delete_queue(&reply.name, false, false, 1).unwrap();
    f.vhost.delete_queue("b", false, false, 1).unwrap();
    assert!(declare("c").is_ok());
    f.vhost.set_max_queues(None);
    assert!(declare("d").is_ok());
    f.vhost.set_max_queues(Some(0));
    assert!(declare("e").is_err(), "zero allows none");
}

fn policy(kind: PolicyKind, name: &str, body: serde_json::Value) -> crate::policy::Policy {
    crate::policy::Policy::parse(kind, "/", name, body.as_object().unwrap()).unwrap()
}

#[test]
fn a_policy_applies_at_once_to_existing_queues_and_clearing_it_restores_arguments() {
    let f = fixture();
    f.queue("jobs", table(&[("x-max-length", FieldValue::I32(5))]));
    for _ in 0..6 {
        f.publish("", "jobs", FieldTable::default());
    }
    assert_eq!(f.ready("jobs"), 5);
    let created = f
        .vhost
        .set_policy(policy(
            PolicyKind::Policy,
            "short",
            serde_json::json!({
                "pattern": "^jobs$", "apply-to": "queues", "definition": {"max-length": 2}
            }),
        ))
        .unwrap();
    assert!(created);
    assert_eq!(f.ready("jobs"), 2, "drop-head at once");
    let q = f.vhost.queue("jobs", 1).unwrap();
    assert_eq!(q.policy().policy_name(), Some("short"));
    assert_eq!(q.args().max_length, Some(2));
    // An operator policy caps it further; the policy's larger limit loses.
    f.vhost
        .set_policy(policy(
            PolicyKind::Operator,
            "cap",
            serde_json::json!({
                "pattern": ".*", "definition": {"max-length": 1}
            }),
        ))
        .unwrap();
    assert_eq!(f.ready("jobs"), 1);
    assert!(f.vhost.delete_policy(PolicyKind::Operator, "cap").unwrap());
    assert!(f.vhost.delete_policy(PolicyKind::Policy, "short").unwrap());
    assert!(!f.vhost.delete_policy(PolicyKind::Policy, "short").unwrap());
    assert_eq!(q.args().max_length, Some(5), "back to its argument");
    assert!(q.policy().is_none());
    for _ in 0..6 {
        f.publish("", "jobs", FieldTable::default());
    }
    assert_eq!(f.ready("jobs"), 5);
}

#[test]
fn a_policys_dead_letter_exchange_takes_the_messages_it_drops() {
    let f = fixture();
    f.exchange("dlx", "fanout", false, FieldTable::default());
    f.queue("dead", FieldTable::default());
    f.bind("dlx", "dead", "");
    f.queue("work", FieldTable::default());
    for _ in 0..3 {
        f.publish("", "work", FieldTable::default());
    }
    f.vhost
        .set_policy(policy(
            PolicyKind::Policy,
            "dl",
            serde_json::json!({
                "pattern": "^work$",
                "definition": {"max-length": 1, "dead-letter-exchange": "dlx"}
            }),
        ))
        .unwrap();
    assert_eq!((f.ready("work"), f.ready("dead")), (1, 2));
    // A queue declared later gets it too (it matches).
    f.queue("work", FieldTable::default());
    f.publish("", "work", FieldTable::default());
    assert_eq!((f.ready("work"), f.ready("dead")), (1, 3));
}

#[test]
fn an_exchanges_alternate_exchange_may_come_from_a_policy_and_its_argument_wins() {
    let f = fixture();
    f.exchange("unrouted", "fanout", false, FieldTable::default());
    f.exchange("other", "fanout", false, FieldTable::default());
    f.queue("lost", FieldTable::default());
    f.queue("lost.other", FieldTable::default());
    f.bind("unrouted", "lost", "");
    f.bind("other", "lost.other", "");
    f.exchange("orders", "direct", false, FieldTable::default());
    let by_arg = table(&[("alternate-exchange", FieldValue::string("other"))]);
    f.exchange("orders.arg", "direct", false, by_arg);
    assert_eq!(f.publish("orders", "x", FieldTable::default()).routed, 0);
    f.vhost
        .set_policy(policy(
            PolicyKind::Policy,
            "ae",
            serde_json::json!({
                "pattern": "^orders", "apply-to": "exchanges",
                "definition": {"alternate-exchange": "unrouted"}
            }),
        ))
        .unwrap();
    assert_eq!(f.publish("orders", "x", FieldTable::default()).routed, 1);
    assert_eq!(
        f.publish("orders.arg", "x", FieldTable::default()).routed,
        1
    );
    assert_eq!((f.ready("lost"), f.ready("lost.other")), (1, 1));
    let policies: Vec<Option<String>> = f
        .vhost
        .exchanges()
        .iter()
        .filter(|e| e.name.starts_with("orders"))
        .map(|e| e.policy.policy_name().map(str::to_owned))
        .collect();
    assert_eq!(policies, [Some("ae".to_owned()), Some("ae".to_owned())]);
}

#[test]
fn a_node_that_stops_leading_a_quorum_queue_no_longer_lists_itself() {
    let f = fixture();
    let info = |leader: &str| QuorumInfo {
        members: vec!["n1".into(), "n2".into()],
        leader: Some(leader.into()),
        leader_term: 1,
    };
    f.vhost.set_quorum_info("q", Some(info("n1")));
    // Another node's step-down changes nothing here.
    f.vhost.forget_quorum_leader("q", "n2");
    assert_eq!(
        f.vhost.quorum_info("q").and_then(|i| i.leader).as_deref(),
        Some("n1")
    );
    f.vhost.forget_quorum_leader("q", "n1");
    let now = f.vhost.quorum_info("q").expect("still a quorum queue");
    assert_eq!(now.leader, None);
    assert_eq!(now.members, ["n1", "n2"]);
}

/// A node whose queue another node owns now (a quorum queue's leader
/// moved) must not answer a forwarded publish as if nothing matched: that
/// is confirmed to the publisher as unroutable, and the message is lost.
#[test]
fn a_forwarded_publish_to_a_queue_owned_elsewhere_now_is_failed_not_gone() {
    use crate::remote::RemoteResult;
    let f = fixture();
    f.queue("here", FieldTable::default());
    f.queue("moved", FieldTable::default());
    f.vhost.set_remote_owner("moved", Some("n2"));
    let msg = || {
        Arc::new(Message::new(
            String::new(),
            "here".into(),
            BasicProperties::default(),
            Bytes::from_static(b"m"),
        ))
    };
    let publish = |queues: &[&str]| {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        f.vhost
            .publish_forwarded(msg(), &queues, None)
            .unwrap()
            .forwarded_result()
    };
    assert_eq!(publish(&["moved"]), RemoteResult::Failed);
    assert_eq!(f.ready("moved"), 0);
    assert_eq!(publish(&["gone"]), RemoteResult::Gone);
    assert_eq!(publish(&["here"]), RemoteResult::Accepted);
    assert_eq!(f.ready("here"), 1);
}

impl Fixture {
    /// Declares quorum queue `name` dead-lettering at least once to `dlx`
    /// (`reject-publish`, as that strategy takes), with `extra` arguments.
    fn at_least_once(&self, name: &str, dlx: &str, extra: &[(&str, FieldValue)]) -> Arc<Queue> {
        let mut args = table(&[
            ("x-queue-type", FieldValue::string("quorum")),
            ("x-overflow", FieldValue::string("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::string(dlx)),
            (
                "x-dead-letter-strategy",
                FieldValue::string("at-least-once"),
            ),
        ]);
        for (k, v) in extra {
            args.insert(*k, v.clone());
        }
        let declaration = QueueDeclaration {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: args,
        };
        self.vhost.declare_queue(declaration, false, 1).unwrap();
        self.vhost.queue(name, 1).unwrap()
    }
}

/// A payment's dead letter that reaches no queue (its dead-letter queue
/// not declared yet) is kept, counts against the queue's limit, and is
/// routed again until a queue takes it; at most once it was dropped.
#[test]
fn an_at_least_once_dead_letter_is_kept_until_a_queue_takes_it() {
    let f = fixture();
    f.exchange("dlx", "fanout", false, FieldTable::default());
    let pay = f.at_least_once(
        "pay",
        "dlx",
        &[
            ("x-message-ttl", FieldValue::I32(10)),
            ("x-max-length", FieldValue::I32(2)),
        ],
    );
    f.publish("", "pay", FieldTable::default());
    f.clock.advance(11);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!((f.ready("pay"), pay.dying().0), (0, 1), "kept, not dropped");
    // It counts: one more fits, the next is refused.
    assert_eq!(f.publish("", "pay", FieldTable::default()).routed, 1);
    assert!(f.publish("", "pay", FieldTable::default()).rejected);

    f.queue("dead", FieldTable::default());
    f.bind("dlx", "dead", "");
    // The second message expires now and reaches the queue at once; the
    // first waits for its retry.
    f.clock.advance(500);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!((f.ready("dead"), pay.dying().0), (1, 1));
    f.clock.advance(600);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!((f.ready("dead"), pay.dying().0), (2, 0));
    assert_eq!(f.metrics.dead_letters_dropped.get(), 0);
}

/// Under drop-head the strategy does not apply (RabbitMQ falls back to
/// at most once); a policy can turn it on, and clearing the policy lets
/// the kept messages go.
#[test]
fn at_least_once_takes_reject_publish_and_may_come_from_a_policy() {
    let f = fixture();
    f.exchange("dlx", "fanout", false, FieldTable::default());
    let head = f.at_least_once(
        "head",
        "dlx",
        &[
            ("x-overflow", FieldValue::string("drop-head")),
            ("x-message-ttl", FieldValue::I32(10)),
        ],
    );
    assert!(!head.args().at_least_once());
    f.publish("", "head", FieldTable::default());
    f.clock.advance(11);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!((f.ready("head"), head.dying().0), (0, 0), "dropped");

    let declaration = QueueDeclaration {
        name: "pol".into(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: table(&[
            ("x-queue-type", FieldValue::string("quorum")),
            ("x-message-ttl", FieldValue::I32(10)),
        ]),
    };
    f.vhost.declare_queue(declaration, false, 1).unwrap();
    let pol = f.vhost.queue("pol", 1).unwrap();
    f.vhost
        .set_policy(policy(
            PolicyKind::Policy,
            "alo",
            serde_json::json!({
                "pattern": "^pol$",
                "definition": {"dead-letter-exchange": "dlx", "overflow": "reject-publish",
                               "dead-letter-strategy": "at-least-once"}
            }),
        ))
        .unwrap();
    assert!(pol.args().at_least_once());
    f.publish("", "pol", FieldTable::default());
    f.clock.advance(11);
    f.vhost.tick(f.clock.now_ms());
    assert_eq!(pol.dying().0, 1);
    assert!(f.vhost.delete_policy(PolicyKind::Policy, "alo").unwrap());
    assert_eq!(pol.dying().0, 0, "at most once again: let go");
}

#[test]
fn a_direct_reply_to_address_names_its_node_in_a_cluster() {
    let name = reply_to_name(Some("rabbit@host-1.example"));
    assert!(name.starts_with("amq.rabbitmq.reply-to."), "{name}");
    assert!(name.len() <= 255, "{name}");
    assert_eq!(
        reply_to_node(&name).as_deref(),
        Some("rabbit@host-1.example")
    );
    // A single node's (and an older version's) address names none.
    assert_eq!(reply_to_node(&reply_to_name(None)), None);
    assert_eq!(reply_to_node("amq.rabbitmq.reply-to"), None);
    assert_eq!(reply_to_node("orders"), None);
    let long = "n".repeat(200);
    assert!(reply_to_name(Some(&long)).len() <= 255);
    // Server-named exclusive queues too.
    let name = exclusive_name(Some("n2"));
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert_eq!(node_named_by(&name).as_deref(), Some("n2"));
    assert_eq!(node_named_by(&exclusive_name(None)), None);
    assert_eq!(node_named_by(&generated_name("amq.gen-")), None);
    assert!(exclusive_name(Some(&long)).len() <= 255);
}

/// A metadata log that only records what is proposed to it later.
#[derive(Debug, Default)]
struct Recorder {
    later: parking_lot::Mutex<Vec<crate::cluster::MetaCommand>>,
    /// The other nodes that run, as this node sees them.
    running: parking_lot::Mutex<Vec<String>>,
}

impl crate::cluster::MetadataLog for Recorder {
    fn node_name(&self) -> &str {
        "n1"
    }

    fn nodes(&self) -> Vec<String> {
        let mut nodes = self.running.lock().clone();
        nodes.push("n1".into());
        nodes
    }

    fn propose(
        &self,
        command: crate::cluster::MetaCommand,
    ) -> Result<crate::cluster::MetaOutcome, crate::cluster::MetaError> {
        Err(crate::cluster::MetaError::Unavailable(command.describe()))
    }

    fn propose_later(&self, command: crate::cluster::MetaCommand) {
        self.later.lock().push(command);
    }
}

impl Fixture {
    fn exclusive(&self, name: &str, conn: ConnectionId) {
        let declaration = QueueDeclaration {
            name: name.into(),
            durable: false,
            exclusive: true,
            auto_delete: false,
            arguments: FieldTable::default(),
        };
        self.vhost.declare_queue(declaration, false, conn).unwrap();
        self.vhost.announce(name);
    }
}

/// The record of which node holds a client-named exclusive queue is the
/// same on every node whatever order the releases and declares of a name
/// come in: a release by a node that no longer holds it changes nothing,
/// a later declare elsewhere wins, and a node that still has the queue
/// when its own earlier release is applied records it again.
#[test]
fn exclusive_queue_names_follow_the_metadatas_order() {
    use crate::cluster::MetaCommand;
    let f = fixture();
    let log = Arc::new(Recorder::default());
    f.vhost
        .set_metadata_log(Arc::clone(&log) as Arc<dyn crate::cluster::MetadataLog>);

    // Another node's: routed there by name; a stale release is ignored.
    f.vhost.hold_exclusive("replies", "n2", None).unwrap();
    assert_eq!(
        f.vhost.exclusive_elsewhere("replies").as_deref(),
        Some("n2")
    );
    f.vhost.release_exclusive("replies", "n3");
    assert_eq!(f.vhost.named_elsewhere("replies").as_deref(), Some("n2"));
    f.vhost.release_exclusive("replies", "n2");
    assert_eq!(f.vhost.exclusive_elsewhere("replies"), None);

    // A shared queue's name is refused alike on every node.
    f.queue("work", FieldTable::default());
    let refused = f.vhost.hold_exclusive("work", "n2", None).unwrap_err();
    assert!(
        matches!(refused, BrokerError::ResourceLocked(_)),
        "{refused:?}"
    );

    // This node's queue loses a race to n2's declare, logged later.
    f.exclusive("mine", 7);
    f.vhost.hold_exclusive("mine", "n1", None).unwrap();
    assert!(f.vhost.holds_exclusive("mine"));
    f.vhost.hold_exclusive("mine", "n2", None).unwrap();
    assert!(!f.vhost.has_queue("mine"));
    assert_eq!(f.vhost.exclusive_elsewhere("mine").as_deref(), Some("n2"));
    assert!(log.later.lock().is_empty(), "{:?}", log.later.lock());

    // Declared again here, then this node's release of the earlier queue
    // is applied: the name and the binding are recorded again.
    f.exclusive("again", 1);
    f.bind("amq.fanout", "again", "");
    f.vhost.hold_exclusive("again", "n1", None).unwrap();
    f.vhost.release_exclusive("again", "n1");
    let later = log.later.lock().clone();
    assert_eq!(later.len(), 2, "{later:?}");
    assert_eq!(
        later[0],
        MetaCommand::ExclusiveQueue {
            vhost: "/".into(),
            name: "again".into(),
            node: "n1".into(),
            held: true,
            // Refused if another node took the name meanwhile.
            claim: Some(crate::cluster::ExclusiveClaim { from: None }),
        }
    );
    assert!(
        matches!(&later[1], MetaCommand::Binding { source, destination, node: Some(n), .. }
            if source == "amq.fanout" && destination == "again" && n == "n1"),
        "{later:?}"
    );

    // Before a snapshot's record is given back, every recorded name goes
    // (releases may have been compacted away), this node's too: the
    // record gives back what every node holds.
    f.vhost.hold_exclusive("again", "n1", None).unwrap();
    f.vhost.forget_recorded_exclusive();
    assert_eq!(f.vhost.exclusive_elsewhere("mine"), None);
    assert!(!f.vhost.holds_exclusive("again"));
    assert!(f.vhost.has_queue("again"));
}

/// A declare's claim on an exclusive queue name is applied only if no
/// other node holds the name, or only the node the declaring node saw
/// down: of two declares of a free name at the same moment, the first in
/// the log wins on every node, and the other is refused (405), as in
/// RabbitMQ. Before, the later one took the name, and the first client's
/// queue was deleted under it.
#[test]
fn the_first_claim_on_an_exclusive_queue_name_wins() {
    let f = fixture();
    let log = Arc::new(Recorder::default());
    f.vhost
        .set_metadata_log(Arc::clone(&log) as Arc<dyn crate::cluster::MetadataLog>);
    let free = crate::cluster::ExclusiveClaim { from: None };
    let from_n2 = crate::cluster::ExclusiveClaim {
        from: Some("n2".into()),
    };

    // This node's queue, declared first: a later claim elsewhere is
    // refused, and the queue stays.
    f.exclusive("mine", 7);
    f.vhost.hold_exclusive("mine", "n1", Some(&free)).unwrap();
    let refused = f
        .vhost
        .hold_exclusive("mine", "n2", Some(&free))
        .unwrap_err();
    assert!(
        matches!(refused, BrokerError::ResourceLocked(_)),
        "{refused:?}"
    );
    assert!(f.vhost.has_queue("mine"));
    assert!(f.vhost.holds_exclusive("mine"));

    // Another node's: its own claim again is applied; a third node's is
    // refused unless it saw the holder down.
    f.vhost
        .hold_exclusive("replies", "n2", Some(&free))
        .unwrap();
    f.vhost
        .hold_exclusive("replies", "n2", Some(&free))
        .unwrap();
    let refused = f
        .vhost
        .hold_exclusive("replies", "n3", Some(&free))
        .unwrap_err();
    assert!(
        matches!(refused, BrokerError::ResourceLocked(_)),
        "{refused:?}"
    );
    assert_eq!(
        f.vhost.exclusive_elsewhere("replies").as_deref(),
        Some("n2")
    );
    f.vhost
        .hold_exclusive("replies", "n3", Some(&from_n2))
        .unwrap();
    assert_eq!(
        f.vhost.exclusive_elsewhere("replies").as_deref(),
        Some("n3")
    );
    // n3 took it first: a claim that saw n2 down comes too late.
    let refused = f
        .vhost
        .hold_exclusive("replies", "n1", Some(&from_n2))
        .unwrap_err();
    assert!(
        matches!(refused, BrokerError::ResourceLocked(_)),
        "{refused:?}"
    );
}

/// A client-named exclusive queue of another node answers 405 while that
/// node runs; once it is down, its queue is gone with it, as in RabbitMQ:
/// a consume or get answers 404, as for any queue that is no more. Before,
/// the 405 stayed until the node restarted, while a declare of the name
/// was already let through.
#[test]
fn a_down_nodes_exclusive_queue_is_not_found() {
    let f = fixture();
    let log = Arc::new(Recorder::default());
    f.vhost
        .set_metadata_log(Arc::clone(&log) as Arc<dyn crate::cluster::MetadataLog>);
    f.vhost.hold_exclusive("replies", "n2", None).unwrap();
    log.running.lock().push("n2".into());
    let locked = f.vhost.queue("replies", 1).unwrap_err();
    assert!(
        matches!(locked, BrokerError::ResourceLocked(_)),
        "{locked:?}"
    );
    assert_eq!(
        f.vhost.exclusive_of_running("replies").as_deref(),
        Some("n2")
    );

    log.running.lock().clear();
    let gone = f.vhost.queue("replies", 1).unwrap_err();
    assert!(matches!(gone, BrokerError::NotFound(_)), "{gone:?}");
    assert_eq!(f.vhost.exclusive_of_running("replies"), None);
    // Still recorded: publishes by name go there until it is released.
    assert_eq!(
        f.vhost.exclusive_elsewhere("replies").as_deref(),
        Some("n2")
    );
}
