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
//!
//! # Starting in a cgroup
//!
//! A command with its own cgroup (see [`crate::cgroup`]) is started with
//! `clone3(CLONE_INTO_CGROUP)`, so it is born in its cgroup. The alternative, the child
//! writing itself into the cgroup's `cgroup.procs` before `exec`, takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period:
//! measured here on a busy 2-core machine, a `/bin/sh -c true` went from about 0.8 ms to
//! about 4 ms that way, and stayed at 0.85 ms with `CLONE_INTO_CGROUP`. `clone3` has no
//! function-pointer form like glibc's `clone`: with `CLONE_VM` the child returns from the
//! system call on its new stack, so a few lines of assembly ([`clone3_vm`], x86_64 and
//! aarch64) call the child function right there. Elsewhere, or where `clone3` is refused
//! (`ENOSYS` from a seccomp filter, kernels before 5.7), the child writes itself into the
//! cgroup instead.

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
    /// The directory of the cgroup to start the child in (see the module docs); its
    /// `cgroup.procs` is in `setup` for the fallback.
    cgroup_dir: Option<RawFd>,
}

impl Prepared {
    pub(super) fn new(
        path: &'static CStr,
        args: Vec<CString>,
        env: Vec<CString>,
        stdio: [RawFd; 3],
        setup: ChildSetup,
        cgroup_dir: Option<RawFd>,
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
            cgroup_dir,
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
/// Whether `clone3(CLONE_INTO_CGROUP)` is believed to work here.
pub(super) fn clone3_usable() -> bool {
    clone3::usable()
}

pub(super) fn spawn(prepared: Prepared, mode: Mode) -> io::Result<(u32, Option<Pending>)> {
    if prepared.argv.last() != Some(&ptr::null()) || prepared.envp.last() != Some(&ptr::null()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The child moves these onto 0, 1 and 2 in order: a source below 3 could be
    // overwritten by an earlier move.
    if prepared.stdio.iter().any(|&fd| fd < 3) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let mut block = Box::new(Block {
        prepared,
        stack: Stack::new()?,
        error: AtomicI32::new(0),
        in_use: AtomicI32::new(1),
    });
    let flags = match mode {
        Mode::Wait => libc::CLONE_VM | libc::CLONE_VFORK,
        Mode::NoWait => libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID,
    };
    let pid = {
        let _blocked = BlockSignals::new();
        let mut pid = None;
        if let Some(dir) = block.prepared.cgroup_dir.filter(|_| clone3::usable()) {
            // Born in its cgroup: the child must not move itself again.
            let procs = block.prepared.setup.cgroup_procs.take();
            match clone3::spawn(&block, flags, dir) {
                // Without a `cgroup.procs` to write the caller wants clone3 or nothing (a
                // cgroup not yet known to be usable: see `spawn_with`).
                Err(e) if clone3::unsupported(&e) && procs.is_none() => return Err(e),
                Err(e) if clone3::unsupported(&e) => {
                    block.prepared.setup.cgroup_procs = procs;
                }
                other => pid = Some(other?),
            }
        }
        match pid {
            Some(pid) => pid,
            None => {
                // SAFETY: `child` runs on the block's stack and reads only the block, which
                // stays alive and unchanged while the child may use it: with CLONE_VFORK
                // this thread is suspended until the child has exec'd or exited; without
                // it, the block goes to the caller inside `Pending`, which keeps it until
                // `in_use` is cleared by the kernel at that moment. SIGCHLD makes it an
                // ordinary child of this process.
                let pid = unsafe {
                    libc::clone(
                        child,
                        block.stack.top(),
                        flags | libc::SIGCHLD,
                        ptr::from_ref::<Block>(&block).cast_mut().cast::<c_void>(),
                        ptr::null_mut::<libc::pid_t>(),
                        ptr::null_mut::<c_void>(),
                        block.in_use.as_ptr(),
                    )
                };
                if pid < 0 {
                    return Err(io::Error::last_os_error());
                }
                pid
            }
        }
    };
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

/// `clone3` with `CLONE_VM` (see the module docs).
pub(super) mod clone3 {
    use std::ffi::{c_int, c_void};
    use std::io;
    use std::os::fd::RawFd;
    use std::ptr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{Block, child};

    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    /// The kernel's `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// Cleared once the kernel said it cannot do it (see [`unsupported`]).
    static USABLE: AtomicBool =
        AtomicBool::new(cfg!(any(target_arch = "x86_64", target_arch = "aarch64")));

    pub(super) fn usable() -> bool {
        USABLE.load(Ordering::Relaxed)
    }

    /// Makes every later spawn use the fallback (tests of that path).
    #[cfg(test)]
    pub(crate) fn disable() {
        USABLE.store(false, Ordering::Relaxed);
    }

    /// `clone3` itself or `CLONE_INTO_CGROUP` is unknown here (or filtered): use `clone`
    /// and let the child move itself, now and from now on.
    pub(super) fn unsupported(e: &io::Error) -> bool {
        let no = matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM)
        );
        if no {
            USABLE.store(false, Ordering::Relaxed);
            tracing::debug!(error = %e, "clone3(CLONE_INTO_CGROUP) unavailable; children move themselves into their cgroups");
        }
        no
    }

    /// Starts `child(block)` on the block's stack, in the cgroup whose directory is
    /// `cgroup`, with `flags` (`CLONE_VM` and `CLONE_VFORK` or `CLONE_CHILD_CLEARTID`).
    pub(super) fn spawn(block: &Block, flags: c_int, cgroup: RawFd) -> io::Result<libc::pid_t> {
        let arg = ptr::from_ref::<Block>(block).cast_mut().cast::<c_void>();
        // SAFETY: as for `libc::clone` in `spawn`: the child runs `child` on the block's
        // stack (its top is 16-byte aligned) and reads only the block, which the caller
        // keeps alive and unchanged while the child may use it.
        unsafe {
            start(
                &block.stack,
                flags,
                cgroup,
                block.in_use.as_ptr(),
                child,
                arg,
            )
        }
    }

    /// Starts a child that exits at once, in the cgroup whose directory is `cgroup`, and
    /// reaps it: whether commands can be started there (the kernel checks the same
    /// permissions as for moving a process in). `Ok(false)`: `clone3` cannot be used here,
    /// ask another way.
    pub(crate) fn probe(cgroup: RawFd) -> io::Result<bool> {
        extern "C" fn exit_at_once(_: *mut c_void) -> c_int {
            // SAFETY: _exit ends this child process only, running nothing of the parent's.
            unsafe { libc::_exit(0) }
        }
        if !usable() {
            return Ok(false);
        }
        let stack = super::Stack::new()?;
        let pid = {
            let _blocked = super::BlockSignals::new();
            // SAFETY: the child runs `exit_at_once` on its own stack and touches nothing;
            // CLONE_VFORK keeps this thread (and `stack`) waiting until it has exited.
            unsafe {
                start(
                    &stack,
                    libc::CLONE_VM | libc::CLONE_VFORK,
                    cgroup,
                    ptr::null_mut(),
                    exit_at_once,
                    ptr::null_mut(),
                )
            }
        };
        let pid = match pid {
            Err(e) if unsupported(&e) => return Ok(false),
            other => other?,
        };
        let mut status = 0;
        loop {
            // SAFETY: waitpid on the child just started, with a valid status pointer.
            if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// `clone3(flags | CLONE_INTO_CGROUP)` running `f(arg)` on `stack`; `child_tid` is
    /// cleared by the kernel when the child execs or exits (with `CLONE_CHILD_CLEARTID`).
    ///
    /// # Safety
    ///
    /// As for [`clone3_vm`]: `stack` unused while the child runs, `f` safe to run there with
    /// `arg` in a process sharing this memory, `child_tid` valid (or null) meanwhile.
    unsafe fn start(
        stack: &super::Stack,
        flags: c_int,
        cgroup: RawFd,
        child_tid: *mut i32,
        f: extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> io::Result<libc::pid_t> {
        let (base, size) = stack.region();
        let mut args = CloneArgs {
            flags: u64::from(flags.unsigned_abs()) | CLONE_INTO_CGROUP,
            child_tid: child_tid as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: base as u64,
            stack_size: size as u64,
            cgroup: u64::from(cgroup.unsigned_abs()),
            ..CloneArgs::default()
        };
        // SAFETY: per this function's contract.
        let rc = unsafe { clone3_vm(&mut args, f, arg) };
        if rc < 0 {
            let errno = i32::try_from(rc.unsigned_abs()).unwrap_or(libc::EINVAL);
            return Err(io::Error::from_raw_os_error(errno));
        }
        libc::pid_t::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))
    }

    /// The raw system call; in the child, calls `f(arg)` on the new stack and exits with
    /// its result should it return. Returns the child's pid or `-errno` in the parent.
    ///
    /// # Safety
    ///
    /// `args` must describe a stack that is not in use, 16-byte aligned at its top, and
    /// `f` must be safe to run there with `arg` in a process sharing this memory.
    #[cfg(target_arch = "x86_64")]
    unsafe fn clone3_vm(
        args: &mut CloneArgs,
        f: extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> isize {
        let rc: isize;
        // SAFETY: per this function's contract. In the parent the block only makes the
        // system call (rcx and r11 are clobbered by `syscall`); in the child (rax = 0) it
        // never returns: it calls `f` on the new stack, then `exit`.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, 60",
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 as isize => rc,
                in("rdi") ptr::from_mut(args),
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") f,
                in("r13") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        rc
    }

    /// See the x86_64 version.
    ///
    /// # Safety
    ///
    /// As for the x86_64 version.
    #[cfg(target_arch = "aarch64")]
    unsafe fn clone3_vm(
        args: &mut CloneArgs,
        f: extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> isize {
        let rc: isize;
        // SAFETY: per this function's contract. In the parent the block only makes the
        // system call; in the child (x0 = 0) it never returns: it calls `f` on the new
        // stack, then `exit`.
        unsafe {
            std::arch::asm!(
                "svc #0",
                "cbnz x0, 2f",
                "mov x0, x21",
                "blr x20",
                "mov x8, #93",
                "svc #0",
                "brk #0",
                "2:",
                inlateout("x0") ptr::from_mut(args) => rc,
                in("x1") std::mem::size_of::<CloneArgs>(),
                in("x8") libc::SYS_clone3,
                in("x20") f,
                in("x21") arg,
                options(nostack),
            );
        }
        rc
    }

    /// Never called: [`USABLE`] is false on other architectures.
    ///
    /// # Safety
    ///
    /// None needed.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe fn clone3_vm(
        _args: &mut CloneArgs,
        _f: extern "C" fn(*mut c_void) -> c_int,
        _arg: *mut c_void,
    ) -> isize {
        -(libc::ENOSYS as isize)
    }
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

    /// The usable part (above the guard page) as `clone3` wants it: lowest address and
    /// size. Its top is page-aligned.
    fn region(&self) -> (*mut c_void, usize) {
        let page = self.len - STACK;
        (self.base.cast::<u8>().wrapping_add(page).cast(), STACK)
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
