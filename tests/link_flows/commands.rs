//! Commands: interleaving, stdout/stderr, output ends, tty, how commands end, stdin.

use std::time::Duration;

use bytes::Bytes;
use tuppence::link::{ClientEvent, Command, Outcome, ServerEvent, UsageError};
use tuppence::wire::{Dialect, Packet};

use super::common::pair::{Pair, raw_headers};
use super::support::*;

both_dialects!(
    concurrent_transactions_interleave,
    stdout_stderr_separation,
    early_output_end_is_sent_once,
    tty_sends_stderr_eof_first,
    command_end_states,
    stdin_forwarding_with_eof,
);

fn concurrent_transactions_interleave(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let a = p.client.run(Command::new("a")).unwrap();
    let b = p.client.run(Command::new("b")).unwrap();
    let c = p.client.run(Command::new("c")).unwrap();
    assert_eq!((a, b, c), (1, 2, 3));
    p.drive();
    let started: Vec<u16> = p
        .take_server_events()
        .into_iter()
        .map(|e| match e {
            ServerEvent::RunCommand { xid, .. } => xid,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(started, vec![1, 2, 3]);
    let s = &mut p.server;
    s.output(b, 1, Bytes::from_static(b"B1")).unwrap();
    s.output(a, 1, Bytes::from_static(b"A1")).unwrap();
    s.command_exited(b, 0).unwrap();
    s.output(c, 2, Bytes::from_static(b"C2")).unwrap();
    s.output(a, 2, Bytes::from_static(b"A2")).unwrap();
    s.command_exited(c, 7).unwrap();
    s.command_killed(a, 15).unwrap();
    p.drive();
    let mut want = vec![output(b, 1, b"B1"), output(a, 1, b"A1")];
    want.extend(command_end(dialect, b, Outcome::Exited(0)));
    want.extend([output(c, 2, b"C2"), output(a, 2, b"A2")]);
    want.extend(command_end(dialect, c, Outcome::Exited(7)));
    want.extend(command_end(dialect, a, Outcome::Signaled(15)));
    assert_eq!(p.take_client_events(), want);
    assert_eq!(p.client.transactions(), 0);
    assert_eq!(p.server.transactions(), 0);
}

fn stdout_stderr_separation(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p
        .client
        .run(Command::new("out=a;err=b;out=c;exit=3"))
        .unwrap();
    p.drive();
    let mut want = vec![
        output(xid, 1, b"a"),
        output(xid, 2, b"b"),
        output(xid, 1, b"c"),
    ];
    want.extend(command_end(dialect, xid, Outcome::Exited(3)));
    assert_eq!(p.transaction_events(), want);
    let mut wire = vec![d(1, b"a"), d(2, b"b"), d(1, b"c")];
    if v4(dialect) {
        // X on both channels before the status, in 4.0 only.
        wire.extend([x(1), x(2)]);
    }
    wire.extend([Packet::Major(0), Packet::Minor(3)]);
    assert_eq!(p.server_packets(xid), wire);
    match &p.server_events[..] {
        [
            ServerEvent::RunCommand {
                xid: 1,
                user,
                command,
                timeout,
                tty: false,
                env,
            },
        ] => {
            assert_eq!(user.as_ref(), b"root");
            assert_eq!(command.as_ref(), b"out=a;err=b;out=c;exit=3");
            assert_eq!(*timeout, Duration::from_secs(60), "agent default applied");
            assert!(env.is_empty());
        }
        other => panic!("unexpected server events {other:?}"),
    }
}

fn early_output_end_is_sent_once(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let xid = p
        .client
        .run(
            Command::new("x")
                .user("tester")
                .timeout(Duration::from_millis(1500))
                .env("LANG", "C"),
        )
        .unwrap();
    p.drive();
    match &p.take_server_events()[..] {
        [
            ServerEvent::RunCommand {
                user, timeout, env, ..
            },
        ] => {
            assert_eq!(user.as_ref(), b"tester");
            assert_eq!(*timeout, Duration::from_secs(2), "rounded up");
            assert_eq!(env, &vec![Bytes::from_static(b"LANG=C")]);
        }
        other => panic!("unexpected {other:?}"),
    }
    p.server.output(xid, 1, Bytes::from_static(b"o")).unwrap();
    p.server.output_end(xid, 1).unwrap();
    p.server.output_end(xid, 1).unwrap();
    assert!(matches!(
        p.server.output(xid, 1, Bytes::from_static(b"late")),
        Err(UsageError::WrongState { .. })
    ));
    p.server.output(xid, 2, Bytes::from_static(b"e")).unwrap();
    p.server.command_exited(xid, 0).unwrap();
    p.drive();
    let want = if v4(dialect) {
        vec![
            d(1, b"o"),
            x(1),
            d(2, b"e"),
            x(2),
            Packet::Major(0),
            Packet::Minor(0),
        ]
    } else {
        vec![d(1, b"o"), d(2, b"e"), Packet::Major(0), Packet::Minor(0)]
    };
    assert_eq!(p.server_packets(xid), want);
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

fn tty_sends_stderr_eof_first(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p
        .client
        .run(Command::new("out=line\r\n;exit=0").tty(true))
        .unwrap();
    p.drive();
    assert!(matches!(
        p.server_events[0],
        ServerEvent::RunCommand { tty: true, .. }
    ));
    let mut want = vec![x(2), d(1, b"line\r\n")];
    if v4(dialect) {
        want.push(x(1));
    }
    want.extend([Packet::Major(0), Packet::Minor(0)]);
    assert_eq!(p.server_packets(xid), want);
    // `E` in 3.0 (C clients expect it), `X` in 4.0; first packet of the transaction.
    let raw: Vec<(u8, u16, u16, u16)> = raw_headers(dialect, &p.s2c_log)
        .into_iter()
        .filter(|h| h.2 == xid)
        .collect();
    assert_eq!(raw[0].0, eof_byte(dialect));
    let mut events = vec![
        ClientEvent::OutputEnd { xid, channel: 2 },
        output(xid, 1, b"line\r\n"),
    ];
    if v4(dialect) {
        events.push(ClientEvent::OutputEnd { xid, channel: 1 });
    }
    events.push(finished(xid, Outcome::Exited(0)));
    assert_eq!(p.transaction_events(), events);
}

fn command_end_states(dialect: Dialect) {
    let ends = |dialect| {
        if v4(dialect) {
            vec![x(1), x(2)]
        } else {
            vec![]
        }
    };
    // (script, outcome, status packets after the channel EOFs)
    let cases: Vec<(&str, Outcome, Vec<Packet>)> = vec![
        (
            "kill=15",
            Outcome::Signaled(15),
            [ends(dialect), vec![Packet::Major(14), Packet::Minor(15)]].concat(),
        ),
        (
            "fail=2",
            Outcome::Failed { errno: 2 },
            vec![Packet::Major(2), Packet::Minor(0)],
        ),
        (
            "out=zz;timeout",
            Outcome::TimedOut,
            vec![d(1, b"zz"), Packet::Timeout],
        ),
        (
            "exit=255",
            Outcome::Exited(255),
            [ends(dialect), vec![Packet::Major(0), Packet::Minor(255)]].concat(),
        ),
    ];
    for (script, outcome, wire) in cases {
        let mut p = Pair::new(dialect);
        p.connect();
        let xid = p.client.run(Command::new(script)).unwrap();
        p.drive();
        assert_eq!(p.server_packets(xid), wire, "{script}");
        assert_eq!(
            p.client_events.last(),
            Some(&finished(xid, outcome.clone())),
            "{script}"
        );
        assert!(!p.client.is_live(xid));
        assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    }
}

fn stdin_forwarding_with_eof(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.run(Command::new("cat;out=bye;exit=0")).unwrap();
    p.client
        .send_stdin(xid, Bytes::from_static(b"abc"))
        .unwrap();
    p.drive();
    p.client
        .send_stdin(xid, Bytes::from_static(b"def"))
        .unwrap();
    p.client.close_stdin(xid).unwrap();
    assert!(matches!(
        p.client.send_stdin(xid, Bytes::from_static(b"no")),
        Err(UsageError::WrongState { .. })
    ));
    assert!(matches!(
        p.client.close_stdin(xid),
        Err(UsageError::WrongState { .. })
    ));
    p.drive();
    let server: Vec<ServerEvent> = p.take_server_events().into_iter().skip(1).collect();
    assert_eq!(
        server,
        vec![
            ServerEvent::Stdin {
                xid,
                data: Bytes::from_static(b"abc")
            },
            ServerEvent::Stdin {
                xid,
                data: Bytes::from_static(b"def")
            },
            ServerEvent::StdinEnd { xid },
        ]
    );
    let client_wire: Vec<Packet> = p
        .client_frames()
        .into_iter()
        .filter(|f| f.xid == xid)
        .map(|f| f.packet)
        .skip(1)
        .collect();
    assert_eq!(client_wire, vec![d(0, b"abc"), d(0, b"def"), x(0)]);
    let raw_eof = raw_headers(dialect, &p.c2s_log)
        .into_iter()
        .rfind(|h| h.2 == xid)
        .unwrap();
    assert_eq!(
        raw_eof.0,
        eof_byte(dialect),
        "stdin EOF is X in 4.0, E in 3.0"
    );
    let mut want = vec![
        output(xid, 1, b"abc"),
        output(xid, 1, b"def"),
        output(xid, 1, b"bye"),
    ];
    want.extend(command_end(dialect, xid, Outcome::Exited(0)));
    assert_eq!(p.transaction_events(), want);
}
