//! [`Transport`]: one connected byte stream, whatever carries it, and client-side connect.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::device::{SerialLink, VirtioLink};
use crate::error::TransportError;
use crate::exec::{self, ExecHandle, ExecLink, ExecStderr};
use crate::sys;
use crate::target::{Endpoint, Target};

/// A connected byte stream to the other side.
///
/// Every variant is one fd, so event loops register [`as_fd`](AsFd::as_fd) with mio's
/// `SourceFd` or async-io's `Async` after calling [`set_nonblocking(true)`](Self::set_nonblocking);
/// blocking users just `read`/`write` (and may bound a wait with
/// [`wait_readable`](Self::wait_readable)). New transports are in blocking mode.
///
/// Reads never report a spurious end of file: `Ok(0)` means the other side is gone (socket
/// closed, virtio host disconnected, pty peer closed — a pty master's `EIO` is mapped to
/// `Ok(0)`), and "no data yet" is `WouldBlock` in non-blocking mode.
///
/// `try_clone` dups the fd: the clones share the `O_NONBLOCK` flag.
#[derive(Debug)]
pub enum Transport {
    /// An `AF_UNIX` stream (`unix:` targets, and `virtio:` targets on the host, which are
    /// the unix socket QEMU exposes for the channel).
    Unix(UnixStream),
    /// A TCP stream, with `TCP_NODELAY` set (the protocol sends small packets and waits for
    /// answers; Nagle would add up to 40 ms per round trip).
    Tcp(TcpStream),
    /// A serial tty, raw 8N1.
    Serial(SerialLink),
    /// The guest end of a virtio-serial port (agent side).
    Virtio(VirtioLink),
    /// An `AF_VSOCK` stream (Linux).
    #[cfg(target_os = "linux")]
    Vsock(vsock::VsockStream),
    /// A command's stdio (`exec:`, `ssh:`, `chroot:` targets): our end of the unix socket
    /// pair that is its stdin and stdout, and the command (see [`ExecLink`]).
    Exec(ExecLink),
}

/// Which kind of fd a [`Transport`] is, for logs and for picking an event-loop source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// `AF_UNIX` stream.
    Unix,
    /// TCP stream.
    Tcp,
    /// Serial tty.
    Serial,
    /// Virtio-serial port (guest side).
    Virtio,
    /// `AF_VSOCK` stream.
    Vsock,
    /// A command's stdio (`exec:`, `ssh:`, `chroot:`).
    Exec,
}

impl TransportKind {
    /// Short lowercase name: `"unix"`, `"tcp"`, `"serial"`, `"virtio"`, `"vsock"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Unix => "unix",
            TransportKind::Tcp => "tcp",
            TransportKind::Serial => "serial",
            TransportKind::Virtio => "virtio",
            TransportKind::Vsock => "vsock",
            TransportKind::Exec => "exec",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of [`Target::connect_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Where the stderr of an `exec:`, `ssh:` or `chroot:` command goes.
    pub exec_stderr: ExecStderr,
}

impl ConnectOptions {
    /// The options with `exec_stderr` set.
    #[must_use]
    pub fn exec_stderr(mut self, to: ExecStderr) -> Self {
        self.exec_stderr = to;
        self
    }
}

impl Target {
    /// Opens the target as a client (the host/controller side), with the default
    /// [`ConnectOptions`].
    pub fn connect(&self) -> Result<Transport, TransportError> {
        self.connect_with(&ConnectOptions::default())
    }

    /// Opens the target as a client (the host/controller side).
    ///
    /// * `unix:` and `virtio:` connect an `AF_UNIX` stream to the path.
    /// * `tcp:` resolves the host and tries each address in turn; `TCP_NODELAY` is set.
    /// * `serial:` opens the tty raw 8N1 at the baud rate. Bytes already waiting in the
    ///   tty's input queue are kept: discarding them is the protocol layer's decision.
    /// * `vsock:` connects an `AF_VSOCK` stream; the connect blocks until the peer answers
    ///   or the kernel times out (there is no non-blocking vsock connect; run it on a
    ///   blocking thread in async code).
    /// * `local` is an error: the CLI runs an embedded agent instead.
    /// * `exec:`, `ssh:` and `chroot:` start their command (see [`Endpoint::command`]) with
    ///   its stdin and stdout on a socket pair (see [`ExecLink`]); a command that cannot be
    ///   started is [`TransportError::Spawn`]. `connect` does not wait for the command to
    ///   get anywhere: the hello exchange tells.
    ///
    /// The returned transport is in blocking mode.
    pub fn connect_with(&self, options: &ConnectOptions) -> Result<Transport, TransportError> {
        match &self.endpoint {
            Endpoint::Unix { path } | Endpoint::Virtio { path } => connect_unix(self, path),
            Endpoint::Tcp { host, port } => connect_tcp(self, host, *port),
            Endpoint::Serial { device, baud } => {
                Ok(Transport::Serial(SerialLink::open(device, *baud)?))
            }
            Endpoint::Vsock { cid, port } => connect_vsock(self, *cid, *port),
            Endpoint::Local => Err(TransportError::Local { action: "connect" }),
            Endpoint::Exec { .. } | Endpoint::Ssh { .. } | Endpoint::Chroot { .. } => {
                let argv = self.endpoint.command().unwrap_or_default();
                exec::spawn(&argv, exec::show(&argv), options.exec_stderr).map(Transport::Exec)
            }
        }
    }
}

fn connect_unix(target: &Target, path: &Path) -> Result<Transport, TransportError> {
    UnixStream::connect(path)
        .inspect(|s| sys::tune_socket_buffers(s))
        .map(Transport::Unix)
        .map_err(|source| TransportError::Connect {
            endpoint: target.endpoint.to_string(),
            source,
        })
}

fn connect_tcp(target: &Target, host: &str, port: u16) -> Result<Transport, TransportError> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            host: host.to_owned(),
            port,
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                sys::tune_socket_buffers(&stream);
                stream
                    .set_nodelay(true)
                    .map_err(|source| TransportError::Connect {
                        endpoint: target.endpoint.to_string(),
                        source,
                    })?;
                return Ok(Transport::Tcp(stream));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => TransportError::Connect {
            endpoint: target.endpoint.to_string(),
            source,
        },
        None => TransportError::NoAddress {
            host: host.to_owned(),
            port,
        },
    })
}

#[cfg(target_os = "linux")]
fn connect_vsock(target: &Target, cid: u32, port: u32) -> Result<Transport, TransportError> {
    vsock::VsockStream::connect_with_cid_port(cid, port)
        .map(Transport::Vsock)
        .map_err(|source| TransportError::Connect {
            endpoint: target.endpoint.to_string(),
            source,
        })
}

#[cfg(not(target_os = "linux"))]
fn connect_vsock(_: &Target, _: u32, _: u32) -> Result<Transport, TransportError> {
    Err(TransportError::VsockUnsupported)
}

/// Runs `$body` with `$s` bound to the variant's inner value.
macro_rules! each {
    ($t:expr, $s:ident => $body:expr) => {
        match $t {
            Transport::Unix($s) => $body,
            Transport::Tcp($s) => $body,
            Transport::Serial($s) => $body,
            Transport::Virtio($s) => $body,
            #[cfg(target_os = "linux")]
            Transport::Vsock($s) => $body,
            Transport::Exec($s) => $body,
        }
    };
}

impl Transport {
    /// Which kind of fd this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::Unix(_) => TransportKind::Unix,
            Transport::Tcp(_) => TransportKind::Tcp,
            Transport::Serial(_) => TransportKind::Serial,
            Transport::Virtio(_) => TransportKind::Virtio,
            #[cfg(target_os = "linux")]
            Transport::Vsock(_) => TransportKind::Vsock,
            Transport::Exec(_) => TransportKind::Exec,
        }
    }

    /// The command behind an `exec:`, `ssh:` or `chroot:` transport: why the link ended
    /// ([`ExecHandle::end_report`]), or closing it now. `None` for other transports.
    pub fn exec(&self) -> Option<ExecHandle> {
        match self {
            Transport::Exec(link) => Some(link.handle()),
            _ => None,
        }
    }

    /// Another handle on the same stream (dup'd fds; `O_NONBLOCK` is shared).
    pub fn try_clone(&self) -> io::Result<Transport> {
        Ok(match self {
            Transport::Unix(s) => Transport::Unix(s.try_clone()?),
            Transport::Tcp(s) => Transport::Tcp(s.try_clone()?),
            Transport::Serial(s) => Transport::Serial(s.try_clone()?),
            Transport::Virtio(s) => Transport::Virtio(s.try_clone()?),
            #[cfg(target_os = "linux")]
            Transport::Vsock(s) => Transport::Vsock(s.try_clone()?),
            Transport::Exec(s) => Transport::Exec(s.try_clone()?),
        })
    }

    /// Switches `O_NONBLOCK`. Event loops need `true`: reads and writes then fail with
    /// `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        each!(self, s => s.set_nonblocking(nonblocking))
    }

    /// Half-closes the stream: the peer reads EOF, and this side can still read.
    ///
    /// Returns `Ok(false)` for serial and virtio links, which have no half-close (closing
    /// them is the only "end of stream" they know); `Ok(true)` when a shutdown was sent.
    pub fn shutdown_write(&self) -> io::Result<bool> {
        match self {
            Transport::Unix(s) => s.shutdown(Shutdown::Write).map(|()| true),
            Transport::Tcp(s) => s.shutdown(Shutdown::Write).map(|()| true),
            Transport::Serial(_) | Transport::Virtio(_) => Ok(false),
            #[cfg(target_os = "linux")]
            Transport::Vsock(s) => s.shutdown(Shutdown::Write).map(|()| true),
            Transport::Exec(s) => s.shutdown(Shutdown::Write).map(|()| true),
        }
    }

    /// Shuts both directions of a socket down (a blocked read or write on any handle of
    /// it returns). Serial and virtio links have no shutdown: `Ok(false)` for them.
    pub fn shutdown(&self) -> io::Result<bool> {
        match self {
            Transport::Unix(s) => s.shutdown(Shutdown::Both).map(|()| true),
            Transport::Tcp(s) => s.shutdown(Shutdown::Both).map(|()| true),
            Transport::Serial(_) | Transport::Virtio(_) => Ok(false),
            #[cfg(target_os = "linux")]
            Transport::Vsock(s) => s.shutdown(Shutdown::Both).map(|()| true),
            Transport::Exec(s) => s.shutdown(Shutdown::Both).map(|()| true),
        }
    }

    /// Waits until a read would not block (data, EOF or an error is pending), for at most
    /// `timeout` (`None` = forever). `Ok(false)` on timeout.
    ///
    /// For blocking users who need a deadline (keepalives, command timeouts): a serial link's
    /// blocking read has no timeout of its own.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let r = sys::poll_in(self.as_fd(), timeout)?;
        Ok(r.readable || r.hangup)
    }
}

impl Read for &Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(*self, s => { let mut s = s; s.read(buf) })
    }
    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        each!(*self, s => { let mut s = s; s.read_vectored(bufs) })
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Write for &Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(*self, s => { let mut s = s; s.write(buf) })
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        each!(*self, s => { let mut s = s; s.write_vectored(bufs) })
    }
    fn flush(&mut self) -> io::Result<()> {
        each!(*self, s => { let mut s = s; s.flush() })
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        each!(self, s => s.as_fd())
    }
}

impl AsRawFd for Transport {
    fn as_raw_fd(&self) -> RawFd {
        each!(self, s => s.as_raw_fd())
    }
}

/// With the `async-io` feature, `async_io::Async::new(transport)` gives an `AsyncRead +
/// AsyncWrite` stream for the smol adapter, for every kind of transport.
// SAFETY: `IoSafe` asks that reading and writing never close or replace the fd `AsFd`
// returned: every variant reads and writes its one fd and keeps it until dropped.
#[cfg(feature = "async-io")]
unsafe impl async_io::IoSafe for Transport {}

/// The stream's fd, for adapters that wrap it themselves. A serial or virtio fd read
/// directly does not get the `EIO` → EOF mapping; an `exec:` command is then reaped once
/// it exits, instead of being closed with the link (see [`ExecLink`]).
impl From<Transport> for OwnedFd {
    fn from(t: Transport) -> OwnedFd {
        match t {
            Transport::Unix(s) => OwnedFd::from(s),
            Transport::Tcp(s) => OwnedFd::from(s),
            Transport::Serial(s) => OwnedFd::from(s),
            Transport::Virtio(s) => OwnedFd::from(s),
            #[cfg(target_os = "linux")]
            Transport::Vsock(s) => OwnedFd::from(s),
            Transport::Exec(link) => link.into_fd(),
        }
    }
}
