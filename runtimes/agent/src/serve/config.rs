//! What `tuppence serve` can be told.

use std::time::Duration;

use tuppence::link::DEVICE_STALE_PARTIAL_AFTER;

/// The link daemon's settings. Every per-connection resource has a bound here.
#[derive(Clone, Debug)]
pub struct LinkDaemonConfig {
    /// Connections served at once. More are refused with words: their hello is answered
    /// with `M`=EUSERS (87), `m`=this limit, then the connection is closed (logged at most
    /// once per 10 s, with a count).
    pub max_clients: usize,
    /// How long clients may wait in a listen backlog while the agent is out of file
    /// descriptors (they are accepted as soon as fds come free) before they are refused
    /// with `M`=EMFILE (24), through a reserve fd kept for that.
    pub fd_wait: Duration,
    /// Live transactions per connection.
    pub max_transactions: usize,
    /// Timeout for commands that ask for 0.
    pub default_timeout: Duration,
    /// Keepalive offered on socket connections (unix, TCP, vsock), seconds; 0 = off.
    pub socket_keepalive: u16,
    /// Keepalive offered on serial and virtio ports, seconds; 0 = off (a tty has no
    /// disconnect, so silence is normal there).
    pub port_keepalive: u16,
    /// On serial and virtio ports, how long a silence inside a packet must be for the
    /// agent to look for a new client's hello next to it and drop the unfinished packet
    /// in front of one (a client that died mid-write must not eat the next client's
    /// hello; a live client that pauses is never cut: see `Limits::stale_partial_after`).
    /// `None` = never.
    pub port_stale_partial_after: Option<Duration>,
    /// Users commands and transfers may run as, and monitors read as
    /// ([`crate::sources::ReadAs`]); `None` = any.
    pub allow_users: Option<Vec<Vec<u8>>>,
    /// Whether a client's `q` stops the agent.
    pub allow_quit: bool,
    /// Log every request's audit record (as `tracing` info events, the text of the `agent`
    /// trail's records).
    pub audit: bool,
    /// Child output is not read while a connection has more than this queued to send.
    pub transmit_limit: usize,
    /// The link is not read while a connection has more than this much stdin unwritten.
    pub stdin_limit: usize,
    /// Return from `run` when no listener and no connection is left (embedded use).
    pub exit_when_idle: bool,
    /// Run each command in its own cgroup v2 where the system allows it (a writable
    /// cgroup2 hierarchy with `cgroup.kill`: root on the host, or a delegated subtree), so
    /// that a timeout, an interrupt with KILL and a disconnect kill everything the command
    /// started. Elsewhere, and with this off, commands are killed by process group, which
    /// a process that calls `setsid` escapes. See [`crate::cgroup`].
    pub cgroups: bool,
    /// Make the cgroup subtree (with `cgroups`) only once the loop's first turn has
    /// answered what was already waiting, instead of in [`LinkDaemon::new`]: the embedded
    /// agent's client then gets its hello answered about 0.2 ms sooner, and the subtree is
    /// made while it reads the answer. Until then [`LinkDaemon::containment`] says so.
    ///
    /// [`LinkDaemon::new`]: super::LinkDaemon::new
    /// [`LinkDaemon::containment`]: super::LinkDaemon::containment
    pub defer_cgroups: bool,
    /// Make each command's cgroup (with `cgroups`) directly in this process's own cgroup
    /// instead of in a subtree of the agent's (`CgroupTree::create_flat_lazy`): one
    /// cgroup fewer to make and remove, for an agent embedded in a short-lived process
    /// (`EmbeddedAgent` sets it). A daemon keeps its commands together in its subtree.
    pub cgroups_in_own: bool,
    /// Make the agent's process a child subreaper and reap the orphans of commands (see
    /// [`crate::reaper`]). Leave on unless the process embedding the agent starts children
    /// of its own that call `setsid` and reaps them itself. (Its `SIGCHLD` is also what
    /// tells the agent that a killed command's cgroup has emptied; with this off such
    /// cgroups are removed at later spawns.)
    pub reap_orphans: bool,
    /// Testing aid: the inject finisher waits this long before each inject's flush, as a
    /// slow disk would. Zero in service.
    #[doc(hidden)]
    pub inject_finish_delay: Duration,
}

impl Default for LinkDaemonConfig {
    fn default() -> Self {
        LinkDaemonConfig {
            max_clients: 64,
            fd_wait: crate::admission::REFUSE_AFTER,
            max_transactions: 1024,
            default_timeout: Duration::from_secs(60),
            socket_keepalive: 60,
            port_keepalive: 0,
            port_stale_partial_after: Some(DEVICE_STALE_PARTIAL_AFTER),
            allow_users: None,
            allow_quit: true,
            audit: true,
            transmit_limit: 1 << 20,
            stdin_limit: 1 << 20,
            exit_when_idle: false,
            cgroups: true,
            defer_cgroups: false,
            cgroups_in_own: false,
            reap_orphans: true,
            inject_finish_delay: Duration::ZERO,
        }
    }
}
