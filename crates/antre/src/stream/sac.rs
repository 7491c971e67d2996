//! Single active consumer over the stream protocol, as RabbitMQ's
//! `rabbit_stream_sac_coordinator` runs it: subscriptions that share a
//! name on a stream form a group, and only one of them (the active one)
//! gets messages. A plain stream's group keeps its first member active
//! until it leaves; a super stream partition's group makes member
//! `partition index mod size` active, so the partitions spread over the
//! members, and a newcomer may take the place of the active one, which is
//! first told to step down (so it can store its offset) and replaced when
//! it answers.
//!
//! Groups span connections, so they live here, shared by every stream
//! listener; each connection hears about its own members by events.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::connection::Event;

/// A group: vhost, stream, consumer name.
pub type GroupKey = (String, String, String);

#[derive(Debug)]
struct Member {
    connection: u64,
    subscription: u8,
    events: mpsc::UnboundedSender<Event>,
    active: bool,
}

impl Member {
    fn tell(&self, active: bool) {
        let _ = self
            .events
            .send(Event::ConsumerUpdate(self.subscription, active));
    }

    fn is(&self, connection: u64, subscription: u8) -> bool {
        self.connection == connection && self.subscription == subscription
    }
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Member>,
    /// The stream's index among its super stream's partitions; None for a
    /// plain stream.
    partition: Option<usize>,
}

impl Group {
    fn active(&self) -> Option<usize> {
        self.members.iter().position(|m| m.active)
    }

    /// The member that should be active.
    fn chosen(&self) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        Some(match self.partition {
            None => 0,
            Some(p) => p % self.members.len(),
        })
    }

    /// With no active member, activates the chosen one.
    fn activate_chosen(&mut self) {
        if self.active().is_some() {
            return;
        }
        if let Some(i) = self.chosen() {
            self.members[i].active = true;
            self.members[i].tell(true);
        }
    }
}

/// Every single-active-consumer group of a broker's stream listeners.
#[derive(Debug, Default)]
pub struct Groups {
    groups: Mutex<HashMap<GroupKey, Group>>,
}

impl Groups {
    /// Adds a subscription to its group; it is told by an event when it
    /// becomes active (at once if the group had no active member).
    pub(super) fn register(
        &self,
        key: GroupKey,
        partition: Option<usize>,
        connection: u64,
        subscription: u8,
        events: mpsc::UnboundedSender<Event>,
    ) {
        let mut groups = self.groups.lock();
        let group = groups.entry(key).or_default();
        group.partition = partition;
        let was_empty = group.members.is_empty();
        group.members.push(Member {
            connection,
            subscription,
            events,
            active: false,
        });
        if was_empty {
            group.activate_chosen();
            return;
        }
        // A super stream partition's group rebalances: if the newcomer
        // changes which member is chosen, the active one steps down first.
        if let (Some(active), Some(chosen)) = (group.active(), group.chosen()) {
            if group.partition.is_some() && active != chosen {
                group.members[active].active = false;
                group.members[active].tell(false);
            }
        }
    }

    /// A member told to step down answered: the chosen one takes over.
    pub(super) fn stepped_down(&self, key: &GroupKey) {
        if let Some(group) = self.groups.lock().get_mut(key) {
            group.activate_chosen();
        }
    }

    /// Removes a subscription; if it was active, another takes over.
    pub(super) fn remove(&self, key: &GroupKey, connection: u64, subscription: u8) {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(key) else {
            return;
        };
        group.members.retain(|m| !m.is(connection, subscription));
        if group.members.is_empty() {
            groups.remove(key);
            return;
        }
        group.activate_chosen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GroupKey {
        ("/".into(), "s".into(), "app".into())
    }

    fn member(
        groups: &Groups,
        partition: Option<usize>,
        connection: u64,
    ) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        groups.register(key(), partition, connection, 1, tx);
        rx
    }

    fn told(rx: &mut mpsc::UnboundedReceiver<Event>) -> Option<bool> {
        match rx.try_recv() {
            Ok(Event::ConsumerUpdate(_, active)) => Some(active),
            _ => None,
        }
    }

    #[test]
    fn a_plain_streams_first_member_stays_active_until_it_leaves() {
        let g = Groups::default();
        let mut a = member(&g, None, 1);
        let mut b = member(&g, None, 2);
        let mut c = member(&g, None, 3);
        assert_eq!(
            (told(&mut a), told(&mut b), told(&mut c)),
            (Some(true), None, None)
        );
        g.remove(&key(), 1, 1);
        assert_eq!((told(&mut b), told(&mut c)), (Some(true), None));
        g.remove(&key(), 3, 1);
        assert_eq!(told(&mut b), None, "b stays active");
        g.remove(&key(), 2, 1);
        assert!(g.groups.lock().is_empty());
    }

    #[test]
    fn a_partition_rebalances_after_the_active_one_steps_down() {
        let g = Groups::default();
        // Partition 1 of a super stream: with two members, the second.
        let mut a = member(&g, Some(1), 1);
        assert_eq!(told(&mut a), Some(true));
        let mut b = member(&g, Some(1), 2);
        assert_eq!((told(&mut a), told(&mut b)), (Some(false), None));
        g.stepped_down(&key());
        assert_eq!((told(&mut a), told(&mut b)), (None, Some(true)));
        // The active one leaves: the remaining one takes over.
        g.remove(&key(), 2, 1);
        assert_eq!(told(&mut a), Some(true));
    }
}
