//! The async client session: a driver future that owns the transport and the `Client`
//! machine, and a cheap cloneable [`Session`] handle that callers use from any task.
//!
//! Events are routed to one bounded inbox per transaction. When an inbox is full the
//! event waits in a single "held" slot, routing stops, the machine's own event queue fills
//! and `handle_bytes` consumes less, and the pump stops reading the transport: a consumer
//! that stops reading stops the link (and, through flow control, the agent) instead of
//! growing memory. The bound is per connection, so a stalled transaction also stalls the
//! others behind it — one byte stream cannot do better without unbounded buffering.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWrite, future};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, ConnectInfo, LinkError, Outcome, UsageError,
};
use tuppence::wire::ProcInfoField;

use crate::Error;
use crate::pump::{Assist, End, LinkState, Pump, Shared, Wake};

/// Events buffered per transaction before routing stops.
pub(crate) const INBOX_EVENTS: usize = 256;
/// Data bytes buffered per transaction before routing stops.
pub(crate) const INBOX_BYTES: usize = 1 << 20;
/// Largest piece of stdin or file data handed to the machine in one intent, so the
/// machine's transmit buffer overshoots its limit by at most this much.
/// Whole default-sized packets (64 KiB went out as two full packets and one of 20 bytes).
pub(crate) const SEND_PIECE: usize = 2 * tuppence::wire::DEFAULT_MAX_CHUNK;
/// How long [`Session::new`] waits for the hello reply.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Inbox {
    events: VecDeque<ClientEvent>,
    bytes: usize,
    /// Events and data bytes of the batch the consumer took last (see [`Batch`]): still
    /// counted against the bound until it comes back for more.
    lent_events: usize,
    lent_bytes: usize,
    waker: Option<std::task::Waker>,
    /// The handle was dropped: events are discarded until `Finished`.
    detached: bool,
    /// Callers waiting for procinfo answers, in the order their queries were sent.
    procinfo: VecDeque<async_channel::Sender<Vec<ProcInfoField>>>,
}

impl Inbox {
    fn is_full(&self) -> bool {
        self.events.len().saturating_add(self.lent_events) >= INBOX_EVENTS
            || self.bytes.saturating_add(self.lent_bytes) >= INBOX_BYTES
    }

    /// At most half the bound, so the driver can fill the other half meanwhile.
    fn is_low(&self) -> bool {
        self.events.len().saturating_add(self.lent_events) <= INBOX_EVENTS / 2
            && self.bytes.saturating_add(self.lent_bytes) <= INBOX_BYTES / 2
    }

    /// Moves the front events into `out`, up to half the bound (at least one), and
    /// records them as lent; what the previous batch lent is returned first.
    fn lend(&mut self, out: &mut VecDeque<ClientEvent>) {
        self.lent_events = 0;
        self.lent_bytes = 0;
        while let Some(ev) = self.events.front() {
            let len = ev.data_len();
            let fits = self.lent_events < INBOX_EVENTS / 2
                && self.lent_bytes.saturating_add(len) <= INBOX_BYTES / 2;
            if self.lent_events > 0 && !fits {
                break;
            }
            let Some(ev) = self.pop() else { break };
            self.lent_events += 1;
            self.lent_bytes = self.lent_bytes.saturating_add(len);
            out.push_back(ev);
        }
    }

    fn push(&mut self, ev: ClientEvent) {
        self.bytes = self.bytes.saturating_add(ev.data_len());
        self.events.push_back(ev);
    }

    fn pop(&mut self) -> Option<ClientEvent> {
        let ev = self.events.pop_front()?;
        self.bytes = self.bytes.saturating_sub(ev.data_len());
        Some(ev)
    }
}

/// What a transaction reports when the link ended before its `Finished` was routed.
fn lost(xid: u16, end: Option<&End>) -> ClientEvent {
    ClientEvent::Finished {
        xid,
        outcome: Outcome::LinkLost(end.map_or(LinkError::Closed, End::link_error)),
    }
}

/// Events a consumer took from its inbox in one go (one lock, one wake of the driver,
/// for up to half the inbox), kept by the handle and handed out in order. They still
/// count against the inbox's bound until the consumer takes the next batch, so the
/// bound of 256 events or 1 MiB per transaction covers both.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    events: VecDeque<ClientEvent>,
}

impl Batch {
    /// The next event already taken from the inbox, without locking or waiting (what
    /// [`Session::poll_batch`] returns first).
    pub(crate) fn pop_ready(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

/// The client half of the state behind the session's mutex.
pub(crate) struct ClientState {
    pub(crate) client: Client,
    inboxes: HashMap<u16, Inbox>,
    /// The next event, whose inbox was full when it was routed.
    held: Option<ClientEvent>,
    connected: Option<ConnectInfo>,
    violations: u64,
    /// Transactions whose dropped handles owe the agent a request (see
    /// `Client::abandon`) that met a full transmit queue; retried by the driver.
    deferred: Vec<u16>,
}

impl LinkState for ClientState {
    type Machine = Client;

    fn machine(&self) -> &Client {
        &self.client
    }
    fn machine_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    fn route(&mut self, ended: bool, wake: &mut Wake) -> bool {
        if !ended && !self.deferred.is_empty() {
            let client = &mut self.client;
            self.deferred
                .retain(|&xid| matches!(client.abandon(xid), Err(UsageError::QueueFull { .. })));
        }
        let mut moved = false;
        loop {
            let ev = match self.held.take() {
                Some(ev) => ev,
                None => match self.client.poll_event() {
                    Some(ev) => {
                        moved = true;
                        ev
                    }
                    None => break,
                },
            };
            let xid = match &ev {
                ClientEvent::Connected { .. } => {
                    // The machine keeps the reply (`Client::connect_info`); waiters of
                    // `connected()` look there.
                    self.connected = self.client.connect_info().cloned();
                    wake.changed = true;
                    continue;
                }
                ClientEvent::ProcInfo { xid, fields } => {
                    // Answers bypass the bound: there is at most one per query sent.
                    if let Some(waiter) = self
                        .inboxes
                        .get_mut(xid)
                        .and_then(|i| i.procinfo.pop_front())
                    {
                        let _ = waiter.try_send(fields.clone());
                    }
                    continue;
                }
                ClientEvent::ProtocolViolation(_) => {
                    self.violations = self.violations.saturating_add(1);
                    continue;
                }
                // The `Finished` events that follow say it per transaction.
                ClientEvent::LinkDead => continue,
                ClientEvent::Output { xid, .. }
                | ClientEvent::OutputEnd { xid, .. }
                | ClientEvent::InjectReady { xid }
                | ClientEvent::MonitorData { xid, .. }
                | ClientEvent::Settled { xid, .. }
                | ClientEvent::Finished { xid, .. } => *xid,
            };
            let finished = matches!(ev, ClientEvent::Finished { .. });
            let Some(inbox) = self.inboxes.get_mut(&xid) else {
                continue;
            };
            if inbox.detached {
                if finished {
                    self.inboxes.remove(&xid);
                }
                continue;
            }
            if !ended && inbox.is_full() {
                self.held = Some(ev);
                break;
            }
            if finished {
                // Pending procinfo queries see their channel close: the command is over.
                inbox.procinfo.clear();
            }
            inbox.push(ev);
            wake.push(inbox.waker.take());
        }
        if ended {
            for inbox in self.inboxes.values_mut() {
                inbox.procinfo.clear();
                wake.push(inbox.waker.take());
            }
        }
        moved
    }
}

/// A connection to an agent. Cheap to clone; every clone, and every [`crate::RunHandle`]
/// and [`crate::Monitor`], shares one driver. Operations on different transactions run
/// concurrently from any number of tasks.
///
/// The connection closes when the last handle is dropped: the driver writes what is still
/// queued (for at most a few seconds) and stops. Use [`Session::quit`] to stop the agent
/// itself.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared<ClientState>>,
    task: Option<smol::Task<Result<(), Error>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(task) = self.task.take() {
            // Let it finish writing on its own; it stops within the close grace period.
            task.detach();
        }
    }
}

/// The future that drives a session's transport; returned by [`Session::with_driver`]
/// for callers that want to run it on an executor of their choice.
///
/// It resolves to `Ok(())` once every session handle was dropped and what they queued
/// was written, or to the error that ended the link (`Error::Link(LinkError::Closed)` if
/// the peer closed it). Dropping it ends the session: every waiter sees
/// [`Error::Closed`].
#[must_use = "the session does nothing unless its driver is polled"]
pub struct Driver<S> {
    pump: Pump<S, ClientState>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    /// Bytes of memory its receive buffer holds: 16 KiB, or 256 KiB from a read that
    /// filled the small one until the session is idle again (no live transaction).
    pub fn read_buffer_len(&self) -> usize {
        self.pump.read_buffer_len()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Driver<S> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.pump).poll(cx).map(End::into_result)
    }
}

/// The driver of a session that [`Session::new`] started: polled by its task on smol's
/// executor and, while they wait, by the session's own consumers on their threads
/// ([`Assist`]), whichever comes first. A consumer that waits in a `block_on` on another
/// thread then reads, routes and writes itself, instead of waiting for the executor's
/// thread to do it and wake it (two thread hand-offs per batch of events).
///
/// One stable waker ([`Relay`]) is what the pump's sources (socket, timer, intents) hold,
/// whoever polls: async-io keeps one waker per source, so pollers with their own wakers
/// would take the wake-ups from each other. While a consumer waits, it wakes that
/// consumer alone, not the task: async-io's `block_on` hands the reactor to another
/// thread once its holder has gone 500 µs without a wake-up of its own, so the idle
/// executor thread, never woken, gives the reactor up and the waiting consumer's own
/// `block_on` sees the socket's readiness: one thread reads the link and consumes it,
/// as when the caller polls the driver itself. Woken every time, the executor's thread
/// kept the reactor and read every batch for the consumer (`benches/e2e/README.md`:
/// inject 0.82–0.88 of a raw copy against 0.95–0.97 without). A watchdog timer of the
/// task makes sure that a wake-up that went to a consumer that then stopped waiting
/// without saying so (a future dropped mid-wait) is acted on within [`WATCHDOG`].
struct Assisted {
    pump: std::sync::Mutex<Slot>,
    relay: Arc<Relay>,
    /// Someone wanted to poll the pump since its poller last began: set before trying
    /// the lock, cleared by the poller once it holds it, looked at after releasing it. A
    /// party that finds the pump busy therefore need not wait or wake anyone: the
    /// poller polls once more if the party's change may have come after its last pass
    /// (an intent queued, room made in an inbox).
    again: std::sync::atomic::AtomicBool,
}

/// How often the task checks for a wake-up of the pump that went to a consumer alone
/// and was not acted on, while consumers wait. Far below any keepalive interval (one
/// second at the least), and rare enough that the executor's thread, woken for it, takes
/// the reactor back for at most 500 µs in this much time.
const WATCHDOG: Duration = Duration::from_millis(100);

enum Slot {
    Running(Box<dyn Future<Output = End> + Send + Unpin>),
    Ended(End),
}

#[derive(Default)]
struct Relay {
    wakers: std::sync::Mutex<RelayWakers>,
    /// A wake-up went to the waiting consumer alone and no poll of the pump has begun
    /// since: whoever learns that the consumer stopped waiting polls the pump.
    owed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct RelayWakers {
    task: Option<std::task::Waker>,
    /// The consumer that waits for what the pump brings (the last one to register).
    waiting: Option<std::task::Waker>,
    /// The task's watchdog is armed, or will be at its next poll: only then may a
    /// wake-up go to `waiting` alone.
    watched: bool,
    /// A consumer registered since the watchdog was last armed: it stays armed.
    seen: bool,
}

impl Relay {
    fn lock(&self) -> std::sync::MutexGuard<'_, RelayWakers> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(slot: &mut Option<std::task::Waker>, w: &std::task::Waker) {
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }
}

impl std::task::Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        let (task, waiting) = {
            let mut g = self.lock();
            let waiting = g.waiting.take();
            if g.watched && waiting.is_some() {
                // Set before the consumer can run: it clears it when it polls.
                self.owed.store(true, SeqCst);
                (None, waiting)
            } else {
                (g.task.clone(), waiting)
            }
        };
        if let Some(w) = waiting {
            w.wake();
        }
        if let Some(w) = task {
            w.wake();
        }
    }
}

impl Assisted {
    /// Polls the pump unless another thread is polling it, and again as long as someone
    /// came while it did (see `again`). `None` if another thread is polling it: that one
    /// polls again after whatever the caller changed before calling.
    fn poll_pump(&self) -> Option<Poll<End>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.again.store(true, SeqCst);
        let mut polled = None;
        loop {
            let mut slot = match self.pump.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return polled,
            };
            self.again.store(false, SeqCst);
            // This pass acts on every wake-up that came before it.
            self.relay.owed.store(false, SeqCst);
            let pump = match &mut *slot {
                Slot::Running(pump) => pump,
                Slot::Ended(end) => return Some(Poll::Ready(end.clone())),
            };
            let waker = std::task::Waker::from(self.relay.clone());
            let poll = Pin::new(pump).poll(&mut Context::from_waker(&waker));
            if let Poll::Ready(end) = &poll {
                // Dropped here, under the lock: its `Drop` has nothing left to end.
                *slot = Slot::Ended(end.clone());
                drop(slot);
                // The task returns the end.
                let task = self.relay.lock().task.clone();
                if let Some(w) = task {
                    w.wake();
                }
                return Some(poll);
            }
            drop(slot);
            polled = Some(poll);
            if !self.again.load(SeqCst) {
                return polled;
            }
        }
    }
}

impl Assist for Assisted {
    fn drive_here(&self, waiting: Option<&std::task::Waker>) -> bool {
        if let Some(w) = waiting {
            let arm = {
                let mut g = self.relay.lock();
                Relay::set(&mut g.waiting, w);
                g.seen = true;
                // The first waiter after a quiet spell has the task arm its watchdog
                // before any wake-up may go to a waiter alone.
                let arm = !g.watched;
                g.watched = true;
                arm.then(|| g.task.clone()).flatten()
            };
            if let Some(task) = arm {
                task.wake();
            }
        }
        // Polled here, or by the thread polling it now, once more after this call.
        let _ = self.poll_pump();
        true
    }

    fn resign(&self, waker: &std::task::Waker) {
        {
            let mut g = self.relay.lock();
            if g.waiting.as_ref().is_some_and(|w| w.will_wake(waker)) {
                g.waiting = None;
            }
        }
        if self.relay.owed.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = self.poll_pump();
        }
    }

    fn forget_waiters(&self) {
        let mut g = self.relay.lock();
        g.waiting = None;
        g.watched = false;
    }
}

/// The task [`Session::new`] spawns: polls the [`Assisted`] driver when it is woken, and
/// by its watchdog while consumers wait (see [`Assisted`]).
struct AssistedTask {
    assisted: Arc<Assisted>,
    watchdog: async_io::Timer,
    armed: bool,
}

impl Future for AssistedTask {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.armed && Pin::new(&mut this.watchdog).poll(cx).is_ready() {
            this.armed = false;
        }
        let arm = {
            let mut g = this.assisted.relay.lock();
            // Before polling: a consumer that polls meanwhile and ends the pump wakes this.
            Relay::set(&mut g.task, cx.waker());
            if this.armed {
                false
            } else {
                // Consumers waited in the last period: keep watching. Otherwise every
                // wake-up comes here again until one waits.
                let arm = g.seen;
                g.seen = false;
                g.watched = arm;
                arm
            }
        };
        if arm {
            this.watchdog.set_after(WATCHDOG);
            this.armed = true;
            // Registers the waker; a timer just set is not due.
            if Pin::new(&mut this.watchdog).poll(cx).is_ready() {
                this.armed = false;
                cx.waker().wake_by_ref();
            }
        }
        match this.assisted.poll_pump() {
            Some(Poll::Ready(end)) => Poll::Ready(end.into_result()),
            // Another thread is polling, and polls again after this wake-up's cause.
            Some(Poll::Pending) | None => Poll::Pending,
        }
    }
}

impl Drop for AssistedTask {
    fn drop(&mut self) {
        // Dropped by its executor: as for a dropped `Driver`, every waiter sees the end
        // now (the pump's own `Drop` ends the link).
        let mut slot = self.assisted.pump.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*slot, Slot::Running(_)) {
            *slot = Slot::Ended(End::Local);
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.shared().lock();
        f.debug_struct("Session")
            .field("client", &g.link.client)
            .field("inboxes", &g.link.inboxes.len())
            .field("end", &g.end)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts a session over `io`, spawning its driver on smol's global executor, and
    /// waits (up to [`DEFAULT_CONNECT_TIMEOUT`]) for the agent's hello reply.
    ///
    /// A caller that waits on the session (for events, for transmit room, for the reply)
    /// also polls the driver itself, on its own thread, whenever the executor's thread is
    /// not already polling it; its requests are written from its own thread too, and
    /// while it waits the link's wake-ups go to it rather than to the driver's task. So a
    /// caller in its own `block_on` is served without a thread hand-off per batch, and
    /// keeps being served while the executor's threads are busy. A caller that stops
    /// waiting without finishing (a future dropped or left unpolled mid-wait) leaves the
    /// driver to its task again within a tenth of a second.
    pub async fn new<S>(io: S, config: ClientConfig) -> Result<Session, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Session::with_timeout(io, config, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// [`Session::new`] with a chosen connect timeout.
    pub async fn with_timeout<S>(
        io: S,
        config: ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Session, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (session, driver) = Session::build(io, config);
        let assisted = Arc::new(Assisted {
            pump: std::sync::Mutex::new(Slot::Running(Box::new(driver.pump))),
            relay: Arc::default(),
            again: std::sync::atomic::AtomicBool::new(false),
        });
        let weak: std::sync::Weak<Assisted> = Arc::downgrade(&assisted);
        session.set_assist(weak);
        let task = smol::spawn(AssistedTask {
            assisted,
            watchdog: async_io::Timer::never(),
            armed: false,
        });
        let session = Session {
            inner: Arc::new(Inner {
                shared: session,
                task: Some(task),
            }),
        };
        future::or(session.connected(), async {
            async_io::Timer::after(connect_timeout).await;
            Err(Error::ConnectTimeout(connect_timeout))
        })
        .await?;
        Ok(session)
    }

    /// A session and its driver, without spawning anything and without waiting: run the
    /// driver on any executor (it needs the async-io reactor, which runs on its own when
    /// no `block_on` drives it) and await [`Session::connected`] if you need the reply.
    /// Requests made before the reply are queued and sent once it arrives.
    pub fn with_driver<S>(io: S, config: ClientConfig) -> (Session, Driver<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (shared, pump) = Session::build(io, config);
        let session = Session {
            inner: Arc::new(Inner { shared, task: None }),
        };
        (session, pump)
    }

    fn build<S>(io: S, config: ClientConfig) -> (Arc<Shared<ClientState>>, Driver<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let shared = Arc::new(Shared::new(ClientState {
            client: Client::new(config, started),
            inboxes: HashMap::new(),
            held: None,
            connected: None,
            violations: 0,
            deferred: Vec::new(),
        }));
        let pump = Pump::new(io, shared.clone());
        (shared, Driver { pump })
    }

    pub(crate) fn shared(&self) -> &Shared<ClientState> {
        &self.inner.shared
    }

    /// Waits for the hello reply (returns at once if it already came).
    pub async fn connected(&self) -> Result<ConnectInfo, Error> {
        loop {
            let listener = {
                let g = self.shared().lock();
                if let Some(info) = &g.link.connected {
                    return Ok(info.clone());
                }
                if let Some(e) = g.link.client.error() {
                    return Err(Error::Link(e.clone()));
                }
                g.check()?;
                self.shared().changed.listen()
            };
            self.shared().wait(listener).await;
        }
    }

    /// The hello reply, once it arrived.
    pub fn info(&self) -> Option<ConnectInfo> {
        self.shared().lock().link.connected.clone()
    }

    /// True once the connection has ended (peer closed, keepalive expired, I/O error).
    pub fn is_closed(&self) -> bool {
        self.shared().lock().end.is_some()
    }

    /// Why the connection ended, once it has.
    pub fn error(&self) -> Option<Error> {
        self.shared().lock().end.as_ref().map(|e| e.error())
    }

    /// Waits until the connection ends and returns why.
    pub async fn closed(&self) -> Error {
        loop {
            let listener = {
                let g = self.shared().lock();
                if let Some(end) = &g.end {
                    return end.error();
                }
                self.shared().changed.listen()
            };
            self.shared().wait(listener).await;
        }
    }

    /// Packets dropped because they made no sense (for diagnostics).
    pub fn protocol_violations(&self) -> u64 {
        self.shared().lock().link.violations
    }

    /// Waits until everything requested so far has been written to the transport.
    pub async fn flush(&self) -> Result<(), Error> {
        self.shared().flushed().await
    }

    /// Asks the agent to stop (it kills what it started and exits), and waits until the
    /// request has been written. The agent then closes the connection.
    pub async fn quit(&self) -> Result<(), Error> {
        self.shared().intent(|s| s.client.quit()).await?;
        self.flush().await
    }

    // ---- used by the operations ----

    /// Opens a transaction with `f` (retried while the transmit queue is full) and
    /// registers its inbox under the same lock, so no event of it can be missed.
    ///
    /// Inboxes are keyed by xid. The machine reuses an xid once its transaction finished,
    /// even if that `Finished` still waits behind a full inbox; but only after wrapping
    /// through every other xid, which needs ~65535 later transactions to finish — more
    /// than the machine's event queue (`Limits::max_events`) can take while routing is
    /// stalled.
    pub(crate) async fn open(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<u16, UsageError>,
    ) -> Result<u16, Error> {
        self.shared()
            .intent(|s| {
                let xid = f(&mut s.client)?;
                s.inboxes.insert(xid, Inbox::default());
                Ok(xid)
            })
            .await
    }

    /// Runs an intent on an existing transaction.
    pub(crate) async fn act(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<(), UsageError>,
    ) -> Result<(), Error> {
        self.shared().intent(|s| f(&mut s.client)).await
    }

    /// Sends data in pieces, waiting for transmit room between them, so the machine's
    /// buffer stays bounded whatever the caller passes. Every piece the transmit queue
    /// takes goes in under one lock, and the pump writes them in one pass: a pass per
    /// piece wrote one packet per `writev` (2 000 system calls per 64 MiB inject, and as
    /// many wake-ups of the agent) when the caller drives the pump itself.
    pub(crate) async fn send_data(
        &self,
        mut data: Bytes,
        f: impl Fn(&mut Client, Bytes) -> Result<(), UsageError>,
    ) -> Result<(), Error> {
        // On `QueueFull` the intent waits for room and calls again: `data` keeps what the
        // queue did not take yet.
        self.act(|c| {
            while !data.is_empty() {
                let n = data.len().min(SEND_PIECE);
                f(c, data.slice(..n))?;
                data.advance(n);
            }
            Ok(())
        })
        .await
    }

    /// Sends a procinfo query and registers for its answer under one lock, so answers
    /// match queries in order.
    pub(crate) async fn procinfo_query(
        &self,
        xid: u16,
        mask: u32,
    ) -> Result<async_channel::Receiver<Vec<ProcInfoField>>, Error> {
        self.shared()
            .intent(|s| {
                s.client.procinfo(xid, mask)?;
                let (tx, rx) = async_channel::bounded(1);
                if let Some(inbox) = s.inboxes.get_mut(&xid) {
                    inbox.procinfo.push_back(tx);
                }
                Ok(rx)
            })
            .await
    }

    /// The next event of `xid`. With a context, registers for a wake-up when none is
    /// there; without, only looks. After the link ended an empty inbox yields
    /// `Finished(LinkLost)`, so a waiter can never hang on a dead link.
    pub(crate) fn poll_inbox(&self, xid: u16, cx: Option<&mut Context<'_>>) -> Poll<ClientEvent> {
        let shared = self.shared();
        let mut g = shared.lock();
        let lost = |end: Option<&End>| lost(xid, end);
        let held = g.link.held.is_some() || g.stalled;
        let end = g.end.clone();
        let Some(inbox) = g.link.inboxes.get_mut(&xid) else {
            return Poll::Ready(lost(end.as_ref()));
        };
        if let Some(ev) = inbox.pop() {
            // Room in an inbox may let the driver route (and read) again. Not at every
            // event: woken for each, the driver refilled the inbox one event at a time,
            // two thread switches per event (up to 19 000 per 256 MiB of output).
            let low = inbox.is_low();
            if matches!(ev, ClientEvent::Finished { .. }) {
                g.link.inboxes.remove(&xid);
            }
            let w = if held && low { g.take_driver() } else { None };
            drop(g);
            shared.kick(w);
            if let Some(cx) = cx {
                shared.resign(cx.waker());
            }
            return Poll::Ready(ev);
        }
        if end.is_some() {
            g.link.inboxes.remove(&xid);
            return Poll::Ready(lost(end.as_ref()));
        }
        let Some(cx) = cx else {
            return Poll::Pending;
        };
        if !inbox
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inbox.waker = Some(cx.waker().clone());
        }
        drop(g);
        // Whatever the pump routes here wakes this waker: polled again at once.
        shared.drive_here(Some(cx.waker()));
        Poll::Pending
    }

    /// The next event of `xid` for a consumer that keeps a [`Batch`]: taken from the
    /// batch without locking; when it is empty, the lock is taken once to move up to
    /// half the inbox into it. Otherwise as [`Session::poll_inbox`].
    pub(crate) fn poll_batch(
        &self,
        xid: u16,
        batch: &mut Batch,
        cx: &mut Context<'_>,
    ) -> Poll<ClientEvent> {
        if let Some(ev) = batch.events.pop_front() {
            return Poll::Ready(ev);
        }
        let shared = self.shared();
        let mut g = shared.lock();
        let held = g.link.held.is_some() || g.stalled;
        let end = g.end.clone();
        let Some(inbox) = g.link.inboxes.get_mut(&xid) else {
            return Poll::Ready(lost(xid, end.as_ref()));
        };
        inbox.lend(&mut batch.events);
        if let Some(ev) = batch.events.pop_front() {
            let low = inbox.is_low();
            // `Finished` is the last event a transaction routes.
            let last = batch.events.back().unwrap_or(&ev);
            let finished = matches!(last, ClientEvent::Finished { .. });
            if finished {
                g.link.inboxes.remove(&xid);
            }
            let w = if held && low { g.take_driver() } else { None };
            drop(g);
            shared.kick(w);
            shared.resign(cx.waker());
            return Poll::Ready(ev);
        }
        if end.is_some() {
            g.link.inboxes.remove(&xid);
            return Poll::Ready(lost(xid, end.as_ref()));
        }
        if !inbox
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inbox.waker = Some(cx.waker().clone());
        }
        // The returned batch made room; a held-back driver may route again.
        let w = if held { g.take_driver() } else { None };
        drop(g);
        // Whatever the pump routes here wakes this waker: polled again at once.
        if !shared.drive_here(Some(cx.waker()))
            && let Some(w) = w
        {
            w.wake();
        }
        Poll::Pending
    }

    /// Stops delivering events of `xid` (its handle was dropped): what is buffered is
    /// discarded and the driver may read again.
    pub(crate) fn detach(&self, xid: u16) {
        let shared = self.shared();
        let mut g = shared.lock();
        let ended = g.end.is_some();
        if let Some(inbox) = g.link.inboxes.get_mut(&xid) {
            let finished = inbox
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Finished { .. }));
            // After the end every event was routed: nothing more will come for it.
            if finished || ended {
                g.link.inboxes.remove(&xid);
            } else {
                inbox.detached = true;
                inbox.events.clear();
                inbox.bytes = 0;
                inbox.lent_events = 0;
                inbox.lent_bytes = 0;
                inbox.waker = None;
            }
        }
        let w = g.take_driver();
        drop(g);
        shared.kick(w);
    }

    /// Sends what a dropped handle owes the agent (`Client::abandon`: end a monitor,
    /// abort a transfer) without waiting (`Drop` cannot await); if the transmit queue is
    /// full the driver sends it once there is room.
    pub(crate) fn abandon(&self, xid: u16) {
        let shared = self.shared();
        let mut g = shared.lock();
        if g.end.is_some() {
            return;
        }
        if let Err(UsageError::QueueFull { .. }) = g.link.client.abandon(xid) {
            g.link.deferred.push(xid);
        }
        let w = g.take_driver();
        drop(g);
        shared.kick(w);
    }

    /// The next event of `xid`, waiting for it.
    pub(crate) async fn next_event(&self, xid: u16) -> ClientEvent {
        future::poll_fn(|cx| self.poll_inbox(xid, Some(cx))).await
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::expect_used)]
mod tests {
    use super::*;

    fn output(i: usize, len: usize) -> ClientEvent {
        ClientEvent::Output {
            xid: 1,
            channel: 1 + (i % 2) as u16,
            data: Bytes::from(vec![i as u8; len]),
        }
    }

    fn fill(inbox: &mut Inbox, from: usize, len: usize) -> usize {
        let mut i = from;
        while !inbox.is_full() {
            inbox.push(output(i, len));
            i += 1;
        }
        i
    }

    #[test]
    fn a_lent_batch_keeps_order_and_counts_against_the_bound() {
        for len in [0, 100, 32 * 1024, 64 * 1024] {
            let mut inbox = Inbox::default();
            let mut next = fill(&mut inbox, 0, len);
            let mut batch = VecDeque::new();
            let mut seen = 0;
            for _ in 0..20 {
                inbox.lend(&mut batch);
                assert!(!batch.is_empty());
                assert!(batch.len() <= INBOX_EVENTS / 2, "{len}");
                let lent: usize = batch.iter().map(ClientEvent::data_len).sum();
                assert!(lent <= INBOX_BYTES / 2, "{len}: {lent}");
                // The batch still counts: refilling stops at the same total.
                next = fill(&mut inbox, next, len);
                let held = inbox.events.len() + batch.len();
                assert!(held <= INBOX_EVENTS + 1, "{len}: {held} events");
                let bytes = inbox.bytes + lent;
                assert!(bytes < INBOX_BYTES + len.max(1), "{len}: {bytes} bytes");
                // In order, each event whole, channels as sent.
                for ev in batch.drain(..) {
                    let ClientEvent::Output { channel, data, .. } = ev else {
                        panic!("{ev:?}");
                    };
                    assert_eq!(channel, 1 + (seen % 2) as u16);
                    assert_eq!(data.len(), len);
                    assert!(data.iter().all(|b| *b == seen as u8));
                    seen += 1;
                }
            }
        }
    }

    /// A pump that counts its polls; the first one waits inside until released.
    struct HeldPump {
        polls: Arc<std::sync::atomic::AtomicUsize>,
        inside: std::sync::mpsc::Sender<()>,
        release: Arc<std::sync::Barrier>,
    }

    impl Future for HeldPump {
        type Output = End;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<End> {
            let n = self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                let _ = self.inside.send(());
                self.release.wait();
            }
            Poll::Pending
        }
    }

    #[test]
    fn a_party_that_finds_the_pump_busy_gets_one_more_pass() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (inside, entered) = std::sync::mpsc::channel();
        let release = Arc::new(std::sync::Barrier::new(2));
        let assisted = Arc::new(Assisted {
            pump: std::sync::Mutex::new(Slot::Running(Box::new(HeldPump {
                polls: polls.clone(),
                inside,
                release: release.clone(),
            }))),
            relay: Arc::default(),
            again: std::sync::atomic::AtomicBool::new(false),
        });
        let poller = std::thread::spawn({
            let assisted = assisted.clone();
            move || assisted.drive_here(None)
        });
        entered.recv().expect("the first poll began");
        // The pump is busy: this returns at once, its change left to the poller.
        assert!(assisted.drive_here(None));
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1);
        release.wait();
        assert!(poller.join().expect("poller"));
        assert_eq!(
            polls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the poller must poll once more for the party that came while it polled"
        );
        // Nobody came during the second pass: no third.
        assert!(assisted.drive_here(None));
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A pump that counts its polls and never ends.
    struct CountingPump(Arc<std::sync::atomic::AtomicUsize>);

    impl Future for CountingPump {
        type Output = End;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<End> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Poll::Pending
        }
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Counted(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_up_goes_to_the_waiting_consumer_alone_once_the_task_watches() {
        use std::sync::atomic::Ordering::SeqCst;
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let assisted = Arc::new(Assisted {
            pump: std::sync::Mutex::new(Slot::Running(Box::new(CountingPump(polls.clone())))),
            relay: Arc::default(),
            again: std::sync::atomic::AtomicBool::new(false),
        });
        let (task, consumer) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
        let consumer_waker = std::task::Waker::from(consumer.clone());
        assisted.relay.lock().task = Some(std::task::Waker::from(task.clone()));
        let relay = std::task::Waker::from(assisted.relay.clone());
        let counts = || {
            (
                task.0.load(SeqCst),
                consumer.0.load(SeqCst),
                polls.load(SeqCst),
            )
        };

        // Nobody waits: the task is woken.
        relay.wake_by_ref();
        assert_eq!(counts(), (1, 0, 0));
        // The first waiter wakes the task once, to arm its watchdog, and polls the pump.
        assert!(assisted.drive_here(Some(&consumer_waker)));
        assert_eq!(counts(), (2, 0, 1));
        // Now a wake-up goes to the waiter alone, which owes the pump a poll...
        relay.wake_by_ref();
        assert_eq!(counts(), (2, 1, 1));
        assert!(assisted.relay.owed.load(SeqCst));
        // ...and pays it when it stops waiting without having polled it.
        assisted.resign(&consumer_waker);
        assert_eq!(counts(), (2, 1, 2));
        assert!(!assisted.relay.owed.load(SeqCst));
        // No one waits any more: the task is woken again.
        relay.wake_by_ref();
        assert_eq!(counts(), (3, 1, 2));
        // A waiter that polls the pump after its wake-up owes nothing at its resignation.
        assert!(assisted.drive_here(Some(&consumer_waker)));
        relay.wake_by_ref();
        assert!(assisted.drive_here(Some(&consumer_waker)));
        assert!(!assisted.relay.owed.load(SeqCst));
        assisted.resign(&consumer_waker);
        assert_eq!(counts(), (3, 2, 4));
    }

    #[test]
    fn the_inbox_is_low_again_once_a_batch_is_returned_and_the_rest_lent() {
        let mut inbox = Inbox::default();
        fill(&mut inbox, 0, 32 * 1024);
        let mut batch = VecDeque::new();
        inbox.lend(&mut batch);
        assert!(!inbox.is_low());
        batch.clear();
        inbox.lend(&mut batch);
        assert!(inbox.events.is_empty());
        assert!(inbox.is_low());
    }
}
