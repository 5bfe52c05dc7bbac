//! `exec:` targets in every client adapter (blocking, smol, mio) and both dialects,
//! against `tuppence serve --stdio` (issue #17): every operation, and an agent that dies
//! in the middle of a command (a clear end, no hang).

mod reach_support;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reach_support::*;
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome, Signal};
use tuppence::wire::{Dialect, field};
use tuppence_transport::{ExecHandle, Target, Transport};

const DIALECTS: [Dialect; 2] = [Dialect::V4, Dialect::Legacy3];

fn target(dialect: Dialect) -> Target {
    exec_target(dialect == Dialect::Legacy3)
        .parse()
        .expect("target")
}

fn config(dialect: Dialect) -> ClientConfig {
    ClientConfig {
        dialect,
        keepalive: 10,
        ..ClientConfig::default()
    }
}

fn connect(dialect: Dialect) -> (Transport, ExecHandle) {
    let t = target(dialect).connect().expect("connect");
    let h = t.exec().expect("exec handle");
    (t, h)
}

/// The payload of the transfer tests.
fn payload() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 253) as u8).collect()
}

/// A command to interrupt: it says when it runs, and is then `sleep` itself. (An INT
/// that reaches `sh -c 'sleep 30'` while dash is still starting up, before it forked the
/// sleep, can be lost: dash catches INT under `-c`, and sleep, forked after the signal,
/// never gets it.)
const SLEEPER: &str = "echo started; exec sleep 30";

/// How a signal a test sends ends the command in each dialect (3.0's interrupt is KILL).
fn interrupted(dialect: Dialect) -> (Signal, Outcome) {
    match dialect {
        Dialect::V4 => (Signal::INT, Outcome::Signaled(2)),
        _ => (Signal::KILL, Outcome::Signaled(9)),
    }
}

fn u32_field(fields: &[tuppence::wire::ProcInfoField], kind: u8) -> Option<u32> {
    fields
        .iter()
        .find(|f| f.kind == kind)
        .and_then(|f| <[u8; 4]>::try_from(&f.value[..]).ok())
        .map(u32::from_be_bytes)
}

/// Kills the agent behind a link (its pid is the parent of the commands it runs).
fn kill_agent(pid_line: &[u8]) {
    let pid: i32 = String::from_utf8_lossy(pid_line)
        .trim()
        .parse()
        .expect("agent pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the agent");
}

/// What the link's command says once the agent was killed.
fn assert_agent_killed(h: &ExecHandle) {
    let end = h.end_report(LIMIT);
    assert!(
        end.to_string()
            .contains("serve --stdio` was killed by signal 9"),
        "{end}"
    );
}

// ------------------------------------------------------------------------ blocking

#[test]
fn blocking_every_operation() {
    use tuppence_blocking::{MonitorEvent, RunEvent, Session};
    for dialect in DIALECTS {
        let (t, h) = connect(dialect);
        let session = Session::new(t, config(dialect), LIMIT).expect("session");
        assert_eq!(session.info().keepalive, 10, "{dialect}");

        let out = session
            .output(Command::new("echo out; echo err >&2; exit 3"))
            .expect("output");
        assert_eq!(
            (&out.stdout[..], &out.stderr[..], &out.outcome),
            (&b"out\n"[..], &b"err\n"[..], &Outcome::Exited(3)),
            "{dialect}"
        );

        let run = session.run(Command::new("cat")).expect("run");
        run.write_stdin(b"through stdin").expect("stdin");
        run.close_stdin().expect("close");
        let out = run.collect().expect("collect");
        assert_eq!(out.stdout, b"through stdin", "{dialect}");

        let out = session
            .output(Command::new("tty").tty(true))
            .expect("output");
        assert!(out.stdout.starts_with(b"/dev/pts/"), "{dialect}: {out:?}");

        let dir = TempDir::new("blocking");
        let remote = dir.join("r");
        let data = payload();
        let n = session
            .inject("root", &remote, 0o600, &data[..], |_| {})
            .expect("inject");
        assert_eq!(n, data.len() as u64);
        let mut back = Vec::new();
        session
            .extract("root", &remote, &mut back, |_| {})
            .expect("extract");
        assert!(back == data, "{dialect}");

        let run = session.run(Command::new(SLEEPER)).expect("run");
        assert!(
            matches!(run.next_timeout(Some(LIMIT)), Ok(Some(RunEvent::Stdout(_)))),
            "{dialect}: no start line"
        );
        if dialect == Dialect::V4 {
            let fields = run.procinfo(1 << field::PID).expect("procinfo");
            assert!(u32_field(&fields, field::PID).is_some(), "{fields:?}");
            let monitor = session.monitor("agent").expect("monitor");
            monitor.settle(7).expect("settle");
            loop {
                match monitor.next_timeout(Some(LIMIT)).expect("event") {
                    Some(MonitorEvent::Settled(7)) => break,
                    Some(MonitorEvent::Data(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            monitor.end().expect("end");
        }
        let (signal, want) = interrupted(dialect);
        run.interrupt(signal).expect("interrupt");
        let out = run.collect().expect("collect");
        assert_eq!(out.outcome, want, "{dialect}");

        // The agent dies mid-command: the command ends as lost, at once.
        let run = session
            .run(Command::new("echo $PPID; sleep 30"))
            .expect("run");
        let started = Instant::now();
        let outcome = loop {
            match run.next_timeout(Some(LIMIT)).expect("event") {
                Some(RunEvent::Stdout(pid)) => kill_agent(&pid),
                Some(RunEvent::Finished(o)) => break o,
                other => panic!("{dialect}: {other:?}"),
            }
        };
        assert!(matches!(outcome, Outcome::LinkLost(_)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(session.is_closed());
        assert_agent_killed(&h);
    }
}

// ---------------------------------------------------------------------------- smol

#[test]
fn smol_every_operation() {
    use async_io::Async;
    use tuppence_smol::{MonitorEvent, RunEvent, Session};
    for dialect in DIALECTS {
        let (t, h) = connect(dialect);
        smol::block_on(async {
            let io = Async::new(t).expect("async");
            let session = Session::with_timeout(io, config(dialect), LIMIT)
                .await
                .expect("session");
            assert_eq!(session.info().map(|i| i.keepalive), Some(10));

            let out = session
                .output(Command::new("echo out; echo err >&2; exit 3"))
                .await
                .expect("output");
            assert_eq!(out.stdout, b"out\n");
            assert_eq!(out.stderr, b"err\n");
            assert_eq!(out.outcome, Outcome::Exited(3));

            let run = session.run(Command::new("cat")).await.expect("run");
            run.write_stdin(Bytes::from_static(b"through stdin"))
                .await
                .expect("stdin");
            run.close_stdin().await.expect("close");
            assert_eq!(run.output().await.stdout, b"through stdin");

            let out = session
                .output(Command::new("tty").tty(true))
                .await
                .expect("output");
            assert!(out.stdout.starts_with(b"/dev/pts/"), "{out:?}");

            let dir = TempDir::new("smol");
            let remote = dir.join("r");
            let data = payload();
            session
                .inject(
                    "root",
                    &remote,
                    0o600,
                    futures_lite::io::Cursor::new(data.clone()),
                    |_| {},
                )
                .await
                .expect("inject");
            let mut back = futures_lite::io::Cursor::new(Vec::new());
            session
                .extract("root", &remote, &mut back, |_| {})
                .await
                .expect("extract");
            assert!(back.into_inner() == data);

            let mut run = session.run(Command::new(SLEEPER)).await.expect("run");
            assert!(
                matches!(run.next().await, Some(RunEvent::Stdout(_))),
                "no start line"
            );
            if dialect == Dialect::V4 {
                let fields = run.procinfo(1 << field::PID).await.expect("procinfo");
                assert!(u32_field(&fields, field::PID).is_some(), "{fields:?}");
                let mut monitor = session.monitor("agent").await.expect("monitor");
                monitor.settle(7).await.expect("settle");
                loop {
                    match monitor.next().await {
                        Some(MonitorEvent::Settled(7)) => break,
                        Some(MonitorEvent::Data(_)) => {}
                        other => panic!("{other:?}"),
                    }
                }
                monitor.end().await.expect("end");
            }
            let (signal, want) = interrupted(dialect);
            run.interrupt(signal).await.expect("interrupt");
            assert_eq!(run.wait().await, want);

            let mut run = session
                .run(Command::new("echo $PPID; sleep 30"))
                .await
                .expect("run");
            let started = Instant::now();
            let outcome = loop {
                match run.next().await.expect("event") {
                    RunEvent::Stdout(pid) => kill_agent(&pid),
                    RunEvent::Finished(o) => break o,
                    other => panic!("{other:?}"),
                }
            };
            assert!(matches!(outcome, Outcome::LinkLost(_)), "{outcome:?}");
            assert!(started.elapsed() < Duration::from_secs(10));
        });
        assert_agent_killed(&h);
    }
}

// ----------------------------------------------------------------------------- mio

/// What the mio scenario saw.
#[derive(Default, Debug)]
struct Seen {
    keepalive: Option<u16>,
    echo: (Vec<u8>, Vec<u8>, Option<Outcome>),
    cat: (Vec<u8>, Option<Outcome>),
    tty: (Vec<u8>, Option<Outcome>),
    inject: Option<Outcome>,
    extract: (Vec<u8>, Option<Outcome>),
    procinfo: Option<Vec<tuppence::wire::ProcInfoField>>,
    settled: Option<u32>,
    monitor: Option<Outcome>,
    sleep: Option<Outcome>,
}

#[test]
fn mio_every_operation() {
    for dialect in DIALECTS {
        let (t, h) = connect(dialect);
        t.set_nonblocking(true).expect("nonblocking");
        let dir = TempDir::new("mio");
        let remote = dir.join("r");
        let data = payload();
        let mut client = Client::new(config(dialect), Instant::now());
        let echo = client
            .run(Command::new("echo out; echo err >&2; exit 3"))
            .expect("run");
        let cat = client.run(Command::new("cat")).expect("run");
        client
            .send_stdin(cat, Bytes::from_static(b"through stdin"))
            .expect("stdin");
        client.close_stdin(cat).expect("close");
        let tty = client.run(Command::new("tty").tty(true)).expect("run");
        client.close_stdin(tty).expect("close");
        client.close_stdin(echo).expect("close");
        let inject = client
            .inject("root", remote.clone(), 0o600)
            .expect("inject");
        let sleep = client.run(Command::new(SLEEPER)).expect("run");
        let (signal, want) = interrupted(dialect);
        let monitor = if dialect == Dialect::V4 {
            let m = client.monitor("agent").expect("monitor");
            client.settle(m, 7).expect("settle");
            Some(m)
        } else {
            None
        };
        let mut extract = None;
        let mut seen = Seen::default();
        let started = Instant::now();
        let result = tuppence_mio::run_client(t, client, |c, ev| {
            assert!(
                started.elapsed() < LIMIT,
                "{dialect}: no end: procinfo {:?}, settled {:?}, monitor {:?}, sleep {:?}",
                seen.procinfo,
                seen.settled,
                seen.monitor,
                seen.sleep
            );
            match ev {
                ClientEvent::Connected { keepalive, .. } => seen.keepalive = Some(keepalive),
                // The sleeper runs: (4.0) ask for its procinfo, then interrupt it.
                ClientEvent::Output { xid, .. } if xid == sleep => {
                    if dialect == Dialect::V4 {
                        c.procinfo(sleep, 1 << field::PID).expect("procinfo");
                    } else {
                        c.interrupt(sleep, signal.clone()).expect("interrupt");
                    }
                }
                ClientEvent::Output {
                    xid,
                    channel,
                    data: d,
                } => {
                    let buf = if xid == echo && channel == 1 {
                        &mut seen.echo.0
                    } else if xid == echo {
                        &mut seen.echo.1
                    } else if xid == cat {
                        &mut seen.cat.0
                    } else if xid == tty {
                        &mut seen.tty.0
                    } else if Some(xid) == extract {
                        &mut seen.extract.0
                    } else {
                        panic!("output on {xid}");
                    };
                    buf.extend_from_slice(&d);
                }
                ClientEvent::InjectReady { xid } if xid == inject => {
                    c.send_file_data(xid, Bytes::from(data.clone()))
                        .expect("data");
                    c.finish_file(xid).expect("finish");
                }
                ClientEvent::ProcInfo { fields, .. } => {
                    seen.procinfo = Some(fields);
                    c.interrupt(sleep, signal.clone()).expect("interrupt");
                }
                ClientEvent::Settled { xid, seq } => {
                    seen.settled = Some(seq);
                    c.end_monitor(xid).expect("end");
                }
                ClientEvent::Finished { xid, outcome } => {
                    let slot = if xid == echo {
                        &mut seen.echo.2
                    } else if xid == cat {
                        &mut seen.cat.1
                    } else if xid == tty {
                        &mut seen.tty.1
                    } else if xid == inject {
                        extract = Some(c.extract("root", remote.clone()).expect("extract"));
                        &mut seen.inject
                    } else if Some(xid) == extract {
                        &mut seen.extract.1
                    } else if Some(xid) == monitor {
                        &mut seen.monitor
                    } else if xid == sleep {
                        &mut seen.sleep
                    } else {
                        panic!("finished {xid}");
                    };
                    *slot = Some(outcome);
                }
                _ => {}
            }
            let all = seen.echo.2.is_some()
                && seen.cat.1.is_some()
                && seen.tty.1.is_some()
                && seen.extract.1.is_some()
                && seen.sleep.is_some()
                && (monitor.is_none() || seen.monitor.is_some());
            if all {
                tuppence_mio::Flow::Stop
            } else {
                tuppence_mio::Flow::Continue
            }
        });
        result.expect("run_client");
        assert_eq!(seen.keepalive, Some(10), "{dialect}");
        assert_eq!(
            seen.echo,
            (
                b"out\n".to_vec(),
                b"err\n".to_vec(),
                Some(Outcome::Exited(3))
            )
        );
        assert_eq!(
            seen.cat,
            (b"through stdin".to_vec(), Some(Outcome::Exited(0)))
        );
        assert!(seen.tty.0.starts_with(b"/dev/pts/"), "{:?}", seen.tty);
        assert_eq!(seen.inject, Some(Outcome::Completed));
        assert!(seen.extract.0 == data, "{dialect}");
        assert_eq!(seen.extract.1, Some(Outcome::Completed));
        assert_eq!(seen.sleep, Some(want), "{dialect}");
        if dialect == Dialect::V4 {
            let fields = seen.procinfo.as_deref().expect("procinfo");
            assert!(u32_field(fields, field::PID).is_some(), "{fields:?}");
            assert_eq!(seen.settled, Some(7));
            assert_eq!(seen.monitor, Some(Outcome::Completed));
        }
        drop(h);

        // The agent dies mid-command: a clear end, no hang.
        let (t, h) = connect(dialect);
        t.set_nonblocking(true).expect("nonblocking");
        let mut client = Client::new(config(dialect), Instant::now());
        let xid = client
            .run(Command::new("echo $PPID; sleep 30"))
            .expect("run");
        let started = Instant::now();
        let mut outcome = None;
        let result = tuppence_mio::run_client(t, client, |_, ev| match ev {
            ClientEvent::Output { data, .. } => {
                kill_agent(&data);
                tuppence_mio::Flow::Continue
            }
            ClientEvent::Finished { xid: x, outcome: o } if x == xid => {
                outcome = Some(o);
                tuppence_mio::Flow::Stop
            }
            _ => tuppence_mio::Flow::Continue,
        });
        // Either the command ends as lost, or the loop reports the broken link.
        match result {
            Ok(_) => assert!(matches!(outcome, Some(Outcome::LinkLost(_))), "{outcome:?}"),
            Err(e) => assert!(outcome.is_none(), "{e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_agent_killed(&h);
    }
}

/// `serve --stdio` behind a plain socket pair (no `exec:` transport: it adds nothing on the
/// wire), and `quit` ends it with status 0.
#[test]
fn quit_ends_serve_stdio() {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    let out = theirs.try_clone().expect("clone");
    let mut agent = std::process::Command::new(BIN)
        .args(["serve", "--stdio"])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out)))
        .spawn()
        .expect("agent");
    let session =
        tuppence_blocking::Session::new(ours, config(Dialect::V4), LIMIT).expect("session");
    let out = session.output(Command::new("echo plain")).expect("output");
    assert_eq!(out.stdout, b"plain\n");
    session.quit().expect("quit");
    let st = wait_exit(&mut agent, LIMIT).expect("agent quits");
    assert_eq!(st.code(), Some(0));
}
