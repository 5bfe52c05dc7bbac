//! One cgroup v2 per command, so that nothing a command starts outlives it.
//!
//! A process group is easy to leave (`setsid`, `setpgid`, a daemon's double fork), so
//! killing a command's group does not reach everything it started. A cgroup cannot be left
//! without write access to a cgroup's `cgroup.procs`, and `cgroup.kill` (Linux ≥ 5.14)
//! SIGKILLs every process in it at once, including ones forked while the kill runs.
//!
//! # Layout
//!
//! The agent finds the cgroup2 mount in `/proc/self/mountinfo` (never a fixed path: hybrid
//! systems mount it at `/sys/fs/cgroup/unified`) and its own cgroup in `/proc/self/cgroup`
//! (`0::/path`). It creates one subtree below its own cgroup, `tuppence-PID-N`, and one
//! leaf per command in it, `cN`:
//!
//! ```text
//! <own cgroup>            the agent stays here
//! └── tuppence-PID-N      this CgroupTree (no processes of its own)
//!     ├── c1              a command and all its descendants
//!     └── c2
//! ```
//!
//! An agent embedded in a short-lived process (`EmbeddedAgent`, the `local` target) makes
//! its leaves directly in its own cgroup instead ([`CgroupTree::create_flat_lazy`]), named
//! so that they still say whose they are; the subtree would be one more `mkdir` and
//! `rmdir` for every `tuppence run`:
//!
//! ```text
//! <own cgroup>            the process embedding the agent stays here
//! ├── tuppence-PID-N-c1   a command and all its descendants
//! └── tuppence-PID-N-c2
//! ```
//!
//! No controller is enabled anywhere (only `cgroup.procs`, `cgroup.kill` and
//! `cgroup.events` are used), so the "no internal processes" rule, which only concerns
//! cgroups that enable controllers for their children, never applies, and the agent may
//! stay in its own cgroup above the subtree (or beside its leaves).
//!
//! A command is in its leaf before it can start anything: commands are started with
//! `clone3(CLONE_INTO_CGROUP)` (see `spawn/vfork.rs`), so they are born there. Where that
//! is not available, and for sniff tasks (started through std's `pre_exec`), the child
//! writes `0` to the leaf's `cgroup.procs` (opened by the agent) as its first step, before
//! `setsid` and `exec` ([`enter`]).
//!
//! # Cost
//!
//! A leaf is an `mkdir` and three `open`s; removing it is an `rmdir`. Moving a process by
//! writing `cgroup.procs` is the expensive part (it waits for an RCU grace period:
//! milliseconds on a busy machine), which `CLONE_INTO_CGROUP` avoids. Measured with
//! `examples/spawn_cost.rs` (numbers in the README). The common case of a command whose
//! processes have all exited when it ends costs no kill and no wait.
//!
//! Being born into a *new* cgroup costs more than into one that held processes before (the
//! kernel builds the new cgroup's bookkeeping on first use): measured on Linux 6.18, an
//! `mkdir`, a `clone3` into it and an `rmdir` added 60–90 µs to a 120 µs fork, exit and
//! wait, and reusing an emptied leaf almost nothing. So a leaf whose processes are all gone
//! is kept as a spare ([`SPARE_LEAVES`] per tree) and handed to the next command instead of
//! removed: it is empty (`populated 0`), nothing can enter it but through the agent, and no
//! controller is enabled in it, so it carries nothing over from the command before. Spares
//! are removed with the tree. A leaf that was killed (`cgroup.kill`: an interrupt, a
//! timeout, a disconnect) is never reused: see [`Leaf::kill`].
//!
//! # Removal
//!
//! A leaf can only be removed once empty (zombies do not count). [`Leaf`]'s drop keeps an
//! empty leaf as a spare or removes it; if the leaf still has processes it kills them (`cgroup.kill`) and parks the leaf,
//! to be removed by [`retry_parked`] once they are gone (the agent calls it when `SIGCHLD`
//! arrives: the last process of a killed leaf to die is always a child of the agent, its
//! subreaper). The subtree is removed when the last leaf and the [`CgroupTree`] are gone.
//! What a process that died left behind (a subtree, or a flat tree's leaves) is removed
//! by the next agent that starts below the same cgroup.
//!
//! # Where it cannot be used
//!
//! No cgroup2 mount, the agent's cgroup not visible in it, no `cgroup.kill` (Linux < 5.14),
//! or no permission to create cgroups and move processes below the agent's own (not root
//! on the host and no delegated subtree): then [`CgroupTree::create`] says why and the
//! agent falls back to killing process groups, which a process that calls `setsid`
//! escapes.
//!
//! Whether processes may be put into the subtree is only known by trying. The sniff task
//! runner tries at start-up with a probe process ([`CgroupTree::create`]); the serve loop
//! ([`CgroupTree::create_lazy`]) lets its first command be the probe: it is born in its
//! leaf with `clone3(CLONE_INTO_CGROUP)`, and if the kernel refuses, the tree is marked
//! refused (said once, as the probe would have) and the command starts again without a
//! cgroup. A short-lived agent (the `local` target's) so saves a fork, a reap and a cgroup.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};
use tracing::{debug, warn};

/// Why cgroups cannot contain commands here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// `/proc/self/mountinfo` has no cgroup2 file system.
    #[error("no cgroup v2 file system is mounted")]
    NoMount,
    /// `/proc/self/cgroup` has no `0::` line, or it names a cgroup outside every cgroup2
    /// mount this process can see.
    #[error("this process's cgroup v2 path is not known or not visible ({0})")]
    NoOwnCgroup(String),
    /// Reading `/proc` failed.
    #[error("reading {path}: {source}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// The subtree could not be created (no permission: not root and no delegation).
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel has no `cgroup.kill` (Linux < 5.14).
    #[error("the kernel has no cgroup.kill (Linux 5.14 or later is needed)")]
    NoKill,
    /// Moving a process into the subtree failed (no write access to the agent's own
    /// `cgroup.procs`, or a cgroup namespace boundary).
    #[error("moving a process into {path}: {source}")]
    Move {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The agent's cgroup subtree (see the module docs). Shared by the [`Leaf`]s made in it.
#[derive(Debug)]
pub struct CgroupTree {
    /// Where the leaves are made: the subtree, or ([`CgroupTree::create_flat_lazy`]) the
    /// process's own cgroup.
    path: PathBuf,
    dir: OwnedFd,
    /// What a leaf's name starts with, before its number: `c` in a subtree, the subtree's
    /// name and `-c` in the process's own cgroup.
    prefix: String,
    /// The leaves are in the process's own cgroup: there is no subtree to remove.
    flat: bool,
    next: AtomicU64,
    /// [`UNVERIFIED`], [`VERIFIED`] or [`REFUSED`]: whether a process has been seen to start
    /// in a leaf (see [`CgroupTree::create_lazy`]).
    state: AtomicU8,
    /// Emptied leaves kept for the next commands (see the module docs, "Cost"); at most
    /// [`SPARE_LEAVES`]. They hold no `Arc` of the tree, so the tree can still drop.
    spare: Mutex<Vec<SpareLeaf>>,
    /// What dead processes left beside a flat tree's leaves is still to be removed
    /// ([`CgroupTree::tidy_after_spawn`]).
    tidy_pending: AtomicBool,
}

/// How many emptied leaves a tree keeps for reuse: enough for the commands a busy client
/// runs at once, few enough that an idle agent holds a handful of directories and fds.
pub const SPARE_LEAVES: usize = 8;

/// An emptied leaf waiting for its next command.
#[derive(Debug)]
struct SpareLeaf {
    name: CString,
    fds: LeafFds,
}

/// What a leaf keeps open: its directory (for `CLONE_INTO_CGROUP`), its `cgroup.procs`
/// (for a child that moves itself) and its `cgroup.events` (read for `populated`).
#[derive(Debug)]
struct LeafFds {
    dir: OwnedFd,
    procs: OwnedFd,
    events: OwnedFd,
}

/// Nothing has been started in the tree yet: the next spawn is the probe.
const UNVERIFIED: u8 = 0;
/// A process was started in a leaf: the tree is usable.
const VERIFIED: u8 = 1;
/// Starting a process in a leaf failed: commands run without cgroups.
const REFUSED: u8 = 2;

/// A command's cgroup. Dropping it removes it, killing what is left in it first (see the
/// module docs).
#[derive(Debug)]
pub struct Leaf {
    tree: Arc<CgroupTree>,
    name: CString,
    /// Always `Some` until the drop hands the fds to a spare.
    fds: Option<LeafFds>,
    /// `cgroup.kill` was written: never reuse it (see [`Leaf::kill`]).
    killed: AtomicBool,
}

/// Where this process's cgroup v2 is: the directory, found in `/proc` (never assumed):
/// below a usual mount point when that checks out, else through mountinfo.
pub fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let cgroup = std::fs::read("/proc/self/cgroup").map_err(|source| CgroupError::Proc {
        path: "/proc/self/cgroup",
        source,
    })?;
    let own = cgroup
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
        .ok_or_else(|| CgroupError::NoOwnCgroup("no 0:: line in /proc/self/cgroup".into()))?;
    let own = Path::new(OsStr::from_bytes(own));
    if let Some(dir) = USUAL_MOUNTS.iter().find_map(|m| at_usual_mount(m, own)) {
        return Ok(dir);
    }
    via_mountinfo(own)
}

/// The directory of the cgroup `own` (as `/proc/self/cgroup` names it) below whichever
/// cgroup2 mount shows it.
fn via_mountinfo(own: &Path) -> Result<PathBuf, CgroupError> {
    let mountinfo = std::fs::read("/proc/self/mountinfo").map_err(|source| CgroupError::Proc {
        path: "/proc/self/mountinfo",
        source,
    })?;
    let mut mounts = cgroup2_mounts(&mountinfo).peekable();
    if mounts.peek().is_none() {
        return Err(CgroupError::NoMount);
    }
    mounts
        .find_map(|(root, point)| {
            let rel = own.strip_prefix(&root).ok()?;
            Some(point.join(rel))
        })
        .filter(|dir| dir.is_dir())
        .ok_or_else(|| CgroupError::NoOwnCgroup(own.display().to_string()))
}

/// Where cgroup2 is mounted on nearly every system: alone (unified), or beside the v1
/// controllers (hybrid).
const USUAL_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// `f_type` of a cgroup2 file system.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// This process's cgroup directory below the usual mount point `mount`, if `mount` is a
/// cgroup2 file system whose directory `own` lists this process: reading mountinfo (the
/// kernel writes out every mount of the namespace) was most of the cost of finding it,
/// about 90 µs of every `local` start. A mount whose root is not the hierarchy's (a
/// container without a cgroup namespace) fails the membership check and falls back to
/// mountinfo.
fn at_usual_mount(mount: &str, own: &Path) -> Option<PathBuf> {
    let dir = Path::new(mount).join(own.strip_prefix("/").unwrap_or(own));
    let fs = rustix::fs::statfs(&dir).ok()?;
    if u64::try_from(fs.f_type).ok()? != CGROUP2_SUPER_MAGIC {
        return None;
    }
    let procs = std::fs::read(dir.join("cgroup.procs")).ok()?;
    let me = std::process::id().to_string();
    procs
        .split(|&b| b == b'\n')
        .any(|pid| pid == me.as_bytes())
        .then_some(dir)
}

/// `(root, mount point)` of every cgroup2 mount in a mountinfo text.
fn cgroup2_mounts(mountinfo: &[u8]) -> impl Iterator<Item = (PathBuf, PathBuf)> + '_ {
    mountinfo.split(|&b| b == b'\n').filter_map(|line| {
        // `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER`
        let sep = line.windows(3).position(|w| w == b" - ")?;
        let (left, right) = line.split_at(sep);
        let fstype = right.get(3..)?.split(|&b| b == b' ').next()?;
        if fstype != b"cgroup2" {
            return None;
        }
        let mut fields = left.split(|&b| b == b' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        Some((unescape(root), unescape(point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

impl CgroupTree {
    /// Creates this agent's subtree below its own cgroup and checks that processes can be
    /// moved into it and killed there. The error says why not (see the module docs).
    pub fn create() -> Result<Arc<CgroupTree>, CgroupError> {
        let tree = CgroupTree::make()?;
        tree.probe()?;
        tree.state.store(VERIFIED, Ordering::Relaxed);
        Ok(tree)
    }

    /// As [`CgroupTree::create`], without the probe process: the first command started in
    /// the tree is the probe ([`crate::spawn`] starts it with `clone3(CLONE_INTO_CGROUP)`
    /// and, if the kernel refuses, marks the tree [refused](CgroupTree::refuse) and starts
    /// the command without a cgroup; where `clone3` is not available it runs the probe
    /// first, as `create` does). The probe child cost a short-lived agent (`tuppence run
    /// -- true` on the `local` target) a fork, a reap and a cgroup of its own.
    pub fn create_lazy() -> Result<Arc<CgroupTree>, CgroupError> {
        CgroupTree::make()
    }

    /// Whether a process has been started in a leaf (after [`CgroupTree::create`], or the
    /// first command of a [lazy](CgroupTree::create_lazy) tree).
    pub fn is_verified(&self) -> bool {
        self.state.load(Ordering::Relaxed) == VERIFIED
    }

    /// Whether the kernel refused to start a process in a leaf: commands run without one.
    pub fn is_refused(&self) -> bool {
        self.state.load(Ordering::Relaxed) == REFUSED
    }

    /// A process was started in a leaf.
    pub(crate) fn mark_verified(&self) {
        let _ =
            self.state
                .compare_exchange(UNVERIFIED, VERIFIED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The first process started in a leaf failed with `e`: from now on commands run
    /// without cgroups (killed by process group), said once as the start-up probe said it.
    pub(crate) fn refuse(&self, e: &io::Error) {
        if self
            .state
            .compare_exchange(UNVERIFIED, REFUSED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "cgroup v2 cannot be used (a process cannot be started in a cgroup of its own): commands are killed by process group, which a process that calls setsid escapes");
        }
    }

    /// The old probe, run when the first command cannot be the probe (no `clone3`): `Ok`
    /// marks the tree verified, an error refused.
    pub(crate) fn probe_now(self: &Arc<Self>) -> bool {
        match self.probe() {
            Ok(()) => {
                self.mark_verified();
                true
            }
            Err(e) => {
                self.refuse(&io::Error::other(e.to_string()));
                false
            }
        }
    }

    /// The subtree, created and checked for `cgroup.kill`; not yet probed.
    /// As [`CgroupTree::create_lazy`], with the leaves made directly in this process's own
    /// cgroup (`tuppence-PID-N-cK`) rather than in a subtree: for an agent embedded in a
    /// short-lived process (`tuppence run` on `local`), which so makes and removes one
    /// cgroup fewer (an `mkdir` and an `rmdir`, about 60 µs of its 2 ms). The names still
    /// say whose they are, so that [`remove_stale`] finds what a dead process left. The
    /// first leaf is made now, to check that leaves can be made and killed here (the
    /// process's own cgroup may be the root, which has no `cgroup.kill`), and kept as a
    /// spare for the first command.
    ///
    /// What dead processes left there is removed once the first command has started
    /// ([`CgroupTree::tidy_after_spawn`]), while it runs, or when the tree drops: scanning
    /// the own cgroup took 22 µs of a `local` run's start, and nothing before the first
    /// command needs it done.
    pub fn create_flat_lazy() -> Result<Arc<CgroupTree>, CgroupError> {
        let own = own_cgroup_dir()?;
        let dir = open_dir(&own).map_err(|source| CgroupError::Create {
            path: own.clone(),
            source,
        })?;
        let tree = Arc::new(CgroupTree {
            path: own,
            dir,
            prefix: format!("{}-c", unique_name()),
            flat: true,
            next: AtomicU64::new(1),
            state: AtomicU8::new(UNVERIFIED),
            spare: Mutex::new(Vec::new()),
            tidy_pending: AtomicBool::new(true),
        });
        let first = tree.leaf().map_err(|source| CgroupError::Create {
            path: tree.path.clone(),
            source,
        })?;
        let fds = first.fds.as_ref().ok_or_else(|| CgroupError::Create {
            path: tree.path.clone(),
            source: gone(),
        })?;
        let killable = rustix::fs::accessat(
            &fds.dir,
            c"cgroup.kill",
            rustix::fs::Access::WRITE_OK,
            AtFlags::empty(),
        )
        .is_ok();
        if !killable {
            // Removed rather than kept: marked killed, it is never a spare.
            first.killed.store(true, Ordering::Relaxed);
            return Err(CgroupError::NoKill);
        }
        drop(first);
        Ok(tree)
    }

    fn make() -> Result<Arc<CgroupTree>, CgroupError> {
        let own = own_cgroup_dir()?;
        remove_stale(&own);
        let name = unique_name();
        let path = own.join(&name);
        let created = rustix::fs::mkdir(&path, Mode::from_raw_mode(0o755));
        match created {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(CgroupError::Create {
                    path,
                    source: e.into(),
                });
            }
        }
        let dir = match open_dir(&path) {
            Ok(dir) => dir,
            Err(source) => {
                let _ = std::fs::remove_dir(&path);
                return Err(CgroupError::Create { path, source });
            }
        };
        let tree = Arc::new(CgroupTree {
            path,
            dir,
            prefix: "c".to_owned(),
            flat: false,
            next: AtomicU64::new(1),
            state: AtomicU8::new(UNVERIFIED),
            spare: Mutex::new(Vec::new()),
            tidy_pending: AtomicBool::new(false),
        });
        // The root cgroup has no cgroup.kill, but every other one has, where supported.
        if rustix::fs::accessat(
            &tree.dir,
            c"cgroup.kill",
            rustix::fs::Access::WRITE_OK,
            AtFlags::empty(),
        )
        .is_err()
        {
            return Err(CgroupError::NoKill);
        }
        Ok(tree)
    }

    /// The directory the leaves are made in: the subtree, or for a
    /// [flat](CgroupTree::create_flat_lazy) tree this process's own cgroup.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An empty leaf for one command: a spare one if there is one, else a new one.
    pub fn leaf(self: &Arc<Self>) -> io::Result<Leaf> {
        if let Some(SpareLeaf { name, fds }) = self.spares().pop() {
            return Ok(Leaf {
                tree: Arc::clone(self),
                name,
                fds: Some(fds),
                killed: AtomicBool::new(false),
            });
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(format!("{}{n}", self.prefix)).map_err(io::Error::other)?;
        rustix::fs::mkdirat(&self.dir, name.as_c_str(), Mode::from_raw_mode(0o755))?;
        let opened = rustix::fs::openat(
            &self.dir,
            name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|dir| {
            let procs = rustix::fs::openat(
                &dir,
                c"cgroup.procs",
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let events = rustix::fs::openat(
                &dir,
                c"cgroup.events",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok(LeafFds { dir, procs, events })
        });
        match opened {
            Ok(fds) => Ok(Leaf {
                tree: Arc::clone(self),
                name,
                fds: Some(fds),
                killed: AtomicBool::new(false),
            }),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.dir, name.as_c_str(), AtFlags::REMOVEDIR);
                Err(e.into())
            }
        }
    }

    /// Starts a process in a new leaf, as commands will be: proves that this process may
    /// put processes there (write access to its own cgroup's `cgroup.procs`, no namespace
    /// boundary in the way). With `clone3(CLONE_INTO_CGROUP)` a child that exits at once
    /// (about 0.1 ms); elsewhere `/bin/sh -c :` moving itself in.
    fn probe(self: &Arc<Self>) -> Result<(), CgroupError> {
        let leaf = self.leaf().map_err(|source| CgroupError::Create {
            path: self.path.clone(),
            source,
        })?;
        let moved = |source| CgroupError::Move {
            path: self.path.clone(),
            source,
        };
        if crate::spawn::probe_cgroup(leaf.dir_fd()).map_err(moved)? {
            return Ok(());
        }
        let procs = leaf.procs_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", ":"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: the hook only makes one write system call on an fd this process owns.
        unsafe {
            cmd.pre_exec(move || enter(procs));
        }
        let moved = cmd.status().and_then(|st| {
            if st.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "the probe process ended with {st}"
                )))
            }
        });
        moved.map_err(|source| CgroupError::Move {
            path: self.path.clone(),
            source,
        })
    }
}

impl CgroupTree {
    fn spares(&self) -> MutexGuard<'_, Vec<SpareLeaf>> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many emptied leaves wait for a command.
    pub fn spare_count(&self) -> usize {
        self.spares().len()
    }

    /// Removes what dead processes left beside a flat tree's leaves, once per tree. Called
    /// by the spawn once a command has started, so the scan overlaps the command's own
    /// start instead of delaying it.
    pub(crate) fn tidy_after_spawn(&self) {
        if self.tidy_pending.swap(false, Ordering::Relaxed) {
            remove_stale(&self.path);
        }
    }
}

impl Drop for CgroupTree {
    /// Every leaf in use is gone by now (each holds the tree): tidy what the dead left if
    /// no command did, remove the spares, then the subtree. A process that is somehow
    /// still in it is killed first, and waited for briefly.
    fn drop(&mut self) {
        self.tidy_after_spawn();
        for spare in std::mem::take(&mut *self.spares()) {
            let _ = rustix::fs::unlinkat(&self.dir, spare.name.as_c_str(), AtFlags::REMOVEDIR);
        }
        if self.flat {
            return;
        }
        if let Err(e) = remove_at(&self.dir, &self.path) {
            debug!(path = %self.path.display(), error = %e, "removing the cgroup subtree");
        }
    }
}

/// `tuppence-PID-N`: a subtree's name, or the start of the leaves' names of a flat tree,
/// unique in this process and telling [`remove_stale`] whose it is.
fn unique_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "tuppence-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the subtrees that agents which are gone left below `own` (a crash, a kill, an
/// exit with cgroups still waiting to empty): what is still in them is killed; what cannot
/// be removed yet is left for the next agent to start. Never waits.
fn remove_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("tuppence-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid > 0
            && (unsafe { libc::kill(pid, 0) } == 0
                || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH));
        if alive {
            continue;
        }
        let path = entry.path();
        let _ = std::fs::write(path.join("cgroup.kill"), b"1");
        if let Ok(leaves) = std::fs::read_dir(&path) {
            for leaf in leaves.flatten() {
                if leaf.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(leaf.path());
                }
            }
        }
        match std::fs::remove_dir(&path) {
            Ok(()) => {
                debug!(cgroup = %path.display(), "removed a cgroup subtree left by an agent that is gone")
            }
            Err(e) => {
                debug!(cgroup = %path.display(), error = %e, "a cgroup subtree left by an agent that is gone is still busy")
            }
        }
    }
}

/// Removes the cgroup at `path` (whose directory fd is `dir`): kills what is in it if it
/// is busy, and retries for up to a second.
fn remove_at(dir: &OwnedFd, path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                let _ = write_at(dir, c"cgroup.kill", b"1");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

impl Leaf {
    /// The fd of the leaf's `cgroup.procs`, open for writing: a child writes `0` to it to
    /// enter the leaf (see [`enter`]).
    pub fn procs_fd(&self) -> RawFd {
        self.fds.as_ref().map_or(-1, |f| f.procs.as_raw_fd())
    }

    /// The fd of the leaf's directory, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn dir_fd(&self) -> RawFd {
        self.fds.as_ref().map_or(-1, |f| f.dir.as_raw_fd())
    }

    /// The leaf's directory.
    pub fn path(&self) -> PathBuf {
        self.tree.path.join(OsStr::from_bytes(self.name.as_bytes()))
    }

    /// SIGKILLs every process in the leaf (`cgroup.kill`), including ones that left the
    /// command's process group or session.
    ///
    /// A killed leaf is never reused: Linux 6.18 (at least) SIGKILLs every process later
    /// born into a cgroup that was once killed through `clone3(CLONE_INTO_CGROUP)` (its
    /// kill sequence number is compared with the parent's cgroup's), so the next command
    /// would die before it ran. Measured here; `spawn/tests.rs` keeps it true.
    pub fn kill(&self) -> io::Result<()> {
        self.killed.store(true, Ordering::Relaxed);
        let fds = self.fds.as_ref().ok_or_else(gone)?;
        write_at(&fds.dir, c"cgroup.kill", b"1")
    }

    /// Whether a live process is in the leaf (`populated` in `cgroup.events`; zombies do
    /// not count).
    pub fn populated(&self) -> io::Result<bool> {
        let fds = self.fds.as_ref().ok_or_else(gone)?;
        let mut buf = [0u8; 256];
        let n = rustix::io::pread(&fds.events, &mut buf, 0)?;
        let text = buf.get(..n).unwrap_or_default();
        Ok(text.split(|&b| b == b'\n').any(|l| l == b"populated 1"))
    }
}

fn gone() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Drop for Leaf {
    fn drop(&mut self) {
        // Empty (the common case: the command and all it started have exited): keep it for
        // the next command, if the tree has room.
        if !self.killed.load(Ordering::Relaxed) && matches!(self.populated(), Ok(false)) {
            let mut spares = self.tree.spares();
            if spares.len() < SPARE_LEAVES
                && let Some(fds) = self.fds.take()
            {
                spares.push(SpareLeaf {
                    name: std::mem::take(&mut self.name),
                    fds,
                });
                return;
            }
        }
        match rustix::fs::unlinkat(&self.tree.dir, self.name.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::BUSY) => {
                if let Err(e) = self.kill() {
                    warn!(cgroup = %self.path().display(), error = %e, "cgroup.kill failed");
                }
                parked().push(Parked {
                    tree: Arc::clone(&self.tree),
                    name: std::mem::take(&mut self.name),
                });
            }
            Err(e) => {
                warn!(cgroup = %self.path().display(), error = %e, "removing a command's cgroup")
            }
        }
    }
}

/// A killed leaf waiting to be empty.
struct Parked {
    tree: Arc<CgroupTree>,
    name: CString,
}

static PARKED: Mutex<Vec<Parked>> = Mutex::new(Vec::new());

fn parked() -> MutexGuard<'static, Vec<Parked>> {
    PARKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the killed leaves that have emptied since; returns how many are still waiting.
/// Non-blocking. Call it when a child exited (`SIGCHLD`); [`crate::spawn::reap_dropped`]
/// calls it too.
pub fn retry_parked() -> usize {
    let mut list = parked();
    list.retain(|p| {
        matches!(
            rustix::fs::unlinkat(&p.tree.dir, p.name.as_c_str(), AtFlags::REMOVEDIR),
            Err(rustix::io::Errno::BUSY)
        )
    });
    list.len()
}

/// How many killed leaves wait to be removed (of every tree in the process).
pub fn parked_count() -> usize {
    parked().len()
}

/// For a child between fork and exec: moves the calling process into the cgroup whose
/// `cgroup.procs` is open as `procs` (writing `0` means "the writer"). Async-signal-safe:
/// one `write` system call.
pub fn enter(procs: RawFd) -> io::Result<()> {
    // SAFETY: write of a 1-byte static buffer to an fd number; nothing else is touched.
    let n = unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn write_at(dir: &impl AsFd, name: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    let fd = rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, data)?;
    Ok(())
}

/// The cgroup v2 path of a process (`0::` line of `/proc/PID/cgroup`), for tests and logs.
pub fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read(format!("/proc/{pid}/cgroup")).ok()?;
    text.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
        .map(|p| PathBuf::from(OsStr::from_bytes(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat tree makes its leaves directly in this process's own cgroup, named after the
    /// process; an emptied leaf is kept for the next command, a killed one removed; once
    /// the tree is gone nothing of it is left, and the own cgroup stays.
    #[test]
    fn a_flat_tree_makes_its_leaves_in_the_own_cgroup_and_leaves_nothing() {
        let tree = match CgroupTree::create_flat_lazy() {
            Ok(tree) => tree,
            Err(e) => {
                eprintln!("skipped: cgroups cannot be used here: {e}");
                return;
            }
        };
        let own = own_cgroup_dir().expect("own cgroup");
        assert_eq!(tree.path(), own);
        assert_eq!(tree.spare_count(), 1, "the checked first leaf is kept");
        let leaf = tree.leaf().expect("leaf");
        assert_eq!(tree.spare_count(), 0, "the first leaf was not reused");
        let path = leaf.path();
        assert_eq!(path.parent(), Some(own.as_path()));
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            name.starts_with(&format!("tuppence-{}-", std::process::id())) && name.contains("-c"),
            "{name}"
        );
        assert!(path.is_dir());
        let killed = tree.leaf().expect("second leaf");
        let killed_path = killed.path();
        assert_ne!(killed_path, path);
        killed.kill().expect("cgroup.kill");
        drop(killed);
        assert!(!killed_path.exists(), "a killed leaf was kept");
        drop(leaf);
        assert!(path.exists(), "an emptied leaf was not kept");
        assert_eq!(tree.spare_count(), 1);
        drop(tree);
        assert!(!path.exists(), "a spare was left behind");
        assert!(own.is_dir());
    }

    /// The pid of a process that has exited and been reaped: what its agent left is stale.
    fn a_dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        pid
    }

    /// What a process that is gone left in the own cgroup (a crash, a kill) is removed by
    /// the next flat tree once its first command has started, or when it drops: a flat
    /// tree's leaf and a subtree with a leaf in it.
    #[test]
    fn what_a_dead_process_left_is_removed_at_the_next_start() {
        let Ok(own) = own_cgroup_dir() else {
            eprintln!("skipped: no own cgroup");
            return;
        };
        let dead = a_dead_pid();
        let flat = own.join(format!("tuppence-{dead}-0-c1"));
        let subtree = own.join(format!("tuppence-{dead}-1"));
        if let Err(e) = std::fs::create_dir(&flat) {
            eprintln!("skipped: cannot make cgroups here: {e}");
            return;
        }
        std::fs::create_dir(&subtree).expect("subtree");
        std::fs::create_dir(subtree.join("c1")).expect("its leaf");
        let tree = CgroupTree::create_flat_lazy();
        if let Ok(tree) = &tree {
            assert!(
                tree.tidy_pending.load(Ordering::Relaxed),
                "tidied before any command"
            );
            tree.tidy_after_spawn();
        }
        drop(tree);
        assert!(!flat.exists(), "a flat leaf was left");
        assert!(!subtree.exists(), "a subtree was left");
    }

    /// A flat tree that never starts a command still removes what the dead left, when it
    /// drops; otherwise its first command's spawn does, once. (Other tests scan the same
    /// own cgroup at the same time, so the spawn's part is checked on the flag.)
    #[test]
    fn a_flat_tree_tidies_when_its_first_command_starts_or_when_it_drops() {
        let Ok(own) = own_cgroup_dir() else {
            eprintln!("skipped: no own cgroup");
            return;
        };
        let left = own.join(format!("tuppence-{}-0-c1", a_dead_pid()));
        if let Err(e) = std::fs::create_dir(&left) {
            eprintln!("skipped: cannot make cgroups here: {e}");
            return;
        }
        drop(CgroupTree::create_flat_lazy());
        assert!(!left.exists(), "the drop did not tidy");

        let Ok(tree) = CgroupTree::create_flat_lazy() else {
            eprintln!("skipped: no flat tree here");
            return;
        };
        assert!(tree.tidy_pending.load(Ordering::Relaxed));
        let me = crate::user::User::current().expect("current user");
        let spec = crate::spawn::SpawnSpec::new(me.name().to_vec(), "exit 0");
        let mut child = crate::spawn::spawn_command_in(&spec, Some(&tree)).expect("spawn");
        assert!(
            !tree.tidy_pending.load(Ordering::Relaxed),
            "the first spawn did not tidy"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "`exit 0` did not end");
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(child);
        drop(tree);
    }

    #[test]
    fn mountinfo_parsing() {
        let text = b"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
50 31 0:40 /sub /mnt/with\\040space rw shared:3 - cgroup2 none rw\n";
        let mounts: Vec<_> = cgroup2_mounts(text).collect();
        assert_eq!(
            mounts,
            vec![
                (PathBuf::from("/"), PathBuf::from("/sys/fs/cgroup/unified")),
                (PathBuf::from("/sub"), PathBuf::from("/mnt/with space")),
            ]
        );
        assert_eq!(unescape(b"a\\134b\\0"), PathBuf::from("a\\b\\0"));
    }

    /// The usual-mount shortcut finds the directory mountinfo finds, and nothing for a
    /// cgroup this process is not in.
    #[test]
    fn the_usual_mount_shortcut_agrees_with_mountinfo() {
        let Ok(cgroup) = std::fs::read_to_string("/proc/self/cgroup") else {
            return;
        };
        let Some(own) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
            return; // no cgroup2 here
        };
        let own = Path::new(own);
        let Ok(expected) = via_mountinfo(own) else {
            return;
        };
        let fast = USUAL_MOUNTS.iter().find_map(|m| at_usual_mount(m, own));
        if let Some(fast) = &fast {
            assert_eq!(
                fast.canonicalize().ok(),
                expected.canonicalize().ok(),
                "{fast:?} vs {expected:?}"
            );
        }
        assert_eq!(own_cgroup_dir().ok(), Some(fast.unwrap_or(expected)));
        // A cgroup2 directory that exists but does not hold this process is refused.
        let mount = USUAL_MOUNTS
            .iter()
            .find(|m| at_usual_mount(m, own).is_some());
        if let (Some(mount), Ok(leaf)) = (mount, CgroupTree::create_lazy()) {
            let rel = leaf.path().strip_prefix(mount).expect("below the mount");
            let name = Path::new("/").join(rel);
            assert_eq!(at_usual_mount(mount, &name), None);
        }
    }
}
