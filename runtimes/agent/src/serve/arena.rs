//! The read buffers child output and extracted files are read into. Each read is split
//! off and handed to the link as `Bytes` (no copy); a buffer is reused once everything
//! carved from it has been written.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Bytes read per call from a file, or from a pipe grown for bulk output.
pub(super) const BULK_CHUNK: usize = 256 * 1024;
/// The most to read at once for a link whose packets carry `chunk` data bytes: `max`
/// rounded down to whole packets, so that each read leaves no short packet behind (256 KiB
/// in 32 758-byte packets was eight full ones and an 80-byte runt). At least one packet.
pub(super) fn whole_packets(max: usize, chunk: usize) -> usize {
    match max.checked_div(chunk) {
        Some(0) | None => max,
        Some(k) => k * chunk,
    }
}

/// The size of a read buffer.
const ARENA: usize = 2 * BULK_CHUNK;
/// Read buffers kept for reuse once everything carved from them has been written.
const ARENAS: usize = 3;

pub(super) struct Arena {
    /// The buffer in use.
    buf: BytesMut,
    /// Earlier ones, waiting for their chunks to be written.
    old: VecDeque<BytesMut>,
}

impl Arena {
    pub(super) fn new() -> Arena {
        Arena {
            buf: BytesMut::with_capacity(ARENA),
            old: VecDeque::new(),
        }
    }

    /// The buffer to read into, with room for `want` bytes: when the rest is too short,
    /// the buffer is set aside and one whose chunks have all been written is reused (a new
    /// one otherwise). Fresh buffers of this size come from `mmap`: page faults and
    /// zeroing, every time.
    pub(super) fn room(&mut self, want: usize) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < want {
            let reusable = self.old.iter_mut().position(|b| b.try_reclaim(ARENA));
            let next = match reusable.and_then(|i| self.old.remove(i)) {
                Some(b) => b,
                None => BytesMut::with_capacity(ARENA.max(want)),
            };
            let full = std::mem::replace(&mut self.buf, next);
            if self.old.len() >= ARENAS {
                self.old.pop_front();
            }
            self.old.push_back(full);
        }
        &mut self.buf
    }

    /// What was read since the last call, as `Bytes` sharing the buffer.
    pub(super) fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Forgets what was read since the last `take` (a read that failed).
    pub(super) fn discard(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_whole_packets() {
        let chunk = tuppence::wire::DEFAULT_MAX_CHUNK;
        assert_eq!(whole_packets(BULK_CHUNK, chunk), 8 * chunk);
        assert_eq!(whole_packets(64 * 1024, chunk), 2 * chunk);
        assert_eq!(whole_packets(3 * chunk, chunk), 3 * chunk);
        // A buffer smaller than a packet, or no packet size known: as asked.
        assert_eq!(whole_packets(1000, chunk), 1000);
        assert_eq!(whole_packets(1000, 0), 1000);
    }
}
