//! `Client::run_without_stdin`: a command and the end of its stdin as one intent, so an
//! adapter that writes once per intent sends both in one write, and the intent is queued
//! whole or not at all.

mod common;

use bytes::{Bytes, BytesMut};
use common::pair::{Pair, raw_headers};
use tuppence::Machine;
use tuppence::link::{ClientEvent, Command, Outcome, UsageError};
use tuppence::wire::{Dialect, Packet};

/// The type byte the dialect gives the end of stdin (`X` in 4.0, `E` in 3.0).
fn eof_type(dialect: Dialect) -> u8 {
    Packet::Eof { channel: 0 }
        .to_bytes(dialect, 0, 1)
        .unwrap()
        .first()
        .copied()
        .unwrap()
}

#[test]
fn the_request_and_the_end_of_stdin_leave_in_one_transmit() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let mut p = Pair::new(dialect);
        p.connect();
        let xid = p.client.run_without_stdin(Command::new("cat")).unwrap();
        let mut buf = BytesMut::new();
        assert!(p.client.poll_transmit(p.now, &mut buf) > 0);
        let sent: Vec<(u8, u16)> = raw_headers(dialect, &buf)
            .iter()
            .map(|h| (h.0, h.2))
            .collect();
        assert_eq!(sent, [(b'c', xid), (eof_type(dialect), xid)], "{dialect:?}");
        // Stdin is closed already: a second close is a usage error, not a second packet.
        assert!(matches!(
            p.client.close_stdin(xid),
            Err(UsageError::WrongState { .. })
        ));
        assert!(matches!(
            p.client.send_stdin(xid, Bytes::from_static(b"late")),
            Err(UsageError::WrongState { .. })
        ));
    }
}

#[test]
fn the_agent_sees_the_end_of_stdin_and_the_command_completes() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let mut p = Pair::new(dialect);
        p.connect();
        // `cat` in the scripted agent runs until its stdin ends, then exits 0.
        let xid = p.client.run_without_stdin(Command::new("cat")).unwrap();
        p.drive();
        let events = p.transaction_events();
        assert_eq!(
            events.last(),
            Some(&ClientEvent::Finished {
                xid,
                outcome: Outcome::Exited(0)
            }),
            "{dialect:?}: {events:?}"
        );
        assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    }
}

#[test]
fn before_the_hello_reply_both_packets_wait_and_go_out_in_order() {
    let dialect = Dialect::V4;
    let mut p = Pair::new(dialect);
    assert!(!p.client.is_connected());
    let xid = p.client.run_without_stdin(Command::new("cat")).unwrap();
    p.drive();
    assert!(p.client.is_connected());
    let sent: Vec<(u8, u16)> = raw_headers(dialect, &p.c2s_log)
        .iter()
        .filter(|h| h.0 != b'h' && h.0 != b'K')
        .map(|h| (h.0, h.2))
        .collect();
    assert_eq!(sent, [(b'c', xid), (b'X', xid)]);
    assert!(p.transaction_events().contains(&ClientEvent::Finished {
        xid,
        outcome: Outcome::Exited(0)
    }));
}

#[test]
fn a_full_queue_refuses_the_whole_intent() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let cat = p.client.run(Command::new("hold")).unwrap();
    loop {
        match p.client.send_stdin(cat, Bytes::from(vec![0u8; 64 << 10])) {
            Ok(()) => {}
            Err(UsageError::QueueFull { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let before = p.client.transactions();
    let buffered = p.client.transmit_buffered();
    assert!(matches!(
        p.client.run_without_stdin(Command::new("cat")),
        Err(UsageError::QueueFull { .. })
    ));
    assert_eq!(p.client.transactions(), before, "a transaction was opened");
    assert_eq!(p.client.transmit_buffered(), buffered, "bytes were queued");
}
