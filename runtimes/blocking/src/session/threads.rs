//! The session's threads: the reader (reads, feeds the machine, fires its timers, moves
//! events to the inboxes) and the writer (the only thread that blocks in writes), and the
//! inline writes that stand in for the writer until a write would block. See the parent
//! module for why reading never waits on writing.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tuppence::link::{ClientEvent, LinkError};
use tuppence::{Machine, Transmit};
use tuppence_transport::{RecvBuf, is_hangup};

use super::{CLOSE_GRACE, Inbox, Shared, State, Writer};
use crate::Stream;

/// The largest read (the receive buffer grows to this in bulk transfers).
const READ_BUF: usize = 256 * 1024;
/// Segments per vectored write (headers and payloads alternate: 32 data packets).
const MAX_IOV: usize = 64;

impl Shared {
    /// The writer thread: takes what the machine queued and writes it, in order, until
    /// the session closes (with nothing left to write) or the link fails.
    pub(super) fn writer_loop<W: Write>(self: Arc<Self>, mut w: W) {
        let mut segments = Transmit::new();
        loop {
            {
                let mut st = self.lock();
                loop {
                    if st.failure.is_some() || st.io_failure.is_some() {
                        return self.writer_exit(st);
                    }
                    // What an inline write left goes before anything newer.
                    if !st.pending.is_empty() {
                        std::mem::swap(&mut segments, &mut st.pending);
                        break;
                    }
                    retry_deferred(&mut st);
                    let n = st
                        .client
                        .poll_transmit_segments(Instant::now(), &mut segments);
                    if n > 0 {
                        st.unwritten = n;
                        // Room for callers waiting on `QueueFull`.
                        self.notify(&st);
                        break;
                    }
                    if self.closing.load(Ordering::SeqCst) || st.reader_done {
                        return self.writer_exit(st);
                    }
                    st.writer_idle = true;
                    st = self.write_cond.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.writer_idle = false;
                }
            }
            let r = write_segments(&mut w, &mut segments).and_then(|()| w.flush());
            let mut st = self.lock();
            st.unwritten = 0;
            if let Err(e) = r {
                segments.clear();
                self.write_failed(&mut st, &e);
                return self.writer_exit(st);
            }
            // Flush waiters.
            self.notify(&st);
        }
    }

    /// The link is unusable: end it, so that every waiter sees it now rather than at the
    /// reader's next wake-up.
    fn write_failed(&self, st: &mut State, e: &io::Error) {
        st.io_failure.get_or_insert_with(|| e.to_string());
        st.client.handle_eof(Instant::now());
        self.dispatch(st);
        st.failure.get_or_insert(LinkError::Closed);
    }

    fn writer_exit(&self, mut st: MutexGuard<'_, State>) {
        self.writer_stopped(&mut st);
    }

    fn writer_stopped(&self, st: &mut State) {
        st.writer_done = true;
        st.unwritten = 0;
        st.pending.clear();
        self.cond.notify_all();
    }

    /// Writes what the machine queued, under the lock, without waiting: by the thread that
    /// queued it (an intent, the reader after input or timers). A write that would block
    /// (a partial one is retried) leaves the rest in `pending` and starts the writer
    /// thread, which writes it first; from then on (and for streams that start with the
    /// thread) this only wakes the writer. Call with the lock held after anything that may queue bytes.
    pub(super) fn push(self: &Arc<Self>, st: &mut State) {
        match st.writer {
            Writer::Inline(_) => {}
            Writer::Thread => return self.wake_writer(st),
            Writer::Done => return,
        }
        // As the writer thread: nothing more once the link failed or the session closed.
        if st.writer_done || st.failure.is_some() || st.io_failure.is_some() {
            return;
        }
        // The reader calls this after every read: as cheap as waking a writer when idle.
        if st.client.transmit_buffered() == 0 && st.deferred.is_empty() {
            return;
        }
        let mut wrote = false;
        loop {
            if st.pending.is_empty() {
                retry_deferred(st);
                let n = st
                    .client
                    .poll_transmit_segments(Instant::now(), &mut st.pending);
                if n == 0 {
                    break;
                }
                st.unwritten = n;
            }
            let State {
                writer, pending, ..
            } = &mut *st;
            let Writer::Inline(w) = writer else {
                return;
            };
            let r = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let k = pending.io_slices(&mut iov);
                w.write_nonblocking(iov.get(..k).unwrap_or_default())
            };
            match r {
                Ok(0) => {
                    self.inline_failed(st, &io::ErrorKind::WriteZero.into());
                    return;
                }
                Ok(n) => {
                    st.pending.consume(n);
                    st.unwritten = st.pending.len();
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.start_writer(st);
                    break;
                }
                Err(e) => {
                    self.inline_failed(st, &e);
                    return;
                }
            }
        }
        if wrote {
            // Flush waiters.
            self.notify(st);
        }
    }

    /// An inline write failed: what the writer thread does when its write fails. The
    /// write handle is dropped under the lock: it is not the stream's last, since the
    /// reader (alive: no failure was recorded) holds another.
    fn inline_failed(&self, st: &mut State, e: &io::Error) {
        st.pending.clear();
        self.write_failed(st, e);
        drop(st.stop_inline());
        self.writer_stopped(st);
    }

    /// Hands writing to a new writer thread, with what is left in `pending`. It takes the
    /// lock only once running; nobody waits for it here.
    fn start_writer(self: &Arc<Self>, st: &mut State) {
        if !st.writer_is_inline() {
            return;
        }
        let Writer::Inline(w) = std::mem::replace(&mut st.writer, Writer::Thread) else {
            return;
        };
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("tuppence-writer".into())
            .spawn(move || shared.writer_loop(w));
        if let Err(e) = spawned {
            st.writer = Writer::Done;
            st.pending.clear();
            self.write_failed(st, &e);
            self.writer_stopped(st);
        }
    }

    /// Moves the machine's events into the per-transaction inboxes. Stops at an inbox that
    /// is full, leaving the rest in the machine (which then stops consuming input).
    /// Returns whether any event was taken from the machine.
    pub(super) fn dispatch(&self, st: &mut State) -> bool {
        let mut moved = false;
        loop {
            let full = st.inboxes.values().any(Inbox::is_full);
            if full {
                return moved;
            }
            let Some(ev) = st.client.poll_event() else {
                return moved;
            };
            moved = true;
            let xid = match &ev {
                ClientEvent::Connected { .. } => {
                    st.connected = st.client.connect_info().cloned();
                    continue;
                }
                // The `Finished` events that follow say it per transaction.
                ClientEvent::LinkDead => continue,
                // Counted by the machine (`Session::stats`).
                ClientEvent::ProtocolViolation(_) => continue,
                ClientEvent::Output { xid, .. }
                | ClientEvent::OutputEnd { xid, .. }
                | ClientEvent::InjectReady { xid }
                | ClientEvent::MonitorData { xid, .. }
                | ClientEvent::Settled { xid, .. }
                | ClientEvent::ProcInfo { xid, .. }
                | ClientEvent::Finished { xid, .. } => *xid,
            };
            let finished = matches!(ev, ClientEvent::Finished { .. });
            if let Some(inbox) = st.inboxes.get_mut(&xid) {
                if inbox.detached {
                    if finished {
                        st.inboxes.remove(&xid);
                    }
                } else {
                    inbox.push_back(ev);
                }
            }
        }
    }

    pub(super) fn reader_loop<S: Stream>(self: Arc<Self>, mut stream: S) {
        // Handed to the machine's `handle_buf`: large data payloads stay slices of it.
        let mut buf = RecvBuf::new(READ_BUF);
        // When the session was dropped: the writer gets `CLOSE_GRACE` to finish.
        let mut closing_since: Option<Instant> = None;
        loop {
            if self.closing.load(Ordering::SeqCst) {
                let since = *closing_since.get_or_insert_with(Instant::now);
                if self.lock().writer_done {
                    break;
                }
                if since.elapsed() >= CLOSE_GRACE {
                    // A writer stuck on a peer that never reads: make its write fail.
                    let _ = stream.shutdown();
                    break;
                }
            }
            let timeout = {
                let st = self.lock();
                st.client
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            // Wake at least once a second so a dropped session lets its thread go (and
            // often while a dropped session's writer finishes).
            let most = if closing_since.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1)
            };
            let timeout = Some(timeout.unwrap_or(most).min(most));
            match stream.read_timeout(buf.region(), timeout) {
                Ok(0) => {
                    self.end(None);
                    break;
                }
                Ok(n) => {
                    buf.filled(n);
                    if !self.feed(buf.pending()) {
                        break;
                    }
                    self.read_buffer_len.store(buf.held(), Ordering::Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                // A pty master reads EIO when the other end hung up: end of stream.
                Err(e) if is_hangup(&e) => {
                    self.end(None);
                    break;
                }
                Err(e) => {
                    self.end(Some(e));
                    break;
                }
            }
            {
                let mut st = self.lock();
                st.client.handle_timeout(Instant::now());
                self.dispatch(&mut st);
                // Keepalives, requests held for the hello reply, a deadline's KILL.
                self.push(&mut st);
                if let Some(e) = st.client.error().cloned() {
                    st.failure.get_or_insert(e);
                    st.reader_done = true;
                    self.notify(&st);
                    break;
                }
                // Everything read was fed: an idle session keeps no bulk region.
                if buf.is_empty() && st.client.is_idle() && buf.held() > 0 {
                    buf.release();
                    self.read_buffer_len.store(buf.held(), Ordering::Relaxed);
                }
                self.notify(&st);
            }
        }
        let mut st = self.lock();
        st.reader_done = true;
        // Nothing more is written inline either; the write handle goes with the reader's.
        let handle = st.stop_inline();
        self.notify(&st);
        // A writer waiting for work must see that the session is over.
        self.write_cond.notify_one();
        drop(st);
        drop(handle);
    }

    /// Offers received bytes to the machine, waiting for consumers when it pushes back.
    /// Returns false once the connection is over.
    fn feed(self: &Arc<Self>, data: &mut BytesMut) -> bool {
        let mut st = self.lock();
        while !data.is_empty() {
            match st.client.handle_buf(Instant::now(), data) {
                Ok(_) => {}
                Err(e) => {
                    self.dispatch(&mut st);
                    st.failure.get_or_insert(e);
                    st.reader_done = true;
                    self.notify(&st);
                    return false;
                }
            }
            self.dispatch(&mut st);
            self.push(&mut st);
            self.notify(&st);
            if !data.is_empty() {
                if self.closing.load(Ordering::SeqCst) {
                    return false;
                }
                // Consumers must drain an inbox before more input can be taken.
                st = self.wait_timeout(st, Duration::from_millis(100));
            }
        }
        true
    }

    fn end(&self, error: Option<io::Error>) {
        let mut st = self.lock();
        st.client.handle_eof(Instant::now());
        self.dispatch(&mut st);
        if let Some(e) = error {
            st.io_failure.get_or_insert(e.to_string());
        }
        // The machine may know better than "closed" (a refusal before the close).
        let failure = st.client.error().cloned().unwrap_or(LinkError::Closed);
        st.failure.get_or_insert(failure);
        st.reader_done = true;
        self.notify(&st);
        self.write_cond.notify_one();
    }
}

/// Retries the abandons that met a full transmit queue (see `Shared::abandon`).
fn retry_deferred(st: &mut State) {
    if st.deferred.is_empty() {
        return;
    }
    let mut deferred = std::mem::take(&mut st.deferred);
    deferred.retain(|&xid| {
        matches!(
            st.client.abandon(xid),
            Err(tuppence::link::UsageError::QueueFull { .. })
        )
    });
    st.deferred = deferred;
}

/// Writes every segment, in order, with vectored writes; drops what was written.
fn write_segments<W: Write>(w: &mut W, segments: &mut Transmit) -> io::Result<()> {
    while !segments.is_empty() {
        let r = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let k = segments.io_slices(&mut iov);
            w.write_vectored(iov.get(..k).unwrap_or_default())
        };
        match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => segments.consume(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
