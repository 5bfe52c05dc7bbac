//! `poll_transmit_segments` gives exactly the bytes `poll_transmit` gives, in both
//! dialects and for data of every size, and hands large data payloads over without copying;
//! a [`Transmit`] written piecewise with `io_slices`/`consume` yields exactly those bytes.

use std::io::{IoSlice, Write};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tuppence::link::{Client, ClientConfig, Command, Server, ServerConfig, ServerEvent};
use tuppence::wire::Dialect;
use tuppence::{Machine, Transmit};

/// A server with one running command, its hello reply already taken.
fn server_with_command(dialect: Dialect) -> (Server, u16) {
    let now = Instant::now();
    let mut client = Client::new(
        ClientConfig {
            dialect,
            ..ClientConfig::default()
        },
        now,
    );
    client.run(Command::new("x")).unwrap();
    let mut server = Server::new(ServerConfig::default(), now);
    let mut wire = BytesMut::new();
    client.poll_transmit(now, &mut wire);
    server.handle_bytes(now, &wire).unwrap();
    // The command request waits for the hello reply: deliver it and pass the request on.
    let mut reply = BytesMut::new();
    server.poll_transmit(now, &mut reply);
    client.handle_bytes(now, &reply).unwrap();
    wire.clear();
    client.poll_transmit(now, &mut wire);
    server.handle_bytes(now, &wire).unwrap();
    let mut xid = None;
    while let Some(ev) = server.poll_event() {
        if let ServerEvent::RunCommand { xid: x, .. } = ev {
            xid = Some(x);
        }
    }
    (server, xid.expect("the command arrived"))
}

fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn segments_carry_the_same_bytes_as_poll_transmit() {
    let sizes = [
        0usize, 1, 100, 1023, 1024, 1025, 32757, 32758, 32759, 70_000, 200_000,
    ];
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (mut a, xid_a) = server_with_command(dialect);
        let (mut b, xid_b) = server_with_command(dialect);
        assert_eq!(xid_a, xid_b);
        let now = Instant::now();
        for (i, &len) in sizes.iter().enumerate() {
            let data = payload(len, i as u8);
            let channel = 1 + (i % 2) as u16;
            a.output(xid_a, channel, data.clone()).unwrap();
            b.output(xid_b, channel, data).unwrap();
            if i % 3 == 2 {
                // A small packet between data packets.
                a.output(xid_a, 1, Bytes::from_static(b"x")).unwrap();
                b.output(xid_b, 1, Bytes::from_static(b"x")).unwrap();
            }
        }
        a.command_exited(xid_a, 3).unwrap();
        b.command_exited(xid_b, 3).unwrap();
        assert_eq!(a.transmit_buffered(), b.transmit_buffered());
        let mut flat = BytesMut::new();
        let n = a.poll_transmit(now, &mut flat);
        let mut segs = Transmit::new();
        let m = b.poll_transmit_segments(now, &mut segs);
        assert_eq!(n, m);
        assert_eq!(b.transmit_buffered(), 0);
        let joined: Vec<u8> = segs.segments().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, &flat[..], "{dialect:?}");
        assert!(segs.segments().all(|s| !s.is_empty()));
        assert_eq!(a.stats().bytes_sent, b.stats().bytes_sent);
        assert_eq!(a.stats().packets_sent, b.stats().packets_sent);
    }
}

#[test]
fn large_payloads_are_not_copied() {
    let (mut server, xid) = server_with_command(Dialect::V4);
    let data = payload(100_000, 7);
    server.output(xid, 1, data.clone()).unwrap();
    let mut segs = Transmit::new();
    server.poll_transmit_segments(Instant::now(), &mut segs);
    // Every byte of the payload is in a segment that points into the original buffer.
    let range = data.as_ptr_range();
    let shared: usize = segs
        .segments()
        .filter(|s| range.contains(&s.as_ptr()))
        .map(Bytes::len)
        .sum();
    assert_eq!(shared, data.len());
}

#[test]
fn the_byte_api_still_works_after_segments() {
    let (mut server, xid) = server_with_command(Dialect::V4);
    let now = Instant::now();
    server.output(xid, 1, payload(5000, 1)).unwrap();
    let mut segs = Transmit::new();
    server.poll_transmit_segments(now, &mut segs);
    server.output(xid, 1, payload(5000, 2)).unwrap();
    let mut flat = BytesMut::from(&b"prefix"[..]);
    let n = server.poll_transmit(now, &mut flat);
    assert_eq!(n, 5000 + 10);
    assert_eq!(&flat[..6], b"prefix");
    assert_eq!(&flat[16..], &payload(5000, 2)[..]);
}

/// A writer that takes at most `max` bytes per call and at most 3 slices, as a transport
/// with a full buffer does.
struct Trickle {
    out: Vec<u8>,
    max: usize,
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let mut left = self.max;
        let mut n = 0;
        for b in bufs.iter().take(3) {
            let k = b.len().min(left);
            self.out.extend_from_slice(&b[..k]);
            n += k;
            left -= k;
            if left == 0 || k < b.len() {
                break;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What one server with mixed output queues: as flat bytes and as segments.
fn queued(dialect: Dialect) -> (BytesMut, Transmit) {
    let (mut a, xid_a) = server_with_command(dialect);
    let (mut b, xid_b) = server_with_command(dialect);
    for (i, len) in [3usize, 5000, 1, 70_000, 2048].into_iter().enumerate() {
        a.output(xid_a, 1, payload(len, i as u8)).unwrap();
        b.output(xid_b, 1, payload(len, i as u8)).unwrap();
    }
    let now = Instant::now();
    let mut flat = BytesMut::new();
    a.poll_transmit(now, &mut flat);
    let mut tx = Transmit::new();
    b.poll_transmit_segments(now, &mut tx);
    (flat, tx)
}

#[test]
fn io_slices_and_consume_write_every_byte_once_in_order() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        for max in [1usize, 7, 1000, 1 << 20] {
            let (flat, mut tx) = queued(dialect);
            assert_eq!(tx.len(), flat.len());
            let mut sink = Trickle {
                out: Vec::new(),
                max,
            };
            while !tx.is_empty() {
                let before = tx.len();
                let mut iov = [IoSlice::new(&[]); 4];
                let k = tx.io_slices(&mut iov);
                assert!((1..=4).contains(&k));
                let n = sink.write_vectored(&iov[..k]).unwrap();
                tx.consume(n);
                assert_eq!(tx.len(), before - n);
            }
            assert_eq!(sink.out, &flat[..], "{dialect:?}, {max} bytes per write");
            assert_eq!(tx.segments().count(), 0);
        }
    }
}

#[test]
fn consuming_more_than_held_empties_and_clear_counts() {
    let mut tx = Transmit::new();
    tx.push(Bytes::from_static(b"abc"));
    tx.push(Bytes::new());
    tx.push(Bytes::from_static(b"defg"));
    assert_eq!(tx.len(), 7);
    assert_eq!(tx.segments().count(), 2, "empty segments are dropped");
    tx.consume(4);
    assert_eq!(tx.segments().next().unwrap(), &Bytes::from_static(b"efg"));
    tx.consume(100);
    assert!(tx.is_empty());
    tx.push(Bytes::from_static(b"xy"));
    assert_eq!(tx.clear(), 2);
    assert!(tx.is_empty());
}
