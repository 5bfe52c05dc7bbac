//! Finding a client's hello in a byte stream whose packet boundaries are lost.
//!
//! On a device link (serial line, virtio-serial port) a client can die in the middle of a
//! packet and the next client's hello then follows the unfinished bytes. The only packet a
//! new client sends before it hears from the agent is its hello, so the hello is the one
//! place where the stream can be picked up again. This module says where one begins; the
//! link machine (`link::Server`) decides when looking for one is safe.
//!
//! What is matched is the hello's header and its major version: the first 9 of its 12
//! bytes, which are fixed for a dialect (type `h`, cid 0, xid 0, length 12, major 4 or 3).
//! The minor version and the keepalive (the last 3 bytes) can be anything.

use super::{Dialect, HEADER_LEN};

/// Length of a hello packet: the header and `major, minor, keepalive u16`.
pub const HELLO_LEN: usize = HEADER_LEN + 4;

/// How many leading bytes of a hello are fixed (see [`hello_signature`]).
pub const HELLO_SIGNATURE_LEN: usize = HEADER_LEN + 1;

/// The first [`HELLO_SIGNATURE_LEN`] bytes of a new client's hello in `dialect`:
/// `68 00 00 0c 00 00 00 00 04` in 4.0 and `68 00 00 00 00 00 00 0c 03` in 3.0 (cid 0,
/// xid 0, length 12, then the major version). Read in the other dialect's layout each has
/// length 0, so no byte string is a signature in both.
pub const fn hello_signature(dialect: Dialect) -> [u8; HELLO_SIGNATURE_LEN] {
    match dialect {
        Dialect::V4 => [b'h', 0, 0, 12, 0, 0, 0, 0, 4],
        Dialect::Legacy3 => [b'h', 0, 0, 0, 0, 0, 0, 12, 3],
    }
}

/// What a byte string holds at its start, as far as a hello is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloMatch {
    /// It starts with a hello signature in this dialect.
    Hello(Dialect),
    /// It is shorter than a signature and every byte of it fits one: more bytes decide.
    Prefix,
    /// It does not start with a hello.
    No,
}

/// Whether `bytes` starts with a new client's hello (see [`hello_signature`]).
pub fn match_hello(bytes: &[u8]) -> HelloMatch {
    let mut prefix = false;
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let sig = hello_signature(dialect);
        let n = bytes.len().min(sig.len());
        if bytes.get(..n) == sig.get(..n) {
            if n == sig.len() {
                return HelloMatch::Hello(dialect);
            }
            prefix = true;
        }
    }
    if prefix && !bytes.is_empty() {
        HelloMatch::Prefix
    } else {
        HelloMatch::No
    }
}

/// The first offset in `bytes` where a hello starts ([`HelloMatch::Hello`]) or, near the
/// end, may start ([`HelloMatch::Prefix`]), with what was found there.
pub fn find_hello(bytes: &[u8]) -> Option<(usize, HelloMatch)> {
    (0..bytes.len()).find_map(|at| match match_hello(bytes.get(at..)?) {
        HelloMatch::No => None,
        m => Some((at, m)),
    })
}

/// The last offset in `bytes` where a whole hello signature starts, with its dialect.
pub fn rfind_hello(bytes: &[u8]) -> Option<(usize, Dialect)> {
    (0..bytes.len())
        .rev()
        .find_map(|at| match match_hello(bytes.get(at..)?) {
            HelloMatch::Hello(d) => Some((at, d)),
            _ => None,
        })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::{Hello, Packet};

    #[test]
    fn signatures_are_the_start_of_encoded_hellos() {
        for dialect in [Dialect::V4, Dialect::Legacy3] {
            let (major, minor) = dialect.version();
            for (minor, keepalive) in [(minor, 0xFFFF), (7, 0), (0, 60)] {
                let bytes = Packet::Hello(Hello {
                    major,
                    minor,
                    keepalive,
                })
                .to_bytes(dialect, 0, 0)
                .unwrap();
                assert_eq!(bytes.len(), HELLO_LEN);
                assert_eq!(bytes[..HELLO_SIGNATURE_LEN], hello_signature(dialect));
                assert_eq!(match_hello(&bytes), HelloMatch::Hello(dialect));
            }
        }
    }

    #[test]
    fn prefixes_and_mismatches() {
        assert_eq!(match_hello(b""), HelloMatch::No);
        assert_eq!(match_hello(b"h"), HelloMatch::Prefix);
        assert_eq!(match_hello(&[b'h', 0, 0, 12]), HelloMatch::Prefix);
        assert_eq!(match_hello(&[b'h', 0, 0, 0, 0]), HelloMatch::Prefix);
        assert_eq!(match_hello(&[b'h', 0, 0, 13]), HelloMatch::No);
        assert_eq!(match_hello(b"D"), HelloMatch::No);
        // Another major version in a hello header is not a new client of this protocol.
        let mut v5 = hello_signature(Dialect::V4);
        v5[8] = 5;
        assert_eq!(match_hello(&v5), HelloMatch::No);
        let mut cid = hello_signature(Dialect::Legacy3);
        cid[3] = 1;
        assert_eq!(match_hello(&cid), HelloMatch::No);
    }

    #[test]
    fn finds_the_first_and_the_last() {
        let v4 = hello_signature(Dialect::V4);
        let v3 = hello_signature(Dialect::Legacy3);
        let mut bytes = b"junk".to_vec();
        bytes.extend_from_slice(&v3);
        bytes.extend_from_slice(b"xyz");
        bytes.extend_from_slice(&v4);
        bytes.extend_from_slice(&[0, 0xFF, 0xFF, b'h', 0]);
        assert_eq!(
            find_hello(&bytes),
            Some((4, HelloMatch::Hello(Dialect::Legacy3)))
        );
        assert_eq!(rfind_hello(&bytes), Some((16, Dialect::V4)));
        let tail = bytes.len() - 2;
        assert_eq!(
            find_hello(&bytes[17..]),
            Some((tail - 17, HelloMatch::Prefix))
        );
        assert_eq!(find_hello(b"no hello here"), None);
        assert_eq!(rfind_hello(&v4[..8]), None);
    }
}
