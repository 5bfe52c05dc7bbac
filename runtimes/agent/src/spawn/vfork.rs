//! Starting a program with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does, but with
//! the agent's own child setup (setsid, controlling tty, user switch, cwd, signals, fds).
//!
//! Why not `std::process::Command` with a `pre_exec` hook: a hook forces std's `fork`
//! path, and `fork` copies the agent's page tables and write-protects its memory, so that
//! after every spawn the agent takes a page fault on each page it writes again. Measured
//! end to end (benches/e2e), a `true` round trip through the agent cost 1.46× a bare
//! `posix_spawn` of `/bin/sh -c true`, and `fork` alone accounted for about 190 µs of it.
//! With `CLONE_VM` the child borrows the agent's memory until it calls `execve` (or
//! exits), and the agent's thread is suspended meanwhile (`CLONE_VFORK`), exactly as long
//! as std waited for its exec-status pipe.
//!
//! Rules for the child, which runs on the agent's memory: it only reads what the parent
//! prepared, makes raw system calls (no allocation, no locks, no `errno`-dependent libc
//! state beyond reading it right after a failing call), and reports a failure by storing
//! the errno in the shared [`Shared::error`] before `_exit(127)`. All signals are blocked
//! around `clone`, so no handler of the agent can run on the child; the child's setup
//! resets every disposition to the default before it unblocks them.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use super::ChildSetup;

/// The child's stack. Its setup needs a few KiB (the `/proc/self/fd` fallback has a
/// 2 KiB buffer); the rest is margin. A guard page below it turns an overflow into a
/// fault instead of a write into the agent's memory.
const STACK: usize = 128 * 1024;

/// Everything the child needs, prepared by the parent.
pub(super) struct Exec<'a> {
    pub path: &'a CStr,
    /// Null-terminated.
    pub argv: &'a [*const c_char],
    /// Null-terminated.
    pub envp: &'a [*const c_char],
    /// The fds to become the child's 0, 1 and 2 (all ≥ 3, see [`spawn`]).
    pub stdio: [RawFd; 3],
    pub setup: &'a ChildSetup,
}

struct Shared<'a> {
    exec: &'a Exec<'a>,
    /// 0, or the errno of the step that failed in the child.
    error: AtomicI32,
}

/// Starts the child and returns its pid once it has called `execve` successfully. On
/// failure (of `clone`, of the setup or of `execve`) the child has been reaped and the
/// error is returned.
pub(super) fn spawn(exec: &Exec<'_>) -> io::Result<u32> {
    if exec.argv.last() != Some(&ptr::null()) || exec.envp.last() != Some(&ptr::null()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The child moves these onto 0, 1 and 2 in order: a source below 3 could be
    // overwritten by an earlier move (std keeps 0–2 open, so pipes and ptys are ≥ 3).
    if exec.stdio.iter().any(|&fd| fd < 3) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let stack = Stack::new()?;
    let shared = Shared {
        exec,
        error: AtomicI32::new(0),
    };
    let pid = {
        let _blocked = BlockSignals::new();
        // SAFETY: `child` runs on `stack` (ours until the call returns: with CLONE_VFORK
        // this thread is suspended until the child has exec'd or exited) and only reads
        // `shared`, which outlives the call for the same reason. SIGCHLD makes it an
        // ordinary child of this process (reaped through its pidfd or waitpid).
        unsafe {
            libc::clone(
                child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                ptr::from_ref(&shared).cast_mut().cast::<c_void>(),
            )
        }
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let error = shared.error.load(Ordering::Acquire);
    if error != 0 {
        // The child has exited (CLONE_VFORK returned because of that): reap it.
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child, with a valid status pointer.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        return Err(io::Error::from_raw_os_error(error));
    }
    u32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))
}

/// The child: stdio, setup, exec. Never returns.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Shared` the parent passed, alive while the parent is
    // suspended, which lasts until this process execs or exits.
    let shared = unsafe { &*arg.cast_const().cast::<Shared<'_>>() };
    let errno = match run(shared.exec) {
        Ok(never) => match never {},
        Err(e) => e.raw_os_error().filter(|&n| n != 0).unwrap_or(libc::EINVAL),
    };
    shared.error.store(errno, Ordering::Release);
    // SAFETY: _exit ends this process only (it is not a thread of the agent) without
    // running anything of the agent's (no atexit handlers, no stdio flush).
    unsafe { libc::_exit(127) }
}

fn run(exec: &Exec<'_>) -> io::Result<std::convert::Infallible> {
    for (target, &src) in (0..).zip(exec.stdio.iter()) {
        // dup2 clears FD_CLOEXEC on the copy; the sources are ≥ 3 (checked by the parent).
        loop {
            // SAFETY: dup2 on plain fd numbers.
            if unsafe { libc::dup2(src, target) } >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
    exec.setup.run()?;
    // SAFETY: path, argv and envp are null-terminated arrays of C strings the parent keeps
    // alive (it is suspended until this call succeeds).
    unsafe { libc::execve(exec.path.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr()) };
    Err(io::Error::last_os_error())
}

/// An anonymous mapping with a guard page at the bottom.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the first page of the mapping we own.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut c_void {
        let end = self.base.cast::<u8>().wrapping_add(self.len);
        end.wrapping_sub(end as usize % 16).cast()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Blocks every signal for the calling thread until dropped.
struct BlockSignals {
    old: libc::sigset_t,
}

impl BlockSignals {
    fn new() -> BlockSignals {
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only write the
        // sets passed to them.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            BlockSignals { old }
        }
    }
}

impl Drop for BlockSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, ptr::null_mut()) };
    }
}
