//! What the blocking adapter needs from a transport: a byte stream that can be split into
//! a reading and a writing handle, and whose reads can be bounded in time (for keepalive
//! timers).

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};
use tuppence_transport::{Transport, TransportKind};

/// A byte stream the blocking session can drive from its reader thread and its callers.
pub trait Stream: Write + Send + 'static {
    /// A second handle on the same stream (one reads, one writes).
    fn try_clone_stream(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Reads, waiting at most `timeout` (`None` = until data or EOF). A read that timed
    /// out returns `WouldBlock` or `TimedOut`; the session treats both as "no data yet".
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize>;
    /// Reads what has arrived, without waiting: `WouldBlock` when nothing has. For a
    /// session that steps its peer (`Session::with_stepped_peer`) and then reads its
    /// answer. The default is a `read_timeout` of zero, which some streams (serial ports)
    /// round up to a millisecond.
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_timeout(buf, Some(Duration::ZERO))
    }
    /// A handle to ask later whether the other end has taken what was written
    /// (`tuppence_transport::untaken`), for a session on a device link
    /// ([`crate::Session::quit`]). `None` (the default) where that cannot be asked.
    fn taken_probe(&self) -> Option<OwnedFd> {
        None
    }
    /// Shuts both directions down, so that a write blocked on a peer that never reads
    /// again returns (with an error). Used when a dropped session's writer thread could
    /// not finish within its grace period. The default does nothing: a stream without a
    /// shutdown (a serial line) keeps such a writer until the peer reads or the process
    /// exits.
    fn shutdown(&self) -> io::Result<()> {
        Ok(())
    }
    /// Whether [`write_nonblocking`](Self::write_nonblocking) works: true for sockets,
    /// which take a per-call `MSG_DONTWAIT`. A stream that says so is written by whichever
    /// thread queued the bytes until a write would block; others get a writer thread from
    /// the start (a tty or pipe would need `O_NONBLOCK` on the fd, shared with the reader).
    fn writes_nonblocking(&self) -> bool {
        false
    }
    /// Writes what the stream takes at once, without waiting: `WouldBlock` when it takes
    /// nothing. Only called when [`writes_nonblocking`](Self::writes_nonblocking) is true.
    fn write_nonblocking(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let _ = bufs;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// `sendmsg` with `MSG_DONTWAIT` (this call only; the fd stays blocking for the others) and
/// `MSG_NOSIGNAL` (a closed peer is `EPIPE`, never a signal).
fn send_nonblocking(fd: impl AsFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    Ok(rustix::net::sendmsg(
        fd,
        bufs,
        &mut SendAncillaryBuffer::default(),
        flags,
    )?)
}

/// `recv` with `MSG_DONTWAIT` (this call only, as [`send_nonblocking`]).
fn recv_nonblocking(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    let (n, _) = rustix::net::recv(fd, buf, RecvFlags::DONTWAIT)?;
    Ok(n)
}

fn at_least_1ms(t: Option<Duration>) -> Option<Duration> {
    t.map(|t| t.max(Duration::from_millis(1)))
}

impl Stream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, std::net::Shutdown::Both)
    }
    fn writes_nonblocking(&self) -> bool {
        true
    }
    fn write_nonblocking(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_nonblocking(&*self, bufs)
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        self.set_read_timeout(at_least_1ms(timeout))?;
        self.read(buf)
    }
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_nonblocking(&*self, buf)
    }
    fn taken_probe(&self) -> Option<OwnedFd> {
        self.as_fd().try_clone_to_owned().ok()
    }
}

impl Stream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, std::net::Shutdown::Both)
    }
    fn writes_nonblocking(&self) -> bool {
        true
    }
    fn write_nonblocking(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_nonblocking(&*self, bufs)
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        self.set_read_timeout(at_least_1ms(timeout))?;
        self.read(buf)
    }
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_nonblocking(&*self, buf)
    }
}

/// serial2 ports wait up to their read timeout and then return `TimedOut`; a very long
/// timeout stands for "forever".
impl Stream for serial2::SerialPort {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        self.set_read_timeout(at_least_1ms(timeout).unwrap_or(Duration::from_secs(3600)))?;
        self.read(buf)
    }
}

/// Any transport of `tuppence-transport` (sockets, serial lines, virtio ports, vsock):
/// waits with `poll(2)`, which works the same for every kind of fd.
impl Stream for Transport {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown(&self) -> io::Result<()> {
        Transport::shutdown(self).map(|_| ())
    }
    /// Unix, TCP and vsock sockets, and the socket pair of an `exec:` link.
    fn writes_nonblocking(&self) -> bool {
        match self.kind() {
            TransportKind::Unix
            | TransportKind::Tcp
            | TransportKind::Vsock
            | TransportKind::Exec => true,
            TransportKind::Serial | TransportKind::Virtio => false,
        }
    }
    fn write_nonblocking(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_nonblocking(&*self, bufs)
    }
    /// Unix sockets (QEMU's chardev sockets among them), serial lines and virtio ports.
    fn taken_probe(&self) -> Option<OwnedFd> {
        match self.kind() {
            TransportKind::Unix | TransportKind::Serial | TransportKind::Virtio => {
                self.as_fd().try_clone_to_owned().ok()
            }
            TransportKind::Tcp | TransportKind::Vsock | TransportKind::Exec => None,
        }
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        if !self.wait_readable(timeout)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.read(buf)
    }
}
