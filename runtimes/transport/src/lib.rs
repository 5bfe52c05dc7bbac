//! `tuppence-transport`: the one place that parses tuppence targets and opens and configures
//! their fds. The mio, smol and blocking adapters and the CLI all get their byte streams
//! from here, so a serial port is configured the same way whichever runtime drives it.
//!
//! # Targets
//!
//! A target is `[legacy+]TRANSPORT:ARGUMENT`. The `legacy+` prefix selects protocol 3.0
//! ([`Dialect::Legacy3`](tuppence::wire::Dialect), the C executor's); without it the
//! connection speaks 4.0.
//!
//! | form | host side ([`Target::connect`]) | agent side ([`Listener::bind`]) |
//! |---|---|---|
//! | `virtio:PATH` | connect to the unix socket QEMU/libvirt exposes for the guest's virtio-serial channel | open the guest's port device, e.g. [`DEFAULT_VIRTIO_PORT`] |
//! | `serial:DEVICE[@BAUD]` | open the tty raw 8N1, no flow control, default [`DEFAULT_BAUD`] (115200) | the same, on the guest's tty |
//! | `vsock:CID:PORT` | `AF_VSOCK` connect (CID may be `hypervisor`, `local`, `host` or a number) | `AF_VSOCK` listen; `vsock:any:PORT` accepts from any CID |
//! | `unix:PATH` | `AF_UNIX` stream connect | listen, socket mode 0600 by default, stale socket file removed |
//! | `tcp:HOST:PORT`, `tcp:[V6]:PORT` | connect with `TCP_NODELAY` | listen on that explicit address only (the protocol has no authentication) |
//! | `local` | not opened here: the CLI runs an embedded agent | — |
//! | `exec:COMMAND` | run COMMAND ([split like a shell would](words), without one) and speak over its stdin/stdout ([`ExecLink`]) | `tuppence serve --stdio` ([`StdioRelay`]) |
//! | `ssh:[USER@]HOST[:PORT][?agent=PATH&o=OPTION…]` | `exec:` of the system's `ssh … HOST tuppence serve --stdio` ([`Endpoint::command`]) | the same, on HOST |
//! | `chroot:DIR[?agent=PATH]` | `exec:` of `AGENT serve --stdio --root-directory DIR` (root only) | — |
//!
//! Parsing is strict: `"foo:bar".parse::<Target>()` fails with
//! `unknown transport "foo" (expected virtio, serial, vsock, unix, tcp, local, exec, ssh or
//! chroot)`, and bad baud rates, ports, CIDs, missing paths, unbalanced quotes and shell
//! syntax in an `exec:` command each get their own [`ParseTargetError`]. `Display` prints
//! a form that parses back to the same target.
//!
//! `exec:`, `ssh:` and `chroot:` are byte pipes to one agent for one client (DESIGN §8):
//! unlike a serial line or a virtio port they are never reused by a next client, so they
//! are not device links ([`Endpoint::may_be_device_link`] is false). `chroot:` runs a
//! child agent rather than one embedded like `local`: `chroot(2)` changes the root of the
//! whole process, which a client library cannot do to its caller.
//!
//! ```
//! use tuppence::wire::Dialect;
//! use tuppence_transport::{Endpoint, Target};
//!
//! let t: Target = "legacy+serial:/dev/ttyS1@9600".parse()?;
//! assert_eq!(t.dialect, Dialect::Legacy3);
//! assert_eq!(t.endpoint, Endpoint::Serial { device: "/dev/ttyS1".into(), baud: 9600 });
//! assert_eq!(t.to_string(), "legacy+serial:/dev/ttyS1@9600");
//! assert!("tcp:::1:80".parse::<Target>().is_err()); // IPv6 needs brackets: tcp:[::1]:80
//! # Ok::<(), tuppence_transport::ParseTargetError>(())
//! ```
//!
//! # Opening
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use tuppence_transport::{ListenOptions, Listener, Target};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Agent: listen, accept one controller.
//! let target: Target = "unix:/run/tuppence.sock".parse()?;
//! let listener = Listener::bind(&target, &ListenOptions::default())?;
//! let (mut link, peer) = listener.accept()?;
//! eprintln!("connection from {peer}");
//! # let _ = link.write_all(b"");
//!
//! // Controller: connect; then hand the transport to a runtime adapter.
//! let mut t = target.connect()?;
//! t.set_nonblocking(true)?; // for mio; smol: `Async::new(t)` (feature `async-io`)
//! # let _ = t.read(&mut [0u8; 1]);
//! # Ok(())
//! # }
//! ```
//!
//! # Facts the code is built on (measured on Linux)
//!
//! * serial2's own `read` waits up to 3 s and fails with `TimedOut`, so [`SerialLink`] does
//!   its I/O on a dup'd [`File`](std::fs::File) that blocks or returns `WouldBlock` like a
//!   socket. Serial lines are set `VMIN=1, VTIME=0` so a read never returns a spurious 0.
//! * A pty master's read fails with `EIO` after the slave closes; serial and virtio reads
//!   map that to `Ok(0)` (end of file).
//! * A virtio-serial port opens once (`EBUSY` after), reads EOF and polls `POLLHUP` while no
//!   host is connected; [`VirtioPort::wait_for_host`] sleeps between checks instead of
//!   spinning.
//! * vsock connect is blocking. [`vsock_loopback_available`] detects the loopback transport
//!   by binding to `VMADDR_CID_LOCAL`; nothing here ever probes by connecting to CID 1 or 2.

// Nothing a peer, a device or a target string does may panic this crate.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)]

/// `Read` and `Write` for `$ty` and `&$ty`, and `AsFd`/`AsRawFd`, all through its `$field`
/// (a `File` or a socket); reads go through `$read`/`$read_vectored` (`fn(&Field, buf)`),
/// writes straight to the field. Links with one fd (serial, virtio, exec) share it.
macro_rules! stream_io {
    ($ty:ty, $field:ident, $read:path, $read_vectored:path) => {
        impl Read for &$ty {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                $read(&self.$field, buf)
            }
            fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
                $read_vectored(&self.$field, bufs)
            }
        }
        impl Read for $ty {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                (&*self).read(buf)
            }
            fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
                (&*self).read_vectored(bufs)
            }
        }
        impl Write for &$ty {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                (&self.$field).write(buf)
            }
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                (&self.$field).write_vectored(bufs)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl Write for $ty {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                (&*self).write(buf)
            }
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                (&*self).write_vectored(bufs)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl AsFd for $ty {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.$field.as_fd()
            }
        }
        impl AsRawFd for $ty {
            fn as_raw_fd(&self) -> RawFd {
                self.$field.as_raw_fd()
            }
        }
    };
}

mod device;
mod error;
pub mod exec;
mod listener;
mod local_file;
mod piece_pool;
mod reach;
mod recv_buf;
pub mod stdio;
mod sys;
mod target;
mod transport;
mod vectored;
mod virtio;
mod vm_sockets;
pub mod words;

pub use device::{SerialLink, VirtioLink};
pub use error::TransportError;
pub use exec::{ExecEnd, ExecHandle, ExecLink, ExecStderr};
pub use listener::{
    ListenOptions, Listener, Peer, SerialListener, UnixCredentials, UnixSocketListener,
};
pub use local_file::{LocalFile, LocalFileError};
pub use piece_pool::PiecePool;
pub use reach::DEFAULT_AGENT;
pub use recv_buf::{RECV_MIN, RecvBuf};
pub use stdio::StdioRelay;
pub use sys::{SOCKET_BUFFER, is_hangup, tune_socket_buffers, untaken, wait_taken};
pub use target::{
    DEFAULT_BAUD, DEFAULT_VIRTIO_PORT, Endpoint, LEGACY_PREFIX, ParseTargetError, Target,
    VSOCK_CID_ANY,
};
pub use transport::{ConnectOptions, Transport, TransportKind};
pub use vectored::write_all_vectored;
pub use virtio::VirtioPort;
pub use vm_sockets::{VSOCK_CID_LOCAL, VSOCK_PORT_ANY, vsock_loopback_available};

/// The dialect type targets select, re-exported so callers need not name the core crate.
pub use tuppence::wire::Dialect;

// Adapters move transports and listeners between threads and share them across a
// reader and a writer thread; keep that possible.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Transport>();
    send_sync::<Listener>();
    send_sync::<VirtioPort>();
    send_sync::<Target>();
    send_sync::<TransportError>();
    send_sync::<ParseTargetError>();
    send_sync::<ExecHandle>();
    send_sync::<StdioRelay>();
};
