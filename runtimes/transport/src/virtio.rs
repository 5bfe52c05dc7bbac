//! The guest end of a virtio-serial port, as the agent sees it.
//!
//! Kernel behaviour this code is built around (drivers/char/virtio_console.c, and the C
//! executor's `wait_for_virtio_host`):
//!
//! * The port can be open only once at a time: a second `open` fails with `EBUSY`. So the
//!   port is opened once, read-write, and each host session gets a dup of that fd.
//! * While no host is connected, `read` returns EOF at once and `poll` reports
//!   `POLLIN | POLLHUP`. A poll loop would therefore spin; waiting for a host is done by
//!   checking for `POLLHUP` and sleeping (100 ms growing to 250 ms) between checks.
//! * When the host disconnects, the guest reads EOF. The same fd works again when a host
//!   connects, so no reopen is needed.
//! * Bytes the host sent before the guest opened the port are delivered after the open.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::device::VirtioLink;
use crate::error::TransportError;
use crate::sys;

/// An open virtio-serial port (agent side). Also a [`Listener`](crate::Listener) variant.
///
/// Agent loop, blocking:
///
/// ```no_run
/// # use std::io::Read;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tuppence_transport::VirtioPort;
/// let port = VirtioPort::open(tuppence_transport::DEFAULT_VIRTIO_PORT)?;
/// loop {
///     port.wait_for_host(None)?;           // sleeps while POLLHUP, no busy loop
///     let mut link = port.session()?;      // a dup of the port fd, blocking mode
///     let mut buf = [0u8; 4096];
///     while link.read(&mut buf)? > 0 { /* feed the protocol machine */ }
///     // Ok(0): the host went away. Drop the link and wait for the next host.
/// }
/// # }
/// ```
///
/// In an event loop, register a session's fd only while the host is connected: once the
/// host leaves, the fd is permanently readable (EOF) and hung up. On EOF, deregister, drop
/// the link, and call [`host_connected`](Self::host_connected) from a timer (every
/// [`RETRY_INTERVAL`](Self::RETRY_INTERVAL)) until it is `true`.
#[derive(Debug)]
pub struct VirtioPort {
    file: File,
    path: PathBuf,
    /// One count per live session link; see `session`.
    lease: Arc<()>,
    /// Makes `accept` return `WouldBlock` instead of waiting for a host.
    nonblocking: AtomicBool,
}

impl VirtioPort {
    /// How often an event loop should check for a host while none is connected.
    pub const RETRY_INTERVAL: Duration = sys::BACKOFF_MAX;

    /// Opens the port read-write (`O_NOCTTY`, close-on-exec). Open it once and keep it: the
    /// kernel refuses a second opener. `EBUSY` becomes
    /// [`TransportError::PortBusy`]: another process (an agent already running) has it.
    pub fn open(path: impl AsRef<Path>) -> Result<VirtioPort, TransportError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // O_NONBLOCK only so that open itself can never wait (were the path a tty without
            // CLOCAL); sessions switch their mode themselves and waiting here uses poll.
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::EBUSY) {
                    TransportError::PortBusy {
                        path: path.to_owned(),
                    }
                } else {
                    TransportError::Open {
                        what: "virtio-serial port",
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
        Ok(VirtioPort::from_file(file, path))
    }

    /// Uses an fd the caller opened (e.g. inherited from a supervisor). `path` is only used
    /// in descriptions.
    pub fn from_file(file: File, path: impl Into<PathBuf>) -> VirtioPort {
        VirtioPort {
            file,
            path: path.into(),
            lease: Arc::new(()),
            nonblocking: AtomicBool::new(false),
        }
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `true` when a host is connected (the port does not report `POLLHUP`). Never blocks.
    pub fn host_connected(&self) -> io::Result<bool> {
        sys::peer_present(&self.file)
    }

    /// Waits until a host is connected, for at most `timeout` (`None` = forever), without
    /// busy-looping: between checks it sleeps 100 ms, growing to 250 ms. `Ok(true)` when a
    /// host is there, `Ok(false)` on timeout.
    pub fn wait_for_host(&self, timeout: Option<Duration>) -> io::Result<bool> {
        sys::wait_with_backoff(timeout, || self.host_connected())
    }

    /// A link for one host session: a dup of the port fd, in blocking mode. Does not wait;
    /// call [`wait_for_host`](Self::wait_for_host) first, or the first read returns EOF.
    ///
    /// Fails with `ResourceBusy` while a link from an earlier call is still alive: two
    /// sessions on one port would interleave their bytes.
    pub fn session(&self) -> io::Result<VirtioLink> {
        if Arc::strong_count(&self.lease) > 1 {
            return Err(session_busy(&self.path));
        }
        VirtioLink::new(
            self.file.try_clone()?,
            self.path.clone(),
            Arc::clone(&self.lease),
        )
    }

    /// Waits for a host (unless in non-blocking mode, see
    /// [`set_nonblocking`](Self::set_nonblocking)) and returns a [`session`](Self::session).
    ///
    /// In non-blocking mode, fails with `WouldBlock` while no host is connected: retry from a
    /// timer every [`RETRY_INTERVAL`](Self::RETRY_INTERVAL).
    pub fn accept(&self) -> io::Result<VirtioLink> {
        if self.session_active() {
            return Err(session_busy(&self.path));
        }
        let ready = if self.nonblocking.load(Ordering::Relaxed) {
            self.host_connected()?
        } else {
            self.wait_for_host(None)?
        };
        if !ready {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "no host connected to the virtio-serial port",
            ));
        }
        self.session()
    }

    /// Chooses whether [`accept`](Self::accept) waits for a host. It does not change the fd's
    /// `O_NONBLOCK` flag (each session link sets its own mode, and waiting here never reads).
    pub fn set_nonblocking(&self, nonblocking: bool) {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
    }

    /// `true` while a link from [`session`](Self::session) (or a clone of it) is alive.
    pub fn session_active(&self) -> bool {
        Arc::strong_count(&self.lease) > 1
    }
}

pub(crate) fn session_busy(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "{} already has a live session; drop it before accepting again",
            path.display()
        ),
    )
}

impl AsFd for VirtioPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for VirtioPort {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
