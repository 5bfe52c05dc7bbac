//! The event loop: any number of connections, each a [`Machine`] on a non-blocking fd with
//! the application's state for it, plus extra fds (child pipes, pidfds, event sources) that
//! the application registers with a tag and handles itself.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tuppence::Machine;

use crate::{LinkIo, LinkIoError};

/// Identifies a connection inside an [`EventLoop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// Identifies an extra fd registered by the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtraId(pub usize);

/// Readiness of an extra fd, handed back to the application with the tag it was
/// registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraReady<X = ()> {
    pub id: ExtraId,
    pub tag: X,
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error reported by the kernel.
    pub closed: bool,
}

/// Tokens: even = connection, odd = extra fd; the top one wakes the loop from other threads.
const WAKER: Token = Token(usize::MAX);

/// One connection: the transport and machine, and what the application keeps for it. Its
/// one home: an answer needs one lookup ([`EventLoop::get_mut`]), and the fields are
/// public so that the machine and the state can be borrowed at once.
pub struct Connection<T, M, S> {
    pub link: LinkIo<T, M>,
    pub state: S,
}

/// A connection taken out of the loop once it ended ([`EventLoop::take_ended`]).
pub struct Ended<T, M: Machine, S> {
    pub id: ConnId,
    pub conn: Connection<T, M, S>,
    /// Why it ended: the machine's error, the peer closing the stream, or the transport.
    pub error: LinkIoError<M::Error>,
}

struct Slot<T, M: Machine, S> {
    conn: Connection<T, M, S>,
    interest: Interest,
    /// Set once the connection ended: no more reading; what its machine queued is still
    /// written until `done`.
    ended: Option<LinkIoError<M::Error>>,
    /// Until when an ended connection may go on writing (see [`EventLoop::set_linger`]).
    linger_until: Option<Instant>,
    /// Ended and written out (or given up on): ready for [`EventLoop::take_ended`].
    done: bool,
}

impl<T: Read + Write + AsRawFd, M: Machine, S> Slot<T, M, S> {
    fn end(&mut self, error: LinkIoError<M::Error>, linger: Duration, now: Instant) {
        if self.ended.is_none() {
            self.ended = Some(error);
            self.linger_until = now.checked_add(linger);
        }
    }

    /// Whether an ended connection has nothing left to write.
    fn drained(&self) -> bool {
        self.conn.link.unwritten() == 0 && self.conn.link.machine().transmit_buffered() == 0
    }
}

/// Stops a running loop from another thread (e.g. a signal handler's thread): the
/// application sees [`EventLoop::stopped`] after its next `wait` and winds down.
#[derive(Clone, Debug)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A loop that cannot be woken sees the flag at its next deadline.
        let _ = self.waker.wake();
    }
}

/// One `mio::Poll` over connections of one machine type `M` (`link::Server` for the agent,
/// `sniff::Agent` for the sniff daemon, `link::Client` for a client), with the
/// application's state `S` for each, and extra fds tagged `X`.
///
/// One turn: [`EventLoop::wait`] polls (with a timeout from every machine's `poll_timeout`
/// and the caller's own deadline), records readiness, fires due timers and feeds received
/// bytes to the machines; the caller then drains each machine's events, reacts, and calls
/// [`EventLoop::flush`] to write what the machines want to send, then
/// [`EventLoop::take_ended`] for the connections that are over. A connection that ends is
/// kept (its machine can still be read and answered) until what it queued is written, for
/// at most the [linger](EventLoop::set_linger); the others keep working.
///
/// Feeding data (stdin, file data) outside events: a machine that answered `QueueFull`
/// gets room back when [`EventLoop::flush`] hands its bytes to the socket, and no event
/// says so. Offer more after every `flush` while the machine has room, before the next
/// `wait`; otherwise the loop can sleep with room available until a keepalive.
pub struct EventLoop<T, M: Machine, S = (), X = ()> {
    poll: Poll,
    events: Events,
    conns: Vec<Option<Slot<T, M, S>>>,
    extras: Vec<Option<(RawFd, X)>>,
    /// Free slots of `extras` (a scan for one cost O(n) per registration).
    free_extras: Vec<usize>,
    waker: Option<Arc<Waker>>,
    stop: Arc<AtomicBool>,
    linger: Duration,
}

impl<T: Read + Write + AsRawFd, M: Machine, S, X: Copy> EventLoop<T, M, S, X> {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            conns: Vec::new(),
            extras: Vec::new(),
            free_extras: Vec::new(),
            waker: None,
            stop: Arc::new(AtomicBool::new(false)),
            linger: Duration::ZERO,
        })
    }

    /// How long a connection that ended (its machine failed, or the peer closed its side)
    /// goes on writing what its machine queued before it is handed to
    /// [`EventLoop::take_ended`]. Zero (the default): one attempt, without waiting — the
    /// link agent's choice (status answers are small, and a peer that is gone reads
    /// nothing). The sniff daemon gives a closing requester time to read its answers.
    pub fn set_linger(&mut self, linger: Duration) {
        self.linger = linger;
    }

    /// A handle other threads use to interrupt [`EventLoop::wait`].
    pub fn waker(&mut self) -> io::Result<Arc<Waker>> {
        if let Some(w) = &self.waker {
            return Ok(w.clone());
        }
        let w = Arc::new(Waker::new(self.poll.registry(), WAKER)?);
        self.waker = Some(w.clone());
        Ok(w)
    }

    /// A handle that makes [`EventLoop::stopped`] true and wakes the loop.
    pub fn stop_handle(&mut self) -> io::Result<StopHandle> {
        Ok(StopHandle {
            flag: self.stop.clone(),
            waker: self.waker()?,
        })
    }

    /// Whether a [`StopHandle`] asked the loop to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Adds a connection whose fd is already non-blocking, with the application's state.
    pub fn add(&mut self, link: LinkIo<T, M>, state: S) -> io::Result<ConnId> {
        let idx = self
            .conns
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.conns.len());
        let interest = link.interest();
        let fd = link.raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), conn_token(idx), interest)?;
        let slot = Slot {
            conn: Connection { link, state },
            interest,
            ended: None,
            linger_until: None,
            done: false,
        };
        if idx == self.conns.len() {
            self.conns.push(Some(slot));
        } else if let Some(s) = self.conns.get_mut(idx) {
            *s = Some(slot);
        }
        Ok(ConnId(idx))
    }

    /// Removes a connection (deregistering its fd) and gives it back.
    pub fn remove(&mut self, id: ConnId) -> Option<Connection<T, M, S>> {
        let slot = self.conns.get_mut(id.0)?.take()?;
        let fd = slot.conn.link.raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        Some(slot.conn)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection<T, M, S>> {
        self.conns.get_mut(id.0)?.as_mut().map(|s| &mut s.conn)
    }

    pub fn get(&self, id: ConnId) -> Option<&Connection<T, M, S>> {
        self.conns.get(id.0)?.as_ref().map(|s| &s.conn)
    }

    /// Every connection, live or ended and not yet taken.
    pub fn ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| ConnId(i)))
            .collect()
    }

    /// Every connection's state.
    pub fn states(&self) -> impl Iterator<Item = (ConnId, &S)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (ConnId(i), &s.conn.state)))
    }

    /// Connections, live or ended and not yet taken.
    pub fn len(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections that ended and have not been taken yet (they free their fds once taken).
    pub fn ended_count(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|s| s.ended.is_some())
            .count()
    }

    /// Whether the connection ended (it reads no more; see [`EventLoop::take_ended`]).
    pub fn is_ended(&self, id: ConnId) -> bool {
        self.conns
            .get(id.0)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.ended.is_some())
    }

    /// Registers an application fd (child pipe, pidfd, event source) with a tag that its
    /// readiness comes back with. The fd must stay open until [`EventLoop::remove_extra`].
    pub fn add_extra(&mut self, fd: RawFd, interest: Interest, tag: X) -> io::Result<ExtraId> {
        let idx = self
            .free_extras
            .last()
            .copied()
            .unwrap_or(self.extras.len());
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), extra_token(idx), interest)?;
        if idx == self.extras.len() {
            self.extras.push(Some((fd, tag)));
        } else {
            self.free_extras.pop();
            if let Some(s) = self.extras.get_mut(idx) {
                *s = Some((fd, tag));
            }
        }
        Ok(ExtraId(idx))
    }

    /// Changes what an extra fd is watched for.
    pub fn modify_extra(&mut self, id: ExtraId, interest: Interest) -> io::Result<()> {
        let Some(Some((fd, _))) = self.extras.get(id.0) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such extra fd"));
        };
        let fd = *fd;
        self.poll
            .registry()
            .reregister(&mut SourceFd(&fd), extra_token(id.0), interest)
    }

    /// Retags an extra fd.
    pub fn retag_extra(&mut self, id: ExtraId, tag: X) {
        if let Some(Some((_, t))) = self.extras.get_mut(id.0) {
            *t = tag;
        }
    }

    /// The tag an extra fd was registered with.
    pub fn extra_tag(&self, id: ExtraId) -> Option<X> {
        self.extras.get(id.0)?.as_ref().map(|(_, tag)| *tag)
    }

    /// Stops watching an extra fd (call before closing it); returns its tag.
    pub fn remove_extra(&mut self, id: ExtraId) -> Option<X> {
        let (fd, tag) = self.extras.get_mut(id.0)?.take()?;
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.free_extras.push(id.0);
        Some(tag)
    }

    /// Waits for readiness or the earliest deadline (the machines' or `deadline`), then
    /// fires due machine timers and feeds received bytes to the machines.
    /// Returns the extra fds that became ready.
    pub fn wait(&mut self, deadline: Option<Instant>) -> io::Result<Vec<ExtraReady<X>>> {
        let now = Instant::now();
        let live = || self.conns.iter().flatten().filter(|s| s.ended.is_none());
        let busy = live().any(|s| s.conn.link.can_read_more());
        let next = live()
            .filter_map(|s| s.conn.link.deadline())
            .chain(self.conns.iter().flatten().filter_map(|s| s.linger_until))
            .chain(deadline)
            .min();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            next.map(|t| t.saturating_duration_since(now))
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut extras = Vec::new();
        for ev in self.events.iter() {
            let Token(t) = ev.token();
            if ev.token() == WAKER {
                continue;
            }
            let closed = ev.is_read_closed() || ev.is_write_closed() || ev.is_error();
            if t % 2 == 0 {
                if let Some(Some(slot)) = self.conns.get_mut(t / 2) {
                    slot.conn
                        .link
                        .ready(ev.is_readable() || closed, ev.is_writable() || closed);
                }
            } else if let Some(Some((_, tag))) = self.extras.get(t / 2) {
                extras.push(ExtraReady {
                    id: ExtraId(t / 2),
                    tag: *tag,
                    readable: ev.is_readable(),
                    writable: ev.is_writable(),
                    closed,
                });
            }
        }
        let now = Instant::now();
        let linger = self.linger;
        for slot in self.conns.iter_mut().flatten() {
            if slot.ended.is_some() {
                continue;
            }
            let link = &mut slot.conn.link;
            link.pump_timers(now);
            let error = match link.pump_read(now) {
                Err(e) => Some(e),
                // End of stream or keepalive expiry: the machine has said what it had to.
                Ok(_) => match link.machine().error() {
                    Some(e) => Some(LinkIoError::Link(e.clone())),
                    None if link.is_eof() => Some(LinkIoError::Closed),
                    None => None,
                },
            };
            if let Some(e) = error {
                slot.end(e, linger, now);
            }
        }
        Ok(extras)
    }

    /// Writes what every machine wants to send and updates fd interests. Call after the
    /// application has reacted to the machines' events. This can make room in a machine
    /// that was full (see the type's notes on feeding data). Ended connections are written
    /// out here too, and marked for [`EventLoop::take_ended`] once they are done.
    pub fn flush(&mut self) {
        let now = Instant::now();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.done {
                continue;
            }
            let link = &mut slot.conn.link;
            if slot.ended.is_some() {
                // Edge-triggered readiness may never come for a connection that ended:
                // try once in any case.
                if slot.linger_until.is_none_or(|t| now >= t) {
                    let _ = link.flush_now(now);
                    slot.done = true;
                    continue;
                }
                if let Err(e) = link.pump_write(now) {
                    // Already ended: its first cause is what it reports.
                    let _ = e;
                    slot.done = true;
                    continue;
                }
                if slot.drained() {
                    slot.done = true;
                    continue;
                }
            } else if let Err(e) = link.pump_write(now) {
                slot.end(e, Duration::ZERO, now);
                slot.done = true;
                continue;
            }
            let want = slot.conn.link.interest();
            if want != slot.interest {
                let fd = slot.conn.link.raw_fd();
                match self
                    .poll
                    .registry()
                    .reregister(&mut SourceFd(&fd), conn_token(i), want)
                {
                    Ok(()) => slot.interest = want,
                    Err(e) => {
                        slot.end(e.into(), Duration::ZERO, now);
                        slot.done = true;
                    }
                }
            }
        }
    }

    /// Removes the connections that ended and are written out, with why they ended.
    pub fn take_ended(&mut self) -> Vec<Ended<T, M, S>> {
        let done: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.done))
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::with_capacity(done.len());
        for i in done {
            let error = self
                .conns
                .get_mut(i)
                .and_then(Option::as_mut)
                .and_then(|s| s.ended.take());
            if let (Some(conn), Some(error)) = (self.remove(ConnId(i)), error) {
                out.push(Ended {
                    id: ConnId(i),
                    conn,
                    error,
                });
            }
        }
        out
    }
}

fn conn_token(idx: usize) -> Token {
    Token(idx.saturating_mul(2))
}

fn extra_token(idx: usize) -> Token {
    Token(idx.saturating_mul(2).saturating_add(1))
}
