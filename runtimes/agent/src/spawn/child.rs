//! A running command's process: its fds and pidfd, its status, killing and reaping it (also
//! when its `Child` is dropped before it exited: the graveyard reaps it later).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use crate::cgroup::{self, Leaf};
use crate::reaper;
use crate::status;

use super::vfork;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// The `(M, m)` status words: `(0, code)` or `(14, signo)` (ARCHITECTURE.md, "Link
    /// protocol").
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
    pub(super) pid: u32,
    pub(super) pidfd: OwnedFd,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) pty: Option<OwnedFd>,
    pub(super) tty: bool,
    pub(super) status: Option<ExitStatus>,
    /// Started by [`spawn_command_nowait`] and not yet known to have exec'd: the memory
    /// the child reads until then.
    pub(super) exec: Option<vfork::Pending>,
    /// Why the child could not exec, learnt once it exited (0: it did).
    pub(super) exec_errno: i32,
    /// The command's own cgroup, if it runs in one; removed when the `Child` is dropped
    /// (what is still in it is killed first).
    pub(super) cgroup: Option<Leaf>,
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
    /// `ESRCH` from the group alone is not an error. An empty cgroup is not written to
    /// (every finished command passes here; nothing can enter an empty leaf by itself).
    pub fn kill_all(&self) -> io::Result<()> {
        let group = match self.kill_group(libc::SIGKILL) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        };
        match &self.cgroup {
            Some(leaf) if !matches!(leaf.populated(), Ok(false)) => leaf.kill().and(group),
            _ => group,
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
        // it behind (the C executor leaked children on disconnect).
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

/// Kills a child that cannot be watched and reaps it (short: SIGKILL), so no zombie is left.
pub(super) fn kill_and_reap(pid: u32) {
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
