//! Helpers for the `serve_*` tests: an agent on a unix socket in a thread (or in a child
//! process when its memory is measured), raw connections for hand-made packets, and /proc
//! checks.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tuppence::link::ClientConfig;
use tuppence::wire::{Decoder, Dialect, Frame, Hello, Packet, Sender};
use tuppence_agent::serve::{LinkDaemon, LinkDaemonConfig, RunEnd, StopHandle};
use tuppence_blocking::{Monitor, MonitorEvent, Session};
use tuppence_transport::{Listener, Target};

#[path = "../child_process/mod.rs"]
pub mod child_process;
pub use child_process::status_kib;

/// How long a test waits for something that should take milliseconds (a loaded 2-core
/// machine can stall a thread for a while; nothing here should ever need this long).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("tuppence-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn join_str(&self, name: &str) -> String {
        self.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The config the tests start from: defaults, without audit logging.
pub fn quiet_config() -> LinkDaemonConfig {
    LinkDaemonConfig {
        audit: false,
        ..LinkDaemonConfig::default()
    }
}

/// An agent serving a unix socket from a thread of the test process. Dropping it stops the
/// agent (which kills what it started) and waits for `run` to return.
pub struct TestAgent {
    pub dir: TempDir,
    pub sock: PathBuf,
    pub target: Target,
    stop: StopHandle,
    handle: Option<JoinHandle<io::Result<RunEnd>>>,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        TestAgent::with_config(quiet_config())
    }

    pub fn with_config(config: LinkDaemonConfig) -> TestAgent {
        let dir = TempDir::new("serve");
        let sock = dir.join("agent.sock");
        let listener = Listener::unix(&sock, 0o600).unwrap();
        let mut agent = LinkDaemon::new(config).unwrap();
        agent.add_listener(listener).unwrap();
        let stop = agent.stop_handle().unwrap();
        let handle = std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || agent.run())
            .unwrap();
        let target: Target = format!("unix:{}", sock.display()).parse().unwrap();
        TestAgent {
            dir,
            sock,
            target,
            stop,
            handle: Some(handle),
        }
    }

    /// A 4.0 session through `tuppence-transport`'s target syntax.
    pub fn session(&self) -> Session {
        Session::connect(&self.target, PATIENCE).unwrap()
    }

    /// A session in the C executor's 3.0 dialect: the agent must detect it.
    pub fn legacy_session(&self) -> Session {
        let config = ClientConfig {
            dialect: Dialect::Legacy3,
            ..ClientConfig::default()
        };
        let session = Session::new(self.stream(), config, PATIENCE).unwrap();
        assert_eq!(session.info().server_version, (3, 0));
        session
    }

    /// A session on a stream the test keeps a handle of, to cut the connection at will
    /// (`shutdown`) instead of waiting for the session's reader thread to let go.
    pub fn session_with_handle(&self) -> (Session, UnixStream) {
        let stream = self.stream();
        let handle = stream.try_clone().unwrap();
        let session = Session::new(stream, ClientConfig::default(), PATIENCE).unwrap();
        (session, handle)
    }

    pub fn stream(&self) -> UnixStream {
        UnixStream::connect(&self.sock).unwrap()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Waits (bounded) for `run` to return by itself (after a quit).
    pub fn join(mut self) -> RunEnd {
        self.join_inner()
    }

    /// Stops the agent and returns what `run` said.
    pub fn stop(mut self) -> RunEnd {
        self.stop.stop();
        self.join_inner()
    }

    fn join_inner(&mut self) -> RunEnd {
        let handle = self.handle.take().expect("joined once");
        assert!(
            eventually(PATIENCE, || handle.is_finished()),
            "the agent did not return from run"
        );
        handle.join().expect("agent thread panicked").expect("run")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.stop.stop();
            let _ = handle.join();
        }
    }
}

/// A client connection speaking hand-made packets (4.0 unless told otherwise).
pub struct Raw {
    pub stream: UnixStream,
    dec: Decoder,
    dialect: Dialect,
    pub cid: u16,
}

impl Raw {
    pub fn connect(sock: &Path) -> Raw {
        Raw::connect_as(sock, Dialect::V4)
    }

    pub fn connect_as(sock: &Path, dialect: Dialect) -> Raw {
        Raw::on(UnixStream::connect(sock).unwrap(), dialect)
    }

    /// On a stream connected already.
    pub fn on(stream: UnixStream, dialect: Dialect) -> Raw {
        Raw {
            stream,
            dec: Decoder::new(dialect, Sender::Server),
            dialect,
            cid: 0,
        }
    }

    /// Sends a hello in the connection's dialect (keepalive off) and reads the reply;
    /// remembers the cid.
    pub fn hello(&mut self) -> u16 {
        let (major, minor) = self.dialect.version();
        self.send_packet(
            0,
            &Packet::Hello(Hello {
                major,
                minor,
                keepalive: 0,
            }),
        );
        let frame = self.next_frame(PATIENCE).expect("hello reply");
        assert!(matches!(frame.packet, Packet::Hello(_)), "{frame:?}");
        self.cid = frame.cid;
        frame.cid
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_packet(&mut self, xid: u16, packet: &Packet) {
        let bytes = packet.to_bytes(self.dialect, self.cid, xid).unwrap();
        self.send(&bytes);
    }

    /// The next packet from the agent; `None` at EOF or after `limit`.
    pub fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(frame) = self.dec.next_frame().expect("the agent sent a bad packet") {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                // The in-process agent's SIGCHLD handler: a socket read with a timeout is
                // never restarted, SA_RESTART or not (signal(7)).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Packets for `xid` until one satisfies `stop` (returned with the ones before it).
    pub fn frames_until(&mut self, xid: u16, stop: impl Fn(&Packet) -> bool) -> Vec<Packet> {
        let mut seen = Vec::new();
        loop {
            let frame = self
                .next_frame(PATIENCE)
                .unwrap_or_else(|| panic!("no answer for xid {xid}; got {seen:?}"));
            if frame.xid != xid {
                continue;
            }
            let done = stop(&frame.packet);
            seen.push(frame.packet);
            if done {
                return seen;
            }
        }
    }

    /// True once the agent has closed the connection (within `limit`).
    pub fn closed_by_agent(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// A raw 4.0 header: `type | 0 | len | cid | xid`.
pub fn header(kind: u8, len: u16, cid: u16, xid: u16) -> Vec<u8> {
    let mut h = vec![kind, 0];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&cid.to_be_bytes());
    h.extend_from_slice(&xid.to_be_bytes());
    h
}

/// A raw 4.0 packet with this payload (the length is computed).
pub fn raw_packet(kind: u8, cid: u16, xid: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut p = header(kind, len, cid, xid);
    p.extend_from_slice(payload);
    p
}

// ---- processes ----

/// The process's state letter from /proc (`None` once it is gone).
pub fn proc_state(pid: u32) -> Option<u8> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied()
}

/// No trace of the process at all (reaped, not even a zombie).
pub fn gone(pid: u32) -> bool {
    proc_state(pid).is_none()
}

/// Not running: gone or a zombie waiting for a parent that is not the agent.
pub fn dead(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some(b'Z') | Some(b'X'))
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Parses the first line of command output as a pid.
pub fn first_line_pid(out: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

// ---- an agent in a child process ----

/// The socket a child agent listens on (set by [`ChildAgent::spawn_with`]).
pub const CHILD_SOCKET: &str = "TUPPENCE_TEST_AGENT_SOCKET";
/// Its settings, `name=value` pairs separated by commas (see [`run_child_agent`]).
pub const CHILD_SETTINGS: &str = "TUPPENCE_TEST_AGENT_SETTINGS";

/// The body of the `agent_process` test every test binary with child agents defines
/// (ignored, so only a [`ChildAgent`] runs it): serves the socket named in
/// [`CHILD_SOCKET`] until a client quits. Settings: `cgroups=0` (commands are not put in
/// cgroups), `nofile=N` (the fd limit is lowered to N before the agent starts),
/// `max_clients=N`, `fd_wait_ms=N`.
pub fn run_child_agent() {
    let Some(sock) = std::env::var_os(CHILD_SOCKET) else {
        return;
    };
    child_process::die_with_parent();
    let mut config = quiet_config();
    let settings = std::env::var(CHILD_SETTINGS).unwrap_or_default();
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let (name, value) = setting.split_once('=').expect("name=value");
        match name {
            "cgroups" => config.cgroups = value != "0",
            "max_clients" => config.max_clients = value.parse().unwrap(),
            "fd_wait_ms" => config.fd_wait = Duration::from_millis(value.parse().unwrap()),
            "nofile" => child_process::limit_fds(value.parse().unwrap()),
            other => panic!("unknown child agent setting {other}"),
        }
    }
    let listener = Listener::unix(PathBuf::from(sock), 0o600).unwrap();
    let mut agent = LinkDaemon::new(config).unwrap();
    agent.add_listener(listener).unwrap();
    assert_eq!(agent.run().unwrap(), RunEnd::Quit);
}

/// The agent in a child process (this test binary again, running only its
/// `agent_process` test), so that its memory, fds and children can be measured apart
/// from the test's own. Killed at drop.
pub struct ChildAgent {
    pub child: std::process::Child,
    pub sock: PathBuf,
    _dir: TempDir,
}

impl ChildAgent {
    pub fn spawn() -> ChildAgent {
        ChildAgent::spawn_with("")
    }

    /// With settings for [`run_child_agent`].
    pub fn spawn_with(settings: &str) -> ChildAgent {
        let dir = TempDir::new("child-agent");
        let sock = dir.join("agent.sock");
        let child = child_process::spawn_self(
            "agent_process",
            &[
                (CHILD_SOCKET, sock.as_os_str()),
                (CHILD_SETTINGS, settings.as_ref()),
            ],
        );
        let mut agent = ChildAgent {
            child,
            sock,
            _dir: dir,
        };
        assert!(
            eventually(PATIENCE, || agent.sock.exists()
                || agent.child.try_wait().unwrap().is_some()),
            "the agent process did not start"
        );
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "the agent process exited"
        );
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connected stream (retrying briefly: the socket file exists before `listen`).
    pub fn stream(&self) -> UnixStream {
        let mut stream = None;
        assert!(eventually(PATIENCE, || {
            stream = UnixStream::connect(&self.sock).ok();
            stream.is_some()
        }));
        stream.unwrap()
    }

    pub fn session(&self) -> Session {
        Session::new(self.stream(), ClientConfig::default(), PATIENCE).unwrap()
    }

    /// A session on a stream the test keeps a handle of, to cut the connection at will.
    pub fn session_with_handle(&self) -> (Session, UnixStream) {
        let stream = self.stream();
        let handle = stream.try_clone().unwrap();
        let session = Session::new(stream, ClientConfig::default(), PATIENCE).unwrap();
        (session, handle)
    }

    pub fn peak_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM")
    }

    /// Quits the agent and checks it exits cleanly.
    pub fn quit(mut self, s: Session) {
        s.quit().unwrap();
        assert!(eventually(PATIENCE, || self
            .child
            .try_wait()
            .unwrap()
            .is_some()));
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The children of process `pid` (of all its threads) with their state letter.
pub fn children_of(pid: u32) -> Vec<(u32, u8)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in text.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some(state) = proc_state(child) {
                out.push((child, state));
            }
        }
    }
    out
}

/// The zombies among the children of `pid`.
pub fn zombies_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|&(_, state)| state == b'Z')
        .map(|(c, _)| c)
        .collect()
}

/// The parent of a process (`None` once it is gone).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    rest.split(' ').nth(1)?.parse().ok()
}

// ---- monitors ----

/// Collects monitor data until `Settled(seq)`.
pub fn settle(m: &mut Monitor<'_>, seq: u32) -> String {
    m.settle(seq).unwrap();
    let mut text = String::new();
    loop {
        match m.next_timeout(Some(PATIENCE)).unwrap() {
            Some(MonitorEvent::Data(d)) => text.push_str(&String::from_utf8_lossy(&d)),
            Some(MonitorEvent::Settled(s)) if s == seq => return text,
            other => panic!("waiting for settled {seq}: {other:?} after {text:?}"),
        }
    }
}

/// Collects monitor data until it contains `needle` or `limit` passes.
pub fn wait_for(m: &mut Monitor<'_>, needle: &str, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    while !text.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.next_timeout(Some(left)).unwrap() {
            Some(MonitorEvent::Data(d)) => text.push_str(&String::from_utf8_lossy(&d)),
            None => return Err(text),
            Some(other) => panic!("{other:?} after {text:?}"),
        }
    }
    Ok(text)
}
