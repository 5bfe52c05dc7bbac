//! Exit statuses and the one-line error every failure is reported as.
//!
//! The `tuppence` command is meant to sit in test scripts in place of the command it runs,
//! so its exit status *is* the remote command's: its exit code, or 128 + the signal number
//! when a signal killed it (what a shell reports for a local command). Failures of tuppence
//! itself use codes from 200 up, far above what commands normally return, so a script can
//! tell "the test failed" from "the test could not be run". A remote command that itself
//! exits with 200 or more is indistinguishable from those; that is the price of mirroring.

use std::fmt;
use std::io;

use tuppence::link::{LinkError, UsageError};
use tuppence_blocking::Error as SessionError;
use tuppence_transport::TransportError;

/// The command timed out: the agent killed it at its timeout, or it had not ended 5 s
/// after it (an agent that cannot enforce it, such as the C executor with a grandchild
/// holding the output), when tuppence sent it KILL and stopped waiting.
pub const TIMEOUT: u8 = 200;
/// The agent could not do what was asked: the command could not be started (unknown user,
/// user not allowed), a file could not be opened or written, an event source does not
/// exist. The agent's errno is printed.
pub const REMOTE_FAILURE: u8 = 201;
/// The target could not be opened or connected, the agent refused the connection (too
/// many clients, out of file descriptors), or the connection broke (peer closed,
/// keepalive expired, no hello reply in time). For `exec:`, `ssh:` and `chroot:`: the
/// command could not be started, or it exited (its status and last stderr lines are in
/// the message).
pub const CONNECTION: u8 = 202;
/// The peer does not speak the protocol we expect (version mismatch, bad handshake, a
/// byte stream that lost its framing).
pub const PROTOCOL: u8 = 203;
/// The command line is wrong (also for clap's own errors, which would otherwise use 2 and
/// collide with a remote command's exit code 2), or the target cannot do what was asked
/// (e.g. a monitor over the 3.0 dialect, or a command, environment and user too large for
/// one packet: 32768 bytes in 3.0).
pub const USAGE: u8 = 204;
/// A local file or stream failed: reading the file to inject, writing the extracted file,
/// writing `--stdout`/`--stderr` files.
pub const LOCAL_IO: u8 = 205;
/// Interrupted by the user (Ctrl-C) while tuppence itself was working (a transfer), as a
/// shell would report SIGINT.
pub const INTERRUPTED: u8 = 128 + 2;

/// The exit status table, shown at the end of `tuppence --help`.
pub const TABLE: &str = "\
Exit status:
  0-199    the remote command's exit code (run, procinfo --wait); 0 = success otherwise
  128+N    the remote command was killed by signal N (e.g. 143 for TERM)
  130      interrupted by Ctrl-C during a transfer
  200      the command timed out (killed by the agent, or not ended 5 s after its timeout)
  201      the agent could not do it (command did not start, file error, unknown source)
  202      connection failure (cannot connect, refused, peer closed, keepalive expired,
           an exec:/ssh:/chroot: command that cannot start or exits)
  203      protocol failure (version mismatch, handshake, framing)
  204      bad usage (command line, target syntax, operation not in the target's dialect,
           a request too large for one packet)
  205      local file or stream failure";

/// A failure, printed as one line: `tuppence: CONTEXT: MESSAGE`, where the context is
/// usually the target, so the user sees where the problem is and what it is.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub context: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            context: None,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    /// A local I/O error on `what` (a path or "stdout").
    pub fn local(what: impl fmt::Display, e: &io::Error) -> Failure {
        Failure::new(LOCAL_IO, format!("{what}: {}", io_text(e)))
    }

    /// Names where the failure happened (normally the target), unless already named.
    #[must_use]
    pub fn at(mut self, context: impl fmt::Display) -> Failure {
        if self.context.is_none() {
            self.context = Some(context.to_string());
        }
        self
    }

    /// Classifies a session error of the blocking adapter.
    pub fn session(e: SessionError) -> Failure {
        match e {
            SessionError::Connect(e) => transport(e),
            SessionError::Io(e) => Failure::new(CONNECTION, format!("transport: {}", io_text(&e))),
            SessionError::Link(e) => link(&e),
            SessionError::Usage(e) => usage_error(&e),
            SessionError::Remote { what, errno } => Failure::new(
                REMOTE_FAILURE,
                format!(
                    "{what} failed on the system under test: {}",
                    tuppence_blocking::errno_text(errno)
                ),
            ),
            SessionError::ConnectTimeout(t) => Failure::new(
                CONNECTION,
                format!(
                    "no answer to the hello within {} s (is an agent listening there?)",
                    t.as_secs_f64()
                ),
            ),
            SessionError::Local { what, source } => {
                Failure::new(LOCAL_IO, format!("local {what}: {}", io_text(&source)))
            }
            other => Failure::new(CONNECTION, clean(&other.to_string())),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.context {
            Some(c) => write!(f, "tuppence: {c}: {}", self.message),
            None => write!(f, "tuppence: {}", self.message),
        }
    }
}

/// How a broken link maps to an exit status: a peer that went away is a connection
/// failure, a peer that speaks something else is a protocol failure.
pub fn link(e: &LinkError) -> Failure {
    let code = match e {
        LinkError::Closed | LinkError::KeepaliveExpired(_) | LinkError::Refused(_) => CONNECTION,
        _ => PROTOCOL,
    };
    Failure::new(code, e.to_string())
}

fn usage_error(e: &UsageError) -> Failure {
    match e {
        UsageError::Link(e) => link(e),
        UsageError::NotSupported { .. } | UsageError::TooLarge { .. } | UsageError::Encode(_) => {
            Failure::usage(e.to_string())
        }
        other => Failure::new(PROTOCOL, other.to_string()),
    }
}

/// Connect and open errors. `Connect` is reworded to put the cause after the target the
/// caller names anyway (`unix:/x: cannot connect: No such file or directory`).
pub fn transport(e: TransportError) -> Failure {
    match e {
        TransportError::Connect { source, .. } => {
            Failure::new(CONNECTION, format!("cannot connect: {}", io_text(&source)))
        }
        TransportError::Local { .. } => Failure::usage(e.to_string()),
        other => Failure::new(CONNECTION, clean(&other.to_string())),
    }
}

/// An I/O error's text without Rust's ` (os error N)` suffix, which says nothing more to a
/// user than the text before it.
pub fn io_text(e: &io::Error) -> String {
    clean(&e.to_string())
}

/// Writes one line to stderr. Unlike `eprintln!`, which panics when stderr is a closed
/// pipe (`tuppence serve 2>&1 | head -1`), a failed write is ignored: there is nowhere
/// left to report it.
pub fn say(line: impl fmt::Display) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "{line}");
}

/// Stderr for the log: a write that fails (stderr is a closed pipe, as in `tuppence serve
/// 2>&1 | head -1`) is dropped. With plain `io::stderr` the logger reported the failure with
/// `eprintln!`, which panicked the logging thread: the agent loop at its next log line, or
/// the signal thread, so that SIGTERM no longer stopped the agent.
pub struct QuietStderr;

impl io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Removes every ` (os error N)` from a message.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" (os error ") {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let after = &tail[" (os error ".len()..];
        match after.find(')') {
            Some(j) if after[..j].bytes().all(|b| b.is_ascii_digit()) => {
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str(" (os error ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_suffix_is_removed() {
        assert_eq!(
            clean("cannot open x: No such file or directory (os error 2)"),
            "cannot open x: No such file or directory"
        );
        assert_eq!(clean("a (os error x) b"), "a (os error x) b");
        assert_eq!(clean("plain"), "plain");
    }

    #[test]
    fn one_line_with_context() {
        let f = Failure::new(CONNECTION, "cannot connect: refused").at("unix:/x");
        assert_eq!(f.to_string(), "tuppence: unix:/x: cannot connect: refused");
    }
}
