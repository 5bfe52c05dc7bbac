//! `tuppence serve`: the link daemon. One thread, one [`EventLoop`], many connections.
//!
//! A turn of [`LinkDaemon::run`]: wait for readiness or the next deadline → handle ready
//! fds (listeners, child pipes, pidfds, event sources) → drain every connection's
//! [`Server`] events and act on them → move data (child output while the link can take
//! it, stdin while the child takes it, extract reads, monitor lines) → let the loop write
//! → clean up connections that ended. Children are reaped through their pidfds the moment
//! they exit; the status goes out once their output has drained, or at the command's
//! timeout at the latest.
//!
//! One concept per module: `accept` (who gets in: listeners, device ports, refusals),
//! `connections` (the agent's state of one connection, in the loop beside its machine, and
//! how a session ends), `commands`, `transfers` and `monitors` (one kind of transaction
//! each: what starts it, what moves its data, what ends it), `syncer` (injects flushed to
//! disk and renamed off the loop, on a worker thread), `arena` (the read buffers),
//! `config`. This file is the loop and the dispatch of events.

mod accept;
mod arena;
mod commands;
mod config;
mod connections;
mod monitors;
mod syncer;
mod transfers;

pub use config::LinkDaemonConfig;
pub use tuppence_mio::StopHandle;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::Interest;
use tracing::{debug, info, warn};
use tuppence::link::{Server, ServerEvent, UsageError};
use tuppence_mio::{ConnId, EventLoop, ExtraId, ExtraReady};
use tuppence_transport::Transport;

use crate::contain::Containment;
use crate::escape::Clean;
use crate::sources::{AUDIT_CAPACITY, AuditEvent, AuditTrail, ReadAs};
use crate::spawn::Child;
use accept::{Gate, ListenerSlot};
use arena::Arena;
use connections::{ConnState, Tx};

/// How long stopping waits for injects still being flushed to disk (their data all came).
const SHUTDOWN_SYNC_WAIT: Duration = Duration::from_secs(10);

/// Why [`LinkDaemon::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// A client sent `q` (and quitting is allowed).
    Quit,
    /// [`StopHandle::stop`] was called.
    Stopped,
    /// `exit_when_idle` and nothing is left to serve.
    Idle,
}

/// What an extra fd of the loop is, handed back with its readiness.
#[derive(Clone, Copy, Debug)]
enum Tag {
    Listener(usize),
    /// A command's pidfd.
    Exit(ConnId, u16),
    /// A command's output pipe (or pty master) for channel `slot + 1`.
    Out(ConnId, u16, usize),
    Stdin(ConnId, u16),
    /// A monitor's event source.
    Source(ConnId, u16),
    /// The pidfd of a command killed because its transaction was dropped (see `dying`).
    Dying,
    /// A child exited (`SIGCHLD`): orphans to reap, killed cgroups to remove.
    Reaper,
    /// Injects were finished off the loop (see `syncer`).
    Synced,
}

type Loop = EventLoop<Transport, Server, ConnState, Tag>;

/// The agent. Build it, add listeners or connections, then [`LinkDaemon::run`].
pub struct LinkDaemon {
    config: LinkDaemonConfig,
    /// Every connection, with the agent's state of it beside its machine.
    io: Loop,
    listeners: Vec<ListenerSlot>,
    /// Commands killed when their connection went away (or was dropped), reaped as soon as
    /// their pidfd says they are gone, so no zombie is left behind.
    dying: HashMap<ExtraId, Child>,
    trail: AuditTrail,
    next_cid: u16,
    quit: bool,
    arena: Arena,
    /// Something can progress without a new readiness event: poll without waiting.
    busy: bool,
    /// Connections whose output stopped in this turn because their link was full.
    link_full: HashSet<ConnId>,
    /// Injects that received data in this turn (written at the end of its events).
    unwritten_injects: Vec<(ConnId, u16)>,
    /// Commands whose child may not have exec'd yet (see `settle_execs`).
    unsettled: Vec<(ConnId, u16)>,
    /// Command cgroups and the orphan reaper.
    contain: Containment,
    /// Refused connections, starved listeners, the reserve fd (see `accept`).
    gate: Gate,
    /// Finishes injects (the disk flushes) off the loop.
    syncer: syncer::Syncer,
}

impl LinkDaemon {
    pub fn new(config: LinkDaemonConfig) -> io::Result<LinkDaemon> {
        let mut contain =
            Containment::deferred(config.cgroups, config.reap_orphans, true, "commands")?;
        if config.cgroups_in_own {
            contain.in_own_cgroup();
        }
        if !config.defer_cgroups {
            contain.complete();
        }
        let mut io = Loop::new()?;
        if let Some(fd) = contain.fd() {
            io.add_extra(fd, Interest::READABLE, Tag::Reaper)?;
        }
        Ok(LinkDaemon {
            syncer: syncer::Syncer::new(),
            config,
            io,
            listeners: Vec::new(),
            dying: HashMap::new(),
            trail: AuditTrail::new(AUDIT_CAPACITY),
            next_cid: 1,
            quit: false,
            arena: Arena::new(),
            busy: false,
            link_full: HashSet::new(),
            unwritten_injects: Vec::new(),
            unsettled: Vec::new(),
            gate: Gate::new(),
            contain,
        })
    }

    /// How commands are contained, in words: in cgroups, or by process group and why (for
    /// the log line a service prints once it is ready).
    pub fn containment(&self) -> &str {
        self.contain.describe()
    }

    /// The cgroup subtree commands run in, when they run in cgroups (see
    /// [`LinkDaemonConfig::cgroups`]).
    pub fn cgroup_tree(&self) -> Option<&std::path::Path> {
        self.contain
            .cgroups
            .as_deref()
            .map(crate::cgroup::CgroupTree::path)
    }

    /// With [`LinkDaemonConfig::defer_cgroups`]: the cgroup subtree is being made by
    /// another thread (`EmbeddedAgent::start`'s caller, while this one starts), which
    /// sends it on `rx`; the agent takes it from there instead of making its own.
    pub fn cgroups_made_by(
        &mut self,
        rx: std::sync::mpsc::Receiver<
            Result<std::sync::Arc<crate::cgroup::CgroupTree>, crate::cgroup::CgroupError>,
        >,
    ) {
        self.contain.made_by(rx);
    }

    /// A handle that makes `run` return [`RunEnd::Stopped`].
    pub fn stop_handle(&mut self) -> io::Result<StopHandle> {
        self.io.stop_handle()
    }

    /// Serves one already-connected transport (e.g. one end of a socket pair).
    pub fn add_connection(&mut self, transport: Transport, peer: &str) -> io::Result<()> {
        self.add_conn(transport, peer.to_owned(), None).map(|_| ())
    }

    /// Serves until a client quits, [`StopHandle::stop`] is called, or (with
    /// `exit_when_idle`) nothing is left. Kills what it started before returning.
    pub fn run(&mut self) -> io::Result<RunEnd> {
        loop {
            if let Some(end) = self.turn(None)? {
                return Ok(end);
            }
        }
    }

    /// One turn of [`LinkDaemon::run`], waiting for readiness no later than `until`: for a
    /// caller that drives the agent from its own loop (an embedded agent stepped by the
    /// session that talks to it, see `embedded`). `Some` once the agent has ended, as
    /// `run` would return (it has shut down then: call no more turns).
    pub fn turn(&mut self, until: Option<Instant>) -> io::Result<Option<RunEnd>> {
        // A deferred cgroup subtree is made after this turn: its first wait must
        // not block.
        let own = if self.busy || self.contain.is_pending() {
            Some(Instant::now())
        } else {
            self.next_deadline()
        };
        let deadline = match (own, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.busy = false;
        let ready = self.io.wait(deadline)?;
        let now = Instant::now();
        for r in ready {
            self.on_ready(r, now);
        }
        self.accept_devices(now);
        self.gate_turn(now);
        if !self.unsettled.is_empty() {
            self.settle_execs();
        }
        for id in self.io.ids() {
            self.handle_events(id, now);
        }
        // Records pushed from here on (a command's end, a disconnect) may be after the
        // `agent` monitors were served in this turn: serve them again without waiting.
        let trail_mark = self.trail.end_seq();
        self.link_full.clear();
        for id in self.io.ids() {
            self.pump(id, now);
        }
        self.io.flush();
        // After the first turn's answers are out (`defer_cgroups`).
        self.contain.complete();
        self.reap_ended(now);
        if self.trail.end_seq() != trail_mark {
            self.busy = true;
        }
        // Output held back for a full link can go on if the flush made room (otherwise
        // the link's next writable event brings the loop back here).
        let full: Vec<ConnId> = self.link_full.drain().collect();
        if full.into_iter().any(|id| self.link_has_room(id)) {
            self.busy = true;
        }
        let end = if self.quit {
            Some(RunEnd::Quit)
        } else if self.io.stopped() {
            Some(RunEnd::Stopped)
        } else if self.config.exit_when_idle && self.listeners.is_empty() && self.served() == 0 {
            Some(RunEnd::Idle)
        } else {
            None
        };
        if let Some(end) = end {
            self.shutdown();
            return Ok(Some(end));
        }
        Ok(None)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let txs = self
            .io
            .states()
            .flat_map(|(_, c)| c.txs.values())
            .filter_map(|t| match t {
                Tx::Command(c) => c.deadline,
                Tx::Monitor(m) => m.next_poll,
                Tx::Inject(_) | Tx::Extract(_) => None,
            });
        txs.chain(self.device_deadline())
            .chain(self.gate.deadline(&self.io))
            .min()
    }

    /// Stops serving: every connection's requests are recorded as cut off and what they
    /// started is killed and removed; the last answers are written (for a second at most)
    /// and the killed commands reaped.
    fn shutdown(&mut self) {
        // Injects whose data all came are finished and answered first: a client that sent
        // everything gets its file, and its answer if it is still there.
        for done in self.syncer.wait_all(Instant::now() + SHUTDOWN_SYNC_WAIT) {
            self.inject_finished(done);
        }
        if self.syncer.in_flight() > 0 {
            warn!(
                injects = self.syncer.in_flight(),
                "stopping while injects are still being flushed to disk"
            );
        }
        for id in self.io.ids() {
            if let Some(mut conn) = self.io.remove(id) {
                if conn.state.refusing.is_none() {
                    let txs = std::mem::take(&mut conn.state.txs);
                    self.end_session(conn.state.cid, txs, crate::sources::Cut::Shutdown);
                }
                let _ = conn
                    .link
                    .flush_blocking(Instant::now(), Duration::from_secs(1));
            }
        }
        // SIGKILL takes a moment: reap the killed commands rather than leave zombies.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.dying.is_empty() && Instant::now() < deadline {
            let Ok(ready) = self.io.wait(Some(deadline)) else {
                break;
            };
            for r in ready {
                if matches!(r.tag, Tag::Dying) {
                    self.on_ready(r, Instant::now());
                }
            }
        }
        // Whatever is still dying is left to `Child`'s drop (reaped at a later spawn).
        for (extra, child) in std::mem::take(&mut self.dying) {
            self.io.remove_extra(extra);
            drop(child);
        }
        // Killed cgroups: wait for them to empty, so none is left behind.
        self.contain.settle(Duration::from_secs(1));
    }

    // ---- readiness ----

    fn on_ready(&mut self, r: ExtraReady<Tag>, now: Instant) {
        match r.tag {
            Tag::Listener(idx) => self.accept_sockets(idx, now),
            Tag::Exit(id, xid) => self.on_exit(id, xid),
            Tag::Out(id, xid, slot) => self.on_output_ready(id, xid, slot, r),
            Tag::Stdin(id, xid) => {
                if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
                    c.stdin_writable |= r.writable || r.closed;
                }
            }
            Tag::Source(id, xid) => {
                if let Some(Tx::Monitor(m)) = self.tx_mut(id, xid) {
                    m.readable = true;
                }
            }
            Tag::Reaper => self.contain.on_child_exit(),
            Tag::Synced => {
                for done in self.syncer.take_done() {
                    self.inject_finished(done);
                }
            }
            Tag::Dying => {
                let reaped = self
                    .dying
                    .get_mut(&r.id)
                    .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
                if reaped {
                    self.io.remove_extra(r.id);
                    self.dying.remove(&r.id);
                }
            }
        }
    }

    /// Watches an fd of a transaction (or the agent); `None` (logged) if it cannot be.
    fn register(&mut self, fd: RawFd, interest: Interest, tag: Tag) -> Option<ExtraId> {
        match self.io.add_extra(fd, interest, tag) {
            Ok(extra) => Some(extra),
            Err(e) => {
                warn!(error = %e, "cannot watch fd");
                None
            }
        }
    }

    // ---- requests ----

    fn handle_events(&mut self, id: ConnId, now: Instant) {
        let mut events = Vec::new();
        if let Some(conn) = self.io.get_mut(id) {
            let refusing = conn.state.refusing.is_some();
            let server = conn.link.machine_mut();
            while let Some(ev) = server.poll_event() {
                // A refused connection's requests are never served (the machine answers).
                if !refusing {
                    events.push(ev);
                }
            }
        }
        for ev in events {
            self.on_event(id, ev, now);
        }
        for (id, xid) in std::mem::take(&mut self.unwritten_injects) {
            self.write_inject(id, xid);
        }
    }

    /// Every event of a connection's machine gets its answer here: the match names each
    /// one (no wildcard), so a new event is a compile error until it is handled.
    fn on_event(&mut self, id: ConnId, ev: ServerEvent, now: Instant) {
        let cid = self.cid(id);
        match ev {
            ServerEvent::SessionReset { aborted } => self.session_reset(id, aborted.len()),
            ServerEvent::Hello {
                client_version,
                keepalive,
            } => debug!(cid, ?client_version, keepalive, "hello"),
            ServerEvent::RunCommand {
                xid,
                user,
                command,
                timeout,
                tty,
                env,
            } => {
                let request = commands::NewCommand {
                    user,
                    command,
                    timeout,
                    tty,
                    env,
                };
                self.start_command(id, xid, request, now);
            }
            ServerEvent::Stdin { xid, data } => self.on_stdin(id, xid, data),
            ServerEvent::StdinEnd { xid } => self.on_stdin_end(id, xid),
            ServerEvent::Interrupt { xid, signal } => self.on_interrupt(id, xid, &signal),
            ServerEvent::ProcInfo { xid, mask } => self.on_procinfo(id, xid, mask),
            ServerEvent::Inject {
                xid,
                user,
                path,
                mode,
            } => self.start_inject(id, xid, user, path, mode),
            ServerEvent::InjectData { xid, data } => self.on_inject_data(id, xid, data),
            ServerEvent::InjectEnd { xid } => self.on_inject_end(id, xid),
            ServerEvent::Extract { xid, user, path } => self.start_extract(id, xid, user, path),
            ServerEvent::TransferAborted { xid } => {
                // The machine answers EINTR. Dropping an inject removes its temporary file.
                self.finish_tx(id, xid, tuppence::link::status::EINTR);
            }
            ServerEvent::Monitor { xid, source } => self.start_monitor(id, xid, source, now),
            ServerEvent::Settle { xid, seq } => self.on_settle(id, xid, seq),
            ServerEvent::MonitorEnd { xid } => {
                // The machine answers the end.
                self.finish_tx(id, xid, 0);
            }
            ServerEvent::Quit => {
                self.audit(&AuditEvent::Quit {
                    cid,
                    honoured: self.config.allow_quit,
                });
                if self.config.allow_quit {
                    info!(cid, "quit requested by client");
                    self.quit = true;
                } else {
                    info!(cid, "quit requested by client; ignored (--no-quit)");
                }
            }
            ServerEvent::LinkDead => info!(cid, "link dead: keepalive expired"),
            ServerEvent::ProtocolViolation(v) => self.on_violation(id, &v),
        }
    }

    // ---- shared by the transaction modules ----

    /// The connection's machine, to answer on.
    fn server(&mut self, id: ConnId) -> Option<&mut Server> {
        self.io.get_mut(id).map(|c| c.link.machine_mut())
    }

    /// Sends an answer. The machine refuses one only for a connection that ended in this
    /// turn (its cleanup follows at the end of the turn) or for a transaction it no longer
    /// knows (a device link's new session forgot the old one's); anything else would be a
    /// bug of this daemon, so it is logged, never silently dropped.
    fn answer(
        &mut self,
        id: ConnId,
        xid: u16,
        what: &'static str,
        f: impl FnOnce(&mut Server) -> Result<(), UsageError>,
    ) {
        let cid = self.cid(id);
        let Some(server) = self.server(id) else {
            return;
        };
        match f(server) {
            Ok(()) => {}
            Err(UsageError::Link(e)) => debug!(cid, xid, what, error = %e, "answer after the end"),
            Err(UsageError::UnknownTransaction(_)) => {
                debug!(
                    cid,
                    xid, what, "answer to a transaction of an ended session"
                );
            }
            Err(e) => warn!(cid, xid, what, error = %e, "answer refused"),
        }
    }

    /// Whether more output may be queued for the connection: what its machine holds plus
    /// what the transport has not taken yet stays within `transmit_limit`. (The machine
    /// alone is not enough: every flush moves its queue into the link's write buffer.)
    /// A connection found full is remembered, to be pumped again once it has drained.
    fn link_has_room(&mut self, id: ConnId) -> bool {
        use tuppence::Machine;
        let room = self.io.get(id).is_some_and(|c| {
            c.link.unwritten() + c.link.machine().transmit_buffered() <= self.config.transmit_limit
        });
        if !room {
            self.link_full.insert(id);
        }
        room
    }

    fn user_allowed(&self, user: &[u8]) -> bool {
        self.config
            .allow_users
            .as_ref()
            .is_none_or(|list| list.iter().any(|u| u == user))
    }

    /// Who monitors read as: the agent, or (with `--allow-user`) the users commands and
    /// transfers may act as (see [`ReadAs`]).
    fn monitor_readers(&self) -> ReadAs {
        match &self.config.allow_users {
            None => ReadAs::Agent,
            Some(names) => ReadAs::any_of_names(names),
        }
    }

    /// Records a request's outcome: the `agent` trail gets the record and, with `--audit`,
    /// the log gets it as one line. The one place a request's record is made (connections
    /// get trail records of their own, and richer log lines: `connections`). Peer strings
    /// are escaped by the record's format ([`crate::escape`]).
    fn audit(&self, event: &AuditEvent<'_>) {
        if self.config.audit {
            info!("{}", event.text());
        }
        self.trail.push(event);
    }

    /// [`LinkDaemon::audit`] for a request that failed on the agent's side: the error
    /// behind the status goes into the record's one log line (not a line of its own).
    fn audit_failure(&self, event: &AuditEvent<'_>, error: &dyn std::fmt::Display) {
        if self.config.audit {
            info!(error = %Clean(error), "{}", event.text());
        }
        self.trail.push(event);
    }

    // ---- moving data ----

    fn pump(&mut self, id: ConnId, now: Instant) {
        let xids: Vec<u16> = match self.io.get(id) {
            Some(c) => c.state.txs.keys().copied().collect(),
            None => return,
        };
        let mut stdin_backlog = 0usize;
        for xid in xids {
            match self.tx_mut(id, xid) {
                // Most commands of a busy connection wait for their process: skip them
                // without taking them out of the map (that cost two hash operations per
                // command per turn, which with 1000 commands was most of the loop's time).
                Some(Tx::Command(c)) if !c.has_work(now) => stdin_backlog += c.stdin_bytes,
                Some(Tx::Command(_)) => stdin_backlog += self.pump_command(id, xid, now),
                Some(Tx::Extract(..)) => self.pump_extract(id, xid),
                Some(Tx::Monitor(_)) => self.pump_monitor(id, xid, now),
                // Inject data is written as it arrives (`handle_events`).
                Some(Tx::Inject(_)) | None => {}
            }
        }
        let limit = self.config.stdin_limit;
        if let Some(conn) = self.io.get_mut(id) {
            if stdin_backlog > limit {
                conn.link.set_read_paused(true);
            } else if stdin_backlog <= limit / 2 {
                conn.link.set_read_paused(false);
            }
        }
    }
}
