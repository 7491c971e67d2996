//! Paging: one memory budget for the messages of every queue, and the
//! scratch store each queue pages out to beyond it.
//!
//! The budget ([`MessageMemory`]) counts what ready messages cost in
//! memory: their bodies and their place in the ready list. A queue charges
//! it for each message it keeps in memory. When a charge is refused, the
//! message is *paged*: its body goes to disk (a persistent message of a
//! durable queue is in its store already; any other is written to the
//! queue's scratch store), and once a queue holds a page's worth of such
//! messages at its tail, their index entries go to disk too, as one page
//! record. So a backlog costs memory only up to the budget plus two pages
//! per priority level, whatever its size, and a transient backlog is
//! limited by disk, not RAM.
//!
//! Scratch stores (`<data dir>/scratch/N`) are [`QueueStore::open_scratch`]
//! stores: never fsync'd, removed with their queue, and the whole
//! directory is removed at start-up, since nothing in it outlives the
//! process (durable queues rebuild their index from their own store).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use antre_store::{QueueStore, SegmentPosition, StoreOptions};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ready::{Body, Ready};
use crate::alarm::{Alarms, Resource};

/// The node-wide budget for messages kept in memory by queues.
#[derive(Debug)]
pub struct MessageMemory {
    limit: AtomicU64,
    used: AtomicU64,
    /// Names the scratch directories of queues.
    next_scratch: AtomicU64,
}

impl MessageMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<MessageMemory> {
        Arc::new(MessageMemory {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            next_scratch: AtomicU64::new(0),
        })
    }

    /// Takes `bytes` from the budget, or nothing if it would go over.
    pub(crate) fn try_charge(&self, bytes: u64) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes <= self.limit.load(Ordering::Relaxed) {
            return true;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        false
    }

    /// Gives `bytes` back.
    pub(crate) fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// What queues need to page: the shared budget, where scratch stores go,
/// and the disk alarm their writes count towards.
#[derive(Debug, Clone)]
pub struct Paging {
    /// The node-wide budget.
    pub memory: Arc<MessageMemory>,
    /// The directory of scratch stores (emptied at start-up).
    pub scratch_dir: PathBuf,
    /// Options of each scratch store.
    pub store_options: StoreOptions,
    /// The broker's alarms: scratch writes spend disk.
    pub alarms: Arc<Alarms>,
    /// Index entries per page (see [`PAGE_ENTRIES`]).
    pub page_entries: usize,
}

/// Index entries per page by default: a level that pages keeps at most
/// this many entries in memory at its head and at its tail, 2 × 32 × ~96
/// bytes (6 KiB; a thousand paging queues hold 6 MiB, not the 12 MiB of
/// 64), and writes and reads its index in records of ~1.3 KiB (one
/// scratch write per 32 messages past the budget, still a small part of
/// writing their bodies).
pub const PAGE_ENTRIES: usize = 32;

/// What one ready entry costs in memory besides its body: the entry and
/// its slot in the list.
pub(crate) const ENTRY_COST: u64 = size_of::<Ready>() as u64 + 16;

/// A run of ready entries on disk, as one scratch record. What stays in
/// memory of a long backlog is one of these per page, so it is packed into
/// 16 bytes (10M messages in 1000 queues keep 312,500 of them): the entry
/// count in the low 16 bits ([`MAX_PAGE_ENTRIES`]), the bodies' bytes in
/// the other 48 (256 TiB).
#[derive(Debug)]
pub(crate) struct Page {
    pub pos: SegmentPosition,
    packed: u64,
}

impl Page {
    pub fn new(pos: SegmentPosition, count: usize, bytes: u64) -> Page {
        debug_assert!(count <= MAX_PAGE_ENTRIES);
        let count = count.min(MAX_PAGE_ENTRIES) as u64;
        Page {
            pos,
            packed: bytes.min(u64::MAX >> 16) << 16 | count,
        }
    }

    /// Entries in the page.
    pub fn count(&self) -> u32 {
        (self.packed & 0xffff) as u32
    }

    /// Their bodies' bytes.
    pub fn bytes(&self) -> u64 {
        self.packed >> 16
    }
}

/// The most entries a page holds (a larger `page_entries` is cut to it).
pub const MAX_PAGE_ENTRIES: usize = u16::MAX as usize;

/// A queue's side of paging: the budget and its scratch store, opened on
/// first use. Without a [`Paging`] (a broker without a data directory)
/// nothing is ever paged and the budget is unlimited.
#[derive(Debug)]
pub(crate) struct Pager {
    paging: Option<Paging>,
    scratch: Option<QueueStore>,
    /// Opening the scratch store failed: keep things in memory.
    broken: bool,
    queue: String,
    /// What this queue holds of the budget now (counted without a budget
    /// too): the management API's estimate of its memory.
    charged: std::cell::Cell<u64>,
}

impl Pager {
    pub fn new(paging: Option<Paging>, queue: &str) -> Pager {
        Pager {
            paging,
            scratch: None,
            broken: false,
            queue: queue.to_owned(),
            charged: std::cell::Cell::new(0),
        }
    }

    /// What this queue holds of the budget now.
    pub fn charged(&self) -> u64 {
        self.charged.get()
    }

    /// Takes `bytes` from the budget; always succeeds without paging.
    pub fn try_charge(&self, bytes: u64) -> bool {
        let taken = match &self.paging {
            None => true,
            Some(p) => p.memory.try_charge(bytes),
        };
        if taken {
            self.charged.set(self.charged.get() + bytes);
        }
        taken
    }

    /// Gives `bytes` back to the budget.
    pub fn release(&self, bytes: u64) {
        self.charged.set(self.charged.get().saturating_sub(bytes));
        if let Some(p) = &self.paging {
            p.memory.release(bytes);
        }
    }

    /// Takes `bytes` whether or not they fit (a message that cannot be
    /// paged must stay in memory, and is counted all the same).
    pub fn force_charge(&self, bytes: u64) {
        self.charged.set(self.charged.get() + bytes);
        if let Some(p) = &self.paging {
            p.memory.used.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn scratch(&mut self) -> Option<&mut QueueStore> {
        if self.scratch.is_none() && !self.broken {
            let paging = self.paging.as_ref()?;
            let n = paging.memory.next_scratch.fetch_add(1, Ordering::Relaxed);
            let dir = paging.scratch_dir.join(n.to_string());
            match QueueStore::open_scratch(&dir, paging.store_options.clone()) {
                Ok(store) => self.scratch = Some(store),
                Err(e) => {
                    tracing::error!(
                        queue = self.queue,
                        "cannot page to disk, keeping messages in memory: {e}"
                    );
                    self.broken = true;
                }
            }
        }
        self.scratch.as_mut()
    }

    /// Writes a record to the scratch store.
    pub fn write(&mut self, payload: &[u8]) -> Option<SegmentPosition> {
        let alarms = self.paging.as_ref().map(|p| Arc::clone(&p.alarms));
        let queue = self.queue.clone();
        let pos = self
            .scratch()?
            .append(payload)
            .map_err(|e| tracing::warn!(queue, "cannot page to disk, keeping in memory: {e}"))
            .ok()?;
        if let Some(alarms) = alarms {
            alarms.spend(Resource::Disk, payload.len() as u64);
        }
        Some(pos)
    }

    /// Counts bytes the queue wrote to its durable store towards the disk
    /// alarm.
    pub fn spent_on_disk(&self, bytes: u64) {
        if let Some(p) = &self.paging {
            p.alarms.spend(Resource::Disk, bytes);
        }
    }

    /// Reads a scratch record back.
    pub fn read(&self, pos: SegmentPosition) -> Option<Bytes> {
        let store = self.scratch.as_ref()?;
        store
            .read(pos)
            .map_err(|e| tracing::error!(queue = self.queue, %pos, "paged data lost: {e}"))
            .ok()
    }

    /// Frees a scratch record.
    pub fn free(&mut self, pos: SegmentPosition) {
        if let Some(store) = self.scratch.as_mut() {
            let _ = store.ack(pos);
        }
    }

    /// Index entries per page.
    pub fn page_entries(&self) -> usize {
        self.paging
            .as_ref()
            .map_or(PAGE_ENTRIES, |p| p.page_entries.clamp(1, MAX_PAGE_ENTRIES))
    }

    /// Whether paging is possible at all.
    pub fn enabled(&self) -> bool {
        self.paging.is_some() && !self.broken
    }

    /// Drops the scratch store and everything in it (queue deleted).
    pub fn discard(&mut self) {
        if let Some(store) = self.scratch.take() {
            let _ = store.close();
        }
    }
}

/// Entry flags in a page.
const REDELIVERED: u8 = 1;
const STORED: u8 = 2;
const SCRATCH: u8 = 4;
const EXPIRES: u8 = 8;
const DEDUP: u8 = 16;

fn put_pos(out: &mut BytesMut, pos: SegmentPosition) {
    out.put_u32_le(pos.segment);
    out.put_u32_le(pos.offset);
}

/// Encodes entries whose bodies are on disk (none is [`Body::Memory`]).
pub(crate) fn encode_page(entries: &[Ready]) -> BytesMut {
    let mut out = BytesMut::with_capacity(entries.len() * 40 + 4);
    out.put_u32_le(entries.len() as u32);
    for r in entries {
        let mut flags = 0;
        if r.redelivered {
            flags |= REDELIVERED;
        }
        if r.pos.is_some() {
            flags |= STORED;
        }
        if matches!(r.body, Body::Scratch(_)) {
            flags |= SCRATCH;
        }
        if r.expires_at.is_some() {
            flags |= EXPIRES;
        }
        if r.dedup_key.is_some() {
            flags |= DEDUP;
        }
        out.put_u8(flags);
        out.put_u64_le(r.seq);
        out.put_u32_le(r.size);
        out.put_u32_le(r.delivery_count);
        out.put_u8(r.priority);
        if let Some(pos) = r.pos {
            put_pos(&mut out, pos);
        }
        if let Body::Scratch(pos) = r.body {
            put_pos(&mut out, pos);
        }
        if let Some(at) = r.expires_at {
            out.put_u64_le(at);
        }
        if let Some(key) = &r.dedup_key {
            out.put_u32_le(key.len() as u32);
            out.put_slice(key.as_bytes());
        }
    }
    out
}

/// Decodes a page; None if it is damaged (the scratch store checks a CRC,
/// so this means a bug, never a disk error).
pub(crate) fn decode_page(mut raw: Bytes) -> Option<Vec<Ready>> {
    fn pos(raw: &mut Bytes) -> Option<SegmentPosition> {
        (raw.remaining() >= 8).then(|| SegmentPosition {
            segment: raw.get_u32_le(),
            offset: raw.get_u32_le(),
        })
    }
    if raw.remaining() < 4 {
        return None;
    }
    let n = raw.get_u32_le() as usize;
    let mut out = Vec::with_capacity(n.min(PAGE_ENTRIES * 4));
    for _ in 0..n {
        if raw.remaining() < 22 {
            return None;
        }
        let flags = raw.get_u8();
        let seq = raw.get_u64_le();
        let size = raw.get_u32_le();
        let delivery_count = raw.get_u32_le();
        let priority = raw.get_u8();
        let stored = if flags & STORED != 0 {
            Some(pos(&mut raw)?)
        } else {
            None
        };
        let body = if flags & SCRATCH != 0 {
            Body::Scratch(pos(&mut raw)?)
        } else {
            stored?;
            Body::Stored
        };
        let expires_at = if flags & EXPIRES != 0 {
            (raw.remaining() >= 8).then(|| raw.get_u64_le())
        } else {
            None
        };
        let dedup_key = if flags & DEDUP != 0 {
            if raw.remaining() < 4 {
                return None;
            }
            let len = raw.get_u32_le() as usize;
            if raw.remaining() < len {
                return None;
            }
            Some(String::from_utf8(raw.split_to(len).to_vec()).ok()?)
        } else {
            None
        };
        out.push(Ready {
            seq,
            body,
            pos: stored,
            size,
            expires_at,
            delivery_count,
            redelivered: flags & REDELIVERED != 0,
            priority,
            charged: 0,
            dedup_key,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pager_counts_what_its_queue_holds_of_the_budget() {
        let pager = Pager::new(None, "q");
        assert!(pager.try_charge(100));
        pager.force_charge(20);
        pager.release(50);
        assert_eq!(pager.charged(), 70);
        pager.release(500);
        assert_eq!(pager.charged(), 0, "never below nothing");
    }

    #[test]
    fn pages_round_trip() {
        let p = |segment, offset| SegmentPosition { segment, offset };
        let entries = vec![
            Ready {
                seq: 7,
                body: Body::Stored,
                pos: Some(p(3, 16)),
                size: 1024,
                expires_at: Some(1_700_000_000_000),
                delivery_count: 2,
                redelivered: true,
                priority: 4,
                charged: 0,
                dedup_key: Some("order-42".into()),
            },
            Ready {
                seq: u64::MAX - 1,
                body: Body::Scratch(p(1, 99)),
                pos: None,
                size: 0,
                expires_at: None,
                delivery_count: 0,
                redelivered: false,
                priority: 0,
                charged: 0,
                dedup_key: None,
            },
        ];
        let back = decode_page(encode_page(&entries).freeze()).unwrap();
        assert_eq!(format!("{entries:?}"), format!("{back:?}"));
        let mut cut = encode_page(&entries);
        cut.truncate(cut.len() - 3);
        assert!(decode_page(cut.freeze()).is_none());
    }

    #[test]
    fn a_page_summary_is_16_bytes_and_keeps_its_count_and_bytes() {
        assert_eq!(size_of::<Page>(), 16);
        let pos = SegmentPosition {
            segment: 7,
            offset: 4096,
        };
        let p = Page::new(pos, 32, 5 << 30);
        assert_eq!((p.count(), p.bytes(), p.pos), (32, 5 << 30, pos));
        let full = Page::new(pos, MAX_PAGE_ENTRIES, 0);
        assert_eq!((full.count() as usize, full.bytes()), (MAX_PAGE_ENTRIES, 0));
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit() {
        let m = MessageMemory::new(100);
        assert!(m.try_charge(60));
        assert!(!m.try_charge(41));
        assert!(m.try_charge(40));
        m.release(60);
        assert_eq!(m.used(), 40);
    }
}
