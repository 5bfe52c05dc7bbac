//! Packet sizes per dialect: a 3.0 peer (the C executor) takes at most 32768 bytes per
//! packet, so a 3.0 connection never sends more, and a request that cannot fit is refused
//! at once with a typed error (ARCHITECTURE.md, "Link protocol", the 3.0 dialect), never
//! sent to stall the peer.

mod common;

use bytes::Bytes;
use common::pair::{NoApp, Pair, ScriptedApp, raw_headers};
use tuppence::Machine;
use tuppence::link::{ClientConfig, Command, Limits, ServerConfig, UsageError};
use tuppence::wire::{Dialect, HEADER_LEN, LEGACY_MAX_PACKET_LEN, MAX_PACKET_LEN, Packet};

/// Bytes a command packet needs beyond its command text: header, `root\0`, the command's
/// NUL and four u32 fields.
const COMMAND_OVERHEAD: usize = HEADER_LEN + 5 + 1 + 16;

fn limits_max_send(max: usize) -> Limits {
    Limits {
        max_send_packet: max,
        ..Limits::default()
    }
}

fn configured(dialect: Dialect, client_max: usize, server_max: usize) -> Pair<ScriptedApp> {
    let mut p = Pair::with_agent(
        ClientConfig {
            dialect,
            limits: limits_max_send(client_max),
            ..ClientConfig::default()
        },
        ServerConfig {
            limits: limits_max_send(server_max),
            ..ServerConfig::default()
        },
        ScriptedApp::default(),
    );
    p.connect();
    p
}

/// A connected pair whose agent answers nothing (the commands here are not scripts).
fn quiet(dialect: Dialect) -> Pair<NoApp> {
    let mut p = Pair::with_agent(
        ClientConfig {
            dialect,
            ..ClientConfig::default()
        },
        ServerConfig::default(),
        NoApp,
    );
    p.connect();
    p
}

/// The length of every command the server machine was asked to run.
fn commands_received(p: &Pair<NoApp>) -> Vec<usize> {
    p.server_events
        .iter()
        .filter_map(|e| match e {
            tuppence::link::ServerEvent::RunCommand { command, .. } => Some(command.len()),
            _ => None,
        })
        .collect()
}

fn too_large(r: Result<u16, UsageError>) -> (usize, usize, Dialect) {
    match r {
        Err(UsageError::TooLarge {
            len, max, dialect, ..
        }) => (len, max, dialect),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn legacy_command_up_to_32768_bytes_is_sent_one_more_is_refused() {
    let mut p = quiet(Dialect::Legacy3);
    let fits = "x".repeat(LEGACY_MAX_PACKET_LEN - COMMAND_OVERHEAD);
    p.client.run(Command::new(fits)).unwrap();
    p.drive();
    let lens: Vec<usize> = raw_headers(Dialect::Legacy3, &p.c2s_log)
        .iter()
        .filter(|h| h.0 == b'c')
        .map(|h| usize::from(h.3))
        .collect();
    assert_eq!(lens, vec![LEGACY_MAX_PACKET_LEN]);
    assert_eq!(
        commands_received(&p),
        vec![LEGACY_MAX_PACKET_LEN - COMMAND_OVERHEAD]
    );

    let buffered = p.client.transmit_buffered();
    let live = p.client.transactions();
    let over = "x".repeat(LEGACY_MAX_PACKET_LEN - COMMAND_OVERHEAD + 1);
    let (len, max, dialect) = too_large(p.client.run(Command::new(over)));
    assert_eq!(
        (len, max, dialect),
        (LEGACY_MAX_PACKET_LEN + 1, 32768, Dialect::Legacy3)
    );
    // Nothing was queued and no transaction opened.
    assert_eq!(p.client.transmit_buffered(), buffered);
    assert_eq!(p.client.transactions(), live);
}

#[test]
fn legacy_limit_counts_user_and_environment_too() {
    let mut p = quiet(Dialect::Legacy3);
    let cmd = Command::new("true")
        .env("BIG", "v".repeat(20_000))
        .env("MORE", "w".repeat(13_000));
    let (len, max, _) = too_large(p.client.run(cmd));
    assert!(len > max && max == LEGACY_MAX_PACKET_LEN, "{len} {max}");
    let cmd = Command::new("true").user("u".repeat(40_000));
    too_large(p.client.run(cmd));
    // Transfers' paths too.
    let long_path = format!("/{}", "p".repeat(40_000));
    assert!(matches!(
        p.client.inject("root", long_path.clone(), 0o644),
        Err(UsageError::TooLarge { .. })
    ));
    assert!(matches!(
        p.client.extract("root", long_path),
        Err(UsageError::TooLarge { .. })
    ));
}

#[test]
fn v4_takes_requests_up_to_the_16_bit_length() {
    let mut p = quiet(Dialect::V4);
    // 40 000 bytes: over the 3.0 limit, within 4.0's.
    p.client.run(Command::new("x".repeat(40_000))).unwrap();
    p.drive();
    assert_eq!(commands_received(&p), vec![40_000]);
    let over = "x".repeat(MAX_PACKET_LEN - COMMAND_OVERHEAD + 1);
    let (len, max, dialect) = too_large(p.client.run(Command::new(over)));
    assert_eq!(
        (len, max, dialect),
        (MAX_PACKET_LEN + 1, MAX_PACKET_LEN, Dialect::V4)
    );
}

#[test]
fn requests_held_for_the_hello_reply_are_checked_at_once() {
    let mut p = Pair::with_agent(
        ClientConfig {
            dialect: Dialect::Legacy3,
            ..ClientConfig::default()
        },
        ServerConfig::default(),
        NoApp,
    );
    assert!(!p.client.is_connected());
    let over = "x".repeat(LEGACY_MAX_PACKET_LEN);
    too_large(p.client.run(Command::new(over)));
    assert_eq!(p.client.transactions(), 0);
}

#[test]
fn legacy_data_packets_stay_within_32768_whatever_is_configured() {
    // Both sides configured for the 16-bit maximum: a 3.0 connection still keeps to the
    // C executor's limit, in stdin from the client and in output from the server.
    let mut p = configured(Dialect::Legacy3, MAX_PACKET_LEN, MAX_PACKET_LEN);
    let xid = p.client.run(Command::new("cat")).unwrap();
    p.drive();
    let data = Bytes::from(vec![7u8; 300_000]);
    p.client.send_stdin(xid, data).unwrap();
    p.drive();
    p.client.close_stdin(xid).unwrap();
    p.drive();
    for (side, log) in [("client", &p.c2s_log), ("server", &p.s2c_log)] {
        let headers = raw_headers(Dialect::Legacy3, log);
        let data: Vec<usize> = headers
            .iter()
            .filter(|h| h.0 == b'D')
            .map(|h| usize::from(h.3))
            .collect();
        assert!(!data.is_empty(), "{side}");
        assert!(
            headers
                .iter()
                .all(|h| usize::from(h.3) <= LEGACY_MAX_PACKET_LEN),
            "{side}: {data:?}"
        );
        assert_eq!(data.iter().max(), Some(&LEGACY_MAX_PACKET_LEN), "{side}");
    }
    let echoed: usize = p
        .server_packets(xid)
        .iter()
        .map(|pk| match pk {
            Packet::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(echoed, 300_000);
}

#[test]
fn v4_data_packets_follow_the_configuration() {
    let mut p = configured(Dialect::V4, MAX_PACKET_LEN, MAX_PACKET_LEN);
    let xid = p.client.run(Command::new("cat")).unwrap();
    p.drive();
    p.client
        .send_stdin(xid, Bytes::from(vec![7u8; 300_000]))
        .unwrap();
    p.drive();
    let largest = raw_headers(Dialect::V4, &p.c2s_log)
        .iter()
        .filter(|h| h.0 == b'D')
        .map(|h| usize::from(h.3))
        .max();
    assert_eq!(largest, Some(MAX_PACKET_LEN));
}
