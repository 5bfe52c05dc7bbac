//! Helpers shared by the `exec:`, `ssh:` and `chroot:` tests (issue #17).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tuppence");

/// The documented exit statuses (see `tuppence --help`).
pub const REMOTE_FAILURE: i32 = 201;
pub const CONNECTION: i32 = 202;
pub const USAGE: i32 = 204;

/// A failure must show within this long; passing runs take a fraction of it.
pub const LIMIT: Duration = Duration::from_secs(30);

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("tuppence-reach-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `exec:` of this build's agent on stdio, in either dialect.
pub fn exec_target(legacy: bool) -> String {
    format!(
        "{}exec:{BIN} serve --stdio",
        if legacy { "legacy+" } else { "" }
    )
}

pub fn tuppence() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TUPPENCE_TARGET").env_remove("TUPPENCE_LOG");
    c
}

pub fn run(args: &[&str]) -> Output {
    let mut child = tuppence()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tuppence");
    finish(&mut child, args)
}

/// Runs the binary with `stdin` as its input; output collected.
pub fn run_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = tuppence()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tuppence");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = finish(&mut child, args);
    let _ = writer.join();
    out
}

/// Collects a child's output, failing the test (instead of hanging it) after [`LIMIT`].
pub fn finish(child: &mut Child, args: &[&str]) -> Output {
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_exit(child, LIMIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tuppence {args:?} did not end within {LIMIT:?}");
    };
    Output {
        status,
        stdout: out.join().expect("stdout thread"),
        stderr: err.join().expect("stderr thread"),
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits (bounded) for `child` to exit; `None` if it did not.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until `pid` no longer runs.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// True when running as root (chroot, sshd and other users need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a test that cannot run here must fail instead of being skipped: in CI
/// (`CI=true`), where `.ci/run` installs what the tests need, or when `var` is `1`.
pub fn required(var: &str) -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var(var).is_ok_and(|v| v == "1")
}

/// Prints `SKIPPED: reason` and returns, or fails when the test is required.
#[macro_export]
macro_rules! skip {
    ($var:expr, $($why:tt)*) => {{
        let why = format!($($why)*);
        if $crate::reach_support::required($var) {
            panic!("cannot run, and {} or CI=true requires it: {why}", $var);
        }
        println!("SKIPPED: {why}");
        return;
    }};
}
