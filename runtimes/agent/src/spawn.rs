//! Running a command for the `c` request.
//!
//! [`spawn_command`] starts `/bin/sh -c COMMAND` the way DESIGN §4 asks, fixing what the C
//! executor got wrong (research §2.2, §5, §8):
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
//!   grandchild that keeps stdout open no longer delays the exit status (research §8). The
//!   child is tracked from its `clone` to its reaping, so the agent's orphan reaper (see
//!   [`crate::reaper`]) never takes its status.
//!
//! Spawning uses `clone(CLONE_VM | CLONE_VFORK)` like `posix_spawn` (see `vfork.rs` for why
//! not `std::process::Command` with a `pre_exec` hook, which forks): the parent builds argv,
//! envp and everything the child's setup needs; the child does only raw syscalls on that
//! memory and reports a failure of its setup or of `exec` through a shared word.

mod vfork;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use rustix::process::{Gid, Pid, PidfdFlags, Uid, WaitId, WaitIdOptions};

use crate::cgroup::{self, CgroupTree, Leaf};
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

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// The `(M, m)` status words: `(0, code)` or `(14, signo)` (DESIGN §3).
    pub fn status_words(self) -> (u32, u32) {
        match self {
            ExitStatus::Exited(code) => (0, u32::try_from(code).unwrap_or(0)),
            ExitStatus::Signaled(sig) => (status::EFAULT, u32::try_from(sig).unwrap_or(0)),
        }
    }
}

/// A running (or finished, not yet dropped) command.
///
/// All fds are `O_NONBLOCK|O_CLOEXEC`, ready for an event loop:
///
/// * [`Child::pidfd`] becomes readable when the shell exits; then call [`Child::try_wait`].
/// * Pipes mode: [`Child::stdin_fd`] (write), [`Child::stdout_fd`], [`Child::stderr_fd`] (read;
///   end = [`fdio::ReadOutcome::Eof`]). Closing stdin ([`Child::close_stdin`]) is the
///   command's EOF.
/// * Tty mode: one pty master is returned by both [`Child::stdin_fd`] and
///   [`Child::stdout_fd`] (register it once, for reading and writing); there is no stderr.
///   Read it with [`fdio::read_pty_into`] (the kernel reports the end as `EIO`). Input EOF is
///   the `VEOF` character, see [`tty_eof_sequence`]; [`Child::close_stdin`] does nothing.
///
/// Dropping a `Child` that was not reaped kills its process group with SIGKILL and tries once
/// to reap it without blocking. If it has not died yet, its pidfd is parked and reaped later
/// by [`reap_dropped`] (which [`spawn_command`] calls each time), so dropped commands do not
/// pile up as zombies. An owner that wants the status should kill, wait for the pidfd and call
/// [`Child::try_wait`] before dropping.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    pty: Option<OwnedFd>,
    tty: bool,
    status: Option<ExitStatus>,
    /// Started by [`spawn_command_nowait`] and not yet known to have exec'd: the memory
    /// the child reads until then.
    exec: Option<vfork::Pending>,
    /// Why the child could not exec, learnt once it exited (0: it did).
    exec_errno: i32,
    /// The command's own cgroup, if it runs in one; removed when the `Child` is dropped
    /// (what is still in it is killed first).
    cgroup: Option<Leaf>,
}

impl Child {
    /// The shell's process id (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process group id: the same as [`Child::pid`], because the shell called `setsid`.
    pub fn pgid(&self) -> u32 {
        self.pid
    }

    /// True when the command runs on a pty.
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// The pidfd: readable once the shell has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Where the command's input is written: the stdin pipe, or the pty master.
    pub fn stdin_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.tty {
            self.pty.as_ref().map(AsFd::as_fd)
        } else {
            self.stdin.as_ref().map(AsFd::as_fd)
        }
    }

    /// Where the command's output is read: the stdout pipe, or the pty master.
    pub fn stdout_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.tty {
            self.pty.as_ref().map(AsFd::as_fd)
        } else {
            self.stdout.as_ref().map(AsFd::as_fd)
        }
    }

    /// The stderr pipe (`None` in tty mode, where stderr goes to the pty).
    pub fn stderr_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stderr.as_ref().map(AsFd::as_fd)
    }

    /// Closes the stdin pipe, which the command reads as end-of-file. In tty mode this does
    /// nothing (the master is also the output); write [`tty_eof_sequence`] instead.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes the stdout pipe (after EOF, or to discard output). In tty mode: the pty master,
    /// i.e. all input and output.
    pub fn close_stdout(&mut self) {
        if self.tty {
            self.pty = None;
        } else {
            self.stdout = None;
        }
    }

    /// Closes the stderr pipe.
    pub fn close_stderr(&mut self) {
        self.stderr = None;
    }

    /// Takes ownership of the stdin pipe (pipes mode only), e.g. to wrap it in the event
    /// loop's own type.
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// Takes ownership of the stdout pipe (pipes mode only).
    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    /// Takes ownership of the stderr pipe (pipes mode only).
    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// Takes ownership of the pty master (tty mode only).
    pub fn take_pty(&mut self) -> Option<OwnedFd> {
        self.pty.take()
    }

    /// Reaps the shell if it has exited; `Ok(None)` while it runs. Never blocks.
    ///
    /// Once reaped, the status is remembered and returned again by later calls. Requires that
    /// nobody else reaps the agent's children (SIGCHLD must not be set to `SIG_IGN`).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        let pidfd = self.pidfd.as_fd();
        let waited = reaper::reap_tracked(self.pid, || {
            loop {
                match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other.map_err(io::Error::from),
                }
            }
        })?;
        let Some(info) = waited else {
            return Ok(None);
        };
        let status = if let Some(code) = info.exit_status() {
            ExitStatus::Exited(code)
        } else if let Some(sig) = info.terminating_signal() {
            ExitStatus::Signaled(sig)
        } else {
            return Err(io::Error::other(
                "waitid reported neither an exit nor a signal",
            ));
        };
        self.status = Some(status);
        // Reaped: the process is gone, and so is any use of the exec block.
        if let Some(p) = self.exec.take() {
            self.exec_errno = p.error();
        }
        Ok(Some(status))
    }

    /// For a child of [`spawn_command_nowait`]: the error that kept it from running the
    /// command (its setup, e.g. switching to the user, or `exec` failed), once it has been
    /// reaped; the owner reports it as a failed start rather than as exit status 127.
    /// `None` while the child runs, and for children that ran the command.
    pub fn exec_error(&self) -> Option<io::Error> {
        (self.status.is_some() && self.exec_errno != 0)
            .then(|| io::Error::from_raw_os_error(self.exec_errno))
    }

    /// For a child of [`spawn_command_nowait`]: frees the memory it needed to start (its
    /// stack and arguments, ~10 KiB resident) once it has exec'd. Returns whether anything
    /// is still held. Call it now and then after spawning; reaping frees it too.
    pub fn settle_exec(&mut self) -> bool {
        if self.exec.as_ref().is_some_and(vfork::Pending::settled)
            && let Some(p) = self.exec.take()
        {
            self.exec_errno = p.error();
        }
        self.exec.is_some()
    }

    /// The status, if [`Child::try_wait`] has reaped the shell.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Sends `signal` to the command's whole process group (`kill(-pgid, signal)`).
    ///
    /// Background jobs the command started (`sleep 5 &`) are in the group too. This remains
    /// valid after the shell is reaped: the kernel does not reuse a pid number while a process
    /// group of that number has members. `ESRCH` means the group is empty.
    pub fn kill_group(&self, signal: i32) -> io::Result<()> {
        // A pgid of 0 or 1 would turn kill(-pgid) into "my group" or "every process".
        let Ok(pgid) = libc::pid_t::try_from(self.pid) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if pgid <= 1 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if self.exec.as_ref().is_some_and(|p| !p.settled()) {
            // Started without waiting and not exec'd yet: its setsid may not have happened,
            // so there may be no group yet. The process itself gets the signal (blocked
            // until its setup has reset every disposition, then acted on).
            // SAFETY: kill takes plain integers; pgid > 1 is our child's pid.
            let rc = unsafe { libc::kill(pgid, signal) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as below.
            unsafe { libc::kill(-pgid, signal) };
            return Ok(());
        }
        // SAFETY: kill takes plain integers; -pgid with pgid > 1 addresses exactly that
        // process group.
        let rc = unsafe { libc::kill(-pgid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// SIGKILLs everything the command started: its cgroup (`cgroup.kill`, which nothing
    /// in it can escape) when it has one, and its process group (which is all there is
    /// without a cgroup, and covers a child that has not entered its cgroup yet).
    /// `ESRCH` from the group alone is not an error.
    pub fn kill_all(&self) -> io::Result<()> {
        let group = match self.kill_group(libc::SIGKILL) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        };
        match &self.cgroup {
            Some(leaf) => leaf.kill().and(group),
            None => group,
        }
    }

    /// Delivers an interrupt: SIGKILL goes to everything the command started
    /// ([`Child::kill_all`]), any other signal to its process group.
    pub fn interrupt(&self, signal: i32) -> io::Result<()> {
        if signal == libc::SIGKILL {
            self.kill_all()
        } else {
            self.kill_group(signal)
        }
    }

    /// The command's own cgroup directory, when it runs in one.
    pub fn cgroup_path(&self) -> Option<std::path::PathBuf> {
        self.cgroup.as_ref().map(Leaf::path)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // The owner gave up on a command that is still running (or unreaped): do not leave
        // it behind (research §5: the C executor leaked children on disconnect).
        if let Err(e) = self.kill_all() {
            tracing::debug!(pid = self.pid, error = %e, "killing a dropped command");
        }
        match self.try_wait() {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Still dying (SIGKILL is not instantaneous): reap it later. Its exec block
                // goes along, as it may still be reading it.
                match self.pidfd.try_clone() {
                    Ok(pidfd) => graveyard().push((self.pid, pidfd, self.exec.take())),
                    Err(e) => {
                        tracing::warn!(pid = self.pid, error = %e, "a dropped command will stay a zombie");
                        if let Some(p) = self.exec.take() {
                            // Never freed: the child may use it until it dies.
                            std::mem::forget(p);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(pid = self.pid, error = %e, "reaping a dropped command");
                if let Some(p) = self.exec.take()
                    && !p.settled()
                {
                    std::mem::forget(p);
                }
            }
        }
    }
}

/// Pidfds of dropped, killed but not yet reaped commands, with the exec blocks they may
/// still be reading.
type Parked = (u32, OwnedFd, Option<vfork::Pending>);

static GRAVEYARD: Mutex<Vec<Parked>> = Mutex::new(Vec::new());

fn graveyard() -> std::sync::MutexGuard<'static, Vec<Parked>> {
    GRAVEYARD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reaps commands whose [`Child`] was dropped before they had died, and removes the
/// cgroups of dropped commands that have emptied since ([`cgroup::retry_parked`]).
/// Non-blocking; returns how many processes are still waiting. Called by
/// [`spawn_command`]; a loop may also call it on a timer or on `SIGCHLD`.
pub fn reap_dropped() -> usize {
    cgroup::retry_parked();
    let mut parked = graveyard();
    parked.retain(|(pid, pidfd, _)| {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        // Keep it while the process has not exited; an error (ECHILD: someone else reaped
        // it) also ends our responsibility.
        matches!(
            reaper::reap_tracked(*pid, || rustix::process::waitid(
                WaitId::PidFd(pidfd.as_fd()),
                options
            )
            .map_err(io::Error::from)),
            Ok(None)
        )
    });
    parked.len()
}

/// Parses a signal name from an `I` request: `INT`, `SIGINT`, `sigint`, `2` all mean SIGINT;
/// the empty name means SIGKILL (the C executor's only interrupt). Unknown names and numbers
/// outside 1..=64 give `None`.
pub fn signal_from_name(name: impl AsRef<[u8]>) -> Option<i32> {
    let name = name.as_ref();
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    if name.is_empty() {
        return Some(libc::SIGKILL);
    }
    if name.iter().all(u8::is_ascii_digit) {
        if name.len() > 2 {
            return None;
        }
        let n = name
            .iter()
            .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
        return (1..=64).contains(&n).then_some(n);
    }
    let bare = if name.len() > 3 && name[..3].eq_ignore_ascii_case(b"SIG") {
        &name[3..]
    } else {
        name
    };
    SIGNALS
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(bare))
        .map(|&(_, sig)| sig)
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

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

    let leaf = new_leaf(cgroup);
    let setup = ChildSetup {
        cgroup_procs: leaf.as_ref().map(Leaf::procs_fd),
        tty: spec.tty,
        switch,
        uid: Uid::from_raw(user.uid()),
        gid: Gid::from_raw(user.gid()),
        groups,
        home: user.home_cstr_if_absolute().map(ToOwned::to_owned),
    };
    let prepared = vfork::Prepared::new(
        SHELL,
        vec![c"-c".to_owned(), command],
        env,
        stdio_raw,
        setup,
        leaf.as_ref().map(Leaf::dir_fd),
    );
    let spawned = reaper::spawn_tracked(|| vfork::spawn(prepared, mode));
    // The parent must not keep the child's ends (a pty master would never report the end
    // of the command's output while a slave is open here). The child has its own copies
    // (its fd table was copied by clone).
    drop(stdio);
    let (pid, exec) = spawned.map_err(SpawnError::Spawn)?;
    adopt(pid, exec, [stdin, stdout, stderr], master, spec.tty, leaf)
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

/// Kills a child that cannot be watched and reaps it (short: SIGKILL), so no zombie is left.
fn kill_and_reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = reaper::reap_tracked(pid.unsigned_abs(), || {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child, with a valid status pointer.
            if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
                return Ok(Some(()));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    });
}

/// A pidfd for child `pid` (`O_NONBLOCK` where the kernel supports it): readable once the
/// process has exited, and a handle `waitid(P_PIDFD)` reaps without the pid-reuse race of
/// `waitpid(pid)`.
pub fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let raw = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    match rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => Ok(fd),
        // PIDFD_NONBLOCK is Linux ≥ 5.10; it only matters for a blocking waitid, which we
        // never do, so a plain pidfd is as good.
        Err(rustix::io::Errno::INVAL) => Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?),
        Err(e) => Err(e.into()),
    }
}

/// Everything the child does between fork and exec, prepared by the parent.
struct ChildSetup {
    /// `cgroup.procs` of the command's cgroup, entered first of all (see
    /// [`ChildSetup::enter_cgroup`]).
    cgroup_procs: Option<std::os::fd::RawFd>,
    tty: bool,
    switch: bool,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    home: Option<CString>,
}

impl ChildSetup {
    /// Runs in the child before anything else (before its stdio is moved onto 0, 1 and 2,
    /// which could overwrite the fd): enters the command's cgroup, so that nothing the
    /// command starts is ever outside it. Async-signal-safe.
    fn enter_cgroup(&self) -> io::Result<()> {
        match self.cgroup_procs {
            Some(fd) => cgroup::enter(fd),
            None => Ok(()),
        }
    }

    /// Runs in the child. Async-signal-safe only: no allocation, no locks, raw syscalls.
    fn run(&self) -> io::Result<()> {
        rustix::process::setsid()?;
        if self.tty {
            // SAFETY: std has dup2'd the pty slave onto fd 0 before running this hook, and
            // nothing closes fd 0 before exec.
            let stdin = unsafe { BorrowedFd::borrow_raw(0) };
            rustix::process::ioctl_tiocsctty(stdin)?;
        }
        if self.switch {
            // Raw syscalls, per thread: the forked child has exactly one thread.
            rustix::thread::set_thread_groups(&self.groups)?;
            rustix::thread::set_thread_gid(self.gid)?;
            rustix::thread::set_thread_uid(self.uid)?;
        }
        let entered_home = match &self.home {
            Some(home) => rustix::process::chdir(home.as_c_str()).is_ok(),
            None => false,
        };
        if !entered_home {
            rustix::process::chdir(c"/")?;
        }
        reset_signals();
        mark_fds_cloexec()
    }
}

/// The kernel's `sigset_t` size (`_NSIG / 8`), which `rt_sigaction`/`rt_sigprocmask` insist on.
const KERNEL_SIGSET_SIZE: usize = if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
    16
} else {
    8
};

/// Sets every signal's disposition to the default and empties the mask.
///
/// For `pre_exec` hooks: async-signal-safe (raw syscalls only). The agent ignores SIGPIPE and
/// may block signals for its own loop; a child must not inherit either. Called anywhere else
/// it resets the calling process's own signal handling.
///
/// Raw `rt_sigaction` rather than the C library's `sigaction`, which refuses the signals it
/// reserves for itself (32 and 33 in glibc) even though they can be inherited as ignored and
/// survive `exec` that way (the Rust test harness, for one, runs with signal 32 ignored).
pub fn reset_signals() {
    // All zeroes is SIG_DFL with no flags and an empty mask in every architecture's kernel
    // `struct sigaction`; 64 bytes is larger than any of them.
    let dfl = [0u64; 8];
    let empty = [0u64; 2];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads a kernel sigaction from `dfl` (valid, large enough) and
        // writes nothing (null old-action pointer). Async-signal-safe: a plain syscall.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig as libc::c_long,
                dfl.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                KERNEL_SIGSET_SIZE,
            );
        }
    }
    // SAFETY: rt_sigprocmask reads KERNEL_SIGSET_SIZE bytes from `empty` (16 bytes available)
    // and writes nothing.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            empty.as_ptr(),
            std::ptr::null_mut::<libc::c_void>(),
            KERNEL_SIGSET_SIZE,
        );
    }
}

/// Marks every fd ≥ 3 close-on-exec, so a child keeps none of the agent's sockets, pipes or
/// pidfds.
///
/// For `pre_exec` hooks: async-signal-safe, no allocation. (Close-on-exec rather than
/// closing: the standard library's exec-error pipe must survive until `exec`.)
pub fn mark_fds_cloexec() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds; raw syscall so
    // that no glibc ≥ 2.34 symbol is needed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::EINVAL) => mark_fds_cloexec_by_scan(),
        _ => Err(err),
    }
}

/// Fallback for kernels without `CLOSE_RANGE_CLOEXEC`: walk `/proc/self/fd` with a stack
/// buffer (no allocation) and set `FD_CLOEXEC` on each open fd ≥ 3. Proportional to the number
/// of open fds, not to the fd limit.
fn mark_fds_cloexec_by_scan() -> io::Result<()> {
    use rustix::fs::{Mode, OFlags, RawDir};
    let dir = rustix::fs::open(
        c"/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dir_raw = dir.as_raw_fd();
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let mut entries = RawDir::new(&dir, &mut buf);
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let Some(fd) = parse_fd(entry.file_name().to_bytes()) else {
            continue;
        };
        if fd >= 3 && fd != dir_raw {
            // SAFETY: fcntl(F_SETFD) on a number: harmless if it is not open (EBADF).
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

fn parse_fd(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 9 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        name.iter()
            .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_from_name("INT"), Some(libc::SIGINT));
        assert_eq!(signal_from_name("SIGINT"), Some(libc::SIGINT));
        assert_eq!(signal_from_name("sigterm"), Some(libc::SIGTERM));
        assert_eq!(signal_from_name("Kill"), Some(libc::SIGKILL));
        assert_eq!(signal_from_name(""), Some(libc::SIGKILL));
        assert_eq!(signal_from_name(b"\0"), Some(libc::SIGKILL));
        assert_eq!(signal_from_name("9"), Some(9));
        assert_eq!(signal_from_name("64"), Some(64));
        assert_eq!(signal_from_name("65"), None);
        assert_eq!(signal_from_name("0"), None);
        assert_eq!(signal_from_name("999"), None);
        assert_eq!(signal_from_name("SIG"), None);
        assert_eq!(signal_from_name("NOPE"), None);
        assert_eq!(signal_from_name(b"\xff"), None);
        for name in [
            "HUP", "INT", "QUIT", "ILL", "ABRT", "FPE", "KILL", "SEGV", "PIPE", "ALRM", "TERM",
            "USR1", "USR2", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        ] {
            assert!(signal_from_name(name).is_some(), "{name}");
            assert_eq!(
                signal_from_name(format!("SIG{name}")),
                signal_from_name(name)
            );
        }
    }

    #[test]
    fn env_rules() {
        let root = User::lookup(b"root").expect("root");
        let client = vec![
            b"PATH=/x".to_vec(),
            b"A=1".to_vec(),
            b"NOEQUALS".to_vec(),
            b"=empty".to_vec(),
            b"A=2".to_vec(),
            b"B=".to_vec(),
        ];
        let env = build_env(&client, &root);
        assert_eq!(env.get(b"PATH".as_slice()), Some(&b"/x".to_vec()));
        assert_eq!(env.get(b"A".as_slice()), Some(&b"2".to_vec()));
        assert_eq!(env.get(b"B".as_slice()), Some(&Vec::new()));
        assert_eq!(env.get(b"USER".as_slice()), Some(&b"root".to_vec()));
        assert!(env.contains_key(b"HOME".as_slice()));
        assert_eq!(env.len(), 5);
        let env = build_env(&[b"HOME=/h".to_vec(), b"USER=u".to_vec()], &root);
        assert_eq!(env.get(b"HOME".as_slice()), Some(&b"/h".to_vec()));
        assert_eq!(env.get(b"USER".as_slice()), Some(&b"u".to_vec()));
        assert_eq!(env.get(b"PATH".as_slice()), Some(&DEFAULT_PATH.to_vec()));
    }

    #[test]
    fn status_words() {
        assert_eq!(ExitStatus::Exited(3).status_words(), (0, 3));
        assert_eq!(ExitStatus::Signaled(15).status_words(), (14, 15));
    }

    #[test]
    fn proc_scan_fallback_marks_fds_cloexec() {
        // The fallback for kernels without CLOSE_RANGE_CLOEXEC, exercised directly (setting
        // FD_CLOEXEC on this test process's fds is harmless).
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        for fd in [&r, &w] {
            let flags = rustix::io::fcntl_getfd(fd).expect("getfd");
            assert!(!flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
        mark_fds_cloexec_by_scan().expect("scan");
        for fd in [&r, &w] {
            let flags = rustix::io::fcntl_getfd(fd).expect("getfd");
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn a_failed_exec_is_reported_with_its_errno() {
        let setup = || ChildSetup {
            cgroup_procs: None,
            tty: false,
            switch: false,
            uid: rustix::process::getuid(),
            gid: rustix::process::getgid(),
            groups: Vec::new(),
            home: None,
        };
        let null = || {
            rustix::fs::open(
                c"/dev/null",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .expect("/dev/null")
        };
        let fds = [null(), null(), null()];
        let raw = fds.each_ref().map(AsRawFd::as_raw_fd);
        let prepared = || {
            vfork::Prepared::new(
                c"/nonexistent/program",
                Vec::new(),
                Vec::new(),
                raw,
                setup(),
                None,
            )
        };
        let err = vfork::spawn(prepared(), vfork::Mode::Wait).expect_err("no such program");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

        // Without waiting: the child exits 127 and the errno is in the block. (Tracked, so
        // that an orphan reaper of another test in this process leaves it alone.)
        let (pid, pending) =
            reaper::spawn_tracked(|| vfork::spawn(prepared(), vfork::Mode::NoWait))
                .expect("started");
        let pending = pending.expect("a pending block");
        let raw = libc::pid_t::try_from(pid).expect("pid");
        let mut status = 0;
        let reaped = reaper::reap_tracked(pid, || {
            // SAFETY: waitpid on the child just started, with a valid status pointer.
            Ok(Some(unsafe { libc::waitpid(raw, &mut status, 0) }))
        });
        assert_eq!(reaped.expect("waitpid"), Some(raw));
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 127);
        assert!(pending.settled());
        assert_eq!(pending.error(), libc::ENOENT);
    }

    /// A command runs in its own leaf, whichever way it got there: born in it
    /// (`clone3(CLONE_INTO_CGROUP)`) or moving itself there (the fallback).
    #[test]
    fn commands_start_in_their_own_cgroup_both_ways() {
        let tree = match crate::cgroup::CgroupTree::create() {
            Ok(tree) => tree,
            Err(e) => {
                println!("SKIPPED: cgroup v2 cannot be used here: {e}");
                return;
            }
        };
        let me = User::current().expect("current user");
        let spec = SpawnSpec::new(me.name().to_vec(), "cat /proc/self/cgroup");
        for way in ["clone3", "fallback"] {
            if way == "fallback" {
                vfork::clone3::disable();
            }
            let mut child = spawn_command_in(&spec, Some(&tree)).expect("spawn");
            let leaf = child.cgroup_path().expect("a cgroup");
            child.close_stdin();
            let mut out = bytes::BytesMut::new();
            let fd = child.stdout_fd().expect("stdout");
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            loop {
                let _ = rustix::event::poll(&mut fds, None);
                match fdio::read_into(fd, &mut out, 4096).expect("read") {
                    fdio::ReadOutcome::Eof => break,
                    _ => continue,
                }
            }
            let own = crate::cgroup::own_cgroup_dir().expect("own cgroup");
            let rel = leaf.strip_prefix(&own).expect("below our own cgroup");
            let text = String::from_utf8_lossy(&out);
            let line = text
                .lines()
                .find(|l| l.starts_with("0::"))
                .expect("0:: line");
            assert!(
                line.ends_with(&format!("/{}", rel.display())),
                "{way}: the command is in {line}, not in {}",
                leaf.display()
            );
            while child.try_wait().expect("wait").is_none() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(child);
            assert!(!leaf.exists(), "{way}: the leaf was not removed");
        }
    }

    #[test]
    fn fd_names() {
        assert_eq!(parse_fd(b"17"), Some(17));
        assert_eq!(parse_fd(b"."), None);
        assert_eq!(parse_fd(b""), None);
    }
}
