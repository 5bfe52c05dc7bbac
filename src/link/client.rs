//! The client (controller) side of a link connection.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::core::{self, Core, Input, Stats, Timeout};
use super::{
    ClientConfig, ClientEvent, Command, LinkError, Outcome, Refusal, Signal, UsageError, Violation,
    effective_keepalive,
};
use crate::wire::{
    CommandRequest, Dialect, Frame, HEADER_LEN, Header, Hello, Packet, PacketType, Sender, chunks,
};

use super::status::{EFAULT, EPROTO};

/// Length of a hello packet: the header and `major, minor, keepalive u16`.
const HELLO_LEN: u16 = HEADER_LEN as u16 + 4;

#[derive(Debug)]
enum Kind {
    Command,
    Inject { ready: bool, sent_eof: bool },
    Extract,
    Monitor { ending: bool },
}

#[derive(Debug)]
struct Transaction {
    kind: Kind,
    major: Option<u32>,
    stdin_closed: bool,
    /// A command's client deadline (see `ClientConfig::deadline_grace`).
    deadline: Deadline,
}

/// Where a command stands with its client deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    /// No deadline: not a command, no timeout, or `deadline_grace` is `None`.
    None,
    /// Timeout plus grace, to be counted from when the request leaves in `poll_transmit`.
    Unarmed(Duration),
    At(Instant),
}

/// The client machine: sends requests, turns the server's packets into [`ClientEvent`]s.
///
/// Method groups, as in quinn-proto: getters; `handle_*` inputs; intents (`run`, `inject`,
/// …); `poll_*` outputs, to be drained after every input or intent. The machine never
/// reads a clock, so every time-dependent call takes `now`.
///
/// ```
/// use std::time::Instant;
/// use bytes::BytesMut;
/// use tuppence::link::{Client, ClientConfig, Command};
///
/// let now = Instant::now();
/// let mut client = Client::new(ClientConfig::default(), now);
/// let xid = client.run(Command::new("uname -a")).unwrap();
/// let mut out = BytesMut::new();
/// client.poll_transmit(now, &mut out); // the hello; the command follows the server's reply
/// assert_eq!(out[0], b'h');
/// assert_eq!(xid, 1);
/// ```
pub struct Client {
    core: Core,
    config: ClientConfig,
    cid: Option<u16>,
    server_version: Option<(u8, u8)>,
    /// Requests made before the server assigned our cid; sent once it has.
    pending: VecDeque<(u16, Packet)>,
    /// Their encoded size plus their slot in `pending` each, so that many tiny requests
    /// (1-byte stdin writes) are bounded by the memory they take.
    pending_bytes: usize,
    transactions: HashMap<u16, Transaction>,
    next_xid: u16,
    events: VecDeque<ClientEvent>,
    /// When the hello is said again if no reply came (see `ClientConfig::hello_retry`);
    /// `None` once it has been, or when it never is.
    hello_retry_at: Option<Instant>,
    /// A refusal received instead of the hello reply (see [`Refusal`]): the status, and
    /// the detail once its `m` arrived. With `resync_before_hello` it only counts if the
    /// agent then closes the connection (on a device link it may be an answer to a
    /// previous client's garbled hello, and this client's own reply may still come).
    refusing: Option<(u32, Option<u32>)>,
    /// Armed command deadlines in order, the earliest first: `poll_timeout` takes the
    /// first, a command that ends removes its own (O(log n) each, with up to
    /// `max_transactions` commands live).
    deadlines: BTreeSet<(Instant, u16)>,
    /// Commands whose request was queued for the transport since the last
    /// `poll_transmit`: their deadlines start counting when it takes them.
    unarmed: Vec<u16>,
}

impl Client {
    /// A client that has queued its hello.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut core = Core::new(config.dialect, Sender::Server, config.limits.clone(), now);
        let (major, minor) = config.dialect.version();
        let hello = Packet::Hello(Hello {
            major,
            minor,
            keepalive: config.keepalive,
        });
        // A 4-byte hello always encodes.
        let _ = core.queue(0, 0, &hello);
        let hello_retry_at = config.hello_retry.and_then(|t| now.checked_add(t));
        // Until the reply, the handshake timeout bounds the wait (no `K` before a cid).
        core.set_keepalive(config.handshake_timeout, false);
        Client {
            core,
            config,
            cid: None,
            server_version: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            transactions: HashMap::new(),
            next_xid: 1,
            events: VecDeque::new(),
            hello_retry_at,
            refusing: None,
            deadlines: BTreeSet::new(),
            unarmed: Vec::new(),
        }
    }

    // ---- getters ----

    /// The cid the server assigned, once connected.
    pub fn cid(&self) -> Option<u16> {
        self.cid
    }

    pub fn is_connected(&self) -> bool {
        self.cid.is_some() && self.core.error.is_none()
    }

    pub fn server_version(&self) -> Option<(u8, u8)> {
        self.server_version
    }

    pub fn dialect(&self) -> Dialect {
        self.config.dialect
    }

    /// The fatal error, once the connection has failed.
    pub fn error(&self) -> Option<&LinkError> {
        self.core.error.as_ref()
    }

    /// Bytes waiting to be transmitted (including requests held until the hello reply,
    /// which also count the memory each takes in the queue).
    pub fn transmit_buffered(&self) -> usize {
        self.core
            .transmit_buffered()
            .saturating_add(self.pending_bytes)
    }

    /// False while intents would answer `QueueFull`.
    pub fn can_send(&self) -> bool {
        self.transmit_buffered() <= self.config.limits.max_transmit_buffer
    }

    /// Number of live transactions.
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    pub fn is_live(&self, xid: u16) -> bool {
        self.transactions.contains_key(&xid)
    }

    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// The negotiated keepalive interval in force, if any.
    pub fn keepalive(&self) -> Option<std::time::Duration> {
        self.core.keepalive()
    }

    /// Whether [`handle_bytes`](Self::handle_bytes) would take bytes now (false while
    /// events wait to be polled): a loop holding unconsumed input should wait for that to
    /// change instead of retrying.
    pub fn accepts_input(&self) -> bool {
        self.core.error.is_none() && Input::has_room(self)
    }

    // ---- inputs ----

    /// Feeds bytes read from the transport. Returns how many were consumed: fewer than
    /// given when the event queue is full (drain `poll_event`, then offer the rest again).
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, LinkError> {
        core::handle_bytes(self, now, data)
    }

    /// The transport reached end of stream.
    pub fn handle_eof(&mut self, now: Instant) {
        self.core.tick(now);
        if self.core.error.is_none() {
            // A refusal, even one cut short after its status, says why.
            let error = match self.refusing {
                Some((status, detail)) => LinkError::Refused(Refusal {
                    status,
                    detail: detail.unwrap_or(0),
                }),
                None => LinkError::Closed,
            };
            self.fail(error);
        }
    }

    /// The runtime stops reading the transport for a while: the silence until the next
    /// `handle_bytes` is not the agent's (see [`super::Limits::stale_partial_after`]).
    pub fn handle_input_paused(&mut self) {
        self.core.input_paused();
    }

    /// Fires due timers (hello retry, command deadlines, keepalive send, dead-link
    /// detection). Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.core.tick(now);
        if self.cid.is_none()
            && self.core.error.is_none()
            && self.hello_retry_at.is_some_and(|t| now >= t)
        {
            self.hello_retry_at = None;
            let (major, minor) = self.config.dialect.version();
            let hello = Packet::Hello(Hello {
                major,
                minor,
                keepalive: self.config.keepalive,
            });
            let _ = self.core.queue(0, 0, &hello);
        }
        self.expire_deadlines(now);
        match self.core.due() {
            Timeout::Nothing => {}
            Timeout::SendKeepalive => {
                if let Some(cid) = self.cid {
                    let _ = self.core.queue(cid, 0, &Packet::Keepalive);
                }
            }
            Timeout::Dead(k) if self.cid.is_none() => self.fail(LinkError::HandshakeTimeout(k)),
            Timeout::Dead(k) => {
                self.events.push_back(ClientEvent::LinkDead);
                self.fail(LinkError::KeepaliveExpired(k));
            }
        }
    }

    // ---- intents ----

    /// Starts a command; returns its xid.
    ///
    /// The timeout sent is [`Command::timeout_secs_in`] the dialect: without one, a 4.0
    /// agent applies its own default, while a 3.0 agent is sent 60 s (the C executor would
    /// read 0 as 12 s). A command with a timeout also gets a client deadline (see
    /// [`ClientConfig::deadline_grace`]). Refused with [`UsageError::TooLarge`] when user,
    /// command and environment do not fit in one packet of the dialect.
    pub fn run(&mut self, cmd: Command) -> Result<u16, UsageError> {
        let timeout = cmd.timeout_secs_in(self.config.dialect);
        let deadline = match self.config.deadline_grace {
            Some(grace) if timeout > 0 => {
                Deadline::Unarmed(Duration::from_secs(u64::from(timeout)).saturating_add(grace))
            }
            _ => Deadline::None,
        };
        let packet = Packet::Command(CommandRequest {
            user: cmd.user,
            command: cmd.command,
            timeout,
            request_tty: u32::from(cmd.tty),
            reserved: [0, 0],
            env: cmd.env,
        });
        let xid = self.open(Kind::Command, packet)?;
        if deadline != Deadline::None
            && let Some(tx) = self.transactions.get_mut(&xid)
        {
            tx.deadline = deadline;
            // Before the hello reply the request waits in `pending`; it is counted from
            // when it is queued for the transport (`on_handshake`).
            if self.cid.is_some() {
                self.unarmed.push(xid);
            }
        }
        Ok(xid)
    }

    /// Sends bytes to a command's stdin.
    pub fn send_stdin(&mut self, xid: u16, data: Bytes) -> Result<(), UsageError> {
        let tx = self.live(xid)?;
        if !matches!(tx.kind, Kind::Command) || tx.stdin_closed {
            return Err(UsageError::WrongState {
                xid,
                what: "take stdin (not a command, or stdin closed)",
            });
        }
        self.send_data(xid, data)
    }

    /// Closes a command's stdin (the command reads EOF).
    pub fn close_stdin(&mut self, xid: u16) -> Result<(), UsageError> {
        let tx = self.live(xid)?;
        if !matches!(tx.kind, Kind::Command) || tx.stdin_closed {
            return Err(UsageError::WrongState {
                xid,
                what: "close stdin (not a command, or already closed)",
            });
        }
        self.send(xid, Packet::Eof { channel: 0 })?;
        if let Some(tx) = self.transactions.get_mut(&xid) {
            tx.stdin_closed = true;
        }
        Ok(())
    }

    /// Sends a signal to a command's process group. In protocol 3.0 the signal is always
    /// KILL (the packet has no payload there); an interrupt also aborts a transfer.
    pub fn interrupt(&mut self, xid: u16, signal: Signal) -> Result<(), UsageError> {
        self.live(xid)?;
        let packet = self.interrupt_packet(signal);
        self.send(xid, packet)
    }

    /// An interrupt as the dialect says it: by name in 4.0; without payload (KILL) in 3.0.
    fn interrupt_packet(&self, signal: Signal) -> Packet {
        let signal = match self.config.dialect {
            Dialect::V4 => signal.into_bytes(),
            Dialect::Legacy3 => Bytes::new(),
        };
        Packet::Interrupt { signal }
    }

    /// Asks the agent to create `path` as `user` with `mode`; wait for
    /// [`ClientEvent::InjectReady`], then `send_file_data` and `finish_file`.
    pub fn inject(
        &mut self,
        user: impl Into<Bytes>,
        path: impl Into<Bytes>,
        mode: u32,
    ) -> Result<u16, UsageError> {
        let packet = Packet::Inject {
            user: user.into(),
            path: path.into(),
            mode,
        };
        self.open(
            Kind::Inject {
                ready: false,
                sent_eof: false,
            },
            packet,
        )
    }

    /// File content for an inject that is ready.
    pub fn send_file_data(&mut self, xid: u16, data: Bytes) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Inject {
                ready: true,
                sent_eof: false,
            } => self.send_data(xid, data),
            _ => Err(UsageError::WrongState {
                xid,
                what: "take file data (not an inject that is ready and unfinished)",
            }),
        }
    }

    /// Ends the file: the agent renames it into place and answers.
    pub fn finish_file(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Inject {
                ready: true,
                sent_eof: false,
            } => {
                self.send(xid, Packet::Eof { channel: 0 })?;
                if let Some(Transaction {
                    kind: Kind::Inject { sent_eof, .. },
                    ..
                }) = self.transactions.get_mut(&xid)
                {
                    *sent_eof = true;
                }
                Ok(())
            }
            _ => Err(UsageError::WrongState {
                xid,
                what: "finish a file (not an inject that is ready and unfinished)",
            }),
        }
    }

    /// Asks for the content of `path`, read as `user`: [`ClientEvent::Output`] on channel 0,
    /// then `OutputEnd` and `Finished`.
    pub fn extract(
        &mut self,
        user: impl Into<Bytes>,
        path: impl Into<Bytes>,
    ) -> Result<u16, UsageError> {
        let packet = Packet::Extract {
            user: user.into(),
            path: path.into(),
        };
        self.open(Kind::Extract, packet)
    }

    /// Subscribes to an event source (`agent`, `kmsg`, `file:PATH`).
    pub fn monitor(&mut self, source: impl Into<Bytes>) -> Result<u16, UsageError> {
        self.require_v4("monitor")?;
        let packet = Packet::Monitor {
            source: source.into(),
        };
        self.open(Kind::Monitor { ending: false }, packet)
    }

    /// Asks the monitor's source to flush what is pending; answered by `Settled { seq }`.
    pub fn settle(&mut self, xid: u16, seq: u32) -> Result<(), UsageError> {
        self.require_v4("settle")?;
        match self.live(xid)?.kind {
            Kind::Monitor { .. } => self.send(xid, Packet::Settle { seq }),
            _ => Err(UsageError::WrongState {
                xid,
                what: "settle (not a monitor)",
            }),
        }
    }

    /// Ends a monitor; `Finished` follows.
    pub fn end_monitor(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Monitor { ending: false } => {
                self.send(xid, Packet::Eof { channel: 0 })?;
                if let Some(Transaction {
                    kind: Kind::Monitor { ending },
                    ..
                }) = self.transactions.get_mut(&xid)
                {
                    *ending = true;
                }
                Ok(())
            }
            _ => Err(UsageError::WrongState {
                xid,
                what: "end a monitor (not a monitor, or already ending)",
            }),
        }
    }

    /// Asks for process information about a running command (bit *n* of `mask` asks for
    /// field type *n*, see [`crate::wire::field`]).
    pub fn procinfo(&mut self, xid: u16, mask: u32) -> Result<(), UsageError> {
        self.require_v4("procinfo")?;
        match self.live(xid)?.kind {
            Kind::Command => self.send(xid, Packet::ProcInfoQuery { mask }),
            _ => Err(UsageError::WrongState {
                xid,
                what: "answer procinfo (not a command)",
            }),
        }
    }

    /// What a transaction owes the agent when its application gives up on it (a dropped
    /// handle, a local failure, a user's abort): a monitor is ended, an inject or extract
    /// aborted with an interrupt (the agent removes an inject's temporary and stops
    /// reading an extract's file). A command is left to run to its end (interrupt it
    /// explicitly to stop it); so is a monitor already ending. Like any intent it queues
    /// nothing and answers `QueueFull` while the transmit buffer is over its limit, so a
    /// caller that cannot wait keeps the xid and tries again once there is room.
    pub fn abandon(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Monitor { ending: false } => self.end_monitor(xid),
            Kind::Inject { .. } | Kind::Extract => self.interrupt(xid, Signal::KILL),
            Kind::Command | Kind::Monitor { ending: true } => Ok(()),
        }
    }

    /// Asks the agent to stop (it kills what it started and exits).
    pub fn quit(&mut self) -> Result<(), UsageError> {
        self.core.check_open()?;
        self.send(0, Packet::Quit)
    }

    // ---- outputs ----

    /// Appends whole packets to `buf`; returns the number of bytes appended. Command
    /// deadlines start counting here, when their request is handed to the transport.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
        let n = self.core.poll_transmit(now, buf);
        self.arm_deadlines(now);
        n
    }

    /// Like [`Self::poll_transmit`], without copying data payloads: appends what is
    /// queued to `out` as segments whose concatenation is the byte stream (whole packets).
    /// A large data payload is a segment of its own, sharing the `Bytes` given to the
    /// intent. Write them with vectored I/O (`writev`). Returns the number of bytes.
    pub fn poll_transmit_segments(&mut self, now: Instant, out: &mut VecDeque<Bytes>) -> usize {
        let n = self.core.poll_transmit_segments(now, out);
        self.arm_deadlines(now);
        n
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let core = self.core.poll_timeout();
        let retry = self
            .hello_retry_at
            .filter(|_| self.cid.is_none() && self.core.error.is_none());
        let deadline = self
            .deadlines
            .first()
            .map(|&(t, _)| t)
            .filter(|_| self.core.error.is_none());
        [core, retry, deadline].into_iter().flatten().min()
    }

    // ---- internals ----

    fn require_v4(&self, what: &'static str) -> Result<(), UsageError> {
        match self.config.dialect {
            Dialect::V4 => Ok(()),
            dialect => Err(UsageError::NotSupported { what, dialect }),
        }
    }

    fn live(&self, xid: u16) -> Result<&Transaction, UsageError> {
        self.core.check_open()?;
        self.transactions
            .get(&xid)
            .ok_or(UsageError::UnknownTransaction(xid))
    }

    fn check_room(&self) -> Result<(), UsageError> {
        self.core.check_room()?;
        let buffered = self.transmit_buffered();
        if buffered > self.config.limits.max_transmit_buffer {
            return Err(UsageError::QueueFull {
                buffered,
                limit: self.config.limits.max_transmit_buffer,
            });
        }
        Ok(())
    }

    fn open(&mut self, kind: Kind, packet: Packet) -> Result<u16, UsageError> {
        self.check_room()?;
        let limit = self
            .config
            .limits
            .max_transactions
            .min(usize::from(u16::MAX) - 1);
        if self.transactions.len() >= limit {
            return Err(UsageError::TooManyTransactions(limit));
        }
        let xid = self.allocate_xid();
        self.send(xid, packet)?;
        self.transactions.insert(
            xid,
            Transaction {
                kind,
                major: None,
                stdin_closed: false,
                deadline: Deadline::None,
            },
        );
        Ok(xid)
    }

    /// Next free xid from 1 upwards, wrapping and skipping 0 and xids still live.
    fn allocate_xid(&mut self) -> u16 {
        loop {
            let xid = self.next_xid;
            self.next_xid = self.next_xid.checked_add(1).unwrap_or(1);
            if xid != 0 && !self.transactions.contains_key(&xid) {
                return xid;
            }
        }
    }

    fn send(&mut self, xid: u16, packet: Packet) -> Result<(), UsageError> {
        self.check_room()?;
        self.enqueue(xid, packet)
    }

    /// Queues a packet, or holds it until the hello reply assigns our cid. No room check:
    /// callers check once per intent, so an intent is queued whole or not at all.
    fn enqueue(&mut self, xid: u16, packet: Packet) -> Result<(), UsageError> {
        let dialect = self.config.dialect;
        let len = packet.encoded_len(dialect);
        if len > dialect.max_packet_len() {
            return Err(UsageError::TooLarge {
                what: packet.packet_type().name(),
                len,
                max: dialect.max_packet_len(),
                dialect,
            });
        }
        match self.cid {
            Some(cid) => self.core.queue(cid, xid, &packet)?,
            None => {
                // Validate now so the error reaches the caller, not the hello handler.
                packet.to_bytes(self.config.dialect, 0, xid)?;
                self.pending_bytes = self
                    .pending_bytes
                    .saturating_add(packet.encoded_len(self.config.dialect))
                    .saturating_add(std::mem::size_of::<(u16, Packet)>());
                self.pending.push_back((xid, packet));
            }
        }
        Ok(())
    }

    fn send_data(&mut self, xid: u16, data: Bytes) -> Result<(), UsageError> {
        self.check_room()?;
        match self.cid {
            Some(cid) => self.core.queue_data(cid, xid, 0, data)?,
            None => {
                for piece in chunks(data, self.core.max_chunk()) {
                    self.enqueue(
                        xid,
                        Packet::Data {
                            channel: 0,
                            data: piece,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, error: LinkError) {
        self.core.error = Some(error.clone());
        self.deadlines.clear();
        self.unarmed.clear();
        let mut xids: Vec<u16> = self.transactions.keys().copied().collect();
        xids.sort_unstable();
        for xid in xids {
            self.transactions.remove(&xid);
            self.events.push_back(ClientEvent::Finished {
                xid,
                outcome: Outcome::LinkLost(error.clone()),
            });
        }
    }

    fn violation(&mut self, v: Violation) {
        self.core.stats.violations += 1;
        self.events.push_back(ClientEvent::ProtocolViolation(v));
    }

    fn unexpected(&mut self, xid: u16, packet: &Packet, why: &'static str) {
        self.violation(Violation::Unexpected {
            xid,
            packet: packet.packet_type(),
            why,
        });
    }

    fn finish(&mut self, xid: u16, outcome: Outcome) {
        if let Some(Transaction {
            deadline: Deadline::At(t),
            ..
        }) = self.transactions.remove(&xid)
        {
            self.deadlines.remove(&(t, xid));
        }
        self.events
            .push_back(ClientEvent::Finished { xid, outcome });
    }

    /// Starts the deadlines of the commands whose requests `poll_transmit` just took.
    fn arm_deadlines(&mut self, now: Instant) {
        for xid in self.unarmed.drain(..) {
            if let Some(tx) = self.transactions.get_mut(&xid)
                && let Deadline::Unarmed(after) = tx.deadline
            {
                // An instant beyond the clock's range is no deadline at all.
                tx.deadline = match now.checked_add(after) {
                    Some(t) => {
                        self.deadlines.insert((t, xid));
                        Deadline::At(t)
                    }
                    None => Deadline::None,
                };
            }
        }
    }

    /// Ends the commands whose deadline has passed: the agent is sent KILL (in 3.0 the
    /// interrupt is always KILL), the application a timeout, and the xid is forgotten.
    fn expire_deadlines(&mut self, now: Instant) {
        if self.core.error.is_some() {
            return;
        }
        while let Some(&(t, xid)) = self.deadlines.first() {
            if t > now {
                return;
            }
            self.deadlines.pop_first();
            if !self.transactions.contains_key(&xid) {
                continue;
            }
            // No room check: a tiny packet that must go out even behind queued stdin.
            let kill = self.interrupt_packet(Signal::KILL);
            let _ = self.enqueue(xid, kill);
            self.core.stats.deadlines_expired += 1;
            self.finish(xid, Outcome::TimedOut);
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let Some(cid) = self.cid else {
            return self.on_handshake(frame);
        };
        if frame.cid != cid {
            self.core.stats.foreign_cid_dropped += 1;
            return;
        }
        self.core.saw_traffic();
        match frame.packet {
            Packet::Keepalive | Packet::Hello(_) => {}
            packet => self.on_transaction_packet(frame.xid, packet),
        }
    }

    /// Before the hello reply, with `resync_before_hello`: drops buffered bytes up to the
    /// first place where a hello reply or a refusal (see [`Refusal`]) could start (type
    /// `h`, `M` or `m`, length 12, xid 0, any cid), so that stale output of a previous
    /// session, even from the middle of a packet, is skipped. Bytes at the end that could
    /// still become one are kept.
    fn skip_to_hello_reply(&mut self) {
        if self.cid.is_some() || !self.config.resync_before_hello {
            return;
        }
        let dialect = self.config.dialect;
        let header = |kind: PacketType, cid| {
            let mut b = bytes::BytesMut::with_capacity(HEADER_LEN);
            Header {
                kind: kind.code(dialect),
                len: HELLO_LEN,
                cid,
                xid: 0,
            }
            .encode(dialect, &mut b);
            b
        };
        // Bytes that differ between two cids are the cid: any value matches there. (Hello
        // and status packets all have 4-byte payloads, hence length 12.)
        let patterns = [PacketType::Hello, PacketType::Major, PacketType::Minor]
            .map(|kind| (header(kind, 0), header(kind, 0xFFFF)));
        let fits = |window: &[u8]| {
            patterns.iter().any(|(a, b)| {
                window
                    .iter()
                    .zip(a.iter().zip(b.iter()))
                    .all(|(&w, (&x, &y))| x != y || w == x)
            })
        };
        let buf = self.core.decoder.peek();
        let skip = (0..buf.len())
            .find(|&i| buf.get(i..).is_some_and(&fits))
            .unwrap_or(buf.len());
        if skip > 0 {
            bytes::Buf::advance(self.core.decoder.buffer_mut(), skip);
            self.core.stats.skipped_before_hello += skip as u64;
        }
    }

    fn on_handshake(&mut self, frame: Frame) {
        // An agent that will not serve us answers the hello with `M`=why, `m`=detail on
        // xid 0, then closes the connection.
        let resync = self.config.resync_before_hello;
        match (frame.packet, self.refusing) {
            (Packet::Major(status), None | Some((_, Some(_)))) if status != 0 && frame.xid == 0 => {
                self.refusing = Some((status, None));
            }
            (Packet::Minor(detail), Some((status, None))) if frame.xid == 0 => {
                if resync {
                    self.refusing = Some((status, Some(detail)));
                } else {
                    self.fail(LinkError::Refused(Refusal { status, detail }));
                }
            }
            (Packet::Hello(hello), None) => self.on_hello_reply(frame.cid, hello),
            (Packet::Hello(hello), Some(_)) if resync => {
                self.refusing = None;
                self.on_hello_reply(frame.cid, hello);
            }
            (packet, _) => self.fail(LinkError::Handshake(packet.packet_type().name())),
        }
    }

    fn on_hello_reply(&mut self, cid: u16, hello: Hello) {
        let ours = self.config.dialect.version();
        if hello.major != ours.0 {
            return self.fail(LinkError::VersionMismatch {
                ours,
                theirs: (hello.major, hello.minor),
            });
        }
        self.core.saw_traffic();
        self.cid = Some(cid);
        self.server_version = Some((hello.major, hello.minor));
        self.core.set_keepalive(
            effective_keepalive(hello.keepalive, self.config.limits.min_keepalive),
            true,
        );
        self.events.push_back(ClientEvent::Connected {
            cid,
            server_version: (hello.major, hello.minor),
            keepalive: hello.keepalive,
        });
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        for (xid, packet) in pending {
            // Validated when queued.
            let _ = self.core.queue(cid, xid, &packet);
            if matches!(
                self.transactions.get(&xid),
                Some(Transaction {
                    deadline: Deadline::Unarmed(_),
                    ..
                })
            ) {
                self.unarmed.push(xid);
            }
        }
    }

    fn on_transaction_packet(&mut self, xid: u16, packet: Packet) {
        let Some(tx) = self.transactions.get_mut(&xid) else {
            self.core.stats.unknown_xid_dropped += 1;
            return;
        };
        // 71 alone ends any transaction: the agent did not understand the request.
        if packet == Packet::Major(EPROTO) {
            return self.finish(xid, Outcome::Failed { errno: EPROTO });
        }
        match (&mut tx.kind, packet) {
            (Kind::Command, Packet::Data { channel, data }) if channel == 1 || channel == 2 => {
                self.events
                    .push_back(ClientEvent::Output { xid, channel, data });
            }
            (Kind::Command, Packet::Eof { channel }) if channel == 1 || channel == 2 => {
                self.events
                    .push_back(ClientEvent::OutputEnd { xid, channel });
            }
            (Kind::Command, Packet::Major(m)) if tx.major.is_none() => tx.major = Some(m),
            (Kind::Command, Packet::Minor(code)) => {
                let outcome = match tx.major.unwrap_or(0) {
                    0 => Outcome::Exited(code),
                    EFAULT if code != 0 => Outcome::Signaled(code),
                    errno => Outcome::Failed { errno },
                };
                self.finish(xid, outcome);
            }
            (Kind::Command, Packet::Timeout) => self.finish(xid, Outcome::TimedOut),
            (Kind::Command, Packet::ProcInfoResponse { fields }) => {
                self.events.push_back(ClientEvent::ProcInfo { xid, fields });
            }
            (Kind::Inject { ready, .. }, Packet::Major(0)) if !*ready => {
                *ready = true;
                self.events.push_back(ClientEvent::InjectReady { xid });
            }
            (Kind::Inject { .. } | Kind::Extract | Kind::Monitor { .. }, Packet::Major(errno))
                if errno != 0 =>
            {
                self.finish(xid, Outcome::Failed { errno })
            }
            (Kind::Inject { .. } | Kind::Extract | Kind::Monitor { .. }, Packet::Minor(0)) => {
                self.finish(xid, Outcome::Completed)
            }
            (Kind::Inject { .. } | Kind::Extract, Packet::Minor(errno)) => {
                self.finish(xid, Outcome::Failed { errno })
            }
            (Kind::Extract, Packet::Major(0)) if tx.major.is_none() => tx.major = Some(0),
            (Kind::Extract, Packet::Data { channel: 0, data }) => {
                self.events.push_back(ClientEvent::Output {
                    xid,
                    channel: 0,
                    data,
                });
            }
            (Kind::Extract, Packet::Eof { channel: 0 }) => {
                self.events
                    .push_back(ClientEvent::OutputEnd { xid, channel: 0 });
            }
            (Kind::Monitor { .. }, Packet::Data { channel: 0, data }) => {
                self.events
                    .push_back(ClientEvent::MonitorData { xid, data });
            }
            (Kind::Monitor { .. }, Packet::Settle { seq }) => {
                self.events.push_back(ClientEvent::Settled { xid, seq });
            }
            (Kind::Monitor { .. }, Packet::Eof { channel: 0 } | Packet::Major(0)) => {}
            (_, packet) => {
                self.unexpected(xid, &packet, "not valid for this transaction now");
            }
        }
    }
}

impl Input for Client {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }
    fn has_room(&self) -> bool {
        self.events.len() < self.config.limits.max_events
    }
    fn on_frame(&mut self, frame: Frame) {
        Client::on_frame(self, frame)
    }
    /// Skips what cannot start the hello reply (only with `resync_before_hello`).
    fn prepare(&mut self) -> bool {
        self.skip_to_hello_reply();
        true
    }
    fn on_bad_packet(&mut self, error: crate::wire::DecodeError) {
        self.violation(Violation::Decode(error))
    }
    fn on_violation(&mut self, violation: Violation) {
        self.violation(violation)
    }
    fn on_fatal(&mut self, error: LinkError) {
        self.fail(error)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("dialect", &self.config.dialect)
            .field("cid", &self.cid)
            .field("transactions", &self.transactions.len())
            .field("error", &self.core.error)
            .finish_non_exhaustive()
    }
}
