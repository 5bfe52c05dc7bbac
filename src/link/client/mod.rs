//! The client (controller) side of a link connection: the machine and its I/O surface
//! here, the application's requests in `intents`, the agent's packets in `answers`, the
//! client's own command deadlines in `deadlines`.

mod answers;
mod deadlines;
mod intents;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::core::{Core, Timeout};
use super::input::{self, Input};
use super::stats::{Stats, count};
use super::{
    ClientConfig, ClientEvent, ConnectInfo, LinkError, Outcome, Refusal, UsageError, Violation,
};
use crate::wire::{Decoder, Dialect, Hello, Packet, Sender, chunks};
use crate::{Machine, Transmit};

use deadlines::Deadline;

#[derive(Debug)]
pub(super) enum Kind {
    Command,
    Inject { ready: bool, sent_eof: bool },
    Extract,
    Monitor { ending: bool },
}

#[derive(Debug)]
pub(super) struct Transaction {
    kind: Kind,
    major: Option<u32>,
    stdin_closed: bool,
    /// A command's client deadline (see `ClientConfig::deadline_grace`).
    deadline: Deadline,
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
/// use tuppence::Machine;
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
    /// When the machine was made (the hello queued), for [`ConnectInfo::latency`].
    started: Instant,
    /// The hello reply, once it came.
    connected: Option<ConnectInfo>,
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
        let decoder = Decoder::new(config.dialect, Sender::Server);
        let mut core = Core::new(decoder, config.limits.clone(), now);
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
            started: now,
            connected: None,
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

    /// The hello reply, once it came: the cid, the agent's version, the keepalive and how
    /// long the reply took.
    pub fn connect_info(&self) -> Option<&ConnectInfo> {
        self.connected.as_ref()
    }

    /// False while intents would answer `QueueFull`.
    pub fn can_send(&self) -> bool {
        self.transmit_buffered() <= self.config.limits.max_transmit_buffer
    }

    /// The largest data payload one packet carries (from the dialect and the limits). A
    /// caller that hands stdin or file data over in multiples of it sends no short packet
    /// but the last: data is split at this size, so a piece of any other size leaves a runt.
    pub fn max_data_chunk(&self) -> usize {
        self.core.max_chunk()
    }

    /// Number of live transactions.
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    /// Bytes of memory the receive buffer holds: 0 once the client is idle (no live
    /// transaction) and has nothing half-received.
    pub fn receive_capacity(&self) -> usize {
        self.core.decoder.buffer_capacity()
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

    // ---- outputs (see also the `Machine` impl) ----

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    // ---- internals ----

    pub(super) fn require_v4(&self, what: &'static str) -> Result<(), UsageError> {
        match self.config.dialect {
            Dialect::V4 => Ok(()),
            dialect => Err(UsageError::NotSupported { what, dialect }),
        }
    }

    pub(super) fn live(&self, xid: u16) -> Result<&Transaction, UsageError> {
        self.core.check_open()?;
        self.transactions
            .get(&xid)
            .ok_or(UsageError::UnknownTransaction(xid))
    }

    pub(super) fn check_room(&self) -> Result<(), UsageError> {
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

    pub(super) fn open(&mut self, kind: Kind, packet: Packet) -> Result<u16, UsageError> {
        self.check_room()?;
        let limit = self
            .config
            .limits
            .max_transactions
            .min(usize::from(u16::MAX).saturating_sub(1));
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
    pub(super) fn allocate_xid(&mut self) -> u16 {
        loop {
            let xid = self.next_xid;
            self.next_xid = self.next_xid.checked_add(1).unwrap_or(1);
            if xid != 0 && !self.transactions.contains_key(&xid) {
                return xid;
            }
        }
    }

    pub(super) fn send(&mut self, xid: u16, packet: Packet) -> Result<(), UsageError> {
        self.check_room()?;
        self.enqueue(xid, packet)
    }

    /// Queues a packet, or holds it until the hello reply assigns our cid. No room check:
    /// callers check once per intent, so an intent is queued whole or not at all.
    pub(super) fn enqueue(&mut self, xid: u16, packet: Packet) -> Result<(), UsageError> {
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

    pub(super) fn send_data(&mut self, xid: u16, data: Bytes) -> Result<(), UsageError> {
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

    pub(super) fn fail(&mut self, error: LinkError) {
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

    pub(super) fn violation(&mut self, v: Violation) {
        count(&mut self.core.stats.violations, 1);
        self.events.push_back(ClientEvent::ProtocolViolation(v));
    }

    pub(super) fn unexpected(&mut self, xid: u16, packet: &Packet, why: &'static str) {
        self.violation(Violation::Unexpected {
            xid,
            packet: packet.packet_type(),
            why,
        });
    }

    pub(super) fn finish(&mut self, xid: u16, outcome: Outcome) {
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
}

/// The I/O surface (see [`Machine`]).
impl Machine for Client {
    type Error = LinkError;

    /// Feeds bytes read from the transport. Returns how many were consumed: fewer than
    /// given when the event queue is full (drain `poll_event`, then offer the rest again).
    fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, LinkError> {
        let r = input::handle_bytes(self, now, data);
        if self.transactions.is_empty() {
            // Idle: no block sized for bulk data kept for a session that may stay idle
            // for hours (a farm's controller holds hundreds). See `Machine::is_idle`.
            self.core.decoder.release_if_empty();
        }
        r
    }

    fn handle_buf(&mut self, now: Instant, buf: &mut BytesMut) -> Result<usize, LinkError> {
        let r = input::handle_buf(self, now, buf);
        if self.transactions.is_empty() {
            // As in `handle_bytes`: an idle client keeps no block sized for bulk data.
            self.core.decoder.release_if_empty();
        }
        r
    }

    /// The transport reached end of stream.
    fn handle_eof(&mut self, now: Instant) {
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

    /// Fires due timers (hello retry, command deadlines, keepalive send, dead-link
    /// detection). Spurious calls are no-ops.
    fn handle_timeout(&mut self, now: Instant) {
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

    /// The silence until the next `handle_bytes` is not the agent's (see
    /// [`super::Limits::stale_partial_after`]).
    fn handle_input_paused(&mut self) {
        self.core.input_paused();
    }

    /// Appends whole packets to `buf`; returns the number of bytes appended. Command
    /// deadlines start counting here, when their request is handed to the transport.
    fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
        let n = self.core.poll_transmit(now, buf);
        self.arm_deadlines(now);
        n
    }

    /// A large data payload is a segment of its own, sharing the `Bytes` given to the
    /// intent. Command deadlines start counting here, as in `poll_transmit`.
    fn poll_transmit_segments(&mut self, now: Instant, out: &mut Transmit) -> usize {
        let n = self.core.poll_transmit_segments(now, out);
        self.arm_deadlines(now);
        n
    }

    /// When to call `handle_timeout` next.
    fn poll_timeout(&self) -> Option<Instant> {
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

    /// The fatal error, once the connection has failed.
    fn error(&self) -> Option<&LinkError> {
        self.core.error.as_ref()
    }

    /// False while events wait to be polled.
    fn accepts_input(&self) -> bool {
        self.core.error.is_none() && Input::has_room(self)
    }

    /// Bytes waiting to be transmitted (including requests held until the hello reply,
    /// which also count the memory each takes in the queue).
    fn transmit_buffered(&self) -> usize {
        self.core
            .transmit_buffered()
            .saturating_add(self.pending_bytes)
    }

    /// No live transaction.
    fn is_idle(&self) -> bool {
        self.transactions.is_empty()
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
