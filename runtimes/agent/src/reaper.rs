//! Orphans: the agent adopts and reaps what its commands leave behind.
//!
//! A command's descendant whose parent exits (`sh -c 'sleep 100 &'`, a daemon's double
//! fork, a background job of a killed shell) is reparented. Without a subreaper that is
//! PID 1, which in a container or a minimal guest may never reap it: the issue found
//! zombies of PID 1 after disconnects and sniff tasks. [`Reaper::install`] makes the agent
//! process a *child subreaper* (`PR_SET_CHILD_SUBREAPER`), so such orphans become the
//! agent's children, and reaps them when they exit.
//!
//! # Reaping without stealing
//!
//! The agent's own children are reaped through their pidfds by whoever owns them (a
//! [`Child`](crate::spawn::Child)), which needs their exit status; a blanket `waitpid(-1)`
//! would race with that and steal it. So the reaper only waits for children it may take:
//!
//! * Every child this crate starts is *tracked* from the moment it exists: the pid is
//!   recorded while the [`TRACKED`] lock is held across the `clone`/`fork`
//!   ([`spawn_tracked`]), and it is forgotten in the same locked step that reaps it
//!   ([`reap_tracked`]). The reaper holds that lock for its whole scan, so no tracked child
//!   can appear, be reaped, or have its pid reused while it looks.
//! * The scan lists the process's children (`/proc/self/task/*/children`, or all of
//!   `/proc` on kernels without that file) and reaps, with `waitid(P_PID, WNOHANG)`, the
//!   zombies among them that are not tracked **and not in the agent's own session**.
//!   Everything this crate starts calls `setsid`, so every orphan of a command or task is in
//!   another session; children that an application embedding the agent starts itself
//!   (`std::process::Command`, without `setsid`) stay in the application's session and are
//!   never touched. (An embedding application whose own children call `setsid` must not
//!   run an agent with orphan reaping on: see `LinkDaemonConfig::reap_orphans`.)
//!
//! Orphans are found when they exit: each exit of a child sends the agent `SIGCHLD`
//! (including the exit of an adopted one, and the adoption of one that is already a
//! zombie), which [`Reaper`] turns into a readable fd for the event loop (a self-pipe
//! written by a `signal-hook` handler: async-signal-safe, and chained with any other
//! SIGCHLD handler of the process).
//!
//! The subreaper attribute belongs to the whole process and stays set once any agent in it
//! has asked for it.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::debug;

/// Pids of children this crate started and has not reaped yet (see the module docs).
static TRACKED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn tracked() -> MutexGuard<'static, Option<HashSet<u32>>> {
    TRACKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a child with `spawn` (which returns its pid) while no scan can run, and tracks it.
pub(crate) fn spawn_tracked<T>(
    spawn: impl FnOnce() -> io::Result<(u32, T)>,
) -> io::Result<(u32, T)> {
    let mut guard = tracked();
    let (pid, rest) = spawn()?;
    guard.get_or_insert_with(HashSet::new).insert(pid);
    Ok((pid, rest))
}

/// Runs `reap` (a wait for tracked child `pid`) and forgets the pid if it reaped it
/// (`Ok(Some(_))`), or if the child is gone anyway (`ECHILD`), in one locked step.
pub(crate) fn reap_tracked<T>(
    pid: u32,
    reap: impl FnOnce() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let mut guard = tracked();
    let result = reap();
    let gone = match &result {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(e) => e.raw_os_error() == Some(libc::ECHILD),
    };
    if gone && let Some(set) = guard.as_mut() {
        set.remove(&pid);
    }
    result
}

/// Whether `pid` is a child this crate started and has not reaped (for tests and logs).
pub fn is_tracked(pid: u32) -> bool {
    tracked().as_ref().is_some_and(|s| s.contains(&pid))
}

/// Makes this process a child subreaper: orphaned descendants are reparented to it instead
/// of to PID 1.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets an attribute of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process is a child subreaper.
pub fn is_subreaper() -> bool {
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int to the pointer given.
    let rc = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            std::ptr::from_mut(&mut flag) as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    rc == 0 && flag != 0
}

/// The subreaper of an event loop: a readable fd whenever a child may have exited.
///
/// Register [`Reaper::fd`] for readability; when it fires call [`Reaper::drain`], then
/// [`reap_orphans`] (and whatever else waits for processes to die, such as
/// [`crate::cgroup::retry_parked`]).
pub struct Reaper {
    rx: UnixStream,
    sig: signal_hook::SigId,
}

impl Reaper {
    /// Makes the process a subreaper and starts listening for `SIGCHLD`.
    pub fn install() -> io::Result<Reaper> {
        become_subreaper()?;
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        let sig = signal_hook::low_level::pipe::register(libc::SIGCHLD, tx)?;
        Ok(Reaper { rx, sig })
    }

    /// Readable after a `SIGCHLD`.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Empties the self-pipe (before scanning, so a signal during the scan wakes the loop
    /// again).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            match (&self.rx).read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.sig);
    }
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").field("fd", &self.fd()).finish()
    }
}

/// Reaps every exited child that is an adopted orphan (see the module docs); returns how
/// many. Never blocks, never touches a tracked child or one in this process's session.
pub fn reap_orphans() -> usize {
    let guard = tracked();
    // Most calls follow the exit of a tracked command, reaped by its owner before this
    // runs, or a stop: with no exited child at all there is nothing to reap, and listing
    // the children (two files per thread) would cost a short-lived agent a tenth of a
    // millisecond.
    if !any_exited_child() {
        return 0;
    }
    let me = std::process::id();
    // SAFETY: getsid(0) reads this process's session id.
    let my_session = unsafe { libc::getsid(0) };
    let mut reaped = 0;
    for pid in children(me) {
        if guard.as_ref().is_some_and(|s| s.contains(&pid)) {
            continue;
        }
        let Some(stat) = Stat::read(pid) else {
            continue;
        };
        if stat.ppid != me || stat.session == my_session || stat.state != b'Z' {
            continue;
        }
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: an all-zero siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid for one of our own children, without blocking, with a valid
        // siginfo pointer. The lock held keeps the pid from being reused meanwhile (it is
        // our unreaped child).
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                raw as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if rc == 0 {
            reaped += 1;
            debug!(pid, "reaped an orphan");
        }
    }
    drop(guard);
    reaped
}

/// Whether any child of this process (of any thread) has exited and is not reaped yet,
/// without reaping it (`WNOWAIT`).
fn any_exited_child() -> bool {
    // SAFETY: an all-zero siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with a valid siginfo pointer; WNOWAIT leaves the child waitable, so
    // no owner's exit status is taken.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed: no child has exited).
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// The pids of this process's children (every thread's).
fn children(me: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return children_by_scan(me);
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read(task.path().join("children")) else {
            continue;
        };
        any = true;
        out.extend(
            text.split(|b| b.is_ascii_whitespace())
                .filter_map(parse_pid),
        );
    }
    if !any {
        // No CONFIG_PROC_CHILDREN: look at every process.
        return children_by_scan(me);
    }
    out
}

fn children_by_scan(me: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| parse_pid(e.file_name().as_encoded_bytes()))
        .filter(|&pid| Stat::read(pid).is_some_and(|s| s.ppid == me))
        .collect()
}

fn parse_pid(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The fields of `/proc/PID/stat` the reaper needs.
struct Stat {
    state: u8,
    ppid: u32,
    session: i32,
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp session …`; comm may hold spaces and parentheses.
        let close = text.iter().rposition(|&b| b == b')')?;
        let rest = text.get(close + 2..)?;
        let mut fields = rest.split(|&b| b == b' ');
        let state = *fields.next()?.first()?;
        let ppid = parse_pid(fields.next()?)?;
        let _pgrp = fields.next()?;
        let session = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        Some(Stat {
            state,
            ppid,
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_this_process() {
        let me = Stat::read(std::process::id()).expect("own stat");
        assert!(matches!(me.state, b'R' | b'S'));
        // SAFETY: getppid/getsid read this process's attributes.
        unsafe {
            assert_eq!(i64::from(me.ppid), i64::from(libc::getppid()));
            assert_eq!(me.session, libc::getsid(0));
        }
    }

    /// The check that lets `reap_orphans` skip its scan sees an exited child, and leaves
    /// it to its owner: the exit status is still there to be taken.
    #[test]
    fn an_exited_child_is_seen_and_not_reaped() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn");
        let start = std::time::Instant::now();
        while !any_exited_child() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(any_exited_child(), "seen twice: not reaped by looking");
        assert_eq!(child.wait().expect("wait").code(), Some(7));
    }

    #[test]
    fn pids_parse() {
        assert_eq!(parse_pid(b"123"), Some(123));
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"self"), None);
    }
}
