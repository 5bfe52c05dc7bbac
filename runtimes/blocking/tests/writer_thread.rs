//! When the session starts its writer thread: on a socket, only once a write would block.
//! Observed as the threads of this process named `tuppence-writer`; the tests of this file
//! take turns, so that one's sessions do not show in another's count.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use support::{eventually, threads_named, turn};
use tuppence::Machine;
use tuppence::link::{ClientConfig, Command, Outcome, Server, ServerConfig, ServerEvent};
use tuppence_blocking::Session;

/// Threads of this process named `tuppence-writer`.
fn writer_threads() -> usize {
    threads_named("tuppence-writer")
}

/// An agent on one thread: every command takes stdin; at stdin EOF it exits 0 if stdin
/// was `expect`, else 1. With `stall`, it stops reading that long once a command starts.
fn agent(mut stream: UnixStream, expect: Vec<u8>, stall: Duration) {
    let mut server = Server::new(ServerConfig::default(), Instant::now());
    let mut stdin: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut off = 0;
        let mut started = false;
        while off < n {
            off += server.handle_bytes(Instant::now(), &buf[off..n]).unwrap();
            while let Some(ev) = server.poll_event() {
                match ev {
                    ServerEvent::RunCommand { .. } => started = true,
                    ServerEvent::Stdin { data, .. } => stdin.extend_from_slice(&data),
                    ServerEvent::StdinEnd { xid } => {
                        let code = u32::from(stdin != expect);
                        server.command_exited(xid, code).unwrap();
                    }
                    _ => {}
                }
            }
        }
        let mut out = BytesMut::new();
        server.poll_transmit(Instant::now(), &mut out);
        if stream.write_all(&out).is_err() {
            return;
        }
        if started {
            thread::sleep(stall);
        }
    }
}

fn session_with(expect: Vec<u8>, stall: Duration) -> Session {
    let (a, b) = UnixStream::pair().unwrap();
    thread::spawn(move || agent(b, expect, stall));
    Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap()
}

/// `run -- true`: a hello, a command, its stdin EOF. A socket takes those few bytes at
/// once, so the thread that queued them writes them and no writer thread is started.
#[test]
fn a_short_command_on_a_socket_starts_no_writer_thread() {
    let _turn = turn();
    assert_eq!(writer_threads(), 0);
    let session = session_with(Vec::new(), Duration::ZERO);
    let run = session.run(Command::new("true")).unwrap();
    run.close_stdin().unwrap();
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(session.flush(Some(Duration::from_secs(5))).unwrap());
    assert_eq!(writer_threads(), 0);
    drop(session);
    assert_eq!(writer_threads(), 0);
}

/// A peer that stops reading while 16 MiB of stdin are written: the write that would block
/// leaves its rest to a writer thread started then; the caller waits for room instead of
/// hanging, and once the peer reads again every byte arrives, in order (the agent checks).
#[test]
fn a_peer_that_stops_reading_gets_a_writer_thread_and_every_byte_in_order() {
    let _turn = turn();
    assert_eq!(writer_threads(), 0);
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let session = session_with(data.clone(), Duration::from_secs(1));
    let start = Instant::now();
    let run = session.run(Command::new("sink")).unwrap();
    thread::scope(|s| {
        let writing = s.spawn(|| {
            // Uneven pieces, so that packets and writes do not line up.
            for piece in data.chunks(333_333) {
                run.write_stdin(piece).unwrap();
            }
            run.close_stdin().unwrap();
        });
        assert!(
            eventually(Duration::from_secs(5), || writer_threads() == 1),
            "no writer thread while the peer did not read"
        );
        writing.join().unwrap();
    });
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0), "stdin arrived altered");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(session.flush(Some(Duration::from_secs(5))).unwrap());
    drop(session);
    // Gone once the dropped session has nothing left to write.
    assert!(eventually(Duration::from_secs(5), || writer_threads() == 0));
}

/// A dropped session that never started its writer thread has nothing left to write: its
/// reader stops at its next wake-up instead of waiting out the writer's grace period (5 s),
/// and the agent reads the end of the stream.
#[test]
fn dropping_a_session_without_writer_thread_closes_the_stream() {
    let _turn = turn();
    let (a, mut b) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || {
        let mut server = Server::new(ServerConfig::default(), Instant::now());
        let mut buf = [0u8; 4096];
        loop {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => {
                    server.handle_bytes(Instant::now(), &buf[..n]).unwrap();
                    let mut out = BytesMut::new();
                    server.poll_transmit(Instant::now(), &mut out);
                    b.write_all(&out).unwrap();
                }
            }
        }
    });
    let session = Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap();
    let dropped = Instant::now();
    drop(session);
    let eof = agent.join().unwrap();
    // The reader's handle closes at its next read timeout (1 s at most).
    assert!(eof.duration_since(dropped) < Duration::from_millis(1500));
}

/// A peer that ends its side of the stream while the session lives: once the reader has
/// seen the end, no handle of ours keeps the stream open, so the peer reads its end too
/// (the command behind an `exec:` link waits for that to exit).
#[test]
fn the_write_handle_closes_with_the_reader_when_the_peer_ends_the_stream() {
    let _turn = turn();
    let (a, mut b) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || {
        let mut server = Server::new(ServerConfig::default(), Instant::now());
        let mut buf = [0u8; 4096];
        let n = b.read(&mut buf).unwrap();
        server.handle_bytes(Instant::now(), &buf[..n]).unwrap();
        let mut out = BytesMut::new();
        server.poll_transmit(Instant::now(), &mut out);
        b.write_all(&out).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let ended = Instant::now();
        // Fails the test rather than hanging it.
        b.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        while b.read(&mut buf).is_ok_and(|n| n > 0) {}
        ended.elapsed()
    });
    let session = Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap();
    let took = agent.join().unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(session.is_closed());
}
