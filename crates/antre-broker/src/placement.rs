//! Where a cluster places a new queue: the node that holds a classic
//! queue, or the first leader of a quorum queue (its members follow it by
//! name, see the cluster's state machine). The declaring node decides and
//! names that node in its proposal, so every node applies the same choice.
//!
//! The locator comes from the policy's `queue-leader-locator` or, failing
//! that, `x-queue-leader-locator` for quorum queues (RabbitMQ lets the
//! policy win for this key), and from `x-queue-master-locator` or,
//! failing that, the policy's `queue-master-locator` for classic queues
//! (the argument wins, as RabbitMQ 3.10 resolves it). Neither: the
//! declaring node, as RabbitMQ's `client-local` default.
//!
//! RabbitMQ counts queues for `balanced` only below 1000 queues and picks
//! at random above, because counting means asking every queue; here every
//! node has each queue's leader or owner in memory already, so counting
//! is cheap at any number of queues and the choice stays balanced.

use std::collections::HashMap;

use antre_amqp::{FieldTable, FieldValue};
use rand::seq::SliceRandom;

use crate::broker::Broker;
use crate::queue::{Locator, QueueKind};
use crate::vhost::Vhost;

/// The node `locator` picks among `nodes` for a new queue declared on
/// `me`, given how many queues (leaders for quorum queues, classic queues
/// for classic ones) each node has now. A tie goes to `me`, then to the
/// first by name, so a burst of declares on one node spreads evenly.
pub fn choose_node(
    locator: Locator,
    me: &str,
    nodes: &[String],
    load: &HashMap<String, usize>,
) -> String {
    if nodes.is_empty() {
        return me.to_owned();
    }
    match locator {
        Locator::ClientLocal => me.to_owned(),
        Locator::Random => nodes
            .choose(&mut rand::thread_rng())
            .cloned()
            .unwrap_or_else(|| me.to_owned()),
        Locator::Balanced | Locator::MinMasters => nodes
            .iter()
            .min_by_key(|n| {
                (
                    load.get(n.as_str()).copied().unwrap_or(0),
                    n.as_str() != me,
                    n.as_str(),
                )
            })
            .cloned()
            .unwrap_or_else(|| me.to_owned()),
    }
}

/// The running `nodes` a new queue may be placed on: those not drained
/// (maintenance mode), or all of them if every one is, as RabbitMQ's
/// potential leaders: a queue placed on a drained node would wait for the
/// other members to start it after their hold, three election timeouts
/// (docs/clustering.md, "Rolling restarts").
pub fn potential_leaders(nodes: Vec<String>, drained: impl Fn(&str) -> bool) -> Vec<String> {
    let serving: Vec<String> = nodes.iter().filter(|n| !drained(n)).cloned().collect();
    if serving.is_empty() {
        nodes
    } else {
        serving
    }
}

impl Broker {
    /// The node a new queue `name` of `vhost`, declared on this node with
    /// `arguments`, is placed on (see the module docs). `None` outside a
    /// cluster.
    pub fn place_new_queue(
        &self,
        vhost: &Vhost,
        name: &str,
        arguments: &FieldTable,
    ) -> Option<String> {
        let log = self.metadata_log()?;
        let me = log.node_name().to_owned();
        let kind = match arguments.get("x-queue-type").and_then(FieldValue::as_str) {
            Some("quorum") => QueueKind::Quorum,
            Some("stream") => QueueKind::Stream,
            _ => QueueKind::Classic,
        };
        let from_arg = || {
            arguments
                .get(Locator::argument(kind))
                .and_then(FieldValue::as_str)
                .and_then(|v| Locator::parse(kind, v))
        };
        let from_policy = || {
            vhost
                .queue_policy(name, kind)
                .definition()
                .get(Locator::policy_key(kind))
                .and_then(serde_json::Value::as_str)
                .and_then(|v| Locator::parse(kind, v))
        };
        let locator = match kind {
            QueueKind::Classic => from_arg().or_else(from_policy),
            QueueKind::Quorum | QueueKind::Stream => from_policy().or_else(from_arg),
        }
        .unwrap_or_default();
        if locator == Locator::ClientLocal {
            return Some(me);
        }
        let nodes = potential_leaders(log.nodes(), |n| self.node_drained(n));
        let load = match kind {
            QueueKind::Classic => self.classic_queues_per_node(&me),
            QueueKind::Quorum | QueueKind::Stream => self.quorum_leaders_per_node(),
        };
        Some(choose_node(locator, &me, &nodes, &load))
    }

    /// How many quorum queues each node leads, as this node knows it.
    fn quorum_leaders_per_node(&self) -> HashMap<String, usize> {
        let mut load = HashMap::new();
        for v in self.vhosts() {
            for leader in v.quorum_leaders().into_iter().flatten() {
                *load.entry(leader).or_default() += 1;
            }
        }
        load
    }

    /// How many classic queues each node holds (`me` is this node).
    fn classic_queues_per_node(&self, me: &str) -> HashMap<String, usize> {
        let mut load: HashMap<String, usize> = HashMap::new();
        for v in self.vhosts() {
            let quorum = |name: &str| v.quorum_info(name).is_some();
            let local = v
                .queues()
                .iter()
                .filter(|q| q.kind() == QueueKind::Classic && !quorum(&q.name))
                .count();
            *load.entry(me.to_owned()).or_default() += local;
            for (queue, node) in v.remote_owners() {
                if !quorum(&queue) {
                    *load.entry(node).or_default() += 1;
                }
            }
        }
        load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["n1", "n2", "n3"].map(str::to_owned).to_vec()
    }

    #[test]
    fn client_local_is_the_declaring_node() {
        let load = HashMap::from([("n2".to_owned(), 9)]);
        assert_eq!(
            choose_node(Locator::ClientLocal, "n2", &nodes(), &load),
            "n2"
        );
    }

    #[test]
    fn balanced_picks_the_least_loaded_node_and_the_declaring_one_on_a_tie() {
        let mut load = HashMap::new();
        let mut picked = Vec::new();
        for _ in 0..6 {
            let n = choose_node(Locator::Balanced, "n2", &nodes(), &load);
            *load.entry(n.clone()).or_default() += 1;
            picked.push(n);
        }
        assert_eq!(picked, ["n2", "n1", "n3", "n2", "n1", "n3"]);
        let load = HashMap::from([
            ("n1".to_owned(), 3),
            ("n2".to_owned(), 1),
            ("n3".to_owned(), 0),
        ]);
        assert_eq!(
            choose_node(Locator::MinMasters, "n1", &nodes(), &load),
            "n3"
        );
    }

    #[test]
    fn a_drained_node_is_no_potential_leader_unless_all_are() {
        let drained = |n: &str| n == "n2";
        let serving = potential_leaders(nodes(), drained);
        assert_eq!(serving, ["n1", "n3"]);
        let mut load = HashMap::new();
        for _ in 0..6 {
            let n = choose_node(Locator::Balanced, "n2", &serving, &load);
            assert_ne!(n, "n2", "the declaring node is drained");
            *load.entry(n).or_default() += 1;
        }
        assert_eq!(potential_leaders(nodes(), |_| true), nodes());
        assert_eq!(potential_leaders(Vec::new(), drained), Vec::<String>::new());
    }

    #[test]
    fn random_stays_among_the_nodes() {
        for _ in 0..20 {
            let n = choose_node(Locator::Random, "n1", &nodes(), &HashMap::new());
            assert!(nodes().contains(&n));
        }
        assert_eq!(
            choose_node(Locator::Random, "n1", &[], &HashMap::new()),
            "n1"
        );
    }
}
