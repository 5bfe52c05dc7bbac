//! What the `client` and `server` fuzz targets share: the limits both machines take from the
//! input, the conversions of arbitrary values into well-formed packet fields, and the check
//! (through the core's `Machine` surface) that feeding bytes consumes at most what was given
//! and that an error is sticky. Every other feed goes through `handle_buf` (the owned-bytes
//! input) instead of `handle_bytes`.

use std::time::Instant;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use tuppence::Machine;
use tuppence::link::{Limits, LinkError};
use tuppence::wire::ProcInfoField;

/// The machine limits an input picks, kept small so that they are actually reached.
///
/// `arbitrary` reads a nested struct field by field, exactly as if its fields stood in the
/// outer one, so the committed corpora still mean what they meant.
#[derive(Arbitrary, Debug)]
pub struct LimitsInput {
    max_events: u8,
    max_transmit_buffer: u16,
    max_transactions: u8,
    max_send_packet: u16,
}

impl LimitsInput {
    pub fn limits(&self) -> Limits {
        Limits {
            max_events: usize::from(self.max_events % 16),
            max_transmit_buffer: usize::from(self.max_transmit_buffer),
            max_transactions: usize::from(self.max_transactions % 32),
            max_send_packet: usize::from(self.max_send_packet),
            ..Limits::default()
        }
    }
}

/// A string field without NUL bytes, so that the packet encodes.
pub fn no_nul(mut v: Vec<u8>) -> Bytes {
    v.retain(|b| *b != 0);
    Bytes::from(v)
}

/// At most 16 procinfo fields, as one response may carry.
pub fn procinfo_fields(fields: Vec<(u8, Vec<u8>)>) -> Vec<ProcInfoField> {
    fields
        .into_iter()
        .take(16)
        .map(|(kind, value)| ProcInfoField {
            kind,
            value: Bytes::from(value),
        })
        .collect()
}

/// Feeds `inbox` to `m` (through `handle_buf` when `owned`) and drops what it consumed
/// (backpressure keeps the rest). On an error: sticky (the same error again, and the
/// machine says so), no more timers, and the inbox is discarded. Returns whether the
/// machine failed.
pub fn feed(
    m: &mut impl Machine<Error = LinkError>,
    now: Instant,
    inbox: &mut Vec<u8>,
    owned: bool,
) -> bool {
    let r = if owned {
        let mut buf = BytesMut::from(&inbox[..]);
        let r = m.handle_buf(now, &mut buf);
        if let Ok(n) = r {
            assert_eq!(
                buf.len() + n,
                inbox.len(),
                "handle_buf left the wrong bytes"
            );
            assert_eq!(&buf[..], &inbox[n..], "handle_buf left other bytes");
        }
        r
    } else {
        m.handle_bytes(now, inbox)
    };
    match r {
        Ok(n) => {
            assert!(n <= inbox.len());
            inbox.drain(..n);
            false
        }
        Err(e) => {
            assert_eq!(m.error(), Some(&e));
            assert_eq!(m.handle_bytes(now, b"x"), Err(e));
            assert_eq!(m.poll_timeout(), None);
            inbox.clear();
            true
        }
    }
}
