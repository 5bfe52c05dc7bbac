//! Status words: the numbers the agent puts in `M`/`m` packets.
//!
//! The link protocol reports failures with the *agent's* Linux errno values, exactly as the C
//! executor did (DESIGN §3), so a client can print them with its own `strerror` when the
//! architectures agree. Every error type of this crate has an `errno()` method returning one of
//! these (or another raw errno the kernel gave us); this module is the single place that turns
//! an [`io::Error`] into such a number.

use std::io;

/// Operation not permitted: the agent cannot act as the requested user.
pub const EPERM: u32 = 1;
/// No such user, file or directory; also "unknown event source".
pub const ENOENT: u32 = 2;
/// No such process (procinfo for a process that is gone).
pub const ESRCH: u32 = 3;
/// Interrupted: an inject or extract aborted by `I`.
pub const EINTR: u32 = 4;
/// Input/output error; the fallback for errors without an OS code.
pub const EIO: u32 = 5;
/// Permission denied.
pub const EACCES: u32 = 13;
/// "Killed by a signal": the major status of a command that died of a signal (minor = signo).
pub const EFAULT: u32 = 14;
/// Is a directory (also: not a regular file, as the C executor reported it).
pub const EISDIR: u32 = 21;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// File name too long.
pub const ENAMETOOLONG: u32 = 36;
/// Too many levels of symbolic links.
pub const ELOOP: u32 = 40;
/// No data available: an extracted file shrank while it was read (see
/// `FileError::Shrank`); the client discards what it received.
pub const ENODATA: u32 = 61;
/// Protocol error: a request the agent cannot parse or act on.
pub const EPROTO: u32 = 71;

/// The status word for an I/O error.
///
/// The raw OS error wins when there is one (that is the number the kernel chose, and the C
/// executor passed it through unchanged). Errors synthesised in Rust have no OS code; they are
/// mapped by kind, and anything unrecognisable becomes [`EIO`] rather than 0, because 0 means
/// success on the wire.
pub fn errno_of(err: &io::Error) -> u32 {
    if let Some(code) = err.raw_os_error()
        && let Ok(code) = u32::try_from(code)
        && code != 0
    {
        return code;
    }
    match err.kind() {
        io::ErrorKind::NotFound => ENOENT,
        io::ErrorKind::PermissionDenied => EACCES,
        io::ErrorKind::IsADirectory => EISDIR,
        io::ErrorKind::InvalidFilename => ENAMETOOLONG,
        io::ErrorKind::InvalidInput => EINVAL,
        io::ErrorKind::Interrupted => EINTR,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_codes_pass_through() {
        assert_eq!(
            errno_of(&io::Error::from_raw_os_error(libc::ENOENT)),
            ENOENT
        );
        assert_eq!(
            errno_of(&io::Error::from_raw_os_error(libc::EACCES)),
            EACCES
        );
        assert_eq!(errno_of(&io::Error::from_raw_os_error(libc::ENOSPC)), 28);
    }

    #[test]
    fn synthesised_errors_map_by_kind_never_to_zero() {
        assert_eq!(errno_of(&io::Error::from(io::ErrorKind::NotFound)), ENOENT);
        assert_eq!(errno_of(&io::Error::other("boom")), EIO);
        assert_eq!(errno_of(&io::Error::from_raw_os_error(0)), EIO);
    }

    #[test]
    fn constants_match_linux() {
        assert_eq!(ENOENT, libc::ENOENT as u32);
        assert_eq!(ESRCH, libc::ESRCH as u32);
        assert_eq!(EINTR, libc::EINTR as u32);
        assert_eq!(EIO, libc::EIO as u32);
        assert_eq!(EACCES, libc::EACCES as u32);
        assert_eq!(EFAULT, libc::EFAULT as u32);
        assert_eq!(EISDIR, libc::EISDIR as u32);
        assert_eq!(ENAMETOOLONG, libc::ENAMETOOLONG as u32);
        assert_eq!(EPROTO, libc::EPROTO as u32);
        assert_eq!(ELOOP, libc::ELOOP as u32);
        assert_eq!(EPERM, libc::EPERM as u32);
        assert_eq!(EINVAL, libc::EINVAL as u32);
    }
}
