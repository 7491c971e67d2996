//! Streams: append-only, replayable logs (`x-queue-type: stream`).
//!
//! A stream is not a queue: consuming does not remove anything. Each
//! message gets the next offset when it is appended; any number of
//! consumers read from an offset of their choosing at their own pace
//! ([`Reader`]), and retention (`x-max-length-bytes`, `x-max-age`) drops
//! whole segments from the old end. The log is RabbitMQ's on-disk format
//! (osiris chunks of AMQP 1.0 records, see [`log`] and [`record`]), so the
//! stream protocol can send stored chunks as they are.
//!
//! The publish path appends to streams beside queues (routing reaches both
//! by name); a channel's consumers of a stream read through their own
//! reader and take credit from their prefetch window, which acks give back
//! (`channel/stream.rs`). Group commit covers streams like queues
//! ([`Durable`]): a confirm goes out once the chunk holding the message is
//! fsynced.

pub mod args;
mod log;
pub mod reader;
pub mod record;
mod replica;
pub mod sac;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use antre_amqp::FieldTable;
use antre_store::{DirtyHook, PendingSync, StoreError};
use parking_lot::Mutex;

pub use args::{Filter, OffsetSpec, StreamArgs};
pub use log::Recovered;
pub use reader::Reader;
pub use replica::ChunkSource;

use crate::clock::Clock;
use crate::durable::Durable;
use crate::error::{queue_ref, BrokerError};
use crate::message::Message;
use crate::policy::AppliedPolicy;
use crate::queue::{ConnectionId, ConsumerId, Credit, DeliverySink};
use log::{Log, SEGMENT_START};
use reader::Located;

/// Wakes a consumer's channel when a stream it waits on has new chunks.
#[derive(Clone)]
pub struct StreamWaker(Arc<dyn Fn() + Send + Sync>);

impl StreamWaker {
    /// A waker that calls `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> StreamWaker {
        StreamWaker(Arc::new(f))
    }

    /// Wakes whoever waits.
    pub fn wake(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for StreamWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamWaker")
    }
}

/// A consumer of a stream, as the stream knows it (to list it, and to
/// cancel it when the stream is deleted).
#[derive(Debug, Clone)]
pub struct StreamConsumer {
    /// Broker-wide id.
    pub id: ConsumerId,
    /// Its tag on its channel.
    pub tag: Arc<str>,
    /// Its connection.
    pub connection: ConnectionId,
    /// Its channel number.
    pub channel: u16,
    /// Where a cancel goes.
    pub sink: Arc<dyn DeliverySink>,
    /// Its prefetch window.
    pub credit: Arc<Credit>,
    /// The offset of the next message it will be sent.
    pub offset: Arc<AtomicU64>,
    /// A member of a single-active-consumer group: whether it is the
    /// active one now (set by its connection as the group decides).
    pub single_active: Option<Arc<AtomicBool>>,
}

/// A consumer of a stream, as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumerInfo {
    /// Its tag.
    pub tag: String,
    /// Its connection.
    pub connection: ConnectionId,
    /// Its channel number.
    pub channel: u16,
    /// Its prefetch window.
    pub prefetch: u32,
    /// Deliveries not acked yet.
    pub unacked: u32,
    /// The offset of the next message it will be sent.
    pub offset: u64,
    /// Whether it is sent messages.
    pub activity: crate::queue::Activity,
}

/// A message as a stream-protocol publisher sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedRecord {
    /// Its publishing id.
    pub id: u64,
    /// Its filter value (publish version 2).
    pub filter_value: Option<String>,
    /// The AMQP 1.0 message.
    pub message: bytes::Bytes,
}

/// A stream's figures, for listings and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamInfo {
    /// Messages held (offsets from the first to the last).
    pub messages: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The oldest offset held.
    pub first_offset: u64,
    /// The newest offset written, if any.
    pub last_offset: Option<u64>,
    /// The first offset of the newest chunk written, if any.
    pub last_chunk_id: Option<u64>,
    /// Segment files.
    pub segments: usize,
    /// Consumers attached.
    pub consumers: u32,
    /// Messages appended since the broker started.
    pub published: u64,
    /// Messages delivered since the broker started.
    pub delivered: u64,
}

struct StreamState {
    log: Log,
    /// Retention in effect: the arguments merged with the policies.
    retention: StreamArgs,
    /// The policies that apply.
    policy: AppliedPolicy,
    /// Consumers waiting for the next chunk.
    waiters: Vec<StreamWaker>,
    consumers: Vec<StreamConsumer>,
    deleted: bool,
    on_dirty: Option<DirtyHook>,
}

impl StreamState {
    /// Something was appended: if the log was clean before (`was_dirty`
    /// false), the syncer is told it owes the stream a sync.
    fn dirtied(&self, was_dirty: bool) {
        if !was_dirty {
            if let Some(hook) = &self.on_dirty {
                hook();
            }
        }
    }
}

impl std::fmt::Debug for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("log", &self.log)
            .field("waiters", &self.waiters.len())
            .field("consumers", &self.consumers.len())
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

/// A stream.
#[derive(Debug)]
pub struct Stream {
    /// Its name.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// Its declaration arguments (`x-queue-type: stream` among them).
    pub arguments: FieldTable,
    /// What they ask for.
    pub args: StreamArgs,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    published: AtomicU64,
    delivered: AtomicU64,
    state: Mutex<StreamState>,
    /// In a cluster, the stream's Raft group (see [`replica`]): set once.
    replica: std::sync::OnceLock<Arc<dyn crate::replicated::QueueReplica>>,
}

fn failed(stream: &Stream, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Internal(format!("log of {} failed: {e}", stream.describe()))
}

impl Stream {
    /// Opens (or creates) the stream whose log lives in `dir`.
    pub fn open(
        vhost: &str,
        name: &str,
        arguments: FieldTable,
        dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Stream>, BrokerError> {
        let args = StreamArgs::parse(&arguments, vhost, name)?;
        let (mut log, stats) = Log::open(dir, args.max_segment_size).map_err(|e| {
            BrokerError::Internal(format!("opening {}: {e}", queue_ref(vhost, name)))
        })?;
        log.set_filter_size(args.filter_size);
        if stats.chunks > 0 || stats.bytes_truncated > 0 {
            tracing::info!(vhost, stream = name, ?stats, "recovered stream");
        }
        Ok(Arc::new(Stream {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            arguments,
            args: args.clone(),
            dir: dir.to_owned(),
            clock,
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            state: Mutex::new(StreamState {
                log,
                retention: args,
                policy: AppliedPolicy::default(),
                waiters: Vec::new(),
                consumers: Vec::new(),
                deleted: false,
                on_dirty: None,
            }),
            replica: std::sync::OnceLock::new(),
        }))
    }

    /// `queue 's' in vhost '/'`, as RabbitMQ names it.
    pub fn describe(&self) -> String {
        queue_ref(&self.vhost, &self.name)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn now(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// Appends a message. It is written with the next chunk and durable
    /// once a sync covers it (the caller asks the syncer before a confirm).
    pub fn publish(&self, message: &Message) -> Result<(), BrokerError> {
        let record = record::to_record(message);
        let filter_value = record::filter_value(message);
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(());
        }
        let was_dirty = st.log.is_dirty();
        let wrote = st
            .log
            .append_from(&record, None, filter_value, now)
            .map_err(|e| failed(self, e))?;
        self.published.fetch_add(1, Ordering::Relaxed);
        st.dirtied(was_dirty);
        if wrote {
            self.after_write(&mut st, now);
        }
        Ok(())
    }

    /// Appends records as a stream-protocol publisher sent them (AMQP 1.0
    /// messages, stored as they are but for a filter value, see
    /// [`record::with_filter_value`]). A named publisher's records whose
    /// publishing id is not above its last one are duplicates: they are
    /// dropped, and `accepted` says which were kept.
    pub fn publish_records(
        &self,
        writer: Option<&str>,
        records: &[PublishedRecord],
        accepted: &mut Vec<bool>,
    ) -> Result<(), BrokerError> {
        let now = self.now();
        let mut st = self.state.lock();
        accepted.clear();
        if st.deleted {
            return Err(BrokerError::NotFound(format!("no {}", self.describe())));
        }
        let was_dirty = st.log.is_dirty();
        let mut last = writer.map(|w| st.log.last_sequence(w));
        let mut wrote = false;
        for r in records {
            if let Some(last) = &mut last {
                if last.is_some_and(|l| r.id <= l) {
                    accepted.push(false);
                    continue;
                }
                *last = Some(r.id);
            }
            let from = writer.map(|w| (w, r.id));
            wrote |= st
                .log
                .append_from(&r.message, from, r.filter_value.as_deref(), now)
                .map_err(|e| failed(self, e))?;
            accepted.push(true);
        }
        let n = accepted.iter().filter(|a| **a).count() as u64;
        self.published.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            st.dirtied(was_dirty);
        }
        if wrote {
            self.after_write(&mut st, now);
        }
        Ok(())
    }

    /// A named publisher's last publishing id (None: it never published).
    pub fn last_sequence(&self, writer: &str) -> Option<u64> {
        self.state.lock().log.last_sequence(writer)
    }

    /// Stores a named consumer's offset (the stream protocol's
    /// StoreOffset): durable with the next sync. A replicated stream's
    /// goes through its group (to the leader, from any member), and every
    /// member stores it as it applies it ([`Stream::replica_store_offset`]).
    pub fn store_offset(&self, reference: &str, offset: u64) -> Result<(), BrokerError> {
        match self.replica.get() {
            Some(r) => r.store_offset(reference, offset),
            None => self.replica_store_offset(reference, offset),
        }
    }

    /// Stores a named consumer's offset in this node's log (a single
    /// node's store, or a member applying its group's).
    pub fn replica_store_offset(&self, reference: &str, offset: u64) -> Result<(), BrokerError> {
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return Err(BrokerError::NotFound(format!("no {}", self.describe())));
        }
        let was_dirty = st.log.is_dirty();
        let wrote = st
            .log
            .store_offset(reference, offset, now)
            .map_err(|e| failed(self, e))?;
        st.dirtied(was_dirty);
        if wrote {
            self.after_write(&mut st, now);
        }
        Ok(())
    }

    /// A named consumer's stored offset.
    pub fn query_offset(&self, reference: &str) -> Option<u64> {
        self.state
            .lock()
            .log
            .tracking
            .offsets
            .get(reference)
            .copied()
    }

    /// A publisher's batch ended: writes the open chunk so consumers see
    /// it now rather than at the next sync.
    pub fn flush(&self) {
        let now = self.now();
        let mut st = self.state.lock();
        match st.log.seal(now) {
            Ok(true) => self.after_write(&mut st, now),
            Ok(false) => {}
            Err(e) => tracing::error!(stream = self.name, "{e}"),
        }
    }

    /// A chunk was written: apply retention, wake waiting consumers.
    fn after_write(&self, st: &mut StreamState, now: i64) {
        let (bytes, age) = (st.retention.max_length_bytes, st.retention.max_age_ms);
        if bytes.is_some() || age.is_some() {
            st.log.retain(bytes, age, now);
        }
        for w in st.waiters.drain(..) {
            w.wake();
        }
    }

    /// Time passes: segments older than `x-max-age` go.
    pub fn tick(&self, now: u64) {
        let mut st = self.state.lock();
        if let Some(age) = st.retention.max_age_ms {
            st.log.retain(None, Some(age), now as i64);
        }
    }

    /// Applies the policies selected for this stream: its retention becomes
    /// the stricter of its arguments and theirs (`max-length-bytes`,
    /// `max-age`), enforced at once. Returns whether the selection changed.
    pub fn apply_policy(&self, applied: AppliedPolicy) -> bool {
        let now = self.now();
        let mut st = self.state.lock();
        if st.policy == applied {
            return false;
        }
        st.retention = self.args.with_policy(&applied.definition());
        st.policy = applied;
        // Segments already written keep their size; the next ones roll at
        // the new one.
        let segment = st.retention.max_segment_size;
        st.log.set_max_segment_size(segment);
        let (bytes, age) = (st.retention.max_length_bytes, st.retention.max_age_ms);
        if bytes.is_some() || age.is_some() {
            st.log.retain(bytes, age, now);
        }
        true
    }

    /// The policies that apply to this stream.
    pub fn policy(&self) -> AppliedPolicy {
        self.state.lock().policy.clone()
    }

    /// The retention in effect (arguments merged with policies).
    pub fn retention(&self) -> StreamArgs {
        self.state.lock().retention.clone()
    }

    /// A reader starting where `spec` says. The open chunk is written
    /// first, so `next` and `last` mean what was published before.
    pub fn reader(self: &Arc<Self>, spec: OffsetSpec) -> Result<Reader, BrokerError> {
        let now = self.now();
        let mut st = self.state.lock();
        if st.log.seal(now).map_err(|e| failed(self, e))? {
            self.after_write(&mut st, now);
        }
        let log = &st.log;
        let end = log.written_next;
        let at_end = |skip: u64| {
            let seg = log.segments.back();
            (
                seg.map(|s| s.first_offset),
                seg.map_or(SEGMENT_START, |s| s.size),
                end,
                skip,
                None,
            )
        };
        let (segment, pos, next, skip, not_before) = match spec {
            OffsetSpec::Next => at_end(end),
            OffsetSpec::Last => match log.segments.back() {
                Some(s) if s.chunks > 0 => (Some(s.first_offset), s.last_chunk_pos, 0, 0, None),
                _ => at_end(end),
            },
            OffsetSpec::First => {
                let first = log.first_offset();
                let seg = log.segments.front().map(|s| s.first_offset);
                (seg, SEGMENT_START, first, first, None)
            }
            OffsetSpec::Offset(n) if n >= end => at_end(n),
            OffsetSpec::Offset(n) => match log.segment_for(n) {
                Some(s) => (Some(s.first_offset), SEGMENT_START, s.first_offset, n, None),
                None => at_end(n),
            },
            OffsetSpec::Timestamp(t) => match log.segment_for_time(t as i64) {
                Some(s) => (
                    Some(s.first_offset),
                    SEGMENT_START,
                    s.first_offset,
                    0,
                    Some(t as i64),
                ),
                None => at_end(end),
            },
        };
        let generation = st.log.generation;
        drop(st);
        Ok(Reader::new(
            Arc::clone(self),
            segment,
            pos,
            next,
            skip,
            not_before,
            generation,
        ))
    }

    /// Where a reader of `segment` (None: it has none yet) stands; `wanted`
    /// is the next offset it needs, to find where to go on from.
    /// `generation` is the log's the reader knew; it learns the new one
    /// with [`Located::Replaced`].
    pub(crate) fn locate(
        &self,
        segment: Option<u64>,
        wanted: u64,
        generation: &mut u64,
    ) -> Located {
        let st = self.state.lock();
        if *generation != st.log.generation {
            *generation = st.log.generation;
            return Located::Replaced(st.log.segment_for(wanted).map(|s| s.first_offset));
        }
        if let Some((meta, last)) = segment.and_then(|s| st.log.segment(s)) {
            let next = if last {
                None
            } else {
                st.log
                    .segments
                    .iter()
                    .find(|s| s.first_offset > meta.first_offset)
                    .map(|s| s.first_offset)
            };
            return Located::Here {
                size: meta.size,
                next,
            };
        }
        Located::Moved(st.log.segment_for(wanted).map(|s| s.first_offset))
    }

    /// Calls `waker` once the stream has records at or past `offset`.
    /// Returns true (and does not keep the waker) if it has them already.
    pub fn wait(&self, offset: u64, waker: StreamWaker) -> bool {
        let mut st = self.state.lock();
        if st.log.written_next > offset || st.deleted {
            return true;
        }
        st.waiters.push(waker);
        false
    }

    /// Counts deliveries to consumers.
    pub fn count_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Registers a consumer (for listing, and its cancel on deletion).
    pub fn add_consumer(&self, consumer: StreamConsumer) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(BrokerError::NotFound(format!("no {}", self.describe())));
        }
        st.consumers.push(consumer);
        Ok(())
    }

    /// Forgets a consumer.
    pub fn remove_consumer(&self, id: ConsumerId) {
        self.state.lock().consumers.retain(|c| c.id != id);
    }

    /// The stream's consumers and their offsets.
    pub fn consumers(&self) -> Vec<StreamConsumerInfo> {
        self.state
            .lock()
            .consumers
            .iter()
            .map(|c| StreamConsumerInfo {
                tag: c.tag.to_string(),
                connection: c.connection,
                channel: c.channel,
                prefetch: c.credit.limit(),
                unacked: c.credit.in_flight(),
                offset: c.offset.load(Ordering::Relaxed),
                activity: match &c.single_active {
                    None => crate::queue::Activity::Up,
                    Some(a) if a.load(Ordering::Relaxed) => crate::queue::Activity::SingleActive,
                    Some(_) => crate::queue::Activity::Waiting,
                },
            })
            .collect()
    }

    /// Its figures.
    pub fn info(&self) -> StreamInfo {
        let st = self.state.lock();
        let first = st.log.first_offset();
        let end = st.log.written_next + u64::from(st.log.open_records());
        StreamInfo {
            messages: end - first,
            bytes: st.log.bytes(),
            first_offset: first,
            last_offset: end.checked_sub(1),
            last_chunk_id: st.log.segments.iter().rev().find_map(|s| s.last_chunk_id),
            segments: st.log.segments.len(),
            consumers: st.consumers.len() as u32,
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    /// Deletes the stream: cancels its consumers and removes its files.
    /// Returns how many messages it held.
    pub fn delete(&self) -> u64 {
        let messages = self.info().messages;
        let mut st = self.state.lock();
        st.deleted = true;
        for c in st.consumers.drain(..) {
            c.sink.cancel(&c.tag);
        }
        for w in st.waiters.drain(..) {
            w.wake();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(
                stream = self.name,
                "could not remove the stream's files: {e}"
            );
        }
        messages
    }

    /// Writes and fsyncs what is open (clean shutdown).
    pub fn close(&self) {
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        if let Err(e) = st.log.close(now) {
            tracing::error!(stream = self.name, "closing stream log failed: {e}");
        }
        st.deleted = true;
    }
}

/// Group commit: the syncer writes the open chunk and fsyncs the segments
/// written since its last round, then a confirm may go out.
impl Durable for Stream {
    fn label(&self) -> &str {
        &self.name
    }

    fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        let wrote = st.log.seal(now);
        if matches!(wrote, Ok(true)) {
            self.after_write(&mut st, now);
        }
        let begun = wrote.and_then(|_| st.log.begin_sync());
        Some(match begun {
            Ok((files, dirs)) => Ok(PendingSync::for_files(self.dir.clone(), files, dirs)),
            Err(cause) => Err(StoreError::Poisoned {
                dir: self.dir.clone(),
                cause,
            }),
        })
    }

    fn finish_sync(
        &self,
        _pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.state.lock().log.finish_sync(result.is_ok());
        result
    }

    fn is_dirty(&self) -> bool {
        self.state.lock().log.is_dirty()
    }

    fn watch(&self, hook: DirtyHook) {
        self.state.lock().on_dirty = Some(hook);
    }

    fn flush(&self) {
        Stream::flush(self);
    }
}

#[cfg(test)]
mod tests;
