//! Who gets in: accepting socket clients, and refusing with words those the agent will
//! not serve (DESIGN §8).
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

use tracing::{info, warn};
use tuppence::link::{Refusal, Server, ServerConfig};
use tuppence_mio::{ConnId, LinkIo};
use tuppence_transport::{Peer, Transport};

use super::Agent;
use crate::admission::{ACCEPT_RETRY, Reserve, Starved, Throttle, is_exhaustion, is_fd_limit};
use crate::escape::Clean;

/// Refused connections waiting for their hello at once.
pub(super) const MAX_REFUSING: usize = 32;

/// How long a refused client has to send its hello (a real client sends it at once).
pub(super) const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// A connection that is being refused.
#[derive(Debug)]
struct Refusing {
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
    refusing: HashMap<ConnId, Refusing>,
    full_log: Throttle,
    fd_log: Throttle,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            reserve: Reserve::new(),
            starved: HashMap::new(),
            refusing: HashMap::new(),
            full_log: Throttle::default(),
            fd_log: Throttle::default(),
        }
    }

    pub fn is_refusing(&self, id: ConnId) -> bool {
        self.refusing.contains_key(&id)
    }

    /// Whether a listener waits for fds to come free.
    pub fn has_starved(&self) -> bool {
        !self.starved.is_empty()
    }

    /// When the loop must come back: a refused client's time is up, or a starved
    /// listener is due for another try.
    pub fn deadline(&self) -> Option<Instant> {
        let retry = (!self.starved.is_empty()).then(|| Instant::now() + ACCEPT_RETRY);
        self.refusing.values().map(|r| r.until).chain(retry).min()
    }
}

impl Agent {
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
                    let live = self.conns.len().saturating_sub(self.driver.failed().len());
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
                    let freeing = !self.driver.failed().is_empty();
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
        if self.gate.refusing.len() >= MAX_REFUSING {
            // Too many waiting for their hello already: close without words.
            drop(transport);
            if reserve {
                self.gate.reserve.restore();
            }
            return;
        }
        let added = transport.set_nonblocking(true).and_then(|()| {
            let mut server = Server::new(
                ServerConfig {
                    cid: 0xFFFF,
                    ..ServerConfig::default()
                },
                now,
            );
            server.refuse(refusal);
            self.driver.add(LinkIo::new(transport, server))
        });
        match added {
            Ok(id) => {
                self.gate.refusing.insert(
                    id,
                    Refusing {
                        until: now + REFUSAL_WAIT,
                        reserve,
                    },
                );
            }
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
            .gate
            .refusing
            .iter()
            .filter(|(_, r)| now >= r.until)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            drop(self.driver.remove(id));
            self.gate_closed(id);
        }
        let starved: Vec<usize> = self.gate.starved.keys().copied().collect();
        for idx in starved {
            self.accept_sockets(idx, now);
        }
    }

    /// A connection was closed: if it was being refused, forget it (and reopen the reserve
    /// if it held its place). Returns whether it was.
    pub(super) fn gate_closed(&mut self, id: ConnId) -> bool {
        match self.gate.refusing.remove(&id) {
            Some(r) => {
                if r.reserve {
                    self.gate.reserve.restore();
                }
                true
            }
            None => false,
        }
    }
}
