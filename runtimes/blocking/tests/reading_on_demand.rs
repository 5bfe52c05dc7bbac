//! Sessions made with `Reading::OnDemand`: the thread that waits for input reads it, and a
//! reader thread starts only once data flows. Observed as the threads of this process
//! named `tuppence-reader`; the tests of this file take turns, so that one's sessions do
//! not show in another's count.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use support::{eventually, threads_named, turn};
use tuppence::Machine;
use tuppence::link::{ClientConfig, Command, Outcome, Server, ServerConfig, ServerEvent};
use tuppence_blocking::{Error, Reading, Session};

/// Threads of this process named `tuppence-reader`.
fn reader_threads() -> usize {
    threads_named("tuppence-reader")
}

/// What the scripted agent saw, for the tests to check.
#[derive(Debug, PartialEq)]
enum Seen {
    Interrupt(u16),
}

/// A scripted agent on one thread. Commands: `true` exits 0 at once; `exit N after MS`
/// exits N after MS milliseconds; `out BYTES` writes that many bytes of a counting
/// pattern to stdout in 32 KiB pieces, then exits 0; `hang` never ends (an interrupt
/// kills it with 9); `bye` closes the stream. Injects are accepted and never finished.
fn agent(mut stream: UnixStream, seen: Sender<Seen>) {
    let mut server = Server::new(ServerConfig::default(), Instant::now());
    let mut buf = vec![0u8; 65536];
    let mut timed: Vec<(Instant, u16, u32)> = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                0
            }
            Err(_) => return,
        };
        let mut off = 0;
        while off < n {
            off += server.handle_bytes(Instant::now(), &buf[off..n]).unwrap();
            while let Some(ev) = server.poll_event() {
                match ev {
                    ServerEvent::RunCommand { xid, command, .. } => {
                        let cmd = String::from_utf8(command.to_vec()).unwrap();
                        let words: Vec<&str> = cmd.split(' ').collect();
                        match words.as_slice() {
                            ["true"] => server.command_exited(xid, 0).unwrap(),
                            ["exit", code, "after", ms] => timed.push((
                                Instant::now() + Duration::from_millis(ms.parse().unwrap()),
                                xid,
                                code.parse().unwrap(),
                            )),
                            ["out", bytes] => {
                                let total: usize = bytes.parse().unwrap();
                                let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
                                for piece in data.chunks(32 * 1024) {
                                    server
                                        .output(xid, 1, Bytes::copy_from_slice(piece))
                                        .unwrap();
                                    let mut out = BytesMut::new();
                                    server.poll_transmit(Instant::now(), &mut out);
                                    if stream.write_all(&out).is_err() {
                                        return;
                                    }
                                }
                                server.command_exited(xid, 0).unwrap();
                            }
                            ["bye"] => return,
                            _ => {}
                        }
                    }
                    ServerEvent::Interrupt { xid, .. } => {
                        let _ = seen.send(Seen::Interrupt(xid));
                        let _ = server.command_killed(xid, 9);
                    }
                    ServerEvent::Inject { xid, .. } => server.inject_ready(xid).unwrap(),
                    _ => {}
                }
            }
        }
        let now = Instant::now();
        timed.retain(|&(at, xid, code)| {
            if at <= now {
                server.command_exited(xid, code).unwrap();
                false
            } else {
                true
            }
        });
        let mut out = BytesMut::new();
        server.poll_transmit(Instant::now(), &mut out);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn session_with(
    reading: Reading,
    config: ClientConfig,
) -> (Session, std::sync::mpsc::Receiver<Seen>) {
    let (a, b) = UnixStream::pair().unwrap();
    let (tx, rx) = channel();
    thread::spawn(move || agent(b, tx));
    let session = Session::with_reading(a, config, Duration::from_secs(5), reading).unwrap();
    (session, rx)
}

/// `run -- true`: the hello reply, the command's ends and status are all read by the
/// caller; no reader thread ever starts. (The same run on a `Reading::Thread` session
/// shows one, which proves the count.)
#[test]
fn a_short_command_is_read_on_the_callers_thread() {
    let _turn = turn();
    let (session, _) = session_with(Reading::Thread, ClientConfig::default());
    assert!(eventually(Duration::from_secs(5), || reader_threads() == 1));
    drop(session);
    assert!(eventually(Duration::from_secs(5), || reader_threads() == 0));

    let (session, _) = session_with(Reading::OnDemand, ClientConfig::default());
    for _ in 0..3 {
        let run = session.run(Command::new("true")).unwrap();
        run.close_stdin().unwrap();
        assert_eq!(run.collect().unwrap().outcome, Outcome::Exited(0));
    }
    assert_eq!(reader_threads(), 0);
    drop(session);
    assert_eq!(reader_threads(), 0);
}

/// Output hands the reading to a thread at its first bytes; every byte arrives, in order.
#[test]
fn output_starts_the_reader_thread_and_arrives_whole() {
    let _turn = turn();
    let (session, _) = session_with(Reading::OnDemand, ClientConfig::default());
    let total = 8 << 20;
    let run = session.run(Command::new(format!("out {total}"))).unwrap();
    run.close_stdin().unwrap();
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert_eq!(out.stdout.len(), total);
    assert!(
        out.stdout
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8),
        "output altered"
    );
    assert_eq!(reader_threads(), 1);
    drop(session);
    assert!(eventually(Duration::from_secs(5), || reader_threads() == 0));
}

/// Two threads wait on two commands of one session: whichever waits reads for both. The
/// long command's waiter starts first and is the one reading when the short command's
/// status arrives: the short one's waiter is woken for it then, not when the reader's own
/// command ends.
#[test]
fn waiters_on_two_commands_take_turns_reading() {
    let _turn = turn();
    let (session, _) = session_with(Reading::OnDemand, ClientConfig::default());
    let started = Instant::now();
    thread::scope(|s| {
        let long = s.spawn(|| {
            let run = session.run(Command::new("exit 4 after 600")).unwrap();
            run.close_stdin().unwrap();
            (run.collect().unwrap().outcome, started.elapsed())
        });
        thread::sleep(Duration::from_millis(50));
        let short = s.spawn(|| {
            let run = session.run(Command::new("exit 3 after 100")).unwrap();
            run.close_stdin().unwrap();
            (run.collect().unwrap().outcome, started.elapsed())
        });
        let (outcome, short_took) = short.join().unwrap();
        assert_eq!(outcome, Outcome::Exited(3));
        assert!(
            short_took < Duration::from_millis(450),
            "the short command's waiter was stranded until {short_took:?}"
        );
        let (outcome, long_took) = long.join().unwrap();
        assert_eq!(outcome, Outcome::Exited(4));
        assert!(long_took < Duration::from_secs(3), "{long_took:?}");
    });
    assert_eq!(reader_threads(), 0);
}

/// The client's own deadline (a timer of the machine) fires while the caller reads
/// inline: the agent gets the KILL and the run ends as timed out, on time.
#[test]
fn a_client_deadline_fires_while_the_caller_reads_inline() {
    let _turn = turn();
    let config = ClientConfig {
        deadline_grace: Some(Duration::from_millis(200)),
        ..ClientConfig::default()
    };
    let (session, seen) = session_with(Reading::OnDemand, config);
    let started = Instant::now();
    let run = session
        .run(Command::new("hang").timeout(Duration::from_secs(1)))
        .unwrap();
    let xid = run.xid();
    run.close_stdin().unwrap();
    let out = run.collect().unwrap();
    let took = started.elapsed();
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        Seen::Interrupt(xid)
    );
    assert_eq!(reader_threads(), 0);
}

/// An abort from another thread reaches a caller that is blocked reading inline (waiting
/// for the end of an inject the agent never finishes) within a fraction of a second.
#[test]
fn an_abort_reaches_a_caller_reading_inline() {
    let _turn = turn();
    let (session, _) = session_with(Reading::OnDemand, ClientConfig::default());
    let abort = session.abort_handle();
    let started = Instant::now();
    let aborter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        abort.abort()
    });
    let r = session.inject("root", "/tmp/x", 0o644, &b"some bytes"[..], |_| {});
    let took = started.elapsed();
    assert_eq!(aborter.join().unwrap(), 1);
    assert!(matches!(r, Err(Error::Aborted)), "{r:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// A peer that hangs up while the caller reads inline ends the wait with the link lost,
/// not a hang; the session says it is closed.
#[test]
fn a_hangup_ends_an_inline_wait() {
    let _turn = turn();
    let (session, _) = session_with(Reading::OnDemand, ClientConfig::default());
    let run = session.run(Command::new("bye")).unwrap();
    let out = run.collect().unwrap();
    assert!(
        matches!(out.outcome, Outcome::LinkLost(_)),
        "{:?}",
        out.outcome
    );
    assert!(session.is_closed());
    assert_eq!(reader_threads(), 0);
}

/// A peer that never answers the hello: the connect timeout holds with nobody but the
/// caller reading.
#[test]
fn the_connect_timeout_holds_when_the_caller_reads() {
    let _turn = turn();
    let (a, b) = UnixStream::pair().unwrap();
    let started = Instant::now();
    let r = Session::with_reading(
        a,
        ClientConfig::default(),
        Duration::from_millis(300),
        Reading::OnDemand,
    );
    let took = started.elapsed();
    assert!(matches!(r, Err(Error::ConnectTimeout(_))), "{:?}", r.err());
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(b);
}
