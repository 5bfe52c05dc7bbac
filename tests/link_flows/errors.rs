//! What makes no sense: foreign cids, unknown and malformed requests, late packets, framing
//! errors, requests held before the hello reply; and the handshake failures (4.0 only).

use bytes::Bytes;
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, LinkError, Outcome, ServerEvent, Signal,
    UsageError, Violation,
};
use tuppence::wire::{DecodeError, Dialect, Hello, Packet, Sender};

use super::common;
use super::common::pair::{Pair, packet};
use super::support::*;

both_dialects!(
    foreign_cid_dropped_and_counted,
    unknown_request_type_answered_71,
    malformed_and_empty_requests_answered_71,
    late_packets_after_terminal_dropped,
    framing_error_is_fatal_and_sticky_on_server,
    framing_error_is_fatal_and_sticky_on_client,
    requests_before_hello_are_held,
);

fn foreign_cid_dropped_and_counted(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let xid = p.client.run(Command::new("x")).unwrap();
    p.drive();
    p.take_server_events();
    // Server → client with another connection's cid: dropped, the command stays live.
    let foreign = [
        packet(dialect, 99, xid, Packet::Major(0)),
        packet(dialect, 99, xid, Packet::Minor(0)),
    ]
    .concat();
    assert_eq!(p.client.handle_bytes(p.now, &foreign), Ok(foreign.len()));
    assert!(p.client.poll_event().is_none());
    assert_eq!(p.client.stats().foreign_cid_dropped, 2);
    assert!(p.client.is_live(xid));
    // Client → server with another cid: dropped, no reply, no event.
    let req = packet(
        dialect,
        99,
        40,
        Packet::Extract {
            user: "root".into(),
            path: "/etc/passwd".into(),
        },
    );
    p.server.handle_bytes(p.now, &req).unwrap();
    assert!(p.server.poll_event().is_none());
    assert_eq!(p.server.stats().foreign_cid_dropped, 1);
    assert_eq!(p.server.transmit_buffered(), 0);
    // The connection goes on.
    p.server.command_exited(xid, 0).unwrap();
    p.drive();
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

fn unknown_request_type_answered_71(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    // 'Z' is no packet type; 'O' (monitor) does not exist in 3.0.
    let mut unknown = packet(dialect, 1, 50, Packet::Quit).to_vec();
    unknown[0] = b'Z';
    let monitor_v4 = packet(
        Dialect::V4,
        1,
        51,
        Packet::Monitor {
            source: "agent".into(),
        },
    )
    .to_vec();
    let monitor = if v4(dialect) {
        monitor_v4
    } else {
        reencode_legacy(&monitor_v4)
    };
    let raw = [unknown, monitor].concat();
    p.server.handle_bytes(p.now, &raw).unwrap();
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    let got: Vec<(u16, Packet)> = frames.into_iter().map(|f| (f.xid, f.packet)).collect();
    if v4(dialect) {
        // 'O' is a monitor in 4.0: no reply, a transaction is open.
        assert_eq!(got, vec![(50, Packet::Major(71))]);
        assert!(p.server.is_live(51));
    } else {
        assert_eq!(got, vec![(50, Packet::Major(71)), (51, Packet::Major(71))]);
    }
    let ev = p.server.poll_event().unwrap();
    assert!(
        matches!(ev, ServerEvent::ProtocolViolation(Violation::Decode(DecodeError::UnknownType { header })) if header.xid == 50),
        "{ev:?}"
    );
    // The connection continues.
    let xid = p.client.run(Command::new("out=ok;exit=0")).unwrap();
    p.drive();
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

/// Rewrites a 4.0 header (`type res len cid xid`) into the 3.0 layout (`type pad cid xid len`).
fn reencode_legacy(v4: &[u8]) -> Vec<u8> {
    let mut out = v4.to_vec();
    out[2..4].copy_from_slice(&v4[4..6]);
    out[4..6].copy_from_slice(&v4[6..8]);
    out[6..8].copy_from_slice(&v4[2..4]);
    out
}

fn malformed_and_empty_requests_answered_71(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    // Empty command, through the client API.
    let empty = p.client.run(Command::new("")).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![finished(empty, Outcome::Failed { errno: 71 })]
    );
    assert_eq!(p.server_packets(empty), vec![Packet::Major(71)]);
    assert!(!p.server.is_live(empty));
    // An extract whose filename has no NUL terminator (the C executor read past the packet).
    let mut bad = packet(
        dialect,
        1,
        60,
        Packet::Extract {
            user: "root".into(),
            path: "x".into(),
        },
    )
    .to_vec();
    bad.pop(); // drop the final NUL, shorten the length by one
    let len_at = if v4(dialect) { 2 } else { 6 };
    let len = u16::from_be_bytes([bad[len_at], bad[len_at + 1]]) - 1;
    bad[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    p.server.handle_bytes(p.now, &bad).unwrap();
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].xid, &frames[0].packet), (60, &Packet::Major(71)));
    assert!(matches!(
        p.server.poll_event(),
        Some(ServerEvent::ProtocolViolation(Violation::Decode(
            DecodeError::Malformed { .. }
        )))
    ));
    // A status word is not a request: 71 too.
    let status = packet(dialect, 1, 61, Packet::Minor(0));
    p.server.handle_bytes(p.now, &status).unwrap();
    out.clear();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!((frames[0].xid, &frames[0].packet), (61, &Packet::Major(71)));
}

fn late_packets_after_terminal_dropped(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let xid = p.client.run(Command::new("x")).unwrap();
    p.drive();
    p.take_server_events();
    // The command exits while the client is still sending stdin.
    p.server.command_exited(xid, 0).unwrap();
    p.client
        .send_stdin(xid, Bytes::from_static(b"late"))
        .unwrap();
    p.client.close_stdin(xid).unwrap();
    p.client.interrupt(xid, Signal::TERM).unwrap();
    p.drive();
    assert!(
        p.take_server_events().is_empty(),
        "late stdin/EOF/I dropped"
    );
    assert_eq!(p.server.stats().unknown_xid_dropped, 3);
    assert!(p.server.transmit_buffered() == 0);
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
    // Server answers after the terminal packet are refused, nothing is sent.
    assert_eq!(
        p.server.command_exited(xid, 1),
        Err(UsageError::UnknownTransaction(xid))
    );
    assert_eq!(
        p.server.output(xid, 1, Bytes::from_static(b"x")),
        Err(UsageError::UnknownTransaction(xid))
    );
    // Packets from a confused server after the terminal one: dropped by the client.
    p.take_client_events();
    let late = [
        packet(dialect, 1, xid, d(1, b"late")),
        packet(dialect, 1, xid, Packet::Minor(3)),
        packet(dialect, 1, xid, Packet::Timeout),
    ]
    .concat();
    p.client.handle_bytes(p.now, &late).unwrap();
    assert!(p.client.poll_event().is_none());
    assert_eq!(p.client.stats().unknown_xid_dropped, 3);
    assert!(p.client.is_connected());
}

fn framing_error_is_fatal_and_sticky_on_server(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.run(Command::new("hold")).unwrap();
    p.drive();
    // An unknown type (answered 71), then a header claiming 4 bytes.
    let mut unknown = packet(dialect, 1, 70, Packet::Quit).to_vec();
    unknown[0] = b'Z';
    let mut short = packet(dialect, 1, 71, Packet::Quit).to_vec();
    let len_at = if v4(dialect) { 2 } else { 6 };
    short[len_at..len_at + 2].copy_from_slice(&4u16.to_be_bytes());
    let bytes = [unknown, short, b"garbage after".to_vec()].concat();
    let want = LinkError::Framing(DecodeError::LengthTooShort { len: 4 });
    assert_eq!(p.server.handle_bytes(p.now, &bytes), Err(want.clone()));
    assert_eq!(p.server.error(), Some(&want));
    assert_eq!(p.server.handle_bytes(p.now, b""), Err(want.clone()));
    assert_eq!(
        p.server
            .handle_bytes(p.now, &packet(dialect, 1, 80, Packet::Quit)),
        Err(want.clone())
    );
    assert_eq!(
        p.server.command_exited(xid, 0),
        Err(UsageError::Link(want.clone()))
    );
    assert_eq!(p.server.transactions(), 0);
    assert_eq!(p.server.poll_timeout(), None);
    // The 71 queued before the error still goes out.
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].xid, &frames[0].packet), (70, &Packet::Major(71)));
}

fn framing_error_is_fatal_and_sticky_on_client(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let a = p.client.run(Command::new("a")).unwrap();
    let b = p.client.inject("root", "/f", 0o644).unwrap();
    p.drive();
    let mut short = packet(dialect, 1, a, d(1, b"x")).to_vec();
    let len_at = if v4(dialect) { 2 } else { 6 };
    short[len_at..len_at + 2].copy_from_slice(&7u16.to_be_bytes());
    let ok = packet(dialect, 1, a, d(1, b"before"));
    let bytes = [ok.to_vec(), short].concat();
    let want = LinkError::Framing(DecodeError::LengthTooShort { len: 7 });
    assert_eq!(p.client.handle_bytes(p.now, &bytes), Err(want.clone()));
    let events: Vec<ClientEvent> = std::iter::from_fn(|| p.client.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            output(a, 1, b"before"),
            finished(a, Outcome::LinkLost(want.clone())),
            finished(b, Outcome::LinkLost(want.clone())),
        ]
    );
    assert_eq!(p.client.handle_bytes(p.now, b""), Err(want.clone()));
    assert_eq!(p.client.error(), Some(&want));
    assert!(!p.client.is_connected());
    assert_eq!(
        p.client.run(Command::new("x")),
        Err(UsageError::Link(want.clone()))
    );
    assert_eq!(p.client.quit(), Err(UsageError::Link(want)));
    assert_eq!(p.client.poll_timeout(), None);
}

fn requests_before_hello_are_held(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    let a = p.client.run(Command::new("out=x;exit=0")).unwrap();
    let b = p.client.extract("root", "/gen/3").unwrap();
    p.client.send_stdin(a, Bytes::from_static(b"in")).unwrap();
    p.client.close_stdin(a).unwrap();
    assert!(!p.client.is_connected());
    assert!(p.client.transmit_buffered() > 12);
    let mut first = bytes::BytesMut::new();
    p.client.poll_transmit(p.now, &mut first);
    assert_eq!(first.len(), 12, "only the hello goes out before the reply");
    // Deliver the hello by hand, then let the pair run.
    p.server.handle_bytes(p.now, &first).unwrap();
    p.c2s_log.extend_from_slice(&first);
    p.drive();
    let frames = p.client_frames();
    let kinds: Vec<(u16, u16, tuppence::wire::PacketType)> = frames
        .iter()
        .map(|f| (f.cid, f.xid, f.packet.packet_type()))
        .collect();
    use tuppence::wire::PacketType as T;
    assert_eq!(
        kinds,
        vec![
            (0, 0, T::Hello),
            (1, a, T::Command),
            (1, b, T::Extract),
            (1, a, T::Data),
            (1, a, T::Eof),
        ]
    );
    assert_eq!(p.client.transmit_buffered(), 0);
    let events = p.take_client_events();
    assert!(matches!(events[0], ClientEvent::Connected { .. }));
    assert!(events.contains(&finished(a, Outcome::Exited(0))));
    assert!(events.contains(&finished(b, Outcome::Completed)));
}

fn server_hello(dialect: Dialect, major: u8, minor: u8) -> Bytes {
    packet(
        dialect,
        1,
        0,
        Packet::Hello(Hello {
            major,
            minor,
            keepalive: 60,
        }),
    )
}

#[test]
fn version_mismatch_names_both_versions() {
    for (dialect, theirs) in [
        (Dialect::V4, (5u8, 1u8)),
        (Dialect::V4, (3, 0)),
        (Dialect::Legacy3, (4, 0)),
    ] {
        let now = std::time::Instant::now();
        let mut c = Client::new(
            ClientConfig {
                dialect,
                ..ClientConfig::default()
            },
            now,
        );
        let xid = c.run(Command::new("x")).unwrap();
        let err = c
            .handle_bytes(now, &server_hello(dialect, theirs.0, theirs.1))
            .unwrap_err();
        let ours = dialect.version();
        assert_eq!(err, LinkError::VersionMismatch { ours, theirs });
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}.{}", theirs.0, theirs.1)), "{msg}");
        assert!(msg.contains(&format!("{}.{}", ours.0, ours.1)), "{msg}");
        assert!(!c.is_connected());
        assert_eq!(
            c.poll_event(),
            Some(finished(xid, Outcome::LinkLost(err.clone())))
        );
        assert_eq!(c.run(Command::new("y")), Err(UsageError::Link(err)));
    }
    // Minor differences are fine.
    let now = std::time::Instant::now();
    let mut c = Client::new(ClientConfig::default(), now);
    c.handle_bytes(now, &server_hello(Dialect::V4, 4, 7))
        .unwrap();
    assert!(c.is_connected());
    assert_eq!(c.server_version(), Some((4, 7)));
}

#[test]
fn first_packet_must_be_a_hello() {
    let now = std::time::Instant::now();
    let mut c = Client::new(ClientConfig::default(), now);
    let err = c
        .handle_bytes(now, &packet(Dialect::V4, 1, 1, Packet::Major(0)))
        .unwrap_err();
    assert!(matches!(err, LinkError::Handshake(_)), "{err:?}");
}
