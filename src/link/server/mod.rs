//! The server (agent) side of a link connection: the machine and its I/O surface here,
//! the application's answers in `answers`, the client's requests in `requests`.

mod answers;
mod requests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::core::{Core, Timeout};
use super::input::{self, Input};
use super::stats::Stats;
use super::{
    LinkError, Refusal, ServerConfig, ServerEvent, UsageError, effective_keepalive, status,
};
use crate::wire::{Decoder, Dialect, Packet, Sender};
use crate::{Machine, Transmit};

#[derive(Debug)]
pub(super) enum Kind {
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
/// application's answers into packets in the order the protocol prescribes
/// (ARCHITECTURE.md, "Link protocol").
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
        let mut decoder = match config.dialect {
            Some(dialect) => Decoder::new(dialect, Sender::Client),
            // The client's first bytes say which dialect it speaks.
            None => Decoder::detecting(Sender::Client),
        };
        if config.hello_resets_session {
            // A device link: the packet boundaries can be lost, and a hello finds them.
            decoder.enable_resync();
        }
        let mut core = Core::new(decoder, config.limits.clone(), now);
        // Before a hello, the agent's own setting bounds silence (no `K` is sent yet).
        core.set_keepalive(
            effective_keepalive(config.keepalive, config.limits.min_keepalive),
            false,
        );
        Server {
            core,
            config,
            transactions: HashMap::new(),
            closing: HashSet::new(),
            events: VecDeque::new(),
            discard_unsent: false,
            refusal: None,
            last_hello: None,
        }
    }

    /// Continues a device port whose previous session (another `Server` on the same
    /// port) ended with a hang-up: if the first bytes are not a hello, they are read in
    /// that session's dialect (the same client may go on: see [`Server::carryover`]).
    /// Then feed `previous.input` as the first bytes.
    pub fn resume_from(&mut self, previous: &Carryover) {
        self.core.decoder.set_fallback_dialect(previous.dialect);
    }

    // ---- getters ----

    pub fn cid(&self) -> u16 {
        self.config.cid
    }

    /// The dialect in use (the default until the client's first 8 bytes arrived).
    pub fn dialect(&self) -> Dialect {
        self.core.dialect()
    }

    pub fn dialect_known(&self) -> bool {
        self.core.decoder.dialect_known()
    }

    /// False while `output` would answer `QueueFull`: stop reading children's output.
    pub fn can_send(&self) -> bool {
        self.core.transmit_buffered() <= self.config.limits.max_transmit_buffer
    }

    /// The largest data payload one packet carries (from the dialect and the limits). An
    /// application that reads data in multiples of it sends no short packet but the last:
    /// `output` splits at this size, so a read of any other size leaves a runt.
    pub fn max_data_chunk(&self) -> usize {
        self.core.max_chunk()
    }

    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    /// Bytes of memory the receive buffer holds: 0 once the connection is idle (no live
    /// transaction) and has nothing half-received.
    pub fn receive_capacity(&self) -> usize {
        self.core.decoder.buffer_capacity()
    }

    /// An idle connection keeps no block sized for bulk data: an agent may hold many
    /// connections that moved files once and then wait for hours (a farm controller's
    /// sessions). See [`Machine::is_idle`].
    fn release_when_idle(&mut self) {
        if Machine::is_idle(self) {
            self.core.decoder.release_if_empty();
        }
    }

    pub fn is_live(&self, xid: u16) -> bool {
        self.transactions.contains_key(&xid)
    }

    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    // ---- outputs (see also the `Machine` impl) ----

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

    /// On a device link whose transport hung up (after [`Server::handle_eof`]): what
    /// the next session on the same port must start with. `unwritten` is how many bytes
    /// taken from `poll_transmit` the runtime never wrote.
    ///
    /// A hang-up is not always the last client's: a virtio-serial guest can read a new
    /// client's hello before it learns that the previous host connection closed. So a hello
    /// that arrived last — nothing from its client followed it, and its reply was not
    /// entirely written — belongs to the next session, which answers it (ARCHITECTURE.md,
    /// "Device links"). So do the bytes from a hello found among the unfinished bytes (a
    /// new client's hello behind a dead one's debris), or the start of one at their very
    /// end. Everything else buffered is debris of the client that hung up. Create the next
    /// session's machine with the same cid (a client that did get the reply goes on with
    /// it), call [`Server::resume_from`] and feed it [`Carryover::input`] first.
    ///
    /// Empty (and no dialect) on other links, where a hang-up ends the one client.
    pub fn carryover(&self, unwritten: usize) -> Carryover {
        if !self.config.hello_resets_session {
            return Carryover::default();
        }
        let mut input = self.core.decoder.hello_onwards();
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
            dialect: self
                .core
                .decoder
                .dialect_known()
                .then_some(self.core.dialect()),
        }
    }

    // ---- internals ----

    pub(super) fn kind_mut(&mut self, xid: u16) -> Result<&mut Kind, UsageError> {
        self.core.check_open()?;
        self.transactions
            .get_mut(&xid)
            .ok_or(UsageError::UnknownTransaction(xid))
    }

    pub(super) fn expect(
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

    /// Queues a packet. Status packets are never refused for a full queue: they are small
    /// and bounded by the number of transactions.
    pub(super) fn send(&mut self, xid: u16, packet: Packet) -> Result<(), UsageError> {
        self.core.check_open()?;
        self.core.queue(self.config.cid, xid, &packet)?;
        Ok(())
    }

    /// Answers with the refusal and ends the connection (see [`Server::refuse`]).
    pub(super) fn send_refusal(&mut self, refusal: Refusal) {
        let _ = self.send(0, Packet::Major(refusal.status));
        let _ = self.send(0, Packet::Minor(refusal.detail));
        self.die(LinkError::Refused(refusal));
    }

    pub(super) fn die(&mut self, error: LinkError) {
        self.core.error = Some(error);
        self.transactions.clear();
        self.closing.clear();
    }

    /// The transaction's terminal packet was sent.
    pub(super) fn end(&mut self, xid: u16) {
        self.transactions.remove(&xid);
        self.closing.remove(&xid);
    }

    /// Sends the machine's own terminal answer to a monitor end or a transfer abort, now
    /// that the application has polled the event for it (and so has already answered
    /// every earlier event). Nothing if the application ended the transaction itself.
    pub(super) fn close_deferred(&mut self, xid: u16, packets: &[Packet]) {
        if !self.closing.contains(&xid) {
            return;
        }
        for p in packets {
            let _ = self.send(xid, p.clone());
        }
        self.end(xid);
    }
}

/// The I/O surface (see [`Machine`]).
impl Machine for Server {
    type Error = LinkError;

    /// Feeds bytes read from the transport; returns how many were consumed (fewer when
    /// the event queue is full or the peer leaves twice the transmit limit unread).
    fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, LinkError> {
        let r = input::handle_bytes(self, now, data);
        self.release_when_idle();
        r
    }

    fn handle_buf(&mut self, now: Instant, buf: &mut BytesMut) -> Result<usize, LinkError> {
        let r = input::handle_buf(self, now, buf);
        self.release_when_idle();
        r
    }

    /// The transport reached end of stream (the client went away).
    fn handle_eof(&mut self, now: Instant) {
        self.core.tick(now);
        if self.core.error.is_none() {
            self.die(LinkError::Closed);
        }
    }

    /// Fires due timers: keepalives, and on a device link the check of a silence inside a
    /// packet (see [`super::Limits::stale_partial_after`]). Spurious calls are no-ops.
    fn handle_timeout(&mut self, now: Instant) {
        self.core.tick(now);
        input::handle_timeout(self);
        match self.core.due() {
            Timeout::Nothing => {}
            Timeout::SendKeepalive => {
                // A keepalive always encodes.
                let _ = self.core.queue(self.config.cid, 0, &Packet::Keepalive);
            }
            Timeout::Dead(k) => {
                self.events.push_back(ServerEvent::LinkDead);
                self.die(LinkError::KeepaliveExpired(k));
            }
        }
    }

    /// The runtime stops reading the transport for a while (its own backpressure, e.g. a
    /// child's stdin is backed up): the silence until the next `handle_bytes` is not the
    /// client's, so it must not make a partial packet look stale (see
    /// [`super::Limits::stale_partial_after`]).
    fn handle_input_paused(&mut self) {
        self.core.input_paused();
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
        // The answer that ends a transaction leaves here: the first chance to find the
        // connection idle after its last request.
        self.release_when_idle();
        self.core.poll_transmit(now, buf)
    }

    /// A large data payload is a segment of its own, sharing the `Bytes` given to
    /// [`Server::output`].
    fn poll_transmit_segments(&mut self, now: Instant, out: &mut Transmit) -> usize {
        self.release_when_idle();
        self.core.poll_transmit_segments(now, out)
    }

    fn poll_timeout(&self) -> Option<Instant> {
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
    fn poll_discard_unsent(&mut self) -> bool {
        std::mem::take(&mut self.discard_unsent)
    }

    fn error(&self) -> Option<&LinkError> {
        self.core.error.as_ref()
    }

    /// No live transaction, and none waiting for its answer to be polled.
    fn is_idle(&self) -> bool {
        self.transactions.is_empty() && self.closing.is_empty()
    }

    /// False while events wait to be polled or the peer leaves too many answers unread.
    fn accepts_input(&self) -> bool {
        self.core.error.is_none() && Input::has_room(self)
    }

    fn transmit_buffered(&self) -> usize {
        self.core.transmit_buffered()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cid", &self.config.cid)
            .field("dialect", &self.core.dialect())
            .field("transactions", &self.transactions.len())
            .field("error", &self.core.error)
            .finish_non_exhaustive()
    }
}
