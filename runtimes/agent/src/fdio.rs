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
    fill(buf, max, |room| match rustix::io::read(fd.as_fd(), room) {
        Ok(n) => Ok(n),
        Err(e) if eio_is_eof && e == rustix::io::Errno::IO => Ok(0),
        Err(e) => Err(e.into()),
    })
}

/// Like [`read_into`], through a [`Read`] implementation: for streams whose own `read` knows
/// better than a raw `read(2)` (a `Transport` maps a serial or virtio port's `EIO` to end of
/// file). `Interrupted` is retried; `WouldBlock` becomes [`ReadOutcome::WouldBlock`].
pub fn read_from(mut reader: impl Read, buf: &mut BytesMut, max: usize) -> io::Result<ReadOutcome> {
    fill(buf, max, |room| reader.read(room))
}

/// Appends at most `max` bytes that `read` puts into the room it is given, mapping the
/// outcomes of a non-blocking read.
fn fill(
    buf: &mut BytesMut,
    max: usize,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> io::Result<ReadOutcome> {
    if max == 0 {
        return Ok(ReadOutcome::Data(0));
    }
    let start = buf.len();
    // Zero-filling the spare room costs a memset but keeps this free of `unsafe`.
    buf.resize(start + max, 0);
    let result = loop {
        match read(&mut buf[start..]) {
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
