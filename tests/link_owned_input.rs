//! The owned-bytes input (`Machine::handle_buf`): the link machines give the same events,
//! transmits and consumption as with `handle_bytes`, for any packet sequence and any
//! chunking, in both dialects, with backpressure; large data payloads are slices of the
//! caller's buffer, small ones are copies (they must not pin it).

use std::ops::Range;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tuppence::Machine;
use tuppence::link::{Client, ClientConfig, Command, Limits, Server, ServerConfig, ServerEvent};
use tuppence::wire::{Dialect, Hello, MAX_CHUNK, OWNED_MIN_PACKET, Packet, hello_signature};

/// Which machine reads the stream.
#[derive(Clone, Copy, Debug)]
enum Role {
    Server,
    Client,
}

/// One item of the stream: a packet (cid, xid, packet) or raw bytes (line noise).
#[derive(Clone, Debug)]
enum Item {
    Packet(u16, u16, Packet),
    Raw(Vec<u8>),
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64).prop_map(Bytes::from),
        // Around and above the size taken without a copy; sometimes ending in what looks
        // like the start of a hello (a device link searches the bytes it decoded last).
        3 => (OWNED_MIN_PACKET - 16..=MAX_CHUNK, any::<u8>(), any::<bool>()).prop_map(
            |(n, seed, hello)| {
                let mut v = vec![seed; n];
                if hello {
                    for d in [Dialect::V4, Dialect::Legacy3] {
                        v.extend_from_slice(&hello_signature(d));
                    }
                    v.truncate(MAX_CHUNK);
                }
                Bytes::from(v)
            }
        ),
    ]
}

/// What a client sends an agent (requests, stdin, file data), on a few xids.
fn client_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        6 => (0u16..3, payload()).prop_map(|(channel, data)| Packet::Data { channel, data }),
        1 => (0u16..3).prop_map(|channel| Packet::Eof { channel }),
        1 => Just(Packet::Command(tuppence::wire::CommandRequest {
            user: Bytes::from_static(b"root"),
            command: Bytes::from_static(b"cat"),
            timeout: 10,
            request_tty: 0,
            reserved: [0; 2],
            env: Vec::new(),
        })),
        1 => Just(Packet::Inject {
            user: Bytes::from_static(b"root"),
            path: Bytes::from_static(b"/tmp/f"),
            mode: 0o644,
        }),
        1 => Just(Packet::Keepalive),
        1 => Just(Packet::Hello(Hello { major: 4, minor: 0, keepalive: 0 })),
    ]
}

/// What an agent sends a client: answers and data for the transactions the test opened.
fn server_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        6 => (0u16..3, payload()).prop_map(|(channel, data)| Packet::Data { channel, data }),
        1 => (0u16..3).prop_map(|channel| Packet::Eof { channel }),
        1 => (0u32..2).prop_map(Packet::Major),
        1 => (0u32..2).prop_map(Packet::Minor),
        1 => Just(Packet::Keepalive),
    ]
}

fn items(role: Role) -> BoxedStrategy<Vec<Item>> {
    let packet = match role {
        Role::Server => client_packet().boxed(),
        Role::Client => server_packet().boxed(),
    };
    let item = prop_oneof![
        80 => (1u16..=1, 0u16..4, packet).prop_map(|(cid, xid, p)| Item::Packet(cid, xid, p)),
        1 => vec(any::<u8>(), 1..12).prop_map(Item::Raw),
    ];
    vec(item, 0..40).boxed()
}

fn encode(dialect: Dialect, role: Role, items: &[Item]) -> Vec<u8> {
    let mut out = BytesMut::new();
    match role {
        Role::Server => Packet::Hello(Hello {
            major: if dialect == Dialect::V4 { 4 } else { 3 },
            minor: 0,
            keepalive: 0,
        })
        .encode(dialect, 0, 0, &mut out)
        .unwrap(),
        Role::Client => Packet::Hello(Hello {
            major: if dialect == Dialect::V4 { 4 } else { 3 },
            minor: 0,
            keepalive: 0,
        })
        .encode(dialect, 1, 0, &mut out)
        .unwrap(),
    }
    for item in items {
        match item {
            // A packet the dialect cannot carry is left out (the encoder says which).
            Item::Packet(cid, xid, p) => {
                let _ = p.encode(dialect, *cid, *xid, &mut out);
            }
            Item::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out.to_vec()
}

/// Everything one machine did, comparable between the two input methods.
#[derive(Debug, Default, PartialEq)]
struct Record {
    consumed: Vec<usize>,
    events: Vec<String>,
    transmitted: Vec<u8>,
    error: Option<String>,
}

/// A machine plus the deterministic "application" the test puts behind it.
enum Side {
    Server(Server),
    Client(Client),
}

impl Side {
    /// `device`: the device-link settings (resynchronisation on hellos, stale partial
    /// packets), under which the decoder also remembers what it was fed.
    fn new(role: Role, dialect: Dialect, now: Instant, device: bool) -> Side {
        // A small event queue, so that backpressure happens.
        let limits = Limits {
            max_events: 3,
            ..Limits::default()
        };
        match role {
            Role::Server => {
                let mut config = ServerConfig {
                    limits,
                    ..ServerConfig::default()
                };
                if device {
                    config = config.for_device_link();
                }
                Side::Server(Server::new(config, now))
            }
            Role::Client => {
                let mut config = ClientConfig {
                    dialect,
                    limits,
                    ..ClientConfig::default()
                };
                if device {
                    config = config.for_device_link();
                }
                let mut c = Client::new(config, now);
                c.extract("root", "/tmp/f").unwrap();
                c.run(Command::new("cat")).unwrap();
                c.extract("root", "/tmp/g").unwrap();
                Side::Client(c)
            }
        }
    }

    fn machine(&mut self) -> &mut dyn Machine<Error = tuppence::link::LinkError> {
        match self {
            Side::Server(s) => s,
            Side::Client(c) => c,
        }
    }

    /// Drains up to `n` events, answering injects as ready.
    fn drain(&mut self, n: usize, rec: &mut Record) {
        for _ in 0..n {
            match self {
                Side::Server(s) => match s.poll_event() {
                    Some(ev) => {
                        if let ServerEvent::Inject { xid, .. } = ev {
                            let _ = s.inject_ready(xid);
                        }
                        rec.events.push(format!("{ev:?}"));
                    }
                    None => return,
                },
                Side::Client(c) => match c.poll_event() {
                    Some(ev) => rec.events.push(format!("{ev:?}")),
                    None => return,
                },
            }
        }
    }
}

/// Offers `bytes` in pieces of `sizes` (cycled), through `handle_buf` (`owned`) or
/// `handle_bytes`, draining `drain` events between calls; what a call leaves is offered
/// again with the next piece appended.
fn run(
    dialect: Dialect,
    role: Role,
    device: bool,
    bytes: &[u8],
    sizes: &[usize],
    drain: usize,
    owned: bool,
) -> Record {
    let now = Instant::now();
    let mut side = Side::new(role, dialect, now, device);
    let mut rec = Record::default();
    let mut pending = BytesMut::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().copied().cycle();
    let mut out = BytesMut::new();
    for _ in 0..10_000 {
        if rest.is_empty() && pending.is_empty() {
            break;
        }
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        pending.extend_from_slice(piece);
        let before = pending.len();
        let r = if owned {
            side.machine().handle_buf(now, &mut pending)
        } else {
            side.machine().handle_bytes(now, &pending).inspect(|&n| {
                let _ = pending.split_to(n);
            })
        };
        match r {
            Ok(n) => {
                assert_eq!(before - pending.len(), n, "consumed bytes left the buffer");
                rec.consumed.push(n);
            }
            Err(e) => {
                rec.error = Some(e.to_string());
                break;
            }
        }
        side.drain(drain, &mut rec);
        side.machine().poll_transmit(now, &mut out);
    }
    side.drain(usize::MAX, &mut rec);
    side.machine().poll_transmit(now, &mut out);
    rec.transmitted = out.to_vec();
    rec
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Server), Just(Role::Client)]
}

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(Dialect::V4), Just(Dialect::Legacy3)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn handle_buf_behaves_as_handle_bytes(
        (dialect, role, items) in (dialect(), role())
            .prop_flat_map(|(d, r)| (Just(d), Just(r), items(r))),
        sizes in vec(
            prop_oneof![1usize..16, 16usize..4096, 4096usize..200_000],
            1..8,
        ),
        drain in prop_oneof![Just(1usize), Just(2), Just(usize::MAX)],
        device in any::<bool>(),
    ) {
        let bytes = encode(dialect, role, &items);
        let copied = run(dialect, role, device, &bytes, &sizes, drain, false);
        let owned = run(dialect, role, device, &bytes, &sizes, drain, true);
        prop_assert_eq!(copied, owned);
    }
}

/// The allocation a `BytesMut` writes into.
fn storage(buf: &BytesMut) -> Range<usize> {
    let start = buf.as_ptr() as usize;
    start..start + buf.capacity()
}

fn within(data: &Bytes, ranges: &[Range<usize>]) -> bool {
    let p = data.as_ptr() as usize;
    ranges.iter().any(|r| r.contains(&p))
}

/// An agent keeps stdin payloads in a queue while it streams an inject to disk: the tiny
/// ones must be copies (a 10-byte payload must not keep a 256 KiB receive buffer alive),
/// the bulk ones slices of the receive buffer (no copy).
#[test]
fn tiny_payloads_do_not_pin_receive_buffers_bulk_ones_are_not_copied() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let now = Instant::now();
        let mut server = Server::new(ServerConfig::default(), now);
        let mut wire = BytesMut::new();
        let major = if dialect == Dialect::V4 { 4 } else { 3 };
        Packet::Hello(Hello {
            major,
            minor: 0,
            keepalive: 0,
        })
        .encode(dialect, 0, 0, &mut wire)
        .unwrap();
        let inject = Packet::Inject {
            user: Bytes::from_static(b"root"),
            path: Bytes::from_static(b"/tmp/f"),
            mode: 0o644,
        };
        inject.encode(dialect, 1, 1, &mut wire).unwrap();
        Packet::Command(tuppence::wire::CommandRequest {
            user: Bytes::from_static(b"root"),
            command: Bytes::from_static(b"cat"),
            timeout: 10,
            request_tty: 0,
            reserved: [0; 2],
            env: Vec::new(),
        })
        .encode(dialect, 1, 2, &mut wire)
        .unwrap();
        for i in 0..64u8 {
            let bulk = Bytes::from(vec![i; MAX_CHUNK]);
            Packet::Data {
                channel: 0,
                data: bulk,
            }
            .encode(dialect, 1, 1, &mut wire)
            .unwrap();
            let tiny = Bytes::from(vec![i; 10]);
            Packet::Data {
                channel: 0,
                data: tiny,
            }
            .encode(dialect, 1, 2, &mut wire)
            .unwrap();
        }

        // Read as a runtime does: 256 KiB receive buffers, a fresh one when the last is
        // pinned by payloads.
        let mut receive_buffers = Vec::new();
        let mut stdin_queue = Vec::new();
        let mut kept = Vec::new();
        let (mut bulk_owned, mut bulk) = (0, 0);
        let mut rest = &wire[..];
        let mut buf = BytesMut::new();
        while !rest.is_empty() || !buf.is_empty() {
            buf.reserve(256 * 1024);
            let n = rest.len().min(buf.capacity() - buf.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            receive_buffers.push(storage(&buf));
            server.handle_buf(now, &mut buf).unwrap();
            while let Some(ev) = server.poll_event() {
                match ev {
                    ServerEvent::Inject { xid, .. } => server.inject_ready(xid).unwrap(),
                    ServerEvent::InjectData { data, .. } => {
                        bulk += 1;
                        if within(&data, &receive_buffers) {
                            bulk_owned += 1;
                        }
                        // Kept (unlike an agent, which writes and drops it) only so that no
                        // receive buffer is freed and its address reused by another.
                        kept.push(data);
                    }
                    ServerEvent::Stdin { data, .. } => {
                        assert_eq!(data.len(), 10);
                        stdin_queue.push(data);
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(bulk, 64);
        assert_eq!(stdin_queue.len(), 64);
        // Bulk packets straddling two reads are copied; the others are not.
        assert!(
            bulk_owned >= 32,
            "{bulk_owned} of 64 bulk payloads taken without a copy"
        );
        for data in &stdin_queue {
            assert!(
                !within(data, &receive_buffers),
                "a 10-byte payload pins a receive buffer"
            );
        }
    }
}
