//! The agent side of sniff over transports: one mio loop, one [`Agent`] per connection, one
//! [`TaskRunner`] for all of them.
//!
//! # One agent per connection
//!
//! [`serve_listener`] gives every accepted connection its own [`Agent`] (from the caller's
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
//! # The loop
//!
//! Wait for readiness or the earliest task deadline → let the runner read output and notice
//! exits → hand finished tasks to their agents → per connection: fire due timeouts, read
//! requests while the agent wants input, start and kill processes as the agent says, move
//! answers to the socket. Bounded everywhere: at most one read chunk is buffered in front of
//! an agent; answers are taken from an agent only while less than [`TX_HIGH`] bytes wait
//! for the socket, so a peer that does not read stops the agent taking requests (its own
//! backpressure) instead of growing a buffer.
//!
//! A request stream that goes out of step (a length prefix over the frame limit) cannot be
//! resynchronised: answers already queued are still sent, then that connection is closed.
//! A short (malformed) message is dropped and logged; the connection goes on.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};
use tuppence::Machine;
use tuppence::sniff::{Action, Agent, AgentStats, DecodeError, TaskHandle};
use tuppence_transport::{Listener, Transport};

use super::runner::{RunnerConfig, TaskRunner};
use crate::admission::{
    ACCEPT_RETRY, REFUSE_AFTER, Reserve, Starved, Throttle, is_exhaustion, is_fd_limit,
};
use crate::escape::Quoted;
use crate::fdio::{self, ReadOutcome};

/// Bytes read from a connection per call, and so the most buffered in front of an agent.
const CHUNK: usize = 64 * 1024;

/// Answers are taken from an agent only while fewer bytes than this wait for the socket.
pub const TX_HIGH: usize = 256 * 1024;

/// Reads per connection per turn, so one client sending without pause cannot starve the
/// others (the loop comes back at once to a connection that still has input).
const READS_PER_TURN: usize = 16;

const RUNNER: Token = Token(0);
const LISTENER: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// How the agent side serves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// How task processes are started.
    pub runner: RunnerConfig,
    /// Connections a [`ListenServer`] serves at once; more are accepted and closed at once
    /// (logged at most once per 10 s, with a count), so a client sees EOF instead of
    /// waiting. Default 64. (The sniff protocol has no message for a refusal.)
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
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

/// Stops a [`ListenServer`] from another thread; running tasks are killed and reaped.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "waking the sniff server");
        }
    }
}

/// How a connection ended.
enum End {
    Closed,
    Io(io::Error),
    Framing(DecodeError),
}

struct Conn {
    transport: Transport,
    agent: Agent,
    peer: String,
    /// Received bytes the agent has not taken yet (at most one chunk).
    rx: BytesMut,
    /// Framed answers not yet written (below `TX_HIGH` plus one answer).
    tx: BytesMut,
    readable: bool,
    writable: bool,
    /// No more reading: EOF, or the stream went out of step.
    read_closed: bool,
    framing: Option<DecodeError>,
    io_error: Option<io::Error>,
}

type Key = (u64, TaskHandle);

impl Conn {
    fn new(transport: Transport, agent: Agent, peer: String) -> Conn {
        Conn {
            transport,
            agent,
            peer,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            readable: true,
            writable: true,
            read_closed: false,
            framing: None,
            io_error: None,
        }
    }

    /// Whether the connection is over, and how.
    fn end(&mut self) -> Option<End> {
        if let Some(e) = self.io_error.take() {
            return Some(End::Io(e));
        }
        let drained = self.tx.is_empty() && self.agent.queued_bytes() == 0;
        if self.read_closed && drained {
            return Some(match self.framing.take() {
                Some(e) => End::Framing(e),
                None => End::Closed,
            });
        }
        None
    }

    /// Whether input may be waiting that no readiness event will announce again (the turn
    /// stopped reading at its budget).
    fn has_more(&self) -> bool {
        self.readable && !self.read_closed && self.rx.is_empty() && self.io_error.is_none()
    }

    /// Does everything that can be done now without waiting (reading at most
    /// [`READS_PER_TURN`] chunks).
    fn turn(&mut self, cid: u64, now: Instant, runner: &mut TaskRunner<Key>) {
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        let mut reads = 0usize;
        loop {
            let mut progress = self.apply_actions(cid, now, runner);
            progress |= self.flush();
            if self.io_error.is_some() {
                return;
            }
            if !self.rx.is_empty() {
                match self.agent.handle_bytes(now, &self.rx) {
                    Ok(n) => {
                        self.rx.advance(n);
                        progress |= n > 0;
                    }
                    Err(e) => {
                        warn!(peer = %Quoted::str(&self.peer), error = %e, "sniff request stream out of step; closing after the queued answers");
                        self.framing = Some(e);
                        self.read_closed = true;
                        self.rx.clear();
                        progress = true;
                    }
                }
                while let Some(e) = self.agent.poll_error() {
                    warn!(peer = %Quoted::str(&self.peer), error = %e, "malformed sniff request dropped");
                }
            } else if self.readable && !self.read_closed && reads < READS_PER_TURN {
                reads += 1;
                progress |= self.read();
            }
            if !progress {
                return;
            }
        }
    }

    fn read(&mut self) -> bool {
        match fdio::read_from(&self.transport, &mut self.rx, CHUNK) {
            Ok(ReadOutcome::Data(_)) => true,
            Ok(ReadOutcome::Eof) => {
                debug!(peer = %Quoted::str(&self.peer), "sniff peer closed the stream");
                self.read_closed = true;
                true
            }
            Ok(ReadOutcome::WouldBlock) => {
                self.readable = false;
                false
            }
            Err(e) => {
                self.io_error = Some(e);
                true
            }
        }
    }

    fn apply_actions(&mut self, cid: u64, now: Instant, runner: &mut TaskRunner<Key>) -> bool {
        let mut any = false;
        while let Some(action) = self.agent.poll_action() {
            any = true;
            match action {
                Action::Start { handle, spec } => {
                    if let Err(e) = runner.start((cid, handle), &spec) {
                        warn!(peer = %Quoted::str(&self.peer), id = %handle.id, error = %e, "starting a sniff task");
                        self.agent.task_finished(now, handle, e.output());
                    }
                }
                Action::Abort { handle } => {
                    runner.abort((cid, handle));
                }
            }
        }
        any
    }

    /// Moves answers to the socket while it takes them. Returns whether anything moved.
    fn flush(&mut self) -> bool {
        let mut progress = false;
        loop {
            while self.tx.len() < TX_HIGH {
                let Some(a) = self.agent.poll_answer() else {
                    break;
                };
                // The agent only queues answers that fit its frame limit (≤ u32::MAX).
                let Ok(len) = u32::try_from(a.encoded_len()) else {
                    warn!(peer = %Quoted::str(&self.peer), id = %a.id, "answer too long to frame; dropped");
                    continue;
                };
                self.tx.put_u32(len);
                a.encode(&mut self.tx);
                progress = true;
            }
            if self.tx.is_empty() || !self.writable {
                return progress;
            }
            match (&self.transport).write(&self.tx) {
                Ok(0) => {
                    self.io_error = Some(io::ErrorKind::WriteZero.into());
                    return true;
                }
                Ok(n) => {
                    self.tx.advance(n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return progress;
                }
                Err(e) => {
                    self.io_error = Some(e);
                    return true;
                }
            }
        }
    }
}

/// The loop shared by [`serve`] and [`ListenServer`].
struct Engine {
    poll: Poll,
    events: Events,
    runner: TaskRunner<Key>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Set by a [`StopHandle`]; the loops check it after every wake-up.
    stop: Arc<AtomicBool>,
    waker: Option<Arc<Waker>>,
}

impl Engine {
    fn new(config: &ServeConfig) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let runner = TaskRunner::new(config.runner.clone())?;
        poll.registry().register(
            &mut SourceFd(&runner.as_raw_fd()),
            RUNNER,
            Interest::READABLE,
        )?;
        Ok(Engine {
            poll,
            events: Events::with_capacity(256),
            runner,
            conns: BTreeMap::new(),
            next_conn: 0,
            stop: Arc::new(AtomicBool::new(false)),
            waker: None,
        })
    }

    /// A handle that makes the loop return (its waker is registered once).
    fn stop_handle(&mut self) -> io::Result<StopHandle> {
        let waker = match &self.waker {
            Some(w) => w.clone(),
            None => {
                let w = Arc::new(Waker::new(self.poll.registry(), WAKER)?);
                self.waker = Some(w.clone());
                w
            }
        };
        Ok(StopHandle {
            flag: self.stop.clone(),
            waker,
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn add(&mut self, transport: Transport, agent: Agent, peer: String) -> io::Result<u64> {
        transport.set_nonblocking(true)?;
        let cid = self.next_conn;
        self.next_conn = self.next_conn.wrapping_add(1);
        let token = conn_token(cid)?;
        self.poll.registry().register(
            &mut SourceFd(&transport.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.insert(cid, Conn::new(transport, agent, peer));
        Ok(cid)
    }

    /// Waits for readiness or `deadline` (or the earliest task deadline), then records it.
    /// Returns the tokens that are not connections.
    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<Vec<Token>> {
        let now = Instant::now();
        let next = self
            .conns
            .values()
            .filter_map(|c| c.agent.poll_timeout())
            .chain(deadline)
            .min();
        let timeout = if self.conns.values().any(Conn::has_more) {
            Some(Duration::ZERO)
        } else {
            next.map(|t| t.saturating_duration_since(now))
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut other = Vec::new();
        for ev in self.events.iter() {
            let Token(t) = ev.token();
            let cid = t
                .checked_sub(FIRST_CONN)
                .and_then(|c| u64::try_from(c).ok());
            match cid.and_then(|c| self.conns.get_mut(&c)) {
                Some(c) => {
                    let broken = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
                    c.readable |= ev.is_readable() || broken;
                    c.writable |= ev.is_writable() || broken;
                }
                None => other.push(ev.token()),
            }
        }
        Ok(other)
    }

    /// Runs tasks and connections as far as they go; returns the connections that ended.
    fn step(&mut self) -> Vec<(u64, String, AgentStats, End)> {
        if let Err(e) = self.runner.process() {
            warn!(error = %e, "polling sniff tasks");
        }
        let now = Instant::now();
        while let Some(((cid, handle), output)) = self.runner.poll_finished() {
            if let Some(c) = self.conns.get_mut(&cid) {
                c.agent.task_finished(now, handle, output);
            }
        }
        let mut ended = Vec::new();
        for (&cid, c) in &mut self.conns {
            c.turn(cid, now, &mut self.runner);
            if let Some(end) = c.end() {
                ended.push((cid, end));
            }
        }
        ended
            .into_iter()
            .filter_map(|(cid, end)| {
                let c = self.conns.remove(&cid)?;
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&c.transport.as_raw_fd()));
                let killed = self.runner.abort_where(|k| k.0 == cid);
                if killed > 0 {
                    debug!(peer = %Quoted::str(&c.peer), killed, "tasks of a closed sniff connection killed");
                }
                Some((cid, c.peer, c.agent.stats(), end))
            })
            .collect()
    }
}

fn conn_token(cid: u64) -> io::Result<Token> {
    usize::try_from(cid)
        .ok()
        .and_then(|c| c.checked_add(FIRST_CONN))
        .map(Token)
        .ok_or_else(|| io::Error::other("connection numbers exhausted"))
}

/// Serves one connected stream with `agent` until the peer closes it, then kills what is
/// still running (waiting up to a second for the processes to be reaped). Returns the
/// agent's counters.
///
/// For an agent that dials out (`sniff serve --connect`), or any already-open transport.
pub fn serve(
    agent: Agent,
    transport: Transport,
    config: &ServeConfig,
) -> Result<AgentStats, ServeError> {
    serve_until(agent, transport, config, |_| {})
}

/// [`serve`], also ending (as if the peer had closed) when the [`StopHandle`] handed to
/// `stopper` before serving starts is used, e.g. from a SIGTERM handler: the tasks are
/// killed and reaped rather than left running when the process is told to go.
pub fn serve_until(
    agent: Agent,
    transport: Transport,
    config: &ServeConfig,
    stopper: impl FnOnce(StopHandle),
) -> Result<AgentStats, ServeError> {
    let mut engine = Engine::new(config).map_err(ServeError::Poll)?;
    stopper(engine.stop_handle().map_err(ServeError::Poll)?);
    let id = engine
        .add(transport, agent, "peer".to_owned())
        .map_err(ServeError::Io)?;
    let result = loop {
        if let Err(e) = engine.wait(None) {
            break Err(ServeError::Poll(e));
        }
        if engine.stopped() {
            let stats = engine.conns.get(&id).map(|c| c.agent.stats());
            break Ok(stats.unwrap_or_default());
        }
        if let Some((_, _, stats, end)) = engine.step().pop() {
            break match end {
                End::Closed => Ok(stats),
                End::Io(e) => Err(ServeError::Io(e)),
                End::Framing(e) => Err(ServeError::Framing(e)),
            };
        }
    };
    engine.runner.shutdown(Duration::from_secs(1));
    result
}

/// Serves every connection a listener accepts, each with a fresh agent from `new_agent`
/// (module docs: one agent per connection), in one thread, until stopped.
pub struct ListenServer<F> {
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

impl<F: FnMut() -> Agent> ListenServer<F> {
    pub fn new(listener: Listener, new_agent: F, config: &ServeConfig) -> io::Result<Self> {
        let engine = Engine::new(config)?;
        listener.set_nonblocking(true)?;
        let accept_at = match listener.accept_interval() {
            Some(_) => Some(Instant::now()),
            None => {
                engine.poll.registry().register(
                    &mut SourceFd(&listener.as_raw_fd()),
                    LISTENER,
                    Interest::READABLE,
                )?;
                None
            }
        };
        Ok(ListenServer {
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
        self.engine.conns.len()
    }

    /// A handle that makes [`ListenServer::run`] return.
    pub fn stop_handle(&mut self) -> io::Result<StopHandle> {
        self.engine.stop_handle()
    }

    /// Serves until [`StopHandle::stop`]; then kills every task and waits up to a second for
    /// them to be reaped. A failing connection is logged and closed; only a failing event
    /// loop ends `run` with an error.
    pub fn run(&mut self) -> Result<(), ServeError> {
        let result = self.serve_until_stopped();
        self.engine.conns.clear();
        self.engine.runner.shutdown(Duration::from_secs(1));
        result
    }

    fn serve_until_stopped(&mut self) -> Result<(), ServeError> {
        while !self.engine.stopped() {
            let ready = self.engine.wait(self.accept_at).map_err(ServeError::Poll)?;
            let due = self.accept_at.is_some_and(|at| at <= Instant::now());
            if ready.contains(&LISTENER) || due {
                self.accept_at = self
                    .listener
                    .accept_interval()
                    .map(|every| Instant::now() + every);
                self.accept();
            }
            let ended = self.engine.step();
            let freed = !ended.is_empty();
            for (_, peer, stats, end) in ended {
                match end {
                    End::Closed => {
                        info!(peer = %Quoted::str(&peer), ?stats, "sniff connection closed")
                    }
                    End::Io(e) => {
                        warn!(peer = %Quoted::str(&peer), error = %e, "sniff connection failed")
                    }
                    End::Framing(e) => {
                        warn!(peer = %Quoted::str(&peer), error = %e, "sniff connection out of step")
                    }
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
            if self.engine.conns.len() >= self.max_connections {
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

/// Serves a listener forever: [`ListenServer::new`] + [`ListenServer::run`].
pub fn serve_listener<F: FnMut() -> Agent>(
    listener: Listener,
    new_agent: F,
    config: &ServeConfig,
) -> Result<(), ServeError> {
    serve_listener_until(listener, new_agent, config, |_| {})
}

/// [`serve_listener`] until the [`StopHandle`] handed to `stopper` before serving starts is
/// used (e.g. from a SIGTERM handler). Then every task is killed and reaped, and the
/// listener is dropped, which removes a unix socket's file.
pub fn serve_listener_until<F: FnMut() -> Agent>(
    listener: Listener,
    new_agent: F,
    config: &ServeConfig,
    stopper: impl FnOnce(StopHandle),
) -> Result<(), ServeError> {
    let mut server = ListenServer::new(listener, new_agent, config).map_err(ServeError::Poll)?;
    stopper(server.stop_handle().map_err(ServeError::Poll)?);
    server.run()
}
