//! osiris chunks: how RabbitMQ stores a stream and how its stream protocol
//! sends one (the `Deliver` frame carries chunks as they are on disk).
//!
//! A chunk is a 48-byte header followed by an optional bloom filter, the
//! entries, and a trailer (all big-endian):
//!
//! ```text
//! magic:4 (5) | version:4 | chunk type:8 | entries:16 | records:32
//! timestamp:64 (ms, signed) | epoch:64 | chunk id (first offset):64
//! data crc:32 (CRC-32 of the entries) | data length:32 | trailer length:32
//! bloom size:8 | reserved:24
//! ```
//!
//! An entry is either simple (`0` bit, 31-bit length, body: one record) or
//! a sub-batch (`1` bit, 3-bit compression, 4 reserved bits, 16-bit record
//! count, 32-bit uncompressed length, 32-bit length, body: the records as
//! the stream protocol's publisher packed them, each `length:32 | record`
//! when uncompressed). Offsets count records: a chunk's records have the
//! offsets `chunk id .. chunk id + records`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of a chunk header.
pub const HEADER_SIZE: usize = 48;
/// The magic number in a chunk's first four bits.
pub const MAGIC: u8 = 5;
/// The chunk format version antre writes (osiris's current one).
pub const VERSION: u8 = 0;
/// A chunk of user records.
pub const TYPE_USER: u8 = 0;
/// A chunk of tracking deltas (offsets and producer sequences).
pub const TYPE_TRACKING_DELTA: u8 = 1;
/// A chunk of a tracking snapshot.
pub const TYPE_TRACKING_SNAPSHOT: u8 = 2;
/// The most entries a chunk can count.
pub const MAX_ENTRIES: usize = u16::MAX as usize;
/// The longest simple entry (31-bit length).
pub const MAX_ENTRY: usize = (1 << 31) - 1;
/// The header of a segment file: "OSIL" and version 1.
pub const SEGMENT_HEADER: [u8; 8] = *b"OSIL\0\0\0\x01";

/// A chunk that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Fewer bytes than the header or its lengths announce.
    #[error("truncated chunk: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// The first four bits are not osiris's magic number.
    #[error("not a chunk (magic {0})")]
    BadMagic(u8),
    /// The entries do not match the checksum.
    #[error("chunk {chunk_id}: checksum mismatch")]
    BadCrc {
        /// The chunk's first offset.
        chunk_id: u64,
    },
    /// An entry runs past the data or the entry count is wrong.
    #[error("chunk {chunk_id}: malformed entries")]
    BadEntries {
        /// The chunk's first offset.
        chunk_id: u64,
    },
}

/// A chunk's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Format version.
    pub version: u8,
    /// User, tracking delta or tracking snapshot.
    pub chunk_type: u8,
    /// Entries in the data section.
    pub num_entries: u16,
    /// Records in those entries (a sub-batch holds many).
    pub num_records: u32,
    /// When the chunk was written, ms since the epoch.
    pub timestamp: i64,
    /// The writer's epoch (always 1 on a single node).
    pub epoch: u64,
    /// The offset of its first record.
    pub chunk_id: u64,
    /// CRC-32 of the data section.
    pub crc: u32,
    /// Bytes of entries.
    pub data_len: u32,
    /// Bytes of trailer after the entries.
    pub trailer_len: u32,
    /// Bytes of bloom filter between the header and the entries.
    pub bloom_size: u8,
}

impl ChunkHeader {
    /// Reads a header from the start of `raw`.
    pub fn decode(raw: &[u8]) -> Result<ChunkHeader, ChunkError> {
        if raw.len() < HEADER_SIZE {
            return Err(ChunkError::Truncated {
                need: HEADER_SIZE,
                have: raw.len(),
            });
        }
        let mut b = &raw[..HEADER_SIZE];
        let first = b.get_u8();
        if first >> 4 != MAGIC {
            return Err(ChunkError::BadMagic(first >> 4));
        }
        let h = ChunkHeader {
            version: first & 0x0f,
            chunk_type: b.get_u8(),
            num_entries: b.get_u16(),
            num_records: b.get_u32(),
            timestamp: b.get_i64(),
            epoch: b.get_u64(),
            chunk_id: b.get_u64(),
            crc: b.get_u32(),
            data_len: b.get_u32(),
            trailer_len: b.get_u32(),
            bloom_size: b.get_u8(),
        };
        Ok(h)
    }

    /// Writes the header.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8((MAGIC << 4) | (self.version & 0x0f));
        out.put_u8(self.chunk_type);
        out.put_u16(self.num_entries);
        out.put_u32(self.num_records);
        out.put_i64(self.timestamp);
        out.put_u64(self.epoch);
        out.put_u64(self.chunk_id);
        out.put_u32(self.crc);
        out.put_u32(self.data_len);
        out.put_u32(self.trailer_len);
        out.put_u8(self.bloom_size);
        out.put_slice(&[0, 0, 0]);
    }

    /// The whole chunk's size: header, bloom filter, entries, trailer.
    pub fn total_size(&self) -> u64 {
        HEADER_SIZE as u64
            + u64::from(self.bloom_size)
            + u64::from(self.data_len)
            + u64::from(self.trailer_len)
    }

    /// The offset after its last record.
    pub fn next_offset(&self) -> u64 {
        self.chunk_id + u64::from(self.num_records)
    }
}

/// CRC-32 (IEEE), osiris's chunk checksum.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A chunk read whole: its header and the bytes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its header.
    pub header: ChunkHeader,
    /// Bloom filter, entries and trailer, as stored.
    pub body: Bytes,
}

impl Chunk {
    /// Splits a whole chunk (header and body) and checks its checksum.
    pub fn decode(raw: Bytes) -> Result<Chunk, ChunkError> {
        let header = ChunkHeader::decode(&raw)?;
        let total = header.total_size() as usize;
        if raw.len() < total {
            return Err(ChunkError::Truncated {
                need: total,
                have: raw.len(),
            });
        }
        let chunk = Chunk {
            header,
            body: raw.slice(HEADER_SIZE..total),
        };
        chunk.check_crc()?;
        Ok(chunk)
    }

    /// The bloom filter (empty when no record has a filter value).
    pub fn bloom(&self) -> &[u8] {
        &self.body[..usize::from(self.header.bloom_size).min(self.body.len())]
    }

    /// The entries section.
    pub fn data(&self) -> Bytes {
        let from = usize::from(self.header.bloom_size);
        let to = from + self.header.data_len as usize;
        self.body
            .slice(from.min(self.body.len())..to.min(self.body.len()))
    }

    /// Checks the entries against the header's checksum.
    pub fn check_crc(&self) -> Result<(), ChunkError> {
        if crc32(&self.data()) != self.header.crc {
            return Err(ChunkError::BadCrc {
                chunk_id: self.header.chunk_id,
            });
        }
        Ok(())
    }

    /// Its records with their offsets (none for a tracking chunk),
    /// sub-batches unpacked (compressed
    /// sub-batches, which antre cannot read, are skipped but keep their
    /// offsets).
    pub fn records(&self) -> Result<Vec<(u64, Bytes)>, ChunkError> {
        let bad = || ChunkError::BadEntries {
            chunk_id: self.header.chunk_id,
        };
        if self.header.chunk_type != TYPE_USER {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(self.header.num_records as usize);
        let mut offset = self.header.chunk_id;
        for entry in Entries::new(self.data()) {
            match entry.map_err(|_| bad())? {
                Entry::Simple(body) => {
                    out.push((offset, body));
                    offset += 1;
                }
                Entry::SubBatch {
                    records,
                    compression,
                    body,
                    ..
                } => {
                    if compression == 0 {
                        let mut b = body;
                        for _ in 0..records {
                            if b.remaining() < 4 {
                                return Err(bad());
                            }
                            let len = b.get_u32() as usize;
                            if b.remaining() < len {
                                return Err(bad());
                            }
                            out.push((offset, b.split_to(len)));
                            offset += 1;
                        }
                    } else {
                        offset += u64::from(records);
                    }
                }
            }
        }
        if offset != self.header.next_offset() {
            return Err(bad());
        }
        Ok(out)
    }
}

/// One entry of a chunk's data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// One record.
    Simple(Bytes),
    /// A publisher's batch of records, possibly compressed.
    SubBatch {
        /// Records in it.
        records: u16,
        /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
        compression: u8,
        /// Length once uncompressed.
        uncompressed_len: u32,
        /// The (possibly compressed) records.
        body: Bytes,
    },
}

/// Walks the entries of a data section.
#[derive(Debug)]
pub struct Entries {
    data: Bytes,
}

impl Entries {
    /// The entries of `data`.
    pub fn new(data: Bytes) -> Entries {
        Entries { data }
    }
}

impl Iterator for Entries {
    type Item = Result<Entry, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let short = |need: usize, have: usize| Some(Err(ChunkError::Truncated { need, have }));
        let first = self.data[0];
        if first & 0x80 == 0 {
            if self.data.len() < 4 {
                let have = self.data.len();
                self.data.clear();
                return short(4, have);
            }
            let len = (self.data.get_u32() & 0x7fff_ffff) as usize;
            if self.data.len() < len {
                let have = self.data.len();
                self.data.clear();
                return short(len, have);
            }
            return Some(Ok(Entry::Simple(self.data.split_to(len))));
        }
        if self.data.len() < 11 {
            let have = self.data.len();
            self.data.clear();
            return short(11, have);
        }
        let flags = self.data.get_u8();
        let records = self.data.get_u16();
        let uncompressed_len = self.data.get_u32();
        let len = self.data.get_u32() as usize;
        if self.data.len() < len {
            let have = self.data.len();
            self.data.clear();
            return short(len, have);
        }
        Some(Ok(Entry::SubBatch {
            records,
            compression: (flags >> 4) & 0x07,
            uncompressed_len,
            body: self.data.split_to(len),
        }))
    }
}

/// Bytes of a chunk's bloom filter when it has filter values (osiris's
/// default, RabbitMQ's `stream-filter-size-bytes`).
pub const DEFAULT_FILTER_SIZE: usize = 16;

/// The two bits a filter value sets in a bloom filter of `bits` bits, both
/// in `1..bits` (bit 0 marks records without a filter value), as osiris
/// lays its chunk filter out. osiris hashes with Erlang's `phash2`; antre
/// hashes with CRC-32 under two seeds. Only the broker reads a chunk's
/// filter (clients get chunks without it), so the hash need not match,
/// but it must never change: filters are on disk.
fn bloom_bits(value: &[u8], bits: usize) -> (usize, usize) {
    let range = (bits - 1) as u32;
    let hash = |seed: u32| {
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(value);
        (h.finalize() % range) as usize + 1
    };
    (hash(0), hash(0x9e37_79b9))
}

fn bit_set(bloom: &[u8], bit: usize) -> bool {
    bloom
        .get(bit / 8)
        .is_some_and(|b| b & (0x80 >> (bit % 8)) != 0)
}

/// The bloom filter of a chunk whose records carry `values` (an empty
/// value stands for records without one). Empty when no record has a
/// value, as osiris writes it: such a chunk has no filter.
pub fn bloom_filter<'a>(values: impl IntoIterator<Item = &'a [u8]>, size: usize) -> Vec<u8> {
    let mut bloom = vec![0u8; size];
    let bits = size * 8;
    let mut any = false;
    for v in values {
        let (a, b) = if v.is_empty() {
            (0, 0)
        } else {
            any = true;
            bloom_bits(v, bits)
        };
        bloom[a / 8] |= 0x80 >> (a % 8);
        bloom[b / 8] |= 0x80 >> (b % 8);
    }
    if any {
        bloom
    } else {
        Vec::new()
    }
}

/// What a filtered subscription wants: the chunks that may hold records
/// with one of these filter values (and, with `match_unfiltered`, records
/// without any). A bloom filter can answer "maybe" for a chunk without
/// them, never "no" for a chunk with them: consumers filter exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFilter {
    /// The filter values asked for.
    pub values: Vec<String>,
    /// Also chunks holding records without a filter value.
    pub match_unfiltered: bool,
}

impl ChunkFilter {
    /// Whether a chunk with this bloom filter may hold wanted records. A
    /// chunk without a filter (no record has a value) only holds
    /// unfiltered records.
    pub fn matches(&self, bloom: &[u8]) -> bool {
        if bloom.is_empty() {
            return self.match_unfiltered;
        }
        if self.match_unfiltered && bit_set(bloom, 0) {
            return true;
        }
        let bits = bloom.len() * 8;
        self.values.iter().any(|v| {
            let (a, b) = bloom_bits(v.as_bytes(), bits);
            bit_set(bloom, a) && bit_set(bloom, b)
        })
    }
}

/// Builds a user chunk from records.
#[derive(Debug, Default)]
pub struct ChunkBuilder {
    data: BytesMut,
    entries: u16,
    records: u32,
    /// The records' distinct filter values.
    filter_values: std::collections::BTreeSet<Vec<u8>>,
    /// Some record has no filter value. Kept apart from `filter_values`:
    /// looking the empty value up in the set for every record was 2% of a
    /// three-node cluster's CPU under the stream protocol, where records
    /// mostly have none.
    unfiltered: bool,
    /// Bytes of Bloom filter when a record has a filter value (0: the
    /// default).
    filter_size: u8,
}

impl ChunkBuilder {
    /// An empty chunk.
    pub fn new() -> ChunkBuilder {
        ChunkBuilder::default()
    }

    /// An empty chunk whose Bloom filter, if it gets one, has `bytes` bytes
    /// (0: [`DEFAULT_FILTER_SIZE`]; osiris allows 16 to 255).
    pub fn with_filter_size(bytes: u8) -> ChunkBuilder {
        ChunkBuilder {
            filter_size: bytes,
            ..ChunkBuilder::default()
        }
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Records so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Bytes of entries so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Whether another entry fits (the entry count is 16 bits).
    pub fn has_room(&self) -> bool {
        usize::from(self.entries) < MAX_ENTRIES
    }

    /// Adds one record as a simple entry, without a filter value. The
    /// caller keeps records under [`MAX_ENTRY`] bytes and checks
    /// [`ChunkBuilder::has_room`].
    pub fn push_simple(&mut self, record: &[u8]) {
        self.push_filtered(record, None);
    }

    /// Adds one record as a simple entry with its filter value (None: it
    /// has none), which goes into the chunk's bloom filter.
    pub fn push_filtered(&mut self, record: &[u8], filter_value: Option<&[u8]>) {
        debug_assert!(record.len() <= MAX_ENTRY && self.has_room());
        self.data.put_u32(record.len() as u32 & 0x7fff_ffff);
        self.data.put_slice(record);
        self.entries += 1;
        self.records += 1;
        self.mark(filter_value.unwrap_or_default());
    }

    fn mark(&mut self, value: &[u8]) {
        if value.is_empty() {
            self.unfiltered = true;
        } else if !self.filter_values.contains(value) {
            self.filter_values.insert(value.to_vec());
        }
    }

    /// Adds a sub-batch entry as a publisher sent it.
    pub fn push_sub_batch(
        &mut self,
        records: u16,
        compression: u8,
        uncompressed_len: u32,
        body: &[u8],
    ) {
        self.data.put_u8(0x80 | ((compression & 0x07) << 4));
        self.data.put_u16(records);
        self.data.put_u32(uncompressed_len);
        self.data.put_u32(body.len() as u32);
        self.data.put_slice(body);
        self.entries += 1;
        self.records += u32::from(records);
        self.mark(b"");
    }

    /// The finished chunk, whose first record gets offset `chunk_id`.
    pub fn finish(self, chunk_id: u64, timestamp: i64, epoch: u64) -> (ChunkHeader, Bytes) {
        self.finish_with_trailer(chunk_id, timestamp, epoch, &[])
    }

    /// The finished chunk with a trailer (the tracking entries of the
    /// publishers whose records it holds, as osiris writes them).
    pub fn finish_with_trailer(
        self,
        chunk_id: u64,
        timestamp: i64,
        epoch: u64,
        trailer: &[u8],
    ) -> (ChunkHeader, Bytes) {
        let size = match self.filter_size {
            0 => DEFAULT_FILTER_SIZE,
            n => usize::from(n),
        };
        let unfiltered = self.unfiltered.then_some(&[][..]);
        let bloom = bloom_filter(
            unfiltered
                .into_iter()
                .chain(self.filter_values.iter().map(Vec::as_slice)),
            size,
        );
        assemble(
            TYPE_USER,
            (self.entries, self.records),
            &bloom,
            &self.data,
            trailer,
            (chunk_id, timestamp, epoch),
        )
    }
}

fn assemble(
    chunk_type: u8,
    (num_entries, num_records): (u16, u32),
    bloom: &[u8],
    data: &[u8],
    trailer: &[u8],
    (chunk_id, timestamp, epoch): (u64, i64, u64),
) -> (ChunkHeader, Bytes) {
    let header = ChunkHeader {
        version: VERSION,
        chunk_type,
        num_entries,
        num_records,
        timestamp,
        epoch,
        chunk_id,
        crc: crc32(data),
        data_len: data.len() as u32,
        trailer_len: trailer.len() as u32,
        bloom_size: bloom.len() as u8,
    };
    let mut out = BytesMut::with_capacity(HEADER_SIZE + bloom.len() + data.len() + trailer.len());
    header.encode(&mut out);
    out.put_slice(bloom);
    out.put_slice(data);
    out.put_slice(trailer);
    (header, out.freeze())
}

/// A tracking chunk (delta or snapshot): one entry holding `entries`
/// ([`TrackingEntry::encode_all`]). It holds no records, so it takes no
/// offset: readers skip it and offsets stay dense.
pub fn tracking_chunk(
    chunk_type: u8,
    entries: &[u8],
    chunk_id: u64,
    timestamp: i64,
    epoch: u64,
) -> (ChunkHeader, Bytes) {
    let mut data = BytesMut::with_capacity(entries.len() + 4);
    data.put_u32(entries.len() as u32 & 0x7fff_ffff);
    data.put_slice(entries);
    assemble(
        chunk_type,
        (1, 0),
        &[],
        &data,
        &[],
        (chunk_id, timestamp, epoch),
    )
}

/// The chunk as the stream protocol's Deliver sends it: the entries only,
/// without bloom filter or trailer (as osiris sends a consumer its chunks:
/// clients read records right after the header, up to the frame's end),
/// the header adjusted to say so.
pub fn without_trailer(chunk: &Chunk) -> (ChunkHeader, Bytes) {
    let mut header = chunk.header;
    let from = usize::from(header.bloom_size).min(chunk.body.len());
    let to = (from + header.data_len as usize).min(chunk.body.len());
    header.trailer_len = 0;
    header.bloom_size = 0;
    (header, chunk.body.slice(from..to))
}

/// A tracking entry: a named publisher's last sequence, or a named
/// consumer's stored offset (osiris's tracking format: type, id length,
/// id, then two u64 for a sequence, one for an offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingEntry {
    /// A publisher's last sequence, stored with the chunk that holds it.
    Sequence {
        /// The publisher's name.
        id: String,
        /// The chunk it was written in.
        chunk_id: u64,
        /// Its publishing id.
        sequence: u64,
    },
    /// A consumer's stored offset.
    Offset {
        /// The consumer's name.
        id: String,
        /// The offset.
        offset: u64,
    },
}

impl TrackingEntry {
    /// Encodes entries one after the other (ids longer than 255 bytes are
    /// cut: the protocol limits names to 256 characters).
    pub fn encode_all(entries: &[TrackingEntry], out: &mut BytesMut) {
        for e in entries {
            let (kind, id) = match e {
                TrackingEntry::Sequence { id, .. } => (0u8, id),
                TrackingEntry::Offset { id, .. } => (1u8, id),
            };
            let id = &id.as_bytes()[..id.len().min(255)];
            out.put_u8(kind);
            out.put_u8(id.len() as u8);
            out.put_slice(id);
            match e {
                TrackingEntry::Sequence {
                    chunk_id, sequence, ..
                } => {
                    out.put_u64(*chunk_id);
                    out.put_u64(*sequence);
                }
                TrackingEntry::Offset { offset, .. } => out.put_u64(*offset),
            }
        }
    }

    /// Decodes entries; stops at the first malformed one.
    pub fn decode_all(mut raw: &[u8]) -> Vec<TrackingEntry> {
        let mut out = Vec::new();
        while raw.len() >= 2 {
            let kind = raw[0];
            let len = usize::from(raw[1]);
            if raw.len() < 2 + len {
                break;
            }
            let id = String::from_utf8_lossy(&raw[2..2 + len]).into_owned();
            raw = &raw[2 + len..];
            match kind {
                0 if raw.len() >= 16 => {
                    let chunk_id = raw.get_u64();
                    let sequence = raw.get_u64();
                    out.push(TrackingEntry::Sequence {
                        id,
                        chunk_id,
                        sequence,
                    });
                }
                1 if raw.len() >= 8 => {
                    let offset = raw.get_u64();
                    out.push(TrackingEntry::Offset { id, offset });
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_with_its_offsets() {
        let mut b = ChunkBuilder::new();
        b.push_simple(b"one");
        let mut batch = BytesMut::new();
        for r in [&b"two"[..], b"three"] {
            batch.put_u32(r.len() as u32);
            batch.put_slice(r);
        }
        b.push_sub_batch(2, 0, batch.len() as u32, &batch);
        b.push_simple(b"");
        let (h, raw) = b.finish(100, 1_700_000_000_000, 1);
        assert_eq!(raw.len() as u64, h.total_size());
        let c = Chunk::decode(raw).unwrap();
        assert_eq!(c.header, h);
        assert_eq!((h.num_entries, h.num_records, h.next_offset()), (3, 4, 104));
        let records = c.records().unwrap();
        let got: Vec<(u64, &[u8])> = records.iter().map(|(o, r)| (*o, &r[..])).collect();
        assert_eq!(
            got,
            vec![
                (100, &b"one"[..]),
                (101, b"two"),
                (102, b"three"),
                (103, b"")
            ]
        );
    }

    #[test]
    fn filter_values_make_a_bloom_filter_that_deliver_leaves_out() {
        let mut b = ChunkBuilder::new();
        b.push_filtered(b"a", Some(b"emea"));
        b.push_filtered(b"b", Some(b"apac"));
        b.push_simple(b"c");
        let (h, raw) = b.finish_with_trailer(10, 0, 1, b"t");
        assert_eq!(usize::from(h.bloom_size), DEFAULT_FILTER_SIZE);
        assert_eq!(raw.len() as u64, h.total_size());
        let c = Chunk::decode(raw).unwrap();
        assert_eq!(c.bloom().len(), DEFAULT_FILTER_SIZE);
        let got: Vec<_> = c.records().unwrap().into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, vec![10, 11, 12]);
        let want = |values: &[&str], match_unfiltered| ChunkFilter {
            values: values.iter().map(|v| v.to_string()).collect(),
            match_unfiltered,
        };
        assert!(want(&["emea"], false).matches(c.bloom()));
        assert!(want(&["amer", "apac"], false).matches(c.bloom()));
        assert!(
            want(&["amer"], true).matches(c.bloom()),
            "bit 0: unfiltered"
        );
        // Deliver sends the entries right after the header, as osiris does.
        let (dh, body) = without_trailer(&c);
        assert_eq!((dh.bloom_size, dh.trailer_len), (0, 0));
        assert_eq!(body, c.data());
    }

    #[test]
    fn chunk_filters_skip_what_cannot_match() {
        let values: Vec<String> = (0..200).map(|i| format!("region-{i}")).collect();
        let mut skipped = 0;
        for v in &values {
            let mut b = ChunkBuilder::new();
            b.push_filtered(b"x", Some(v.as_bytes()));
            let (_, raw) = b.finish(0, 0, 1);
            let c = Chunk::decode(raw).unwrap();
            let own = ChunkFilter {
                values: vec![v.clone()],
                match_unfiltered: false,
            };
            assert!(own.matches(c.bloom()), "never a false negative");
            assert!(!own.matches(&[]), "a chunk without filter: unfiltered only");
            let other = ChunkFilter {
                values: vec!["elsewhere".into()],
                match_unfiltered: true,
            };
            if !other.matches(c.bloom()) {
                skipped += 1;
            }
        }
        // Two bits of 127 per value: false positives are rare.
        assert!(skipped > 190, "only {skipped} of 200 skipped");
        // A larger filter, as x-stream-filter-size-bytes asks.
        let mut b = ChunkBuilder::with_filter_size(255);
        b.push_filtered(b"x", Some(b"emea"));
        let (h, raw) = b.finish(0, 0, 1);
        assert_eq!(h.bloom_size, 255);
        let c = Chunk::decode(raw).unwrap();
        let emea = ChunkFilter {
            values: vec!["emea".into()],
            match_unfiltered: false,
        };
        assert!(emea.matches(c.bloom()));
        // Records without a value only: no filter, like osiris.
        let mut b = ChunkBuilder::new();
        b.push_simple(b"x");
        let (h, _) = b.finish(0, 0, 1);
        assert_eq!(h.bloom_size, 0);
        let unfiltered = ChunkFilter {
            values: vec!["emea".into()],
            match_unfiltered: true,
        };
        assert!(unfiltered.matches(&[]));
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut b = ChunkBuilder::new();
        b.push_simple(b"payload");
        let (_, raw) = b.finish(0, 0, 1);
        let mut bad = raw.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            Chunk::decode(Bytes::from(bad)),
            Err(ChunkError::BadCrc { chunk_id: 0 })
        );
    }

    #[test]
    fn tracking_entries_round_trip_and_tracking_chunks_take_no_offset() {
        let entries = vec![
            TrackingEntry::Sequence {
                id: "producer-1".into(),
                chunk_id: 7,
                sequence: 42,
            },
            TrackingEntry::Offset {
                id: "analytics".into(),
                offset: 1000,
            },
        ];
        let mut raw = BytesMut::new();
        TrackingEntry::encode_all(&entries, &mut raw);
        assert_eq!(TrackingEntry::decode_all(&raw), entries);
        let (h, chunk) = tracking_chunk(TYPE_TRACKING_DELTA, &raw, 9, 0, 1);
        assert_eq!((h.num_records, h.next_offset()), (0, 9));
        let c = Chunk::decode(chunk).unwrap();
        assert!(c.records().unwrap().is_empty());
        let Some(Ok(Entry::Simple(body))) = Entries::new(c.data()).next() else {
            panic!("one simple entry");
        };
        assert_eq!(TrackingEntry::decode_all(&body), entries);
    }

    #[test]
    fn deliver_drops_the_trailer() {
        let mut b = ChunkBuilder::new();
        b.push_simple(b"m");
        let (_, raw) = b.finish_with_trailer(0, 0, 1, b"trailer");
        let c = Chunk::decode(raw).unwrap();
        let (h, body) = without_trailer(&c);
        assert_eq!((h.trailer_len, &body[..]), (0, &c.data()[..]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ChunkHeader::decode(&[0; 10]).is_err());
        assert!(matches!(
            ChunkHeader::decode(&[0; 48]),
            Err(ChunkError::BadMagic(0))
        ));
        let mut b = ChunkBuilder::new();
        b.push_simple(b"abc");
        let (_, raw) = b.finish(0, 0, 1);
        assert!(Chunk::decode(raw.slice(..raw.len() - 1)).is_err());
    }
}
