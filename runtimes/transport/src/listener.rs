//! Agent-side listeners: sockets that accept many clients, and character devices (a serial
//! tty, a virtio-serial port) that carry one long-lived connection at a time.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serial2::SerialPort;

use crate::device::{SerialLink, open_serial_port};
use crate::error::TransportError;
use crate::sys;
use crate::target::{Endpoint, Target};
use crate::transport::{Transport, TransportKind};
use crate::virtio::{VirtioPort, session_busy};

/// Options for [`Listener::bind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// Permission bits of a unix socket file. Default `0o600`: only the agent's user may
    /// connect, since the protocol runs commands as any user with no authentication.
    pub unix_mode: u32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { unix_mode: 0o600 }
    }
}

/// Who is on the other end of an accepted [`Transport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket client, with its credentials when the kernel reported them.
    Unix(Option<UnixCredentials>),
    /// A TCP client.
    Tcp(SocketAddr),
    /// A vsock client.
    Vsock {
        /// The client's context id.
        cid: u32,
        /// The client's port.
        port: u32,
    },
    /// Whatever is at the other end of this serial device.
    Serial(PathBuf),
    /// The host of this virtio-serial port.
    Virtio(PathBuf),
}

/// `SO_PEERCRED` of a unix socket client: the process that connected, for the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixCredentials {
    /// Process id at connect time.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix(Some(c)) => write!(f, "unix peer pid {} uid {} gid {}", c.pid, c.uid, c.gid),
            Peer::Unix(None) => f.write_str("unix peer"),
            Peer::Tcp(addr) => write!(f, "tcp peer {addr}"),
            Peer::Vsock { cid, port } => write!(f, "vsock peer {cid}:{port}"),
            Peer::Serial(p) => write!(f, "serial line {}", p.display()),
            Peer::Virtio(p) => write!(f, "virtio host on {}", p.display()),
        }
    }
}

/// Where the agent waits for its controller. [`accept`](Self::accept) is the same for all.
///
/// Socket listeners (unix, tcp, vsock) accept any number of clients; register their fd for
/// readability in an event loop. Device listeners (serial, virtio) carry one connection at a
/// time on the device itself: `accept` hands out a dup of the device fd, and fails with
/// `ResourceBusy` while the previous one is alive. Their fd must not be registered for
/// readiness while nobody is connected (a virtio port then reports `POLLHUP` without pause);
/// event loops retry `accept` from a timer every [`accept_interval`](Self::accept_interval).
#[derive(Debug)]
pub enum Listener {
    /// A unix socket; the file is removed when the listener is dropped.
    Unix(UnixSocketListener),
    /// A TCP socket.
    Tcp(TcpListener),
    /// An `AF_VSOCK` socket (Linux).
    #[cfg(target_os = "linux")]
    Vsock(vsock::VsockListener),
    /// A serial tty.
    Serial(SerialListener),
    /// A virtio-serial port.
    Virtio(VirtioPort),
}

impl Listener {
    /// Listens on a target, agent side:
    ///
    /// * `unix:PATH` — binds a socket with mode [`ListenOptions::unix_mode`] (set before
    ///   `listen`, so no client can connect while the mode is still the umask's). A stale
    ///   socket file is removed first; a live one (something accepts on it) or a non-socket
    ///   is an error.
    /// * `tcp:HOST:PORT` — binds the first address `HOST` resolves to (port 0 = ephemeral).
    /// * `vsock:CID:PORT` — binds `AF_VSOCK`; use `vsock:any:PORT` to accept from any CID.
    /// * `serial:DEVICE[@BAUD]` — opens the tty raw 8N1 at the baud rate.
    /// * `virtio:PATH` — opens the guest's virtio-serial port (e.g.
    ///   [`DEFAULT_VIRTIO_PORT`](crate::DEFAULT_VIRTIO_PORT)).
    /// * `local` — an error: the CLI embeds the agent instead.
    /// * `exec:`, `ssh:`, `chroot:` — an error: they name a client's way to start an
    ///   agent; the agent's side of them is `tuppence serve --stdio` ([`crate::StdioRelay`]).
    pub fn bind(target: &Target, options: &ListenOptions) -> Result<Listener, TransportError> {
        match &target.endpoint {
            Endpoint::Unix { path } => Listener::unix(path, options.unix_mode),
            Endpoint::Tcp { host, port } => {
                let endpoint = target.endpoint.to_string();
                let addrs = (host.as_str(), *port).to_socket_addrs().map_err(|source| {
                    TransportError::Resolve {
                        host: host.clone(),
                        port: *port,
                        source,
                    }
                })?;
                let mut last = None;
                for addr in addrs {
                    match TcpListener::bind(addr) {
                        Ok(l) => return Ok(Listener::Tcp(l)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(match last {
                    Some(source) => TransportError::Listen { endpoint, source },
                    None => TransportError::NoAddress {
                        host: host.clone(),
                        port: *port,
                    },
                })
            }
            Endpoint::Vsock { cid, port } => Listener::vsock(*cid, *port),
            Endpoint::Serial { device, baud } => Listener::serial(device, *baud),
            Endpoint::Virtio { path } => Listener::virtio(path),
            Endpoint::Local => Err(TransportError::Local {
                action: "listen on",
            }),
            Endpoint::Exec { .. } | Endpoint::Ssh { .. } | Endpoint::Chroot { .. } => {
                Err(TransportError::NotListenable {
                    transport: target.transport_name(),
                })
            }
        }
    }

    /// A unix socket listener with the given permission bits (see [`Listener::bind`]).
    pub fn unix(path: impl AsRef<Path>, mode: u32) -> Result<Listener, TransportError> {
        UnixSocketListener::bind(path.as_ref(), mode).map(Listener::Unix)
    }

    /// A TCP listener on an explicit address. The protocol has no authentication: bind a
    /// loopback or private address unless every host that can reach it is trusted.
    pub fn tcp(addr: SocketAddr) -> Result<Listener, TransportError> {
        TcpListener::bind(addr)
            .map(Listener::Tcp)
            .map_err(|source| TransportError::Listen {
                endpoint: Endpoint::Tcp {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                }
                .to_string(),
                source,
            })
    }

    /// An `AF_VSOCK` listener. `cid` is usually [`VSOCK_CID_ANY`](crate::VSOCK_CID_ANY).
    #[cfg(target_os = "linux")]
    pub fn vsock(cid: u32, port: u32) -> Result<Listener, TransportError> {
        vsock::VsockListener::bind_with_cid_port(cid, port)
            .map(Listener::Vsock)
            .map_err(|source| TransportError::Listen {
                endpoint: Endpoint::Vsock { cid, port }.to_string(),
                source,
            })
    }

    /// `AF_VSOCK` exists only on Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn vsock(_cid: u32, _port: u32) -> Result<Listener, TransportError> {
        Err(TransportError::VsockUnsupported)
    }

    /// A serial tty listener (see [`SerialListener`]).
    pub fn serial(device: impl AsRef<Path>, baud: u32) -> Result<Listener, TransportError> {
        SerialListener::open(device.as_ref(), baud).map(Listener::Serial)
    }

    /// A virtio-serial port listener (see [`VirtioPort`]).
    pub fn virtio(path: impl AsRef<Path>) -> Result<Listener, TransportError> {
        VirtioPort::open(path).map(Listener::Virtio)
    }

    /// Accepts the next connection. The transport is in blocking mode.
    ///
    /// * Sockets: waits for a client (or `WouldBlock` in non-blocking mode). TCP streams get
    ///   `TCP_NODELAY`.
    /// * Virtio port: waits, sleeping between checks, until a host is connected (or
    ///   `WouldBlock` in non-blocking mode while none is).
    /// * Serial tty: returns at once; `NotConnected` if the line is hung up.
    /// * Both devices: `ResourceBusy` while the previous connection is still alive.
    pub fn accept(&self) -> io::Result<(Transport, Peer)> {
        match self {
            Listener::Unix(l) => l.accept(),
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept()?;
                sys::tune_socket_buffers(&stream);
                stream.set_nodelay(true)?;
                Ok((Transport::Tcp(stream), Peer::Tcp(addr)))
            }
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => {
                let (stream, addr) = l.accept()?;
                let peer = Peer::Vsock {
                    cid: addr.cid(),
                    port: addr.port(),
                };
                Ok((Transport::Vsock(stream), peer))
            }
            Listener::Serial(l) => {
                let link = l.accept()?;
                Ok((Transport::Serial(link), Peer::Serial(l.path.clone())))
            }
            Listener::Virtio(p) => {
                let link = p.accept()?;
                Ok((Transport::Virtio(link), Peer::Virtio(p.path().to_owned())))
            }
        }
    }

    /// Non-blocking mode makes [`accept`](Self::accept) fail with `WouldBlock` instead of
    /// waiting. For sockets this is the fd's `O_NONBLOCK`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.listener.set_nonblocking(nonblocking),
            Listener::Tcp(l) => l.set_nonblocking(nonblocking),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.set_nonblocking(nonblocking),
            // A serial accept never waits.
            Listener::Serial(_) => Ok(()),
            Listener::Virtio(p) => {
                p.set_nonblocking(nonblocking);
                Ok(())
            }
        }
    }

    /// `None` for socket listeners: register the fd and accept when it is readable.
    /// `Some(interval)` for device listeners: their fd says nothing useful while nobody is
    /// connected, so call `accept` from a timer at this interval.
    pub fn accept_interval(&self) -> Option<Duration> {
        match self {
            Listener::Serial(_) | Listener::Virtio(_) => Some(VirtioPort::RETRY_INTERVAL),
            _ => None,
        }
    }

    /// The kind of transport `accept` returns.
    pub fn kind(&self) -> TransportKind {
        match self {
            Listener::Unix(_) => TransportKind::Unix,
            Listener::Tcp(_) => TransportKind::Tcp,
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => TransportKind::Vsock,
            Listener::Serial(_) => TransportKind::Serial,
            Listener::Virtio(_) => TransportKind::Virtio,
        }
    }

    /// What this listener is bound to, as a target endpoint (TCP and vsock with the port the
    /// kernel chose, for port 0 / `VMADDR_PORT_ANY`). For unix, serial and virtio this is the
    /// path it was opened with.
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Listener::Unix(l) => Endpoint::Unix {
                path: l.path.clone(),
            },
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Endpoint::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                }
            }
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => {
                let a = l.local_addr()?;
                Endpoint::Vsock {
                    cid: a.cid(),
                    port: a.port(),
                }
            }
            Listener::Serial(l) => Endpoint::Serial {
                device: l.path.clone(),
                baud: l.baud,
            },
            Listener::Virtio(p) => Endpoint::Virtio {
                path: p.path().to_owned(),
            },
        })
    }
}

/// The listening socket's fd, or the device's fd (see the type docs before registering it).
impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.listener.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.as_fd(),
            Listener::Serial(l) => l.port.as_fd(),
            Listener::Virtio(p) => p.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// A bound, listening unix socket that removes its file on drop (only if the path still
/// names the socket it created, so a newer agent's socket is left alone).
#[derive(Debug)]
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file right after bind.
    identity: Option<(u64, u64)>,
}

impl UnixSocketListener {
    fn bind(path: &Path, mode: u32) -> Result<UnixSocketListener, TransportError> {
        let endpoint = || {
            Endpoint::Unix {
                path: path.to_owned(),
            }
            .to_string()
        };
        remove_stale_socket(path)?;
        let fd = bind_unix(path, mode).map_err(|source| TransportError::Listen {
            endpoint: endpoint(),
            source,
        })?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(UnixSocketListener {
            listener: UnixListener::from(fd),
            path: path.to_owned(),
            identity,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The std listener, e.g. to convert to `mio::net::UnixListener`.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    fn accept(&self) -> io::Result<(Transport, Peer)> {
        let (stream, _addr) = self.listener.accept()?;
        sys::tune_socket_buffers(&stream);
        let creds = sys::peer_credentials(stream.as_fd())
            .ok()
            .map(|(pid, uid, gid)| UnixCredentials { pid, uid, gid });
        Ok((Transport::Unix(stream), Peer::Unix(creds)))
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        let Some(identity) = self.identity else {
            return;
        };
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == identity
        {
            // Best effort: a leftover file is removed by the next bind anyway.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl AsFd for UnixSocketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Removes `path` if it is a socket nobody accepts on. A path that is not a socket is never
/// touched; a socket that accepts connections belongs to a running agent.
fn remove_stale_socket(path: &Path) -> Result<(), TransportError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TransportError::Listen {
                endpoint: format!("unix:{}", path.display()),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(TransportError::NotASocket {
            path: path.to_owned(),
        });
    }
    match probe_unix_socket(path) {
        Ok(()) => Err(TransportError::SocketInUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|source| TransportError::Listen {
                endpoint: format!("unix:{}", path.display()),
                source,
            }),
        Err(source) => Err(TransportError::Listen {
            endpoint: format!("unix:{}", path.display()),
            source,
        }),
    }
}

/// Connects to `path` without waiting: `Ok` (or `EAGAIN`, a full backlog) means a process
/// accepts there; `ConnectionRefused` means the file is stale. A blocking connect could hang
/// on a live agent whose backlog is full.
fn probe_unix_socket(path: &Path) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INPROGRESS => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// socket → bind → chmod → listen. The mode is applied before `listen` so that no client can
/// connect through the umask's permissions in between (connecting to a socket that is bound
/// but not listening is refused).
fn bind_unix(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path too long or invalid ({e}); unix socket paths are limited to 107 bytes"
            ),
        )
    })?;
    rustix::net::bind(&fd, &addr)?;
    let applied = rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode & 0o7777))
        .and_then(|()| rustix::net::listen(&fd, 128));
    if let Err(e) = applied {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(fd)
}

/// A serial tty the agent serves on. A serial line has no connections: `accept` hands out
/// the line itself, once at a time.
#[derive(Debug)]
pub struct SerialListener {
    port: SerialPort,
    path: PathBuf,
    baud: u32,
    lease: Arc<()>,
}

impl SerialListener {
    /// Opens and configures the tty raw 8N1 at `baud`.
    pub fn open(path: &Path, baud: u32) -> Result<SerialListener, TransportError> {
        Ok(SerialListener {
            port: open_serial_port(path, baud)?,
            path: path.to_owned(),
            baud,
            lease: Arc::new(()),
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configured speed.
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// A link on the line (a dup), unless one is still alive (`ResourceBusy`) or the line is
    /// hung up (`NotConnected`: a hung-up tty stays hung up for this open; open it again).
    pub fn accept(&self) -> io::Result<SerialLink> {
        if Arc::strong_count(&self.lease) > 1 {
            return Err(session_busy(&self.path));
        }
        if !sys::peer_present(&self.port)? {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("serial line {} is hung up", self.path.display()),
            ));
        }
        SerialLink::new(
            self.port.try_clone()?,
            Some(self.path.clone()),
            Some(Arc::clone(&self.lease)),
        )
    }
}
