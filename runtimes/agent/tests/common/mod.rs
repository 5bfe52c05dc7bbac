//! Helpers shared by the integration tests: a test user and a small poll loop that drives a
//! child to its end the way the agent's event loop would.
#![allow(dead_code)]

use std::os::fd::BorrowedFd;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::event::{PollFd, PollFlags};
use tuppence_agent::fdio::{self, ReadOutcome};
use tuppence_agent::spawn::Child;
use tuppence_agent::{ExitStatus, User};

/// The unprivileged account the tests create (once) when run as root.
pub const TEST_USER: &str = "tuppence-test";

/// The test user's name, creating the account if needed; `None` (after printing why) when the
/// tests cannot have one.
pub fn test_user() -> Option<&'static str> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if !tuppence_agent::user::running_as_root() {
        println!("SKIPPED: not root, cannot create or become {TEST_USER}");
        return None;
    }
    let ready = READY.get_or_init(|| {
        if User::lookup(TEST_USER.as_bytes()).is_ok() {
            return Ok(());
        }
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", TEST_USER])
            .status()
            .map_err(|e| format!("useradd: {e}"))?;
        // 9 = the name exists (another test binary created it meanwhile).
        if !status.success() && status.code() != Some(9) {
            return Err(format!("useradd failed: {status}"));
        }
        User::lookup(TEST_USER.as_bytes())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    match ready {
        Ok(()) => Some(TEST_USER),
        Err(why) => {
            println!("SKIPPED: no test user: {why}");
            None
        }
    }
}

/// The name of the account the tests run as (root when they can create users).
pub fn me() -> String {
    let user = User::current().expect("the current user has a passwd entry");
    String::from_utf8_lossy(user.name()).into_owned()
}

/// What a command produced.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

fn poll(fds: &mut [PollFd<'_>], ms: i64) {
    let timeout = rustix::time::Timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    match rustix::event::poll(fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => panic!("poll: {e}"),
    }
}

/// Drives a pipes-mode child: feeds `input` to stdin (then closes it), collects stdout and
/// stderr until EOF and reaps it. Panics after `limit`.
pub fn run(child: &mut Child, input: &[u8], limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    let mut written = 0;
    let (mut out, mut err) = (BytesMut::new(), BytesMut::new());
    let (mut out_eof, mut err_eof) = (false, false);
    if input.is_empty() {
        child.close_stdin();
    }
    loop {
        if out_eof && err_eof && child.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "command did not finish in {limit:?}"
        );
        {
            let mut fds = Vec::new();
            let stdin = child.stdin_fd();
            if let Some(fd) = stdin {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::OUT));
            }
            for fd in [child.stdout_fd(), child.stderr_fd()].into_iter().flatten() {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
            }
            fds.push(PollFd::from_borrowed_fd(child.pidfd(), PollFlags::IN));
            poll(&mut fds, 100);
        }
        if let Some(fd) = child.stdin_fd() {
            match fdio::write_some(fd, &input[written..]) {
                Ok(Some(n)) => written += n,
                Ok(None) => {}
                Err(_) => written = input.len(),
            }
            if written == input.len() {
                child.close_stdin();
            }
        }
        if !out_eof {
            out_eof = drain(child.stdout_fd(), &mut out);
            if out_eof {
                child.close_stdout();
            }
        }
        if !err_eof {
            err_eof = drain(child.stderr_fd(), &mut err);
            if err_eof {
                child.close_stderr();
            }
        }
    }
    Output {
        stdout: out.to_vec(),
        stderr: err.to_vec(),
        status: child.try_wait().expect("try_wait").expect("reaped"),
    }
}

/// Reads until it would block; true at EOF.
fn drain(fd: Option<BorrowedFd<'_>>, buf: &mut BytesMut) -> bool {
    let Some(fd) = fd else { return true };
    loop {
        match fdio::read_into(fd, buf, 64 * 1024).expect("read") {
            ReadOutcome::Data(_) => continue,
            ReadOutcome::Eof => return true,
            ReadOutcome::WouldBlock => return false,
        }
    }
}

/// Drives a tty-mode child: writes `input` to the master, collects everything until the pty
/// reports its end, and reaps the child.
pub fn run_tty(child: &mut Child, input: &[u8], limit: Duration) -> (Vec<u8>, ExitStatus) {
    let deadline = Instant::now() + limit;
    let mut written = 0;
    let mut out = BytesMut::new();
    let mut eof = false;
    loop {
        if eof && child.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tty command did not finish in {limit:?}"
        );
        if let Some(master) = child.stdout_fd() {
            let mut flags = PollFlags::IN;
            if written < input.len() {
                flags |= PollFlags::OUT;
            }
            let mut fds = [
                PollFd::from_borrowed_fd(master, flags),
                PollFd::from_borrowed_fd(child.pidfd(), PollFlags::IN),
            ];
            poll(&mut fds, 100);
        } else {
            let mut fds = [PollFd::from_borrowed_fd(child.pidfd(), PollFlags::IN)];
            poll(&mut fds, 100);
        }
        if written < input.len()
            && let Some(master) = child.stdin_fd()
            && let Ok(Some(n)) = fdio::write_some(master, &input[written..])
        {
            written += n;
        }
        if !eof && let Some(master) = child.stdout_fd() {
            loop {
                match fdio::read_pty_into(master, &mut out, 64 * 1024).expect("read pty") {
                    ReadOutcome::Data(_) => continue,
                    ReadOutcome::Eof => {
                        eof = true;
                        break;
                    }
                    ReadOutcome::WouldBlock => break,
                }
            }
        }
    }
    (
        out.to_vec(),
        child.try_wait().expect("try_wait").expect("reaped"),
    )
}

/// Waits until an fd is readable; false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        poll(&mut fds, 50);
        if fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// True when the process is gone or a zombie.
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(text) => {
            let close = text.iter().rposition(|&b| b == b')').unwrap_or(0);
            text.get(close + 2) == Some(&b'Z')
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
