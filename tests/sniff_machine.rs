//! The sniff `Agent` and `Requester` driven together in memory: a quinn-style pair with a
//! simulated clock, a link that re-chunks bytes, and a fake runtime that records the
//! processes the agent asks for and completes them with hand-written script output.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tuppence::Machine;
use tuppence::sniff::cert::{CertRequest, CertTarget, StartTls};
use tuppence::sniff::nat::{NatReply, NatStatus};
use tuppence::sniff::ping::{Family, PingReply, PingRequest, PingTarget};
use tuppence::sniff::{
    Action, Agent, AgentConfig, Answer, DecodeError, Event, ProcessSpec, Request, Requester,
    RequesterConfig, Status, TaskHandle, TaskId, TaskKind, TaskOutput, TaskResult, encode_frame,
};

#[derive(Clone, Copy, Debug)]
enum Chunking {
    Whole,
    OneByte,
    Random(u64),
}

struct Pair {
    now: Instant,
    agent: Agent,
    server: Requester,
    running: BTreeMap<TaskHandle, ProcessSpec>,
    aborted: Vec<TaskHandle>,
    actions: Vec<Action>,
    chunking: Chunking,
    /// Raw answers seen on the wire, in order (for order checks).
    wire_answers: Vec<Answer>,
}

impl Pair {
    fn new(config: AgentConfig, chunking: Chunking) -> Pair {
        Pair {
            now: Instant::now(),
            agent: Agent::new(config),
            server: Requester::new(RequesterConfig::default()),
            running: BTreeMap::new(),
            aborted: Vec::new(),
            actions: Vec::new(),
            chunking,
            wire_answers: Vec::new(),
        }
    }

    fn split<'a>(&mut self, mut bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let n = match &mut self.chunking {
                Chunking::Whole => bytes.len(),
                Chunking::OneByte => 1,
                Chunking::Random(state) => {
                    *state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    1 + (*state >> 33) as usize % 23
                }
            }
            .min(bytes.len());
            let (a, b) = bytes.split_at(n);
            out.push(a);
            bytes = b;
        }
        out
    }

    /// Takes the agent's actions into the fake runtime and its answers onto the wire.
    fn drain_agent(&mut self, to_server: &mut BytesMut) {
        while let Some(a) = self.agent.poll_action() {
            match &a {
                Action::Start { handle, spec } => {
                    assert!(self.running.insert(*handle, spec.clone()).is_none());
                }
                Action::Abort { handle } => {
                    assert!(
                        self.running.remove(handle).is_some(),
                        "abort of a run not started"
                    );
                    self.aborted.push(*handle);
                }
            }
            self.actions.push(a);
        }
        self.agent.poll_transmit(self.now, to_server);
    }

    /// Raw bytes to the agent, honouring its backpressure.
    fn send_to_agent(&mut self, bytes: &[u8]) -> BytesMut {
        let mut back = BytesMut::new();
        for chunk in self.split(bytes) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = self.agent.handle_bytes(self.now, rest).unwrap();
                rest = &rest[n..];
                self.drain_agent(&mut back);
            }
        }
        self.drain_agent(&mut back);
        back
    }

    fn send_to_server(&mut self, bytes: &[u8]) {
        let mut d = tuppence::sniff::FrameDecoder::default();
        d.push(bytes);
        while let Some(m) = d.next_frame().unwrap() {
            self.wire_answers.push(Answer::decode(m).unwrap());
        }
        for chunk in self.split(bytes) {
            assert_eq!(
                self.server.handle_bytes(self.now, chunk).unwrap(),
                chunk.len()
            );
        }
    }

    /// Moves everything queued on both sides until nothing moves.
    fn drive(&mut self) {
        for _ in 0..100 {
            let mut req = BytesMut::new();
            self.server.poll_transmit(self.now, &mut req);
            let mut back = self.send_to_agent(&req);
            self.drain_agent(&mut back);
            if req.is_empty() && back.is_empty() {
                return;
            }
            self.send_to_server(&back);
        }
        panic!("did not settle");
    }

    /// Sends a hand-made request (any id, any type) straight to the agent.
    fn raw_request(&mut self, id: u32, kind: u8, params: &[u8]) {
        let mut msg = BytesMut::new();
        Request {
            id: TaskId::from(id),
            task_type: kind,
            params: Bytes::copy_from_slice(params),
        }
        .encode(&mut msg);
        let mut framed = BytesMut::new();
        encode_frame(&msg, 1 << 20, &mut framed).unwrap();
        let back = self.send_to_agent(&framed);
        self.send_to_server(&back);
    }

    fn finish(&mut self, handle: TaskHandle, output: TaskOutput) -> bool {
        let known = self.agent.task_finished(self.now, handle, output);
        if known {
            self.running.remove(&handle);
        }
        self.drive();
        known
    }

    fn handle_of(&self, id: TaskId) -> TaskHandle {
        *self
            .running
            .keys()
            .find(|h| h.id == id)
            .unwrap_or_else(|| panic!("no run for {id}"))
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    /// Jumps the clock to the agent's next timeout and fires it.
    fn advance_to_timeout(&mut self) -> bool {
        let Some(t) = self.agent.poll_timeout() else {
            return false;
        };
        self.now = self.now.max(t);
        self.agent.handle_timeout(self.now);
        self.drive();
        true
    }
}

const ALL: [Chunking; 3] = [Chunking::Whole, Chunking::OneByte, Chunking::Random(7)];

fn ping_req(hosts: &[(&'static str, u8)]) -> PingRequest {
    PingRequest {
        targets: hosts
            .iter()
            .map(|&(h, count)| PingTarget {
                family: Family::Any,
                count,
                size: 56,
                host: Bytes::from_static(h.as_bytes()),
            })
            .collect(),
    }
}

/// What the ping script would print if every host answered every echo in `seq` ms.
fn ping_output(spec: &ProcessSpec) -> Bytes {
    let quads = &spec.args[4..];
    let mut out = String::new();
    for q in quads.chunks(4) {
        let count: u32 = std::str::from_utf8(&q[1]).unwrap().parse().unwrap();
        let host = std::str::from_utf8(&q[3]).unwrap();
        if host.ends_with(".invalid") {
            out.push_str("END\n");
            continue;
        }
        out.push_str(host);
        for s in 0..count {
            out.push_str(&format!(" {s}:{s}.5"));
        }
        out.push_str(" END\n");
    }
    Bytes::from(out)
}

#[test]
fn nop_round_trip() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let id = p.server.nop().unwrap();
        p.drive();
        assert_eq!(
            p.events(),
            vec![Event::Finished {
                id,
                result: TaskResult::Nop
            }]
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.server.in_flight(), 0);
    }
}

#[test]
fn ping_task_end_to_end() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let id = p
            .server
            .ping(ping_req(&[("10.0.0.1", 3), ("nowhere.invalid", 2)]))
            .unwrap();
        p.drive();
        let h = p.handle_of(id);
        let out = ping_output(&p.running[&h]);
        assert!(p.finish(h, TaskOutput::Complete(out)));
        assert_eq!(
            p.events(),
            vec![Event::Finished {
                id,
                result: TaskResult::Ping(vec![
                    PingReply {
                        ip: Bytes::from_static(b"10.0.0.1"),
                        rtt_us: vec![Some(500), Some(1500), Some(2500)]
                    },
                    PingReply::unresolved()
                ])
            }]
        );
    }
}

#[test]
fn cert_and_nat_end_to_end() {
    let mut p = Pair::new(AgentConfig::default(), Chunking::Random(3));
    let cert = p
        .server
        .cert(CertRequest {
            targets: vec![CertTarget {
                starttls: StartTls::None,
                want_cert: false,
                want_chain: true,
                want_details: false,
                want_params: true,
                port: 443,
                host: Bytes::from_static(b"example.org"),
            }],
        })
        .unwrap();
    let nat = p.server.nat().unwrap();
    p.drive();
    let out = "-----BEGIN HOST-----\n-----CIPHER-----\nC\n-----PROTOCOL-----\nTLSv1.3\n\
        -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
        -----FINGERPRINT-----\nAB12\n-----END HOST-----\n";
    let (hc, hn) = (p.handle_of(cert), p.handle_of(nat));
    p.finish(
        hn,
        TaskOutput::Complete(Bytes::from_static(b"DIRECT\nNONE\n")),
    );
    p.finish(hc, TaskOutput::Complete(Bytes::from_static(out.as_bytes())));
    let ev = p.events();
    assert_eq!(
        ev[0],
        Event::Finished {
            id: nat,
            result: TaskResult::Nat(NatReply {
                ipv4: NatStatus::Direct,
                ipv6: NatStatus::None
            })
        }
    );
    let Event::Finished {
        id,
        result: TaskResult::Cert(r),
    } = &ev[1]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(*id, cert);
    assert_eq!(&r[0].tls.as_ref().unwrap().protocol[..], b"TLSv1.3");
    assert_eq!(&r[0].certs[0].value[..], b"AB12");
}

#[test]
fn unknown_type_answers_u_and_the_running_task_keeps_running() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let id = p.server.nat().unwrap();
        p.drive();
        let h = p.handle_of(id);
        p.raw_request(id.get(), b'Z', b"whatever");
        p.raw_request(id.get(), 0, b"");
        assert!(p.aborted.is_empty());
        assert_eq!(p.agent.running_task(id), Some(h));
        let ev = p.events();
        assert_eq!(ev.len(), 2, "{ev:?}");
        // The requester had only the NAT pending, so it attributes the `U`s to it; the raw
        // wire shows what the agent said.
        assert_eq!(
            p.wire_answers.iter().map(|a| a.status).collect::<Vec<_>>(),
            vec![Status::Unknown, Status::Unknown]
        );
        p.wire_answers.clear();
        assert!(p.agent.task_finished(
            p.now,
            h,
            TaskOutput::Complete(Bytes::from_static(b"NAT\nNAT\n"))
        ));
        p.drive();
        assert_eq!(p.wire_answers.len(), 1);
        assert_eq!(p.wire_answers[0].status, Status::Ok);
        assert_eq!(&p.wire_answers[0].data[..], b"NN");
    }
}

#[test]
fn known_type_on_a_running_id_aborts_first_then_answers_the_new_one() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let id = p.server.ping(ping_req(&[("10.0.0.1", 1)])).unwrap();
        p.drive();
        let old = p.handle_of(id);
        // A NAT request under the same id.
        p.raw_request(id.get(), b'n', b"");
        assert_eq!(p.aborted, vec![old]);
        let new = p.handle_of(id);
        assert_ne!(new, old);
        let n = p.actions.len();
        assert_eq!(p.actions[n - 2], Action::Abort { handle: old });
        assert!(matches!(p.actions[n - 1], Action::Start { handle, .. } if handle == new));
        // The old run's late completion is ignored; the new one answers after `A`.
        assert!(!p.finish(old, TaskOutput::Complete(Bytes::from_static(b"x\n"))));
        assert!(p.finish(
            new,
            TaskOutput::Complete(Bytes::from_static(b"NAT\nNONE\n"))
        ));
        let statuses: Vec<_> = p.wire_answers.iter().map(|a| (a.id, a.status)).collect();
        assert_eq!(statuses, vec![(id, Status::Aborted), (id, Status::Ok)]);
        assert_eq!(&p.wire_answers[1].data[..], b"N0");
        assert_eq!(p.agent.stats().ignored_completions, 1);
        // Known type with bad params on a running id: `A` then `F I` at once.
        p.wire_answers.clear();
        let id2 = p.server.nat().unwrap();
        p.drive();
        p.raw_request(id2.get(), b'P', b"\x00\x01Q");
        let got: Vec<_> = p
            .wire_answers
            .iter()
            .map(|a| (a.status, a.data.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![(Status::Aborted, vec![]), (Status::Failed, b"I".to_vec())]
        );
    }
}

#[test]
fn nop_cancels_a_running_task_and_its_late_completion_is_ignored() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let id = p.server.nat().unwrap();
        p.drive();
        let h = p.handle_of(id);
        p.server.cancel(id).unwrap();
        p.drive();
        assert_eq!(p.aborted, vec![h]);
        assert_eq!(
            p.events(),
            vec![
                Event::Aborted {
                    id,
                    task: TaskKind::Nat
                },
                Event::Finished {
                    id,
                    result: TaskResult::Nop
                }
            ]
        );
        assert!(!p.finish(h, TaskOutput::Complete(Bytes::from_static(b"NAT\nNAT\n"))));
        assert!(!p.finish(h, TaskOutput::SpawnFailed));
        assert!(p.events().is_empty());
        assert_eq!(p.wire_answers.len(), 2, "never two answers for one task");
        // Cancel after the task finished: its answer, then the NOP's, no `A`.
        let id = p.server.nat().unwrap();
        p.drive();
        let h = p.handle_of(id);
        p.agent.task_finished(
            p.now,
            h,
            TaskOutput::Complete(Bytes::from_static(b"NAT\nNAT\n")),
        );
        p.server.cancel(id).unwrap();
        p.drive();
        let ev = p.events();
        assert!(
            matches!(
                ev[0],
                Event::Finished {
                    result: TaskResult::Nat(_),
                    ..
                }
            ),
            "{ev:?}"
        );
        assert_eq!(
            ev[1],
            Event::Finished {
                id,
                result: TaskResult::Nop
            }
        );
    }
}

#[test]
fn a_hundred_concurrent_tasks() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let ids: Vec<TaskId> = (0..100u8)
            .map(|i| {
                let hosts: &[(&'static str, u8)] = if i % 3 == 0 {
                    &[("10.0.0.1", 1), ("x.invalid", 1)]
                } else {
                    &[("10.0.0.2", 2)]
                };
                p.server.ping(ping_req(hosts)).unwrap()
            })
            .collect();
        p.drive();
        assert_eq!(p.agent.running(), 100);
        assert_eq!(p.running.len(), 100);
        // Complete them in reverse order.
        let handles: Vec<TaskHandle> = p.running.keys().rev().copied().collect();
        for h in handles {
            let out = ping_output(&p.running[&h]);
            assert!(p.finish(h, TaskOutput::Complete(out)));
        }
        let ev = p.events();
        assert_eq!(ev.len(), 100);
        for e in &ev {
            let Event::Finished {
                id,
                result: TaskResult::Ping(r),
            } = e
            else {
                panic!("{e:?}")
            };
            let i = ids.iter().position(|x| x == id).unwrap();
            assert_eq!(r.len(), if i % 3 == 0 { 2 } else { 1 });
            assert!(r[0].rtt_us.iter().all(Option::is_some));
        }
        assert_eq!(p.agent.running(), 0);
        assert_eq!(p.server.in_flight(), 0);
    }
}

#[test]
fn over_the_task_limit_answers_f_q() {
    let mut p = Pair::new(
        AgentConfig {
            max_tasks: 2,
            ..AgentConfig::default()
        },
        Chunking::Whole,
    );
    let ids: Vec<_> = (0..3).map(|_| p.server.nat().unwrap()).collect();
    p.drive();
    assert_eq!(p.agent.running(), 2);
    assert_eq!(
        p.events(),
        vec![Event::Finished {
            id: ids[2],
            result: TaskResult::Failed(Bytes::from_static(b"Q"))
        }]
    );
    // A NOP needs no slot.
    p.server.nop().unwrap();
    p.drive();
    assert!(matches!(
        p.events()[..],
        [Event::Finished {
            result: TaskResult::Nop,
            ..
        }]
    ));
}

#[test]
fn timeouts_abort_and_answer_t() {
    let mut p = Pair::new(
        AgentConfig {
            default_timeout: Some(Duration::from_secs(30)),
            ..AgentConfig::default()
        },
        Chunking::Random(11),
    );
    let start = p.now;
    let a = p.server.nat().unwrap();
    p.drive();
    p.now += Duration::from_secs(10);
    let b = p.server.ping(ping_req(&[("10.0.0.1", 1)])).unwrap();
    p.drive();
    let hb = p.handle_of(b);
    assert!(p.advance_to_timeout());
    assert_eq!(p.now, start + Duration::from_secs(30));
    assert_eq!(
        p.events(),
        vec![Event::Finished {
            id: a,
            result: TaskResult::Failed(Bytes::from_static(b"T"))
        }]
    );
    assert!(p.finish(hb, TaskOutput::Complete(ping_output(&p.running[&hb]))));
    assert!(matches!(
        p.events()[..],
        [Event::Finished {
            result: TaskResult::Ping(_),
            ..
        }]
    ));
    assert!(!p.advance_to_timeout(), "the finished task's timer is gone");
}

#[test]
fn malformed_frames_are_dropped_and_the_agent_keeps_working() {
    for c in ALL {
        let mut p = Pair::new(AgentConfig::default(), c);
        let mut wire = BytesMut::new();
        for junk in [&b""[..], b"\x00", b"\x00\x00\x00\x09", b"\x01\x02\x03\x04"] {
            encode_frame(junk, 100, &mut wire).unwrap();
            encode_frame(b"\x00\x00\x00\x01N", 100, &mut wire).unwrap();
        }
        let back = p.send_to_agent(&wire);
        p.send_to_server(&back);
        assert_eq!(p.wire_answers.len(), 4);
        let errors: Vec<_> = std::iter::from_fn(|| p.agent.poll_error()).collect();
        assert_eq!(
            errors,
            [0, 1, 4, 4].map(|len| DecodeError::MessageTooShort { len })
        );
        assert_eq!(p.agent.stats().malformed, 4);
        // An over-long frame is fatal and sticky.
        let huge = (tuppence::sniff::DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes();
        let e = p.agent.handle_bytes(p.now, &huge).unwrap_err();
        assert!(e.is_fatal());
        assert_eq!(p.agent.handle_bytes(p.now, b"\x00").unwrap_err(), e);
        // The unframed entry point rejects short messages with a typed error.
        assert!(
            p.agent
                .handle_request(p.now, Bytes::from_static(b"\x00\x00"))
                .is_err()
        );
    }
}

#[test]
fn failures_reach_the_requester_with_their_codes() {
    let mut p = Pair::new(AgentConfig::default(), Chunking::OneByte);
    let ping = p.server.ping(ping_req(&[("10.0.0.1", 1)])).unwrap();
    let nat = p.server.nat().unwrap();
    let bad = p.server.request(b'P', Bytes::from_static(b"\x00")).unwrap();
    p.drive();
    let (hp, hn) = (p.handle_of(ping), p.handle_of(nat));
    p.finish(hp, TaskOutput::ReadFailed);
    p.finish(hn, TaskOutput::SpawnFailed);
    let codes: Vec<_> = p
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Finished { id, result } => (id, result.failure_code()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![(bad, Some(b'I')), (ping, Some(b'P')), (nat, Some(b'S'))]
    );
}
