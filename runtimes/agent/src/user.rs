//! Users: account lookup and acting as a user for file access.
//!
//! Every request names the user it runs as. Commands switch permanently in the child (see
//! [`crate::spawn`]); file transfers switch the agent's *filesystem* identity for the duration
//! of the open/create/rename calls ([`AsUser`]), so the kernel does the permission checks it
//! would do for that user, with that user's supplementary groups.
//!
//! Lookups go through the C library (`getpwnam_r`, `getgrouplist`) so NSS sources (LDAP, sssd,
//! systemd-userdb) work as they do for `login`. They are done per request, never cached: tests
//! create and delete users while the agent runs. A statically linked `tuppence` binary asks
//! only glibc's built-in `files` source (see `runtimes/cli/src/main.rs`, `static_nss`): a
//! static glibc that loads a `libnss_*.so` crashes.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::process::{Gid, Uid};

use crate::status;

/// A failed user lookup.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The account database has no such user.
    #[error("no such user: {0:?}")]
    NotFound(String),
    /// The name cannot be a user name (it contains a NUL byte or is empty).
    #[error("invalid user name {0:?}")]
    InvalidName(String),
    /// The account database could not be read.
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        /// The name that was looked up.
        name: String,
        /// What the C library reported.
        #[source]
        source: io::Error,
    },
}

impl UserError {
    /// The status word for this error: an unknown or unusable name is ENOENT (2), as in the
    /// C executor; a database failure passes its errno through.
    pub fn errno(&self) -> u32 {
        match self {
            UserError::NotFound(_) | UserError::InvalidName(_) => status::ENOENT,
            UserError::Lookup { source, .. } => status::errno_of(source),
        }
    }
}

/// A user account, as far as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    name: CString,
    uid: u32,
    gid: u32,
    home: CString,
}

/// Upper bound for the `getpwnam_r` scratch buffer; entries larger than this are treated as a
/// lookup failure instead of growing memory without limit.
const MAX_PW_BUF: usize = 1 << 20;

/// Upper bound on the supplementary groups we accept from `getgrouplist` (the kernel's
/// `NGROUPS_MAX`).
const MAX_GROUPS: usize = 65536;

impl User {
    /// Looks a user up by name.
    pub fn lookup(name: &[u8]) -> Result<User, UserError> {
        let display = String::from_utf8_lossy(name).into_owned();
        if name.is_empty() {
            return Err(UserError::InvalidName(display));
        }
        let cname = CString::new(name).map_err(|_| UserError::InvalidName(display.clone()))?;
        passwd_entry(display, |pwd, buf, len, result| {
            // SAFETY: `cname` is a valid C string; the other pointers are passed through from
            // `passwd_entry`, which guarantees them (see there).
            unsafe { libc::getpwnam_r(cname.as_ptr(), pwd, buf, len, result) }
        })
    }

    /// Looks a user up by uid (e.g. the agent's own account: `User::by_uid(geteuid)`).
    pub fn by_uid(uid: u32) -> Result<User, UserError> {
        passwd_entry(format!("#{uid}"), |pwd, buf, len, result| {
            // SAFETY: the pointers are passed through from `passwd_entry`, which guarantees
            // them (see there).
            unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
        })
    }

    /// The account the agent runs as (its effective uid).
    pub fn current() -> Result<User, UserError> {
        User::by_uid(rustix::process::geteuid().as_raw())
    }

    /// The user's name.
    pub fn name(&self) -> &[u8] {
        self.name.to_bytes()
    }

    /// The name as a C string (for `getgrouplist`, and the `USER` variable).
    pub fn name_cstr(&self) -> &CStr {
        &self.name
    }

    /// The numeric user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The primary group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The home directory exactly as the account database has it (may be empty or relative).
    pub fn home(&self) -> &[u8] {
        self.home.to_bytes()
    }

    /// The home directory to use as a base: the account's one when it is absolute, else `/`.
    ///
    /// The C executor failed commands of users like `nobody` (home `/nonexistent`) with exit
    /// 126; we fall back to `/` instead, because a test that runs as such a user rarely cares
    /// where it starts.
    pub fn base_dir(&self) -> &Path {
        let home = self.home.to_bytes();
        if home.first() == Some(&b'/') {
            Path::new(OsStr::from_bytes(home))
        } else {
            Path::new("/")
        }
    }

    /// The home directory as a C string when it is absolute (what the child `chdir`s to).
    pub(crate) fn home_cstr_if_absolute(&self) -> Option<&CStr> {
        (self.home.to_bytes().first() == Some(&b'/')).then_some(self.home.as_c_str())
    }

    /// Resolves a request's file name: absolute names are used as they are, relative names are
    /// taken under the user's home ([`User::base_dir`]), as the C executor did.
    pub fn resolve(&self, name: &[u8]) -> PathBuf {
        let path = Path::new(OsStr::from_bytes(name));
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir().join(path)
        }
    }

    /// The user's groups as `initgroups` would set them: the primary group plus every group
    /// that lists the user.
    pub fn groups(&self) -> io::Result<Vec<u32>> {
        let mut groups: Vec<libc::gid_t> = vec![0; 32];
        loop {
            let mut n: libc::c_int =
                libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most `n` and
            // stores the number it needs (or wrote) into `n`.
            let rc = unsafe {
                libc::getgrouplist(self.name.as_ptr(), self.gid, groups.as_mut_ptr(), &mut n)
            };
            let needed = usize::try_from(n).unwrap_or(0);
            if rc >= 0 {
                groups.truncate(needed.min(groups.len()));
                return Ok(groups);
            }
            if needed <= groups.len() || needed > MAX_GROUPS {
                return Err(io::Error::other("getgrouplist: group list too long"));
            }
            groups.resize(needed, 0);
        }
    }

    /// True when acting as this user needs no credential change in this process.
    pub(crate) fn is_current(&self) -> bool {
        let euid = rustix::process::geteuid().as_raw();
        euid == self.uid
    }
}

/// Runs a `getpw*_r` call with a growing scratch buffer and copies the entry out.
///
/// `call` receives a pointer to an uninitialised `passwd`, a scratch buffer and its length, and
/// the result pointer, all valid for the duration of the call, and returns the function's
/// error code.
fn passwd_entry(
    display: String,
    mut call: impl FnMut(
        *mut libc::passwd,
        *mut libc::c_char,
        usize,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Result<User, UserError> {
    let mut buf = vec![0u8; 1024];
    loop {
        let mut pwd = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(
            pwd.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc == libc::ERANGE && buf.len() < MAX_PW_BUF {
            let grown = buf.len() * 4;
            buf.resize(grown, 0);
            continue;
        }
        if rc != 0 {
            // glibc documents these as "not found" codes from some NSS backends.
            if matches!(rc, libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM) {
                return Err(UserError::NotFound(display));
            }
            return Err(UserError::Lookup {
                name: display,
                source: io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Err(UserError::NotFound(display));
        }
        // SAFETY: rc == 0 and result non-null: the call filled `pwd` (result points to it) and
        // its string fields point into `buf`, which is still alive here. The strings are
        // copied out before `buf` is dropped.
        let pw = unsafe { &*result };
        let copy = |p: *const libc::c_char| {
            if p.is_null() {
                CString::default()
            } else {
                // SAFETY: a non-null field is a NUL-terminated string inside `buf`.
                unsafe { CStr::from_ptr(p) }.to_owned()
            }
        };
        let name = copy(pw.pw_name);
        if name.as_bytes().is_empty() {
            return Err(UserError::NotFound(display));
        }
        return Ok(User {
            name,
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            home: copy(pw.pw_dir),
        });
    }
}

/// True when the agent runs with root's user id (and so may act as any user).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A scope in which the calling thread's *filesystem* identity is the user's.
///
/// Why fsuid/fsgid instead of `seteuid` as in the C executor: they change only what the kernel
/// checks for file access, only for the calling thread, and they cannot be used to send
/// signals or ptrace, so the agent stays root for everything else and a test harness running
/// many threads is not affected. The supplementary groups are switched too (per thread, by the
/// raw syscall), otherwise root's groups would grant access the user does not have and the
/// user's own groups would be missing.
///
/// When the agent is not root, acting as itself is a no-op and acting as anyone else is refused
/// with EPERM. Dropping the guard restores the previous identity.
#[derive(Debug)]
pub struct AsUser {
    restore: Option<Saved>,
}

#[derive(Debug)]
struct Saved {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<Gid>,
}

impl AsUser {
    /// Switches the calling thread's filesystem identity to `user`.
    pub fn enter(user: &User) -> io::Result<AsUser> {
        if user.is_current() {
            return Ok(AsUser { restore: None });
        }
        if !running_as_root() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let groups = user.groups()?;
        AsUser::enter_with_groups(user, &groups)
    }

    /// Like [`AsUser::enter`] with the user's group list already read (saves re-reading the
    /// group database when one request switches more than once).
    pub fn enter_with_groups(user: &User, groups: &[u32]) -> io::Result<AsUser> {
        if user.is_current() {
            return Ok(AsUser { restore: None });
        }
        if !running_as_root() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let groups: Vec<Gid> = groups.iter().copied().map(Gid::from_raw).collect();
        let saved_groups = rustix::process::getgroups()?;
        rustix::thread::set_thread_groups(&groups)?;
        let mut guard = AsUser {
            restore: Some(Saved {
                fsuid: 0,
                fsgid: 0,
                groups: saved_groups,
            }),
        };
        // SAFETY: setfsgid/setfsuid take plain integers and only change the calling thread's
        // credentials. They return the previous value; a second call with the same argument
        // returns the current one, which is how success is checked (they never fail loudly).
        let (old_gid, now_gid) = unsafe {
            let old = libc::setfsgid(user.gid);
            (old, libc::setfsgid(user.gid))
        };
        if let Some(saved) = guard.restore.as_mut() {
            saved.fsgid = u32::try_from(old_gid).unwrap_or(0);
        }
        if u32::try_from(now_gid).ok() != Some(user.gid) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // SAFETY: as above.
        let (old_uid, now_uid) = unsafe {
            let old = libc::setfsuid(user.uid);
            (old, libc::setfsuid(user.uid))
        };
        if let Some(saved) = guard.restore.as_mut() {
            saved.fsuid = u32::try_from(old_uid).unwrap_or(0);
        }
        if u32::try_from(now_uid).ok() != Some(user.uid) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(guard)
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        let Some(saved) = self.restore.take() else {
            return;
        };
        // SAFETY: plain integer arguments; restores the thread's previous fs identity. The uid
        // goes back first so that the gid and group changes are certainly permitted.
        let uid_now = unsafe {
            libc::setfsuid(saved.fsuid);
            libc::setfsuid(saved.fsuid)
        };
        // SAFETY: as above.
        let gid_now = unsafe {
            libc::setfsgid(saved.fsgid);
            libc::setfsgid(saved.fsgid)
        };
        let groups = rustix::thread::set_thread_groups(&saved.groups);
        if u32::try_from(uid_now).ok() != Some(saved.fsuid)
            || u32::try_from(gid_now).ok() != Some(saved.fsgid)
            || groups.is_err()
        {
            tracing::error!(
                fsuid = saved.fsuid,
                fsgid = saved.fsgid,
                "could not restore the agent's filesystem identity"
            );
        }
    }
}

/// A user with their group list, read once: for acting as them again and again (a followed
/// file is reopened as its reader at every rotation) without asking the group database each
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user: User,
    groups: Vec<u32>,
}

impl Identity {
    /// The user and their groups (no group lookup when acting as them needs no change).
    pub fn of(user: User) -> io::Result<Identity> {
        let groups = if user.is_current() {
            Vec::new()
        } else {
            user.groups()?
        };
        Ok(Identity { user, groups })
    }

    /// The user.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// Acts as the user until the guard is dropped (see [`AsUser`]).
    pub fn act(&self) -> io::Result<AsUser> {
        AsUser::enter_with_groups(&self.user, &self.groups)
    }
}

/// A `Uid` for rustix from a raw number.
pub(crate) fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_has_a_home() {
        let root = User::lookup(b"root").expect("root");
        assert_eq!(root.uid(), 0);
        assert_eq!(root.gid(), 0);
        assert_eq!(root.name(), b"root");
        assert!(root.base_dir().is_absolute());
        assert!(root.groups().expect("groups").contains(&0));
    }

    #[test]
    fn lookup_by_uid_and_current() {
        let root = User::by_uid(0).expect("uid 0");
        assert_eq!(root.name(), b"root");
        let me = User::current().expect("current");
        assert_eq!(me.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(User::lookup(me.name()).expect("by name"), me);
        assert_eq!(
            User::by_uid(u32::MAX - 7).unwrap_err().errno(),
            status::ENOENT
        );
    }

    #[test]
    fn unknown_and_invalid_names_are_enoent() {
        let err = User::lookup(b"no-such-user-tuppence").unwrap_err();
        assert_eq!(err.errno(), status::ENOENT);
        assert_eq!(User::lookup(b"").unwrap_err().errno(), status::ENOENT);
        assert_eq!(User::lookup(b"ro\0ot").unwrap_err().errno(), status::ENOENT);
    }

    #[test]
    fn relative_names_resolve_under_home() {
        let user = User {
            name: CString::new("u").unwrap_or_default(),
            uid: 1,
            gid: 1,
            home: CString::new("/home/u").unwrap_or_default(),
        };
        assert_eq!(user.resolve(b"x/y"), PathBuf::from("/home/u/x/y"));
        assert_eq!(user.resolve(b"/etc/z"), PathBuf::from("/etc/z"));
        let homeless = User {
            home: CString::new("nowhere").unwrap_or_default(),
            ..user
        };
        assert_eq!(homeless.resolve(b"f"), PathBuf::from("/f"));
        assert_eq!(homeless.base_dir(), Path::new("/"));
    }
}
