//! The bounded cursor over sniff task parameters and answer data.
//!
//! It is the link codec's cursor ([`crate::cursor`]) failing with this module's
//! [`PayloadError`]; what differs from the link is the string encoding: a u32 big-endian
//! length followed by the bytes (no NUL). Every accessor checks what is left before reading,
//! so no wire length can make it read out of bounds or allocate: strings are zero-copy slices
//! of the message.

use bytes::{BufMut, Bytes, BytesMut};

use super::{EncodeError, PayloadError};
use crate::cursor::{Cursor, impl_cursor_error};

pub(crate) type Reader = Cursor<PayloadError>;

impl_cursor_error!(PayloadError);

impl Reader {
    /// A u32-length-prefixed string (zero-copy). The length is checked against what is left
    /// before anything is taken, so a huge prefix is a `Truncated` error, not an allocation.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<Bytes, PayloadError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| PayloadError::Invalid {
            field,
            why: "string length does not fit in memory",
        })?;
        self.bytes(field, len)
    }

    /// A u16 item count, then that many items read by `item` (the target lists of ping and
    /// certificate parameters). The preallocation is bounded by what is left, `min_len` being
    /// an item's smallest wire size, so a claimed count cannot make us allocate more than the
    /// message could hold.
    pub(crate) fn counted<T>(
        &mut self,
        field: &'static str,
        min_len: usize,
        mut item: impl FnMut(&mut Reader) -> Result<T, PayloadError>,
    ) -> Result<Vec<T>, PayloadError> {
        let n = self.u16(field)?;
        let fits = self.remaining().checked_div(min_len).unwrap_or(usize::MAX);
        let mut items = Vec::with_capacity(usize::from(n).min(fits));
        for _ in 0..n {
            items.push(item(self)?);
        }
        Ok(items)
    }
}

/// The u16 count of a list of `len` items, or `FieldTooLong` when the count cannot say it.
pub(crate) fn u16_count(field: &'static str, len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::FieldTooLong {
        field,
        len,
        max: u16::MAX.into(),
    })
}

/// Appends a u32-length-prefixed string.
pub(crate) fn put_string(
    out: &mut BytesMut,
    field: &'static str,
    s: &[u8],
) -> Result<(), EncodeError> {
    let len = u32::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: s.len(),
        max: u32::MAX as usize,
    })?;
    out.put_u32(len);
    out.put_slice(s);
    Ok(())
}

/// Bytes a u32-length-prefixed string takes on the wire (saturating: callers compare the
/// sum with a frame limit, and a saturated sum is simply "too long").
pub(crate) fn string_len(s: &[u8]) -> usize {
    s.len().saturating_add(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_bounded_by_what_is_left() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x00\x00\x03abcd"));
        assert_eq!(r.string("s").unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.finish(), Err(PayloadError::TrailingBytes { extra: 1 }));

        let mut r = Reader::new(Bytes::from_static(b"\xff\xff\xff\xffab"));
        assert_eq!(
            r.string("host"),
            Err(PayloadError::Truncated {
                field: "host",
                need: 0xffff_ffff,
                have: 2
            })
        );
        let mut r = Reader::new(Bytes::from_static(b"\x00\x01"));
        assert!(matches!(
            r.u32("n"),
            Err(PayloadError::Truncated {
                field: "n",
                need: 4,
                have: 2
            })
        ));
    }

    #[test]
    fn put_string_writes_length_then_bytes() {
        let mut out = BytesMut::new();
        put_string(&mut out, "s", b"xy").unwrap();
        assert_eq!(&out[..], b"\x00\x00\x00\x02xy");
        assert_eq!(string_len(b"xy"), 6);
    }
}
