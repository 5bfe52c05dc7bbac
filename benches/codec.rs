//! Codec throughput, compared with a physical limit measured in the same run
//! (ARCHITECTURE.md, "Testing").
//!
//! * `data`: 32 KiB channel-data packets (the default packet size): `decode` (zero-copy: the
//!   payload is a slice of the input), `encode` (copies the payload into the output), and
//!   `memcpy` of the same number of bytes as the reference.
//! * `header_only`: keepalive packets, 1000 per iteration, in packets per second.
//!
//! `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tuppence::wire::{
    DEFAULT_MAX_CHUNK, DEFAULT_SEND_PACKET_LEN, Dialect, MAX_PACKET_LEN, Packet, Sender,
    decode_frame,
};

const KEEPALIVES_PER_ITER: usize = 1000;
/// Prepared inputs per timed batch: enough to hide the timer, few enough to stay in cache.
const BATCH: u64 = 64;

fn data_packet() -> Packet {
    let payload: Vec<u8> = (0..DEFAULT_MAX_CHUNK).map(|i| (i * 13) as u8).collect();
    Packet::Data {
        channel: 1,
        data: Bytes::from(payload),
    }
}

fn bench_data(c: &mut Criterion) {
    let packet = data_packet();
    let mut prepared = BytesMut::new();
    packet.encode(Dialect::V4, 2, 1, &mut prepared).unwrap();
    let len = prepared.len();
    assert_eq!(len, DEFAULT_SEND_PACKET_LEN);

    // The decode under test is zero-copy: check it once, outside the measurement.
    {
        let mut buf = prepared.clone();
        let start = buf.as_ptr() as usize;
        let frame = decode_frame(Dialect::V4, Sender::Server, &mut buf, MAX_PACKET_LEN)
            .unwrap()
            .unwrap();
        let Packet::Data { data, .. } = &frame.packet else {
            panic!("not data")
        };
        assert_eq!(
            data.as_ptr() as usize,
            start + 10,
            "decode copied the payload"
        );
        assert_eq!(frame.packet, packet);
    }

    let mut group = c.benchmark_group("data");
    group.throughput(Throughput::Bytes(len as u64));

    group.bench_function("decode", |b| {
        b.iter_batched(
            || prepared.clone(),
            |mut buf| {
                let frame = decode_frame(
                    Dialect::V4,
                    Sender::Server,
                    black_box(&mut buf),
                    MAX_PACKET_LEN,
                );
                // Returned, so dropping the frame and the buffer is not timed.
                (frame, buf)
            },
            BatchSize::NumIterations(BATCH),
        )
    });

    let mut out = BytesMut::with_capacity(len);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&packet)
                .encode(Dialect::V4, 2, 1, &mut out)
                .unwrap();
            black_box(out.as_ptr());
        })
    });

    let src = prepared.to_vec();
    let mut dst = vec![0u8; len];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(dst.as_mut_ptr());
        })
    });
    group.finish();
}

fn bench_header_only(c: &mut Criterion) {
    let mut prepared = BytesMut::new();
    for _ in 0..KEEPALIVES_PER_ITER {
        Packet::Keepalive
            .encode(Dialect::V4, 2, 0, &mut prepared)
            .unwrap();
    }
    let bytes_len = prepared.len();

    let mut group = c.benchmark_group("header_only");
    group.throughput(Throughput::Elements(KEEPALIVES_PER_ITER as u64));

    group.bench_function("decode", |b| {
        b.iter_batched(
            || prepared.clone(),
            |mut buf| {
                // Consume each frame as a receiver does: read its ids, check its type.
                // (`black_box(&frame)` would instead time a copy of the whole frame.)
                let mut n = 0usize;
                while let Ok(Some(frame)) =
                    decode_frame(Dialect::V4, Sender::Server, &mut buf, MAX_PACKET_LEN)
                {
                    black_box(frame.cid);
                    black_box(frame.xid);
                    if let Packet::Keepalive = frame.packet {
                        n += 1;
                    }
                }
                assert_eq!(n, KEEPALIVES_PER_ITER);
                buf
            },
            BatchSize::NumIterations(BATCH),
        )
    });

    let mut out = BytesMut::with_capacity(bytes_len);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..KEEPALIVES_PER_ITER {
                black_box(&Packet::Keepalive)
                    .encode(Dialect::V4, 2, 0, &mut out)
                    .unwrap();
            }
            black_box(out.as_ptr());
        })
    });
    group.finish();
}

criterion_group!(benches, bench_data, bench_header_only);
criterion_main!(benches);
