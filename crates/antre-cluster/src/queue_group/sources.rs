//! Forwarded messages sent again are stored once.
//!
//! A node that forwards a publish to a quorum queue's leader cannot always
//! know whether the leader stored it: the leader may die, or be deposed,
//! with the message on its way or in an entry not yet committed, which
//! the next leader may or may not commit. Failing it (a nack, or a lost
//! message for a publisher without confirms) was antre's answer; sending
//! it again to the next leader could store it twice. So a forwarded
//! message carries its forwarding node's run and that node's number for it
//! in the queue ([`Source`]), the leader logs them with the message
//! ([`SourceRange`], one per run of consecutive messages), and every
//! member, applying the log, remembers per run which numbers it applied
//! ([`Seen`]) and skips a message it applied before. As RabbitMQ's quorum
//! queues do with the enqueuer's sequence numbers their channels send,
//! with one difference: RabbitMQ holds a message that comes ahead of a
//! missing one until the gap is filled, antre applies it and remembers the
//! gap, so a message sent again after a later one (which went to the new
//! leader first) is still taken.
//!
//! What a member remembers is bounded: [`RUNS`] runs per queue (the least
//! recently seen goes first) and [`GAPS`] gaps per run (the oldest goes
//! first). A message is only ever sent again within the forwarding
//! timeout of its first sending, long before either bound is reached by
//! anything but a hostile peer, which the cluster secret keeps out.

use std::collections::HashMap;

use antre_broker::replicated::Source;
use bytes::BufMut;
use serde::{Deserialize, Serialize};

use super::codec::{get_count, get_u64, CodecError};

/// Runs (forwarding nodes' lives) a queue's members remember.
const RUNS: usize = 64;
/// Gaps (numbers not applied below a run's highest) remembered per run.
const GAPS: usize = 64;

/// Consecutive messages of one entry from one forwarding run: the ids
/// `id..id + count` carry the run's numbers `seq..seq + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRange {
    /// The forwarding node's run.
    pub run: u64,
    /// Its number for the first message.
    pub seq: u64,
    /// The group's id for the first message.
    pub id: u64,
    /// How many.
    pub count: u32,
}

impl SourceRange {
    fn end_id(&self) -> u64 {
        self.id + u64::from(self.count)
    }
}

/// Adds message `id`, from `source`, to an entry's ranges (ids grow).
pub(super) fn push(ranges: &mut Vec<SourceRange>, source: Source, id: u64) {
    if let Some(last) = ranges.last_mut() {
        let n = u64::from(last.count);
        if last.run == source.run
            && last.id + n == id
            && last.seq + n == source.seq
            && last.count < u32::MAX
        {
            last.count += 1;
            return;
        }
    }
    ranges.push(SourceRange {
        run: source.run,
        seq: source.seq,
        id,
        count: 1,
    });
}

/// Takes the ranges of ids from `from` on out of `ranges` (an entry cut
/// in two before the message `from`).
pub(super) fn split_off(ranges: &mut Vec<SourceRange>, from: u64) -> Vec<SourceRange> {
    let mut rest = Vec::new();
    ranges.retain_mut(|r| {
        if r.id >= from {
            rest.push(*r);
            false
        } else if r.end_id() > from {
            let kept = from - r.id;
            rest.push(SourceRange {
                run: r.run,
                seq: r.seq + kept,
                id: from,
                count: r.count - kept as u32,
            });
            r.count = kept as u32;
            true
        } else {
            true
        }
    });
    rest
}

/// What one run's messages a member applied: every number up to `last`
/// but those in `gaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Run {
    last: u64,
    /// Inclusive ranges of numbers not applied, in order.
    gaps: Vec<(u64, u64)>,
    /// The log index that last named the run (which run goes first).
    at: u64,
}

impl Run {
    /// Whether `seq..seq + count` are new, all of them: the common case,
    /// recorded at once.
    fn take_ahead(&mut self, seq: u64, count: u64) -> bool {
        if seq <= self.last {
            return false;
        }
        if seq > self.last + 1 {
            self.gap(self.last + 1, seq - 1);
        }
        self.last = seq + count - 1;
        true
    }

    fn gap(&mut self, from: u64, to: u64) {
        self.gaps.push((from, to));
        if self.gaps.len() > GAPS {
            self.gaps.remove(0);
        }
    }

    /// Whether number `seq` is new (then it is recorded).
    fn take(&mut self, seq: u64) -> bool {
        if seq > self.last {
            return self.take_ahead(seq, 1);
        }
        let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq <= b) else {
            return false;
        };
        let (a, b) = self.gaps[i];
        match (a == seq, b == seq) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i].1 = seq - 1;
                self.gaps.insert(i + 1, (seq + 1, b));
            }
        }
        true
    }
}

/// What a queue's member applied of each forwarding run (see the module
/// docs): part of its state, in its snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Seen {
    runs: HashMap<u64, Run>,
}

impl Seen {
    pub(super) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Applies the ranges of the entry at log index `at`: the ids of the
    /// messages applied before, to skip, in order (none, but for a
    /// message sent again).
    pub(super) fn admit(&mut self, ranges: &[SourceRange], at: u64) -> Vec<u64> {
        let mut skip = Vec::new();
        for r in ranges {
            if r.count == 0 {
                continue;
            }
            let run = self.runs.entry(r.run).or_default();
            run.at = at;
            if run.take_ahead(r.seq, u64::from(r.count)) {
                continue;
            }
            for k in 0..u64::from(r.count) {
                if !run.take(r.seq + k) {
                    skip.push(r.id + k);
                }
            }
        }
        while self.runs.len() > RUNS {
            // The same on every member: by log index, then by run.
            let oldest = self.runs.iter().map(|(&run, r)| (r.at, run)).min();
            if let Some((_, run)) = oldest {
                self.runs.remove(&run);
            }
        }
        skip.sort_unstable();
        skip
    }

    /// Appends the runs: count, then run, last, index and gaps (count,
    /// then from and to) each.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32_le(self.runs.len() as u32);
        let mut runs: Vec<_> = self.runs.iter().collect();
        runs.sort_unstable_by_key(|(&run, _)| run);
        for (&run, r) in runs {
            out.put_u64_le(run);
            out.put_u64_le(r.last);
            out.put_u64_le(r.at);
            out.put_u32_le(r.gaps.len() as u32);
            for &(a, b) in &r.gaps {
                out.put_u64_le(a);
                out.put_u64_le(b);
            }
        }
    }

    /// Reads what [`Seen::encode`] wrote.
    pub(super) fn decode(buf: &mut &[u8]) -> Result<Seen, CodecError> {
        let what = "forwarded runs";
        let n = get_count(buf, 28, what)?;
        let mut runs = HashMap::with_capacity(n);
        for _ in 0..n {
            let run = get_u64(buf, what)?;
            let last = get_u64(buf, what)?;
            let at = get_u64(buf, what)?;
            let g = get_count(buf, 16, what)?;
            let gaps = (0..g)
                .map(|_| Ok((get_u64(buf, what)?, get_u64(buf, what)?)))
                .collect::<Result<_, CodecError>>()?;
            runs.insert(run, Run { last, gaps, at });
        }
        Ok(Seen { runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(run: u64, seq: u64, id: u64, count: u32) -> SourceRange {
        SourceRange {
            run,
            seq,
            id,
            count,
        }
    }

    #[test]
    fn consecutive_messages_of_a_run_make_one_range_and_split_where_the_entry_is_cut() {
        let mut r = Vec::new();
        for (seq, id) in [(5, 10), (6, 11), (7, 12), (1, 13), (9, 14)] {
            let run = if seq == 1 { 2 } else { 1 };
            push(&mut r, Source { run, seq }, id);
        }
        assert_eq!(
            r,
            vec![range(1, 5, 10, 3), range(2, 1, 13, 1), range(1, 9, 14, 1)]
        );
        let rest = split_off(&mut r, 11);
        assert_eq!(r, vec![range(1, 5, 10, 1)]);
        assert_eq!(
            rest,
            vec![range(1, 6, 11, 2), range(2, 1, 13, 1), range(1, 9, 14, 1)]
        );
    }

    /// A message applied before is skipped; one that came after a later
    /// one (which went to the next leader first) is taken, once.
    #[test]
    fn a_message_sent_again_is_skipped_and_one_overtaken_is_taken_once() {
        let mut seen = Seen::default();
        assert!(seen.admit(&[range(7, 1, 0, 3)], 1).is_empty());
        // 1..=3 again, and 4, 5 new: the first three are skipped.
        assert_eq!(seen.admit(&[range(7, 1, 3, 5)], 2), vec![3, 4, 5]);
        // 8 overtook 6 and 7: a gap, then filled once.
        assert!(seen.admit(&[range(7, 8, 8, 1)], 3).is_empty());
        assert!(seen.admit(&[range(7, 7, 9, 1)], 4).is_empty());
        assert!(seen.admit(&[range(7, 6, 10, 1)], 5).is_empty());
        assert_eq!(seen.admit(&[range(7, 6, 11, 3)], 6), vec![11, 12, 13]);
        // A gap filled in its middle keeps both ends open.
        assert!(seen.admit(&[range(7, 20, 14, 1)], 7).is_empty());
        assert!(seen.admit(&[range(7, 15, 15, 1)], 8).is_empty());
        assert_eq!(
            seen.admit(&[range(7, 14, 16, 3)], 9),
            vec![17],
            "14 and 16 were still open"
        );
        // Another run is its own.
        assert!(seen.admit(&[range(8, 1, 19, 2)], 10).is_empty());
        // The first message of a run seen late (3 before 1, 2): taken.
        assert!(seen.admit(&[range(9, 3, 21, 1)], 11).is_empty());
        assert!(seen.admit(&[range(9, 1, 22, 2)], 12).is_empty());
    }

    #[test]
    fn a_member_remembers_the_newest_runs_alike_and_in_its_snapshot() {
        let mut seen = Seen::default();
        for run in 0..(RUNS as u64 + 3) {
            seen.admit(&[range(run, 1, run, 1)], run + 1);
        }
        assert_eq!(seen.runs.len(), RUNS);
        assert!(!seen.runs.contains_key(&2) && seen.runs.contains_key(&3));
        seen.admit(&[range(70, 9, 100, 1)], 200);
        let mut out = Vec::new();
        seen.encode(&mut out);
        let back = Seen::decode(&mut &out[..]).expect("decode");
        assert_eq!(back, seen);
        for cut in 0..out.len() {
            assert!(Seen::decode(&mut &out[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_run_remembers_its_newest_gaps() {
        let mut seen = Seen::default();
        for k in 0..(GAPS as u64 + 2) {
            seen.admit(&[range(1, 2 * k + 2, k, 1)], k + 1);
        }
        let run = &seen.runs[&1];
        assert_eq!(run.gaps.len(), GAPS);
        assert_eq!(run.gaps[0], (5, 5), "1 and 3 forgotten");
    }
}
