//! Running a command for the `c` request.
//!
//! [`spawn_command`] starts `/bin/sh -c COMMAND` the way ARCHITECTURE.md ("Agent
//! behaviour") asks, fixing what the C executor got wrong:
//!
//! * **A new session** (`setsid`): the shell leads its own process group (pgid = pid), so
//!   [`Child::kill_group`] reaches every process the command started, and a tty can become its
//!   controlling terminal.
//! * **As the requested user**: looked up with `getpwnam_r`; unknown → [`SpawnError::User`]
//!   (status 2). When the agent is not already that user the child sets the user's
//!   supplementary groups (computed by `getgrouplist` in the parent: `initgroups` reads files
//!   and allocates, which is not allowed between `fork` and `exec`), then the gid, then the uid.
//!   A failure there is a spawn error carrying the errno, not an exit code the command could
//!   also have produced.
//! * **cwd** = the user's home; `/` when the home is not absolute or cannot be entered (the C
//!   executor failed with exit 126 for `nobody`).
//! * **Environment**: only the client's `NAME=value` entries (entries without `=` or with an
//!   empty name are skipped; a repeated name keeps its last value), then `HOME`, `USER` and
//!   `PATH` (= [`DEFAULT_PATH`]) for those the client did not send. Nothing of the agent's
//!   own environment leaks in.
//! * **Signals**: every disposition back to default and an empty signal mask, so a command
//!   is not born with SIGPIPE ignored or SIGCHLD blocked because the agent needed that.
//! * **Fds**: everything above 2 is marked close-on-exec with one `close_range(3, ~0,
//!   CLOSE_RANGE_CLOEXEC)` (Linux ≥ 5.11; older kernels: a scan of `/proc/self/fd`). The C
//!   executor's loop up to the fd limit cost 5.5 ms per command at `ulimit -n 20000`.
//!   (`CLOEXEC` rather than closing: the standard library's own exec-error pipe must survive
//!   until `exec`.)
//! * **Inherited as they are**: umask, resource limits, nice value — like the C executor,
//!   so a test sees the agent's service settings.
//! * **Its own cgroup** when the caller passes a [`CgroupTree`] ([`spawn_command_in`]): the
//!   child is born in a fresh leaf (`clone3(CLONE_INTO_CGROUP)`, or it moves itself there
//!   before anything else where that is not available), so [`Child::kill_all`]
//!   reaches every descendant, even one that left the process group (see [`crate::cgroup`]).
//!   Without one the command stays in the agent's cgroup and only its process group can be
//!   killed.
//! * **Reaping**: a pidfd, readable as soon as the shell exits, independent of its pipes; a
//!   grandchild that keeps stdout open no longer delays the exit status. The
//!   child is tracked from its `clone` to its reaping, so the agent's orphan reaper (see
//!   [`crate::reaper`]) never takes its status.
//!
//! Spawning uses `clone(CLONE_VM | CLONE_VFORK)` like `posix_spawn` (see `vfork.rs` for why
//! not `std::process::Command` with a `pre_exec` hook, which forks): the parent builds argv,
//! envp and everything the child's setup needs; the child does only raw syscalls on that
//! memory and reports a failure of its setup or of `exec` through a shared word.
//!
//! Modules: this one (the request and how a command is started), `child` (the running
//! process: its fds, its status, killing and reaping it), `setup` (what the child does
//! between fork and exec), `signals` (signal names), `vfork` (the `clone` that starts it).

mod child;
mod setup;
mod signals;
#[cfg(test)]
mod tests;
mod vfork;

use child::kill_and_reap;
pub use child::{Child, ExitStatus, open_pidfd, reap_dropped};
use setup::ChildSetup;
pub use setup::{mark_fds_cloexec, reset_signals};
pub use signals::signal_from_name;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;

use rustix::process::{Gid, Uid};

use crate::cgroup::{CgroupTree, Leaf};
use crate::fdio;
use crate::pty;
use crate::reaper;
use crate::status;
use crate::user::{User, UserError};

/// `PATH` for commands whose client did not send one: the usual full list, with the `sbin`
/// directories, which is what root expects and harmless for others. A fixed value rather than
/// the agent's own `PATH`, because how the agent was started (systemd, init script, by hand)
/// should not change what a test sees.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell every command runs in, as in the C executor (never the user's login shell).
const SHELL: &CStr = c"/bin/sh";

/// The terminal's end-of-file character (`VEOF`, Ctrl-D) in the default line discipline.
pub const TTY_EOF: u8 = 0x04;

/// What to write to a pty master to make the command read end-of-file.
///
/// A pty has no half-close: the only way to end the command's input is the `VEOF` character,
/// which makes a pending `read` return what has been typed so far. At the start of a line that
/// is nothing, i.e. EOF; in the middle of a line the first `\x04` only delivers the partial
/// line, and a second one is needed. `at_line_start` is true when nothing was written yet or
/// the last byte written was `\n`.
pub fn tty_eof_sequence(at_line_start: bool) -> &'static [u8] {
    if at_line_start { b"\x04" } else { b"\x04\x04" }
}

/// What to run, for whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnSpec {
    /// The account to run as.
    pub user: Vec<u8>,
    /// The shell command line, run as `/bin/sh -c COMMAND`.
    pub command: Vec<u8>,
    /// The client's environment entries, `NAME=value` each.
    pub env: Vec<Vec<u8>>,
    /// Run on a pty (stdout and stderr merged) instead of three pipes.
    pub tty: bool,
}

impl SpawnSpec {
    /// A spec with no environment and no tty.
    pub fn new(user: impl Into<Vec<u8>>, command: impl Into<Vec<u8>>) -> SpawnSpec {
        SpawnSpec {
            user: user.into(),
            command: command.into(),
            env: Vec::new(),
            tty: false,
        }
    }
}

/// Why a command could not be started. [`SpawnError::errno`] is the `M` status word.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The user does not exist or could not be looked up.
    #[error(transparent)]
    User(#[from] UserError),
    /// The command contains a NUL byte (cannot be an `exec` argument).
    #[error("the command contains a NUL byte")]
    InvalidCommand,
    /// The user's group list could not be read.
    #[error("reading the groups of the user: {0}")]
    Groups(#[source] io::Error),
    /// Creating the pty failed.
    #[error("opening a pty: {0}")]
    Pty(#[source] io::Error),
    /// fork, the child's setup (setsid, setgroups/setgid/setuid, …) or exec failed.
    #[error("starting /bin/sh: {0}")]
    Spawn(#[source] io::Error),
    /// The child started but no pidfd could be opened for it (kernel < 5.3); it was killed.
    #[error("pidfd_open: {0}")]
    Pidfd(#[source] io::Error),
}

impl SpawnError {
    /// The status word: 2 for an unknown user, otherwise the errno of the failing call.
    pub fn errno(&self) -> u32 {
        match self {
            SpawnError::User(e) => e.errno(),
            SpawnError::InvalidCommand => status::EINVAL,
            SpawnError::Groups(e)
            | SpawnError::Pty(e)
            | SpawnError::Spawn(e)
            | SpawnError::Pidfd(e) => status::errno_of(e),
        }
    }
}

/// The command's environment: client entries (last value of a name wins), then `HOME`, `USER`
/// and `PATH` unless the client sent them.
pub(crate) fn build_env(client: &[Vec<u8>], user: &User) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut env = BTreeMap::new();
    for entry in client {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            tracing::debug!(entry = %crate::escape::Quoted(entry), "env entry without '=' ignored");
            continue;
        };
        if eq == 0 || entry.contains(&0) {
            continue;
        }
        env.insert(entry[..eq].to_vec(), entry[eq + 1..].to_vec());
    }
    let home = if user.home().is_empty() {
        b"/".as_slice()
    } else {
        user.home()
    };
    env.entry(b"HOME".to_vec()).or_insert_with(|| home.to_vec());
    env.entry(b"USER".to_vec())
        .or_insert_with(|| user.name().to_vec());
    env.entry(b"PATH".to_vec())
        .or_insert_with(|| DEFAULT_PATH.to_vec());
    env
}

/// Starts `/bin/sh -c COMMAND` as described in the module docs.
///
/// Returns once `exec` has succeeded (or failed: then the error carries its errno). Costs in the
/// agent: one passwd lookup, a group lookup when switching users, three pipes or a pty, one
/// `clone(CLONE_VM | CLONE_VFORK)` (this thread waits for the child's setup and exec), one
/// pidfd.
pub fn spawn_command(spec: &SpawnSpec) -> Result<Child, SpawnError> {
    spawn_with(spec, vfork::Mode::Wait, None)
}

/// Like [`spawn_command`], with the command in a new leaf of `cgroup` (see
/// [`crate::cgroup`]) when one is given. If the leaf cannot be created (a cgroup limit, a
/// removed subtree) the command runs without one, with a warning: a command that runs
/// with only its process group to contain it is better than one that does not run.
pub fn spawn_command_in(
    spec: &SpawnSpec,
    cgroup: Option<&Arc<CgroupTree>>,
) -> Result<Child, SpawnError> {
    spawn_with(spec, vfork::Mode::Wait, cgroup)
}

/// Like [`spawn_command`], but returns without waiting for the child's setup and `exec`,
/// so that a loop starting many commands is not held up by each one. Errors found before
/// the child starts (unknown user, no pty, …) are returned as before; a failure of the
/// child's setup or of `exec` ends it with status 127 and is then reported by
/// [`Child::exec_error`] (check it when the child has been reaped, before reporting its
/// status). Until it has exec'd, [`Child::kill_group`] also signals the process itself.
pub fn spawn_command_nowait(spec: &SpawnSpec) -> Result<Child, SpawnError> {
    spawn_with(spec, vfork::Mode::NoWait, None)
}

/// [`spawn_command_nowait`] with the command in its own leaf of `cgroup` (see
/// [`spawn_command_in`]).
pub fn spawn_command_nowait_in(
    spec: &SpawnSpec,
    cgroup: Option<&Arc<CgroupTree>>,
) -> Result<Child, SpawnError> {
    spawn_with(spec, vfork::Mode::NoWait, cgroup)
}

/// See `vfork::clone3::probe`.
pub(crate) fn probe_cgroup(dir: std::os::fd::RawFd) -> io::Result<bool> {
    vfork::clone3::probe(dir)
}

/// A new leaf of `tree`, or `None` with a warning (see [`spawn_command_in`]).
pub(crate) fn new_leaf(tree: Option<&Arc<CgroupTree>>) -> Option<Leaf> {
    match tree?.leaf() {
        Ok(leaf) => Some(leaf),
        Err(e) => {
            tracing::warn!(cgroup = %tree?.path().display(), error = %e, "cannot create a cgroup for a command; it runs without one (only its process group can be killed)");
            None
        }
    }
}

/// Whether `clone3(CLONE_INTO_CGROUP)` failed because of the cgroup: no permission to
/// move processes there (EACCES), a namespace boundary (ENOENT), a domain that cannot hold
/// processes (EBUSY, EOPNOTSUPP), a cgroup going away (ENODEV).
fn is_cgroup_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::ENOENT | libc::EBUSY | libc::EOPNOTSUPP | libc::ENODEV)
    )
}

fn spawn_with(
    spec: &SpawnSpec,
    mode: vfork::Mode,
    cgroup: Option<&Arc<CgroupTree>>,
) -> Result<Child, SpawnError> {
    reap_dropped();
    if spec.command.contains(&0) {
        return Err(SpawnError::InvalidCommand);
    }
    let user = User::lookup(&spec.user)?;
    let switch = !user.is_current();
    let groups: Vec<Gid> = if switch {
        user.groups()
            .map_err(SpawnError::Groups)?
            .into_iter()
            .map(Gid::from_raw)
            .collect()
    } else {
        Vec::new()
    };

    let command = CString::new(spec.command.clone()).map_err(|_| SpawnError::InvalidCommand)?;
    let env: Vec<CString> = build_env(&spec.env, &user)
        .into_iter()
        .filter_map(|(mut name, value)| {
            name.push(b'=');
            name.extend_from_slice(&value);
            // build_env drops entries with a NUL.
            CString::new(name).ok()
        })
        .collect();

    // The child's ends of its stdio, and the agent's. Everything is O_CLOEXEC; the child's
    // copies on 0/1/2 are made by dup2, which clears the flag.
    let mut master = None;
    let (stdio, ours): ([OwnedFd; 3], [Option<OwnedFd>; 3]) = if spec.tty {
        let pair = pty::open_pty(switch.then_some(user.uid())).map_err(SpawnError::Pty)?;
        let slave_in = pair.slave.try_clone().map_err(SpawnError::Pty)?;
        let slave_out = pair.slave.try_clone().map_err(SpawnError::Pty)?;
        master = Some(pair.master);
        ([slave_in, slave_out, pair.slave], [None, None, None])
    } else {
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
        let (in_r, in_w) = pipe().map_err(|e| SpawnError::Spawn(e.into()))?;
        let (out_r, out_w) = pipe().map_err(|e| SpawnError::Spawn(e.into()))?;
        let (err_r, err_w) = pipe().map_err(|e| SpawnError::Spawn(e.into()))?;
        ([in_r, out_w, err_w], [Some(in_w), Some(out_r), Some(err_r)])
    };
    let [stdin, stdout, stderr] = ours;
    // The child moves its ends onto 0, 1 and 2: none may already be one of those (only
    // possible if this process was started with them closed).
    let stdio = stdio
        .map(|fd| {
            if fd.as_raw_fd() < 3 {
                rustix::io::fcntl_dupfd_cloexec(&fd, 3)
            } else {
                Ok(fd)
            }
        })
        .into_iter()
        .collect::<Result<Vec<OwnedFd>, _>>()
        .map_err(|e| SpawnError::Spawn(e.into()))?;
    let stdio_raw = [0, 1, 2].map(|i| stdio.get(i).map_or(-1, AsRawFd::as_raw_fd));

    // A lazily created tree (see `CgroupTree::create_lazy`) is probed by this command:
    // where clone3 cannot be used, by the old probe first; otherwise the command is born
    // in its leaf with clone3 only (no fallback that would have the child move itself),
    // and if the kernel refuses, it is started again without a cgroup.
    let tree = cgroup.filter(|t| !t.is_refused());
    let tree = tree.filter(|t| t.is_verified() || vfork::clone3_usable() || t.probe_now());
    let unverified = tree.is_some_and(|t| !t.is_verified());
    let mut leaf = new_leaf(tree);
    let home = user.home_cstr_if_absolute().map(ToOwned::to_owned);
    let uid = Uid::from_raw(user.uid());
    let gid = Gid::from_raw(user.gid());
    let prepare = |leaf: Option<&Leaf>, child_moves_itself: bool| {
        let setup = ChildSetup {
            cgroup_procs: leaf.filter(|_| child_moves_itself).map(Leaf::procs_fd),
            tty: spec.tty,
            switch,
            uid,
            gid,
            groups: groups.clone(),
            home: home.clone(),
        };
        vfork::Prepared::new(
            SHELL,
            vec![c"-c".to_owned(), command.clone()],
            env.clone(),
            stdio_raw,
            setup,
            leaf.map(Leaf::dir_fd),
        )
    };
    let mut spawned =
        reaper::spawn_tracked(|| vfork::spawn(prepare(leaf.as_ref(), !unverified), mode));
    if unverified && leaf.is_some() {
        match (&spawned, tree) {
            (Ok(_), Some(t)) => t.mark_verified(),
            (Err(e), Some(t)) => {
                if !vfork::clone3_usable() {
                    // clone3 turned out not to be available: the old probe decides, and
                    // the child moves itself as it does everywhere clone3 is missing.
                    if t.probe_now() {
                        spawned = reaper::spawn_tracked(|| {
                            vfork::spawn(prepare(leaf.as_ref(), true), mode)
                        });
                    } else {
                        leaf = None;
                        spawned =
                            reaper::spawn_tracked(|| vfork::spawn(prepare(None, false), mode));
                    }
                } else if is_cgroup_refusal(e) {
                    t.refuse(e);
                    leaf = None;
                    spawned = reaper::spawn_tracked(|| vfork::spawn(prepare(None, false), mode));
                }
                // Anything else (EAGAIN, ENOMEM) is not about the cgroup: the command
                // fails as it would have, and the tree stays to be probed by the next one.
            }
            (_, None) => {}
        }
    }
    // The parent must not keep the child's ends (a pty master would never report the end
    // of the command's output while a slave is open here). The child has its own copies
    // (its fd table was copied by clone).
    drop(stdio);
    let (pid, exec) = spawned.map_err(SpawnError::Spawn)?;
    let child = adopt(pid, exec, [stdin, stdout, stderr], master, spec.tty, leaf)?;
    if let Some(tree) = cgroup {
        tree.tidy_after_spawn();
    }
    Ok(child)
}

/// Spawns a fully prepared `cmd` (stdio chosen, `pre_exec` hook installed) and wraps it in a
/// [`Child`] with a pidfd and non-blocking pipes. Used by the sniff task runner, whose
/// scripts are rare and long-lived enough that std's fork path costs nothing that matters;
/// commands go through the vfork-style [`spawn_command`].
///
/// `pty` is the master of a pty whose slave `cmd` uses (then `tty` is true). `cmd` is
/// consumed and dropped right after the fork: it holds the pty slave, and the parent must
/// not keep that open, or the master would never report the end of the command's output.
/// `cgroup` is the leaf `cmd`'s `pre_exec` hook moves the child into ([`cgroup::enter`]);
/// the `Child` owns it from then on.
pub(crate) fn launch(
    mut cmd: Command,
    pty: Option<OwnedFd>,
    tty: bool,
    cgroup: Option<Leaf>,
) -> Result<Child, SpawnError> {
    let spawned = reaper::spawn_tracked(|| cmd.spawn().map(|c| (c.id(), c)));
    drop(cmd);
    let (_, mut std_child) = spawned.map_err(SpawnError::Spawn)?;
    let stdio = [
        std_child.stdin.take().map(OwnedFd::from),
        std_child.stdout.take().map(OwnedFd::from),
        std_child.stderr.take().map(OwnedFd::from),
    ];
    // Dropping a std child neither kills nor waits: `adopt` takes over the process.
    adopt(std_child.id(), None, stdio, pty, tty, cgroup)
}

/// Wraps a freshly started process in a [`Child`]: opens its pidfd (or kills and reaps it,
/// so no zombie is left) and makes the agent's ends of its pipes non-blocking. The one
/// place both spawn paths share, so both get the same pidfd and kill-on-failure handling.
fn adopt(
    pid: u32,
    exec: Option<vfork::Pending>,
    [stdin, stdout, stderr]: [Option<OwnedFd>; 3],
    pty: Option<OwnedFd>,
    tty: bool,
    cgroup: Option<Leaf>,
) -> Result<Child, SpawnError> {
    let pidfd = match open_pidfd(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(pid);
            // Reaped: the exec block is no longer in use.
            drop(exec);
            return Err(SpawnError::Pidfd(e));
        }
    };
    let child = Child {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
        pty,
        tty,
        status: None,
        exec,
        exec_errno: 0,
        cgroup,
    };
    // From here on `child` owns the process (its Drop kills it on error).
    for fd in [&child.stdin, &child.stdout, &child.stderr]
        .into_iter()
        .flatten()
    {
        fdio::set_nonblocking(fd).map_err(SpawnError::Spawn)?;
    }
    Ok(child)
}
