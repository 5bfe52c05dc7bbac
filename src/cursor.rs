//! The bounded big-endian cursor under both codecs' payload readers.
//!
//! The link codec ([`crate::wire`]) and the sniff codec ([`crate::sniff`]) read their payloads
//! the same way: fixed-size big-endian fields, each checked against what is left before it is
//! taken, so no wire length can make a read go out of bounds or allocate. They differ only in
//! their error types (each module keeps its own public `PayloadError`) and in their string
//! encodings (NUL-terminated on the link, u32-length-prefixed in sniff), which each module
//! adds on top of this cursor. [`CursorError`] is how the cursor builds either error.

use std::marker::PhantomData;

use bytes::{Buf, Bytes};

/// The two failures the cursor itself can report, built in the caller's error type.
pub(crate) trait CursorError {
    /// `field` needs `need` bytes but only `have` are left.
    fn truncated(field: &'static str, need: usize, have: usize) -> Self;
    /// `extra` bytes follow the last field of a layout that must end there.
    fn trailing_bytes(extra: usize) -> Self;
}

/// Implements [`CursorError`] for a module's `PayloadError`: the link's and the sniff's both
/// spell the two failures `Truncated { field, need, have }` and `TrailingBytes { extra }`.
macro_rules! impl_cursor_error {
    ($error:ty) => {
        impl $crate::cursor::CursorError for $error {
            fn truncated(field: &'static str, need: usize, have: usize) -> Self {
                Self::Truncated { field, need, have }
            }

            fn trailing_bytes(extra: usize) -> Self {
                Self::TrailingBytes { extra }
            }
        }
    };
}
pub(crate) use impl_cursor_error;

/// A bounded cursor over one payload whose failures are `E`s. Every accessor checks what is
/// left first and names the field when it fails; taken bytes are zero-copy slices.
pub(crate) struct Cursor<E> {
    buf: Bytes,
    // `fn() -> E`: the cursor makes `E`s, it holds none (no drop check, always Send + Sync).
    error: PhantomData<fn() -> E>,
}

impl<E: CursorError> Cursor<E> {
    pub(crate) fn new(buf: Bytes) -> Self {
        Cursor {
            buf,
            error: PhantomData,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, field: &'static str, need: usize) -> Result<(), E> {
        let have = self.buf.remaining();
        if have < need {
            return Err(E::truncated(field, need, have));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, E> {
        self.need(field, 1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, E> {
        self.need(field, 2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, E> {
        self.need(field, 4)?;
        Ok(self.buf.get_u32())
    }

    /// Takes `len` bytes as a zero-copy slice; a `len` beyond what is left is a truncation,
    /// never an allocation.
    pub(crate) fn bytes(&mut self, field: &'static str, len: usize) -> Result<Bytes, E> {
        self.need(field, len)?;
        Ok(self.buf.split_to(len))
    }

    /// Takes everything up to the first `delim` and the `delim` itself, returning the bytes
    /// before it (zero-copy); `None`, taking nothing, when no `delim` is left.
    pub(crate) fn until(&mut self, delim: u8) -> Option<Bytes> {
        let at = self.buf.iter().position(|&b| b == delim)?;
        let s = self.buf.split_to(at);
        self.buf.advance(1);
        Some(s)
    }

    /// Everything that is left (zero-copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// Fails if anything is left after the last field of a fixed layout.
    pub(crate) fn finish(self) -> Result<(), E> {
        match self.buf.remaining() {
            0 => Ok(()),
            extra => Err(E::trailing_bytes(extra)),
        }
    }
}
