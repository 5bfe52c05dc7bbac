//! The sniff Agent machine fed arbitrary frames, raw bytes, completions (of real, aborted and
//! made-up runs) and time steps: no panic, bounded queues and task table, every answer a
//! valid frame, and a completion is accepted exactly when its run is still live.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tuppence::Machine;
use tuppence::sniff::{
    Action, Agent, AgentConfig, Answer, FrameDecoder, Request, TaskHandle, TaskId, TaskOutput,
    encode_frame,
};

#[derive(Arbitrary, Debug)]
enum Ending {
    Complete(Vec<u8>),
    SpawnFailed,
    ReadFailed,
    TooLarge,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A well-framed request; the type is picked among the built-ins and a few others.
    Request {
        id: u8,
        kind: u8,
        params: Vec<u8>,
    },
    /// Raw bytes on the stream (may break framing for good).
    Bytes(Vec<u8>),
    /// An unframed message.
    Message(Vec<u8>),
    /// Completion of the n-th run ever started (live, aborted or finished).
    Finish {
        run: u8,
        ending: Ending,
    },
    /// Completion for a handle the agent never issued.
    Bogus {
        id: u8,
        run: u64,
    },
    Advance(u16),
    Timeout,
    /// Drain outputs (otherwise they pile up and backpressure kicks in).
    Drain,
}

const CFG: AgentConfig = AgentConfig {
    max_frame: 512,
    max_tasks: 6,
    output_cap: 256,
    default_timeout: Some(Duration::from_millis(5000)),
    max_queued_bytes: 2048,
    max_queued_actions: 16,
};

struct World {
    agent: Agent,
    now: Instant,
    started: Vec<TaskHandle>,
    live: BTreeSet<TaskHandle>,
    out: BytesMut,
}

impl World {
    fn drain(&mut self) {
        while let Some(a) = self.agent.poll_action() {
            match a {
                Action::Start { handle, spec } => {
                    assert!(spec.output_cap <= CFG.output_cap);
                    assert!(self.live.insert(handle), "run started twice");
                    self.started.push(handle);
                }
                Action::Abort { handle } => {
                    assert!(self.live.remove(&handle), "abort of a run not live");
                }
            }
        }
        self.agent.poll_transmit(self.now, &mut self.out);
        let mut d = FrameDecoder::new(CFG.max_frame);
        d.push(&self.out);
        while let Some(m) = d.next_frame().unwrap() {
            Answer::decode(m).unwrap();
        }
        assert_eq!(d.buffered(), 0);
        self.out.clear();
        while self.agent.poll_error().is_some() {}
        // Drained: the runtime's view and the agent's table agree.
        assert_eq!(self.agent.running(), self.live.len());
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        for _ in 0..10_000 {
            if rest.is_empty() {
                return;
            }
            match self.agent.handle_bytes(self.now, rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) => {
                    assert!(e.is_fatal());
                    return;
                }
            }
            self.drain();
        }
        panic!("no progress");
    }

    fn check(&self) {
        assert!(self.agent.running() <= CFG.max_tasks);
        // Past the bound, one request's answers and the completions of running tasks may
        // still be queued, each with its queue overhead.
        let each = CFG.max_frame + 4 + tuppence::sniff::ANSWER_OVERHEAD;
        let bound = CFG.max_queued_bytes + (CFG.max_tasks + 4) * each;
        assert!(self.agent.queued_bytes() <= bound, "answer queue unbounded");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World {
        agent: Agent::new(CFG),
        now: Instant::now(),
        started: Vec::new(),
        live: BTreeSet::new(),
        out: BytesMut::new(),
    };
    for op in ops {
        match op {
            Op::Request { id, kind, params } => {
                let kind = [b'N', b'P', b'C', b'n', b'Z', 0][usize::from(kind) % 6];
                let mut msg = BytesMut::new();
                Request {
                    id: TaskId::from(u32::from(id % 8)),
                    task_type: kind,
                    params: Bytes::from(params),
                }
                .encode(&mut msg);
                let mut framed = BytesMut::new();
                if encode_frame(&msg, CFG.max_frame, &mut framed).is_ok() {
                    w.feed(&framed);
                }
            }
            Op::Bytes(b) => w.feed(&b),
            Op::Message(m) => {
                let _ = w.agent.handle_request(w.now, Bytes::from(m));
            }
            Op::Finish { run, ending } => {
                w.drain();
                if let Some(&h) = w.started.get(usize::from(run) % w.started.len().max(1)) {
                    let output = match ending {
                        Ending::Complete(d) => TaskOutput::Complete(Bytes::from(d)),
                        Ending::SpawnFailed => TaskOutput::SpawnFailed,
                        Ending::ReadFailed => TaskOutput::ReadFailed,
                        Ending::TooLarge => TaskOutput::OutputTooLarge,
                    };
                    let live = w.live.contains(&h);
                    assert_eq!(w.agent.task_finished(w.now, h, output), live);
                    w.live.remove(&h);
                }
            }
            Op::Bogus { id, run } => {
                let h = TaskHandle {
                    id: TaskId::from(u32::from(id)),
                    run: run | (1 << 63),
                };
                assert!(!w.agent.task_finished(w.now, h, TaskOutput::ReadFailed));
            }
            Op::Advance(ms) => w.now += Duration::from_millis(u64::from(ms)),
            Op::Timeout => {
                w.agent.handle_timeout(w.now);
                if let Some(t) = w.agent.poll_timeout() {
                    assert!(t > w.now);
                }
            }
            Op::Drain => w.drain(),
        }
        w.check();
    }
    w.drain();
});
