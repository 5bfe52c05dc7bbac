//! `poll_transmit_segments` gives exactly the bytes `poll_transmit` gives, in both
//! dialects and for data of every size, and hands large data payloads over without copying.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tuppence::link::{Client, ClientConfig, Command, Server, ServerConfig, ServerEvent};
use tuppence::wire::Dialect;

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
        let mut segs = VecDeque::new();
        let m = b.poll_transmit_segments(now, &mut segs);
        assert_eq!(n, m);
        assert_eq!(b.transmit_buffered(), 0);
        let joined: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, &flat[..], "{dialect:?}");
        assert!(segs.iter().all(|s| !s.is_empty()));
        assert_eq!(a.stats().bytes_sent, b.stats().bytes_sent);
        assert_eq!(a.stats().packets_sent, b.stats().packets_sent);
    }
}

#[test]
fn large_payloads_are_not_copied() {
    let (mut server, xid) = server_with_command(Dialect::V4);
    let data = payload(100_000, 7);
    server.output(xid, 1, data.clone()).unwrap();
    let mut segs = VecDeque::new();
    server.poll_transmit_segments(Instant::now(), &mut segs);
    // Every byte of the payload is in a segment that points into the original buffer.
    let range = data.as_ptr_range();
    let shared: usize = segs
        .iter()
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
    let mut segs = VecDeque::new();
    server.poll_transmit_segments(now, &mut segs);
    server.output(xid, 1, payload(5000, 2)).unwrap();
    let mut flat = BytesMut::from(&b"prefix"[..]);
    let n = server.poll_transmit(now, &mut flat);
    assert_eq!(n, 5000 + 10);
    assert_eq!(&flat[..6], b"prefix");
    assert_eq!(&flat[16..], &payload(5000, 2)[..]);
}
