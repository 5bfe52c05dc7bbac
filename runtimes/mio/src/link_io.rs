//! One link connection on a non-blocking fd: reads into a [`RecvBuf`] and hands it to the
//! machine (`handle_buf`: large data payloads are kept as slices of it, not copied), writes what it transmits with vectored writes (data payloads are not copied
//! on the way out), and remembers readiness (mio is edge-triggered).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::Interest;
use tuppence::link::LinkError;
use tuppence::{Machine, Transmit};
use tuppence_transport::{RecvBuf, is_hangup};

/// The largest read (the receive buffer's regions grow to this in bulk transfers).
const READ_BUF: usize = 256 * 1024;
/// Bytes taken from the machine but not yet written before we stop taking more. Keeping
/// the rest in the machine is what makes its `can_send()` (and so the application's
/// backpressure, e.g. the agent pausing a child's output) reflect a slow peer.
const TX_HIGH_WATER: usize = 256 * 1024;
/// Segments per `writev` (headers and payloads alternate, so this is 32 data packets;
/// well under the kernel's `IOV_MAX` of 1024).
const MAX_IOV: usize = 64;
/// Reads per `pump_read`, so that one peer sending without pause (packets the machine
/// drops without an event, say) cannot keep the loop from its other connections: the loop
/// comes back at once to a connection that still has input ([`LinkIo::can_read_more`]).
const READS_PER_PUMP: usize = 16;

/// Why a connection stopped. `E` is the machine's error ([`Machine::Error`]): a
/// [`LinkError`] for the link protocol's machines.
#[derive(Debug, thiserror::Error)]
pub enum LinkIoError<E = LinkError> {
    /// The protocol machine failed (framing error, keepalive expired, peer closed, …).
    #[error(transparent)]
    Link(E),
    /// The peer closed the stream, and the machine took it as no failure of its own (the
    /// link machines report it as `LinkError::Closed` instead).
    #[error("the peer closed the connection")]
    Closed,
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] io::Error),
}

/// A link machine bound to a non-blocking transport.
///
/// Readiness is tracked here, not in mio: after a readable/writable event the flag stays
/// set until a call sees `WouldBlock`, so work stopped by backpressure resumes on the next
/// `pump` without a new event.
pub struct LinkIo<T, M> {
    io: T,
    machine: M,
    rx: RecvBuf,
    /// Bytes taken from the machine, not yet written.
    tx: Transmit,
    readable: bool,
    writable: bool,
    read_paused: bool,
    eof: bool,
}

impl<T: Read + Write + AsRawFd, M: Machine> LinkIo<T, M> {
    /// Wraps a transport that is already non-blocking.
    pub fn new(io: T, machine: M) -> Self {
        LinkIo {
            io,
            machine,
            rx: RecvBuf::new(READ_BUF),
            tx: Transmit::new(),
            readable: true,
            writable: true,
            read_paused: false,
            eof: false,
        }
    }

    pub fn machine(&self) -> &M {
        &self.machine
    }

    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    pub fn io(&self) -> &T {
        &self.io
    }

    pub fn raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }

    /// Records a readiness event from mio.
    pub fn ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Stops (or resumes) reading the transport, e.g. while a child's stdin is backed up.
    /// The machine is told when reading stops, so that the pause does not count as the
    /// peer's silence.
    pub fn set_read_paused(&mut self, paused: bool) {
        if paused && !self.read_paused {
            self.machine.handle_input_paused();
        }
        self.read_paused = paused;
    }

    /// Drops everything taken from the machine but not yet written, and asks the kernel to
    /// drop what a tty still holds in its output queue (`tcflush(TCOFLUSH)`; a no-op on
    /// other fds). Returns the bytes dropped here. Done when the machine says so (a hello
    /// reset the session on a device link): that output belongs to the old session.
    pub fn discard_unsent(&mut self) -> usize {
        let n = self.tx.clear();
        // SAFETY: tcflush on an fd we own; ENOTTY on sockets and other non-ttys is ignored.
        unsafe { libc::tcflush(self.io.as_raw_fd(), libc::TCOFLUSH) };
        n
    }

    /// Bytes for the machine to read before anything from the transport, as if they had
    /// just been read (fed on the next [`pump_read`](Self::pump_read), with the same
    /// backpressure). For a device port's next session: what the previous session's
    /// machine handed over at its hang-up (`tuppence::link::Server::carryover`). Returns
    /// how many were taken: at most the receive buffer's size, less what it still holds.
    pub fn preload(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(READ_BUF.saturating_sub(self.rx.len()));
        self.rx.preload(bytes.get(..n).unwrap_or_default());
        n
    }

    /// Bytes of memory the receive buffer holds ([`RecvBuf::held`]): small while the
    /// machine is idle, up to the bulk regions during a transfer.
    pub fn read_buffer_len(&self) -> usize {
        self.rx.held()
    }

    /// The transport reached end of stream (already reported to the machine).
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes handed out by the machine but not yet accepted by the transport.
    pub fn unwritten(&self) -> usize {
        self.tx.len()
    }

    /// The interest to register: always readable, writable while output is pending.
    pub fn interest(&self) -> Interest {
        if self.tx.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Reads while the transport has data and the machine accepts it. Returns whether the
    /// machine was given new input (so the caller should drain its events).
    pub fn pump_read(&mut self, now: Instant) -> Result<bool, LinkIoError<M::Error>> {
        let mut fed = false;
        let mut reads = 0usize;
        loop {
            if !self.rx.is_empty() {
                let n = self
                    .machine
                    .handle_buf(now, self.rx.pending())
                    .map_err(LinkIoError::Link)?;
                if self.machine.poll_discard_unsent() {
                    self.discard_unsent();
                }
                fed |= n > 0;
                if !self.rx.is_empty() {
                    // The machine pushed back: its events must be drained first.
                    return Ok(fed);
                }
            }
            if self.eof || self.read_paused || !self.readable {
                return Ok(fed);
            }
            if reads == READS_PER_PUMP {
                // Still readable: `can_read_more` brings the loop back without waiting.
                return Ok(fed);
            }
            reads += 1;
            match self.io.read(self.rx.region()) {
                Ok(0) => {
                    self.eof = true;
                    self.machine.handle_eof(now);
                    return Ok(true);
                }
                Ok(n) => self.rx.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    if self.machine.is_idle() {
                        // Everything read was taken (reads start only then), and no
                        // transaction is live: keep no bulk region for an idle session.
                        self.rx.release();
                    }
                    return Ok(fed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pty master reads EIO once the other side hung up; a reset peer is gone
                // (see `tuppence_transport::is_hangup`).
                Err(e) if is_hangup(&e) => {
                    self.eof = true;
                    self.machine.handle_eof(now);
                    return Ok(true);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Collects what the machine wants to send and writes as much as the transport takes.
    pub fn pump_write(&mut self, now: Instant) -> Result<(), LinkIoError<M::Error>> {
        loop {
            if self.tx.len() < TX_HIGH_WATER {
                self.machine.poll_transmit_segments(now, &mut self.tx);
                // The answer that ends the last transaction leaves here, often with no read
                // after it (an agent's connection that injected a file and then waits):
                // give the bulk regions back now, not at the next read.
                if self.rx.is_empty() && self.rx.held() > 0 && self.machine.is_idle() {
                    self.rx.release();
                }
            }
            if self.tx.is_empty() || !self.writable {
                return Ok(());
            }
            self.write_some()?;
        }
    }

    /// Writes from `tx` until it is empty or the transport would block.
    fn write_some(&mut self) -> Result<(), LinkIoError<M::Error>> {
        while !self.tx.is_empty() && self.writable {
            let r = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let k = self.tx.io_slices(&mut iov);
                self.io.write_vectored(iov.get(..k).unwrap_or_default())
            };
            match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "transport took no bytes",
                    )
                    .into());
                }
                Ok(n) => self.tx.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Fires the machine's timers if due. A timer can start a new session too (a device
    /// link finds a new client's hello when the silence after it is long enough): then
    /// the old session's unwritten bytes are dropped here, as after input.
    pub fn pump_timers(&mut self, now: Instant) {
        if self.machine.poll_timeout().is_some_and(|t| t <= now) {
            self.machine.handle_timeout(now);
            if self.machine.poll_discard_unsent() {
                self.discard_unsent();
            }
        }
    }

    /// Whether another `pump_read` could make progress without a new readiness event.
    /// False while the machine pushes back: its events must be drained, or (a server) its
    /// peer must read its answers, before input can move; retrying sooner would spin.
    pub fn can_read_more(&self) -> bool {
        self.machine.accepts_input()
            && (!self.rx.is_empty() || (self.readable && !self.read_paused && !self.eof))
    }

    /// The machine's next deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    /// Writes what the machine has queued as far as the transport takes it now, without
    /// waiting. For a connection that has just failed (the machine ended it after queueing
    /// its last answers, e.g. a refusal): those answers reach the peer before the fd is
    /// closed. Errors (a peer already gone) are returned, and can be ignored.
    pub fn flush_now(&mut self, now: Instant) -> Result<(), LinkIoError<M::Error>> {
        self.writable = true;
        self.pump_write(now)
    }

    /// Writes everything pending, waiting for the fd with `poll(2)` (used at shutdown, so
    /// status packets reach the peer before the fd closes). Gives up after `timeout`.
    pub fn flush_blocking(
        &mut self,
        now: Instant,
        timeout: std::time::Duration,
    ) -> Result<(), LinkIoError<M::Error>> {
        let end = now.checked_add(timeout);
        loop {
            self.writable = true;
            self.pump_write(now)?;
            if self.tx.is_empty() {
                return Ok(());
            }
            let wait = end.map(|e| e.saturating_duration_since(std::time::Instant::now()));
            if wait.is_some_and(|w| w.is_zero()) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "flush timed out").into());
            }
            let ms = wait.map_or(-1, |w| i32::try_from(w.as_millis()).unwrap_or(i32::MAX));
            let mut pfd = libc::pollfd {
                fd: self.io.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// Gives back the transport and the machine.
    pub fn into_parts(self) -> (T, M) {
        (self.io, self.machine)
    }
}
