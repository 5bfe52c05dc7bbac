//! The client's own command deadlines (ARCHITECTURE.md, "Client deadlines": timeout + 5 s)
//! and the timeout it sends, in both dialects, through a Client↔Server pair on a simulated
//! clock.

#[macro_use]
mod common;

use std::time::Duration;

use common::pair::{NoApp, Pair, ScriptedApp};
use tuppence::Machine;
use tuppence::link::{
    COMMAND_DEADLINE_GRACE, ClientConfig, ClientEvent, Command, DEFAULT_COMMAND_TIMEOUT_SECS,
    Outcome, ServerConfig, ServerEvent,
};
use tuppence::wire::{Dialect, Packet};

both_dialects!(
    abandon_owes_what_each_kind_needs,
    timeout_sent_on_the_wire,
    silent_agent_is_timed_out_by_the_client,
    agent_answer_after_the_deadline_is_dropped,
    an_answered_command_leaves_no_deadline,
    deadline_counts_from_the_transmit_not_from_a_stale_clock,
    deadline_counts_from_the_hello_reply_for_held_requests,
    deadlines_expire_in_their_own_order,
    no_grace_leaves_timeouts_to_the_agent,
    a_dead_link_ends_commands_once,
);

/// A pair whose client has `grace` and whose keepalives are off, so that the only timers
/// are the command deadlines.
fn pair<A: common::pair::App>(dialect: Dialect, grace: Option<Duration>, agent: A) -> Pair<A> {
    let mut p = Pair::with_agent(
        ClientConfig {
            dialect,
            keepalive: 0,
            deadline_grace: grace,
            ..ClientConfig::default()
        },
        ServerConfig {
            keepalive: 0,
            ..ServerConfig::default()
        },
        agent,
    );
    p.connect();
    p
}

fn silent(dialect: Dialect) -> Pair<NoApp> {
    pair(dialect, Some(COMMAND_DEADLINE_GRACE), NoApp)
}

fn timed_out(xid: u16) -> ClientEvent {
    ClientEvent::Finished {
        xid,
        outcome: Outcome::TimedOut,
    }
}

/// The timeouts the server machine was asked for, in order.
fn requested_timeouts(p: &Pair<impl common::pair::App>) -> Vec<Duration> {
    p.server_events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::RunCommand { timeout, .. } => Some(*timeout),
            _ => None,
        })
        .collect()
}

/// The timeout field of every command packet the client sent.
fn wire_timeouts(p: &Pair<impl common::pair::App>) -> Vec<u32> {
    p.client_frames()
        .into_iter()
        .filter_map(|f| match f.packet {
            Packet::Command(c) => Some(c.timeout),
            _ => None,
        })
        .collect()
}

fn timeout_sent_on_the_wire(dialect: Dialect) {
    let mut p = silent(dialect);
    p.client.run(Command::new("a")).unwrap();
    p.client
        .run(Command::new("b").timeout(Duration::from_millis(1500)))
        .unwrap();
    p.drive();
    // Without a timeout: 0 (the agent's default) in 4.0; 60 in 3.0, where the C executor
    // would read 0 as 12 s.
    let default = match dialect {
        Dialect::V4 => 0,
        Dialect::Legacy3 => DEFAULT_COMMAND_TIMEOUT_SECS,
    };
    assert_eq!(wire_timeouts(&p), vec![default, 2]);
    assert_eq!(
        requested_timeouts(&p),
        vec![Duration::from_secs(60), Duration::from_secs(2)]
    );
}

fn silent_agent_is_timed_out_by_the_client(dialect: Dialect) {
    let mut p = silent(dialect);
    let start = p.now;
    let xid = p
        .client
        .run(Command::new("sleep 45").timeout(Duration::from_secs(2)))
        .unwrap();
    p.drive();
    assert_eq!(p.next_timeout(), Some(start + Duration::from_secs(7)));
    p.run_until(start + Duration::from_millis(6999));
    assert!(p.client.is_live(xid));
    assert!(p.transaction_events().is_empty());
    p.jump();
    assert_eq!(p.elapsed(), Duration::from_secs(7));
    assert_eq!(p.transaction_events(), vec![timed_out(xid)]);
    assert!(!p.client.is_live(xid));
    assert_eq!(p.client.stats().deadlines_expired, 1);
    // The agent is told to kill it: KILL by name in 4.0, the bare interrupt in 3.0.
    let want: &[u8] = match dialect {
        Dialect::V4 => b"KILL",
        Dialect::Legacy3 => b"",
    };
    let interrupts: Vec<(u16, Vec<u8>)> = p
        .client_frames()
        .into_iter()
        .filter_map(|f| match f.packet {
            Packet::Interrupt { signal } => Some((f.xid, signal.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(interrupts, vec![(xid, want.to_vec())]);
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::Interrupt { xid: x, .. } if *x == xid
    )));
    // Nothing else is pending: no second report, no timer left.
    assert_eq!(p.next_timeout(), None);
    p.run_for(Duration::from_secs(3600));
    assert!(p.transaction_events().is_empty());
}

fn agent_answer_after_the_deadline_is_dropped(dialect: Dialect) {
    // `hold` waits for an interrupt: the agent answers the client's KILL with "killed by
    // 9", which arrives for an xid the client has forgotten.
    let mut p = pair(
        dialect,
        Some(COMMAND_DEADLINE_GRACE),
        ScriptedApp::default(),
    );
    let xid = p
        .client
        .run(Command::new("hold").timeout(Duration::from_secs(1)))
        .unwrap();
    p.drive();
    let dropped = p.client.stats().unknown_xid_dropped;
    p.run_for(Duration::from_secs(6));
    assert_eq!(p.transaction_events(), vec![timed_out(xid)]);
    assert!(p.client.stats().unknown_xid_dropped > dropped);
    assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    // The connection goes on.
    let next = p.client.run(Command::new("exit=3")).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events().last(),
        Some(&ClientEvent::Finished {
            xid: next,
            outcome: Outcome::Exited(3)
        })
    );
}

fn an_answered_command_leaves_no_deadline(dialect: Dialect) {
    let mut p = pair(
        dialect,
        Some(COMMAND_DEADLINE_GRACE),
        ScriptedApp::default(),
    );
    // The agent's own timeout (`T`) comes first and ends it; then an ordinary exit.
    let a = p
        .client
        .run(Command::new("timeout").timeout(Duration::from_secs(2)))
        .unwrap();
    let b = p
        .client
        .run(Command::new("exit=0").timeout(Duration::from_secs(2)))
        .unwrap();
    p.drive();
    let events = p.transaction_events();
    assert!(events.contains(&timed_out(a)), "{events:?}");
    assert!(
        events.contains(&ClientEvent::Finished {
            xid: b,
            outcome: Outcome::Exited(0)
        }),
        "{events:?}"
    );
    assert_eq!(p.client.poll_timeout(), None);
    p.run_for(Duration::from_secs(3600));
    assert!(p.transaction_events().is_empty());
    assert_eq!(p.client.stats().deadlines_expired, 0);
    assert!(
        !p.client_frames()
            .iter()
            .any(|f| matches!(f.packet, Packet::Interrupt { .. }))
    );
}

fn deadline_counts_from_the_transmit_not_from_a_stale_clock(dialect: Dialect) {
    // The machine last saw the clock long ago (an idle session); the request goes out now.
    let mut p = silent(dialect);
    p.advance(Duration::from_secs(100));
    let sent = p.now;
    let xid = p
        .client
        .run(Command::new("x").timeout(Duration::from_secs(2)))
        .unwrap();
    p.drive();
    assert_eq!(p.client.poll_timeout(), Some(sent + Duration::from_secs(7)));
    p.client.handle_timeout(sent + Duration::from_secs(6));
    assert!(p.client.is_live(xid));
    p.run_until(sent + Duration::from_secs(7));
    assert_eq!(p.transaction_events(), vec![timed_out(xid)]);
}

fn deadline_counts_from_the_hello_reply_for_held_requests(dialect: Dialect) {
    // A request made before the hello reply waits in the machine; its deadline starts
    // when it is handed to the transport after the reply, however long that took.
    let mut p = Pair::with_agent(
        ClientConfig {
            dialect,
            keepalive: 0,
            handshake_timeout: None,
            ..ClientConfig::default()
        },
        ServerConfig {
            keepalive: 0,
            ..ServerConfig::default()
        },
        NoApp,
    );
    let xid = p
        .client
        .run(Command::new("x").timeout(Duration::from_secs(1)))
        .unwrap();
    p.link_up = false;
    p.drive(); // the hello is lost
    p.advance(Duration::from_secs(600));
    assert_eq!(p.client.poll_timeout(), None);
    p.client.handle_timeout(p.now);
    assert!(p.client.is_live(xid));
    // A new link: the client's hello goes again (as after a retry), and is answered.
    p.link_up = true;
    let hello = Packet::Hello(tuppence::wire::Hello {
        major: dialect.version().0,
        minor: dialect.version().1,
        keepalive: 0,
    })
    .to_bytes(dialect, 0, 0)
    .unwrap();
    p.server.handle_bytes(p.now, &hello).unwrap();
    p.drive();
    assert!(p.client.is_connected());
    let connected = p.now;
    assert_eq!(
        p.client.poll_timeout(),
        Some(connected + Duration::from_secs(6))
    );
    p.run_until(connected + Duration::from_secs(6));
    assert_eq!(p.transaction_events(), vec![timed_out(xid)]);
}

fn deadlines_expire_in_their_own_order(dialect: Dialect) {
    let mut p = pair(dialect, Some(Duration::from_secs(1)), NoApp);
    let start = p.now;
    let xids: Vec<u16> = [3u64, 1, 2]
        .iter()
        .map(|&s| {
            p.client
                .run(Command::new("x").timeout(Duration::from_secs(s)))
                .unwrap()
        })
        .collect();
    p.drive();
    let mut seen = Vec::new();
    // Bounded: a deadline that never clears would keep `jump` firing at the same time.
    for _ in 0..10 {
        let Some(t) = p.jump() else { break };
        for ev in p.transaction_events() {
            if let ClientEvent::Finished { xid, outcome } = ev {
                assert_eq!(outcome, Outcome::TimedOut);
                seen.push((xid, t - start));
            }
        }
    }
    assert_eq!(
        seen,
        vec![
            (xids[1], Duration::from_secs(2)),
            (xids[2], Duration::from_secs(3)),
            (xids[0], Duration::from_secs(4)),
        ]
    );
    assert_eq!(p.client.stats().deadlines_expired, 3);
}

fn no_grace_leaves_timeouts_to_the_agent(dialect: Dialect) {
    let mut p = pair(dialect, None, NoApp);
    let xid = p
        .client
        .run(Command::new("x").timeout(Duration::from_secs(1)))
        .unwrap();
    p.drive();
    assert_eq!(p.client.poll_timeout(), None);
    p.run_for(Duration::from_secs(3600));
    assert!(p.client.is_live(xid));
    assert!(p.transaction_events().is_empty());
}

fn a_dead_link_ends_commands_once(dialect: Dialect) {
    let mut p = silent(dialect);
    let xid = p
        .client
        .run(Command::new("x").timeout(Duration::from_secs(1)))
        .unwrap();
    p.drive();
    p.client.handle_eof(p.now);
    p.drain_client();
    let events = p.transaction_events();
    assert!(
        matches!(
            events.as_slice(),
            [ClientEvent::Finished {
                outcome: Outcome::LinkLost(_),
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(p.client.poll_timeout(), None);
    p.client.handle_timeout(p.now + Duration::from_secs(60));
    assert!(p.client.poll_event().is_none());
    assert!(!p.client.is_live(xid));
}

/// `Client::abandon`: what a transaction given up on owes the agent (used by the adapters
/// for dropped handles, local failures and aborts).
fn abandon_owes_what_each_kind_needs(dialect: Dialect) {
    let mut p = pair(dialect, None, NoApp);
    let cmd = p.client.run(Command::new("x")).unwrap();
    let extract = p.client.extract("root", "/f").unwrap();
    let inject = p.client.inject("root", "/g", 0o644).unwrap();
    p.drive();
    p.take_server_events();
    for xid in [cmd, extract, inject] {
        p.client.abandon(xid).unwrap();
    }
    p.drive();
    let interrupted: Vec<u16> = p
        .client_frames()
        .into_iter()
        .filter(|f| matches!(f.packet, Packet::Interrupt { .. }))
        .map(|f| f.xid)
        .collect();
    // The transfers are aborted; the command is left to run.
    assert_eq!(interrupted, vec![extract, inject]);
    assert!(p.client.is_live(cmd));
    assert!(matches!(
        p.client.abandon(999),
        Err(tuppence::link::UsageError::UnknownTransaction(999))
    ));
    if dialect == Dialect::V4 {
        let monitor = p.client.monitor("agent").unwrap();
        p.drive();
        p.client.abandon(monitor).unwrap();
        // Already ending: nothing more to send.
        let queued = p.client.transmit_buffered();
        p.client.abandon(monitor).unwrap();
        assert_eq!(p.client.transmit_buffered(), queued);
        p.drive();
        assert!(
            p.server_events
                .iter()
                .any(|e| matches!(e, ServerEvent::MonitorEnd { xid } if *xid == monitor))
        );
    }
}
