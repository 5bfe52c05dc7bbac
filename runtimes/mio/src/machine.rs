//! The common surface of `link::Client` and `link::Server` that a loop needs to drive either.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tuppence::link::{Client, LinkError, Server};

/// A sans-IO link machine as seen by an I/O loop.
pub trait Machine {
    fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, LinkError>;
    fn handle_eof(&mut self, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize;
    /// What `poll_transmit` gives, as segments to write with vectored I/O (the machines
    /// of the core crate hand large data payloads over without copying them).
    fn poll_transmit_segments(&mut self, now: Instant, out: &mut VecDeque<Bytes>) -> usize {
        let mut buf = BytesMut::new();
        let n = self.poll_transmit(now, &mut buf);
        if n > 0 {
            out.push_back(buf.freeze());
        }
        n
    }
    fn poll_timeout(&self) -> Option<Instant>;
    fn error(&self) -> Option<&LinkError>;
    /// Whether `handle_bytes` would take bytes now. A loop holding unconsumed input waits
    /// while this is false instead of spinning on a machine that pushes back.
    fn accepts_input(&self) -> bool {
        true
    }
    /// The loop stops reading the transport for a while (see `Server::handle_input_paused`).
    fn handle_input_paused(&mut self);
    /// Whether bytes taken from `poll_transmit` but not yet written must be dropped (a
    /// hello reset the session: see `Server::poll_discard_unsent`). Never for a client.
    fn poll_discard_unsent(&mut self) -> bool {
        false
    }
}

macro_rules! impl_machine {
    ($t:ty $(, $($extra:tt)*)?) => {
        impl Machine for $t {
            fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, LinkError> {
                <$t>::handle_bytes(self, now, data)
            }
            fn handle_eof(&mut self, now: Instant) {
                <$t>::handle_eof(self, now)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
                <$t>::poll_transmit(self, now, buf)
            }
            fn poll_transmit_segments(&mut self, now: Instant, out: &mut VecDeque<Bytes>) -> usize {
                <$t>::poll_transmit_segments(self, now, out)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
            fn error(&self) -> Option<&LinkError> {
                <$t>::error(self)
            }
            fn accepts_input(&self) -> bool {
                <$t>::accepts_input(self)
            }
            fn handle_input_paused(&mut self) {
                <$t>::handle_input_paused(self)
            }
            $($($extra)*)?
        }
    };
}

impl_machine!(Client);
impl_machine!(
    Server,
    fn poll_discard_unsent(&mut self) -> bool {
        Server::poll_discard_unsent(self)
    }
);
