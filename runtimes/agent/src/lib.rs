//! # tuppence-agent — the agent's side effects
//!
//! The agent's two daemons, on one event loop (`tuppence_mio::EventLoop`), and the building
//! blocks they need inside the system under test, independent of the protocol machines in
//! the core crate:
//!
//! * [`serve`] — [`serve::LinkDaemon`], `tuppence serve`: the link protocol's agent.
//! * [`sniff`] — [`sniff::SniffDaemon`], `tuppence sniff serve`, and its task runner.
//! * [`spawn`] — run `/bin/sh -c COMMAND` as a user, on pipes or a pty, with a pidfd.
//! * [`cgroup`] — a cgroup v2 per command, so that nothing a command starts escapes it.
//! * [`reaper`] — the agent as a child subreaper: orphans of commands are adopted and reaped.
//! * [`files`] — inject (atomic: temporary + rename) and extract, as the user.
//! * [`paths`] — client-named paths resolved by the kernel as the user, opened without
//!   blocking, non-regular files refused.
//! * [`escape`] — peer-supplied strings made safe for log lines and audit records.
//! * [`procinfo`] — the `P` request's fields from `/proc`.
//! * [`sources`] — event sources for monitors: kernel log, followed files, the agent's trail.
//! * [`status`] — the status words (errno values) the protocol reports.
//! * [`user`] — account lookup and acting as a user for file access.
//! * [`fdio`] — non-blocking read/write helpers.
//! * [`embedded`] — an agent on a thread of the calling process over a socket pair (the
//!   `local` target of the CLI and the Python package).
//! * [`sniff`] — the sniff task protocol over processes and transports: task runner, serve
//!   loops, blocking client, command line.
//!
//! Host-side code is not here: the clients are `tuppence-blocking` and `tuppence-smol`, the
//! command line is the `tuppence` binary.
//!
//! Linux only. Nothing here blocks the loop or starts threads: every fd handed out is
//! `O_NONBLOCK|O_CLOEXEC` so a readiness loop (mio) can poll it, and sources that cannot be
//! polled say how often to look ([`sources::EventSource::poll_interval`]).
//!
//! The agent process is expected to ignore SIGPIPE (Rust binaries do) and must not set SIGCHLD
//! to `SIG_IGN` (children are reaped through their pidfds; the [`reaper`] installs a SIGCHLD
//! handler of its own). That handler is installed with `SA_RESTART`, but some system calls
//! are never restarted after a handler ran (signal(7): socket reads and writes with a
//! `SO_RCVTIMEO`/`SO_SNDTIMEO` timeout, `epoll_wait`, `nanosleep`, …): an application that
//! embeds the agent sees `EINTR` (`ErrorKind::Interrupted`) there and must retry, as the
//! client adapters of this workspace do.

mod admission;
pub mod cgroup;
mod contain;
pub mod embedded;
pub mod escape;
pub mod fdio;
pub mod files;
pub mod paths;
pub mod procinfo;
mod pty;
pub mod reaper;
pub mod serve;
pub mod sniff;
pub mod sources;
pub mod spawn;
pub mod status;
pub mod user;

pub use files::{ExtractFile, FileError, InjectFile, Injected};
pub use procinfo::{ProcInfoError, read_procinfo};
pub use spawn::{
    Child, ExitStatus, SpawnError, SpawnSpec, signal_from_name, spawn_command, spawn_command_in,
    spawn_command_nowait, spawn_command_nowait_in,
};
pub use status::errno_of;
pub use user::{User, UserError};
