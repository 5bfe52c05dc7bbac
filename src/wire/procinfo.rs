//! Procinfo TLVs: `type u8 | len u8 | value`, a type-0 TLV ends the list.
//!
//! Field types follow ARCHITECTURE.md, "Link protocol"; bit *n* of a query mask asks for
//! type *n*.

use bytes::Bytes;

use super::PayloadError;
use super::reader::Reader;

/// At most one TLV per possible type byte (1..=255).
pub const MAX_PROCINFO_FIELDS: usize = 255;

/// One procinfo field as it travels: its type and its raw (big-endian) value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfoField {
    pub kind: u8,
    pub value: Bytes,
}

impl ProcInfoField {
    /// A field holding a big-endian u32 (most procinfo fields).
    pub fn u32(kind: u8, v: u32) -> Self {
        ProcInfoField {
            kind,
            value: Bytes::copy_from_slice(&v.to_be_bytes()),
        }
    }

    /// The value read as a big-endian u32, if it is exactly 4 bytes.
    pub fn as_u32(&self) -> Option<u32> {
        let b: [u8; 4] = self.value.as_ref().try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }
}

/// The procinfo field types (ARCHITECTURE.md, "Link protocol").
pub mod field {
    /// Process id, u32.
    pub const PID: u8 = 1;
    /// Process-group id, u32.
    pub const PGID: u8 = 2;
    /// State letter as in `/proc/PID/stat`, u8.
    pub const STATE: u8 = 3;
    /// Effective uid, u32.
    pub const UID: u8 = 4;
    /// Effective gid, u32.
    pub const GID: u8 = 5;
    /// Resident set size in KiB, u32.
    pub const RSS_KIB: u8 = 6;
    /// User CPU time in ms, u32.
    pub const UTIME_MS: u8 = 7;
    /// System CPU time in ms, u32.
    pub const STIME_MS: u8 = 8;
    /// Wall time since start in ms, u32.
    pub const ELAPSED_MS: u8 = 9;
    /// Number of threads, u32.
    pub const THREADS: u8 = 10;
    /// Command name, bytes.
    pub const COMM: u8 = 11;

    /// The query mask bit that asks for `kind` (0 for types above 31).
    pub const fn mask_bit(kind: u8) -> u32 {
        if kind < 32 { 1u32 << kind } else { 0 }
    }
}

pub(crate) fn decode_tlvs(r: &mut Reader) -> Result<Vec<ProcInfoField>, PayloadError> {
    let mut fields = Vec::new();
    loop {
        if r.remaining() == 0 {
            return Err(PayloadError::MissingTerminator);
        }
        let index = fields.len();
        let kind = r.u8("tlv type")?;
        let len = r.u8("tlv length")?;
        if kind == 0 {
            return Ok(fields);
        }
        if fields.len() >= MAX_PROCINFO_FIELDS {
            return Err(PayloadError::TooMany {
                field: "procinfo TLV",
                max: MAX_PROCINFO_FIELDS,
            });
        }
        let have = r.remaining();
        let value =
            r.bytes("tlv value", usize::from(len))
                .map_err(|_| PayloadError::TlvOverrun {
                    index,
                    kind,
                    len,
                    have,
                })?;
        fields.push(ProcInfoField { kind, value });
    }
}
