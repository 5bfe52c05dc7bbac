//! Who gets in: the listeners, the device ports (serial, virtio: reopened whenever their
//! client goes away), and refusing with words those the agent will not serve
//! (ARCHITECTURE.md, "Refusals have words").
//!
//! * A client over `max_clients` is accepted and refused: its hello is answered with
//!   `M`=EUSERS, `m`=max (see [`Refusal`]) and the connection closed, so the CLI can say
//!   "agent refused the connection: too many clients (max N)" instead of "Broken pipe". At
//!   most [`MAX_REFUSING`] such connections wait for their hello at once, each at most
//!   [`REFUSAL_WAIT`]; beyond that a client is closed without words.
//! * When `accept` runs out of file descriptors the listener is retried until fds come
//!   free, and after a while waiting clients are refused with `M`=EMFILE through the
//!   reserve fd (see [`crate::admission`]).
//! * Refusals are logged at most once per ten seconds per reason, with a count.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use mio::Interest;
use tracing::{debug, info, warn};
use tuppence::link::{Carryover, Refusal, Server, ServerConfig};
use tuppence_mio::{ConnId, LinkIo};
use tuppence_transport::{Listener, Peer, Transport};

use super::connections::ConnState;
use super::{LinkDaemon, Loop, Tag};
use crate::admission::{ACCEPT_RETRY, Reserve, Starved, Throttle, is_exhaustion, is_fd_limit};
use crate::escape::Clean;

/// Refused connections waiting for their hello at once.
pub(super) const MAX_REFUSING: usize = 32;

/// How long a refused client has to send its hello (a real client sends it at once).
pub(super) const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// A listener and, for a device port, its one session.
pub(super) struct ListenerSlot {
    pub listener: Listener,
    /// Device listeners (serial, virtio): when to try `accept` next, and their one link.
    pub retry_at: Option<Instant>,
    pub device_conn: Option<ConnId>,
    /// Device listeners: the port's cid, the same for every session on it (a client that
    /// got its hello reply just before a hang-up goes on with it in the next session).
    pub cid: Option<u16>,
    /// Device listeners: what the last session, ended by a hang-up, handed over to the
    /// next one (a new client's hello read just before it: see `Server::carryover`).
    pub carry: Option<Carryover>,
}

/// A connection that is being refused (kept in its [`ConnState`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Refusing {
    until: Instant,
    /// It holds the reserve fd's place: reopen the reserve when it is closed.
    reserve: bool,
}

/// The accept side's state.
#[derive(Debug)]
pub(super) struct Gate {
    reserve: Reserve,
    /// Listeners (by index) whose last `accept` ran out of fds or memory.
    starved: HashMap<usize, Starved>,
    /// Connections being refused.
    refusing: usize,
    full_log: Throttle,
    fd_log: Throttle,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            reserve: Reserve::new(),
            starved: HashMap::new(),
            refusing: 0,
            full_log: Throttle::default(),
            fd_log: Throttle::default(),
        }
    }

    /// Whether a listener waits for fds to come free.
    pub fn has_starved(&self) -> bool {
        !self.starved.is_empty()
    }

    /// When the loop must come back: a refused client's time is up, or a starved
    /// listener is due for another try.
    pub fn deadline(&self, io: &Loop) -> Option<Instant> {
        let retry = (!self.starved.is_empty()).then(|| Instant::now() + ACCEPT_RETRY);
        io.states()
            .filter_map(|(_, c)| c.refusing.map(|r| r.until))
            .chain(retry)
            .min()
    }

    /// A refused connection was closed: reopen the reserve if it held its place.
    pub fn closed(&mut self, refusing: Refusing) {
        self.refusing = self.refusing.saturating_sub(1);
        if refusing.reserve {
            self.reserve.restore();
        }
    }
}

impl LinkDaemon {
    /// Serves clients of `listener`. Socket listeners are polled; serial and virtio ports
    /// are opened again (on a timer, without spinning) whenever their client goes away.
    pub fn add_listener(&mut self, listener: Listener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let idx = self.listeners.len();
        let retry_at = match listener.accept_interval() {
            Some(_) => Some(Instant::now()),
            None => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
                self.io
                    .add_extra(fd, Interest::READABLE, Tag::Listener(idx))?;
                None
            }
        };
        self.listeners.push(ListenerSlot {
            listener,
            retry_at,
            device_conn: None,
            cid: None,
            carry: None,
        });
        Ok(())
    }

    /// When a device port without a session is tried next.
    pub(super) fn device_deadline(&self) -> Option<Instant> {
        self.listeners
            .iter()
            .filter(|l| l.device_conn.is_none())
            .filter_map(|l| l.retry_at)
            .min()
    }

    /// Serial and virtio ports: (re)open the session when nobody is connected.
    pub(super) fn accept_devices(&mut self, now: Instant) {
        for idx in 0..self.listeners.len() {
            let Some(slot) = self.listeners.get_mut(idx) else {
                continue;
            };
            let (Some(at), None) = (slot.retry_at, slot.device_conn) else {
                continue;
            };
            if now < at {
                continue;
            }
            let interval = slot
                .listener
                .accept_interval()
                .unwrap_or(Duration::from_millis(250));
            match slot.listener.accept() {
                Ok((transport, peer)) => {
                    match self.add_conn(transport, peer.to_string(), Some(idx)) {
                        Ok(id) => {
                            if let Some(slot) = self.listeners.get_mut(idx) {
                                slot.device_conn = Some(id);
                            }
                        }
                        Err(e) => {
                            warn!(peer = %Clean(&peer), error = %e, "cannot serve port");
                            if let Some(slot) = self.listeners.get_mut(idx) {
                                slot.retry_at = Some(now + interval);
                            }
                        }
                    }
                }
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::ResourceBusy
                            | io::ErrorKind::NotConnected
                    ) {
                        debug!(error = %e, "port not ready");
                    }
                    slot.retry_at = Some(now + interval);
                }
            }
        }
    }

    /// Accepts every waiting client of socket listener `idx`.
    pub(super) fn accept_sockets(&mut self, idx: usize, now: Instant) {
        loop {
            let Some(slot) = self.listeners.get(idx) else {
                return;
            };
            match slot.listener.accept() {
                Ok((transport, peer)) => {
                    self.gate.starved.remove(&idx);
                    // Connections that ended in this turn (and are cleaned up at its end)
                    // no longer count: a client may leave and another arrive at once.
                    let live = self.served().saturating_sub(self.io.ended_count());
                    if live >= self.config.max_clients {
                        let refusal = Refusal::too_many_clients(self.config.max_clients);
                        self.refuse(transport, &peer, refusal, false, now);
                        continue;
                    }
                    if let Err(e) = self.add_conn(transport, peer.to_string(), Some(idx)) {
                        warn!(peer = %Clean(&peer), error = %e, "cannot serve connection");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.gate.starved.remove(&idx);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_exhaustion(&e) => {
                    let starved = *self
                        .gate
                        .starved
                        .entry(idx)
                        .or_insert_with(|| Starved::new(now));
                    let wait = self.config.fd_wait;
                    // Connections that ended in this turn free their fds at its end: then
                    // the listener is tried again at once, so nobody is refused for that.
                    let freeing = self.io.ended_count() > 0;
                    if freeing
                        || !(is_fd_limit(&e)
                            && starved.refuse_now(now, wait)
                            && self.gate.reserve.release())
                    {
                        // Wait for fds to come free (retried every turn and on a timer).
                        return;
                    }
                    // Give the client the reserve's place, to tell it why.
                    let accepted = self.listeners.get(idx).map(|s| s.listener.accept());
                    match accepted {
                        Some(Ok((transport, peer))) => {
                            self.refuse(transport, &peer, Refusal::out_of_fds(), true, now);
                        }
                        _ => {
                            self.gate.reserve.restore();
                            return;
                        }
                    }
                }
                Err(e) => {
                    if let Some(held) = self.gate.fd_log.allow(now) {
                        warn!(error = %e, held_back = held, "accept failed");
                    }
                    self.gate
                        .starved
                        .entry(idx)
                        .or_insert_with(|| Starved::new(now));
                    return;
                }
            }
        }
    }

    /// Serves a client only to refuse it (see the module docs); `reserve`: it took the
    /// reserve fd's place.
    fn refuse(
        &mut self,
        transport: Transport,
        peer: &Peer,
        refusal: Refusal,
        reserve: bool,
        now: Instant,
    ) {
        let log = if refusal == Refusal::out_of_fds() {
            &mut self.gate.fd_log
        } else {
            &mut self.gate.full_log
        };
        if let Some(held) = log.allow(now) {
            info!(peer = %Clean(peer), reason = %refusal, held_back = held, "connection refused");
        }
        if self.gate.refusing >= MAX_REFUSING {
            // Too many waiting for their hello already: close without words.
            drop(transport);
            if reserve {
                self.gate.reserve.restore();
            }
            return;
        }
        let refusing = Refusing {
            until: now + REFUSAL_WAIT,
            reserve,
        };
        let added = transport.set_nonblocking(true).and_then(|()| {
            let mut server = Server::new(
                ServerConfig {
                    cid: 0xFFFF,
                    ..ServerConfig::default()
                },
                now,
            );
            server.refuse(refusal);
            let mut state = ConnState::new(0xFFFF, peer.to_string(), None);
            state.refusing = Some(refusing);
            self.io.add(LinkIo::new(transport, server), state)
        });
        match added {
            Ok(_) => self.gate.refusing += 1,
            Err(e) => {
                warn!(peer = %Clean(peer), error = %e, "cannot refuse a connection with words; closed");
                if reserve {
                    self.gate.reserve.restore();
                }
            }
        }
    }

    /// Once per loop turn: closes refused connections whose client never said hello, and
    /// tries starved listeners again (a connection or command that ended may have freed
    /// fds).
    pub(super) fn gate_turn(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .io
            .states()
            .filter(|(_, c)| c.refusing.is_some_and(|r| now >= r.until))
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            if let Some(refusing) = self.io.remove(id).and_then(|c| c.state.refusing) {
                self.gate.closed(refusing);
            }
        }
        let starved: Vec<usize> = self.gate.starved.keys().copied().collect();
        for idx in starved {
            self.accept_sockets(idx, now);
        }
    }
}
