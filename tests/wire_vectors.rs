//! The link vectors of an independent implementation (`tests/vectors/link.json`, a copy of
//! `shared/vectors/link.json`): each hex decodes to its fields and the fields encode back to
//! the same bytes.

mod common;

use bytes::Bytes;
use common::{decode_one, encode, hex, to_hex};
use serde_json::Value;
use tuppence::wire::{
    CommandRequest, Dialect, Frame, Hello, Packet, PacketType, ProcInfoField, Sender,
};

const VECTORS: &str = include_str!("vectors/link.json");

fn vectors() -> Vec<Value> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn dialect(v: &Value) -> Dialect {
    match v["dialect"].as_str().unwrap() {
        "4.0" => Dialect::V4,
        "3.0" => Dialect::Legacy3,
        other => panic!("unknown dialect {other}"),
    }
}

fn uint<T: TryFrom<u64>>(f: &Value, key: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    let n = f[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key} missing in {f}"));
    T::try_from(n).unwrap()
}

fn string(f: &Value, key: &str) -> Bytes {
    let s = f[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key} missing in {f}"));
    Bytes::copy_from_slice(s.as_bytes())
}

/// The packet a vector describes, built from its JSON fields alone.
fn expected_packet(v: &Value) -> (Packet, Sender) {
    let f = &v["fields"];
    let name = v["name"].as_str().unwrap();
    let ty = v["type"].as_str().unwrap();
    let client = Sender::Client;
    let server = Sender::Server;
    match ty {
        "h" => {
            let p = Packet::Hello(Hello {
                major: uint(f, "major"),
                minor: uint(f, "minor"),
                keepalive: uint(f, "keepalive"),
            });
            (p, if v["cid"] == 0 { client } else { server })
        }
        "c" => {
            let env = f["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| Bytes::copy_from_slice(e.as_str().unwrap().as_bytes()))
                .collect();
            let p = Packet::Command(CommandRequest {
                user: string(f, "user"),
                command: string(f, "command"),
                timeout: uint(f, "timeout"),
                request_tty: uint(f, "request_tty"),
                reserved: [0, 0],
                env,
            });
            (p, client)
        }
        "i" => (
            Packet::Inject {
                user: string(f, "user"),
                path: string(f, "filename"),
                mode: uint(f, "mode"),
            },
            client,
        ),
        "e" => (
            Packet::Extract {
                user: string(f, "user"),
                path: string(f, "filename"),
            },
            client,
        ),
        "q" => (Packet::Quit, client),
        "I" => {
            let signal = if f.get("signal").is_some() {
                string(f, "signal")
            } else {
                Bytes::new()
            };
            (Packet::Interrupt { signal }, client)
        }
        "O" => (
            Packet::Monitor {
                source: string(f, "source"),
            },
            client,
        ),
        "M" => (Packet::Major(uint(f, "status")), server),
        "m" => (Packet::Minor(uint(f, "status")), server),
        "T" => (Packet::Timeout, server),
        "D" => (
            Packet::Data {
                channel: uint(f, "channel"),
                data: Bytes::from(hex(f["data_hex"].as_str().unwrap())),
            },
            server,
        ),
        "X" | "E" => (
            Packet::Eof {
                channel: uint(f, "channel"),
            },
            server,
        ),
        "K" => (Packet::Keepalive, server),
        "S" => (
            Packet::Settle {
                seq: uint(f, "seq"),
            },
            client,
        ),
        "P" if f.get("mask").is_some() => (
            Packet::ProcInfoQuery {
                mask: uint(f, "mask"),
            },
            client,
        ),
        "P" if f.get("tlvs").is_some() => {
            let fields = f["tlvs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| ProcInfoField {
                    kind: u8::try_from(t[0].as_u64().unwrap()).unwrap(),
                    value: Bytes::from(hex(t[1].as_str().unwrap())),
                })
                .collect();
            (Packet::ProcInfoResponse { fields }, server)
        }
        _ => panic!("vector {name:?}: unhandled type {ty:?} with fields {f}"),
    }
}

#[test]
fn vector_file_is_the_shared_one_and_covers_every_packet_type() {
    let all = vectors();
    assert_eq!(
        all.len(),
        33,
        "the shared vector file changed: update this test"
    );
    for t in PacketType::ALL {
        for d in common::DIALECTS {
            let n = all
                .iter()
                .filter(|v| {
                    dialect(v) == d && v["type"].as_str().unwrap().as_bytes() == [t.code(d)]
                })
                .count();
            assert_eq!(n > 0, t.exists_in(d), "{t:?} in {d}: {n} vectors");
        }
    }
}

#[test]
fn every_vector_decodes_to_its_fields() {
    for v in vectors() {
        let d = dialect(&v);
        let name = v["name"].as_str().unwrap();
        let (packet, sender) = expected_packet(&v);
        let want = Frame {
            cid: uint(&v, "cid"),
            xid: uint(&v, "xid"),
            packet,
        };
        let got = decode_one(d, sender, &hex(v["hex"].as_str().unwrap()))
            .unwrap_or_else(|e| panic!("{name} ({d}): {e}"));
        assert_eq!(got, want, "{name} ({d})");
        assert_eq!(
            got.packet.packet_type().code(d),
            v["type"].as_str().unwrap().as_bytes()[0],
            "{name} ({d})"
        );
    }
}

#[test]
fn every_vector_encodes_to_its_exact_bytes() {
    for v in vectors() {
        let d = dialect(&v);
        let name = v["name"].as_str().unwrap();
        let (packet, _) = expected_packet(&v);
        let got = encode(&packet, d, uint(&v, "cid"), uint(&v, "xid"));
        assert_eq!(to_hex(&got), v["hex"].as_str().unwrap(), "{name} ({d})");
    }
}
