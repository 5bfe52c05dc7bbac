//! A mio loop over any number of link connections plus extra fds (child pipes, pidfds,
//! event sources) that the application registers and handles itself.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use tuppence::Machine;

use crate::{LinkIo, LinkIoError};

/// Identifies a connection inside a [`Driver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// Identifies an extra fd registered by the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtraId(pub usize);

/// Readiness of an extra fd, handed back to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraReady {
    pub id: ExtraId,
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error reported by the kernel.
    pub closed: bool,
}

/// Tokens: even = connection, odd = extra fd; the top one wakes the loop from other threads.
const WAKER: Token = Token(usize::MAX);

struct Slot<T, M: Machine> {
    link: LinkIo<T, M>,
    interest: Interest,
    failed: Option<LinkIoError<M::Error>>,
}

/// A connection taken out of the driver because it failed, with the cause.
pub type Failed<T, M> = (ConnId, LinkIo<T, M>, LinkIoError<<M as Machine>::Error>);

/// Drives link machines over non-blocking fds.
///
/// One turn: [`Driver::wait`] polls (with a timeout from every machine's `poll_timeout`
/// and the caller's own deadline), records readiness, fires due timers and feeds received
/// bytes to the machines; the caller then drains each machine's events, reacts, and calls
/// [`Driver::flush`] to write what the machines want to send. A connection that fails is
/// parked with its error (see [`Driver::take_failed`]); the others keep working.
///
/// Feeding data (stdin, file data) outside events: a machine that answered `QueueFull`
/// gets room back when [`Driver::flush`] hands its bytes to the socket, and no event says
/// so. Offer more after every `flush` while the machine's `can_send()` is true, before the
/// next `wait`; otherwise the loop can sleep with room available until a keepalive.
pub struct Driver<T, M: Machine> {
    poll: Poll,
    events: Events,
    links: Vec<Option<Slot<T, M>>>,
    extras: Vec<Option<RawFd>>,
    /// Free slots of `extras` (a scan for one cost O(n) per registration).
    free_extras: Vec<usize>,
    waker: Option<std::sync::Arc<Waker>>,
}

impl<T: Read + Write + AsRawFd, M: Machine> Driver<T, M> {
    pub fn new() -> io::Result<Self> {
        Ok(Driver {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            links: Vec::new(),
            extras: Vec::new(),
            free_extras: Vec::new(),
            waker: None,
        })
    }

    /// A handle other threads use to interrupt [`Driver::wait`].
    pub fn waker(&mut self) -> io::Result<std::sync::Arc<Waker>> {
        if let Some(w) = &self.waker {
            return Ok(w.clone());
        }
        let w = std::sync::Arc::new(Waker::new(self.poll.registry(), WAKER)?);
        self.waker = Some(w.clone());
        Ok(w)
    }

    /// Adds a connection whose fd is already non-blocking.
    pub fn add(&mut self, link: LinkIo<T, M>) -> io::Result<ConnId> {
        let idx = self
            .links
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.links.len());
        let interest = link.interest();
        let fd = link.raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(idx * 2), interest)?;
        let slot = Slot {
            link,
            interest,
            failed: None,
        };
        if idx == self.links.len() {
            self.links.push(Some(slot));
        } else if let Some(s) = self.links.get_mut(idx) {
            *s = Some(slot);
        }
        Ok(ConnId(idx))
    }

    /// Removes a connection (deregistering its fd) and gives it back.
    pub fn remove(&mut self, id: ConnId) -> Option<LinkIo<T, M>> {
        let slot = self.links.get_mut(id.0)?.take()?;
        let fd = slot.link.raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        Some(slot.link)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut LinkIo<T, M>> {
        self.links.get_mut(id.0)?.as_mut().map(|s| &mut s.link)
    }

    pub fn get(&self, id: ConnId) -> Option<&LinkIo<T, M>> {
        self.links.get(id.0)?.as_ref().map(|s| &s.link)
    }

    /// Every live connection.
    pub fn ids(&self) -> Vec<ConnId> {
        self.links
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| ConnId(i)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.links.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers an application fd (child pipe, pidfd, event source). The fd must stay
    /// open until [`Driver::remove_extra`].
    pub fn add_extra(&mut self, fd: RawFd, interest: Interest) -> io::Result<ExtraId> {
        let idx = self
            .free_extras
            .last()
            .copied()
            .unwrap_or(self.extras.len());
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(idx * 2 + 1), interest)?;
        if idx == self.extras.len() {
            self.extras.push(Some(fd));
        } else {
            self.free_extras.pop();
            if let Some(s) = self.extras.get_mut(idx) {
                *s = Some(fd);
            }
        }
        Ok(ExtraId(idx))
    }

    /// Changes what an extra fd is watched for.
    pub fn modify_extra(&mut self, id: ExtraId, interest: Interest) -> io::Result<()> {
        let Some(Some(fd)) = self.extras.get(id.0).copied() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such extra fd"));
        };
        self.poll
            .registry()
            .reregister(&mut SourceFd(&fd), Token(id.0 * 2 + 1), interest)
    }

    /// Stops watching an extra fd (call before closing it).
    pub fn remove_extra(&mut self, id: ExtraId) {
        if let Some(slot) = self.extras.get_mut(id.0)
            && let Some(fd) = slot.take()
        {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            self.free_extras.push(id.0);
        }
    }

    /// Waits for readiness or the earliest deadline (the machines' or `deadline`), then
    /// fires due machine timers and feeds received bytes to the machines.
    /// Returns the extra fds that became ready.
    pub fn wait(&mut self, deadline: Option<Instant>) -> io::Result<Vec<ExtraReady>> {
        let now = Instant::now();
        let busy = self
            .links
            .iter()
            .flatten()
            .any(|s| s.failed.is_none() && s.link.can_read_more());
        let next = self
            .links
            .iter()
            .flatten()
            .filter(|s| s.failed.is_none())
            .filter_map(|s| s.link.deadline())
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
                if let Some(Some(slot)) = self.links.get_mut(t / 2) {
                    slot.link
                        .ready(ev.is_readable() || closed, ev.is_writable() || closed);
                }
            } else {
                extras.push(ExtraReady {
                    id: ExtraId(t / 2),
                    readable: ev.is_readable(),
                    writable: ev.is_writable(),
                    closed,
                });
            }
        }
        let now = Instant::now();
        for slot in self.links.iter_mut().flatten() {
            if slot.failed.is_some() {
                continue;
            }
            slot.link.pump_timers(now);
            if let Err(e) = slot.link.pump_read(now) {
                slot.failed = Some(e);
            } else if let Some(e) = slot.link.machine().error() {
                // End of stream or keepalive expiry: the machine has said what it had to.
                slot.failed = Some(LinkIoError::Link(e.clone()));
            }
        }
        Ok(extras)
    }

    /// Writes what every machine wants to send and updates fd interests. Call after the
    /// application has reacted to the machines' events. This can make room in a machine
    /// that was full (see the type's notes on feeding data).
    pub fn flush(&mut self) {
        let now = Instant::now();
        for (i, slot) in self.links.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.failed.is_some() {
                continue;
            }
            if let Err(e) = slot.link.pump_write(now) {
                slot.failed = Some(e);
                continue;
            }
            let want = slot.link.interest();
            if want != slot.interest {
                let fd = slot.link.raw_fd();
                match self
                    .poll
                    .registry()
                    .reregister(&mut SourceFd(&fd), Token(i * 2), want)
                {
                    Ok(()) => slot.interest = want,
                    Err(e) => slot.failed = Some(e.into()),
                }
            }
        }
    }

    /// Connections whose transport or machine failed, with the cause. They stay in the
    /// driver (so the application can still read their machine) until removed.
    pub fn failed(&self) -> Vec<(ConnId, &LinkIoError<M::Error>)> {
        self.links
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                s.failed.as_ref().map(|e| (ConnId(i), e))
            })
            .collect()
    }

    /// Removes failed connections and returns them with their error.
    pub fn take_failed(&mut self) -> Vec<Failed<T, M>> {
        let ids: Vec<ConnId> = self.failed().into_iter().map(|(id, _)| id).collect();
        let mut out = Vec::new();
        for id in ids {
            let err = self
                .links
                .get_mut(id.0)
                .and_then(|s| s.as_mut())
                .and_then(|s| s.failed.take());
            if let (Some(link), Some(err)) = (self.remove(id), err) {
                out.push((id, link, err));
            }
        }
        out
    }
}
