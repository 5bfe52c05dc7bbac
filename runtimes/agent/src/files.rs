//! File transfer for the `i` (inject) and `e` (extract) requests.
//!
//! Both resolve relative names under the user's home (`/` when it has none) and do their
//! permission-relevant calls *as the user* ([`AsUser`]: fsuid/fsgid and the user's groups), so
//! the kernel refuses what the user could not do. Paths are resolved by the kernel, never by
//! hand ([`crate::paths`]): permissions, mount options and `fs.protected_symlinks` apply as
//! they would to the user's own `open`. Errors carry an errno for the status word
//! ([`FileError::errno`]).
//!
//! **Inject is atomic.** The data goes to a temporary `.NAME.tuppence-XXXXXXXX` beside the
//! target, created with `O_EXCL` (never follows or reuses an existing file) and mode 0600 while
//! it is written; [`InjectFile::finish`] applies the requested mode exactly with `fchmod` (no
//! umask), `fdatasync`s and renames it over the target. Until then the target is untouched;
//! [`InjectFile::abort`] or dropping the value removes the temporary. Consequences, on
//! purpose:
//! * the file is created by the user, so it belongs to the user (and the directory's group if
//!   the directory is set-gid) without a separate `chown`;
//! * replacing needs write permission on the *directory* (as for any atomic save); a target
//!   that the user may write but whose directory they may not is refused (EACCES), where the
//!   C executor truncated it in place;
//! * a symbolic link as the target is followed like `open` (and `cp`) follow it — but by the
//!   kernel, as the user ([`crate::paths::locate_link_target`]): the link's target is replaced
//!   (a temporary beside *that* file, renamed over it), the link stays. A link the kernel
//!   would not let the user follow is refused with the kernel's errno (EACCES for a link
//!   protected by `fs.protected_symlinks`, ELOOP for a loop), exactly where the user's own
//!   `echo > LINK` fails. A dangling link is refused with ENOENT, as `cp` refuses to write
//!   through one;
//! * existing directories are refused with EISDIR (21, the C executor's code); FIFOs,
//!   sockets and devices with EINVAL (22): they are not files that can be replaced, and
//!   opening them could block the agent or have side effects;
//! * a target in a sticky directory that belongs to someone else is replaced only if the
//!   user may (the kernel's sticky-bit rule for rename, checked with the user's identity).
//!
//! Why `fdatasync` before the rename: test flows often inject a file and then reset the
//! machine; without it a crash can leave a renamed but empty file on ext4/xfs. Why the
//! directory is synced after the rename: until the filesystem commits the directory (5 s on
//! ext4), a reset brings back the old file, or no file for a new name, and "inject, then reset"
//! is exactly the flow the flush is for. The cost is two flushes per inject (nothing on tmpfs);
//! after a crash at any point the target is the old or the new file, both complete.
//!
//! **Writeback overlaps the transfer** ([`Writeback`]): every [`WRITEBACK_STEP`] written, the
//! kernel is told to start writing that range to disk (`sync_file_range(SYNC_FILE_RANGE_WRITE)`,
//! which does not wait), and once more than [`WRITEBACK_IN_FLIGHT`] is under writeback the
//! oldest range is waited for. So the final `fdatasync` finds at most a few MiB left instead of
//! the whole file (which made a disk inject half as fast as a raw copy), and the dirty data one
//! inject holds — and the longest time a `write` or the final sync blocks the agent's loop — is
//! bounded. Where `sync_file_range` fails (a filesystem that refuses it), the inject simply
//! goes on without it; the final `fdatasync` is the guarantee either way.
//!
//! **Extract** opens the file as the user through [`crate::paths::open_regular`]: never
//! blocking, refusing directories (EISDIR) and FIFOs, sockets and devices (EINVAL) before
//! opening them, and reading regular files to their end in bounded chunks (`/proc` and `/sys`
//! files report size 0 and are read all the same). A file that ends before the size it had
//! when opened and is smaller now was truncated while it was read: that extract fails with 61 (ENODATA) instead of passing a short copy off as
//! the file (the client then discards what it received).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::fdio::{self, ReadOutcome};
use crate::paths::{self, PathError};
use crate::status;
use crate::user::{AsUser, Identity, User, UserError};

/// The longest file name component Linux accepts (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// The longest path Linux accepts (`PATH_MAX` including the NUL).
const PATH_MAX: usize = 4096;
/// How much of the target's name is kept in the temporary's name, so the temporary stays
/// within `NAME_MAX` whatever the target's length.
const TMP_NAME_KEEP: usize = 200;

/// A failed file operation. [`FileError::errno`] is the status word.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The user does not exist.
    #[error(transparent)]
    User(#[from] UserError),
    /// The path cannot be used: a directory (21), a FIFO, socket or device (22), or the kernel
    /// refused to resolve it (its errno).
    #[error(transparent)]
    Path(#[from] PathError),
    /// A name component or the whole path is too long.
    #[error("{}: file name too long", .path.display())]
    NameTooLong {
        /// The resolved path.
        path: PathBuf,
    },
    /// The file ended before the size it had when it was opened, and it is smaller now:
    /// it was truncated (or rewritten in place) while it was read, so the bytes sent are
    /// not a state the file was ever in. Reported as [`status::ENODATA`] instead of a
    /// success, so the client discards them rather than keep a silently short copy.
    #[error(
        "{}: the file shrank while it was read ({read} of the {size} bytes it had when opened; {now} now)",
        .path.display()
    )]
    Shrank {
        /// The resolved path.
        path: PathBuf,
        /// Its size when it was opened.
        size: u64,
        /// Bytes read before the end.
        read: u64,
        /// Its size at the end.
        now: u64,
    },
    /// A system call failed.
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

impl FileError {
    /// The status word: 2 no such user/file, 13 permission, 21 directory, 22 FIFO, socket or
    /// device, 36 name too long, or whatever errno the kernel gave.
    pub fn errno(&self) -> u32 {
        match self {
            FileError::User(e) => e.errno(),
            FileError::Path(e) => e.errno(),
            FileError::NameTooLong { .. } => status::ENAMETOOLONG,
            FileError::Shrank { .. } => status::ENODATA,
            FileError::Io { source, .. } => status::errno_of(source),
        }
    }

    fn io(op: &'static str, path: &Path, source: impl Into<io::Error>) -> FileError {
        FileError::Io {
            op,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// What [`InjectFile::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// Bytes written.
    pub bytes: u64,
    /// Whether the directory holding the target was flushed after the rename. `false` only
    /// where it cannot be: a directory the agent may not open for reading (an agent that is
    /// not root), or a filesystem that does not sync directories (`EINVAL`).
    pub directory_synced: bool,
}

/// Flushes the directory `dir` (an `O_PATH` fd, which cannot be synced itself) so that a
/// rename in it is durable. `Ok(false)` where that is not possible (see [`Injected`]).
fn sync_directory(dir: &OwnedFd) -> Result<bool, rustix::io::Errno> {
    use rustix::io::Errno;
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    );
    let readable = match readable {
        Ok(fd) => fd,
        Err(Errno::ACCESS | Errno::PERM) => return Ok(false),
        Err(e) => return Err(e),
    };
    match rustix::fs::fsync(&readable) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An inject in progress: a temporary file beside the target, renamed into place by
/// [`InjectFile::finish`].
#[derive(Debug)]
pub struct InjectFile {
    identity: Identity,
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
    tmp_name: CString,
    file: File,
    mode: u32,
    written: u64,
    writeback: Writeback,
    done: bool,
}

impl InjectFile {
    /// Prepares to write `path` (relative to the user's home unless absolute) as `user`, with
    /// permission bits `mode` (`& 0o7777`) applied exactly at the end.
    ///
    /// Fails, as the status word says, with 2 for an unknown user, a missing directory or a
    /// dangling symbolic link, 13 when the user may not create files in the directory (or may
    /// not follow a symbolic link there), 21 when the target is a directory, 22 when it is a
    /// FIFO, socket or device, 36 for a name too long, 40 for a symbolic link loop.
    pub fn create(user: &[u8], path: &[u8], mode: u32) -> Result<InjectFile, FileError> {
        let user = User::lookup(user)?;
        let requested = user.resolve(path);
        let identity =
            Identity::of(user).map_err(|e| FileError::io("reading groups for", &requested, e))?;
        if path.is_empty() {
            return Err(FileError::io(
                "inject",
                &requested,
                io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let guard = identity
            .act()
            .map_err(|e| FileError::io("acting as the user for", &requested, e))?;
        let target = resolve_target(&requested)?;
        let (file, tmp_name) = create_temporary(&target)?;
        drop(guard);
        Ok(InjectFile {
            identity,
            path: target.path,
            dir: target.dir,
            name: target.name,
            tmp_name,
            file: File::from(file),
            mode: mode & 0o7777,
            written: 0,
            writeback: Writeback::new(),
            done: false,
        })
    }

    /// The path that will be replaced (after the kernel followed a symbolic link there).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary's name in the target's directory (for logs and tests).
    pub fn temporary_name(&self) -> &[u8] {
        self.tmp_name.to_bytes()
    }

    /// The permission bits [`InjectFile::finish`] applies.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The writeback started so far (how much, and the waits it cost).
    pub fn writeback(&self) -> &Writeback {
        &self.writeback
    }

    /// Appends data to the temporary. Regular files do not return `EAGAIN`; a full disk is an
    /// error (28 ENOSPC), after which the caller aborts.
    pub fn write(&mut self, data: &[u8]) -> Result<(), FileError> {
        self.file
            .write_all(data)
            .map_err(|e| FileError::io("write", &self.path, e))?;
        self.written += data.len() as u64;
        self.writeback.advance(self.file.as_fd(), self.written);
        Ok(())
    }

    /// Appends several pieces with as few `writev` calls as the kernel allows (packets of
    /// file data arrive in pieces of at most 64 KiB; writing each on its own costs a
    /// syscall per packet).
    pub fn write_bufs(&mut self, bufs: &[bytes::Bytes]) -> Result<(), FileError> {
        const IOV: usize = 64;
        let total: usize = bufs.iter().map(bytes::Bytes::len).sum();
        let (mut idx, mut off) = (0usize, 0usize);
        while idx < bufs.len() {
            let mut iov = [io::IoSlice::new(&[]); IOV];
            let mut k = 0;
            for (slot, (i, b)) in iov.iter_mut().zip(bufs.iter().enumerate().skip(idx)) {
                let from = if i == idx { off } else { 0 };
                *slot = io::IoSlice::new(b.get(from..).unwrap_or_default());
                k += 1;
            }
            let n = match self.file.write_vectored(iov.get(..k).unwrap_or_default()) {
                Ok(0) => {
                    return Err(FileError::io(
                        "write",
                        &self.path,
                        io::Error::from(io::ErrorKind::WriteZero),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FileError::io("write", &self.path, e)),
            };
            // Advance over what was written.
            let mut left = n;
            while left > 0 && idx < bufs.len() {
                let rest = bufs.get(idx).map_or(0, bytes::Bytes::len) - off;
                if left < rest {
                    off += left;
                    left = 0;
                } else {
                    left -= rest;
                    idx += 1;
                    off = 0;
                }
            }
            // Skip empty pieces.
            while bufs.get(idx).is_some_and(|b| b.len() == off) {
                idx += 1;
                off = 0;
            }
        }
        self.written += total as u64;
        self.writeback.advance(self.file.as_fd(), self.written);
        Ok(())
    }

    /// Applies the mode, flushes the data to disk, renames the temporary over the target and
    /// flushes the directory, so that the new name survives a crash too. On failure before the
    /// rename the temporary is removed; a failure to flush the directory after it is reported
    /// (the file is in place, but whether it survives a crash is unknown).
    pub fn finish(mut self) -> Result<Injected, FileError> {
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(self.mode))
            .map_err(|e| FileError::io("chmod", &self.path, e))?;
        let syncing = Instant::now();
        self.file
            .sync_data()
            .map_err(|e| FileError::io("fdatasync", &self.path, e))?;
        tracing::debug!(
            path = %crate::escape::Quoted::path(&self.path),
            bytes = self.written,
            writeback = self.writeback.active,
            waits = self.writeback.waits,
            waited_us = self.writeback.waited_for.as_micros() as u64,
            longest_wait_us = self.writeback.longest.as_micros() as u64,
            final_sync_us = syncing.elapsed().as_micros() as u64,
            "inject synced"
        );
        // The rename is the user's act: it must obey the directory's permissions and sticky
        // bit as seen by the user.
        let guard = self
            .identity
            .act()
            .map_err(|e| FileError::io("acting as the user for", &self.path, e))?;
        let renamed = rustix::fs::renameat(
            &self.dir,
            self.tmp_name.as_c_str(),
            &self.dir,
            self.name.as_c_str(),
        );
        drop(guard);
        renamed.map_err(|e| FileError::io("rename into", &self.path, e))?;
        self.done = true;
        let directory_synced = sync_directory(&self.dir)
            .map_err(|e| FileError::io("fsync the directory of", &self.path, e))?;
        Ok(Injected {
            bytes: self.written,
            directory_synced,
        })
    }

    /// Gives up: removes the temporary; the target stays as it was.
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for InjectFile {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Removed with the agent's own identity: the temporary is ours whatever happened to
        // the user's permissions meanwhile.
        if let Err(e) = rustix::fs::unlinkat(&self.dir, self.tmp_name.as_c_str(), AtFlags::empty())
        {
            tracing::warn!(path = %crate::escape::Quoted::path(&self.path), error = %e, "could not remove an inject temporary");
        }
    }
}

/// How much is written before its writeback is started (a range per `sync_file_range`).
pub const WRITEBACK_STEP: u64 = 4 << 20;
/// How much may be under writeback at once before the oldest range is waited for.
pub const WRITEBACK_IN_FLIGHT: u64 = 16 << 20;

/// Starts the writeback of an inject's temporary as it is written, and bounds how much of it
/// is in flight (see the module's documentation). Ranges are contiguous: `[waited, started)`
/// is under writeback, `[started, written)` is dirty and not yet handed to the kernel.
#[derive(Debug)]
pub struct Writeback {
    /// False once `sync_file_range` failed: the rest of the inject goes without it.
    active: bool,
    started: u64,
    waited: u64,
    /// How many waits, their total and the longest (how long the agent's loop stood still).
    waits: u32,
    waited_for: Duration,
    longest: Duration,
}

impl Writeback {
    /// Nothing written yet.
    pub fn new() -> Writeback {
        Writeback {
            active: true,
            started: 0,
            waited: 0,
            waits: 0,
            waited_for: Duration::ZERO,
            longest: Duration::ZERO,
        }
    }

    /// Whether writeback is still being started (false after `sync_file_range` failed).
    pub fn active(&self) -> bool {
        self.active
    }

    /// Bytes whose writeback was started.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// The waits for the oldest range so far: how many, their total and the longest.
    pub fn waits(&self) -> (u32, Duration, Duration) {
        (self.waits, self.waited_for, self.longest)
    }

    /// `written` bytes of `fd` are written: starts the writeback of each whole step not yet
    /// started, and waits for the oldest while more than [`WRITEBACK_IN_FLIGHT`] is in
    /// flight. Never fails: an error turns it off (the final `fdatasync` still covers all).
    pub fn advance(&mut self, fd: BorrowedFd<'_>, written: u64) {
        while self.active && written.saturating_sub(self.started) >= WRITEBACK_STEP {
            if let Err(e) = sync_range(
                fd,
                self.started,
                WRITEBACK_STEP,
                libc::SYNC_FILE_RANGE_WRITE,
            ) {
                self.give_up(e);
                return;
            }
            self.started += WRITEBACK_STEP;
            while self.active && self.started - self.waited > WRITEBACK_IN_FLIGHT {
                let t = Instant::now();
                let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                if let Err(e) = sync_range(fd, self.waited, WRITEBACK_STEP, flags) {
                    self.give_up(e);
                    return;
                }
                let took = t.elapsed();
                self.waits += 1;
                self.waited_for += took;
                self.longest = self.longest.max(took);
                self.waited += WRITEBACK_STEP;
            }
        }
    }

    fn give_up(&mut self, e: io::Error) {
        tracing::debug!(error = %e, "sync_file_range refused; the inject goes on without it");
        self.active = false;
    }
}

impl Default for Writeback {
    fn default() -> Writeback {
        Writeback::new()
    }
}

/// `sync_file_range(2)`.
fn sync_range(fd: BorrowedFd<'_>, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    };
    loop {
        // SAFETY: a plain system call on a borrowed, open fd; no memory is passed.
        let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, flags) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An extract in progress: the file opened as the user.
#[derive(Debug)]
pub struct ExtractFile {
    path: PathBuf,
    fd: OwnedFd,
    size: u64,
    read: u64,
}

impl ExtractFile {
    /// Opens `path` (relative to the user's home unless absolute) for reading as `user`.
    ///
    /// Fails with 2 for an unknown user or missing file, 13 without permission (or for a
    /// symbolic link the kernel would not let the user follow), 21 for a directory, 22 for a
    /// FIFO, socket or device.
    pub fn open(user: &[u8], path: &[u8]) -> Result<ExtractFile, FileError> {
        let user = User::lookup(user)?;
        let full = user.resolve(path);
        if path.is_empty() {
            return Err(FileError::io(
                "extract",
                &full,
                io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let guard =
            AsUser::enter(&user).map_err(|e| FileError::io("acting as the user for", &full, e))?;
        let opened = paths::open_regular(&full)?;
        drop(guard);
        let (fd, st) = (opened.fd, opened.stat);
        Ok(ExtractFile {
            path: full,
            fd,
            size: u64::try_from(st.st_size).unwrap_or(0),
            read: 0,
        })
    }

    /// The resolved path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size when it was opened (0 for `/proc` and `/sys` files, which are read to
    /// their end all the same).
    pub fn size_hint(&self) -> u64 {
        self.size
    }

    /// Bytes read so far.
    pub fn read_so_far(&self) -> u64 {
        self.read
    }

    /// The open file, for callers that want to poll or `sendfile` it themselves.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Appends at most `max` bytes to `buf`; `Ok(0)` is the end of the file. One `read` per
    /// call, so a loop can interleave chunks with other work and bound its memory.
    ///
    /// An end before the size the file had when opened is checked against its size now:
    /// smaller means it was truncated while being read, [`FileError::Shrank`]. A file that
    /// merely reports more than it holds (sysfs attributes say 4096) keeps its size and
    /// ends normally; one that grows is read to its new end.
    pub fn read_chunk(&mut self, buf: &mut BytesMut, max: usize) -> Result<usize, FileError> {
        if max == 0 {
            return Ok(0);
        }
        match fdio::read_into(&self.fd, buf, max)
            .map_err(|e| FileError::io("read", &self.path, e))?
        {
            ReadOutcome::Data(n) => {
                self.read += n as u64;
                Ok(n)
            }
            ReadOutcome::Eof if self.read < self.size => {
                let now = rustix::fs::fstat(&self.fd)
                    .map(|st| u64::try_from(st.st_size).unwrap_or(0))
                    .map_err(|e| FileError::io("fstat", &self.path, e))?;
                if now < self.size {
                    return Err(FileError::Shrank {
                        path: self.path.clone(),
                        size: self.size,
                        read: self.read,
                        now,
                    });
                }
                Ok(0)
            }
            ReadOutcome::Eof => Ok(0),
            // Regular files never report EAGAIN; if something that is not one slipped
            // through, say so instead of pretending it ended.
            ReadOutcome::WouldBlock => Err(FileError::io(
                "read",
                &self.path,
                io::Error::from_raw_os_error(libc::EAGAIN),
            )),
        }
    }
}

/// The directory and final name an inject writes to.
struct Target {
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
}

/// Splits `path` into directory and name and checks that whatever exists there is a regular
/// file; a symbolic link there is followed by the kernel ([`paths::locate_link_target`]).
/// Runs as the user.
fn resolve_target(requested: &Path) -> Result<Target, FileError> {
    let path = requested.to_path_buf();
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= PATH_MAX {
        return Err(FileError::NameTooLong { path });
    }
    let (parent, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/".as_slice(), &bytes[1..]),
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (b".".as_slice(), bytes),
    };
    // `dir/`, `dir/.` and `dir/..` name directories.
    if name.is_empty() || name == b"." || name == b".." {
        return Err(PathError::IsDirectory { path }.into());
    }
    if name.len() > NAME_MAX {
        return Err(FileError::NameTooLong { path });
    }
    let parent = Path::new(OsStr::from_bytes(parent));
    let cname = CString::new(name).map_err(|e| FileError::io("inject", &path, e))?;
    // The kernel resolves the directory part (links in it included) as the user.
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FileError::io("open directory", parent, e))?;
    match rustix::fs::statat(&dir, cname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(Target {
            path,
            dir,
            name: cname,
        }),
        Err(e) => Err(FileError::io("stat", &path, e)),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            let found = paths::locate_link_target(dir.as_fd(), &cname, &path)?;
            Ok(Target {
                path: found.path,
                dir: found.dir,
                name: found.name,
            })
        }
        Ok(st) => {
            paths::require_regular(&path, &st)?;
            Ok(Target {
                path,
                dir,
                name: cname,
            })
        }
    }
}

/// Creates the temporary beside the target: `O_EXCL|O_NOFOLLOW`, mode 0600, a few attempts
/// with fresh names if one is taken.
fn create_temporary(target: &Target) -> Result<(OwnedFd, CString), FileError> {
    let name = target.name.as_bytes();
    let keep = &name[..name.len().min(TMP_NAME_KEEP)];
    let mut last = io::Error::from_raw_os_error(libc::EEXIST);
    for _ in 0..16 {
        let mut tmp = Vec::with_capacity(keep.len() + 20);
        tmp.push(b'.');
        tmp.extend_from_slice(keep);
        tmp.extend_from_slice(format!(".tuppence-{:08x}", unique_suffix()).as_bytes());
        let tmp = CString::new(tmp).map_err(|e| FileError::io("inject", &target.path, e))?;
        match rustix::fs::openat(
            &target.dir,
            tmp.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((fd, tmp)),
            Err(rustix::io::Errno::EXIST) => last = io::Error::from_raw_os_error(libc::EEXIST),
            Err(e) => return Err(FileError::io("create temporary for", &target.path, e)),
        }
    }
    Err(FileError::io("create temporary for", &target.path, last))
}

/// A hard-to-guess, never-repeating (within this process) suffix; `O_EXCL` makes collisions
/// harmless anyway, so this needs no cryptographic quality.
fn unique_suffix() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 32) as u32
}
