//! The agent's serve loop on a real unix socket, driven by the blocking client.

use std::time::{Duration, Instant};

use tuppence::link::{Command, Outcome, Signal};
use tuppence_agent::serve::{Agent, AgentConfig, RunEnd};
use tuppence_blocking::{RunEvent, Session};
use tuppence_transport::{Listener, Target};

fn start_agent() -> (
    tempdir::TempDir,
    Target,
    std::thread::JoinHandle<std::io::Result<RunEnd>>,
) {
    let dir = tempdir::TempDir::new();
    let path = dir.0.join("agent.sock");
    let listener = Listener::unix(&path, 0o600).unwrap();
    let mut agent = Agent::new(AgentConfig {
        audit: false,
        ..AgentConfig::default()
    })
    .unwrap();
    agent.add_listener(listener).unwrap();
    let handle = std::thread::spawn(move || agent.run());
    let target: Target = format!("unix:{}", path.display()).parse().unwrap();
    (dir, target, handle)
}

mod tempdir {
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new() -> TempDir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!("tuppence-smoke-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn echo_stderr_exit_code_and_quit() {
    let (_dir, target, agent) = start_agent();
    let s = Session::connect(&target, Duration::from_secs(5)).unwrap();
    let out = s
        .output(Command::new("echo out; echo err >&2; exit 3"))
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.outcome, Outcome::Exited(3));
    s.quit().unwrap();
    assert_eq!(agent.join().unwrap().unwrap(), RunEnd::Quit);
}

#[test]
fn timeout_with_a_grandchild_holding_the_pipes() {
    let (_dir, target, _agent) = start_agent();
    let s = Session::connect(&target, Duration::from_secs(5)).unwrap();
    let start = Instant::now();
    let out = s
        .output(Command::new("sleep 30 & wait").timeout(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn interrupt_and_stdin_and_tty() {
    let (_dir, target, _agent) = start_agent();
    let s = Session::connect(&target, Duration::from_secs(5)).unwrap();
    let run = s.run(Command::new("sleep 100")).unwrap();
    run.interrupt(Signal::TERM).unwrap();
    assert_eq!(
        run.next().unwrap(),
        Some(RunEvent::Finished(Outcome::Signaled(15)))
    );

    let run = s.run(Command::new("cat")).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            run.write_stdin(&data).unwrap();
            run.close_stdin().unwrap();
        });
    });
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(out.stdout == data);

    let out = s.output(Command::new("tty").tty(true)).unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(
        out.stdout.starts_with(b"/dev/pts/"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn inject_and_extract() {
    let (dir, target, _agent) = start_agent();
    let s = Session::connect(&target, Duration::from_secs(5)).unwrap();
    let path = dir.0.join("injected");
    let content: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let p = path.to_str().unwrap();
    s.inject("root", p, 0o640, &content[..], |_| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let mut back = Vec::new();
    s.extract("root", p, &mut back, |_| {}).unwrap();
    assert!(back == content);
    let e = s
        .extract("root", "/nonexistent/x", Vec::new(), |_| {})
        .unwrap_err();
    assert!(
        matches!(e, tuppence_blocking::Error::Remote { errno: 2, .. }),
        "{e}"
    );
    let e = s.extract("root", "/tmp", Vec::new(), |_| {}).unwrap_err();
    assert!(
        matches!(e, tuppence_blocking::Error::Remote { errno: 21, .. }),
        "{e}"
    );
}
