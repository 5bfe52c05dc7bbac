//! The machines' counters.

/// Counters for observability; never used for decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Packets dropped because they carried another connection's cid.
    pub foreign_cid_dropped: u64,
    /// Packets dropped because their xid named no live transaction.
    pub unknown_xid_dropped: u64,
    /// Packets dropped because they made no sense (see `Violation`).
    pub violations: u64,
    /// Device links: times the decoder found a new client's hello where the packet
    /// boundaries were lost, and the bytes of line noise it dropped in front of them (see
    /// `Limits::stale_partial_after`).
    pub stale_partials_dropped: u64,
    pub stale_bytes_dropped: u64,
    /// Client: bytes skipped before the hello reply (see
    /// `ClientConfig::resync_before_hello`).
    pub skipped_before_hello: u64,
    /// Server: hellos that ended a session with live transactions (see
    /// `ServerConfig::hello_resets_session`), and the bytes of old output that hellos
    /// discarded from the transmit queue.
    pub session_resets: u64,
    pub discarded_bytes: u64,
    /// Client: commands the agent had not ended by their timeout plus the grace (see
    /// `ClientConfig::deadline_grace`), which the client then reported as timed out.
    pub deadlines_expired: u64,
}

/// Adds `n` to a counter (counters saturate; they never wrap or panic).
pub(crate) fn count(counter: &mut u64, n: usize) {
    *counter = counter.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
}
