//! What the flows share: small constructors of events and packets, and pairs set up for a
//! dialect with one setting changed.

use bytes::Bytes;
use tuppence::link::{ClientConfig, ClientEvent, Limits, Outcome, ServerConfig};
use tuppence::wire::{Dialect, Packet};

use super::common::pair::{App, NoApp, Pair, ScriptedApp};

pub fn v4(d: Dialect) -> bool {
    d == Dialect::V4
}

pub fn eof_byte(d: Dialect) -> u8 {
    if v4(d) { b'X' } else { b'E' }
}

pub fn finished(xid: u16, outcome: Outcome) -> ClientEvent {
    ClientEvent::Finished { xid, outcome }
}

/// How a command's transaction ends on the client: end of stdout and stderr (4.0 only, 3.0
/// has no output end), then the outcome.
pub fn command_end(dialect: Dialect, xid: u16, outcome: Outcome) -> Vec<ClientEvent> {
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

pub fn output(xid: u16, channel: u16, data: &'static [u8]) -> ClientEvent {
    ClientEvent::Output {
        xid,
        channel,
        data: Bytes::from_static(data),
    }
}

pub fn d(channel: u16, data: &'static [u8]) -> Packet {
    Packet::Data {
        channel,
        data: Bytes::from_static(data),
    }
}

pub fn x(channel: u16) -> Packet {
    Packet::Eof { channel }
}

pub fn manual(dialect: Dialect) -> Pair<NoApp> {
    with_server(dialect, ServerConfig::default(), NoApp)
}

/// A pair whose client speaks `dialect` with default settings and whose server has `server`.
pub fn with_server<A: App>(dialect: Dialect, server: ServerConfig, agent: A) -> Pair<A> {
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
pub fn server_limited<A: App>(dialect: Dialect, limits: Limits, agent: A) -> Pair<A> {
    let server = ServerConfig {
        limits,
        ..ServerConfig::default()
    };
    with_server(dialect, server, agent)
}

/// A pair whose client speaks `dialect` with `limits`; the server has default settings.
pub fn client_limited<A: App>(dialect: Dialect, limits: Limits, agent: A) -> Pair<A> {
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
pub fn with_keepalive(dialect: Dialect, client: u16, server: u16) -> Pair<ScriptedApp> {
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
        ScriptedApp::default(),
    )
}
