//! Every client adapter against the real agent: 50 MB of stdin through `cat` while the
//! output is consumed slowly, in both dialects, several times (issue #13.1).
//!
//! The hang this guards against: the blocking session's stdin writer blocked in `send()`
//! while holding the writer lock; the reader thread waited for that lock before reading
//! again; nobody read the socket, so the agent stopped reading its own (its child's stdin
//! was full because `cat` could not write its output), and both sides' buffers stayed full
//! until the agent's 60 s timeout. Reading must never wait on writing. Each run has a
//! watchdog: a hang fails the test (naming the adapter, dialect and progress) instead of
//! hanging the test run.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome};
use tuppence::wire::Dialect;
use tuppence_e2e::{local_agent, me};

/// Bytes sent through `cat` per run.
const TOTAL: u64 = 50_000_000;
/// Size of each stdin write.
const PIECE: usize = 64 * 1024;
/// A run that has not finished by then hangs: generous for a loaded 2-core machine (a
/// healthy debug-build run takes a few seconds), far below the agent's 60 s timeout
/// that ended the hang.
const WATCHDOG: Duration = Duration::from_secs(50);
/// How long the slow consumer dawdles per output event.
const DAWDLE: Duration = Duration::from_micros(300);
/// Runs per adapter and dialect: the hang came in most runs, not all.
const REPEAT: usize = 2;

fn config(dialect: Dialect) -> ClientConfig {
    ClientConfig {
        dialect,
        ..ClientConfig::default()
    }
}

fn cat() -> Command {
    Command::new("cat")
        .user(me())
        .timeout(Duration::from_secs(120))
}

/// The byte at offset `i` of the stream (not a multiple of any packet or piece size, so
/// a lost, repeated or reordered piece shows).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

fn piece(at: u64) -> Bytes {
    let n = (TOTAL - at).min(PIECE as u64);
    Bytes::from((at..at + n).map(pattern).collect::<Vec<u8>>())
}

/// Checks output bytes against the pattern and counts them.
#[derive(Default)]
struct Checker {
    seen: u64,
}

impl Checker {
    fn take(&mut self, data: &[u8]) {
        for (k, &b) in data.iter().enumerate() {
            let at = self.seen + k as u64;
            assert_eq!(b, pattern(at), "output byte {at} differs");
        }
        self.seen += data.len() as u64;
        thread::sleep(DAWDLE);
    }
}

/// Runs `body` on a thread and fails if it does not finish within [`WATCHDOG`]; `progress`
/// is shown in the failure so a hang says where it stopped.
fn watchdog(name: &str, progress: Arc<AtomicU64>, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let worker = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .expect("spawn");
    match rx.recv_timeout(WATCHDOG) {
        Ok(()) => {
            worker.join().expect("worker");
            eprintln!("{name}: {:?}", started.elapsed());
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: report its panic.
            if let Err(p) = worker.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "{name}: hung: no end after {WATCHDOG:?}, {} of {TOTAL} bytes came back",
            progress.load(Ordering::SeqCst)
        ),
    }
}

// ---------------------------------------------------------------------------- blocking

fn blocking(dialect: Dialect) {
    for round in 0..REPEAT {
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        watchdog(
            &format!("blocking {dialect} #{round}"),
            progress,
            move || {
                let (_agent, stream) = local_agent();
                let session = tuppence_blocking::Session::new(
                    stream,
                    config(dialect),
                    Duration::from_secs(10),
                )
                .expect("session");
                let run = session.run(cat()).expect("run");
                let mut check = Checker::default();
                let outcome = thread::scope(|s| {
                    s.spawn(|| {
                        let mut at = 0;
                        while at < TOTAL {
                            let p = piece(at);
                            at += p.len() as u64;
                            run.write_stdin(&p).expect("write stdin");
                        }
                        run.close_stdin().expect("close stdin");
                    });
                    loop {
                        match run.next().expect("next") {
                            Some(tuppence_blocking::RunEvent::Stdout(d)) => {
                                check.take(&d);
                                seen.store(check.seen, Ordering::SeqCst);
                            }
                            Some(tuppence_blocking::RunEvent::Finished(o)) => break o,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                });
                assert_eq!(outcome, Outcome::Exited(0));
                assert_eq!(check.seen, TOTAL);
            },
        );
    }
}

#[test]
fn blocking_v4() {
    blocking(Dialect::V4);
}

#[test]
fn blocking_legacy3() {
    blocking(Dialect::Legacy3);
}

// ---------------------------------------------------------------------------- smol

fn smol_adapter(dialect: Dialect) {
    for round in 0..REPEAT {
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        watchdog(&format!("smol {dialect} #{round}"), progress, move || {
            let (_agent, stream) = local_agent();
            smol::block_on(async move {
                let io = async_io::Async::new(stream).expect("async");
                let session = tuppence_smol::Session::new(io, config(dialect))
                    .await
                    .expect("session");
                let mut run = session.run(cat()).await.expect("run");
                let control = run.control();
                let feeder = smol::spawn(async move {
                    let mut at = 0;
                    while at < TOTAL {
                        let p = piece(at);
                        at += p.len() as u64;
                        control.write_stdin(p).await.expect("write stdin");
                    }
                    control.close_stdin().await.expect("close stdin");
                });
                let mut check = Checker::default();
                let outcome = loop {
                    match run.next().await.expect("event") {
                        tuppence_smol::RunEvent::Stdout(d) => {
                            check.take(&d);
                            seen.store(check.seen, Ordering::SeqCst);
                        }
                        tuppence_smol::RunEvent::Finished(o) => break o,
                        other => panic!("unexpected {other:?}"),
                    }
                };
                feeder.await;
                assert_eq!(outcome, Outcome::Exited(0));
                assert_eq!(check.seen, TOTAL);
            });
        });
    }
}

#[test]
fn smol_v4() {
    smol_adapter(Dialect::V4);
}

#[test]
fn smol_legacy3() {
    smol_adapter(Dialect::Legacy3);
}

// ---------------------------------------------------------------------------- mio

/// The mio `EventLoop` in a hand-written loop, fed as its documentation says: after every
/// flush, queue more while the machine has room.
fn mio_adapter(dialect: Dialect) {
    use tuppence_mio::{EventLoop, LinkIo};
    for round in 0..REPEAT {
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        watchdog(&format!("mio {dialect} #{round}"), progress, move || {
            let (_agent, stream) = local_agent();
            stream.set_nonblocking(true).expect("nonblocking");
            let mut driver: EventLoop<UnixStream, Client> = EventLoop::new().expect("driver");
            let id = driver
                .add(
                    LinkIo::new(stream, Client::new(config(dialect), Instant::now())),
                    (),
                )
                .expect("add");
            let mut xid = None;
            let mut at = 0u64;
            let mut closed = false;
            let mut check = Checker::default();
            let mut outcome = None;
            while outcome.is_none() {
                driver.flush();
                loop {
                    let client = driver.get_mut(id).expect("link").link.machine_mut();
                    let Some(x) = xid else { break };
                    if closed || !client.can_send() {
                        break;
                    }
                    if at < TOTAL {
                        let p = piece(at);
                        at += p.len() as u64;
                        client.send_stdin(x, p).expect("stdin");
                    } else {
                        client.close_stdin(x).expect("close");
                        closed = true;
                    }
                    driver.flush();
                }
                if let Some(ended) = driver.take_ended().pop() {
                    panic!("link failed: {}", ended.error);
                }
                driver.wait(None).expect("wait");
                let client = driver.get_mut(id).expect("link").link.machine_mut();
                let mut events = Vec::new();
                while let Some(ev) = client.poll_event() {
                    events.push(ev);
                }
                for ev in events {
                    match ev {
                        ClientEvent::Connected { .. } => {
                            let client = driver.get_mut(id).expect("link").link.machine_mut();
                            xid = Some(client.run(cat()).expect("run"));
                        }
                        ClientEvent::Output { data, .. } => {
                            check.take(&data);
                            seen.store(check.seen, Ordering::SeqCst);
                        }
                        ClientEvent::Finished { outcome: o, .. } => outcome = Some(o),
                        _ => {}
                    }
                }
            }
            assert_eq!(outcome, Some(Outcome::Exited(0)));
            assert_eq!(check.seen, TOTAL);
        });
    }
}

#[test]
fn mio_v4() {
    mio_adapter(Dialect::V4);
}

#[test]
fn mio_legacy3() {
    mio_adapter(Dialect::Legacy3);
}
