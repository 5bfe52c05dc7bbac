//! Backpressure (transmit limits, full event queues), xids and transaction limits, settle and
//! procinfo on the wrong xid, and chunking.

use bytes::Bytes;
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, Limits, Outcome, Server, ServerConfig, ServerEvent,
    Signal, UsageError,
};
use tuppence::wire::{Dialect, Packet, Sender};

use super::common;
use super::common::pair::{Chunking, NoApp, Pair, ScriptedApp, packet};
use super::support::*;

both_dialects!(
    queue_full_on_transmit_limit,
    client_queue_full_queues_nothing,
    handle_bytes_consumes_less_when_events_full,
    client_handle_bytes_consumes_less_when_events_full,
    xids_from_one_never_zero_never_reused,
    server_limits_transactions,
    settle_on_non_monitor_answered_at_once,
    procinfo_on_unknown_xid,
    chunking_does_not_change_events,
);

fn queue_full_on_transmit_limit(dialect: Dialect) {
    let limits = Limits {
        max_transmit_buffer: 100,
        ..Limits::default()
    };
    let mut p = server_limited(dialect, limits, NoApp);
    p.connect();
    let xid = p.client.run(Command::new("x")).unwrap();
    p.drive();
    let big = Bytes::from(vec![b'a'; 150]);
    assert!(p.server.can_send());
    p.server.output(xid, 1, big.clone()).unwrap();
    assert!(!p.server.can_send());
    let before = p.server.transmit_buffered();
    assert_eq!(
        p.server.output(xid, 2, big.clone()),
        Err(UsageError::QueueFull {
            buffered: before,
            limit: 100
        })
    );
    assert_eq!(p.server.transmit_buffered(), before, "nothing queued");
    // Status words are never refused.
    p.server.output_end(xid, 1).unwrap();
    p.drive();
    assert!(p.server.can_send());
    p.server.output(xid, 2, big.clone()).unwrap();
    p.server.command_exited(xid, 0).unwrap();
    p.drive();
    let got: Vec<u8> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Output { data, .. } => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(got.len(), 300);
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

fn client_queue_full_queues_nothing(dialect: Dialect) {
    let limits = Limits {
        max_transmit_buffer: 200,
        max_send_packet: 64,
        ..Limits::default()
    };
    for connected in [false, true] {
        let mut p = client_limited(dialect, limits.clone(), NoApp);
        if connected {
            p.connect();
        }
        let xid = p.client.run(Command::new("x")).unwrap();
        let big = Bytes::from(vec![b's'; 1000]);
        // Under the limit: accepted whole (chunked into 64-byte packets).
        let before = p.client.transmit_buffered();
        assert!(p.client.can_send());
        p.client.send_stdin(xid, big.clone()).unwrap();
        let after = p.client.transmit_buffered();
        assert!(after >= before + 1000, "{before} {after}");
        assert!(!p.client.can_send());
        // Over the limit: refused, nothing queued.
        let err = p.client.send_stdin(xid, big.clone()).unwrap_err();
        assert!(
            matches!(err, UsageError::QueueFull { limit: 200, .. }),
            "{err:?}"
        );
        assert!(matches!(
            p.client.run(Command::new("y")),
            Err(UsageError::QueueFull { .. })
        ));
        assert_eq!(p.client.transmit_buffered(), after);
        assert_eq!(p.client.transactions(), 1);
        p.drive();
        let stdin: usize = p
            .server_events
            .iter()
            .map(|e| match e {
                ServerEvent::Stdin { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(stdin, 1000, "connected: {connected}");
        assert!(p.client.can_send());
    }
}

/// The client writes 10 requests at once; the server may hold 2 events.
fn handle_bytes_consumes_less_when_events_full(dialect: Dialect) {
    let limits = Limits {
        max_events: 2,
        ..Limits::default()
    };
    let now = std::time::Instant::now();
    let mut client = Client::new(
        ClientConfig {
            dialect,
            ..ClientConfig::default()
        },
        now,
    );
    let mut server = Server::new(
        ServerConfig {
            limits,
            ..ServerConfig::default()
        },
        now,
    );
    let mut wire = bytes::BytesMut::new();
    client.poll_transmit(now, &mut wire);
    server.handle_bytes(now, &wire).unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(ServerEvent::Hello { .. })
    ));
    wire.clear();
    server.poll_transmit(now, &mut wire);
    client.handle_bytes(now, &wire).unwrap();
    wire.clear();
    for i in 0..10 {
        client.run(Command::new(format!("cmd{i}"))).unwrap();
    }
    client.poll_transmit(now, &mut wire);
    let mut rest: &[u8] = &wire;
    let mut got = Vec::new();
    let mut calls = 0;
    while !rest.is_empty() {
        calls += 1;
        assert!(calls < 100);
        let used = server.handle_bytes(now, rest).unwrap();
        rest = &rest[used..];
        let events: Vec<ServerEvent> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            events.len() <= 2,
            "event queue over its limit: {}",
            events.len()
        );
        if !rest.is_empty() {
            assert_eq!(events.len(), 2, "consumed less without a full queue");
        }
        got.extend(events);
    }
    assert!(calls >= 5, "the server never pushed back ({calls} calls)");
    // Everything was consumed and every request was seen: nothing is stuck inside.
    let commands: Vec<Bytes> = got
        .into_iter()
        .map(|e| match e {
            ServerEvent::RunCommand { command, .. } => command,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(commands.len(), 10, "requests stuck in the server's buffer");
    assert_eq!(commands[9].as_ref(), b"cmd9");
    assert_eq!(server.handle_bytes(now, b""), Ok(0));
    assert!(server.poll_event().is_none());
}

fn client_handle_bytes_consumes_less_when_events_full(dialect: Dialect) {
    let limits = Limits {
        max_events: 3,
        ..Limits::default()
    };
    let mut p = client_limited(dialect, limits, ScriptedApp::default());
    p.connect();
    let script = (0..20).map(|i| format!("out={i};")).collect::<String>() + "exit=4";
    let xid = p.client.run(Command::new(script)).unwrap();
    p.drive();
    assert!(p.short_reads > 0, "the client never pushed back");
    let outs: Vec<String> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Output { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(outs, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(4)))
    );
}

fn xids_from_one_never_zero_never_reused(dialect: Dialect) {
    let limits = Limits {
        max_transactions: 4,
        ..Limits::default()
    };
    let mut p = client_limited(dialect, limits, ScriptedApp::default());
    p.connect();
    let held: Vec<u16> = (0..4)
        .map(|_| p.client.run(Command::new("hold")).unwrap())
        .collect();
    assert_eq!(held, vec![1, 2, 3, 4]);
    assert_eq!(
        p.client.run(Command::new("hold")),
        Err(UsageError::TooManyTransactions(4))
    );
    p.drive();
    // Free xids 3 and 4; keep 1 and 2 live for the whole cycle.
    p.client.interrupt(3, Signal::KILL).unwrap();
    p.client.interrupt(4, Signal::KILL).unwrap();
    p.drive();
    assert_eq!(p.client.transactions(), 2);
    let mut seen = vec![false; 65536];
    let mut last = 4u16;
    // Two at a time, up to the wrap and past it.
    for _ in 0..(65536 / 2) {
        let a = p.client.run(Command::new("exit=0")).unwrap();
        let b = p.client.run(Command::new("exit=0")).unwrap();
        for x in [a, b] {
            assert_ne!(x, 0);
            assert!(x != 1 && x != 2, "live xid {x} reused");
            seen[usize::from(x)] = true;
        }
        last = b;
        p.drive();
    }
    assert!(p.client_error.is_none() && p.server_error.is_none());
    assert!(!seen[0] && !seen[1] && !seen[2]);
    assert!(seen[3] && seen[65535], "wrapped round");
    // After 65535 the counter wrapped, skipping 0 and the live 1 and 2.
    assert!(last > 3 && last < 100, "{last}");
    assert!(p.client.is_live(1) && p.client.is_live(2));
    let finished_ok = p
        .client_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Finished {
                    outcome: Outcome::Exited(0),
                    ..
                }
            )
        })
        .count();
    assert_eq!(finished_ok, 65536);
}

fn server_limits_transactions(dialect: Dialect) {
    let limits = Limits {
        max_transactions: 1,
        ..Limits::default()
    };
    let mut p = server_limited(dialect, limits, ScriptedApp::default());
    p.connect();
    let a = p.client.run(Command::new("hold")).unwrap();
    let b = p.client.run(Command::new("exit=0")).unwrap();
    let c = p.client.extract("root", "/gen/1").unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![
            finished(b, Outcome::Failed { errno: 11 }),
            finished(c, Outcome::Failed { errno: 11 }),
        ]
    );
    assert_eq!(
        p.server_packets(b),
        vec![Packet::Major(11), Packet::Minor(0)]
    );
    assert_eq!(p.server_packets(c), vec![Packet::Major(11)]);
    assert!(p.client.is_live(a));
}

fn settle_on_non_monitor_answered_at_once(dialect: Dialect) {
    if !v4(dialect) {
        // 3.0 has no `S`: the client refuses, a raw one is an unknown type (71).
        let mut p = Pair::new(dialect);
        p.connect();
        let xid = p.client.run(Command::new("hold")).unwrap();
        assert_eq!(
            p.client.settle(xid, 1),
            Err(UsageError::NotSupported {
                what: "settle",
                dialect
            })
        );
        return;
    }
    let mut p = manual(dialect);
    p.connect();
    let cmd = p.client.run(Command::new("x")).unwrap();
    p.drive();
    p.take_server_events();
    assert!(matches!(
        p.client.settle(cmd, 1),
        Err(UsageError::WrongState { .. })
    ));
    let raw = [
        packet(dialect, 1, cmd, Packet::Settle { seq: 7 }),
        packet(dialect, 1, 300, Packet::Settle { seq: 8 }),
    ]
    .concat();
    p.server.handle_bytes(p.now, &raw).unwrap();
    assert!(p.server.poll_event().is_none());
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let got: Vec<(u16, Packet)> = common::pair::decode_all(dialect, Sender::Server, &out)
        .into_iter()
        .map(|f| (f.xid, f.packet))
        .collect();
    assert_eq!(
        got,
        vec![
            (cmd, Packet::Settle { seq: 7 }),
            (300, Packet::Settle { seq: 8 })
        ]
    );
    assert!(p.server.is_live(cmd));
}

fn procinfo_on_unknown_xid(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let xid = p.client.run(Command::new("x")).unwrap();
    p.drive();
    if !v4(dialect) {
        assert_eq!(
            p.client.procinfo(xid, 2),
            Err(UsageError::NotSupported {
                what: "procinfo",
                dialect
            })
        );
        return;
    }
    let raw = packet(dialect, 1, 500, Packet::ProcInfoQuery { mask: 2 });
    p.server.handle_bytes(p.now, &raw).unwrap();
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let got: Vec<(u16, Packet)> = common::pair::decode_all(dialect, Sender::Server, &out)
        .into_iter()
        .map(|f| (f.xid, f.packet))
        .collect();
    assert_eq!(got, vec![(500, Packet::Major(3))]);
}

/// The same script under every chunking gives the same events on both sides.
fn chunking_does_not_change_events(dialect: Dialect) {
    let run = |chunking: Chunking| {
        let mut p = Pair::new(dialect).chunked(chunking);
        p.drive();
        let a = p
            .client
            .run(Command::new("out=hello;err=oops;exit=1"))
            .unwrap();
        let b = p.client.run(Command::new("cat;exit=0")).unwrap();
        p.client
            .send_stdin(b, Bytes::from(vec![b'z'; 70_000]))
            .unwrap();
        p.client.close_stdin(b).unwrap();
        let c = p.client.extract("root", "/gen/100000").unwrap();
        p.drive();
        assert!(p.client.transactions() == 0, "{a} {b} {c}");
        (p.take_client_events(), p.take_server_events())
    };
    let whole = run(Chunking::Whole);
    assert_eq!(run(Chunking::Random(1)), whole);
    assert_eq!(run(Chunking::Random(2)), whole);
    assert_eq!(run(Chunking::Bytewise), whole);
}
