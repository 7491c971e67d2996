//! The bytes on disk: segment header, record framing, ack entries, and the
//! scanner that walks a segment image and tells good records, mid-segment
//! corruption and a torn tail apart.
//!
//! Everything here is a pure function over byte slices, so the subtle part of
//! recovery (where does the valid data end?) is unit-tested without files.

use std::path::{Path, PathBuf};

/// First 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"ANTRESEG";
/// Version written in the segment header. A file with the right magic and
/// another version is refused rather than "repaired", so an older binary never
/// truncates a newer format.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes before the first record of a segment: magic, version, segment number.
pub const SEGMENT_HEADER_LEN: u32 = 16;
/// First 4 bytes of every record. Chosen to be unlike zeros and ASCII, which
/// are what torn tails and stray text usually contain.
pub(crate) const RECORD_MAGIC: [u8; 4] = [0xDE, 0xC0, 0x7E, 0xA1];
/// Bytes before a record's payload: magic, length, payload CRC, header CRC.
pub const RECORD_HEADER_LEN: u32 = 16;
/// Bytes per ack entry: acked record offset and a CRC of (segment, offset).
pub(crate) const ACK_ENTRY_LEN: usize = 8;
/// Largest payload a record may carry (1 GiB). Keeps every offset in a `u32`
/// even when one huge record gets a segment of its own.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;

/// Path of segment `n` in `dir`: `msgs.NNNNNNNNNN`.
pub(crate) fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("msgs.{n:010}"))
}

/// Path of the ack file of segment `n` in `dir`: `acks.NNNNNNNNNN`.
pub(crate) fn ack_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("acks.{n:010}"))
}

/// Kind of store file a directory entry names, if any.
pub(crate) enum FileKind {
    Segment(u32),
    Acks(u32),
}

/// Parses `msgs.N` / `acks.N`; anything else is not ours and is left alone.
pub(crate) fn parse_file_name(name: &str) -> Option<FileKind> {
    let (kind, digits) = name.split_at_checked(5)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    match kind {
        "msgs." => Some(FileKind::Segment(n)),
        "acks." => Some(FileKind::Acks(n)),
        _ => None,
    }
}

/// The 16-byte header that starts segment `segment`.
pub(crate) fn encode_segment_header(segment: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&segment.to_le_bytes());
    h
}

/// What a segment's first 16 bytes say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    /// Ours, this version, this segment.
    Valid,
    /// Shorter than a header: the file was created and the process died
    /// before the first flush. Holds no records.
    Torn,
    /// Our magic but a version this code does not understand.
    UnknownVersion(u32),
    /// Not a valid header (bit rot, or a header naming another segment).
    /// Records after it are still scanned: losing a header must not lose
    /// the records behind it.
    Damaged(&'static str),
}

pub(crate) fn check_segment_header(image: &[u8], segment: u32) -> SegmentHeader {
    let Some(h) = image.get(..SEGMENT_HEADER_LEN as usize) else {
        return SegmentHeader::Torn;
    };
    if h[..8] != SEGMENT_MAGIC {
        return SegmentHeader::Damaged("bad magic");
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return SegmentHeader::UnknownVersion(version);
    }
    if u32::from_le_bytes([h[12], h[13], h[14], h[15]]) != segment {
        return SegmentHeader::Damaged("header names another segment");
    }
    SegmentHeader::Valid
}

/// The 16-byte header written before `payload`. The caller has checked that
/// the payload is at most [`MAX_PAYLOAD_LEN`] bytes.
pub(crate) fn encode_record_header(payload: &[u8]) -> [u8; 16] {
    // Truncation cannot happen: append() rejects payloads over MAX_PAYLOAD_LEN.
    let len = payload.len() as u32;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    // A separate header CRC makes the length trustworthy on its own: when the
    // payload CRC fails but the header CRC holds, we know exactly where the
    // next record starts and can skip just the damaged one.
    let hcrc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// A record header whose magic and header CRC check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub crc: u32,
}

pub(crate) fn decode_record_header(bytes: &[u8]) -> Option<RecordHeader> {
    let h = bytes.get(..RECORD_HEADER_LEN as usize)?;
    if h[0..4] != RECORD_MAGIC {
        return None;
    }
    let hcrc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if crc32c::crc32c(&h[..12]) != hcrc {
        return None;
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_PAYLOAD_LEN {
        return None;
    }
    let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    Some(RecordHeader { len, crc })
}

/// An ack entry for `offset` in `segment`. The CRC covers the segment number
/// too, so an entry copied into the wrong ack file is ignored.
pub(crate) fn encode_ack_entry(segment: u32, offset: u32) -> [u8; ACK_ENTRY_LEN] {
    let mut e = [0u8; ACK_ENTRY_LEN];
    e[..4].copy_from_slice(&offset.to_le_bytes());
    e[4..].copy_from_slice(&ack_crc(segment, offset).to_le_bytes());
    e
}

/// The acked offset, or `None` for a damaged entry. A damaged entry is
/// ignored, which can only bring a record back, never lose one.
pub(crate) fn decode_ack_entry(segment: u32, e: &[u8]) -> Option<u32> {
    let e: &[u8; ACK_ENTRY_LEN] = e.try_into().ok()?;
    let offset = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
    let crc = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
    (ack_crc(segment, offset) == crc).then_some(offset)
}

fn ack_crc(segment: u32, offset: u32) -> u32 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&segment.to_le_bytes());
    b[4..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c(&b)
}

/// What the scanner found in one segment image.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ScanSummary {
    /// Offset just past the last record (or skipped corrupt region) that is
    /// followed by nothing valid. Bytes from here on are a torn tail.
    pub valid_len: usize,
    /// Damaged regions skipped because a valid record followed them.
    pub corrupt_records: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
}

enum Check<'a> {
    Good {
        next: usize,
        payload: &'a [u8],
    },
    /// The image ends inside this record: a write that never completed.
    TornTail,
    /// Damaged; look for the next valid record from `resume_from`.
    Bad {
        resume_from: usize,
    },
}

fn check_record(image: &[u8], off: usize, verify_payload: bool) -> Check<'_> {
    let Some(hbytes) = image.get(off..off + RECORD_HEADER_LEN as usize) else {
        return Check::TornTail;
    };
    let Some(h) = decode_record_header(hbytes) else {
        // The length cannot be trusted, so the next record could start
        // anywhere after this byte.
        return Check::Bad {
            resume_from: off + 1,
        };
    };
    let start = off + RECORD_HEADER_LEN as usize;
    let end = start + h.len as usize;
    let Some(payload) = image.get(start..end) else {
        // The header CRC vouches for the length, so the record really runs
        // past the end of the file: it was being written when we stopped.
        return Check::TornTail;
    };
    if verify_payload && crc32c::crc32c(payload) != h.crc {
        return Check::Bad { resume_from: end };
    }
    Check::Good { next: end, payload }
}

/// True when a complete record with a matching payload CRC starts at `off`.
fn is_valid_record(image: &[u8], off: usize) -> bool {
    matches!(check_record(image, off, true), Check::Good { .. })
}

/// The first offset at or after `from` where a fully valid record starts.
///
/// Only called after damage, so a byte-wise search is fine; searching for the
/// magic first keeps it cheap even over megabytes of zeros.
fn find_valid_record(image: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + RECORD_HEADER_LEN as usize <= image.len() {
        let rel = image[i..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        let cand = i + rel;
        if is_valid_record(image, cand) {
            return Some(cand);
        }
        i = cand + 1;
    }
    None
}

/// Walks the records of a segment image (starting after its header).
///
/// For each structurally sound record, `wanted(offset)` says whether the
/// caller needs it (it is not acked). Wanted records get their payload CRC
/// checked and are passed to `on_record(offset, Some(payload))`; unwanted
/// ones are passed as `on_record(offset, None)` without reading the payload,
/// which keeps recovery of mostly-acked segments cheap.
///
/// A damaged record is only called *corruption* if a valid record follows it;
/// then the damaged bytes are reported through `on_corrupt(offset, len)` and
/// skipped. If nothing valid follows, the damage is a torn tail: scanning
/// stops and [`ScanSummary::valid_len`] says where the tail begins. This is
/// the rule that keeps every record before a crash point while never
/// returning a damaged payload.
pub(crate) fn scan_segment(
    image: &[u8],
    mut wanted: impl FnMut(u32) -> bool,
    mut on_record: impl FnMut(u32, Option<&[u8]>),
    mut on_corrupt: impl FnMut(u32, u64),
) -> ScanSummary {
    // Offsets are u32; a file longer than that was not written by us, and
    // whatever lies beyond is treated as tail.
    let image = &image[..image.len().min(u32::MAX as usize)];
    let mut summary = ScanSummary::default();
    let mut off = SEGMENT_HEADER_LEN as usize;
    while off < image.len() {
        let want = wanted(off as u32);
        match check_record(image, off, want) {
            Check::Good { next, payload } => {
                on_record(off as u32, want.then_some(payload));
                off = next;
            }
            Check::TornTail => break,
            Check::Bad { resume_from } => match find_valid_record(image, resume_from) {
                Some(next) => {
                    let skipped = (next - off) as u64;
                    on_corrupt(off as u32, skipped);
                    summary.corrupt_records += 1;
                    summary.corrupt_bytes += skipped;
                    off = next;
                }
                None => break,
            },
        }
    }
    summary.valid_len = off.min(image.len());
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut img = encode_segment_header(7).to_vec();
        let mut offs = Vec::new();
        for p in payloads {
            offs.push(img.len());
            img.extend_from_slice(&encode_record_header(p));
            img.extend_from_slice(p);
        }
        (img, offs)
    }

    fn scan_all(img: &[u8]) -> (Vec<(u32, Vec<u8>)>, ScanSummary) {
        let mut out = Vec::new();
        let s = scan_segment(
            img,
            |_| true,
            |o, p| out.push((o, p.map(<[u8]>::to_vec).unwrap_or_default())),
            |_, _| {},
        );
        (out, s)
    }

    #[test]
    fn header_roundtrip_and_checks() {
        let h = encode_segment_header(7);
        assert_eq!(check_segment_header(&h, 7), SegmentHeader::Valid);
        assert!(matches!(
            check_segment_header(&h, 8),
            SegmentHeader::Damaged(_)
        ));
        assert_eq!(check_segment_header(&h[..5], 7), SegmentHeader::Torn);
        let mut v = h;
        v[8] = 9;
        assert_eq!(
            check_segment_header(&v, 7),
            SegmentHeader::UnknownVersion(9)
        );
    }

    #[test]
    fn record_header_rejects_any_single_bit_flip() {
        let h = encode_record_header(b"hello");
        assert_eq!(decode_record_header(&h).map(|h| h.len), Some(5));
        for byte in 0..16 {
            for bit in 0..8 {
                let mut d = h;
                d[byte] ^= 1 << bit;
                assert!(decode_record_header(&d).is_none(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn ack_entry_roundtrip_and_zeros_are_invalid() {
        let e = encode_ack_entry(3, 1234);
        assert_eq!(decode_ack_entry(3, &e), Some(1234));
        assert_eq!(decode_ack_entry(4, &e), None);
        assert_eq!(decode_ack_entry(3, &[0u8; 8]), None);
    }

    #[test]
    fn file_names() {
        assert!(matches!(
            parse_file_name("msgs.0000000012"),
            Some(FileKind::Segment(12))
        ));
        assert!(matches!(
            parse_file_name("acks.0000000001"),
            Some(FileKind::Acks(1))
        ));
        assert!(parse_file_name("msgs.").is_none());
        assert!(parse_file_name("msgs.12a").is_none());
        assert!(parse_file_name("defs.0000000001").is_none());
        assert!(parse_file_name("x").is_none());
    }

    #[test]
    fn clean_image_scans_fully() {
        let (img, offs) = image(&[b"a", b"", b"ccc"]);
        let (recs, s) = scan_all(&img);
        assert_eq!(s.valid_len, img.len());
        assert_eq!(s.corrupt_records, 0);
        let got: Vec<usize> = recs.iter().map(|r| r.0 as usize).collect();
        assert_eq!(got, offs);
        assert_eq!(recs[2].1, b"ccc");
    }

    #[test]
    fn torn_tail_at_every_cut() {
        let (img, offs) = image(&[b"first", b"second", b"third!"]);
        for cut in offs[1]..img.len() {
            let (recs, s) = scan_all(&img[..cut]);
            // Record 0 is always whole; record 1 ends at offs[2]; record 2 never is.
            let expect = if cut >= offs[2] { 2 } else { 1 };
            assert_eq!(recs.len(), expect, "cut {cut}");
            assert_eq!(s.valid_len, if expect == 2 { offs[2] } else { offs[1] });
            assert_eq!(s.corrupt_records, 0);
        }
    }

    #[test]
    fn corrupt_payload_in_middle_is_skipped() {
        let (mut img, offs) = image(&[b"one", b"two", b"three"]);
        img[offs[1] + 16] ^= 0x40;
        let (recs, s) = scan_all(&img);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].1, b"three");
        assert_eq!(s.corrupt_records, 1);
        assert_eq!(s.corrupt_bytes, (offs[2] - offs[1]) as u64);
        assert_eq!(s.valid_len, img.len());
    }

    #[test]
    fn corrupt_length_in_middle_resyncs() {
        let (mut img, offs) = image(&[b"one", b"two", b"three"]);
        img[offs[1] + 4] ^= 0x10;
        let (recs, s) = scan_all(&img);
        assert_eq!(recs.len(), 2);
        assert_eq!(s.corrupt_records, 1);
    }

    #[test]
    fn garbage_after_tail_is_torn() {
        let (mut img, _) = image(&[b"one", b"two"]);
        let len = img.len();
        img.extend_from_slice(&[0u8; 100]);
        img.extend_from_slice(&RECORD_MAGIC);
        img.extend_from_slice(&[0xff; 20]);
        let (recs, s) = scan_all(&img);
        assert_eq!(recs.len(), 2);
        assert_eq!(s.valid_len, len);
        assert_eq!(s.corrupt_records, 0);
    }

    #[test]
    fn corrupt_last_record_is_a_torn_tail() {
        let (mut img, offs) = image(&[b"one", b"two"]);
        let last = img.len() - 1;
        img[last] ^= 1;
        let (recs, s) = scan_all(&img);
        assert_eq!(recs.len(), 1);
        assert_eq!(s.valid_len, offs[1]);
    }

    #[test]
    fn unwanted_records_skip_payload_check() {
        let (mut img, offs) = image(&[b"one", b"two", b"three"]);
        img[offs[1] + 16] ^= 1;
        let mut seen = Vec::new();
        let s = scan_segment(
            &img,
            |o| o as usize != offs[1],
            |o, p| seen.push((o, p.is_some())),
            |_, _| {},
        );
        assert_eq!(s.corrupt_records, 0);
        assert_eq!(seen.len(), 3);
        assert!(!seen[1].1);
    }
}
