//! Every flow of DESIGN §3, in both dialects, through a Client↔Server pair: the exact
//! events each side reports and, where order matters, the exact packets on the wire.

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::pair::{Agent, Chunking, NoAgent, Pair, ScriptedAgent, packet, raw_headers, signo};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, Limits, LinkError, Outcome, Server, ServerConfig,
    ServerEvent, Signal, UsageError, Violation,
};
use tuppence::wire::{DecodeError, Dialect, Hello, Packet, ProcInfoField, Sender, field};

both_dialects!(
    hello_connected,
    hello_with_assigned_cid,
    keepalive_negotiation,
    concurrent_transactions_interleave,
    stdout_stderr_separation,
    early_output_end_is_sent_once,
    tty_sends_stderr_eof_first,
    command_end_states,
    stdin_forwarding_with_eof,
    inject_go_ahead_data_result,
    inject_failures,
    extract_to_eof,
    extract_failures,
    interrupt_each_signal,
    interrupt_aborts_transfers,
    abort_answer_follows_agent_answers,
    quit_carries_cid,
    keepalive_exchange,
    keepalive_suppressed_by_traffic,
    keepalive_expiry_both_sides,
    keepalive_off_never_expires,
    foreign_cid_dropped_and_counted,
    unknown_request_type_answered_71,
    malformed_and_empty_requests_answered_71,
    late_packets_after_terminal_dropped,
    framing_error_is_fatal_and_sticky_on_server,
    framing_error_is_fatal_and_sticky_on_client,
    requests_before_hello_are_held,
    queue_full_on_transmit_limit,
    client_queue_full_queues_nothing,
    handle_bytes_consumes_less_when_events_full,
    client_handle_bytes_consumes_less_when_events_full,
    xids_from_one_never_zero_never_reused,
    server_limits_transactions,
    settle_on_non_monitor_answered_at_once,
    procinfo_on_unknown_xid,
    hello_repeated_answered_again,
    answers_to_a_request_flood_are_bounded,
    requests_without_hello_served_with_own_cid,
    time_passed_backwards_is_clamped,
    chunking_does_not_change_events,
);

fn v4(d: Dialect) -> bool {
    d == Dialect::V4
}

fn eof_byte(d: Dialect) -> u8 {
    if v4(d) { b'X' } else { b'E' }
}

fn finished(xid: u16, outcome: Outcome) -> ClientEvent {
    ClientEvent::Finished { xid, outcome }
}

/// How a command's transaction ends on the client: end of stdout and stderr (4.0 only, 3.0
/// has no output end), then the outcome.
fn command_end(dialect: Dialect, xid: u16, outcome: Outcome) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    if v4(dialect) {
        events.extend([
            ClientEvent::OutputEnd { xid, channel: 1 },
            ClientEvent::OutputEnd { xid, channel: 2 },
        ]);
    }
    events.push(finished(xid, outcome));
    events
}

fn output(xid: u16, channel: u16, data: &'static [u8]) -> ClientEvent {
    ClientEvent::Output {
        xid,
        channel,
        data: Bytes::from_static(data),
    }
}

fn d(channel: u16, data: &'static [u8]) -> Packet {
    Packet::Data {
        channel,
        data: Bytes::from_static(data),
    }
}

fn x(channel: u16) -> Packet {
    Packet::Eof { channel }
}

fn manual(dialect: Dialect) -> Pair<NoAgent> {
    with_server(dialect, ServerConfig::default(), NoAgent)
}

/// A pair whose client speaks `dialect` with default settings and whose server has `server`.
fn with_server<A: Agent>(dialect: Dialect, server: ServerConfig, agent: A) -> Pair<A> {
    Pair::with_agent(
        ClientConfig {
            dialect,
            ..ClientConfig::default()
        },
        server,
        agent,
    )
}

/// A pair whose server has `limits` (and default settings otherwise).
fn server_limited<A: Agent>(dialect: Dialect, limits: Limits, agent: A) -> Pair<A> {
    let server = ServerConfig {
        limits,
        ..ServerConfig::default()
    };
    with_server(dialect, server, agent)
}

/// A pair whose client speaks `dialect` with `limits`; the server has default settings.
fn client_limited<A: Agent>(dialect: Dialect, limits: Limits, agent: A) -> Pair<A> {
    Pair::with_agent(
        ClientConfig {
            dialect,
            limits,
            ..ClientConfig::default()
        },
        ServerConfig::default(),
        agent,
    )
}

/// A pair with these keepalive settings and no client command deadlines (a 3.0 command
/// without a timeout is sent 60 s and would get one), so that only keepalives act.
fn with_keepalive(dialect: Dialect, client: u16, server: u16) -> Pair<ScriptedAgent> {
    Pair::with_agent(
        ClientConfig {
            dialect,
            keepalive: client,
            deadline_grace: None,
            ..ClientConfig::default()
        },
        ServerConfig {
            keepalive: server,
            ..ServerConfig::default()
        },
        ScriptedAgent::default(),
    )
}

// ---------------------------------------------------------------- hello and keepalive

fn hello_connected(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.drive();
    assert_eq!(
        p.take_client_events(),
        vec![ClientEvent::Connected {
            cid: 1,
            server_version: dialect.version(),
            keepalive: 60,
        }]
    );
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::Hello {
            client_version: dialect.version(),
            keepalive: 60,
        }]
    );
    assert!(p.server.dialect_known());
    assert_eq!(p.server.dialect(), dialect);
    assert_eq!(p.client.server_version(), Some(dialect.version()));
    let (major, minor) = dialect.version();
    let c = p.client_frames();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].cid, c[0].xid), (0, 0));
    assert_eq!(
        c[0].packet,
        Packet::Hello(Hello {
            major,
            minor,
            keepalive: 0xFFFF
        })
    );
    let s = p.server_frames();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].cid, s[0].xid), (1, 0));
    assert_eq!(
        s[0].packet,
        Packet::Hello(Hello {
            major,
            minor,
            keepalive: 60
        })
    );
    if dialect == Dialect::Legacy3 {
        // The C client's hello, byte for byte.
        assert_eq!(
            &p.c2s_log[..],
            &[0x68, 0, 0, 0, 0, 0, 0, 0x0c, 3, 0, 0xff, 0xff]
        );
    }
}

fn hello_with_assigned_cid(dialect: Dialect) {
    let server = ServerConfig {
        cid: 0x1234,
        ..ServerConfig::default()
    };
    let mut p = with_server(dialect, server, ScriptedAgent::default());
    p.drive();
    assert!(matches!(
        p.client_events[0],
        ClientEvent::Connected { cid: 0x1234, .. }
    ));
    assert_eq!(p.client.cid(), Some(0x1234));
    let xid = p.client.run(Command::new("exit=0")).unwrap();
    p.drive();
    let frames = p.client_frames();
    assert!(frames[1..].iter().all(|f| f.cid == 0x1234));
    assert!(p.server_frames().iter().all(|f| f.cid == 0x1234));
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

fn keepalive_negotiation(dialect: Dialect) {
    // (client asks, server setting, negotiated, interval applied)
    let cases: [(u16, u16, u16, Option<u64>); 9] = [
        (0xFFFF, 60, 60, Some(60)),
        (0xFFFF, 30, 30, Some(30)),
        (20, 60, 20, Some(20)),
        (90, 60, 60, Some(60)),
        (5, 60, 5, Some(10)), // the reply carries 5, both sides apply 10 s
        (0, 60, 0, None),
        (0xFFFF, 0, 0, None),
        (30, 0, 0, None),
        (0xFFFF, 0xFFFF, 0xFFFF, Some(60)),
    ];
    for (ask, setting, negotiated, applied) in cases {
        let mut p = with_keepalive(dialect, ask, setting);
        p.drive();
        let why = format!("client {ask}, server {setting}");
        assert_eq!(
            p.take_client_events(),
            vec![ClientEvent::Connected {
                cid: 1,
                server_version: dialect.version(),
                keepalive: negotiated,
            }],
            "{why}"
        );
        assert_eq!(
            p.take_server_events(),
            vec![ServerEvent::Hello {
                client_version: dialect.version(),
                keepalive: negotiated,
            }],
            "{why}"
        );
        assert_eq!(
            p.client.keepalive(),
            applied.map(Duration::from_secs),
            "{why}"
        );
        match applied {
            None => {
                assert_eq!(p.client.poll_timeout(), None, "{why}");
                assert_eq!(p.server.poll_timeout(), None, "{why}");
            }
            Some(k) => {
                // Next timer: a keepalive after k/4 of silence.
                let quarter = Duration::from_secs(k) / 4;
                assert_eq!(p.client.poll_timeout(), Some(p.now + quarter), "{why}");
                assert_eq!(p.server.poll_timeout(), Some(p.now + quarter), "{why}");
            }
        }
    }
}

fn keepalive_exchange(dialect: Dialect) {
    let mut p = with_keepalive(dialect, 20, 60);
    p.connect();
    let t0 = p.now;
    p.run_for(Duration::from_secs(61));
    let count_k = |frames: Vec<tuppence::wire::Frame>| {
        frames
            .iter()
            .filter(|f| f.packet == Packet::Keepalive)
            .inspect(|f| assert_eq!((f.cid, f.xid), (1, 0)))
            .count()
    };
    // Both sides send `K` every 5 s (k/4) of not transmitting: at 5, 10, …, 60 s.
    assert_eq!(count_k(p.client_frames()), 12);
    assert_eq!(count_k(p.server_frames()), 12);
    assert!(p.client.is_connected());
    assert!(p.server.error().is_none());
    assert!(p.take_client_events().is_empty());
    assert!(p.take_server_events().is_empty());
    assert_eq!(p.now, t0 + Duration::from_secs(61));
}

fn keepalive_suppressed_by_traffic(dialect: Dialect) {
    let mut p = with_keepalive(dialect, 20, 60);
    p.connect();
    let xid = p.client.run(Command::new("cat")).unwrap();
    p.drive();
    // The client sends stdin every 2 s: it never needs a `K`; the server (silent) does.
    for _ in 0..15 {
        p.run_for(Duration::from_secs(2));
        p.client.send_stdin(xid, Bytes::from_static(b".")).unwrap();
        p.drive();
    }
    let k_from_client = p
        .client_frames()
        .iter()
        .filter(|f| f.packet == Packet::Keepalive)
        .count();
    assert_eq!(k_from_client, 0);
    // The server echoes every dot (cat), so it has no silence either.
    let k_from_server = p
        .server_frames()
        .iter()
        .filter(|f| f.packet == Packet::Keepalive)
        .count();
    assert_eq!(k_from_server, 0);
    assert!(p.client.is_live(xid));
}

fn keepalive_expiry_both_sides(dialect: Dialect) {
    for (ask, k) in [(20u16, 20u64), (5, 10)] {
        let mut p = with_keepalive(dialect, ask, 60);
        p.connect();
        let xid = p.client.run(Command::new("hold")).unwrap();
        let idle = p.client.run(Command::new("cat")).unwrap();
        p.drive();
        p.take_client_events();
        p.take_server_events();
        let cut = p.now;
        p.link_up = false;
        let mut client_dead = None;
        let mut server_dead = None;
        while client_dead.is_none() || server_dead.is_none() {
            let t = p
                .jump()
                .expect("a timer stays armed until the link is dead");
            if client_dead.is_none() && p.client.error().is_some() {
                client_dead = Some(t);
            }
            if server_dead.is_none() && p.server.error().is_some() {
                server_dead = Some(t);
            }
            assert!(
                t <= cut + Duration::from_secs(k),
                "not detected within {k} s"
            );
        }
        let k = Duration::from_secs(k);
        assert_eq!(client_dead, Some(cut + k));
        assert_eq!(server_dead, Some(cut + k));
        assert_eq!(p.client.error(), Some(&LinkError::KeepaliveExpired(k)));
        assert_eq!(p.server.error(), Some(&LinkError::KeepaliveExpired(k)));
        let lost = Outcome::LinkLost(LinkError::KeepaliveExpired(k));
        assert_eq!(
            p.take_client_events(),
            vec![
                ClientEvent::LinkDead,
                finished(xid, lost.clone()),
                finished(idle, lost.clone()),
            ]
        );
        assert_eq!(p.take_server_events(), vec![ServerEvent::LinkDead]);
        assert_eq!(p.client.transactions(), 0);
        assert_eq!(p.server.transactions(), 0);
        assert_eq!(p.next_timeout(), None);
        // Sticky.
        assert_eq!(
            p.client.run(Command::new("x")),
            Err(UsageError::Link(LinkError::KeepaliveExpired(k)))
        );
        assert_eq!(
            p.client.handle_bytes(p.now, b"h"),
            Err(LinkError::KeepaliveExpired(k))
        );
        assert_eq!(
            p.server.handle_bytes(p.now, b"h"),
            Err(LinkError::KeepaliveExpired(k))
        );
        assert!(matches!(
            p.server.output(xid, 1, Bytes::from_static(b"x")),
            Err(UsageError::Link(_))
        ));
    }
}

fn keepalive_off_never_expires(dialect: Dialect) {
    let mut p = with_keepalive(dialect, 0, 60);
    p.connect();
    let xid = p.client.run(Command::new("hold")).unwrap();
    p.drive();
    p.link_up = false;
    assert_eq!(p.next_timeout(), None);
    p.run_for(Duration::from_secs(24 * 3600));
    assert!(p.client.is_live(xid));
    assert!(p.client.error().is_none() && p.server.error().is_none());
    // Spurious timeouts are no-ops.
    p.client.handle_timeout(p.now);
    p.server.handle_timeout(p.now);
    assert!(p.client.poll_event().is_none() && p.server.poll_event().is_none());
}

fn hello_repeated_answered_again(dialect: Dialect) {
    let mut server = Server::new(ServerConfig::default(), std::time::Instant::now());
    let now = std::time::Instant::now();
    let (major, minor) = dialect.version();
    let hello = packet(
        dialect,
        0,
        0,
        Packet::Hello(Hello {
            major,
            minor,
            keepalive: 30,
        }),
    );
    server.handle_bytes(now, &hello).unwrap();
    server.handle_bytes(now, &hello).unwrap();
    let mut out = bytes::BytesMut::new();
    server.poll_transmit(now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!(frames.len(), 2);
    for f in frames {
        assert_eq!((f.cid, f.xid), (1, 0));
        assert_eq!(
            f.packet,
            Packet::Hello(Hello {
                major,
                minor,
                keepalive: 30
            })
        );
    }
}

/// A peer that floods bad requests and never reads its answers: the server stops taking
/// input once twice the transmit limit is unread, and resumes when the peer reads.
fn answers_to_a_request_flood_are_bounded(dialect: Dialect) {
    let now = std::time::Instant::now();
    let limit = 4096;
    let mut server = Server::new(
        ServerConfig {
            dialect: Some(dialect),
            limits: Limits {
                max_transmit_buffer: limit,
                ..Limits::default()
            },
            ..ServerConfig::default()
        },
        now,
    );
    let mut unknown = packet(dialect, 1, 9, Packet::Quit).to_vec();
    unknown[0] = b'Z';
    let flood = unknown.repeat(10_000);
    let mut offered = &flood[..];
    // Drain events (as any runtime does) but never the transmit buffer.
    for _ in 0..10_000 {
        let n = server.handle_bytes(now, offered).unwrap();
        while server.poll_event().is_some() {}
        offered = &offered[n..];
        if n == 0 {
            break;
        }
    }
    assert!(!offered.is_empty(), "the whole flood was taken");
    let unread = server.transmit_buffered();
    assert!(unread > 2 * limit, "stopped early at {unread}");
    assert!(unread <= 2 * limit + 64, "transmit grew to {unread}");
    // The peer reads: input flows again.
    let mut out = bytes::BytesMut::new();
    server.poll_transmit(now, &mut out);
    let n = server.handle_bytes(now, offered).unwrap();
    assert!(n > 0);
}

/// As the C executor: a client that never says hello but uses the connection's cid is
/// served; `q` carries the cid and any xid.
fn requests_without_hello_served_with_own_cid(dialect: Dialect) {
    let now = std::time::Instant::now();
    let mut server = Server::new(
        ServerConfig {
            cid: 2,
            dialect: Some(dialect),
            ..ServerConfig::default()
        },
        now,
    );
    let bytes = [
        packet(
            dialect,
            2,
            5,
            Packet::Extract {
                user: "root".into(),
                path: "/f".into(),
            },
        ),
        packet(dialect, 2, 777, Packet::Quit),
    ]
    .concat();
    assert_eq!(server.handle_bytes(now, &bytes), Ok(bytes.len()));
    assert_eq!(
        std::iter::from_fn(|| server.poll_event()).collect::<Vec<_>>(),
        vec![
            ServerEvent::Extract {
                xid: 5,
                user: "root".into(),
                path: "/f".into()
            },
            ServerEvent::Quit,
        ]
    );
    server.fail(5, 2).unwrap();
    let mut out = bytes::BytesMut::new();
    server.poll_transmit(now, &mut out);
    assert_eq!(raw_headers(dialect, &out), vec![(b'M', 2, 5, 12)]);
}

/// A caller passing an earlier instant changes nothing: the machines clamp time.
fn time_passed_backwards_is_clamped(dialect: Dialect) {
    let mut p = with_keepalive(dialect, 20, 60);
    p.run_for(Duration::from_secs(4));
    p.connect();
    let client_next = p.client.poll_timeout();
    let server_next = p.server.poll_timeout();
    let past = p.epoch;
    p.client.handle_timeout(past);
    p.server.handle_timeout(past);
    let mut out = bytes::BytesMut::new();
    assert_eq!(p.client.poll_transmit(past, &mut out), 0);
    assert_eq!(p.server.poll_transmit(past, &mut out), 0);
    assert_eq!(p.client.poll_timeout(), client_next);
    assert_eq!(p.server.poll_timeout(), server_next);
    // A keepalive fired "in the past" still counts from the machine's own now.
    p.advance(Duration::from_secs(5));
    p.client.handle_timeout(p.now);
    p.client.handle_timeout(past);
    assert_eq!(p.client.poll_transmit(past, &mut out), 8, "one K, once");
    assert_eq!(
        p.client.poll_timeout(),
        Some(p.now + Duration::from_secs(5))
    );
}

// ---------------------------------------------------------------- commands

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

// ---------------------------------------------------------------- transfers

fn inject_go_ahead_data_result(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.inject("root", "/tmp/f", 0o640).unwrap();
    assert!(matches!(
        p.client.send_file_data(xid, Bytes::from_static(b"early")),
        Err(UsageError::WrongState { .. })
    ));
    assert!(matches!(
        p.client.finish_file(xid),
        Err(UsageError::WrongState { .. })
    ));
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![ClientEvent::InjectReady { xid }]
    );
    p.client
        .send_file_data(xid, Bytes::from_static(b"hello "))
        .unwrap();
    p.client
        .send_file_data(xid, Bytes::from_static(b"inject\n"))
        .unwrap();
    p.client.finish_file(xid).unwrap();
    assert!(matches!(
        p.client.send_file_data(xid, Bytes::from_static(b"after")),
        Err(UsageError::WrongState { .. })
    ));
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![finished(xid, Outcome::Completed)]
    );
    assert_eq!(
        p.take_server_events(),
        vec![
            ServerEvent::Inject {
                xid,
                user: Bytes::from_static(b"root"),
                path: Bytes::from_static(b"/tmp/f"),
                mode: 0o640
            },
            ServerEvent::InjectData {
                xid,
                data: Bytes::from_static(b"hello ")
            },
            ServerEvent::InjectData {
                xid,
                data: Bytes::from_static(b"inject\n")
            },
            ServerEvent::InjectEnd { xid },
        ]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![Packet::Major(0), Packet::Minor(0)]
    );
    assert_eq!(p.agent.files[&b"/tmp/f".to_vec()], b"hello inject\n");
    // Read it back.
    let ex = p.client.extract("root", "/tmp/f").unwrap();
    p.drive();
    let mut want = vec![output(ex, 0, b"hello inject\n")];
    want.push(ClientEvent::OutputEnd {
        xid: ex,
        channel: 0,
    });
    want.push(finished(ex, Outcome::Completed));
    assert_eq!(p.transaction_events(), want);
}

fn inject_failures(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    // Open fails: `M`=errno alone, before any data.
    let a = p.client.inject("root", "/nonexistent/f", 0o644).unwrap();
    let b = p.client.inject("root", "/readonly/f", 0o644).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![
            finished(a, Outcome::Failed { errno: 2 }),
            finished(b, Outcome::Failed { errno: 13 })
        ]
    );
    assert_eq!(p.server_packets(a), vec![Packet::Major(2)]);
    assert_eq!(p.server_packets(b), vec![Packet::Major(13)]);
    // Write fails at the end: `M`=0, then `m`=errno.
    let c = p.client.inject("root", "/tmp/full", 0o644).unwrap();
    p.drive();
    p.client
        .send_file_data(c, Bytes::from_static(b"x"))
        .unwrap();
    p.client.finish_file(c).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::InjectReady { xid: c },
            finished(c, Outcome::Failed { errno: 28 })
        ]
    );
    assert_eq!(
        p.server_packets(c),
        vec![Packet::Major(0), Packet::Minor(28)]
    );
}

fn extract_to_eof(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.extract("root", "/gen/2500").unwrap();
    p.drive();
    let events = p.transaction_events();
    let data: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Output {
                xid: 1,
                channel: 0,
                data,
            } => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(data.len(), 2500);
    assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(events.len(), 5);
    assert_eq!(
        events[3..],
        [
            ClientEvent::OutputEnd { xid, channel: 0 },
            finished(xid, Outcome::Completed)
        ]
    );
    let types: Vec<u8> = raw_headers(dialect, &p.s2c_log)
        .into_iter()
        .filter(|h| h.2 == xid)
        .map(|h| h.0)
        .collect();
    if v4(dialect) {
        assert_eq!(types, b"MDDDXm");
    } else {
        // 3.0: no `M` on success, EOF is `E`.
        assert_eq!(types, b"DDDEm");
    }
    // An empty file.
    let empty = p.client.extract("root", "/gen/0").unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::OutputEnd {
                xid: empty,
                channel: 0
            },
            finished(empty, Outcome::Completed)
        ]
    );
    let mut want = if v4(dialect) {
        vec![Packet::Major(0)]
    } else {
        vec![]
    };
    want.extend([x(0), Packet::Minor(0)]);
    assert_eq!(p.server_packets(empty), want);
}

fn extract_failures(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let missing = p.client.extract("root", "/missing").unwrap();
    let dir = p.client.extract("root", "/dir").unwrap();
    let mid = p.client.extract("root", "/midfail").unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![
            finished(missing, Outcome::Failed { errno: 2 }),
            finished(dir, Outcome::Failed { errno: 21 }),
            output(mid, 0, b"0123456789"),
            finished(mid, Outcome::Failed { errno: 5 }),
        ]
    );
    assert_eq!(p.server_packets(missing), vec![Packet::Major(2)]);
    assert_eq!(p.server_packets(dir), vec![Packet::Major(21)]);
    let want = if v4(dialect) {
        // `M`=0 announced the data, so the failure is a minor status.
        vec![Packet::Major(0), d(0, b"0123456789"), Packet::Minor(5)]
    } else {
        // 3.0 never sent `M`=0; a read error is `M`=errno after the data.
        vec![d(0, b"0123456789"), Packet::Major(5)]
    };
    assert_eq!(p.server_packets(mid), want);
}

// ---------------------------------------------------------------- interrupt, quit

fn interrupt_each_signal(dialect: Dialect) {
    let signals = [
        Signal::INT,
        Signal::TERM,
        Signal::KILL,
        Signal::HUP,
        Signal::QUIT,
        Signal::named("SIGUSR1"),
    ];
    for sig in signals {
        let mut p = Pair::new(dialect);
        p.connect();
        let xid = p.client.run(Command::new("hold")).unwrap();
        p.drive();
        p.client.interrupt(xid, sig.clone()).unwrap();
        p.drive();
        let wire_name: &[u8] = if v4(dialect) { sig.name() } else { b"" };
        assert_eq!(
            p.server_events[1],
            ServerEvent::Interrupt {
                xid,
                signal: Bytes::copy_from_slice(wire_name)
            }
        );
        let client_interrupt = p
            .client_frames()
            .into_iter()
            .find(|f| matches!(f.packet, Packet::Interrupt { .. }))
            .unwrap();
        assert_eq!(
            client_interrupt.packet,
            Packet::Interrupt {
                signal: Bytes::copy_from_slice(wire_name)
            }
        );
        let raw = raw_headers(dialect, &p.c2s_log);
        let (_, _, _, len) = raw.iter().find(|h| h.0 == b'I').copied().unwrap();
        let want_len = if v4(dialect) {
            8 + sig.name().len() + 1
        } else {
            8
        };
        assert_eq!(usize::from(len), want_len);
        let n = if v4(dialect) { signo(sig.name()) } else { 9 };
        assert_eq!(
            p.client_events.last(),
            Some(&finished(xid, Outcome::Signaled(n)))
        );
        let tail: Vec<Packet> = p.server_packets(xid).into_iter().rev().take(2).collect();
        assert_eq!(tail, vec![Packet::Minor(n), Packet::Major(14)]);
    }
}

fn interrupt_aborts_transfers(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let inj = p.client.inject("root", "/tmp/i", 0o600).unwrap();
    let ext = p.client.extract("root", "/tmp/e").unwrap();
    p.drive();
    p.server.inject_ready(inj).unwrap();
    p.server.extract_ready(ext).unwrap();
    p.server
        .output(ext, 0, Bytes::from_static(b"part"))
        .unwrap();
    p.drive();
    p.take_server_events();
    p.client
        .send_file_data(inj, Bytes::from_static(b"pa"))
        .unwrap();
    p.client.interrupt(inj, Signal::INT).unwrap();
    p.client.interrupt(ext, Signal::INT).unwrap();
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![
            ServerEvent::InjectData {
                xid: inj,
                data: Bytes::from_static(b"pa")
            },
            ServerEvent::TransferAborted { xid: inj },
            ServerEvent::TransferAborted { xid: ext },
        ]
    );
    assert!(!p.server.is_live(inj) && !p.server.is_live(ext));
    assert_eq!(
        p.server_packets(inj),
        vec![Packet::Major(0), Packet::Minor(4)]
    );
    let mut want = if v4(dialect) {
        vec![Packet::Major(0)]
    } else {
        vec![]
    };
    want.extend([d(0, b"part"), Packet::Minor(4)]);
    assert_eq!(p.server_packets(ext), want);
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::InjectReady { xid: inj },
            output(ext, 0, b"part"),
            finished(inj, Outcome::Failed { errno: 4 }),
            finished(ext, Outcome::Failed { errno: 4 }),
        ]
    );
    // The agent's answers for the aborted transfers are refused: they are over.
    assert_eq!(
        p.server.inject_done(inj, Ok(())),
        Err(UsageError::UnknownTransaction(inj))
    );
}

/// The request and its interrupt arrive in one read, before the agent saw the request:
/// the agent's answer to the request still goes out, and the abort's `m`=4 follows it.
fn abort_answer_follows_agent_answers(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let inj = p.client.inject("root", "/tmp/i", 0o600).unwrap();
    p.client.interrupt(inj, Signal::INT).unwrap();
    let ext = p.client.extract("root", "/gen/10").unwrap();
    p.client.interrupt(ext, Signal::INT).unwrap();
    p.drive();
    assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    assert_eq!(
        p.server_packets(inj),
        vec![Packet::Major(0), Packet::Minor(4)]
    );
    // The agent sent the whole (small) file before it saw the abort: that was terminal.
    let mut want = if v4(dialect) {
        vec![Packet::Major(0)]
    } else {
        vec![]
    };
    want.extend([
        d(0, b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"),
        x(0),
        Packet::Minor(0),
    ]);
    assert_eq!(p.server_packets(ext), want);
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::InjectReady { xid: inj },
            finished(inj, Outcome::Failed { errno: 4 }),
            output(ext, 0, b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"),
            ClientEvent::OutputEnd {
                xid: ext,
                channel: 0
            },
            finished(ext, Outcome::Completed),
        ]
    );
    assert_eq!(p.server.transactions(), 0);
}

fn quit_carries_cid(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    p.client.quit().unwrap();
    p.drive();
    assert_eq!(p.take_server_events(), vec![ServerEvent::Quit]);
    assert!(p.agent.quit);
    let last = p.client_frames().pop().unwrap();
    assert_eq!((last.cid, last.packet), (1, Packet::Quit));
}

// ---------------------------------------------------------------- protocol errors

fn foreign_cid_dropped_and_counted(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let xid = p.client.run(Command::new("x")).unwrap();
    p.drive();
    p.take_server_events();
    // Server → client with another connection's cid: dropped, the command stays live.
    let foreign = [
        packet(dialect, 99, xid, Packet::Major(0)),
        packet(dialect, 99, xid, Packet::Minor(0)),
    ]
    .concat();
    assert_eq!(p.client.handle_bytes(p.now, &foreign), Ok(foreign.len()));
    assert!(p.client.poll_event().is_none());
    assert_eq!(p.client.stats().foreign_cid_dropped, 2);
    assert!(p.client.is_live(xid));
    // Client → server with another cid: dropped, no reply, no event.
    let req = packet(
        dialect,
        99,
        40,
        Packet::Extract {
            user: "root".into(),
            path: "/etc/passwd".into(),
        },
    );
    p.server.handle_bytes(p.now, &req).unwrap();
    assert!(p.server.poll_event().is_none());
    assert_eq!(p.server.stats().foreign_cid_dropped, 1);
    assert_eq!(p.server.transmit_buffered(), 0);
    // The connection goes on.
    p.server.command_exited(xid, 0).unwrap();
    p.drive();
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

fn unknown_request_type_answered_71(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    // 'Z' is no packet type; 'O' (monitor) does not exist in 3.0.
    let mut unknown = packet(dialect, 1, 50, Packet::Quit).to_vec();
    unknown[0] = b'Z';
    let monitor_v4 = packet(
        Dialect::V4,
        1,
        51,
        Packet::Monitor {
            source: "agent".into(),
        },
    )
    .to_vec();
    let monitor = if v4(dialect) {
        monitor_v4
    } else {
        reencode_legacy(&monitor_v4)
    };
    let raw = [unknown, monitor].concat();
    p.server.handle_bytes(p.now, &raw).unwrap();
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    let got: Vec<(u16, Packet)> = frames.into_iter().map(|f| (f.xid, f.packet)).collect();
    if v4(dialect) {
        // 'O' is a monitor in 4.0: no reply, a transaction is open.
        assert_eq!(got, vec![(50, Packet::Major(71))]);
        assert!(p.server.is_live(51));
    } else {
        assert_eq!(got, vec![(50, Packet::Major(71)), (51, Packet::Major(71))]);
    }
    let ev = p.server.poll_event().unwrap();
    assert!(
        matches!(ev, ServerEvent::ProtocolViolation(Violation::Decode(DecodeError::UnknownType { header })) if header.xid == 50),
        "{ev:?}"
    );
    // The connection continues.
    let xid = p.client.run(Command::new("out=ok;exit=0")).unwrap();
    p.drive();
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
}

/// Rewrites a 4.0 header (`type res len cid xid`) into the 3.0 layout (`type pad cid xid len`).
fn reencode_legacy(v4: &[u8]) -> Vec<u8> {
    let mut out = v4.to_vec();
    out[2..4].copy_from_slice(&v4[4..6]);
    out[4..6].copy_from_slice(&v4[6..8]);
    out[6..8].copy_from_slice(&v4[2..4]);
    out
}

fn malformed_and_empty_requests_answered_71(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    // Empty command, through the client API.
    let empty = p.client.run(Command::new("")).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![finished(empty, Outcome::Failed { errno: 71 })]
    );
    assert_eq!(p.server_packets(empty), vec![Packet::Major(71)]);
    assert!(!p.server.is_live(empty));
    // An extract whose filename has no NUL terminator (the C executor read past the packet).
    let mut bad = packet(
        dialect,
        1,
        60,
        Packet::Extract {
            user: "root".into(),
            path: "x".into(),
        },
    )
    .to_vec();
    bad.pop(); // drop the final NUL, shorten the length by one
    let len_at = if v4(dialect) { 2 } else { 6 };
    let len = u16::from_be_bytes([bad[len_at], bad[len_at + 1]]) - 1;
    bad[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    p.server.handle_bytes(p.now, &bad).unwrap();
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].xid, &frames[0].packet), (60, &Packet::Major(71)));
    assert!(matches!(
        p.server.poll_event(),
        Some(ServerEvent::ProtocolViolation(Violation::Decode(
            DecodeError::Malformed { .. }
        )))
    ));
    // A status word is not a request: 71 too.
    let status = packet(dialect, 1, 61, Packet::Minor(0));
    p.server.handle_bytes(p.now, &status).unwrap();
    out.clear();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!((frames[0].xid, &frames[0].packet), (61, &Packet::Major(71)));
}

fn late_packets_after_terminal_dropped(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let xid = p.client.run(Command::new("x")).unwrap();
    p.drive();
    p.take_server_events();
    // The command exits while the client is still sending stdin.
    p.server.command_exited(xid, 0).unwrap();
    p.client
        .send_stdin(xid, Bytes::from_static(b"late"))
        .unwrap();
    p.client.close_stdin(xid).unwrap();
    p.client.interrupt(xid, Signal::TERM).unwrap();
    p.drive();
    assert!(
        p.take_server_events().is_empty(),
        "late stdin/EOF/I dropped"
    );
    assert_eq!(p.server.stats().unknown_xid_dropped, 3);
    assert!(p.server.transmit_buffered() == 0);
    assert_eq!(
        p.client_events.last(),
        Some(&finished(xid, Outcome::Exited(0)))
    );
    // Server answers after the terminal packet are refused, nothing is sent.
    assert_eq!(
        p.server.command_exited(xid, 1),
        Err(UsageError::UnknownTransaction(xid))
    );
    assert_eq!(
        p.server.output(xid, 1, Bytes::from_static(b"x")),
        Err(UsageError::UnknownTransaction(xid))
    );
    // Packets from a confused server after the terminal one: dropped by the client.
    p.take_client_events();
    let late = [
        packet(dialect, 1, xid, d(1, b"late")),
        packet(dialect, 1, xid, Packet::Minor(3)),
        packet(dialect, 1, xid, Packet::Timeout),
    ]
    .concat();
    p.client.handle_bytes(p.now, &late).unwrap();
    assert!(p.client.poll_event().is_none());
    assert_eq!(p.client.stats().unknown_xid_dropped, 3);
    assert!(p.client.is_connected());
}

fn framing_error_is_fatal_and_sticky_on_server(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.run(Command::new("hold")).unwrap();
    p.drive();
    // An unknown type (answered 71), then a header claiming 4 bytes.
    let mut unknown = packet(dialect, 1, 70, Packet::Quit).to_vec();
    unknown[0] = b'Z';
    let mut short = packet(dialect, 1, 71, Packet::Quit).to_vec();
    let len_at = if v4(dialect) { 2 } else { 6 };
    short[len_at..len_at + 2].copy_from_slice(&4u16.to_be_bytes());
    let bytes = [unknown, short, b"garbage after".to_vec()].concat();
    let want = LinkError::Framing(DecodeError::LengthTooShort { len: 4 });
    assert_eq!(p.server.handle_bytes(p.now, &bytes), Err(want.clone()));
    assert_eq!(p.server.error(), Some(&want));
    assert_eq!(p.server.handle_bytes(p.now, b""), Err(want.clone()));
    assert_eq!(
        p.server
            .handle_bytes(p.now, &packet(dialect, 1, 80, Packet::Quit)),
        Err(want.clone())
    );
    assert_eq!(
        p.server.command_exited(xid, 0),
        Err(UsageError::Link(want.clone()))
    );
    assert_eq!(p.server.transactions(), 0);
    assert_eq!(p.server.poll_timeout(), None);
    // The 71 queued before the error still goes out.
    let mut out = bytes::BytesMut::new();
    p.server.poll_transmit(p.now, &mut out);
    let frames = common::pair::decode_all(dialect, Sender::Server, &out);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].xid, &frames[0].packet), (70, &Packet::Major(71)));
}

fn framing_error_is_fatal_and_sticky_on_client(dialect: Dialect) {
    let mut p = manual(dialect);
    p.connect();
    let a = p.client.run(Command::new("a")).unwrap();
    let b = p.client.inject("root", "/f", 0o644).unwrap();
    p.drive();
    let mut short = packet(dialect, 1, a, d(1, b"x")).to_vec();
    let len_at = if v4(dialect) { 2 } else { 6 };
    short[len_at..len_at + 2].copy_from_slice(&7u16.to_be_bytes());
    let ok = packet(dialect, 1, a, d(1, b"before"));
    let bytes = [ok.to_vec(), short].concat();
    let want = LinkError::Framing(DecodeError::LengthTooShort { len: 7 });
    assert_eq!(p.client.handle_bytes(p.now, &bytes), Err(want.clone()));
    let events: Vec<ClientEvent> = std::iter::from_fn(|| p.client.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            output(a, 1, b"before"),
            finished(a, Outcome::LinkLost(want.clone())),
            finished(b, Outcome::LinkLost(want.clone())),
        ]
    );
    assert_eq!(p.client.handle_bytes(p.now, b""), Err(want.clone()));
    assert_eq!(p.client.error(), Some(&want));
    assert!(!p.client.is_connected());
    assert_eq!(
        p.client.run(Command::new("x")),
        Err(UsageError::Link(want.clone()))
    );
    assert_eq!(p.client.quit(), Err(UsageError::Link(want)));
    assert_eq!(p.client.poll_timeout(), None);
}

fn requests_before_hello_are_held(dialect: Dialect) {
    let mut p = Pair::new(dialect);
    let a = p.client.run(Command::new("out=x;exit=0")).unwrap();
    let b = p.client.extract("root", "/gen/3").unwrap();
    p.client.send_stdin(a, Bytes::from_static(b"in")).unwrap();
    p.client.close_stdin(a).unwrap();
    assert!(!p.client.is_connected());
    assert!(p.client.transmit_buffered() > 12);
    let mut first = bytes::BytesMut::new();
    p.client.poll_transmit(p.now, &mut first);
    assert_eq!(first.len(), 12, "only the hello goes out before the reply");
    // Deliver the hello by hand, then let the pair run.
    p.server.handle_bytes(p.now, &first).unwrap();
    p.c2s_log.extend_from_slice(&first);
    p.drive();
    let frames = p.client_frames();
    let kinds: Vec<(u16, u16, tuppence::wire::PacketType)> = frames
        .iter()
        .map(|f| (f.cid, f.xid, f.packet.packet_type()))
        .collect();
    use tuppence::wire::PacketType as T;
    assert_eq!(
        kinds,
        vec![
            (0, 0, T::Hello),
            (1, a, T::Command),
            (1, b, T::Extract),
            (1, a, T::Data),
            (1, a, T::Eof),
        ]
    );
    assert_eq!(p.client.transmit_buffered(), 0);
    let events = p.take_client_events();
    assert!(matches!(events[0], ClientEvent::Connected { .. }));
    assert!(events.contains(&finished(a, Outcome::Exited(0))));
    assert!(events.contains(&finished(b, Outcome::Completed)));
}

// ---------------------------------------------------------------- backpressure

fn queue_full_on_transmit_limit(dialect: Dialect) {
    let limits = Limits {
        max_transmit_buffer: 100,
        ..Limits::default()
    };
    let mut p = server_limited(dialect, limits, NoAgent);
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
        let mut p = client_limited(dialect, limits.clone(), NoAgent);
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
    let mut p = client_limited(dialect, limits, ScriptedAgent::default());
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

// ---------------------------------------------------------------- xids and limits

fn xids_from_one_never_zero_never_reused(dialect: Dialect) {
    let limits = Limits {
        max_transactions: 4,
        ..Limits::default()
    };
    let mut p = client_limited(dialect, limits, ScriptedAgent::default());
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
    let mut p = server_limited(dialect, limits, ScriptedAgent::default());
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

// ---------------------------------------------------------------- settle, procinfo (raw)

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

// ---------------------------------------------------------------- chunking

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

// ---------------------------------------------------------------- 4.0 only: monitor, procinfo

#[test]
fn monitor_data_settle_end() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.monitor("agent").unwrap();
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::Monitor {
            xid,
            source: "agent".into()
        }]
    );
    p.server.output(xid, 0, Bytes::from_static(b"e1")).unwrap();
    p.drive();
    p.client.settle(xid, 7).unwrap();
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::Settle { xid, seq: 7 }]
    );
    p.client.end_monitor(xid).unwrap();
    assert!(matches!(
        p.client.end_monitor(xid),
        Err(UsageError::WrongState { .. })
    ));
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::MonitorEnd { xid }]
    );
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::MonitorData {
                xid,
                data: "e1".into()
            },
            ClientEvent::MonitorData {
                xid,
                data: "event-7".into()
            },
            ClientEvent::Settled { xid, seq: 7 },
            finished(xid, Outcome::Completed),
        ]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![
            d(0, b"e1"),
            d(0, b"event-7"),
            Packet::Settle { seq: 7 },
            x(0),
            Packet::Major(0),
            Packet::Minor(0)
        ]
    );
    assert!(p.agent.monitors.is_empty());
    // The client's end is `X` ch 0.
    let last = p.client_frames().pop().unwrap();
    assert_eq!((last.xid, last.packet), (xid, x(0)));
}

/// Settle and end in one read: the agent answers the settle before the machine ends
/// the monitor, so the client sees `Settled` and then `Finished`.
#[test]
fn monitor_end_follows_pending_settle() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.monitor("agent").unwrap();
    p.client.settle(xid, 3).unwrap();
    p.client.end_monitor(xid).unwrap();
    p.drive();
    assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::MonitorData {
                xid,
                data: "event-3".into()
            },
            ClientEvent::Settled { xid, seq: 3 },
            finished(xid, Outcome::Completed),
        ]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![
            d(0, b"event-3"),
            Packet::Settle { seq: 3 },
            x(0),
            Packet::Major(0),
            Packet::Minor(0)
        ]
    );
}

/// Packets after the client's end of a monitor are late, even while the end's answer
/// waits for the agent to poll it.
#[test]
fn monitor_packets_after_end_are_late() {
    let now = std::time::Instant::now();
    let mut server = Server::new(ServerConfig::default(), now);
    let v = Dialect::V4;
    let bytes = [
        packet(
            v,
            0,
            0,
            Packet::Hello(Hello {
                major: 4,
                minor: 0,
                keepalive: 60,
            }),
        ),
        packet(
            v,
            1,
            9,
            Packet::Monitor {
                source: "agent".into(),
            },
        ),
        packet(v, 1, 9, x(0)),
        packet(v, 1, 9, Packet::Settle { seq: 1 }),
        packet(v, 1, 9, x(0)),
    ]
    .concat();
    assert_eq!(server.handle_bytes(now, &bytes), Ok(bytes.len()));
    assert_eq!(server.stats().unknown_xid_dropped, 2);
    let mut out = bytes::BytesMut::new();
    server.poll_transmit(now, &mut out);
    assert_eq!(
        out.len(),
        12,
        "only the hello reply before the events are polled"
    );
    let events: Vec<ServerEvent> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(
        events[1..],
        [
            ServerEvent::Monitor {
                xid: 9,
                source: "agent".into()
            },
            ServerEvent::MonitorEnd { xid: 9 },
        ]
    );
    out.clear();
    server.poll_transmit(now, &mut out);
    let got: Vec<Packet> = common::pair::decode_all(v, Sender::Server, &out)
        .into_iter()
        .map(|f| f.packet)
        .collect();
    assert_eq!(got, vec![x(0), Packet::Major(0), Packet::Minor(0)]);
    assert!(!server.is_live(9));
}

#[test]
fn monitor_unknown_source_fails_with_2() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.monitor("nosuch").unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![finished(xid, Outcome::Failed { errno: 2 })]
    );
    assert_eq!(p.server_packets(xid), vec![Packet::Major(2)]);
}

#[test]
fn monitor_and_procinfo_not_in_legacy3() {
    let mut p = Pair::new(Dialect::Legacy3);
    p.connect();
    assert_eq!(
        p.client.monitor("agent"),
        Err(UsageError::NotSupported {
            what: "monitor",
            dialect: Dialect::Legacy3
        })
    );
    assert_eq!(p.client.transactions(), 0);
    assert_eq!(p.client.transmit_buffered(), 0);
}

#[test]
fn procinfo_query_response() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.run(Command::new("hold")).unwrap();
    p.drive();
    let mask = field::mask_bit(field::PID) | field::mask_bit(field::RSS_KIB);
    p.client.procinfo(xid, mask).unwrap();
    p.drive();
    assert_eq!(p.server_events[1], ServerEvent::ProcInfo { xid, mask });
    assert_eq!(
        p.transaction_events(),
        vec![ClientEvent::ProcInfo {
            xid,
            fields: vec![ProcInfoField::u32(field::PID, 4000 + u32::from(xid))]
        }]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![Packet::ProcInfoResponse {
            fields: vec![ProcInfoField::u32(field::PID, 4000 + u32::from(xid))]
        }]
    );
    // Not on a transfer.
    let ex = p.client.extract("root", "/gen/1").unwrap();
    assert!(matches!(
        p.client.procinfo(ex, mask),
        Err(UsageError::WrongState { .. })
    ));
}

// ---------------------------------------------------------------- handshake failures

fn server_hello(dialect: Dialect, major: u8, minor: u8) -> Bytes {
    packet(
        dialect,
        1,
        0,
        Packet::Hello(Hello {
            major,
            minor,
            keepalive: 60,
        }),
    )
}

#[test]
fn version_mismatch_names_both_versions() {
    for (dialect, theirs) in [
        (Dialect::V4, (5u8, 1u8)),
        (Dialect::V4, (3, 0)),
        (Dialect::Legacy3, (4, 0)),
    ] {
        let now = std::time::Instant::now();
        let mut c = Client::new(
            ClientConfig {
                dialect,
                ..ClientConfig::default()
            },
            now,
        );
        let xid = c.run(Command::new("x")).unwrap();
        let err = c
            .handle_bytes(now, &server_hello(dialect, theirs.0, theirs.1))
            .unwrap_err();
        let ours = dialect.version();
        assert_eq!(err, LinkError::VersionMismatch { ours, theirs });
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}.{}", theirs.0, theirs.1)), "{msg}");
        assert!(msg.contains(&format!("{}.{}", ours.0, ours.1)), "{msg}");
        assert!(!c.is_connected());
        assert_eq!(
            c.poll_event(),
            Some(finished(xid, Outcome::LinkLost(err.clone())))
        );
        assert_eq!(c.run(Command::new("y")), Err(UsageError::Link(err)));
    }
    // Minor differences are fine.
    let now = std::time::Instant::now();
    let mut c = Client::new(ClientConfig::default(), now);
    c.handle_bytes(now, &server_hello(Dialect::V4, 4, 7))
        .unwrap();
    assert!(c.is_connected());
    assert_eq!(c.server_version(), Some((4, 7)));
}

#[test]
fn first_packet_must_be_a_hello() {
    let now = std::time::Instant::now();
    let mut c = Client::new(ClientConfig::default(), now);
    let err = c
        .handle_bytes(now, &packet(Dialect::V4, 1, 1, Packet::Major(0)))
        .unwrap_err();
    assert!(matches!(err, LinkError::Handshake(_)), "{err:?}");
}
