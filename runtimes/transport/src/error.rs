//! Errors from opening, configuring and binding transports.
//!
//! Each variant keeps the OS error as its `source` and adds what was being opened, so the
//! CLI can print one line that a user can act on ("cannot open serial device /dev/ttyS1:
//! Permission denied") without this crate choosing a logging framework.

use std::io;
use std::path::PathBuf;

/// Why a transport could not be connected, opened or bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// `local` names an agent embedded in the calling process: there is nothing to open.
    #[error(
        "the local target is an agent embedded in this process; it has no transport to {action} (the CLI runs it over a socket pair)"
    )]
    Local {
        /// `"connect"` or `"listen on"`.
        action: &'static str,
    },
    /// Host name resolution failed.
    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve {
        /// The host as written.
        host: String,
        /// The port.
        port: u16,
        /// The resolver's error.
        source: io::Error,
    },
    /// Resolution succeeded but gave no address.
    #[error("{host}:{port} resolved to no address")]
    NoAddress {
        /// The host as written.
        host: String,
        /// The port.
        port: u16,
    },
    /// Connecting a socket failed (for TCP, the error of the last address tried).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint as a target string.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// Opening a device (serial tty, virtio-serial port) failed.
    #[error("cannot open {what} {path}: {source}")]
    Open {
        /// `"serial device"` or `"virtio-serial port"`.
        what: &'static str,
        /// The device path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A virtio-serial port is already open: the kernel allows one opener at a time.
    #[error(
        "virtio-serial port {path} is already open (another agent running?); the kernel allows one opener"
    )]
    PortBusy {
        /// The device path.
        path: PathBuf,
    },
    /// A serial target names something that is not a terminal.
    #[error("{path} is not a terminal device (serial targets need a tty)")]
    NotATty {
        /// The path.
        path: PathBuf,
    },
    /// Setting raw 8N1 mode and the baud rate failed.
    #[error("cannot configure {path} as raw 8N1 at {baud} baud: {source}")]
    Configure {
        /// The device path.
        path: PathBuf,
        /// The requested speed.
        baud: u32,
        /// The OS error.
        source: io::Error,
    },
    /// Creating, binding or listening on a socket failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        /// The endpoint as a target string.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// The unix socket path exists but is not a socket; it is never removed.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process accepts connections on the unix socket path.
    #[error("another process is already listening on {path}")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// AF_VSOCK exists only on Linux.
    #[error("vsock is only available on Linux")]
    VsockUnsupported,
    /// `exec:`, `ssh:` and `chroot:` are client-side ways to start an agent; nothing listens
    /// on them.
    #[error(
        "{transport} targets cannot be listened on (the agent's side of them is `tuppence serve --stdio`)"
    )]
    NotListenable {
        /// `"exec"`, `"ssh"` or `"chroot"`.
        transport: &'static str,
    },
    /// The command of an `exec:`, `ssh:` or `chroot:` target could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command, as an `exec:` target would write it.
        command: String,
        /// Why (`No such file or directory` for an unknown program).
        source: io::Error,
    },
}
