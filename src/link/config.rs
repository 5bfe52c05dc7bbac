//! Configuration and limits of the link machines. Every queue has a bound here.

use std::time::Duration;

use crate::wire::{DEFAULT_SEND_PACKET_LEN, Dialect, MAX_PACKET_LEN};

/// Keepalive value meaning "use the server's default".
pub const KEEPALIVE_SERVER_DEFAULT: u16 = 0xFFFF;
/// The server's default keepalive in seconds.
pub const DEFAULT_KEEPALIVE_SECS: u16 = 60;
/// Keepalive intervals below this are raised to it (as the C executor does).
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(10);
/// Agent default for a command timeout of 0; also what a 3.0 client sends for a command
/// without a timeout (the C executor reads 0 as 12 s, its library always sends 60).
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u32 = 60;
/// How long past a command's timeout a client waits for the agent to end it before it
/// reports the timeout itself (see [`ClientConfig::deadline_grace`]; ARCHITECTURE.md,
/// "Client deadlines").
pub const COMMAND_DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// On a device link, how long a silence inside a packet must last before the agent looks
/// for a new client's hello around it (see [`Limits::stale_partial_after`]).
pub const DEVICE_STALE_PARTIAL_AFTER: Duration = Duration::from_secs(1);
/// On a device link, the client says hello again when no reply came within this long
/// (see [`ClientConfig::hello_retry`]). Longer than [`DEVICE_STALE_PARTIAL_AFTER`]: an
/// agent that found the first hello glued to a stale partial packet answers it after
/// that silence, before the retry.
pub const DEVICE_HELLO_RETRY: Duration = Duration::from_millis(1500);

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
    /// Device links, server only (with [`ServerConfig::hello_resets_session`]): `Some(gap)`
    /// lets the agent recover a new client's hello that follows the unfinished packet of
    /// a client that died mid-write (line noise that would otherwise swallow the hello, or
    /// make it a framing error). `None` (the default, right for sockets, which never carry
    /// a previous client's bytes) turns this off.
    ///
    /// **The rule.** Unfinished bytes are dropped as debris only where it is known that a
    /// new session starts: at a silence of at least `gap` inside a packet (measured from
    /// the last byte received; time the runtime spends not reading, see
    /// `handle_input_paused`, and bytes offered again after the machine pushed back do not
    /// count) that is next to a hello. Either
    ///
    /// * the bytes after the silence begin with a hello: the unfinished packet before it
    ///   is dropped (decoding waits for those first 9 bytes; if they are the start of a
    ///   hello and then nothing comes for `gap` again, they are taken as data); or
    /// * the last 12 bytes before the silence are a hello that does not start where the
    ///   decoder would read one (the unfinished packet ends with it, or its first bytes
    ///   completed the dead client's packet): a new client glued its hello to the debris
    ///   and waits for the reply. Decoding restarts at that hello.
    ///
    /// A hello here is its first 9 bytes: type `h`, cid 0, xid 0, length 12 and the major
    /// version, in the 4.0 form (`68 00 00 0c 00 00 00 00 04`) or the 3.0 form
    /// (`68 00 00 00 00 00 00 0c 03`), whatever the session spoke so far; the session
    /// continues in the hello's dialect. Two more rules need no silence: a framing error (a length
    /// below 8) skips bytes up to the next hello instead of closing the link, and a
    /// hang-up ends the session but passes a hello among its last bytes to the next one
    /// (see [`super::Server::carryover`]). Anything else — a live client that pauses for
    /// seconds in the middle of a packet (a loaded host, a descheduled VM, a slow line) —
    /// is never cut: it continues where it stopped.
    ///
    /// **Why data is not mistaken for a hello.** In a client's own stream those 9 bytes
    /// never cover a packet's type byte (it would be 0x00, 0x0c, 0x03 or 0x04, no packet
    /// type), so they can only lie inside one packet, in practice in data it carries (file
    /// or stdin data, a command line). So a live client is cut only if it pauses for at
    /// least `gap` exactly before, or exactly 3 bytes after, such 9 bytes in one of its
    /// packets. For random data that is a chance of about 2^-70 per pause (two 9-byte
    /// signatures, on either side of it). The residual risk is data that holds hellos —
    /// say, injecting a capture of this protocol — over a line that stalls for `gap`
    /// exactly at one; it shows as the transfer failing and a
    /// [`super::Violation::StalePartial`]. A hello a dead client's debris hides
    /// completely (its 12 bytes exactly complete the unfinished packet, glued to it with
    /// no silence between) is not found; [`ClientConfig::hello_retry`] recovers from that.
    pub stale_partial_after: Option<Duration>,
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
            stale_partial_after: None,
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
    /// `Some(t)`: when no hello reply came within `t`, say hello once more. For device
    /// links, where the first hello can be lost: in the rare case that it exactly completed
    /// a packet a previous client left unfinished, the agent cannot tell it from data (see
    /// [`Limits::stale_partial_after`]). A repeated hello is
    /// harmless: it always reaches the agent before any request of this client (requests
    /// wait for the reply), and the agent answers it with the same cid. `None` (default)
    /// never repeats it.
    pub hello_retry: Option<Duration>,
    /// Until the hello reply, skip whatever does not start a hello reply instead of
    /// failing with [`super::LinkError::Handshake`]. For device links: the agent cannot
    /// know that a new client is there until its hello arrives, so what it sent the
    /// previous client in the meantime (output, keepalives, possibly starting in the
    /// middle of a packet) reaches the new one first. Skipped bytes are counted in
    /// [`super::Stats::skipped_before_hello`]. With it, a peer that is not an agent at
    /// all is reported by the handshake timeout rather than at once. Default `false`.
    pub resync_before_hello: bool,
    /// `Some(grace)`: a command with a timeout that the agent has not ended within its
    /// timeout plus `grace` (counted from when its request was handed to the transport,
    /// see [`crate::Machine::poll_transmit`]) is ended by the client: it sends the agent
    /// an interrupt (KILL), reports `Finished { outcome: TimedOut }` and forgets the xid
    /// (later packets for it are dropped as for any unknown xid).
    ///
    /// Why the client needs its own deadline: the C executor's timeout is an `alarm` in
    /// the shell only, so a grandchild holding the output pipes keeps it from answering
    /// until the grandchild exits (`sleep 45` under `--timeout 2` answers after 45 s), and
    /// an agent that dies or hangs with the link still up never answers at all. A command
    /// without a timeout in 4.0 (0 = the agent's default, which only the agent knows) has
    /// no client deadline; in 3.0 it is sent [`DEFAULT_COMMAND_TIMEOUT_SECS`] and gets
    /// one. Default: [`COMMAND_DEADLINE_GRACE`]; `None` leaves timeouts to the agent.
    pub deadline_grace: Option<Duration>,
    pub limits: Limits,
}

impl ClientConfig {
    /// These settings for a device link (serial tty, virtio-serial port, or a socket in
    /// front of one, such as QEMU's chardev sockets): [`Self::hello_retry`] after
    /// [`DEVICE_HELLO_RETRY`] (4.0 only: a 3.0 agent may not expect a second hello) and
    /// [`Self::resync_before_hello`].
    pub fn for_device_link(mut self) -> Self {
        if self.dialect == Dialect::V4 {
            self.hello_retry = Some(DEVICE_HELLO_RETRY);
        }
        self.resync_before_hello = true;
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            dialect: Dialect::V4,
            keepalive: KEEPALIVE_SERVER_DEFAULT,
            handshake_timeout: Some(Duration::from_secs(60)),
            hello_retry: None,
            resync_before_hello: false,
            deadline_grace: Some(COMMAND_DEADLINE_GRACE),
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
    /// A hello ends the session in progress: the live transactions are dropped (announced
    /// by [`super::ServerEvent::SessionReset`] before the hello's own event, so that the
    /// application kills their processes, closes their monitors and removes partial
    /// files, as after a disconnect) and output not yet transmitted is discarded (see
    /// [`crate::Machine::poll_discard_unsent`]), so none of it reaches the new client. The
    /// cid stays the same.
    ///
    /// For device links (serial tty, virtio-serial port): a tty has no disconnect and
    /// keepalives are off there by default, so the agent may not see a client vanish, and
    /// a hello is the only sign that a new one is there. Without this, the new client
    /// would land in the old session: the old xids still live (its requests would collide
    /// with them) and, e.g., its EOF committing the vanished client's half-sent inject.
    /// Clients only repeat a hello before their first request (see
    /// [`ClientConfig::hello_retry`]), so a repeated hello never ends their own session.
    /// `false` (the default, right for sockets) answers a repeated hello and changes
    /// nothing else, as ARCHITECTURE.md ("Link protocol") says.
    pub hello_resets_session: bool,
    pub limits: Limits,
}

impl ServerConfig {
    /// These settings for a device link (serial tty, virtio-serial port):
    /// [`Self::hello_resets_session`] and [`Limits::stale_partial_after`] =
    /// [`DEVICE_STALE_PARTIAL_AFTER`] (unless already set).
    pub fn for_device_link(mut self) -> Self {
        self.hello_resets_session = true;
        if self.limits.stale_partial_after.is_none() {
            self.limits.stale_partial_after = Some(DEVICE_STALE_PARTIAL_AFTER);
        }
        self
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            cid: 1,
            dialect: None,
            keepalive: DEFAULT_KEEPALIVE_SECS,
            default_command_timeout: Duration::from_secs(u64::from(DEFAULT_COMMAND_TIMEOUT_SECS)),
            hello_resets_session: false,
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
