//! Helpers for tests of client-named paths: kernel settings changed for the length of a test,
//! a small tmpfs, and the "planted symbolic link" setup of `fs.protected_symlinks`.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Tests that change a sysctl take this first: one binary's tests run in parallel threads,
/// and one test restoring a value must not pull it from under another.
static SYSCTL: Mutex<()> = Mutex::new(());

/// A sysctl set for the length of a test and restored at drop.
pub struct Sysctl {
    path: PathBuf,
    old: String,
    _lock: MutexGuard<'static, ()>,
}

impl Sysctl {
    /// Sets `/proc/sys/NAME` (e.g. `fs/protected_symlinks`) to `value`; `None`, after printing
    /// why, when it cannot be set (not root, a read-only /proc/sys in a container).
    pub fn set(name: &str, value: &str) -> Option<Sysctl> {
        let lock = SYSCTL.lock().unwrap_or_else(PoisonError::into_inner);
        let path = Path::new("/proc/sys").join(name);
        let old = match fs::read_to_string(&path) {
            Ok(old) => old.trim().to_owned(),
            Err(e) => {
                println!("SKIPPED: cannot read {}: {e}", path.display());
                return None;
            }
        };
        if let Err(e) = fs::write(&path, value) {
            println!(
                "SKIPPED: cannot set {} to {value}: {e} (the test needs it)",
                path.display()
            );
            return None;
        }
        let now = fs::read_to_string(&path).unwrap_or_default();
        if now.trim() != value {
            let _ = fs::write(&path, &old);
            println!(
                "SKIPPED: {} reads {:?} after writing {value}",
                path.display(),
                now.trim()
            );
            return None;
        }
        Some(Sysctl {
            path,
            old,
            _lock: lock,
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!(
                "could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// A scratch directory with a given mode, removed at drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str, mode: u32) -> Dir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tuppence-paths-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("mkdir");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        Dir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Makes a FIFO (mode 0666 before the umask).
pub fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .expect("mkfifo");
}

/// A root-only file and a symbolic link to it planted by another user in a sticky
/// world-writable directory: what `fs.protected_symlinks` is for.
pub struct Planted {
    /// Holds the root-only file (mode 0700).
    pub private: Dir,
    /// The sticky world-writable directory (mode 1777).
    pub sticky: Dir,
    /// The root-only file (mode 0600).
    pub secret: PathBuf,
    /// The link in `sticky`, owned by the planting user.
    pub link: PathBuf,
}

/// What the root-only file holds.
pub const SECRET: &[u8] = b"root only\n";

impl Planted {
    /// Plants the link as user `uid` (created by root, then given to the user with `lchown`:
    /// the same inode the user's own `ln -s` would make).
    pub fn new(uid: u32) -> Planted {
        let private = Dir::new("private", 0o700);
        let secret = private.join("secret");
        fs::write(&secret, SECRET).expect("write secret");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod secret");
        let sticky = Dir::new("sticky", 0o1777);
        let link = sticky.join("planted");
        symlink(&secret, &link).expect("symlink");
        std::os::unix::fs::lchown(&link, Some(uid), Some(uid)).expect("lchown");
        Planted {
            private,
            sticky,
            secret,
            link,
        }
    }

    /// The secret is as it was: content, mode, and still a file of root's.
    pub fn assert_untouched(&self) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&self.secret).expect("stat secret");
        assert_eq!(fs::read(&self.secret).expect("read secret"), SECRET);
        assert_eq!(meta.mode() & 0o7777, 0o600, "the secret's mode changed");
        assert_eq!(meta.uid(), 0);
        assert!(
            fs::symlink_metadata(&self.link)
                .expect("lstat link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(self.private.names(), ["secret"]);
        assert_eq!(self.sticky.names(), ["planted"]);
    }

    /// What root's shell does with the same link: `echo x > LINK` must be refused, or the
    /// kernel does not protect links here and the test proves nothing.
    pub fn shell_is_refused(&self) -> bool {
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("echo overwritten > \"$1\"")
            .arg("sh")
            .arg(&self.link)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("sh");
        !status.success()
    }
}

/// A small tmpfs mounted for the length of a test (to fill a disk), unmounted at drop.
pub struct Tmpfs {
    pub dir: Dir,
}

impl Tmpfs {
    /// `None`, after printing why, when it cannot be mounted.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = Dir::new("tmpfs", 0o755);
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir.0)
            .stderr(std::process::Stdio::piped())
            .output();
        match status {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                println!(
                    "SKIPPED: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir.0)
            .status();
    }
}
