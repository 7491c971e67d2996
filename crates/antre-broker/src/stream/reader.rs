//! Reading a stream: a cursor over its segment files, one per consumer.
//!
//! A reader holds its own file handle and position and reads whole chunks
//! with positioned reads, taking the stream's lock only to learn how far
//! the current segment is written and which segment comes next. So any
//! number of consumers read the same stream at their own pace without
//! holding up the writer, and a segment that retention removes under a
//! reader stays readable through its open handle (it moves on to the oldest
//! segment left once done).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use antre_stream_proto::chunk::{Chunk, ChunkFilter, ChunkHeader, HEADER_SIZE, TYPE_USER};
use bytes::Bytes;

use super::log::{segment_path, SEGMENT_START};
use super::Stream;
use crate::error::BrokerError;

/// Where a reader's segment stands, as the stream's log sees it.
pub(crate) enum Located {
    /// The segment is there with this many bytes written; `next` is the
    /// segment after it, if any.
    Here { size: u64, next: Option<u64> },
    /// The segment is gone (or the reader has none yet): go on from this
    /// one, if the stream has any.
    Moved(Option<u64>),
    /// The log was replaced (a replica installed its leader's chunks,
    /// see [`super::replica`]): its files are new, even one with the
    /// reader's segment's name. Go on from this one, past what was read.
    Replaced(Option<u64>),
}

/// A consumer's cursor over a stream.
#[derive(Debug)]
pub struct Reader {
    stream: Arc<Stream>,
    /// The first offset of the segment being read.
    segment: Option<u64>,
    file: Option<File>,
    pos: u64,
    /// Records below this offset are not handed out.
    skip_below: u64,
    /// Chunks written before this time (ms) are not handed out.
    not_before: Option<i64>,
    /// The offset after the last chunk passed.
    next: u64,
    /// Chunks whose bloom filter cannot match are skipped.
    filter: Option<ChunkFilter>,
    /// The log's generation its segment belongs to (see
    /// [`Located::Replaced`]).
    generation: u64,
}

impl Reader {
    pub(crate) fn new(
        stream: Arc<Stream>,
        segment: Option<u64>,
        pos: u64,
        next: u64,
        skip_below: u64,
        not_before: Option<i64>,
        generation: u64,
    ) -> Reader {
        Reader {
            stream,
            segment,
            file: None,
            pos,
            skip_below,
            not_before,
            next,
            filter: None,
            generation,
        }
    }

    /// Skips the chunks that hold no record this filter wants (by their
    /// bloom filters: what is handed out may still hold others).
    pub fn set_filter(&mut self, filter: Option<ChunkFilter>) {
        self.filter = filter;
    }

    /// The stream it reads.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// The offset of the next record it may hand out.
    pub fn position(&self) -> u64 {
        self.next.max(self.skip_below)
    }

    /// Records below this offset are skipped.
    pub fn skip_below(&self) -> u64 {
        self.skip_below
    }

    /// The next written chunk with records for this reader, or None when
    /// it has read everything written so far.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, BrokerError> {
        loop {
            let Some(segment) = self.segment else {
                match self
                    .stream
                    .locate(None, self.position(), &mut self.generation)
                {
                    Located::Moved(Some(first)) | Located::Replaced(Some(first)) => {
                        self.enter(first)
                    }
                    _ => return Ok(None),
                }
                continue;
            };
            match self
                .stream
                .locate(Some(segment), self.position(), &mut self.generation)
            {
                Located::Replaced(first) => {
                    // The new files may start before what this reader
                    // handed out already.
                    self.skip_below = self.position();
                    match first {
                        Some(first) => self.enter(first),
                        None => {
                            self.segment = None;
                            self.file = None;
                            return Ok(None);
                        }
                    }
                }
                Located::Moved(Some(first)) if first != segment => self.enter(first),
                Located::Moved(_) => return Ok(None),
                Located::Here { size, next } => {
                    if self.pos + HEADER_SIZE as u64 > size {
                        match next {
                            Some(first) => {
                                self.enter(first);
                                continue;
                            }
                            None => return Ok(None),
                        }
                    }
                    if let Some(chunk) = self.read_at(segment, size)? {
                        return Ok(Some(chunk));
                    }
                }
            }
        }
    }

    fn enter(&mut self, segment: u64) {
        self.segment = Some(segment);
        self.file = None;
        self.pos = SEGMENT_START;
    }

    /// Reads the chunk at the position (written up to `size`); None when
    /// it is one to skip (the position moves past it either way).
    fn read_at(&mut self, segment: u64, size: u64) -> Result<Option<Chunk>, BrokerError> {
        let path = segment_path(self.stream.dir(), segment);
        let failed = |what: &str, e: String| {
            BrokerError::Internal(format!(
                "reading {} of {}: {what} {e}",
                path.display(),
                self.stream.describe()
            ))
        };
        if self.file.is_none() {
            self.file = Some(File::open(&path).map_err(|e| failed("open", e.to_string()))?);
        }
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut head = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut head, self.pos)
            .map_err(|e| failed("read", e.to_string()))?;
        let h = ChunkHeader::decode(&head).map_err(|e| failed("chunk", e.to_string()))?;
        let start = self.pos;
        let total = h.total_size();
        if start + total > size {
            return Err(failed("chunk", "runs past the written end".into()));
        }
        self.pos += total;
        self.next = h.next_offset();
        let early = self.not_before.is_some_and(|t| h.timestamp < t);
        if h.next_offset() <= self.skip_below || h.chunk_type != TYPE_USER || early {
            return Ok(None);
        }
        if self.not_before.take().is_some() {
            // Started by time: everything from this chunk on.
            self.skip_below = h.chunk_id;
        }
        if let Some(filter) = &self.filter {
            let mut bloom = vec![0u8; usize::from(h.bloom_size)];
            file.read_exact_at(&mut bloom, start + HEADER_SIZE as u64)
                .map_err(|e| failed("read", e.to_string()))?;
            if !filter.matches(&bloom) {
                return Ok(None);
            }
        }
        let mut raw = vec![0u8; total as usize];
        file.read_exact_at(&mut raw, start)
            .map_err(|e| failed("read", e.to_string()))?;
        let chunk = Chunk::decode(Bytes::from(raw)).map_err(|e| failed("chunk", e.to_string()))?;
        Ok(Some(chunk))
    }
}
