//! Starting a program with `clone(CLONE_VM …)`, as `posix_spawn` does, but with the agent's
//! own child setup (setsid, controlling tty, user switch, cwd, signals, fds).
//!
//! Why not `std::process::Command` with a `pre_exec` hook: a hook forces std's `fork`
//! path, and `fork` copies the agent's page tables and write-protects its memory, so that
//! after every spawn the agent takes a page fault on each page it writes again. Measured
//! end to end (benches/e2e), a `true` round trip through the agent cost 1.5× a bare
//! `posix_spawn` of `/bin/sh -c true`, and `fork` accounted for about 200 µs of it.
//!
//! With `CLONE_VM` the child runs on the agent's memory until it calls `execve` (or exits).
//! Two ways to wait for that:
//!
//! * [`Mode::Wait`] adds `CLONE_VFORK`: the calling thread is suspended until then, like
//!   `posix_spawn` (and like std, which waited for its exec-status pipe).
//! * [`Mode::NoWait`] returns at once, so a loop that starts many commands is not held up
//!   by each child's setup and exec (on a busy machine, most of the agent's time when 1000
//!   commands start at once). Everything the child reads lives in a heap block that the
//!   [`Pending`] handle keeps alive until the kernel reports, through
//!   `CLONE_CHILD_CLEARTID`, that the child no longer uses this memory; a failure of the
//!   setup or of `execve` is learnt when the child has exited ([`Pending::error`]).
//!
//! Rules for the child: it only reads what the parent prepared, makes system calls (no
//! allocation, no locks; libc wrappers only touch `errno`, and only when a call fails),
//! and reports a failure by storing the errno in the block before `_exit(127)`. All
//! signals are blocked around `clone`, so no handler of the agent can run on the child;
//! the child's setup resets every disposition to the default before it unblocks them.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use super::ChildSetup;

/// The child's stack. Its setup needs a few KiB (the `/proc/self/fd` fallback has a
/// 2 KiB buffer); the rest is margin (untouched pages cost no memory). A guard page below it turns an overflow into a
/// fault instead of a write into the agent's memory.
const STACK: usize = 64 * 1024;

/// Whether [`spawn`] returns before or after the child's `execve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Wait,
    NoWait,
}

/// Everything the child reads: the program, its argv and envp, its stdio and setup.
pub(super) struct Prepared {
    path: &'static CStr,
    // Owners of the strings the pointer arrays point into (a CString's bytes stay put
    // when the CString moves).
    _strings: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// The fds to become the child's 0, 1 and 2 (all ≥ 3, see [`spawn`]).
    stdio: [RawFd; 3],
    setup: ChildSetup,
}

impl Prepared {
    pub(super) fn new(
        path: &'static CStr,
        args: Vec<CString>,
        env: Vec<CString>,
        stdio: [RawFd; 3],
        setup: ChildSetup,
    ) -> Prepared {
        let argv = std::iter::once(path.as_ptr())
            .chain(args.iter().map(|a| a.as_ptr()))
            .chain(std::iter::once(ptr::null()))
            .collect();
        let envp = env
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect();
        let mut strings = args;
        strings.extend(env);
        Prepared {
            path,
            _strings: strings,
            argv,
            envp,
            stdio,
            setup,
        }
    }
}

/// What the parent and the child share.
struct Block {
    prepared: Prepared,
    stack: Stack,
    /// 0, or the errno of the step that failed in the child.
    error: AtomicI32,
    /// Non-zero until the child releases the agent's memory: the kernel zeroes it when the
    /// child execs or exits (`CLONE_CHILD_CLEARTID`).
    in_use: AtomicI32,
}

// SAFETY: the raw pointers in `Prepared` point into strings the block owns; nothing in it
// is tied to the thread that made it.
unsafe impl Send for Block {}
// SAFETY: shared access only reads `prepared` and uses the atomics.
unsafe impl Sync for Block {}

/// A child started with [`Mode::NoWait`] that may still be using the block.
pub(super) struct Pending {
    block: Box<Block>,
}

impl Pending {
    /// The child has exec'd or exited: it no longer reads the block.
    pub(super) fn settled(&self) -> bool {
        self.block.in_use.load(Ordering::Acquire) == 0
    }

    /// Why the child could not exec (0: it did, or has not got there yet). Final once
    /// the child has exited.
    pub(super) fn error(&self) -> i32 {
        self.block.error.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("settled", &self.settled())
            .field("error", &self.error())
            .finish()
    }
}

/// Starts the child. With [`Mode::Wait`], returns once it has called `execve`
/// successfully; a failure (of the setup or of `execve`) has reaped the child and is the
/// error. With [`Mode::NoWait`], returns at once with the [`Pending`] block, which must
/// not be dropped before [`Pending::settled`] (or before the child has been reaped).
pub(super) fn spawn(prepared: Prepared, mode: Mode) -> io::Result<(u32, Option<Pending>)> {
    if prepared.argv.last() != Some(&ptr::null()) || prepared.envp.last() != Some(&ptr::null()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The child moves these onto 0, 1 and 2 in order: a source below 3 could be
    // overwritten by an earlier move.
    if prepared.stdio.iter().any(|&fd| fd < 3) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let block = Box::new(Block {
        prepared,
        stack: Stack::new()?,
        error: AtomicI32::new(0),
        in_use: AtomicI32::new(1),
    });
    let flags = match mode {
        Mode::Wait => libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        Mode::NoWait => libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
    };
    let pid = {
        let _blocked = BlockSignals::new();
        // SAFETY: `child` runs on the block's stack and reads only the block, which stays
        // alive and unchanged while the child may use it: with CLONE_VFORK this thread is
        // suspended until the child has exec'd or exited; without it, the block goes to
        // the caller inside `Pending`, which keeps it until `in_use` is cleared by the
        // kernel at that moment. SIGCHLD makes it an ordinary child of this process.
        unsafe {
            libc::clone(
                child,
                block.stack.top(),
                flags,
                ptr::from_ref::<Block>(&block).cast_mut().cast::<c_void>(),
                ptr::null_mut::<libc::pid_t>(),
                ptr::null_mut::<c_void>(),
                block.in_use.as_ptr(),
            )
        }
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid_u32 = u32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))?;
    if mode == Mode::NoWait {
        return Ok((pid_u32, Some(Pending { block })));
    }
    let error = block.error.load(Ordering::Acquire);
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
    Ok((pid_u32, None))
}

/// The child: stdio, setup, exec. Never returns.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the block the parent passed, alive (see `spawn`) until this process
    // execs or exits.
    let block = unsafe { &*arg.cast_const().cast::<Block>() };
    let errno = match run(&block.prepared) {
        Ok(never) => match never {},
        Err(e) => e.raw_os_error().filter(|&n| n != 0).unwrap_or(libc::EINVAL),
    };
    block.error.store(errno, Ordering::Release);
    // SAFETY: _exit ends this process only (it is not a thread of the agent) without
    // running anything of the agent's (no atexit handlers, no stdio flush).
    unsafe { libc::_exit(127) }
}

fn run(p: &Prepared) -> io::Result<std::convert::Infallible> {
    p.setup.enter_cgroup()?;
    for (target, &src) in (0..).zip(p.stdio.iter()) {
        // dup2 clears FD_CLOEXEC on the copy; the sources are ≥ 3 (checked by the parent).
        loop {
            // SAFETY: dup2 on plain fd numbers, in this process's own fd table.
            if unsafe { libc::dup2(src, target) } >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
    p.setup.run()?;
    // SAFETY: path, argv and envp are null-terminated arrays of C strings in the block.
    unsafe { libc::execve(p.path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
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
