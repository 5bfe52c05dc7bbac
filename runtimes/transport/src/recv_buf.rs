//! [`RecvBuf`]: the receive buffer of a connection, read into and handed whole to a
//! machine's `handle_buf`, so that large data payloads are not copied on the way in.

use bytes::BytesMut;

/// The smallest region a read is offered, and the size an idle connection falls back to.
pub const RECV_MIN: usize = 16 * 1024;
/// A region with less room than this is replaced before the next read.
const MIN_ROOM: usize = 4 * 1024;
/// Used-up regions kept for reuse once the payloads cut from them are gone. Eight: a mio
/// loop reads until its machine's event queue is full (64 events, 2 MiB of 32 KiB
/// payloads, eight regions) before the application drains it, so fewer were still pinned
/// at every renewal (agent profile, inject: `memset` 2.8 % with two, 0.03 % with eight).
/// They are let go at the next small read (a keepalive at the latest) or `release`.
const MAX_SPARES: usize = 8;

/// A connection's receive buffer for [`tuppence::Machine::handle_buf`].
///
/// Reads go into a region of zero-initialised memory (no reads into uninitialised
/// bytes); what was read is appended to the unconsumed bytes, which the
/// machine takes from ([`RecvBuf::pending`]). The link machines keep large data payloads
/// as slices of this memory instead of copying them, so a region is not reused while any
/// payload cut from it lives: once it is full, the next read gets a region whose payloads
/// are all gone (one of the last eight used up, without zeroing it again), or a new
/// zeroed one. Zeroing every new region cost about as much as the copy it saves (agent
/// profile: `memset` in place of `memmove`), hence the reuse.
///
/// Sizing follows the traffic: a read that fills its whole region doubles the next
/// region (up to the maximum, e.g. 256 KiB), a read of less than [`RECV_MIN`] brings it
/// back to [`RECV_MIN`] and lets go of a larger region and the spares, so an idle
/// connection holds 16 KiB, not what its last bulk transfer needed (after a transfer, up
/// to nine regions until the next small read, such as a keepalive).
#[derive(Debug)]
pub struct RecvBuf {
    /// Received, not yet consumed.
    pending: BytesMut,
    /// Zeroed room right after `pending` (in the same allocation while possible).
    area: BytesMut,
    /// `area` is a handle on a region (even with no room left), not an empty placeholder.
    in_region: bool,
    /// Used-up regions, reused once no payload cut from them is left (see `reclaim`).
    spares: Vec<BytesMut>,
    /// Size of the next region.
    size: usize,
    max: usize,
    /// Regions allocated (and zeroed) so far.
    #[cfg(test)]
    allocated: usize,
}

impl RecvBuf {
    /// A buffer whose regions grow up to `max` bytes (at least [`RECV_MIN`]). Allocates
    /// nothing until the first read.
    pub fn new(max: usize) -> RecvBuf {
        RecvBuf {
            pending: BytesMut::new(),
            area: BytesMut::new(),
            in_region: false,
            spares: Vec::new(),
            size: RECV_MIN,
            max: max.max(RECV_MIN),
            #[cfg(test)]
            allocated: 0,
        }
    }

    /// Where the next read goes: initialised memory, at least 4 KiB. Call
    /// [`RecvBuf::filled`] with what the read returned.
    pub fn region(&mut self) -> &mut [u8] {
        if self.area.len() < MIN_ROOM {
            self.renew();
        }
        &mut self.area[..]
    }

    /// A read put `n` bytes at the start of [`RecvBuf::region`]: they join the pending
    /// bytes.
    pub fn filled(&mut self, n: usize) {
        let offered = self.area.len();
        let n = n.min(offered);
        let got = self.area.split_to(n);
        if self.pending.is_empty() {
            self.pending = got;
        } else {
            // O(1) when `got` follows `pending` in memory, as it does unless the
            // consumer moved `pending` elsewhere.
            self.pending.unsplit(got);
        }
        if n == offered {
            self.size = self.size.saturating_mul(2).min(self.max);
        } else if n < RECV_MIN {
            self.size = RECV_MIN;
            self.spares.clear();
            if self.area.len() > RECV_MIN {
                // The traffic is small now: do not keep a bulk region for it.
                self.area = BytesMut::new();
                self.in_region = false;
            }
        }
    }

    /// Copies `bytes` in as if they had been read (e.g. what a previous session on the
    /// same port handed over).
    pub fn preload(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let region = self.region();
            let n = region.len().min(rest.len());
            let (now, later) = rest.split_at(n);
            if let Some(dst) = region.get_mut(..n) {
                dst.copy_from_slice(now);
            }
            self.filled(n);
            rest = later;
        }
    }

    /// The bytes received and not yet consumed, for `Machine::handle_buf` (which removes
    /// what it consumes from the front).
    pub fn pending(&mut self) -> &mut BytesMut {
        &mut self.pending
    }

    /// Bytes received and not yet consumed.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every received byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The room left for reads in the current region (0 before the first read).
    pub fn room(&self) -> usize {
        self.area.len()
    }

    /// Bytes of memory this buffer holds for the connection: the pending bytes, the room of
    /// the current region and the kept spares (a farm's controller reads this to check that
    /// idle sessions keep little; see [`RecvBuf::release`]).
    pub fn held(&self) -> usize {
        self.spares.iter().map(BytesMut::capacity).fold(
            self.pending.capacity().saturating_add(self.area.capacity()),
            usize::saturating_add,
        )
    }

    /// Lets go of the region when nothing is pending (the connection went idle or is
    /// being parked); the next read starts small again.
    pub fn release(&mut self) {
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
            self.area = BytesMut::new();
            self.in_region = false;
            self.spares.clear();
            self.size = RECV_MIN;
        }
    }

    /// A new region of the current size (larger if the pending bytes need it), with the
    /// pending bytes moved to its front so that they and the next read are one slice.
    fn renew(&mut self) {
        let keep = self.pending.len();
        let size = self
            .size
            .max(keep.saturating_add(MIN_ROOM.saturating_mul(4)));
        if keep == 0 {
            // Drop every handle of ours on the used-up region but one, kept as a spare:
            // it is unique again once the payloads cut from it are gone.
            self.pending = BytesMut::new();
            let used = std::mem::take(&mut self.area);
            if std::mem::take(&mut self.in_region) {
                if self.spares.len() >= MAX_SPARES {
                    self.spares.remove(0);
                }
                self.spares.push(used);
            }
            if let Some(i) = self.spares.iter_mut().position(|r| reclaim(r, size)) {
                self.area = self.spares.swap_remove(i);
                self.in_region = true;
                return;
            }
        }
        #[cfg(test)]
        {
            self.allocated += 1;
        }
        let mut area = BytesMut::zeroed(size);
        if let Some(dst) = area.get_mut(..keep) {
            dst.copy_from_slice(&self.pending);
        }
        self.pending = area.split_to(keep);
        self.area = area;
        self.in_region = true;
    }
}

/// Makes `region`, a handle on a region `RecvBuf::renew` allocated zeroed, the whole room
/// of at least `want` bytes again, if no other handle on it is left (no payload cut from
/// it lives). Returns whether it did.
fn reclaim(region: &mut BytesMut, want: usize) -> bool {
    region.clear();
    if !region.try_reclaim(want) {
        return false;
    }
    let cap = region.capacity();
    // SAFETY: `try_reclaim` succeeded without allocating, so `region` now spans `cap`
    // bytes of the allocation `BytesMut::zeroed` made in `renew`: zeroed then, and since
    // only ever written with initialised bytes (safe code cannot write uninitialised
    // ones). So all `cap` bytes are initialised.
    unsafe { region.set_len(cap) };
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use bytes::Buf;
    use std::io::Read;

    fn read(b: &mut RecvBuf, src: &mut &[u8]) -> usize {
        let n = src.read(b.region()).unwrap();
        b.filled(n);
        n
    }

    #[test]
    fn reads_join_the_pending_bytes_in_order_across_regions() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut src = &data[..];
        let mut b = RecvBuf::new(256 * 1024);
        let mut out = Vec::new();
        while !src.is_empty() {
            read(&mut b, &mut src);
            // The consumer takes all but the last 100 bytes (a partial packet).
            let take = b.len().saturating_sub(100);
            out.extend_from_slice(&b.pending().split_to(take));
        }
        out.extend_from_slice(b.pending());
        assert_eq!(out, data);
    }

    #[test]
    fn full_reads_grow_the_region_up_to_the_maximum() {
        let data = vec![7u8; 4 << 20];
        let mut src = &data[..];
        let mut b = RecvBuf::new(256 * 1024);
        let mut sizes = Vec::new();
        for _ in 0..8 {
            sizes.push(read(&mut b, &mut src));
            b.pending().clear();
        }
        assert_eq!(sizes[0], RECV_MIN);
        assert_eq!(sizes[1], 2 * RECV_MIN);
        assert!(sizes.iter().all(|&n| n <= 256 * 1024));
        assert_eq!(*sizes.last().unwrap(), 256 * 1024);
    }

    #[test]
    fn a_small_read_after_bulk_lets_the_large_region_go() {
        let data = vec![1u8; 1 << 20];
        let mut src = &data[..];
        let mut b = RecvBuf::new(256 * 1024);
        for _ in 0..6 {
            read(&mut b, &mut src);
            b.pending().clear();
        }
        // A region of 256 KiB is in use; a keepalive arrives.
        let mut keepalive: &[u8] = &[0; 8];
        // Start a fresh region first, as the next bulk read would.
        while b.room() > 100_000 {
            read(&mut b, &mut src);
            b.pending().clear();
        }
        read(&mut b, &mut keepalive);
        b.pending().advance(8);
        assert!(b.room() <= RECV_MIN, "idle room {} kept", b.room());
        let mut keepalive: &[u8] = &[0; 8];
        read(&mut b, &mut keepalive);
        assert!(b.room() < RECV_MIN);
    }

    #[test]
    fn consumed_payloads_are_slices_of_the_region_not_copies() {
        let data = vec![3u8; 64 * 1024];
        let mut src = &data[..];
        let mut b = RecvBuf::new(256 * 1024);
        read(&mut b, &mut src);
        let start = b.pending().as_ptr();
        let payload = b.pending().split_to(1000).freeze();
        assert_eq!(payload.as_ptr(), start);
        // The rest is still pending, right after it.
        assert_eq!(b.pending().as_ptr(), start.wrapping_add(1000));
    }

    #[test]
    fn a_used_up_region_is_reused_once_its_payloads_are_gone() {
        let data = vec![5u8; 4 << 20];
        let mut src = &data[..];
        let mut b = RecvBuf::new(64 * 1024);
        // Grow to full-size regions.
        for _ in 0..4 {
            read(&mut b, &mut src);
            b.pending().clear();
        }
        assert_eq!(b.room(), 0, "each read filled its region");
        // A full region: one payload kept, the rest consumed.
        read(&mut b, &mut src);
        assert_eq!(b.len(), 64 * 1024);
        let first = b.pending().as_ptr();
        let kept = b.pending().split_to(40_000).freeze();
        b.pending().clear();
        // The next region cannot be the first one (a payload of it lives): a new one.
        let allocated = b.allocated;
        read(&mut b, &mut src);
        assert_ne!(b.pending().as_ptr(), first);
        assert_eq!(b.allocated, allocated + 1);
        b.pending().clear();
        // Once it is dropped, a used-up region comes back: no allocation, no zeroing.
        drop(kept);
        for _ in 0..4 {
            read(&mut b, &mut src);
            b.pending().clear();
        }
        assert_eq!(b.allocated, allocated + 1);
        read(&mut b, &mut src);
        assert_eq!(b.len(), 64 * 1024);
        assert!(b.pending().iter().all(|&x| x == 5));
    }

    #[test]
    fn preload_is_read_first_and_release_lets_memory_go() {
        let mut b = RecvBuf::new(64 * 1024);
        let big = vec![9u8; 100_000];
        b.preload(&big);
        assert_eq!(b.len(), 100_000);
        assert_eq!(&b.pending()[..], &big[..]);
        b.release();
        assert_eq!(b.len(), 100_000, "pending bytes are never dropped");
        b.pending().clear();
        b.release();
        assert_eq!(b.room(), 0);
    }
}
