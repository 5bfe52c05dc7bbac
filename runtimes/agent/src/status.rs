//! Status words: the numbers the agent puts in `M`/`m` packets.
//!
//! The link protocol reports failures with the *agent's* Linux errno values, exactly as the
//! C executor did (ARCHITECTURE.md, "Link protocol"), so a client can print them with its
//! own `strerror` when the architectures agree. The constants are the core's one table
//! ([`tuppence::link::status`], re-exported here); every error type of this crate has an
//! `errno()` method returning one of them (or another raw errno the kernel gave us), and
//! this module is the single place that turns an [`io::Error`] into such a number.

use std::io;

pub use tuppence::link::status::*;

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
