//! Property tests: every sniff message and every task type's parameters and answers
//! round-trip, framing is independent of chunking, script output renders and parses back,
//! and the agent survives arbitrary input.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tuppence::Machine;
use tuppence::sniff::cert::{
    CertDetails, CertEntry, CertReply, CertRequest, CertTarget, StartTls, TlsParams,
};
use tuppence::sniff::nat::{NatReply, NatStatus};
use tuppence::sniff::ping::{Family, LOST, PingReply, PingRequest, PingTarget};
use tuppence::sniff::{
    Action, Agent, AgentConfig, Answer, FrameDecoder, Request, Status, TaskId, TaskOutput,
    encode_frame,
};

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Text without NUL, newline or the section marker: what names, hosts and values look like.
fn text(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(prop::sample::select(b"abcXYZ09.:/=+ _".to_vec()), 0..max)
        .prop_map(Bytes::from)
}

fn word(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(prop::sample::select(b"abcXYZ09.:/=+_".to_vec()), 1..max)
        .prop_map(Bytes::from)
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(vec![
        Status::Unknown,
        Status::Aborted,
        Status::Ok,
        Status::Failed,
    ])
}

fn family() -> impl Strategy<Value = Family> {
    prop::sample::select(vec![Family::V4, Family::V6, Family::Any])
}

fn ping_request() -> impl Strategy<Value = PingRequest> {
    prop::collection::vec(
        (family(), 1u8..=255, any::<u16>(), text(20)).prop_map(|(family, count, size, host)| {
            PingTarget {
                family,
                count,
                size,
                host,
            }
        }),
        0..6,
    )
    .prop_map(|targets| PingRequest { targets })
}

/// A request with replies that fit it.
fn ping_with_replies() -> impl Strategy<Value = (PingRequest, Vec<PingReply>)> {
    ping_request().prop_flat_map(|req| {
        let replies: Vec<_> = req
            .targets
            .iter()
            .map(|t| {
                prop_oneof![
                    Just(PingReply::unresolved()),
                    (
                        word(16),
                        prop::collection::vec(prop::option::of(0u32..LOST), usize::from(t.count))
                    )
                        .prop_map(|(ip, rtt_us)| PingReply { ip, rtt_us })
                ]
            })
            .collect();
        (Just(req), replies)
    })
}

fn cert_target() -> impl Strategy<Value = CertTarget> {
    (0u8..6, any::<[bool; 4]>(), any::<u16>(), text(20)).prop_map(
        |(st, [c, ch, d, p], port, host)| CertTarget {
            starttls: StartTls::from_bits(st).unwrap(),
            want_cert: c,
            want_chain: ch,
            want_details: d,
            want_params: p,
            port,
            host,
        },
    )
}

/// A certificate request with replies that fit its flags.
fn cert_with_replies() -> impl Strategy<Value = (CertRequest, Vec<CertReply>)> {
    prop::collection::vec(cert_target(), 0..4).prop_flat_map(|targets| {
        let replies: Vec<_> = targets
            .iter()
            .map(|t| {
                let max = if t.want_chain { 4 } else { 1 };
                let details = t.want_details;
                let params = t.want_params;
                (
                    prop::collection::vec(
                        (word(30), text(30), text(30)).prop_map(move |(value, names, expiry)| {
                            CertEntry {
                                value,
                                details: details.then_some(CertDetails { names, expiry }),
                            }
                        }),
                        0..=max,
                    ),
                    text(20),
                    text(10),
                )
                    .prop_map(move |(certs, cipher, protocol)| CertReply {
                        tls: (params && !certs.is_empty())
                            .then_some(TlsParams { cipher, protocol }),
                        certs,
                    })
            })
            .collect();
        (Just(CertRequest { targets }), replies)
    })
}

fn nat_status() -> impl Strategy<Value = NatStatus> {
    prop::sample::select(vec![NatStatus::None, NatStatus::Nat, NatStatus::Direct])
}

fn frame_all(msgs: &[Bytes]) -> BytesMut {
    let mut wire = BytesMut::new();
    for m in msgs {
        encode_frame(m, 1 << 20, &mut wire).unwrap();
    }
    wire
}

fn deframe(wire: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut d = FrameDecoder::new(1 << 20);
    let mut out = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    for p in points {
        d.push(&wire[at..p]);
        at = p;
        while let Some(m) = d.next_frame().unwrap() {
            out.push(m);
        }
    }
    assert_eq!(d.buffered(), 0);
    out
}

fn ms_text(us: u32) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

proptest! {
    #[test]
    fn requests_round_trip_under_any_chunking(
        reqs in prop::collection::vec((any::<u32>(), any::<u8>(), bytes(40)), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let reqs: Vec<Request> = reqs.into_iter().map(|(id, task_type, params)| Request {
            id: TaskId::from(id), task_type, params,
        }).collect();
        let msgs: Vec<Bytes> = reqs.iter().map(|r| {
            let mut b = BytesMut::new();
            r.encode(&mut b);
            prop_assert_eq!(b.len(), r.encoded_len());
            Ok(b.freeze())
        }).collect::<Result<_, _>>()?;
        let got = deframe(&frame_all(&msgs), &cuts);
        let back: Vec<Request> = got.into_iter().map(|m| Request::decode(m).unwrap()).collect();
        prop_assert_eq!(back, reqs);
    }

    #[test]
    fn answers_round_trip(id in any::<u32>(), status in status(), data in bytes(40)) {
        let a = Answer {
            id: TaskId::from(id),
            status,
            data: if status.has_data() { data } else { Bytes::new() },
        };
        let mut b = BytesMut::new();
        a.encode(&mut b);
        prop_assert_eq!(Answer::decode(b.freeze()).unwrap(), a);
    }

    #[test]
    fn ping_params_and_answers_round_trip((req, replies) in ping_with_replies()) {
        let mut p = BytesMut::new();
        req.encode(&mut p).unwrap();
        prop_assert_eq!(&PingRequest::decode(p.freeze()).unwrap(), &req);
        let mut d = BytesMut::new();
        req.encode_answer(&replies, &mut d).unwrap();
        prop_assert_eq!(req.decode_answer(d.freeze()).unwrap(), replies);
    }

    #[test]
    fn ping_output_renders_and_parses((req, replies) in ping_with_replies(), dup in any::<bool>()) {
        let mut out = String::new();
        for r in &replies {
            if !r.is_resolved() {
                out.push_str("END\n");
                continue;
            }
            out.push_str(std::str::from_utf8(&r.ip).unwrap());
            let answered: Vec<_> = r.rtt_us.iter().enumerate()
                .filter_map(|(s, v)| v.map(|v| (s, v))).collect();
            // Out of order (reversed) and, if asked, with a duplicate overwritten later.
            let mut tokens: Vec<_> = answered.iter().rev().copied().collect();
            if dup
                && answered.len() < r.rtt_us.len()
                && let Some(&(s, v)) = answered.first()
            {
                tokens.insert(0, (s, v.wrapping_add(1) % LOST));
            }
            for (s, v) in tokens {
                out.push_str(&format!(" {s}:{}", ms_text(v)));
            }
            out.push_str(" END\n");
        }
        prop_assert_eq!(req.parse_output(&Bytes::from(out)).unwrap(), replies);
    }

    #[test]
    fn cert_params_and_answers_round_trip((req, replies) in cert_with_replies()) {
        let mut p = BytesMut::new();
        req.encode(&mut p).unwrap();
        prop_assert_eq!(&CertRequest::decode(p.freeze()).unwrap(), &req);
        let mut d = BytesMut::new();
        req.encode_answer(&replies, &mut d).unwrap();
        prop_assert_eq!(req.decode_answer(d.freeze()).unwrap(), replies);
    }

    #[test]
    fn cert_output_renders_and_parses((req, replies) in cert_with_replies()) {
        // Render what the script prints; fields the flags do not ask for get filler.
        let mut out = String::new();
        let s = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap().trim().to_string();
        let mut want = Vec::new();
        for (t, r) in req.targets.iter().zip(&replies) {
            out.push_str("-----BEGIN HOST-----\n");
            if let Some(tls) = &r.tls {
                out.push_str(&format!("-----CIPHER-----\n{}\n-----PROTOCOL-----\n{}\n", s(&tls.cipher), s(&tls.protocol)));
            }
            let mut certs = Vec::new();
            for c in &r.certs {
                let v = s(&c.value);
                let (body, fp) = if t.want_cert { (v.clone(), "F00".to_string()) } else { ("MIIB".to_string(), v.clone()) };
                out.push_str(&format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n-----FINGERPRINT-----\n{fp}\n"));
                let details = c.details.as_ref().map(|d| CertDetails {
                    names: Bytes::from(s(&d.names)),
                    expiry: Bytes::from(s(&d.expiry)),
                });
                if let Some(d) = &details {
                    out.push_str(&format!("-----NAME-----\n{}\n-----EXPIRY-----\n{}\n", s(&d.names), s(&d.expiry)));
                }
                certs.push(CertEntry { value: Bytes::from(v), details });
            }
            out.push_str("-----END HOST-----\n");
            want.push(CertReply {
                tls: r.tls.as_ref().map(|t| TlsParams {
                    cipher: Bytes::from(s(&t.cipher)),
                    protocol: Bytes::from(s(&t.protocol)),
                }),
                certs,
            });
        }
        prop_assert_eq!(req.parse_output(&Bytes::from(out)).unwrap(), want);
    }

    #[test]
    fn nat_round_trips(v4 in nat_status(), v6 in nat_status(), blank in 0usize..3) {
        let r = NatReply { ipv4: v4, ipv6: v6 };
        prop_assert_eq!(NatReply::decode(&r.encode()).unwrap(), r);
        let word = |s: NatStatus| match s {
            NatStatus::None => "NONE",
            NatStatus::Nat => "NAT",
            NatStatus::Direct => "DIRECT",
        };
        let out = format!("{}{}\n{}{}\n", "\n".repeat(blank), word(v4), "\n".repeat(blank), word(v6));
        prop_assert_eq!(NatReply::parse_output(out.as_bytes()), Ok(r));
    }

    #[test]
    fn agent_survives_arbitrary_input(
        chunks in prop::collection::vec(bytes(64), 0..12),
        completions in prop::collection::vec((any::<u8>(), bytes(64)), 0..8),
    ) {
        let now = Instant::now();
        let mut a = Agent::new(AgentConfig {
            max_frame: 256,
            max_tasks: 4,
            default_timeout: Some(Duration::from_secs(1)),
            ..AgentConfig::default()
        });
        let mut started = Vec::new();
        let mut out = BytesMut::new();
        for (i, c) in chunks.iter().enumerate() {
            let t = now + Duration::from_millis(300 * i as u64);
            let mut rest = &c[..];
            while !rest.is_empty() {
                match a.handle_bytes(t, rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) => { prop_assert!(e.is_fatal()); break; }
                }
                while let Some(act) = a.poll_action() {
                    if let Action::Start { handle, .. } = act { started.push(handle); }
                }
                a.poll_transmit(t, &mut out);
            }
            a.handle_timeout(t);
        }
        for (k, data) in completions {
            if let Some(&h) = started.get(usize::from(k) % started.len().max(1)) {
                a.task_finished(now, h, TaskOutput::Complete(data));
            }
        }
        prop_assert!(a.running() <= 4);
        a.poll_transmit(now, &mut out);
        let mut d = FrameDecoder::new(256);
        d.push(&out);
        while let Some(m) = d.next_frame().unwrap() {
            Answer::decode(m).unwrap();
        }
    }
}
