//! The async server (agent-side) driver: [`serve`] runs one connection, handing the
//! requests of the `Server` machine to an [`App`] that answers through a [`Responder`].
//!
//! Two halves run inside the one future `serve` returns: the pump (transport ⇄ machine,
//! timers) and the dispatcher (machine events → `App::handle`, one at a time). They are
//! separate so that an `App` awaiting transmit room in [`Responder::output`] does not stop
//! the pump from writing — which is what makes that room appear.

use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, future};
use tuppence::link::{LinkError, Server, ServerConfig, ServerEvent};
use tuppence::wire::{Dialect, ProcInfoField};

use crate::Error;
use crate::client::SEND_PIECE;
use crate::pump::{End, LinkState, Pump, Shared, Wake};

/// The agent's application logic for one connection.
///
/// `handle` receives every [`ServerEvent`] in order and answers through the
/// [`Responder`] (which can be cloned and moved into other tasks). Events are delivered
/// one at a time: the next one is taken only when `handle` returns. This is what bounds
/// memory: a handler awaiting [`Responder::output`] holds back further requests, the
/// machine's event queue fills, and the driver stops reading the transport. Work that
/// runs for a while — a command producing output over time — belongs in a spawned task
/// holding a `Responder` clone, so that stdin, interrupts and other transactions keep
/// flowing.
///
/// ```no_run
/// use tuppence::link::ServerEvent;
/// use tuppence_smol::{App, Responder};
///
/// /// Echoes stdin to stdout; every command exits 0 at stdin EOF.
/// struct Echo;
///
/// impl App for Echo {
///     async fn handle(&mut self, event: ServerEvent, agent: &Responder) {
///         let _ = match event {
///             ServerEvent::Stdin { xid, data } => agent.output(xid, 1, data).await,
///             ServerEvent::StdinEnd { xid } => agent.command_exited(xid, 0),
///             ServerEvent::Quit => Ok(agent.close()),
///             _ => Ok(()),
///         };
///     }
/// }
/// ```
pub trait App: Send {
    /// One request (or notice) from the client. Answers that fail because the link is
    /// gone can be ignored: `serve` reports why it ended.
    fn handle(&mut self, event: ServerEvent, agent: &Responder) -> impl Future<Output = ()> + Send;

    /// The connection is over (`result` is what `serve` returns): kill what this
    /// connection started and remove partial files. Called once, after the last `handle`.
    fn disconnected(&mut self, result: &Result<(), Error>) -> impl Future<Output = ()> + Send {
        let _ = result;
        async {}
    }
}

/// The server half of the state behind the connection's mutex.
pub(crate) struct ServerState {
    server: Server,
    /// The dispatcher, waiting for an event.
    dispatcher: Option<Waker>,
}

impl LinkState for ServerState {
    type Machine = Server;

    fn machine(&self) -> &Server {
        &self.server
    }
    fn machine_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Events stay in the machine (its queue is the bound); the dispatcher is woken to
    /// take them. The machine has no "peek", so it is woken on every pass; a spurious
    /// wake costs one empty poll.
    fn route(&mut self, _ended: bool, wake: &mut Wake) -> bool {
        wake.push(self.dispatcher.take());
        false
    }
}

/// The agent's side of one connection: answers requests by calling the `Server`
/// machine's intents. Cheap to clone and `Send`, so spawned tasks can answer later.
///
/// Every method fails with the connection's error once it has ended, and with
/// `Error::Usage` for an answer the transaction's state does not allow (e.g. output
/// after the exit status).
#[derive(Clone)]
pub struct Responder {
    shared: Arc<Shared<ServerState>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.shared.lock();
        f.debug_struct("Responder")
            .field("server", &g.link.server)
            .field("end", &g.end)
            .finish()
    }
}

impl Responder {
    /// Command output (channel 1 stdout, 2 stderr), extract data or monitor events
    /// (channel 0). Waits while the transmit queue is full, so a fast producer goes at
    /// the speed of the link; large data is handed over in pieces for the same reason.
    pub async fn output(
        &self,
        xid: u16,
        channel: u16,
        data: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let mut data = data.into();
        loop {
            let piece = data.split_to(data.len().min(SEND_PIECE));
            self.shared
                .intent(|s| s.server.output(xid, channel, piece.clone()))
                .await?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Waits until [`Responder::can_send`] is true (or the connection ended): for
    /// producers that want to stop reading their source while the link is congested.
    pub async fn writable(&self) -> Result<(), Error> {
        self.shared.wait_room(|s| s.server.can_send()).await
    }

    /// False while `output` would wait.
    pub fn can_send(&self) -> bool {
        self.shared.lock().link.server.can_send()
    }

    /// End of a command output channel, or of extracted data.
    pub fn output_end(&self, xid: u16, channel: u16) -> Result<(), Error> {
        self.shared
            .intent_now(|s| s.server.output_end(xid, channel))
    }

    /// The command exited with `code`.
    pub fn command_exited(&self, xid: u16, code: u32) -> Result<(), Error> {
        self.shared
            .intent_now(|s| s.server.command_exited(xid, code))
    }

    /// The command was killed by signal `signo`.
    pub fn command_killed(&self, xid: u16, signo: u32) -> Result<(), Error> {
        self.shared
            .intent_now(|s| s.server.command_killed(xid, signo))
    }

    /// The agent killed the command at its timeout.
    pub fn timed_out(&self, xid: u16) -> Result<(), Error> {
        self.shared.intent_now(|s| s.server.timed_out(xid))
    }

    /// The request failed with `errno` (see [`tuppence::link::status`]).
    pub fn fail(&self, xid: u16, errno: u32) -> Result<(), Error> {
        self.shared.intent_now(|s| s.server.fail(xid, errno))
    }

    /// The inject target is open: the client may send data.
    pub fn inject_ready(&self, xid: u16) -> Result<(), Error> {
        self.shared.intent_now(|s| s.server.inject_ready(xid))
    }

    /// The injected file is in place (`Ok`) or failed (`Err(errno)`).
    pub fn inject_done(&self, xid: u16, result: Result<(), u32>) -> Result<(), Error> {
        self.shared
            .intent_now(|s| s.server.inject_done(xid, result))
    }

    /// The extract source is open; data follows with `output(xid, 0, ..)`.
    pub fn extract_ready(&self, xid: u16) -> Result<(), Error> {
        self.shared.intent_now(|s| s.server.extract_ready(xid))
    }

    /// All extract data was sent (`Ok`) or reading failed (`Err(errno)`).
    pub fn extract_done(&self, xid: u16, result: Result<(), u32>) -> Result<(), Error> {
        self.shared
            .intent_now(|s| s.server.extract_done(xid, result))
    }

    /// Every monitor event pending at the settle request has been sent.
    pub fn settled(&self, xid: u16, seq: u32) -> Result<(), Error> {
        self.shared.intent_now(|s| s.server.settled(xid, seq))
    }

    /// Answer to a procinfo query.
    pub fn procinfo(&self, xid: u16, fields: Vec<ProcInfoField>) -> Result<(), Error> {
        self.shared.intent_now(|s| s.server.procinfo(xid, fields))
    }

    /// Ends the connection once what is queued has been written (e.g. after `Quit`).
    pub fn close(&self) {
        self.shared.close();
    }

    /// True while the transaction has not ended.
    pub fn is_live(&self, xid: u16) -> bool {
        self.shared.lock().link.server.is_live(xid)
    }

    /// The dialect of the connection (known once the client's first bytes arrived).
    pub fn dialect(&self) -> Dialect {
        self.shared.lock().link.server.dialect()
    }

    /// The connection id this agent assigned.
    pub fn cid(&self) -> u16 {
        self.shared.lock().link.server.cid()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().end.is_some()
    }
}

/// Runs one agent connection over `io` until it ends, handing requests to `app`.
///
/// Returns `Ok(())` when the client closed the connection or the app called
/// [`Responder::close`], and the error otherwise: `Error::Link(KeepaliveExpired)` when
/// the client went silent, `Error::Link(Framing)` for garbage, `Error::Transport` for I/O
/// errors. The transport is closed as soon as the link ends; `serve` returns once `app`
/// has seen the remaining events and [`App::disconnected`].
///
/// The future is `Send` when `S` is, so it can be spawned; one call per accepted
/// connection, each with its own `ServerConfig::cid`.
pub async fn serve<S, A>(io: S, config: ServerConfig, mut app: A) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    A: App,
{
    let shared = Arc::new(Shared::new(ServerState {
        server: Server::new(config, Instant::now()),
        dispatcher: None,
    }));
    let responder = Responder {
        shared: shared.clone(),
    };
    let pump = Pump::new(io, shared.clone());
    let dispatch = async {
        while let Some(event) = next_event(&shared).await {
            app.handle(event, &responder).await;
        }
    };
    let (end, ()) = future::zip(pump, dispatch).await;
    let result = match end {
        End::Local | End::Link(LinkError::Closed) => Ok(()),
        other => Err(other.error()),
    };
    app.disconnected(&result).await;
    result
}

/// The next event for the app; `None` once the link has ended and (unless this side
/// closed it) every remaining event was taken.
async fn next_event(shared: &Shared<ServerState>) -> Option<ServerEvent> {
    future::poll_fn(|cx| {
        let mut g = shared.lock();
        let local = matches!(g.end, Some(End::Local));
        if !local && let Some(ev) = g.link.server.poll_event() {
            // The machine may have stopped taking input because its queue was full.
            let w = if g.stalled { g.take_driver() } else { None };
            drop(g);
            if let Some(w) = w {
                w.wake();
            }
            return Poll::Ready(Some(ev));
        }
        if g.end.is_some() {
            return Poll::Ready(None);
        }
        if !g
            .link
            .dispatcher
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            g.link.dispatcher = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}
