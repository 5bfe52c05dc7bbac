//! What the child does between `fork` (the `clone`) and `exec`: a new session, the
//! controlling tty, the user's groups, gid and uid, the working directory, default signal
//! dispositions, close-on-exec for every inherited fd. Async-signal-safe only.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::process::{Gid, Uid};

use crate::cgroup::{self};

/// Everything the child does between fork and exec, prepared by the parent.
pub(super) struct ChildSetup {
    /// `cgroup.procs` of the command's cgroup, entered first of all (see
    /// [`ChildSetup::enter_cgroup`]).
    pub(super) cgroup_procs: Option<std::os::fd::RawFd>,
    pub(super) tty: bool,
    pub(super) switch: bool,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) groups: Vec<Gid>,
    pub(super) home: Option<CString>,
}

impl ChildSetup {
    /// Runs in the child before anything else (before its stdio is moved onto 0, 1 and 2,
    /// which could overwrite the fd): enters the command's cgroup, so that nothing the
    /// command starts is ever outside it. Async-signal-safe.
    pub(super) fn enter_cgroup(&self) -> io::Result<()> {
        match self.cgroup_procs {
            Some(fd) => cgroup::enter(fd),
            None => Ok(()),
        }
    }

    /// Runs in the child. Async-signal-safe only: no allocation, no locks, raw syscalls.
    pub(super) fn run(&self) -> io::Result<()> {
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
pub(super) fn mark_fds_cloexec_by_scan() -> io::Result<()> {
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

pub(super) fn parse_fd(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 9 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        name.iter()
            .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0')),
    )
}
