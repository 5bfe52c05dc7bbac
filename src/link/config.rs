//! Configuration and limits of the link machines. Every queue has a bound here.

use std::time::Duration;

use crate::wire::{DEFAULT_SEND_PACKET_LEN, Dialect, MAX_PACKET_LEN};

/// Keepalive value meaning "use the server's default".
pub const KEEPALIVE_SERVER_DEFAULT: u16 = 0xFFFF;
/// The server's default keepalive in seconds.
pub const DEFAULT_KEEPALIVE_SECS: u16 = 60;
/// Keepalive intervals below this are raised to it (as the C executor does).
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(10);
/// Agent default for a command timeout of 0.
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u32 = 60;

/// Limits shared by both machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet this side sends (header included); data is chunked to fit.
    pub max_send_packet: usize,
    /// Largest packet accepted from the peer.
    pub max_receive_packet: usize,
    /// Events queued before `handle_bytes` stops consuming input.
    pub max_events: usize,
    /// Transmit bytes queued before intents answer `QueueFull`.
    pub max_transmit_buffer: usize,
    /// Live transactions per connection.
    pub max_transactions: usize,
    /// Keepalive intervals below this are raised to it (10 s, as the C executor; tests
    /// lower it to exercise expiry on a real clock).
    pub min_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_send_packet: DEFAULT_SEND_PACKET_LEN,
            max_receive_packet: MAX_PACKET_LEN,
            // Each event may hold a packet's payload: 64 × 64 KiB bounds what an
            // undrained machine keeps.
            max_events: 64,
            max_transmit_buffer: 1 << 20,
            max_transactions: 1024,
            min_keepalive: MIN_KEEPALIVE,
        }
    }
}

/// Configuration of a [`super::Client`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Wire dialect to speak; the client does not guess.
    pub dialect: Dialect,
    /// Requested keepalive in seconds (0 = off, 0xFFFF = the server's default).
    pub keepalive: u16,
    /// How long to wait for the server's hello reply (`None` = forever, e.g. for a serial
    /// line whose agent may start later).
    pub handshake_timeout: Option<Duration>,
    pub limits: Limits,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            dialect: Dialect::V4,
            keepalive: KEEPALIVE_SERVER_DEFAULT,
            handshake_timeout: Some(Duration::from_secs(60)),
            limits: Limits::default(),
        }
    }
}

/// Configuration of a [`super::Server`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The connection id the agent assigned to this connection (not 0).
    pub cid: u16,
    /// `None` detects the dialect from the client's first 8 bytes.
    pub dialect: Option<Dialect>,
    /// The agent's keepalive setting in seconds (0 = off). Serial and virtio ports default
    /// to off on the agent, sockets to 60.
    pub keepalive: u16,
    /// Timeout applied to commands that ask for 0.
    pub default_command_timeout: Duration,
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            cid: 1,
            dialect: None,
            keepalive: DEFAULT_KEEPALIVE_SECS,
            default_command_timeout: Duration::from_secs(u64::from(DEFAULT_COMMAND_TIMEOUT_SECS)),
            limits: Limits::default(),
        }
    }
}

/// The interval a side applies for a negotiated keepalive value: `None` = off, otherwise
/// at least `min` (normally [`MIN_KEEPALIVE`]); 0xFFFF stands for the default (60 s).
pub fn effective_keepalive(secs: u16, min: Duration) -> Option<Duration> {
    match secs {
        0 => None,
        KEEPALIVE_SERVER_DEFAULT => Some(Duration::from_secs(DEFAULT_KEEPALIVE_SECS.into())),
        s => Some(Duration::from_secs(s.into()).max(min)),
    }
}

/// The value the server puts in its hello reply: min(client request, server setting),
/// where 0 on either side turns keepalives off and 0xFFFF asks for the server's setting.
pub fn negotiate_keepalive(client: u16, server: u16) -> u16 {
    let client = if client == KEEPALIVE_SERVER_DEFAULT {
        server
    } else {
        client
    };
    if client == 0 || server == 0 {
        0
    } else {
        client.min(server)
    }
}
