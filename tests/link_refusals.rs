//! Refusals have words (ARCHITECTURE.md, "Agent behaviour"): a connection the agent will
//! not serve, a hello it cannot read and a request on an xid that is still live are all
//! answered with a status, never with silence or a bare close.

mod common;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{DIALECTS, encode, raw_packet};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, LinkError, Outcome, Refusal, Server, ServerConfig,
    ServerEvent, status,
};
use tuppence::wire::{CommandRequest, Decoder, Dialect, Frame, Hello, Packet, Sender};

/// Everything the server transmits, decoded.
fn server_frames(server: &mut Server, now: Instant, dialect: Dialect) -> Vec<Frame> {
    let mut out = BytesMut::new();
    server.poll_transmit(now, &mut out);
    let mut dec = Decoder::new(dialect, Sender::Server);
    dec.push(&out);
    std::iter::from_fn(|| dec.next_frame().expect("the server sent a bad packet")).collect()
}

fn hello(dialect: Dialect) -> Vec<u8> {
    let (major, minor) = dialect.version();
    encode(
        &Packet::Hello(Hello {
            major,
            minor,
            keepalive: 0,
        }),
        dialect,
        0,
        0,
    )
}

/// Shuttles bytes between the two machines until neither has anything to say.
fn shuttle(client: &mut Client, server: &mut Server, now: Instant) {
    for _ in 0..8 {
        let mut wire = BytesMut::new();
        client.poll_transmit(now, &mut wire);
        let _ = server.handle_bytes(now, &wire);
        while server.poll_event().is_some() {}
        let mut back = BytesMut::new();
        server.poll_transmit(now, &mut back);
        let _ = client.handle_bytes(now, &back);
        if wire.is_empty() && back.is_empty() {
            return;
        }
    }
}

#[test]
fn a_refused_client_learns_why_in_either_dialect() {
    for dialect in DIALECTS {
        let now = Instant::now();
        let mut server = Server::new(
            ServerConfig {
                cid: 9,
                ..ServerConfig::default()
            },
            now,
        );
        server.refuse(Refusal::too_many_clients(5));
        // Nothing goes out before the client's first bytes: the answer must be in its
        // dialect.
        assert!(server_frames(&mut server, now, dialect).is_empty());
        let mut client = Client::new(
            ClientConfig {
                dialect,
                ..ClientConfig::default()
            },
            now,
        );
        let xid = client.run(Command::new("true")).unwrap();
        shuttle(&mut client, &mut server, now);
        let refused = LinkError::Refused(Refusal {
            status: status::EUSERS,
            detail: 5,
        });
        assert_eq!(client.error(), Some(&refused), "{dialect}");
        assert_eq!(server.error(), Some(&refused), "{dialect}");
        assert_eq!(
            refused.to_string(),
            "agent refused the connection: too many clients (max 5)"
        );
        let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
        assert_eq!(
            events,
            vec![ClientEvent::Finished {
                xid,
                outcome: Outcome::LinkLost(refused.clone())
            }]
        );
    }
}

/// What a C executor client (3.0) reads first is a status packet on xid 0 where it expects
/// the hello reply: a failed handshake (`TWOPENCE_PROTOCOL_ERROR`), not a hang or a broken
/// pipe. The bytes are 3.0 packets, in the 3.0 header layout.
#[test]
fn a_refusal_is_plain_status_packets_in_the_clients_dialect() {
    for dialect in DIALECTS {
        let now = Instant::now();
        let mut server = Server::new(
            ServerConfig {
                cid: 3,
                ..ServerConfig::default()
            },
            now,
        );
        server.refuse(Refusal::out_of_fds());
        assert!(server.handle_bytes(now, &hello(dialect)).is_err());
        let mut out = BytesMut::new();
        server.poll_transmit(now, &mut out);
        let mut expected = encode(&Packet::Major(status::EMFILE), dialect, 3, 0);
        expected.extend(encode(&Packet::Minor(0), dialect, 3, 0));
        assert_eq!(out.to_vec(), expected, "{dialect}");
        assert_eq!(
            server.error(),
            Some(&LinkError::Refused(Refusal::out_of_fds()))
        );
    }
}

#[test]
fn a_refusal_cut_short_still_says_why() {
    let now = Instant::now();
    let mut client = Client::new(ClientConfig::default(), now);
    client.poll_transmit(now, &mut BytesMut::new());
    let major = encode(&Packet::Major(status::EMFILE), Dialect::V4, 1, 0);
    client.handle_bytes(now, &major).unwrap();
    assert!(client.error().is_none());
    client.handle_eof(now);
    assert_eq!(
        client.error().map(ToString::to_string).as_deref(),
        Some("agent refused the connection: the agent has run out of file descriptors")
    );
}

#[test]
fn a_malformed_hello_is_answered_and_ends_the_connection() {
    for dialect in DIALECTS {
        let now = Instant::now();
        let mut server = Server::new(ServerConfig::default(), now);
        // A hello with a 2-byte payload (the C executor read it as version 0.0).
        let bad = raw_packet(dialect, b'h', 0, 0, &[4, 0]);
        let r = server.handle_bytes(now, &bad);
        let refused = LinkError::Refused(Refusal::bad_hello());
        assert_eq!(r, Err(refused.clone()), "{dialect}");
        let frames = server_frames(&mut server, now, dialect);
        let packets: Vec<(u16, Packet)> = frames.into_iter().map(|f| (f.xid, f.packet)).collect();
        assert_eq!(
            packets,
            vec![(0, Packet::Major(status::EPROTO)), (0, Packet::Minor(0))],
            "{dialect}"
        );
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            matches!(events.as_slice(), [ServerEvent::ProtocolViolation(_)]),
            "{events:?}"
        );
        assert_eq!(
            refused.to_string(),
            "agent refused the connection: it could not read the hello"
        );
    }
}

#[test]
fn a_malformed_hello_on_a_device_link_is_answered_and_the_session_goes_on() {
    let now = Instant::now();
    let mut server = Server::new(ServerConfig::default().for_device_link(), now);
    let bad = raw_packet(Dialect::V4, b'h', 0, 0, &[4]);
    server.handle_bytes(now, &bad).unwrap();
    let packets: Vec<Packet> = server_frames(&mut server, now, Dialect::V4)
        .into_iter()
        .map(|f| f.packet)
        .collect();
    assert_eq!(
        packets,
        vec![Packet::Major(status::EPROTO), Packet::Minor(0)]
    );
    // The client tries again (as device-link clients do) and is served.
    server.handle_bytes(now, &hello(Dialect::V4)).unwrap();
    assert!(server.error().is_none());
    let reply = server_frames(&mut server, now, Dialect::V4);
    assert!(
        matches!(
            reply[..],
            [Frame {
                packet: Packet::Hello(_),
                ..
            }]
        ),
        "{reply:?}"
    );
}

fn command(cmd: &'static str) -> Packet {
    Packet::Command(CommandRequest {
        user: Bytes::from_static(b"root"),
        command: Bytes::from_static(cmd.as_bytes()),
        timeout: 0,
        request_tty: 0,
        reserved: [0, 0],
        env: Vec::new(),
    })
}

#[test]
fn a_second_request_on_a_live_xid_gets_ebusy_and_the_first_goes_on() {
    for dialect in DIALECTS {
        let now = Instant::now();
        let mut server = Server::new(ServerConfig::default(), now);
        server.handle_bytes(now, &hello(dialect)).unwrap();
        let cid = server.cid();
        let _ = server_frames(&mut server, now, dialect);
        let mut input = encode(&command("sleep 10"), dialect, cid, 5);
        input.extend(encode(&command("echo again"), dialect, cid, 5));
        input.extend(encode(
            &Packet::Extract {
                user: Bytes::from_static(b"root"),
                path: Bytes::from_static(b"/etc/hostname"),
            },
            dialect,
            cid,
            5,
        ));
        server.handle_bytes(now, &input).unwrap();
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        let runs = events
            .iter()
            .filter(|e| matches!(e, ServerEvent::RunCommand { .. }))
            .count();
        assert_eq!(runs, 1, "{dialect}: {events:?}");
        // Answered at once, each in its request's shape.
        let packets: Vec<(u16, Packet)> = server_frames(&mut server, now, dialect)
            .into_iter()
            .map(|f| (f.xid, f.packet))
            .collect();
        assert_eq!(
            packets,
            vec![
                (5, Packet::Major(status::EBUSY)),
                (5, Packet::Minor(0)),
                (5, Packet::Major(status::EBUSY)),
            ],
            "{dialect}"
        );
        // The live command is undisturbed.
        assert!(server.is_live(5));
        server.output(5, 1, Bytes::from_static(b"out")).unwrap();
        server.command_exited(5, 0).unwrap();
        let tail: Vec<Packet> = server_frames(&mut server, now, dialect)
            .into_iter()
            .map(|f| f.packet)
            .collect();
        assert_eq!(tail.last(), Some(&Packet::Minor(0)), "{dialect}");
        assert!(tail.contains(&Packet::Data {
            channel: 1,
            data: Bytes::from_static(b"out")
        }));
    }
}

/// Clients of device-like targets skip what is not a hello reply before theirs: a refusal
/// must still get through, and counts once the agent closes the connection.
#[test]
fn a_device_link_client_takes_a_refusal_followed_by_the_close() {
    let now = Instant::now();
    let mut client = Client::new(ClientConfig::default().for_device_link(), now);
    client.poll_transmit(now, &mut BytesMut::new());
    let mut answer = b"stale output".to_vec();
    answer.extend(encode(
        &Packet::Major(status::EUSERS),
        Dialect::V4,
        0xFFFF,
        0,
    ));
    answer.extend(encode(&Packet::Minor(1), Dialect::V4, 0xFFFF, 0));
    let taken = client.handle_bytes(now, &answer).unwrap();
    assert_eq!(taken, answer.len());
    assert!(client.error().is_none(), "not before the close");
    client.handle_eof(now);
    assert_eq!(
        client.error(),
        Some(&LinkError::Refused(Refusal::too_many_clients(1)))
    );
    // A status on xid 0 followed by this client's own hello reply was a leftover.
    let mut client = Client::new(ClientConfig::default().for_device_link(), now);
    client.poll_transmit(now, &mut BytesMut::new());
    let mut answer = encode(&Packet::Major(status::EPROTO), Dialect::V4, 1, 0);
    answer.extend(encode(&Packet::Minor(0), Dialect::V4, 1, 0));
    answer.extend(hello(Dialect::V4));
    client.handle_bytes(now, &answer).unwrap();
    assert!(client.is_connected(), "{:?}", client.error());
}
