//! The `tuppence` binary end to end: against `local` (the embedded agent) and against a
//! `tuppence serve --unix` this test starts in a temporary directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tuppence");

/// The documented exit statuses (see `tuppence --help`).
const TIMEOUT: i32 = 200;
const REMOTE_FAILURE: i32 = 201;
const CONNECTION: i32 = 202;
const USAGE: i32 = 204;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("tuppence-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tuppence() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TUPPENCE_TARGET").env_remove("TUPPENCE_LOG");
    c
}

/// The binary started with `args`, all three standard streams piped.
fn spawn_piped(args: &[&str]) -> Child {
    tuppence()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tuppence")
}

/// Runs the binary with `stdin` as its input; output collected.
fn run_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn_piped(args);
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

fn run(args: &[&str]) -> Output {
    tuppence()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tuppence")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tuppence serve --unix DIR/agent.sock`, waited for through its ready line.
struct Server {
    child: Child,
    target: String,
    sock: PathBuf,
    /// The agent's stderr lines after its ready line.
    log: mpsc::Receiver<String>,
    _dir: TempDir,
}

/// `tuppence serve --unix SOCK EXTRA…` with its stderr piped.
fn spawn_serve(sock: &Path, extra: &[&str]) -> Child {
    tuppence()
        .arg("serve")
        .arg("--unix")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve")
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = TempDir::new("serve");
        let sock = dir.path().join("agent.sock");
        let extra: Vec<&str> = std::iter::once("--no-audit")
            .chain(extra.iter().copied())
            .collect();
        let mut child = spawn_serve(&sock, &extra);
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Passes every line on and keeps draining, so the agent never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let server = Server {
            child,
            target: format!("unix:{}", sock.display()),
            sock,
            log: rx,
            _dir: dir,
        };
        // (A failed check drops `server`, which kills the agent.)
        let line = server
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("serve printed its ready line");
        assert_eq!(
            line,
            format!("tuppence serve: ready on unix:{}", server.sock.display())
        );
        server
    }

    /// Waits (bounded) for the agent process to exit.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both kinds of target every behaviour is checked against.
fn with_targets(check: impl Fn(&str)) {
    check("local");
    let server = Server::start(&[]);
    check(&server.target);
}

#[test]
fn exit_status_mirrors_the_remote_command() {
    with_targets(|t| {
        assert_eq!(code(&run(&["run", "-t", t, "--", "true"])), 0, "{t}");
        assert_eq!(code(&run(&["run", "-t", t, "--", "exit 3"])), 3, "{t}");
        assert_eq!(
            code(&run(&["run", "-t", t, "--", "kill -TERM $$"])),
            128 + 15,
            "{t}"
        );
        let start = Instant::now();
        let out = run(&["run", "-t", t, "--timeout", "1", "--", "sleep", "5"]);
        assert_eq!(code(&out), TIMEOUT, "{t}: {}", stderr(&out));
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("tuppence: {t}: command timed out")),
            "{err}"
        );
    });
}

#[test]
fn stdout_and_stderr_stay_separate() {
    with_targets(|t| {
        let out = run(&["run", "-t", t, "--", "echo out; echo err >&2; echo out2"]);
        assert_eq!(code(&out), 0);
        assert_eq!(out.stdout, b"out\nout2\n");
        assert_eq!(out.stderr, b"err\n");
    });
}

#[test]
fn stdin_passes_every_byte_value() {
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 256) as u8).collect();
    with_targets(|t| {
        let out = run_with_input(&["run", "-t", t, "--", "cat"], &data);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(out.stdout == data, "{t}: {} bytes back", out.stdout.len());
        // EOF on our stdin is EOF for the command.
        let out = run_with_input(&["run", "-t", t, "--", "wc", "-c"], &data);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65536");
    });
}

/// A stdin of /dev/null (or closed) starts the command with its stdin already ended: it
/// reads end of file at once, on the embedded agent and over a socket.
#[test]
fn with_nothing_on_stdin_the_command_reads_end_of_file_at_once() {
    with_targets(|t| {
        let out = run(&["run", "-t", t, "--timeout", "20", "--", "cat; echo eof"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert_eq!(out.stdout, b"eof\n", "{t}");
    });
}

/// With stdin an open pipe that sends nothing (a script's or a harness's), `run` exits as
/// soon as the command has ended: the stdin forwarder is woken, not left to notice at its
/// next 100 ms poll (which every such run used to wait for).
#[test]
fn run_with_an_idle_stdin_pipe_exits_when_the_command_ends() {
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut child = spawn_piped(&["run", "--", "true"]);
        // Held open while waiting (`Child::wait` would close it first).
        let stdin = child.stdin.take();
        let status = child.wait().expect("wait");
        fastest = fastest.min(start.elapsed());
        assert!(status.success());
        drop(stdin);
    }
    assert!(
        fastest < Duration::from_millis(60),
        "the fastest of 5 runs took {fastest:?}"
    );
}

#[test]
fn inject_and_extract_round_trip_20_mb() {
    let data: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    with_targets(|t| {
        let dir = TempDir::new("xfer");
        let local = dir.path().join("local.bin");
        let remote = dir.path().join("remote.bin");
        let back = dir.path().join("back.bin");
        std::fs::write(&local, &data).expect("write");
        let out = run(&[
            "inject",
            "-t",
            t,
            "--mode",
            "0640",
            local.to_str().expect("utf-8"),
            remote.to_str().expect("utf-8"),
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(
            out.stderr.is_empty(),
            "no progress bar off a terminal: {}",
            stderr(&out)
        );
        let meta = std::fs::metadata(&remote).expect("injected");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
            0o640
        );
        let out = run(&[
            "extract",
            "-t",
            t,
            remote.to_str().expect("utf-8"),
            back.to_str().expect("utf-8"),
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(std::fs::read(&back).expect("extracted") == data);
        assert_eq!(dir.entries(), ["back.bin", "local.bin", "remote.bin"]);
    });
}

#[test]
fn inject_from_stdin_and_extract_to_stdout() {
    let server = Server::start(&[]);
    let dir = TempDir::new("stdio");
    let remote = dir.path().join("r.txt");
    let r = remote.to_str().expect("utf-8");
    let out = run_with_input(&["inject", "-t", &server.target, "-", r], b"from stdin\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&["extract", "-t", &server.target, r, "-"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"from stdin\n");
}

#[test]
fn failed_extract_leaves_no_local_file() {
    with_targets(|t| {
        let dir = TempDir::new("nofile");
        let dest = dir.path().join("out.bin");
        let missing = dir.path().join("does-not-exist");
        let out = run(&[
            "extract",
            "-t",
            t,
            missing.to_str().expect("utf-8"),
            dest.to_str().expect("utf-8"),
        ]);
        assert_eq!(code(&out), REMOTE_FAILURE, "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
        assert!(dir.entries().is_empty(), "left behind: {:?}", dir.entries());
    });
}

#[test]
fn legacy_dialect_against_the_agent() {
    let server = Server::start(&[]);
    let legacy = format!("legacy+{}", server.target);
    let out = run(&["ping", "-t", &legacy]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("protocol 3.0"), "{text}");
    let out = run(&["run", "-t", &legacy, "--", "echo legacy; exit 4"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(out.stdout, b"legacy\n");
    // Monitors do not exist in 3.0: refused before anything is sent.
    let out = run(&["monitor", "-t", &legacy, "agent"]);
    assert_eq!(code(&out), USAGE, "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);
    let out = run(&["run", "-t", "legacy+local", "--", "echo embedded"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"embedded\n");
}

#[test]
fn ping_prints_the_version() {
    with_targets(|t| {
        let out = run(&["ping", "-t", t]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("{t}: protocol 4.0, cid ")),
            "{text}"
        );
        assert!(text.contains("keepalive") && text.contains(" ms"), "{text}");
    });
}

/// `TUPPENCE_LOG` picks levels per crate (`target=level`, comma-separated); one that is
/// not a filter is said once, and the command still runs at the default level.
#[test]
fn tuppence_log_filters_by_target_and_reports_a_bad_filter() {
    let with_log = |spec: &str| {
        let out = tuppence()
            .env("TUPPENCE_LOG", spec)
            .args(["run", "--", "true"])
            .stdin(Stdio::null())
            .output()
            .expect("run tuppence");
        assert_eq!(code(&out), 0, "{spec}: {}", stderr(&out));
        stderr(&out)
    };
    // The client's "connected" and the embedded agent's "hello" are debug events.
    let all = with_log("debug");
    assert!(
        all.contains("connected") && all.contains("hello cid"),
        "{all}"
    );
    let agent_only = with_log("tuppence_agent=debug");
    assert!(agent_only.contains("hello cid"), "{agent_only}");
    assert!(!agent_only.contains("connected"), "{agent_only}");
    let client_only = with_log("warn,tuppence_cli::connect=debug");
    assert!(client_only.contains("connected"), "{client_only}");
    assert!(!client_only.contains("hello cid"), "{client_only}");
    let bad = with_log("tuppence_cli=loud");
    assert!(
        bad.contains("TUPPENCE_LOG=\"tuppence_cli=loud\" is not a filter"),
        "{bad}"
    );
    assert_eq!(bad.lines().count(), 1, "{bad}");
    // Unset, a client logs warnings only.
    let out = run(&["run", "--", "true"]);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// The binary defines the one C math function it calls (`pow`), so that a dynamic build
/// does not have the loader open and relocate libm at every start (and a static one does
/// not link it): a running agent has no libm mapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_starts_without_libm() {
    let server = Server::start(&[]);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.child.id()))
        .expect("the agent's memory map");
    assert!(maps.contains("tuppence"), "not the agent's map? {maps}");
    assert!(!maps.contains("libm.so"), "{maps}");
}

/// Where glibc's static library is installed, the build links the binary statically
/// (`.cargo/rustc-static-bin`): no dynamic loader and no libc.so at start-up, which was a
/// fifth of a short `tuppence run`. `TUPPENCE_DYNAMIC=1` at build time opts out.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_is_static_where_libc_a_is_installed() {
    let libc_a = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("-print-file-name=libc.a")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let expect_static =
        libc_a.starts_with('/') && std::env::var_os("TUPPENCE_DYNAMIC").is_none_or(|v| v != "1");
    let server = Server::start(&[]);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.child.id()))
        .expect("the agent's memory map");
    let dynamic = maps.contains("libc.so") || maps.contains("ld-linux");
    assert_eq!(
        dynamic, !expect_static,
        "libc.a at {libc_a:?}, so static was {expect_static}: {maps}"
    );
}

/// Out of file descriptors, the embedded agent (which sets itself up on its thread while
/// the client connects) cannot get ready: the user is told so in one line, with the
/// connection status, not that the connection closed. (From 5 to 7 descriptors the
/// agent's set-up, which needs two at once, always fails first.)
#[test]
fn an_embedded_agent_that_cannot_start_says_why() {
    for limit in 5..=7 {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" run -- true"))
            .arg(BIN)
            .env_remove("TUPPENCE_TARGET")
            .env_remove("TUPPENCE_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run tuppence");
        let err = stderr(&out);
        assert_eq!(code(&out), 202, "limit {limit}: {err}");
        assert_eq!(
            err, "tuppence: local: cannot start the embedded agent: Too many open files\n",
            "limit {limit}"
        );
    }
}

#[test]
fn bad_targets_are_one_line_errors() {
    let out = run(&["ping", "-t", "foo:bar"]);
    assert_eq!(code(&out), USAGE);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tuppence: bad target \"foo:bar\": unknown transport"),
        "{err}"
    );

    let out = tuppence()
        .args(["run", "--", "true"])
        .env("TUPPENCE_TARGET", "tcp:nohost")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(code(&out), USAGE, "{}", stderr(&out));

    let dir = TempDir::new("noconn");
    let sock = dir.path().join("nobody.sock");
    let target = format!("unix:{}", sock.display());
    let out = run(&["run", "-t", &target, "--", "true"]);
    assert_eq!(code(&out), CONNECTION);
    assert_eq!(
        stderr(&out),
        format!("tuppence: {target}: cannot connect: No such file or directory\n")
    );
}

#[test]
fn usage_errors_use_the_usage_status() {
    assert_eq!(code(&run(&["run"])), USAGE);
    assert_eq!(code(&run(&["no-such-command"])), USAGE);
    assert_eq!(
        code(&run(&["run", "--timeout", "soon", "--", "true"])),
        USAGE
    );
    assert_eq!(code(&run(&["inject", "--mode", "999", "a", "b"])), USAGE);
    assert_eq!(code(&run(&[])), USAGE);
}

/// Both sides raise a keepalive below 10 s to 10 s, which the hello reply (and so `tuppence
/// ping`) would not show: such values are refused with the reason, not reported as given
/// and applied otherwise. 0 (off) and 10 are fine.
#[test]
fn keepalive_below_the_minimum_is_refused() {
    for args in [
        &[
            "serve",
            "--port-keepalive",
            "3",
            "--unix",
            "/nonexistent/x.sock",
        ][..],
        &["serve", "--keepalive", "9", "--unix", "/nonexistent/x.sock"][..],
        &["ping", "-k", "3"][..],
    ] {
        let out = run(args);
        assert_eq!(code(&out), USAGE, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("below the keepalive minimum of 10 s"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let mut server = Server::start(&["--keepalive", "10", "--port-keepalive", "0"]);
    let out = run(&["ping", "-t", &server.target]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("keepalive 10 s"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&["ping", "-k", "0", "-t", &server.target]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("keepalive off"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&["quit", "-t", &server.target]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    server.wait(Duration::from_secs(5)).expect("serve exited");
}

#[test]
fn serve_exits_0_on_quit_and_on_sigterm() {
    let mut server = Server::start(&[]);
    let out = run(&["quit", "-t", &server.target]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let st = server
        .wait(Duration::from_secs(5))
        .expect("serve exited after quit");
    assert_eq!(st.code(), Some(0));

    let mut server = Server::start(&[]);
    // A command still running when the agent is stopped must not survive it.
    let dir = TempDir::new("term");
    let pidfile = dir.path().join("pid");
    let cmd = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let mut runner = tuppence()
        .args(["run", "-t", &server.target, "--", &cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        if let Ok(s) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = s.trim().parse::<u32>()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let st = server
        .wait(Duration::from_secs(5))
        .expect("serve exited after SIGTERM");
    assert_eq!(st.code(), Some(0));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "the agent's command {pid} outlived it"
    );
    let _ = runner.kill();
    let _ = runner.wait();
}

#[test]
fn help_of_every_subcommand() {
    for sub in [
        "run",
        "inject",
        "extract",
        "interrupt",
        "monitor",
        "procinfo",
        "quit",
        "ping",
        "serve",
        "completions",
    ] {
        let out = run(&[sub, "--help"]);
        assert_eq!(code(&out), 0, "{sub} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: tuppence "), "{sub}: {text}");
    }
    let out = run(&["--help"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status:"));
    let out = run(&["--version"]);
    assert_eq!(code(&out), 0);
    let out = run(&["completions", "bash"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tuppence"));
}

#[test]
fn output_files_environment_and_user_errors() {
    let dir = TempDir::new("files");
    let both = dir.path().join("both.txt");
    let b = both.to_str().expect("utf-8");
    let out = tuppence()
        .args([
            "run",
            "-e",
            "GREETING=hello",
            "-e",
            "FROM_HERE",
            "--stdout",
            b,
            "--stderr",
            b,
            "--",
            "echo $GREETING; echo $FROM_HERE >&2",
        ])
        .env("FROM_HERE", "passed")
        .env_remove("TUPPENCE_TARGET")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert_eq!(
        std::fs::read_to_string(&both).expect("read"),
        "hello\npassed\n"
    );

    let out = run(&["run", "-u", "no-such-user-here", "--", "true"]);
    assert_eq!(code(&out), REMOTE_FAILURE, "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);
}

#[test]
fn broken_pipe_gives_the_remote_command_sigpipe() {
    let mut child = tuppence()
        .args(["run", "--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 4];
    stdout.read_exact(&mut buf).expect("some output");
    drop(stdout);
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(128 + 13));
}

#[test]
fn procinfo_monitor_and_interrupt() {
    let server = Server::start(&[]);
    let t = server.target.as_str();
    let out = run(&["procinfo", "-t", t, "-f", "pid,pgid,comm", "--", "sleep 10"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        line.starts_with("pid=") && line.contains(" pgid=") && line.contains(" comm="),
        "{line}"
    );

    let out = run(&["monitor", "-t", t, "--settle", "agent"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&["monitor", "-t", t, "no-such-source"]);
    assert_eq!(code(&out), REMOTE_FAILURE, "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);

    // A command started by one client, signalled from another through its process group,
    // by name and by number (the remote shell here is /bin/sh: dash on Debian, whose kill
    // rejects `kill -15 -- -PGID`; busybox's rejects `kill -s TERM -- -PGID`).
    for (signal, want) in [("TERM", 128 + 15), ("10", 128 + 10)] {
        let mut runner = tuppence()
            .args(["run", "-v", "-t", t, "--", "sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        let err = runner.stderr.take().expect("stderr");
        let mut lines = BufReader::new(err).lines();
        let pgid = loop {
            let line = lines.next().expect("a log line").expect("utf-8");
            if let Some(rest) = line.split("pgid=").nth(1) {
                break rest.split_whitespace().next().expect("pgid").to_owned();
            }
        };
        let out = run(&["interrupt", "-t", t, "--signal", signal, &pgid]);
        assert_eq!(code(&out), 0, "signal {signal}: {}", stderr(&out));
        let st = runner.wait().expect("wait");
        assert_eq!(st.code(), Some(want), "signal {signal}");
    }
}

#[test]
fn sniff_serve_and_request_through_the_cli() {
    let dir = TempDir::new("sniff");
    let sock = dir.path().join("sniff.sock");
    let target = format!("unix:{}", sock.display());
    let mut agent = tuppence()
        .args(["sniff", "serve", "--listen", &target])
        .stdin(Stdio::null())
        .spawn()
        .expect("start sniff agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run(&["sniff", "request", &target, "--id", "7", "--json", "nop"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"id\":7,\"task\":\"nop\",\"status\":\"ok\"}\n"
    );
    // The request-level options may follow the task too.
    let out = run(&["sniff", "request", &target, "nop", "--json", "--id", "8"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"id\":8,"));
    // A listener nobody accepts from: curl connects (the kernel's backlog) and waits up to
    // 30 s for an answer; the client gives up after 0.2 s and its closed connection kills
    // the task.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = run(&[
        "sniff",
        "request",
        &target,
        "--timeout",
        "0.2",
        "nat",
        "--url",
        &url,
    ]);
    assert_eq!(code(&out), 202, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no answer within"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let _ = agent.kill();
    let _ = agent.wait();

    let out = run(&["sniff", "request", &target, "nop"]);
    assert_eq!(code(&out), 202, "agent gone: {}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = run(&["sniff", "frobnicate"]);
    assert_eq!(code(&out), 204);
    // Like every other command, `sniff` and its subcommands document themselves.
    for help in [
        &["sniff", "--help"][..],
        &["sniff", "serve", "--help"],
        &["sniff", "request", "--help"],
        &["sniff", "request", "unix:/x", "cert", "--help"],
    ] {
        let out = run(help);
        assert_eq!(code(&out), 0, "{help:?}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{help:?}"
        );
    }
}

/// A peer sending garbage cannot flood the agent's log: the first violations are logged,
/// the rest counted and reported once when the connection ends.
#[test]
fn protocol_violations_are_logged_a_bounded_number_of_times() {
    let server = Server::start(&[]);
    {
        let mut s = std::os::unix::net::UnixStream::connect(&server.sock).expect("connect");
        // 100 packets of an unknown type 'Z' (4.0 header: type, reserved, len 8, cid, xid).
        let garbage: Vec<u8> = (0..100u16)
            .flat_map(|xid| {
                let x = xid.to_be_bytes();
                [b'Z', 0, 0, 8, 0, 1, x[0], x[1]]
            })
            .collect();
        s.write_all(&garbage).expect("write");
        // Each is answered (71): reading all the answers means the agent took every packet.
        let mut answers = vec![0u8; 100 * 12];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.read_exact(&mut answers).expect("100 answers");
    }
    let mut logged = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server.log.recv_timeout(left).expect("the summary line");
        if line.contains("protocol violation:") {
            logged += 1;
        }
        if line.contains("protocol violations in all") {
            break line;
        }
    };
    assert_eq!(logged, 10);
    assert!(summary.contains("violations=100"), "{summary}");
}

/// A client over `--max-clients` is told why, not "Broken pipe"; the agent logs the
/// refusals without flooding its log.
#[test]
fn a_client_over_max_clients_is_told_why() {
    let server = Server::start(&["--max-clients", "1"]);
    // The one client the agent serves, holding its place.
    let held = run(&["run", "-t", &server.target, "--", "true"]);
    assert_eq!(code(&held), 0, "{}", stderr(&held));
    let mut holder = std::os::unix::net::UnixStream::connect(&server.sock).expect("connect");
    // 4.0 hello, keepalive off; the reply proves the place is taken.
    holder
        .write_all(&[b'h', 0, 0, 12, 0, 0, 0, 0, 4, 0, 0, 0])
        .expect("hello");
    let mut reply = [0u8; 12];
    holder
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    holder.read_exact(&mut reply).expect("hello reply");
    assert_eq!(reply[0], b'h');
    for _ in 0..3 {
        let out = run(&["run", "-t", &server.target, "--", "true"]);
        assert_eq!(code(&out), 202, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("agent refused the connection: too many clients (max 1)"),
            "{err}"
        );
        assert!(!err.to_lowercase().contains("broken pipe"), "{err}");
    }
    // One log line for the three refusals (the rest are counted for the next one).
    let mut refusals = 0;
    while let Ok(line) = server.log.recv_timeout(Duration::from_millis(500)) {
        if line.contains("connection refused") {
            assert!(line.contains("too many clients (max 1)"), "{line}");
            refusals += 1;
        }
    }
    assert_eq!(refusals, 1);
    drop(holder);
}

/// With its stderr a closed pipe (`tuppence serve 2>&1 | head -1`), the agent still logs
/// without dying, serves, and stops on SIGTERM.
#[test]
fn serve_with_a_closed_stderr_keeps_serving_and_stops_on_sigterm() {
    let dir = TempDir::new("closed-stderr");
    let sock = dir.path().join("agent.sock");
    let mut child = spawn_serve(&sock, &[]);
    {
        let err = child.stderr.take().expect("stderr");
        let mut line = String::new();
        BufReader::new(err)
            .read_line(&mut line)
            .expect("ready line");
        assert!(line.starts_with("tuppence serve: ready on"), "{line}");
        // The reader goes away: every log line from now on fails to write.
    }
    let target = format!("unix:{}", sock.display());
    // Audit lines (connect, run, disconnect) are written, and fail, on the agent's loop.
    for _ in 0..2 {
        let out = run(&["run", "-t", &target, "--", "echo ok"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not stop on SIGTERM with its stderr closed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(st.code(), Some(0));
}

// ---------------------------------------------------------------- client side (#13, #14)

/// Runs the binary with `input` on stdin and its stdout read slowly (a consumer that keeps
/// the output pipe full), killing it if it has not exited within `limit`: a hang fails the
/// test with what came back so far instead of hanging the test run.
fn run_slow_reader(args: &[&str], input: Vec<u8>, limit: Duration) -> (Output, usize) {
    let mut child = spawn_piped(args);
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    let _ = tx.send(out.len());
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        out
    });
    let deadline = Instant::now() + limit;
    let mut seen = 0;
    let status = loop {
        while let Ok(n) = rx.try_recv() {
            seen = n;
        }
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tuppence {args:?} hung: killed after {limit:?}, {seen} bytes of output");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = reader.join().expect("reader");
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    let n = stdout.len();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        n,
    )
}

/// #13.1: large stdin through `cat` with slowly drained output, on every kind of target
/// and in both dialects, repeated: the client must never stop reading while it writes.
#[test]
fn large_stdin_through_cat_with_a_slow_reader_does_not_hang() {
    const SIZE: usize = 30_000_000;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 253) as u8).collect();
    let server = Server::start(&[]);
    let legacy = format!("legacy+{}", server.target);
    for target in ["local", server.target.as_str(), legacy.as_str()] {
        for round in 0..2 {
            let (out, n) = run_slow_reader(
                &["run", "-t", target, "--timeout", "120", "--", "cat"],
                data.clone(),
                Duration::from_secs(60),
            );
            assert_eq!(code(&out), 0, "{target} #{round}: {}", stderr(&out));
            assert_eq!(n, SIZE, "{target} #{round}");
            assert!(out.stdout == data, "{target} #{round}: output differs");
        }
    }
}

/// What an exited child wrote to its piped stderr.
fn child_stderr(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// Waits (bounded) for `child` to exit; `None` if it did not.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
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

/// Waits (bounded) for `child` to exit; kills it and returns `None` if it did not.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let st = wait_exit(child, limit);
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    st
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// Reads a FIFO to its end on a thread: `skip` bytes first, then `between` runs, then the
/// rest. The receiver gets the bytes read (or nothing, if no writer ever came): wait on it
/// with a timeout, so a client that never opens the FIFO fails the test instead of
/// hanging it.
fn read_fifo(
    path: &Path,
    skip: usize,
    between: impl FnOnce() + Send + 'static,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(&path).expect("open fifo");
        let mut v = vec![0u8; skip];
        f.read_exact(&mut v).expect("read fifo");
        between();
        f.read_to_end(&mut v).expect("read fifo");
        let _ = tx.send(v);
    });
    rx
}

/// A character device node in a scratch directory with the numbers of `/dev/null` (1:3)
/// or `/dev/full` (1:7), so that a client that replaces what it writes to cannot harm the
/// real ones. `None` (with the reason printed) where nodes cannot be made or opened.
fn device_node(dir: &Path, name: &str, minor: u32) -> Option<PathBuf> {
    let path = dir.join(name);
    let made = Command::new("mknod")
        .arg(&path)
        .args(["c", "1", &minor.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !made || std::fs::OpenOptions::new().write(true).open(&path).is_err() {
        eprintln!(
            "cannot make or open a device node in {}: device destinations not checked here",
            dir.display()
        );
        return None;
    }
    Some(path)
}

fn is_char_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// #13.2: `extract` treats its destination as `cp` does: devices and FIFOs are written in
/// place (and their write errors reported), symbolic links are followed and stay.
#[test]
fn extract_writes_non_regular_destinations_in_place_like_cp() {
    let dir = TempDir::new("cp");
    let src = dir.path().join("src");
    let content = b"extracted bytes\n".repeat(1000);
    std::fs::write(&src, &content).expect("seed");
    let src = src.to_str().expect("utf-8").to_owned();
    let extract_to = |dest: &Path| {
        run(&[
            "extract",
            "-t",
            "local",
            &src,
            dest.to_str().expect("utf-8"),
        ])
    };

    // A symbolic link: its target gets the bytes, the link stays.
    let target = dir.path().join("target");
    std::fs::write(&target, b"old").expect("seed target");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let out = extract_to(&link);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read(&target).expect("target") == content);

    // A FIFO: its reader gets the bytes; it stays a FIFO.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let reader = read_fifo(&fifo, 0, || {});
    let mut child = spawn_piped(&[
        "extract",
        "-t",
        "local",
        &src,
        fifo.to_str().expect("utf-8"),
    ]);
    let got = reader.recv_timeout(Duration::from_secs(20));
    let st = wait_for(&mut child, Duration::from_secs(20));
    assert_eq!(st.and_then(|s| s.code()), Some(0));
    assert!(got.expect("the FIFO's reader got nothing") == content);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .expect("fifo")
            .file_type()
            .is_fifo()
    );

    // Devices (made here, never the real ones): written in place, ENOSPC reported.
    if let Some(null) = device_node(dir.path(), "null", 3) {
        let out = extract_to(&null);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(is_char_device(&null), "the null device was replaced");
    }
    if let Some(full) = device_node(dir.path(), "full", 7) {
        let out = extract_to(&full);
        assert_eq!(code(&out), 205, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("No space left on device") && err.contains("full"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(is_char_device(&full), "the full device was replaced");
    }
    // Nothing else was left in the directory (no temporaries).
    let mut expected = vec!["fifo", "link", "src", "target"];
    for dev in ["full", "null"] {
        if dir.path().join(dev).exists() {
            expected.push(dev);
        }
    }
    expected.sort_unstable();
    assert_eq!(dir.entries(), expected);
}

/// A signal to `tuppence run` reaches the remote command, whether it arrives at once (held
/// until the signal thread starts, which a short command never needs) or later.
#[test]
fn run_forwards_signals_to_the_remote_command() {
    let server = Server::start(&[]);
    for (sig, wait, want) in [
        ("-INT", Duration::ZERO, 128 + 2),
        ("-TERM", Duration::from_millis(300), 128 + 15),
    ] {
        let mut child = tuppence()
            .args(["run", "-v", "-t", &server.target, "--", "sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        let err = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(err).lines();
        // Logged once the command runs (our handlers are in place by then).
        loop {
            let line = lines.next().expect("a log line").expect("utf-8");
            if line.contains("pgid=") {
                break;
            }
        }
        std::thread::sleep(wait);
        let sent = Instant::now();
        signal(child.id(), sig);
        let st = wait_for(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{sig}: the remote command was not ended"));
        assert_eq!(st.code(), Some(want), "{sig}");
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{sig}: {:?}",
            sent.elapsed()
        );
    }
}

/// #13.12: the first Ctrl-C during an inject from a pipe that has stalled aborts it at once,
/// and the agent removes its temporary.
#[test]
fn ctrl_c_aborts_an_inject_from_a_stalled_pipe() {
    let server = Server::start(&[]);
    let dir = TempDir::new("inject-int");
    let remote = dir.path().join("file");
    let mut child = spawn_piped(&[
        "inject",
        "-t",
        &server.target,
        "-",
        remote.to_str().expect("utf-8"),
    ]);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&[7u8; 100_000]).expect("feed");
    // The agent's temporary appears once the inject is under way; then the pipe stalls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir
        .entries()
        .iter()
        .any(|n| n.starts_with(".file.tuppence-"))
    {
        assert!(
            Instant::now() < deadline,
            "no temporary appeared: {:?}",
            dir.entries()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let interrupted = Instant::now();
    signal(child.id(), "-INT");
    let st = wait_for(&mut child, Duration::from_secs(5));
    drop(stdin);
    let st = st.expect("the first Ctrl-C did not end the inject within 5 s");
    assert_eq!(st.code(), Some(130));
    assert!(
        interrupted.elapsed() < Duration::from_secs(3),
        "{:?}",
        interrupted.elapsed()
    );
    let err = child_stderr(&mut child);
    assert!(err.contains("interrupted"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dir.entries().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            dir.entries()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// #13.12: the listeners' socket files go when a server is stopped by a signal: `sniff
/// serve` on SIGTERM, and `serve` also when a second signal forces it out while it stops.
#[test]
fn servers_remove_their_socket_files_on_signals() {
    for sig in ["-TERM", "-INT"] {
        let dir = TempDir::new("sniff-term");
        let sock = dir.path().join("sniff.sock");
        let mut agent = tuppence()
            .args([
                "sniff",
                "serve",
                "--listen",
                &format!("unix:{}", sock.display()),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sniff agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The handler is installed right after the bind; a signal before it would kill.
        std::thread::sleep(Duration::from_millis(200));
        signal(agent.id(), sig);
        let st = wait_for(&mut agent, Duration::from_secs(10)).expect("sniff serve exited");
        assert_eq!(st.code(), Some(0), "{sig}");
        assert!(
            !sock.exists(),
            "sniff serve left {} after {sig}",
            sock.display()
        );
    }

    let mut server = Server::start(&[]);
    signal(server.child.id(), "-TERM");
    signal(server.child.id(), "-TERM");
    let st = server.wait(Duration::from_secs(10)).expect("serve exited");
    assert!(matches!(st.code(), Some(0) | Some(143)), "{st:?}");
    assert!(
        !server.sock.exists(),
        "serve left {}",
        server.sock.display()
    );
}

/// A fake agent on a unix socket: answers the hello in the client's dialect (keepalive
/// off), records every packet, and answers commands with exit 0 only when told to; so a
/// command can be left without an answer forever, as a broken agent would.
struct FakeAgent {
    target: String,
    packets: std::sync::Arc<std::sync::Mutex<Vec<tuppence::wire::Packet>>>,
    _dir: TempDir,
}

impl FakeAgent {
    fn start(answer_commands: bool) -> FakeAgent {
        use std::os::unix::net::UnixListener;
        let dir = TempDir::new("fake");
        let sock = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let packets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = packets.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || fake_agent_conn(conn, answer_commands, &log));
            }
        });
        FakeAgent {
            target: format!("unix:{}", sock.display()),
            packets,
            _dir: dir,
        }
    }

    fn packets(&self) -> Vec<tuppence::wire::Packet> {
        self.packets.lock().expect("packets").clone()
    }
}

fn fake_agent_conn(
    mut conn: std::os::unix::net::UnixStream,
    answer_commands: bool,
    log: &std::sync::Mutex<Vec<tuppence::wire::Packet>>,
) {
    use tuppence::wire::{Decoder, Hello, Packet, Sender, detect_dialect};
    let mut head = [0u8; 8];
    if conn.read_exact(&mut head).is_err() {
        return;
    }
    let Some(dialect) = detect_dialect(&head) else {
        return;
    };
    let mut dec = Decoder::new(dialect, Sender::Client);
    dec.push(&head);
    let mut buf = vec![0u8; 65536];
    loop {
        while let Ok(Some(frame)) = dec.next_frame() {
            let answers = match &frame.packet {
                Packet::Hello(_) => {
                    let (major, minor) = dialect.version();
                    vec![Packet::Hello(Hello {
                        major,
                        minor,
                        keepalive: 0,
                    })]
                }
                Packet::Command(_) if answer_commands => vec![Packet::Major(0), Packet::Minor(0)],
                _ => Vec::new(),
            };
            log.lock().expect("log").push(frame.packet.clone());
            for a in answers {
                let bytes = a.to_bytes(dialect, 1, frame.xid).expect("encode");
                if conn.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
}

/// #14.3: the client enforces timeout + 5 s itself when the agent never reports the end
/// (the C executor with a grandchild holding the output; a hung agent): exit 200, and the
/// agent is sent KILL.
#[test]
fn the_client_times_a_command_out_when_the_agent_never_answers() {
    let agent = FakeAgent::start(false);
    let legacy = format!("legacy+{}", agent.target);
    let checks: Vec<(String, &[u8])> = vec![(agent.target.clone(), b"KILL"), (legacy, b"")];
    let results: Vec<_> = checks
        .into_iter()
        .map(|(target, kill)| {
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut child =
                    spawn_piped(&["run", "-t", &target, "--timeout", "1", "--", "sleep 100"]);
                let st = wait_for(&mut child, Duration::from_secs(30));
                let took = start.elapsed();
                let err = child_stderr(&mut child);
                (target, kill, st, took, err)
            })
        })
        .collect();
    for r in results {
        let (target, kill, st, took, err) = r.join().expect("check");
        let st = st.unwrap_or_else(|| panic!("{target}: no end within 30 s"));
        assert_eq!(st.code(), Some(TIMEOUT), "{target}: {err}");
        // 1 s rounded up, plus the 5 s grace.
        assert!(took >= Duration::from_secs(6), "{target}: {took:?}");
        assert!(took < Duration::from_secs(20), "{target}: {took:?}");
        assert!(
            err.contains("timed out after 1 s") && err.contains("KILL"),
            "{target}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        let _ = kill;
    }
    let kills: Vec<Vec<u8>> = agent
        .packets()
        .into_iter()
        .filter_map(|p| match p {
            tuppence::wire::Packet::Interrupt { signal } => Some(signal.to_vec()),
            _ => None,
        })
        .collect();
    assert!(kills.contains(&b"KILL".to_vec()), "{kills:?}");
    assert!(kills.contains(&Vec::new()), "the 3.0 interrupt: {kills:?}");
}

/// #14.3 and #14.4: in 3.0 the command carries the effective timeout (60 without one,
/// never 0, which the C executor reads as 12 s), and a request that does not fit in the
/// C executor's 32768-byte packet is refused at once with the usage status.
#[test]
fn legacy_requests_carry_a_timeout_and_fit_in_32768_bytes() {
    let agent = FakeAgent::start(true);
    let legacy = format!("legacy+{}", agent.target);
    let out = run(&["run", "-t", &legacy, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&["run", "-t", &legacy, "--timeout", "7", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&["run", "-t", &agent.target, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let timeouts: Vec<u32> = agent
        .packets()
        .into_iter()
        .filter_map(|p| match p {
            tuppence::wire::Packet::Command(c) => Some(c.timeout),
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, vec![60, 7, 0]);

    // 33 000 bytes of command: over the 3.0 limit, fine in 4.0 (the real agent).
    let server = Server::start(&[]);
    let long = format!("true {}", "x".repeat(33_000));
    let legacy = format!("legacy+{}", server.target);
    let start = Instant::now();
    let out = run(&["run", "-t", &legacy, "--", &long]);
    assert_eq!(code(&out), USAGE, "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = stderr(&out);
    assert!(err.contains("32768") && err.contains("3.0"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = run(&["run", "-t", &server.target, "--", &long]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Long data is no problem in either: it is split into packets that fit.
    let data = vec![b'y'; 200_000];
    let out = run_with_input(&["run", "-t", &legacy, "--", "wc -c"], &data);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200000");
}

/// #13.12: an extract whose remote file shrinks while it is read is not reported as a
/// success.
#[test]
fn an_extract_of_a_file_that_shrinks_fails() {
    let server = Server::start(&[]);
    let dir = TempDir::new("shrink");
    let remote = dir.path().join("growing.log");
    std::fs::write(&remote, vec![b'l'; 64 << 20]).expect("seed");
    // The local side is a FIFO this test drains: until it reads, the client cannot write,
    // stops reading the link, and the agent stops reading the file a few MiB in.
    let fifo = dir.path().join("copy");
    mkfifo(&fifo);
    let mut child = spawn_piped(&[
        "extract",
        "-t",
        &server.target,
        remote.to_str().expect("utf-8"),
        fifo.to_str().expect("utf-8"),
    ]);
    // After the first bytes, the file is truncated in place while being read (logrotate's
    // copytruncate); then the FIFO is drained.
    let truncate = {
        let remote = remote.clone();
        move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&remote)
                .expect("reopen")
                .set_len(1000)
                .expect("truncate");
        }
    };
    let got = read_fifo(&fifo, 65536, truncate).recv_timeout(Duration::from_secs(30));
    let st = wait_for(&mut child, Duration::from_secs(30)).expect("extract ended");
    let err = child_stderr(&mut child);
    assert_eq!(st.code(), Some(REMOTE_FAILURE), "{err}");
    assert!(err.contains("shrank"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let got = got.expect("the FIFO's reader got nothing");
    assert!(got.len() < 64 << 20, "{}", got.len());
}

/// The binary is position independent (ELF `e_type` at offset 16, little endian, is 3,
/// `ET_DYN`, not 2, `ET_EXEC`): it is also the agent, a daemon that parses its peer's
/// bytes, often as root, so its own code is loaded at a random address like its libraries'.
/// A non-PIE link starts 0.2 ms faster and was measured and not kept (benches/e2e/README.md).
#[cfg(target_os = "linux")]
#[test]
fn the_binary_is_position_independent() {
    let bytes = std::fs::read(BIN).expect("read the binary");
    assert_eq!(bytes.get(..4), Some(&b"\x7fELF"[..]));
    assert_eq!(bytes.get(16..18), Some(&[3u8, 0][..]), "e_type");
}

/// Where GCC's static unwinder is at hand, the binary links it and does not load
/// `libgcc_s.so.1` at every start (runtimes/cli/build.rs). It is the unwinder of every
/// crt-static Rust binary; thread panics, `catch_unwind`, drops during unwinding and
/// backtraces were checked with it by hand.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_does_not_load_the_shared_unwinder() {
    let archive = Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute() && p.is_file());
    if archive.is_none() || std::env::var_os("TUPPENCE_SHARED_UNWINDER").is_some() {
        eprintln!("skipped: no libgcc_eh.a here, the binary keeps the shared unwinder");
        return;
    }
    let out = Command::new("readelf")
        .args(["-d", BIN])
        .output()
        .expect("readelf (binutils)");
    // A static binary (`.cargo/rustc-static-bin`) has no NEEDED entries at all.
    assert!(out.status.success(), "readelf -d failed");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(!dynamic.contains("libgcc_s"), "{dynamic}");
    let syms = Command::new("readelf")
        .args(["--dyn-syms", "-W", BIN])
        .output()
        .expect("readelf");
    let syms = String::from_utf8_lossy(&syms.stdout);
    assert!(
        !syms
            .lines()
            .any(|l| l.contains(" UND ") && l.contains("_Unwind_")),
        "the unwinder is still imported"
    );
}
