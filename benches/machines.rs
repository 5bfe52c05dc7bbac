//! The link machines wired back to back in memory (no I/O): how fast command output
//! streams from a Server to a Client, against a plain memcpy of the same bytes (through
//! `handle_bytes`, which copies payloads, and `handle_buf`, which does not), and how
//! many tiny command round trips (run → exit 0) complete per second.
//!
//! `cargo bench --bench machines -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, Server, ServerConfig, ServerEvent,
};

/// Bytes streamed per measured iteration.
const STREAM: usize = 16 << 20;
/// Size of each `Server::output` call.
const PIECE: usize = 64 << 10;

struct Pair {
    client: Client,
    server: Server,
    now: Instant,
    wire: BytesMut,
}

impl Pair {
    fn connected() -> Self {
        let now = Instant::now();
        let mut p = Pair {
            client: Client::new(ClientConfig::default(), now),
            server: Server::new(ServerConfig::default(), now),
            now,
            wire: BytesMut::new(),
        };
        p.client_to_server();
        while p.server.poll_event().is_some() {}
        p.server_to_client();
        while p.client.poll_event().is_some() {}
        assert!(p.client.is_connected());
        p
    }

    fn client_to_server(&mut self) {
        self.client.poll_transmit(self.now, &mut self.wire);
        let mut at = 0;
        while at < self.wire.len() {
            at += self
                .server
                .handle_bytes(self.now, &self.wire[at..])
                .unwrap();
        }
        self.wire.clear();
    }

    /// Moves the server's bytes to the client; returns the output bytes delivered.
    fn server_to_client(&mut self) -> usize {
        self.server.poll_transmit(self.now, &mut self.wire);
        let mut at = 0;
        let mut delivered = 0;
        while at < self.wire.len() {
            at += self
                .client
                .handle_bytes(self.now, &self.wire[at..])
                .unwrap();
            while let Some(ev) = self.client.poll_event() {
                if let ClientEvent::Output { data, .. } = ev {
                    delivered += data.len();
                    black_box(data);
                }
            }
        }
        self.wire.clear();
        delivered
    }

    /// [`Pair::server_to_client`] through `handle_buf`: the client takes large payloads
    /// out of the wire buffer instead of copying them (the wire buffer is then a new
    /// allocation each time, as a runtime's `RecvBuf` region is).
    fn server_to_client_owned(&mut self) -> usize {
        self.server.poll_transmit(self.now, &mut self.wire);
        let mut delivered = 0;
        while !self.wire.is_empty() {
            self.client.handle_buf(self.now, &mut self.wire).unwrap();
            while let Some(ev) = self.client.poll_event() {
                if let ClientEvent::Output { data, .. } = ev {
                    delivered += data.len();
                    black_box(data);
                }
            }
        }
        delivered
    }
}

fn stream(c: &mut Criterion) {
    let src = Bytes::from((0..STREAM).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut group = c.benchmark_group("stream_16MiB");
    group.throughput(Throughput::Bytes(STREAM as u64));
    group.sample_size(20);

    // The physical reference: one copy of the same bytes.
    let mut dst = vec![0u8; STREAM];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    // The same copy in 64 KiB pieces into one cache-sized buffer.
    let mut small = vec![0u8; PIECE];
    group.bench_function("memcpy_64KiB_pieces", |b| {
        b.iter(|| {
            for piece in src.chunks(PIECE) {
                small.copy_from_slice(black_box(piece));
                black_box(&small);
            }
        })
    });

    let mut p = Pair::connected();
    let xid = p.client.run(Command::new("cat /dev/zero")).unwrap();
    p.client_to_server();
    assert!(matches!(
        p.server.poll_event(),
        Some(ServerEvent::RunCommand { .. })
    ));
    group.bench_function("server_output_to_client_events", |b| {
        b.iter(|| {
            let mut delivered = 0;
            for at in (0..STREAM).step_by(PIECE) {
                p.server.output(xid, 1, src.slice(at..at + PIECE)).unwrap();
                delivered += p.server_to_client();
            }
            assert_eq!(delivered, STREAM);
        })
    });
    // The same through the owned-bytes input (A/B against the one above).
    group.bench_function("server_output_to_client_events_handle_buf", |b| {
        b.iter(|| {
            let mut delivered = 0;
            for at in (0..STREAM).step_by(PIECE) {
                p.server.output(xid, 1, src.slice(at..at + PIECE)).unwrap();
                delivered += p.server_to_client_owned();
            }
            assert_eq!(delivered, STREAM);
        })
    });
    group.finish();
}

fn transactions(c: &mut Criterion) {
    let mut group = c.benchmark_group("transactions");
    let mut p = Pair::connected();

    let round_trips = |p: &mut Pair, n: usize| {
        for _ in 0..n {
            p.client.run(Command::new("true")).unwrap();
        }
        p.client_to_server();
        while let Some(ev) = p.server.poll_event() {
            if let ServerEvent::RunCommand { xid, .. } = ev {
                p.server.command_exited(xid, 0).unwrap();
            }
        }
        // Delivers `X`, `X`, `M`, `m` per command and drains the client's events.
        p.server_to_client();
        assert_eq!(p.client.transactions(), 0);
    };

    group.throughput(Throughput::Elements(1));
    group.bench_function("one_at_a_time", |b| b.iter(|| round_trips(&mut p, 1)));
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_in_flight", |b| b.iter(|| round_trips(&mut p, 64)));
    group.finish();
}

criterion_group!(benches, stream, transactions);
criterion_main!(benches);
