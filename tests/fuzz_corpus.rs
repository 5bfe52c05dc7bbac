//! Replays every file of `fuzz/corpus/*/` through the fuzz targets' own check, on stable, so
//! a regression shows in `cargo test` without nightly or cargo-fuzz.
//!
//! The seed files are generated here: after changing `seeds()`, run
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.

#[path = "../fuzz/common/decode_check.rs"]
mod decode_check;

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use decode_check::Input;
use tuppence::wire::{
    CommandRequest, DecodeError, Dialect, Hello, Packet, PacketType, ProcInfoField, field,
};

const TARGETS: [(&str, Dialect); 2] = [
    ("decode_v4", Dialect::V4),
    ("decode_legacy3", Dialect::Legacy3),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn parse(bytes: &[u8]) -> Input<'_> {
    Input::arbitrary_take_rest(Unstructured::new(bytes)).unwrap()
}

/// A seed: its file name, the decoder settings and the packet stream.
struct Seed {
    name: &'static str,
    from_server: bool,
    mode: u8,
    seed: u32,
    stream: Vec<u8>,
}

impl Seed {
    fn input(&self) -> Input<'_> {
        Input {
            from_server: self.from_server,
            mode: self.mode,
            seed: self.seed,
            stream: &self.stream,
        }
    }
}

fn s(x: &str) -> Bytes {
    Bytes::copy_from_slice(x.as_bytes())
}

fn encode(d: Dialect, cid: u16, xid: u16, packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        p.encode(d, cid, xid, &mut out).unwrap();
    }
    out.to_vec()
}

fn raw(d: Dialect, kind: u8, len: u16, cid: u16, xid: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![kind, 0];
    let words = match d {
        Dialect::V4 => [len, cid, xid],
        Dialect::Legacy3 => [cid, xid, len],
    };
    for w in words {
        h.extend_from_slice(&w.to_be_bytes());
    }
    h.extend_from_slice(payload);
    h
}

fn seeds(d: Dialect) -> Vec<Seed> {
    let v4 = d == Dialect::V4;
    let (major, minor) = d.version();
    let signal = if v4 { s("INT") } else { Bytes::new() };

    // Everything a client sends, on xid 1.
    let mut client = encode(
        d,
        0,
        0,
        &[Packet::Hello(Hello {
            major,
            minor,
            keepalive: 0xffff,
        })],
    );
    let mut requests = vec![
        Packet::Command(CommandRequest {
            user: s("root"),
            command: s("cat; echo $A"),
            timeout: 60,
            request_tty: 0,
            reserved: [0, 0],
            env: vec![s("A=1"), s("PATH=/bin")],
        }),
        Packet::Data {
            channel: 0,
            data: s("input\n"),
        },
        Packet::Eof { channel: 0 },
        Packet::Interrupt { signal },
        Packet::Inject {
            user: s("nobody"),
            path: s("/tmp/f"),
            mode: 0o640,
        },
        Packet::Extract {
            user: s("root"),
            path: s("/etc/hostname"),
        },
        Packet::Keepalive,
        Packet::Quit,
    ];
    if v4 {
        requests.extend([
            Packet::Monitor { source: s("kmsg") },
            Packet::Settle { seq: 7 },
            Packet::ProcInfoQuery { mask: 0xffe },
        ]);
    }
    client.extend(encode(d, 2, 1, &requests));

    // Everything a server sends.
    let mut answers = vec![
        Packet::Data {
            channel: 1,
            data: Bytes::from_static(b"out\0\xff\n"),
        },
        Packet::Data {
            channel: 2,
            data: s("err\n"),
        },
        Packet::Eof { channel: 1 },
        Packet::Major(0),
        Packet::Minor(3),
        Packet::Timeout,
        Packet::Keepalive,
    ];
    if v4 {
        answers.push(Packet::ProcInfoResponse {
            fields: vec![
                ProcInfoField::u32(field::PID, 4242),
                ProcInfoField {
                    kind: field::STATE,
                    value: s("S"),
                },
                ProcInfoField {
                    kind: field::COMM,
                    value: s("cat"),
                },
            ],
        });
        answers.push(Packet::Settle { seq: 7 });
    }
    let mut server = encode(
        d,
        2,
        0,
        &[Packet::Hello(Hello {
            major,
            minor,
            keepalive: 60,
        })],
    );
    server.extend(encode(d, 2, 1, &answers));

    // Bad packets the stream survives, each followed by a good one.
    let keepalive = encode(d, 2, 0, &[Packet::Keepalive]);
    let mut survivable = Vec::new();
    for bad in [
        raw(d, b'M', 10, 2, 1, &[0, 0]),                   // truncated status
        raw(d, b'z', 9, 2, 1, &[1]),                       // unknown type
        raw(d, b'c', 12, 2, 1, b"root"),                   // user without NUL
        raw(d, b'h', 13, 0, 0, &[major, minor, 0, 60, 1]), // trailing byte
    ] {
        survivable.extend(bad);
        survivable.extend(&keepalive);
    }
    let mut fatal_short = keepalive.clone();
    fatal_short.extend(raw(d, b'K', 4, 2, 0, &[]));
    fatal_short.extend(&keepalive);

    let big = encode(
        d,
        2,
        1,
        &[Packet::Data {
            channel: 1,
            data: Bytes::from((0..4000u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>()),
        }],
    );

    let mut seeds = vec![
        Seed {
            name: "client_all_requests_whole",
            from_server: false,
            mode: 0,
            seed: 0,
            stream: client.clone(),
        },
        Seed {
            name: "client_all_requests_1byte",
            from_server: false,
            mode: 1,
            seed: 0,
            stream: client,
        },
        Seed {
            name: "server_all_answers_random16",
            from_server: true,
            mode: 2,
            seed: 12345,
            stream: server,
        },
        Seed {
            name: "bad_packets_then_good",
            from_server: false,
            mode: 2,
            seed: 99,
            stream: survivable,
        },
        Seed {
            name: "length_below_header",
            from_server: true,
            mode: 0,
            seed: 0,
            stream: fatal_short,
        },
        Seed {
            name: "data_4000_random4096",
            from_server: true,
            mode: 3,
            seed: 7,
            stream: big.clone(),
        },
        Seed {
            name: "data_over_limit_64",
            from_server: true,
            mode: 0b1100,
            seed: 0,
            stream: big,
        },
    ];
    if !v4 {
        // The C executor's hello, exactly as it sends it.
        seeds.push(Seed {
            name: "c_executor_hello",
            from_server: false,
            mode: 0,
            seed: 0,
            stream: vec![0x68, 0, 0, 0, 0, 0, 0, 0x0c, 3, 0, 0xff, 0xff],
        });
    }
    seeds
}

#[test]
fn seeds_parse_back_as_the_fuzzers_read_them() {
    for (_, d) in TARGETS {
        for seed in seeds(d) {
            let bytes = seed.input().to_bytes();
            assert_eq!(parse(&bytes), seed.input(), "{}", seed.name);
        }
    }
}

#[test]
fn seeds_exercise_what_their_names_say() {
    for (_, d) in TARGETS {
        let outcome = |name: &str| {
            let seed = seeds(d).into_iter().find(|s| s.name == name).unwrap();
            decode_check::check(d, &seed.input())
        };
        let n_client = if d == Dialect::V4 { 12 } else { 9 };
        let n_server = if d == Dialect::V4 { 10 } else { 8 };
        for name in ["client_all_requests_whole", "client_all_requests_1byte"] {
            let o = outcome(name);
            assert_eq!((o.frames, o.rejected_packets), (n_client, 0), "{name} {d}");
            assert!(o.fatal.is_none());
        }
        let o = outcome("server_all_answers_random16");
        assert_eq!((o.frames, o.rejected_packets), (n_server, 0), "{d}");
        let o = outcome("bad_packets_then_good");
        assert_eq!((o.frames, o.rejected_packets), (4, 4), "{d}");
        let o = outcome("length_below_header");
        assert_eq!(o.frames, 1);
        assert_eq!(o.fatal, Some(DecodeError::LengthTooShort { len: 4 }));
        let o = outcome("data_4000_random4096");
        assert_eq!((o.frames, o.fatal), (1, None));
        let o = outcome("data_over_limit_64");
        assert_eq!(o.frames, 0);
        assert!(matches!(
            o.fatal,
            Some(DecodeError::LengthTooLong { max: 64, .. })
        ));
    }
    // Together the client and server seeds hold every packet type of each dialect.
    for (_, d) in TARGETS {
        let mut seen = Vec::new();
        for seed in seeds(d) {
            let mut dec = tuppence::wire::Decoder::new(
                d,
                if seed.from_server {
                    tuppence::wire::Sender::Server
                } else {
                    tuppence::wire::Sender::Client
                },
            );
            dec.push(&seed.stream);
            while let Ok(Some(f)) = dec.next_frame() {
                seen.push(f.packet.packet_type());
            }
        }
        for t in PacketType::ALL {
            assert_eq!(seen.contains(&t), t.exists_in(d), "{t:?} in {d}");
        }
    }
}

#[test]
fn committed_seed_files_are_up_to_date() {
    for (target, d) in TARGETS {
        for seed in seeds(d) {
            let path = corpus_dir(target).join(seed.name);
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`",
                    path.display()
                )
            });
            assert_eq!(
                on_disk,
                seed.input().to_bytes(),
                "{} is stale",
                path.display()
            );
        }
    }
}

#[test]
fn replay_every_corpus_file() {
    for (target, d) in TARGETS {
        let dir = corpus_dir(target);
        let mut files = 0;
        let mut frames = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let input = parse(&bytes);
            let result = std::panic::catch_unwind(|| decode_check::check(d, &input));
            match result {
                Ok(o) => frames += o.frames,
                Err(_) => panic!("{target}: corpus file {} fails the check", path.display()),
            }
            files += 1;
        }
        assert!(files >= seeds(d).len(), "{target}: {files} files");
        assert!(frames > 0, "{target}: the corpus decodes no frame at all");
    }
}

#[test]
#[ignore = "writes the seed corpus; run by hand after changing seeds()"]
fn write_seed_corpus() {
    for (target, d) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for seed in seeds(d) {
            std::fs::write(dir.join(seed.name), seed.input().to_bytes()).unwrap();
        }
    }
}
