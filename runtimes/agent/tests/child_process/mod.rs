//! Running part of a test binary in a child process (its ignored "process" test), so that
//! its memory, fds and children are its own: shared by the link and sniff harnesses.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};

/// Starts this test binary again, running only its ignored test `test`, with `env` set.
pub fn spawn_self(test: &str, env: &[(&str, &OsStr)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(Stdio::null());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn().unwrap()
}

/// In the child: die with the test thread that started it, whatever happens to that.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// In the child: lowers its fd limit (soft and hard) to `n`.
pub fn limit_fds(n: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// A field of /proc/PID/status in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
