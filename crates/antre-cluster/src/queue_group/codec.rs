//! A binary encoding of a queue group's log entries, for its log on disk
//! and its append requests on the link.
//!
//! Written by hand because it carries message bodies on the publish path
//! of every quorum queue: as JSON, each body was base64-encoded, escaped
//! and parsed again on every member and for every follower (a sixth of a
//! leader's Raft thread went to escaping alone), while here it is one
//! length and one copy. The formats that would do it from serde (bincode,
//! postcard) cannot read `QueueOps` as it derives serde for JSON (fields
//! skipped when empty), and membership entries keep their JSON (rare, and
//! openraft's types) inside.
//!
//! An entry: a tag byte, the log id (term, leader node, index as u64
//! little-endian), then for `Normal` the enqueued messages (count, then id,
//! length and record each), the settled ids and the returned ids (count,
//! then ids); for `Membership` the length of its JSON and the JSON. The
//! tags are not `{`: a record written as JSON by an older version is read
//! as JSON ([`decode_entry`]). Newer parts (a stream's offsets, the
//! proposer's term, messages dead-lettered at least once) come after the
//! older ones under a tag of their own, and snapshots put the dying
//! messages after everything else, only when there are some: what older
//! versions wrote reads the same, and what they can read is written the
//! same as long as the newer parts are empty.

use bytes::{Buf, BufMut, Bytes};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

use antre_store::records::{Mark, RecordRef};

use super::sources::{Seen, SourceRange};
use super::{Body, Held, Messages, QueueOps, QueueTypeConfig, Stored, StoredSet};
use crate::NodeId;

const BLANK: u8 = 0xB0;
const NORMAL: u8 = 0xB1;
/// `NORMAL` followed by a stream's stored offsets (count, then name
/// length as u16, name, offset each): an entry without any keeps the
/// older tag, which older versions read.
const NORMAL_OFFSETS: u8 = 0xB3;
/// `NORMAL_OFFSETS` with the proposer's term (u64) after the log id.
const NORMAL_TERM: u8 = 0xB4;
/// `NORMAL_TERM` followed by the messages dead-lettered at least once
/// (count, then id and reason code each): an entry without any keeps the
/// older tag, which older versions read.
const NORMAL_DYING: u8 = 0xB7;
/// `NORMAL_DYING` (its dead letters possibly none) followed by the
/// forwarded messages' sources (count, then run, number, id as u64 and
/// count as u32 each, see [`super::sources`]): written only when there are
/// some, which only a cluster with feature flag
/// `quorum_queue_forwarded_publish_dedupe` sends.
const NORMAL_SOURCES: u8 = 0xB8;
const MEMBERSHIP: u8 = 0xB2;
const SNAPSHOT: u8 = 0xB5;
const SNAPSHOT_REFS: u8 = 0xB6;

/// A malformed entry (a peer's bug or a corrupt record: the store's
/// checksums catch disk corruption first).
#[derive(Debug, thiserror::Error)]
#[error("malformed queue group entry: {0}")]
pub struct CodecError(String);

fn short(what: &str) -> CodecError {
    CodecError(format!("{what} cut short"))
}

fn put_log_id(out: &mut Vec<u8>, id: &LogId<NodeId>) {
    out.put_u64_le(id.leader_id.term);
    out.put_u64_le(id.leader_id.node_id);
    out.put_u64_le(id.index);
}

pub(super) fn get_u64(buf: &mut &[u8], what: &str) -> Result<u64, CodecError> {
    if buf.remaining() < 8 {
        return Err(short(what));
    }
    Ok(buf.get_u64_le())
}

fn get_u32(buf: &mut &[u8], what: &str) -> Result<u32, CodecError> {
    if buf.remaining() < 4 {
        return Err(short(what));
    }
    Ok(buf.get_u32_le())
}

fn get_u8(buf: &mut &[u8], what: &str) -> Result<u8, CodecError> {
    if buf.remaining() < 1 {
        return Err(short(what));
    }
    Ok(buf.get_u8())
}

/// The next `len` bytes of the input, which it passes.
fn get_slice<'a>(buf: &mut &'a [u8], len: usize, what: &str) -> Result<&'a [u8], CodecError> {
    if buf.len() < len {
        return Err(short(what));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// A length-prefixed record, copied into its own buffer: a message kept
/// long must not keep the whole frame, log record or snapshot it came in
/// alive.
fn get_record(buf: &mut &[u8], what: &str) -> Result<Body, CodecError> {
    let len = get_u32(buf, what)? as usize;
    get_slice(buf, len, what).map(|r| Body(Bytes::copy_from_slice(r)))
}

fn get_log_id(buf: &mut &[u8]) -> Result<LogId<NodeId>, CodecError> {
    let term = get_u64(buf, "log id")?;
    let node = get_u64(buf, "log id")?;
    let index = get_u64(buf, "log id")?;
    Ok(LogId::new(CommittedLeaderId::new(term, node), index))
}

/// A count read from the input, checked against what is left of it (each
/// item takes at least `min` bytes), so a corrupt count cannot make the
/// decoder reserve gigabytes.
pub(super) fn get_count(buf: &mut &[u8], min: usize, what: &str) -> Result<usize, CodecError> {
    let n = get_u32(buf, what)? as usize;
    if n.saturating_mul(min) > buf.remaining() {
        return Err(short(what));
    }
    Ok(n)
}

/// Messages dead-lettered at least once: count, then id and reason code
/// each.
fn put_dying(out: &mut Vec<u8>, dying: impl ExactSizeIterator<Item = (u64, u8)>) {
    out.put_u32_le(dying.len() as u32);
    for (id, code) in dying {
        out.put_u64_le(id);
        out.put_u8(code);
    }
}

fn get_dying(buf: &mut &[u8]) -> Result<Vec<(u64, u8)>, CodecError> {
    let n = get_count(buf, 9, "dead letters")?;
    (0..n)
        .map(|_| Ok((get_u64(buf, "dead letter")?, get_u8(buf, "dead letter")?)))
        .collect()
}

/// The end of a snapshot: the dying messages (if there are some, or
/// forwarded runs after them), then the forwarded runs (if any).
fn put_tail(out: &mut Vec<u8>, dying: Vec<(u64, u8)>, seen: &Seen) {
    if !dying.is_empty() || !seen.is_empty() {
        put_dying(out, dying.into_iter());
    }
    if !seen.is_empty() {
        seen.encode(out);
    }
}

/// Reads what [`put_tail`] wrote: each dying message is marked with
/// `mark`; the forwarded runs are returned.
fn read_tail(buf: &mut &[u8], mut mark: impl FnMut(u64, u8)) -> Result<Seen, CodecError> {
    if buf.has_remaining() {
        for (id, code) in get_dying(buf)? {
            mark(id, code);
        }
    }
    let seen = match buf.has_remaining() {
        true => Seen::decode(buf)?,
        false => Seen::default(),
    };
    if buf.has_remaining() {
        return Err(CodecError(format!(
            "{} bytes after the snapshot",
            buf.len()
        )));
    }
    Ok(seen)
}

fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    out.put_u32_le(ids.len() as u32);
    for &id in ids {
        out.put_u64_le(id);
    }
}

fn get_ids(buf: &mut &[u8], what: &str) -> Result<Vec<u64>, CodecError> {
    let n = get_count(buf, 8, what)?;
    (0..n).map(|_| get_u64(buf, what)).collect()
}

/// At least the bytes a `Normal` entry of `ops` takes, all its parts
/// counted: reserved before it is written, so that a large entry is never
/// moved to a larger buffer on the way. A reservation that left out the
/// count of stored offsets, written since entries carry their term, made
/// every entry's last four bytes double its buffer, copying all of its
/// messages once more (a sixth more CPU per message over the stream
/// protocol).
fn normal_len(ops: &QueueOps) -> usize {
    let bodies: usize = ops.enqueue.iter().map(|(_, b)| 12 + b.0.len()).sum();
    let offsets: usize = ops.offsets.iter().map(|(name, _)| 10 + name.len()).sum();
    // Tag, log id and term; then the parts, each after its count.
    1 + 24
        + 8
        + 4
        + bodies
        + 4
        + 8 * ops.settle.len()
        + 4
        + 8 * ops.returned.len()
        + 4
        + offsets
        + 4
        + 9 * ops.dead_lettered.len()
        + 4
        + 28 * ops.sources.len()
}

/// About the bytes `entry` takes encoded: exactly as many or a few more,
/// but for a membership change's JSON (rare and small, counted as 256
/// bytes). What an append request's size is reckoned in, to reserve its
/// buffer and to keep it within its cap.
pub(super) fn entry_len(entry: &Entry<QueueTypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Blank => 1 + 24,
        EntryPayload::Normal(ops) => normal_len(ops),
        EntryPayload::Membership(_) => 1 + 24 + 4 + 256,
    }
}

/// Appends `entry`'s encoding to `out`.
pub fn encode_entry(entry: &Entry<QueueTypeConfig>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match &entry.payload {
        EntryPayload::Blank => {
            out.put_u8(BLANK);
            put_log_id(out, &entry.log_id);
        }
        EntryPayload::Normal(ops) => {
            out.reserve(normal_len(ops));
            let sources = !ops.sources.is_empty();
            let dying = sources || !ops.dead_lettered.is_empty();
            out.put_u8(match (ops.term, ops.offsets.is_empty()) {
                _ if sources => NORMAL_SOURCES,
                _ if dying => NORMAL_DYING,
                (Some(_), _) => NORMAL_TERM,
                (None, true) => NORMAL,
                (None, false) => NORMAL_OFFSETS,
            });
            put_log_id(out, &entry.log_id);
            if dying {
                // Only a leader of this version proposes these, and it
                // always gives its term.
                out.put_u64_le(ops.term.unwrap_or(entry.log_id.leader_id.term));
            } else if let Some(term) = ops.term {
                out.put_u64_le(term);
            }
            out.put_u32_le(ops.enqueue.len() as u32);
            for (id, body) in &ops.enqueue {
                let len = u32::try_from(body.0.len())
                    .map_err(|_| CodecError("a record over 4 GiB".into()))?;
                out.put_u64_le(*id);
                out.put_u32_le(len);
                out.put_slice(&body.0);
            }
            put_ids(out, &ops.settle);
            put_ids(out, &ops.returned);
            if dying || ops.term.is_some() || !ops.offsets.is_empty() {
                out.put_u32_le(ops.offsets.len() as u32);
                for (name, offset) in &ops.offsets {
                    let len = u16::try_from(name.len())
                        .map_err(|_| CodecError("a consumer name over 64 KiB".into()))?;
                    out.put_u16_le(len);
                    out.put_slice(name.as_bytes());
                    out.put_u64_le(*offset);
                }
            }
            if dying {
                put_dying(out, ops.dead_lettered.iter().copied());
            }
            if sources {
                out.put_u32_le(ops.sources.len() as u32);
                for r in &ops.sources {
                    out.put_u64_le(r.run);
                    out.put_u64_le(r.seq);
                    out.put_u64_le(r.id);
                    out.put_u32_le(r.count);
                }
            }
        }
        EntryPayload::Membership(m) => {
            out.put_u8(MEMBERSHIP);
            put_log_id(out, &entry.log_id);
            let json = serde_json::to_vec(m).map_err(|e| CodecError(e.to_string()))?;
            out.put_u32_le(json.len() as u32);
            out.put_slice(&json);
        }
    }
    Ok(())
}

/// Reads one entry from the front of `buf` (advancing it). Each record is
/// copied into its own buffer.
pub fn decode_entry(buf: &mut &[u8]) -> Result<Entry<QueueTypeConfig>, CodecError> {
    let tag = get_u8(buf, "entry")?;
    let log_id = get_log_id(buf)?;
    let payload = match tag {
        BLANK => EntryPayload::Blank,
        NORMAL | NORMAL_OFFSETS | NORMAL_TERM | NORMAL_DYING | NORMAL_SOURCES => {
            let term = match tag {
                NORMAL_TERM | NORMAL_DYING | NORMAL_SOURCES => Some(get_u64(buf, "term")?),
                _ => None,
            };
            let n = get_count(buf, 12, "enqueues")?;
            let mut enqueue = Vec::with_capacity(n);
            for _ in 0..n {
                let id = get_u64(buf, "enqueue")?;
                enqueue.push((id, get_record(buf, "record")?));
            }
            let settle = get_ids(buf, "settles")?;
            let returned = get_ids(buf, "returns")?;
            let mut offsets = Vec::new();
            if tag != NORMAL {
                let n = get_count(buf, 10, "offsets")?;
                for _ in 0..n {
                    let len = usize::from(u16::from_le_bytes([
                        get_u8(buf, "offset")?,
                        get_u8(buf, "offset")?,
                    ]));
                    let name = std::str::from_utf8(get_slice(buf, len, "offset")?)
                        .map_err(|_| CodecError("a consumer name not UTF-8".into()))?;
                    offsets.push((name.to_owned(), get_u64(buf, "offset")?));
                }
            }
            let dead_lettered = match tag {
                NORMAL_DYING | NORMAL_SOURCES => get_dying(buf)?,
                _ => Vec::new(),
            };
            let mut sources = Vec::new();
            if tag == NORMAL_SOURCES {
                let n = get_count(buf, 28, "sources")?;
                for _ in 0..n {
                    sources.push(SourceRange {
                        run: get_u64(buf, "source")?,
                        seq: get_u64(buf, "source")?,
                        id: get_u64(buf, "source")?,
                        count: get_u32(buf, "source")?,
                    });
                }
            }
            EntryPayload::Normal(QueueOps {
                enqueue,
                settle,
                returned,
                dead_lettered,
                offsets,
                term,
                sources,
            })
        }
        MEMBERSHIP => {
            let len = get_u32(buf, "membership")? as usize;
            let json = get_slice(buf, len, "membership")?;
            EntryPayload::Membership(
                serde_json::from_slice(json).map_err(|e| CodecError(e.to_string()))?,
            )
        }
        other => return Err(CodecError(format!("unknown tag {other:#x}"))),
    };
    Ok(Entry { log_id, payload })
}

/// One record of the log: binary, or JSON as an older version wrote it.
pub fn decode_record(raw: &[u8]) -> Result<Entry<QueueTypeConfig>, CodecError> {
    if raw.first() == Some(&b'{') {
        return serde_json::from_slice(raw).map_err(|e| CodecError(e.to_string()));
    }
    let mut buf = raw;
    let entry = decode_entry(&mut buf)?;
    if buf.has_remaining() {
        return Err(CodecError(format!("{} bytes after the entry", buf.len())));
    }
    Ok(entry)
}

fn put_vote(out: &mut Vec<u8>, vote: &Vote<NodeId>) {
    out.put_u64_le(vote.leader_id.term);
    out.put_u64_le(vote.leader_id.node_id);
    out.put_u8(u8::from(vote.committed));
}

fn get_vote(buf: &mut &[u8]) -> Result<Vote<NodeId>, CodecError> {
    let term = get_u64(buf, "vote")?;
    let node = get_u64(buf, "vote")?;
    let committed = get_u8(buf, "vote")? != 0;
    Ok(if committed {
        Vote::new_committed(term, node)
    } else {
        Vote::new(term, node)
    })
}

fn put_opt_log_id(out: &mut Vec<u8>, id: &Option<LogId<NodeId>>) {
    match id {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            put_log_id(out, id);
        }
    }
}

fn get_opt_log_id(buf: &mut &[u8]) -> Result<Option<LogId<NodeId>>, CodecError> {
    match get_u8(buf, "log id")? {
        0 => Ok(None),
        _ => get_log_id(buf).map(Some),
    }
}

/// Appends a queue group's append-entries request: the group's id, the
/// leader's vote, the previous and committed log ids, the entries.
pub fn encode_append(
    group: &str,
    rpc: &openraft::raft::AppendEntriesRequest<QueueTypeConfig>,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let name = u16::try_from(group.len()).map_err(|_| CodecError("group id too long".into()))?;
    out.put_u16_le(name);
    out.put_slice(group.as_bytes());
    put_vote(out, &rpc.vote);
    put_opt_log_id(out, &rpc.prev_log_id);
    put_opt_log_id(out, &rpc.leader_commit);
    out.put_u32_le(rpc.entries.len() as u32);
    // Room for them all at once: reserved one by one, each large entry
    // doubled the request and copied the ones before it.
    out.reserve(rpc.entries.iter().map(entry_len).sum());
    for e in &rpc.entries {
        encode_entry(e, out)?;
    }
    Ok(())
}

/// Reads what [`encode_append`] wrote.
pub fn decode_append(
    mut buf: &[u8],
) -> Result<
    (
        String,
        openraft::raft::AppendEntriesRequest<QueueTypeConfig>,
    ),
    CodecError,
> {
    let len =
        u16::from_le_bytes([get_u8(&mut buf, "group id")?, get_u8(&mut buf, "group id")?]) as usize;
    let group = String::from_utf8(get_slice(&mut buf, len, "group id")?.to_vec())
        .map_err(|_| CodecError("group id not UTF-8".into()))?;
    let vote = get_vote(&mut buf)?;
    let prev_log_id = get_opt_log_id(&mut buf)?;
    let leader_commit = get_opt_log_id(&mut buf)?;
    let n = get_count(&mut buf, 25, "entries")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(decode_entry(&mut buf)?);
    }
    if buf.has_remaining() {
        return Err(CodecError(format!("{} bytes after the entries", buf.len())));
    }
    Ok((
        group,
        openraft::raft::AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        },
    ))
}

/// A snapshot's data as sent to a member: the id the next enqueue gets,
/// then each message left (id, delivery count, record), in id order,
/// encoded one message at a time as its record is read from disk.
pub(super) struct MessagesEncoder {
    out: Vec<u8>,
    dying: Vec<(u64, u8)>,
    seen: Seen,
}

impl MessagesEncoder {
    /// `count` messages will follow, of about `bytes` in all.
    pub(super) fn new(next_id: u64, count: usize, bytes: usize) -> MessagesEncoder {
        let mut out = Vec::with_capacity(13 + bytes);
        out.put_u8(SNAPSHOT);
        out.put_u64_le(next_id);
        out.put_u32_le(count as u32);
        MessagesEncoder {
            out,
            dying: Vec::new(),
            seen: Seen::default(),
        }
    }

    pub(super) fn push(&mut self, id: u64, delivery_count: u32, record: &[u8]) {
        self.out.put_u64_le(id);
        self.out.put_u32_le(delivery_count);
        self.out.put_u32_le(record.len() as u32);
        self.out.put_slice(record);
    }

    /// The message pushed with `id` is dying, for this reason's code.
    pub(super) fn dying(&mut self, id: u64, code: u8) {
        self.dying.push((id, code));
    }

    /// What the set applied of forwarding runs.
    pub(super) fn seen(&mut self, seen: &Seen) {
        self.seen = seen.clone();
    }

    /// The data, with the dying messages and the forwarded runs after the
    /// messages (if any).
    pub(super) fn finish(mut self) -> Vec<u8> {
        put_tail(&mut self.out, self.dying, &self.seen);
        self.out
    }
}

/// Reads what [`MessagesEncoder`] wrote, or a snapshot's data as an older
/// version wrote it (JSON, bodies in base64).
pub(super) fn decode_messages(raw: &[u8]) -> Result<Messages, CodecError> {
    if raw.first() == Some(&b'{') {
        return serde_json::from_slice(raw).map_err(|e| CodecError(e.to_string()));
    }
    let mut buf = raw;
    if get_u8(&mut buf, "snapshot")? != SNAPSHOT {
        return Err(CodecError("not a snapshot".into()));
    }
    let next_id = get_u64(&mut buf, "snapshot")?;
    let n = get_count(&mut buf, 16, "snapshot")?;
    let mut set = Messages {
        messages: std::collections::BTreeMap::new(),
        next_id,
        seen: Seen::default(),
    };
    for _ in 0..n {
        let id = get_u64(&mut buf, "message")?;
        let delivery_count = get_u32(&mut buf, "message")?;
        let record = get_record(&mut buf, "record")?;
        set.messages.insert(
            id,
            Held {
                record,
                delivery_count,
                dying: None,
            },
        );
    }
    set.seen = read_tail(&mut buf, |id, code| {
        if let Some(m) = set.messages.get_mut(&id) {
            m.dying = Some(code);
        }
    })?;
    Ok(set)
}

/// A member's own snapshot of its set, the records staying in its record
/// segments: the tag, the next id, the segments' [`Mark`], then each
/// message's id, delivery count and [`RecordRef`] (24 bytes each).
pub(super) fn encode_refs(set: &StoredSet, mark: Mark) -> Vec<u8> {
    let mut out = Vec::with_capacity(29 + 24 * set.messages.len());
    out.put_u8(SNAPSHOT_REFS);
    out.put_u64_le(set.next_id);
    out.put_u32_le(mark.segment);
    out.put_u64_le(mark.len);
    out.put_u32_le(set.messages.len() as u32);
    for (&id, m) in &set.messages {
        out.put_u64_le(id);
        out.put_u32_le(m.delivery_count);
        out.put_u32_le(m.at.segment);
        out.put_u32_le(m.at.offset);
        out.put_u32_le(m.at.len);
    }
    let dying = set
        .messages
        .iter()
        .filter_map(|(&id, m)| Some((id, m.dying?)));
    put_tail(&mut out, dying.collect(), &set.seen);
    out
}

/// Whether a snapshot's data is [`encode_refs`]'s (else it holds the
/// records themselves: [`decode_messages`]).
pub(super) fn is_refs(raw: &[u8]) -> bool {
    raw.first() == Some(&SNAPSHOT_REFS)
}

/// Reads what [`encode_refs`] wrote.
pub(super) fn decode_refs(raw: &[u8]) -> Result<(StoredSet, Mark), CodecError> {
    let mut buf = raw;
    if get_u8(&mut buf, "snapshot")? != SNAPSHOT_REFS {
        return Err(CodecError("not a snapshot of references".into()));
    }
    let next_id = get_u64(&mut buf, "snapshot")?;
    let mark = Mark {
        segment: get_u32(&mut buf, "snapshot")?,
        len: get_u64(&mut buf, "snapshot")?,
    };
    let n = get_count(&mut buf, 24, "snapshot")?;
    let mut set = StoredSet {
        messages: std::collections::BTreeMap::new(),
        next_id,
        seen: Seen::default(),
    };
    for _ in 0..n {
        let id = get_u64(&mut buf, "message")?;
        let delivery_count = get_u32(&mut buf, "message")?;
        let at = RecordRef {
            segment: get_u32(&mut buf, "message")?,
            offset: get_u32(&mut buf, "message")?,
            len: get_u32(&mut buf, "message")?,
        };
        set.messages.insert(
            id,
            Stored {
                at,
                delivery_count,
                dying: None,
            },
        );
    }
    set.seen = read_tail(&mut buf, |id, code| {
        if let Some(m) = set.messages.get_mut(&id) {
            m.dying = Some(code);
        }
    })?;
    Ok((set, mark))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn entries() -> Vec<Entry<QueueTypeConfig>> {
        let nodes: BTreeMap<NodeId, BasicNode> =
            [(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))]
                .into_iter()
                .collect();
        let voters: BTreeSet<NodeId> = [1, 2].into_iter().collect();
        vec![
            Entry {
                log_id: log_id(1, 7, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 7, 2),
                payload: EntryPayload::Normal(QueueOps {
                    enqueue: vec![
                        (3, Body(Bytes::from_static(b"\x00\xff{record}"))),
                        (4, Body(Bytes::new())),
                    ],
                    settle: vec![1, 2],
                    returned: vec![9],
                    dead_lettered: Vec::new(),
                    offsets: Vec::new(),
                    term: None,
                    sources: Vec::new(),
                }),
            },
            Entry {
                log_id: log_id(3, 7, 5),
                payload: EntryPayload::Normal(QueueOps {
                    settle: vec![2],
                    dead_lettered: vec![(4, 0), (8, 3)],
                    term: Some(3),
                    ..QueueOps::default()
                }),
            },
            Entry {
                log_id: log_id(1, 7, 3),
                payload: EntryPayload::Normal(QueueOps {
                    enqueue: vec![(5, Body(Bytes::from_static(b"r")))],
                    offsets: vec![("consumer-1".into(), 42), (String::new(), 0)],
                    ..QueueOps::default()
                }),
            },
            Entry {
                log_id: log_id(3, 7, 4),
                payload: EntryPayload::Normal(QueueOps {
                    enqueue: vec![(6, Body(Bytes::from_static(b"t")))],
                    term: Some(3),
                    ..QueueOps::default()
                }),
            },
            // Forwarded messages' sources, without and with dead letters.
            Entry {
                log_id: log_id(4, 7, 6),
                payload: EntryPayload::Normal(QueueOps {
                    enqueue: vec![
                        (7, Body(Bytes::from_static(b"u"))),
                        (8, Body(Bytes::from_static(b"v"))),
                    ],
                    term: Some(4),
                    sources: vec![
                        SourceRange {
                            run: u64::MAX,
                            seq: 1,
                            id: 7,
                            count: 1,
                        },
                        SourceRange {
                            run: 5,
                            seq: 1 << 40,
                            id: 8,
                            count: 1,
                        },
                    ],
                    ..QueueOps::default()
                }),
            },
            Entry {
                log_id: log_id(4, 7, 7),
                payload: EntryPayload::Normal(QueueOps {
                    enqueue: vec![(9, Body(Bytes::from_static(b"w")))],
                    dead_lettered: vec![(2, 1)],
                    term: Some(4),
                    sources: vec![SourceRange {
                        run: 5,
                        seq: 9,
                        id: 9,
                        count: 1,
                    }],
                    ..QueueOps::default()
                }),
            },
            Entry {
                log_id: log_id(2, u64::MAX, 3),
                payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
            },
        ]
    }

    #[test]
    fn a_large_entry_is_written_into_one_buffer_of_its_size() {
        // Every part there is, and a large message.
        let ops = QueueOps {
            enqueue: vec![
                (1, Body(Bytes::from(vec![7u8; 1 << 20]))),
                (2, Body(Bytes::from_static(b"x"))),
            ],
            settle: vec![3, 4],
            returned: vec![5],
            offsets: vec![("consumer-1".into(), 42)],
            term: Some(3),
            dead_lettered: vec![(6, 1)],
            sources: vec![SourceRange {
                run: 1,
                seq: 1,
                id: 1,
                count: 2,
            }],
        };
        for ops in [
            ops.clone(),
            QueueOps {
                dead_lettered: Vec::new(),
                ..ops.clone()
            },
            QueueOps {
                dead_lettered: Vec::new(),
                sources: Vec::new(),
                ..ops
            },
        ] {
            let e = Entry {
                log_id: log_id(3, 7, 9),
                payload: EntryPayload::Normal(ops),
            };
            let mut raw = Vec::new();
            encode_entry(&e, &mut raw).unwrap();
            // Grown on the way, the buffer doubled (and every message
            // was copied again).
            assert!(
                raw.capacity() <= raw.len() + 64,
                "{} bytes in a buffer of {}",
                raw.len(),
                raw.capacity()
            );
            assert_eq!(decode_record(&raw).unwrap(), e);
        }
    }

    #[test]
    fn an_append_of_large_entries_is_written_into_one_buffer_of_its_size() {
        let big = |index| Entry {
            log_id: log_id(3, 7, index),
            payload: EntryPayload::Normal(QueueOps {
                enqueue: vec![(index, Body(Bytes::from(vec![7u8; 1 << 20])))],
                term: Some(3),
                ..QueueOps::default()
            }),
        };
        let rpc = openraft::raft::AppendEntriesRequest {
            vote: Vote::new_committed(3, 7),
            prev_log_id: Some(log_id(3, 7, 1)),
            leader_commit: Some(log_id(3, 7, 1)),
            entries: vec![big(2), big(3), big(4)],
        };
        let mut out = Vec::new();
        encode_append("group", &rpc, &mut out).unwrap();
        assert!(
            out.capacity() <= out.len() + 256,
            "{} bytes in a buffer of {}",
            out.len(),
            out.capacity()
        );
        let (group, back) = decode_append(&out).unwrap();
        assert_eq!(group, "group");
        assert_eq!(back.entries, rpc.entries);
    }

    #[test]
    fn entries_round_trip_and_old_json_records_still_read() {
        for e in entries() {
            let mut raw = Vec::new();
            encode_entry(&e, &mut raw).unwrap();
            assert_ne!(raw[0], b'{');
            assert_eq!(decode_record(&raw).unwrap(), e);
            let json = serde_json::to_vec(&e).unwrap();
            assert_eq!(decode_record(&json).unwrap(), e);
        }
    }

    #[test]
    fn append_requests_round_trip() {
        let rpc = openraft::raft::AppendEntriesRequest {
            vote: Vote::new_committed(4, 7),
            prev_log_id: Some(log_id(3, 7, 10)),
            entries: entries(),
            leader_commit: None,
        };
        let mut raw = Vec::new();
        encode_append("0123abcd", &rpc, &mut raw).unwrap();
        let (group, back) = decode_append(&raw).unwrap();
        assert_eq!(group, "0123abcd");
        assert_eq!(back.vote, rpc.vote);
        assert_eq!(back.prev_log_id, rpc.prev_log_id);
        assert_eq!(back.leader_commit, rpc.leader_commit);
        assert_eq!(back.entries, rpc.entries);
    }

    #[test]
    fn snapshots_round_trip_and_old_json_ones_still_read() {
        let msgs = vec![
            (3, 0, None, Bytes::from_static(b"\x00\xffone")),
            (9, 2, Some(3), Bytes::new()),
        ];
        let mut enc = MessagesEncoder::new(10, msgs.len(), 0);
        for (id, dc, dying, record) in &msgs {
            enc.push(*id, *dc, record);
            if let Some(code) = dying {
                enc.dying(*id, *code);
            }
        }
        let raw = enc.finish();
        let set = decode_messages(&raw).unwrap();
        assert_eq!(set.next_id, 10);
        let got: Vec<(u64, u32, Option<u8>, Bytes)> = set
            .messages
            .iter()
            .map(|(id, h)| (*id, h.delivery_count, h.dying, h.record.0.clone()))
            .collect();
        assert_eq!(got, msgs);
        let json = serde_json::to_vec(&set).unwrap();
        let back = decode_messages(&json).unwrap();
        assert_eq!(back.next_id, 10);
        assert_eq!(back.messages.len(), 2);
        assert_eq!(back.messages[&9].dying, Some(3));
        // Cut anywhere but where the dying messages start (a snapshot
        // without any ends there): an error, never a panic.
        let without_dying = raw.len() - 4 - 9;
        for cut in (0..raw.len()).filter(|&c| c != without_dying) {
            assert!(decode_messages(&raw[..cut]).is_err(), "cut at {cut}");
        }
    }

    fn stored(delivery_count: u32, dying: Option<u8>) -> Stored {
        let at = RecordRef {
            segment: 1,
            offset: 2,
            len: 3,
        };
        Stored {
            at,
            delivery_count,
            dying,
        }
    }

    #[test]
    fn snapshots_of_references_keep_the_dying_messages() {
        let mut set = StoredSet {
            messages: BTreeMap::new(),
            next_id: 12,
            seen: Seen::default(),
        };
        set.messages.insert(4, stored(1, None));
        set.messages.insert(5, stored(0, Some(1)));
        let mark = Mark {
            segment: 2,
            len: 99,
        };
        let (back, m) = decode_refs(&encode_refs(&set, mark)).unwrap();
        assert_eq!((m.segment, m.len, back.next_id), (2, 99, 12));
        let got: Vec<_> = back.messages.iter().map(|(id, s)| (*id, s.dying)).collect();
        assert_eq!(got, [(4, None), (5, Some(1))]);
        // Without dying messages the data is as older versions wrote it.
        set.messages.remove(&5);
        assert_eq!(encode_refs(&set, mark).len(), 25 + 24);
        // Forwarded runs come after the dying messages (here none).
        set.seen.admit(&[source(3, 7, 1)], 5);
        let (back, _) = decode_refs(&encode_refs(&set, mark)).unwrap();
        assert_eq!(back.seen, set.seen);
        assert_eq!(back.messages.len(), 1);
    }

    fn source(run: u64, seq: u64, id: u64) -> SourceRange {
        SourceRange {
            run,
            seq,
            id,
            count: 1,
        }
    }

    /// What a member applied of forwarding runs travels in the snapshot it
    /// sends, with or without dying messages.
    #[test]
    fn snapshots_sent_keep_the_forwarded_runs() {
        for dying in [None, Some(2)] {
            let mut seen = Seen::default();
            seen.admit(&[source(9, 4, 1), source(8, 1, 2)], 3);
            let mut enc = MessagesEncoder::new(3, 1, 0);
            enc.push(1, 0, b"m");
            if let Some(code) = dying {
                enc.dying(1, code);
            }
            enc.seen(&seen);
            let raw = enc.finish();
            let set = decode_messages(&raw).unwrap();
            assert_eq!(set.seen, seen);
            assert_eq!(set.messages[&1].dying, dying);
            assert!(decode_messages(&raw[..raw.len() - 1]).is_err());
        }
    }

    #[test]
    fn a_decoded_record_does_not_hold_on_to_its_frame() {
        let mut raw = Vec::new();
        encode_entry(&entries()[1], &mut raw).unwrap();
        let range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
        let entry = decode_entry(&mut raw.as_slice()).unwrap();
        let EntryPayload::Normal(ops) = entry.payload else {
            panic!("not a normal entry");
        };
        let record = &ops.enqueue[0].1 .0;
        assert_eq!(&record[..], b"\x00\xff{record}");
        assert!(!range.contains(&(record.as_ptr() as usize)));
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error_not_a_panic() {
        let mut raw = Vec::new();
        for e in entries() {
            encode_entry(&e, &mut raw).unwrap();
        }
        for cut in 0..raw.len() {
            let mut buf = &raw[..cut];
            while buf.has_remaining() {
                if decode_entry(&mut buf).is_err() {
                    break;
                }
            }
        }
        // A count far beyond the input.
        let mut bad = vec![NORMAL];
        bad.extend_from_slice(&[0; 24]);
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_record(&bad).is_err());
        assert!(decode_record(&[0x42]).is_err());
    }
}
