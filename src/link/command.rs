//! Builders for what a client asks: a command to run and a signal to send.

use std::time::Duration;

use bytes::Bytes;

use super::DEFAULT_COMMAND_TIMEOUT_SECS;
use crate::wire::Dialect;

/// A command for [`super::Client::run`].
///
/// ```
/// use std::time::Duration;
/// use tuppence::link::Command;
/// let cmd = Command::new("uname -a").user("root").timeout(Duration::from_secs(10)).env("LANG", "C");
/// assert_eq!(cmd.timeout_secs(), 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub(crate) user: Bytes,
    pub(crate) command: Bytes,
    pub(crate) timeout_secs: u32,
    pub(crate) tty: bool,
    pub(crate) env: Vec<Bytes>,
}

impl Command {
    /// `/bin/sh -c command` as root with the agent's default timeout.
    pub fn new(command: impl Into<Bytes>) -> Self {
        Command {
            user: Bytes::from_static(b"root"),
            command: command.into(),
            timeout_secs: 0,
            tty: false,
            env: Vec::new(),
        }
    }

    /// The user to run as.
    pub fn user(mut self, user: impl Into<Bytes>) -> Self {
        self.user = user.into();
        self
    }

    /// The agent kills the command after this long (rounded up to whole seconds;
    /// zero means the agent's default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let secs = timeout
            .as_secs()
            .saturating_add(u64::from(timeout.subsec_nanos() > 0));
        self.timeout_secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self
    }

    /// Run on a pseudo-terminal (stdout and stderr merged on channel 1).
    pub fn tty(mut self, tty: bool) -> Self {
        self.tty = tty;
        self
    }

    /// Adds `NAME=value` to the command's environment (the client's value wins over the
    /// agent's defaults for `HOME`, `USER` and `PATH`).
    pub fn env(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        let mut entry = Vec::with_capacity(
            name.as_ref()
                .len()
                .saturating_add(value.as_ref().len())
                .saturating_add(1),
        );
        entry.extend_from_slice(name.as_ref());
        entry.push(b'=');
        entry.extend_from_slice(value.as_ref());
        self.env.push(entry.into());
        self
    }

    pub fn timeout_secs(&self) -> u32 {
        self.timeout_secs
    }

    /// The timeout a client sends for this command in `dialect`: its own; without one (0),
    /// 0 in 4.0 (the agent's default applies) and [`DEFAULT_COMMAND_TIMEOUT_SECS`] in 3.0,
    /// where the C executor would read 0 as 12 s.
    pub fn timeout_secs_in(&self, dialect: Dialect) -> u32 {
        match (self.timeout_secs, dialect) {
            (0, Dialect::Legacy3) => DEFAULT_COMMAND_TIMEOUT_SECS,
            (t, _) => t,
        }
    }

    pub fn command(&self) -> &[u8] {
        &self.command
    }
}

/// A signal for [`super::Client::interrupt`], carried by name on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signal(Bytes);

impl Signal {
    pub const INT: Signal = Signal(Bytes::from_static(b"INT"));
    pub const TERM: Signal = Signal(Bytes::from_static(b"TERM"));
    pub const KILL: Signal = Signal(Bytes::from_static(b"KILL"));
    pub const HUP: Signal = Signal(Bytes::from_static(b"HUP"));
    pub const QUIT: Signal = Signal(Bytes::from_static(b"QUIT"));

    /// Any signal name the agent understands (`"USR1"`, `"SIGUSR1"`, …).
    pub fn named(name: impl Into<Bytes>) -> Self {
        Signal(name.into())
    }

    pub fn name(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        self.0
    }
}
