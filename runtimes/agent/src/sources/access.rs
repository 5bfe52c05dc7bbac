//! Who a monitor reads as.
//!
//! A monitor request (`O`) names a source and no user, while commands, injects and extracts
//! each name the user they act as, and `--allow-user` limits those users. Monitors follow the
//! same rule, so that a monitor can never show a client more than an extract could:
//!
//! * **Unrestricted agent** (no `--allow-user`): a client may act as any user, root included,
//!   so a monitor reads as the agent itself ([`ReadAs::Agent`]).
//! * **Restricted agent**: a monitor reads as one of the allowed users
//!   ([`ReadAs::AnyOf`], in the order they were given), with the kernel's checks for that user:
//!   * `file:PATH` is opened as the first allowed user who may open it (permissions, search
//!     rights, `fs.protected_symlinks` — [`crate::paths`]), and reopened as the first one who
//!     may at every rotation; a file no allowed user may read is refused with EACCES, exactly
//!     as an extract of it would be;
//!   * `kmsg` is served when an allowed user may read the kernel log: the kernel lets anyone
//!     read it when `kernel.dmesg_restrict` is 0, and only holders of `CAP_SYSLOG` (root)
//!     otherwise. The capability is the agent's own, which acting as a user does not drop, so
//!     the agent checks this rule itself; `/dev/kmsg` is then opened as that user;
//!   * `agent`, the agent's audit trail, shows every client's commands and paths: it is the
//!     agent's own log, served only when one of the allowed users is the agent's own account
//!     (a client that may act as the agent may read its log anyway). Otherwise EACCES.

use crate::paths::{self, OpenedFile, PathError};
use crate::user::{Identity, User};
use std::path::Path;

use super::SourceError;

/// Who a monitor reads as (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAs {
    /// The agent's own identity (an unrestricted agent).
    Agent,
    /// The first of these users who may (an agent restricted by `--allow-user`).
    AnyOf(Vec<Identity>),
}

impl ReadAs {
    /// For an agent restricted to the users `names`. Looked up per request, like every user
    /// lookup: a name with no account (or whose groups cannot be read) reads nothing.
    pub fn any_of_names(names: &[Vec<u8>]) -> ReadAs {
        ReadAs::AnyOf(
            names
                .iter()
                .filter_map(|name| User::lookup(name).ok())
                .filter_map(|user| Identity::of(user).ok())
                .collect(),
        )
    }

    /// Opens the regular file at `path` for reading as the first reader who may
    /// ([`paths::open_regular`]); returns the file and which reader opened it. When nobody
    /// may, the error is "not found" if it is not found for one of them (a monitor waits for
    /// such a file), else the first reader's error.
    pub(crate) fn open_regular(&self, path: &Path) -> Result<(OpenedFile, usize), PathError> {
        let ids = match self {
            ReadAs::Agent => return paths::open_regular(path).map(|f| (f, 0)),
            ReadAs::AnyOf(ids) => ids,
        };
        let mut first: Option<PathError> = None;
        let mut not_found: Option<PathError> = None;
        for (i, id) in ids.iter().enumerate() {
            let result = match id.act() {
                Ok(_guard) => paths::open_regular(path),
                Err(e) => Err(PathError::io("act as an allowed user to open", path, e)),
            };
            match result {
                Ok(file) => return Ok((file, i)),
                Err(e) if e.is_not_found() => not_found = not_found.or(Some(e)),
                Err(e) => first = first.or(Some(e)),
            }
        }
        Err(not_found.or(first).unwrap_or_else(|| {
            PathError::io(
                "open (no allowed user exists)",
                path,
                std::io::Error::from_raw_os_error(libc::EACCES),
            )
        }))
    }

    /// `stat` of `path` (following links, by the kernel) as reader `reader`.
    pub(crate) fn stat(&self, reader: usize, path: &Path) -> Result<rustix::fs::Stat, PathError> {
        match self {
            ReadAs::Agent => paths::stat(path),
            ReadAs::AnyOf(ids) => {
                let id = ids.get(reader).ok_or_else(|| {
                    PathError::io(
                        "stat",
                        path,
                        std::io::Error::from_raw_os_error(libc::EACCES),
                    )
                })?;
                let _guard = id
                    .act()
                    .map_err(|e| PathError::io("act as an allowed user to stat", path, e))?;
                paths::stat(path)
            }
        }
    }

    /// Whether the agent's trail may be shown.
    pub(crate) fn may_read_trail(&self) -> Result<(), SourceError> {
        match self {
            ReadAs::Agent => Ok(()),
            ReadAs::AnyOf(ids) => {
                let me = rustix::process::geteuid().as_raw();
                if ids.iter().any(|id| id.user().uid() == me) {
                    Ok(())
                } else {
                    Err(SourceError::Denied(
                        "the agent's trail: only a client allowed to act as the agent's own user may read it",
                    ))
                }
            }
        }
    }

    /// Runs `open` as the first reader allowed to read the kernel log, who succeeds.
    pub(crate) fn open_kmsg<T>(
        &self,
        mut open: impl FnMut() -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let ids = match self {
            ReadAs::Agent => return open(),
            ReadAs::AnyOf(ids) => ids,
        };
        let unrestricted = dmesg_unrestricted();
        let mut first = None;
        for id in ids.iter().filter(|id| unrestricted || id.user().uid() == 0) {
            let result = match id.act() {
                Ok(_guard) => open(),
                Err(e) => Err(SourceError::io(
                    "acting as an allowed user for /dev/kmsg",
                    e,
                )),
            };
            match result {
                Ok(t) => return Ok(t),
                Err(e) => first = first.or(Some(e)),
            }
        }
        Err(first.unwrap_or(SourceError::Denied(
            "kmsg: kernel.dmesg_restrict is set and no allowed user is root",
        )))
    }
}

/// `kernel.dmesg_restrict` is 0: every user may read the kernel log. Unreadable counts as
/// restricted.
fn dmesg_unrestricted() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/dmesg_restrict").is_ok_and(|v| v.trim() == "0")
}
