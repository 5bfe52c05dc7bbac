//! Model test: random sequences of client intents give the same events, on both sides,
//! whether the link delivers whole buffers with roomy queues, or random pieces (or single
//! bytes) with event queues of one to three entries.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::pair::{Chunking, Pair, ScriptedApp};
use proptest::prelude::*;
use tuppence::link::{
    ClientConfig, ClientEvent, Command, Limits, Outcome, ServerConfig, ServerEvent, Signal,
};
use tuppence::wire::Dialect;

#[derive(Clone, Debug)]
enum End {
    Exit(u32),
    Kill(u32),
    Fail(u32),
    Timeout,
}

#[derive(Clone, Debug)]
enum Intent {
    /// A command printing on stdout/stderr, then ending.
    Run {
        outputs: Vec<(bool, String)>,
        end: End,
        tty: bool,
    },
    /// `cat`: stdin pieces echoed back, then stdin EOF, then exit.
    Cat { stdin: Vec<Vec<u8>>, code: u32 },
    /// A command that waits for an interrupt.
    Hold { signal: usize },
    /// Inject; `fail` picks a path the agent refuses (before or after ready).
    Inject { data: Vec<Vec<u8>>, fail: u8 },
    /// Extract of `/gen/N`, a missing file, or a failure mid-way.
    Extract { size: u16, kind: u8 },
    /// Monitor with settles, then end (4.0 only; refused in 3.0).
    Monitor { settles: Vec<u32> },
}

const SIGNALS: [&str; 5] = ["INT", "TERM", "KILL", "HUP", "SIGUSR1"];

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        (0u32..300).prop_map(End::Exit),
        (1u32..32).prop_map(End::Kill),
        (1u32..140).prop_map(End::Fail),
        Just(End::Timeout),
    ]
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (0usize..40_000).prop_map(|n| (0..n).map(|i| (i % 256) as u8).collect()),
    ]
}

fn intent() -> impl Strategy<Value = Intent> {
    prop_oneof![
        (
            proptest::collection::vec((any::<bool>(), "[a-z0-9 ]{0,40}"), 0..6),
            end(),
            any::<bool>()
        )
            .prop_map(|(outputs, end, tty)| Intent::Run { outputs, end, tty }),
        (proptest::collection::vec(blob(), 0..4), 0u32..4)
            .prop_map(|(stdin, code)| Intent::Cat { stdin, code }),
        (0..SIGNALS.len()).prop_map(|signal| Intent::Hold { signal }),
        (proptest::collection::vec(blob(), 0..4), 0u8..4)
            .prop_map(|(data, fail)| Intent::Inject { data, fail }),
        (0u16..20_000, 0u8..5).prop_map(|(size, kind)| Intent::Extract { size, kind }),
        proptest::collection::vec(any::<u32>(), 0..4)
            .prop_map(|settles| Intent::Monitor { settles }),
    ]
}

/// Everything observable: the results of the client's intents, the server's events, and
/// the client's events per transaction (key `None`: connection events).
///
/// Client events are compared per transaction: how two transactions interleave depends
/// on when the agent reads its events (e.g. the machine sends a tty's `X` ch 2 at once,
/// while another transaction's answer waits for the agent), exactly as on a real link.
/// Within one transaction the order is fixed.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    client: Vec<String>,
    server: Vec<ServerEvent>,
    events: BTreeMap<Option<u16>, Vec<ClientEvent>>,
}

fn by_xid(events: Vec<ClientEvent>) -> BTreeMap<Option<u16>, Vec<ClientEvent>> {
    let mut map: BTreeMap<Option<u16>, Vec<ClientEvent>> = BTreeMap::new();
    for e in events {
        let xid = match &e {
            ClientEvent::Output { xid, .. }
            | ClientEvent::OutputEnd { xid, .. }
            | ClientEvent::InjectReady { xid }
            | ClientEvent::MonitorData { xid, .. }
            | ClientEvent::Settled { xid, .. }
            | ClientEvent::ProcInfo { xid, .. }
            | ClientEvent::Finished { xid, .. } => Some(*xid),
            _ => None,
        };
        map.entry(xid).or_default().push(e);
    }
    map
}

fn script(outputs: &[(bool, String)], end: &End) -> String {
    let mut s = String::new();
    for (stderr, text) in outputs {
        s.push_str(if *stderr { "err=" } else { "out=" });
        s.push_str(text);
        s.push(';');
    }
    s.push_str(&match end {
        End::Exit(n) => format!("exit={n}"),
        End::Kill(n) => format!("kill={n}"),
        End::Fail(n) => format!("fail={n}"),
        End::Timeout => "timeout".to_string(),
    });
    s
}

/// Runs the batches through a pair; each batch starts its intents together, then does
/// the follow-ups (interrupts, inject data) once the first answers are in.
fn run(dialect: Dialect, batches: &[Vec<Intent>], chunking: Chunking, max_events: usize) -> Trace {
    let limits = Limits {
        max_events,
        ..Limits::default()
    };
    let mut p = Pair::with_agent(
        ClientConfig {
            dialect,
            limits: limits.clone(),
            ..ClientConfig::default()
        },
        ServerConfig {
            limits,
            ..ServerConfig::default()
        },
        ScriptedApp::default(),
    )
    .chunked(chunking);
    let mut log = Vec::new();
    let mut started = Vec::new();
    for batch in batches {
        let mut follow = Vec::new();
        for it in batch {
            let c = &mut p.client;
            match it {
                Intent::Run { outputs, end, tty } => {
                    let r = c.run(Command::new(script(outputs, end)).tty(*tty));
                    log.push(format!("run {r:?}"));
                    started.extend(r.ok());
                }
                Intent::Cat { stdin, code } => {
                    let r = c.run(Command::new(format!("cat;exit={code}")));
                    log.push(format!("cat {r:?}"));
                    if let Ok(xid) = r {
                        started.push(xid);
                        for piece in stdin {
                            let r = c.send_stdin(xid, Bytes::from(piece.clone()));
                            log.push(format!("stdin {r:?}"));
                        }
                        let r = c.close_stdin(xid);
                        log.push(format!("close {r:?}"));
                    }
                }
                Intent::Hold { .. } => {
                    let r = c.run(Command::new("hold"));
                    log.push(format!("hold {r:?}"));
                    if let Ok(xid) = r {
                        started.push(xid);
                        follow.push((xid, it));
                    }
                }
                Intent::Inject { fail, .. } => {
                    let path = match fail {
                        0 => "/nonexistent/f",
                        1 => "/tmp/full",
                        _ => "/tmp/f",
                    };
                    let r = c.inject("root", path, 0o644);
                    log.push(format!("inject {r:?}"));
                    if let Ok(xid) = r {
                        started.push(xid);
                        follow.push((xid, it));
                    }
                }
                Intent::Extract { size, kind } => {
                    let path = match kind {
                        0 => "/missing".to_string(),
                        1 => "/midfail".to_string(),
                        _ => format!("/gen/{size}"),
                    };
                    let r = c.extract("root", path);
                    log.push(format!("extract {r:?}"));
                    started.extend(r.ok());
                }
                Intent::Monitor { settles } => {
                    let r = c.monitor("agent");
                    log.push(format!("monitor {r:?}"));
                    if let Ok(xid) = r {
                        started.push(xid);
                        for seq in settles {
                            let r = c.settle(xid, *seq);
                            log.push(format!("settle {r:?}"));
                        }
                        let r = c.end_monitor(xid);
                        log.push(format!("end {r:?}"));
                    }
                }
            }
        }
        p.drive();
        for (xid, it) in follow {
            let c = &mut p.client;
            match it {
                Intent::Hold { signal } => {
                    let r = c.interrupt(xid, Signal::named(SIGNALS[*signal]));
                    log.push(format!("interrupt {r:?}"));
                }
                Intent::Inject { data, .. } => {
                    let ready = p.client_events.contains(&ClientEvent::InjectReady { xid });
                    log.push(format!("ready {ready}"));
                    if ready {
                        for piece in data {
                            let r = p.client.send_file_data(xid, Bytes::from(piece.clone()));
                            log.push(format!("data {r:?}"));
                        }
                        let r = p.client.finish_file(xid);
                        log.push(format!("finish {r:?}"));
                    }
                }
                _ => unreachable!(),
            }
        }
        p.drive();
    }
    // Every transaction ended exactly once, and the agent was never refused.
    for xid in &started {
        let ends = p
            .client_events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Finished { xid: x, .. } if x == xid))
            .count();
        assert_eq!(ends, 1, "xid {xid} finished {ends} times");
    }
    assert_eq!(p.client.transactions(), 0);
    assert_eq!(p.server.transactions(), 0);
    assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    assert!(p.client_error.is_none() && p.server_error.is_none());
    assert!(
        !p.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::ProtocolViolation(_)))
    );
    assert!(!p.client_events.iter().any(|e| matches!(
        e,
        ClientEvent::Finished {
            outcome: Outcome::LinkLost(_),
            ..
        }
    )));
    Trace {
        client: log,
        server: p.take_server_events(),
        events: by_xid(p.take_client_events()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn chunking_and_tiny_queues_do_not_change_events(
        v4 in any::<bool>(),
        batches in proptest::collection::vec(proptest::collection::vec(intent(), 1..4), 1..4),
        seed in any::<u64>(),
        max_events in 1usize..4,
    ) {
        let dialect = if v4 { Dialect::V4 } else { Dialect::Legacy3 };
        let whole = run(dialect, &batches, Chunking::Whole, 1024);
        let random = run(dialect, &batches, Chunking::Random(seed), max_events);
        prop_assert_eq!(&random, &whole);
    }
}

/// One fixed, larger sequence also goes through byte-at-a-time delivery.
#[test]
fn bytewise_matches_whole() {
    let batches = vec![
        vec![
            Intent::Run {
                outputs: vec![(false, "a".into()), (true, "b".into())],
                end: End::Exit(3),
                tty: false,
            },
            Intent::Cat {
                stdin: vec![vec![7; 5000], vec![]],
                code: 1,
            },
            Intent::Hold { signal: 4 },
        ],
        vec![
            Intent::Inject {
                data: vec![vec![1; 40_000]],
                fail: 3,
            },
            Intent::Extract {
                size: 12_345,
                kind: 2,
            },
            Intent::Monitor {
                settles: vec![1, 2],
            },
        ],
    ];
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let whole = run(dialect, &batches, Chunking::Whole, 1024);
        assert_eq!(run(dialect, &batches, Chunking::Bytewise, 1), whole);
    }
}
