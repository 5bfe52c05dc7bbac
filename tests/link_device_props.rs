//! Property tests of the device-link resynchronisation rule (`Limits::stale_partial_after`,
//! `Server::carryover`), in both dialects and under any chunking, with the machine's
//! timers fired as a runtime fires them:
//!
//! * a dead client's unfinished packet (any packet, cut anywhere) followed by a new
//!   client's hello — after a silence, glued in the same read, or with a late fragment of
//!   the leftover in front of it, or cut by a hang-up — never loses the hello: the new
//!   client, which says hello once, is answered and served. The one exception is the rule's
//!   documented blind spot (the hello's bytes exactly complete the leftover, glued to it);
//! * a live client that pauses anywhere, for any time, inside packets whose data is full of
//!   hello-like bytes, is cut only where the rule says it may be (a pause of the limit or
//!   more exactly before, or exactly 3 bytes after, a hello's 9-byte signature); everywhere
//!   else its transfer arrives intact.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::pair::{XorShift, command_packet, hello_packet as hello, packet};
use proptest::prelude::*;
use tuppence::Machine;
use tuppence::link::{DEVICE_STALE_PARTIAL_AFTER, Server, ServerConfig, ServerEvent, Violation};
use tuppence::wire::{
    CommandRequest, Decoder, Dialect, HELLO_SIGNATURE_LEN, Packet, Sender, hello_signature,
};

const T: Duration = DEVICE_STALE_PARTIAL_AFTER;

fn dialect(v4: bool) -> Dialect {
    if v4 { Dialect::V4 } else { Dialect::Legacy3 }
}

fn events(server: &mut Server) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

/// Fires every timer due by `now`, as a runtime does while it waits.
fn wait_until(server: &mut Server, now: Instant) {
    while let Some(t) = server.poll_timeout().filter(|&t| t <= now) {
        server.handle_timeout(t);
    }
}

/// Offers `bytes` at `now` in random pieces; every byte must be taken (the events are
/// drained between pieces, as a runtime does).
fn offer(
    server: &mut Server,
    now: Instant,
    bytes: &[u8],
    rng: &mut XorShift,
    log: &mut Vec<ServerEvent>,
) {
    let mut at = 0;
    while at < bytes.len() {
        let cap = 1usize << rng.below(12);
        let n = 1 + rng.below((bytes.len() - at).min(cap));
        let used = server
            .handle_bytes(now, &bytes[at..at + n])
            .expect("no fatal error");
        log.extend(events(server));
        at += used;
    }
}

/// The agent's settings for a port (keepalives off).
fn port() -> ServerConfig {
    ServerConfig {
        keepalive: 0,
        ..ServerConfig::default()
    }
    .for_device_link()
}

/// Offers all of `bytes` at `now`, draining events when the machine pushes back.
fn feed_all(server: &mut Server, now: Instant, mut bytes: &[u8], log: &mut Vec<ServerEvent>) {
    while !bytes.is_empty() {
        let used = server.handle_bytes(now, bytes).expect("no fatal error");
        log.extend(events(server));
        bytes = &bytes[used..];
    }
}

/// A device server whose first client (cid 1) said hello in `d`, with an inject on xid 5
/// ready for data; its events drained and its answers transmitted.
fn session(d: Dialect, t0: Instant) -> Server {
    let mut server = Server::new(port(), t0);
    server.handle_bytes(t0, &hello(d, 0)).unwrap();
    let inject = Packet::Inject {
        user: Bytes::from_static(b"root"),
        path: Bytes::from_static(b"/tmp/f"),
        mode: 0o644,
    };
    server.handle_bytes(t0, &packet(d, 1, 5, inject)).unwrap();
    events(&mut server);
    server.inject_ready(5).unwrap();
    server.poll_transmit(t0, &mut BytesMut::new());
    server
}

fn command(text: &str) -> Packet {
    Packet::Command(CommandRequest {
        user: Bytes::from_static(b"root"),
        command: Bytes::copy_from_slice(text.as_bytes()),
        timeout: 0,
        request_tty: 0,
        reserved: [0, 0],
        env: Vec::new(),
    })
}

/// A packet a client may have been writing when it died.
fn client_packet() -> impl Strategy<Value = (u16, Packet)> {
    let data = proptest::collection::vec(any::<u8>(), 0..3000);
    prop_oneof![
        (1u16..20, data).prop_map(|(xid, d)| (
            xid,
            Packet::Data {
                channel: 0,
                data: Bytes::from(d)
            }
        )),
        (1u16..20).prop_map(|xid| (xid, Packet::Eof { channel: 0 })),
        Just((0, Packet::Keepalive)),
        (1u16..20, "[a-z ;=]{1,60}").prop_map(|(xid, c)| (xid, command(&c))),
        (1u16..20, "[a-z/]{1,40}").prop_map(|(xid, p)| (
            xid,
            Packet::Inject {
                user: Bytes::from_static(b"root"),
                path: Bytes::from(p),
                mode: 0o600,
            }
        )),
        (1u16..20).prop_map(|xid| (
            xid,
            Packet::Interrupt {
                signal: Bytes::new()
            }
        )),
    ]
}

/// How the leftover and the hello reach the agent.
#[derive(Clone, Copy, Debug)]
enum Arrival {
    /// The leftover, a silence, then the hello.
    AfterSilence,
    /// Leftover and hello in one stream with no silence between.
    Glued,
    /// Part of the leftover, a silence, the rest of it glued to the hello.
    LateFragment,
    /// Leftover and hello, then a hang-up before any silence: the next session answers.
    HangUp,
}

fn arrival() -> impl Strategy<Value = Arrival> {
    prop_oneof![
        Just(Arrival::AfterSilence),
        Just(Arrival::Glued),
        Just(Arrival::LateFragment),
        Just(Arrival::HangUp),
    ]
}

/// The rule's blind spot: read from the leftover's start in `old`, the hello's bytes are
/// all used up by complete packets (they exactly complete the leftover, or the packets it
/// and they make): nothing unfinished is left for a silence to examine.
fn hello_hidden(old: Dialect, leftover: &[u8], hello: &[u8]) -> bool {
    let mut dec = Decoder::new(old, Sender::Client);
    dec.push(leftover);
    dec.push(hello);
    loop {
        match dec.next_frame() {
            Ok(Some(_)) => {}
            Ok(None) => return dec.buffered() == 0,
            Err(e) if e.is_fatal() => return false,
            Err(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A dead client's leftover never costs the next client its hello (said once).
    #[test]
    fn a_hello_after_debris_is_never_lost(
        old_v4 in any::<bool>(),
        new_v4 in any::<bool>(),
        (xid, dead) in client_packet(),
        cut in any::<prop::sample::Index>(),
        split in any::<prop::sample::Index>(),
        how in arrival(),
        keepalive in prop_oneof![Just(0u16), Just(0xFFFF), any::<u16>()],
        seed in any::<u64>(),
    ) {
        let (old, new) = (dialect(old_v4), dialect(new_v4));
        let mut rng = XorShift::new(seed);
        let t0 = Instant::now();
        let mut server = session(old, t0);
        let whole = packet(old, 1, xid, dead.clone());
        let leftover = &whole[..1 + cut.index(whole.len() - 1)];
        let hello = hello(new, keepalive);
        let mut log = Vec::new();
        let mut now = t0;
        match how {
            Arrival::AfterSilence => {
                offer(&mut server, now, leftover, &mut rng, &mut log);
                now += T + Duration::from_millis(rng.below(3000) as u64);
                wait_until(&mut server, now);
                offer(&mut server, now, &hello, &mut rng, &mut log);
            }
            Arrival::Glued | Arrival::HangUp => {
                if hello_hidden(old, leftover, &hello) {
                    return Ok(());
                }
                let mut glued = leftover.to_vec();
                glued.extend_from_slice(&hello);
                offer(&mut server, now, &glued, &mut rng, &mut log);
            }
            Arrival::LateFragment => {
                if hello_hidden(old, leftover, &hello) {
                    return Ok(());
                }
                let k = split.index(leftover.len());
                offer(&mut server, now, &leftover[..k], &mut rng, &mut log);
                now += T + Duration::from_millis(rng.below(3000) as u64);
                wait_until(&mut server, now);
                let mut rest = leftover[k..].to_vec();
                rest.extend_from_slice(&hello);
                offer(&mut server, now, &rest, &mut rng, &mut log);
            }
        }
        if let Arrival::HangUp = how {
            server.handle_eof(now);
            log.extend(events(&mut server));
            let carry = server.carryover(0);
            // The next session on the port: same cid, the ended one's dialect as a hint.
            server = Server::new(port(), now);
            server.resume_from(&carry);
            offer(&mut server, now, &carry.input, &mut rng, &mut log);
        }
        now += T;
        wait_until(&mut server, now);
        log.extend(events(&mut server));
        prop_assert!(server.error().is_none(), "{:?}", server.error());
        let at = log.iter().rposition(|e| matches!(e, ServerEvent::Hello { .. }));
        prop_assert!(at.is_some(), "the hello was lost: {:?}", log);
        prop_assert_eq!(
            &log[at.unwrap()],
            &ServerEvent::Hello { client_version: new.version(), keepalive: 0 }
        );
        prop_assert_eq!(server.dialect(), new);
        prop_assert_eq!(server.transactions(), 0, "the old session survived");
        // The last thing transmitted is the reply, in the new client's dialect.
        let mut out = BytesMut::new();
        server.poll_transmit(now, &mut out);
        let mut dec = Decoder::new(new, Sender::Server);
        dec.push(&out);
        let mut last = None;
        while let Some(f) = dec.next_frame().unwrap() {
            last = Some(f);
        }
        let last = last.expect("a reply");
        prop_assert!(matches!(last.packet, Packet::Hello(_)), "{:?}", last);
        prop_assert_eq!((last.cid, last.xid), (1, 0));
        // And the new client is served.
        server.handle_bytes(now, &command_packet(new, 1, 1, "true", 0)).unwrap();
        let evs = events(&mut server);
        prop_assert!(
            matches!(&evs[..], [ServerEvent::RunCommand { xid: 1, .. }]),
            "{:?}",
            evs
        );
    }
}

/// Whether the rule allows a cut at a pause after `p` bytes of the live stream (see
/// `Limits::stale_partial_after`): inside a packet, with a hello's signature starting
/// exactly there, or ending exactly 3 bytes before.
fn cut_allowed(stream: &[u8], starts: &[usize], p: usize) -> bool {
    if starts.contains(&p) || p >= stream.len() {
        return false;
    }
    let sig_at = |at: usize| {
        [Dialect::V4, Dialect::Legacy3].iter().any(|&d| {
            stream
                .get(at..at + HELLO_SIGNATURE_LEN)
                .is_some_and(|w| w == hello_signature(d))
        })
    };
    sig_at(p) || (p >= 12 && sig_at(p - 12))
}

/// Data with hello signatures (both forms, whole hellos too) planted at random places.
fn hello_rich_data() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 1..1500),
        proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), any::<bool>()),
            0..8,
        ),
    )
        .prop_map(|(mut data, plants)| {
            for (at, v4, whole) in plants {
                let d = dialect(v4);
                let bytes = if whole {
                    hello(d, 0).to_vec()
                } else {
                    hello_signature(d).to_vec()
                };
                let at = at.index(data.len());
                let end = (at + bytes.len()).min(data.len());
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A live client injecting hello-rich data, pausing anywhere for any time: cut only
    /// where the rule allows; everywhere else the inject arrives intact.
    #[test]
    fn a_live_client_is_cut_only_where_the_rule_allows(
        v4 in any::<bool>(),
        chunks in proptest::collection::vec(hello_rich_data(), 1..4),
        pauses in proptest::collection::vec((any::<prop::sample::Index>(), 0u64..4000, any::<i8>()), 1..8),
    ) {
        let d = dialect(v4);
        let t0 = Instant::now();
        let mut server = session(d, t0);
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for c in &chunks {
            starts.push(stream.len());
            stream.extend_from_slice(&packet(d, 1, 5, Packet::Data { channel: 0, data: Bytes::from(c.clone()) }));
        }
        starts.push(stream.len());
        stream.extend_from_slice(&packet(d, 1, 5, Packet::Eof { channel: 0 }));
        // Pause points: anywhere, or near a planted signature (exactly at one, or just off).
        let sigs: Vec<usize> = (0..stream.len())
            .filter(|&i| [Dialect::V4, Dialect::Legacy3].iter().any(|&h| stream[i..].starts_with(&hello_signature(h))))
            .collect();
        let mut cuts: Vec<(usize, Duration)> = pauses
            .iter()
            .map(|(at, ms, near)| {
                let p = if !sigs.is_empty() && *near % 2 == 0 {
                    let base = sigs[at.index(sigs.len())] as i64;
                    let off = [0i64, -1, 1, 12, 11, 13, 9, 3][(*near as u8 as usize / 2) % 8];
                    (base + off).clamp(1, stream.len() as i64 - 1) as usize
                } else {
                    1 + at.index(stream.len() - 1)
                };
                (p, Duration::from_millis(*ms))
            })
            .collect();
        cuts.sort_by_key(|c| c.0);
        cuts.dedup_by_key(|c| c.0);
        let allowed = cuts.iter().any(|&(p, pause)| pause >= T && cut_allowed(&stream, &starts, p));
        let mut now = t0;
        let mut from = 0;
        let mut log = Vec::new();
        for &(p, pause) in &cuts {
            feed_all(&mut server, now, &stream[from..p], &mut log);
            from = p;
            now += pause;
            wait_until(&mut server, now);
            log.extend(events(&mut server));
        }
        feed_all(&mut server, now, &stream[from..], &mut log);
        now += 3 * T;
        wait_until(&mut server, now);
        log.extend(events(&mut server));
        if allowed {
            // The rule allows a cut here: whatever happened, the machine is sound.
            prop_assert!(server.error().is_none());
            return Ok(());
        }
        let mut got = Vec::new();
        for e in &log {
            match e {
                ServerEvent::InjectData { xid: 5, data } => got.extend_from_slice(data),
                ServerEvent::InjectEnd { xid: 5 } => {}
                other => prop_assert!(false, "cut where the rule does not allow it: {:?} in {:?}", other, log),
            }
        }
        prop_assert_eq!(got, chunks.concat());
        prop_assert!(matches!(log.last(), Some(ServerEvent::InjectEnd { xid: 5 })), "{:?}", log);
        prop_assert_eq!(server.stats().stale_partials_dropped, 0);
    }
}

/// The blind spot above is real and the only one: a hello whose bytes exactly complete a
/// glued leftover is taken as that packet's end (and the client's retry recovers).
#[test]
fn the_blind_spot_is_a_hello_that_exactly_completes_the_leftover() {
    let t0 = Instant::now();
    let mut server = session(Dialect::V4, t0);
    let whole = packet(
        Dialect::V4,
        1,
        5,
        Packet::Data {
            channel: 0,
            data: Bytes::from(vec![0; 100]),
        },
    );
    let hello = hello(Dialect::V4, 0);
    let leftover = &whole[..whole.len() - hello.len()];
    assert!(hello_hidden(Dialect::V4, leftover, &hello));
    let mut glued = leftover.to_vec();
    glued.extend_from_slice(&hello);
    server.handle_bytes(t0, &glued).unwrap();
    wait_until(&mut server, t0 + 3 * T);
    let evs = events(&mut server);
    assert!(
        matches!(&evs[..], [ServerEvent::InjectData { xid: 5, .. }]),
        "read as the leftover's data: {evs:?}"
    );
    // The retry after a silence is a hello at a packet start: answered.
    server.handle_bytes(t0 + 3 * T, &hello).unwrap();
    let evs = events(&mut server);
    assert!(
        evs.iter().any(|e| matches!(e, ServerEvent::Hello { .. })),
        "{evs:?}"
    );
    assert!(
        !evs.iter().any(|e| matches!(
            e,
            ServerEvent::ProtocolViolation(Violation::StalePartial { .. })
        )),
        "{evs:?}"
    );
}
