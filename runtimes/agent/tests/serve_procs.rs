//! Every descendant dies with its command (ARCHITECTURE.md, "Agent behaviour"): a command
//! that starts a process in a new session (`setsid`) and a double-forked grandchild, then
//! times out, is interrupted with KILL, or loses its client, leaves no process and no
//! zombie behind. Where cgroups cannot be used (here: switched off) the process group is
//! killed, which `setsid` escapes; the agent is a subreaper there too and reaps what it
//! inherits.
//!
//! The agent runs in a child process, so that its children (and zombies) are its own and
//! can be told apart from the test's.

mod agent_harness;

use std::net::Shutdown;
use std::time::Duration;

use agent_harness::{
    ChildAgent, PATIENCE, children_of, eventually, gone, parent_of, proc_state, zombies_of,
};
use tuppence::link::{Command, Outcome, Signal};
use tuppence_blocking::{Run, RunEvent, Session};

/// The agent of the tests below, when started by them (does nothing otherwise).
#[test]
#[ignore = "the agent process the tests start; not a test by itself"]
fn agent_process() {
    agent_harness::run_child_agent();
}

/// Prints the pid of a `setsid` process (own session and group), then of a double-forked
/// grandchild (its parent exits at once; it stays in the command's group), then `ready`,
/// and runs until killed.
const ESCAPERS: &str = "setsid sleep 1000 & echo $!; \
     sh -c 'sleep 1000 & echo $!'; \
     echo ready; \
     exec sleep 1000";

/// An agent whose commands run in cgroups, or `None` (after saying why) where this system
/// does not allow that.
fn cgroup_agent() -> Option<ChildAgent> {
    match tuppence_agent::cgroup::CgroupTree::create() {
        Ok(_) => Some(ChildAgent::spawn()),
        Err(e) => {
            println!("SKIPPED: cgroup v2 cannot be used here: {e}");
            None
        }
    }
}

/// Starts [`ESCAPERS`]; returns it running, with the two pids it printed.
fn run_escapers(s: &Session, timeout: Option<Duration>) -> (Run<'_>, (u32, u32)) {
    let mut cmd = Command::new(ESCAPERS);
    if let Some(t) = timeout {
        cmd = cmd.timeout(t);
    }
    let run = s.run(cmd).unwrap();
    let pids = escaper_pids(&run);
    (run, pids)
}

/// Reads the command's output up to `ready`; returns the two pids it printed.
fn escaper_pids(run: &Run<'_>) -> (u32, u32) {
    let mut seen = Vec::new();
    while !seen.ends_with(b"ready\n") {
        match run.next_timeout(Some(PATIENCE)).unwrap() {
            Some(RunEvent::Stdout(d)) => seen.extend_from_slice(&d),
            other => panic!("waiting for the pids: {other:?} after {seen:?}"),
        }
    }
    let text = String::from_utf8(seen).unwrap();
    let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(pids.len(), 2, "{text:?}");
    for &pid in &pids {
        // Just forked or exec'ing (state `D` for a moment on a loaded machine): wait for it
        // to be a running process, which it must become.
        assert!(
            eventually(PATIENCE, || matches!(proc_state(pid), Some(b'S' | b'R'))),
            "{pid} is not running: state {:?}",
            proc_state(pid)
        );
    }
    (pids[0], pids[1])
}

/// Nothing is left: both processes gone (not even zombies), no zombie child of the agent,
/// and the agent's command cgroups removed.
fn assert_nothing_left(agent: &ChildAgent, pids: [u32; 2], how: &str) {
    for pid in pids {
        assert!(
            eventually(PATIENCE, || gone(pid)),
            "{how}: process {pid} survived its command: state {:?}, parent {:?}",
            proc_state(pid),
            parent_of(pid)
        );
    }
    assert!(
        eventually(PATIENCE, || zombies_of(agent.pid()).is_empty()),
        "{how}: zombies left: {:?}",
        zombies_of(agent.pid())
    );
    assert!(
        eventually(PATIENCE, || command_cgroups(agent.pid()).is_empty()),
        "{how}: command cgroups left: {:?}",
        command_cgroups(agent.pid())
    );
}

/// The leaves of the agent's cgroup subtrees that still exist.
fn command_cgroups(agent: u32) -> Vec<std::path::PathBuf> {
    let Ok(own) = tuppence_agent::cgroup::own_cgroup_dir() else {
        return Vec::new();
    };
    let prefix = format!("tuppence-{agent}-");
    let mut leaves = Vec::new();
    for tree in std::fs::read_dir(own).into_iter().flatten().flatten() {
        if !tree.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for leaf in std::fs::read_dir(tree.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if leaf.file_type().is_ok_and(|t| t.is_dir()) {
                leaves.push(leaf.path());
            }
        }
    }
    leaves
}

#[test]
fn a_timeout_kills_every_descendant() {
    let Some(agent) = cgroup_agent() else {
        return;
    };
    let s = agent.session();
    let (run, (escaped, grandchild)) = run_escapers(&s, Some(Duration::from_secs(2)));
    assert_eq!(
        parent_of(grandchild),
        Some(agent.pid()),
        "the orphaned grandchild was not adopted by the agent"
    );
    assert_eq!(run.collect().unwrap().outcome, Outcome::TimedOut);
    assert_nothing_left(&agent, [escaped, grandchild], "timeout");
    agent.quit(s);
}

#[test]
fn an_interrupt_with_kill_kills_every_descendant() {
    let Some(agent) = cgroup_agent() else {
        return;
    };
    let s = agent.session();
    let (run, pids) = run_escapers(&s, None);
    run.interrupt(Signal::KILL).unwrap();
    assert_eq!(
        run.collect().unwrap().outcome,
        Outcome::Signaled(libc::SIGKILL as u32)
    );
    assert_nothing_left(&agent, pids.into(), "interrupt");
    agent.quit(s);
}

#[test]
fn a_disconnect_kills_every_descendant() {
    let Some(agent) = cgroup_agent() else {
        return;
    };
    let (s, handle) = agent.session_with_handle();
    let (_run, pids) = run_escapers(&s, None);
    handle.shutdown(Shutdown::Both).unwrap();
    assert_nothing_left(&agent, pids.into(), "disconnect");
    // The agent goes on.
    let s = agent.session();
    assert_eq!(s.output(Command::new("echo on")).unwrap().stdout, b"on\n");
    agent.quit(s);
}

#[test]
fn a_command_that_ends_takes_its_background_jobs_along() {
    let Some(agent) = cgroup_agent() else {
        return;
    };
    let s = agent.session();
    // The shell exits at once; its `setsid` job closes the pipes so the status is not
    // held back; it must still die with the command.
    let out = s
        .output(Command::new(
            "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
        ))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_nothing_left(&agent, [pid, pid], "end of the command");
    agent.quit(s);
}

#[test]
fn without_cgroups_the_group_dies_and_orphans_are_reaped_but_setsid_escapes() {
    let agent = ChildAgent::spawn_with("cgroups=0");
    let s = agent.session();
    let (run, (escaped, grandchild)) = run_escapers(&s, Some(Duration::from_secs(2)));
    // The orphan comes to the agent (a subreaper), not to PID 1.
    assert_eq!(parent_of(grandchild), Some(agent.pid()));
    assert_eq!(run.collect().unwrap().outcome, Outcome::TimedOut);
    // The grandchild was in the command's process group: killed, and reaped by the agent.
    assert!(
        eventually(PATIENCE, || gone(grandchild)),
        "the grandchild in the command's group survived: {:?}",
        proc_state(grandchild)
    );
    // The documented limit: a process that left the group with `setsid` survives the
    // kill. Its parent (the shell) is gone, so it is the agent's now.
    assert!(
        eventually(PATIENCE, || parent_of(escaped) == Some(agent.pid())),
        "the escaped process was not adopted by the agent: parent {:?}",
        parent_of(escaped)
    );
    assert!(
        matches!(proc_state(escaped), Some(b'S' | b'R')),
        "without cgroups the setsid process is expected to survive (documented limit): {:?}",
        proc_state(escaped)
    );
    // When it ends, the agent reaps it: no zombie.
    // SAFETY: kill of a process this test found running above.
    assert_eq!(unsafe { libc::kill(escaped as i32, libc::SIGKILL) }, 0);
    assert!(
        eventually(PATIENCE, || gone(escaped)),
        "the agent did not reap the process it adopted: {:?}",
        proc_state(escaped)
    );
    assert!(zombies_of(agent.pid()).is_empty());
    agent.quit(s);
}

#[test]
fn orphans_that_exit_by_themselves_are_reaped_by_the_agent() {
    let agent = ChildAgent::spawn_with("cgroups=0");
    let s = agent.session();
    // The grandchild outlives its parent by a little, then exits on its own while the
    // command still runs.
    let run = s
        .run(Command::new(
            "sh -c 'sleep 0.5 & echo $!'; echo ready; exec sleep 1000",
        ))
        .unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"ready\n") {
        match run.next_timeout(Some(PATIENCE)).unwrap() {
            Some(RunEvent::Stdout(d)) => seen.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    let orphan: u32 = String::from_utf8_lossy(&seen)
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let adopted = parent_of(orphan);
    assert!(
        adopted == Some(agent.pid()) || gone(orphan),
        "the orphan went to {adopted:?}, not to the agent"
    );
    assert!(
        eventually(PATIENCE, || gone(orphan)),
        "the orphan was not reaped: {:?}, agent's children {:?}",
        proc_state(orphan),
        children_of(agent.pid())
    );
    run.interrupt(Signal::KILL).unwrap();
    assert!(matches!(
        run.collect().unwrap().outcome,
        Outcome::Signaled(_)
    ));
    assert!(eventually(PATIENCE, || zombies_of(agent.pid()).is_empty()));
    agent.quit(s);
}

#[test]
fn quitting_the_agent_leaves_nothing_behind() {
    let Some(agent) = cgroup_agent() else {
        return;
    };
    let s = agent.session();
    let (run, pids) = run_escapers(&s, None);
    let agent_pid = agent.pid();
    let quitter = agent.session();
    agent.quit(quitter);
    drop(run);
    drop(s);
    for pid in <[u32; 2]>::from(pids) {
        assert!(
            eventually(PATIENCE, || gone(pid)),
            "process {pid} survived the agent: {:?}, parent {:?}",
            proc_state(pid),
            parent_of(pid)
        );
    }
    assert!(
        command_cgroups(agent_pid).is_empty(),
        "cgroups left by the agent: {:?}",
        command_cgroups(agent_pid)
    );
}
