//! A client session on a blocking stream: one reader thread, callers write.
//!
//! Locking: the reader thread only takes `state`. Writers take `writer` first and `state`
//! inside it just long enough to collect the bytes to send, so packets leave in the order
//! the machine produced them and no lock is held across a blocking write on `state`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tuppence::link::{Client, ClientConfig, ClientEvent, LinkError, Outcome};

use tuppence_transport::Target;

use crate::{Error, Stream};

/// Events buffered per transaction before the reader thread waits for the consumer.
const INBOX_EVENTS: usize = 256;
/// Size of the reader's reused buffer.
const READ_BUF: usize = 256 * 1024;

/// What the server said in its hello reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectInfo {
    pub cid: u16,
    pub server_version: (u8, u8),
    /// Negotiated keepalive in seconds (0 = off).
    pub keepalive: u16,
    /// Time from sending the hello to receiving the reply.
    pub latency: Duration,
}

#[derive(Default)]
struct Inbox {
    events: VecDeque<ClientEvent>,
    detached: bool,
}

struct State {
    client: Client,
    inboxes: HashMap<u16, Inbox>,
    connected: Option<ConnectInfo>,
    started: Instant,
    /// Set once the connection is unusable; every waiter sees it.
    failure: Option<LinkError>,
    io_failure: Option<String>,
    reader_done: bool,
    /// Threads blocked on the condition variable: notifying costs a syscall, so it is
    /// skipped when nobody waits (every event used to cost one, twice).
    waiting: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    writer: Mutex<Box<dyn Write + Send>>,
    closing: AtomicBool,
}

/// A connection to an agent. Cheap to share between threads (`&Session` is enough for
/// every operation); operations on different transactions run concurrently.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts a session over `stream` and waits (up to `connect_timeout`) for the hello
    /// reply.
    pub fn new<S: Stream>(
        stream: S,
        config: ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Session, Error> {
        let writer = stream.try_clone_stream()?;
        let started = Instant::now();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                client: Client::new(config, started),
                inboxes: HashMap::new(),
                connected: None,
                started,
                failure: None,
                io_failure: None,
                reader_done: false,
                waiting: 0,
            }),
            cond: Condvar::new(),
            writer: Mutex::new(Box::new(writer)),
            closing: AtomicBool::new(false),
        });
        shared.flush()?;
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tuppence-reader".into())
                .spawn(move || shared.reader_loop(stream))?
        };
        let session = Session {
            shared,
            reader: Some(reader),
        };
        let deadline = started + connect_timeout;
        let mut st = session.shared.lock();
        loop {
            if st.connected.is_some() {
                break;
            }
            if let Some(e) = session.shared.failure_of(&st) {
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::ConnectTimeout(connect_timeout));
            }
            st = session.shared.wait_timeout(st, deadline - now);
        }
        drop(st);
        Ok(session)
    }

    /// Connects to `target` (any form but `local`, which needs an embedded agent) and
    /// starts a session in the target's dialect.
    pub fn connect(target: &Target, connect_timeout: Duration) -> Result<Session, Error> {
        let transport = target.connect()?;
        let mut config = ClientConfig {
            dialect: target.dialect,
            ..ClientConfig::default()
        };
        if target.endpoint.may_be_device_link() {
            config = config.for_device_link();
        }
        Session::new(transport, config, connect_timeout)
    }

    /// The hello reply.
    pub fn info(&self) -> ConnectInfo {
        self.shared.lock().connected.clone().unwrap_or(ConnectInfo {
            cid: 0,
            server_version: (0, 0),
            keepalive: 0,
            latency: Duration::ZERO,
        })
    }

    /// Runs an intent on the machine under the lock, registers an inbox for the new
    /// transaction, and sends what it queued.
    pub(crate) fn open(
        &self,
        f: impl FnOnce(&mut Client) -> Result<u16, tuppence::link::UsageError>,
    ) -> Result<u16, Error> {
        let xid = {
            let mut st = self.shared.lock();
            if let Some(e) = self.shared.failure_of(&st) {
                return Err(e);
            }
            let xid = f(&mut st.client)?;
            st.inboxes.insert(xid, Inbox::default());
            xid
        };
        self.shared.flush()?;
        Ok(xid)
    }

    /// Runs an intent on an existing transaction and sends what it queued.
    pub(crate) fn act(
        &self,
        f: impl FnOnce(&mut Client) -> Result<(), tuppence::link::UsageError>,
    ) -> Result<(), Error> {
        {
            let mut st = self.shared.lock();
            if let Some(e) = self.shared.failure_of(&st) {
                return Err(e);
            }
            f(&mut st.client)?;
        }
        self.shared.flush()
    }

    /// Sends data in pieces so the machine's transmit buffer stays bounded.
    pub(crate) fn send_data(
        &self,
        data: Bytes,
        f: impl Fn(&mut Client, Bytes) -> Result<(), tuppence::link::UsageError>,
    ) -> Result<(), Error> {
        const PIECE: usize = 8 * tuppence::wire::DEFAULT_MAX_CHUNK;
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(PIECE));
            self.act(|c| f(c, piece))?;
        }
        Ok(())
    }

    /// The next event of transaction `xid`, waiting up to `timeout` (`None` = forever).
    /// `Ok(None)` on timeout. After `Finished` the transaction's inbox is gone.
    pub(crate) fn next_event(
        &self,
        xid: u16,
        timeout: Option<Duration>,
    ) -> Result<Option<ClientEvent>, Error> {
        let mut out = VecDeque::with_capacity(1);
        self.take_events(xid, timeout, 1, &mut out)?;
        Ok(out.pop_front())
    }

    /// Like `next_event`, taking up to `max` events at once (one lock for a batch: the
    /// reader delivers up to eight data events per read). Returns false on timeout.
    pub(crate) fn take_events(
        &self,
        xid: u16,
        timeout: Option<Duration>,
        max: usize,
        out: &mut VecDeque<ClientEvent>,
    ) -> Result<bool, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            // Events the reader left in the machine because an inbox was full: the reader
            // moves them only after its next read, which can be a second away once the peer
            // has sent everything (the tail of a large extract stalled for seconds).
            self.shared.dispatch(&mut st);
            if let Some(inbox) = st.inboxes.get_mut(&xid) {
                if !inbox.events.is_empty() {
                    let mut finished = false;
                    for _ in 0..max.max(1) {
                        let Some(ev) = inbox.events.pop_front() else {
                            break;
                        };
                        finished = matches!(ev, ClientEvent::Finished { .. });
                        out.push_back(ev);
                        if finished {
                            break;
                        }
                    }
                    if finished {
                        st.inboxes.remove(&xid);
                    }
                    self.shared.notify(&st);
                    return Ok(true);
                }
            } else {
                return Err(Error::Usage(
                    tuppence::link::UsageError::UnknownTransaction(xid),
                ));
            }
            // The reader stops moving events at a full inbox and goes back to reading;
            // what is left in the machine (the end of a transfer, say) must not wait for
            // more input to arrive: move it now.
            if self.shared.dispatch(&mut st) {
                self.shared.notify(&st);
                continue;
            }
            if st.reader_done {
                // The reader finished every transaction before exiting; an empty inbox
                // here means the link died without a word for this xid.
                st.inboxes.remove(&xid);
                out.push_back(ClientEvent::Finished {
                    xid,
                    outcome: Outcome::LinkLost(st.failure.clone().unwrap_or(LinkError::Closed)),
                });
                return Ok(true);
            }
            match deadline {
                None => st = self.shared.wait(st),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    st = self.shared.wait_timeout(st, d - now);
                }
            }
        }
    }

    /// Puts events taken out of order (while waiting for a specific answer) back in front.
    pub(crate) fn requeue(&self, xid: u16, events: Vec<ClientEvent>) {
        if events.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        let inbox = st.inboxes.entry(xid).or_default();
        for ev in events.into_iter().rev() {
            inbox.events.push_front(ev);
        }
        self.shared.notify(&st);
    }

    /// Stops delivering events of `xid` (its handle was dropped); they are discarded.
    pub(crate) fn detach(&self, xid: u16) {
        let mut st = self.shared.lock();
        if let Some(inbox) = st.inboxes.get_mut(&xid) {
            inbox.detached = true;
            inbox.events.clear();
        }
        self.shared.notify(&st);
    }

    /// Asks the agent to exit, and closes this session.
    pub fn quit(self) -> Result<(), Error> {
        self.act(|c| c.quit())
    }

    /// True once the connection has failed or closed.
    pub fn is_closed(&self) -> bool {
        let st = self.shared.lock();
        st.reader_done || st.failure.is_some()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // The reader wakes at its next read timeout at the latest; do not wait for it:
        // a read without timeout (keepalive off) may block until the peer closes.
        drop(self.reader.take());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_timeout<'a>(&self, mut g: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        g.waiting += 1;
        let mut g = match self.cond.wait_timeout(g, d) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
        g.waiting -= 1;
        g
    }

    fn wait<'a>(&self, mut g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        g.waiting += 1;
        let mut g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        g.waiting -= 1;
        g
    }

    /// Wakes every waiter, if there is one. Call with the lock held (waiters register
    /// under it), after changing what they wait for.
    fn notify(&self, st: &State) {
        if st.waiting > 0 {
            self.cond.notify_all();
        }
    }

    fn failure_of(&self, st: &State) -> Option<Error> {
        if let Some(e) = &st.failure {
            return Some(Error::Link(e.clone()));
        }
        if let Some(e) = &st.io_failure {
            return Some(Error::Io(io::Error::other(e.clone())));
        }
        if st.reader_done {
            return Some(Error::Link(LinkError::Closed));
        }
        None
    }

    /// Writes everything the machine has queued, in order.
    pub(crate) fn flush(&self) -> Result<(), Error> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = BytesMut::new();
        self.lock().client.poll_transmit(Instant::now(), &mut buf);
        if buf.is_empty() {
            return Ok(());
        }
        let r = w.write_all(&buf).and_then(|()| w.flush());
        if let Err(e) = r {
            let mut st = self.lock();
            st.io_failure.get_or_insert_with(|| e.to_string());
            self.notify(&st);
            return Err(Error::Io(e));
        }
        Ok(())
    }

    /// Moves the machine's events into the per-transaction inboxes. Stops at an inbox that
    /// is full, leaving the rest in the machine (which then stops consuming input).
    /// Returns whether any event was taken from the machine.
    fn dispatch(&self, st: &mut State) -> bool {
        let mut moved = false;
        loop {
            let full = st.inboxes.values().any(|i| i.events.len() >= INBOX_EVENTS);
            if full {
                return moved;
            }
            let Some(ev) = st.client.poll_event() else {
                return moved;
            };
            moved = true;
            let xid = match &ev {
                ClientEvent::Connected {
                    cid,
                    server_version,
                    keepalive,
                } => {
                    st.connected = Some(ConnectInfo {
                        cid: *cid,
                        server_version: *server_version,
                        keepalive: *keepalive,
                        latency: st.started.elapsed(),
                    });
                    continue;
                }
                ClientEvent::Output { xid, .. }
                | ClientEvent::OutputEnd { xid, .. }
                | ClientEvent::InjectReady { xid }
                | ClientEvent::MonitorData { xid, .. }
                | ClientEvent::Settled { xid, .. }
                | ClientEvent::ProcInfo { xid, .. }
                | ClientEvent::Finished { xid, .. } => *xid,
                _ => continue,
            };
            let finished = matches!(ev, ClientEvent::Finished { .. });
            if let Some(inbox) = st.inboxes.get_mut(&xid) {
                if inbox.detached {
                    if finished {
                        st.inboxes.remove(&xid);
                    }
                } else {
                    inbox.events.push_back(ev);
                }
            }
        }
    }

    fn reader_loop<S: Stream>(self: Arc<Self>, mut stream: S) {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            if self.closing.load(Ordering::SeqCst) {
                break;
            }
            let timeout = {
                let st = self.lock();
                st.client
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            // Wake at least once a second so a dropped session lets its thread go.
            let timeout = Some(
                timeout
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1)),
            );
            match stream.read_timeout(&mut buf, timeout) {
                Ok(0) => {
                    self.end(None);
                    break;
                }
                Ok(n) => {
                    if !self.feed(buf.get(..n).unwrap_or_default()) {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                // A pty master reads EIO when the other end hung up: end of stream.
                Err(e)
                    if e.raw_os_error() == Some(5)
                        || e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    self.end(None);
                    break;
                }
                Err(e) => {
                    self.end(Some(e));
                    break;
                }
            }
            {
                let mut st = self.lock();
                st.client.handle_timeout(Instant::now());
                self.dispatch(&mut st);
                if let Some(e) = st.client.error().cloned() {
                    st.failure.get_or_insert(e);
                    st.reader_done = true;
                    self.notify(&st);
                    break;
                }
                self.notify(&st);
            }
            let _ = self.flush();
        }
        let mut st = self.lock();
        st.reader_done = true;
        self.notify(&st);
    }

    /// Offers received bytes to the machine, waiting for consumers when it pushes back.
    /// Returns false once the connection is over.
    fn feed(&self, data: &[u8]) -> bool {
        let mut st = self.lock();
        let mut offset = 0;
        while offset < data.len() {
            let rest = data.get(offset..).unwrap_or_default();
            match st.client.handle_bytes(Instant::now(), rest) {
                Ok(n) => offset += n,
                Err(e) => {
                    self.dispatch(&mut st);
                    st.failure.get_or_insert(e);
                    st.reader_done = true;
                    self.notify(&st);
                    return false;
                }
            }
            self.dispatch(&mut st);
            self.notify(&st);
            if offset < data.len() {
                if self.closing.load(Ordering::SeqCst) {
                    return false;
                }
                // Consumers must drain an inbox before more input can be taken.
                st = self.wait_timeout(st, Duration::from_millis(100));
            }
        }
        true
    }

    fn end(&self, error: Option<io::Error>) {
        let mut st = self.lock();
        st.client.handle_eof(Instant::now());
        self.dispatch(&mut st);
        if let Some(e) = error {
            st.io_failure.get_or_insert(e.to_string());
        }
        // The machine may know better than "closed" (a refusal before the close).
        let failure = st.client.error().cloned().unwrap_or(LinkError::Closed);
        st.failure.get_or_insert(failure);
        st.reader_done = true;
        self.notify(&st);
    }
}
