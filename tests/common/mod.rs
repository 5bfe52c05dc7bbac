//! Helpers shared by the wire integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use bytes::{Bytes, BytesMut};
use tuppence::wire::{DecodeError, Decoder, Dialect, Frame, MAX_PACKET_LEN, Packet, Sender};

/// Parses hex written with optional whitespace: `"68 00 00 0c"`.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {s:?}"
    );
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).unwrap();
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
        })
        .collect()
}

/// Lower-case hex without separators, for readable assertion failures.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes exactly one packet from `bytes` through a [`Decoder`], and checks that it used
/// every byte.
pub fn decode_one(dialect: Dialect, sender: Sender, bytes: &[u8]) -> Result<Frame, DecodeError> {
    let mut dec = Decoder::new(dialect, sender);
    dec.push(bytes);
    let frame = dec.next_frame()?.expect("a whole packet was pushed");
    assert_eq!(dec.buffered(), 0, "the packet left bytes behind");
    assert_eq!(dec.next_frame(), Ok(None));
    Ok(frame)
}

/// Decodes the first packet of `bytes` with `decode_frame` and the full length limit.
pub fn decode_first(
    dialect: Dialect,
    sender: Sender,
    bytes: &[u8],
) -> (Result<Option<Frame>, DecodeError>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let r = tuppence::wire::decode_frame(dialect, sender, &mut buf, MAX_PACKET_LEN);
    (r, buf)
}

pub fn encode(packet: &Packet, dialect: Dialect, cid: u16, xid: u16) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet
        .encode(dialect, cid, xid, &mut out)
        .unwrap_or_else(|e| panic!("encoding {packet:?} in {dialect}: {e}"));
    out.to_vec()
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Both dialects, for loops.
pub const DIALECTS: [Dialect; 2] = [Dialect::V4, Dialect::Legacy3];

/// Builds a header in `dialect`'s layout by hand (not through the codec).
pub fn header(dialect: Dialect, kind: u8, len: u16, cid: u16, xid: u16) -> Vec<u8> {
    let mut h = vec![kind, 0];
    match dialect {
        Dialect::V4 => {
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&cid.to_be_bytes());
            h.extend_from_slice(&xid.to_be_bytes());
        }
        Dialect::Legacy3 => {
            h.extend_from_slice(&cid.to_be_bytes());
            h.extend_from_slice(&xid.to_be_bytes());
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    h
}

/// A whole packet with a hand-built header around `payload`.
pub fn raw_packet(dialect: Dialect, kind: u8, cid: u16, xid: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len() + 8).unwrap();
    let mut p = header(dialect, kind, len, cid, xid);
    p.extend_from_slice(payload);
    p
}

/// The in-memory client/server harness of the link tests.
pub mod pair;

/// Runs each named test function (taking a [`Dialect`]) once per dialect, in modules
/// `v4` and `legacy3`. Needs `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! both_dialects {
    ($($name:ident),* $(,)?) => {
        mod v4 {
            $( #[test] fn $name() { super::$name(tuppence::wire::Dialect::V4) } )*
        }
        mod legacy3 {
            $( #[test] fn $name() { super::$name(tuppence::wire::Dialect::Legacy3) } )*
        }
    };
}
