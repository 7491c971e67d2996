//! A stream in a cluster: its contents replicated by a Raft group (in the
//! cluster crate), as a quorum queue's are (see [`crate::replicated`]).
//!
//! Every member holds the whole stream in its own log. A publish is not
//! appended where it arrives: on the group's leader [`Stream::replicate`]
//! hands it to the group and returns a [`Durable`] that completes once the
//! entry holding it is committed (on a majority of the members' disks).
//! Each member, leader or not, appends the committed messages to its log
//! as it applies them ([`Stream::replica_append`]), at the offsets the
//! leader gave them, so the same offset names the same message on every
//! member and a consumer reads the log of whichever member it is attached
//! to (only committed messages are ever in it). A member far behind gets
//! the leader's chunks as they are ([`Stream::replica_chunks`],
//! [`Stream::replica_install`]), read and written one at a time.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{failed, OffsetSpec, PublishedRecord, Stream};
use crate::durable::Durable;
use crate::error::BrokerError;
use crate::message::Message;
use crate::replicated::QueueReplica;

/// A message as a stream's group replicates it, encoded once by the
/// leader ([`Stream::replica_record`], [`Stream::replica_published`]):
/// the leader's time (8 bytes, little-endian, ms), the filter value (2
/// bytes of length, then the value; 0 and nothing without one), for a
/// named stream-protocol publisher's message its name and publishing id
/// (the length's top bit set, then 2 bytes of length, the name, 8 bytes
/// of id), then the stream record.
struct ReplicaRecord<'a> {
    /// When the leader took it: the time of the chunk that holds it on
    /// every member, so a start by timestamp and retention by age see the
    /// same chunks everywhere.
    at: i64,
    /// Into the chunk's Bloom filter.
    filter: Option<&'a str>,
    /// The named publisher and publishing id: every member tracks it in
    /// its chunks, so the leader after a failover deduplicates as the one
    /// before did.
    writer: Option<(&'a str, u64)>,
    /// As [`super::record::to_record`] encodes it.
    record: Bytes,
}

/// The filter length's top bit: a writer follows the filter.
const HAS_WRITER: u16 = 0x8000;

impl ReplicaRecord<'_> {
    fn parse(raw: &Bytes) -> Option<ReplicaRecord<'_>> {
        let at = i64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
        let flags = u16::from_le_bytes(raw.get(8..10)?.try_into().ok()?);
        let len = usize::from(flags & !HAS_WRITER);
        let filter = std::str::from_utf8(raw.get(10..10 + len)?).ok()?;
        let mut at_record = 10 + len;
        let writer = if flags & HAS_WRITER != 0 {
            let name_len = usize::from(u16::from_le_bytes(
                raw.get(at_record..at_record + 2)?.try_into().ok()?,
            ));
            let name =
                std::str::from_utf8(raw.get(at_record + 2..at_record + 2 + name_len)?).ok()?;
            let id_at = at_record + 2 + name_len;
            let id = u64::from_le_bytes(raw.get(id_at..id_at + 8)?.try_into().ok()?);
            at_record = id_at + 8;
            Some((name, id))
        } else {
            None
        };
        Some(ReplicaRecord {
            at,
            filter: (!filter.is_empty()).then_some(filter),
            writer,
            record: raw.slice(at_record..),
        })
    }

    fn encode(at: i64, filter: &str, writer: Option<(&str, u64)>, record: &[u8]) -> Bytes {
        let filter = &filter.as_bytes()[..filter.len().min(usize::from(!HAS_WRITER))];
        let writer = writer.map(|(name, id)| {
            (
                &name.as_bytes()[..name.len().min(usize::from(u16::MAX))],
                id,
            )
        });
        let mut out = BytesMut::with_capacity(
            20 + filter.len() + writer.map_or(0, |(n, _)| n.len()) + record.len(),
        );
        out.extend_from_slice(&at.to_le_bytes());
        let flags = filter.len() as u16 | if writer.is_some() { HAS_WRITER } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(filter);
        if let Some((name, id)) = writer {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(record);
        out.freeze()
    }
}

/// The chunks of a stream from its oldest offset, read one at a time, as
/// a replica sends them to a member far behind: a stream of many
/// gigabytes goes out without being held in memory.
#[derive(Debug)]
pub struct ChunkSource {
    reader: super::Reader,
    next: u64,
}

impl ChunkSource {
    /// The offset after the last record the chunks hold.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// The next chunk, whole (header and body), or None after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, BrokerError> {
        let Some(chunk) = self.reader.next_chunk()? else {
            return Ok(None);
        };
        if chunk.header.chunk_id >= self.next {
            return Ok(None);
        }
        let mut raw = BytesMut::with_capacity(chunk.header.total_size() as usize);
        chunk.header.encode(&mut raw);
        raw.extend_from_slice(&chunk.body);
        Ok(Some(raw.freeze()))
    }
}

impl Stream {
    /// A message as this stream's group replicates it (on its leader).
    pub fn replica_record(&self, message: &Message) -> Bytes {
        let record = super::record::to_record(message);
        let filter = super::record::filter_value(message).unwrap_or_default();
        ReplicaRecord::encode(self.now(), filter, None, &record)
    }

    /// A stream-protocol publisher's message as this stream's group
    /// replicates it (on its leader), with the publisher's name if it
    /// has one.
    pub fn replica_published(&self, record: &PublishedRecord, writer: Option<&str>) -> Bytes {
        ReplicaRecord::encode(
            self.now(),
            record.filter_value.as_deref().unwrap_or_default(),
            writer.map(|w| (w, record.id)),
            &record.message,
        )
    }

    /// Publishes a stream-protocol publisher's messages to a replicated
    /// stream (on its group's leader): a named publisher's duplicates
    /// (publishing ids not above its last, committed or on their way) are
    /// dropped, `accepted` says which were kept, and the returned batch
    /// is the one the confirms wait for.
    pub fn publish_replicated(
        &self,
        writer: Option<&str>,
        records: &[PublishedRecord],
        accepted: &mut Vec<bool>,
    ) -> Result<Arc<dyn Durable>, BrokerError> {
        let Some(replica) = self.replica.get() else {
            return Err(BrokerError::Internal(format!(
                "{} is not replicated",
                self.describe()
            )));
        };
        let bodies = records
            .iter()
            .map(|r| (r.id, self.replica_published(r, writer)))
            .collect();
        replica.publish_records(writer, bodies, accepted)
    }

    /// Makes this stream's contents replicated through `replica`: publishes
    /// go to [`Stream::replicate`] from now on. Returns false if it already
    /// had one.
    pub fn set_replica(&self, replica: Arc<dyn QueueReplica>) -> bool {
        self.replica.set(replica).is_ok()
    }

    /// The stream's replication, if its contents are replicated.
    pub fn replica(&self) -> Option<&Arc<dyn QueueReplica>> {
        self.replica.get()
    }

    /// Publishes to a replicated stream (on its group's leader): returns
    /// the batch the confirm waits for. The message reaches the log when
    /// the group applies it.
    pub fn replicate(&self, message: &Arc<Message>) -> Result<Arc<dyn Durable>, BrokerError> {
        match self.replica.get() {
            Some(r) => r.enqueue(message, None),
            None => Err(BrokerError::Internal(format!(
                "{} is not replicated",
                self.describe()
            ))),
        }
    }

    /// The offset the next message appended gets.
    pub fn next_offset(&self) -> u64 {
        self.state.lock().log.next_offset()
    }

    /// Appends messages a member applied ([`Stream::replica_record`]s), each at
    /// the offset its group's leader gave it, then writes them as a chunk
    /// so that consumers see them at once. A message below the log's next offset is there
    /// already (a member that restarted applies again what it applied
    /// after its last snapshot) and is skipped. A gap (a message above the
    /// next offset: this member's log lost its tail) cannot be filled
    /// here: the log starts over at the message, keeping offsets the
    /// group's.
    pub fn replica_append<'a>(
        &self,
        records: impl IntoIterator<Item = (u64, &'a Bytes)>,
    ) -> Result<(), BrokerError> {
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(());
        }
        let was_dirty = st.log.is_dirty();
        let mut appended = 0u64;
        // The chunks' time: the leader's, of their newest message.
        let mut at = now;
        for (offset, raw) in records {
            let next = st.log.next_offset();
            if offset < next {
                continue;
            }
            if offset > next {
                tracing::warn!(
                    stream = self.name,
                    vhost = self.vhost,
                    "the replica's log ends at offset {next}, its group is at {offset}: it starts over there"
                );
                st.log.seal(at).map_err(|e| failed(self, e))?;
                st.log.reset(offset).map_err(|e| failed(self, e))?;
            }
            let Some(r) = ReplicaRecord::parse(raw) else {
                return Err(failed(
                    self,
                    format!("a malformed record at offset {offset}"),
                ));
            };
            at = r.at;
            st.log
                .append_from(&r.record, r.writer, r.filter, at)
                .map_err(|e| failed(self, e))?;
            appended += 1;
        }
        if appended == 0 {
            return Ok(());
        }
        self.published
            .fetch_add(appended, std::sync::atomic::Ordering::Relaxed);
        st.log.seal(at).map_err(|e| failed(self, e))?;
        st.dirtied(was_dirty);
        self.after_write(&mut st, now);
        Ok(())
    }

    /// Writes everything appended and fsyncs the log: a member's snapshot
    /// of its group stands for the log up to here, and the group's own log
    /// before it is dropped.
    pub fn replica_sync(&self) -> Result<(), BrokerError> {
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(());
        }
        if st.log.seal(now).map_err(|e| failed(self, e))? {
            self.after_write(&mut st, now);
        }
        st.log.sync_all(now).map_err(|e| failed(self, e))
    }

    /// Every chunk of the log, from the oldest, for a member far behind:
    /// those written up to now (what comes later is not read).
    pub fn replica_chunks(self: &Arc<Self>) -> Result<ChunkSource, BrokerError> {
        let reader = self.reader(OffsetSpec::First)?;
        Ok(ChunkSource {
            reader,
            next: self.next_offset(),
        })
    }

    /// Empties the log (this node no longer holds a replica). Its
    /// consumers are cancelled (basic.cancel, as for a quorum queue's
    /// member removed): subscribed again here, they read the leader's.
    pub fn replica_clear(&self) -> Result<(), BrokerError> {
        let consumers = std::mem::take(&mut self.state.lock().consumers);
        for c in consumers {
            c.sink.cancel(&c.tag);
        }
        self.replica_install(0, std::iter::empty())?;
        self.replica_sync()
    }

    /// Replaces the log with another member's chunks
    /// ([`Stream::replica_chunks`]), read one at a time; `next` is the
    /// offset after them (where the log starts if there are none).
    /// Returns how many were written.
    pub fn replica_install(
        &self,
        next: u64,
        chunks: impl IntoIterator<Item = Result<Bytes, BrokerError>>,
    ) -> Result<u64, BrokerError> {
        let now = self.now();
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(0);
        }
        let mut chunks = chunks.into_iter().peekable();
        let first = match chunks.peek() {
            Some(Ok(raw)) => {
                antre_stream_proto::chunk::ChunkHeader::decode(raw)
                    .map_err(|e| failed(self, e))?
                    .chunk_id
            }
            Some(Err(_)) | None => next,
        };
        st.log.reset(first).map_err(|e| failed(self, e))?;
        let mut written = 0;
        for raw in chunks {
            st.log
                .write_raw_chunk(&raw?, now)
                .map_err(|e| failed(self, e))?;
            written += 1;
        }
        // The new files are owed an fsync, whatever was owed before.
        st.dirtied(false);
        self.after_write(&mut st, now);
        Ok(written)
    }
}
