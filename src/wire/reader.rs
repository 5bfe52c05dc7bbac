//! A bounded cursor over one packet's payload. It never panics and never reads past the end:
//! every accessor checks what is left first and names the field when it fails.

use bytes::{Buf, Bytes};

use super::PayloadError;

pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, field: &'static str, need: usize) -> Result<(), PayloadError> {
        let have = self.buf.remaining();
        if have < need {
            return Err(PayloadError::Truncated { field, need, have });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, PayloadError> {
        self.need(field, 1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, PayloadError> {
        self.need(field, 2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, PayloadError> {
        self.need(field, 4)?;
        Ok(self.buf.get_u32())
    }

    /// Takes `len` bytes as a zero-copy slice.
    pub(crate) fn bytes(&mut self, field: &'static str, len: usize) -> Result<Bytes, PayloadError> {
        self.need(field, len)?;
        Ok(self.buf.split_to(len))
    }

    /// A NUL-terminated string; returns it without the NUL (zero-copy).
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<Bytes, PayloadError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(PayloadError::MissingNul { field });
        };
        let s = self.buf.split_to(nul);
        self.buf.advance(1);
        Ok(s)
    }

    /// Everything that is left (zero-copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// Fails if anything is left after the last field of a fixed layout.
    pub(crate) fn finish(self) -> Result<(), PayloadError> {
        match self.buf.remaining() {
            0 => Ok(()),
            extra => Err(PayloadError::TrailingBytes { extra }),
        }
    }
}
