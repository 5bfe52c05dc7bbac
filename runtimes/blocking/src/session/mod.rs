//! A client session on a blocking stream: a reader thread, callers, and a writer thread
//! once one is needed.
//!
//! # Reading never waits on writing
//!
//! One lock, `state` (the machine and the inboxes), held only for short sections that do
//! no I/O but non-blocking writes. Three kinds of threads share it:
//!
//! * **callers** run intents on the machine under the lock and return; they never block
//!   in `write`. On a socket, what an intent queued is written at once, under the lock,
//!   with `MSG_DONTWAIT` ("inline", see below); otherwise the writer thread writes it,
//!   and they wake it. While the machine's transmit buffer is over its limit an intent
//!   waits (on the condition variable, lock released) for the writer to take bytes out:
//!   that is the backpressure of a peer that reads slowly.
//! * the **writer thread** takes what the machine queued (under the lock, in order, so
//!   packets leave as the machine produced them), writes it without the lock, and sleeps
//!   while there is nothing. It is the only thread that ever blocks in `write`.
//! * the **reader thread** reads, feeds the machine, fires its timers, moves events to the
//!   inboxes and wakes the writer when the machine queued something on its own (a
//!   keepalive, requests held for the hello reply, the KILL of an expired deadline). It
//!   waits for nothing a writer holds; it only waits for consumers when an inbox is full,
//!   which is the backpressure of a slow consumer, by design.
//!
//! Why a thread of its own for writing: before, callers wrote under a writer lock that the
//! reader also took after every read to flush the machine. A caller blocked in `send()`
//! (the peer's buffer full) then kept the reader from reading; with `cat` the agent
//! stopped reading its side because the command's output was not drained, and both sides'
//! buffers stayed full until the command's timeout (issue #13.1). A writer thread makes the
//! rule structural: no thread that reads ever waits to write. The cost is a wake-up of
//! that thread per burst of requests (one futex call, skipped while it is busy writing).
//!
//! # Inline writes until one would block
//!
//! A short session (`run -- true`: a hello, a command, an EOF) needs a few small writes,
//! which a socket always takes at once; a thread for them cost a clone, a stack, a malloc
//! arena and a wake-up per request. So on a socket ([`Stream::writes_nonblocking`]) the
//! thread that queued bytes writes them itself, under the lock, with a write that never
//! waits. The first write that would block (a partial one is retried) keeps the rest in
//! `pending` and starts the writer thread, which writes `pending` first and owns all
//! writing from then on, as above. Streams without a per-call non-blocking write (ttys, virtio ports)
//! start the writer thread with the session.
//!
//! On drop, the writer finishes what is queued (a `quit`, say); the reader keeps reading
//! meanwhile and, after [`CLOSE_GRACE`], shuts the stream down so that a writer stuck on
//! a peer that never reads again returns too.
//!
//! # Reading on the caller's thread until data flows
//!
//! A session made with [`Reading::OnDemand`] (the CLI's) starts without a reader thread:
//! a caller that waits for input (the hello reply, a transaction's events) reads it
//! itself, with the lock released, instead of sleeping on the condition variable, and
//! then does what the reader thread does with it (feed, timers, dispatch, write). Other
//! waiters sleep on the condition variable meanwhile and are woken as usual. A short run
//! (`run -- true`: the hello reply, two ends of output and a status) so costs neither a
//! thread nor two hand-offs between threads, which were a tenth of its start-up. The
//! reader thread takes over for good once data flows (an output or monitor event with
//! bytes is handed out: a consumer that writes what it got should not stop the reading)
//! or a writer thread starts (a transfer's bulk: callers then wait for room, not input,
//! and a dropped session needs a reader to end a stuck writer). Such a session reads
//! nothing while nobody waits on it, so neither keepalives nor deadlines run then: it is
//! for a process that waits on its session until it is done with it, not for a session
//! that is kept idle between calls ([`Reading::Thread`], the default).
//!
//! # A peer that runs when stepped
//!
//! A session made with [`Session::with_stepped_peer`] reads on demand, and its peer (an
//! agent embedded in this process, the CLI's `local`) runs only when stepped: an inline
//! reader steps it for as long as it would have waited in its read, then reads what it
//! wrote without waiting ([`Stream::read_nonblocking`]). When the reader thread takes
//! over, the peer is told to run alone first ([`SteppedPeer::run_alone`]), since nobody
//! would step it any more.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::Machine;
use tuppence::link::{Client, ClientConfig, ClientEvent, ConnectInfo, LinkError, Outcome};
use tuppence_transport::Target;

mod threads;

use crate::{Error, SteppedPeer, Stream};
use tuppence::Transmit;

/// Events buffered per transaction before the reader thread waits for the consumer.
const INBOX_EVENTS: usize = 256;
/// Data bytes buffered per transaction before the reader thread waits for the consumer.
/// 256 events of 32 KiB packets were 8 MiB in flight when the consumer is slower than the
/// link (an extract onto a file): the heap grew by 15 MiB over a 256 MiB extract, each
/// page faulted in, and the data was out of the cache by the time it was written.
const INBOX_BYTES: usize = 1 << 20;
/// How long a dropped session's writer may take to write what is still queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The longest read of a caller reading inline: what does not come as input (an abort
/// from another thread) is seen within this.
const INLINE_READ_MAX: Duration = Duration::from_millis(50);

/// Where a session's input is read (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reading {
    /// A reader thread from the start: for sessions that live on their own, idle between
    /// calls, with keepalives and deadlines kept while nobody waits.
    #[default]
    Thread,
    /// On the thread that waits for input, until data flows or a writer thread starts;
    /// then a reader thread. For a process that waits on its session until it is done
    /// with it (`tuppence run`).
    OnDemand,
}

#[derive(Default)]
struct Inbox {
    events: VecDeque<ClientEvent>,
    /// Data bytes in `events` (output, monitor data).
    bytes: usize,
    detached: bool,
    /// An inject or extract (see [`AbortHandle`]).
    transfer: bool,
    /// Aborted by an [`AbortHandle`]: waits on it return [`Error::Aborted`].
    aborted: bool,
}

/// Data bytes an event carries (what [`INBOX_BYTES`] counts).
fn data_len(ev: &ClientEvent) -> usize {
    match ev {
        ClientEvent::Output { data, .. } | ClientEvent::MonitorData { data, .. } => data.len(),
        _ => 0,
    }
}

impl Inbox {
    fn push_back(&mut self, ev: ClientEvent) {
        self.bytes = self.bytes.saturating_add(data_len(&ev));
        self.events.push_back(ev);
    }

    fn push_front(&mut self, ev: ClientEvent) {
        self.bytes = self.bytes.saturating_add(data_len(&ev));
        self.events.push_front(ev);
    }

    fn pop_front(&mut self) -> Option<ClientEvent> {
        let ev = self.events.pop_front()?;
        self.bytes = self.bytes.saturating_sub(data_len(&ev));
        Some(ev)
    }

    fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }

    /// The reader thread leaves further events in the machine until the consumer took some.
    fn is_full(&self) -> bool {
        self.events.len() >= INBOX_EVENTS || self.bytes >= INBOX_BYTES
    }
}

struct State {
    client: Client,
    inboxes: HashMap<u16, Inbox>,
    connected: Option<ConnectInfo>,
    /// Set once the connection is unusable; every waiter sees it.
    failure: Option<LinkError>,
    io_failure: Option<String>,
    reader_done: bool,
    /// Threads blocked on the condition variable: notifying costs a syscall, so it is
    /// skipped when nobody waits (every event used to cost one, twice).
    waiting: usize,
    /// Who writes (see the module documentation).
    writer: Writer,
    /// Bytes taken from the machine that an inline write left (it would have blocked):
    /// the writer thread writes them before anything newer.
    pending: Transmit,
    /// Bytes taken from the machine and not yet written.
    unwritten: usize,
    /// The writer thread sleeps on `write_cond` (nothing to write).
    writer_idle: bool,
    writer_done: bool,
    /// Transactions given up on (see `Client::abandon`: a dropped monitor, an aborted or
    /// failed transfer) whose request met a full transmit queue where nobody may wait for
    /// room (a `Drop`, a signal handler); the writer thread retries as it makes room.
    deferred: Vec<u16>,
    /// Who reads the stream.
    reading: Reader,
    /// A reader thread was asked for while a caller was reading inline: it starts when
    /// that read is done.
    reader_wanted: bool,
}

/// Who reads the stream (see "Reading on the caller's thread" in the module docs).
enum Reader {
    /// The reader thread; or nobody, once it has ended.
    Thread,
    /// Between two inline reads.
    Parked(Box<ReadSide>),
    /// A waiting caller is reading inline now.
    Busy,
    /// An inline read met the end of the stream or an error: nobody reads any more.
    Done,
}

/// The reading half of a session's stream with its receive buffer, as the reader thread
/// or an inline reader holds it.
struct ReadSide {
    stream: Box<dyn Stream>,
    /// Handed to the machine's `handle_buf`: large data payloads stay slices of it.
    buf: tuppence_transport::RecvBuf,
    /// A peer that runs only when stepped ([`Session::with_stepped_peer`]): an inline
    /// reader steps it instead of waiting in its read. Handed its own thread, and gone
    /// from here, when the reader thread starts.
    peer: Option<Box<dyn SteppedPeer>>,
}

/// Who writes to the stream.
enum Writer {
    /// Whichever thread queued the bytes, without waiting; the write handle.
    Inline(Box<dyn Stream>),
    /// The writer thread (started with the session, or when an inline write would block).
    Thread,
    /// Neither: the session closed or failed before a writer thread was needed.
    Done,
}

impl State {
    fn writer_is_inline(&self) -> bool {
        matches!(self.writer, Writer::Inline(_))
    }

    /// Ends inline writing, as the writer thread's exit would: returns the write handle,
    /// to be dropped once the lock is released (the last handle of an `exec:` link waits
    /// for its command to exit).
    fn stop_inline(&mut self) -> Option<Box<dyn Stream>> {
        if !self.writer_is_inline() {
            return None;
        }
        self.writer_done = true;
        self.unwritten = 0;
        self.pending.clear();
        match std::mem::replace(&mut self.writer, Writer::Done) {
            Writer::Inline(w) => Some(w),
            _ => None,
        }
    }

    /// Nothing more will be written: the writer thread has exited, or, without one, the
    /// link failed (the thread would exit at once).
    fn writer_gone(&self) -> bool {
        self.writer_done
            || (self.writer_is_inline() && (self.failure.is_some() || self.io_failure.is_some()))
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Consumers, callers waiting for transmit room or a flush, and the reader waiting for
    /// inbox room wait here.
    cond: Condvar,
    /// Only the writer thread waits here, for bytes to write.
    write_cond: Condvar,
    closing: AtomicBool,
    /// The reader thread's buffer size (for [`Session::read_buffer_len`]).
    read_buffer_len: AtomicUsize,
    /// On a device link: where to ask whether the other end has taken what was written
    /// (see [`Session::quit`]). Closed with the session.
    taken: Mutex<Option<std::os::fd::OwnedFd>>,
}

/// A connection to an agent. Cheap to share between threads (`&Session` is enough for
/// every operation); operations on different transactions run concurrently.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl Session {
    /// Starts a session over `stream` and waits (up to `connect_timeout`) for the hello
    /// reply. It has a reader thread from the start ([`Reading::Thread`]).
    pub fn new<S: Stream>(
        stream: S,
        config: ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Session, Error> {
        Session::with_reading(stream, config, connect_timeout, Reading::Thread)
    }

    /// As [`Session::new`], reading as `reading` says (see the module docs).
    pub fn with_reading<S: Stream>(
        stream: S,
        config: ClientConfig,
        connect_timeout: Duration,
        reading: Reading,
    ) -> Result<Session, Error> {
        Session::start(stream, config, connect_timeout, reading, None)
    }

    /// A session with a peer that lives in this process and runs only when stepped (see
    /// [`SteppedPeer`]): it reads [`Reading::OnDemand`], stepping the peer where it would
    /// wait for input, and hands the peer a thread of its own when it starts its reader
    /// thread.
    pub fn with_stepped_peer<S: Stream>(
        stream: S,
        config: ClientConfig,
        connect_timeout: Duration,
        peer: Box<dyn SteppedPeer>,
    ) -> Result<Session, Error> {
        Session::start(
            stream,
            config,
            connect_timeout,
            Reading::OnDemand,
            Some(peer),
        )
    }

    fn start<S: Stream>(
        stream: S,
        config: ClientConfig,
        connect_timeout: Duration,
        reading: Reading,
        peer: Option<Box<dyn SteppedPeer>>,
    ) -> Result<Session, Error> {
        let writer = stream.try_clone_stream()?;
        let inline = writer.writes_nonblocking();
        // A device link (`ClientConfig::for_device_link`).
        let config_device_link = config.resync_before_hello;
        let started = Instant::now();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                client: Client::new(config, started),
                inboxes: HashMap::new(),
                connected: None,
                failure: None,
                io_failure: None,
                reader_done: false,
                waiting: 0,
                writer: Writer::Thread,
                pending: Transmit::new(),
                unwritten: 0,
                writer_idle: false,
                writer_done: false,
                deferred: Vec::new(),
                reading: Reader::Thread,
                reader_wanted: false,
            }),
            cond: Condvar::new(),
            write_cond: Condvar::new(),
            closing: AtomicBool::new(false),
            read_buffer_len: AtomicUsize::new(0),
            taken: Mutex::new(if config_device_link {
                stream.taken_probe()
            } else {
                None
            }),
        });
        if inline {
            let mut st = shared.lock();
            st.writer = Writer::Inline(Box::new(writer));
            // The hello, before the reader exists to wait for its reply.
            shared.push(&mut st);
        } else {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tuppence-writer".into())
                .spawn(move || shared.writer_loop(writer))?;
        }
        let side = Box::new(ReadSide {
            stream: Box::new(stream),
            buf: tuppence_transport::RecvBuf::new(threads::READ_BUF),
            peer,
        });
        match reading {
            Reading::Thread => {
                let spawned = {
                    let shared = shared.clone();
                    std::thread::Builder::new()
                        .name("tuppence-reader".into())
                        .spawn(move || shared.reader_loop(*side))
                };
                if let Err(e) = spawned {
                    shared.close();
                    return Err(e.into());
                }
            }
            Reading::OnDemand => {
                let mut st = shared.lock();
                st.reading = Reader::Parked(side);
                // With a writer thread (a stream without non-blocking writes, a tty), a
                // reader thread too (see the module docs).
                if !st.writer_is_inline() {
                    shared.start_reader(&mut st);
                }
            }
        }
        let session = Session { shared };
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
    /// transaction, and hands what it queued to the writer thread. `transfer` marks an
    /// inject or extract, which an [`AbortHandle`] can abort.
    pub(crate) fn open(
        &self,
        transfer: bool,
        mut f: impl FnMut(&mut Client) -> Result<u16, tuppence::link::UsageError>,
    ) -> Result<u16, Error> {
        self.shared.intent(None, |st| {
            let xid = f(&mut st.client)?;
            st.inboxes.insert(
                xid,
                Inbox {
                    transfer,
                    ..Inbox::default()
                },
            );
            Ok(xid)
        })
    }

    /// Runs an intent on an existing transaction and hands what it queued to the writer
    /// thread. While the transmit buffer is full, waits for the writer to drain it.
    pub(crate) fn act(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<(), tuppence::link::UsageError>,
    ) -> Result<(), Error> {
        self.shared.intent(None, |st| Ok(f(&mut st.client)?))
    }

    /// Sends data in pieces so the machine's transmit buffer stays bounded; a wait for
    /// room ends with [`Error::Aborted`] if the transaction is aborted meanwhile.
    /// The largest data payload of one packet on this link (`Client::max_data_chunk`).
    pub(crate) fn max_data_chunk(&self) -> usize {
        self.shared.lock().client.max_data_chunk().max(1)
    }

    pub(crate) fn send_data(
        &self,
        xid: u16,
        data: Bytes,
        f: impl Fn(&mut Client, Bytes) -> Result<(), tuppence::link::UsageError>,
    ) -> Result<(), Error> {
        // Whole packets per intent, so that a long piece leaves no runt but its last.
        let most = 8 * self.max_data_chunk();
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(most));
            self.shared
                .intent(Some(xid), |st| Ok(f(&mut st.client, piece.clone())?))?;
        }
        Ok(())
    }

    /// Sends what a transaction given up on owes the agent (`Client::abandon`: end a
    /// monitor, abort a transfer) without waiting for transmit room (from a `Drop`, or
    /// after a local failure): queued now, or by the writer thread once it has made room.
    pub(crate) fn abandon(&self, xid: u16) {
        let mut st = self.shared.lock();
        if self.shared.failure_of(&st).is_some() {
            return;
        }
        self.shared.abandon(&mut st, xid);
    }

    /// Waits until everything requested so far has been written to the stream, for at
    /// most `timeout` (`None` = as long as it takes). Returns false on timeout. Intents
    /// return once their packets are queued; this is for callers that must know they
    /// left before the process exits (`quit`, the interrupt of an aborted transfer).
    pub fn flush(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if st.client.transmit_buffered() == 0 && st.unwritten == 0 {
                return Ok(true);
            }
            // A failure alone is not checked here: the peer may close right after reading
            // the last request (`quit`) while the writer has yet to record the write.
            if st.writer_gone() {
                return Err(self
                    .shared
                    .failure_of(&st)
                    .unwrap_or(Error::Link(LinkError::Closed)));
            }
            st = match deadline {
                None => self.shared.wait(st),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    self.shared.wait_timeout(st, d - now)
                }
            };
        }
    }

    /// A handle that aborts this session's transfers from another thread (a Ctrl-C
    /// handler). It does not keep the session alive.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            shared: Arc::downgrade(&self.shared),
        }
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
                if inbox.aborted {
                    return Err(Error::Aborted);
                }
                if !inbox.events.is_empty() {
                    let mut finished = false;
                    let mut data = false;
                    for _ in 0..max.max(1) {
                        let Some(ev) = inbox.pop_front() else {
                            break;
                        };
                        finished = matches!(ev, ClientEvent::Finished { .. });
                        data |= data_len(&ev) > 0;
                        out.push_back(ev);
                        if finished {
                            break;
                        }
                    }
                    if finished {
                        st.inboxes.remove(&xid);
                    }
                    // Data flows: from now on a thread reads while the caller writes it
                    // out (see the module docs).
                    if data {
                        self.shared.start_reader(&mut st);
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
            inbox.push_front(ev);
        }
        self.shared.notify(&st);
    }

    /// Stops delivering events of `xid` (its handle was dropped); they are discarded.
    pub(crate) fn detach(&self, xid: u16) {
        let mut st = self.shared.lock();
        if let Some(inbox) = st.inboxes.get_mut(&xid) {
            inbox.detached = true;
            inbox.clear();
        }
        self.shared.notify(&st);
    }

    /// Asks the agent to exit and waits (up to a few seconds) until the request is written,
    /// and on a device link (`ClientConfig::for_device_link`: a serial line, a virtio
    /// port, a unix socket in front of one) until the other end has taken it. The agent
    /// then closes the connection.
    ///
    /// Written is not delivered on a device link: QEMU's chardev socket drops what it had
    /// not read when the socket closes, so a caller that quits and then closes could lose
    /// the request the guest agent never saw.
    pub fn quit(&self) -> Result<(), Error> {
        self.act(|c| c.quit())?;
        if !self.flush(Some(CLOSE_GRACE))? {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the quit request could not be written in time",
            )));
        }
        let taken = self.shared.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = taken.as_ref()
            && !tuppence_transport::wait_taken(fd, CLOSE_GRACE)
        {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the other end did not take the quit request in time",
            )));
        }
        Ok(())
    }

    /// The machine's counters (packets, drops, violations, command deadlines that expired
    /// on this side).
    pub fn stats(&self) -> tuppence::link::Stats {
        self.shared.lock().client.stats().clone()
    }

    /// Bytes of memory the reader thread's buffer holds: 16 KiB, or 256 KiB from a read
    /// that filled the small one until the session is idle again (no live transaction).
    pub fn read_buffer_len(&self) -> usize {
        self.shared.read_buffer_len.load(Ordering::Relaxed)
    }

    /// True once the connection has failed or closed.
    pub fn is_closed(&self) -> bool {
        let st = self.shared.lock();
        st.reader_done || st.failure.is_some()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The reader thread (if any) wakes at its next read timeout at the latest; it is
        // not waited for: a read without timeout (keepalive off) may block until the peer
        // closes. A parked stream closes with the session's last handle.
        self.shared.close();
    }
}

/// Aborts the transfers of a session from another thread, e.g. a Ctrl-C handler, while
/// the thread that runs them is blocked in `inject` or `extract`.
#[derive(Clone, Debug)]
pub struct AbortHandle {
    shared: std::sync::Weak<Shared>,
}

impl AbortHandle {
    /// Aborts every inject and extract in progress on the session: each sends the agent
    /// an interrupt (it removes an inject's temporary and stops reading an extract's
    /// file) and returns [`Error::Aborted`] promptly, even while it waits for the agent,
    /// for transmit room, or (with a source that checks for it, as the CLI's does) for
    /// its input. Transfers started afterwards are not affected; commands and monitors
    /// never are. Returns how many transfers were aborted.
    pub fn abort(&self) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0;
        };
        let mut st = shared.lock();
        let xids: Vec<u16> = st
            .inboxes
            .iter()
            .filter(|(_, i)| i.transfer && !i.aborted && !i.detached)
            .map(|(&x, _)| x)
            .collect();
        for &xid in &xids {
            // An interrupt on a transfer aborts it on the agent. Unknown xid: it has just
            // ended, nothing to undo. A full queue (inject data): sent once there is room.
            shared.abandon(&mut st, xid);
            if let Some(inbox) = st.inboxes.get_mut(&xid) {
                inbox.aborted = true;
            }
        }
        shared.push(&mut st);
        shared.cond.notify_all();
        xids.len()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `d` for a change (callers re-check what they wait for): reads inline
    /// when the stream is parked, else sleeps on the condition variable.
    fn wait_timeout<'a>(
        self: &'a Arc<Self>,
        g: MutexGuard<'a, State>,
        d: Duration,
    ) -> MutexGuard<'a, State> {
        if matches!(g.reading, Reader::Parked(_)) {
            return self.read_inline(g, Some(d));
        }
        self.sleep(g, Some(d))
    }

    /// As [`Shared::wait_timeout`], without a time limit.
    fn wait<'a>(self: &'a Arc<Self>, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if matches!(g.reading, Reader::Parked(_)) {
            return self.read_inline(g, None);
        }
        self.sleep(g, None)
    }

    /// Sleeps on the condition variable until notified, or for at most `d`.
    fn sleep<'a>(
        &self,
        mut g: MutexGuard<'a, State>,
        d: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        g.waiting += 1;
        let mut g = match d {
            Some(d) => match self.cond.wait_timeout(g, d) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            },
            None => self.cond.wait(g).unwrap_or_else(|e| e.into_inner()),
        };
        g.waiting -= 1;
        g
    }

    /// Hands the parked stream to a reader thread for good (see "Reading on the caller's
    /// thread"); if a caller is reading inline now, that caller does it when its read is
    /// done. Nothing for a session that has its thread or has ended.
    fn start_reader(self: &Arc<Self>, st: &mut State) {
        match std::mem::replace(&mut st.reading, Reader::Thread) {
            Reader::Parked(mut side) => {
                if let Some(mut peer) = side.peer.take()
                    && let Err(e) = peer.run_alone()
                {
                    st.reading = Reader::Done;
                    self.end_locked(st, Some(e));
                    return;
                }
                let shared = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("tuppence-reader".into())
                    .spawn(move || shared.reader_loop(*side));
                if let Err(e) = spawned {
                    // The stream went with the closure: the session is over.
                    st.reading = Reader::Done;
                    self.end_locked(st, Some(e));
                }
            }
            Reader::Busy => {
                st.reading = Reader::Busy;
                st.reader_wanted = true;
            }
            other => st.reading = other,
        }
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

    /// Runs an intent under the lock; while the machine answers `QueueFull`, waits for
    /// the writer thread to make room and tries again (`f` may run several times). With
    /// `xid`, the wait ends with [`Error::Aborted`] once that transaction is aborted.
    /// Writes what the intent queued, or wakes the writer thread for it.
    fn intent<T>(
        self: &Arc<Self>,
        xid: Option<u16>,
        mut f: impl FnMut(&mut State) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut st = self.lock();
        loop {
            if let Some(e) = self.failure_of(&st) {
                return Err(e);
            }
            if xid.is_some_and(|x| st.inboxes.get(&x).is_some_and(|i| i.aborted)) {
                return Err(Error::Aborted);
            }
            match f(&mut st) {
                Err(Error::Usage(tuppence::link::UsageError::QueueFull { .. })) => {
                    self.push(&mut st);
                    // Written inline: room now. Else the writer notifies after taking
                    // bytes out of the machine.
                    if !st.writer_is_inline() || st.client.transmit_buffered() > 0 {
                        st = self.wait(st);
                    }
                }
                r => {
                    self.push(&mut st);
                    return r;
                }
            }
        }
    }

    /// `Client::abandon(xid)`, or, while the transmit queue is full, remembered for the
    /// writer thread to retry; writes or wakes the writer either way.
    fn abandon(self: &Arc<Self>, st: &mut State, xid: u16) {
        if let Err(tuppence::link::UsageError::QueueFull { .. }) = st.client.abandon(xid) {
            st.deferred.push(xid);
        }
        self.push(st);
    }

    /// Wakes the writer thread if it sleeps and the machine has bytes for it. Call with
    /// the lock held (the writer checks for work under it before sleeping).
    fn wake_writer(&self, st: &State) {
        if st.writer_idle && (st.client.transmit_buffered() > 0 || !st.deferred.is_empty()) {
            self.write_cond.notify_one();
        }
    }

    /// Asks both threads to finish: the writer writes what is queued, then stops. Without
    /// a writer thread everything is written already: the write handle goes now, as the
    /// thread's would.
    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // The connection closes with the session's handles, not with this one's.
        drop(self.taken.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut st = self.lock();
        let handle = st.stop_inline();
        // Nobody reads a parked stream again: it closes now, as the thread's would.
        let parked = match std::mem::replace(&mut st.reading, Reader::Done) {
            Reader::Parked(side) => Some(side),
            other => {
                st.reading = other;
                None
            }
        };
        self.write_cond.notify_one();
        self.cond.notify_all();
        drop(st);
        drop(handle);
        drop(parked);
    }
}
