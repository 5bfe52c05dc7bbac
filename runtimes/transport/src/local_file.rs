//! The local end of an extract: a destination opened the way `cp` opens one
//! (ARCHITECTURE.md, "Agent behaviour"), shared by every adapter's extract-to-path helper
//! and the CLI.
//!
//! * a new name, or an existing **regular file**, is written to a temporary beside it and
//!   renamed into place by [`LocalFile::commit`], so a failed or interrupted transfer never
//!   leaves a truncated file where a whole one was (the file's permission bits are kept);
//! * an existing **FIFO, device or socket** is opened and written in place: a FIFO's reader
//!   gets the bytes, `/dev/null` swallows them, `/dev/full` fails with `ENOSPC` — and that
//!   error is reported, not swallowed. (Replacing them with a regular file, as a blind
//!   temporary + rename did, replaced `/dev/full` on a shared host.) A socket cannot be
//!   opened and says so (`ENXIO`), as with `cp`;
//! * a **symbolic link** is followed: the link stays and its target gets the bytes (by
//!   rename beside the target when that is a regular file); a link to nothing is refused,
//!   as GNU `cp` refuses to write through a dangling link;
//! * `-`, `/dev/stdout`, `/dev/stderr`, `/dev/fd/N` and `/proc/self/fd/N` are this
//!   process's own descriptors and are written directly, so `>> log` keeps appending; any
//!   other path that leads through `/proc` is opened in place;
//! * a directory is refused (`EISDIR`); [`LocalFile::for_extract`] first maps an existing
//!   directory to the remote file's name inside it, as `cp file dir/` does.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How many symbolic links are followed when checking whether a path leads through `/proc`.
const MAX_LINKS: usize = 40;

/// A local destination that could not be opened, written or put in place.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct LocalFileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl LocalFileError {
    fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        LocalFileError {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Where the bytes of an extract go. Write to it, then [`commit`](Self::commit); dropping
/// it uncommitted removes the temporary of a replaced file (nothing can be taken back
/// from a file written in place).
#[derive(Debug)]
pub struct LocalFile {
    /// The destination as named (for messages).
    shown: PathBuf,
    file: File,
    /// `Some` when the bytes go to a temporary that `commit` renames into place.
    replace: Option<Replace>,
}

#[derive(Debug)]
struct Replace {
    temp: PathBuf,
    /// The file the temporary replaces: the destination, or a link's target.
    target: PathBuf,
    /// Permission bits of the file replaced, to give the new one.
    keep_mode: Option<u32>,
    committed: bool,
}

impl LocalFile {
    /// The destination of `extract REMOTE LOCAL`: `-` is stdout; an existing directory (or
    /// a link to one) gets the last component of `remote` inside it; anything else is
    /// opened by [`LocalFile::create`].
    pub fn for_extract(local: &Path, remote: &str) -> Result<LocalFile, LocalFileError> {
        if local.as_os_str() == "-" {
            return LocalFile::own_fd(local, 1);
        }
        if local.is_dir() {
            let name = Path::new(remote).file_name().ok_or_else(|| {
                LocalFileError::new(
                    "name a file in",
                    local,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("the remote path {remote:?} has no file name to use"),
                    ),
                )
            })?;
            return LocalFile::create(&local.join(name));
        }
        LocalFile::create(local)
    }

    /// Opens `path` as `cp` would open its destination (see the module documentation).
    pub fn create(path: &Path) -> Result<LocalFile, LocalFileError> {
        if let Some(fd) = own_fd_number(path) {
            return LocalFile::own_fd(path, fd);
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(LocalFileError::new("inspect", path, e)),
        };
        let Some(meta) = meta else {
            return LocalFile::replacing(path, path, None);
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = match std::fs::metadata(path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(LocalFileError::new(
                        "write",
                        path,
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            "it is a symbolic link to nothing (not writing through it)",
                        ),
                    ));
                }
                Err(e) => return Err(LocalFileError::new("inspect", path, e)),
            };
            if target.is_dir() {
                return Err(is_a_directory(path));
            }
            if !target.is_file() || leads_through_proc(path) {
                return LocalFile::in_place(path, target.is_file());
            }
            let real =
                std::fs::canonicalize(path).map_err(|e| LocalFileError::new("resolve", path, e))?;
            return LocalFile::replacing(path, &real, Some(target.permissions().mode()));
        }
        if kind.is_file() {
            return LocalFile::replacing(path, path, Some(meta.permissions().mode()));
        }
        if kind.is_dir() {
            return Err(is_a_directory(path));
        }
        LocalFile::in_place(path, false)
    }

    /// The name the destination was given.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// True when the bytes go to a temporary renamed into place by `commit`; false when
    /// they are written to the destination itself (stdout, a device, a FIFO).
    pub fn replaces(&self) -> bool {
        self.replace.is_some()
    }

    /// The temporary being written, when the destination is replaced.
    pub fn temporary(&self) -> Option<&Path> {
        self.replace.as_ref().map(|r| r.temp.as_path())
    }

    /// Finishes: a replaced file is flushed to disk, given the old file's permission bits
    /// and renamed over the destination; a destination written in place is flushed.
    pub fn commit(mut self) -> Result<(), LocalFileError> {
        let shown = self.shown.clone();
        let fail = |action, e| LocalFileError::new(action, &shown, e);
        self.file.flush().map_err(|e| fail("write", e))?;
        let Some(replace) = self.replace.as_mut() else {
            return Ok(());
        };
        self.file.sync_all().map_err(|e| fail("write", e))?;
        if let Some(mode) = replace.keep_mode {
            self.file
                .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| fail("set the permissions of", e))?;
        }
        std::fs::rename(&replace.temp, &replace.target).map_err(|e| fail("replace", e))?;
        replace.committed = true;
        Ok(())
    }

    /// One of this process's descriptors (`-`, `/dev/stdout`, …), duplicated.
    fn own_fd(shown: &Path, fd: i32) -> Result<LocalFile, LocalFileError> {
        // SAFETY: the descriptor is only borrowed for the duration of the dup; if it is not
        // open, `fcntl` fails with EBADF and nothing is borrowed.
        let valid = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if !valid {
            return Err(LocalFileError::new(
                "write",
                shown,
                io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        // SAFETY: `fd` is open (checked above) and stays open while borrowed here.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|e| LocalFileError::new("duplicate", shown, e))?;
        Ok(LocalFile {
            shown: shown.to_owned(),
            file: File::from(owned),
            replace: None,
        })
    }

    /// An existing non-regular file (or a regular one reached through `/proc`), opened for
    /// writing where it is. `O_NOCTTY`: a terminal named here must not become ours.
    fn in_place(path: &Path, regular: bool) -> Result<LocalFile, LocalFileError> {
        let file = OpenOptions::new()
            .write(true)
            .truncate(regular)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|e| LocalFileError::new("open", path, e))?;
        Ok(LocalFile {
            shown: path.to_owned(),
            file,
            replace: None,
        })
    }

    /// A temporary beside `target`, which it replaces on commit.
    fn replacing(
        shown: &Path,
        target: &Path,
        keep_mode: Option<u32>,
    ) -> Result<LocalFile, LocalFileError> {
        let name = target.file_name().ok_or_else(|| {
            LocalFileError::new(
                "write",
                shown,
                io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
            )
        })?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let pid = std::process::id();
        for n in 0u32..100 {
            let temp = dir.join(format!(".{}.tuppence-{pid}-{n}", name.to_string_lossy()));
            // 0666 minus the umask, as for any new file; `create_new` never follows or
            // reuses something already there.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(LocalFile {
                        shown: shown.to_owned(),
                        file,
                        replace: Some(Replace {
                            temp,
                            target: target.to_owned(),
                            keep_mode,
                            committed: false,
                        }),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LocalFileError::new("create a file in", &dir, e)),
            }
        }
        Err(LocalFileError::new(
            "create a file in",
            &dir,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "no free temporary name (100 tried)",
            ),
        ))
    }
}

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    /// One `writev` for every piece an extract has ready (the default writes the first).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.file.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl AsFd for LocalFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if let Some(r) = &self.replace
            && !r.committed
        {
            let _ = std::fs::remove_file(&r.temp);
        }
    }
}

fn is_a_directory(path: &Path) -> LocalFileError {
    LocalFileError::new("write", path, io::Error::from_raw_os_error(libc::EISDIR))
}

/// The descriptor number a path names in this process: `/dev/stdout` (1), `/dev/stderr`
/// (2), `/dev/fd/N`, `/proc/self/fd/N`.
fn own_fd_number(path: &Path) -> Option<i32> {
    let s = path.to_str()?;
    match s {
        "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        _ => {}
    }
    let n = s
        .strip_prefix("/dev/fd/")
        .or_else(|| s.strip_prefix("/proc/self/fd/"))?;
    n.parse().ok()
}

/// Whether resolving `path` passes through `/proc` (a `/proc/PID/fd/N` magic link, or a
/// link into it): such a name stands for an open file, not a place in a directory, so it
/// is written in place rather than replaced.
fn leads_through_proc(path: &Path) -> bool {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if std::fs::canonicalize(&dir).is_ok_and(|d| d.starts_with("/proc")) {
            return true;
        }
        match std::fs::read_link(&p) {
            Ok(target) if target.is_absolute() => p = target,
            Ok(target) => p = dir.join(target),
            Err(_) => return false,
        }
        if p.starts_with("/proc") {
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir()
                .join(format!("tuppence-local-file-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn entries(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_all(mut f: LocalFile, data: &[u8]) -> Result<(), LocalFileError> {
        let path = f.path().to_owned();
        f.write_all(data)
            .map_err(|e| LocalFileError::new("write", &path, e))?;
        f.commit()
    }

    #[test]
    fn a_new_file_and_a_regular_file_are_replaced_atomically() {
        let d = Dir::new("regular");
        let p = d.0.join("out");
        let f = LocalFile::create(&p).unwrap();
        assert!(f.replaces());
        assert!(!p.exists(), "nothing at the destination before commit");
        write_all(f, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = LocalFile::create(&p).unwrap();
        write_all(f, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Uncommitted: the old file stays, no temporary is left.
        let mut f = LocalFile::create(&p).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(d.entries(), vec!["out"]);
    }

    #[test]
    fn a_symlink_is_followed_and_stays() {
        let d = Dir::new("symlink");
        let target = d.0.join("target");
        std::fs::write(&target, b"old").unwrap();
        let link = d.0.join("link");
        std::os::unix::fs::symlink("target", &link).unwrap();
        write_all(LocalFile::create(&link).unwrap(), b"new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(d.entries(), vec!["link", "target"]);
        // A dangling link is refused and left alone.
        let dangling = d.0.join("dangling");
        std::os::unix::fs::symlink("nothing-here", &dangling).unwrap();
        let e = LocalFile::create(&dangling).unwrap_err();
        assert!(e.to_string().contains("symbolic link to nothing"), "{e}");
        assert!(!d.0.join("nothing-here").exists());
    }

    #[test]
    fn devices_are_written_in_place_and_their_errors_reported() {
        let null = LocalFile::create(Path::new("/dev/null")).unwrap();
        assert!(!null.replaces());
        write_all(null, b"gone").unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        if Path::new("/dev/full").exists() {
            let full = LocalFile::create(Path::new("/dev/full")).unwrap();
            let e = write_all(full, &[0u8; 4096]).unwrap_err();
            assert_eq!(e.source.raw_os_error(), Some(libc::ENOSPC), "{e}");
            assert!(
                std::fs::metadata("/dev/full")
                    .unwrap()
                    .file_type()
                    .is_char_device()
            );
        }
    }

    #[test]
    fn a_fifo_reader_gets_the_bytes() {
        let d = Dir::new("fifo");
        let fifo = d.0.join("pipe");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                File::open(&fifo).unwrap().read_to_end(&mut v).unwrap();
                v
            })
        };
        let f = LocalFile::create(&fifo).unwrap();
        assert!(!f.replaces());
        write_all(f, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(d.entries(), vec!["pipe"]);
    }

    #[test]
    fn directories_take_the_remote_name_and_are_never_replaced() {
        let d = Dir::new("dir");
        write_all(
            LocalFile::for_extract(&d.0, "/var/log/messages").unwrap(),
            b"m",
        )
        .unwrap();
        assert_eq!(std::fs::read(d.0.join("messages")).unwrap(), b"m");
        let e = LocalFile::create(&d.0).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::EISDIR));
        assert!(LocalFile::for_extract(&d.0, "/").is_err());
    }

    #[test]
    fn own_descriptors_are_recognised() {
        assert_eq!(own_fd_number(Path::new("/dev/stdout")), Some(1));
        assert_eq!(own_fd_number(Path::new("/dev/fd/7")), Some(7));
        assert_eq!(own_fd_number(Path::new("/proc/self/fd/2")), Some(2));
        assert_eq!(own_fd_number(Path::new("/dev/fdx")), None);
        assert!(leads_through_proc(Path::new("/proc/self/fd/1")));
        assert!(!leads_through_proc(Path::new("/tmp")));
        let f = LocalFile::for_extract(Path::new("-"), "x").unwrap();
        assert!(!f.replaces());
    }
}
