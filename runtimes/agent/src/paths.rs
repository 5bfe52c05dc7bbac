//! Paths a client names (inject, extract, `file:` monitors), resolved by the kernel.
//!
//! ARCHITECTURE.md, "Agent behaviour": the agent resolves a client's path the way the
//! kernel would for the requesting user, and never follows a symbolic link by hand. Reading
//! a link (`readlinkat`) and walking to its target ourselves skips the kernel's checks for
//! the last step — permissions as the user, mount options, and `fs.protected_symlinks` (a
//! link in a sticky world-writable directory is followed only by its owner or the
//! directory's owner; with it, a user could plant `/tmp/x -> /etc/shadow` and have root's
//! inject overwrite the shadow file). So every function here lets the kernel follow links
//! (`open`/`openat` without `O_NOFOLLOW`), called while the thread acts as the user
//! ([`crate::user::AsUser`]), and looks at what the kernel opened.
//!
//! **Nothing here blocks.** A client's path is first opened with `O_PATH`: that resolves the
//! name and checks search permissions but opens nothing (no driver `open`, no FIFO rendezvous).
//! Only a regular file is then opened for reading, through `/proc/self/fd/N` (the kernel reopens
//! exactly the inode it resolved, checking read permission for the user), with `O_NONBLOCK`.
//! Anything else is refused before it is opened: a directory with EISDIR (21, as the C executor
//! reported directories), a FIFO, socket or device with EINVAL (22). A FIFO is refused because
//! reading one in the event loop would wait for a writer (the C executor froze there), a device
//! because opening one can have side effects (a tape rewinds, a modem hangs up) and reading one
//! may never end, a socket because it cannot be opened at all.
//!
//! Pseudo-files in `/proc` and `/sys` are regular files that report size 0: they are read to
//! their end like any other.
//!
//! Where `/proc` is not mounted (a bare chroot), reading falls back to opening the path once
//! more with `O_NONBLOCK` and checking that it is the inode the `O_PATH` open found (a name
//! swapped in between is refused with EAGAIN); following a symbolic link as an inject target
//! needs `/proc` and is refused without it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::status;

/// A client-named path that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path names a directory.
    #[error("{}: is a directory", .path.display())]
    IsDirectory {
        /// The path as resolved against the user's home.
        path: PathBuf,
    },
    /// The path names a FIFO, socket or device (refused: see the module documentation).
    #[error("{}: is a {kind}, not a regular file", .path.display())]
    NotRegular {
        /// The path as resolved against the user's home.
        path: PathBuf,
        /// What it is instead ("FIFO", "socket", "character device", ...).
        kind: &'static str,
    },
    /// A system call failed (the kernel's errno: ENOENT, EACCES for a protected symbolic
    /// link or a missing permission, ELOOP, ...).
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl PathError {
    /// The status word: 21 for a directory, 22 for a FIFO, socket or device, else the errno.
    pub fn errno(&self) -> u32 {
        match self {
            PathError::IsDirectory { .. } => status::EISDIR,
            PathError::NotRegular { .. } => status::EINVAL,
            PathError::Io { source, .. } => status::errno_of(source),
        }
    }

    /// True when the path (or the target of a link in it) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PathError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: impl Into<io::Error>) -> PathError {
        PathError::Io {
            op,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// A name for a file type, for messages.
pub fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Refuses anything but a regular file ([`PathError::IsDirectory`], [`PathError::NotRegular`]).
pub fn require_regular(path: &Path, st: &Stat) -> Result<(), PathError> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(()),
        FileType::Directory => Err(PathError::IsDirectory {
            path: path.to_path_buf(),
        }),
        other => Err(PathError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(other),
        }),
    }
}

/// A regular file opened for reading: the fd (`O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_NOCTTY`) and
/// what `fstat` said about it.
#[derive(Debug)]
pub struct OpenedFile {
    /// The open file.
    pub fd: OwnedFd,
    /// Its status when opened.
    pub stat: Stat,
}

/// Opens the regular file at `path` for reading, letting the kernel resolve every component
/// (symbolic links included) with the calling thread's filesystem identity. Never blocks;
/// refuses directories, FIFOs, sockets and devices before opening them. Call while acting as
/// the user.
pub fn open_regular(path: &Path) -> Result<OpenedFile, PathError> {
    let probe = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| PathError::io("open", path, e))?;
    let stat = rustix::fs::fstat(&probe).map_err(|e| PathError::io("stat", path, e))?;
    require_regular(path, &stat)?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(proc_fd_path(probe.as_fd()), flags, Mode::empty()) {
        Ok(fd) => fd,
        // No /proc: open the name again and make sure it is still the same file (a FIFO
        // swapped in meanwhile opens at once with O_NONBLOCK, and is refused here).
        Err(rustix::io::Errno::NOENT) if !proc_mounted() => {
            let fd = rustix::fs::open(path, flags, Mode::empty())
                .map_err(|e| PathError::io("open", path, e))?;
            let again = rustix::fs::fstat(&fd).map_err(|e| PathError::io("stat", path, e))?;
            if (again.st_dev, again.st_ino) != (stat.st_dev, stat.st_ino) {
                return Err(PathError::io(
                    "open (the name changed while it was opened)",
                    path,
                    io::Error::from_raw_os_error(libc::EAGAIN),
                ));
            }
            fd
        }
        Err(e) => return Err(PathError::io("open", path, e)),
    };
    Ok(OpenedFile { fd, stat })
}

/// `stat` of `path` with the kernel following symbolic links, as the calling thread's
/// filesystem identity (so a protected link is refused as it would be for the user).
pub fn stat(path: &Path) -> Result<Stat, PathError> {
    rustix::fs::stat(path).map_err(|e| PathError::io("stat", path, e))
}

/// Where an inject writes when its target is a symbolic link: the directory and name of the
/// regular file the link leads to, as the kernel resolved it.
#[derive(Debug)]
pub struct LinkTarget {
    /// The directory holding the file (an `O_PATH` fd).
    pub dir: OwnedFd,
    /// The file's name in it.
    pub name: CString,
    /// The file's path (for messages and the caller's records).
    pub path: PathBuf,
}

/// Follows the symbolic link `name` in `dir` with the kernel (as the calling thread's
/// filesystem identity: `fs.protected_symlinks`, permissions and the 40-link limit apply) and
/// returns the directory and name of the regular file it leads to. `shown` is the link's path,
/// for errors.
///
/// The kernel's name for the file it opened (`/proc/self/fd/N`) gives its directory; that
/// directory is then opened (again by the kernel, as the user) and must hold, under that name,
/// the very inode the link led to: a rename meanwhile is refused with EAGAIN. A link whose
/// target does not exist is refused with ENOENT, as `cp` refuses to write through a dangling
/// link (creating the target would mean following the link to a name the agent chose).
pub fn locate_link_target(
    dir: BorrowedFd<'_>,
    name: &CString,
    shown: &Path,
) -> Result<LinkTarget, PathError> {
    let probe = rustix::fs::openat(
        dir,
        name.as_c_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PathError::io("follow symbolic link", shown, e))?;
    let st = rustix::fs::fstat(&probe).map_err(|e| PathError::io("stat", shown, e))?;
    require_regular(shown, &st)?;
    let real = rustix::fs::readlink(proc_fd_path(probe.as_fd()), Vec::new())
        .map_err(|e| PathError::io("locate the target of symbolic link (needs /proc)", shown, e))?;
    let real = PathBuf::from(OsStr::from_bytes(real.as_bytes()));
    let (parent, file) = match (real.parent(), real.file_name()) {
        (Some(parent), Some(file)) if real.is_absolute() => (parent, file),
        _ => {
            return Err(PathError::io(
                "locate the target of symbolic link",
                shown,
                io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
    };
    let file = CString::new(file.as_bytes()).map_err(|e| PathError::io("follow", shown, e))?;
    let target_dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PathError::io("open directory", parent, e))?;
    let there = rustix::fs::statat(&target_dir, file.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| PathError::io("stat", &real, e))?;
    if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino) {
        return Err(PathError::io(
            "follow symbolic link (its target moved meanwhile)",
            shown,
            io::Error::from_raw_os_error(libc::EAGAIN),
        ));
    }
    Ok(LinkTarget {
        dir: target_dir,
        name: file,
        path: real,
    })
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn proc_mounted() -> bool {
    rustix::fs::access("/proc/self/fd", rustix::fs::Access::EXISTS).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_files_are_regular_and_devices_are_not() {
        let opened = open_regular(Path::new("/proc/self/status")).expect("proc file");
        assert_eq!(opened.stat.st_size, 0);
        let err = open_regular(Path::new("/dev/null")).unwrap_err();
        assert_eq!(err.errno(), status::EINVAL, "{err}");
        assert!(err.to_string().contains("character device"), "{err}");
        let err = open_regular(Path::new("/")).unwrap_err();
        assert_eq!(err.errno(), status::EISDIR, "{err}");
        let err = open_regular(Path::new("/nonexistent/x")).unwrap_err();
        assert!(err.is_not_found());
    }
}
