//! `tuppence serve`: one thread, one mio loop, many connections.
//!
//! The loop: wait for readiness or the next deadline → handle ready fds (listeners,
//! child pipes, pidfds, event sources) → drain every connection's [`Server`] events and
//! act on them → move data (child output while the link can take it, stdin while the child
//! takes it, extract reads, monitor lines) → let the driver write → clean up connections
//! that failed. Children are reaped through their pidfds the moment they exit; the status
//! goes out once their output has drained, or at the command's timeout at the latest.

mod accept;
mod config;
mod tx;

pub use config::AgentConfig;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::Interest;
use tracing::{debug, info, warn};
use tuppence::Machine;
use tuppence::link::{Carryover, Limits, Server, ServerConfig, ServerEvent};
use tuppence::wire::{ProcInfoField, field};
use tuppence_mio::{ConnId, Driver, ExtraId, ExtraReady, LinkIo};
use tuppence_transport::{Listener, Transport, TransportKind};

use crate::contain::Containment;
use crate::escape::{Clean, Quoted};
use crate::fdio::{self, ReadOutcome};
use crate::sources::{
    AUDIT_CAPACITY, AuditEvent, AuditOutcome, AuditTrail, CommandEnd, Cut, ReadAs, open_source,
};
use crate::spawn::{
    Child, ExitStatus, SpawnSpec, signal_from_name, spawn_command_nowait_in, tty_eof_sequence,
};
use crate::{ExtractFile, InjectFile, read_procinfo, status};
use tx::{CommandTx, ExtractTx, InjectTx, MonitorTx, OutPipe, Tx};

/// Bytes read from a child pipe per call (a default pipe holds 64 KiB).
const CHUNK: usize = 64 * 1024;
/// Bytes read per call from a file, or from a pipe grown for bulk output.
const BULK_CHUNK: usize = 256 * 1024;
/// A child's stdout/stderr pipe that is found full is grown to this, so the command runs
/// ahead while the loop is busy and each read takes more (fewer wakeups and turns). Only
/// pipes with bulk output are grown: pipe pages count against the user's limit
/// (`/proc/sys/fs/pipe-user-pages-soft`).
const BULK_PIPE: usize = 1024 * 1024;
/// The read buffers are carved into the chunks handed to the link (which keeps them,
/// without copying, until they are written).
const ARENA: usize = 2 * BULK_CHUNK;
/// Read buffers kept for reuse once everything carved from them has been written.
const ARENAS: usize = 3;
/// Inject data is written once per loop turn, or as soon as this much is waiting.
const INJECT_BATCH: usize = 1024 * 1024;
/// Lines taken from an event source per call.
const LINES: usize = 64;

/// Why [`Agent::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// A client sent `q` (and quitting is allowed).
    Quit,
    /// [`StopHandle::stop`] was called.
    Stopped,
    /// `exit_when_idle` and nothing is left to serve.
    Idle,
}

/// Stops a running agent from another thread (e.g. a signal handler thread).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

enum Owner {
    Listener(usize),
    Exit(ConnId, u16),
    Out(ConnId, u16, usize),
    Stdin(ConnId, u16),
    Source(ConnId, u16),
    /// The pidfd of a command killed because its transaction was dropped (see `dying`).
    Dying,
    /// A child exited (`SIGCHLD`): orphans to reap, killed cgroups to remove.
    Reaper,
}

struct ListenerSlot {
    listener: Listener,
    /// Device listeners (serial, virtio): when to try `accept` next, and their one link.
    retry_at: Option<Instant>,
    device_conn: Option<ConnId>,
    /// Device listeners: the port's cid, the same for every session on it (a client that
    /// got its hello reply just before a hang-up goes on with it in the next session).
    cid: Option<u16>,
    /// Device listeners: what the last session, ended by a hang-up, handed over to the
    /// next one (a new client's hello read just before it: see `Server::carryover`).
    carry: Option<Carryover>,
}

struct Conn {
    cid: u16,
    peer: String,
    listener: Option<usize>,
    txs: HashMap<u16, Tx>,
    /// Protocol violations seen; only the first [`LOGGED_VIOLATIONS`] are logged, so a
    /// peer sending garbage cannot flood the agent's log.
    violations: u64,
}

/// Protocol violations logged per connection before the rest are only counted.
const LOGGED_VIOLATIONS: u64 = 10;

/// The agent. Build it, add listeners or connections, then [`Agent::run`].
pub struct Agent {
    config: AgentConfig,
    driver: Driver<Transport, Server>,
    listeners: Vec<ListenerSlot>,
    conns: HashMap<ConnId, Conn>,
    owners: HashMap<ExtraId, Owner>,
    /// Commands killed when their connection went away (or was dropped), reaped as soon as
    /// their pidfd says they are gone, so no zombie is left behind.
    dying: HashMap<ExtraId, Child>,
    trail: AuditTrail,
    next_cid: u16,
    quit: bool,
    stop: Arc<AtomicBool>,
    /// The read buffer in use, and earlier ones waiting for their chunks to be written.
    buf: BytesMut,
    old_bufs: VecDeque<BytesMut>,
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
    /// Refused connections, starved listeners, the reserve fd (see `accept.rs`).
    gate: accept::Gate,
}

impl Agent {
    pub fn new(config: AgentConfig) -> io::Result<Agent> {
        let contain = Containment::new(config.cgroups, config.reap_orphans, "commands")?;
        let mut driver = Driver::new()?;
        let mut owners = HashMap::new();
        if let Some(fd) = contain.fd() {
            owners.insert(driver.add_extra(fd, Interest::READABLE)?, Owner::Reaper);
        }
        Ok(Agent {
            config,
            driver,
            listeners: Vec::new(),
            conns: HashMap::new(),
            owners,
            dying: HashMap::new(),
            trail: AuditTrail::new(AUDIT_CAPACITY),
            next_cid: 1,
            quit: false,
            stop: Arc::new(AtomicBool::new(false)),
            buf: BytesMut::with_capacity(ARENA),
            old_bufs: VecDeque::new(),
            busy: false,
            link_full: HashSet::new(),
            unwritten_injects: Vec::new(),
            unsettled: Vec::new(),
            contain,
            gate: accept::Gate::new(),
        })
    }

    /// How commands are contained, in words: in cgroups, or by process group and why (for
    /// the log line a service prints once it is ready).
    pub fn containment(&self) -> &str {
        self.contain.describe()
    }

    /// The cgroup subtree commands run in, when they run in cgroups (see
    /// [`AgentConfig::cgroups`]).
    pub fn cgroup_tree(&self) -> Option<&std::path::Path> {
        self.contain
            .cgroups
            .as_deref()
            .map(crate::cgroup::CgroupTree::path)
    }

    /// A handle that makes `run` return [`RunEnd::Stopped`].
    pub fn stop_handle(&mut self) -> io::Result<StopHandle> {
        Ok(StopHandle {
            flag: self.stop.clone(),
            waker: self.driver.waker()?,
        })
    }

    /// Serves clients of `listener`. Socket listeners are polled; serial and virtio ports
    /// are opened again (on a timer, without spinning) whenever their client goes away.
    pub fn add_listener(&mut self, listener: Listener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let idx = self.listeners.len();
        let retry_at = match listener.accept_interval() {
            Some(_) => Some(Instant::now()),
            None => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
                let extra = self.driver.add_extra(fd, Interest::READABLE)?;
                self.owners.insert(extra, Owner::Listener(idx));
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

    /// Serves one already-connected transport (e.g. one end of a socket pair).
    pub fn add_connection(&mut self, transport: Transport, peer: &str) -> io::Result<()> {
        self.add_conn(transport, peer.to_owned(), None).map(|_| ())
    }

    /// Serves until a client quits, [`StopHandle::stop`] is called, or (with
    /// `exit_when_idle`) nothing is left. Kills what it started before returning.
    pub fn run(&mut self) -> io::Result<RunEnd> {
        loop {
            let deadline = if self.busy {
                Some(Instant::now())
            } else {
                self.next_deadline()
            };
            self.busy = false;
            let ready = self.driver.wait(deadline)?;
            let now = Instant::now();
            for r in ready {
                self.on_ready(r, now);
            }
            self.accept_devices(now);
            self.gate_turn(now);
            if !self.unsettled.is_empty() {
                self.settle_execs();
            }
            for id in self.driver.ids() {
                self.handle_events(id, now);
            }
            // Records pushed from here on (a command's end, a disconnect) may be after the
            // `agent` monitors were served in this turn: serve them again without waiting.
            let trail_mark = self.trail.end_seq();
            self.link_full.clear();
            for id in self.driver.ids() {
                self.pump(id, now);
            }
            self.driver.flush();
            self.reap_failed(now);
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
            } else if self.stop.load(Ordering::SeqCst) {
                Some(RunEnd::Stopped)
            } else if self.config.exit_when_idle
                && self.listeners.is_empty()
                && self.conns.is_empty()
            {
                Some(RunEnd::Idle)
            } else {
                None
            };
            if let Some(end) = end {
                self.shutdown();
                return Ok(end);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let cmds = self
            .conns
            .values()
            .flat_map(|c| c.txs.values())
            .filter_map(|t| match t {
                Tx::Command(c) => c.deadline,
                Tx::Monitor(m) => m.next_poll,
                _ => None,
            });
        let devices = self.listeners.iter().filter_map(|l| match l.device_conn {
            None => l.retry_at,
            Some(_) => None,
        });
        cmds.chain(devices).chain(self.gate.deadline()).min()
    }

    // ---- connections ----

    fn add_conn(
        &mut self,
        transport: Transport,
        peer: String,
        listener: Option<usize>,
    ) -> io::Result<ConnId> {
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
        let id = self.driver.add(link)?;
        self.trail.push(&AuditEvent::Connect { cid, peer: &peer });
        if self.config.audit {
            info!(cid, peer = %Quoted::str(&peer), transport = kind.as_str(), "client connected");
        }
        self.conns.insert(
            id,
            Conn {
                cid,
                peer,
                listener,
                txs: HashMap::new(),
                violations: 0,
            },
        );
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
                && !self.conns.values().any(|c| c.cid == cid)
                && !self.listeners.iter().any(|l| l.cid == Some(cid))
            {
                return cid;
            }
        }
    }

    /// Serial and virtio ports: (re)open the session when nobody is connected.
    fn accept_devices(&mut self, now: Instant) {
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

    fn reap_failed(&mut self, now: Instant) {
        for (id, mut link, err) in self.driver.take_failed() {
            // What the machine queued last (a refusal, status answers) still goes out.
            let _ = link.flush_now(now);
            // What a device port's next session must read first (its bytes were read
            // here): taken once the last answers are out, before the link is dropped.
            let carry = link.machine().carryover(link.unwritten());
            drop(link);
            // An fd came free: a starved listener is tried again at once.
            self.busy |= self.gate.has_starved();
            if self.gate_closed(id) {
                continue;
            }
            let Some(conn) = self.conns.remove(&id) else {
                continue;
            };
            if self.config.audit {
                info!(cid = conn.cid, peer = %Quoted::str(&conn.peer), reason = %err, "client disconnected");
            }
            if conn.violations > LOGGED_VIOLATIONS {
                warn!(
                    cid = conn.cid,
                    violations = conn.violations,
                    "protocol violations in all"
                );
            }
            self.end_session(conn.cid, conn.txs, Cut::Disconnect);
            if let Some(slot) = conn.listener.and_then(|i| self.listeners.get_mut(i))
                && slot.device_conn == Some(id)
            {
                slot.device_conn = None;
                slot.retry_at = Some(now);
                // What the port's next session must read first (its bytes were read here).
                slot.carry = Some(carry);
            }
        }
    }

    /// A client is gone (disconnected, or replaced on a device link by a new client's
    /// hello), or the agent stops: records how each of its requests was cut off (every
    /// request gets its one outcome record), then kills and reaps its commands, stops its
    /// monitors and removes its partial files.
    fn end_session(&mut self, cid: u16, txs: HashMap<u16, Tx>, cut: Cut) {
        let mut xids: Vec<u16> = txs.keys().copied().collect();
        xids.sort_unstable();
        for xid in xids {
            if let Some(tx) = txs.get(&xid) {
                self.audit_end(cid, xid, tx, AuditOutcome::Cut(cut));
            }
        }
        self.trail.push(&AuditEvent::Disconnect { cid });
        self.drop_txs(txs);
    }

    /// The outcome record of a request that ended with `outcome`. A command's ordinary end
    /// is recorded where its status is sent (`pump_command`); here only its cut-off.
    fn audit_end(&self, cid: u16, xid: u16, tx: &Tx, outcome: AuditOutcome) {
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
                self.audit(&AuditEvent::CommandEnd {
                    cid,
                    xid,
                    pid: c.child.pid(),
                    end,
                    cut: Some(cut),
                });
            }
            Tx::Inject(t) => self.audit(&AuditEvent::Inject {
                cid,
                xid,
                user: &t.user,
                path: &t.path,
                mode: t.file.mode(),
                bytes: t.file.written(),
                outcome,
            }),
            Tx::Extract(t) => self.audit(&AuditEvent::Extract {
                cid,
                xid,
                user: &t.user,
                path: &t.path,
                bytes: t.file.read_so_far(),
                outcome,
            }),
            Tx::Monitor(m) => self.audit(&AuditEvent::Monitor {
                cid,
                xid,
                source: &m.name,
                outcome,
            }),
        }
    }

    /// Records a request's outcome in the trail, and in the log with `--audit`. Peer strings
    /// are escaped by the record's format ([`crate::escape`]).
    fn audit(&self, event: &AuditEvent<'_>) {
        if self.config.audit {
            info!("{}", event.text());
        }
        self.trail.push(event);
    }

    /// Kills and reaps what transactions started, removes partial files.
    fn drop_txs(&mut self, txs: HashMap<u16, Tx>) {
        for (_, tx) in txs {
            self.drop_tx(tx);
        }
    }

    fn drop_tx(&mut self, tx: Tx) {
        match tx {
            Tx::Command(mut c) => {
                let _ = c.child.kill_all();
                for extra in [c.stdin_extra.take()]
                    .into_iter()
                    .flatten()
                    .chain(c.out.iter_mut().filter_map(|o| o.take().map(|o| o.extra)))
                {
                    self.driver.remove_extra(extra);
                    self.owners.remove(&extra);
                }
                let CommandTx {
                    mut child,
                    exit_extra,
                    ..
                } = *c;
                child.close_stdin();
                child.close_stdout();
                child.close_stderr();
                drop(child.take_pty());
                match exit_extra {
                    // Not reaped yet: keep watching the pidfd and reap it when it fires.
                    Some(extra) if matches!(child.try_wait(), Ok(None)) => {
                        self.owners.insert(extra, Owner::Dying);
                        self.dying.insert(extra, child);
                    }
                    other => {
                        if let Some(extra) = other {
                            self.driver.remove_extra(extra);
                            self.owners.remove(&extra);
                        }
                        // Reaped (or unwatchable: then its drop parks it for later).
                        drop(child);
                    }
                }
            }
            Tx::Monitor(m) => {
                if let Some(extra) = m.extra {
                    self.driver.remove_extra(extra);
                    self.owners.remove(&extra);
                }
            }
            // Dropping an unfinished inject removes its temporary file.
            Tx::Inject(..) | Tx::Extract(..) => {}
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                self.end_session(conn.cid, conn.txs, Cut::Shutdown);
            }
            if let Some(mut link) = self.driver.remove(id) {
                let _ = link.flush_blocking(Instant::now(), Duration::from_secs(1));
            }
        }
        // SIGKILL takes a moment: reap the killed commands rather than leave zombies.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.dying.is_empty() && Instant::now() < deadline {
            let Ok(ready) = self.driver.wait(Some(deadline)) else {
                break;
            };
            for r in ready {
                if matches!(self.owners.get(&r.id), Some(Owner::Dying)) {
                    self.on_ready(r, Instant::now());
                }
            }
        }
        // Whatever is still dying is left to `Child`'s drop (reaped at a later spawn).
        for (extra, child) in std::mem::take(&mut self.dying) {
            self.driver.remove_extra(extra);
            self.owners.remove(&extra);
            drop(child);
        }
        // Killed cgroups: wait for them to empty, so none is left behind.
        self.contain.settle(Duration::from_secs(1));
    }

    // ---- readiness ----

    fn on_ready(&mut self, r: ExtraReady, now: Instant) {
        let Some(owner) = self.owners.get(&r.id) else {
            return;
        };
        match *owner {
            Owner::Listener(idx) => self.accept_sockets(idx, now),
            Owner::Exit(id, xid) => {
                if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
                    match c.child.try_wait() {
                        Ok(Some(st)) => c.status = Some(st),
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %e, "waiting for a child failed");
                            c.status = Some(ExitStatus::Signaled(libc::SIGKILL));
                        }
                    }
                    if c.status.is_some()
                        && let Some(extra) = c.exit_extra.take()
                    {
                        self.driver.remove_extra(extra);
                        self.owners.remove(&extra);
                    }
                }
            }
            Owner::Out(id, xid, slot) => {
                if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
                    if let Some(Some(p)) = c.out.get_mut(slot) {
                        p.readable |= r.readable || r.closed;
                    }
                    // The pty master also takes stdin.
                    if c.tty && (r.writable || r.closed) {
                        c.stdin_writable = true;
                    }
                }
            }
            Owner::Stdin(id, xid) => {
                if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
                    c.stdin_writable |= r.writable || r.closed;
                }
            }
            Owner::Source(id, xid) => {
                if let Some(Tx::Monitor(m)) = self.tx_mut(id, xid) {
                    m.readable = true;
                }
            }
            Owner::Reaper => self.contain.on_child_exit(),
            Owner::Dying => {
                let reaped = self
                    .dying
                    .get_mut(&r.id)
                    .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
                if reaped {
                    self.driver.remove_extra(r.id);
                    self.owners.remove(&r.id);
                    self.dying.remove(&r.id);
                }
            }
        }
        let _ = now;
    }

    fn tx_mut(&mut self, id: ConnId, xid: u16) -> Option<&mut Tx> {
        self.conns.get_mut(&id)?.txs.get_mut(&xid)
    }

    fn register(
        &mut self,
        fd: std::os::fd::RawFd,
        interest: Interest,
        owner: Owner,
    ) -> Option<ExtraId> {
        match self.driver.add_extra(fd, interest) {
            Ok(extra) => {
                self.owners.insert(extra, owner);
                Some(extra)
            }
            Err(e) => {
                warn!(error = %e, "cannot watch fd");
                None
            }
        }
    }

    // ---- requests ----

    fn handle_events(&mut self, id: ConnId, now: Instant) {
        let mut events = Vec::new();
        let refusing = self.gate.is_refusing(id);
        if let Some(link) = self.driver.get_mut(id) {
            while let Some(ev) = link.machine_mut().poll_event() {
                if !refusing {
                    events.push(ev);
                }
            }
        }
        for ev in events {
            self.on_event(id, ev, now);
        }
        let unwritten = std::mem::take(&mut self.unwritten_injects);
        for (id, xid) in unwritten {
            self.write_inject(id, xid);
        }
    }

    /// Writes the data an inject has received so far; a failure (a full disk: 28) ends the
    /// transfer, with its record.
    fn write_inject(&mut self, id: ConnId, xid: u16) {
        let failed = match self.tx_mut(id, xid) {
            Some(Tx::Inject(t)) if !t.pending.is_empty() => {
                let r = t.file.write_bufs(&t.pending);
                t.pending.clear();
                t.pending_len = 0;
                r.err().map(|e| e.errno())
            }
            _ => None,
        };
        if let Some(errno) = failed {
            self.finish_tx(id, xid, errno);
            if let Some(server) = self.server(id) {
                let _ = server.inject_done(xid, Err(errno));
            }
        }
    }

    fn server(&mut self, id: ConnId) -> Option<&mut Server> {
        self.driver.get_mut(id).map(|l| l.machine_mut())
    }

    /// Whether more output may be queued for the connection: what its machine holds plus
    /// what the transport has not taken yet stays within `transmit_limit`. (The machine
    /// alone is not enough: every flush moves its queue into the link's write buffer.)
    /// A connection found full is remembered, to be pumped again once it has drained.
    fn link_has_room(&mut self, id: ConnId) -> bool {
        let room = self.driver.get(id).is_some_and(|l| {
            l.unwritten() + l.machine().transmit_buffered() <= self.config.transmit_limit
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

    fn on_event(&mut self, id: ConnId, ev: ServerEvent, now: Instant) {
        let cid = self.conns.get(&id).map_or(0, |c| c.cid);
        match ev {
            ServerEvent::SessionReset { aborted } => {
                // A device link: the previous client vanished without a trace and a new
                // one said hello. Everything still live belonged to the one that left
                // (the machine has already forgotten it); clean up as on a disconnect.
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                let txs = std::mem::take(&mut conn.txs);
                let peer = conn.peer.clone();
                if self.config.audit {
                    info!(cid, peer = %Quoted::str(&peer), transactions = aborted.len(), "session reset: a new client said hello; the previous one is gone");
                }
                self.end_session(cid, txs, Cut::Disconnect);
                self.trail.push(&AuditEvent::Connect { cid, peer: &peer });
            }
            ServerEvent::Hello {
                client_version,
                keepalive,
            } => {
                debug!(cid, ?client_version, keepalive, "hello");
            }
            ServerEvent::RunCommand {
                xid,
                user,
                command,
                timeout,
                tty,
                env,
            } => {
                self.start_command(id, cid, xid, user, command, timeout, tty, env, now);
            }
            ServerEvent::Stdin { xid, data } => {
                if let Some(Tx::Command(c)) = self.tx_mut(id, xid)
                    && !c.stdin_closed
                {
                    if let Some(last) = data.last() {
                        c.at_line_start = *last == b'\n';
                    }
                    c.queue_stdin(data);
                }
            }
            ServerEvent::StdinEnd { xid } => {
                if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
                    if c.tty && !c.stdin_closed {
                        c.queue_stdin(Bytes::from_static(tty_eof_sequence(c.at_line_start)));
                        c.stdin_closed = true;
                    }
                    c.stdin_eof = true;
                }
            }
            ServerEvent::Interrupt { xid, signal } => {
                let status = match signal_from_name(&signal) {
                    None => {
                        warn!(cid, xid, signal = %Quoted(&signal), "unknown signal name; ignored");
                        status::EINVAL
                    }
                    Some(signo) => match self.tx_mut(id, xid) {
                        Some(Tx::Command(c)) => c
                            .child
                            .interrupt(signo)
                            .map_or_else(|e| status::errno_of(&e), |()| 0),
                        _ => status::ESRCH,
                    },
                };
                self.audit(&AuditEvent::Interrupt {
                    cid,
                    xid,
                    signal: &signal,
                    status,
                });
            }
            ServerEvent::Inject {
                xid,
                user,
                path,
                mode,
            } => {
                let result = if self.user_allowed(&user) {
                    InjectFile::create(&user, &path, mode).map_err(|e| e.errno())
                } else {
                    Err(status::EACCES)
                };
                let Some(server) = self.server(id) else {
                    return;
                };
                match result {
                    Ok(file) => {
                        let _ = server.inject_ready(xid);
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.txs.insert(
                                xid,
                                Tx::Inject(Box::new(InjectTx {
                                    file,
                                    user: user.to_vec(),
                                    path: path.to_vec(),
                                    pending: Vec::new(),
                                    pending_len: 0,
                                })),
                            );
                        }
                    }
                    Err(errno) => {
                        let _ = server.fail(xid, errno);
                        self.audit(&AuditEvent::Inject {
                            cid,
                            xid,
                            user: &user,
                            path: &path,
                            mode,
                            bytes: 0,
                            outcome: AuditOutcome::Status(errno),
                        });
                    }
                }
            }
            ServerEvent::InjectData { xid, data } => {
                let full = match self.tx_mut(id, xid) {
                    Some(Tx::Inject(t)) => {
                        t.pending_len += data.len();
                        t.pending.push(data);
                        t.pending_len >= INJECT_BATCH
                    }
                    _ => return,
                };
                if full {
                    self.write_inject(id, xid);
                } else if self.unwritten_injects.last() != Some(&(id, xid)) {
                    self.unwritten_injects.push((id, xid));
                }
            }
            ServerEvent::InjectEnd { xid } => {
                self.write_inject(id, xid);
                if let Some(Tx::Inject(t)) = self.take_tx(id, xid) {
                    let InjectTx {
                        file, user, path, ..
                    } = *t;
                    let mode = file.mode();
                    let written = file.written();
                    let result = file.finish().map_err(|e| e.errno());
                    self.audit(&AuditEvent::Inject {
                        cid,
                        xid,
                        user: &user,
                        path: &path,
                        mode,
                        bytes: written,
                        outcome: AuditOutcome::Status(result.err().unwrap_or(0)),
                    });
                    if let Some(server) = self.server(id) {
                        let _ = server.inject_done(xid, result.map(|_| ()));
                    }
                }
            }
            ServerEvent::Extract { xid, user, path } => {
                let result = if self.user_allowed(&user) {
                    ExtractFile::open(&user, &path).map_err(|e| e.errno())
                } else {
                    Err(status::EACCES)
                };
                match result {
                    Ok(file) => {
                        if let Some(server) = self.server(id) {
                            let _ = server.extract_ready(xid);
                        }
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.txs.insert(
                                xid,
                                Tx::Extract(Box::new(ExtractTx {
                                    file,
                                    user: user.to_vec(),
                                    path: path.to_vec(),
                                })),
                            );
                        }
                    }
                    Err(errno) => {
                        if let Some(server) = self.server(id) {
                            let _ = server.fail(xid, errno);
                        }
                        self.audit(&AuditEvent::Extract {
                            cid,
                            xid,
                            user: &user,
                            path: &path,
                            bytes: 0,
                            outcome: AuditOutcome::Status(errno),
                        });
                    }
                }
            }
            ServerEvent::TransferAborted { xid } => {
                // The machine answers EINTR. Dropping an inject removes its temporary file.
                self.finish_tx(id, xid, status::EINTR);
            }
            ServerEvent::Monitor { xid, source } => {
                match open_source(&source, &self.trail, &self.monitor_readers()) {
                    Ok(src) => {
                        let extra = src
                            .poll_fd()
                            .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd))
                            .and_then(|fd| {
                                self.register(fd, Interest::READABLE, Owner::Source(id, xid))
                            });
                        let next_poll = src.poll_interval().map(|i| now + i);
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.txs.insert(
                                xid,
                                Tx::Monitor(Box::new(MonitorTx {
                                    name: source,
                                    source: src,
                                    extra,
                                    readable: true,
                                    next_poll,
                                    stash: VecDeque::new(),
                                    settles: VecDeque::new(),
                                })),
                            );
                        }
                    }
                    Err(e) => {
                        if let Some(server) = self.server(id) {
                            let _ = server.fail(xid, e.errno());
                        }
                        self.audit(&AuditEvent::Monitor {
                            cid,
                            xid,
                            source: &source,
                            outcome: AuditOutcome::Status(e.errno()),
                        });
                    }
                }
            }
            ServerEvent::Settle { xid, seq } => {
                if let Some(Tx::Monitor(m)) = self.tx_mut(id, xid) {
                    m.settles.push_back(seq);
                    m.readable = true;
                }
            }
            ServerEvent::MonitorEnd { xid } => {
                // The machine answers the end.
                self.finish_tx(id, xid, 0);
            }
            ServerEvent::ProcInfo { xid, mask } => {
                let probe = match self.tx_mut(id, xid) {
                    Some(Tx::Command(c)) if c.status.is_none() => {
                        Some((c.child.pid(), c.child.settle_exec()))
                    }
                    _ => None,
                };
                let fields: Vec<ProcInfoField> = probe
                    .and_then(|(pid, before_exec)| {
                        let mut fields = read_procinfo(pid, mask).ok()?;
                        if before_exec {
                            // Started without waiting and not exec'd yet: its setsid may
                            // still be ahead, so /proc shows the agent's own group. The
                            // command's group is its pid; a client signalling the group
                            // must never reach the agent's.
                            for (kind, value) in &mut fields {
                                if *kind == field::PGID {
                                    *value = pid.to_be_bytes().to_vec();
                                }
                            }
                        }
                        Some(fields)
                    })
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(kind, value)| ProcInfoField {
                        kind,
                        value: value.into(),
                    })
                    .collect();
                if let Some(server) = self.server(id) {
                    let _ = server.procinfo(xid, fields);
                }
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
            ServerEvent::ProtocolViolation(v) => {
                let seen = self.conns.get_mut(&id).map_or(0, |c| {
                    c.violations += 1;
                    c.violations
                });
                if seen <= LOGGED_VIOLATIONS {
                    warn!(cid, "protocol violation: {}", Clean(&v));
                }
                if seen == LOGGED_VIOLATIONS {
                    warn!(
                        cid,
                        "further protocol violations on this connection are counted, not logged"
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_command(
        &mut self,
        id: ConnId,
        cid: u16,
        xid: u16,
        user: Bytes,
        command: Bytes,
        timeout: Duration,
        tty: bool,
        env: Vec<Bytes>,
        now: Instant,
    ) {
        if !self.user_allowed(&user) {
            if let Some(server) = self.server(id) {
                let _ = server.fail(xid, status::EACCES);
            }
            self.audit(&AuditEvent::CommandFailed {
                cid,
                xid,
                user: &user,
                command: &command,
                tty,
                status: status::EACCES,
            });
            return;
        }
        let mut spec = SpawnSpec::new(user.to_vec(), command.to_vec());
        spec.env = env.iter().map(|e| e.to_vec()).collect();
        spec.tty = tty;
        // Without waiting for the child's exec: starting 1000 commands at once, the loop
        // spent most of its time suspended in clone(CLONE_VFORK) while each child set
        // itself up and exec'd. A failure there is reported when the child has exited.
        let mut child = match spawn_command_nowait_in(&spec, self.contain.cgroups.as_ref()) {
            Ok(child) => child,
            Err(e) => {
                let errno = e.errno();
                if self.config.audit {
                    info!(cid, xid, error = %Clean(&e), "command failed to start");
                }
                self.audit(&AuditEvent::CommandFailed {
                    cid,
                    xid,
                    user: &user,
                    command: &command,
                    tty,
                    status: errno,
                });
                if let Some(server) = self.server(id) {
                    let _ = server.fail(xid, errno);
                }
                return;
            }
        };
        let pid = child.pid();
        self.audit(&AuditEvent::CommandStart {
            cid,
            xid,
            pid,
            user: &user,
            command: &command,
            tty,
        });
        use std::os::fd::AsRawFd;
        let exit_extra = self.register(
            child.pidfd().as_raw_fd(),
            Interest::READABLE,
            Owner::Exit(id, xid),
        );
        let mut out: [Option<OutPipe>; 2] = [None, None];
        let mut stdin_extra = None;
        if tty {
            if let Some(fd) = child.stdout_fd().map(|f| f.as_raw_fd()) {
                out[0] = self
                    .register(
                        fd,
                        Interest::READABLE | Interest::WRITABLE,
                        Owner::Out(id, xid, 0),
                    )
                    .map(|extra| OutPipe {
                        extra,
                        readable: true,
                        bulk: false,
                    });
            }
        } else {
            for (slot, fd) in [child.stdout_fd(), child.stderr_fd()]
                .into_iter()
                .enumerate()
            {
                if let Some(fd) = fd.map(|f| f.as_raw_fd()) {
                    out[slot] = self
                        .register(fd, Interest::READABLE, Owner::Out(id, xid, slot))
                        .map(|extra| OutPipe {
                            extra,
                            readable: true,
                            bulk: false,
                        });
                }
            }
            if let Some(fd) = child.stdin_fd().map(|f| f.as_raw_fd()) {
                stdin_extra = self.register(fd, Interest::WRITABLE, Owner::Stdin(id, xid));
            }
        }
        if tty {
            // Nothing else holds the master's other end: without output the pipe slots
            // would stay empty and the status could go out before the output.
            child.close_stderr();
        }
        let tx = CommandTx {
            child,
            tty,
            exit_extra,
            out,
            stdin_extra,
            stdin_writable: true,
            stdin: VecDeque::new(),
            stdin_bytes: 0,
            stdin_eof: false,
            stdin_closed: false,
            at_line_start: true,
            status: None,
            deadline: now.checked_add(timeout),
            timed_out: false,
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.txs.insert(xid, Tx::Command(Box::new(tx)));
        }
        self.unsettled.push((id, xid));
        self.busy = true;
    }

    /// Frees what commands started without waiting needed until their exec.
    fn settle_execs(&mut self) {
        let mut unsettled = std::mem::take(&mut self.unsettled);
        unsettled.retain(|&(id, xid)| {
            match self.conns.get_mut(&id).and_then(|c| c.txs.get_mut(&xid)) {
                Some(Tx::Command(c)) => c.child.settle_exec(),
                _ => false,
            }
        });
        self.unsettled = unsettled;
    }

    fn take_tx(&mut self, id: ConnId, xid: u16) -> Option<Tx> {
        self.conns.get_mut(&id)?.txs.remove(&xid)
    }

    /// Ends a transfer or monitor whose client was sent `status`: its record, then its
    /// resources (an inject's temporary is removed).
    fn finish_tx(&mut self, id: ConnId, xid: u16, status: u32) {
        let cid = self.conns.get(&id).map_or(0, |c| c.cid);
        if let Some(tx) = self.take_tx(id, xid) {
            self.audit_end(cid, xid, &tx, AuditOutcome::Status(status));
            self.drop_tx(tx);
        }
    }

    // ---- moving data ----

    fn pump(&mut self, id: ConnId, now: Instant) {
        let xids: Vec<u16> = match self.conns.get(&id) {
            Some(c) => c.txs.keys().copied().collect(),
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
                _ => {}
            }
        }
        let limit = self.config.stdin_limit;
        if let Some(link) = self.driver.get_mut(id) {
            if stdin_backlog > limit {
                link.set_read_paused(true);
            } else if stdin_backlog <= limit / 2 {
                link.set_read_paused(false);
            }
        }
    }

    /// Returns the command's unwritten stdin bytes.
    fn pump_command(&mut self, id: ConnId, xid: u16, now: Instant) -> usize {
        let Some(Tx::Command(mut c)) = self.take_tx(id, xid) else {
            return 0;
        };
        // Timeout: kill the group; `T` if the shell was still running, else its status.
        if c.deadline.is_some_and(|d| now >= d) {
            c.deadline = None;
            let _ = c.child.kill_all();
            c.timed_out = c.status.is_none();
            for slot in 0..2 {
                self.close_out(&mut c, slot);
            }
        }
        // Output, while the link can take it.
        for slot in 0..2 {
            while let Some(p) = c.out.get(slot).and_then(Option::as_ref) {
                if !p.readable {
                    break;
                }
                if !self.link_has_room(id) {
                    break;
                }
                let fd = match (c.tty, slot) {
                    (_, 0) => c.child.stdout_fd(),
                    _ => c.child.stderr_fd(),
                };
                let Some(fd) = fd else {
                    self.close_out(&mut c, slot);
                    break;
                };
                let bulk = p.bulk;
                let max = if bulk { BULK_CHUNK } else { CHUNK };
                self.arena(max);
                let r = if c.tty {
                    fdio::read_pty_into(fd, &mut self.buf, max)
                } else {
                    fdio::read_into(fd, &mut self.buf, max)
                };
                match r {
                    Ok(ReadOutcome::Data(n)) => {
                        if n == max
                            && !bulk
                            && !c.tty
                            && let Some(Some(p)) = c.out.get_mut(slot)
                        {
                            // The pipe was full: bulk output. Failing to grow it is fine.
                            p.bulk = true;
                            let _ = fdio::set_pipe_size(fd, BULK_PIPE);
                        }
                        let data = self.buf.split().freeze();
                        if let Some(server) = self.server(id) {
                            let _ = server.output(xid, u16::try_from(slot + 1).unwrap_or(1), data);
                        }
                    }
                    Ok(ReadOutcome::WouldBlock) => {
                        if let Some(Some(p)) = c.out.get_mut(slot) {
                            p.readable = false;
                        }
                    }
                    Ok(ReadOutcome::Eof) | Err(_) => {
                        self.buf.clear();
                        self.close_out(&mut c, slot);
                        if let Some(server) = self.server(id) {
                            let _ = server.output_end(xid, u16::try_from(slot + 1).unwrap_or(1));
                        }
                    }
                }
            }
            if c.out
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|p| p.readable)
                && self.link_has_room(id)
            {
                self.busy = true;
            }
        }
        // Stdin, while the child takes it.
        while c.stdin_writable && !c.stdin.is_empty() {
            let fd = c.child.stdin_fd();
            let Some(fd) = fd else {
                c.stdin.clear();
                c.stdin_bytes = 0;
                break;
            };
            let Some(front) = c.stdin.front_mut() else {
                break;
            };
            match fdio::write_some(fd, front) {
                Ok(Some(n)) => c.stdin_written(n),
                Ok(None) => c.stdin_writable = false,
                Err(_) => {
                    // The command closed its stdin (EPIPE): what is left has nowhere to go.
                    c.stdin.clear();
                    c.stdin_bytes = 0;
                    c.stdin_eof = true;
                }
            }
        }
        if c.stdin.is_empty() && c.stdin_eof && !c.tty && c.stdin_extra.is_some() {
            if let Some(extra) = c.stdin_extra.take() {
                self.driver.remove_extra(extra);
                self.owners.remove(&extra);
            }
            c.child.close_stdin();
        }
        // Done: status after output.
        if c.finished() {
            let cid = self.conns.get(&id).map_or(0, |c| c.cid);
            let pid = c.child.pid();
            let end = if let Some(e) = c.child.exec_error() {
                // The child could not become the command (switching user or exec failed).
                let errno = status::errno_of(&e);
                if self.config.audit {
                    info!(cid, xid, pid, error = %Clean(&e), "command failed to start");
                }
                if let Some(server) = self.server(id) {
                    let _ = server.fail(xid, errno);
                }
                CommandEnd::SpawnFailed(errno)
            } else if c.timed_out {
                if let Some(server) = self.server(id) {
                    let _ = server.timed_out(xid);
                }
                CommandEnd::TimedOut
            } else {
                let st = c.status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL));
                if let Some(server) = self.server(id) {
                    let _ = match st {
                        ExitStatus::Exited(code) => {
                            server.command_exited(xid, u32::try_from(code).unwrap_or(0))
                        }
                        ExitStatus::Signaled(sig) => {
                            server.command_killed(xid, u32::try_from(sig).unwrap_or(0))
                        }
                    };
                }
                match st {
                    ExitStatus::Exited(code) => CommandEnd::Exited(code),
                    ExitStatus::Signaled(sig) => CommandEnd::Signaled(sig),
                }
            };
            self.audit(&AuditEvent::CommandEnd {
                cid,
                xid,
                pid,
                end,
                cut: None,
            });
            self.drop_tx(Tx::Command(c));
            self.busy = true;
            return 0;
        }
        let backlog = c.stdin_bytes;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.txs.insert(xid, Tx::Command(c));
        }
        backlog
    }

    /// Room for `want` bytes in the read buffer.
    fn arena(&mut self, want: usize) {
        Self::arena_of(&mut self.buf, &mut self.old_bufs, want);
    }

    /// Room for `want` bytes in `buf`: when the rest is too short, the buffer is set aside
    /// and one whose chunks have all been written is reused (a new one otherwise). Fresh
    /// buffers of this size come from `mmap`: page faults and zeroing, every time.
    fn arena_of(buf: &mut BytesMut, old: &mut VecDeque<BytesMut>, want: usize) {
        if buf.capacity() - buf.len() >= want {
            return;
        }
        let reusable = old.iter_mut().position(|b| b.try_reclaim(ARENA));
        let next = match reusable.and_then(|i| old.remove(i)) {
            Some(b) => b,
            None => BytesMut::with_capacity(ARENA.max(want)),
        };
        let full = std::mem::replace(buf, next);
        if old.len() >= ARENAS {
            old.pop_front();
        }
        old.push_back(full);
    }

    fn close_out(&mut self, c: &mut CommandTx, slot: usize) {
        let Some(p) = c.out.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.driver.remove_extra(p.extra);
        self.owners.remove(&p.extra);
        if c.tty {
            if let Some(extra) = c.stdin_extra.take() {
                self.driver.remove_extra(extra);
                self.owners.remove(&extra);
            }
            drop(c.child.take_pty());
            c.stdin.clear();
            c.stdin_bytes = 0;
        } else if slot == 0 {
            c.child.close_stdout();
        } else {
            c.child.close_stderr();
        }
    }

    /// One chunk per call: many transfers on one link take turns.
    fn pump_extract(&mut self, id: ConnId, xid: u16) {
        if !self.link_has_room(id) {
            return;
        }
        let Some(Tx::Extract(t)) = self.conns.get_mut(&id).and_then(|c| c.txs.get_mut(&xid)) else {
            return;
        };
        Self::arena_of(&mut self.buf, &mut self.old_bufs, BULK_CHUNK);
        let r = t.file.read_chunk(&mut self.buf, BULK_CHUNK);
        let data = self.buf.split().freeze();
        let result = match r {
            Ok(0) => Ok(()),
            Ok(_) => {
                if let Some(server) = self.server(id) {
                    let _ = server.output(xid, 0, data);
                }
                self.busy = true;
                return;
            }
            Err(e) => {
                if self.config.audit {
                    let cid = self.conns.get(&id).map_or(0, |c| c.cid);
                    info!(cid, xid, error = %Clean(&e), "extract failed");
                }
                Err(e.errno())
            }
        };
        self.finish_tx(id, xid, result.err().unwrap_or(0));
        if let Some(server) = self.server(id) {
            let _ = server.extract_done(xid, result);
        }
    }

    fn pump_monitor(&mut self, id: ConnId, xid: u16, now: Instant) {
        let Some(Tx::Monitor(mut m)) = self.take_tx(id, xid) else {
            return;
        };
        let due = m.next_poll.is_some_and(|t| now >= t);
        let trail = m.extra.is_none() && m.next_poll.is_none();
        if due || trail {
            m.readable = true;
        }
        loop {
            // First what was read but not yet sent.
            while let Some(line) = m.stash.front() {
                if !self.link_has_room(id) {
                    break;
                }
                let Some(server) = self.server(id) else { break };
                let _ = server.output(xid, 0, line.clone());
                m.stash.pop_front();
            }
            if !m.stash.is_empty() || !m.readable {
                break;
            }
            let batch = if m.settles.is_empty() {
                m.source.read_new(LINES)
            } else {
                m.source.flush(LINES)
            };
            match batch {
                Ok(batch) => {
                    m.stash.extend(batch.lines);
                    if batch.drained {
                        m.readable = false;
                    }
                }
                Err(e) => {
                    // The source cannot go on (a FIFO swapped in for a followed file, a file
                    // its readers may no longer open...): the monitor ends with the status.
                    let cid = self.conns.get(&id).map_or(0, |c| c.cid);
                    warn!(cid, xid, error = %Clean(&e), "event source failed; monitor ended");
                    let tx = Tx::Monitor(m);
                    self.audit_end(cid, xid, &tx, AuditOutcome::Status(e.errno()));
                    self.drop_tx(tx);
                    if let Some(server) = self.server(id) {
                        let _ = server.fail(xid, e.errno());
                    }
                    return;
                }
            }
        }
        if m.stash.is_empty() && !m.readable {
            while let Some(seq) = m.settles.pop_front() {
                if let Some(server) = self.server(id) {
                    let _ = server.settled(xid, seq);
                }
            }
        } else if self.link_has_room(id) {
            self.busy = true;
        }
        if due {
            m.next_poll = m.source.poll_interval().map(|i| now + i);
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.txs.insert(xid, Tx::Monitor(m));
        }
    }
}
