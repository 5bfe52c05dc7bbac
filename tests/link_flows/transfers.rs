//! Injects and extracts, interrupts (of commands and transfers) and quit.

use bytes::Bytes;
use tuppence::link::{ClientEvent, Command, Outcome, ServerEvent, Signal, UsageError};
use tuppence::wire::{Dialect, Packet};

use super::common::pair::{Pair, raw_headers, signo};
use super::support::*;

both_dialects!(
    inject_go_ahead_data_result,
    inject_failures,
    extract_to_eof,
    idle_client_releases_receive_buffer,
    idle_server_releases_receive_buffer,
    extract_failures,
    interrupt_each_signal,
    interrupt_aborts_transfers,
    abort_answer_follows_agent_answers,
    quit_carries_cid,
);

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

/// The agent's side of the same: a connection that injected a file and is now idle keeps
/// no receive block sized for the file's data (an agent may hold many such connections).
fn idle_server_releases_receive_buffer(dialect: Dialect) {
    use tuppence::Machine;
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.inject("root", "/tmp/big", 0o600).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![ClientEvent::InjectReady { xid }]
    );
    assert!(!p.server.is_idle());
    for _ in 0..4 {
        p.client
            .send_file_data(xid, Bytes::from(vec![7u8; 50_000]))
            .unwrap();
        p.drive();
        assert!(!p.server.is_idle(), "idle in the middle of an inject");
    }
    let held = p.server.receive_capacity();
    assert!(held >= 16 * 1024, "the data took no block: {held}");
    p.client.finish_file(xid).unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![finished(xid, Outcome::Completed)]
    );
    assert!(p.server.is_idle());
    assert_eq!(p.server.receive_capacity(), 0, "kept after the inject");
    // A command afterwards works, and the block goes again once it is over.
    let c = p.client.run(Command::new("out=hi;exit=0")).unwrap();
    p.drive();
    assert!(p.take_client_events().contains(&ClientEvent::Finished {
        xid: c,
        outcome: Outcome::Exited(0)
    }));
    assert!(p.server.is_idle());
    assert_eq!(p.server.receive_capacity(), 0);
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

/// A farm's controller holds hundreds of sessions, mostly idle: once its transfers are
/// over, a client keeps no receive block sized for bulk data.
fn idle_client_releases_receive_buffer(dialect: Dialect) {
    use tuppence::Machine;
    let mut p = Pair::new(dialect);
    p.connect();
    let xid = p.client.extract("root", "/gen/100000").unwrap();
    assert!(!p.client.is_idle());
    p.drive();
    let events = p.take_client_events();
    let got: usize = events
        .iter()
        .map(|e| match e {
            ClientEvent::Output { xid: x, data, .. } if *x == xid => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(got, 100_000);
    assert!(events.contains(&ClientEvent::Finished {
        xid,
        outcome: Outcome::Completed
    }));
    assert!(p.client.is_idle());
    assert_eq!(p.client.receive_capacity(), 0);
    // The next transaction still works, and its answers take a block again.
    let c = p.client.run(Command::new("out=hello;exit=0")).unwrap();
    p.drive();
    assert!(p.take_client_events().contains(&ClientEvent::Finished {
        xid: c,
        outcome: Outcome::Exited(0)
    }));
}
