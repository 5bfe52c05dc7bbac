//! The I/O pump shared by the client driver and [`crate::serve`]: one future that owns the
//! transport and moves bytes between it and a sans-IO machine kept behind a mutex.
//!
//! Why one hand-written future instead of a reader task and a writer task: the machine is
//! a single state (input, timers and output all touch it), so one poll function that does
//! "feed input, fire timers, route events, pull output, write, read, arm the timer" in a
//! fixed order needs no split of the stream, no extra tasks and no channel between them,
//! and its backpressure is explicit: a new read is issued only once every byte of the
//! previous read has been consumed by the machine, and the machine stops consuming when
//! its consumers stop draining events.
//!
//! Locking: the mutex is a `std` mutex held only for short, non-async sections (an intent,
//! a routing pass). It is never held across an `.await` or an I/O call, and wakers are
//! woken after it is released. A pump that waiters may poll themselves ([`Assist`]) is
//! only ever polled with that lock released, so a waiter may do it from inside an intent
//! or a wait.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_io::Timer;
use event_listener::{Event, EventListener};
use futures_lite::{AsyncRead, AsyncWrite, Stream};
use tuppence::link::{LinkError, UsageError};
use tuppence::{Machine, Transmit};
use tuppence_transport::{RecvBuf, is_hangup};

use crate::Error;

/// The largest read (eight full data packets): the receive buffer's regions grow to this
/// in bulk transfers.
const READ_BUF: usize = 256 * 1024;
/// Segments per vectored write: headers and payloads alternate, so 32 data packets.
const MAX_IOV: usize = 64;
/// Steps one poll may take before yielding to the executor, so a connection that always
/// has work (a fast peer) cannot starve the other tasks of its thread.
const BUDGET: usize = 64;
/// How long a closing connection may take to write what is still queued. Bounded so a
/// peer that stopped reading cannot keep a dropped session's task alive forever.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the pump needs from the state behind the mutex: the machine (driven through the
/// core's [`Machine`] surface), plus `route`, which hands the machine's events to whoever
/// consumes them.
pub(crate) trait LinkState: Send + 'static {
    type Machine: Machine<Error = LinkError>;
    fn machine(&self) -> &Self::Machine;
    fn machine_mut(&mut self) -> &mut Self::Machine;
    /// Moves events from the machine towards their consumers, collecting the wakers to
    /// wake. With `ended` the link is over: deliver everything regardless of bounds (no
    /// more input can arrive, so this is bounded by the machine's own queue) and wake
    /// every waiter. Returns true if an event left the machine (which may let it consume
    /// more input).
    fn route(&mut self, ended: bool, wake: &mut Wake) -> bool;
}

/// A pump that whoever waits for it may poll on its own thread (the client session's
/// spawned driver, see `client::Assisted`). Without it, a consumer on another thread than
/// the executor's paid two thread hand-offs per batch of events: the reactor woke the
/// driver task on the executor's thread, which read and routed and then woke the
/// consumer.
pub(crate) trait Assist: Send + Sync {
    /// Polls the pump here, now, unless another thread is polling it, which then polls
    /// it once more after this call: either way, what the caller changed before is seen
    /// and nobody else need be woken (true). `waiting` is the waker of a consumer that
    /// waits for what the pump brings: it is woken when the pump's sources become ready,
    /// instead of the driver's task (which then only watches, see `client::Assisted`).
    fn drive_here(&self, waiting: Option<&Waker>) -> bool;

    /// The consumer whose waker is `waker` got what it waited for and stops waiting:
    /// wake-ups of the pump no longer go to it, and a wake-up that went to it alone is
    /// acted on here.
    fn resign(&self, waker: &Waker);

    /// Every handle is gone, so nobody waits any more: wake-ups go to the driver's task.
    fn forget_waiters(&self);
}

/// Wake-ups collected under the lock and delivered after it is released.
#[derive(Default)]
pub(crate) struct Wake {
    wakers: Vec<Waker>,
    /// Connection-level state changed (connected, ended): notify `Shared::changed`.
    pub(crate) changed: bool,
}

impl Wake {
    pub(crate) fn push(&mut self, waker: Option<Waker>) {
        if let Some(w) = waker {
            self.wakers.push(w);
        }
    }

    fn run(self, shared_changed: &Event) {
        for w in self.wakers {
            w.wake();
        }
        if self.changed {
            shared_changed.notify(usize::MAX);
        }
    }
}

/// Why a pump stopped.
#[derive(Clone, Debug)]
pub(crate) enum End {
    /// This side closed: handles dropped, `close()` called, or the driver future dropped.
    Local,
    /// The machine failed (peer EOF, keepalive expiry, framing, version mismatch).
    Link(LinkError),
    /// The transport returned an I/O error.
    Transport(Arc<io::Error>),
}

impl End {
    /// What a driver resolves to: `Ok` for a local close, else why the link ended.
    pub(crate) fn into_result(self) -> Result<(), Error> {
        match self {
            End::Local => Ok(()),
            other => Err(other.error()),
        }
    }

    pub(crate) fn error(&self) -> Error {
        match self {
            End::Local => Error::Closed,
            End::Link(e) => Error::Link(e.clone()),
            End::Transport(e) => Error::Transport(e.clone()),
        }
    }

    /// What a transaction cut short by this end reports in `Outcome::LinkLost`.
    pub(crate) fn link_error(&self) -> LinkError {
        match self {
            End::Link(e) => e.clone(),
            End::Local | End::Transport(_) => LinkError::Closed,
        }
    }
}

/// The state behind the mutex: the role-specific part plus what the pump and the handles
/// coordinate through.
pub(crate) struct Guarded<L> {
    pub(crate) link: L,
    /// The pump's waker; taken (and woken) by whoever gives it work.
    driver: Option<Waker>,
    /// Set by the handles' owner: finish writing, then stop.
    pub(crate) closing: bool,
    /// Set once, when the pump stops; every later operation fails with it.
    pub(crate) end: Option<End>,
    /// Bytes not yet written (machine buffer plus the pump's write buffer).
    unsent: usize,
    /// The pump holds input the machine would not take: a consumer must drain first.
    pub(crate) stalled: bool,
}

impl<L> Guarded<L> {
    /// The pump's waker, to wake after releasing the lock.
    pub(crate) fn take_driver(&mut self) -> Option<Waker> {
        self.driver.take()
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        match &self.end {
            Some(end) => Err(end.error()),
            None => Ok(()),
        }
    }
}

pub(crate) struct Shared<L> {
    state: Mutex<Guarded<L>>,
    /// Notified when transmit room may have appeared, when everything was written, and
    /// when the link ended.
    pub(crate) room: Event,
    /// Notified on connection-level changes (connected, ended).
    pub(crate) changed: Event,
    /// The pump holds bytes the transport would not take yet and waits until it can
    /// write. It takes what the machine queued meanwhile as soon as those are written,
    /// so an intent that queues data need not wake it. Woken for every piece of inject
    /// data, the pump polled once for nothing per 64 KiB (a thread switch each when it
    /// runs on another thread than the producer).
    ///
    /// An atomic, set by the pump after its writes (outside the lock): an intent that
    /// reads a stale `false` only wakes the pump needlessly, and one that reads `true`
    /// queued its data before the pump's next pass takes the lock (the pump stores
    /// `false` before that pass), so that pass sees it.
    writing: AtomicBool,
    /// Set for a pump that waiters may poll themselves ([`Assist`]). Weak: the pump holds
    /// this `Shared`.
    assist: OnceLock<Weak<dyn Assist>>,
}

impl<L: LinkState> Shared<L> {
    pub(crate) fn new(link: L) -> Self {
        Shared {
            state: Mutex::new(Guarded {
                link,
                driver: None,
                closing: false,
                end: None,
                unsent: 0,
                stalled: false,
            }),
            room: Event::new(),
            changed: Event::new(),
            writing: AtomicBool::new(false),
            assist: OnceLock::new(),
        }
    }

    /// Lets waiters poll the pump themselves (see [`Assist`]).
    pub(crate) fn set_assist(&self, assist: Weak<dyn Assist>) {
        let _ = self.assist.set(assist);
    }

    /// The pump's assistant, if waiters may poll it and it still runs.
    fn assist(&self) -> Option<Arc<dyn Assist>> {
        self.assist.get().and_then(Weak::upgrade)
    }

    /// Polls the pump on this thread if it can be ([`Assist::drive_here`]).
    pub(crate) fn drive_here(&self, waiting: Option<&Waker>) -> bool {
        self.assist().is_some_and(|a| a.drive_here(waiting))
    }

    /// The waiter with `waker` stops waiting ([`Assist::resign`]).
    pub(crate) fn resign(&self, waker: &Waker) {
        if let Some(a) = self.assist() {
            a.resign(waker);
        }
    }

    /// Gives the pump work taken from the guarded state (`waker` is what
    /// [`Guarded::take_driver`] returned, after the lock was released): polled here when
    /// it can be, so that the bytes go out from this thread, else woken.
    pub(crate) fn kick(&self, waker: Option<Waker>) {
        if let Some(w) = waker
            && !self.drive_here(None)
        {
            w.wake();
        }
    }

    /// Waits for `listener`, polling the pump meanwhile when no one else does.
    pub(crate) async fn wait(&self, listener: EventListener) {
        let mut listener = std::pin::pin!(listener);
        futures_lite::future::poll_fn(|cx| {
            if listener.as_mut().poll(cx).is_ready() {
                self.resign(cx.waker());
                return Poll::Ready(());
            }
            // What the pump did may be what the listener waits for.
            if self.drive_here(Some(cx.waker())) && listener.as_mut().poll(cx).is_ready() {
                self.resign(cx.waker());
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }

    /// The lock, recovering from poisoning: the guarded state is only ever changed by
    /// machine calls that cannot leave it half-updated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Guarded<L>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs an intent on the machine; while it answers `QueueFull`, waits for the pump to
    /// drain the transmit buffer and tries again. `f` may therefore run several times.
    pub(crate) async fn intent<T>(
        &self,
        mut f: impl FnMut(&mut L) -> Result<T, UsageError>,
    ) -> Result<T, Error> {
        loop {
            let listener = {
                let mut g = self.lock();
                g.check()?;
                let r = f(&mut g.link);
                // Registered under the lock, so the pump's notification after it drains
                // cannot be missed.
                let room =
                    matches!(r, Err(UsageError::QueueFull { .. })).then(|| self.room.listen());
                // Whatever `f` answered, what it queued goes out: it may have queued part of
                // its data before the queue filled up or an error came.
                let w = self.take_driver_for_data(&mut g);
                drop(g);
                self.kick(w);
                match (r, room) {
                    (Ok(v), _) => return Ok(v),
                    (Err(UsageError::QueueFull { .. }), Some(room)) => room,
                    (Err(e), _) => return Err(Error::from(e)),
                }
            };
            self.wait(listener).await;
        }
    }

    /// Runs an intent that the machine never refuses for a full queue (status packets).
    pub(crate) fn intent_now<T>(
        &self,
        f: impl FnOnce(&mut L) -> Result<T, UsageError>,
    ) -> Result<T, Error> {
        let mut g = self.lock();
        g.check()?;
        let v = f(&mut g.link)?;
        let w = self.take_driver_for_data(&mut g);
        drop(g);
        self.kick(w);
        Ok(v)
    }

    /// The pump's waker after an intent queued bytes, unless the pump is busy writing
    /// (see `writing`).
    fn take_driver_for_data(&self, g: &mut Guarded<L>) -> Option<Waker> {
        if self.writing.load(Ordering::Relaxed) {
            None
        } else {
            g.take_driver()
        }
    }

    /// Waits until the transmit buffer is below its limit (`ok` says so), or the end.
    pub(crate) async fn wait_room(&self, ok: impl Fn(&L) -> bool) -> Result<(), Error> {
        loop {
            let listener = {
                let g = self.lock();
                g.check()?;
                if ok(&g.link) {
                    return Ok(());
                }
                self.room.listen()
            };
            self.wait(listener).await;
        }
    }

    /// Waits until everything queued so far has been handed to the transport.
    pub(crate) async fn flushed(&self) -> Result<(), Error> {
        loop {
            let listener = {
                let g = self.lock();
                // Checked before the end: a peer that closes right after reading the last
                // request (`quit`) must not turn a completed flush into an error.
                if g.unsent == 0 && g.link.machine().transmit_buffered() == 0 {
                    return Ok(());
                }
                g.check()?;
                self.room.listen()
            };
            self.wait(listener).await;
        }
    }

    /// Asks the pump to write what is queued and stop.
    pub(crate) fn close(&self) {
        let mut g = self.lock();
        g.closing = true;
        let w = g.take_driver();
        drop(g);
        if let Some(a) = self.assist() {
            a.forget_waiters();
        }
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The future that owns the transport. Resolves to why it stopped; if dropped before
/// that, it ends the link as a local close so that no waiter hangs.
pub(crate) struct Pump<S, L: LinkState> {
    io: S,
    shared: Arc<Shared<L>>,
    /// Handed to the machine's `handle_buf`: large data payloads stay slices of it.
    rx: RecvBuf,
    /// Bytes taken from the machine, not yet written.
    tx: Transmit,
    timer: Timer,
    timer_at: Option<Instant>,
    /// The machine deadline already handled; not fired again if the machine keeps it.
    fired: Option<Instant>,
    close_by: Option<Instant>,
    eof: bool,
    eof_fed: bool,
    end: Option<End>,
}

impl<S, L> Pump<S, L>
where
    S: AsyncRead + AsyncWrite + Unpin,
    L: LinkState,
{
    /// Bytes of memory the receive buffer holds ([`RecvBuf::held`]).
    pub(crate) fn read_buffer_len(&self) -> usize {
        self.rx.held()
    }

    pub(crate) fn new(io: S, shared: Arc<Shared<L>>) -> Self {
        Pump {
            io,
            shared,
            rx: RecvBuf::new(READ_BUF),
            tx: Transmit::new(),
            timer: Timer::never(),
            timer_at: None,
            fired: None,
            close_by: None,
            eof: false,
            eof_fed: false,
            end: None,
        }
    }

    /// One pass. `Ok(true)` if anything moved (another pass may move more), `Ok(false)`
    /// when every source of work has registered the waker.
    fn step(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let now = Instant::now();
        let mut progress = false;
        let mut wake = Wake::default();
        let mut room = false;
        let mut stop = None;
        let deadline;
        let idle;
        {
            let mut g = self.shared.lock();
            if !g.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                g.driver = Some(cx.waker().clone());
            }
            if g.closing && self.close_by.is_none() {
                self.close_by = Some(now.checked_add(CLOSE_GRACE).unwrap_or(now));
            }
            if let Some(t) = g.link.machine().poll_timeout()
                && now >= t
                && self.fired != Some(t)
            {
                self.fired = Some(t);
                g.link.machine_mut().handle_timeout(now);
                progress = true;
            }
            if !self.rx.is_empty()
                && let Ok(n) = g.link.machine_mut().handle_buf(now, self.rx.pending())
            {
                progress |= n > 0;
            }
            // (After input and timers alike: either can start a new session.)
            if g.link.machine_mut().poll_discard_unsent() {
                self.tx.clear();
            }
            if self.eof && self.rx.is_empty() && !self.eof_fed {
                self.eof_fed = true;
                g.link.machine_mut().handle_eof(now);
                progress = true;
            }
            // A failed machine is left to `finish`, which routes its last events and
            // records the end under one lock: a waiter woken by a `LinkLost` outcome
            // then also sees why the session ended.
            let failed = g.link.machine().error().is_some();
            if !failed {
                progress |= g.link.route(false, &mut wake);
            }
            g.stalled = !self.rx.is_empty();
            idle = g.link.machine().is_idle();
            if self.tx.is_empty() {
                let n = g
                    .link
                    .machine_mut()
                    .poll_transmit_segments(now, &mut self.tx);
                if n > 0 {
                    room = true;
                    progress = true;
                }
            }
            let unsent = self
                .tx
                .len()
                .saturating_add(g.link.machine().transmit_buffered());
            if unsent == 0 && g.unsent != 0 {
                room = true;
            }
            g.unsent = unsent;
            if let Some(e) = g.link.machine().error() {
                stop = Some(End::Link(e.clone()));
            } else if (g.closing && unsent == 0) || self.close_by.is_some_and(|d| now >= d) {
                stop = Some(End::Local);
            }
            if let Some(end) = &stop {
                end_locked(&mut g, end, &mut wake);
                room = true;
            }
            deadline = earliest(
                g.link
                    .machine()
                    .poll_timeout()
                    .filter(|t| Some(*t) != self.fired),
                self.close_by,
            );
        }
        wake.run(&self.shared.changed);
        if room {
            self.shared.room.notify(usize::MAX);
        }
        if let Some(end) = stop {
            if !self.tx.is_empty() {
                // Best effort for what the machine queued before failing (status words).
                let _ = self.poll_write_tx(cx);
            }
            self.end = Some(end.clone());
            return Err(end);
        }

        // Write everything the machine produced.
        let mut wrote = false;
        while !self.tx.is_empty() {
            match self.poll_write_tx(cx) {
                Poll::Ready(Ok(0)) => {
                    return Err(End::Transport(Arc::new(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.tx.consume(n);
                    wrote = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) if is_hangup(&e) => {
                    // The peer is gone; the read side reports it as end of stream.
                    self.tx.clear();
                    self.eof = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(End::Transport(Arc::new(e))),
                Poll::Pending => break,
            }
        }
        self.shared
            .writing
            .store(!self.tx.is_empty(), Ordering::Relaxed);
        if wrote && self.tx.is_empty() {
            // Sockets and files do not buffer; a buffering stream reports errors on the
            // next write, so a pending or failed flush is not acted on here.
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }

        // Read only when the machine took all of the previous read: backpressure.
        while !self.eof && self.rx.is_empty() {
            match Pin::new(&mut self.io).poll_read(cx, self.rx.region()) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => self.rx.filled(n),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) if is_hangup(&e) => self.eof = true,
                Poll::Ready(Err(e)) => return Err(End::Transport(Arc::new(e))),
                Poll::Pending => {
                    // Everything read was taken (reads start only then), and no
                    // transaction is live: keep no bulk region for an idle session.
                    if idle {
                        self.rx.release();
                    }
                    break;
                }
            }
            progress = true;
        }

        // Keepalive timers and the close deadline. Keepalive deadlines move with every
        // packet, and every `set_at` wakes the reactor (async-io notifies it of each new
        // timer): the timer is only moved when the deadline comes sooner. One armed for a
        // deadline that has since moved later fires early, finds nothing due, and is
        // re-armed for the new one.
        let rearm = match (deadline, self.timer_at) {
            (Some(d), Some(at)) => d < at,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if rearm && let Some(t) = deadline {
            self.timer_at = Some(t);
            self.timer.set_at(t);
        }
        if self.timer_at.is_some() && Pin::new(&mut self.timer).poll_next(cx).is_ready() {
            self.timer_at = None;
            progress = true;
        }
        Ok(progress)
    }
}

impl<S, L> Pump<S, L>
where
    S: AsyncWrite + Unpin,
    L: LinkState,
{
    /// One vectored write of the front of `tx`.
    fn poll_write_tx(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let k = self.tx.io_slices(&mut iov);
        Pin::new(&mut self.io).poll_write_vectored(cx, iov.get(..k).unwrap_or_default())
    }
}

impl<S, L: LinkState> Pump<S, L> {
    /// Ends the link: the machine turns every live transaction into `LinkLost`, and every
    /// waiter is woken to see it.
    fn finish(&mut self, end: End) -> End {
        let mut wake = Wake::default();
        end_locked(&mut self.shared.lock(), &end, &mut wake);
        wake.run(&self.shared.changed);
        self.shared.room.notify(usize::MAX);
        self.end = Some(end.clone());
        end
    }
}

impl<S, L> Future for Pump<S, L>
where
    S: AsyncRead + AsyncWrite + Unpin,
    L: LinkState,
{
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        if let Some(end) = &this.end {
            return Poll::Ready(end.clone());
        }
        for _ in 0..BUDGET {
            match this.step(cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(end) if this.end.is_some() => return Poll::Ready(end),
                Err(end) => return Poll::Ready(this.finish(end)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S, L: LinkState> Drop for Pump<S, L> {
    fn drop(&mut self) {
        if self.end.is_none() {
            // Dropped by its executor or its owner: nobody will ever read again, so make
            // every waiter see the end now rather than hang.
            self.finish(End::Local);
        }
    }
}

/// The end of a link, recorded under the lock in one step with the machine's last events
/// (every live transaction becomes `LinkLost`), so that a waiter woken by either sees
/// both.
fn end_locked<L: LinkState>(g: &mut Guarded<L>, end: &End, wake: &mut Wake) {
    if g.link.machine().error().is_none() {
        g.link.machine_mut().handle_eof(Instant::now());
    }
    g.end = Some(end.clone());
    g.driver = None;
    g.stalled = false;
    g.link.route(true, wake);
    wake.changed = true;
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
