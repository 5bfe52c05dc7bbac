//! The farm figure: ONE client process (this one) holding many sessions at once, as a test
//! farm's controller drives many guests, in two flavours: smol with every session on one
//! thread (one `LocalExecutor` under one `block_on`), and mio with every session's
//! `link::Client` on one `EventLoop`.
//!
//! The agents are several processes (`farm_agents`, sessions dealt round-robin): a farm is
//! many guests, each with its own agent, and one agent's single loop serving all the
//! connections would measure that agent rather than the client.
//!
//! Measured against references in the same run, interleaved rep by rep:
//! * commands/s: every session runs `farm_cmds` × `true` in sequence, all sessions at once;
//!   the reference is this process spawning the same number of `sh -c true` from as many
//!   threads as there are sessions (the spawn limit at that concurrency);
//! * starvation: each session's finish time for that fixed workload, slowest / median;
//! * transfers: every session injects a `farm_file` file and extracts it back, all at once;
//!   the reference is the raw copy (`raw::serve_threaded`, as many raw server processes as
//!   agents) with the same number of concurrent streams, one thread each;
//! * memory per idle session: in a fresh process of its own (`memory_role`), so no earlier
//!   figure's freed memory is reused: VmRSS after opening N sessions (hello done, idle)
//!   minus VmRSS before, over N. A first session is opened before the "before" reading, so
//!   one-time costs (the reactor, the event loop) are not counted per session.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Instant;

use async_io::Async;
use bytes::BytesMut;
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome};
use tuppence_mio::{ConnId, EventLoop, LinkIo};

use crate::clients::{InPlace, me};
use crate::plan::Plan;
use crate::procs::{self, Helper, Scratch};
use crate::stats::{Row, Target, median, spread};
use crate::{make_file, progress, raw};

/// One run of a workload over every session: per-session finish times (seconds from the
/// common start), the wall time, errors and bytes moved.
#[derive(Default)]
struct Outcomes {
    finish: Vec<f64>,
    wall: f64,
    errors: usize,
    bytes: u64,
    /// CPU seconds of this (the client) process and of the server processes.
    client_cpu: f64,
    server_cpu: f64,
}

/// CPU time (user + system, every thread) of a process, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 12th and 13th.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<f64>() / hz
}

/// Runs `f`, recording the CPU this process and `servers` used meanwhile.
fn timed_cpu(servers: &[Helper], f: impl FnOnce() -> Outcomes) -> Outcomes {
    let sum = || servers.iter().map(|h| process_cpu(h.pid())).sum::<f64>();
    let (c0, s0) = (procs::self_cpu(), sum());
    let mut out = f();
    out.client_cpu = (procs::self_cpu() - c0).as_secs_f64();
    out.server_cpu = sum() - s0;
    out
}

/// What every session does in one run.
#[derive(Clone)]
enum Work {
    /// `true`, this many times in sequence.
    Cmds(usize),
    /// Inject `src` to this session's remote file, then extract it back to a local one.
    Files { src: PathBuf, dir: PathBuf },
}

impl Work {
    fn remote(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("farm-remote-{i}"))
    }
    fn local(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("farm-local-{i}"))
    }
}

fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("connect to an agent");
    tuppence_transport::tune_socket_buffers(&s);
    s
}

// ---------------------------------------------------------------------------------------
// smol, one thread

struct SmolFarm {
    ex: smol::LocalExecutor<'static>,
    sessions: Vec<tuppence_smol::Session>,
    user: String,
}

impl SmolFarm {
    fn new() -> SmolFarm {
        SmolFarm {
            ex: smol::LocalExecutor::new(),
            sessions: Vec::new(),
            user: me(),
        }
    }

    /// Opens `n` more sessions, dealt round-robin over `socks`, and waits for every hello.
    fn open(&mut self, socks: &[PathBuf], n: usize) {
        let mut new = Vec::new();
        for i in 0..n {
            let stream = Async::new(connect(&socks[i % socks.len()])).expect("async stream");
            let (session, driver) =
                tuppence_smol::Session::with_driver(stream, ClientConfig::default());
            self.ex.spawn(driver).detach();
            new.push(session);
        }
        let all = new.clone();
        smol::block_on(self.ex.run(async move {
            for s in &all {
                s.connected().await.expect("smol hello");
            }
        }));
        self.sessions.extend(new);
    }

    fn run(&mut self, work: &Work) -> Outcomes {
        let start = Instant::now();
        let tasks: Vec<_> = self
            .sessions
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (s, user, work) = (s.clone(), self.user.clone(), work.clone());
                self.ex.spawn(async move {
                    let (mut errors, mut bytes) = (0usize, 0u64);
                    match work {
                        Work::Cmds(k) => {
                            for _ in 0..k {
                                let cmd = Command::new("true").user(user.clone());
                                match s.output(cmd).await {
                                    Ok(o) if o.outcome == Outcome::Exited(0) => {}
                                    other => {
                                        eprintln!("farm smol: {other:?}");
                                        errors += 1;
                                    }
                                }
                            }
                        }
                        Work::Files { src, dir } => {
                            let remote = Work::remote(&dir, i);
                            let remote = remote.to_str().expect("utf-8 path");
                            let source = InPlace(File::open(&src).expect("source"));
                            match s.inject(&user, remote, 0o644, source, |_| {}).await {
                                Ok(n) => bytes += n,
                                Err(e) => {
                                    eprintln!("farm smol inject: {e}");
                                    errors += 1;
                                }
                            }
                            let sink = InPlace(File::create(Work::local(&dir, i)).expect("sink"));
                            match s.extract(&user, remote, sink, |_| {}).await {
                                Ok(n) => bytes += n,
                                Err(e) => {
                                    eprintln!("farm smol extract: {e}");
                                    errors += 1;
                                }
                            }
                        }
                    }
                    (start.elapsed().as_secs_f64(), errors, bytes)
                })
            })
            .collect();
        let mut out = Outcomes::default();
        let results = smol::block_on(self.ex.run(async move {
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await);
            }
            v
        }));
        out.wall = start.elapsed().as_secs_f64();
        for (f, e, b) in results {
            out.finish.push(f);
            out.errors += e;
            out.bytes += b;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// mio, one event loop

/// Where one mio session is in its workload.
#[derive(Default)]
enum Step {
    #[default]
    Idle,
    Cmd(u16),
    InjectWait(u16),
    Injecting(u16),
    Extracting(u16),
    Done,
}

/// One mio session's state, kept beside its machine in the loop.
#[derive(Default)]
struct MioSession {
    step: Step,
    connected: bool,
    cmds_left: usize,
    source: Option<File>,
    sink: Option<File>,
    eof: bool,
    finish: f64,
    errors: usize,
    bytes: u64,
}

struct MioFarm {
    lp: EventLoop<UnixStream, Client, MioSession>,
    ids: Vec<ConnId>,
    user: String,
}

/// Bytes read from the local file per piece of inject data (whole packets).
const PIECE: usize = 8 * tuppence::wire::DEFAULT_MAX_CHUNK;

impl MioFarm {
    fn new() -> MioFarm {
        MioFarm {
            lp: EventLoop::new().expect("mio event loop"),
            ids: Vec::new(),
            user: me(),
        }
    }

    /// Opens `n` more sessions, dealt round-robin over `socks`, and waits for every hello.
    fn open(&mut self, socks: &[PathBuf], n: usize) {
        let mut new = Vec::new();
        for i in 0..n {
            let stream = connect(&socks[i % socks.len()]);
            stream.set_nonblocking(true).expect("nonblocking");
            let client = Client::new(ClientConfig::default(), Instant::now());
            let id = self
                .lp
                .add(LinkIo::new(stream, client), MioSession::default())
                .expect("add link");
            new.push(id);
        }
        self.lp.flush();
        while new
            .iter()
            .any(|&id| !self.lp.get(id).expect("alive").state.connected)
        {
            self.turn(None);
        }
        self.ids.extend(new);
    }

    /// One turn: wait, hand every event to its session, flush and feed until nothing more
    /// fits (a flush can make room without an event).
    fn turn(&mut self, ctx: Option<(&Work, Instant)>) {
        if let Some(ended) = self.lp.take_ended().pop() {
            panic!("farm mio: a link failed: {}", ended.error);
        }
        self.lp.wait(None).expect("mio wait");
        let user = &self.user;
        if let Some((work, start)) = ctx {
            for (i, &id) in self.ids.iter().enumerate() {
                let conn = self.lp.get_mut(id).expect("alive");
                let (client, st) = (conn.link.machine_mut(), &mut conn.state);
                while let Some(ev) = client.poll_event() {
                    on_event(client, st, ev, work, i, user, start);
                }
            }
        } else {
            // Opening: the new sessions' hello replies.
            for id in self.lp.ids() {
                let conn = self.lp.get_mut(id).expect("alive");
                while let Some(ev) = conn.link.machine_mut().poll_event() {
                    if matches!(ev, ClientEvent::Connected { .. }) {
                        conn.state.connected = true;
                    }
                }
            }
        }
        self.lp.flush();
        while self.feed() {
            self.lp.flush();
        }
    }

    /// Queues inject data for every injecting session while its machine takes it.
    fn feed(&mut self) -> bool {
        let mut queued = false;
        let mut buf = BytesMut::new();
        for &id in &self.ids {
            let conn = self.lp.get_mut(id).expect("alive");
            let (client, st) = (conn.link.machine_mut(), &mut conn.state);
            let Step::Injecting(xid) = st.step else {
                continue;
            };
            let Some(source) = st.source.as_mut() else {
                continue;
            };
            while !st.eof && client.can_send() {
                queued = true;
                buf.reserve(PIECE);
                buf.resize(PIECE, 0);
                let n = source.read(&mut buf[..]).expect("read source");
                buf.truncate(n);
                if n == 0 {
                    st.eof = true;
                    client.finish_file(xid).expect("finish file");
                } else {
                    st.bytes += n as u64;
                    client
                        .send_file_data(xid, buf.split().freeze())
                        .expect("file data");
                }
            }
        }
        queued
    }

    fn run(&mut self, work: &Work) -> Outcomes {
        let start = Instant::now();
        for (i, &id) in self.ids.iter().enumerate() {
            let conn = self.lp.get_mut(id).expect("alive");
            let (client, st) = (conn.link.machine_mut(), &mut conn.state);
            *st = MioSession {
                connected: true,
                ..MioSession::default()
            };
            begin(client, st, work, i, &self.user);
        }
        self.lp.flush();
        while self.lp.states().any(|(_, s)| !matches!(s.step, Step::Done)) {
            self.turn(Some((work, start)));
        }
        let mut out = Outcomes {
            wall: start.elapsed().as_secs_f64(),
            ..Outcomes::default()
        };
        for (_, s) in self.lp.states() {
            out.finish.push(s.finish);
            out.errors += s.errors;
            out.bytes += s.bytes;
        }
        out
    }
}

fn begin(client: &mut Client, st: &mut MioSession, work: &Work, i: usize, user: &str) {
    match work {
        Work::Cmds(k) => {
            st.cmds_left = *k;
            next_cmd(client, st, user);
        }
        Work::Files { src, dir } => {
            let remote = Work::remote(dir, i);
            let xid = client
                .inject(
                    user.to_owned(),
                    remote.to_str().expect("utf-8 path").to_owned(),
                    0o644,
                )
                .expect("inject");
            st.source = Some(File::open(src).expect("source"));
            st.step = Step::InjectWait(xid);
        }
    }
}

fn next_cmd(client: &mut Client, st: &mut MioSession, user: &str) {
    if st.cmds_left == 0 {
        st.step = Step::Done;
        return;
    }
    st.cmds_left -= 1;
    let xid = client
        .run(Command::new("true").user(user.to_owned()))
        .expect("run");
    client.close_stdin(xid).expect("close stdin");
    st.step = Step::Cmd(xid);
}

fn on_event(
    client: &mut Client,
    st: &mut MioSession,
    ev: ClientEvent,
    work: &Work,
    i: usize,
    user: &str,
    start: Instant,
) {
    let done = |st: &mut MioSession| {
        st.step = Step::Done;
        st.finish = start.elapsed().as_secs_f64();
    };
    match (&st.step, ev) {
        (&Step::Cmd(x), ClientEvent::Finished { xid, outcome }) if x == xid => {
            if outcome != Outcome::Exited(0) {
                eprintln!("farm mio: {outcome:?}");
                st.errors += 1;
            }
            next_cmd(client, st, user);
            if matches!(st.step, Step::Done) {
                done(st);
            }
        }
        (&Step::InjectWait(x), ClientEvent::InjectReady { xid }) if x == xid => {
            st.step = Step::Injecting(xid);
        }
        (&(Step::InjectWait(x) | Step::Injecting(x)), ClientEvent::Finished { xid, outcome })
            if x == xid =>
        {
            if outcome != Outcome::Completed {
                eprintln!("farm mio inject: {outcome:?}");
                st.errors += 1;
            }
            st.source = None;
            let Work::Files { dir, .. } = work else {
                return;
            };
            let remote = Work::remote(dir, i);
            let xid = client
                .extract(
                    user.to_owned(),
                    remote.to_str().expect("utf-8 path").to_owned(),
                )
                .expect("extract");
            st.sink = Some(File::create(Work::local(dir, i)).expect("sink"));
            st.step = Step::Extracting(xid);
        }
        (&Step::Extracting(x), ClientEvent::Output { xid, data, .. }) if x == xid => {
            if let Some(sink) = st.sink.as_mut() {
                sink.write_all(&data).expect("write sink");
            }
            st.bytes += data.len() as u64;
        }
        (&Step::Extracting(x), ClientEvent::Finished { xid, outcome }) if x == xid => {
            if outcome != Outcome::Completed {
                eprintln!("farm mio extract: {outcome:?}");
                st.errors += 1;
            }
            st.sink = None;
            done(st);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// references

/// `n` threads, each spawning `sh -c true` `k` times in sequence.
fn spawn_limit(n: usize, k: usize) -> Outcomes {
    let start = Instant::now();
    let finish: Vec<f64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn_scoped(s, || {
                        for _ in 0..k {
                            let st = StdCommand::new("/bin/sh")
                                .args(["-c", "true"])
                                .stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status()
                                .expect("spawn sh");
                            assert!(st.success());
                        }
                        start.elapsed().as_secs_f64()
                    })
                    .expect("thread")
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .collect()
    });
    Outcomes {
        wall: start.elapsed().as_secs_f64(),
        finish,
        ..Outcomes::default()
    }
}

/// `n` concurrent raw streams, one thread each: inject `src`, extract it back.
fn raw_streams(n: usize, socks: &[PathBuf], src: &Path, dir: &Path) -> Outcomes {
    let start = Instant::now();
    let results: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let sock = &socks[i % socks.len()];
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let remote = Work::remote(dir, i);
                        let mut source = File::open(src).expect("source");
                        let a = raw::inject(sock, &mut source, &remote).expect("raw inject");
                        let mut sink = File::create(Work::local(dir, i)).expect("sink");
                        a + raw::extract(sock, &remote, &mut sink).expect("raw extract")
                    })
                    .expect("thread")
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .collect()
    });
    Outcomes {
        wall: start.elapsed().as_secs_f64(),
        bytes: results.iter().sum(),
        ..Outcomes::default()
    }
}

fn clean(dir: &Path, n: usize) {
    for i in 0..n {
        let _ = std::fs::remove_file(Work::remote(dir, i));
        let _ = std::fs::remove_file(Work::local(dir, i));
    }
}

// ---------------------------------------------------------------------------------------
// memory per idle session, in a process of its own

const FLAVOUR_ENV: &str = "TUPPENCE_E2E_FARM_FLAVOUR";
const COUNT_ENV: &str = "TUPPENCE_E2E_FARM_SESSIONS";
const FILE_ENV: &str = "TUPPENCE_E2E_FARM_FILE";

/// The `farm-mem` role: opens one session, reads VmRSS, opens N more (hello done, idle),
/// reads VmRSS again and prints both (KiB). `socks` is the agents' sockets joined by ':'.
pub fn memory_role(socks: &Path) -> ! {
    let socks: Vec<PathBuf> = socks
        .to_str()
        .expect("utf-8 paths")
        .split(':')
        .map(PathBuf::from)
        .collect();
    let n: usize = std::env::var(COUNT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("session count");
    let me = std::process::id();
    let rss = || procs::status_kib(me, "VmRSS");
    let src = PathBuf::from(std::env::var_os(FILE_ENV).expect("source file"));
    let dir = src.parent().expect("scratch dir").to_owned();
    let files = Work::Files {
        src,
        dir: dir.clone(),
    };
    // After a transfer: what the sessions still hold once idle again. `malloc_trim` first
    // returns the allocator's free pages, so what is left is held, not cached.
    let after_transfer = |errors: usize| {
        assert_eq!(errors, 0, "farm memory: transfer errors");
        clean(&dir, n + 1);
        // SAFETY: malloc_trim only releases free memory of glibc's heaps.
        unsafe { libc::malloc_trim(0) };
        rss()
    };
    let readings = match std::env::var(FLAVOUR_ENV).as_deref() {
        Ok("smol1") => {
            let mut f = SmolFarm::new();
            f.open(&socks, 1);
            let before = rss();
            f.open(&socks, n);
            let idle = rss();
            let out = f.run(&files);
            (before, idle, after_transfer(out.errors))
        }
        Ok("mio") => {
            let mut f = MioFarm::new();
            f.open(&socks, 1);
            let before = rss();
            f.open(&socks, n);
            let idle = rss();
            let out = f.run(&files);
            (before, idle, after_transfer(out.errors))
        }
        other => panic!("unknown farm flavour {other:?}"),
    };
    println!("{} {} {}", readings.0, readings.1, readings.2);
    std::process::exit(0);
}

/// VmRSS of a fresh process holding `n` idle sessions of `flavour`.
struct Memory {
    /// KiB with one session open (the runtime's one-time costs counted).
    before: u64,
    /// KiB with `n` more open, hello done, idle.
    idle: u64,
    /// KiB once every session injected and extracted a file and is idle again, after
    /// `malloc_trim`.
    after: u64,
}

impl Memory {
    fn per_session(&self, n: usize) -> f64 {
        self.idle.saturating_sub(self.before) as f64 / n as f64
    }
    fn per_session_after(&self, n: usize) -> f64 {
        self.after.saturating_sub(self.before) as f64 / n as f64
    }
}

fn memory(flavour: &str, n: usize, agents: &[Helper], src: &Path) -> Memory {
    let socks: Vec<String> = agents
        .iter()
        .map(|a| a.sock.to_str().expect("utf-8 path").to_owned())
        .collect();
    let out = StdCommand::new(std::env::current_exe().expect("current exe"))
        .env(procs::ROLE_ENV, "farm-mem")
        .env(procs::SOCKET_ENV, socks.join(":"))
        .env(FLAVOUR_ENV, flavour)
        .env(COUNT_ENV, n.to_string())
        .env(FILE_ENV, src)
        .stderr(Stdio::inherit())
        .output()
        .expect("start the memory process");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [before, idle, after] = v[..] else {
        panic!("farm memory process: {text:?} ({})", out.status);
    };
    Memory {
        before,
        idle,
        after,
    }
}

// ---------------------------------------------------------------------------------------
// the figure

pub fn farm(plan: &Plan, scratch: &Scratch) -> Vec<Row> {
    let (n, k, nagents) = (plan.farm_sessions, plan.farm_cmds, plan.farm_agents);
    let size = plan.farm_file;
    println!(
        "\n== farm: one client process, {n} sessions over {nagents} agent processes; \
         {k} × `true` per session, {} KiB inject + extract per session; {} reps",
        size >> 10,
        plan.farm_reps
    );
    procs::raise_nofile();
    let agents: Vec<Helper> = (0..nagents)
        .map(|_| Helper::start("agent", &scratch.0))
        .collect();
    let raws: Vec<Helper> = (0..nagents)
        .map(|_| Helper::start("raw-mt", &scratch.0))
        .collect();
    let agent_socks: Vec<PathBuf> = agents.iter().map(|a| a.sock.clone()).collect();
    let raw_socks: Vec<PathBuf> = raws.iter().map(|a| a.sock.clone()).collect();

    let src = scratch.join("farm-source.bin");
    make_file(&src, size);
    let files = Work::Files {
        src: src.clone(),
        dir: scratch.0.clone(),
    };

    // Memory first, each flavour in a fresh process.
    let mut mem = Vec::new();
    for flavour in ["smol1", "mio"] {
        let m = memory(flavour, n, &agents, &src);
        progress(format!(
            "{flavour}: VmRSS {} KiB with one session, {} KiB with {} idle ({:.1} KiB per session), \
             {} KiB after a transfer each ({:.1} KiB per session)",
            m.before,
            m.idle,
            n + 1,
            m.per_session(n),
            m.after,
            m.per_session_after(n)
        ));
        mem.push(m);
    }

    let mut smol = SmolFarm::new();
    smol.open(&agent_socks, n);
    let mut mio = MioFarm::new();
    mio.open(&agent_socks, n);

    // Correctness once per flavour, outside the timed runs.
    let mut errors = [0usize; 2];
    for (m, errs) in errors.iter_mut().enumerate() {
        let out = if m == 0 {
            smol.run(&files)
        } else {
            mio.run(&files)
        };
        *errs += out.errors;
        for i in 0..n {
            let got = std::fs::read(Work::local(&scratch.0, i)).ok();
            assert!(
                got == std::fs::read(&src).ok(),
                "farm: flavour {m} session {i} moved its file wrong ({:?} bytes, {} errors)",
                got.map(|g| g.len()),
                out.errors
            );
        }
        clean(&scratch.0, n);
    }

    // [method][rep]: 0 = reference, 1 = smol, 2 = mio.
    let mut cmds: Vec<Vec<Outcomes>> = (0..3).map(|_| Vec::new()).collect();
    let mut xfer: Vec<Vec<Outcomes>> = (0..3).map(|_| Vec::new()).collect();
    for rep in 0..plan.farm_reps {
        for j in 0..3 {
            let m = (j + rep) % 3;
            cmds[m].push(match m {
                0 => timed_cpu(&agents, || spawn_limit(n, k)),
                1 => timed_cpu(&agents, || smol.run(&Work::Cmds(k))),
                _ => timed_cpu(&agents, || mio.run(&Work::Cmds(k))),
            });
        }
        for j in 0..3 {
            let m = (j + rep) % 3;
            xfer[m].push(match m {
                0 => timed_cpu(&raws, || raw_streams(n, &raw_socks, &src, &scratch.0)),
                1 => timed_cpu(&agents, || smol.run(&files)),
                _ => timed_cpu(&agents, || mio.run(&files)),
            });
            clean(&scratch.0, n);
        }
        let rate = |o: &Outcomes| (n * k) as f64 / o.wall;
        let tput = |o: &Outcomes| o.bytes as f64 / o.wall / 1e6;
        let cpu = |o: &Outcomes| format!("{:.2}/{:.2}", o.client_cpu, o.server_cpu);
        progress(format!(
            "rep {}: cmd/s spawn {:.0}, smol {:.0}, mio {:.0}; MB/s raw {:.0}, smol {:.0}, mio {:.0}",
            rep + 1,
            rate(&cmds[0][rep]),
            rate(&cmds[1][rep]),
            rate(&cmds[2][rep]),
            tput(&xfer[0][rep]),
            tput(&xfer[1][rep]),
            tput(&xfer[2][rep]),
        ));
        progress(format!(
            "rep {}: CPU s client/servers: commands spawn {}, smol {}, mio {}; transfers raw {}, smol {}, mio {}",
            rep + 1,
            cpu(&cmds[0][rep]),
            cpu(&cmds[1][rep]),
            cpu(&cmds[2][rep]),
            cpu(&xfer[0][rep]),
            cpu(&xfer[1][rep]),
            cpu(&xfer[2][rep]),
        ));
    }
    drop(smol);
    drop(mio);
    drop(agents);
    drop(raws);
    let _ = std::fs::remove_file(&src);

    let rate = |o: &Outcomes| (n * k) as f64 / o.wall;
    let tput = |o: &Outcomes| o.bytes as f64 / o.wall / 1e6;
    let spread_of = |v: &[Outcomes], f: &dyn Fn(&Outcomes) -> f64, d| {
        spread(&v.iter().map(f).collect::<Vec<_>>(), d)
    };
    let mut rows = Vec::new();
    for (m, name) in [(1, "smol, 1 thread"), (2, "mio")] {
        let errs = errors[m - 1]
            + cmds[m].iter().map(|o| o.errors).sum::<usize>()
            + xfer[m].iter().map(|o| o.errors).sum::<usize>();
        let poison = if errs > 0 { f64::NAN } else { 0.0 };
        let ratios: Vec<f64> = cmds[m]
            .iter()
            .zip(&cmds[0])
            .map(|(a, r)| rate(a) / rate(r))
            .collect();
        let best = ratios.iter().copied().fold(f64::NAN, f64::max);
        rows.push(Row {
            figure: format!("farm: {n} sessions × {k} `true`, one client, {name}"),
            value: format!("{} cmd/s, {errs} errors", spread_of(&cmds[m], &rate, 0)),
            reference: format!(
                "`sh -c true` from {n} threads: {} cmd/s",
                spread_of(&cmds[0], &rate, 0)
            ),
            judged: median(&ratios) + poison,
            judged_text: spread(&ratios, 2),
            guarded: Some(best + poison),
            target: Target::AtLeast(0.8),
            unit: "",
        });
        let starve: Vec<f64> = cmds[m]
            .iter()
            .map(|o| crate::stats::max(&o.finish) / median(&o.finish))
            .collect();
        rows.push(Row {
            figure: format!("farm: slowest / median session finish, {n} × {k} `true`, {name}"),
            value: format!(
                "median finish {} s",
                spread_of(&cmds[m], &|o| median(&o.finish), 3)
            ),
            reference: format!(
                "spawn threads: slowest / median {}",
                spread(
                    &cmds[0]
                        .iter()
                        .map(|o| crate::stats::max(&o.finish) / median(&o.finish))
                        .collect::<Vec<_>>(),
                    2
                )
            ),
            judged: median(&starve),
            judged_text: format!("×{}", spread(&starve, 2)),
            guarded: None,
            target: Target::AtMost(2.0),
            unit: "×",
        });
        let tratios: Vec<f64> = xfer[m]
            .iter()
            .zip(&xfer[0])
            .map(|(a, r)| tput(a) / tput(r))
            .collect();
        let tstarve: Vec<f64> = xfer[m]
            .iter()
            .map(|o| crate::stats::max(&o.finish) / median(&o.finish))
            .collect();
        rows.push(Row {
            figure: format!(
                "farm: {n} sessions × {} KiB inject + extract, aggregate, {name}",
                size >> 10
            ),
            value: format!(
                "{} MB/s (slowest / median session {}); CPU s client / agents {} / {}",
                spread_of(&xfer[m], &tput, 0),
                spread(&tstarve, 2),
                spread_of(&xfer[m], &|o| o.client_cpu, 2),
                spread_of(&xfer[m], &|o| o.server_cpu, 2)
            ),
            reference: format!(
                "raw copy, {n} streams: {} MB/s; CPU s client / servers {} / {}",
                spread_of(&xfer[0], &tput, 0),
                spread_of(&xfer[0], &|o| o.client_cpu, 2),
                spread_of(&xfer[0], &|o| o.server_cpu, 2)
            ),
            judged: errs as f64,
            judged_text: format!("{} ({errs} errors)", spread(&tratios, 2)),
            guarded: None,
            target: Target::NoErrors,
            unit: "",
        });
        let mm = &mem[m - 1];
        let per = mm.per_session(n);
        rows.push(Row {
            figure: format!("farm: client memory per idle session, {name}"),
            value: format!(
                "{per:.1} KiB (VmRSS {} → {} KiB for {n} sessions)",
                mm.before, mm.idle
            ),
            reference: "—".into(),
            judged: per,
            judged_text: format!("{per:.1} KiB"),
            guarded: None,
            target: Target::AtMost(64.0),
            unit: " KiB",
        });
        // The footprint a farm keeps after moving files: read buffers sized for bulk data
        // must have been given back (they were 400 KiB per session before).
        let after = mm.per_session_after(n);
        rows.push(Row {
            figure: format!(
                "farm: client memory per session after a {} KiB inject + extract each, idle, {name}",
                size >> 10
            ),
            value: format!(
                "{after:.1} KiB (VmRSS {} → {} KiB for {n} sessions, after `malloc_trim`)",
                mm.before, mm.after
            ),
            reference: "—".into(),
            judged: after,
            judged_text: format!("{after:.1} KiB"),
            guarded: None,
            target: Target::AtMost(64.0),
            unit: " KiB",
        });
    }
    rows
}
