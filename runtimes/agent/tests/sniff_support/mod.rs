//! Helpers for the sniff integration tests: an agent server on a unix socket in a thread,
//! test-only task types that run shell snippets, a raw frame connection, and /proc checks.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tuppence::sniff::{
    Agent, AgentConfig, Answer, FrameDecoder, Outcome, ProcessSpec, Request, TaskFinish, TaskId,
    TaskOutput, TaskPlan, TaskType, code,
};
use tuppence_agent::sniff::{SniffDaemon, SniffDaemonConfig, StopHandle};
use tuppence_transport::{Listener, Target};

#[path = "../child_process/mod.rs"]
mod child_process;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("tuppence-sniff-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test-only task type: runs its parameters as a `/bin/sh -c` script and answers `O` with the
/// raw output; failures are the agent's shared codes (`T`, `L`, `Q`) or `F` (spawn) / `P`
/// (read).
#[derive(Clone, Debug)]
pub struct Shell {
    pub type_byte: u8,
    pub timeout: Option<Duration>,
    pub output_cap: usize,
    pub program: &'static str,
}

impl Shell {
    pub fn new(type_byte: u8) -> Shell {
        Shell {
            type_byte,
            timeout: None,
            output_cap: tuppence::sniff::DEFAULT_OUTPUT_CAP,
            program: "/bin/sh",
        }
    }
}

#[derive(Debug)]
struct RawFinish;

impl TaskFinish for RawFinish {
    fn finish(&self, output: TaskOutput) -> Outcome {
        match output {
            TaskOutput::Complete(out) => Outcome::success(out),
            TaskOutput::SpawnFailed => Outcome::failure_code(b'F'),
            TaskOutput::ReadFailed => Outcome::failure_code(b'P'),
            TaskOutput::TimedOut => Outcome::failure_code(code::TIMEOUT),
            TaskOutput::OutputTooLarge => Outcome::failure_code(code::OUTPUT_TOO_LARGE),
            TaskOutput::TooManyTasks => Outcome::failure_code(code::TOO_MANY_TASKS),
            _ => Outcome::failure_code(b'?'),
        }
    }
}

impl TaskType for Shell {
    fn type_byte(&self) -> u8 {
        self.type_byte
    }

    fn start(&self, params: Bytes) -> TaskPlan {
        let mut spec = ProcessSpec::new(
            self.program,
            vec![
                Bytes::from_static(b"-c"),
                params,
                Bytes::from_static(b"test-task"),
            ],
        );
        spec.timeout = self.timeout;
        spec.output_cap = self.output_cap;
        spec.env
            .push((Bytes::from_static(b"SNIFF_TEST"), Bytes::from_static(b"1")));
        TaskPlan::Run {
            spec,
            finish: Box::new(RawFinish),
        }
    }
}

/// The agent every test server uses: the built-ins plus `s` (shell), `t` (shell with a
/// 300 ms timeout), `l` (shell with a 1000-byte output cap) and `x` (a program that does not
/// exist).
pub fn test_agent() -> Agent {
    let mut a = Agent::new(AgentConfig::default());
    a.register(Box::new(Shell::new(b's')));
    a.register(Box::new(Shell {
        timeout: Some(Duration::from_millis(300)),
        ..Shell::new(b't')
    }));
    a.register(Box::new(Shell {
        output_cap: 1000,
        ..Shell::new(b'l')
    }));
    a.register(Box::new(Shell {
        program: "/nonexistent/tuppence-test-program",
        ..Shell::new(b'x')
    }));
    a
}

/// An agent server on a unix socket, served by a thread; stopped and joined on drop.
pub struct Server {
    pub dir: TempDir,
    pub target: Target,
    pub path: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(test_agent)
    }

    pub fn start_with(new_agent: fn() -> Agent) -> Server {
        let dir = TempDir::new("srv");
        let path = dir.path("agent.sock");
        let listener = Listener::unix(&path, 0o600).expect("listen");
        let mut server =
            SniffDaemon::new(listener, new_agent, &SniffDaemonConfig::default()).expect("server");
        let stop = server.stop_handle().expect("stop handle");
        let thread = std::thread::spawn(move || server.run().expect("serve"));
        let target = format!("unix:{}", path.display()).parse().expect("target");
        Server {
            dir,
            target,
            path,
            stop,
            thread: Some(thread),
        }
    }

    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection speaking frames by hand, to check exact wire answers.
pub struct RawConn {
    pub stream: UnixStream,
    decoder: FrameDecoder,
}

impl RawConn {
    pub fn connect(path: &Path) -> RawConn {
        let stream = UnixStream::connect(path).expect("connect");
        RawConn {
            stream,
            decoder: FrameDecoder::default(),
        }
    }

    pub fn send(&mut self, id: u32, task_type: u8, params: &[u8]) {
        let req = Request {
            id: TaskId::from(id),
            task_type,
            params: Bytes::copy_from_slice(params),
        };
        let mut msg = BytesMut::new();
        req.encode(&mut msg);
        let mut frame = (msg.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&msg);
        self.stream.write_all(&frame).expect("write");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next answer, or `None` if the agent closed the stream; panics after `limit`.
    pub fn answer(&mut self, limit: Duration) -> Option<Answer> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.decoder.next_frame().expect("framing") {
                return Some(Answer::decode(m).expect("answer"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no answer within {limit:?}");
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            // An in-process agent's SIGCHLD handler: a socket read with a
                            // timeout is never restarted (signal(7)).
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Asserts the next answer's id, status byte and data.
    pub fn expect(&mut self, id: u32, status: u8, data: &[u8]) {
        let a = self
            .answer(Duration::from_secs(20))
            .expect("stream closed early");
        assert_eq!(
            (a.id, a.status.byte(), &a.data[..]),
            (TaskId::from(id), status, data),
            "got {a:?}"
        );
    }
}

/// `/proc/PID/stat` fields after the command name: (state, pgrp, session).
pub fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some((state, pgrp, session))
}

/// Live (non-zombie) processes in process group `pgid`. Zombies are not counted: killed
/// grandchildren are reparented to init, whose reaping is not ours to test (some container
/// inits never reap).
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((s, g, _)) if g == pgid && s != 'Z'))
        .collect()
}

/// Waits until `cond` holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A task script that first writes its pid to a file in `dir`, so that the test can find the
/// task's process group (see [`read_pid`]), then runs `rest`. Returns the script and the file.
pub fn pid_script(dir: &TempDir, rest: &str) -> (String, PathBuf) {
    let pidfile = dir.path("pid");
    (format!("echo $$ > {}; {rest}", pidfile.display()), pidfile)
}

/// Waits for a task to write its pid to `file`, and returns it.
pub fn read_pid(file: &Path) -> u32 {
    let mut pid = None;
    wait_until(Duration::from_secs(10), "the task's pid file", || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_default()
}

/// Asserts that the task whose leader was `pid` is gone: the leader reaped (no /proc entry,
/// not even a zombie) and nothing of its group alive.
pub fn assert_group_gone(pid: u32) {
    wait_until(
        Duration::from_secs(10),
        "the task's group to be gone",
        || proc_stat(pid).is_none() && live_group_members(pid).is_empty(),
    );
}

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
}

// ---- a sniff server in a child process ----

/// The socket a child sniff server listens on.
pub const CHILD_SOCKET: &str = "TUPPENCE_TEST_SNIFF_SOCKET";
/// `nofile=N`: the fd limit the child lowers itself to before serving.
pub const CHILD_SETTINGS: &str = "TUPPENCE_TEST_SNIFF_SETTINGS";

/// The body of the `sniff_server_process` test of a test binary with child servers (ignored,
/// so only [`ChildServer`] runs it).
pub fn run_child_server() {
    let Some(sock) = std::env::var_os(CHILD_SOCKET) else {
        return;
    };
    child_process::die_with_parent();
    let settings = std::env::var(CHILD_SETTINGS).unwrap_or_default();
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let (name, value) = setting.split_once('=').expect("name=value");
        assert_eq!(name, "nofile", "unknown setting {name}");
        child_process::limit_fds(value.parse().unwrap());
    }
    let listener = Listener::unix(PathBuf::from(sock), 0o600).expect("listen");
    let mut server =
        SniffDaemon::new(listener, test_agent, &SniffDaemonConfig::default()).expect("server");
    server.run().expect("serve");
}

/// A sniff server in a child process (this test binary again), so that its memory and fds
/// are its own. Killed at drop.
pub struct ChildServer {
    pub child: std::process::Child,
    pub path: PathBuf,
    _dir: TempDir,
}

impl ChildServer {
    pub fn spawn(settings: &str) -> ChildServer {
        let dir = TempDir::new("child");
        let path = dir.path("agent.sock");
        let child = child_process::spawn_self(
            "sniff_server_process",
            &[
                (CHILD_SOCKET, path.as_os_str()),
                (CHILD_SETTINGS, settings.as_ref()),
            ],
        );
        let server = ChildServer {
            child,
            path,
            _dir: dir,
        };
        wait_until(Duration::from_secs(20), "the child server's socket", || {
            UnixStream::connect(&server.path).is_ok()
        });
        server
    }

    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.path)
    }

    /// Peak resident memory (`VmHWM`) in KiB.
    pub fn peak_kib(&self) -> u64 {
        child_process::status_kib(self.child.id(), "VmHWM")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
