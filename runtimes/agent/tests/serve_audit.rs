//! The audit trail: every request leaves exactly one record with its outcome — successes,
//! failures, refusals and requests cut off by a disconnect.

mod agent_harness;
mod common;
mod path_support;

use agent_harness::{PATIENCE, Raw, TempDir, TestAgent, eventually, settle, wait_for};
use bytes::Bytes;
use tuppence::link::{Command, Outcome, Signal};
use tuppence::wire::Packet;
use tuppence_agent::serve::LinkDaemonConfig;
use tuppence_blocking::{Error, MonitorEvent};

fn remote_errno(e: &Error) -> Option<u32> {
    match e {
        Error::Remote { errno, .. } => Some(*errno),
        _ => None,
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The lines of `text` about connection `cid`, without their timestamps.
fn records(text: &str, cid: u16) -> Vec<String> {
    let prefix = format!("agent: cid={cid} ");
    text.lines()
        .filter_map(|l| l.find(&prefix).map(|at| l[at + 7..].to_owned()))
        .collect()
}

/// The one record of `cid`/`xid` (panics unless there is exactly one).
fn only_record(text: &str, cid: u16, xid: u16) -> String {
    let tag = format!("cid={cid} xid={xid} ");
    let found: Vec<String> = records(text, cid)
        .into_iter()
        .filter(|r| r.starts_with(&tag))
        .collect();
    assert_eq!(found.len(), 1, "records of {tag}in {text:?}");
    found.into_iter().next().unwrap_or_default()
}

/// Starts an inject of `target` as root on xid 1 and waits until the agent is ready for data.
fn start_inject(raw: &mut Raw, target: &std::path::Path, mode: u32) {
    raw.send_packet(
        1,
        &Packet::Inject {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(target.to_str().unwrap().to_owned()),
            mode,
        },
    );
    assert_eq!(
        raw.frames_until(1, |p| matches!(p, Packet::Major(_)))
            .last(),
        Some(&Packet::Major(0))
    );
}

/// An inject that fails on a full disk used to leave no record at all.
#[test]
fn a_full_disk_inject_leaves_its_record() {
    let Some(fs) = path_support::Tmpfs::mount("64k") else {
        return;
    };
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
    let worker = agent.session();
    let cid = worker.info().cid;
    let path = fs.dir.join("big.bin");
    let p = path.to_str().unwrap();
    let e = worker
        .inject("root", p, 0o644, &vec![7u8; 1 << 20][..], |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(28), "{e}");
    assert!(
        eventually(PATIENCE, || fs.dir.names().is_empty()),
        "left behind: {:?}",
        fs.dir.names()
    );
    let text = settle(&mut m, 1);
    let record = only_record(&text, cid, 1);
    assert!(
        record.starts_with(&format!(
            "cid={cid} xid=1 inject user=\"root\" path=\"{p}\" mode=0644 bytes="
        )) && record.ends_with(" status=28"),
        "{record}"
    );
}

/// A client that goes away mid-inject, mid-extract and mid-monitor: each of those requests
/// gets its record (`cut=disconnect`), before the disconnect's.
#[test]
fn requests_cut_off_by_a_disconnect_leave_their_records() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
    let files = TempDir::new("audit-cut");
    let big = files.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let log = files.join("log.txt");
    std::fs::write(&log, b"").unwrap();
    let target = files.join("partial.bin");

    let mut raw = Raw::connect(&agent.sock);
    let cid = raw.hello();
    start_inject(&mut raw, &target, 0o600);
    raw.send_packet(
        1,
        &Packet::Data {
            channel: 0,
            data: Bytes::from(vec![1u8; 1000]),
        },
    );
    raw.send_packet(
        2,
        &Packet::Monitor {
            source: Bytes::from(format!("file:{}", log.display())),
        },
    );
    raw.send_packet(
        3,
        &Packet::Extract {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(big.to_str().unwrap().to_owned()),
        },
    );
    // The extract is under way (and stalls: this client reads no further).
    raw.frames_until(3, |p| matches!(p, Packet::Data { .. }));
    // The inject's data is in its temporary.
    assert!(
        eventually(PATIENCE, || names(files.path()).iter().any(|n| {
            n.starts_with(".partial.bin.tuppence-")
                && std::fs::metadata(files.join(n)).is_ok_and(|m| m.len() == 1000)
        })),
        "no inject temporary with the data: {:?}",
        names(files.path())
    );
    drop(raw);
    let disconnect = format!("cid={cid} disconnect");
    let text = wait_for(&mut m, &disconnect, PATIENCE).unwrap_or_else(|t| panic!("{t:?}"));
    let inject = only_record(&text, cid, 1);
    assert!(
        inject.contains(" inject user=\"root\" path=\"")
            && inject.ends_with(" mode=0600 bytes=1000 cut=disconnect"),
        "{inject}"
    );
    assert_eq!(
        only_record(&text, cid, 2),
        format!(
            "cid={cid} xid=2 monitor source=\"file:{}\" cut=disconnect",
            log.display()
        )
    );
    let extract = only_record(&text, cid, 3);
    assert!(
        extract.starts_with(&format!(
            "cid={cid} xid=3 extract user=\"root\" path=\"{}\" bytes=",
            big.display()
        )) && extract.ends_with(" cut=disconnect"),
        "{extract}"
    );
    assert!(text.find(&extract).unwrap() < text.find(&disconnect).unwrap());
}

/// Interrupts, monitors and ended transfers: one record each, with the status the client
/// was sent.
#[test]
fn interrupts_and_monitors_leave_their_records() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
    let files = TempDir::new("audit-int");
    let target = files.join("t.bin");

    let mut raw = Raw::connect(&agent.sock);
    let cid = raw.hello();
    start_inject(&mut raw, &target, 0o644);
    raw.send_packet(
        1,
        &Packet::Interrupt {
            signal: Bytes::new(),
        },
    );
    assert_eq!(
        raw.frames_until(1, |p| matches!(p, Packet::Minor(_)))
            .last(),
        Some(&Packet::Minor(4))
    );
    drop(raw);
    let text = wait_for(&mut m, &format!("cid={cid} disconnect"), PATIENCE)
        .unwrap_or_else(|t| panic!("{t:?}"));
    assert!(
        only_record(&text, cid, 1).ends_with(" mode=0644 bytes=0 status=4"),
        "{text}"
    );

    let worker = agent.session();
    let cid = worker.info().cid;
    let followed = worker.monitor("no-such-source").unwrap();
    assert_eq!(
        followed.next_timeout(Some(PATIENCE)).unwrap(),
        Some(MonitorEvent::Finished(Outcome::Failed { errno: 2 }))
    );
    let trail = worker.monitor("agent").unwrap();
    trail.end().unwrap();
    assert_eq!(
        trail.next_timeout(Some(PATIENCE)).unwrap(),
        Some(MonitorEvent::Finished(Outcome::Completed))
    );
    let run = worker.run(Command::new("sleep 100")).unwrap();
    run.interrupt(Signal::named("NO-SUCH\nSIGNAL")).unwrap();
    run.interrupt(Signal::named("TERM")).unwrap();
    assert_eq!(run.collect().unwrap().outcome, Outcome::Signaled(15));
    let text = settle(&mut m, 1);
    assert_eq!(
        only_record(&text, cid, 1),
        format!("cid={cid} xid=1 monitor source=\"no-such-source\" status=2")
    );
    assert_eq!(
        only_record(&text, cid, 2),
        format!("cid={cid} xid=2 monitor source=\"agent\" status=0")
    );
    let run_records: Vec<String> = records(&text, cid)
        .into_iter()
        .filter(|r| r.starts_with(&format!("cid={cid} xid=3 ")))
        .collect();
    assert_eq!(run_records.len(), 4, "{run_records:?}");
    assert!(run_records[0].contains(" run pid="), "{run_records:?}");
    assert_eq!(
        run_records[1],
        format!("cid={cid} xid=3 interrupt signal=\"NO-SUCH\\x0aSIGNAL\" status=22")
    );
    assert_eq!(
        run_records[2],
        format!("cid={cid} xid=3 interrupt signal=\"TERM\" status=0")
    );
    assert!(
        run_records[3].ends_with(" killed signal=15"),
        "{run_records:?}"
    );
}

/// Requests `--allow-user` refuses, commands that cannot start and ignored quits leave a
/// record too (a refused command used to leave none).
#[test]
fn refused_requests_leave_their_records() {
    let Some(user) = common::test_user() else {
        return;
    };
    let agent = TestAgent::with_config(LinkDaemonConfig {
        allow_users: Some(vec![b"root".to_vec()]),
        allow_quit: false,
        ..agent_harness::quiet_config()
    });
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
    let worker = agent.session();
    let cid = worker.info().cid;
    let out = worker
        .output(Command::new("id").user(user.to_owned()))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Failed { errno: 13 });
    let e = worker
        .inject(user, "/tmp/refused", 0o644, &b"x"[..], |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(13), "{e}");
    let e = worker
        .extract(user, "/etc/hostname", Vec::new(), |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(13), "{e}");
    worker.quit().unwrap();
    let text =
        wait_for(&mut m, &format!("cid={cid} quit"), PATIENCE).unwrap_or_else(|t| panic!("{t:?}"));
    assert_eq!(
        only_record(&text, cid, 1),
        format!("cid={cid} xid=1 run-failed user=\"{user}\" tty=no cmd=\"id\" status=13")
    );
    assert_eq!(
        only_record(&text, cid, 2),
        format!(
            "cid={cid} xid=2 inject user=\"{user}\" path=\"/tmp/refused\" mode=0644 bytes=0 status=13"
        )
    );
    assert_eq!(
        only_record(&text, cid, 3),
        format!("cid={cid} xid=3 extract user=\"{user}\" path=\"/etc/hostname\" bytes=0 status=13")
    );
    assert!(text.contains(&format!("cid={cid} quit ignored")), "{text}");
}

/// A command that cannot start (no such user): one record, with the user and the command
/// (it used to be an `end pid=0` record saying neither).
#[test]
fn a_command_that_cannot_start_leaves_one_record() {
    let agent = TestAgent::start();
    let watcher = agent.session();
    let mut m = watcher.monitor("agent").unwrap();
    // Requests of another connection race this one: settle first, so the
    // monitor is live before anything it must record happens.
    settle(&mut m, 0);
    let worker = agent.session();
    let cid = worker.info().cid;
    let out = worker
        .output(Command::new("true").user("no-such-user-tuppence"))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Failed { errno: 2 });
    let text = settle(&mut m, 1);
    assert_eq!(
        only_record(&text, cid, 1),
        format!(
            "cid={cid} xid=1 run-failed user=\"no-such-user-tuppence\" tty=no cmd=\"true\" status=2"
        )
    );
}
