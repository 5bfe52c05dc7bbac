//! What both machines share: the clamped clock, the decoder, the transmit queue (its
//! methods are in `transmit`), the keepalive timers and the sticky error. The input loop
//! over it is in `input`. Kept apart so the role-specific code reads as protocol only.

use std::time::{Duration, Instant};

use super::stats::{Stats, count};
use super::transmit::TxQueue;
use super::{Limits, LinkError, UsageError};
use crate::wire::{DecodeError, Decoder, Dialect, Frame};

/// What `handle_timeout` found due at the current time.
pub(crate) enum Timeout {
    Nothing,
    SendKeepalive,
    Dead(Duration),
}

pub(crate) struct Core {
    /// The receive side: every framing rule, and the connection's dialect.
    pub(crate) decoder: Decoder,
    pub(crate) out: TxQueue,
    pub(crate) limits: Limits,
    now: Instant,
    keepalive: Option<Duration>,
    send_keepalives: bool,
    last_rx: Instant,
    last_tx: Instant,
    /// When the decoder was last left holding an unfinished packet with all input
    /// consumed, i.e. waiting for the peer (see `Limits::stale_partial_after`). `None`
    /// while nothing is buffered, or when the wait is not the peer's doing (the machine
    /// pushed back, or the runtime paused reading).
    pub(crate) partial_since: Option<Instant>,
    pub(crate) error: Option<LinkError>,
    pub(crate) stats: Stats,
}

impl Core {
    /// `decoder` reads what `peer` sends; its dialect is the connection's.
    pub(crate) fn new(decoder: Decoder, limits: Limits, now: Instant) -> Self {
        Core {
            decoder: decoder.with_max_packet_len(limits.max_receive_packet),
            out: TxQueue::default(),
            limits,
            now,
            keepalive: None,
            send_keepalives: false,
            last_rx: now,
            last_tx: now,
            partial_since: None,
            error: None,
            stats: Stats::default(),
        }
    }

    /// The connection's dialect (the decoder's: a server learns it from the first bytes).
    pub(crate) fn dialect(&self) -> Dialect {
        self.decoder.dialect()
    }

    /// Time never goes backwards inside a machine, whatever the caller passes.
    pub(crate) fn tick(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    pub(crate) fn check_open(&self) -> Result<(), UsageError> {
        match &self.error {
            Some(e) => Err(UsageError::Link(e.clone())),
            None => Ok(()),
        }
    }

    /// Applies a keepalive interval; `send` says whether this side also sends `K`.
    pub(crate) fn set_keepalive(&mut self, interval: Option<Duration>, send: bool) {
        self.keepalive = interval;
        self.send_keepalives = send && interval.is_some();
    }

    pub(crate) fn keepalive(&self) -> Option<Duration> {
        self.keepalive
    }

    pub(crate) fn saw_traffic(&mut self) {
        self.last_rx = self.now;
    }

    /// A packet was queued: counted, and it resets the keepalive send timer.
    pub(crate) fn sent_packet(&mut self) {
        count(&mut self.stats.packets_sent, 1);
        self.last_tx = self.now;
    }

    /// The runtime stops reading for a while: the silence until the next input is its own.
    pub(crate) fn input_paused(&mut self) {
        self.partial_since = None;
    }

    /// When the silence that began at `partial_since` reaches `stale_partial_after` (see
    /// `Limits::stale_partial_after`): `None` unless the machine waits for the peer inside
    /// a packet on a device link.
    pub(crate) fn silence_deadline(&self) -> Option<Instant> {
        if !self.decoder.resyncs() {
            return None;
        }
        self.partial_since?
            .checked_add(self.limits.stale_partial_after?)
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let k = self.keepalive;
        let dead = k.and_then(|k| self.last_rx.checked_add(k));
        let send = match k {
            Some(k) if self.send_keepalives => self.last_tx.checked_add(send_interval(k)),
            _ => None,
        };
        [dead, send, self.silence_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at the current time (call after `tick`).
    pub(crate) fn due(&self) -> Timeout {
        let Some(k) = self.keepalive else {
            return Timeout::Nothing;
        };
        if self.error.is_some() {
            return Timeout::Nothing;
        }
        if self.last_rx.checked_add(k).is_some_and(|d| self.now >= d) {
            return Timeout::Dead(k);
        }
        if self.send_keepalives
            && self
                .last_tx
                .checked_add(send_interval(k))
                .is_some_and(|d| self.now >= d)
        {
            return Timeout::SendKeepalive;
        }
        Timeout::Nothing
    }

    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let r = self.decoder.next_frame();
        if let Ok(Some(_)) = r {
            count(&mut self.stats.packets_received, 1);
        }
        r
    }
}

/// A side sends `K` after a quarter of the keepalive interval without transmitting.
fn send_interval(keepalive: Duration) -> Duration {
    keepalive.checked_div(4).unwrap_or(keepalive)
}
