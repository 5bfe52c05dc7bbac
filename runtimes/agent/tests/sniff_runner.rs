//! The task runner on its own, with real processes: what "finished" means, and that nothing
//! of a task outlives it.

mod sniff_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::sniff::{ProcessSpec, TaskOutput};
use tuppence_agent::sniff::{RunnerConfig, StartError, TaskRunner};

use sniff_support::*;

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new(
        "/bin/sh",
        vec![
            Bytes::from_static(b"-c"),
            Bytes::from(script.to_owned()),
            Bytes::from_static(b"t"),
        ],
    )
}

/// Runs the runner until `key` finishes; returns its output and how long it took.
fn finish(runner: &mut TaskRunner<u32>, key: u32) -> (TaskOutput, Duration) {
    let started = Instant::now();
    loop {
        runner.wait(Some(Duration::from_millis(100))).unwrap();
        if let Some((k, out)) = runner.poll_finished() {
            assert_eq!(k, key);
            return (out, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "task {key} hangs"
        );
    }
}

#[test]
fn output_is_collected_until_eof() {
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    r.start(1, &sh("echo one; echo two >&2; printf 'three'"))
        .unwrap();
    let (out, _) = finish(&mut r, 1);
    assert_eq!(out, TaskOutput::Complete(Bytes::from_static(b"one\nthree")));
    assert_eq!(r.running(), 0);
}

#[test]
fn completion_needs_eof_and_exit() {
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    // Closes stdout at once but lives on: not finished before it exits.
    r.start(1, &sh("exec >&-; sleep 0.4")).unwrap();
    let (out, took) = finish(&mut r, 1);
    assert_eq!(out, TaskOutput::Complete(Bytes::new()));
    assert!(took >= Duration::from_millis(350), "{took:?}");
    // Exits at once, but a background child keeps stdout open: not finished before EOF.
    r.start(2, &sh("(sleep 0.4; echo late) &")).unwrap();
    let (out, took) = finish(&mut r, 2);
    assert_eq!(out, TaskOutput::Complete(Bytes::from_static(b"late\n")));
    assert!(took >= Duration::from_millis(350), "{took:?}");
}

#[test]
fn a_finished_task_leaves_no_process_behind() {
    let dir = TempDir::new("runner");
    let pidfile = dir.path("pid");
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    // The background sleep lets go of stdout, so the task is complete when the shell exits;
    // the sleep must not outlive it.
    let script = format!(
        "echo $$ > {}; sleep 30 >/dev/null & echo done",
        pidfile.display()
    );
    r.start(1, &sh(&script)).unwrap();
    let (out, _) = finish(&mut r, 1);
    assert_eq!(out, TaskOutput::Complete(Bytes::from_static(b"done\n")));
    assert_group_gone(read_pid(&pidfile));
}

#[test]
fn abort_kills_and_reaps_and_reports_nothing() {
    let dir = TempDir::new("runner");
    let pidfile = dir.path("pid");
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    let script = format!("echo $$ > {}; sleep 30 & wait", pidfile.display());
    r.start(7, &sh(&script)).unwrap();
    let pid = read_pid(&pidfile);
    assert_eq!(r.pgid(7), Some(pid));
    assert!(r.abort(7));
    assert!(!r.abort(7));
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.dying() > 0 {
        assert!(Instant::now() < deadline, "the killed task is never reaped");
        r.wait(Some(Duration::from_millis(100))).unwrap();
    }
    assert_group_gone(pid);
    assert_eq!(r.poll_finished(), None);
}

#[test]
fn the_cap_stops_a_task_that_never_ends() {
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    let mut spec = sh("yes");
    spec.output_cap = 100_000;
    r.start(1, &spec).unwrap();
    let (out, _) = finish(&mut r, 1);
    assert_eq!(out, TaskOutput::OutputTooLarge);
}

#[test]
fn start_errors_are_typed() {
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    let missing = ProcessSpec::new("/nonexistent/program", Vec::new());
    assert!(matches!(r.start(1, &missing), Err(StartError::Spawn(_))));
    let mut bad_env = sh("true");
    bad_env.env.push((Bytes::from_static(b"A=B"), Bytes::new()));
    let e = r.start(2, &bad_env).unwrap_err();
    assert!(matches!(e, StartError::InvalidEnv(_)));
    assert_eq!(e.output(), TaskOutput::SpawnFailed);
    let nul = ProcessSpec::new("/bin/sh", vec![Bytes::from_static(b"-c\0")]);
    assert!(r.start(3, &nul).is_err());
    assert_eq!(r.running(), 0);
}

#[test]
fn shutdown_kills_everything() {
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    for k in 0..10 {
        r.start(k, &sh("sleep 30")).unwrap();
    }
    let pids: Vec<u32> = (0..10).filter_map(|k| r.pgid(k)).collect();
    assert_eq!(pids.len(), 10);
    assert_eq!(r.shutdown(Duration::from_secs(10)), 0);
    for pid in pids {
        assert_group_gone(pid);
    }
}

/// Waits until process `pid` has left no trace (not even a zombie), driving the runner
/// meanwhile: a killed task's orphan is reaped by the runner (its subreaper) when it
/// handles the `SIGCHLD`, which it does only while it runs. (Without this the test passed
/// only when another test of this binary happened to reap, and alone it always failed.)
fn assert_process_gone(r: &mut TaskRunner<u32>, pid: u32) {
    wait_until(Duration::from_secs(20), "the process to be gone", || {
        r.wait(Some(Duration::from_millis(10))).unwrap();
        proc_stat(pid).is_none()
    });
}

#[test]
fn a_task_takes_its_setsid_descendants_along() {
    let mut r = TaskRunner::new(RunnerConfig::default()).unwrap();
    let Some(tree) = r.cgroup_tree().map(ToOwned::to_owned) else {
        println!("SKIPPED: cgroup v2 cannot be used here, tasks run without cgroups");
        return;
    };
    let dir = TempDir::new("runner");
    // Aborted: a process in its own session, which the task's group kill does not reach.
    let pidfile = dir.path("aborted");
    let script = format!(
        "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}; wait",
        pidfile.display()
    );
    r.start(1, &sh(&script)).unwrap();
    let escaped = read_pid(&pidfile);
    assert!(r.abort(1));
    assert_process_gone(&mut r, escaped);
    // Finished: the shell exits; what it left in another session dies with the task.
    let pidfile = dir.path("finished");
    let script = format!(
        "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}; echo done",
        pidfile.display()
    );
    r.start(2, &sh(&script)).unwrap();
    let (out, _) = finish(&mut r, 2);
    assert_eq!(out, TaskOutput::Complete(Bytes::from_static(b"done\n")));
    let finished = read_pid(&pidfile);
    assert_process_gone(&mut r, finished);
    // The tasks' cgroups are removed once their processes are gone, and the subtree with
    // the runner (emptied leaves are kept as spares until then).
    assert_eq!(r.shutdown(Duration::from_secs(10)), 0);
    drop(r);
    wait_until(
        Duration::from_secs(20),
        "the task cgroups to be removed",
        || !tree.exists(),
    );
}
