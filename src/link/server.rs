//! The server (agent) side of a link connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::core::{self, Core, Input, Stats, Timeout};
use super::{
    LinkError, Refusal, ServerConfig, ServerEvent, UsageError, Violation, effective_keepalive,
    negotiate_keepalive, status,
};
use crate::wire::{
    DecodeError, Dialect, Frame, HEADER_LEN, Hello, Packet, PacketType, ProcInfoField, Sender,
    detect_dialect, hello_signature,
};

#[derive(Debug)]
enum Kind {
    Command {
        /// EOF already sent on channel 1 / channel 2.
        eof_sent: [bool; 2],
        stdin_done: bool,
    },
    Inject {
        ready: bool,
    },
    Extract {
        ready: bool,
        eof_sent: bool,
    },
    Monitor,
}

/// The server machine: answers hellos, turns requests into [`ServerEvent`]s and the
/// application's answers into packets in the order DESIGN §3 prescribes.
///
/// It enforces the ordering rules itself: no packet after a transaction's terminal one,
/// `X` on channels 1 and 2 before the status in 4.0 (none in 3.0), extract success without
/// `M` in 3.0. The application never writes packets directly.
///
/// Protocol corners it answers itself, so that no client waits for nothing:
///
/// * a request (`c`, `i`, `e`, `O`) on an xid that is still live gets
///   [`status::EBUSY`] at once, in that request's shape (`M`=16 and `m`=0 for a command,
///   `M`=16 otherwise); the live transaction goes on undisturbed;
/// * a hello that does not parse is refused ([`Refusal::bad_hello`]: `M`=71, `m`=0 on xid
///   0) and the connection ends with [`LinkError::Refused`]; on a device link
///   ([`ServerConfig::hello_resets_session`]), which cannot be closed towards the client,
///   the same answer is sent and the session goes on;
/// * a connection the application will not serve (too many clients, no file descriptor
///   left) is refused with words: [`Server::refuse`].
pub struct Server {
    core: Core,
    config: ServerConfig,
    detected: bool,
    transactions: HashMap<u16, Kind>,
    /// Live transactions the client ended (monitor) or aborted (transfer) whose answer
    /// waits until the application polls the event: see [`Server::poll_event`].
    closing: HashSet<u16>,
    events: VecDeque<ServerEvent>,
    /// A hello reset the session: the runtime must drop what it took from
    /// `poll_transmit` but has not written yet (see [`Server::poll_discard_unsent`]).
    discard_unsent: bool,
    /// The answer to the client's first packet, when the connection is refused.
    refusal: Option<Refusal>,
    /// The dialect of the previous session on the same port (see [`Server::resume_from`]):
    /// used when the first bytes are not a hello.
    fallback_dialect: Option<Dialect>,
    /// The last packet decoded was this hello: its client has sent nothing since (see
    /// [`Server::carryover`]).
    last_hello: Option<LastHello>,
}

/// A hello that nothing has followed yet.
#[derive(Debug)]
struct LastHello {
    /// Its bytes, as received.
    bytes: Bytes,
    /// `Stats::bytes_sent` once its reply has been polled.
    reply_end: u64,
}

/// What the next session on the same device port inherits from one that ended with a
/// hang-up (see [`Server::carryover`] and [`Server::resume_from`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carryover {
    /// Bytes the next session must read first: a new client's hello that arrived just
    /// before the hang-up, and what followed it. Empty when there is none.
    pub input: Bytes,
    /// The dialect the ended session spoke, if it knew it.
    pub dialect: Option<Dialect>,
}

impl Server {
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let dialect = config.dialect.unwrap_or_default();
        let mut core = Core::new(dialect, Sender::Client, config.limits.clone(), now);
        // Before a hello, the agent's own setting bounds silence (no `K` is sent yet).
        core.set_keepalive(
            effective_keepalive(config.keepalive, config.limits.min_keepalive),
            false,
        );
        if config.hello_resets_session {
            // A device link: the packet boundaries can be lost, and a hello finds them.
            core.enable_resync();
        }
        Server {
            core,
            detected: config.dialect.is_some(),
            config,
            transactions: HashMap::new(),
            closing: HashSet::new(),
            events: VecDeque::new(),
            discard_unsent: false,
            refusal: None,
            fallback_dialect: None,
            last_hello: None,
        }
    }

    /// Continues a device port whose previous session (another `Server` on the same
    /// port) ended with a hang-up: if the first bytes are not a hello, they are read in
    /// that session's dialect (the same client may go on: see [`Server::carryover`]).
    /// Then feed `previous.input` as the first bytes.
    pub fn resume_from(&mut self, previous: &Carryover) {
        self.fallback_dialect = previous.dialect;
    }

    // ---- getters ----

    pub fn cid(&self) -> u16 {
        self.config.cid
    }

    /// The dialect in use (the default until the client's first 8 bytes arrived).
    pub fn dialect(&self) -> Dialect {
        self.core.dialect
    }

    pub fn dialect_known(&self) -> bool {
        self.detected
    }

    pub fn error(&self) -> Option<&LinkError> {
        self.core.error.as_ref()
    }

    pub fn transmit_buffered(&self) -> usize {
        self.core.transmit_buffered()
    }

    /// False while `output` would answer `QueueFull`: stop reading children's output.
    pub fn can_send(&self) -> bool {
        self.core.transmit_buffered() <= self.config.limits.max_transmit_buffer
    }

    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    pub fn is_live(&self, xid: u16) -> bool {
        self.transactions.contains_key(&xid)
    }

    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Whether [`handle_bytes`](Self::handle_bytes) would take bytes now. False while
    /// events wait to be polled or the peer leaves too many answers unread: a loop holding
    /// unconsumed input should wait for one of those to change instead of retrying.
    pub fn accepts_input(&self) -> bool {
        self.core.error.is_none() && core::Input::has_room(self)
    }

    // ---- inputs ----

    /// Feeds bytes read from the transport; returns how many were consumed (fewer when
    /// the event queue is full or the peer leaves twice the transmit limit unread).
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, LinkError> {
        core::handle_bytes(self, now, data)
    }

    /// The transport reached end of stream (the client went away).
    pub fn handle_eof(&mut self, now: Instant) {
        self.core.tick(now);
        if self.core.error.is_none() {
            self.die(LinkError::Closed);
        }
    }

    /// The runtime stops reading the transport for a while (its own backpressure, e.g. a
    /// child's stdin is backed up): the silence until the next `handle_bytes` is not the
    /// client's, so it must not make a partial packet look stale (see
    /// [`super::Limits::stale_partial_after`]). Call it when reading pauses.
    pub fn handle_input_paused(&mut self) {
        self.core.input_paused();
    }

    /// Fires due timers: keepalives, and on a device link the check of a silence inside a
    /// packet (see [`super::Limits::stale_partial_after`]). Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.tick(now);
        core::handle_timeout(self);
        match self.core.due() {
            Timeout::Nothing => {}
            Timeout::SendKeepalive => {
                let _ = self.core.queue(self.config.cid, 0, &Packet::Keepalive);
            }
            Timeout::Dead(k) => {
                self.events.push_back(ServerEvent::LinkDead);
                self.die(LinkError::KeepaliveExpired(k));
            }
        }
    }

    // ---- intents: the application's answers ----

    /// Refuses the connection with words: the client's hello (or whatever it sends first)
    /// is answered with `M`=`refusal.status`, `m`=`refusal.detail` on xid 0 instead of a
    /// hello reply, and the machine then fails with [`LinkError::Refused`] (flush what it
    /// queued, then close). At once if the dialect is already known, otherwise when the
    /// client's first bytes arrive (the answer must be in its dialect). Call it right after
    /// [`Server::new`]; a connection already in use is not refused.
    pub fn refuse(&mut self, refusal: Refusal) {
        if self.core.error.is_some() || !self.transactions.is_empty() {
            return;
        }
        self.refusal = Some(refusal);
        if self.detected {
            self.send_refusal(refusal);
        }
    }

    /// Command output (channel 1 or 2), extract data or monitor events (channel 0).
    /// Accepted while [`Server::can_send`] is true; chunked into packets.
    pub fn output(&mut self, xid: u16, channel: u16, data: Bytes) -> Result<(), UsageError> {
        self.core.check_room()?;
        let v4 = self.core.dialect == Dialect::V4;
        let mut announce = false;
        match (self.kind_mut(xid)?, channel) {
            (Kind::Command { eof_sent, .. }, 1 | 2) if !eof_sent[usize::from(channel - 1)] => {}
            (Kind::Extract { ready, eof_sent }, 0) if !*eof_sent => {
                announce = v4 && !*ready;
                *ready = true;
            }
            (Kind::Monitor, 0) => {}
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "send output on this channel",
                });
            }
        }
        if announce {
            self.send(xid, Packet::Major(0))?;
        }
        if data.is_empty() {
            return Ok(());
        }
        let cid = self.config.cid;
        self.core.queue_data(cid, xid, channel, data)?;
        Ok(())
    }

    /// End of a command output channel, or of extracted data.
    pub fn output_end(&mut self, xid: u16, channel: u16) -> Result<(), UsageError> {
        self.core.check_open()?;
        let dialect = self.core.dialect;
        let send = match (self.kind_mut(xid)?, channel) {
            (Kind::Command { eof_sent, .. }, 1 | 2) => {
                let slot = &mut eof_sent[usize::from(channel - 1)];
                let first = !*slot;
                *slot = true;
                // 3.0 never signals the end of stdout/stderr: the status implies it.
                first && dialect == Dialect::V4
            }
            (Kind::Extract { eof_sent, .. }, 0) => !std::mem::replace(eof_sent, true),
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "end output on this channel",
                });
            }
        };
        if send {
            self.send(xid, Packet::Eof { channel })?;
        }
        Ok(())
    }

    /// The command exited with `code`.
    pub fn command_exited(&mut self, xid: u16, code: u32) -> Result<(), UsageError> {
        self.command_status(xid, 0, code)
    }

    /// The command was killed by signal `signo`.
    pub fn command_killed(&mut self, xid: u16, signo: u32) -> Result<(), UsageError> {
        self.command_status(xid, status::EFAULT, signo)
    }

    /// The agent killed the command at its timeout.
    pub fn timed_out(&mut self, xid: u16) -> Result<(), UsageError> {
        self.expect(xid, "time out (not a command)", |k| {
            matches!(k, Kind::Command { .. })
        })?;
        self.send(xid, Packet::Timeout)?;
        self.end(xid);
        Ok(())
    }

    /// The request failed with `errno` (spawn failure, unknown user, file error, unknown
    /// event source). Sends the status sequence the transaction's kind and state require.
    pub fn fail(&mut self, xid: u16, errno: u32) -> Result<(), UsageError> {
        self.core.check_open()?;
        let v4 = self.core.dialect == Dialect::V4;
        let packets = match self.kind_mut(xid)? {
            Kind::Command { .. } => vec![Packet::Major(errno), Packet::Minor(0)],
            Kind::Inject { ready: false } | Kind::Extract { ready: false, .. } | Kind::Monitor => {
                vec![Packet::Major(errno)]
            }
            Kind::Inject { ready: true } => vec![Packet::Minor(errno)],
            Kind::Extract { ready: true, .. } if v4 => vec![Packet::Minor(errno)],
            Kind::Extract { ready: true, .. } => vec![Packet::Major(errno)],
        };
        for p in packets {
            self.send(xid, p)?;
        }
        self.end(xid);
        Ok(())
    }

    /// The inject target is open: tell the client to send data.
    pub fn inject_ready(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.kind_mut(xid)? {
            Kind::Inject { ready } if !*ready => *ready = true,
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "become ready (not an inject waiting to start)",
                });
            }
        }
        self.send(xid, Packet::Major(0))
    }

    /// The injected file was written and renamed into place (`Ok`) or failed (`Err(errno)`).
    pub fn inject_done(&mut self, xid: u16, result: Result<(), u32>) -> Result<(), UsageError> {
        match result {
            Ok(()) => {
                self.expect(xid, "complete (not a ready inject)", |k| {
                    matches!(k, Kind::Inject { ready: true })
                })?;
                self.send(xid, Packet::Minor(0))?;
                self.end(xid);
                Ok(())
            }
            Err(errno) => self.fail(xid, errno),
        }
    }

    /// The extract source is open: data follows (`M`=0 in 4.0; nothing in 3.0).
    pub fn extract_ready(&mut self, xid: u16) -> Result<(), UsageError> {
        let v4 = self.core.dialect == Dialect::V4;
        match self.kind_mut(xid)? {
            Kind::Extract { ready, .. } if !*ready => *ready = true,
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "become ready (not an extract waiting to start)",
                });
            }
        }
        if v4 {
            self.send(xid, Packet::Major(0))?;
        }
        Ok(())
    }

    /// All data was sent (`Ok`: EOF then `m`=0) or reading failed (`Err(errno)`).
    pub fn extract_done(&mut self, xid: u16, result: Result<(), u32>) -> Result<(), UsageError> {
        match result {
            Ok(()) => {
                self.expect(xid, "complete (not an extract)", |k| {
                    matches!(k, Kind::Extract { .. })
                })?;
                if let Some(Kind::Extract { ready: false, .. }) = self.transactions.get(&xid) {
                    // An empty file: announce it before ending it.
                    self.extract_ready(xid)?;
                }
                self.output_end(xid, 0)?;
                self.send(xid, Packet::Minor(0))?;
                self.end(xid);
                Ok(())
            }
            Err(errno) => self.fail(xid, errno),
        }
    }

    /// Every event pending at the settle request has been sent.
    pub fn settled(&mut self, xid: u16, seq: u32) -> Result<(), UsageError> {
        self.expect(xid, "settle (not a monitor)", |k| {
            matches!(k, Kind::Monitor)
        })?;
        self.send(xid, Packet::Settle { seq })
    }

    /// Answer to a procinfo query.
    pub fn procinfo(&mut self, xid: u16, fields: Vec<ProcInfoField>) -> Result<(), UsageError> {
        self.expect(xid, "answer procinfo (not a command)", |k| {
            matches!(k, Kind::Command { .. })
        })?;
        self.send(xid, Packet::ProcInfoResponse { fields })
    }

    // ---- outputs ----

    pub fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
        self.core.poll_transmit(now, buf)
    }

    /// Like [`Self::poll_transmit`], without copying data payloads: appends what is
    /// queued to `out` as segments whose concatenation is the byte stream (whole packets).
    /// A large data payload is a segment of its own, sharing the `Bytes` given to the
    /// intent. Write them with vectored I/O (`writev`). Returns the number of bytes.
    pub fn poll_transmit_segments(&mut self, now: Instant, out: &mut VecDeque<Bytes>) -> usize {
        self.core.poll_transmit_segments(now, out)
    }

    /// The next event. Polling a [`ServerEvent::MonitorEnd`] or
    /// [`ServerEvent::TransferAborted`] also sends the machine's terminal answer for it,
    /// so that it follows the application's answers to the events queued before it.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        let event = self.events.pop_front()?;
        match event {
            ServerEvent::MonitorEnd { xid } => self.close_deferred(
                xid,
                &[
                    Packet::Eof { channel: 0 },
                    Packet::Major(0),
                    Packet::Minor(0),
                ],
            ),
            ServerEvent::TransferAborted { xid } => {
                self.close_deferred(xid, &[Packet::Minor(status::EINTR)])
            }
            _ => {}
        }
        Some(event)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// True once after a hello reset the session (see
    /// [`ServerConfig::hello_resets_session`]): the runtime must drop the bytes it took
    /// from `poll_transmit` but has not written yet, and what the transport still holds
    /// if it can (e.g. `tcflush(TCOFLUSH)` on a tty): they belong to the old session. Check
    /// it after every `handle_bytes` and `handle_timeout` (on a device link a timer can
    /// find a new client's hello, see [`super::Limits::stale_partial_after`]), before
    /// writing again. (The machine has already
    /// dropped what it held; its hello reply comes after.) Cutting a packet short here is
    /// fine: the new client skips anything before its hello reply (see
    /// [`super::ClientConfig::resync_before_hello`]).
    pub fn poll_discard_unsent(&mut self) -> bool {
        std::mem::take(&mut self.discard_unsent)
    }

    /// On a device link whose transport hung up (after [`Server::handle_eof`]): what
    /// the next session on the same port must start with. `unwritten` is how many bytes
    /// taken from `poll_transmit` the runtime never wrote.
    ///
    /// A hang-up is not always the last client's: a virtio-serial guest can read a new
    /// client's hello before it learns that the previous host connection closed. So a
    /// hello that arrived last — nothing from its client followed it, and its reply was
    /// not entirely written — belongs to the next session, which answers it (DESIGN §8).
    /// So do the bytes from a hello found among the unfinished bytes (a new client's hello
    /// behind a dead one's debris), or the start of one at their very end. Everything
    /// else buffered is debris of the client that hung up. Create the next session's
    /// machine with the same cid (a client that did get the reply goes on with it), call
    /// [`Server::resume_from`] and feed it [`Carryover::input`] first.
    ///
    /// Empty (and no dialect) on other links, where a hang-up ends the one client.
    pub fn carryover(&self, unwritten: usize) -> Carryover {
        if !self.config.hello_resets_session {
            return Carryover::default();
        }
        let mut input = self.core.hello_onwards();
        if input.is_empty()
            && let Some(last) = &self.last_hello
        {
            let written = self.core.stats.bytes_sent.saturating_sub(unwritten as u64);
            if written < last.reply_end {
                input = last.bytes.clone();
            }
        }
        Carryover {
            input,
            dialect: self.detected.then_some(self.core.dialect),
        }
    }

    // ---- internals ----

    fn kind_mut(&mut self, xid: u16) -> Result<&mut Kind, UsageError> {
        self.core.check_open()?;
        self.transactions
            .get_mut(&xid)
            .ok_or(UsageError::UnknownTransaction(xid))
    }

    fn expect(
        &mut self,
        xid: u16,
        what: &'static str,
        ok: impl Fn(&Kind) -> bool,
    ) -> Result<(), UsageError> {
        if ok(self.kind_mut(xid)?) {
            Ok(())
        } else {
            Err(UsageError::WrongState { xid, what })
        }
    }

    fn command_status(&mut self, xid: u16, major: u32, minor: u32) -> Result<(), UsageError> {
        self.expect(xid, "report an exit status (not a command)", |k| {
            matches!(k, Kind::Command { .. })
        })?;
        for channel in [1, 2] {
            self.output_end(xid, channel)?;
        }
        self.send(xid, Packet::Major(major))?;
        self.send(xid, Packet::Minor(minor))?;
        self.end(xid);
        Ok(())
    }

    /// Queues a packet. Status packets are never refused for a full queue: they are small
    /// and bounded by the number of transactions.
    fn send(&mut self, xid: u16, packet: Packet) -> Result<(), UsageError> {
        self.core.check_open()?;
        self.core.queue(self.config.cid, xid, &packet)?;
        Ok(())
    }

    /// Answers with the refusal and ends the connection (see [`Server::refuse`]).
    fn send_refusal(&mut self, refusal: Refusal) {
        let _ = self.send(0, Packet::Major(refusal.status));
        let _ = self.send(0, Packet::Minor(refusal.detail));
        self.die(LinkError::Refused(refusal));
    }

    fn die(&mut self, error: LinkError) {
        self.core.error = Some(error);
        self.transactions.clear();
        self.closing.clear();
    }

    /// The transaction's terminal packet was sent.
    fn end(&mut self, xid: u16) {
        self.transactions.remove(&xid);
        self.closing.remove(&xid);
    }

    /// Sends the machine's own terminal answer to a monitor end or a transfer abort, now
    /// that the application has polled the event for it (and so has already answered
    /// every earlier event). Nothing if the application ended the transaction itself.
    fn close_deferred(&mut self, xid: u16, packets: &[Packet]) {
        if !self.closing.contains(&xid) {
            return;
        }
        for p in packets {
            let _ = self.send(xid, p.clone());
        }
        self.end(xid);
    }

    fn violation(&mut self, v: Violation) {
        self.core.stats.violations += 1;
        self.events.push_back(ServerEvent::ProtocolViolation(v));
    }

    /// A bad packet: answered with 71 on its xid if that opens no live transaction. A
    /// hello that does not parse is refused (see the type docs).
    fn on_decode_error(&mut self, e: DecodeError) {
        self.last_hello = None;
        let header = e.header().copied();
        self.violation(Violation::Decode(e));
        if let Some(refusal) = self.refusal {
            return self.send_refusal(refusal);
        }
        let Some(h) = header else {
            return;
        };
        let ours = h.cid == self.config.cid;
        if h.kind == PacketType::Hello.code(self.core.dialect) && (ours || h.cid == 0) {
            if self.config.hello_resets_session {
                let bad = Refusal::bad_hello();
                let _ = self.send(0, Packet::Major(bad.status));
                let _ = self.send(0, Packet::Minor(bad.detail));
            } else {
                self.send_refusal(Refusal::bad_hello());
            }
        } else if ours && !self.transactions.contains_key(&h.xid) {
            let _ = self.send(h.xid, Packet::Major(status::EPROTO));
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        if let Some(refusal) = self.refusal {
            return self.send_refusal(refusal);
        }
        let cid = self.config.cid;
        self.last_hello = None;
        if let Packet::Hello(hello) = &frame.packet
            && (frame.cid == 0 || frame.cid == cid)
        {
            self.on_hello(hello.clone());
            if self.config.hello_resets_session {
                let bytes = frame
                    .packet
                    .to_bytes(self.core.dialect, frame.cid, frame.xid);
                self.last_hello = bytes.ok().map(|bytes| LastHello {
                    bytes,
                    reply_end: self
                        .core
                        .stats
                        .bytes_sent
                        .saturating_add(self.core.transmit_buffered() as u64),
                });
            }
            return;
        }
        if frame.cid != cid {
            self.core.stats.foreign_cid_dropped += 1;
            return;
        }
        self.core.saw_traffic();
        let xid = frame.xid;
        match frame.packet {
            Packet::Keepalive => {}
            Packet::Quit => self.events.push_back(ServerEvent::Quit),
            packet if self.transactions.contains_key(&xid) => self.on_live(xid, packet),
            packet => self.on_new(xid, packet),
        }
    }

    /// A hello on a device link: whoever sent it starts a new session (see
    /// [`ServerConfig::hello_resets_session`]). Also run for a hello with nothing live, so
    /// that queued keepalives or answers of the old session do not reach the new client.
    fn reset_session(&mut self) {
        let mut aborted: Vec<u16> = self.transactions.keys().copied().collect();
        aborted.sort_unstable();
        self.transactions.clear();
        self.closing.clear();
        self.core.discard_transmit();
        self.discard_unsent = true;
        if !aborted.is_empty() {
            self.core.stats.session_resets += 1;
            self.events.push_back(ServerEvent::SessionReset { aborted });
        }
    }

    fn on_hello(&mut self, hello: Hello) {
        self.core.saw_traffic();
        if self.config.hello_resets_session {
            self.reset_session();
        }
        let keepalive = negotiate_keepalive(hello.keepalive, self.config.keepalive);
        let (major, minor) = self.core.dialect.version();
        let reply = Packet::Hello(Hello {
            major,
            minor,
            keepalive,
        });
        let _ = self.send(0, reply);
        self.core.set_keepalive(
            effective_keepalive(keepalive, self.config.limits.min_keepalive),
            true,
        );
        self.events.push_back(ServerEvent::Hello {
            client_version: (hello.major, hello.minor),
            keepalive,
        });
    }

    /// Refuses a request at once with `errno`, in the shape the client expects for that
    /// request: `M` and `m`=0 for a command (the C client ends a command only at `m`), `M`
    /// alone for the others.
    fn refuse_request(&mut self, xid: u16, packet: &Packet, errno: u32) {
        let _ = self.send(xid, Packet::Major(errno));
        if matches!(packet, Packet::Command(_)) {
            let _ = self.send(xid, Packet::Minor(0));
        }
    }

    fn on_new(&mut self, xid: u16, packet: Packet) {
        if is_request(&packet) && self.transactions.len() >= self.config.limits.max_transactions {
            return self.refuse_request(xid, &packet, status::EAGAIN);
        }
        match packet {
            Packet::Command(c) => {
                if c.command.is_empty() {
                    let _ = self.send(xid, Packet::Major(status::EPROTO));
                    return self.violation(Violation::Unexpected {
                        xid,
                        packet: crate::wire::PacketType::Command,
                        why: "empty command",
                    });
                }
                let tty = c.wants_tty();
                let timeout = match c.timeout {
                    0 => self.config.default_command_timeout,
                    s => Duration::from_secs(u64::from(s)),
                };
                self.transactions.insert(
                    xid,
                    Kind::Command {
                        eof_sent: [false, tty],
                        stdin_done: false,
                    },
                );
                if tty {
                    // No separate stderr on a tty: say so before any output.
                    let _ = self.send(xid, Packet::Eof { channel: 2 });
                }
                self.events.push_back(ServerEvent::RunCommand {
                    xid,
                    user: c.user,
                    command: c.command,
                    timeout,
                    tty,
                    env: c.env,
                });
            }
            Packet::Inject { user, path, mode } => {
                self.transactions.insert(xid, Kind::Inject { ready: false });
                self.events.push_back(ServerEvent::Inject {
                    xid,
                    user,
                    path,
                    mode,
                });
            }
            Packet::Extract { user, path } => {
                self.transactions.insert(
                    xid,
                    Kind::Extract {
                        ready: false,
                        eof_sent: false,
                    },
                );
                self.events
                    .push_back(ServerEvent::Extract { xid, user, path });
            }
            Packet::Monitor { source } => {
                self.transactions.insert(xid, Kind::Monitor);
                self.events.push_back(ServerEvent::Monitor { xid, source });
            }
            // Late stdin, EOF or interrupt after the command ended: normal, drop.
            Packet::Data { .. } | Packet::Eof { .. } | Packet::Interrupt { .. } => {
                self.core.stats.unknown_xid_dropped += 1;
            }
            // Nothing pending on a non-monitor: settled at once.
            Packet::Settle { seq } => {
                let _ = self.send(xid, Packet::Settle { seq });
            }
            Packet::ProcInfoQuery { .. } => {
                let _ = self.send(xid, Packet::Major(status::ESRCH));
            }
            other => {
                let _ = self.send(xid, Packet::Major(status::EPROTO));
                self.violation(Violation::Unexpected {
                    xid,
                    packet: other.packet_type(),
                    why: "not a request a client may send",
                });
            }
        }
    }

    fn on_live(&mut self, xid: u16, packet: Packet) {
        if is_request(&packet) {
            // The xid is taken: say so at once, and leave the live transaction alone.
            let kind = packet.packet_type();
            self.refuse_request(xid, &packet, status::EBUSY);
            return self.violation(Violation::Unexpected {
                xid,
                packet: kind,
                why: "a request on an xid that is still live (answered EBUSY)",
            });
        }
        if self.closing.contains(&xid) {
            // The client already ended or aborted it: what follows is late.
            self.core.stats.unknown_xid_dropped += 1;
            return;
        }
        let Some(kind) = self.transactions.get_mut(&xid) else {
            return;
        };
        let event = match (kind, packet) {
            (Kind::Command { stdin_done, .. }, Packet::Data { channel: 0, data }) => {
                if *stdin_done {
                    None
                } else {
                    Some(ServerEvent::Stdin { xid, data })
                }
            }
            (Kind::Command { stdin_done, .. }, Packet::Eof { channel: 0 }) => {
                (!std::mem::replace(stdin_done, true)).then_some(ServerEvent::StdinEnd { xid })
            }
            (Kind::Command { .. }, Packet::Interrupt { signal }) => {
                Some(ServerEvent::Interrupt { xid, signal })
            }
            (Kind::Command { .. }, Packet::ProcInfoQuery { mask }) => {
                Some(ServerEvent::ProcInfo { xid, mask })
            }
            (
                Kind::Command { .. } | Kind::Inject { .. } | Kind::Extract { .. },
                Packet::Settle { seq },
            ) => {
                let _ = self.send(xid, Packet::Settle { seq });
                None
            }
            (Kind::Inject { .. }, Packet::Data { channel: 0, data }) => {
                Some(ServerEvent::InjectData { xid, data })
            }
            (Kind::Inject { .. }, Packet::Eof { channel: 0 }) => {
                Some(ServerEvent::InjectEnd { xid })
            }
            (Kind::Inject { .. } | Kind::Extract { .. }, Packet::Interrupt { .. }) => {
                // Answered `m`=EINTR when the application polls the event.
                self.closing.insert(xid);
                Some(ServerEvent::TransferAborted { xid })
            }
            (Kind::Monitor, Packet::Settle { seq }) => Some(ServerEvent::Settle { xid, seq }),
            (Kind::Monitor, Packet::Eof { channel: 0 }) => {
                // Answered `X`, `M`=0, `m`=0 when the application polls the event.
                self.closing.insert(xid);
                Some(ServerEvent::MonitorEnd { xid })
            }
            (
                Kind::Inject { .. } | Kind::Extract { .. } | Kind::Monitor,
                Packet::ProcInfoQuery { .. },
            ) => {
                let _ = self.send(xid, Packet::ProcInfoResponse { fields: Vec::new() });
                None
            }
            (_, packet) => {
                self.violation(Violation::Unexpected {
                    xid,
                    packet: packet.packet_type(),
                    why: "not valid for this transaction now",
                });
                None
            }
        };
        if let Some(e) = event {
            self.events.push_back(e);
        }
    }
}

/// The packets that open a transaction.
fn is_request(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::Command(_)
            | Packet::Inject { .. }
            | Packet::Extract { .. }
            | Packet::Monitor { .. }
    )
}

impl Input for Server {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }
    /// Input waits while events are undrained, and also while the peer leaves twice the
    /// transmit limit unread: every request may be answered (71, `S`, `EAGAIN`, …), so a
    /// peer that floods requests and never reads would otherwise grow the transmit buffer
    /// without bound. Output alone never gets there (it stops at the limit).
    fn has_room(&self) -> bool {
        self.events.len() < self.config.limits.max_events
            && self.core.transmit_buffered()
                <= self.config.limits.max_transmit_buffer.saturating_mul(2)
    }
    /// Detects the dialect from the client's first 8 bytes: a hello says it; anything else
    /// is read in the previous session's dialect on a resumed port, else guessed (see
    /// [`detect_dialect`]).
    fn prepare(&mut self) -> bool {
        if !self.detected
            && let Some(d) = detect_dialect(self.core.decoder.peek())
        {
            let first = self.core.decoder.peek().get(..HEADER_LEN);
            let hello = [Dialect::V4, Dialect::Legacy3]
                .into_iter()
                .find(|&h| first == hello_signature(h).get(..HEADER_LEN));
            self.core
                .set_dialect(hello.or(self.fallback_dialect).unwrap_or(d));
            self.detected = true;
        }
        self.detected
    }
    /// A device link found a new client's hello where the packet boundaries were lost:
    /// a new session starts here (its hello, decoded next, is in `dialect`).
    fn on_resync(&mut self, dialect: Dialect) {
        self.last_hello = None;
        if dialect != self.core.dialect {
            self.core.set_dialect(dialect);
        }
        self.detected = true;
        self.reset_session();
    }
    fn on_frame(&mut self, frame: Frame) {
        Server::on_frame(self, frame)
    }
    fn on_bad_packet(&mut self, error: DecodeError) {
        self.on_decode_error(error)
    }
    fn on_violation(&mut self, violation: Violation) {
        self.violation(violation)
    }
    fn on_fatal(&mut self, error: LinkError) {
        self.die(error)
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cid", &self.config.cid)
            .field("dialect", &self.core.dialect)
            .field("transactions", &self.transactions.len())
            .field("error", &self.core.error)
            .finish_non_exhaustive()
    }
}
