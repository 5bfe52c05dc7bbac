//! Monitors through the serve loop: the agent's own trail and followed files.

mod agent_harness;
mod common;
mod path_support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agent_harness::{PATIENCE, TempDir, TestAgent, settle, wait_for};
use tuppence::link::{Command, Outcome};
use tuppence_blocking::{Monitor, MonitorEvent};

#[test]
fn agent_trail_shows_commands_of_another_connection_after_settle() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
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
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
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
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
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
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
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

// ---- paths that cannot be followed ----

/// The monitor's end within `limit`: `Some(outcome)`, or `None` if it did not end.
fn ended(m: &Monitor<'_>, limit: Duration) -> Option<Outcome> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match m.next_timeout(Some(left)).unwrap() {
            Some(MonitorEvent::Finished(outcome)) => return Some(outcome),
            Some(_) => {}
            None => return None,
        }
    }
}

/// If the agent is stuck opening `fifo` for reading (waiting for a writer), a writer comes
/// and goes, so the test can fail instead of hanging in the agent's shutdown.
fn release(fifo: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}

/// The agent answers a new client within `limit` (its loop is not stuck).
fn responsive(agent: &TestAgent, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let target = agent.target.clone();
    std::thread::spawn(move || {
        let ok = tuppence_blocking::Session::connect(&target, PATIENCE)
            .and_then(|s| s.output(Command::new("echo alive")))
            .is_ok_and(|o| o.stdout == b"alive\n");
        let _ = tx.send(ok);
    });
    rx.recv_timeout(limit).unwrap_or(false)
}

/// A `file:` monitor on a FIFO used to open it with a blocking `open`, and the whole agent
/// waited for a writer: no client served, no timeout, no keepalive. It is refused with
/// EINVAL at once.
#[test]
fn a_fifo_is_refused_without_freezing_the_agent() {
    let agent = TestAgent::start();
    let dir = TempDir::new("follow-fifo");
    let fifo = dir.join("fifo");
    path_support::mkfifo(&fifo);
    let s = agent.session();
    let m = s.monitor(&format!("file:{}", fifo.display())).unwrap();
    let outcome = ended(&m, Duration::from_secs(10));
    if outcome.is_none() {
        release(&fifo);
        panic!("the FIFO monitor got no answer: the agent is stuck opening it");
    }
    assert_eq!(outcome, Some(Outcome::Failed { errno: 22 }));
    assert!(responsive(&agent, PATIENCE));
    // Devices and sockets are refused the same way (a device is not even opened).
    for path in ["/dev/null".to_string(), agent.sock.display().to_string()] {
        let m = s.monitor(&format!("file:{path}")).unwrap();
        assert_eq!(
            ended(&m, PATIENCE),
            Some(Outcome::Failed { errno: 22 }),
            "{path}"
        );
    }
}

/// A followed path that does not exist yet is waited for; if a FIFO appears there, the
/// monitor ends with EINVAL instead of the agent blocking in the next poll.
#[test]
fn a_fifo_appearing_later_ends_the_monitor() {
    let agent = TestAgent::start();
    let dir = TempDir::new("follow-fifo-later");
    let path = dir.join("later");
    let s = agent.session();
    let mut m = s.monitor(&format!("file:{}", path.display())).unwrap();
    assert_eq!(settle(&mut m, 1), "");
    path_support::mkfifo(&path);
    let outcome = ended(&m, Duration::from_secs(10));
    if outcome.is_none() {
        release(&path);
        panic!("the monitor did not end: the agent is stuck opening the FIFO");
    }
    assert_eq!(outcome, Some(Outcome::Failed { errno: 22 }));
    assert!(responsive(&agent, PATIENCE));
}

// ---- monitors and --allow-user ----

/// An agent restricted to `users`.
fn restricted(users: &[&str]) -> TestAgent {
    TestAgent::with_config(tuppence_agent::serve::LinkDaemonConfig {
        allow_users: Some(users.iter().map(|u| u.as_bytes().to_vec()).collect()),
        ..agent_harness::quiet_config()
    })
}

/// Monitors obey `--allow-user` like extracts: a restricted agent reads followed files as an
/// allowed user (it used to read them as root and deliver a root-only file), and serves its
/// own trail and the kernel log only by the documented rule.
#[test]
fn a_restricted_agent_monitors_as_the_allowed_user() {
    let Some(user) = common::test_user() else {
        return;
    };
    let agent = restricted(&[user]);
    let s = agent.session();
    let dir = TempDir::new("follow-restricted");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.join("secret.log");
    std::fs::write(&secret, b"").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let m = s.monitor(&format!("file:{}", secret.display())).unwrap();
    assert_eq!(ended(&m, PATIENCE), Some(Outcome::Failed { errno: 13 }));
    // The same file as an extract: refused alike.
    let e = s
        .extract(user, secret.to_str().unwrap(), Vec::new(), |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("13"), "{e}");

    // A file the user may read is followed; when it is rotated to a file only root may
    // read, the monitor ends with EACCES instead of reading on as root.
    let open = dir.join("open.log");
    std::fs::write(&open, b"").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut m = s.monitor(&format!("file:{}", open.display())).unwrap();
    assert_eq!(settle(&mut m, 1), "");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&open)
        .unwrap();
    f.write_all(b"readable line\n").unwrap();
    assert_eq!(settle(&mut m, 2), "readable line\n");
    let next = dir.join("next.log");
    std::fs::write(&next, b"root only line\n").unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&next, &open).unwrap();
    m.settle(3).unwrap();
    let mut seen = String::new();
    let outcome = loop {
        match m.next_timeout(Some(PATIENCE)).unwrap() {
            Some(MonitorEvent::Data(d)) => seen.push_str(&String::from_utf8_lossy(&d)),
            Some(MonitorEvent::Settled(_)) => {}
            Some(MonitorEvent::Finished(outcome)) => break outcome,
            None => panic!("the monitor neither ended nor settled; saw {seen:?}"),
        }
    };
    assert_eq!(outcome, Outcome::Failed { errno: 13 });
    assert!(!seen.contains("root only"), "{seen:?}");

    // The agent's trail (every client's commands) is the agent's own log.
    let m = s.monitor("agent").unwrap();
    assert_eq!(ended(&m, PATIENCE), Some(Outcome::Failed { errno: 13 }));
}

/// `kmsg` for a restricted agent: served only when an allowed user may read the kernel log
/// (`kernel.dmesg_restrict` = 0, or root is allowed); the trail when the agent's own user is.
#[test]
fn restricted_kmsg_and_trail_follow_the_documented_rule() {
    let Some(user) = common::test_user() else {
        return;
    };
    if std::fs::metadata("/dev/kmsg").is_err() {
        println!("SKIPPED: no /dev/kmsg");
        return;
    }
    let Some(_restrict) = path_support::Sysctl::set("kernel/dmesg_restrict", "1") else {
        return;
    };
    let agent = restricted(&[user]);
    let s = agent.session();
    let m = s.monitor("kmsg").unwrap();
    assert_eq!(ended(&m, PATIENCE), Some(Outcome::Failed { errno: 13 }));
    drop(m);
    drop(s);
    drop(agent);
    drop(_restrict);
    // When every user may read the kernel log, so may the allowed user.
    let Some(_open) = path_support::Sysctl::set("kernel/dmesg_restrict", "0") else {
        return;
    };
    let agent = restricted(&[user]);
    let s = agent.session();
    let mut m = s.monitor("kmsg").unwrap();
    settle(&mut m, 1);
    drop(m);
    drop(s);
    drop(agent);
    drop(_open);
    // With root among the allowed users, both are served.
    let agent = restricted(&[user, "root"]);
    let s = agent.session();
    for source in ["kmsg", "agent"] {
        let mut m = s.monitor(source).unwrap();
        // Settled (not refused): the source is served.
        settle(&mut m, 1);
        m.end().unwrap();
        assert_eq!(ended(&m, PATIENCE), Some(Outcome::Completed), "{source}");
    }
}
