//! A minimal, bounds-checked reader of FlatBuffers tables (the parts AEDAT 4.0 uses).
//!
//! FlatBuffers layout (little-endian): the buffer starts with a `u32` offset to the root table
//! (optionally preceded by a `u32` size prefix, and followed by a 4-byte file identifier). A
//! table at `T` starts with an `i32` `soffset`; its vtable is at `T − soffset`: `u16` vtable
//! size, `u16` table size, then one `u16` per field, the field's offset from `T` (0 = absent,
//! default value). Offset fields (strings, vectors, sub-tables) hold a `u32` relative to their
//! own position; a vector or string is a `u32` length followed by the elements.
//!
//! Every read checks its range and reports the byte offset (relative to the buffer, plus a
//! base offset the caller gives to map it into the file), so corrupt data is an error, never a
//! panic or an out-of-bounds read. The crate `flatbuffers` needs generated code with `unsafe`
//! accessors; these few checked reads replace it.

use super::{EventError, Format};

/// A flatbuffer being read: the bytes, and how to name offsets in errors.
#[derive(Clone, Copy)]
pub(crate) struct Buf<'a> {
    pub bytes: &'a [u8],
    /// Added to buffer offsets in errors (the file offset of byte 0, when not compressed).
    pub base: u64,
    /// What this buffer is, for error messages.
    pub what: &'a str,
    pub format: Format,
}

/// A table inside a [`Buf`].
#[derive(Clone, Copy)]
pub(crate) struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Buf<'a> {
    fn corrupt(&self, pos: usize, m: impl std::fmt::Display) -> EventError {
        EventError::Corrupt {
            format: self.format,
            what: format!("{}: {m}", self.what),
            offset: self.base + pos as u64,
        }
    }

    /// `n` bytes at `pos`.
    pub fn slice(&self, pos: usize, n: usize, what: &str) -> Result<&'a [u8], EventError> {
        pos.checked_add(n)
            .and_then(|end| self.bytes.get(pos..end))
            .ok_or_else(|| {
                self.corrupt(
                    pos,
                    format_args!(
                        "{what} ({n} bytes) runs past the end of the {}-byte buffer",
                        self.bytes.len()
                    ),
                )
            })
    }

    /// The little-endian `u16` in the 2 bytes at `pos` (`what` names it in the error).
    pub fn u16(&self, pos: usize, what: &str) -> Result<u16, EventError> {
        let b = self.slice(pos, 2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// The little-endian `u32` in the 4 bytes at `pos` (`what` names it in the error).
    pub fn u32(&self, pos: usize, what: &str) -> Result<u32, EventError> {
        let b = self.slice(pos, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The little-endian `i64` in the 8 bytes at `pos` (`what` names it in the error).
    pub fn i64(&self, pos: usize, what: &str) -> Result<i64, EventError> {
        let b = self.slice(pos, 8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    /// Follows the `u32` offset stored at `pos` (relative to `pos`).
    fn follow(&self, pos: usize, what: &str) -> Result<usize, EventError> {
        let off = self.u32(pos, what)? as usize;
        let target = pos
            .checked_add(off)
            .filter(|&t| t < self.bytes.len())
            .ok_or_else(|| {
                self.corrupt(
                    pos,
                    format_args!("{what}: offset {off} points past the end"),
                )
            })?;
        Ok(target)
    }

    /// The root table; checks the 4-byte file identifier after the root offset.
    pub fn root(&self, identifier: &[u8; 4]) -> Result<Table, EventError> {
        let id = self.slice(4, 4, "file identifier")?;
        if id != identifier {
            return Err(self.corrupt(
                4,
                format_args!(
                    "file identifier {:?}, expected {:?}",
                    String::from_utf8_lossy(id),
                    String::from_utf8_lossy(identifier)
                ),
            ));
        }
        let pos = self.follow(0, "root table offset")?;
        self.table(pos)
    }

    /// The table at `pos`.
    pub fn table(&self, pos: usize) -> Result<Table, EventError> {
        let soff = self.u32(pos, "table vtable offset")? as i32 as i64;
        let vtable = usize::try_from(pos as i64 - soff)
            .ok()
            .filter(|&v| v < self.bytes.len())
            .ok_or_else(|| self.corrupt(pos, format_args!("vtable offset {soff} out of range")))?;
        let vtable_len = self.u16(vtable, "vtable size")? as usize;
        if vtable_len < 4 || !vtable_len.is_multiple_of(2) {
            return Err(self.corrupt(vtable, format_args!("vtable size {vtable_len}")));
        }
        self.slice(vtable, vtable_len, "vtable")?;
        let table_len = self.u16(vtable + 2, "table size")? as usize;
        self.slice(pos, table_len.max(4), "table")?;
        Ok(Table {
            pos,
            vtable,
            vtable_len,
        })
    }

    /// Position of field `index` of `t`, or `None` when absent.
    pub fn field(&self, t: Table, index: usize) -> Result<Option<usize>, EventError> {
        let slot = 4 + 2 * index;
        if slot + 2 > t.vtable_len {
            return Ok(None);
        }
        let off = self.u16(t.vtable + slot, "vtable entry")? as usize;
        Ok((off != 0).then_some(t.pos + off))
    }

    /// An `i64` field (or `default`).
    pub fn field_i64(&self, t: Table, index: usize, default: i64) -> Result<i64, EventError> {
        match self.field(t, index)? {
            Some(p) => self.i64(p, "i64 field"),
            None => Ok(default),
        }
    }

    /// An `i32` field (or `default`).
    pub fn field_i32(&self, t: Table, index: usize, default: i32) -> Result<i32, EventError> {
        match self.field(t, index)? {
            Some(p) => Ok(self.u32(p, "i32 field")? as i32),
            None => Ok(default),
        }
    }

    /// A vector field: `(position of the first element, length)`, after checking that
    /// `len · elem_size` bytes are there; `None` when absent.
    pub fn field_vector(
        &self,
        t: Table,
        index: usize,
        elem_size: usize,
    ) -> Result<Option<(usize, usize)>, EventError> {
        let Some(p) = self.field(t, index)? else {
            return Ok(None);
        };
        let v = self.follow(p, "vector offset")?;
        let len = self.u32(v, "vector length")? as usize;
        let bytes = len
            .checked_mul(elem_size)
            .ok_or_else(|| self.corrupt(v, format_args!("vector of {len} elements is too long")))?;
        self.slice(v + 4, bytes, "vector elements")?;
        Ok(Some((v + 4, len)))
    }

    /// A string field (UTF-8); `None` when absent.
    pub fn field_str(&self, t: Table, index: usize) -> Result<Option<&'a str>, EventError> {
        let Some((start, len)) = self.field_vector(t, index, 1)? else {
            return Ok(None);
        };
        let b = self.slice(start, len, "string")?;
        std::str::from_utf8(b)
            .map(Some)
            .map_err(|e| self.corrupt(start + e.valid_up_to(), "string is not UTF-8"))
    }

    /// Element `i` of a vector of tables starting at `start`.
    pub fn table_in_vector(&self, start: usize, i: usize) -> Result<Table, EventError> {
        let p = start + 4 * i;
        let t = self.follow(p, "table offset in vector")?;
        self.table(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_rejects_bad_offsets() {
        // Layout: [0..4) root=20, [4..8) "TEST", [8..18) vtable, [18..20) pad,
        // [20..24) soffset = 12 (vtable at 8), [24..32) i64 = -5, [32..36) string offset,
        // [36..40) len 2, "hi\0" + pad.
        // Written out byte by byte from the format description above.
        let mut b = Vec::new();
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(b"TEST");
        for v in [10u16, 16, 4, 0, 12] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&12i32.to_le_bytes());
        b.extend_from_slice(&(-5i64).to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes()); // at 32 -> string at 36
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(b"hi\0\0");
        let buf = Buf {
            bytes: &b,
            base: 100,
            what: "test",
            format: Format::Aedat4,
        };
        let t = buf.root(b"TEST").unwrap();
        assert_eq!(buf.field_i64(t, 0, 7).unwrap(), -5);
        assert_eq!(buf.field_i64(t, 1, 7).unwrap(), 7);
        assert_eq!(buf.field_str(t, 2).unwrap(), Some("hi"));
        assert_eq!(buf.field_str(t, 3).unwrap(), None);
        assert!(buf.root(b"NOPE").is_err());
        // A string length past the end names the byte offset (base + 36).
        let mut bad = b.clone();
        bad[36..40].copy_from_slice(&1000u32.to_le_bytes());
        let buf = Buf { bytes: &bad, ..buf };
        let t = buf.root(b"TEST").unwrap();
        match buf.field_str(t, 2) {
            Err(EventError::Corrupt { offset, .. }) => assert_eq!(offset, 140),
            other => panic!("{other:?}"),
        }
        // A vtable offset pointing outside.
        let mut bad = b.clone();
        bad[20..24].copy_from_slice(&(-1000i32).to_le_bytes());
        let buf = Buf { bytes: &bad, ..buf };
        assert!(matches!(buf.root(b"TEST"), Err(EventError::Corrupt { .. })));
        // Every truncation is an error, never a panic.
        for n in 0..b.len() {
            let buf = Buf {
                bytes: &b[..n],
                ..buf
            };
            if let Ok(t) = buf.root(b"TEST") {
                let _ = buf.field_i64(t, 0, 0);
                let _ = buf.field_str(t, 2);
            }
        }
    }
}
