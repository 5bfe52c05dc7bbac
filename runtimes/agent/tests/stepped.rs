//! An embedded agent stepped by its client (`EmbeddedAgent::start_stepped`, what the CLI's
//! `local` target is): it runs on the client's thread while the client waits for it, moves
//! to a thread of its own when data flows, and still does everything an agent on its own
//! thread does (deadlines, quitting, killing what it started when dropped).

#[path = "../../blocking/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{eventually, threads_named, turn};
use tuppence::link::{ClientConfig, Command, Outcome};
use tuppence_agent::embedded::{EmbeddedAgent, Stepper};
use tuppence_agent::serve::LinkDaemonConfig;
use tuppence_blocking::{Session, SteppedPeer};

const CONNECT: Duration = Duration::from_secs(10);
/// The agent's thread, `tuppence-local-agent`, as `/proc` shows it (15 bytes at most).
const AGENT_THREAD: &str = "tuppence-local-";

struct Peer(Stepper);

impl SteppedPeer for Peer {
    fn step(&mut self, limit: Duration) -> std::io::Result<()> {
        self.0.step(limit)
    }
    fn run_alone(&mut self) -> std::io::Result<()> {
        self.0.run_alone()
    }
}

fn config() -> LinkDaemonConfig {
    LinkDaemonConfig {
        audit: false,
        ..LinkDaemonConfig::default()
    }
}

fn start() -> (EmbeddedAgent, Session) {
    let (agent, ours, stepper) = EmbeddedAgent::start_stepped(config()).expect("start");
    let session = Session::with_stepped_peer(
        ours,
        ClientConfig::default(),
        CONNECT,
        Box::new(Peer(stepper)),
    )
    .expect("session");
    (agent, session)
}

fn me() -> Vec<u8> {
    tuppence_agent::User::current()
        .expect("the current user has a passwd entry")
        .name()
        .to_vec()
}

fn command(text: &str) -> Command {
    Command::new(text.as_bytes().to_vec()).user(me())
}

/// A command without output runs with no thread but the caller's: neither the agent nor
/// the session starts one. Dropping the agent afterwards shuts it down on this thread.
#[test]
fn a_short_command_runs_on_the_callers_thread_alone() {
    let _turn = turn();
    let (agent, session) = start();
    let out = session.output(command("exit 3")).expect("output");
    assert_eq!(out.outcome, Outcome::Exited(3));
    assert_eq!(
        threads_named(AGENT_THREAD),
        0,
        "the agent moved to a thread"
    );
    assert_eq!(
        threads_named("tuppence-reader"),
        0,
        "a reader thread started"
    );
    drop(session);
    let t = Instant::now();
    drop(agent);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(threads_named(AGENT_THREAD), 0);
}

/// Output moves the agent to a thread of its own (the session's reader thread starts, and
/// nobody would step the agent any more): 8 MiB arrive whole, and the thread ends with the
/// agent.
#[test]
fn data_moves_the_agent_to_its_thread_and_arrives_whole() {
    let _turn = turn();
    let (agent, session) = start();
    let size = 8 << 20;
    let out = session
        .output(command(&format!("head -c {size} /dev/zero")))
        .expect("output");
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert_eq!(out.stdout.len(), size);
    assert!(out.stdout.iter().all(|&b| b == 0));
    assert_eq!(
        threads_named(AGENT_THREAD),
        1,
        "the agent is not on its thread"
    );
    // It keeps serving from there.
    let again = session.output(command("exit 7")).expect("output");
    assert_eq!(again.outcome, Outcome::Exited(7));
    drop(session);
    drop(agent);
    assert!(
        eventually(Duration::from_secs(5), || threads_named(AGENT_THREAD) == 0),
        "the agent's thread outlived it"
    );
}

/// The agent's own timers run while the caller steps it: a command past its timeout is
/// killed by the agent and reported so, although no data ever flows.
#[test]
fn the_agents_deadline_fires_while_it_is_stepped() {
    let (_agent, session) = start();
    let t = Instant::now();
    let out = session
        .output(command("sleep 30").timeout(Duration::from_secs(1)))
        .expect("output");
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Whether process `pid` is gone (reaped: not even a zombie is left).
fn gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Dropping an agent that is still stepped kills and reaps what it started, on the
/// dropping thread.
#[test]
fn dropping_a_stepped_agent_kills_and_reaps_its_commands() {
    let (agent, session) = start();
    let dir = std::env::temp_dir().join(format!("tuppence-stepped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pidfile = dir.join("pid");
    let run = session
        .run(command(&format!(
            "echo $$ > {}.part && mv {0}.part {0} && exec sleep 30",
            pidfile.display()
        )))
        .expect("run");
    // Waiting for events steps the agent, which starts the command.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pidfile.exists() && Instant::now() < deadline {
        let ev = run
            .next_timeout(Some(Duration::from_millis(20)))
            .expect("next");
        assert!(ev.is_none(), "the command ended early: {ev:?}");
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the command wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(!gone(pid));
    drop(run);
    drop(session);
    drop(agent);
    assert!(
        eventually(Duration::from_secs(3), || gone(pid)),
        "the command survived its agent"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An agent that ends while stepped (a client's quit) closes its end: the session sees the
/// link closed instead of waiting, and dropping the agent afterwards is immediate.
#[test]
fn a_stepped_agent_that_quits_closes_the_link() {
    let _turn = turn();
    let (agent, session) = start();
    session.quit().expect("quit");
    let r = session.output(command("exit 0"));
    assert!(r.is_err() || r.is_ok_and(|o| matches!(o.outcome, Outcome::LinkLost(_))));
    assert!(session.is_closed());
    let t = Instant::now();
    drop(agent);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(threads_named(AGENT_THREAD), 0);
}

/// Two threads waiting on the same stepped agent take turns stepping it: both commands
/// end with their own status.
#[test]
fn two_waiters_take_turns_stepping_the_agent() {
    let (_agent, session) = start();
    std::thread::scope(|s| {
        let slow = s.spawn(|| session.output(command("sleep 0.3; exit 4")));
        let fast = s.spawn(|| session.output(command("exit 5")));
        let fast = fast.join().expect("thread").expect("output");
        let slow = slow.join().expect("thread").expect("output");
        assert_eq!(fast.outcome, Outcome::Exited(5));
        assert_eq!(slow.outcome, Outcome::Exited(4));
    });
}
