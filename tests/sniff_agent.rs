//! Unit-level checks of the sniff `Agent` machine alone (limits, timeouts, backpressure,
//! registration); `sniff_machine.rs` pairs it with a `Requester`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tuppence::Machine;
use tuppence::Transmit;
use tuppence::sniff::{
    Action, Agent, AgentConfig, Outcome, Request, RequestError, TaskId, TaskOutput, TaskPlan,
    TaskType, encode_frame,
};

fn req(id: u32, kind: u8, params: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    Request {
        id: TaskId::from(id),
        task_type: kind,
        params: Bytes::copy_from_slice(params),
    }
    .encode(&mut b);
    b.freeze()
}

const NAT: &[u8] = b"";

fn answers(a: &mut Agent) -> Vec<(u32, u8, Vec<u8>)> {
    std::iter::from_fn(|| a.poll_answer())
        .map(|a| (a.id.get(), a.status.byte(), a.data.to_vec()))
        .collect()
}

#[test]
fn nop_answers_at_once() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig::default());
    a.handle_request(now, req(1, b'N', b"")).unwrap();
    assert_eq!(a.poll_action(), None);
    assert_eq!(answers(&mut a), vec![(1, b'O', vec![])]);
}

#[test]
fn withdrawn_start_needs_no_abort() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig::default());
    a.handle_request(now, req(5, b'n', NAT)).unwrap();
    a.handle_request(now, req(5, b'N', b"")).unwrap();
    assert_eq!(
        a.poll_action(),
        None,
        "the Start was still queued: withdrawn"
    );
    assert_eq!(answers(&mut a), vec![(5, b'A', vec![]), (5, b'O', vec![])]);
}

#[test]
fn timeout_aborts_and_answers_t() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig {
        default_timeout: Some(Duration::from_secs(5)),
        ..AgentConfig::default()
    });
    a.handle_request(now, req(2, b'n', NAT)).unwrap();
    let Some(Action::Start { handle, spec }) = a.poll_action() else {
        panic!()
    };
    assert_eq!(spec.timeout, Some(Duration::from_secs(5)));
    assert_eq!(a.poll_timeout(), Some(now + Duration::from_secs(5)));
    a.handle_timeout(now + Duration::from_secs(4));
    assert_eq!(a.poll_action(), None);
    a.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(a.poll_action(), Some(Action::Abort { handle }));
    assert_eq!(answers(&mut a), vec![(2, b'F', b"T".to_vec())]);
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(now + Duration::from_secs(6));
    assert!(!a.task_finished(now, handle, TaskOutput::Complete(Bytes::new())));
    assert_eq!(a.stats().timed_out, 1);
}

#[test]
fn huge_timeouts_do_not_overflow() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig {
        default_timeout: Some(Duration::MAX),
        ..AgentConfig::default()
    });
    a.handle_request(now, req(2, b'n', NAT)).unwrap();
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(a.running(), 1);
}

#[test]
fn output_over_the_cap_is_l() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig {
        output_cap: 4,
        ..AgentConfig::default()
    });
    a.handle_request(now, req(2, b'n', NAT)).unwrap();
    let Some(Action::Start { handle, spec }) = a.poll_action() else {
        panic!()
    };
    assert_eq!(spec.output_cap, 4);
    assert!(a.task_finished(
        now,
        handle,
        TaskOutput::Complete(Bytes::from_static(b"NAT\nNAT\n"))
    ));
    assert_eq!(answers(&mut a), vec![(2, b'F', b"L".to_vec())]);
}

#[test]
fn answers_too_large_for_a_frame_become_l() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig {
        max_frame: 40,
        ..AgentConfig::default()
    });
    // A ping of 255 lost replies makes 4 + 7 + 1020 bytes of data.
    let p = b"\x00\x014\xff\x00\x38\x00\x00\x00\x01h";
    a.handle_request(now, req(3, b'P', p)).unwrap();
    let Some(Action::Start { handle, .. }) = a.poll_action() else {
        panic!()
    };
    a.task_finished(
        now,
        handle,
        TaskOutput::Complete(Bytes::from_static(b"1.2.3.4 END\n")),
    );
    assert_eq!(answers(&mut a), vec![(3, b'F', b"L".to_vec())]);
}

#[test]
fn backpressure_stops_consuming() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig {
        max_queued_bytes: 20,
        ..AgentConfig::default()
    });
    let mut wire = BytesMut::new();
    for id in 0..10 {
        let r = req(id, b'N', b"");
        encode_frame(&r, 100, &mut wire).unwrap();
    }
    let used = a.handle_bytes(now, &wire).unwrap();
    assert!(used < wire.len());
    assert!(!a.wants_input());
    assert_eq!(
        a.handle_request(now, req(99, b'N', b"")),
        Err(RequestError::QueueFull)
    );
    let mut out = BytesMut::new();
    let mut total = answers(&mut a).len();
    let mut rest = &wire[used..];
    while !rest.is_empty() {
        let n = a.handle_bytes(now, rest).unwrap();
        rest = &rest[n..];
        total += a.poll_transmit(now, &mut out) / 9;
    }
    assert_eq!(total, 10);
}

#[test]
fn register_replaces_a_type() {
    #[derive(Debug)]
    struct Echo;
    impl TaskType for Echo {
        fn type_byte(&self) -> u8 {
            b'N'
        }
        fn start(&self, params: Bytes) -> TaskPlan {
            TaskPlan::Answer(Outcome::success(params))
        }
    }
    let now = Instant::now();
    let mut a = Agent::without_task_types(AgentConfig::default());
    a.handle_request(now, req(1, b'N', b"x")).unwrap();
    assert!(a.register(Box::new(Echo)).is_none());
    a.handle_request(now, req(1, b'N', b"x")).unwrap();
    assert_eq!(
        answers(&mut a),
        vec![(1, b'U', vec![]), (1, b'O', b"x".to_vec())]
    );
    let mut b = Agent::new(AgentConfig::default());
    assert!(b.register(Box::new(Echo)).is_some());
}

#[test]
fn time_never_goes_backwards() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig {
        default_timeout: Some(Duration::from_secs(1)),
        ..AgentConfig::default()
    });
    a.handle_timeout(now + Duration::from_secs(10));
    a.handle_request(now, req(1, b'n', NAT)).unwrap();
    assert_eq!(a.poll_timeout(), Some(now + Duration::from_secs(11)));
}

/// A peer that floods requests with tiny answers (`N`) and reads none is stopped by what the
/// answers take in memory, not by their 9 bytes on the wire.
#[test]
fn an_unread_nop_flood_is_bounded_by_memory() {
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig::default());
    let mut wire = BytesMut::new();
    for id in 0..1_000_000u32 {
        encode_frame(&req(id, b'N', b""), 100, &mut wire).unwrap();
    }
    let mut taken = 0;
    loop {
        let n = a.handle_bytes(now, &wire[taken..]).unwrap();
        if n == 0 {
            break;
        }
        taken += n;
    }
    assert!(!a.wants_input());
    let limit = tuppence::sniff::DEFAULT_MAX_QUEUED_BYTES;
    let each = 9 + tuppence::sniff::ANSWER_OVERHEAD;
    let queued = a.stats().answers as usize;
    assert!(
        queued * each <= limit + each,
        "{queued} answers queued, {} bytes with their overhead (limit {limit})",
        queued * each
    );
    assert!(a.queued_bytes() <= limit + each);
    // Reading them lets the flood go on.
    let mut out = BytesMut::new();
    assert_eq!(a.poll_transmit(now, &mut out), queued * 9);
    assert!(a.wants_input());
}

/// The agent as an I/O loop drives it, through the core's `Machine` surface: the answers
/// it transmits (flat or as segments) are the same bytes, it counts them as buffered until
/// taken, it takes no request after the requester closed its side, and a length prefix
/// over the frame limit is its sticky error.
#[test]
fn the_machine_surface() {
    let now = Instant::now();
    let framed = |ids: std::ops::Range<u32>| {
        let mut wire = BytesMut::new();
        for id in ids {
            encode_frame(&req(id, b'N', b""), 1 << 20, &mut wire).unwrap();
        }
        wire
    };
    let mut flat = Agent::new(AgentConfig::default());
    let mut segs = Agent::new(AgentConfig::default());
    let wire = framed(1..4);
    assert_eq!(flat.handle_bytes(now, &wire), Ok(wire.len()));
    assert_eq!(segs.handle_bytes(now, &wire), Ok(wire.len()));
    assert_eq!(flat.transmit_buffered(), segs.transmit_buffered());
    assert!(segs.transmit_buffered() > 0);
    let mut out = BytesMut::new();
    let n = flat.poll_transmit(now, &mut out);
    let mut tx = Transmit::new();
    assert_eq!(segs.poll_transmit_segments(now, &mut tx), n);
    let joined: Vec<u8> = tx.segments().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(joined, &out[..]);
    assert_eq!((flat.transmit_buffered(), segs.transmit_buffered()), (0, 0));

    // The requester closed its side: no more requests are taken.
    assert!(flat.accepts_input());
    flat.handle_eof(now);
    assert!(!flat.accepts_input());
    assert_eq!(flat.handle_bytes(now, &framed(9..10)), Ok(0));
    assert_eq!(flat.error(), None);

    // A length prefix over the limit: the stream is out of step for good.
    let mut bad = Agent::new(AgentConfig {
        max_frame: 64,
        ..AgentConfig::default()
    });
    let e = bad.handle_bytes(now, &[0, 0, 1, 0, b'x']).unwrap_err();
    assert!(e.is_fatal());
    assert_eq!(bad.error(), Some(&e));
    assert!(!bad.accepts_input());
    assert_eq!(bad.handle_bytes(now, b"more"), Err(e));
}
