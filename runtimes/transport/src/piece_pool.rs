//! Read buffers an inject reuses once the link has written what was read into them.
//!
//! Each piece read from the source travels as `Bytes` through the machine's transmit
//! queue to whoever writes the link, and its buffer is free again once the writer dropped it. A
//! fresh 256 KiB buffer per piece came from glibc's `mmap` each time (page faults on every
//! page, then `munmap`), and copying the read into a new `Bytes` cost a `memcpy` per byte:
//! the pool hands out a buffer to read into directly, then takes it back as the `Bytes`
//! it became, and reuses it when nobody else holds it any more.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A bounded set of buffers of one size, for reading a local source straight into the
/// pieces an inject sends.
pub struct PiecePool {
    /// Handed-out pieces, oldest first; free again once this is their only handle.
    out: VecDeque<Bytes>,
    /// Most pieces kept: the oldest is forgotten (and freed by its last holder) beyond.
    cap: usize,
    size: usize,
}

impl PiecePool {
    /// At most `cap` pieces are kept for reuse; every buffer holds `size` bytes.
    pub fn new(cap: usize, size: usize) -> PiecePool {
        PiecePool {
            out: VecDeque::with_capacity(cap),
            cap,
            size,
        }
    }

    /// A buffer of `size` initialized bytes to read into: a reused one when a piece given
    /// back is no longer held elsewhere, else a new one.
    pub fn take(&mut self) -> BytesMut {
        for _ in 0..self.out.len() {
            let Some(piece) = self.out.pop_front() else {
                break;
            };
            match piece.try_into_mut() {
                Ok(mut buf) if buf.capacity() >= self.size => {
                    // Only the part the last read did not fill is zeroed.
                    buf.resize(self.size, 0);
                    return buf;
                }
                // A piece cut from elsewhere in its buffer: let it go.
                Ok(_) => {}
                Err(piece) => self.out.push_back(piece),
            }
        }
        BytesMut::zeroed(self.size)
    }

    /// Keeps a handle on a piece made from a buffer of [`take`](Self::take), so that its
    /// buffer can be reused once the link is done with it.
    pub fn give(&mut self, piece: Bytes) {
        if self.out.len() >= self.cap {
            self.out.pop_front();
        }
        self.out.push_back(piece);
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.out.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_once_its_piece_is_dropped() {
        let mut pool = PiecePool::new(4, 1000);
        let mut buf = pool.take();
        assert_eq!(buf.len(), 1000);
        buf.get_mut(..3).unwrap().copy_from_slice(b"abc");
        buf.truncate(3);
        let piece = buf.freeze();
        let at = piece.as_ptr();
        pool.give(piece.clone());
        // Still held by "the link": a new buffer, and the piece is untouched.
        let other = pool.take();
        assert_ne!(other.as_ptr(), at);
        assert_eq!(&piece[..], b"abc");
        drop(piece);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "the free buffer was not reused");
        assert_eq!(again.len(), 1000);
        assert_eq!(again.get(..3), Some(&b"abc"[..]));
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut pool = PiecePool::new(3, 64);
        let mut held = Vec::new();
        for _ in 0..10 {
            let piece = pool.take().freeze();
            pool.give(piece.clone());
            held.push(piece);
            assert!(pool.held() <= 3);
        }
        // Nothing is free: every take is a new buffer, and the pool keeps at most 3.
        let fresh = pool.take();
        assert!(held.iter().all(|p| p.as_ptr() != fresh.as_ptr()));
        assert_eq!(pool.held(), 3);
        // The last three given are the ones it can reuse.
        let last: Vec<_> = held.iter().rev().take(3).map(|p| p.as_ptr()).collect();
        held.clear();
        let reused = pool.take();
        assert!(last.contains(&reused.as_ptr()));
    }
}
