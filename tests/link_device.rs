//! Device links (serial tty, virtio-serial port): the agent cannot see a client leave, so
//! a hello starts a new session (`ServerConfig::hello_resets_session`); a dead client's
//! unfinished packet is dropped where a new client's hello is found next to a silence,
//! after a framing error or at a hang-up, and a live client that pauses is never cut
//! (`Limits::stale_partial_after`); a hello read just before a hang-up is answered by the
//! next session (`Server::carryover`); and the client skips a previous session's leftovers
//! and says hello again if the first one got lost (`ClientConfig::for_device_link`).
//! Simulated time throughout. Property tests of the rule: `link_device_props.rs`.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::pair::{NoApp, Pair, ScriptedApp, command_packet, hello_packet, packet};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, DEVICE_HELLO_RETRY, DEVICE_STALE_PARTIAL_AFTER,
    Limits, LinkError, Outcome, Server, ServerConfig, ServerEvent, Violation,
};
use tuppence::wire::{Dialect, Hello, Packet, Sender};

fn device_server() -> ServerConfig {
    ServerConfig::default().for_device_link()
}

fn device_client(dialect: Dialect) -> ClientConfig {
    ClientConfig {
        dialect,
        ..ClientConfig::default()
    }
    .for_device_link()
}

fn hello_bytes(dialect: Dialect, keepalive: u16) -> Bytes {
    hello_packet(dialect, keepalive)
}

fn events(server: &mut Server) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn finished(xid: u16, outcome: Outcome) -> ClientEvent {
    ClientEvent::Finished { xid, outcome }
}

/// Client A starts an inject (xid 1) and sends half the file, starts a command that never
/// ends (xid 2), and vanishes; client B connects on the same link. Without the reset, B's
/// first command (xid 1 again) would collide with A's inject and its stdin EOF would
/// commit A's half file; A's queued output would reach B.
fn new_client_does_not_land_in_the_old_session(dialect: Dialect) {
    let mut p = Pair::with_agent(
        device_client(dialect),
        device_server(),
        ScriptedApp::default(),
    );
    p.connect();
    let inject = p.client.inject("root", "/tmp/half", 0o644).unwrap();
    p.drive();
    assert_eq!(
        p.take_client_events(),
        vec![ClientEvent::InjectReady { xid: inject }]
    );
    p.client
        .send_file_data(inject, Bytes::from_static(b"first half"))
        .unwrap();
    let hold = p.client.run(Command::new("out=started;hold")).unwrap();
    p.drive();
    assert_eq!((inject, hold), (1, 2));
    assert_eq!(p.server.transactions(), 2);
    // The agent writes more output for A that nobody reads (A is gone): it must not reach
    // B either. It stays queued in the server (not transmitted yet).
    p.server
        .output(hold, 1, Bytes::from_static(b"stale output"))
        .unwrap();
    let cid = p.client.cid().unwrap();

    // A vanishes; B arrives on the same line.
    p.replace_client(device_client(dialect));
    p.take_server_events();
    p.drive();
    assert!(p.client.is_connected());
    assert_eq!(p.client.cid(), Some(cid), "same cid after a reset");
    let server_events = p.take_server_events();
    assert_eq!(
        server_events.first(),
        Some(&ServerEvent::SessionReset {
            aborted: vec![inject, hold]
        }),
        "{server_events:?}"
    );
    assert!(
        matches!(server_events.get(1), Some(ServerEvent::Hello { .. })),
        "the reset comes before the hello: {server_events:?}"
    );
    assert_eq!(p.server.transactions(), 0);
    assert_eq!(p.server.stats().session_resets, 1);
    // What B got: the hello reply and nothing of A's session.
    let frames = p.server_frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(matches!(frames[0].packet, Packet::Hello(_)));

    // B's first command is xid 1 again; its stdin EOF is its own.
    let xid = p.client.run(Command::new("cat;out=done")).unwrap();
    assert_eq!(xid, 1);
    p.client.close_stdin(xid).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::Output {
                xid,
                channel: 1,
                data: Bytes::from_static(b"done")
            },
            ClientEvent::OutputEnd { xid, channel: 1 },
            ClientEvent::OutputEnd { xid, channel: 2 },
            finished(xid, Outcome::Exited(0)),
        ]
        .into_iter()
        .filter(|e| dialect == Dialect::V4 || !matches!(e, ClientEvent::OutputEnd { .. }))
        .collect::<Vec<_>>()
    );
    assert!(
        p.agent.files.is_empty(),
        "the vanished client's inject was committed: {:?}",
        p.agent.files.keys()
    );
    assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    let stats = p.client.stats();
    assert_eq!(
        (stats.unknown_xid_dropped, stats.violations),
        (0, 0),
        "B saw stale packets"
    );
}

#[test]
fn new_client_does_not_land_in_the_old_session_v4() {
    new_client_does_not_land_in_the_old_session(Dialect::V4);
}

#[test]
fn new_client_does_not_land_in_the_old_session_legacy3() {
    new_client_does_not_land_in_the_old_session(Dialect::Legacy3);
}

/// Sockets keep the rule of ARCHITECTURE.md, "Link protocol": a repeated hello is answered
/// again and changes nothing.
#[test]
fn socket_hello_does_not_reset() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let hold = p.client.run(Command::new("hold")).unwrap();
    p.drive();
    p.replace_client(ClientConfig::default());
    p.drive();
    assert!(p.client.is_connected());
    assert!(p.server.is_live(hold));
    assert!(
        !p.take_server_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::SessionReset { .. }))
    );
    assert!(!p.server.poll_discard_unsent());
}

/// The runtime learns once per reset that what it holds unwritten is the old session's;
/// the machine's own queue is already empty but for the hello reply.
#[test]
fn reset_discards_queued_output_and_tells_the_runtime() {
    let now = Instant::now();
    let mut server = Server::new(device_server(), now);
    server
        .handle_bytes(now, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    let run = command_packet(Dialect::V4, 1, 7, "sleep 100", 0);
    server.handle_bytes(now, &run).unwrap();
    events(&mut server);
    assert!(server.poll_discard_unsent(), "the first hello resets too");
    assert!(!server.poll_discard_unsent(), "once per reset");
    server.poll_transmit(now, &mut BytesMut::new());
    server.output(7, 1, Bytes::from(vec![b'x'; 5000])).unwrap();
    let queued = server.transmit_buffered();
    assert!(queued > 5000);

    server
        .handle_bytes(now, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    assert!(server.poll_discard_unsent());
    assert_eq!(
        events(&mut server)
            .into_iter()
            .filter(|e| !matches!(e, ServerEvent::Hello { .. }))
            .collect::<Vec<_>>(),
        vec![ServerEvent::SessionReset { aborted: vec![7] }]
    );
    assert_eq!(server.stats().discarded_bytes, queued as u64);
    let mut out = BytesMut::new();
    server.poll_transmit(now, &mut out);
    let frames = common::pair::decode_all(Dialect::V4, Sender::Server, &out);
    assert_eq!(frames.len(), 1);
    assert!(matches!(frames[0].packet, Packet::Hello(_)));
    // Answers the application still gives for the old session are refused, queue nothing.
    assert!(server.command_exited(7, 0).is_err());
    assert_eq!(server.transmit_buffered(), 0);
}

/// A repeated hello with nothing live (the client's retry) is harmless on a device link.
#[test]
fn repeated_hello_with_nothing_live_is_harmless() {
    let now = Instant::now();
    let mut server = Server::new(device_server(), now);
    server
        .handle_bytes(now, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    server
        .handle_bytes(now, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    let evs = events(&mut server);
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(evs.iter().all(|e| matches!(e, ServerEvent::Hello { .. })));
    let mut out = BytesMut::new();
    server.poll_transmit(now, &mut out);
    let frames = common::pair::decode_all(Dialect::V4, Sender::Server, &out);
    // The first reply was still queued: the second hello replaced it.
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].cid, frames[0].xid), (1, 0));
    assert_eq!(server.stats().session_resets, 0);
}

// ---- stale partial packets (a client died mid-write) ----

/// The start of a keepalive, a silence longer than the limit, then a new client's hello:
/// the leftover is dropped and the hello answered.
#[test]
fn stale_partial_is_dropped_before_new_bytes() {
    let t0 = Instant::now();
    let mut server = Server::new(device_server(), t0);
    server
        .handle_bytes(t0, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    events(&mut server);
    let keepalive = packet(Dialect::V4, 1, 0, Packet::Keepalive);
    // Cut after 3 bytes: read with the hello behind it, the length would be 0x0068.
    assert_eq!(server.handle_bytes(t0, &keepalive[..3]).unwrap(), 3);
    let t1 = t0 + DEVICE_STALE_PARTIAL_AFTER + Duration::from_millis(1);
    server
        .handle_bytes(t1, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    assert!(server.error().is_none());
    let evs = events(&mut server);
    assert_eq!(
        evs.first(),
        Some(&ServerEvent::ProtocolViolation(Violation::StalePartial {
            bytes: 3
        }))
    );
    assert!(
        matches!(evs.get(1), Some(ServerEvent::Hello { .. })),
        "{evs:?}"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.stale_partials_dropped, stats.stale_bytes_dropped),
        (1, 3)
    );
}

/// Without the limit (sockets), the same bytes make the hello part of a long packet.
#[test]
fn without_the_limit_the_hello_is_swallowed() {
    let t0 = Instant::now();
    let mut server = Server::new(ServerConfig::default(), t0);
    server
        .handle_bytes(t0, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    events(&mut server);
    let keepalive = packet(Dialect::V4, 1, 0, Packet::Keepalive);
    server.handle_bytes(t0, &keepalive[..3]).unwrap();
    server
        .handle_bytes(t0 + Duration::from_secs(60), &hello_bytes(Dialect::V4, 0))
        .unwrap();
    assert_eq!(events(&mut server), vec![]);
}

/// The gap is measured from the last byte received, not from the packet's start: a slow
/// line that streams a large packet over many seconds is not cut.
#[test]
fn slow_stream_is_not_cut() {
    let t0 = Instant::now();
    let mut server = injecting(Dialect::V4, 3, t0);
    let data = data_packet(Dialect::V4, 3, vec![7u8; 2000]);
    let gap = DEVICE_STALE_PARTIAL_AFTER - Duration::from_millis(100);
    let mut now = t0;
    for piece in data.chunks(100) {
        now += gap;
        assert_eq!(server.handle_bytes(now, piece).unwrap(), piece.len());
    }
    assert!(now - t0 > Duration::from_secs(10));
    let evs = events(&mut server);
    assert!(
        matches!(&evs[..], [ServerEvent::InjectData { xid: 3, data }] if data.len() == 2000),
        "{evs:?}"
    );
    assert_eq!(server.stats().stale_partials_dropped, 0);
}

/// Bytes the machine pushed back were already there: offered again much later, they are
/// not stale. Nor is a partial packet when the runtime itself stopped reading.
#[test]
fn own_backpressure_is_not_silence() {
    let t0 = Instant::now();
    let config = ServerConfig {
        limits: Limits {
            max_events: 1,
            ..Limits::default()
        },
        ..device_server()
    };
    let mut server = Server::new(config, t0);
    server
        .handle_bytes(t0, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    events(&mut server);
    // Monitor requests: one event each, so a queue of one pushes back at the second.
    let monitor = |xid| {
        packet(
            Dialect::V4,
            1,
            xid,
            Packet::Monitor {
                source: Bytes::from_static(b"agent"),
            },
        )
    };
    let mut stream = monitor(1).to_vec();
    stream.extend_from_slice(&monitor(2));
    // The second monitor request is cut: its start is in the machine when it pushes back.
    let cut = stream.len() - 3;
    let used = server.handle_bytes(t0, &stream[..cut]).unwrap();
    assert!(used < cut, "the full event queue pushes back");
    events(&mut server);
    let later = t0 + Duration::from_secs(30);
    let used2 = server.handle_bytes(later, &stream[used..cut]).unwrap();
    assert_eq!(used + used2, cut);
    events(&mut server);
    // The runtime pauses reading (a child's stdin is backed up), then reads the rest.
    server.handle_input_paused();
    server
        .handle_bytes(later + Duration::from_secs(30), &stream[cut..])
        .unwrap();
    let evs = events(&mut server);
    assert!(
        matches!(&evs[..], [ServerEvent::Monitor { xid: 2, .. }]),
        "{evs:?}"
    );
    assert_eq!(server.stats().stale_partials_dropped, 0);
}

// ---- resynchronisation: debris is dropped only next to a hello ----

const T: Duration = DEVICE_STALE_PARTIAL_AFTER;
const DIALECTS: [Dialect; 2] = [Dialect::V4, Dialect::Legacy3];

/// A device server whose client (cid 1) said hello in `dialect` (keepalives off); its
/// events are drained and its reply transmitted.
fn greeted(dialect: Dialect, t0: Instant) -> Server {
    let mut server = Server::new(device_server(), t0);
    server.handle_bytes(t0, &hello_bytes(dialect, 0)).unwrap();
    events(&mut server);
    server.poll_transmit(t0, &mut BytesMut::new());
    server
}

/// A greeted server with an inject on `xid` ready for data.
fn injecting(dialect: Dialect, xid: u16, t0: Instant) -> Server {
    let mut server = greeted(dialect, t0);
    let inject = packet(
        dialect,
        1,
        xid,
        Packet::Inject {
            user: Bytes::from_static(b"root"),
            path: Bytes::from_static(b"/tmp/x"),
            mode: 0o600,
        },
    );
    server.handle_bytes(t0, &inject).unwrap();
    events(&mut server);
    server.inject_ready(xid).unwrap();
    server.poll_transmit(t0, &mut BytesMut::new());
    server
}

fn data_packet(dialect: Dialect, xid: u16, data: Vec<u8>) -> Bytes {
    packet(
        dialect,
        1,
        xid,
        Packet::Data {
            channel: 0,
            data: Bytes::from(data),
        },
    )
}

/// Fires every timer due by `now`, as a runtime does while it waits.
fn wait_until(server: &mut Server, now: Instant) {
    while let Some(t) = server.poll_timeout().filter(|&t| t <= now) {
        server.handle_timeout(t);
    }
}

/// What the server transmitted, decoded in the dialect it now speaks.
fn transmitted(server: &mut Server, now: Instant) -> Vec<tuppence::wire::Frame> {
    let mut out = BytesMut::new();
    server.poll_transmit(now, &mut out);
    common::pair::decode_all(server.dialect(), Sender::Server, &out)
}

fn is_hello(e: &ServerEvent, dialect: Dialect) -> bool {
    matches!(e, ServerEvent::Hello { client_version, .. } if *client_version == dialect.version())
}

/// A live client that pauses for longer than the limit in the middle of a data packet (a
/// loaded host, a descheduled VM, a slow line) is not cut, whatever its data holds away
/// from the pause (here two hellos): the packet goes on where it stopped. The machine's
/// timers fire during the pauses, as a runtime fires them.
#[test]
fn live_client_pausing_mid_packet_is_not_cut() {
    for dialect in DIALECTS {
        let t0 = Instant::now();
        let mut server = injecting(dialect, 3, t0);
        let mut data = vec![0u8; 3000];
        for at in [100, 1990] {
            data[at..at + 12].copy_from_slice(&hello_bytes(dialect, 0));
        }
        let bytes = data_packet(dialect, 3, data.clone());
        let mut now = t0;
        let mut from = 0;
        for cut in [5, 50, 1500, 2995, bytes.len()] {
            assert_eq!(
                server.handle_bytes(now, &bytes[from..cut]).unwrap(),
                cut - from
            );
            from = cut;
            now += T + T / 2;
            wait_until(&mut server, now);
        }
        let evs = events(&mut server);
        assert_eq!(
            evs,
            vec![ServerEvent::InjectData {
                xid: 3,
                data: Bytes::from(data)
            }],
            "{dialect}"
        );
        assert_eq!(server.stats().stale_partials_dropped, 0, "{dialect}");
        assert_eq!(server.transactions(), 1);
    }
}

/// The same pause just before bytes that are only the start of a hello's signature and
/// end the packet (the client then waits for an answer): decoding waits for more, and one
/// more silence says they were data. The client waits one limit longer; it is not cut.
#[test]
fn the_start_of_a_hello_after_a_pause_is_data_when_nothing_follows() {
    for dialect in DIALECTS {
        let t0 = Instant::now();
        let mut server = injecting(dialect, 3, t0);
        let mut data = vec![1u8; 40];
        data.extend_from_slice(&hello_bytes(dialect, 0)[..5]);
        let bytes = data_packet(dialect, 3, data.clone());
        let cut = bytes.len() - 5;
        server.handle_bytes(t0, &bytes[..cut]).unwrap();
        let t1 = t0 + 2 * T;
        wait_until(&mut server, t1);
        server.handle_bytes(t1, &bytes[cut..]).unwrap();
        assert_eq!(events(&mut server), vec![], "{dialect}: decided too early");
        assert_eq!(server.poll_timeout(), Some(t1 + T), "{dialect}");
        wait_until(&mut server, t1 + T);
        assert_eq!(
            events(&mut server),
            vec![ServerEvent::InjectData {
                xid: 3,
                data: Bytes::from(data)
            }],
            "{dialect}"
        );
        assert_eq!(server.stats().stale_partials_dropped, 0);
    }
}

/// A client dies in the middle of a data packet and the next client's hello comes glued
/// to the leftover (one read, no silence between). The new client says hello once and
/// waits: after `DEVICE_STALE_PARTIAL_AFTER` of that silence the hello is found at the
/// end of the unfinished packet, the old session ends and the hello is answered, in its
/// own dialect even when the old session spoke the other one.
#[test]
fn a_hello_glued_to_debris_is_answered_after_the_silence() {
    for old in DIALECTS {
        for new in DIALECTS {
            let t0 = Instant::now();
            let mut server = injecting(old, 5, t0);
            let mut glued = data_packet(old, 5, vec![0; 2000])[..100].to_vec();
            glued.extend_from_slice(&hello_bytes(new, 0));
            assert_eq!(server.handle_bytes(t0, &glued).unwrap(), glued.len());
            assert_eq!(events(&mut server), vec![]);
            assert_eq!(server.poll_timeout(), Some(t0 + T));
            wait_until(&mut server, t0 + T);
            let evs = events(&mut server);
            assert_eq!(
                evs[..2],
                [
                    ServerEvent::ProtocolViolation(Violation::StalePartial { bytes: 100 }),
                    ServerEvent::SessionReset { aborted: vec![5] },
                ],
                "{old} -> {new}: {evs:?}"
            );
            assert!(is_hello(&evs[2], new), "{old} -> {new}: {evs:?}");
            assert_eq!(evs.len(), 3);
            assert_eq!(server.dialect(), new);
            let frames = transmitted(&mut server, t0 + T);
            assert_eq!(frames.len(), 1, "{frames:?}");
            assert!(
                matches!(frames[0].packet, Packet::Hello(ref h) if (h.major, h.minor) == new.version())
            );
            assert_eq!((frames[0].cid, frames[0].xid), (1, 0));
            assert!(server.poll_discard_unsent());
        }
    }
}

/// A dead client's leftover comes in two parts with a silence between (QEMU delivers its
/// last bytes late), the second glued to the next client's hello: the bytes after the
/// silence do not begin with a hello, so the packet goes on; the silence after the hello
/// finds it. (Decoding the fragment as a packet start, as a fresh decoder would, reads a
/// header of zeros: a framing error.)
#[test]
fn a_leftover_fragment_glued_to_a_hello_after_a_silence() {
    for dialect in DIALECTS {
        let t0 = Instant::now();
        let mut server = injecting(dialect, 5, t0);
        let debris = data_packet(dialect, 5, vec![0; 2000]);
        server.handle_bytes(t0, &debris[..40]).unwrap();
        let t1 = t0 + 3 * T;
        wait_until(&mut server, t1);
        let mut late = debris[40..70].to_vec();
        late.extend_from_slice(&hello_bytes(dialect, 0));
        server.handle_bytes(t1, &late).unwrap();
        assert!(server.error().is_none(), "{:?}", server.error());
        assert_eq!(events(&mut server), vec![]);
        wait_until(&mut server, t1 + T);
        let evs = events(&mut server);
        assert_eq!(
            evs.first(),
            Some(&ServerEvent::ProtocolViolation(Violation::StalePartial {
                bytes: 70
            })),
            "{evs:?}"
        );
        assert!(evs.iter().any(|e| is_hello(e, dialect)), "{evs:?}");
    }
}

/// A 3.0 client after a 4.0 client on the same line (no hang-up between), and the other
/// way round: read in the session's dialect the new hello has length 0, a framing error.
/// On a port that does not end the link: bytes are skipped up to a hello (here right
/// there, or after junk), and the session goes on in the hello's dialect.
#[test]
fn a_framing_error_on_a_port_resyncs_on_the_next_hello() {
    for old in DIALECTS {
        for junk in [&b""[..], b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00h\x00"] {
            let new = if old == Dialect::V4 {
                Dialect::Legacy3
            } else {
                Dialect::V4
            };
            let t0 = Instant::now();
            let mut server = greeted(old, t0);
            let mut bytes = junk.to_vec();
            bytes.extend_from_slice(&hello_bytes(new, 0));
            // Any chunking.
            for piece in bytes.chunks(5) {
                assert_eq!(server.handle_bytes(t0, piece).unwrap(), piece.len());
            }
            assert!(server.error().is_none(), "{:?}", server.error());
            let evs = events(&mut server);
            assert!(
                matches!(
                    evs.first(),
                    Some(ServerEvent::ProtocolViolation(Violation::Decode(_)))
                ),
                "{evs:?}"
            );
            assert_eq!(
                evs.get(1),
                Some(&ServerEvent::ProtocolViolation(Violation::StalePartial {
                    bytes: junk.len()
                })),
                "{evs:?}"
            );
            assert!(is_hello(&evs[2], new), "{evs:?}");
            assert_eq!(server.dialect(), new);
            assert!(
                matches!(transmitted(&mut server, t0)[..], [ref f] if matches!(f.packet, Packet::Hello(_)))
            );
        }
    }
    // Sockets keep ARCHITECTURE.md, "Link protocol": a framing error closes the connection.
    let t0 = Instant::now();
    let mut server = Server::new(ServerConfig::default(), t0);
    server
        .handle_bytes(t0, &hello_bytes(Dialect::V4, 0))
        .unwrap();
    let r = server.handle_bytes(t0, &hello_bytes(Dialect::Legacy3, 0));
    assert!(matches!(r, Err(LinkError::Framing(_))), "{r:?}");
}

/// A dead client's leftover so short that the next client's hello (glued to it) completes
/// it: the hello's first bytes end a bogus packet. What follows is a framing error (the
/// first case) or the start of another packet (the others): either way the hello is found
/// in the bytes already decoded, at once or after the silence.
#[test]
fn a_hello_that_completes_a_short_leftover_is_found() {
    let cases: [(Dialect, Packet, usize); 3] = [
        // `K`, 5 of its 8 bytes: the rest of the hello is a header of length 0.
        (Dialect::V4, Packet::Keepalive, 5),
        // `X` ch 0, 9 of its 10 bytes: the rest is a header of length 3072.
        (Dialect::V4, Packet::Eof { channel: 0 }, 9),
        // `E` ch 0 in 3.0, 9 of 10 bytes: the rest is a header of length 768.
        (Dialect::Legacy3, Packet::Eof { channel: 0 }, 9),
    ];
    for (dialect, leftover, cut) in cases {
        let t0 = Instant::now();
        let mut server = greeted(dialect, t0);
        let mut glued = packet(dialect, 1, 7, leftover.clone())[..cut].to_vec();
        glued.extend_from_slice(&hello_bytes(dialect, 0));
        server.handle_bytes(t0, &glued).unwrap();
        wait_until(&mut server, t0 + T);
        assert!(
            server.error().is_none(),
            "{leftover:?}: {:?}",
            server.error()
        );
        let evs = events(&mut server);
        assert!(
            evs.iter().any(|e| is_hello(e, dialect)),
            "{leftover:?}: {evs:?}"
        );
        assert_eq!(server.stats().stale_partials_dropped, 1);
        let frames = transmitted(&mut server, t0 + T);
        assert!(
            matches!(frames.last(), Some(f) if matches!(f.packet, Packet::Hello(_))),
            "{frames:?}"
        );
    }
}

/// A hello-once client (as the C client: no retry) arrives right after a client died in
/// the middle of a packet: it is connected after one silence of the limit and served.
#[test]
fn a_hello_once_client_after_a_client_died_mid_packet() {
    for dialect in DIALECTS {
        let mut p = Pair::with_agent(
            device_client(dialect),
            device_server(),
            ScriptedApp::default(),
        );
        p.connect();
        // The old client dies in the middle of its next packet.
        let leftover = data_packet(dialect, 9, vec![b'x'; 5000]);
        let now = p.now;
        p.server.handle_bytes(now, &leftover[..1234]).unwrap();
        let hello_once = ClientConfig {
            dialect,
            hello_retry: None,
            resync_before_hello: true,
            ..ClientConfig::default()
        };
        p.replace_client(hello_once);
        p.drive();
        assert!(
            !p.client.is_connected(),
            "{dialect}: the hello went into the leftover"
        );
        p.run_for(T);
        assert!(p.client.is_connected(), "{dialect}: no reply");
        assert!(p.elapsed() <= T + Duration::from_millis(1));
        let xid = p.client.run(Command::new("out=ok")).unwrap();
        p.drive();
        let evs = p.transaction_events();
        assert!(evs.contains(&finished(xid, Outcome::Exited(0))), "{evs:?}");
        let hellos = p
            .client_frames()
            .iter()
            .filter(|f| matches!(f.packet, Packet::Hello(_)))
            .count();
        assert_eq!(hellos, 1);
    }
}

// ---- a hang-up: what belongs to the next session on the port ----

/// A virtio-serial guest can read a new client's hello before it learns that the previous
/// host connection closed: the hello, then the hang-up. The hello belongs to the next
/// session: it carries over, and the next machine on the port (same cid) answers it.
#[test]
fn a_hello_read_just_before_a_hang_up_is_answered_by_the_next_session() {
    for old in DIALECTS {
        for new in DIALECTS {
            let t0 = Instant::now();
            let mut server = injecting(old, 4, t0);
            server.handle_bytes(t0, &hello_bytes(new, 0)).unwrap();
            server.handle_eof(t0);
            assert!(events(&mut server).iter().any(|e| is_hello(e, new)));
            let carry = server.carryover(0);
            assert_eq!(carry.input, hello_bytes(new, 0), "{old} -> {new}");
            assert_eq!(carry.dialect, Some(new));

            let mut next = Server::new(device_server(), t0);
            next.resume_from(&carry);
            next.handle_bytes(t0, &carry.input).unwrap();
            let evs = events(&mut next);
            assert!(matches!(&evs[..], [e] if is_hello(e, new)), "{evs:?}");
            let frames = transmitted(&mut next, t0);
            assert!(
                matches!(&frames[..], [f] if matches!(f.packet, Packet::Hello(_)) && f.cid == 1)
            );
        }
    }
}

/// Whether a hello carries over: not when its reply was written (its client has it and
/// goes on with the same cid), nor when its client sent more; yes when the reply is
/// still unwritten, and for a hello glued to debris that the hang-up cut short of its
/// silence. Never on sockets.
#[test]
fn what_carries_over_a_hang_up() {
    let t0 = Instant::now();
    let hello = hello_bytes(Dialect::V4, 0);
    let ended = |server: &mut Server| {
        server.handle_eof(t0);
        events(server);
    };
    // Reply written: nothing; reply polled but unwritten (in whole or in part): the hello.
    let mut server = greeted(Dialect::V4, t0);
    ended(&mut server);
    assert_eq!(server.carryover(0).input, Bytes::new());
    assert_eq!(server.carryover(1).input, hello);
    assert_eq!(server.carryover(12).input, hello);
    // Its client sent a request after it: it had the reply.
    let mut server = greeted(Dialect::V4, t0);
    server
        .handle_bytes(t0, &packet(Dialect::V4, 1, 0, Packet::Keepalive))
        .unwrap();
    ended(&mut server);
    assert_eq!(server.carryover(100).input, Bytes::new());
    // A hello glued to debris, then the hang-up: from the hello on.
    let mut server = injecting(Dialect::V4, 5, t0);
    let mut glued = data_packet(Dialect::V4, 5, vec![0; 2000])[..100].to_vec();
    glued.extend_from_slice(&hello_bytes(Dialect::Legacy3, 0));
    server.handle_bytes(t0, &glued).unwrap();
    ended(&mut server);
    let carry = server.carryover(0);
    assert_eq!(carry.input, hello_bytes(Dialect::Legacy3, 0));
    assert_eq!(carry.dialect, Some(Dialect::V4));
    // Only the start of a hello at the end: it is kept (the rest comes in the next one).
    let mut server = injecting(Dialect::V4, 5, t0);
    let mut cut = data_packet(Dialect::V4, 5, vec![0; 2000])[..100].to_vec();
    cut.extend_from_slice(&hello[..4]);
    server.handle_bytes(t0, &cut).unwrap();
    ended(&mut server);
    assert_eq!(server.carryover(0).input, hello.slice(..4));
    // Debris alone: nothing.
    let mut server = injecting(Dialect::V4, 5, t0);
    server
        .handle_bytes(t0, &data_packet(Dialect::V4, 5, vec![9; 2000])[..100])
        .unwrap();
    ended(&mut server);
    assert_eq!(server.carryover(0).input, Bytes::new());
    // Sockets: never.
    let mut server = Server::new(ServerConfig::default(), t0);
    server.handle_bytes(t0, &hello).unwrap();
    server.handle_eof(t0);
    assert_eq!(server.carryover(12), tuppence::link::Carryover::default());
}

/// A client that got its reply just before the hang-up goes on without a hello: the next
/// session reads its requests in the ended session's dialect (a 3.0 request with cid 9
/// would otherwise be guessed to be 4.0).
#[test]
fn the_next_session_reads_a_request_in_the_previous_dialect() {
    let t0 = Instant::now();
    let config = ServerConfig {
        cid: 9,
        ..device_server()
    };
    let mut server = Server::new(config.clone(), t0);
    server
        .handle_bytes(t0, &hello_bytes(Dialect::Legacy3, 0))
        .unwrap();
    server.poll_transmit(t0, &mut BytesMut::new());
    server.handle_eof(t0);
    let carry = server.carryover(0);
    assert_eq!(carry.input, Bytes::new(), "the reply was written");
    assert_eq!(carry.dialect, Some(Dialect::Legacy3));
    let command = command_packet(Dialect::Legacy3, 9, 1, "true", 5);
    let mut next = Server::new(config.clone(), t0);
    next.resume_from(&carry);
    next.handle_bytes(t0, &carry.input).unwrap();
    next.handle_bytes(t0, &command).unwrap();
    assert!(
        matches!(
            &events(&mut next)[..],
            [ServerEvent::RunCommand { xid: 1, .. }]
        ),
        "read as 3.0"
    );
    // (Without the previous session's dialect, the guess from the first bytes is 4.0.)
    let mut fresh = Server::new(config, t0);
    let _ = fresh.handle_bytes(t0, &command);
    assert_eq!(fresh.dialect(), Dialect::V4);
}

// ---- the client on a device link ----

/// The client's hello is lost (e.g. glued to a stale partial packet): it says hello
/// again after `DEVICE_HELLO_RETRY`, once.
#[test]
fn client_says_hello_again_once() {
    let mut p = Pair::with_agent(
        device_client(Dialect::V4),
        device_server(),
        ScriptedApp::default(),
    );
    let xid = p.client.run(Command::new("out=hi")).unwrap();
    p.link_up = false;
    p.drive();
    p.link_up = true;
    assert_eq!(p.client.poll_timeout(), Some(p.epoch + DEVICE_HELLO_RETRY));
    p.run_for(DEVICE_HELLO_RETRY);
    assert!(p.client.is_connected());
    let events = p.transaction_events();
    assert!(
        events.contains(&finished(xid, Outcome::Exited(0))),
        "{events:?}"
    );
    // No third hello, whatever happens later.
    p.run_for(Duration::from_secs(30));
    let hellos = p
        .client_frames()
        .iter()
        .filter(|f| matches!(f.packet, Packet::Hello(_)))
        .count();
    assert_eq!(hellos, 1, "only the retry crossed the link");
}

#[test]
fn client_retry_is_off_by_default_and_for_legacy3() {
    let now = Instant::now();
    let handshake = ClientConfig::default().handshake_timeout.unwrap();
    let client = Client::new(ClientConfig::default(), now);
    assert_eq!(client.poll_timeout(), Some(now + handshake));
    let client = Client::new(device_client(Dialect::Legacy3), now);
    assert_eq!(client.poll_timeout(), Some(now + handshake));
}

/// Stale partial packet + a hello glued to it within the limit: the first hello is lost in
/// it; the client's retry comes after a silence longer than the limit, which drops both.
#[test]
fn glued_hello_is_recovered_by_the_retry() {
    let t0 = Instant::now();
    let mut server = Server::new(device_server(), t0);
    let keepalive = packet(Dialect::V4, 1, 0, Packet::Keepalive);
    server.handle_bytes(t0, &keepalive[..3]).unwrap();
    let t1 = t0 + Duration::from_millis(300);
    let mut client = Client::new(device_client(Dialect::V4), t1);
    let mut wire = BytesMut::new();
    client.poll_transmit(t1, &mut wire);
    server.handle_bytes(t1, &wire.split()).unwrap();
    assert_eq!(
        events(&mut server),
        vec![],
        "the hello went into the stale packet"
    );
    let t2 = client.poll_timeout().unwrap();
    assert_eq!(t2, t1 + DEVICE_HELLO_RETRY);
    client.handle_timeout(t2);
    client.poll_transmit(t2, &mut wire);
    server.handle_bytes(t2, &wire.split()).unwrap();
    assert!(server.error().is_none());
    let evs = events(&mut server);
    assert!(
        evs.iter().any(|e| matches!(e, ServerEvent::Hello { .. })),
        "{evs:?}"
    );
    server.poll_transmit(t2, &mut wire);
    client.handle_bytes(t2, &wire.split()).unwrap();
    assert!(client.is_connected());
}

/// What the agent sent the previous client before it saw our hello reaches us first,
/// possibly from the middle of a packet: skipped up to the hello reply.
#[test]
fn client_skips_stale_output_before_the_hello_reply() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let now = Instant::now();
        let mut stale = packet(
            dialect,
            1,
            4,
            Packet::Data {
                channel: 1,
                data: Bytes::from(vec![b'h'; 300]),
            },
        )
        .slice(117..)
        .to_vec();
        let whole_packets_at = stale.len();
        stale.extend_from_slice(&packet(dialect, 1, 0, Packet::Keepalive));
        stale.extend_from_slice(&packet(dialect, 1, 4, Packet::Major(0)));
        stale.extend_from_slice(&[b'h', 0, 0]);
        let (major, minor) = dialect.version();
        let reply = packet(
            dialect,
            1,
            0,
            Packet::Hello(Hello {
                major,
                minor,
                keepalive: 0,
            }),
        );
        let mut bytes = stale.clone();
        bytes.extend_from_slice(&reply);

        let mut client = Client::new(device_client(dialect), now);
        for piece in bytes.chunks(5) {
            assert_eq!(client.handle_bytes(now, piece).unwrap(), piece.len());
        }
        assert!(client.is_connected(), "{dialect}");
        assert_eq!(client.stats().skipped_before_hello, stale.len() as u64);
        assert!(matches!(
            client.poll_event(),
            Some(ClientEvent::Connected { cid: 1, .. })
        ));
        assert_eq!(client.poll_event(), None);

        // Without it (sockets), the junk is read as packets: here the middle of the data
        // reads as a 26 KB packet that swallows the reply; a whole stale packet first
        // would fail the handshake.
        let mut strict = Client::new(
            ClientConfig {
                dialect,
                ..ClientConfig::default()
            },
            now,
        );
        let _ = strict.handle_bytes(now, &bytes);
        assert!(!strict.is_connected());
        let mut strict = Client::new(
            ClientConfig {
                dialect,
                ..ClientConfig::default()
            },
            now,
        );
        let _ = strict.handle_bytes(now, &stale[whole_packets_at..]);
        assert!(
            matches!(strict.error(), Some(LinkError::Handshake(_))),
            "{:?}",
            strict.error()
        );
    }
}

/// A whole scripted session on a device link still runs byte-exact under any chunking.
#[test]
fn device_settings_do_not_change_a_normal_session() {
    for seed in 0..20 {
        let mut p = Pair::with_agent(device_client(Dialect::V4), device_server(), NoApp)
            .chunked(common::pair::Chunking::Random(seed));
        p.connect();
        let xid = p.client.run(Command::new("x")).unwrap();
        p.drive();
        p.server
            .output(xid, 1, Bytes::from(vec![1u8; 70_000]))
            .unwrap();
        p.server.command_exited(xid, 0).unwrap();
        p.drive();
        let events = p.transaction_events();
        let got: usize = events
            .iter()
            .map(|e| match e {
                ClientEvent::Output { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(got, 70_000);
        assert!(events.contains(&finished(xid, Outcome::Exited(0))));
        assert_eq!(p.client.stats().skipped_before_hello, 0);
    }
}
