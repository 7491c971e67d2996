//! Single active consumer over the stream protocol: this node's members of
//! the groups (subscriptions that share a consumer name on a stream), and
//! what the groups' coordinator decides about them
//! ([`antre_broker::stream::sac`] decides who is active and why).
//!
//! A stream of this node alone is coordinated here, in place, as members
//! come and go. A replicated stream's groups span the cluster: a task per
//! stream reports this node's members to the coordinator on the stream's
//! leader whenever they change and every
//! [`REPORT_EVERY`](antre_broker::stream::sac::REPORT_EVERY), and applies
//! the answer; while its reports go unanswered for
//! [`NODE_LEASE`](antre_broker::stream::sac::NODE_LEASE) its active
//! members step down, so that none stays active beside one the
//! coordinator activated elsewhere.
//!
//! Groups span connections, so they live here, shared by every stream
//! listener; each connection hears about its own members by events.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use antre_broker::replicated::QueueReplica;
use antre_broker::stream::sac::{Coordinator, Report, ReportedMember, NODE_LEASE, REPORT_EVERY};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::timeout;

use super::connection::Event;

/// A group: vhost, stream, consumer name.
pub type GroupKey = (String, String, String);

/// A stream: vhost, name.
type StreamKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Inactive,
    Active,
    /// Told to step down; active until its client answers.
    SteppingDown,
}

#[derive(Debug)]
struct Member {
    group: String,
    partition: Option<usize>,
    connection: u64,
    subscription: u8,
    events: mpsc::UnboundedSender<Event>,
    state: State,
}

impl Member {
    fn is(&self, group: &str, connection: u64, subscription: u8) -> bool {
        self.group == group && self.connection == connection && self.subscription == subscription
    }

    fn tell(&mut self, active: bool) {
        self.state = if active {
            State::Active
        } else {
            State::SteppingDown
        };
        let _ = self
            .events
            .send(Event::ConsumerUpdate(self.subscription, active));
    }
}

/// Who decides for a stream's groups.
enum Authority {
    /// This node: the coordinator, called in place.
    Local(Coordinator),
    /// The replicated stream's leader, which the reporting task asks.
    Replicated(Arc<Notify>),
}

/// This node's members of one stream's groups.
struct StreamGroups {
    members: Vec<Member>,
    authority: Authority,
}

impl StreamGroups {
    fn report(&self) -> Report {
        Report {
            node: String::new(),
            members: self
                .members
                .iter()
                .map(|m| ReportedMember {
                    group: m.group.clone(),
                    partition: m.partition,
                    connection: m.connection,
                    subscription: m.subscription,
                    active: m.state != State::Inactive,
                })
                .collect(),
        }
    }

    /// Applies the coordinator's answer to `report` to the members still
    /// here.
    fn apply(&mut self, report: &Report, answer: &[bool]) {
        for (r, &want) in report.members.iter().zip(answer) {
            let Some(m) = self
                .members
                .iter_mut()
                .find(|m| m.is(&r.group, r.connection, r.subscription))
            else {
                continue;
            };
            match (want, m.state) {
                (true, State::Inactive) | (false, State::Active) => m.tell(want),
                _ => {}
            }
        }
    }

    /// Something changed: the coordinator decides again.
    fn changed(&mut self) {
        if let Authority::Replicated(wake) = &self.authority {
            wake.notify_one();
            return;
        }
        let report = self.report();
        if let Authority::Local(c) = &mut self.authority {
            let answer = c.report(&report, Instant::now());
            self.apply(&report, &answer);
        }
    }
}

/// Every single-active-consumer group of a broker's stream listeners.
#[derive(Default)]
pub struct Groups {
    streams: Mutex<HashMap<StreamKey, StreamGroups>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("streams", &self.streams.lock().len())
            .finish()
    }
}

impl Groups {
    /// Adds a subscription to its group; it is told by an event when it
    /// becomes active. `replica` is the stream's on a cluster: the
    /// stream's leader decides then.
    pub(super) fn register(
        self: &Arc<Self>,
        key: GroupKey,
        partition: Option<usize>,
        connection: u64,
        subscription: u8,
        events: mpsc::UnboundedSender<Event>,
        replica: Option<Arc<dyn QueueReplica>>,
    ) {
        let (vhost, stream, group) = key;
        let stream_key = (vhost, stream);
        let mut streams = self.streams.lock();
        let st = streams.entry(stream_key.clone()).or_insert_with(|| {
            let authority = match replica {
                Some(replica) => {
                    let wake = Arc::new(Notify::new());
                    tokio::spawn(report_loop(
                        Arc::downgrade(self),
                        stream_key,
                        replica,
                        Arc::clone(&wake),
                    ));
                    Authority::Replicated(wake)
                }
                None => Authority::Local(Coordinator::new(0, Instant::now(), true)),
            };
            StreamGroups {
                members: Vec::new(),
                authority,
            }
        });
        st.members.push(Member {
            group,
            partition,
            connection,
            subscription,
            events,
            state: State::Inactive,
        });
        st.changed();
    }

    /// A member told to step down answered: the chosen one takes over.
    pub(super) fn stepped_down(&self, key: &GroupKey, connection: u64, subscription: u8) {
        self.update(key, |st| {
            if let Some(m) = st
                .members
                .iter_mut()
                .find(|m| m.is(&key.2, connection, subscription))
            {
                m.state = State::Inactive;
            }
        });
    }

    /// Removes a subscription; if it was active, another takes over.
    pub(super) fn remove(&self, key: &GroupKey, connection: u64, subscription: u8) {
        let mut streams = self.streams.lock();
        let stream_key = (key.0.clone(), key.1.clone());
        let Some(st) = streams.get_mut(&stream_key) else {
            return;
        };
        st.members
            .retain(|m| !m.is(&key.2, connection, subscription));
        if st.members.is_empty() && matches!(st.authority, Authority::Local(_)) {
            streams.remove(&stream_key);
            return;
        }
        // A replicated stream's task reports the departure, then ends.
        st.changed();
    }

    fn update(&self, key: &GroupKey, f: impl FnOnce(&mut StreamGroups)) {
        let mut streams = self.streams.lock();
        if let Some(st) = streams.get_mut(&(key.0.clone(), key.1.clone())) {
            f(st);
            st.changed();
        }
    }
}

/// Reports this node's members of a replicated stream's groups to the
/// stream's leader until none are left (the last report says so).
async fn report_loop(
    groups: Weak<Groups>,
    key: StreamKey,
    replica: Arc<dyn QueueReplica>,
    wake: Arc<Notify>,
) {
    // The members' lease: when the last answered report was sent, plus
    // NODE_LEASE. It ends on time, however long a report waits.
    let mut lease: Option<Instant> = None;
    loop {
        let report = {
            let Some(g) = groups.upgrade() else { return };
            let streams = g.streams.lock();
            let Some(st) = streams.get(&key) else { return };
            st.report()
        };
        let sent = Instant::now();
        let (tx, rx) = oneshot::channel();
        replica.report_consumers(
            report.clone(),
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        let answer = match keeping(&mut lease, &groups, &key, timeout(NODE_LEASE, rx)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the cluster dropped the report".into()),
            Err(_) => Err("no answer in time".into()),
        };
        {
            let Some(g) = groups.upgrade() else { return };
            let mut streams = g.streams.lock();
            let Some(st) = streams.get_mut(&key) else {
                return;
            };
            let told = match answer {
                // An answer that comes after its lease would have ended
                // is too old to act on.
                Ok(want) if sent.elapsed() < NODE_LEASE => {
                    lease = Some(sent + NODE_LEASE);
                    st.apply(&report, &want);
                    true
                }
                Ok(_) => {
                    tracing::debug!(stream = key.1, "a late answer about consumers");
                    false
                }
                Err(e) => {
                    tracing::debug!(stream = key.1, "reporting consumers: {e}");
                    false
                }
            };
            // None left: done once the coordinator heard so, or could not
            // be reached (it drops this node's members when their lease
            // ends there).
            if st.members.is_empty() && (report.members.is_empty() || !told) {
                streams.remove(&key);
                return;
            }
        }
        let next = timeout(REPORT_EVERY, wake.notified());
        let _ = keeping(&mut lease, &groups, &key, next).await;
    }
}

/// Waits for `fut`, making the members step down on time if their lease
/// ends meanwhile.
async fn keeping<T>(
    lease: &mut Option<Instant>,
    groups: &Weak<Groups>,
    key: &StreamKey,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            () = until(*lease) => *lease = lapse(groups, key),
        }
    }
}

/// Sleeps until `at`; forever if None.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The lease of a stream's members ended (the stream's leader did not
/// answer): the active ones step down. Returns the lease there is now:
/// none.
fn lapse(groups: &Weak<Groups>, key: &StreamKey) -> Option<Instant> {
    let g = groups.upgrade()?;
    let mut streams = g.streams.lock();
    let st = streams.get_mut(key)?;
    for m in &mut st.members {
        if m.state == State::Active {
            tracing::info!(
                stream = key.1,
                consumer = m.group,
                "single active consumer steps down: the stream's leader cannot be reached"
            );
            m.tell(false);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GroupKey {
        ("/".into(), "s".into(), "app".into())
    }

    fn member(
        groups: &Arc<Groups>,
        partition: Option<usize>,
        connection: u64,
    ) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        groups.register(key(), partition, connection, 1, tx, None);
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
        let g = Arc::new(Groups::default());
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
        assert!(g.streams.lock().is_empty());
    }

    #[test]
    fn a_partition_rebalances_after_the_active_one_steps_down() {
        let g = Arc::new(Groups::default());
        // Partition 1 of a super stream: with two members, the second.
        let mut a = member(&g, Some(1), 1);
        assert_eq!(told(&mut a), Some(true));
        let mut b = member(&g, Some(1), 2);
        assert_eq!((told(&mut a), told(&mut b)), (Some(false), None));
        g.stepped_down(&key(), 1, 1);
        assert_eq!((told(&mut a), told(&mut b)), (None, Some(true)));
        // The active one leaves: the remaining one takes over.
        g.remove(&key(), 2, 1);
        assert_eq!(told(&mut a), Some(true));
    }
}
