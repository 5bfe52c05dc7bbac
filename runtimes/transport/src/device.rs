//! Character-device links: serial ttys and virtio-serial ports.
//!
//! Both do their I/O through a plain [`File`] on the device fd, never through serial2's
//! `read`/`write`: those wait in `poll` for up to the port's timeout (3 s by default) and then
//! fail with `TimedOut`, which an event loop cannot use. A `File` read on the same fd waits
//! (blocking mode) or fails with `WouldBlock` (non-blocking mode), like a socket. Reads map
//! `EIO` to end of file: that is how a pty master reports that its slave closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serial2::SerialPort;

use crate::error::TransportError;
use crate::sys;

/// One end of a serial line (a tty or a pty), configured raw 8N1.
///
/// Holds the serial2 handle (for baud rate, modem lines, break) and a dup of its fd for data.
/// Both share one open file description, so [`set_nonblocking`](Self::set_nonblocking) on
/// either affects both. New links are in blocking mode.
#[derive(Debug)]
pub struct SerialLink {
    port: SerialPort,
    io: File,
    path: Option<PathBuf>,
    /// Held while a listener's session is alive; see `Listener::accept`.
    lease: Option<Arc<()>>,
}

/// The guest end of a virtio-serial channel, as handed out by
/// [`VirtioPort`](crate::VirtioPort) for one host session.
///
/// Read returns `Ok(0)` when the host disconnects; the agent then drops the link and waits
/// for the next host with the port. New links are in blocking mode.
#[derive(Debug)]
pub struct VirtioLink {
    io: File,
    path: PathBuf,
    lease: Arc<()>,
}

/// Opens `path` as a serial port and configures it: raw, 8 data bits, no parity, one stop
/// bit, no flow control, `baud`.
///
/// Beyond serial2's `set_raw` this sets `CLOCAL | CREAD` (ignore modem control, so a
/// null-modem cable without carrier detect works and a dropped DCD does not hang up the
/// line) and pins `VMIN=1, VTIME=0`: with `VMIN=0` a blocking read returns 0 when no byte
/// is there yet, a spurious EOF that broke every other connection of the C executor.
pub(crate) fn open_serial_port(path: &Path, baud: u32) -> Result<SerialPort, TransportError> {
    // O_NONBLOCK: opening a tty without CLOCAL would otherwise wait for carrier detect.
    // O_NOCTTY: the agent must not acquire the line as its controlling terminal.
    // std adds O_CLOEXEC, so commands the agent runs do not inherit the line.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| TransportError::Open {
            what: "serial device",
            path: path.to_owned(),
            source,
        })?;
    let mut port = SerialPort::from(OwnedFd::from(file));
    configure_raw(&mut port, baud).map_err(|source| {
        if source.raw_os_error() == Some(libc::ENOTTY) {
            TransportError::NotATty {
                path: path.to_owned(),
            }
        } else {
            TransportError::Configure {
                path: path.to_owned(),
                baud,
                source,
            }
        }
    })?;
    Ok(port)
}

fn configure_raw(port: &mut SerialPort, baud: u32) -> io::Result<()> {
    let mut settings = port.get_configuration()?;
    settings.set_raw();
    settings.set_baud_rate(baud)?;
    let t = settings.as_termios_mut();
    t.c_cflag |= libc::CLOCAL | libc::CREAD;
    if let Some(vmin) = t.c_cc.get_mut(libc::VMIN) {
        *vmin = 1;
    }
    if let Some(vtime) = t.c_cc.get_mut(libc::VTIME) {
        *vtime = 0;
    }
    port.set_configuration(&settings)
}

impl SerialLink {
    /// Opens and configures a serial device (see the crate docs for the settings).
    pub fn open(path: impl AsRef<Path>, baud: u32) -> Result<SerialLink, TransportError> {
        let path = path.as_ref();
        let port = open_serial_port(path, baud)?;
        SerialLink::new(port, Some(path.to_owned()), None).map_err(|source| TransportError::Open {
            what: "serial device",
            path: path.to_owned(),
            source,
        })
    }

    /// Wraps a port the caller opened and configured (e.g. one end of
    /// `serial2::SerialPort::pair()`). The settings are left as they are; the fd is put
    /// into blocking mode.
    pub fn from_serial_port(port: SerialPort) -> io::Result<SerialLink> {
        SerialLink::new(port, None, None)
    }

    pub(crate) fn new(
        port: SerialPort,
        path: Option<PathBuf>,
        lease: Option<Arc<()>>,
    ) -> io::Result<SerialLink> {
        let io = File::from(port.as_fd().try_clone_to_owned()?);
        sys::set_nonblocking(io.as_fd(), false)?;
        Ok(SerialLink {
            port,
            io,
            path,
            lease,
        })
    }

    /// The serial2 handle, for settings and modem lines. Do not read or write through it:
    /// its `read` waits up to 3 s and reports `TimedOut`.
    pub fn port(&self) -> &SerialPort {
        &self.port
    }

    /// The `File` this link reads and writes with.
    pub fn file(&self) -> &File {
        &self.io
    }

    /// A new `File` on the same fd (a dup), for `async_io::Async<File>` and the like. Its
    /// reads do not map `EIO` to EOF: treat `EIO` from a serial read as end of file.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.io.try_clone()
    }

    /// The device path, when the link was opened by path.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Another handle on the same line (dups of both fds).
    pub fn try_clone(&self) -> io::Result<SerialLink> {
        Ok(SerialLink {
            port: self.port.try_clone()?,
            io: self.io.try_clone()?,
            path: self.path.clone(),
            lease: self.lease.clone(),
        })
    }

    /// Sets `O_NONBLOCK` (shared by every clone of this link).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        sys::set_nonblocking(self.io.as_fd(), nonblocking)
    }

    /// Waits until a read would not block, for at most `timeout` (`None` = forever).
    /// A hung-up line counts as readable (the read returns EOF).
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let r = sys::poll_in(self.io.as_fd(), timeout)?;
        Ok(r.readable || r.hangup)
    }
}

impl VirtioLink {
    pub(crate) fn new(io: File, path: PathBuf, lease: Arc<()>) -> io::Result<VirtioLink> {
        sys::set_nonblocking(io.as_fd(), false)?;
        Ok(VirtioLink { io, path, lease })
    }

    /// The `File` this link reads and writes with.
    pub fn file(&self) -> &File {
        &self.io
    }

    /// A new `File` on the same fd (a dup). Its reads return `Ok(0)` when the host leaves.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.io.try_clone()
    }

    /// The port's device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same session (a dup).
    pub fn try_clone(&self) -> io::Result<VirtioLink> {
        Ok(VirtioLink {
            io: self.io.try_clone()?,
            path: self.path.clone(),
            lease: Arc::clone(&self.lease),
        })
    }

    /// Sets `O_NONBLOCK` (shared by every clone, and by the [`VirtioPort`](crate::VirtioPort)
    /// itself, whose waiting does not depend on it).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        sys::set_nonblocking(self.io.as_fd(), nonblocking)
    }

    /// `false` once the host has disconnected (the port reports `POLLHUP`). Never blocks.
    pub fn host_connected(&self) -> io::Result<bool> {
        sys::peer_present(&self.io)
    }

    /// Waits until a read would not block, for at most `timeout` (`None` = forever).
    /// A departed host counts as readable (the read returns EOF).
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let r = sys::poll_in(self.io.as_fd(), timeout)?;
        Ok(r.readable || r.hangup)
    }
}

/// `Read`/`Write` for a device link and for a shared reference to it, all through the
/// link's `File`, reads with `EIO` → EOF.
macro_rules! device_io {
    ($ty:ty) => {
        stream_io!($ty, io, sys::read_device, sys::read_device_vectored);
        /// The I/O fd; any other handle the link held is closed. The listener that handed
        /// out the link no longer counts this fd as a live session.
        impl From<$ty> for OwnedFd {
            fn from(link: $ty) -> OwnedFd {
                OwnedFd::from(link.io)
            }
        }
    };
}

device_io!(SerialLink);
device_io!(VirtioLink);
