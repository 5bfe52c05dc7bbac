//! One home per connection: what the agent keeps for a client ([`ConnState`]: its cid,
//! its transactions) lives in the event loop beside the client's [`Server`] machine, so an
//! answer needs one lookup. Here too: how a connection is set up, and how a session ends
//! (a disconnect, a device link's new client, the agent stopping) — every request gets its
//! one outcome record, and what it started is killed, stopped or removed.

use std::collections::HashMap;
use std::time::Instant;

use tracing::{info, warn};
use tuppence::link::{Limits, Server, ServerConfig, Violation};
use tuppence_mio::{ConnId, LinkIo};
use tuppence_transport::{Transport, TransportKind};

use super::accept::Refusing;
use super::commands::CommandTx;
use super::monitors::MonitorTx;
use super::transfers::{ExtractTx, InjectTx};
use super::{LinkDaemon, Tag};
use crate::escape::{Clean, Quoted};
use crate::sources::{AuditEvent, AuditOutcome, CommandEnd, Cut};
use crate::spawn::ExitStatus;

/// Protocol violations logged per connection before the rest are only counted.
const LOGGED_VIOLATIONS: u64 = 10;

/// What the agent keeps for one connection (the machine is in the loop beside it).
pub(super) struct ConnState {
    pub cid: u16,
    pub peer: String,
    /// The listener it came from, if any.
    pub listener: Option<usize>,
    /// Its live transactions: the process, file or event source behind each xid.
    pub txs: HashMap<u16, Tx>,
    /// Protocol violations seen; only the first [`LOGGED_VIOLATIONS`] are logged, so a
    /// peer sending garbage cannot flood the agent's log.
    pub violations: u64,
    /// Served only to be refused with words (see `accept`); such a connection is no
    /// client and counts for no limit.
    pub refusing: Option<Refusing>,
}

impl ConnState {
    pub(super) fn new(cid: u16, peer: String, listener: Option<usize>) -> ConnState {
        ConnState {
            cid,
            peer,
            listener,
            txs: HashMap::new(),
            violations: 0,
            refusing: None,
        }
    }
}

/// The agent's side of a transaction: the child process, file or event source behind an
/// xid, and what it still has to do.
pub(super) enum Tx {
    Command(Box<CommandTx>),
    Inject(Box<InjectTx>),
    Extract(Box<ExtractTx>),
    Monitor(Box<MonitorTx>),
}

impl LinkDaemon {
    /// Serves a transport: a new machine and state in the loop. A device port's sessions
    /// keep its cid, and read first what the previous session handed over (see
    /// `Server::carryover`).
    pub(super) fn add_conn(
        &mut self,
        transport: Transport,
        peer: String,
        listener: Option<usize>,
    ) -> std::io::Result<ConnId> {
        transport.set_nonblocking(true)?;
        let kind = transport.kind();
        let device = matches!(kind, TransportKind::Serial | TransportKind::Virtio);
        let port = listener
            .filter(|_| device)
            .and_then(|i| self.listeners.get(i).map(|slot| (slot.cid, i)));
        let cid = match port {
            Some((Some(cid), _)) => cid,
            _ => self.allocate_cid(),
        };
        let carry = match port {
            Some((_, i)) => self.listeners.get_mut(i).and_then(|slot| {
                slot.cid = Some(cid);
                slot.carry.take()
            }),
            None => None,
        };
        let keepalive = if device {
            self.config.port_keepalive
        } else {
            self.config.socket_keepalive
        };
        let mut server_config = ServerConfig {
            cid,
            dialect: None,
            keepalive,
            default_command_timeout: self.config.default_timeout,
            hello_resets_session: false,
            limits: Limits {
                max_transactions: self.config.max_transactions,
                max_transmit_buffer: self.config.transmit_limit,
                max_events: self.max_events(),
                ..Limits::default()
            },
        };
        if device {
            // A port outlives its clients and cannot tell when one leaves: a hello starts
            // a new session, and a vanished client's unfinished packet is line noise.
            server_config.hello_resets_session = true;
            server_config.limits.stale_partial_after = self.config.port_stale_partial_after;
        }
        let mut server = Server::new(server_config, Instant::now());
        if let Some(carry) = &carry {
            server.resume_from(carry);
        }
        let mut link = LinkIo::new(transport, server);
        if let Some(carry) = carry.filter(|c| !c.input.is_empty()) {
            link.preload(&carry.input);
            // Rare enough to say: the hello came just before the port hung up.
            info!(
                cid,
                bytes = carry.input.len(),
                "a new client's hello arrived as the port hung up: answered in this session"
            );
        }
        let id = self
            .io
            .add(link, ConnState::new(cid, peer.clone(), listener))?;
        // A connection's records go to the trail only; its log line (with the transport, or
        // the reason it ended) says more than the record.
        self.trail.push(&AuditEvent::Connect { cid, peer: &peer });
        if self.config.audit {
            info!(cid, peer = %Quoted::str(&peer), transport = kind.as_str(), "client connected");
        }
        Ok(id)
    }

    /// Events a connection's machine may queue before it stops consuming input. The loop
    /// can only pause reading a link between turns, and everything read in one turn becomes
    /// events first: with the machine's default (1024 events of up to 64 KiB) one turn
    /// could queue 32 MiB or more of stdin. This keeps a turn's intake near `stdin_limit`.
    fn max_events(&self) -> usize {
        let defaults = Limits::default();
        (self.config.stdin_limit / defaults.max_receive_packet).clamp(16, defaults.max_events)
    }

    fn allocate_cid(&mut self) -> u16 {
        loop {
            let cid = self.next_cid;
            self.next_cid = self.next_cid.checked_add(1).unwrap_or(1);
            // (A port keeps its cid between sessions.)
            if cid != 0
                && !self.io.states().any(|(_, c)| c.cid == cid)
                && !self.listeners.iter().any(|l| l.cid == Some(cid))
            {
                return cid;
            }
        }
    }

    /// Connections being served (refused ones do not count).
    pub(super) fn served(&self) -> usize {
        self.io
            .states()
            .filter(|(_, c)| c.refusing.is_none())
            .count()
    }

    /// The connection's cid (0 once it is gone).
    pub(super) fn cid(&self, id: ConnId) -> u16 {
        self.io.get(id).map_or(0, |c| c.state.cid)
    }

    pub(super) fn tx_mut(&mut self, id: ConnId, xid: u16) -> Option<&mut Tx> {
        self.io.get_mut(id)?.state.txs.get_mut(&xid)
    }

    pub(super) fn take_tx(&mut self, id: ConnId, xid: u16) -> Option<Tx> {
        self.io.get_mut(id)?.state.txs.remove(&xid)
    }

    pub(super) fn put_tx(&mut self, id: ConnId, xid: u16, tx: Tx) {
        match self.io.get_mut(id) {
            Some(conn) => {
                conn.state.txs.insert(xid, tx);
            }
            // The connection is gone (it cannot be, within a turn): release what the
            // transaction holds.
            None => self.drop_tx(tx),
        }
    }

    /// Ends a transfer or monitor whose client was sent `status`: its record, then its
    /// resources (an inject's temporary is removed).
    pub(super) fn finish_tx(&mut self, id: ConnId, xid: u16, status: u32) {
        let cid = self.cid(id);
        if let Some(tx) = self.take_tx(id, xid) {
            self.audit_end(cid, xid, &tx, AuditOutcome::Status(status), None);
            self.drop_tx(tx);
        }
    }

    /// Removes the connections that ended, with the last answers their machine queued
    /// already written (see `EventLoop::flush`), and ends their sessions.
    pub(super) fn reap_ended(&mut self, now: Instant) {
        for ended in self.io.take_ended() {
            let conn = ended.conn;
            // What a device port's next session must read first (its bytes were read
            // here): taken once the last answers are out, before the link is dropped.
            let carry = conn.link.machine().carryover(conn.link.unwritten());
            drop(conn.link);
            // An fd came free: a starved listener is tried again at once.
            self.busy |= self.gate.has_starved();
            let state = conn.state;
            if let Some(refusing) = state.refusing {
                self.gate.closed(refusing);
                continue;
            }
            if self.config.audit {
                info!(cid = state.cid, peer = %Quoted::str(&state.peer), reason = %ended.error, "client disconnected");
            }
            if state.violations > LOGGED_VIOLATIONS {
                warn!(
                    cid = state.cid,
                    violations = state.violations,
                    "protocol violations in all"
                );
            }
            self.end_session(state.cid, state.txs, Cut::Disconnect);
            if let Some(slot) = state.listener.and_then(|i| self.listeners.get_mut(i))
                && slot.device_conn == Some(ended.id)
            {
                slot.device_conn = None;
                slot.retry_at = Some(now);
                // What the port's next session must read first (its bytes were read here).
                slot.carry = Some(carry);
            }
        }
    }

    /// A device link: the previous client vanished without a trace and a new one said
    /// hello. Everything still live belonged to the one that left (the machine has already
    /// forgotten it); clean up as on a disconnect.
    pub(super) fn session_reset(&mut self, id: ConnId, aborted: usize) {
        let Some(conn) = self.io.get_mut(id) else {
            return;
        };
        let cid = conn.state.cid;
        let txs = std::mem::take(&mut conn.state.txs);
        let peer = conn.state.peer.clone();
        if self.config.audit {
            info!(cid, peer = %Quoted::str(&peer), transactions = aborted, "session reset: a new client said hello; the previous one is gone");
        }
        self.end_session(cid, txs, Cut::Disconnect);
        self.trail.push(&AuditEvent::Connect { cid, peer: &peer });
    }

    /// A client is gone (disconnected, or replaced on a device link by a new client's
    /// hello), or the agent stops: records how each of its requests was cut off (every
    /// request gets its one outcome record), then kills and reaps its commands, stops its
    /// monitors and removes its partial files.
    pub(super) fn end_session(&mut self, cid: u16, txs: HashMap<u16, Tx>, cut: Cut) {
        let mut xids: Vec<u16> = txs.keys().copied().collect();
        xids.sort_unstable();
        for xid in xids {
            if let Some(tx) = txs.get(&xid) {
                self.audit_end(cid, xid, tx, AuditOutcome::Cut(cut), None);
            }
        }
        self.trail.push(&AuditEvent::Disconnect { cid });
        for (_, tx) in txs {
            self.drop_tx(tx);
        }
    }

    /// The outcome record of a request that ended with `outcome`. A command's ordinary end
    /// is recorded where its status is sent (`pump_command`); here only its cut-off.
    pub(super) fn audit_end(
        &self,
        cid: u16,
        xid: u16,
        tx: &Tx,
        outcome: AuditOutcome,
        error: Option<&dyn std::fmt::Display>,
    ) {
        let audit = |event: &AuditEvent<'_>| match error {
            Some(e) => self.audit_failure(event, e),
            None => self.audit(event),
        };
        match tx {
            Tx::Command(c) => {
                let AuditOutcome::Cut(cut) = outcome else {
                    return;
                };
                // Killed now, unless it had ended and only its output was still going out.
                let end = match c.status {
                    Some(ExitStatus::Exited(code)) => CommandEnd::Exited(code),
                    Some(ExitStatus::Signaled(sig)) => CommandEnd::Signaled(sig),
                    None => CommandEnd::Signaled(libc::SIGKILL),
                };
                audit(&AuditEvent::CommandEnd {
                    cid,
                    xid,
                    pid: c.child.pid(),
                    end,
                    cut: Some(cut),
                });
            }
            Tx::Inject(t) => audit(&AuditEvent::Inject {
                cid,
                xid,
                user: &t.user,
                path: &t.path,
                mode: t.file.mode(),
                bytes: t.file.written(),
                outcome,
            }),
            Tx::Extract(t) => audit(&AuditEvent::Extract {
                cid,
                xid,
                user: &t.user,
                path: &t.path,
                bytes: t.file.read_so_far(),
                outcome,
            }),
            Tx::Monitor(m) => audit(&AuditEvent::Monitor {
                cid,
                xid,
                source: &m.name,
                outcome,
            }),
        }
    }

    /// Releases what a transaction holds: kills its command's process group (reaping it
    /// as soon as it is gone), stops its monitor; an unfinished inject removes its
    /// temporary when dropped.
    pub(super) fn drop_tx(&mut self, tx: Tx) {
        match tx {
            Tx::Command(c) => self.drop_command(*c),
            Tx::Monitor(m) => {
                if let Some(extra) = m.extra {
                    self.io.remove_extra(extra);
                }
            }
            Tx::Inject(..) | Tx::Extract(..) => {}
        }
    }

    /// A protocol violation: logged (the first few per connection) and counted.
    pub(super) fn on_violation(&mut self, id: ConnId, v: &Violation) {
        let Some(conn) = self.io.get_mut(id) else {
            return;
        };
        conn.state.violations += 1;
        let (cid, seen) = (conn.state.cid, conn.state.violations);
        if seen <= LOGGED_VIOLATIONS {
            warn!(cid, "protocol violation: {}", Clean(v));
        }
        if seen == LOGGED_VIOLATIONS {
            warn!(
                cid,
                "further protocol violations on this connection are counted, not logged"
            );
        }
    }

    /// Moves a watched fd's tag from a live command to the daemon's dying list.
    pub(super) fn watch_dying(&mut self, extra: tuppence_mio::ExtraId, child: crate::Child) {
        self.io.retag_extra(extra, Tag::Dying);
        self.dying.insert(extra, child);
    }
}
