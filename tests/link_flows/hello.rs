//! Hello and keepalive: the handshake, the negotiated keepalive and its timers, repeated hellos
//! and requests before one, and a clock that goes backwards.

use std::time::Duration;

use bytes::Bytes;
use tuppence::Machine;
use tuppence::link::{
    ClientEvent, Command, Limits, LinkError, Outcome, Server, ServerConfig, ServerEvent, UsageError,
};
use tuppence::wire::{Dialect, Hello, Packet, Sender};

use super::common;
use super::common::pair::{Pair, ScriptedApp, packet, raw_headers};
use super::support::*;

both_dialects!(
    hello_connected,
    hello_with_assigned_cid,
    keepalive_negotiation,
    keepalive_exchange,
    keepalive_suppressed_by_traffic,
    keepalive_expiry_both_sides,
    keepalive_off_never_expires,
    hello_repeated_answered_again,
    answers_to_a_request_flood_are_bounded,
    requests_without_hello_served_with_own_cid,
    time_passed_backwards_is_clamped,
);

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
    let mut p = with_server(dialect, server, ScriptedApp::default());
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
