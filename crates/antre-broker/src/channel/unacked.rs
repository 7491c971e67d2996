//! The deliveries a channel handed out and has not seen settled yet, by
//! delivery tag.
//!
//! A drain by a thousand consumers with prefetch 1000 holds a million of
//! these at once, so each costs a fixed, small record (56 bytes) instead of
//! a map entry holding two `Arc`s and the queue's whole entry (~250 bytes
//! with a `BTreeMap`'s overhead):
//!
//! - Records sit in a `VecDeque` in tag order. Tags are dense and
//!   increasing, so a tag is found at `tag - first tag` in the common case,
//!   and by binary search once holes were compacted away.
//! - Where a delivery came from (its queue, stream or proxy channel) and the
//!   consumer's prefetch window are shared by all its deliveries: they are
//!   kept once per channel in a table of *origins*, which records name by
//!   index and count references to (an origin goes when its last record
//!   does, so a deleted queue is not kept alive).
//! - The rare fields (a TTL's expiry, a deduplication key) live in a side
//!   map by tag, only for the records that have them.
//!
//! Settling marks a record dead; dead records at either end are popped at
//! once, and the deque is compacted when dead records outnumber live ones,
//! so out-of-order acks over a long run cost at most about twice the live
//! records.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use antre_store::SegmentPosition;

use super::{Source, Unacked};
use crate::message::Message;
use crate::queue::{Credit, Queue, QueueKind, Unsettled};
use crate::remote::RemoteChannel;
use crate::stream::Stream;

/// Marks a settled record's origin.
const DEAD: u32 = u32::MAX;
/// Dead records tolerated beyond the live ones before compacting.
const SLACK: usize = 64;

/// Where deliveries came from: what settling them talks to.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// A queue of this node.
    Queue(Arc<Queue>),
    /// A stream (settling only gives credit back).
    Stream(Arc<Stream>),
    /// A proxy channel on the node that owns the queue, with the queue's
    /// consumer timeout (ms), which this node applies, and its type (one
    /// proxy channel serves every queue of its owner).
    Remote(Arc<dyn RemoteChannel>, Option<u64>, QueueKind),
}

impl Origin {
    /// Identity of the shared object, for interning.
    fn key(&self) -> (u8, usize, Option<u64>, QueueKind) {
        match self {
            Origin::Queue(q) => (0, Arc::as_ptr(q) as usize, None, q.kind()),
            Origin::Stream(s) => (1, Arc::as_ptr(s) as usize, None, QueueKind::Stream),
            Origin::Remote(r, timeout, kind) => {
                (2, Arc::as_ptr(r) as *const () as usize, *timeout, *kind)
            }
        }
    }

    /// The type of the queue the deliveries came from.
    pub(crate) fn queue_kind(&self) -> QueueKind {
        self.key().3
    }
}

/// An origin with the consumer window its deliveries took credit from.
#[derive(Debug)]
struct OriginEntry {
    origin: Origin,
    credit: Option<Arc<Credit>>,
    /// Live records naming it.
    refs: usize,
}

type OriginKey = (u8, usize, Option<u64>, QueueKind, usize);

fn origin_key(origin: &Origin, credit: Option<&Arc<Credit>>) -> OriginKey {
    let (variant, at, timeout, kind) = origin.key();
    (
        variant,
        at,
        timeout,
        kind,
        credit.map_or(0, |c| Arc::as_ptr(c) as usize),
    )
}

/// A delivery's body, if the channel has to keep it.
#[derive(Debug, Default)]
enum Payload {
    /// Nothing: a stream's or a remote queue's delivery.
    #[default]
    None,
    /// Persistent in a durable queue: read back from the store if needed.
    Stored(SegmentPosition),
    /// Transient: this is its only copy.
    Held(Arc<Message>),
}

/// One delivery, packed.
#[derive(Debug)]
struct Slot {
    tag: u64,
    /// The queue's sequence number, or the owner's delivery tag for a
    /// remote queue.
    seq: u64,
    payload: Payload,
    delivered_at: u64,
    delivery_count: u32,
    size: u32,
    /// Index into the origin table, or [`DEAD`] once settled.
    origin: u32,
    priority: u8,
    /// It has an entry in the side map of rare fields.
    rare: bool,
}

/// Fields few deliveries have.
#[derive(Debug)]
struct Rare {
    expires_at: Option<u64>,
    dedup_key: Option<String>,
}

/// Settled deliveries of one origin.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) origin: Origin,
    /// The consumer's window to give the deliveries' credit back to.
    pub(crate) credit: Option<Arc<Credit>>,
    /// How many deliveries.
    pub(crate) count: u32,
    /// A queue's entries, to ack, reject or requeue there.
    pub(crate) entries: Vec<Unsettled>,
    /// The owner's delivery tags, for a remote queue.
    pub(crate) remote_tags: Vec<u64>,
}

/// Deliveries taken out of the log, grouped by origin.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) groups: Vec<Group>,
    /// How many deliveries in all.
    pub(crate) count: usize,
}

/// What one record settles, before grouping.
enum Item {
    Entry(Unsettled),
    RemoteTag(u64),
    Nothing,
}

/// Groups records by origin index as they are taken out.
#[derive(Default)]
struct Collector {
    groups: Vec<(u32, u32, Vec<Unsettled>, Vec<u64>)>,
    /// Origin index to group, once there are more than a few groups.
    index: HashMap<u32, usize>,
    last: usize,
}

impl Collector {
    fn add(&mut self, origin: u32, item: Item) {
        let at = if self.groups.get(self.last).is_some_and(|g| g.0 == origin) {
            self.last
        } else if let Some(&at) = self.index.get(&origin) {
            at
        } else if let Some(at) = self.groups.iter().position(|g| g.0 == origin) {
            at
        } else {
            self.groups.push((origin, 0, Vec::new(), Vec::new()));
            let at = self.groups.len() - 1;
            if self.groups.len() > 8 {
                if self.index.is_empty() {
                    for (i, g) in self.groups.iter().enumerate() {
                        self.index.insert(g.0, i);
                    }
                } else {
                    self.index.insert(origin, at);
                }
            }
            at
        };
        self.last = at;
        let group = &mut self.groups[at];
        group.1 += 1;
        match item {
            Item::Entry(e) => group.2.push(e),
            Item::RemoteTag(t) => group.3.push(t),
            Item::Nothing => {}
        }
    }
}

/// Unpacks a live record (its rare fields out of the side map).
fn unpack(slot: Slot, rare: &mut HashMap<u64, Rare>, origins: &[Option<OriginEntry>]) -> Item {
    let extra = if slot.rare {
        rare.remove(&slot.tag)
    } else {
        None
    };
    let origin = origins
        .get(slot.origin as usize)
        .and_then(Option::as_ref)
        .map(|o| &o.origin);
    match origin {
        Some(Origin::Queue(_)) => {
            let (message, pos) = match slot.payload {
                Payload::Held(m) => (Some(m), None),
                Payload::Stored(p) => (None, Some(p)),
                Payload::None => (None, None),
            };
            let (expires_at, dedup_key) =
                extra.map_or((None, None), |r| (r.expires_at, r.dedup_key));
            Item::Entry(Unsettled {
                seq: slot.seq,
                message,
                pos,
                delivery_count: slot.delivery_count,
                size: slot.size,
                priority: slot.priority,
                expires_at,
                dedup_key,
            })
        }
        Some(Origin::Remote(..)) => Item::RemoteTag(slot.seq),
        Some(Origin::Stream(_)) | None => Item::Nothing,
    }
}

/// A channel's unacked deliveries (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct UnackedLog {
    slots: VecDeque<Slot>,
    live: usize,
    origins: Vec<Option<OriginEntry>>,
    free: Vec<u32>,
    index: HashMap<OriginKey, u32>,
    /// The origin of the last insert, which the next one most likely shares.
    last: Option<u32>,
    rare: HashMap<u64, Rare>,
}

impl UnackedLog {
    /// Live deliveries.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Records held, live or dead (what the log costs, by count).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.slots.len()
    }

    /// Origins in the table (tests: they go with their last delivery).
    #[cfg(test)]
    pub(crate) fn origins(&self) -> usize {
        self.index.len()
    }

    /// Whether `tag` is a live delivery.
    pub(crate) fn contains(&self, tag: u64) -> bool {
        self.find(tag).is_some()
    }

    /// Index of the live record of `tag`.
    fn find(&self, tag: u64) -> Option<usize> {
        let first = self.slots.front()?.tag;
        let guess = usize::try_from(tag.checked_sub(first)?).ok()?;
        let at = match self.slots.get(guess) {
            Some(s) if s.tag == tag => guess,
            _ => self.slots.binary_search_by_key(&tag, |s| s.tag).ok()?,
        };
        (self.slots[at].origin != DEAD).then_some(at)
    }

    /// Records a delivery under `tag`, which is higher than every tag
    /// recorded before on this channel.
    pub(crate) fn insert(&mut self, tag: u64, u: Unacked) {
        let Unacked {
            source,
            credit,
            delivered_at,
        } = u;
        let (origin, seq, payload, fields, rare) = match source {
            Source::Queue { queue, entry } => {
                let payload = match (entry.message, entry.pos) {
                    (_, Some(pos)) => Payload::Stored(pos),
                    (Some(m), None) => Payload::Held(m),
                    (None, None) => Payload::None,
                };
                let rare =
                    (entry.expires_at.is_some() || entry.dedup_key.is_some()).then_some(Rare {
                        expires_at: entry.expires_at,
                        dedup_key: entry.dedup_key,
                    });
                let fields = (entry.delivery_count, entry.size, entry.priority);
                (Origin::Queue(queue), entry.seq, payload, fields, rare)
            }
            Source::Stream(s) => (Origin::Stream(s), 0, Payload::None, (0, 0, 0), None),
            Source::Remote {
                channel,
                tag,
                timeout,
                kind,
            } => (
                Origin::Remote(channel, timeout, kind),
                tag,
                Payload::None,
                (0, 0, 0),
                None,
            ),
        };
        let origin = self.intern(origin, credit);
        let has_rare = rare.is_some();
        if let Some(rare) = rare {
            self.rare.insert(tag, rare);
        }
        let slot = Slot {
            tag,
            seq,
            payload,
            delivered_at,
            delivery_count: fields.0,
            size: fields.1,
            origin,
            priority: fields.2,
            rare: has_rare,
        };
        match self.slots.back() {
            Some(last) if last.tag >= tag => {
                // Not expected (tags only grow), but kept in order anyway.
                let at = self.slots.partition_point(|s| s.tag < tag);
                self.slots.insert(at, slot);
            }
            _ => self.slots.push_back(slot),
        }
        self.live += 1;
    }

    /// The origin table's index for this origin and window, counting one
    /// more reference.
    fn intern(&mut self, origin: Origin, credit: Option<Arc<Credit>>) -> u32 {
        let key = origin_key(&origin, credit.as_ref());
        let cached = self.last.filter(|&i| {
            self.origins[i as usize]
                .as_ref()
                .is_some_and(|e| origin_key(&e.origin, e.credit.as_ref()) == key)
        });
        let at = match cached.or_else(|| self.index.get(&key).copied()) {
            Some(at) => at,
            None => {
                let entry = Some(OriginEntry {
                    origin,
                    credit,
                    refs: 0,
                });
                let at = match self.free.pop() {
                    Some(at) => {
                        self.origins[at as usize] = entry;
                        at
                    }
                    None => {
                        self.origins.push(entry);
                        (self.origins.len() - 1) as u32
                    }
                };
                self.index.insert(key, at);
                at
            }
        };
        if let Some(e) = self.origins[at as usize].as_mut() {
            e.refs += 1;
        }
        self.last = Some(at);
        at
    }

    /// Takes out `tag`, or with `multiple` every delivery up to it (all of
    /// them for tag 0). Unknown tags take nothing.
    pub(crate) fn take(&mut self, tag: u64, multiple: bool) -> Settled {
        let mut c = Collector::default();
        if multiple {
            let n = if tag == 0 {
                self.slots.len()
            } else {
                self.slots.partition_point(|s| s.tag <= tag)
            };
            let (rare, origins) = (&mut self.rare, &self.origins);
            for slot in self.slots.drain(..n) {
                if slot.origin != DEAD {
                    let origin = slot.origin;
                    c.add(origin, unpack(slot, rare, origins));
                }
            }
        } else if let Some(at) = self.find(tag) {
            let slot = self.kill(at);
            let origin = slot.origin;
            c.add(origin, unpack(slot, &mut self.rare, &self.origins));
        }
        self.settle(c)
    }

    /// Takes out every delivery.
    pub(crate) fn take_all(&mut self) -> Settled {
        self.take(0, true)
    }

    /// Takes out the deliveries whose tags `pick` says yes to.
    pub(crate) fn take_where(&mut self, mut pick: impl FnMut(u64) -> bool) -> Settled {
        let mut c = Collector::default();
        for at in 0..self.slots.len() {
            let s = &self.slots[at];
            if s.origin != DEAD && pick(s.tag) {
                let slot = self.kill(at);
                let origin = slot.origin;
                c.add(origin, unpack(slot, &mut self.rare, &self.origins));
            }
        }
        self.settle(c)
    }

    /// Marks the record at `at` dead, returning what it held.
    fn kill(&mut self, at: usize) -> Slot {
        let s = &mut self.slots[at];
        Slot {
            tag: s.tag,
            seq: s.seq,
            payload: std::mem::take(&mut s.payload),
            delivered_at: s.delivered_at,
            delivery_count: s.delivery_count,
            size: s.size,
            origin: std::mem::replace(&mut s.origin, DEAD),
            priority: s.priority,
            rare: std::mem::take(&mut s.rare),
        }
    }

    /// Turns collected records into groups, drops the references they held
    /// on their origins, and trims dead records.
    fn settle(&mut self, c: Collector) -> Settled {
        let mut settled = Settled::default();
        for (at, count, entries, remote_tags) in c.groups {
            let Some(slot) = self.origins.get_mut(at as usize) else {
                continue;
            };
            let Some(entry) = slot.as_mut() else {
                continue;
            };
            entry.refs = entry.refs.saturating_sub(count as usize);
            let (origin, credit) = if entry.refs == 0 {
                let gone = slot.take();
                self.free.push(at);
                match gone {
                    Some(e) => {
                        self.index.remove(&origin_key(&e.origin, e.credit.as_ref()));
                        (e.origin, e.credit)
                    }
                    None => continue,
                }
            } else {
                (entry.origin.clone(), entry.credit.clone())
            };
            settled.count += count as usize;
            settled.groups.push(Group {
                origin,
                credit,
                count,
                entries,
                remote_tags,
            });
        }
        self.live = self.live.saturating_sub(settled.count);
        self.trim();
        settled
    }

    /// Pops dead records off both ends, compacts when dead ones outnumber
    /// the live, and gives memory back after a large window drained.
    fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.origin == DEAD) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|s| s.origin == DEAD) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.live + SLACK {
            self.slots.retain(|s| s.origin != DEAD);
        }
        let cap = self.slots.capacity();
        if cap > 1024 && cap > 4 * self.slots.len() {
            self.slots.shrink_to((2 * self.slots.len()).max(SLACK));
        }
        if self.live == 0 {
            self.last = None;
        }
    }

    /// The first stream a settle of `tag` (with `multiple`, of every tag up
    /// to it) would cover.
    pub(crate) fn stream_in(&self, tag: u64, multiple: bool) -> Option<&Arc<Stream>> {
        let range = if multiple {
            let end = if tag == 0 {
                self.slots.len()
            } else {
                self.slots.partition_point(|s| s.tag <= tag)
            };
            0..end
        } else {
            match self.find(tag) {
                Some(at) => at..at + 1,
                None => 0..0,
            }
        };
        self.slots.range(range).find_map(|s| match self.origin(s)? {
            Origin::Stream(stream) => Some(stream),
            _ => None,
        })
    }

    fn origin(&self, s: &Slot) -> Option<&Origin> {
        self.origins
            .get(s.origin as usize)?
            .as_ref()
            .map(|e| &e.origin)
    }

    /// The live deliveries of remote queues: their proxy channel and the
    /// owner's delivery tag.
    pub(crate) fn remote_tags(&self) -> impl Iterator<Item = (&Arc<dyn RemoteChannel>, u64)> {
        self.slots.iter().filter_map(|s| match self.origin(s)? {
            Origin::Remote(rc, ..) => Some((rc, s.seq)),
            _ => None,
        })
    }

    /// The timeout a delivery has waited past at `now`, if one has: its
    /// queue's `x-consumer-timeout` (a remote queue's as its owner told),
    /// else `default_ms`.
    pub(crate) fn overdue(&self, now: u64, default_ms: Option<u64>) -> Option<u64> {
        let timeouts: Vec<Option<u64>> = self
            .origins
            .iter()
            .map(|e| match e.as_ref().map(|e| &e.origin) {
                Some(Origin::Queue(q)) => q.args().consumer_timeout.or(default_ms),
                Some(Origin::Remote(_, timeout, _)) => timeout.or(default_ms),
                Some(Origin::Stream(_)) => default_ms,
                None => None,
            })
            .collect();
        if timeouts.iter().all(Option::is_none) {
            return None;
        }
        self.slots.iter().find_map(|s| {
            let timeout = (*timeouts.get(s.origin as usize)?)?;
            (now.saturating_sub(s.delivered_at) > timeout).then_some(timeout)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::tests::{message, queue_with};

    #[test]
    fn a_record_is_56_bytes() {
        assert!(size_of::<Slot>() <= 56, "{}", size_of::<Slot>());
    }

    /// Records `n` deliveries of `q` (fetched with basic.get semantics)
    /// under the tags given, all with the same window.
    fn deliver(log: &mut UnackedLog, q: &Arc<Queue>, credit: &Arc<Credit>, tags: &[u64]) {
        for &tag in tags {
            q.publish_ok(message(&tag.to_string()));
            let (entry, _) = q.get(false).expect("a message");
            log.insert(
                tag,
                Unacked {
                    source: Source::Queue {
                        queue: Arc::clone(q),
                        entry: entry.into_unsettled(),
                    },
                    credit: Some(Arc::clone(credit)),
                    delivered_at: tag,
                },
            );
        }
    }

    fn bodies(g: &Group) -> Vec<String> {
        g.entries
            .iter()
            .map(|e| {
                String::from_utf8_lossy(&e.message.as_ref().expect("transient").body).into_owned()
            })
            .collect()
    }

    #[test]
    fn interleaved_origins_settle_in_one_group_each_in_tag_order() {
        let clock = Arc::new(ManualClock::at(1));
        let (a, b) = (queue_with(&[], Arc::clone(&clock)), queue_with(&[], clock));
        let (ca, cb) = (Credit::new(0), Credit::new(0));
        let mut log = UnackedLog::default();
        for tag in 1..=10 {
            if tag % 3 == 0 {
                deliver(&mut log, &b, &cb, &[tag]);
            } else {
                deliver(&mut log, &a, &ca, &[tag]);
            }
        }
        assert_eq!(log.origins(), 2, "one origin per queue and window");
        let one = log.take(4, false);
        assert_eq!((one.count, one.groups.len()), (1, 1));
        let s = log.take(9, true);
        assert_eq!(s.count, 8);
        let [ga, gb] = &s.groups[..] else {
            panic!("two groups: {:?}", s.groups.len())
        };
        assert!(matches!(&ga.origin, Origin::Queue(q) if Arc::ptr_eq(q, &a)));
        assert_eq!(bodies(ga), ["1", "2", "5", "7", "8"]);
        assert_eq!(bodies(gb), ["3", "6", "9"]);
        assert_eq!((ga.count, gb.count), (5, 3));
        assert_eq!(log.len(), 1);
        assert!(log.contains(10) && !log.contains(9) && !log.contains(4));
        // b's origin went with its last delivery; a's stays for tag 10.
        assert_eq!(log.origins(), 1);
        assert_eq!(log.take_all().count, 1);
        assert_eq!((log.len(), log.held(), log.origins()), (0, 0, 0));
    }

    #[test]
    fn holes_are_compacted_and_tags_still_found_by_search() {
        let q = queue_with(&[], Arc::new(ManualClock::at(1)));
        let credit = Credit::new(0);
        let mut log = UnackedLog::default();
        let tags: Vec<u64> = (1..=1000).collect();
        deliver(&mut log, &q, &credit, &tags);
        // Settle all but every hundredth, from the back: the front stays,
        // so only compaction can give the dead records back.
        for tag in (2..=1000).rev().filter(|t| t % 100 != 0) {
            assert_eq!(log.take(tag, false).count, 1, "tag {tag}");
        }
        assert_eq!(log.len(), 11);
        assert!(log.held() <= 2 * 11 + SLACK, "{} records held", log.held());
        for tag in (100..=1000).step_by(100) {
            assert!(log.contains(tag), "tag {tag}");
        }
        assert!(!log.contains(150));
        // A multiple settle across the compacted holes.
        assert_eq!(log.take(500, true).count, 6);
        assert_eq!(log.len(), 5);
        assert_eq!(
            log.overdue(1601, Some(1000)),
            Some(1000),
            "tag 600 waited 1001 ms"
        );
        assert_eq!(log.overdue(1601, Some(1001)), None);
    }
}
