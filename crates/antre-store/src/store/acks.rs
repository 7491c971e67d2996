//! Acks: recorded in memory at once, written to the segment's ack file in
//! batches and fsync'd lazily, because a lost ack can only bring a message
//! back, never lose one. A segment whose records are all acked is deleted
//! instead.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::QueueStore;
use crate::format::{ack_path, encode_ack_entry};
use crate::segment::Segment;
use crate::{sync_dir, SegmentPosition, StoreError};

impl QueueStore {
    /// Marks the record at `pos` acked (deleted).
    ///
    /// Returns [`StoreError::NotFound`] if there is no live record there
    /// (never appended, already acked); nothing changes then. When the last
    /// live record of a segment other than the current one is acked, the
    /// segment and its ack file are deleted. An I/O error means the ack took
    /// effect in memory but its entry could not be written yet (it is
    /// retried); after a restart the record may come back.
    pub fn ack(&mut self, pos: SegmentPosition) -> Result<(), StoreError> {
        let result = self.ack_record(pos);
        self.dirtied();
        result
    }

    fn ack_record(&mut self, pos: SegmentPosition) -> Result<(), StoreError> {
        self.check_usable()?;
        let current = self.writer.as_ref().map(|w| w.segment);
        let seg = self
            .segments
            .get_mut(&pos.segment)
            .ok_or(StoreError::NotFound(pos))?;
        let in_segment = pos.offset >= crate::SEGMENT_HEADER_LEN && u64::from(pos.offset) < seg.len;
        if !in_segment || !seg.index.ack(pos.offset) {
            return Err(StoreError::NotFound(pos));
        }
        self.live -= 1;
        if seg.index.live() == 0 && current != Some(pos.segment) {
            // No ack entry needed: the whole segment goes.
            return self.delete_segment(pos.segment);
        }
        if self.scratch {
            // Nothing in a scratch store outlives the process.
            return Ok(());
        }
        self.pending_acks.push(pos);
        if self.pending_acks.len() >= self.opts.max_pending_acks {
            self.write_pending_acks()?;
        }
        Ok(())
    }

    /// Writes and fsyncs every buffered ack (an *ack checkpoint*), so that
    /// no acked record can come back even after power loss. [`close`] does
    /// this too; call it from a timer if acks arrive with no appends.
    ///
    /// [`close`]: Self::close
    pub fn sync_acks(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        self.write_pending_acks()?;
        self.fsync_acks()
    }

    /// Hands buffered acks to the kernel, grouped per ack file, and runs an
    /// ack fsync once `ack_sync_every` acks have been written since the last.
    pub(super) fn write_pending_acks(&mut self) -> Result<(), StoreError> {
        let mut pending = std::mem::take(&mut self.pending_acks);
        pending.sort_unstable();
        let mut entries = Vec::with_capacity(pending.len() * crate::format::ACK_ENTRY_LEN);
        let mut i = 0;
        while i < pending.len() {
            let n = pending[i].segment;
            let j = i + pending[i..].partition_point(|p| p.segment == n);
            if let Some(seg) = self.segments.get_mut(&n) {
                entries.clear();
                for p in &pending[i..j] {
                    entries.extend_from_slice(&encode_ack_entry(n, p.offset));
                }
                match write_ack_entries(&self.dir, n, seg, &entries) {
                    Ok(created) => {
                        self.dir_acks_need_sync |= created;
                        self.acks_since_fsync += (j - i) as u64;
                    }
                    Err(e) => {
                        // Keep the unwritten ones for the next attempt.
                        self.pending_acks.extend_from_slice(&pending[i..]);
                        return Err(e);
                    }
                }
            }
            i = j;
        }
        if self.acks_since_fsync >= self.opts.ack_sync_every {
            self.fsync_acks()?;
        }
        Ok(())
    }

    pub(super) fn fsync_acks(&mut self) -> Result<(), StoreError> {
        #[cfg(test)]
        let mut synced_now = Vec::new();
        for (&n, seg) in self.segments.iter_mut() {
            let Some(f) = seg.ack_file.take() else {
                continue;
            };
            if seg.ack_synced_len < seg.ack_len {
                if let Err(e) = f.sync_data() {
                    seg.ack_file = Some(f);
                    return Err(StoreError::io("fsync", ack_path(&self.dir, n), e));
                }
                seg.ack_synced_len = seg.ack_len;
                #[cfg(test)]
                synced_now.push((ack_path(&self.dir, n), f));
            }
        }
        #[cfg(test)]
        for (path, f) in synced_now {
            self.note_durable(path, &f);
        }
        if self.dir_acks_need_sync {
            sync_dir(&self.dir)?;
            self.dir_acks_need_sync = false;
        }
        self.acks_since_fsync = 0;
        Ok(())
    }
}

/// Appends encoded entries to `acks.n`, opening (or creating) it as needed.
/// Returns whether the file was created. On a failed write the file is cut
/// back so entries stay aligned.
fn write_ack_entries(
    dir: &Path,
    n: u32,
    seg: &mut Segment,
    entries: &[u8],
) -> Result<bool, StoreError> {
    let path = ack_path(dir, n);
    let mut created = false;
    if seg.ack_file.is_none() {
        let f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => {
                created = true;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io("open ack file", &path, e))?,
            Err(e) => return Err(StoreError::io("create ack file", &path, e)),
        };
        seg.ack_file = Some(f);
    }
    let Some(f) = &seg.ack_file else {
        return Ok(created);
    };
    if let Err(e) = f.write_all_at(entries, seg.ack_len) {
        if let Err(te) = f.set_len(seg.ack_len) {
            tracing::warn!(path = %path.display(), error = %te, "could not truncate ack file after failed write");
        }
        return Err(StoreError::io("write ack file", &path, e));
    }
    seg.ack_len += entries.len() as u64;
    Ok(created)
}
