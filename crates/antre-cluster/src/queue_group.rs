//! Quorum queues and streams: one Raft group per queue.
//!
//! A stream's group is a quorum queue's with another state: the entries
//! carry its publishes only, each with the offset the leader gave it (its
//! id), and every member appends what it applies to its own stream log
//! (`Target::Stream`); the group keeps no message set for it, and a
//! snapshot marks how far that log is durable (a member far behind gets
//! the stream's chunks, `encode_stream_snapshot`). The rest of this
//! module speaks of queues; it holds for both.
//!
//! A quorum queue's definition (with its members) goes through the
//! metadata group ([`crate::state_machine`] picks the members and the
//! group's id when it applies the declare); each member then runs a
//! replica of the queue's own group, started here. The group's log holds
//! [`QueueOps`] entries: messages enqueued, settled (acked, rejected,
//! dropped, dead-lettered), returned (delivered and back: one more
//! delivery). Every member applies them to the same message set
//! (`QueueState`); its log is in antre's segment store under
//! `<data-dir>/cluster/queues/<group>/` ([`crate::log_store`]), with a
//! snapshot of the messages left (`snapshot.bin`) after which the log's
//! prefix is purged. The set's records are on disk, in the member's record
//! segments (`records/`, [`antre_store::records`]); in memory it holds
//! each message's id, delivery count and where its record is, so a long
//! queue costs each member about 50 bytes a message, not the message.
//!
//! The engine that serves consumers is the broker's ordinary queue, on the
//! group's leader only (see [`antre_broker::replicated`]): a publish is
//! proposed, confirmed when committed, and given to the engine when applied;
//! what the engine settles or returns is proposed in turn. When this node
//! becomes the leader it first waits until it applied everything committed
//! before its term, then starts the engine from the applied messages, all
//! marked redelivered; when it stops leading, the engine empties and
//! cancels its consumers (basic.cancel).
//!
//! The frames travel over the metadata group's authenticated link, with the
//! group's id in each request ([`crate::wire::Request::QueueAppend`]).
//! The entries, which carry the published messages, are binary in the log
//! and in append requests ([`codec`]); the rest of the link is JSON, as
//! for the metadata group. Snapshots (one per `SNAPSHOT_LOGS` entries,
//! or sooner by size, see `snapshot_due`) are binary too: on disk the
//! references ([`codec::encode_refs`]), and for a member far behind the
//! records themselves ([`codec::MessagesEncoder`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use antre_broker::cluster::{MetaCommand, QuorumDef};
use antre_broker::durable::Durable;
use antre_broker::error::BrokerError;
use antre_broker::message::Message;
use antre_broker::queue::{DeathReason, Queue, ReplicatedMessage};
use antre_broker::replicated::{PendingCommit, QueueReplica};
use antre_broker::stream::{ChunkSource, Stream};
use antre_broker::Broker;
use antre_store::records::{Mark, RecordRef, RecordSegments, RecordSync};
use antre_store::StoreError;
use base64::Engine as _;
use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, ServerState,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod carriers;
pub mod codec;
mod consumers;
mod fence;
mod heartbeats;
pub mod leases;
pub mod members;
mod send_on;
pub mod sources;

use crate::log_store::{LogStore, SnapshotFloor};
use crate::network::{CallError, Link, NetworkFactory, PooledConnection};
use crate::wire::{Request, Response};
use crate::{ClusterError, NodeId};

/// A snapshot of the messages left after this many entries; the log keeps
/// a few entries before it for followers a little behind.
///
/// The snapshots are this crate's to trigger (openraft's own policy is
/// off): a leader that snapshots drops its log up to a few entries before
/// the snapshot, and a follower further behind than that at that moment,
/// however briefly (a slower disk under load), can then only be sent the
/// snapshot. For a stream that is the whole stream, shipped again and
/// again under load (seen as a third of the stream protocol's publish
/// rate). So a leader waits (a little) for its followers to be close
/// before it snapshots; see [`snapshot_loop`].
const SNAPSHOT_LOGS: u64 = 4096;
const KEEP_AFTER_SNAPSHOT: u64 = 64;
/// How far a leader lets its log grow past a due snapshot while it waits
/// for its followers to come within half of [`KEEP_AFTER_SNAPSHOT`]
/// entries (a follower behind under load catches up from the log, cheaper
/// than a snapshot, above all a stream's: the whole stream), before it
/// snapshots anyway (a follower that is down must not keep the log
/// growing).
const SNAPSHOT_LAG_BYTES: u64 = 8 * SNAPSHOT_BYTES;
/// A follower not heard from this long is not waited for before a
/// snapshot (nodes hear from each other every heartbeat, 0.1-0.2 s).
const FOLLOWER_HEARD_WITHIN: Duration = Duration::from_secs(1);
/// Bytes of messages one log entry carries at most (unless one message
/// alone is larger): what gathered beyond goes in the next entries, so an
/// entry, and an append request, stays far below the link's largest frame
/// whatever the publishers send at once.
const ENTRY_BYTES: u64 = 8 << 20;
/// Bytes of entries one append request to a follower carries at most
/// (unless one entry alone is larger); openraft counts entries only.
const APPEND_BYTES: u64 = 16 << 20;
/// The newest log entries a stream's group holds in memory (a quorum
/// queue's hold `LogConfig::CACHE_BYTES`).
const STREAM_LOG_CACHE: u64 = 64 << 20;
/// What each entry counts towards [`snapshot_due`] beyond its records, so
/// that a snapshot comes every [`SNAPSHOT_LOGS`] entries at the latest.
const ENTRY_WEIGHT: u64 = SNAPSHOT_BYTES / SNAPSHOT_LOGS;
/// ... or sooner, once the records applied since the last snapshot reach
/// this many bytes and four times what the snapshot writes: the log on
/// disk (in memory only its newest entries, see `LogConfig::CACHE_BYTES`)
/// and the time to read it at start-up then stay bounded whatever the
/// entries' sizes, and a snapshot (its references, the records being in
/// the member's record segments already) costs a quarter of the log it
/// replaces.
const SNAPSHOT_BYTES: u64 = 32 << 20;
/// What a snapshot writes per message left ([`codec::encode_refs`]).
const SNAPSHOT_REF_BYTES: u64 = 24;

/// Whether a member should snapshot now: `logged` bytes of records applied
/// since its last snapshot, `left` the messages left.
fn snapshot_due(logged: u64, left: usize) -> bool {
    logged >= SNAPSHOT_BYTES.max(4 * SNAPSHOT_REF_BYTES * left as u64)
}
/// Bytes of live records a snapshot copies at most out of mostly dead
/// record segments (see [`compact`]), so that one snapshot stays short.
const COMPACT_BYTES: u64 = 16 << 20;
/// Entries a leader has proposed and not yet seen committed, at most:
/// publishes arriving meanwhile gather into the next, larger entry.
///
/// Two, so that one entry is written while the other is replicated, and
/// no more: openraft 0.9 writes each proposal as its own append and waits
/// for that append's fsync in its core loop before it replicates anything
/// or handles another message, so more entries in flight only cut the
/// same publishes into more, smaller appends, each an fsync the others
/// queue behind. With 8 (the earlier value) one queue confirmed a fifth
/// less at a fifth more CPU per message, and ten queues 14% less
/// (BENCHMARKS.md, "Entries in flight").
const IN_FLIGHT: usize = 2;
/// [`IN_FLIGHT`] for a stream's group. A stream's entries are large (a
/// megabyte or more a round under load), so a round cut in two costs an
/// fsync little beside the bytes written, and with more in flight the
/// followers write while the leader does: over the stream protocol 4
/// confirmed 6% more at 7% less CPU per message than 2 (two interleaved
/// runs each), where one quorum queue moved by nothing beyond the noise
/// (BENCHMARKS.md, "Streams on a cluster write less").
const STREAM_IN_FLIGHT: usize = 4;

/// A message body (a [`Message`] record); in JSON (a snapshot an older
/// version wrote) a base64 string.
#[derive(Clone, PartialEq, Eq)]
pub struct Body(pub Bytes);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.0.len())
    }
}

impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|v| Body(Bytes::from(v)))
            .map_err(serde::de::Error::custom)
    }
}

/// One entry of a queue group's log. A leader gathers what happened since
/// its last entry into one; members apply `returned`, then
/// `dead_lettered`, then `settle`, then `enqueue` (a message is settled or
/// returned only after its enqueue was applied, so an entry never settles
/// what it enqueues).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueOps {
    /// New messages: the leader's id for each (growing), its record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enqueue: Vec<(u64, Body)>,
    /// Messages gone for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settle: Vec<u64>,
    /// Messages delivered that came back (one more delivery each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returned: Vec<u64>,
    /// Messages dead-lettered at least once, with the reason's code
    /// ([`death_code`]): kept, out of consumers' reach, until settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_lettered: Vec<(u64, u8)>,
    /// A stream's named consumers' stored offsets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<(String, u64)>,
    /// The Raft term of the leadership that proposed this (see
    /// [`QueueOps::stale`]); None in entries of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Where forwarded messages among `enqueue` came from: each is stored
    /// once however often it is sent ([`sources`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<sources::SourceRange>,
}

impl QueueOps {
    /// Whether this entry was proposed during an earlier leadership of
    /// the node that appended it (`term` is the entry's). openraft takes
    /// a proposal handed to it while its node leads, but one that reaches
    /// its core only after the node lost the leadership and won it again
    /// is appended in the new term: its ids were given out before the new
    /// leadership's engine started from the applied state, so they may be
    /// given out again (a stream's offsets twice: confirmed messages
    /// skipped as already there). Every member ignores such an entry, and
    /// its proposer nacks it.
    fn stale(&self, term: u64) -> bool {
        self.term.is_some_and(|t| t != term)
    }

    fn is_empty(&self) -> bool {
        self.enqueue.is_empty()
            && self.settle.is_empty()
            && self.returned.is_empty()
            && self.dead_lettered.is_empty()
            && self.offsets.is_empty()
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for quorum queue groups.
    pub QueueTypeConfig:
        D = QueueOps,
        R = (),
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<QueueTypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// A quorum queue group's Raft handle.
pub type QueueRaft = openraft::Raft<QueueTypeConfig>;

/// The id of the group of queue `name` in `vhost`, declared by the
/// metadata entry at `index`: stable for this declaration, different for a
/// queue deleted and declared again (whose old data must not be reused).
pub fn group_id(vhost: &str, name: &str, index: u64) -> String {
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.update([0]);
    h.update(index.to_be_bytes());
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One message with its record, as a snapshot sent to a member carries it
/// (and as older versions kept it in memory).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    record: Body,
    delivery_count: u32,
    /// Dead-lettered at least once: the reason's code ([`death_code`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dying: Option<u8>,
}

/// The replicated message set with its records: a snapshot's data as
/// members send it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Messages {
    /// By id, in order.
    messages: BTreeMap<u64, Held>,
    /// Above every id ever enqueued.
    next_id: u64,
    /// What was applied of forwarding runs (never in an older version's
    /// JSON).
    #[serde(skip)]
    seen: sources::Seen,
}

/// One message as a member holds it: its record stays in the member's
/// record segments.
#[derive(Debug, Clone, Copy)]
struct Stored {
    at: RecordRef,
    delivery_count: u32,
    /// Dead-lettered at least once: the reason's code ([`death_code`]).
    dying: Option<u8>,
}

/// A dead-letter reason as a group's log and snapshots keep it.
pub(crate) fn death_code(reason: DeathReason) -> u8 {
    match reason {
        DeathReason::Rejected => 0,
        DeathReason::Expired => 1,
        DeathReason::MaxLen => 2,
        DeathReason::DeliveryLimit => 3,
    }
}

/// The reason a [`death_code`] stands for (an unknown code, from a newer
/// version, reads as a rejection: the message is dead-lettered all the
/// same).
fn death_reason(code: u8) -> DeathReason {
    match code {
        1 => DeathReason::Expired,
        2 => DeathReason::MaxLen,
        3 => DeathReason::DeliveryLimit,
        _ => DeathReason::Rejected,
    }
}

/// The replicated message set as a member holds it in memory: about 50
/// bytes per message, whatever its size.
#[derive(Debug, Default)]
struct StoredSet {
    /// By id, in order.
    messages: BTreeMap<u64, Stored>,
    /// Above every id ever enqueued.
    next_id: u64,
    /// What was applied of forwarding runs ([`sources`]).
    seen: sources::Seen,
}

impl StoredSet {
    /// Appends each message's record to `records`.
    fn store(full: Messages, records: &mut RecordSegments) -> Result<StoredSet, StoreError> {
        let mut set = StoredSet {
            messages: BTreeMap::new(),
            next_id: full.next_id,
            seen: full.seen,
        };
        for (id, held) in full.messages {
            let at = records.append(&held.record.0)?;
            set.messages.insert(
                id,
                Stored {
                    at,
                    delivery_count: held.delivery_count,
                    dying: held.dying,
                },
            );
        }
        Ok(set)
    }

    /// The record segments the set refers to.
    fn segments(&self) -> BTreeSet<u32> {
        self.messages.values().map(|m| m.at.segment).collect()
    }
}

/// How an older version stored a snapshot (`snapshot.json`), still read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The member's last snapshot: its metadata as JSON (a 4-byte
/// little-endian length first), then its data: references to the records
/// in its record segments ([`codec::encode_refs`]; an older version wrote
/// the records themselves, [`codec::MessagesEncoder`]).
const SNAPSHOT_FILE: &str = "snapshot.bin";
/// The member's record segments, beside its log.
const RECORDS_DIR: &str = "records";
const OLD_SNAPSHOT_FILE: &str = "snapshot.json";

type QueueSnapshotMeta = SnapshotMeta<NodeId, BasicNode>;

fn write_snapshot_file(dir: &Path, meta: &QueueSnapshotMeta, data: &[u8]) -> std::io::Result<()> {
    let meta_json = serde_json::to_vec(meta).map_err(io_err)?;
    let len = u32::try_from(meta_json.len()).map_err(io_err)?;
    let mut file = Vec::with_capacity(4 + meta_json.len() + data.len());
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(&meta_json);
    file.extend_from_slice(data);
    antre_store::definitions::write_atomic(&dir.join(SNAPSHOT_FILE), &file).map_err(io_err)?;
    match std::fs::remove_file(dir.join(OLD_SNAPSHOT_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The member's last snapshot, if it has one: its metadata and data.
fn read_snapshot_file(dir: &Path) -> std::io::Result<Option<(QueueSnapshotMeta, Vec<u8>)>> {
    if let Some(mut raw) =
        antre_store::definitions::read(&dir.join(SNAPSHOT_FILE)).map_err(io_err)?
    {
        let bad = || io_err("a truncated snapshot file");
        let len = raw.get(..4).ok_or_else(bad)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let meta_json = raw.get(4..4 + len).ok_or_else(bad)?;
        let meta = serde_json::from_slice(meta_json).map_err(io_err)?;
        let data = raw.split_off(4 + len);
        return Ok(Some((meta, data)));
    }
    match antre_store::definitions::read(&dir.join(OLD_SNAPSHOT_FILE)).map_err(io_err)? {
        Some(raw) => {
            let old: StoredSnapshot = serde_json::from_slice(&raw).map_err(io_err)?;
            Ok(Some((old.meta, old.data)))
        }
        None => Ok(None),
    }
}

/// A member's state: what it applied.
struct QueueState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    set: StoredSet,
    /// The records of `set` (and of messages gone since the last
    /// snapshot), under `<group>/records/`.
    records: RecordSegments,
    /// Records of the newest messages, not written to `records` yet
    /// (their place is [`UNWRITTEN`]): most messages of a consumed queue
    /// are settled before they would be, and never touch the segments.
    unwritten: BTreeMap<u64, Bytes>,
    /// Bytes in `unwritten`.
    unwritten_bytes: u64,
    /// The last snapshot's metadata (its data is on disk only).
    snapshot: Option<QueueSnapshotMeta>,
    /// Bytes of the records applied since the last snapshot (see
    /// [`snapshot_due`]); `None` once a snapshot was asked for.
    logged: Option<u64>,
    /// Bytes counted towards snapshots ever applied (how far the log grew
    /// while a leader waits for a follower, see [`followers_close`]).
    logged_total: u64,
}

impl QueueState {
    /// Counts `bytes` applied towards the next snapshot.
    fn count_logged(&mut self, bytes: u64) {
        if let Some(logged) = self.logged.as_mut() {
            *logged += bytes;
        }
        self.logged_total += bytes;
    }
}

/// The place of a record not written to the segments yet (see
/// `QueueState::unwritten`); its length is the record's.
const UNWRITTEN: u32 = u32::MAX;
/// Bytes of records a member holds unwritten at most (per queue); the
/// oldest are written when there are more.
const UNWRITTEN_BYTES: u64 = 2 << 20;

impl QueueState {
    /// A message applied: its record waits in memory (see `unwritten`).
    fn enqueue(&mut self, id: u64, record: Bytes) -> Result<(), StoreError> {
        let len = u32::try_from(record.len()).map_err(|_| StoreError::RecordTooLarge {
            len: record.len(),
            max: u32::MAX,
        })?;
        let at = RecordRef {
            segment: UNWRITTEN,
            offset: 0,
            len,
        };
        self.set.messages.insert(
            id,
            Stored {
                at,
                delivery_count: 0,
                dying: None,
            },
        );
        self.unwritten_bytes += u64::from(len);
        if let Some(old) = self.unwritten.insert(id, record) {
            self.unwritten_bytes -= old.len() as u64;
        }
        self.write_unwritten(UNWRITTEN_BYTES)
    }

    /// A message gone for good.
    fn settle(&mut self, id: u64) {
        let Some(gone) = self.set.messages.remove(&id) else {
            return;
        };
        if gone.at.segment == UNWRITTEN {
            if let Some(r) = self.unwritten.remove(&id) {
                self.unwritten_bytes -= r.len() as u64;
            }
        } else {
            self.records.release(gone.at);
        }
    }

    /// Writes the oldest unwritten records to the segments until at most
    /// `keep` bytes of them are left.
    fn write_unwritten(&mut self, keep: u64) -> Result<(), StoreError> {
        while self.unwritten_bytes > keep {
            let Some((id, record)) = self.unwritten.pop_first() else {
                break;
            };
            self.unwritten_bytes -= record.len() as u64;
            let at = self.records.append(&record)?;
            if let Some(m) = self.set.messages.get_mut(&id) {
                m.at = at;
            }
        }
        Ok(())
    }

    /// Calls `f` with every message held, in id order, and its record.
    fn for_each_held(&mut self, mut f: impl FnMut(u64, Stored, Result<Bytes, StoreError>)) {
        let QueueState {
            set,
            records,
            unwritten,
            ..
        } = self;
        for (&id, &m) in &set.messages {
            f(id, m, read_record(records, unwritten, id, m.at));
        }
    }
}

/// A message's record, from memory or its segment.
fn read_record(
    records: &mut RecordSegments,
    unwritten: &BTreeMap<u64, Bytes>,
    id: u64,
    at: RecordRef,
) -> Result<Bytes, StoreError> {
    if at.segment == UNWRITTEN {
        return unwritten.get(&id).cloned().ok_or(StoreError::Records {
            path: records.dir().to_owned(),
            offset: 0,
            reason: format!("the record of message {id} is missing"),
        });
    }
    records.read(at)
}

/// The first bytes of a stream's snapshot as a member far behind gets it.
const STREAM_SNAPSHOT: &[u8; 4] = b"ASS1";
/// In place of a chunk's length: the chunks ended.
const STREAM_SNAPSHOT_END: u32 = u32::MAX;

/// Writes a stream's snapshot for a member far behind: the id its group
/// gives the next message, the offset after the last chunk, then the
/// stream's chunks, each with its length (4 bytes, little-endian) first,
/// then [`STREAM_SNAPSHOT_END`]. Chunk by chunk, never all in memory.
fn write_stream_snapshot(
    out: &mut dyn Write,
    next_id: u64,
    chunks: &mut ChunkSource,
) -> std::io::Result<()> {
    out.write_all(STREAM_SNAPSHOT)?;
    out.write_all(&next_id.to_le_bytes())?;
    out.write_all(&chunks.next_offset().to_le_bytes())?;
    while let Some(c) = chunks.next_chunk().map_err(io_err)? {
        // A chunk is at most a stream frame's size, far below 4 GiB.
        let len = u32::try_from(c.len())
            .ok()
            .filter(|&l| l != STREAM_SNAPSHOT_END)
            .ok_or_else(|| io_err("a stream chunk over 4 GiB"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&c)?;
    }
    out.write_all(&STREAM_SNAPSHOT_END.to_le_bytes())
}

/// Reads what [`write_stream_snapshot`] wrote: the next id, the next
/// offset, and the chunks, one at a time.
fn read_stream_snapshot<R: Read>(
    mut r: R,
) -> std::io::Result<(u64, u64, impl Iterator<Item = Result<Bytes, BrokerError>>)> {
    let mut head = [0u8; 20];
    r.read_exact(&mut head)?;
    if &head[..4] != STREAM_SNAPSHOT {
        return Err(io_err("not a stream snapshot"));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (next_id, next) = (u64_at(4), u64_at(12));
    let mut ended = false;
    let chunks = std::iter::from_fn(move || {
        if ended {
            return None;
        }
        let failed =
            |e: std::io::Error| BrokerError::Internal(format!("reading a stream snapshot: {e}"));
        let mut len = [0u8; 4];
        if let Err(e) = r.read_exact(&mut len) {
            ended = true;
            return Some(Err(failed(e)));
        }
        let len = u32::from_le_bytes(len);
        if len == STREAM_SNAPSHOT_END {
            ended = true;
            return None;
        }
        let mut chunk = vec![0u8; len as usize];
        match r.read_exact(&mut chunk) {
            Ok(()) => Some(Ok(Bytes::from(chunk))),
            Err(e) => {
                ended = true;
                Some(Err(failed(e)))
            }
        }
    });
    Ok((next_id, next, chunks))
}

/// A snapshot's data as openraft moves it: an unnamed file in `dir`
/// (gone once closed) holding what `write` wrote, read from its start.
/// A snapshot sent to a member far behind is read from it a chunk at a
/// time, and one received is written to one, so neither is ever in memory
/// whole (a stream's is its whole log).
fn snapshot_data(
    dir: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<Box<tokio::fs::File>> {
    let mut out = BufWriter::new(tempfile::tempfile_in(dir)?);
    write(&mut out)?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

/// Copies the live records of mostly dead segments to the head (at most
/// [`COMPACT_BYTES`] of them), so that a few old messages do not keep
/// whole segments on disk: the old segments go once the snapshot that
/// follows is durable.
fn compact(st: &mut QueueState) -> Result<(), StoreError> {
    let sparse = st.records.sparse();
    if sparse.is_empty() {
        return Ok(());
    }
    let mut budget = COMPACT_BYTES;
    let QueueState { set, records, .. } = st;
    for m in set.messages.values_mut() {
        if budget == 0 {
            break;
        }
        if !sparse.contains(&m.at.segment) {
            continue;
        }
        let record = records.read(m.at)?;
        let at = records.append(&record)?;
        records.release(m.at);
        m.at = at;
        budget = budget.saturating_sub(u64::from(at.len));
    }
    Ok(())
}

/// Where to cut a list of items of `sizes` bytes so that its first part
/// stays within `cap` bytes (at least one item goes, however large):
/// None if all of it fits.
fn cut_within(sizes: impl ExactSizeIterator<Item = u64>, cap: u64) -> Option<usize> {
    let len = sizes.len();
    let mut bytes = 0;
    sizes
        .map(|size| {
            bytes += size;
            bytes
        })
        .position(|bytes| bytes > cap)
        .map(|k| k.max(1))
        .filter(|&k| k < len)
}

/// About the bytes an entry takes in an append request (see
/// [`codec::entry_len`]).
fn entry_bytes(e: &Entry<QueueTypeConfig>) -> u64 {
    codec::entry_len(e) as u64
}

/// A stream's log could not take what the group applied.
fn stream_failed(dir: &Path, e: &BrokerError) -> StoreError {
    StoreError::Records {
        path: dir.to_owned(),
        offset: 0,
        reason: e.to_string(),
    }
}

/// What a group replicates, as the broker holds it on this node: a
/// quorum queue (its engine runs on the leader) or a stream (every member
/// appends what it applies to its own log, see
/// [`antre_broker::stream::Stream::replica_append`]).
#[derive(Clone)]
pub(crate) enum Target {
    /// A quorum queue.
    Queue(Arc<Queue>),
    /// A stream.
    Stream(Arc<Stream>),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Queue(q) => &q.name,
            Target::Stream(s) => &s.name,
        }
    }

    /// For the log lines the group shares with quorum queues (whose texts
    /// scripts and tests look for): `quorum` or `stream`.
    fn kind(&self) -> &'static str {
        match self {
            Target::Queue(_) => "quorum",
            Target::Stream(_) => "stream",
        }
    }

    fn queue(&self) -> Option<&Arc<Queue>> {
        match self {
            Target::Queue(q) => Some(q),
            Target::Stream(_) => None,
        }
    }

    fn stream(&self) -> Option<&Arc<Stream>> {
        match self {
            Target::Queue(_) => None,
            Target::Stream(s) => Some(s),
        }
    }

    /// Hands the broker's object its replication; false if it has one.
    fn set_replica(&self, replica: Arc<dyn QueueReplica>) -> bool {
        match self {
            Target::Queue(q) => q.set_replica(replica),
            Target::Stream(s) => s.set_replica(replica),
        }
    }

    fn downgrade(&self) -> WeakTarget {
        match self {
            Target::Queue(q) => WeakTarget::Queue(Arc::downgrade(q)),
            Target::Stream(s) => WeakTarget::Stream(Arc::downgrade(s)),
        }
    }
}

/// A [`Target`] that does not keep the broker's object alive.
pub(crate) enum WeakTarget {
    Queue(Weak<Queue>),
    Stream(Weak<Stream>),
}

impl WeakTarget {
    fn alive(&self) -> bool {
        match self {
            WeakTarget::Queue(q) => q.strong_count() > 0,
            WeakTarget::Stream(s) => s.strong_count() > 0,
        }
    }

    fn is(&self, target: &Target) -> bool {
        match (self, target) {
            (WeakTarget::Queue(w), Target::Queue(q)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(q)),
            (WeakTarget::Stream(w), Target::Stream(s)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(s)),
            _ => false,
        }
    }
}

/// What ties a group to the broker's engine of its queue on this node.
struct Engine {
    broker: Arc<Broker>,
    target: Target,
    /// This node leads and the engine holds the applied messages: applied
    /// enqueues go to it.
    active: AtomicBool,
    /// The Raft term this node's engine leads in (set as it takes over):
    /// the tag of its proposals ([`QueueOps::term`]).
    term: std::sync::atomic::AtomicU64,
    /// Messages this leader proposed, by id, so its apply need not decode
    /// their records again; also what `reject-publish` counts as on its way
    /// in ([`QueueReplica::in_flight`]).
    proposed: Mutex<Proposed>,
    /// Counts the snapshots this member installed: each ends the wait of
    /// the proposals it made as an earlier leader (see [`propose_loop`]).
    snapshots_installed: tokio::sync::watch::Sender<u64>,
    /// Whether this node knows where the queue is served: its engine
    /// leads, or [`lead_loop`] named the leader's node as the queue's
    /// remote owner. False between a step-down and news of the next
    /// leader, when a get here would find the idle engine empty.
    located: tokio::sync::watch::Sender<bool>,
    /// Whether a majority still follows this leader (see [`fence`]).
    fence: Arc<fence::Fence>,
    /// True while this node, elected, takes the queue over ([`take_over`]):
    /// see [`QueueReplica::taking_over`].
    taking_over: tokio::sync::watch::Sender<bool>,
}

/// A leader's proposed enqueues not applied yet.
#[derive(Default)]
struct Proposed {
    /// By id, which grows in log order.
    messages: BTreeMap<u64, Arc<Message>>,
    /// Their bodies' bytes.
    bytes: u64,
}

impl Proposed {
    fn insert(&mut self, id: u64, message: Arc<Message>) {
        self.bytes += message.body.len() as u64;
        if let Some(old) = self.messages.insert(id, message) {
            self.bytes -= old.body.len() as u64;
        }
    }

    fn get(&self, id: u64) -> Option<Arc<Message>> {
        self.messages.get(&id).cloned()
    }

    /// The count and bytes of those from `from_id` on. Those below it are
    /// applied already, waiting only to be removed: a few at most.
    fn from(&self, from_id: u64) -> (u64, u64) {
        let applied = self.messages.range(..from_id);
        let (n, bytes) = applied.fold((0, 0), |(n, b), (_, m)| (n + 1, b + m.body.len() as u64));
        (self.messages.len() as u64 - n, self.bytes - bytes)
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Message>> {
        let m = self.messages.remove(&id)?;
        self.bytes -= m.body.len() as u64;
        Some(m)
    }

    /// Leadership began or ended: what was proposed before is either
    /// applied from the log by the new engine or never will be.
    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

impl Engine {
    /// The engine of `target`, idle until this node leads its group.
    fn new(broker: Arc<Broker>, target: Target, timing: crate::config::RaftTiming) -> Arc<Engine> {
        let queue = target.queue().map_or_else(Weak::new, Arc::downgrade);
        let fence = Arc::new(fence::Fence::new(queue, timing.fence()));
        Arc::new(Engine {
            broker,
            target,
            active: AtomicBool::new(false),
            term: std::sync::atomic::AtomicU64::new(0),
            proposed: Mutex::default(),
            snapshots_installed: tokio::sync::watch::Sender::new(0),
            located: tokio::sync::watch::Sender::new(false),
            taking_over: tokio::sync::watch::Sender::new(false),
            fence,
        })
    }

    fn route_dead_letters(&self) {
        let Some(queue) = self.target.queue() else {
            return;
        };
        if let Some(v) = self.broker.vhost(&queue.vhost) {
            let _ = v.route_dead_letters(queue);
        }
    }
}

/// The state machine of one member; clones share it.
#[derive(Clone)]
struct QueueMachine {
    state: Arc<Mutex<QueueState>>,
    engine: Arc<Engine>,
    dir: PathBuf,
    /// Woken when a snapshot is due by size ([`snapshot_due`]): the
    /// group's task asks openraft for one.
    snapshot_due: Arc<tokio::sync::Notify>,
    /// Held while a snapshot is built, installed or read for a member:
    /// each replaces or reads the snapshot file and the record segments
    /// it refers to.
    snapshotting: Arc<Mutex<()>>,
    /// Told of each snapshot once it is on disk: the log's purges wait
    /// for it.
    floor: Arc<SnapshotFloor>,
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Most bytes of messages an apply runs on the Raft runtime's worker.
const LIGHT_APPLY_BYTES: usize = 1 << 20;

/// Whether `entries` are a light apply: at most [`LIGHT_APPLY_BYTES`] of
/// messages.
fn light(entries: &[Entry<QueueTypeConfig>]) -> bool {
    let mut bytes = 0;
    for e in entries {
        if let EntryPayload::Normal(ops) = &e.payload {
            bytes += ops.enqueue.iter().map(|(_, b)| b.0.len()).sum::<usize>();
            if bytes > LIGHT_APPLY_BYTES {
                return false;
            }
        }
    }
    true
}

fn decode(record: &[u8]) -> Option<Arc<Message>> {
    match Message::from_record(record) {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            tracing::error!("dropping an undecodable replicated message: {e}");
            None
        }
    }
}

impl QueueMachine {
    fn open(dir: &Path, engine: Arc<Engine>) -> Result<QueueMachine, ClusterError> {
        let storage = |e: &dyn std::fmt::Display| ClusterError::Storage(e.to_string());
        let stored = read_snapshot_file(dir).map_err(|e| storage(&e))?;
        let records_dir = dir.join(RECORDS_DIR);
        // Restart: the state is the snapshot's; openraft applies the log's
        // committed entries after it again (their records are appended
        // again: the segments are cut back to the snapshot's mark).
        let (snapshot, set, records) = match stored {
            Some((meta, data)) if codec::is_refs(&data) => {
                let (set, mark) = codec::decode_refs(&data).map_err(|e| storage(&e))?;
                let live = set.messages.values().map(|m| &m.at);
                let records = RecordSegments::open(&records_dir, Some(mark), live)
                    .map_err(|e| storage(&e))?;
                (Some(meta), set, records)
            }
            Some((meta, data)) => {
                // An older version's snapshot, records inside: they move to
                // the record segments, and the snapshot to references.
                let full = codec::decode_messages(&data).map_err(|e| storage(&e))?;
                let mut records =
                    RecordSegments::open(&records_dir, None, []).map_err(|e| storage(&e))?;
                let set = StoredSet::store(full, &mut records).map_err(|e| storage(&e))?;
                let (sync, mark) = records.to_sync().map_err(|e| storage(&e))?;
                sync.run().map_err(|e| storage(&e))?;
                write_snapshot_file(dir, &meta, &codec::encode_refs(&set, mark))
                    .map_err(|e| storage(&e))?;
                (Some(meta), set, records)
            }
            None => {
                let records =
                    RecordSegments::open(&records_dir, None, []).map_err(|e| storage(&e))?;
                (None, StoredSet::default(), records)
            }
        };
        let last_applied = snapshot.as_ref().and_then(|m| m.last_log_id);
        let membership = snapshot
            .as_ref()
            .map(|m| m.last_membership.clone())
            .unwrap_or_default();
        Ok(QueueMachine {
            state: Arc::new(Mutex::new(QueueState {
                last_applied,
                membership,
                set,
                records,
                unwritten: BTreeMap::new(),
                unwritten_bytes: 0,
                snapshot,
                logged: Some(0),
                logged_total: 0,
            })),
            engine,
            dir: dir.to_owned(),
            snapshot_due: Arc::default(),
            snapshotting: Arc::default(),
            floor: Arc::new(SnapshotFloor::new(last_applied)),
        })
    }

    /// Applies entries; on the active leader, new messages go to the
    /// engine (under the state's lock, so a takeover sees each message
    /// exactly once: in the set it starts from, or applied after). A
    /// record that cannot be written stops the member (a storage error).
    fn apply_entries(&self, entries: Vec<Entry<QueueTypeConfig>>) -> Result<usize, StoreError> {
        let n = entries.len();
        let mut st = self.state.lock();
        let active = self.engine.active.load(Ordering::Acquire);
        let stream = self.engine.target.stream();
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(ops) if ops.stale(entry.log_id.leader_id.term) => {
                    tracing::info!(
                        group = self.engine.target.name(),
                        "ignoring an entry proposed in an earlier leadership of its leader"
                    );
                }
                EntryPayload::Normal(ops) => {
                    st.count_logged(ENTRY_WEIGHT);
                    for id in &ops.returned {
                        if let Some(m) = st.set.messages.get_mut(id) {
                            m.delivery_count += 1;
                        }
                    }
                    for (id, code) in &ops.dead_lettered {
                        if let Some(m) = st.set.messages.get_mut(id) {
                            m.dying = Some(*code);
                        }
                    }
                    for &id in &ops.settle {
                        st.settle(id);
                    }
                    if let Some(stream) = stream {
                        self.append_to_stream(&mut st, stream, ops.enqueue)?;
                        for (reference, offset) in &ops.offsets {
                            stream
                                .replica_store_offset(reference, *offset)
                                .map_err(|e| stream_failed(&self.dir, &e))?;
                        }
                        st.last_applied = Some(entry.log_id);
                        continue;
                    }
                    // Messages sent again that were applied before.
                    let applied = st.set.seen.admit(&ops.sources, entry.log_id.index);
                    for (id, record) in ops.enqueue {
                        st.count_logged(record.0.len() as u64);
                        st.set.next_id = st.set.next_id.max(id + 1);
                        if applied.binary_search(&id).is_ok() {
                            // Its first copy is in the set (or was, and
                            // is settled); the proposer's confirm stands.
                            if active {
                                self.engine.proposed.lock().remove(id);
                            }
                            continue;
                        }
                        if active {
                            // Out of `proposed` only once the engine has
                            // it, so that `reject-publish` always counts it
                            // in one of them ([`QueueReplica::in_flight`]).
                            let cached = self.engine.proposed.lock().get(id);
                            if let (Some(m), Some(queue)) = (
                                cached.or_else(|| decode(&record.0)),
                                self.engine.target.queue(),
                            ) {
                                queue.replica_enqueue(id, m);
                            }
                            self.engine.proposed.lock().remove(id);
                        }
                        st.enqueue(id, record.0)?;
                    }
                }
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            st.last_applied = Some(entry.log_id);
        }
        // Into the page cache now: a buffer per queue would stay allocated
        // on every member of every queue.
        st.records.flush()?;
        if st
            .logged
            .is_some_and(|logged| snapshot_due(logged, st.set.messages.len()))
        {
            st.logged = None;
            self.snapshot_due.notify_one();
        }
        drop(st);
        if active {
            self.engine.route_dead_letters();
        }
        Ok(n)
    }

    /// A stream's applied messages: into this member's log, at the ids the
    /// leader gave them (their offsets). The group keeps no message set
    /// for a stream: its log is the state, and a snapshot only marks how
    /// far it is durable.
    fn append_to_stream(
        &self,
        st: &mut QueueState,
        stream: &Stream,
        enqueue: Vec<(u64, Body)>,
    ) -> Result<(), StoreError> {
        for (id, record) in &enqueue {
            st.count_logged(record.0.len() as u64);
            st.set.next_id = st.set.next_id.max(id + 1);
        }
        stream
            .replica_append(enqueue.iter().map(|(id, r)| (*id, &r.0)))
            .map_err(|e| stream_failed(&self.dir, &e))
    }

    /// Makes `set` (with the records it refers to, as they are in the
    /// segments at `mark` once `sync` ran) this member's snapshot on disk,
    /// then deletes the segments only older snapshots referred to.
    fn persist(
        &self,
        meta: &QueueSnapshotMeta,
        data: &[u8],
        sync: RecordSync,
        mark: Mark,
        referred: &BTreeSet<u32>,
    ) -> Result<(), std::io::Error> {
        sync.run().map_err(io_err)?;
        write_snapshot_file(&self.dir, meta, data)?;
        self.floor.durable(meta.last_log_id);
        let mut st = self.state.lock();
        st.snapshot = Some(meta.clone());
        st.records.collect(mark, referred).map_err(io_err)
    }
}

impl RaftSnapshotBuilder<QueueTypeConfig> for QueueMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<QueueTypeConfig>> {
        let this = self.clone();
        blocking(move || {
            let _one = this.snapshotting.lock();
            let mut st = this.state.lock();
            st.logged = Some(0);
            let snapshot_id = match st.last_applied {
                Some(l) => format!("{}-{}", l.leader_id, l.index),
                None => "-".into(),
            };
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id,
            };
            let write_err = |e: &dyn std::fmt::Display| {
                StorageIOError::write_snapshot(Some(meta.signature()), &io_err(e))
            };
            // Under the lock (which applies wait for): the newest records
            // and the references, 24 bytes a message; the fsync of the
            // records is not.
            st.write_unwritten(0).map_err(|e| write_err(&e))?;
            compact(&mut st).map_err(|e| write_err(&e))?;
            let (sync, mark) = st.records.to_sync().map_err(|e| write_err(&e))?;
            let data = codec::encode_refs(&st.set, mark);
            let referred = st.set.segments();
            drop(st);
            if let Some(stream) = this.engine.target.stream() {
                // The log holds what the snapshot stands for.
                stream.replica_sync().map_err(|e| write_err(&e))?;
            }
            this.persist(&meta, &data, sync, mark, &referred)
                .map_err(|e| write_err(&e))?;
            // openraft 0.9 keeps only the meta of a snapshot built; what it
            // sends a member is get_current_snapshot's, records included.
            let snapshot =
                snapshot_data(&this.dir, |w| w.write_all(&data)).map_err(|e| write_err(&e))?;
            Ok(Snapshot { meta, snapshot })
        })
    }
}

impl RaftStateMachine<QueueTypeConfig> for QueueMachine {
    type SnapshotBuilder = QueueMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let st = self.state.lock();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry<QueueTypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<QueueTypeConfig>> = entries.into_iter().collect();
        // A quorum queue's apply of a round's entries changes memory and
        // at most copies 2 MiB of records into the page cache (the
        // snapshot fsyncs them): it runs on the state machine worker's
        // thread, as block_in_place's hand-off of the worker cost more
        // (one queue's confirmed rate was 8-14% lower with it,
        // BENCHMARKS.md). A large batch (a follower catching up) and a
        // stream's apply, which writes the stream's own log, do not hold
        // a worker of the Raft runtime.
        let n = if self.engine.target.stream().is_none() && light(&entries) {
            self.apply_entries(entries)
        } else {
            let this = self.clone();
            blocking(move || this.apply_entries(entries))
        }
        .map_err(|e| StorageIOError::write_state_machine(&io_err(e)))?;
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        snapshot_data(&self.dir, |_| Ok(()))
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    /// The records go to a fresh head segment; the old segments go once
    /// the snapshot referring to the new ones is durable.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let mut file = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        let installed = blocking(move || {
            let sig = || Some(meta.signature());
            let write_err =
                |e: &dyn std::fmt::Display| StorageIOError::write_snapshot(sig(), &io_err(e));
            let read_err =
                |e: &dyn std::fmt::Display| StorageIOError::read_snapshot(sig(), &io_err(e));
            file.rewind().map_err(|e| read_err(&e))?;
            let full = match this.engine.target.stream() {
                Some(stream) => {
                    // The sender's chunks replace this member's log, which
                    // is then what the snapshot stands for.
                    let (next_id, next, chunks) =
                        read_stream_snapshot(BufReader::new(file)).map_err(|e| read_err(&e))?;
                    let n = stream
                        .replica_install(next, chunks)
                        .map_err(|e| write_err(&e))?;
                    stream.replica_sync().map_err(|e| write_err(&e))?;
                    tracing::info!(
                        vhost = stream.vhost,
                        stream = stream.name,
                        chunks = n,
                        next_offset = next,
                        "stream replica installed its leader's chunks"
                    );
                    Messages {
                        messages: BTreeMap::new(),
                        next_id,
                        seen: sources::Seen::default(),
                    }
                }
                None => {
                    let mut data = Vec::new();
                    file.read_to_end(&mut data).map_err(|e| read_err(&e))?;
                    let full = codec::decode_messages(&data)
                        .map_err(|e| StorageIOError::read_snapshot(sig(), &e))?;
                    // openraft's own lines are off by default (see the
                    // binary's log filter): a member catching up this way
                    // is worth a line.
                    tracing::info!(
                        queue = this.engine.target.name(),
                        messages = full.messages.len(),
                        upto = ?meta.last_log_id,
                        "quorum queue replica installed its leader's snapshot"
                    );
                    full
                }
            };
            let _one = this.snapshotting.lock();
            let (set, sync, mark) = {
                let mut st = this.state.lock();
                st.records.restart().map_err(|e| write_err(&e))?;
                let set = StoredSet::store(full, &mut st.records).map_err(|e| write_err(&e))?;
                let (sync, mark) = st.records.to_sync().map_err(|e| write_err(&e))?;
                (set, sync, mark)
            };
            let refs = codec::encode_refs(&set, mark);
            let referred = set.segments();
            {
                let mut st = this.state.lock();
                st.logged = Some(0);
                st.set = set;
                st.unwritten.clear();
                st.unwritten_bytes = 0;
                st.last_applied = meta.last_log_id;
                st.membership = meta.last_membership.clone();
            }
            this.persist(&meta, &refs, sync, mark, &referred)
                .map_err(|e| write_err(&e))?;
            Ok(())
        });
        if installed.is_err() {
            self.floor.failed();
        }
        self.engine.snapshots_installed.send_modify(|n| *n += 1);
        installed
    }

    /// Only to send the snapshot to a member far behind: its records are
    /// read from the segments then, not kept in memory for the rare
    /// occasion.
    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<QueueTypeConfig>>> {
        if self.state.lock().snapshot.is_none() {
            return Ok(None);
        }
        let this = self.clone();
        blocking(move || {
            let read_err =
                |e: &dyn std::fmt::Display| StorageIOError::read_snapshot(None, &io_err(e));
            let _one = this.snapshotting.lock();
            let Some((meta, data)) = read_snapshot_file(&this.dir).map_err(|e| read_err(&e))?
            else {
                return Ok(None);
            };
            if let Some(stream) = this.engine.target.stream() {
                // A stream's snapshot is its log: every chunk, as it is.
                let (set, _) = codec::decode_refs(&data).map_err(|e| read_err(&e))?;
                let mut chunks = stream.replica_chunks().map_err(|e| read_err(&e))?;
                let snapshot = snapshot_data(&this.dir, |w| {
                    write_stream_snapshot(w, set.next_id, &mut chunks)
                })
                .map_err(|e| read_err(&e))?;
                return Ok(Some(Snapshot { meta, snapshot }));
            }
            let data = if codec::is_refs(&data) {
                let (set, _) = codec::decode_refs(&data).map_err(|e| read_err(&e))?;
                drop(data);
                let reader = this
                    .state
                    .lock()
                    .records
                    .reader()
                    .map_err(|e| read_err(&e))?;
                let bytes: u64 = set
                    .messages
                    .values()
                    .map(|m| 16 + u64::from(m.at.len))
                    .sum();
                let mut out = codec::MessagesEncoder::new(
                    set.next_id,
                    set.messages.len(),
                    usize::try_from(bytes).unwrap_or(usize::MAX),
                );
                for (&id, m) in &set.messages {
                    let record = reader.read(m.at).map_err(|e| read_err(&e))?;
                    out.push(id, m.delivery_count, &record);
                    if let Some(code) = m.dying {
                        out.dying(id, code);
                    }
                }
                out.seen(&set.seen);
                out.finish()
            } else {
                data
            };
            let snapshot =
                snapshot_data(&this.dir, |w| w.write_all(&data)).map_err(|e| read_err(&e))?;
            Ok(Some(Snapshot { meta, snapshot }))
        })
    }
}

/// What a leader's engine did since its last proposal.
#[derive(Default)]
struct Pending {
    ops: QueueOps,
    /// The batch the enqueues in `ops` confirm with, but for this node's
    /// own publishes numbered by the replica's run.
    batch: Option<Arc<PendingCommit>>,
    /// The batch this node's own numbered publishes in `ops` confirm with:
    /// sent on to the next leader if their entry is not committed in this
    /// leader's term (see [`send_on`]).
    local: Option<Arc<PendingCommit>>,
    /// The number this node's next publish gets in the replica's run.
    next_seq: u64,
    /// The id the next enqueue gets.
    next_id: u64,
    /// A stream's named publishers' last publishing ids this leader
    /// proposed (their log may not have them yet): a publish retried
    /// before its first copy was applied is a duplicate too.
    writers: HashMap<String, u64>,
}

impl Pending {
    /// Leadership came or went: nothing gathered is proposed. Returns this
    /// node's own numbered publishes among it, to be sent on.
    fn reset(&mut self, run: u64) -> Option<send_on::Unsure> {
        let ops = std::mem::take(&mut self.ops);
        self.writers.clear();
        if let Some(b) = self.batch.take() {
            b.complete(false);
        }
        let local = self.local.take()?;
        Some(send_on::Unsure::of(&ops, run, local))
    }

    /// The batch an enqueue gathered now confirms with: `local` for this
    /// node's own numbered publishes.
    fn batch(
        &mut self,
        syncer: Option<antre_broker::syncer::Syncer>,
        local: bool,
    ) -> Arc<PendingCommit> {
        let batch = if local {
            &mut self.local
        } else {
            &mut self.batch
        };
        Arc::clone(batch.get_or_insert_with(|| PendingCommit::new(syncer)))
    }

    /// What the next entry proposes: everything gathered, but for the
    /// messages past [`ENTRY_BYTES`] (at least one goes), which wait for
    /// the entry after. The batch they share then counts this entry as
    /// one part of it (committed once all its parts are).
    fn take_entry(&mut self) -> Taken {
        let sizes = self.ops.enqueue.iter().map(|(_, body)| body.0.len() as u64);
        match cut_within(sizes, ENTRY_BYTES) {
            Some(k) => {
                let rest = self.ops.enqueue.split_off(k);
                let sources = match rest.first() {
                    Some(&(from, _)) => sources::split_off(&mut self.ops.sources, from),
                    None => Vec::new(),
                };
                let ops = std::mem::replace(
                    &mut self.ops,
                    QueueOps {
                        enqueue: rest,
                        sources,
                        ..QueueOps::default()
                    },
                );
                let batch = self.batch.clone();
                let local = self.local.clone();
                for b in batch.iter().chain(&local) {
                    b.add_part();
                }
                Taken { ops, batch, local }
            }
            None => Taken {
                ops: std::mem::take(&mut self.ops),
                batch: self.batch.take(),
                local: self.local.take(),
            },
        }
    }
}

/// One entry's worth of what a leader gathered, and the batches its
/// publishes confirm with.
struct Taken {
    ops: QueueOps,
    batch: Option<Arc<PendingCommit>>,
    local: Option<Arc<PendingCommit>>,
}

/// The replication of one queue on one member: what the broker's engine
/// calls ([`QueueReplica`]).
struct Replica {
    engine: Arc<Engine>,
    state: Arc<Mutex<QueueState>>,
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
    /// The group's id, and the node's groups: a stream's member that does
    /// not lead hands stored offsets to the leader through them.
    group: String,
    groups: Weak<QueueGroups>,
    /// A stream's stored offsets waiting to go to the leader (the newest
    /// of each consumer), and whether a task is sending them.
    offsets_to_forward: Mutex<HashMap<String, u64>>,
    forwarding: AtomicBool,
    /// A stream's single-active-consumer coordination.
    consumers: consumers::Consumers,
    /// This replica's run (drawn when it starts): with a number per
    /// publish, what makes this node's own publishes to the queue sent on
    /// to its next leader stored once (see [`send_on`]).
    run: u64,
    /// Whether this node's publishes are numbered: feature flag
    /// `quorum_queue_forwarded_publish_dedupe`, as the forwarder numbers
    /// its messages.
    numbering: crate::feature_flags::FlagSeen,
}

impl Replica {
    /// A failed batch: its publishes are nacked (leadership moved).
    fn failed(&self) -> Arc<dyn Durable> {
        PendingCommit::done(self.engine.broker.syncer().cloned(), false)
    }

    /// Stores stream consumers' offsets through the group, on its
    /// leader.
    fn store_offsets_here(&self, offsets: Vec<(String, u64)>) -> Result<(), BrokerError> {
        if !self.engine.active.load(Ordering::Acquire) {
            return Err(BrokerError::Internal("not the stream's leader".into()));
        }
        self.pending.lock().ops.offsets.extend(offsets);
        self.wake.notify_one();
        Ok(())
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("queue", &self.engine.target.name())
            .finish_non_exhaustive()
    }
}

impl QueueReplica for Replica {
    fn enqueue(
        &self,
        message: &Arc<Message>,
        source: Option<antre_broker::replicated::Source>,
    ) -> Result<Arc<dyn Durable>, BrokerError> {
        let syncer = self.engine.broker.syncer().cloned();
        let stream = self.engine.target.stream();
        if !self.engine.active.load(Ordering::Acquire) {
            // Leadership moved a moment ago: sent on to the next leader,
            // as a publish this node took before (a stream's publisher
            // gets a nack).
            let own = match source {
                None if stream.is_none() && self.numbers() => Some(self.pending.lock().number()),
                Some(s) if stream.is_none() && s.run == self.run => Some(s.seq),
                _ => None,
            };
            let Some(seq) = own else {
                return Ok(self.failed());
            };
            let local = PendingCommit::new(syncer);
            self.send_on(vec![(seq, Arc::clone(message))], Arc::clone(&local));
            return Ok(local);
        }
        // A stream's record is encoded once, here: every member appends it
        // as it is, and no engine needs the message back at apply.
        let body = match stream {
            Some(stream) => stream.replica_record(message),
            None => message.record().clone(),
        };
        let mut p = self.pending.lock();
        let id = p.next_id;
        p.next_id += 1;
        p.ops.enqueue.push((id, Body(body)));
        let mut local = false;
        if stream.is_none() {
            // This node's own publish is numbered too, by the replica's
            // run: should this leader be deposed before its entry
            // commits, it is sent on to the next (see [`send_on`]).
            let source = match source {
                None if self.numbers() => Some(antre_broker::replicated::Source {
                    run: self.run,
                    seq: p.number(),
                }),
                source => source,
            };
            if let Some(source) = source {
                local = source.run == self.run;
                sources::push(&mut p.ops.sources, source, id);
            }
            self.engine.proposed.lock().insert(id, Arc::clone(message));
        }
        let batch = p.batch(syncer, local);
        drop(p);
        self.wake.notify_one();
        Ok(batch)
    }

    fn leads(&self) -> bool {
        self.engine.active.load(Ordering::Acquire)
    }

    fn taking_over(&self) -> Option<antre_broker::replicated::TakeOver> {
        // Asked for every forwarded batch: a receiver only when one waits.
        if !*self.engine.taking_over.borrow() {
            return None;
        }
        let mut rx = self.engine.taking_over.subscribe();
        Some(Box::pin(async move {
            let _ = rx.wait_for(|taking| !*taking).await;
        }))
    }

    fn may_deliver(&self) -> bool {
        let fence = &self.engine.fence;
        let open = fence.open();
        if !open && self.engine.active.load(Ordering::Acquire) && fence.first_hold() {
            // Why a queue stopped delivering, for its operator: this node
            // may be cut off from the others, or they may be slow.
            tracing::warn!(
                group = self.group,
                "no majority of the quorum queue's members answered this leader within the fence: its deliveries wait"
            );
        }
        open
    }

    fn await_location(&self) -> bool {
        let engine = &self.engine;
        let mut located = engine.located.subscribe();
        let mut opened = engine.fence.opened.subscribe();
        // Placed: led here behind an open fence, or by another node.
        let placed = |located: bool| {
            located && (!engine.active.load(Ordering::Acquire) || engine.fence.open())
        };
        if placed(*located.borrow_and_update()) {
            return true;
        }
        let Some(within) = self.groups.upgrade().map(|g| g.link.config.change_timeout) else {
            return false;
        };
        let wait = async {
            loop {
                tokio::select! {
                    r = located.changed() => if r.is_err() { return false },
                    r = opened.changed() => if r.is_err() { return false },
                }
                if placed(*located.borrow_and_update()) {
                    return true;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                let waited =
                    tokio::task::block_in_place(|| h.block_on(tokio::time::timeout(within, wait)));
                waited.unwrap_or(false)
            }
            // Nothing can change while this thread waits.
            _ => false,
        }
    }

    fn publish_records(
        &self,
        writer: Option<&str>,
        records: Vec<(u64, Bytes)>,
        accepted: &mut Vec<bool>,
    ) -> Result<Arc<dyn Durable>, BrokerError> {
        accepted.clear();
        let Some(stream) = self.engine.target.stream() else {
            return Err(BrokerError::Internal("not a stream".into()));
        };
        if !self.engine.active.load(Ordering::Acquire) {
            accepted.resize(records.len(), true);
            return Ok(self.failed());
        }
        // Read before the pending lock (the stream's lock is never taken
        // under it); what this leader proposed since is in `writers`.
        let logged = writer.and_then(|w| stream.last_sequence(w));
        let syncer = self.engine.broker.syncer().cloned();
        let mut p = self.pending.lock();
        let mut last = writer.map(|w| p.writers.get(w).copied().max(logged));
        for (publishing_id, body) in records {
            if let Some(last) = &mut last {
                if last.is_some_and(|l| publishing_id <= l) {
                    accepted.push(false);
                    continue;
                }
                *last = Some(publishing_id);
            }
            let id = p.next_id;
            p.next_id += 1;
            p.ops.enqueue.push((id, Body(body)));
            accepted.push(true);
        }
        if let (Some(w), Some(Some(l))) = (writer, last) {
            p.writers.insert(w.to_owned(), l);
        }
        if !accepted.iter().any(|a| *a) {
            // Only duplicates: confirmed at once, as RabbitMQ does.
            drop(p);
            return Ok(PendingCommit::done(syncer, true));
        }
        let batch = p.batch(syncer, false);
        drop(p);
        self.wake.notify_one();
        Ok(batch)
    }

    fn store_offset(&self, reference: &str, offset: u64) -> Result<(), BrokerError> {
        let offsets = vec![(reference.to_owned(), offset)];
        if self.store_offsets_here(offsets).is_ok() {
            return Ok(());
        }
        // Not the leader: handed to it by one task at a time, over one
        // connection, the newest offset of each consumer (a consumer may
        // store after every message).
        self.offsets_to_forward
            .lock()
            .insert(reference.to_owned(), offset);
        if !self.forwarding.swap(true, Ordering::AcqRel) {
            let Some(groups) = self.groups.upgrade() else {
                return Err(BrokerError::Internal("the node is stopping".into()));
            };
            let Some(me) = groups.group(&self.group).map(|g| Arc::clone(&g.replica)) else {
                self.forwarding.store(false, Ordering::Release);
                return Err(BrokerError::NotFound(
                    "no replica of the stream here".into(),
                ));
            };
            groups
                .runtime
                .clone()
                .spawn(async move { groups.forward_offsets(&me).await });
        }
        Ok(())
    }

    fn report_consumers(
        &self,
        report: antre_broker::stream::sac::Report,
        answer: antre_broker::replicated::SacAnswer,
    ) {
        let Some(groups) = self.groups.upgrade() else {
            answer(Err("the node is stopping".into()));
            return;
        };
        let group = self.group.clone();
        groups
            .runtime
            .clone()
            .spawn(async move { answer(groups.report_consumers(&group, report).await) });
    }

    fn settle(&self, id: u64) {
        self.pending.lock().ops.settle.push(id);
        self.wake.notify_one();
    }

    fn returned(&self, id: u64) {
        self.pending.lock().ops.returned.push(id);
        self.wake.notify_one();
    }

    fn dead_lettered(&self, id: u64, reason: DeathReason) {
        let code = death_code(reason);
        self.pending.lock().ops.dead_lettered.push((id, code));
        self.wake.notify_one();
    }

    fn replicated_messages(&self) -> u64 {
        self.state.lock().set.messages.len() as u64
    }

    fn in_flight(&self, from_id: u64) -> (u64, u64) {
        self.engine.proposed.lock().from(from_id)
    }
}

/// One member's replica of a queue's group.
pub struct Group {
    def: QuorumDef,
    raft: QueueRaft,
    machine: QueueMachine,
    replica: Arc<Replica>,
    log: LogStore<QueueTypeConfig>,
    dir: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    /// Proposals held while leadership is transferred (see [`members`]).
    paused: AtomicBool,
    /// When its leader last sent entries or a new commit index (shared
    /// with its network, see [`GroupNetwork`]).
    busy: Arc<Mutex<Activity>>,
    /// Its openraft timer and heartbeats, set by [`lead_loop`] when the
    /// member is elected or steps down and by [`pace_idle_heartbeats`]
    /// while it leads.
    timer: Mutex<Timer>,
    /// When this member last heard its leader by a lease ([`leases`]).
    heard: crate::election::Heard,
}

/// What openraft is told about a member's timer (its tick) and heartbeats
/// (openraft has no getters for them).
#[derive(Debug)]
struct Timer {
    /// Whether the member leads, as [`lead_loop`] last saw it (None
    /// before its first look): the pacing task visits only leaders, and
    /// changes nothing once the leadership loop has seen a step-down.
    leads: Option<bool>,
    ticking: bool,
}

impl Group {
    /// [`lead_loop`] sees whether this member leads; only a change (or
    /// the first look) changes anything. An elected member's timer runs
    /// (its heartbeats) until the pacing task finds the group idle; a
    /// member that does not lead has it off (it does nothing there with
    /// elections off) and openraft's heartbeats on, for when it is
    /// elected again.
    fn led(&self, leads: bool) {
        let mut t = self.timer.lock();
        if t.leads == Some(leads) {
            return;
        }
        t.leads = Some(leads);
        if !leads {
            self.raft.runtime_config().heartbeat(true);
        }
        self.set_ticking(&mut t, leads);
    }

    /// Whether [`lead_loop`] last saw this member lead.
    fn leads(&self) -> bool {
        self.timer.lock().leads == Some(true)
    }

    /// The pacing task's settings for a leader, unless it stepped down.
    fn pace(&self, heartbeats: bool, ticking: bool) {
        let mut t = self.timer.lock();
        if t.leads == Some(true) {
            self.raft.runtime_config().heartbeat(heartbeats);
            self.set_ticking(&mut t, ticking);
        }
    }

    fn set_ticking(&self, t: &mut Timer, on: bool) {
        if t.ticking != on {
            t.ticking = on;
            self.raft.runtime_config().tick(on);
        }
    }
}

/// When a group's leader last sent a member entries or a new commit
/// index, and that index.
type Activity = (std::time::Instant, Option<LogId<NodeId>>);

/// An idle group's leader heartbeats once every this many heartbeat
/// intervals (see [`pace_idle_heartbeats`]).
const IDLE_HEARTBEAT_EVERY: u32 = 3;

/// Paces the heartbeats of the groups this node leads: at the configured
/// interval while a group is busy, once every [`IDLE_HEARTBEAT_EVERY`]
/// intervals once it is idle (as its heartbeats are batched: nothing sent
/// for a second but heartbeats), and then, if its membership is settled,
/// as leases that no Raft core handles ([`leases`]).
///
/// An idle queue's heartbeats were most of what it costs: each wakes the
/// Raft core on the leader and on both followers, 10 a second per queue
/// (RabbitMQ's Ra sends none). A follower stands only once its leader's
/// lease (the longest election timeout) and an election timeout passed
/// without a heartbeat, so one every 3 intervals (0.3 s by default, the
/// lease 0.8 s; the timing requires elections to wait at least 3
/// intervals) keeps every lease with room for a late one. A dead leader
/// is still noticed at once by the node's failure detection
/// ([`crate::failover`]); a cut-off leader of an idle queue up to two
/// intervals later. A busy group is left to openraft: a follower is sent
/// one request at a time, and a busy group's heartbeats carry its commit
/// index. A group whose leadership is being transferred is left alone
/// (the transfer turns its heartbeats off).
///
/// openraft's timer (its tick, every 1.5 heartbeat intervals) runs only
/// for the leaders of busy groups. With elections left to
/// [`crate::election`], it does nothing on a follower and only sends an
/// idle leader's heartbeats, which are off: yet each tick woke the Raft
/// core of every replica, which then republished its metrics, 20 times
/// a second for an idle queue on three nodes (its paced heartbeats,
/// their answers and triggers, about 17).
async fn pace_idle_heartbeats(groups: Weak<QueueGroups>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks: u32 = 0;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        let Some(node) = groups.upgrade() else {
            return;
        };
        // Only the groups this node leads: the others' settings change
        // when they are elected or step down (Group::led).
        let leading: Vec<Arc<Group>> = node
            .groups
            .lock()
            .values()
            .filter(|g| g.leads())
            .cloned()
            .collect();
        let me = node.link.config.node_id();
        let beat_now = ticks.is_multiple_of(IDLE_HEARTBEAT_EVERY);
        let mut leases = leases::Round::default();
        for g in leading {
            if g.paused.load(Ordering::Acquire) {
                continue;
            }
            let idle = g.busy.lock().0.elapsed() >= IDLE_BEFORE_BATCHING;
            // openraft's timer, for what it does with elections off: a
            // leader's heartbeats, and stepping down once a membership
            // without it is committed (so a leader outside its voters,
            // one config and not a joint one naming it, keeps it).
            let rests = idle && {
                let m = g.raft.metrics();
                let m = m.borrow();
                let configs = m.membership_config.membership().get_joint_config();
                matches!(configs.as_slice(), [voters] if voters.contains(&me))
            };
            g.pace(!idle, !rests);
            // A settled idle group's members get a lease instead of a
            // heartbeat ([`leases`]); a membership being changed keeps
            // openraft's heartbeats, which its change waits on.
            if idle && beat_now && !(rests && leases.add(&g, me)) {
                if let Err(e) = g.raft.trigger().heartbeat().await {
                    tracing::debug!(group = g.def.group, "no heartbeat: {e}");
                }
            }
        }
        // As long as openraft gives a heartbeat to be answered.
        leases.send(&node.network, interval);
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("group", &self.def.group)
            .finish_non_exhaustive()
    }
}

/// The queue groups this node is a member of.
pub struct QueueGroups {
    pub(crate) link: Arc<Link>,
    /// The node's connections to its peers, shared with the metadata
    /// group (a leadership check gets a connection made already).
    network: NetworkFactory,
    broker: Arc<Broker>,
    dir: PathBuf,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    runtime: tokio::runtime::Handle,
    this: Weak<QueueGroups>,
    /// Where a member is dialled, from the metadata group's membership:
    /// a node that joined later is in no peer list.
    addresses: std::sync::OnceLock<AddressBook>,
    /// Every quorum queue's definition and the replica slot of each queue
    /// this node was a member of (see [`members`]).
    known: members::Known,
    /// One lock per group, held while its replica starts or stops: a
    /// replica removed and added again at once must not open its
    /// directory while the old one still writes to it (or is deleting it).
    lifecycle: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set by [`QueueGroups::shutdown`]: no replica starts after it.
    closed: AtomicBool,
    /// The groups' heartbeats to each member, batched.
    heartbeats: Arc<heartbeats::Heartbeats>,
    /// The stream members' reports to each stream leader's node, batched.
    reports: carriers::Carriers<consumers::StreamReport>,
    /// The node's forwarder: a deposed leader sends its node's publishes
    /// on through it (see [`send_on`]).
    forwarder: std::sync::OnceLock<Weak<crate::forward::Forwarder>>,
}

/// Looks up the address the metadata membership records for a node, by
/// its Raft id (a host name stays a name).
pub type AddressBook = Box<dyn Fn(NodeId) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for QueueGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGroups").finish_non_exhaustive()
    }
}

impl QueueGroups {
    /// The registry of a node whose cluster directory is `dir`; its
    /// groups run on `runtime` (the node's Raft runtime).
    pub fn new(
        network: NetworkFactory,
        broker: Arc<Broker>,
        dir: &Path,
        runtime: tokio::runtime::Handle,
    ) -> Arc<QueueGroups> {
        let interval = network.link.config.queue_timing.heartbeat;
        let groups = Arc::new_cyclic(|this| QueueGroups {
            link: Arc::clone(&network.link),
            network,
            broker,
            dir: dir.join("queues"),
            groups: Mutex::default(),
            runtime,
            this: this.clone(),
            addresses: std::sync::OnceLock::new(),
            known: members::Known::default(),
            lifecycle: Mutex::default(),
            closed: AtomicBool::new(false),
            heartbeats: Arc::default(),
            reports: carriers::Carriers::default(),
            forwarder: std::sync::OnceLock::new(),
        });
        groups
            .runtime
            .spawn(pace_idle_heartbeats(Arc::downgrade(&groups), interval));
        groups
    }

    /// Sets where members are dialled (the metadata group's membership);
    /// without it, only the peer list is known.
    pub fn set_address_book(&self, book: AddressBook) {
        let _ = self.addresses.set(book);
    }

    /// Gives the groups the node's forwarder.
    pub fn set_forwarder(&self, forwarder: &Arc<crate::forward::Forwarder>) {
        let _ = self.forwarder.set(Arc::downgrade(forwarder));
    }

    fn address_of(&self, id: NodeId) -> Option<std::net::SocketAddr> {
        self.link.config.listed_addr(id).or_else(|| {
            let recorded = self.addresses.get().and_then(|book| book(id))?;
            self.link.resolved(&recorded)
        })
    }

    /// What a group's membership records for node `id`: its entry in this
    /// node's list, else the metadata membership's; a host name as it is,
    /// which each member resolves (again when it moves).
    fn recorded_address(&self, id: NodeId) -> String {
        match self.link.config.peers.iter().find(|p| p.id() == id) {
            Some(p) => p.recorded(),
            None => self
                .addresses
                .get()
                .and_then(|book| book(id))
                .unwrap_or_default(),
        }
    }

    fn me(&self) -> &str {
        &self.link.config.node_name
    }

    /// Applies a quorum queue's definition on this node: records its
    /// members for listings, and starts this node's replica if it is one
    /// (in the background: openraft starts asynchronously).
    pub fn declared(&self, def: &QuorumDef) {
        self.remember(def);
        if let Some(v) = self.broker.vhost(&def.vhost) {
            let known = v.quorum_info(&def.name).unwrap_or_default();
            v.set_quorum_info(
                &def.name,
                Some(antre_broker::vhost::QuorumInfo {
                    members: def.members.clone(),
                    ..known
                }),
            );
        }
        if def.members.iter().any(|m| m == self.me())
            && !self.groups.lock().contains_key(&def.group)
        {
            if let Some(target) = self.target_of(def) {
                self.reserve(&target);
            }
            self.reconcile(&def.group);
        }
    }

    /// The broker created queue or stream `created` of `vhost` (applying
    /// a metadata change), not yet where clients find it: a member of its
    /// group reserves its slot at once (see [`QueueGroups::reserve`]). Its
    /// definition is remembered before the change is applied.
    pub fn created(&self, vhost: &str, created: antre_broker::cluster::Created<'_>) {
        let target = match created {
            antre_broker::cluster::Created::Queue(q) => Target::Queue(Arc::clone(q)),
            antre_broker::cluster::Created::Stream(s) => Target::Stream(Arc::clone(s)),
        };
        let member = self
            .def_of(vhost, target.name())
            .is_some_and(|d| d.members.iter().any(|m| m == self.me()));
        if member {
            self.reserve(&target);
        }
    }

    /// The broker's queue or stream of `def`, if it has it.
    fn target_of(&self, def: &QuorumDef) -> Option<Target> {
        let vhost = self.broker.vhost(&def.vhost)?;
        vhost
            .queue_info(&def.name)
            .map(Target::Queue)
            .or_else(|| vhost.stream(&def.name).map(Target::Stream))
    }

    /// The queue is gone: stops this node's replica and removes its data.
    pub fn deleted(&self, group: &str) {
        self.forget(group);
        self.reconcile(group);
    }

    /// Brings this node's replica of `group` in line with the definition
    /// it knows last (in the background): starts it if this node is a
    /// member, stops it and removes its data if not (or the queue is gone).
    /// Each run decides from the state it finds under the group's lock, so
    /// the runs may happen in any order: the last one sees the last
    /// definition, and a start never overlaps a removal.
    fn reconcile(&self, group: &str) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let lock = Arc::clone(self.lifecycle.lock().entry(group.to_owned()).or_default());
        let group = group.to_owned();
        self.runtime.spawn(async move {
            let _held = lock.lock().await;
            let def = this.def_by_group(&group);
            let wanted = def
                .as_ref()
                .filter(|d| d.members.iter().any(|m| m == this.me()));
            let running = this.group(&group);
            match (wanted, running) {
                (Some(def), None) if !this.closed.load(Ordering::Acquire) => {
                    if let Err(e) = Arc::clone(&this).start(def.clone()).await {
                        tracing::error!(
                            vhost = def.vhost,
                            queue = def.name,
                            "cannot start the quorum queue's replica: {e}"
                        );
                    }
                }
                (None, Some(g)) => {
                    this.groups.lock().remove(&group);
                    this.stop_replica(&g).await;
                    let why = if def.is_some() {
                        "this node is no longer a member of the quorum queue: replica removed"
                    } else {
                        "quorum queue replica removed"
                    };
                    tracing::info!(vhost = g.def.vhost, queue = g.def.name, "{why}");
                }
                (None, None) if def.is_none() => {
                    // Deleted before its replica started (or while this
                    // node was down): remove what a previous run left.
                    let _ = std::fs::remove_dir_all(this.dir.join(&group));
                }
                _ => {}
            }
            if def.is_none() {
                // The queue is gone for good (group ids are never reused):
                // its lock goes too, unless another run waits for it.
                let mut locks = this.lifecycle.lock();
                if locks.get(&group).is_some_and(|l| Arc::strong_count(l) == 2) {
                    locks.remove(&group);
                }
            }
        });
    }

    /// How many of this node's replicas have openraft's timer running:
    /// leaders of queues busy within the last second (see
    /// [`pace_idle_heartbeats`]).
    pub fn ticking(&self) -> usize {
        self.groups
            .lock()
            .values()
            .filter(|g| g.timer.lock().ticking)
            .count()
    }

    /// Each replica this node runs (quorum queues and streams), by vhost
    /// and queue name, in that order, with its Raft figures, for the
    /// metrics and the management API.
    pub fn raft_figures(&self) -> Vec<(String, String, crate::node::RaftFigures)> {
        let groups: Vec<Arc<Group>> = self.groups.lock().values().cloned().collect();
        let mut figures: Vec<_> = groups
            .iter()
            .map(|g| {
                let figures = crate::node::RaftFigures::of::<QueueTypeConfig>(
                    &g.raft.metrics().borrow(),
                    g.log.progress(),
                );
                (g.def.vhost.clone(), g.def.name.clone(), figures)
            })
            .collect();
        figures.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        figures
    }

    /// Groups this node runs, by id.
    pub fn running(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }

    /// Stops every replica (node shutdown), keeping their data.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let all: Vec<Arc<Group>> = self.groups.lock().drain().map(|(_, g)| g).collect();
        for g in all {
            g.stop.send_replace(true);
            let _ = g.raft.shutdown().await;
            g.log.close();
        }
    }

    async fn start(self: Arc<Self>, def: QuorumDef) -> Result<(), ClusterError> {
        let Some(queue) = self.target_of(&def) else {
            return Err(ClusterError::Config(format!(
                "quorum queue {} in {} does not exist here",
                def.name, def.vhost
            )));
        };
        let dir = self.dir.join(&def.group);
        std::fs::create_dir_all(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let log = LogStore::<QueueTypeConfig>::open(&dir)?;
        let engine = Engine::new(
            Arc::clone(&self.broker),
            queue.clone(),
            self.link.config.queue_timing,
        );
        let machine = QueueMachine::open(&dir, Arc::clone(&engine))?;
        let log = log.with_floor(Arc::clone(&machine.floor));
        // A stream takes publishes faster than a queue (batches of a
        // stream-protocol publisher), and a cluster has few streams: its
        // followers and its own apply read what they need from memory
        // rather than decoding it back from disk (which slowed a follower
        // under load, and so put it further behind).
        let log = match &queue {
            Target::Stream(_) => log.with_cache_bytes(STREAM_LOG_CACHE),
            Target::Queue(_) => log,
        };
        // Timing: a setting, crate::config::RaftTiming::QUEUE by default
        // (shorter than the metadata group's: publishers cannot wait).
        let config = openraft::Config {
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: KEEP_AFTER_SNAPSHOT,
            ..self
                .link
                .config
                .queue_timing
                .raft_config(format!("antre-queue-{}", def.group))
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let network = self.group_network(&def.group, Arc::clone(&engine.fence));
        let me = self.link.config.node_id();
        // Ids come from names, so every member computes the same
        // membership whatever its peer list holds.
        let members: BTreeMap<NodeId, BasicNode> = def
            .members
            .iter()
            .filter(|m| !def.joined.contains(m))
            .map(|m| {
                let id = crate::node_id_of(m);
                (id, BasicNode::new(self.recorded_address(id)))
            })
            .collect();
        let joined = def.joined.iter().any(|m| m == self.me());
        let restarted = !log.is_new();
        // Every member of a new group starts with its membership in its
        // log, as Ra's members do: the entry openraft's `initialize` would
        // append, written here before the Raft reads the log. A member
        // that had to wait for its leader's first append for it could
        // neither vote for itself nor bootstrap once it had voted: when
        // the leader died after its election, before that append, both
        // others had voted and the group never elected again. A member
        // added later (`add_member`) starts empty: its log comes from the
        // group's leader.
        if !restarted && !joined && !members.is_empty() {
            log.begin_with(Entry {
                log_id: LogId::default(),
                payload: EntryPayload::Membership(Membership::from(members)),
            })?;
        }
        let raft = QueueRaft::new(
            me,
            Arc::new(config),
            network.clone(),
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        engine.fence.watch(raft.metrics());
        // The member where the queue was placed (its locator) is to lead a
        // new queue: it stands at once (`first_election`). The others hold
        // their election timers for a while (`hold`, below): when each
        // stood as soon as it had the membership, as they once did, a
        // third of the queues declared on one node came to be led
        // elsewhere, every publish then forwarded.
        let placed = def.members.first().map(String::as_str) == Some(self.me());
        let grace = first_election_window(self.link.config.queue_timing);
        // Back from a restart, a member elects as usual: its elections ask
        // a pre-vote first (crate::election), so it does not depose a
        // leader that has not reached it yet.
        let hold = if restarted || joined {
            Duration::ZERO
        } else {
            grace
        };
        if !restarted && !joined && placed {
            if self.link.draining() {
                // A drained node leads nothing, not even a queue placed on
                // it (declared through its management API): it does not
                // stand; the other members elect after their hold, and its
                // log comes from their leader.
                tracing::info!(
                    group = def.group,
                    "this node is drained: the other members start the new queue group"
                );
            } else {
                tokio::spawn(first_election(
                    raft.clone(),
                    network.clone(),
                    log.clone(),
                    def.group.clone(),
                    self.link.config.queue_timing,
                ));
            }
        }
        let replica = Arc::new(Replica {
            engine: Arc::clone(&engine),
            state: Arc::clone(&machine.state),
            pending: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            group: def.group.clone(),
            groups: self.this.clone(),
            offsets_to_forward: Mutex::default(),
            forwarding: AtomicBool::new(false),
            consumers: consumers::Consumers::new(!restarted),
            run: rand::random(),
            numbering: crate::feature_flags::FlagSeen::new(
                antre_broker::feature_flags::FORWARDED_PUBLISH_DEDUPE,
            ),
        });
        if !self.attach(&queue, Arc::clone(&replica)) {
            let _ = raft.shutdown().await;
            return Err(ClusterError::Config(format!(
                "quorum queue {} already has a replica",
                def.name
            )));
        }
        let group = Arc::new(Group {
            def: def.clone(),
            raft,
            machine,
            replica,
            log,
            dir,
            stop: tokio::sync::watch::Sender::new(false),
            paused: AtomicBool::new(false),
            busy: Arc::clone(&network.busy),
            // openraft starts a replica with its timer on; lead_loop's
            // first look sets it.
            timer: Mutex::new(Timer {
                leads: None,
                ticking: true,
            }),
            heard: crate::election::Heard::default(),
        });
        self.groups
            .lock()
            .insert(def.group.clone(), Arc::clone(&group));
        tokio::spawn(crate::election::run(
            network,
            Some(def.group.clone()),
            group.raft.clone(),
            group.log.clone(),
            group.heard.clone(),
            self.link.config.queue_timing,
            hold,
        ));
        tokio::spawn(propose_loop(Arc::clone(&group)));
        tokio::spawn(snapshot_loop(Arc::clone(&group)));
        tokio::spawn(lead_loop(Arc::downgrade(&self), Arc::clone(&group)));
        tracing::info!(
            vhost = def.vhost,
            queue = def.name,
            kind = group.machine.engine.target.kind(),
            members = ?def.members,
            "quorum queue replica started"
        );
        Ok(())
    }

    fn group(&self, id: &str) -> Option<Arc<Group>> {
        self.groups.lock().get(id).cloned()
    }

    /// Answers a peer's Raft request for one of this node's groups.
    pub async fn serve(&self, request: Request) -> Response {
        match request {
            Request::QueueAppend { group, rpc } => match self.group(&group) {
                Some(g) => Response::QueueAppend(g.raft.append_entries(rpc).await),
                None => Response::NoGroup(group),
            },
            Request::QueueVote { group, rpc } => match self.group(&group) {
                Some(g) => Response::QueueVote(g.raft.vote(rpc).await),
                None => Response::NoGroup(group),
            },
            Request::QueueSnapshot { group, rpc } => match self.group(&group) {
                Some(g) => Response::QueueSnapshot(g.raft.install_snapshot(rpc).await),
                None => Response::NoGroup(group),
            },
            _ => Response::NoGroup(String::new()),
        }
    }

    /// Waits (until `deadline`) until quorum queue `name` in `vhost` has a
    /// leader that took its engine over, as this node knows: a declare-ok
    /// then means the queue takes publishes, as RabbitMQ answers a quorum
    /// queue's declare once its Raft cluster started.
    pub async fn wait_ready(&self, vhost: &str, name: &str, deadline: tokio::time::Instant) {
        loop {
            let Some(v) = self.broker.vhost(vhost) else {
                return;
            };
            match v.quorum_info(name) {
                None => return,
                Some(i) if i.leader.is_some() => return,
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A new group's members: `owner`, then the voters after it by name
    /// (wrapping around), `size` in all at most.
    pub fn pick_members(&self, owner: &str, mut voters: Vec<String>, size: usize) -> Vec<String> {
        voters.sort_unstable();
        let start = voters.iter().position(|n| n == owner).unwrap_or(0);
        voters.rotate_left(start);
        voters.truncate(size.max(1));
        voters
    }

    /// The groups this node follows whose leader is node `leader`: each
    /// group's network, Raft, log and leases heard.
    pub(crate) fn led_by(
        &self,
        leader: NodeId,
    ) -> Vec<(
        GroupNetwork,
        QueueRaft,
        LogStore<QueueTypeConfig>,
        crate::election::Heard,
    )> {
        self.groups
            .lock()
            .values()
            .filter(|g| crate::failover::follows(&g.raft, leader))
            .map(|g| {
                (
                    self.group_network(&g.def.group, Arc::clone(&g.machine.engine.fence)),
                    g.raft.clone(),
                    g.log.clone(),
                    g.heard.clone(),
                )
            })
            .collect()
    }

    fn group_network(&self, group: &str, fence: Arc<fence::Fence>) -> GroupNetwork {
        GroupNetwork {
            network: self.network.clone(),
            group: Arc::from(group),
            heartbeats: Arc::clone(&self.heartbeats),
            busy: Arc::new(Mutex::new((std::time::Instant::now(), None))),
            fence,
        }
    }

    /// Answers a peer's pre-vote ([`Request::PreVote`]) in `group`: no if
    /// this node runs no replica of it.
    pub(crate) async fn grants_pre_vote(
        &self,
        group: &str,
        dead: Option<NodeId>,
        theirs: Option<LogId<NodeId>>,
    ) -> crate::election::PreVoteAnswer {
        let Some(g) = self.group(group) else {
            return crate::election::PreVoteAnswer::NoReplica;
        };
        let timing = self.link.config.queue_timing;
        let fence = timing.fence();
        crate::election::grants(&g.raft, &g.log, &g.heard, dead, theirs, timing, fence).await
    }

    /// The node's connections to its peers.
    pub(crate) fn network(&self) -> &NetworkFactory {
        &self.network
    }

    /// The node that leads `group` now, as this member knows it.
    pub fn leader_of(&self, group: &str) -> Option<String> {
        let g = self.group(group)?;
        let leader = g.raft.metrics().borrow().current_leader?;
        self.name_of(leader)
    }
}

/// Proposes what the engine did, while this node leads: each round takes
/// everything gathered since the last (one entry), up to [`IN_FLIGHT`]
/// ([`STREAM_IN_FLIGHT`] for a stream) entries uncommitted at a time.
async fn propose_loop(group: Arc<Group>) {
    let mut stop = group.stop.subscribe();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        match group.machine.engine.target.stream() {
            Some(_) => STREAM_IN_FLIGHT,
            None => IN_FLIGHT,
        },
    ));
    loop {
        tokio::select! {
            _ = group.replica.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            if group.paused.load(Ordering::Acquire) {
                // A leadership transfer is under way (members.rs): new
                // entries would renew the followers' leases and keep the
                // target from being elected. They wait in `pending`.
                break;
            }
            let Taken {
                mut ops,
                batch,
                local,
            } = group.replica.pending.lock().take_entry();
            if ops.is_empty() {
                break;
            }
            // This node's own publishes in the entry, kept until it is
            // answered: sent on to the next leader unless it commits.
            let unsure = local.map(|l| send_on::Unsure::of(&ops, group.replica.run, l));
            if !group.machine.engine.active.load(Ordering::Acquire) {
                // Not the leader (any more): these never reach the log. The
                // publishes are nacked (or sent on); settles are lost with
                // the engine, so those messages are delivered again,
                // redelivered.
                if let Some(b) = batch {
                    b.complete(false);
                }
                if let Some(u) = unsure {
                    group.replica.send_on_unsure(u);
                }
                continue;
            }
            // Subscribed before the proposal: a snapshot installed any
            // time after it counts.
            let mut installed = group.machine.engine.snapshots_installed.subscribe();
            let term = group.machine.engine.term.load(Ordering::Acquire);
            ops.term = Some(term);
            match group.raft.client_write_ff(ops).await {
                Ok(rx) => {
                    // Not kept alive by an answer that may never come.
                    let replica = Arc::downgrade(&group.replica);
                    tokio::spawn(async move {
                        // openraft answers a proposal when its entry is
                        // applied (by index) or truncated away. A leader
                        // deposed with proposals not committed, then so far
                        // behind that it catches up by a snapshot, has
                        // neither: the snapshot replaces its log without a
                        // truncation and openraft keeps the answer forever.
                        // Its publishers then waited for a confirm that never
                        // came, and each such proposal kept its slot, so
                        // after IN_FLIGHT of them the node, leader again,
                        // proposed nothing more (a queue wedged for good,
                        // seen in the nemesis soak). A snapshot installed
                        // here means this node no longer leads; what it
                        // proposed before is nacked (it may or may not be in
                        // the snapshot: a publisher that sends it again
                        // makes a duplicate, never a loss).
                        let ok = tokio::select! {
                            // Appended in a later term: ignored by every
                            // member (QueueOps::stale), so nacked.
                            r = rx => matches!(r, Ok(Ok(ref w)) if w.log_id.leader_id.term == term),
                            _ = installed.changed() => false,
                        };
                        if let Some(b) = batch {
                            b.complete(ok);
                        }
                        match (unsure, replica.upgrade()) {
                            (Some(u), _) if ok => u.local.complete(true),
                            (Some(u), Some(replica)) => replica.send_on_unsure(u),
                            (Some(u), None) => u.local.complete(false),
                            (None, _) => {}
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(group = group.def.group, "queue group stopped: {e}");
                    if let Some(b) = batch {
                        b.complete(false);
                    }
                    if let Some(u) = unsure {
                        group.replica.send_on_unsure(u);
                    }
                }
            }
        }
    }
}

/// How long a new group's placed member tries to win its first election,
/// and the others hold their election timers: three of the longest
/// election timeouts.
fn first_election_window(timing: crate::config::RaftTiming) -> Duration {
    timing.election_max() * 3
}

/// A new group's first election: the node the queue was placed on stands
/// and leads, as RabbitMQ starts a quorum queue's leader where its locator
/// put it, and the queue is usable without waiting for an election
/// timeout.
///
/// Once was not enough: the others create their replica as they apply the
/// declare, a little later, so its first requests often found no group to
/// answer them. So it tries again, backing off, until a leader is known,
/// for at most the others' hold (three election timeouts, see
/// `QueueGroups::start`); past it, any member elects as usual.
///
/// Only the first try stands at once, and only while the member has never
/// voted: that raises its term to 1, which can never beat a leader's: a
/// leader's vote is committed, and wins over an uncommitted one of the
/// same term. Every later try asks a pre-vote first ([`crate::election`]),
/// as every other election does, and stands only when a majority would
/// vote for it. Standing blindly at every try raised the term each time,
/// and a placed member that started its replica late (it applied the
/// declare after the others had elected one of them) then refused the
/// leader's first append for its lower term: the leader stepped down, for
/// a second election.
async fn first_election(
    raft: QueueRaft,
    voters: GroupNetwork,
    log: LogStore<QueueTypeConfig>,
    group: String,
    timing: crate::config::RaftTiming,
) {
    let start = tokio::time::Instant::now();
    let until = start + first_election_window(timing);
    let mut metrics = raft.metrics();
    // Soon after the first try: the others' replicas start as they apply
    // the declare, a few milliseconds apart (each writes its membership
    // first), and a try that finds none asks them again cheaply (a
    // pre-vote raises no term).
    let mut retry = Duration::from_millis(10);
    let mut next_try = start;
    let mut first = true;
    loop {
        if metrics.borrow_and_update().current_leader.is_some() {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        if now >= next_try {
            let never_voted = metrics.borrow().vote.leader_id().term == 0;
            if first && never_voted {
                if let Err(e) = raft.trigger().elect().await {
                    tracing::debug!("no election: {e}");
                    return;
                }
            } else if !crate::election::stand_if_a_majority_would(
                &voters,
                Some(group.clone()),
                &raft,
                &log,
                timing,
            )
            .await
            {
                return;
            }
            first = false;
            // Not again before the last try could have been answered (then
            // backing off).
            next_try = tokio::time::Instant::now() + retry;
            retry = (retry * 2).min(Duration::from_millis(400));
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_try.min(until)) => {}
        }
    }
}

/// Asks openraft for a snapshot whenever the member's state says one is
/// due by size ([`snapshot_due`]; openraft's own policy counts entries).
async fn snapshot_loop(group: Arc<Group>) {
    let mut stop = group.stop.subscribe();
    let due = Arc::clone(&group.machine.snapshot_due);
    loop {
        tokio::select! {
            _ = due.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        followers_close(&group).await;
        if let Err(e) = group.raft.trigger().snapshot().await {
            tracing::debug!(group = group.def.group, "no snapshot: {e}");
            // Asked again once enough is logged anew.
            group.machine.state.lock().logged.get_or_insert(0);
        }
    }
}

/// Whether every follower that `reachable` says is up has the log up to
/// within half of [`KEEP_AFTER_SNAPSHOT`] entries of what the leader
/// applied (true on a follower, which has no replication metrics).
fn followers_within_keep(
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
    reachable: impl Fn(NodeId) -> bool,
) -> bool {
    let applied = m.last_applied.map_or(0, |l| l.index);
    m.replication.as_ref().is_none_or(|followers| {
        followers
            .iter()
            .filter(|(id, _)| **id != m.id && reachable(**id))
            .all(|(_, matched)| matched.map_or(0, |l| l.index) + KEEP_AFTER_SNAPSHOT / 2 >= applied)
    })
}

/// On the group's leader: waits until every follower that is up has the
/// log up to within half of [`KEEP_AFTER_SNAPSHOT`] entries of what this
/// node applied, so that a snapshot now leaves them entries enough to
/// catch up from, or until [`SNAPSHOT_LAG_BYTES`] more were applied
/// meanwhile. A follower this node cannot reach is not waited for (it
/// gets a snapshot once back, as before). Returns at once on a follower.
async fn followers_close(group: &Group) {
    let from = group.machine.state.lock().logged_total;
    let groups = group.replica.groups.upgrade();
    // Up: heard from lately, over any of the node's links to it (a
    // partitioned follower's calls time out without failing).
    let reachable = |id: NodeId| {
        groups.as_ref().is_some_and(|g| {
            g.name_of(id).is_some_and(|name| {
                g.link
                    .state(&name)
                    .heard_within(FOLLOWER_HEARD_WITHIN, std::time::SystemTime::now())
            })
        })
    };
    let mut metrics = group.raft.metrics();
    loop {
        if followers_within_keep(&metrics.borrow_and_update(), reachable) {
            return;
        }
        if group.machine.state.lock().logged_total - from >= SNAPSHOT_LAG_BYTES {
            tracing::info!(
                group = group.def.group,
                "a follower is far behind: snapshotting anyway"
            );
            return;
        }
        // Also woken by every apply (the metrics' last applied entry).
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Follows the group's leadership: takes the engine over when this node
/// becomes the leader, steps it down when it stops leading, and keeps the
/// queue's location (the vhost's remote owner, the leader shown in
/// listings) up to date.
async fn lead_loop(groups: Weak<QueueGroups>, group: Arc<Group>) {
    let mut stop = group.stop.subscribe();
    // The server's metrics, which change with its state, leader or vote:
    // `metrics()` changes with every message the Raft core handles (a
    // heartbeat, its answer), and woke this task each time, for every
    // group on every member.
    let mut metrics = group.raft.server_metrics();
    let mut known_leader: Option<NodeId> = None;
    loop {
        let Some(groups) = groups.upgrade() else {
            return;
        };
        let (state, leader, term) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_leader, m.vote.leader_id().get_term())
        };
        let me = groups.link.config.node_id();
        let engine = &group.machine.engine;
        let active = engine.active.load(Ordering::Acquire);
        let leads = state == ServerState::Leader;
        group.led(leads);
        // Leading in another term than the engine's: this node lost its
        // leadership and won a new one between two looks at the metrics
        // (they change faster than this task wakes). The engine's term
        // marked every proposal of the new leadership stale: each was
        // ignored by every member and nacked, and the queue confirmed
        // nothing for as long as it led (seen in the 100-round nemesis
        // soak). It steps down and takes over again, as for any new
        // leadership.
        let stale = leads && active && engine.term.load(Ordering::Acquire) != term;
        if stale {
            step_down(&group);
        }
        if leads && (!active || stale) {
            // Cleared however the takeover ends (this task is dropped
            // when the group stops).
            let _taking = TakingOver::start(&engine.taking_over);
            take_over(&groups, &group, term).await;
        } else if !leads && active {
            step_down(&group);
            // Until the next leader is known, this node must not list
            // itself: clients looking for the leader would come to an
            // engine that no longer serves the queue.
            if let Some(v) = groups.broker.vhost(&group.def.vhost) {
                v.forget_quorum_leader(&group.def.name, groups.me());
            }
        }
        if leader != known_leader && leader != Some(me) {
            if !engine.active.load(Ordering::Acquire) {
                // Consumers that attached here while no leader was known
                // would wait forever on this idle engine: cancel them, so
                // they re-subscribe where the queue lives.
                if let Some(queue) = engine.target.queue() {
                    queue.replica_step_down();
                }
            }
            if let Some(name) = leader.and_then(|l| groups.name_of(l)) {
                if let Some(v) = groups.broker.vhost(&group.def.vhost) {
                    v.set_quorum_leader(&group.def.name, &name, term);
                    v.set_remote_owner(&group.def.name, Some(&name));
                }
            }
            known_leader = leader;
        } else if leader == Some(me) && engine.active.load(Ordering::Acquire) {
            known_leader = leader;
        }
        let located = engine.active.load(Ordering::Acquire)
            || (leader.is_some() && leader == known_leader && leader != Some(me));
        engine
            .located
            .send_if_modified(|l| std::mem::replace(l, located) != located);
        drop(groups);
        // A leader whose takeover failed tries again shortly. Nothing
        // else changes but with the metrics: a timer for every replica
        // woke every queue's members for nothing.
        let failed = leads && !engine.active.load(Ordering::Acquire);
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = retry => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How long a takeover waits for the publishes the forwarder holds for
/// the queue to be put in it, before this node's clients' publishes go to
/// it directly (see `Forwarder::released`): they are released within a
/// poll or two once this node leads.
const HELD_WAIT: Duration = Duration::from_secs(1);

/// Marks a takeover under way until dropped.
struct TakingOver<'a>(&'a tokio::sync::watch::Sender<bool>);

impl<'a> TakingOver<'a> {
    fn start(flag: &'a tokio::sync::watch::Sender<bool>) -> Self {
        flag.send_replace(true);
        TakingOver(flag)
    }
}

impl Drop for TakingOver<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// This node was elected in `term`: once it applied everything committed
/// before its term (the read barrier of its first entry), the engine
/// starts from the applied messages. The term goes with the news, so that
/// a node that led for a moment before (its news arriving late) cannot
/// undo this one's.
async fn take_over(groups: &QueueGroups, group: &Group, term: u64) {
    let wait = groups.link.config.change_timeout;
    match tokio::time::timeout(wait, group.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(group = group.def.group, "not taking over yet: {e}");
            return;
        }
        Err(_) => return,
    }
    // Everything in this leader's log applied first, not only what was
    // known committed: a leader that restarts resumes its leadership in
    // the same term (openraft keeps its committed vote), with entries of
    // before its restart in its log and not applied yet. Its engine would
    // otherwise start from an older state and give out ids (a stream's
    // offsets) that those entries hold already (confirmed messages then
    // skipped as already there: found by the stream protocol's kill loop).
    let last_log = group.raft.metrics().borrow().last_log_index;
    let waiting = group.raft.wait(Some(wait));
    let applied = waiting.applied_index_at_least(last_log, "the leader's log applied");
    if let Err(e) = applied.await {
        tracing::debug!(group = group.def.group, "not taking over yet: {e}");
        return;
    }
    let engine = &group.machine.engine;
    let unsure = {
        let mut st = group.machine.state.lock();
        let mut messages = Vec::with_capacity(st.set.messages.len());
        st.for_each_held(|id, m, record| {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("dropping an unreadable replicated message: {e}");
                    return;
                }
            };
            if let Some(message) = decode(&record) {
                messages.push(ReplicatedMessage {
                    id,
                    message,
                    delivery_count: m.delivery_count,
                    dying: m.dying.map(death_reason),
                });
            }
        });
        let unsure = {
            let mut p = group.replica.pending.lock();
            let unsure = p.reset(group.replica.run);
            p.next_id = st.set.next_id;
            unsure
        };
        engine.proposed.lock().clear();
        match &engine.target {
            Target::Queue(queue) => queue.replica_takeover(messages),
            Target::Stream(_) => {}
        }
        engine.term.store(term, Ordering::Release);
        engine.active.store(true, Ordering::Release);
        unsure
    };
    if let Some(u) = unsure {
        // Gathered in an earlier leadership: put in the queue here.
        group.replica.send_on_unsure(u);
    }
    engine.route_dead_letters();
    if let Some(forwarder) = groups.forwarder.get().and_then(Weak::upgrade) {
        forwarder
            .released(&group.def.vhost, &group.def.name, HELD_WAIT)
            .await;
    }
    let me = groups.me().to_owned();
    if let Some(v) = groups.broker.vhost(&group.def.vhost) {
        v.set_remote_owner(&group.def.name, None);
        v.set_quorum_leader(&group.def.name, &me, term);
    }
    tracing::info!(
        vhost = group.def.vhost,
        queue = group.def.name,
        kind = engine.target.kind(),
        "this node leads the quorum queue now"
    );
    if let Some(log) = groups.broker.metadata_log() {
        log.propose_later(MetaCommand::QueueLeader {
            vhost: group.def.vhost.clone(),
            name: group.def.name.clone(),
            leader: me,
            term,
        });
    }
}

/// This node stopped leading: the engine empties and its consumers are
/// cancelled; what it had not proposed yet is dropped (publishes nacked,
/// but for this node's own, sent on to the next leader).
fn step_down(group: &Group) {
    let engine = &group.machine.engine;
    let unsure = {
        let _st = group.machine.state.lock();
        engine.active.store(false, Ordering::Release);
        if let Some(queue) = engine.target.queue() {
            // A stream's consumers stay: they read this member's log, which
            // goes on with what the next leader commits.
            queue.replica_step_down();
        }
        engine.proposed.lock().clear();
        group.replica.pending.lock().reset(group.replica.run)
    };
    if let Some(u) = unsure {
        group.replica.send_on_unsure(u);
    }
    tracing::info!(
        vhost = group.def.vhost,
        queue = group.def.name,
        kind = engine.target.kind(),
        "this node no longer leads the quorum queue"
    );
}

/// openraft's network factory for one group: a connection per target over
/// the cluster link (from the node's pool), requests carrying the group's
/// id.
#[derive(Clone)]
pub(crate) struct GroupNetwork {
    network: NetworkFactory,
    /// The group's name.
    pub(crate) group: Arc<str>,
    heartbeats: Arc<heartbeats::Heartbeats>,
    /// When the group's leader last sent a member entries or a new
    /// commit index, and that index: its heartbeats are batched, and
    /// paced ([`pace_idle_heartbeats`]), only once the group is idle.
    /// Kept for the group, not for each client: openraft makes a new
    /// client for every round of heartbeats that proves a leadership (a
    /// stream's single-active-consumer reports ask for one every 250 ms),
    /// and each, new, took its group for busy and sent alone.
    busy: Arc<Mutex<Activity>>,
    /// Told of each answer that accepts this leader (see [`fence`]).
    fence: Arc<fence::Fence>,
}

pub(crate) struct GroupClient {
    target: NodeId,
    group: Arc<str>,
    conn: PooledConnection,
    /// For a large append's own connection.
    network: GroupNetwork,
    node: BasicNode,
    /// A large append on its way to the member (see
    /// [`GroupClient::append_large`]).
    large: Option<LargeAppend>,
}

/// How long a group sends neither entries nor a new commit index before
/// its heartbeats go with the other groups' ([`heartbeats`]). openraft
/// sends a follower one request at a time, so a heartbeat that waits to
/// be batched holds the next append back: batching a busy group's
/// heartbeats (and the empty appends that carry its commit index) cut one
/// quorum queue's confirmed rate from 35,000 to 7,300 a second.
const IDLE_BEFORE_BATCHING: Duration = Duration::from_secs(1);

/// An append request sent by a task of its own, which openraft's timeout
/// for an append (the heartbeat interval) does not cancel.
struct LargeAppend {
    vote: openraft::Vote<NodeId>,
    prev: Option<LogId<NodeId>>,
    last: Option<LogId<NodeId>>,
    answer: tokio::sync::oneshot::Receiver<Result<Response, CallError>>,
}

/// Appends of more bytes than this go by [`GroupClient::append_large`].
const LARGE_APPEND: u64 = 1 << 20;
/// How long a large append may take (a follower writing and fsyncing
/// hundreds of MiB on a busy disk).
const LARGE_APPEND_TTL: Duration = Duration::from_secs(60);

impl RaftNetworkFactory<QueueTypeConfig> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupClient {
        GroupClient {
            target,
            group: Arc::clone(&self.group),
            conn: crate::election::Voters::connection(self, target, node),
            network: self.clone(),
            node: node.clone(),
            large: None,
        }
    }
}

impl crate::election::Voters<QueueTypeConfig> for GroupNetwork {
    fn connection(&self, id: NodeId, node: &BasicNode) -> PooledConnection {
        // A member that joined later is in no peer list: an empty name
        // accepts whichever node answers there, the secret proving it is
        // a member.
        let (name, addr) = crate::election::route(&self.network, id, "", &node.addr);
        self.network.connection(id, &name, addr, &node.addr)
    }

    fn network(&self) -> &NetworkFactory {
        &self.network
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

fn rpc_error<E: std::error::Error>(
    e: CallError,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    let io = std::io::Error::other(e.to_string());
    match e {
        CallError::Unreachable(_) => RPCError::Unreachable(openraft::error::Unreachable::new(&io)),
        CallError::Network(_) => RPCError::Network(openraft::error::NetworkError::new(&io)),
    }
}

/// The member has not started its replica yet (or the queue is gone
/// there): unreachable, as a node that is down.
fn no_group(r: Response) -> Result<Response, CallError> {
    match r {
        Response::NoGroup(g) => Err(CallError::Unreachable(format!(
            "no replica of queue group {g}"
        ))),
        r => Ok(r),
    }
}

impl GroupClient {
    async fn call(&mut self, request: Request, option: &RPCOption) -> Result<Response, CallError> {
        no_group(self.conn.call(&request, option.hard_ttl()).await?)
    }

    /// Sends an append of many bytes. openraft gives an append the
    /// heartbeat interval (100 ms for a queue's group) and then sends it
    /// again: an entry of large messages takes longer to send, write and
    /// fsync, so it was sent again and again and never answered (a
    /// publish of tens of MiB to a quorum queue was never confirmed). Here
    /// the request goes out once, by a task of its own; each call of
    /// openraft's for the same start (the same leader and previous entry)
    /// waits for that answer a little, reporting a network error while
    /// it is not there yet (openraft tries again at once), and the answer,
    /// once there, is the result (a partial success if openraft has more
    /// entries by then).
    async fn append_large(
        &mut self,
        request: Request,
        vote: openraft::Vote<NodeId>,
        prev: Option<LogId<NodeId>>,
        last: Option<LogId<NodeId>>,
        leader_commit: Option<LogId<NodeId>>,
        option: &RPCOption,
    ) -> Result<Response, CallError> {
        let same = self
            .large
            .as_ref()
            .is_some_and(|l| l.vote == vote && l.prev == prev && l.last <= last);
        if !same {
            let (tx, answer) = tokio::sync::oneshot::channel();
            let mut conn =
                crate::election::Voters::connection(&self.network, self.target, &self.node);
            tokio::spawn(async move {
                let r = conn
                    .call(&request, LARGE_APPEND_TTL)
                    .await
                    .and_then(no_group);
                let _ = tx.send(r);
            });
            self.large = Some(LargeAppend {
                vote,
                prev,
                last,
                answer,
            });
        }
        let Some(l) = self.large.as_mut() else {
            return Err(CallError::Network("no append under way".into()));
        };
        match tokio::time::timeout(option.soft_ttl(), &mut l.answer).await {
            Err(_) => {
                self.keep_lease(vote, prev, leader_commit, option).await;
                Err(CallError::Network(format!(
                    "a large append to {} still under way",
                    self.target
                )))
            }
            Ok(answer) => {
                let sent = l.last;
                self.large = None;
                match answer {
                    Ok(Ok(Response::QueueAppend(Ok(AppendEntriesResponse::Success))))
                        if sent != last =>
                    {
                        Ok(Response::QueueAppend(Ok(
                            AppendEntriesResponse::PartialSuccess(sent),
                        )))
                    }
                    Ok(r) => r,
                    Err(_) => Err(CallError::Network("the large append's task ended".into())),
                }
            }
        }
    }

    /// Sends the member a heartbeat while a large append to it is under
    /// way. openraft sends none while it has entries to replicate, and the
    /// member hears nothing until it has received the whole append: an
    /// 80 MiB message on a busy machine took longer than the member's
    /// lease, the followers elected one of themselves and the message was
    /// nacked. The heartbeat is the one openraft would send (no entries,
    /// after the append's previous entry, which the member has or finds
    /// in conflict as with the append itself); its answer does not
    /// matter, only that the member hears its leader.
    async fn keep_lease(
        &mut self,
        vote: openraft::Vote<NodeId>,
        prev: Option<LogId<NodeId>>,
        leader_commit: Option<LogId<NodeId>>,
        option: &RPCOption,
    ) {
        let rpc = AppendEntriesRequest {
            vote,
            prev_log_id: prev,
            leader_commit,
            entries: Vec::new(),
        };
        let group = self.group.to_string();
        if let Err(e) = self.call(Request::QueueAppend { group, rpc }, option).await {
            tracing::debug!(target = self.target, "heartbeat beside a large append: {e}");
        }
    }
}

/// How long a queue group's leader waits before it retries a member that
/// failed (openraft's default is 500 ms): a member back from a restart
/// or a partition hears from its leader sooner, before its own election
/// timer runs out. Connecting to a peer still down costs little: the
/// pooled connection has its own backoff and fails at once meanwhile.
const REPLICATION_BACKOFF: Duration = Duration::from_millis(200);

impl RaftNetwork<QueueTypeConfig> for GroupClient {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(REPLICATION_BACKOFF))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<QueueTypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let group = self.group.to_string();
        let (sent, term) = (std::time::Instant::now(), rpc.vote.leader_id().get_term());
        // A follower far behind is sent up to openraft's count of entries
        // at once, which of large messages made requests over the link's
        // largest frame, refused every time: the follower never caught up.
        // The entries past APPEND_BYTES go in the next request (openraft
        // takes a partial success as that follower's progress).
        let partial = cut_within(rpc.entries.iter().map(entry_bytes), APPEND_BYTES).and_then(|k| {
            rpc.entries.truncate(k);
            rpc.entries.last().map(|e| e.log_id)
        });
        let sent_bytes: u64 = rpc.entries.iter().map(entry_bytes).sum();
        let idle = {
            let mut busy = self.network.busy.lock();
            if !rpc.entries.is_empty() || rpc.leader_commit != busy.1 {
                *busy = (std::time::Instant::now(), rpc.leader_commit);
            }
            busy.0.elapsed() >= IDLE_BEFORE_BATCHING
        };
        let answer = if sent_bytes > LARGE_APPEND {
            let (vote, prev, commit) = (rpc.vote, rpc.prev_log_id, rpc.leader_commit);
            let last = rpc.entries.last().map(|e| e.log_id);
            self.append_large(
                Request::QueueAppend { group, rpc },
                vote,
                prev,
                last,
                commit,
                &option,
            )
            .await
        } else if idle && rpc.entries.is_empty() && partial.is_none() {
            // An idle group's heartbeat: with the other groups' to this
            // member.
            let to =
                crate::election::route(&self.network.network, self.target, "", &self.node.addr);
            self.network
                .heartbeats
                .send(
                    &self.network.network.link,
                    self.target,
                    to,
                    heartbeats::Beat {
                        group,
                        rpc,
                        ttl: option.hard_ttl(),
                    },
                )
                .await
        } else {
            // A heartbeat between the calls for a large append leaves it
            // under way.
            self.call(Request::QueueAppend { group, rpc }, &option)
                .await
        };
        let answer = answer.map_err(rpc_error)?;
        if let Response::QueueAppend(Ok(
            AppendEntriesResponse::Success
            | AppendEntriesResponse::PartialSuccess(_)
            | AppendEntriesResponse::Conflict,
        )) = &answer
        {
            // The member follows this leader in `term` (a conflict is
            // about the log, not the leadership).
            self.network.fence.acked(self.target, term, sent);
        }
        match answer {
            Response::QueueAppend(Ok(AppendEntriesResponse::Success)) if partial.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(partial))
            }
            Response::QueueAppend(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(rpc_error(CallError::Network(
                "answer of the wrong kind".into(),
            ))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<QueueTypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let group = self.group.to_string();
        match self
            .call(Request::QueueSnapshot { group, rpc }, &option)
            .await
            .map_err(rpc_error)?
        {
            Response::QueueSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(rpc_error(CallError::Network(
                "answer of the wrong kind".into(),
            ))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let group = self.group.to_string();
        match self
            .call(Request::QueueVote { group, rpc }, &option)
            .await
            .map_err(rpc_error)?
        {
            Response::QueueVote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(rpc_error(CallError::Network(
                "answer of the wrong kind".into(),
            ))),
        }
    }
}

/// Stops a stopped group's Raft and deletes its data: this node keeps no
/// replica of it any more (the queue was deleted, or this member removed).
pub(crate) async fn remove_replica(g: &Group) {
    if let Err(e) = g.raft.shutdown().await {
        tracing::warn!("stopping quorum queue group {}: {e}", g.def.group);
    }
    g.log.close();
    if let Err(e) = std::fs::remove_dir_all(&g.dir) {
        tracing::warn!("removing quorum queue group {}: {e}", g.def.group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_cut_within_a_byte_cap_keeping_at_least_one_item() {
        let cut = |sizes: &[u64], cap| cut_within(sizes.iter().copied(), cap);
        assert_eq!(cut(&[3, 3, 3], 10), None);
        assert_eq!(cut(&[3, 3, 3], 6), Some(2));
        assert_eq!(cut(&[3, 3, 3], 5), Some(1));
        assert_eq!(
            cut(&[30, 3], 10),
            Some(1),
            "one item over the cap goes alone"
        );
        assert_eq!(cut(&[30], 10), None);
        assert_eq!(cut(&[], 10), None);
    }

    /// A leader snapshots (dropping its log up to KEEP_AFTER_SNAPSHOT
    /// entries before it) only with every follower it can reach close
    /// enough to catch up from what is left; one it cannot reach is not
    /// waited for.
    #[test]
    fn a_snapshot_waits_for_followers_a_little_behind_not_for_those_down() {
        let id = |index| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        let mut m = openraft::RaftMetrics::<NodeId, BasicNode>::new_initial(1);
        m.last_applied = id(1000);
        assert!(
            followers_within_keep(&m, |_| true),
            "a follower: no one to wait for"
        );
        m.replication = Some(BTreeMap::from([(1, id(1000)), (2, id(990)), (3, id(500))]));
        assert!(
            !followers_within_keep(&m, |_| true),
            "3 is 500 entries behind"
        );
        assert!(followers_within_keep(&m, |n| n != 3), "3 is down");
        m.replication = Some(BTreeMap::from([
            (1, id(1000)),
            (2, id(1000 - KEEP_AFTER_SNAPSHOT / 2)),
            (3, None),
        ]));
        assert!(!followers_within_keep(&m, |_| true), "3 has nothing yet");
        assert!(followers_within_keep(&m, |n| n == 2));
    }

    #[test]
    fn ops_round_trip_with_base64_bodies() {
        let ops = QueueOps {
            enqueue: vec![(7, Body(Bytes::from_static(b"\x00\xffhello")))],
            settle: vec![1, 2],
            ..QueueOps::default()
        };
        let json = serde_json::to_string(&ops).unwrap();
        assert!(json.contains("AP9oZWxsbw=="), "{json}");
        assert!(!json.contains("returned"));
        let back: QueueOps = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ops);
    }

    #[test]
    fn proposed_counts_only_what_the_engine_has_not_applied() {
        let body = |n: usize| {
            Arc::new(Message::new(
                String::new(),
                "q".into(),
                antre_amqp::BasicProperties::default(),
                Bytes::from(vec![b'x'; n]),
            ))
        };
        let mut p = Proposed::default();
        p.insert(4, body(10));
        p.insert(5, body(20));
        p.insert(6, body(30));
        assert_eq!(p.from(0), (3, 60));
        // 4 is applied (the engine's next id is 5) but not removed yet.
        assert_eq!(p.from(5), (2, 50));
        p.remove(4);
        assert_eq!(p.from(5), (2, 50));
        assert_eq!(p.from(7), (0, 0));
    }

    /// A member's state machine over a queue of a broker of its own,
    /// in `dir`, standing by (no engine fed).
    fn machine(dir: &Path) -> QueueMachine {
        let broker = Arc::new(
            Broker::open(&dir.join("broker"), antre_broker::StorageOptions::default()).unwrap(),
        );
        let v = broker.vhost("/").unwrap();
        let d = antre_broker::vhost::QueueDeclaration {
            name: "q".into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: antre_amqp::FieldTable::default(),
        };
        v.declare_queue(d, false, 1).unwrap();
        let timing = crate::config::RaftTiming::QUEUE;
        let engine = Engine::new(broker, Target::Queue(v.queue_info("q").unwrap()), timing);
        QueueMachine::open(&dir.join("group"), engine).unwrap()
    }

    fn ops_entry(index: u64, enqueue: &[(u64, &str)], settle: &[u64]) -> Entry<QueueTypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(QueueOps {
                enqueue: enqueue
                    .iter()
                    .map(|(id, r)| (*id, Body(Bytes::copy_from_slice(r.as_bytes()))))
                    .collect(),
                settle: settle.to_vec(),
                ..QueueOps::default()
            }),
        }
    }

    /// The member's messages: id and record, read from its segments.
    fn held(m: &QueueMachine) -> Vec<(u64, String)> {
        let mut held = Vec::new();
        m.state.lock().for_each_held(|id, _, r| {
            held.push((id, String::from_utf8(r.unwrap().to_vec()).unwrap()));
        });
        held
    }

    fn owned(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|(id, r)| (*id, (*r).to_owned())).collect()
    }

    #[tokio::test]
    async fn a_member_restarts_at_its_snapshot_and_applies_the_log_after_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = machine(dir.path());
        m.apply_entries(vec![
            ops_entry(1, &[(0, "a"), (1, "b"), (2, "c")], &[]),
            ops_entry(2, &[(3, "d")], &[0]),
        ])
        .unwrap();
        let snap = m
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
        let after = vec![ops_entry(3, &[(4, "e")], &[1, 2])];
        m.apply_entries(after.clone()).unwrap();
        assert_eq!(held(&m), owned(&[(3, "d"), (4, "e")]));
        let engine = Arc::clone(&m.engine);
        drop(m);

        // kill -9 here: the state is the snapshot's, the records appended
        // after it are cut off, and applying the entries again gives the
        // same set.
        let mut m = QueueMachine::open(&dir.path().join("group"), engine).unwrap();
        let (applied, _) = m.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert_eq!(held(&m), owned(&[(1, "b"), (2, "c"), (3, "d")]));
        m.apply_entries(after).unwrap();
        assert_eq!(held(&m), owned(&[(3, "d"), (4, "e")]));
        assert_eq!(m.state.lock().set.next_id, 5);
    }

    /// Takes a snapshot of `m`, then opens its directory again, as after
    /// a restart.
    async fn snapshot_and_restart(mut m: QueueMachine, dir: &Path) -> QueueMachine {
        m.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let engine = Arc::clone(&m.engine);
        drop(m);
        QueueMachine::open(&dir.join("group"), engine).unwrap()
    }

    fn sourced(entry: &mut Entry<QueueTypeConfig>, run: u64, seqs: &[u64]) {
        if let EntryPayload::Normal(ops) = &mut entry.payload {
            let ids: Vec<u64> = ops.enqueue.iter().map(|(id, _)| *id).collect();
            for (id, seq) in ids.into_iter().zip(seqs) {
                let source = antre_broker::replicated::Source { run, seq: *seq };
                sources::push(&mut ops.sources, source, id);
            }
        }
    }

    /// A forwarded message sent again (its leader died or was deposed with
    /// it on its way, and it was stored after all) is applied once: by
    /// every member, after a snapshot and a restart too; one that came
    /// after a later one is applied.
    #[tokio::test]
    async fn a_forwarded_message_sent_again_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = machine(dir.path());
        let mut first = ops_entry(1, &[(0, "a"), (1, "b")], &[]);
        sourced(&mut first, 7, &[1, 2]);
        // 4 overtook 3 (it went to the next leader first).
        let mut overtaking = ops_entry(2, &[(2, "d")], &[]);
        sourced(&mut overtaking, 7, &[4]);
        m.apply_entries(vec![first, overtaking]).unwrap();
        let m = snapshot_and_restart(m, dir.path()).await;
        // b, c and d again, another run's a: c and the other a are new.
        let mut again = ops_entry(3, &[(3, "b"), (4, "c"), (5, "d"), (6, "a")], &[]);
        sourced(&mut again, 7, &[2, 3, 4]);
        if let EntryPayload::Normal(ops) = &mut again.payload {
            let other = antre_broker::replicated::Source { run: 8, seq: 1 };
            sources::push(&mut ops.sources, other, 6);
        }
        m.apply_entries(vec![again]).unwrap();
        assert_eq!(
            held(&m),
            owned(&[(0, "a"), (1, "b"), (2, "d"), (4, "c"), (6, "a")])
        );
        assert_eq!(m.state.lock().set.next_id, 7);
    }

    /// A message dead-lettered at least once stays dying on a member
    /// through its snapshot and a restart, and goes with its settle.
    #[tokio::test]
    async fn a_dying_mark_survives_a_snapshot_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = machine(dir.path());
        let mut dying = ops_entry(2, &[], &[]);
        if let EntryPayload::Normal(ops) = &mut dying.payload {
            ops.dead_lettered = vec![(1, death_code(DeathReason::DeliveryLimit))];
        }
        m.apply_entries(vec![ops_entry(1, &[(0, "a"), (1, "b")], &[]), dying])
            .unwrap();
        let m = snapshot_and_restart(m, dir.path()).await;
        let marks = |m: &QueueMachine| {
            let st = m.state.lock();
            let marks = st.set.messages.iter().map(|(id, s)| (*id, s.dying));
            marks
                .map(|(id, d)| (id, d.map(death_reason)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            marks(&m),
            [(0, None), (1, Some(DeathReason::DeliveryLimit))]
        );
        m.apply_entries(vec![ops_entry(3, &[], &[1])]).unwrap();
        assert_eq!(marks(&m), [(0, None)]);
    }

    #[tokio::test]
    async fn records_are_written_only_when_too_many_wait_or_a_snapshot_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = machine(dir.path());
        let disk = |m: &QueueMachine| m.state.lock().records.disk_bytes();
        // Consumed at once: nothing reaches the segments.
        m.apply_entries(vec![
            ops_entry(1, &[(0, "a"), (1, "b")], &[]),
            ops_entry(2, &[], &[0, 1]),
        ])
        .unwrap();
        assert_eq!(disk(&m), 0);
        // More than UNWRITTEN_BYTES waiting: the oldest are written.
        let big = "x".repeat(1 << 20);
        let entries: Vec<_> = (0..4u64)
            .map(|i| ops_entry(3 + i, &[(2 + i, big.as_str())], &[]))
            .collect();
        m.apply_entries(entries).unwrap();
        {
            let st = m.state.lock();
            assert!(st.unwritten_bytes <= UNWRITTEN_BYTES);
            assert_eq!(st.unwritten.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
        }
        assert!(disk(&m) >= 2 << 20);
        assert_eq!(held(&m).len(), 4);
        // A snapshot writes the rest.
        m.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert!(m.state.lock().unwritten.is_empty());
        assert!(disk(&m) >= 4 << 20);
        let engine = Arc::clone(&m.engine);
        drop(m);
        let m = QueueMachine::open(&dir.path().join("group"), engine).unwrap();
        assert_eq!(held(&m).len(), 4);
        assert!(held(&m).iter().all(|(_, r)| *r == big));
    }

    #[tokio::test]
    async fn a_snapshot_sent_to_a_member_carries_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = machine(&dir.path().join("leader"));
        leader
            .apply_entries(vec![
                ops_entry(1, &[(0, "x"), (1, "y"), (2, "z")], &[]),
                ops_entry(2, &[], &[1]),
            ])
            .unwrap();
        leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Settled after the snapshot: still in what is sent.
        leader.apply_entries(vec![ops_entry(3, &[], &[0])]).unwrap();
        let sent = leader.get_current_snapshot().await.unwrap().unwrap();

        let mut member = machine(&dir.path().join("member"));
        member
            .apply_entries(vec![ops_entry(1, &[(0, "stale")], &[])])
            .unwrap();
        member
            .install_snapshot(&sent.meta, sent.snapshot)
            .await
            .unwrap();
        assert_eq!(held(&member), owned(&[(0, "x"), (2, "z")]));
        let engine = Arc::clone(&member.engine);
        drop(member);
        let member = QueueMachine::open(&dir.path().join("member").join("group"), engine).unwrap();
        assert_eq!(held(&member), owned(&[(0, "x"), (2, "z")]));
        assert_eq!(member.state.lock().records.segment_count(), 1);
    }

    #[test]
    fn an_older_versions_snapshot_moves_its_records_to_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let m = machine(dir.path());
        let engine = Arc::clone(&m.engine);
        drop(m);
        let group = dir.path().join("group");
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-1-7".into(),
        };
        let mut old = codec::MessagesEncoder::new(9, 2, 0);
        old.push(4, 1, b"four");
        old.push(8, 0, b"eight");
        write_snapshot_file(&group, &meta, &old.finish()).unwrap();

        let m = QueueMachine::open(&group, Arc::clone(&engine)).unwrap();
        assert_eq!(held(&m), owned(&[(4, "four"), (8, "eight")]));
        assert_eq!(m.state.lock().set.messages[&4].delivery_count, 1);
        drop(m);
        let (_, data) = read_snapshot_file(&group).unwrap().unwrap();
        assert!(codec::is_refs(&data));
        let m = QueueMachine::open(&group, engine).unwrap();
        assert_eq!(held(&m), owned(&[(4, "four"), (8, "eight")]));
    }

    #[test]
    fn a_snapshot_is_due_by_size_once_the_log_outgrows_its_references() {
        assert!(!snapshot_due(SNAPSHOT_BYTES - 1, 0));
        assert!(snapshot_due(SNAPSHOT_BYTES, 0));
        // A long queue: its records are on disk already, the snapshot
        // writes 24 bytes a message; not before the log is four times that.
        let long = 1_000_000;
        assert!(!snapshot_due(SNAPSHOT_BYTES, long));
        assert!(!snapshot_due(4 * 24 * long as u64 - 1, long));
        assert!(snapshot_due(4 * 24 * long as u64, long));
    }

    #[test]
    fn group_ids_differ_per_declaration() {
        assert_eq!(group_id("/", "q", 5), group_id("/", "q", 5));
        assert_ne!(group_id("/", "q", 5), group_id("/", "q", 6));
        assert_ne!(group_id("/", "q", 5), group_id("/", "r", 5));
        assert_eq!(group_id("/", "q", 5).len(), 24);
    }

    /// A stream of `n` messages in `dir`, as a member's.
    fn stream_of(dir: &Path, n: u64) -> Arc<Stream> {
        let mut args = antre_amqp::FieldTable::default();
        args.insert("x-queue-type", antre_amqp::FieldValue::string("stream"));
        let clock = Arc::new(antre_broker::clock::ManualClock::at(1_000));
        let s = Stream::open("/", "s", args, dir, clock).unwrap();
        let records: Vec<Bytes> = (0..n)
            .map(|i| {
                s.replica_record(&Message::new(
                    String::new(),
                    "s".into(),
                    antre_amqp::BasicProperties::default(),
                    Bytes::from(format!("m{i}")),
                ))
            })
            .collect();
        for (i, r) in records.iter().enumerate() {
            s.replica_append([(i as u64, r)]).unwrap();
        }
        s
    }

    #[test]
    fn a_stream_snapshot_goes_through_a_file_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let leader = stream_of(&dir.path().join("leader"), 7);
        let mut chunks = leader.replica_chunks().unwrap();
        let mut file = snapshot_data(dir.path(), |w| write_stream_snapshot(w, 7, &mut chunks))
            .unwrap()
            .try_into_std()
            .unwrap();
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).unwrap();

        let behind = stream_of(&dir.path().join("behind"), 2);
        let (next_id, next, chunks) = read_stream_snapshot(&raw[..]).unwrap();
        assert_eq!((next_id, next), (7, 7));
        assert_eq!(behind.replica_install(next, chunks).unwrap(), 7);
        assert_eq!(behind.next_offset(), 7);

        // Cut short: the chunk it stops in is an error, not a shorter log.
        let (_, _, chunks) = read_stream_snapshot(&raw[..raw.len() - 10]).unwrap();
        let read: Vec<_> = chunks.collect();
        assert!(read.last().is_some_and(|r| r.is_err()), "{read:?}");
        assert!(read_stream_snapshot(&b"ASQ1"[..]).is_err());
    }
}
