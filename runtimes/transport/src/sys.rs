//! Small fd helpers shared by the transports: `poll(2)` on one fd, the `O_NONBLOCK` flag,
//! and a sleep-based wait for character devices that report `POLLHUP` while nobody is on
//! the other end.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// First sleep between two checks of a hung-up device.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest sleep between two checks: the most a connecting host waits to be noticed.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// What one `poll(2)` call saw on an fd.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Revents {
    pub readable: bool,
    pub hangup: bool,
}

/// `poll(2)` on one fd for `POLLIN`, waiting at most `timeout` (`None` = forever).
///
/// This calls libc directly rather than `rustix::event::poll`: rustix converts the returned
/// bits with an `unwrap` that would panic on a flag it does not know, and this crate must not
/// panic on anything the kernel says. `EINTR` is retried with the remaining time.
pub(crate) fn poll_in(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<Revents> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let ms: libc::c_int = match (timeout, deadline) {
            (None, _) => -1,
            // A timeout too large for an Instant: wait as long as poll allows.
            (Some(_), None) => libc::c_int::MAX,
            (Some(_), Some(d)) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond remainder does not become a busy 0 ms poll.
                let ms = left.as_micros().div_ceil(1000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, initialised pollfd that lives across the call, and the
        // count passed is 1. The fd is borrowed, so it stays open during the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let r = pfd.revents;
        if r & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        return Ok(Revents {
            readable: r & libc::POLLIN != 0,
            hangup: r & libc::POLLHUP != 0,
        });
    }
}

/// Set or clear `O_NONBLOCK` on the open file description behind `fd`.
///
/// Every dup of the fd shares that flag: changing it on one clone changes it on all.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(fd)?;
    let new = if nonblocking {
        flags | OFlags::NONBLOCK
    } else {
        flags - OFlags::NONBLOCK
    };
    if new != flags {
        fcntl_setfl(fd, new)?;
    }
    Ok(())
}

/// Whether an I/O error on a transport means the peer went away rather than that the
/// transport broke: a pty master (a serial line's stand-in) fails with `EIO` once its other
/// side closed, sockets report resets, aborts and broken pipes. Every adapter treats these
/// as end of stream, so a peer that vanishes ends a connection the same way everywhere.
pub fn is_hangup(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
        || matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        )
}

/// Reads a character device and turns `EIO` into end of file.
///
/// A pty master whose slave has closed fails reads with `EIO` (measured on this host), and a
/// USB serial adapter that is unplugged does the same: both mean the other end is gone, which
/// is what EOF means to a protocol loop. Any other error is returned unchanged; `Ok(0)` is
/// never produced for "no data yet" because the devices are configured `VMIN=1, VTIME=0`
/// (blocking read waits; non-blocking read fails with `WouldBlock`).
pub(crate) fn read_device(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    match (&*file).read(buf) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
        other => other,
    }
}

/// Vectored form of [`read_device`].
pub(crate) fn read_device_vectored(
    file: &File,
    bufs: &mut [io::IoSliceMut<'_>],
) -> io::Result<usize> {
    match (&*file).read_vectored(bufs) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
        other => other,
    }
}

/// Repeats `check` until it reports ready, sleeping between attempts with a backoff from
/// [`BACKOFF_START`] to [`BACKOFF_MAX`], for at most `timeout` (`None` = forever).
///
/// Why sleep instead of `poll`: a virtio-serial port with no host, or a tty that has been
/// hung up, reports `POLLHUP` continuously, so `poll` returns at once and a poll loop would
/// spin a core. Returns `Ok(true)` when ready, `Ok(false)` on timeout.
pub(crate) fn wait_with_backoff(
    timeout: Option<Duration>,
    mut check: impl FnMut() -> io::Result<bool>,
) -> io::Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut pause = BACKOFF_START;
    loop {
        if check()? {
            return Ok(true);
        }
        let nap = match (timeout, deadline) {
            (None, _) | (Some(_), None) => pause,
            (Some(_), Some(d)) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                pause.min(left)
            }
        };
        std::thread::sleep(nap);
        pause = pause
            .saturating_mul(3)
            .checked_div(2)
            .unwrap_or(BACKOFF_MAX);
        pause = pause.min(BACKOFF_MAX);
    }
}

/// `true` when `fd` currently reports no hang-up (a zero-timeout poll, never blocks).
///
/// Only `POLLHUP` counts: a virtio-serial port with no host reports `POLLIN | POLLHUP`
/// (its read would return EOF at once), so `POLLIN` says nothing about a peer being there.
pub(crate) fn peer_present(fd: impl AsFd) -> io::Result<bool> {
    Ok(!poll_in(fd.as_fd(), Some(Duration::ZERO))?.hangup)
}

/// `SO_PEERCRED` of a unix socket: `(pid, uid, gid)`.
///
/// Called through libc into a plain `ucred`: the kernel reports pid 0 for a peer outside
/// our pid namespace, which a non-zero pid type could not hold.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `cred` is a valid, writable `ucred` and `len` is its size, as SO_PEERCRED
    // expects; the fd is borrowed and stays open during the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// Socket buffer size asked for on stream sockets. The kernel caps the request at
/// `net.core.wmem_max` / `rmem_max` (208 KiB by default) and doubles it for its own
/// bookkeeping, so on a default system this gives 416 KiB instead of 208 KiB.
pub const SOCKET_BUFFER: usize = 1 << 20;

/// Asks for [`SOCKET_BUFFER`]-sized send and receive buffers on a stream socket.
///
/// Why: epoll reports a unix stream socket writable again only once it has drained to a
/// quarter of its send buffer (52 KiB of the default 208 KiB), so a non-blocking writer
/// streaming a file sleeps and wakes every ~25 µs of the peer's work; a larger buffer
/// halves those wake-ups (measured on inject: client context switches 440 → 220). Best
/// effort: a refusal leaves the kernel's defaults, which work.
pub fn tune_socket_buffers(fd: impl AsFd) {
    let fd = fd.as_fd();
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, SOCKET_BUFFER);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, SOCKET_BUFFER);
}

/// Bytes written to `fd` that the other end has not taken yet: for a unix socket, what the
/// peer has not read; for TCP, what is not acknowledged; for a tty, what is not
/// transmitted (`SIOCOUTQ`, which is `TIOCOUTQ`). A write returns once the bytes are
/// queued, and closing a unix socket right after can lose them where the peer is QEMU's
/// chardev feeding a guest's serial port: it drops what it had not read when it sees the
/// hang-up (the guest agent missed a `quit`). See [`wait_taken`].
pub fn untaken(fd: impl AsFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n`.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Waits (polling every millisecond, at most `limit`) until the other end of `fd` has
/// taken everything written to it ([`untaken`] is 0). True if it has, or if the kind of
/// fd cannot tell; false after `limit`.
pub fn wait_taken(fd: impl AsFd, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match untaken(fd.as_fd()) {
            Ok(0) | Err(_) => return true,
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod untaken_tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// What the peer of a unix socket has not read counts; once it reads, nothing does.
    #[test]
    fn untaken_counts_what_the_peer_has_not_read() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        assert_eq!(untaken(&a).expect("ioctl"), 0);
        a.write_all(b"quit packet").expect("write");
        assert!(untaken(&a).expect("ioctl") > 0);
        assert!(!wait_taken(&a, Duration::from_millis(20)));
        let mut buf = [0u8; 64];
        assert_eq!(b.read(&mut buf).expect("read"), 11);
        assert_eq!(untaken(&a).expect("ioctl"), 0);
        assert!(wait_taken(&a, Duration::from_millis(20)));
    }
}
