//! The link codec's payload reader: the shared bounded cursor ([`crate::cursor`]) failing
//! with this module's [`PayloadError`], plus the link's NUL-terminated strings.

use bytes::Bytes;

use super::PayloadError;
use crate::cursor::{Cursor, impl_cursor_error};

pub(crate) type Reader = Cursor<PayloadError>;

impl_cursor_error!(PayloadError);

impl Reader {
    /// A NUL-terminated string; returns it without the NUL (zero-copy).
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<Bytes, PayloadError> {
        self.until(0).ok_or(PayloadError::MissingNul { field })
    }
}
