//! Every message of `tests/vectors/sniff.json` (encoded by an independent implementation)
//! decodes into the fields the vector lists and encodes back byte for byte, framed and not.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tuppence::sniff::cert::{CertDetails, CertEntry, CertReply, CertRequest, TlsParams};
use tuppence::sniff::nat::{NatReply, NatStatus};
use tuppence::sniff::ping::{Family, PingReply, PingRequest};
use tuppence::sniff::{
    Answer, DEFAULT_MAX_FRAME, FrameDecoder, Request, Status, TaskId, encode_frame,
};

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn byte(v: &Value) -> u8 {
    let s = v.as_str().unwrap();
    assert_eq!(s.len(), 1, "{s}");
    s.as_bytes()[0]
}

fn string(v: &Value) -> Bytes {
    Bytes::copy_from_slice(v.as_str().unwrap().as_bytes())
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// The requests of earlier vectors, by id: answers are decoded with them.
#[derive(Default)]
struct Asked {
    ping: HashMap<TaskId, PingRequest>,
    cert: HashMap<TaskId, CertRequest>,
}

fn check_request(name: &str, f: &Value, msg: &[u8], asked: &mut Asked) {
    let r = Request::decode(Bytes::copy_from_slice(msg)).unwrap();
    assert_eq!(r.id, TaskId::from(num(&f["id"]) as u32), "{name}");
    assert_eq!(r.task_type, byte(&f["type"]), "{name}");
    let mut params = BytesMut::new();
    match r.task_type {
        b'N' => assert!(r.params.is_empty()),
        b'P' => {
            let p = PingRequest::decode(r.params.clone()).unwrap();
            let hosts = f["hosts"].as_array().unwrap();
            assert_eq!(p.targets.len(), hosts.len(), "{name}");
            for (t, h) in p.targets.iter().zip(hosts) {
                assert_eq!(Some(t.family), Family::from_byte(byte(&h["proto"])));
                assert_eq!(u64::from(t.count), num(&h["count"]));
                assert_eq!(u64::from(t.size), num(&h["size"]));
                assert_eq!(t.host, string(&h["host"]));
            }
            p.encode(&mut params).unwrap();
            asked.ping.insert(r.id, p);
        }
        b'C' => {
            let c = CertRequest::decode(r.params.clone()).unwrap();
            let services = f["services"].as_array().unwrap();
            assert_eq!(c.targets.len(), services.len(), "{name}");
            for (t, s) in c.targets.iter().zip(services) {
                assert_eq!(u64::from(t.flags()), num(&s["flags"]));
                assert_eq!(u64::from(t.port), num(&s["port"]));
                assert_eq!(t.host, string(&s["host"]));
            }
            c.encode(&mut params).unwrap();
            asked.cert.insert(r.id, c);
        }
        other => panic!("{name}: no check for type {other}"),
    }
    if r.task_type != b'N' {
        assert_eq!(params.freeze(), r.params, "{name}: params re-encode");
    }
    let mut out = BytesMut::new();
    r.encode(&mut out);
    assert_eq!(&out[..], msg, "{name}: request re-encode");
}

fn check_answer(name: &str, f: &Value, msg: &[u8], asked: &Asked) {
    let a = Answer::decode(Bytes::copy_from_slice(msg)).unwrap();
    assert_eq!(a.id, TaskId::from(num(&f["id"]) as u32), "{name}");
    assert_eq!(
        Some(a.status),
        Status::from_byte(byte(&f["status"])),
        "{name}"
    );
    if let Some(d) = f.get("data_hex") {
        assert_eq!(a.data.to_vec(), hex(d.as_str().unwrap()), "{name}");
    }
    if let Some(code) = f.get("code") {
        assert_eq!(a.status, Status::Failed);
        assert_eq!(a.data.to_vec(), vec![byte(code)], "{name}");
    }
    let mut data = BytesMut::new();
    if let Some(hosts) = f.get("hosts") {
        let req = &asked.ping[&a.id];
        let want: Vec<PingReply> = hosts
            .as_array()
            .unwrap()
            .iter()
            .map(|h| PingReply {
                ip: string(&h["ip"]),
                rtt_us: h
                    .get("rtt_us")
                    .map(|v| {
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|t| t.as_u64().map(|t| t as u32))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        assert_eq!(req.decode_answer(a.data.clone()).unwrap(), want, "{name}");
        req.encode_answer(&want, &mut data).unwrap();
        assert_eq!(data.freeze(), a.data, "{name}: data re-encode");
    } else if let Some(services) = f.get("services") {
        let req = &asked.cert[&a.id];
        let want: Vec<CertReply> = services
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let certs: Vec<CertEntry> = s["certs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| CertEntry {
                        value: string(&c["cert"]),
                        details: c.get("names").map(|n| CertDetails {
                            names: string(n),
                            expiry: string(&c["expiry"]),
                        }),
                    })
                    .collect();
                assert_eq!(certs.len() as u64, num(&s["count"]));
                CertReply {
                    tls: s.get("cipher").map(|c| TlsParams {
                        cipher: string(c),
                        protocol: string(&s["protocol"]),
                    }),
                    certs,
                }
            })
            .collect();
        assert_eq!(req.decode_answer(a.data.clone()).unwrap(), want, "{name}");
        req.encode_answer(&want, &mut data).unwrap();
        assert_eq!(data.freeze(), a.data, "{name}: data re-encode");
    } else if let Some(v4) = f.get("ipv4") {
        let want = NatReply {
            ipv4: NatStatus::from_byte(byte(v4)).unwrap(),
            ipv6: NatStatus::from_byte(byte(&f["ipv6"])).unwrap(),
        };
        assert_eq!(NatReply::decode(&a.data), Ok(want), "{name}");
        assert_eq!(&want.encode()[..], &a.data[..]);
    }
    let mut out = BytesMut::new();
    a.encode(&mut out);
    assert_eq!(&out[..], msg, "{name}: answer re-encode");
}

#[test]
fn every_vector_decodes_and_re_encodes_byte_exact() {
    let text = include_str!("vectors/sniff.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 10);
    let mut asked = Asked::default();
    let mut stream = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let msg = hex(v["message_hex"].as_str().unwrap());
        let framed = hex(v["framed_hex"].as_str().unwrap());
        match v["direction"].as_str().unwrap() {
            "request" => check_request(name, &v["fields"], &msg, &mut asked),
            "answer" => check_answer(name, &v["fields"], &msg, &asked),
            other => panic!("{name}: direction {other}"),
        }
        let mut out = BytesMut::new();
        encode_frame(&msg, DEFAULT_MAX_FRAME, &mut out).unwrap();
        assert_eq!(&out[..], &framed[..], "{name}: framing");
        stream.extend_from_slice(&framed);
    }
    // The whole stream, one byte at a time, gives back every message.
    let mut d = FrameDecoder::default();
    let mut got = 0;
    for b in &stream {
        d.push(std::slice::from_ref(b));
        while let Some(m) = d.next_frame().unwrap() {
            assert_eq!(m, hex(vectors[got]["message_hex"].as_str().unwrap()));
            got += 1;
        }
    }
    assert_eq!(got, vectors.len());
}
