//! Properties of the codec: every valid packet round-trips in both dialects, a stream decodes
//! to the same frames under any chunking, and arbitrary bytes never make the decoder panic
//! or hold more than it was given.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tuppence::wire::{
    CommandRequest, DecodeError, Decoder, Dialect, Frame, HEADER_LEN, Hello, MAX_CHUNK,
    MAX_PACKET_LEN, Packet, ProcInfoField, Sender, decode_frame,
};

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(Dialect::V4), Just(Dialect::Legacy3)]
}

fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![Just(Sender::Client), Just(Sender::Server)]
}

/// A string field: any bytes but NUL.
fn cstring() -> impl Strategy<Value = Bytes> {
    vec(1u8..=255, 0..24).prop_map(Bytes::from)
}

/// Channel data: mostly small, sometimes up to the largest payload a packet can carry.
fn data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..300).prop_map(Bytes::from),
        1 => (0..=MAX_CHUNK, any::<u8>()).prop_map(|(n, seed)| {
            Bytes::from((0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect::<Vec<_>>())
        }),
    ]
}

fn procinfo_fields() -> impl Strategy<Value = Vec<ProcInfoField>> {
    let field = (1u8..=255, vec(any::<u8>(), 0..=6)).prop_map(|(kind, v)| ProcInfoField {
        kind,
        value: Bytes::from(v),
    });
    prop_oneof![
        8 => vec(field, 0..12),
        // Long values and long lists, up to the format's limits.
        1 => vec(
            (1u8..=255, 0..=255usize).prop_map(|(kind, n)| ProcInfoField {
                kind,
                value: Bytes::from(vec![kind; n]),
            }),
            0..=255,
        ),
    ]
}

fn command() -> impl Strategy<Value = Packet> {
    (
        cstring(),
        cstring(),
        any::<u32>(),
        any::<u32>(),
        any::<[u32; 2]>(),
        vec(cstring(), 0..8),
    )
        .prop_map(|(user, command, timeout, request_tty, reserved, env)| {
            Packet::Command(CommandRequest {
                user,
                command,
                timeout,
                request_tty,
                reserved,
                env,
            })
        })
}

/// Any packet `sender` may send in `dialect`, respecting the dialect's rules.
fn packet(dialect: Dialect, sender: Sender) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(major, minor, keepalive)| {
            Packet::Hello(Hello {
                major,
                minor,
                keepalive,
            })
        }),
        command(),
        (cstring(), cstring(), any::<u32>()).prop_map(|(user, path, mode)| Packet::Inject {
            user,
            path,
            mode
        }),
        (cstring(), cstring()).prop_map(|(user, path)| Packet::Extract { user, path }),
        Just(Packet::Quit),
        any::<u32>().prop_map(Packet::Major),
        any::<u32>().prop_map(Packet::Minor),
        Just(Packet::Timeout),
        (any::<u16>(), data()).prop_map(|(channel, data)| Packet::Data { channel, data }),
        any::<u16>().prop_map(|channel| Packet::Eof { channel }),
        Just(Packet::Keepalive),
    ];
    match dialect {
        Dialect::Legacy3 => prop_oneof![
            10 => common,
            1 => Just(Packet::Interrupt { signal: Bytes::new() }),
        ]
        .boxed(),
        Dialect::V4 => {
            let procinfo = match sender {
                Sender::Client => any::<u32>()
                    .prop_map(|mask| Packet::ProcInfoQuery { mask })
                    .boxed(),
                Sender::Server => procinfo_fields()
                    .prop_map(|fields| Packet::ProcInfoResponse { fields })
                    .boxed(),
            };
            prop_oneof![
                10 => common,
                1 => cstring().prop_map(|signal| Packet::Interrupt { signal }),
                1 => cstring().prop_map(|source| Packet::Monitor { source }),
                1 => any::<u32>().prop_map(|seq| Packet::Settle { seq }),
                2 => procinfo,
            ]
            .boxed()
        }
    }
}

fn frame(dialect: Dialect, sender: Sender) -> impl Strategy<Value = Frame> {
    (any::<u16>(), any::<u16>(), packet(dialect, sender)).prop_map(|(cid, xid, packet)| Frame {
        cid,
        xid,
        packet,
    })
}

/// A dialect, a sender, and a stream of frames that sender may send in it.
fn stream(max_frames: usize) -> impl Strategy<Value = (Dialect, Sender, Vec<Frame>)> {
    (dialect(), sender())
        .prop_flat_map(move |(d, s)| (Just(d), Just(s), vec(frame(d, s), 0..max_frames)))
}

fn encode_all(dialect: Dialect, frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.packet.encode(dialect, f.cid, f.xid, &mut out).unwrap();
    }
    out.to_vec()
}

/// Feeds `bytes` in pieces of the given sizes (cycled; the rest goes whole when they run
/// out) and collects every frame, failing on any error.
fn decode_chunked(d: Dialect, s: Sender, bytes: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut dec = Decoder::new(d, s);
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        dec.push(piece);
        while let Some(f) = dec.next_frame().unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.next_frame(), Ok(None));
    frames
}

proptest! {
    #[test]
    fn every_packet_round_trips(
        (d, s, f) in (dialect(), sender()).prop_flat_map(|(d, s)| (Just(d), Just(s), frame(d, s)))
    ) {
        let mut out = BytesMut::new();
        f.packet.encode(d, f.cid, f.xid, &mut out).unwrap();
        prop_assert_eq!(out.len(), f.packet.encoded_len(d));
        prop_assert!(out.len() <= MAX_PACKET_LEN);
        prop_assert_eq!(out.first().copied(), Some(f.packet.packet_type().code(d)));
        let back = decode_frame(d, s, &mut out, MAX_PACKET_LEN).unwrap();
        prop_assert_eq!(back, Some(f));
        prop_assert!(out.is_empty());
    }

    #[test]
    fn a_stream_decodes_the_same_under_any_chunking(
        (d, s, frames) in stream(24),
        splits in vec(1usize..600, 1..40),
    ) {
        let bytes = encode_all(d, &frames);
        prop_assert_eq!(&decode_chunked(d, s, &bytes, &[bytes.len()]), &frames, "whole");
        prop_assert_eq!(&decode_chunked(d, s, &bytes, &splits), &frames, "random splits");
        // One byte at a time is slow for the occasional 64 KiB packet; bound it.
        if bytes.len() <= 16 * 1024 {
            prop_assert_eq!(&decode_chunked(d, s, &bytes, &[1]), &frames, "1-byte");
        }
    }
}

/// A byte stream that is mostly valid packets with some bytes overwritten, so that the
/// decoder meets both good framing and every kind of garbage.
fn damaged_stream() -> impl Strategy<Value = (Dialect, Sender, Vec<u8>)> {
    prop_oneof![
        // Pure noise.
        (dialect(), sender(), vec(any::<u8>(), 0..2048)),
        // Valid packets, then a few bytes overwritten and the tail possibly cut.
        (
            stream(12),
            vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            any::<prop::sample::Index>(),
        )
            .prop_map(|((d, s, frames), damage, cut)| {
                let mut bytes = encode_all(d, &frames);
                if !bytes.is_empty() {
                    for (i, v) in damage {
                        let i = i.index(bytes.len());
                        bytes[i] = v;
                    }
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                (d, s, bytes)
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_never_grow_memory(
        (d, s, bytes) in damaged_stream(),
        splits in vec(1usize..300, 1..20),
        max in prop_oneof![Just(MAX_PACKET_LEN), Just(32768usize), 0usize..200],
    ) {
        let mut dec = Decoder::new(d, s).with_max_packet_len(max);
        let mut pushed = 0usize;
        let mut consumed = 0usize;
        let mut fatal: Option<DecodeError> = None;
        let mut rest = &bytes[..];
        let mut sizes = splits.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap().min(rest.len());
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            dec.push(piece);
            pushed += n;
            prop_assert!(dec.buffered() <= pushed);
            loop {
                let before = dec.buffered();
                match dec.next_frame() {
                    Ok(None) => {
                        prop_assert_eq!(dec.buffered(), before);
                        prop_assert!(dec.bytes_needed() > 0);
                        break;
                    }
                    Ok(Some(f)) => {
                        // Progress, and exactly one packet's worth of it.
                        let used = before - dec.buffered();
                        prop_assert!(used >= HEADER_LEN);
                        prop_assert!(used <= max.clamp(HEADER_LEN, MAX_PACKET_LEN));
                        // Whatever decodes re-encodes to an equal frame.
                        let again = f.packet.to_bytes(d, f.cid, f.xid).unwrap();
                        prop_assert!(again.len() <= used);
                        let mut again = BytesMut::from(&again[..]);
                        prop_assert_eq!(
                            decode_frame(d, s, &mut again, MAX_PACKET_LEN).unwrap(),
                            Some(f)
                        );
                        consumed += used;
                    }
                    Err(e) if e.is_fatal() => {
                        prop_assert_eq!(dec.buffered(), before, "a framing error consumes nothing");
                        prop_assert!(e.header().is_none());
                        if let Some(first) = &fatal {
                            prop_assert_eq!(first, &e, "sticky");
                        }
                        fatal = Some(e);
                        break;
                    }
                    Err(e) => {
                        prop_assert!(fatal.is_none());
                        let h = e.header().copied().unwrap();
                        let used = before - dec.buffered();
                        prop_assert_eq!(used, usize::from(h.len), "the bad packet is skipped whole");
                        consumed += used;
                    }
                }
            }
            prop_assert_eq!(consumed + dec.buffered(), pushed);
            // What the buffer holds is input, plus room for at most one packet.
            prop_assert!(
                dec.buffer_capacity() <= 2 * pushed + 2 * (MAX_PACKET_LEN + 1),
                "capacity {} after {} bytes", dec.buffer_capacity(), pushed
            );
        }
    }

    #[test]
    fn detect_dialect_never_panics_and_needs_eight_bytes(bytes in vec(any::<u8>(), 0..16)) {
        let r = tuppence::wire::detect_dialect(&bytes);
        prop_assert_eq!(r.is_some(), bytes.len() >= 8);
    }
}

#[test]
fn every_valid_legacy_client_hello_is_detected() {
    // Any 3.0 hello from a client (cid 0) is told apart from 4.0, whatever its payload.
    for keepalive in [0u16, 10, 60, 0xffff] {
        let hello = Packet::Hello(Hello {
            major: 3,
            minor: 0,
            keepalive,
        });
        let legacy = hello.to_bytes(Dialect::Legacy3, 0, 0).unwrap();
        assert_eq!(
            tuppence::wire::detect_dialect(&legacy),
            Some(Dialect::Legacy3)
        );
        let v4 = hello.to_bytes(Dialect::V4, 0, 0).unwrap();
        assert_eq!(tuppence::wire::detect_dialect(&v4), Some(Dialect::V4));
    }
}

proptest! {
    /// `Decoder::feed` takes one packet at a time: never past the end of the packet at
    /// the front of its buffer, so a caller that decodes after every `feed` never holds a
    /// decodable packet while it refuses input, and what it leaves untaken is exactly what
    /// it was offered beyond that packet. The frames are those of the stream, in order.
    #[test]
    fn feed_takes_one_packet_at_a_time(
        (d, s, frames) in stream(24),
        splits in vec(1usize..600, 1..40),
    ) {
        let bytes = encode_all(d, &frames);
        let lens: Vec<usize> = frames.iter().map(|f| f.packet.encoded_len(d)).collect();
        let mut dec = Decoder::new(d, s);
        let mut got = Vec::new();
        let mut at = 0usize;
        let mut sizes = splits.iter().copied().cycle();
        while at < bytes.len() {
            let piece = &bytes[at..(at + sizes.next().unwrap()).min(bytes.len())];
            let mut offered = piece;
            while !offered.is_empty() {
                let before = dec.buffered();
                let n = dec.feed(offered);
                prop_assert!(n >= 1 && n <= offered.len());
                // The buffer holds at most the packet at the front: the frames decoded so
                // far plus what is buffered end on or before the next packet boundary.
                let front_end: usize = lens[..=got.len().min(lens.len() - 1)].iter().sum();
                prop_assert!(at + n <= front_end, "took {n} past a packet's end");
                if n < offered.len() {
                    // Stopped short at a boundary: the header just completed (its length
                    // says how much more to take), or the front packet is whole.
                    prop_assert!(
                        dec.bytes_needed() == 0 || dec.buffered() == HEADER_LEN,
                        "stopped inside a header or a packet"
                    );
                }
                prop_assert_eq!(dec.buffered(), before + n);
                at += n;
                offered = &offered[n..];
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(got, frames);
    }

    /// A detecting decoder (an agent's, which does not know the client's dialect) takes
    /// at most the 8 header bytes before it knows it, and then reads a client's stream of
    /// either dialect that starts with a hello.
    #[test]
    fn a_detecting_decoder_learns_the_dialect_from_the_first_eight_bytes(
        (d, frames) in dialect().prop_flat_map(|d| (Just(d), vec(frame(d, Sender::Client), 0..8))),
        splits in vec(1usize..40, 1..20),
    ) {
        let (major, minor) = d.version();
        let hello = Frame { cid: 0, xid: 0, packet: Packet::Hello(Hello { major, minor, keepalive: 60 }) };
        let mut all = vec![hello];
        all.extend(frames);
        let bytes = encode_all(d, &all);
        let mut dec = Decoder::detecting(Sender::Client);
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        let mut sizes = splits.iter().copied().cycle();
        while !rest.is_empty() {
            let piece = &rest[..sizes.next().unwrap().min(rest.len())];
            let n = dec.feed(piece);
            if !dec.dialect_known() {
                prop_assert!(dec.buffered() <= HEADER_LEN);
            }
            rest = &rest[n..];
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert!(dec.dialect_known());
        prop_assert_eq!(dec.dialect(), d);
        prop_assert_eq!(got, all);
    }
}
