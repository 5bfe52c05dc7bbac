//! The agent's log: every string a client supplies (command lines, paths, user names, source
//! and signal names) is escaped, so a client cannot forge log lines or send escape sequences
//! to whoever reads the log on a terminal. This binary captures the log of an agent running
//! in a thread with a real `tracing-subscriber` formatter, as `tuppence serve` uses it.

mod agent_harness;

use std::io::Write;
use std::sync::{Mutex, Once, PoisonError};

use agent_harness::{PATIENCE, TempDir, TestAgent, settle};
use bytes::Bytes;
use tuppence::link::{Command, Outcome, Signal};
use tuppence::wire::{CommandRequest, Packet};
use tuppence_agent::serve::LinkDaemonConfig;

/// Everything logged by this test binary.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .init();
    });
}

/// What a forger appends: a line break, a line that looks like the agent's, and an escape
/// sequence (red text on a terminal).
const FORGED: &str = "\n2026-01-01T00:00:00.000000Z  INFO FORGED by a client\x1b[31m";
/// How it must appear in the log: on the line of the record that carried it, escaped.
const ESCAPED: &str = "\\x0a2026-01-01T00:00:00.000000Z  INFO FORGED by a client\\x1b[31m";

#[test]
fn client_strings_cannot_forge_log_lines() {
    capture_logs();
    let agent = TestAgent::with_config(LinkDaemonConfig {
        audit: true,
        ..agent_harness::quiet_config()
    });
    let s = agent.session();
    let dir = TempDir::new("logs");

    let out = s
        .output(Command::new(format!("true '{FORGED}'")).env("X", FORGED))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    let odd = dir.join(&format!("file{FORGED}"));
    let odd = odd.to_str().unwrap();
    s.inject("root", odd, 0o600, &b"data"[..], |_| {}).unwrap();
    s.extract("root", &format!("{odd}.missing"), Vec::new(), |_| {})
        .unwrap_err();
    let out = s
        .output(Command::new("true").user(format!("nobody{FORGED}")))
        .unwrap();
    assert!(matches!(out.outcome, Outcome::Failed { .. }), "{out:?}");
    let mut m = s.monitor(&format!("file:{odd}.later")).unwrap();
    settle(&mut m, 1);
    m.end().unwrap();
    m.next_timeout(Some(PATIENCE)).unwrap();
    drop(m);
    let run = s.run(Command::new("sleep 100")).unwrap();
    run.interrupt(Signal::named(format!("INT{FORGED}")))
        .unwrap();
    run.interrupt(Signal::named("KILL")).unwrap();
    run.collect().unwrap();
    drop(s);
    // An environment entry without `=` (ignored, and logged at debug level).
    let mut raw = agent_harness::Raw::connect(&agent.sock);
    raw.hello();
    raw.send_packet(
        1,
        &Packet::Command(CommandRequest {
            user: Bytes::from_static(b"root"),
            command: Bytes::from_static(b"true"),
            timeout: 0,
            request_tty: 0,
            reserved: [0, 0],
            env: vec![Bytes::from(format!("NO_EQUALS{FORGED}"))],
        }),
    );
    raw.frames_until(1, |p| matches!(p, Packet::Minor(_)));
    drop(raw);
    agent.stop();

    let log = LOG.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let text = String::from_utf8_lossy(&log);
    assert!(
        !log.contains(&0x1b),
        "an escape sequence reached the log:\n{text}"
    );
    // A raw line break would start a line with the forged text.
    let forged_start = FORGED.trim_start_matches('\n');
    let forged_start = &forged_start[..forged_start.find('\x1b').unwrap_or(forged_start.len())];
    for line in text.lines() {
        assert!(
            !line.starts_with(forged_start),
            "a forged line in the log: {line:?}\n{text}"
        );
    }
    // The command, the inject, the extract, the failed command, the monitor, the signal
    // (its warning and its record), the environment entry: each logged, the forgery escaped
    // inside its line.
    let escaped = text.lines().filter(|l| l.contains(ESCAPED)).count();
    assert!(escaped >= 8, "{escaped} escaped lines in\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("env entry without") && l.contains(ESCAPED)),
        "{text}"
    );
}
