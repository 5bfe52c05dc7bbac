//! The agent side of sniff over transports: the policy of the sniff daemon, on the same
//! event loop as the link daemon ([`tuppence_mio::EventLoop`], driving each connection's
//! [`Agent`] machine through the core's `Machine` surface), with one [`TaskRunner`] for
//! all connections.
//!
//! # One agent per connection
//!
//! [`SniffDaemon`] gives every accepted connection its own [`Agent`] (from the caller's
//! factory), and a connection's tasks live exactly as long as the connection: when it ends,
//! its running tasks are killed. Why not one agent shared by all connections, as the C
//! plugin had one task table for its single uplink?
//!
//! * Task ids are chosen by each client (`sniff request --id 1` in two shells). In a shared
//!   table the second client's request would abort the first one's task (`A`), and its
//!   answers would go to whoever asked last.
//! * A task's answer can only be understood by the requester that asked (answers are not
//!   self-describing; a ping answer needs the request's counts). Delivering it on another
//!   connection, as the C plugin did after a reconnect, gives the new peer an answer it
//!   reports as unsolicited at best.
//! * Killing the tasks of a closed connection means a client that gives up (a timeout, ^C)
//!   leaves no process running for nobody.
//!
//! So a client keeps its connection open until it has its answers. A device listener
//! (serial, virtio) carries one connection at a time; each new connection starts afresh.
//!
//! # The policy
//!
//! The loop reads requests while each agent wants input, fires the agents' timeouts, and
//! writes their answers (taking them from an agent only while less than the loop's high
//! water waits for the socket, so a peer that does not read stops its agent taking
//! requests: the agent's own backpressure). What is left here: start and kill processes as
//! each agent says ([`Action`]), hand finished tasks to their agents, accept connections,
//! and close one when it ends — after its queued answers are written ([`LINGER`] at most),
//! killing its tasks that still run.
//!
//! A request stream that goes out of step (a length prefix over the frame limit) cannot be
//! resynchronised: answers already queued are still sent, then that connection is closed.
//! A short (malformed) message is dropped and logged; the connection goes on.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::Interest;
use tracing::{debug, info, warn};
use tuppence::sniff::{Action, Agent, AgentStats, DecodeError, TaskHandle};
use tuppence_mio::{ConnId, EventLoop, LinkIo, LinkIoError};
use tuppence_transport::{Listener, Transport};

use super::runner::{RunnerConfig, TaskRunner};
use crate::admission::{
    ACCEPT_RETRY, REFUSE_AFTER, Reserve, Starved, Throttle, is_exhaustion, is_fd_limit,
};
use crate::escape::Quoted;

pub use tuppence_mio::StopHandle;

/// How long a connection that ended (the requester closed its side, or its stream went out
/// of step) may take to read the answers already queued for it.
pub const LINGER: Duration = Duration::from_secs(10);

/// How the sniff daemon serves.
#[derive(Clone, Debug)]
pub struct SniffDaemonConfig {
    /// How task processes are started.
    pub runner: RunnerConfig,
    /// Connections a [`SniffDaemon`] serves at once; more are accepted and closed at once
    /// (logged at most once per 10 s, with a count), so a client sees EOF instead of
    /// waiting. Default 64. (The sniff protocol has no message for a refusal.)
    pub max_connections: usize,
}

impl Default for SniffDaemonConfig {
    fn default() -> Self {
        SniffDaemonConfig {
            runner: RunnerConfig::default(),
            max_connections: 64,
        }
    }
}

/// Why serving stopped other than by the peer closing the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Setting up or waiting on the event loop failed.
    #[error("event loop: {0}")]
    Poll(#[source] io::Error),
    /// Reading or writing the transport failed.
    #[error("transport: {0}")]
    Io(#[source] io::Error),
    /// The peer sent a length prefix over the frame limit; the stream cannot go on. Answers
    /// queued before were sent.
    #[error("request stream out of step: {0}")]
    Framing(#[source] DecodeError),
}

/// Why a connection ended, as [`serve`] reports it: `None` when the peer closed it.
fn serve_error(e: LinkIoError<DecodeError>) -> Option<ServeError> {
    match e {
        LinkIoError::Closed => None,
        LinkIoError::Link(e) => Some(ServeError::Framing(e)),
        LinkIoError::Io(e) => Some(ServeError::Io(e)),
    }
}

/// What the daemon keeps for one connection (its agent is in the loop beside it).
struct SniffConn {
    peer: String,
    /// Unique for the daemon's life: a slot of the loop is reused, a serial never, so a
    /// completion of a task of a closed connection cannot reach a new one.
    serial: u64,
}

/// What an extra fd of the loop is.
#[derive(Clone, Copy, Debug)]
enum Tag {
    /// The runner's own poll: task output or exits.
    Runner,
    Listener,
}

/// A task as the runner knows it: its connection and its run.
type Key = (ConnId, u64, TaskHandle);

/// A connection that ended, with its agent's counters and why.
struct Closed {
    peer: String,
    stats: AgentStats,
    error: Option<ServeError>,
}

/// The loop both entry points ([`serve`] and [`SniffDaemon`]) share.
struct Engine {
    io: EventLoop<Transport, Agent, SniffConn, Tag>,
    runner: TaskRunner<Key>,
    next_serial: u64,
}

impl Engine {
    fn new(config: &SniffDaemonConfig) -> io::Result<Engine> {
        let mut io = EventLoop::new()?;
        io.set_linger(LINGER);
        let runner = TaskRunner::new(config.runner.clone())?;
        io.add_extra(runner.as_raw_fd(), Interest::READABLE, Tag::Runner)?;
        Ok(Engine {
            io,
            runner,
            next_serial: 0,
        })
    }

    fn add(&mut self, transport: Transport, agent: Agent, peer: String) -> io::Result<ConnId> {
        transport.set_nonblocking(true)?;
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        self.io
            .add(LinkIo::new(transport, agent), SniffConn { peer, serial })
    }

    /// One turn: waits (for readiness, the agents' deadlines or `deadline`), runs the
    /// tasks and the agents as far as they go, writes, and returns whether the listener is
    /// ready and the connections that ended.
    fn turn(&mut self, deadline: Option<Instant>) -> io::Result<(bool, Vec<Closed>)> {
        let ready = self.io.wait(deadline)?;
        let listener = ready.iter().any(|r| matches!(r.tag, Tag::Listener));
        if let Err(e) = self.runner.process() {
            warn!(error = %e, "polling sniff tasks");
        }
        let now = Instant::now();
        while let Some(((id, serial, handle), output)) = self.runner.poll_finished() {
            if let Some(conn) = self.io.get_mut(id)
                && conn.state.serial == serial
            {
                conn.link.machine_mut().task_finished(now, handle, output);
            }
        }
        for id in self.io.ids() {
            self.apply(id, now);
        }
        self.io.flush();
        let closed = self
            .io
            .take_ended()
            .into_iter()
            .map(|ended| {
                let (id, state) = (ended.id, ended.conn.state);
                let killed = self
                    .runner
                    .abort_where(|k| k.0 == id && k.1 == state.serial);
                if killed > 0 {
                    debug!(peer = %Quoted::str(&state.peer), killed, "tasks of a closed sniff connection killed");
                }
                Closed {
                    stats: ended.conn.link.machine().stats(),
                    peer: state.peer,
                    error: serve_error(ended.error),
                }
            })
            .collect();
        Ok((listener, closed))
    }

    /// Does what a connection's agent asks: starts and kills processes; logs the malformed
    /// requests it dropped.
    fn apply(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.io.get_mut(id) else {
            return;
        };
        let (peer, serial) = (&conn.state.peer, conn.state.serial);
        let agent = conn.link.machine_mut();
        while let Some(e) = agent.poll_error() {
            warn!(peer = %Quoted::str(peer), error = %e, "malformed sniff request dropped");
        }
        while let Some(action) = agent.poll_action() {
            match action {
                Action::Start { handle, spec } => {
                    if let Err(e) = self.runner.start((id, serial, handle), &spec) {
                        warn!(peer = %Quoted::str(peer), id = %handle.id, error = %e, "starting a sniff task");
                        agent.task_finished(now, handle, e.output());
                    }
                }
                Action::Abort { handle } => {
                    self.runner.abort((id, serial, handle));
                }
            }
        }
    }
}

/// Serves one connected stream with `agent` until the peer closes it, then kills what is
/// still running (waiting up to a second for the processes to be reaped). Returns the
/// agent's counters.
///
/// For an agent that dials out (`sniff serve --connect`), or any already-open transport.
pub fn serve(
    agent: Agent,
    transport: Transport,
    config: &SniffDaemonConfig,
) -> Result<AgentStats, ServeError> {
    serve_until(agent, transport, config, |_| {})
}

/// [`serve`], also ending (as if the peer had closed) when the [`StopHandle`] handed to
/// `stopper` before serving starts is used, e.g. from a SIGTERM handler: the tasks are
/// killed and reaped rather than left running when the process is told to go.
pub fn serve_until(
    agent: Agent,
    transport: Transport,
    config: &SniffDaemonConfig,
    stopper: impl FnOnce(StopHandle),
) -> Result<AgentStats, ServeError> {
    let mut engine = Engine::new(config).map_err(ServeError::Poll)?;
    stopper(engine.io.stop_handle().map_err(ServeError::Poll)?);
    let id = engine
        .add(transport, agent, "peer".to_owned())
        .map_err(ServeError::Io)?;
    let result = loop {
        let closed = match engine.turn(None) {
            Ok((_, closed)) => closed,
            Err(e) => break Err(ServeError::Poll(e)),
        };
        if engine.io.stopped() {
            let stats = engine.io.get(id).map(|c| c.link.machine().stats());
            break Ok(stats.unwrap_or_default());
        }
        if let Some(c) = closed.into_iter().next() {
            break match c.error {
                None => Ok(c.stats),
                Some(e) => Err(e),
            };
        }
    };
    engine.runner.shutdown(Duration::from_secs(1));
    result
}

/// Serves every connection a listener accepts, each with a fresh agent from `new_agent`
/// (module docs: one agent per connection), in one thread, until stopped.
pub struct SniffDaemon<F> {
    engine: Engine,
    listener: Listener,
    new_agent: F,
    max_connections: usize,
    /// When to try `accept` next: device listeners poll on a timer, socket listeners only
    /// after an accept error.
    accept_at: Option<Instant>,
    /// Since when `accept` runs out of fds (see [`crate::admission`]).
    starved: Option<Starved>,
    /// Given up to close a waiting client when fds ran out for too long.
    reserve: Reserve,
    refusals: Throttle,
}

impl<F: FnMut() -> Agent> SniffDaemon<F> {
    pub fn new(listener: Listener, new_agent: F, config: &SniffDaemonConfig) -> io::Result<Self> {
        let mut engine = Engine::new(config)?;
        listener.set_nonblocking(true)?;
        let accept_at = match listener.accept_interval() {
            Some(_) => Some(Instant::now()),
            None => {
                engine
                    .io
                    .add_extra(listener.as_raw_fd(), Interest::READABLE, Tag::Listener)?;
                None
            }
        };
        Ok(SniffDaemon {
            engine,
            listener,
            new_agent,
            max_connections: config.max_connections,
            accept_at,
            starved: None,
            reserve: Reserve::new(),
            refusals: Throttle::default(),
        })
    }

    /// The listener (e.g. for its [`Listener::local_endpoint`]).
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Connections being served.
    pub fn connections(&self) -> usize {
        self.engine.io.len()
    }

    /// A handle that makes [`SniffDaemon::run`] return.
    pub fn stop_handle(&mut self) -> io::Result<StopHandle> {
        self.engine.io.stop_handle()
    }

    /// Serves until [`StopHandle::stop`]; then kills every task and waits up to a second for
    /// them to be reaped. A failing connection is logged and closed; only a failing event
    /// loop ends `run` with an error.
    pub fn run(&mut self) -> Result<(), ServeError> {
        let result = self.serve_until_stopped();
        for id in self.engine.io.ids() {
            drop(self.engine.io.remove(id));
        }
        self.engine.runner.shutdown(Duration::from_secs(1));
        result
    }

    fn serve_until_stopped(&mut self) -> Result<(), ServeError> {
        while !self.engine.io.stopped() {
            let (ready, closed) = self.engine.turn(self.accept_at).map_err(ServeError::Poll)?;
            let due = self.accept_at.is_some_and(|at| at <= Instant::now());
            if ready || due {
                self.accept_at = self
                    .listener
                    .accept_interval()
                    .map(|every| Instant::now() + every);
                self.accept();
            }
            let freed = !closed.is_empty();
            for c in closed {
                let peer = Quoted::str(&c.peer);
                match c.error {
                    None => info!(%peer, stats = ?c.stats, "sniff connection closed"),
                    Some(ServeError::Framing(e)) => {
                        warn!(%peer, error = %e, "sniff connection out of step")
                    }
                    Some(e) => warn!(%peer, error = %e, "sniff connection failed"),
                }
            }
            // Closed connections freed fds: a starved listener is tried again at once.
            if freed && self.starved.is_some() {
                self.accept();
            }
        }
        Ok(())
    }

    /// Accepts every waiting client (sockets) or tries the device once.
    fn accept(&mut self) {
        loop {
            let now = Instant::now();
            let (transport, peer) = match self.listener.accept() {
                Ok(x) => {
                    self.starved = None;
                    x
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::ResourceBusy
                            | io::ErrorKind::NotConnected
                    ) =>
                {
                    self.starved = None;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The client stays in the backlog: retry soon (an edge-triggered
                    // listener would not report it again), and after a while close it
                    // rather than leave it waiting (see `crate::admission`).
                    let retry = now + ACCEPT_RETRY;
                    self.accept_at = Some(self.accept_at.map_or(retry, |at| at.min(retry)));
                    if let Some(held) = self.refusals.allow(now) {
                        warn!(error = %e, held_back = held, "accepting a sniff connection");
                    }
                    let starved = *self.starved.get_or_insert_with(|| Starved::new(now));
                    if is_exhaustion(&e)
                        && is_fd_limit(&e)
                        && starved.refuse_now(now, REFUSE_AFTER)
                        && self.reserve.release()
                    {
                        // Closed at once: the client sees EOF instead of waiting.
                        let closed = self.listener.accept().is_ok();
                        self.reserve.restore();
                        if closed {
                            continue;
                        }
                    }
                    return;
                }
            };
            let peer = peer.to_string();
            if self.engine.io.len() >= self.max_connections {
                if let Some(held) = self.refusals.allow(now) {
                    warn!(peer = %Quoted::str(&peer), max = self.max_connections, held_back = held, "too many sniff connections; closing");
                }
                continue;
            }
            let agent = (self.new_agent)();
            match self.engine.add(transport, agent, peer.clone()) {
                Ok(_) => info!(peer = %Quoted::str(&peer), "sniff connection"),
                Err(e) => {
                    warn!(peer = %Quoted::str(&peer), error = %e, "serving a sniff connection")
                }
            }
            if self.listener.accept_interval().is_some() {
                return;
            }
        }
    }
}

/// Serves a listener forever: [`SniffDaemon::new`] + [`SniffDaemon::run`].
pub fn serve_listener<F: FnMut() -> Agent>(
    listener: Listener,
    new_agent: F,
    config: &SniffDaemonConfig,
) -> Result<(), ServeError> {
    serve_listener_until(listener, new_agent, config, |_| {})
}

/// [`serve_listener`] until the [`StopHandle`] handed to `stopper` before serving starts is
/// used (e.g. from a SIGTERM handler). Then every task is killed and reaped, and the
/// listener is dropped, which removes a unix socket's file.
pub fn serve_listener_until<F: FnMut() -> Agent>(
    listener: Listener,
    new_agent: F,
    config: &SniffDaemonConfig,
    stopper: impl FnOnce(StopHandle),
) -> Result<(), ServeError> {
    let mut daemon = SniffDaemon::new(listener, new_agent, config).map_err(ServeError::Poll)?;
    stopper(daemon.stop_handle().map_err(ServeError::Poll)?);
    daemon.run()
}
