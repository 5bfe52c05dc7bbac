//! The smol session's driver, polled by its task on smol's executor and by the consumers
//! that wait on it, on their own threads (`Session::new`):
//!
//! * with every thread of smol's global executor blocked (as a user's stray blocking call
//!   would block it), a consumer waiting in its own `block_on` connects, runs a command,
//!   injects and extracts on its own thread, at once, instead of waiting for the executor;
//! * threads that share one session, each in its own `block_on`, requesting and waiting
//!   at the same time, each polling the driver in turn, get every exchange right and
//!   none stalls. (The hand-over between pollers itself is tested deterministically in
//!   the smol crate: `a_party_that_finds_the_pump_busy_gets_one_more_pass`.)
//!
//! Its own test binary: blocking the global executor would stall other tests' servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tuppence::link::{ClientConfig, Command, Outcome};
use tuppence_e2e::{local_agent, me};

/// How long the executor stays blocked unless the test releases it sooner; the work
/// below must be done well before.
const BLOCKED_FOR: Duration = Duration::from_secs(20);
/// The work's bound: a few round trips and 4 MiB each way take milliseconds here.
const WITHIN: Duration = Duration::from_secs(8);

/// Blocks every thread of smol's global executor until `release` is set (or
/// [`BLOCKED_FOR`] passed); returns once all of them are blocked.
fn block_the_executor(release: &Arc<AtomicBool>) {
    // smol's global executor runs `SMOL_THREADS` threads, 1 by default.
    let threads = std::env::var("SMOL_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let blocked = Arc::new(AtomicUsize::new(0));
    for _ in 0..threads {
        let (blocked, release) = (blocked.clone(), release.clone());
        smol::spawn(async move {
            blocked.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + BLOCKED_FOR;
            while !release.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .detach();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked.load(Ordering::SeqCst) < threads {
        assert!(
            Instant::now() < deadline,
            "the executor never ran the blockers"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_waiting_consumer_drives_the_session_while_the_executor_is_blocked() {
    let (_agent, stream) = local_agent();
    let dir = std::env::temp_dir().join(format!("tuppence-busy-executor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let release = Arc::new(AtomicBool::new(false));
    block_the_executor(&release);

    let started = Instant::now();
    smol::block_on(async {
        let io = async_io::Async::new(stream).expect("async");
        // The driver task is spawned onto the blocked executor: the hello is read here.
        let session = tuppence_smol::Session::new(io, ClientConfig::default())
            .await
            .expect("session");

        let out = session
            .output(Command::new("echo out; echo err >&2; exit 3"))
            .await
            .expect("command");
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.outcome, Outcome::Exited(3));

        // 4 MiB, more than the socket buffers and the inbox hold: the consumer must
        // write, wait for room and read many times over, all by itself.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let path = dir.join("payload");
        let path = path.to_str().expect("utf-8 path");
        let sent = session
            .inject(
                me(),
                path,
                0o600,
                futures_lite::io::Cursor::new(&data),
                |_| {},
            )
            .await
            .expect("inject");
        assert_eq!(sent, data.len() as u64);
        assert_eq!(std::fs::read(path).expect("injected file"), data);

        let mut back = Vec::new();
        let got = session
            .extract(me(), path, &mut back, |_| {})
            .await
            .expect("extract");
        assert_eq!(got, data.len() as u64);
        assert!(back == data, "the extracted bytes differ");
    });
    let took = started.elapsed();
    release.store(true, Ordering::SeqCst);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        took < WITHIN,
        "took {took:?} with the executor blocked: the consumer did not drive the session"
    );
}

#[test]
fn threads_sharing_a_session_each_get_their_exchanges_promptly() {
    const THREADS: usize = 6;
    const ROUNDS: usize = 40;
    /// Each exchange takes about a millisecond; a lost wake-up waits for the next
    /// keepalive (tens of seconds) or another thread's request.
    const STALL: Duration = Duration::from_secs(5);
    let (_agent, stream) = local_agent();
    let session = smol::block_on(async {
        let io = async_io::Async::new(stream).expect("async");
        tuppence_smol::Session::new(io, ClientConfig::default())
            .await
            .expect("session")
    });
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let session = session.clone();
            std::thread::spawn(move || {
                smol::block_on(async move {
                    for i in 0..ROUNDS {
                        let started = Instant::now();
                        let exchange = async {
                            let run = session.run(Command::new("cat")).await.expect("run");
                            let line = format!("thread {t} round {i}\n");
                            run.write_stdin(line.clone().into_bytes())
                                .await
                                .expect("stdin");
                            run.close_stdin().await.expect("close stdin");
                            let out = run.output().await;
                            assert_eq!(out.outcome, Outcome::Exited(0));
                            assert_eq!(out.stdout, line.as_bytes());
                        };
                        futures_lite::future::or(exchange, async {
                            async_io::Timer::after(STALL).await;
                            panic!("thread {t} round {i}: stalled for {STALL:?}");
                        })
                        .await;
                        assert!(started.elapsed() < STALL);
                    }
                })
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
}
