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

use super::{CLOSE_GRACE, INLINE_READ_MAX, Inbox, ReadSide, Reader, Shared, State, Writer};

/// The largest read (the receive buffer grows to this in bulk transfers).
pub(super) const READ_BUF: usize = 256 * 1024;
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
            return;
        }
        // Callers now wait for room rather than input, and a dropped session needs a
        // reader to end a writer stuck on a peer that no longer reads.
        self.start_reader(st);
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

    pub(super) fn reader_loop(self: Arc<Self>, side: ReadSide) {
        // A stepped peer was given its own thread by `start_reader`.
        let ReadSide {
            mut stream,
            mut buf,
            peer: _,
        } = side;
        // Input an inline reader left because an inbox was full.
        if !buf.is_empty() && !self.feed(buf.pending()) {
            return self.reader_exit();
        }
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
                Err(e) if no_data_yet(&e) => {}
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
            let mut st = self.lock();
            if !self.after_input(&mut st, &mut buf) {
                break;
            }
            self.notify(&st);
        }
        self.reader_exit();
    }

    /// After a read (or a read's timeout), under the lock: timers, events to the inboxes,
    /// what the machine queued written. False once the machine has failed (said to every
    /// waiter).
    fn after_input(self: &Arc<Self>, st: &mut State, buf: &mut RecvBuf) -> bool {
        st.client.handle_timeout(Instant::now());
        self.dispatch(st);
        // Keepalives, requests held for the hello reply, a deadline's KILL.
        self.push(st);
        if let Some(e) = st.client.error().cloned() {
            st.failure.get_or_insert(e);
            st.reader_done = true;
            self.notify(st);
            return false;
        }
        // Everything read was fed: an idle session keeps no bulk region.
        if buf.is_empty() && st.client.is_idle() && buf.held() > 0 {
            buf.release();
        }
        self.read_buffer_len.store(buf.held(), Ordering::Relaxed);
        true
    }

    /// Nobody reads any more: every waiter is told, and inline writing ends.
    fn reader_exit(&self) {
        let mut st = self.lock();
        self.reader_exit_locked(&mut st);
    }

    fn reader_exit_locked(&self, st: &mut MutexGuard<'_, State>) {
        st.reader_done = true;
        // Nothing more is written inline either; the write handle goes with the reader's.
        // (Dropped under the lock: the reader's handle is still alive, so this is not the
        // stream's last and cannot wait for an `exec:` command.)
        drop(st.stop_inline());
        self.notify(st);
        // A writer waiting for work must see that the session is over.
        self.write_cond.notify_one();
    }

    /// Instead of sleeping on the condition variable, a caller waiting for input reads it
    /// (see "Reading on the caller's thread" in the parent module): at most `limit`, and
    /// never past the machine's next timer or [`INLINE_READ_MAX`]. Returns after that one
    /// read, with what it brought handed out, as a wake-up would (callers re-check what
    /// they wait for).
    pub(super) fn read_inline<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        limit: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        let Reader::Parked(mut side) = std::mem::replace(&mut st.reading, Reader::Busy) else {
            return st;
        };
        if !side.buf.is_empty() {
            // Input held back by a full inbox: offer it again. If the machine takes none,
            // another consumer must drain first: sleep as any waiter would.
            let before = side.buf.len();
            if !self.feed_inline(&mut st, &mut side.buf) {
                return self.stop_reading(st, side);
            }
            let took = side.buf.len() < before;
            st = self.park(st, side);
            if !took {
                let most = limit.map_or(Duration::from_millis(100), |l| {
                    l.min(Duration::from_millis(100))
                });
                return self.sleep(st, Some(most));
            }
            return st;
        }
        let now = Instant::now();
        let timer = st
            .client
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now));
        let timeout = [limit, timer, Some(INLINE_READ_MAX)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(INLINE_READ_MAX);
        drop(st);
        let ReadSide { stream, buf, peer } = &mut *side;
        let read = match peer {
            // Nothing comes unless the peer runs: it runs here, then its answer is read.
            Some(peer) => peer
                .step(timeout)
                .and_then(|()| stream.read_nonblocking(buf.region())),
            None => stream.read_timeout(buf.region(), Some(timeout)),
        };
        let mut st = self.lock();
        let ended = match read {
            Ok(0) => Some(None),
            Ok(n) => {
                side.buf.filled(n);
                if self.feed_inline(&mut st, &mut side.buf) {
                    None
                } else {
                    // The machine failed on that input (said to every waiter).
                    Some(None)
                }
            }
            Err(e) if no_data_yet(&e) => None,
            // A pty master reads EIO when the other end hung up: end of stream.
            Err(e) if is_hangup(&e) => Some(None),
            Err(e) => Some(Some(e)),
        };
        if let Some(error) = ended {
            if st.failure.is_none() {
                self.end_locked(&mut st, error);
            }
            return self.stop_reading(st, side);
        }
        if !self.after_input(&mut st, &mut side.buf) {
            return self.stop_reading(st, side);
        }
        let st = self.park(st, side);
        self.notify(&st);
        st
    }

    /// An inline reader met the end of the stream or a failure (recorded already): nobody
    /// reads again, waiters are told, and the stream is closed once the lock is released
    /// (its last handle may wait for an `exec:` command).
    fn stop_reading<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        side: Box<ReadSide>,
    ) -> MutexGuard<'a, State> {
        st.reading = Reader::Done;
        st.reader_wanted = false;
        self.reader_exit_locked(&mut st);
        drop(st);
        drop(side);
        self.lock()
    }

    /// Puts an inline reader's stream back, or hands it to the reader thread that was
    /// asked for while it read.
    fn park<'a>(
        self: &Arc<Self>,
        mut st: MutexGuard<'a, State>,
        side: Box<ReadSide>,
    ) -> MutexGuard<'a, State> {
        st.reading = Reader::Parked(side);
        if std::mem::take(&mut st.reader_wanted) {
            self.start_reader(&mut st);
        }
        st
    }

    /// Offers an inline reader's input to the machine once, without waiting for
    /// consumers (what a full inbox leaves stays in `buf`). False if the machine failed.
    fn feed_inline(self: &Arc<Self>, st: &mut State, buf: &mut RecvBuf) -> bool {
        let data = buf.pending();
        if data.is_empty() {
            return true;
        }
        if let Err(e) = st.client.handle_buf(Instant::now(), data) {
            self.dispatch(st);
            st.failure.get_or_insert(e);
            st.reader_done = true;
            self.notify(st);
            return false;
        }
        self.dispatch(st);
        self.push(st);
        true
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
        self.end_locked(&mut st, error);
    }

    /// The stream ended (`None`: EOF or hangup) or failed: every transaction is told.
    pub(super) fn end_locked(&self, st: &mut State, error: Option<io::Error>) {
        st.client.handle_eof(Instant::now());
        self.dispatch(st);
        if let Some(e) = error {
            st.io_failure.get_or_insert(e.to_string());
        }
        // The machine may know better than "closed" (a refusal before the close).
        let failure = st.client.error().cloned().unwrap_or(LinkError::Closed);
        st.failure.get_or_insert(failure);
        st.reader_done = true;
        self.notify(st);
        self.write_cond.notify_one();
    }
}

/// A read that brought nothing and is no end: its time limit passed, or a signal came.
fn no_data_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
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
