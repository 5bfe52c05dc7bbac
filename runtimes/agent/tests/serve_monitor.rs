//! Monitors through the serve loop: the agent's own trail and followed files.

mod agent_harness;

use std::io::Write;
use std::time::{Duration, Instant};

use agent_harness::{PATIENCE, TempDir, TestAgent};
use tuppence::link::{Command, Outcome};
use tuppence_blocking::{Monitor, MonitorEvent};

/// Collects monitor data until `Settled(seq)`.
fn settle(m: &mut Monitor<'_>, seq: u32) -> String {
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
fn wait_for(m: &mut Monitor<'_>, needle: &str, limit: Duration) -> Result<String, String> {
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

#[test]
fn agent_trail_shows_commands_of_another_connection_after_settle() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Nothing happened yet: settling is immediate and empty.
    assert_eq!(settle(&mut m, 1), "");

    let worker = agent.session();
    let cid = worker.info().cid;
    let out = worker
        .output(Command::new("echo trail-marker; exit 5"))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Exited(5));
    let text = settle(&mut m, 2);
    let run_line = text
        .lines()
        .find(|l| l.contains(" run ") && l.contains("cmd=\"echo trail-marker; exit 5\""))
        .unwrap_or_else(|| panic!("no run record in {text:?}"));
    assert!(run_line.contains(&format!("cid={cid} ")), "{run_line}");
    assert!(run_line.contains("user=\"root\""), "{run_line}");
    let pid = run_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap();
    let end_line = text
        .lines()
        .find(|l| l.contains(" end ") && l.contains(&format!("pid={pid} ")))
        .unwrap_or_else(|| panic!("no end record in {text:?}"));
    assert!(end_line.contains("exit code=5"), "{end_line}");
    assert!(
        text.find(run_line).unwrap() < text.find(end_line).unwrap(),
        "{text}"
    );

    m.end().unwrap();
    assert_eq!(
        m.next_timeout(Some(PATIENCE)).unwrap(),
        Some(MonitorEvent::Finished(Outcome::Completed))
    );
}

#[test]
fn agent_trail_delivers_without_settle() {
    // The watcher connects first, so the agent handles its connection before the worker's
    // in each turn of its loop: records made late in a turn must still go out promptly.
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    let (worker, handle) = agent.session_with_handle();
    let cid = worker.info().cid;
    let out = worker.output(Command::new("exit 6")).unwrap();
    assert_eq!(out.outcome, Outcome::Exited(6));
    let limit = Duration::from_secs(3);
    if let Err(text) = wait_for(&mut m, "exit code=6", limit) {
        panic!("the end record did not arrive within {limit:?}: {text:?}");
    }
    handle.shutdown(std::net::Shutdown::Both).unwrap();
    let disconnect = format!("cid={cid} disconnect");
    if let Err(text) = wait_for(&mut m, &disconnect, limit) {
        panic!("the disconnect record did not arrive within {limit:?}: {text:?}");
    }
}

#[test]
fn followed_file_shows_appended_lines() {
    let agent = TestAgent::start();
    let s = agent.session();
    let dir = TempDir::new("follow");
    let path = dir.join("log.txt");
    std::fs::write(&path, b"before the monitor\n").unwrap();
    let mut m = s.monitor(&format!("file:{}", path.display())).unwrap();
    assert_eq!(settle(&mut m, 1), "", "old lines are not replayed");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"first line\nsecond line\n").unwrap();
    assert_eq!(settle(&mut m, 2), "first line\nsecond line\n");
    f.write_all(b"third\n").unwrap();
    // Lines arrive by themselves too (the source is polled).
    if let Err(text) = wait_for(&mut m, "third\n", Duration::from_secs(5)) {
        panic!("appended line not delivered: {text:?}");
    }
    assert_eq!(settle(&mut m, 3), "");

    // A file that does not exist yet is waited for; once there, all of it is new.
    let later = dir.join("later.txt");
    let mut m = s.monitor(&format!("file:{}", later.display())).unwrap();
    assert_eq!(settle(&mut m, 1), "");
    std::fs::write(&later, b"born\n").unwrap();
    assert_eq!(settle(&mut m, 2), "born\n");
}

#[test]
fn unknown_source_is_enoent() {
    let agent = TestAgent::start();
    let s = agent.session();
    let m = s.monitor("no-such-source").unwrap();
    assert_eq!(
        m.next_timeout(Some(PATIENCE)).unwrap(),
        Some(MonitorEvent::Finished(Outcome::Failed { errno: 2 }))
    );
    // A directory cannot be followed (a missing file can: it is waited for).
    let dir = TempDir::new("follow-dir");
    let m = s
        .monitor(&format!("file:{}", dir.path().display()))
        .unwrap();
    assert_eq!(
        m.next_timeout(Some(PATIENCE)).unwrap(),
        Some(MonitorEvent::Finished(Outcome::Failed { errno: 21 }))
    );
}

#[test]
fn agent_trail_records_transfers() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    let worker = agent.session();
    let cid = worker.info().cid;
    let dir = TempDir::new("trail-files");
    let path = dir.join_str("f.txt");
    worker
        .inject("root", &path, 0o640, &b"12345"[..], |_| {})
        .unwrap();
    worker.extract("root", &path, Vec::new(), |_| {}).unwrap();
    let missing = dir.join_str("missing");
    assert!(
        worker
            .extract("root", &missing, Vec::new(), |_| {})
            .is_err()
    );
    let text = settle(&mut m, 1);
    let expect = [
        format!("cid={cid} xid=1 inject user=\"root\" path=\"{path}\" mode=0640 bytes=5 status=0"),
        format!("cid={cid} xid=2 extract user=\"root\" path=\"{path}\" bytes=5 status=0"),
        format!("cid={cid} xid=3 extract user=\"root\" path=\"{missing}\" bytes=0 status=2"),
    ];
    for line in expect {
        assert!(text.contains(&line), "no {line:?} in {text:?}");
    }
}

#[test]
fn agent_trail_ends_the_commands_of_a_client_that_left() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    let (worker, handle) = agent.session_with_handle();
    let cid = worker.info().cid;
    let run = worker.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let mut first = Vec::new();
    while !first.contains(&b'\n') {
        match run.next_timeout(Some(PATIENCE)).unwrap() {
            Some(tuppence_blocking::RunEvent::Stdout(d)) => first.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    let pid = String::from_utf8_lossy(&first).trim().to_owned();
    handle.shutdown(std::net::Shutdown::Both).unwrap();
    let disconnect = format!("cid={cid} disconnect");
    let text = wait_for(&mut m, &disconnect, PATIENCE).unwrap_or_else(|t| panic!("{t:?}"));
    let end = format!("cid={cid} xid=1 end pid={pid} killed signal=9");
    let at = text
        .find(&end)
        .unwrap_or_else(|| panic!("no {end:?} in {text:?}"));
    assert!(at < text.find(&disconnect).unwrap(), "{text}");
}
