//! Checked primitive readers and writers shared by methods, tables and headers.
//!
//! `bytes::Buf` panics when asked for more bytes than remain; a broker cannot
//! let a peer trigger that, so every read here checks first and returns
//! [`CodecError::Truncated`] instead.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::types::FieldTable;

/// Reads AMQP primitives from a byte slice that is shared, not copied.
#[derive(Debug)]
pub struct Decoder {
    buf: Bytes,
    pos: usize,
    /// The octet bits are being taken from, and how many of its bits are used.
    /// Consecutive `bit` fields share one octet; any other field ends the run.
    bits: u8,
    bits_used: u8,
    what: &'static str,
}

impl Decoder {
    /// A decoder over `buf`; `what` names the structure in truncation errors.
    pub fn new(buf: Bytes, what: &'static str) -> Self {
        Decoder {
            buf,
            pos: 0,
            bits: 0,
            bits_used: 8,
            what,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn need(&mut self, n: usize) -> Result<(), CodecError> {
        self.bits_used = 8;
        if self.remaining() < n {
            Err(CodecError::Truncated(self.what))
        } else {
            Ok(())
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.need(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    /// Takes the next `n` bytes as a shared slice.
    pub fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        self.need(n)?;
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// An unsigned octet.
    pub fn octet(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian u16.
    pub fn short(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian u32.
    pub fn long(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian u64.
    pub fn longlong(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A timestamp (seconds since the epoch, u64).
    pub fn timestamp(&mut self) -> Result<u64, CodecError> {
        self.longlong()
    }

    /// One bit of a packed run of bits.
    pub fn bit(&mut self) -> Result<bool, CodecError> {
        if self.bits_used >= 8 {
            self.bits = self.octet()?;
            self.bits_used = 0;
        }
        let value = self.bits & (1 << self.bits_used) != 0;
        self.bits_used += 1;
        Ok(value)
    }

    /// A short string: length octet then UTF-8 bytes.
    pub fn shortstr(&mut self) -> Result<String, CodecError> {
        let len = self.octet()? as usize;
        self.need(len)?;
        let s = std::str::from_utf8(&self.buf[self.pos..self.pos + len])
            .map_err(|_| CodecError::InvalidUtf8)?
            .to_owned();
        self.pos += len;
        Ok(s)
    }

    /// A long string: u32 length then raw bytes, shared with the input.
    pub fn longstr(&mut self) -> Result<Bytes, CodecError> {
        let len = self.long()? as usize;
        self.take(len)
    }

    /// A field table.
    pub fn table(&mut self) -> Result<FieldTable, CodecError> {
        let raw = self.longstr()?;
        FieldTable::decode(raw, 0)
    }
}

/// Writes AMQP primitives into a growable buffer.
#[derive(Debug)]
pub struct Encoder<'a> {
    out: &'a mut BytesMut,
    bits: u8,
    bits_used: u8,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut BytesMut) -> Self {
        Encoder {
            out,
            bits: 0,
            bits_used: 0,
        }
    }

    fn flush_bits(&mut self) {
        if self.bits_used > 0 {
            self.out.put_u8(self.bits);
            self.bits = 0;
            self.bits_used = 0;
        }
    }

    /// Writes any pending bits; call after the last field.
    pub fn finish(mut self) {
        self.flush_bits();
    }

    /// An unsigned octet.
    pub fn octet(&mut self, v: &u8) {
        self.flush_bits();
        self.out.put_u8(*v);
    }

    /// A big-endian u16.
    pub fn short(&mut self, v: &u16) {
        self.flush_bits();
        self.out.put_u16(*v);
    }

    /// A big-endian u32.
    pub fn long(&mut self, v: &u32) {
        self.flush_bits();
        self.out.put_u32(*v);
    }

    /// A big-endian u64.
    pub fn longlong(&mut self, v: &u64) {
        self.flush_bits();
        self.out.put_u64(*v);
    }

    /// A timestamp.
    pub fn timestamp(&mut self, v: &u64) {
        self.longlong(v);
    }

    /// One bit; consecutive bits share an octet.
    pub fn bit(&mut self, v: &bool) {
        if self.bits_used == 8 {
            self.flush_bits();
        }
        if *v {
            self.bits |= 1 << self.bits_used;
        }
        self.bits_used += 1;
    }

    /// A short string. Strings longer than 255 bytes are cut at the last
    /// character boundary that fits: the wire format cannot carry more, and
    /// the broker only writes long strings in human-readable reply texts.
    pub fn shortstr(&mut self, v: &str) {
        self.flush_bits();
        put_shortstr(self.out, v);
    }

    /// A long string.
    pub fn longstr(&mut self, v: &Bytes) {
        self.flush_bits();
        self.out.put_u32(v.len() as u32);
        self.out.put_slice(v);
    }

    /// A field table.
    pub fn table(&mut self, v: &FieldTable) {
        self.flush_bits();
        v.encode(self.out);
    }
}

/// Writes a short string, truncated at a character boundary to 255 bytes.
pub fn put_shortstr(out: &mut BytesMut, v: &str) {
    let mut end = v.len().min(255);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u8(end as u8);
    out.put_slice(&v.as_bytes()[..end]);
}
