//! Little-endian 32-bit word I/O shared by the blob formats ([`crate::export_network`],
//! [`crate::export_lm`]): writers, and a reading cursor whose errors name the field and byte
//! offset where a file runs out.

use crate::export::ExportError;

type Result<T> = std::result::Result<T, ExportError>;

/// Appends `v` as 4 little-endian bytes.
pub(crate) fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends every value of `v` as 4 little-endian bytes.
pub(crate) fn push_f32s(out: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// `n` as a u32, or an error naming `what`.
pub(crate) fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| ExportError::Blob(format!("{what} {n} does not fit in a u32")))
}

/// A cursor over a blob's words that reports where it ran out.
pub(crate) struct Cursor<'b> {
    /// The whole blob.
    pub(crate) blob: &'b [u8],
    /// Offset of the next unread byte.
    pub(crate) at: usize,
}

impl<'b> Cursor<'b> {
    /// A cursor at the start of `blob`.
    pub(crate) fn new(blob: &'b [u8]) -> Self {
        Cursor { blob, at: 0 }
    }

    /// The next `n` bytes, or a "truncated" error naming `what` and the offset.
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'b [u8]> {
        match self.at.checked_add(n).filter(|e| *e <= self.blob.len()) {
            Some(end) => {
                let s = &self.blob[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(ExportError::Blob(format!(
                "{what}: needs {n} bytes at offset {}, the file has {} (truncated)",
                self.at,
                self.blob.len()
            ))),
        }
    }

    /// The next little-endian u32.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u32 that must be 0 or 1.
    pub(crate) fn flag(&mut self, what: &str) -> Result<bool> {
        let at = self.at;
        match self.u32(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ExportError::Blob(format!(
                "{what} at offset {at} is {v}, not 0 or 1"
            ))),
        }
    }

    /// `n` f32 values; `n` is checked against the bytes left before anything is reserved.
    pub(crate) fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>> {
        let len = n
            .checked_mul(4)
            .ok_or_else(|| ExportError::Blob(format!("{what}: {n} values overflow")))?;
        let b = self.bytes(len, what)?;
        Ok(b.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
