//! The blocking session against a server machine run by a plain thread over real byte
//! streams: a unix socket pair and a pseudo-terminal pair standing in for a serial cable.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tuppence::Machine;
use tuppence::link::{ClientConfig, Command, Outcome, Server, ServerConfig, ServerEvent, Signal};
use tuppence_blocking::{Error, RunEvent, Session};

/// A scripted agent: `echo` echoes stdin to stdout and exits 0 at stdin EOF; `exit N`
/// prints to stderr and exits N; `sleep` waits for an interrupt (killed by signal 15 for
/// TERM); files live in a map.
fn fake_agent<S: Read + Write + Send + 'static>(mut stream: S, read_half: impl FnOnce(&S) -> S) {
    let mut reader = read_half(&stream);
    let (tx, rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut server = Server::new(ServerConfig::default(), Instant::now());
    let mut files: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    files.insert(b"/etc/motd".to_vec(), b"welcome\n".repeat(100_000));
    let mut kinds: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut incoming: HashMap<u16, (Vec<u8>, Vec<u8>)> = HashMap::new();
    while let Ok(Some(data)) = rx.recv() {
        let mut off = 0;
        while off < data.len() {
            off += server.handle_bytes(Instant::now(), &data[off..]).unwrap();
            while let Some(ev) = server.poll_event() {
                match ev {
                    ServerEvent::RunCommand { xid, command, .. } => {
                        let cmd = command.to_vec();
                        if let Some(code) = cmd.strip_prefix(b"exit ") {
                            let code = std::str::from_utf8(code).unwrap().parse().unwrap();
                            server.output(xid, 2, Bytes::from_static(b"bye\n")).unwrap();
                            server.command_exited(xid, code).unwrap();
                        } else {
                            kinds.insert(xid, cmd);
                        }
                    }
                    ServerEvent::Stdin { xid, data } => server.output(xid, 1, data).unwrap(),
                    ServerEvent::StdinEnd { xid }
                        if kinds.get(&xid).is_some_and(|k| k == b"echo") =>
                    {
                        server.command_exited(xid, 0).unwrap();
                    }
                    ServerEvent::Interrupt { xid, signal } => {
                        let signo = if &signal[..] == b"TERM" { 15 } else { 9 };
                        server.command_killed(xid, signo).unwrap();
                    }
                    ServerEvent::Inject { xid, path, .. } => {
                        incoming.insert(xid, (path.to_vec(), Vec::new()));
                        server.inject_ready(xid).unwrap();
                    }
                    ServerEvent::InjectData { xid, data } => {
                        incoming.get_mut(&xid).unwrap().1.extend_from_slice(&data)
                    }
                    ServerEvent::InjectEnd { xid } => {
                        let (path, content) = incoming.remove(&xid).unwrap();
                        files.insert(path, content);
                        server.inject_done(xid, Ok(())).unwrap();
                    }
                    ServerEvent::Extract { xid, path, .. } => match files.get(&path[..]) {
                        Some(content) => {
                            server.extract_ready(xid).unwrap();
                            server
                                .output(xid, 0, Bytes::copy_from_slice(content))
                                .unwrap();
                            server.extract_done(xid, Ok(())).unwrap();
                        }
                        None => server.fail(xid, 2).unwrap(),
                    },
                    _ => {}
                }
            }
            let mut out = BytesMut::new();
            server.poll_transmit(Instant::now(), &mut out);
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    }
}

fn unix_session() -> Session {
    let (a, b) = UnixStream::pair().unwrap();
    thread::spawn(move || fake_agent(b, |s| s.try_clone().unwrap()));
    Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap()
}

#[test]
fn output_stderr_and_exit_code() {
    let session = unix_session();
    let info = session.info();
    assert_eq!(info.server_version, (4, 0));
    let out = session.output(Command::new("exit 3")).unwrap();
    assert_eq!(out.outcome, Outcome::Exited(3));
    assert_eq!(out.stderr, b"bye\n");
    assert!(out.stdout.is_empty());
}

#[test]
fn stdin_round_trip_of_one_mebibyte() {
    let session = unix_session();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let run = session.run(Command::new("echo")).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            run.write_stdin(&data).unwrap();
            run.close_stdin().unwrap();
        });
    });
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(out.stdout == data);
}

#[test]
fn concurrent_commands_on_one_session() {
    let session = unix_session();
    thread::scope(|s| {
        for code in 0..20u32 {
            let session = &session;
            s.spawn(move || {
                let out = session
                    .output(Command::new(format!("exit {code}")))
                    .unwrap();
                assert_eq!(out.outcome, Outcome::Exited(code));
            });
        }
    });
}

#[test]
fn interrupt_reports_the_signal() {
    let session = unix_session();
    let run = session.run(Command::new("sleep")).unwrap();
    run.interrupt(Signal::TERM).unwrap();
    assert_eq!(
        run.next().unwrap(),
        Some(RunEvent::Finished(Outcome::Signaled(15)))
    );
}

#[test]
fn inject_then_extract_is_byte_exact_and_missing_file_is_enoent() {
    let session = unix_session();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let mut progress = 0;
    let sent = session
        .inject("root", "/tmp/x", 0o640, &content[..], |n| progress = n)
        .unwrap();
    assert_eq!(sent, content.len() as u64);
    assert_eq!(progress, sent);
    let mut back = Vec::new();
    let got = session
        .extract("root", "/tmp/x", &mut back, |_| {})
        .unwrap();
    assert_eq!(got, content.len() as u64);
    assert!(back == content);
    let err = session
        .extract("root", "/nope", Vec::new(), |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Remote { errno: 2, .. }), "{err}");
    assert!(err.to_string().contains("No such file"), "{err}");
}

/// A sink that takes its time with the first write.
struct SlowStart(bool);

impl Write for SlowStart {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.0 {
            self.0 = true;
            thread::sleep(Duration::from_millis(300));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A transfer of more events than an inbox holds (256) but fewer than the inbox and the
/// machine's queue together: while the consumer is busy, the reader takes every byte, moves
/// what fits into the inbox and goes back to reading, leaving the end in the machine.
/// Nothing more arrives, so the consumer must take it from there. (It used to wait for the
/// reader's 1 s read timeout: three extracts took over 3 s.)
#[test]
fn the_end_of_a_large_transfer_does_not_wait_for_more_input() {
    let session = unix_session();
    // 275 data packets.
    let content: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    session
        .inject("root", "/tmp/big", 0o600, &content[..], |_| {})
        .unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        let got = session
            .extract("root", "/tmp/big", SlowStart(false), |_| {})
            .unwrap();
        assert_eq!(got, content.len() as u64);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "3 extracts took {took:?}"
    );
}

/// Reads the client's hello and answers it as a 4.0 agent with cid 2 and no keepalive.
fn answer_hello(b: &mut UnixStream) {
    let mut hello = [0u8; 12];
    b.read_exact(&mut hello).unwrap();
    b.write_all(&[0x68, 0, 0, 12, 0, 2, 0, 0, 4, 0, 0, 0])
        .unwrap();
}

#[test]
fn peer_hangup_fails_waiters_instead_of_hanging() {
    let (a, b) = UnixStream::pair().unwrap();
    let peer = thread::spawn(move || {
        let mut b = b;
        answer_hello(&mut b);
        let mut cmd = [0u8; 8];
        b.read_exact(&mut cmd).unwrap();
        // Hang up with the command running.
    });
    let session = Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap();
    let start = Instant::now();
    let out = session.output(Command::new("sleep 100")).unwrap();
    peer.join().unwrap();
    assert!(
        matches!(out.outcome, Outcome::LinkLost(_)),
        "{:?}",
        out.outcome
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(session.output(Command::new("true")).is_err());
}

#[test]
fn a_command_without_stdin_goes_out_with_its_end_of_stdin_in_one_write() {
    // A packet socket keeps each write a record of its own, so the peer sees how the
    // client wrote, not how the kernel happened to gather the bytes.
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let (a, b) = (UnixStream::from(a), UnixStream::from(b));
    let peer = thread::spawn(move || {
        let mut b = b;
        answer_hello(&mut b);
        // The write after the hello: `run` followed by `close_stdin` made two.
        let mut buf = vec![0u8; 64 << 10];
        let n = b.read(&mut buf).unwrap();
        let mut types = Vec::new();
        let mut at = 0;
        while at + 8 <= n {
            types.push(buf[at]);
            at += usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])).max(8);
        }
        types
    });
    let session = Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap();
    let run = session.run_without_stdin(Command::new("true")).unwrap();
    assert_eq!(peer.join().unwrap(), [b'c', b'X']);
    // Stdin is closed already: closing it again is refused, nothing more is sent.
    assert!(run.close_stdin().is_err());
}

#[test]
fn serial_cable_emulated_by_a_pty_pair_carries_one_mebibyte() {
    let (host, guest) = serial2::SerialPort::pair().unwrap();
    thread::spawn(move || fake_agent(guest, |s| s.try_clone().unwrap()));
    let session = Session::new(host, ClientConfig::default(), Duration::from_secs(5)).unwrap();
    // Every byte value, including the ones a cooked tty would eat (^C, ^D, XON/XOFF).
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 256) as u8).collect();
    let run = session.run(Command::new("echo")).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            run.write_stdin(&data).unwrap();
            run.close_stdin().unwrap();
        });
    });
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
}

/// The agent fails an inject while data is still coming (a full disk): the next piece the
/// client sends finds the transaction gone. The inject must report the agent's status, not
/// the refused send ("no live transaction"): seen as a flaky ENOSPC test once the writer
/// thread made sends and the reader's dispatch independent.
#[test]
fn an_inject_the_agent_fails_mid_transfer_reports_the_agents_status() {
    let (a, b) = UnixStream::pair().unwrap();
    let (failed_tx, failed_rx) = std::sync::mpsc::channel::<()>();
    thread::spawn(move || {
        let mut b = b;
        let mut server = Server::new(ServerConfig::default(), Instant::now());
        let mut buf = vec![0u8; 65536];
        let mut failed = false;
        loop {
            let n = match b.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut off = 0;
            while off < n {
                off += server.handle_bytes(Instant::now(), &buf[off..n]).unwrap();
                while let Some(ev) = server.poll_event() {
                    match ev {
                        ServerEvent::Inject { xid, .. } => server.inject_ready(xid).unwrap(),
                        ServerEvent::InjectData { xid, .. } if !failed => {
                            failed = true;
                            server.inject_done(xid, Err(28)).unwrap();
                        }
                        _ => {}
                    }
                }
            }
            let mut out = BytesMut::new();
            server.poll_transmit(Instant::now(), &mut out);
            if b.write_all(&out).is_err() {
                return;
            }
            if failed && !out.is_empty() {
                let _ = failed_tx.send(());
            }
        }
    });
    /// Gives one piece, then waits until the agent has failed the inject (and a little
    /// longer, for the session's reader to take the answer in) before the next.
    struct Source {
        reads: usize,
        failed: std::sync::mpsc::Receiver<()>,
    }
    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads == 2 {
                self.failed
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the agent failed the inject");
                thread::sleep(Duration::from_millis(200));
            }
            let n = buf.len().min(4096);
            buf[..n].fill(7);
            Ok(n)
        }
    }
    let session = Session::new(a, ClientConfig::default(), Duration::from_secs(5)).unwrap();
    let source = Source {
        reads: 0,
        failed: failed_rx,
    };
    let e = session
        .inject("root", "/full/disk", 0o644, source, |_| {})
        .unwrap_err();
    assert!(
        matches!(e, Error::Remote { errno: 28, .. }),
        "expected the agent's 28, got {e:?}"
    );
}

/// An agent that fails an inject right after saying it is ready (a full disk, say), before
/// any data arrived: the ready and the failure reach the session in one read, so the
/// transaction is over before the first piece of data is sent. The inject reports the
/// agent's errno, not that its transaction vanished.
#[test]
fn an_inject_the_agent_fails_before_any_data_reports_the_agents_errno() {
    use tuppence::wire::{Decoder, Dialect, Hello, Packet, Sender};
    let (ours, theirs) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || {
        let mut s = theirs;
        let mut dec = Decoder::new(Dialect::V4, Sender::Client);
        let mut buf = vec![0u8; 65536];
        let mut answered = false;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            while let Some(frame) = dec.next_frame().unwrap() {
                let mut out = BytesMut::new();
                match frame.packet {
                    Packet::Hello(_) => Packet::Hello(Hello {
                        major: 4,
                        minor: 0,
                        keepalive: 0,
                    })
                    .encode(Dialect::V4, 1, 0, &mut out)
                    .unwrap(),
                    Packet::Inject { .. } if !answered => {
                        answered = true;
                        Packet::Major(0)
                            .encode(Dialect::V4, 1, frame.xid, &mut out)
                            .unwrap();
                        Packet::Minor(28)
                            .encode(Dialect::V4, 1, frame.xid, &mut out)
                            .unwrap();
                    }
                    _ => {}
                }
                s.write_all(&out).unwrap();
            }
        }
    });
    let session = Session::new(ours, ClientConfig::default(), Duration::from_secs(10)).unwrap();
    let e = session
        .inject("root", "/f", 0o644, &vec![1u8; 1 << 20][..], |_| {})
        .unwrap_err();
    assert!(
        matches!(e, Error::Remote { errno: 28, .. }),
        "the agent's failure, not {e:?}"
    );
    drop(session);
    agent.join().unwrap();
}

/// A controller holding many idle sessions: the bulk buffer a transfer grew in the reader
/// thread is given back once the session is idle (no live transaction).
#[test]
fn reader_buffer_grows_for_bulk_data_and_shrinks_when_idle() {
    let session = unix_session();
    let small = session.read_buffer_len();
    assert!(small <= 16 * 1024, "starts small: {small}");
    // More data packets than an inbox holds (256 events), and a consumer that is slow at
    // first: the reader fills the inbox and then waits, its bulk buffer in hand, while the
    // consumer looks. (With a fast consumer the reader could read everything and give the
    // buffer back before the consumer first looked.)
    let content: Vec<u8> = (0..16_000_000u32).map(|i| (i % 251) as u8).collect();
    session
        .inject("root", "/tmp/grow", 0o600, &content[..], |_| {})
        .unwrap();
    struct SlowAtFirst(usize);
    impl std::io::Write for SlowAtFirst {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < 20 {
                self.0 += 1;
                thread::sleep(Duration::from_millis(5));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    for round in 0..2 {
        let largest = std::cell::Cell::new(0);
        let got = session
            .extract("root", "/tmp/grow", SlowAtFirst(0), |_| {
                largest.set(largest.get().max(session.read_buffer_len()));
            })
            .unwrap();
        assert_eq!(got, content.len() as u64);
        assert!(
            largest.get() > 16 * 1024,
            "round {round}: bulk data grew it"
        );
        // The reader shrinks it after feeding the last packet; allow it to get there.
        let deadline = Instant::now() + Duration::from_secs(5);
        while session.read_buffer_len() > 16 * 1024 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let idle = session.read_buffer_len();
        assert!(idle <= 16 * 1024, "round {round}: idle again, holds {idle}");
    }
}

/// On a device link, `quit` returns only once the other end has read the request: QEMU's
/// chardev socket in front of a guest's serial port drops what it had not read when the
/// socket closes, so a caller that quits and then closes (a test script's last step)
/// could lose the quit. The peer here answers the hello, then is busy for 300 ms.
#[test]
fn quit_on_a_device_link_returns_once_the_peer_has_read_it() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let (read_tx, read_at) = std::sync::mpsc::channel::<Instant>();
    thread::spawn(move || {
        let mut server = Server::new(ServerConfig::default().for_device_link(), Instant::now());
        let mut buf = [0u8; 4096];
        let mut out = BytesMut::new();
        // Until the hello is answered.
        while out.is_empty() {
            let n = theirs.read(&mut buf).unwrap();
            assert!(n > 0, "the client hung up before its hello");
            server.handle_bytes(Instant::now(), &buf[..n]).unwrap();
            server.poll_transmit(Instant::now(), &mut out);
        }
        theirs.write_all(&out).unwrap();
        thread::sleep(Duration::from_millis(300));
        loop {
            let n = theirs.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            server.handle_bytes(Instant::now(), &buf[..n]).unwrap();
            while let Some(ev) = server.poll_event() {
                if matches!(ev, ServerEvent::Quit) {
                    let _ = read_tx.send(Instant::now());
                    return;
                }
            }
        }
    });
    let session = Session::new(
        ours,
        ClientConfig::default().for_device_link(),
        Duration::from_secs(5),
    )
    .unwrap();
    session.quit().unwrap();
    let returned = Instant::now();
    drop(session);
    let read = read_at
        .recv_timeout(Duration::from_secs(5))
        .expect("the peer never read the quit");
    assert!(
        read <= returned,
        "quit returned {:?} before the peer had read it",
        read - returned
    );
}
