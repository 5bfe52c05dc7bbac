//! Client-side behaviour every adapter gets from the core or shares (issues #13, #14):
//!
//! * the client's own command deadline (timeout + grace) against an agent that answers
//!   the hello and then never anything else, through the blocking, smol and mio adapters,
//!   in both dialects: the command ends as timed out and the agent is sent KILL;
//! * `extract_to` of the blocking and smol sessions against the real agent: destinations
//!   opened as `cp` opens them (FIFOs and devices in place, links followed).

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome};
use tuppence::wire::{Decoder, Dialect, Hello, Packet, Sender, detect_dialect};
use tuppence_e2e::{local_agent, me};

/// The grace the tests give: short, so a run takes about a second.
const GRACE: Duration = Duration::from_millis(300);
/// A run that has not ended by then failed (the deadline is 1.3 s).
const LIMIT: Duration = Duration::from_secs(20);

fn config(dialect: Dialect) -> ClientConfig {
    ClientConfig {
        dialect,
        deadline_grace: Some(GRACE),
        ..ClientConfig::default()
    }
}

fn sleeper() -> Command {
    Command::new("sleep 100").timeout(Duration::from_secs(1))
}

/// An agent that answers the hello (keepalive off) and nothing else; it records every
/// packet it receives.
fn silent_agent() -> (UnixStream, Arc<Mutex<Vec<Packet>>>) {
    let (ours, mut theirs) = UnixStream::pair().expect("pair");
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    thread::spawn(move || {
        let mut head = [0u8; 8];
        if theirs.read_exact(&mut head).is_err() {
            return;
        }
        let Some(dialect) = detect_dialect(&head) else {
            return;
        };
        let mut dec = Decoder::new(dialect, Sender::Client);
        dec.push(&head);
        let mut buf = vec![0u8; 65536];
        loop {
            while let Ok(Some(frame)) = dec.next_frame() {
                if let Packet::Hello(_) = frame.packet {
                    let (major, minor) = dialect.version();
                    let reply = Packet::Hello(Hello {
                        major,
                        minor,
                        keepalive: 0,
                    })
                    .to_bytes(dialect, 1, 0)
                    .expect("hello");
                    if theirs.write_all(&reply).is_err() {
                        return;
                    }
                }
                seen.lock().expect("log").push(frame.packet);
            }
            match theirs.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => dec.push(&buf[..n]),
            }
        }
    });
    (ours, log)
}

/// Waits (bounded) until the silent agent has received an interrupt, and checks it is
/// KILL as the dialect says it.
fn assert_killed(dialect: Dialect, log: &Mutex<Vec<Packet>>) {
    let want: &[u8] = match dialect {
        Dialect::V4 => b"KILL",
        Dialect::Legacy3 => b"",
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let signals: Vec<Vec<u8>> = log
            .lock()
            .expect("log")
            .iter()
            .filter_map(|p| match p {
                Packet::Interrupt { signal } => Some(signal.to_vec()),
                _ => None,
            })
            .collect();
        if !signals.is_empty() {
            assert_eq!(signals, vec![want.to_vec()]);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dialect}: no interrupt reached the agent"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn assert_on_time(dialect: Dialect, started: Instant) {
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) + GRACE,
        "{dialect}: {took:?}"
    );
    assert!(took < LIMIT, "{dialect}: {took:?}");
}

#[test]
fn blocking_deadline_against_a_silent_agent() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (stream, log) = silent_agent();
        let session =
            tuppence_blocking::Session::new(stream, config(dialect), LIMIT).expect("session");
        let started = Instant::now();
        let run = session.run(sleeper()).expect("run");
        let ev = run.next_timeout(Some(LIMIT)).expect("next");
        assert_eq!(
            ev,
            Some(tuppence_blocking::RunEvent::Finished(Outcome::TimedOut)),
            "{dialect}"
        );
        assert_on_time(dialect, started);
        assert_eq!(session.stats().deadlines_expired, 1);
        assert_killed(dialect, &log);
        // The session goes on: another command is accepted.
        assert!(session.run(sleeper()).is_ok());
    }
}

#[test]
fn smol_deadline_against_a_silent_agent() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (stream, log) = silent_agent();
        smol::block_on(async {
            let io = async_io::Async::new(stream).expect("async");
            let session = tuppence_smol::Session::new(io, config(dialect))
                .await
                .expect("session");
            let started = Instant::now();
            let run = session.run(sleeper()).await.expect("run");
            let outcome = futures_lite::future::or(run.wait(), async {
                async_io::Timer::after(LIMIT).await;
                panic!("{dialect}: no end within {LIMIT:?}");
            })
            .await;
            assert_eq!(outcome, Outcome::TimedOut, "{dialect}");
            assert_on_time(dialect, started);
        });
        assert_killed(dialect, &log);
    }
}

#[test]
fn mio_deadline_against_a_silent_agent() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (stream, log) = silent_agent();
        stream.set_nonblocking(true).expect("nonblocking");
        let mut client = Client::new(config(dialect), Instant::now());
        let xid = client.run(sleeper()).expect("run");
        let started = Instant::now();
        let mut outcome = None;
        let client = tuppence_mio::run_client(stream, client, |_, ev| match ev {
            ClientEvent::Finished { xid: x, outcome: o } if x == xid => {
                outcome = Some(o);
                tuppence_mio::Flow::Stop
            }
            _ if started.elapsed() > LIMIT => panic!("{dialect}: no end within {LIMIT:?}"),
            _ => tuppence_mio::Flow::Continue,
        })
        .expect("run_client");
        assert_eq!(outcome, Some(Outcome::TimedOut), "{dialect}");
        assert_on_time(dialect, started);
        assert_eq!(client.stats().deadlines_expired, 1);
        assert_killed(dialect, &log);
    }
}

// ------------------------------------------------------------------------- extract_to

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("tuppence-adapters-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        Scratch(p)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What each adapter's `extract_to` must do, given a function that extracts `remote` to a
/// local path and returns the error text, if any.
fn check_extract_to(tag: &str, extract_to: impl Fn(&str, &Path) -> Result<u64, String>) {
    let d = Scratch::new(tag);
    let src = d.0.join("src");
    let content = b"line\n".repeat(10_000);
    std::fs::write(&src, &content).expect("seed");
    let src = src.to_str().expect("utf-8");

    // A new file, then a symbolic link to it: the link stays, the target is replaced.
    let copy = d.0.join("copy");
    assert_eq!(extract_to(src, &copy), Ok(content.len() as u64));
    assert!(std::fs::read(&copy).expect("copy") == content);
    let link = d.0.join("link");
    std::os::unix::fs::symlink("copy", &link).expect("symlink");
    std::fs::write(&copy, b"old").expect("reset");
    assert_eq!(extract_to(src, &link), Ok(content.len() as u64));
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read(&copy).expect("copy") == content);

    // A FIFO: its reader gets the bytes and it stays a FIFO.
    let fifo = d.0.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::open(&fifo)
                .expect("open fifo")
                .read_to_end(&mut v)
                .expect("read fifo");
            v
        })
    };
    assert_eq!(extract_to(src, &fifo), Ok(content.len() as u64));
    assert!(reader.join().expect("reader") == content);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .expect("fifo")
            .file_type()
            .is_fifo()
    );

    // The real /dev/null and /dev/full are safe now: written in place, ENOSPC reported.
    assert_eq!(
        extract_to(src, Path::new("/dev/null")),
        Ok(content.len() as u64)
    );
    let e = extract_to(src, Path::new("/dev/full")).expect_err("/dev/full takes nothing");
    assert!(e.contains("No space left on device"), "{e}");
    for dev in ["/dev/null", "/dev/full"] {
        assert!(
            std::fs::metadata(dev)
                .expect("device")
                .file_type()
                .is_char_device(),
            "{dev} was replaced"
        );
    }
    // A failed extract leaves nothing behind.
    assert!(extract_to("/nonexistent/file", &d.0.join("missing")).is_err());
    assert_eq!(d.names(), vec!["copy", "fifo", "link", "src"]);
}

#[test]
fn blocking_extract_to_follows_cp() {
    let (_agent, stream) = local_agent();
    let session =
        tuppence_blocking::Session::new(stream, ClientConfig::default(), LIMIT).expect("session");
    let user = me();
    check_extract_to("blocking", |remote, dest| {
        session
            .extract_to(&user, remote, dest, |_| {})
            .map_err(|e| e.to_string())
    });
}

#[test]
fn smol_extract_to_follows_cp() {
    let (_agent, stream) = local_agent();
    let user = me();
    // The session's driver runs on smol's global executor; each call blocks on its own.
    let session = smol::block_on(async {
        let io = async_io::Async::new(stream).expect("async");
        tuppence_smol::Session::new(io, ClientConfig::default())
            .await
            .expect("session")
    });
    check_extract_to("smol", |remote, dest| {
        smol::block_on(session.extract_to(&user, remote, dest, |_| {})).map_err(|e| e.to_string())
    });
}

/// A smol extract hands its sink every data packet already received in one vectored
/// write: with a sink that stalls once, the packets that arrived meanwhile go out
/// together, and the file arrives whole and in order.
#[test]
fn smol_extract_writes_the_packets_it_holds_at_once() {
    struct Counting {
        got: Vec<u8>,
        calls: usize,
        most: usize,
    }
    impl futures_lite::AsyncWrite for Counting {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.calls == 0 {
                // The agent keeps sending while the first write stalls.
                thread::sleep(Duration::from_millis(300));
            }
            self.calls += 1;
            let pieces = bufs.iter().filter(|b| !b.is_empty()).count();
            self.most = self.most.max(pieces);
            let mut n = 0;
            for b in bufs {
                self.got.extend_from_slice(b);
                n += b.len();
            }
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    let dir = Scratch::new("vectored");
    let src = dir.0.join("src");
    let content: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &content).expect("write source");
    let (_agent, stream) = local_agent();
    let user = me();
    let mut sink = Counting {
        got: Vec::new(),
        calls: 0,
        most: 0,
    };
    let n = smol::block_on(async {
        let io = async_io::Async::new(stream).expect("async");
        let session = tuppence_smol::Session::new(io, ClientConfig::default())
            .await
            .expect("session");
        session
            .extract(&user, src.to_str().expect("utf-8"), &mut sink, |_| {})
            .await
            .expect("extract")
    });
    assert_eq!(n, content.len() as u64);
    assert!(sink.got == content, "extracted bytes differ");
    // 4 MiB is 128 packets of 32 KiB; those that arrived during the stall went together.
    assert!(sink.most > 1, "one packet per write: {} calls", sink.calls);
    assert!(sink.calls < 128, "{} calls for 128 packets", sink.calls);
}

/// The blocking session's `AbortHandle` ends a transfer stuck waiting for the agent (here
/// one that never answers), and the agent is sent the interrupt that makes it clean up.
#[test]
fn blocking_abort_handle_ends_a_stuck_inject() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (stream, log) = silent_agent();
        let session =
            tuppence_blocking::Session::new(stream, config(dialect), LIMIT).expect("session");
        let abort = session.abort_handle();
        let started = Instant::now();
        let r = thread::scope(|s| {
            let t = s.spawn(|| session.inject("root", "/tmp/x", 0o644, &b"data"[..], |_| {}));
            // Once the request is out, the inject waits for an answer that never comes.
            let deadline = Instant::now() + LIMIT;
            while !log
                .lock()
                .expect("log")
                .iter()
                .any(|p| matches!(p, Packet::Inject { .. }))
            {
                assert!(Instant::now() < deadline, "no inject request");
                thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(abort.abort(), 1);
            t.join().expect("inject thread")
        });
        assert!(
            matches!(r, Err(tuppence_blocking::Error::Aborted)),
            "{dialect}: {r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{dialect}");
        assert_killed(dialect, &log);
        // Nothing else is aborted afterwards.
        assert_eq!(abort.abort(), 0);
    }
}
