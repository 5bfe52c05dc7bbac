//! The link codec's payload reader: the shared bounded cursor ([`crate::cursor`]) failing
//! with this module's [`PayloadError`], plus the link's NUL-terminated strings.

use bytes::Bytes;

use super::PayloadError;
use crate::cursor::{Cursor, CursorError};

pub(crate) type Reader = Cursor<PayloadError>;

impl CursorError for PayloadError {
    fn truncated(field: &'static str, need: usize, have: usize) -> Self {
        PayloadError::Truncated { field, need, have }
    }

    fn trailing_bytes(extra: usize) -> Self {
        PayloadError::TrailingBytes { extra }
    }
}

impl Reader {
    /// A NUL-terminated string; returns it without the NUL (zero-copy).
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<Bytes, PayloadError> {
        self.until(0).ok_or(PayloadError::MissingNul { field })
    }
}
