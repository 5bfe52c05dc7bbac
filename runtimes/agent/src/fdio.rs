//! Small non-blocking fd helpers shared by the modules and offered to the event loop.
//!
//! Every fd this crate hands out is `O_NONBLOCK|O_CLOEXEC`. An edge-triggered loop (mio) must
//! read until it sees [`ReadOutcome::WouldBlock`]; these helpers make the three outcomes of a
//! non-blocking read explicit so nobody mistakes `EAGAIN` for an error or 0 for "try again".

use std::io::{self, Read};
use std::os::fd::AsFd;

use bytes::BytesMut;

/// The result of one non-blocking read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were appended to the buffer.
    Data(usize),
    /// End of file: the writer side is closed (for a pty master: every slave fd is closed).
    Eof,
    /// Nothing to read now; wait for readiness.
    WouldBlock,
}

/// Sets `O_NONBLOCK` on an fd (one `ioctl(FIONBIO)`, no `F_GETFL`/`F_SETFL` pair).
pub fn set_nonblocking<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true)?;
    Ok(())
}

/// Reads at most `max` bytes from a pipe or socket and appends them to `buf`.
///
/// `EINTR` is retried; `EAGAIN` becomes [`ReadOutcome::WouldBlock`].
pub fn read_into<Fd: AsFd>(fd: Fd, buf: &mut BytesMut, max: usize) -> io::Result<ReadOutcome> {
    read_impl(fd, buf, max, false)
}

/// Like [`read_into`], for a pty master: Linux reports `EIO` once the last slave fd is closed
/// (after the remaining output has been read), which is the pty's end of file.
pub fn read_pty_into<Fd: AsFd>(fd: Fd, buf: &mut BytesMut, max: usize) -> io::Result<ReadOutcome> {
    read_impl(fd, buf, max, true)
}

fn read_impl<Fd: AsFd>(
    fd: Fd,
    buf: &mut BytesMut,
    max: usize,
    eio_is_eof: bool,
) -> io::Result<ReadOutcome> {
    if max == 0 {
        return Ok(ReadOutcome::Data(0));
    }
    let start = buf.len();
    // Read straight into the spare capacity: no zero-filling (a memset of every chunk
    // showed as 3 % of the agent's time when streaming output).
    buf.reserve(max);
    let result = loop {
        let spare = buf.spare_capacity_mut();
        let take = spare.len().min(max);
        let spare = spare.get_mut(..take).unwrap_or_default();
        match rustix::io::read(fd.as_fd(), spare) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.map(|(init, _)| init.len()),
        }
    };
    match result {
        Ok(0) => Ok(ReadOutcome::Eof),
        Ok(n) => {
            // SAFETY: `read` initialised the first `n` bytes of the spare capacity, and
            // `n <= max <= capacity - start`.
            unsafe { buf.set_len(start + n) };
            Ok(ReadOutcome::Data(n))
        }
        Err(e) => {
            if e == rustix::io::Errno::AGAIN {
                Ok(ReadOutcome::WouldBlock)
            } else if eio_is_eof && e == rustix::io::Errno::IO {
                Ok(ReadOutcome::Eof)
            } else {
                Err(e.into())
            }
        }
    }
}

/// Like [`read_into`], through a [`Read`] implementation: for streams whose own `read` knows
/// better than a raw `read(2)` (a `Transport` maps a serial or virtio port's `EIO` to end of
/// file). `Interrupted` is retried; `WouldBlock` becomes [`ReadOutcome::WouldBlock`].
pub fn read_from(mut reader: impl Read, buf: &mut BytesMut, max: usize) -> io::Result<ReadOutcome> {
    if max == 0 {
        return Ok(ReadOutcome::Data(0));
    }
    let start = buf.len();
    // A `Read` may look at the buffer, so it gets initialised bytes.
    buf.resize(start + max, 0);
    let result = loop {
        match reader.read(&mut buf[start..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match result {
        Ok(0) => {
            buf.truncate(start);
            Ok(ReadOutcome::Eof)
        }
        Ok(n) => {
            buf.truncate(start + n);
            Ok(ReadOutcome::Data(n))
        }
        Err(e) => {
            buf.truncate(start);
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(ReadOutcome::WouldBlock)
            } else {
                Err(e)
            }
        }
    }
}

/// Writes as much of `data` as the fd takes now. `Ok(None)` means it would block (nothing
/// written); `EPIPE` is returned as an error (the reader is gone: the caller drops its stdin
/// data). `EINTR` is retried.
pub fn write_some<Fd: AsFd>(fd: Fd, data: &[u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::write(fd.as_fd(), data) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks for a pipe buffer of `size` bytes (`F_SETPIPE_SZ`); returns the size granted.
/// Fails when `size` is over `/proc/sys/fs/pipe-max-size` for an unprivileged process, or
/// when the user's pipe pages are over their limit: callers treat failure as "keep the
/// size it has".
pub fn set_pipe_size<Fd: AsFd>(fd: Fd, size: usize) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_setpipe_size(fd, size)?)
}
