//! Splitting a large buffer into channel-data packets.

use bytes::{Bytes, BytesMut};

use super::{Dialect, EncodeError, HEADER_LEN, MAX_PACKET_LEN, Packet};

/// Largest data payload of a default-sized (32768-byte) packet: 32768 − 8 header − 2 channel.
pub const DEFAULT_MAX_CHUNK: usize = 32758;
/// Largest data payload any packet can carry.
pub const MAX_CHUNK: usize = MAX_PACKET_LEN - HEADER_LEN - 2;

/// Iterator over zero-copy slices of at most `max` bytes (the last one may be shorter).
#[derive(Clone, Debug)]
pub struct DataChunks {
    rest: Bytes,
    max: usize,
}

/// Splits `data` into pieces of at most `max_chunk` bytes (clamped to `1..=MAX_CHUNK`).
/// An empty buffer yields no pieces.
pub fn chunks(data: Bytes, max_chunk: usize) -> DataChunks {
    DataChunks {
        rest: data,
        max: max_chunk.clamp(1, MAX_CHUNK),
    }
}

impl Iterator for DataChunks {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        if self.rest.is_empty() {
            return None;
        }
        let n = self.rest.len().min(self.max);
        Some(self.rest.split_to(n))
    }
}

/// Appends `data` to `out` as channel-data packets of at most `max_chunk` payload bytes.
/// Returns the number of packets written.
pub fn encode_data(
    dialect: Dialect,
    cid: u16,
    xid: u16,
    channel: u16,
    data: Bytes,
    max_chunk: usize,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let mut n = 0usize;
    for piece in chunks(data, max_chunk) {
        Packet::Data {
            channel,
            data: piece,
        }
        .encode(dialect, cid, xid, out)?;
        n = n.saturating_add(1);
    }
    Ok(n)
}
