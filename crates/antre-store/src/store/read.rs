//! Reading records back: from the write buffer if they are that fresh,
//! else with positioned reads, always checking the checksum.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::PoisonError;

use bytes::Bytes;

use super::QueueStore;
use crate::format::{decode_record_header, segment_path, RECORD_HEADER_LEN};
use crate::{SegmentPosition, StoreError};

impl QueueStore {
    /// Reads back the payload of the live record at `pos`.
    ///
    /// Reads from the write buffer or with one positioned read per header and
    /// body (`pread`). The payload's checksum is verified: a damaged record
    /// gives [`StoreError::Corrupt`], never wrong bytes.
    pub fn read(&self, pos: SegmentPosition) -> Result<Bytes, StoreError> {
        if !self.contains(pos) {
            return Err(StoreError::NotFound(pos));
        }
        let off = u64::from(pos.offset);
        if let Some(w) = self.writer.as_ref().filter(|w| w.segment == pos.segment) {
            if off >= w.written {
                let start = (off - w.written) as usize;
                return self.record_from_buffer(pos, &w.buf[start..]);
            }
            return self.record_from_file(pos, &w.file);
        }
        let mut cache = self
            .read_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let idx = match cache.iter().position(|(n, _)| *n == pos.segment) {
            Some(i) => {
                let hit = cache.remove(i);
                cache.push(hit);
                cache.len() - 1
            }
            None => {
                let path = segment_path(&self.dir, pos.segment);
                let f = File::open(&path).map_err(|e| StoreError::io("open segment", &path, e))?;
                if cache.len() >= self.opts.max_open_read_files {
                    cache.remove(0);
                }
                cache.push((pos.segment, f));
                cache.len() - 1
            }
        };
        self.record_from_file(pos, &cache[idx].1)
    }

    pub(super) fn record_from_buffer(
        &self,
        pos: SegmentPosition,
        bytes: &[u8],
    ) -> Result<Bytes, StoreError> {
        let corrupt = |reason| StoreError::Corrupt {
            pos,
            path: segment_path(&self.dir, pos.segment),
            reason,
        };
        let h = decode_record_header(bytes).ok_or_else(|| corrupt("bad record header"))?;
        let start = RECORD_HEADER_LEN as usize;
        let payload = bytes
            .get(start..start + h.len as usize)
            .ok_or_else(|| corrupt("record cut short"))?;
        if crc32c::crc32c(payload) != h.crc {
            return Err(corrupt("payload checksum mismatch"));
        }
        Ok(Bytes::copy_from_slice(payload))
    }

    pub(super) fn record_from_file(
        &self,
        pos: SegmentPosition,
        file: &File,
    ) -> Result<Bytes, StoreError> {
        let path = || segment_path(&self.dir, pos.segment);
        let corrupt = |reason| StoreError::Corrupt {
            pos,
            path: path(),
            reason,
        };
        let read_err = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt("record cut short")
            } else {
                StoreError::io("read segment", path(), e)
            }
        };
        let off = u64::from(pos.offset);
        let mut hbuf = [0u8; RECORD_HEADER_LEN as usize];
        file.read_exact_at(&mut hbuf, off).map_err(read_err)?;
        let h = decode_record_header(&hbuf).ok_or_else(|| corrupt("bad record header"))?;
        let mut body = vec![0u8; h.len as usize];
        file.read_exact_at(&mut body, off + u64::from(RECORD_HEADER_LEN))
            .map_err(read_err)?;
        if crc32c::crc32c(&body) != h.crc {
            return Err(corrupt("payload checksum mismatch"));
        }
        Ok(Bytes::from(body))
    }
}
