//! tuppence-smol end to end: the async client `Session` against `serve` with a toy agent,
//! over a unix socket pair, a unix listener, TCP on loopback and a pty pair standing in
//! for a serial cable; plus disconnects, keepalive expiry and backpressure.

mod common;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use bytes::BytesMut;
use common::{ToyAgent, connect, guard, pattern, reaches};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt, future};
use tuppence::link::{ClientConfig, Command, Limits, LinkError, Outcome, ServerConfig, Signal};
use tuppence::wire::{Dialect, Hello, Packet};
use tuppence_smol::{Error, MonitorEvent, RunEvent, Session};

/// Runs a command on stdin `data` through the `echo` command and checks the round trip.
async fn echo_round_trip(session: &Session, data: Vec<u8>) {
    let mut run = session.run(Command::new("echo")).await.unwrap();
    let control = run.control();
    let writer = smol::spawn({
        let data = data.clone();
        async move {
            control.write_stdin(data).await.unwrap();
            control.close_stdin().await.unwrap();
        }
    });
    let mut back = Vec::with_capacity(data.len());
    let mut outcome = None;
    while let Some(ev) = run.next().await {
        match ev {
            RunEvent::Stdout(d) => back.extend_from_slice(&d),
            RunEvent::Stderr(d) => panic!("unexpected stderr {d:?}"),
            RunEvent::Finished(o) => outcome = Some(o),
        }
    }
    writer.await;
    assert_eq!(outcome, Some(Outcome::Exited(0)));
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

/// Every operation once: commands, stdin, signals, procinfo, files, monitors.
async fn exercise(session: &Session) {
    let info = session.connected().await.unwrap();
    assert_eq!(info.server_version, (4, 0));

    let out = session.output(Command::new("exit 3")).await.unwrap();
    assert_eq!(out.outcome, Outcome::Exited(3));
    assert_eq!(out.stderr, b"bye\n");
    assert!(out.stdout.is_empty());

    let out = session.output(Command::new("count 5")).await.unwrap();
    assert_eq!(out.stdout, b"0\n1\n2\n3\n4\n");

    let out = session.output(Command::new("no-such-thing")).await.unwrap();
    assert_eq!(out.outcome, Outcome::Failed { errno: 2 });

    echo_round_trip(session, pattern(200_000)).await;

    let run = session.run(Command::new("sleep")).await.unwrap();
    let fields = run.procinfo(1 << 1).await.unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].kind, 1);
    assert_eq!(
        &fields[0].value[..],
        &(1000 + u32::from(run.xid())).to_be_bytes()
    );
    let control = run.control();
    run.interrupt(Signal::TERM).await.unwrap();
    assert_eq!(run.wait().await, Outcome::Signaled(15));
    let err = control.procinfo(1 << 1).await.unwrap_err();
    assert!(matches!(err, Error::Remote { errno: 3, .. }), "{err:?}");

    let content = pattern(1_500_000);
    let mut last = 0;
    let sent = session
        .inject("root", "/tmp/x", 0o640, &content[..], |n| last = n)
        .await
        .unwrap();
    assert_eq!(sent, content.len() as u64);
    assert_eq!(last, sent);
    let mut back = Vec::new();
    let got = session
        .extract("root", "/tmp/x", &mut back, |_| {})
        .await
        .unwrap();
    assert_eq!(got, content.len() as u64);
    assert!(back == content, "extracted bytes differ");
    let err = session
        .extract("root", "/nope", Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Remote { errno: 2, .. }), "{err}");
    assert!(err.to_string().contains("No such file"), "{err}");

    let mut monitor = session.monitor("lines").await.unwrap();
    monitor.settle(7).await.unwrap();
    let mut lines = Vec::new();
    loop {
        match monitor.next().await.unwrap() {
            MonitorEvent::Data(d) => lines.push(String::from_utf8_lossy(&d).into_owned()),
            MonitorEvent::Settled(seq) => {
                assert_eq!(seq, 7);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(lines, ["event 1\n", "event 2\n", "event 3\n"]);
    monitor.end().await.unwrap();
    let rest: Vec<MonitorEvent> = (&mut monitor).collect().await;
    assert_eq!(rest, [MonitorEvent::Finished(Outcome::Completed)]);
    let err = session.monitor("nope").await.unwrap();
    let rest: Vec<MonitorEvent> = err.collect().await;
    assert_eq!(rest, [MonitorEvent::Finished(Outcome::Failed { errno: 2 })]);
}

#[test]
fn unix_socket_pair() {
    smol::block_on(guard(30, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (session, _server) = connect(a, b, ToyAgent::new(), ClientConfig::default()).await;
        exercise(&session).await;
        echo_round_trip(&session, pattern(1 << 20)).await;
    }));
}

/// One `write_stdin` of 8 MiB, eight times the transmit bound: the queue takes what fits,
/// the pump is given it, and the rest follows as room comes. With the driver as a task of
/// its own (not polled by the waiting caller) the pump must be woken for the part queued
/// before the queue filled up, or the write stalls until something else wakes it (the
/// keepalive timer: 15 s here, against a quarter of a second).
#[test]
fn one_large_stdin_write_goes_out_whole_with_either_driver() {
    const PROMPTLY: Duration = Duration::from_secs(5);
    smol::block_on(guard(30, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (session, _server) = connect(a, b, ToyAgent::new(), ClientConfig::default()).await;
        let t = Instant::now();
        echo_round_trip(&session, pattern(8 << 20)).await;
        assert!(t.elapsed() < PROMPTLY, "assisted: {:?}", t.elapsed());

        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let _server = smol::spawn(tuppence_smol::serve(
            b,
            ServerConfig::default(),
            ToyAgent::new(),
        ));
        let (session, driver) = Session::with_driver(a, ClientConfig::default());
        let _driver = smol::spawn(driver);
        let t = Instant::now();
        echo_round_trip(&session, pattern(8 << 20)).await;
        assert!(t.elapsed() < PROMPTLY, "driver task: {:?}", t.elapsed());
    }));
}

#[test]
fn unix_listener() {
    smol::block_on(guard(30, async {
        let dir = std::env::temp_dir().join(format!("tuppence-smol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = Async::<UnixListener>::bind(&path).unwrap();
        let accept = smol::spawn(async move { listener.accept().await.unwrap().0 });
        let client = Async::<UnixStream>::connect(&path).await.unwrap();
        let server = accept.await;
        let (session, _server) =
            connect(client, server, ToyAgent::new(), ClientConfig::default()).await;
        exercise(&session).await;
        let _ = std::fs::remove_dir_all(&dir);
    }));
}

#[test]
fn tcp_loopback() {
    smol::block_on(guard(30, async {
        let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = listener.get_ref().local_addr().unwrap();
        let accept = smol::spawn(async move { listener.accept().await.unwrap().0 });
        let client = Async::<TcpStream>::connect(addr).await.unwrap();
        let server = accept.await;
        let (session, _server) =
            connect(client, server, ToyAgent::new(), ClientConfig::default()).await;
        exercise(&session).await;
        echo_round_trip(&session, pattern(1 << 20)).await;
    }));
}

/// serial2 configures the port (raw); the I/O goes through a dup'd fd, because a
/// `SerialPort`'s own reads wait for their timeout. The port itself is closed here, so
/// the returned `File` is the only open handle (its close is the "cable" hanging up).
fn serial_io(port: serial2::SerialPort) -> Async<File> {
    let fd = port.as_fd().try_clone_to_owned().unwrap();
    drop(port);
    Async::new(File::from(fd)).unwrap()
}

#[test]
fn pty_pair_as_serial_cable_carries_one_mebibyte_of_every_byte_value() {
    smol::block_on(guard(60, async {
        let (host, guest) = serial2::SerialPort::pair().unwrap();
        let (host, guest) = (serial_io(host), serial_io(guest));
        let (session, server) =
            connect(host, guest, ToyAgent::new(), ClientConfig::default()).await;
        echo_round_trip(&session, pattern(1 << 20)).await;
        exercise(&session).await;
        // The agent hangs up its end of the "cable": the host side reads EIO or EOF,
        // and a running command learns the link is gone.
        let run = session.run(Command::new("sleep")).await.unwrap();
        session.quit().await.unwrap();
        assert_eq!(server.await.map_err(|e| e.to_string()), Ok(()));
        assert_eq!(run.wait().await, Outcome::LinkLost(LinkError::Closed));
    }));
}

#[test]
fn fifty_concurrent_commands_on_one_session() {
    smol::block_on(guard(30, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (session, _server) = connect(a, b, ToyAgent::new(), ClientConfig::default()).await;
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                let session = session.clone();
                smol::spawn(async move {
                    match i % 3 {
                        0 => {
                            let out = session
                                .output(Command::new(format!("exit {i}")))
                                .await
                                .unwrap();
                            assert_eq!(out.outcome, Outcome::Exited(i));
                            assert_eq!(out.stderr, b"bye\n");
                        }
                        1 => {
                            let out = session
                                .output(Command::new(format!("count {i}")))
                                .await
                                .unwrap();
                            let want: String = (0..i).map(|n| format!("{n}\n")).collect();
                            assert_eq!(out.stdout, want.as_bytes());
                            assert_eq!(out.outcome, Outcome::Exited(0));
                        }
                        _ => {
                            let data = format!("stdin of command {i}\n").repeat(i as usize * 100);
                            echo_round_trip(&session, data.into_bytes()).await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }));
}

#[test]
fn disconnect_mid_inject_is_a_typed_error_not_a_hang() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let mut agent = ToyAgent::new();
        agent.close_after_inject = Some(100_000);
        let (session, server) = connect(a, b, agent, ClientConfig::default()).await;
        let content = pattern(8 << 20);
        let err = session
            .inject("root", "/tmp/big", 0o600, &content[..], |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Link(LinkError::Closed) | Error::Transport(_)),
            "{err:?}"
        );
        assert_eq!(server.await.map_err(|e| e.to_string()), Ok(()));
        assert!(session.is_closed());
        let err = session.run(Command::new("echo")).await.unwrap_err();
        assert!(matches!(err, Error::Link(LinkError::Closed)), "{err:?}");
    }));
}

#[test]
fn disconnect_mid_extract_is_a_typed_error_not_a_hang() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (session, _server) = connect(a, b, ToyAgent::new(), ClientConfig::default()).await;
        let running = session.run(Command::new("sleep")).await.unwrap();
        let mut got = 0;
        let err = session
            .extract("root", "/close-midway", futures_lite::io::sink(), |n| {
                got = n
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Link(LinkError::Closed)), "{err:?}");
        assert!(got > 0 && got < 4 << 20, "{got}");
        // Every other waiter learns it too.
        assert_eq!(running.wait().await, Outcome::LinkLost(LinkError::Closed));
        assert!(matches!(
            session.closed().await,
            Error::Link(LinkError::Closed)
        ));
    }));
}

#[test]
fn quit_stops_the_agent_and_running_commands_see_the_link_lost() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (session, server) = connect(a, b, ToyAgent::new(), ClientConfig::default()).await;
        let run = session.run(Command::new("sleep")).await.unwrap();
        session.quit().await.unwrap();
        assert_eq!(server.await.map_err(|e| e.to_string()), Ok(()));
        assert_eq!(run.wait().await, Outcome::LinkLost(LinkError::Closed));
    }));
}

/// A client that asks for no keepalives, so that no timer of the pump acts by itself.
fn without_keepalives() -> ClientConfig {
    ClientConfig {
        keepalive: 0,
        ..ClientConfig::default()
    }
}

/// Reads the client's hello and answers it as a v4 agent announcing `keepalive`.
async fn answer_hello(io: &mut Async<UnixStream>, keepalive: u16) {
    let mut hello = [0u8; 12];
    io.read_exact(&mut hello).await.unwrap();
    let mut reply = BytesMut::new();
    Packet::Hello(Hello {
        major: 4,
        minor: 0,
        keepalive,
    })
    .encode(Dialect::V4, 2, 0, &mut reply)
    .unwrap();
    io.write_all(&reply).await.unwrap();
}

/// Reads one packet and returns its 8-byte header (the payload is read and dropped).
async fn read_packet(io: &mut Async<UnixStream>) -> [u8; 8] {
    let mut header = [0u8; 8];
    io.read_exact(&mut header).await.unwrap();
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut payload = vec![0u8; len - 8];
    io.read_exact(&mut payload).await.unwrap();
    header
}

/// Reads and drops whatever comes until the client closes.
async fn drain(io: &mut Async<UnixStream>) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = io.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// A peer that answers the hello with `keepalive` and then never sends another byte
/// (while still reading, so nothing but the timer can notice).
async fn silent_server(mut io: Async<UnixStream>, keepalive: u16) {
    answer_hello(&mut io, keepalive).await;
    drain(&mut io).await;
}

/// A peer that answers the hello, reads nothing for `pause`, then reads packets and
/// returns their types up to and including the first `X` (end of stdin).
async fn slow_reader(mut io: Async<UnixStream>, pause: Duration) -> Vec<u8> {
    answer_hello(&mut io, 0).await;
    Timer::after(pause).await;
    let mut types = Vec::new();
    loop {
        let header = read_packet(&mut io).await;
        types.push(header[0]);
        if header[0] == b'X' {
            return types;
        }
    }
}

/// A peer that answers the hello with keepalives off, reads two command requests and,
/// once `go` says so, ends the first with exit status 7 (major 0, minor 7).
async fn ends_the_first_command_when_told(
    mut io: Async<UnixStream>,
    go: smol::channel::Receiver<()>,
) {
    answer_hello(&mut io, 0).await;
    let mut xids = Vec::new();
    while xids.len() < 2 {
        let header = read_packet(&mut io).await;
        if header[0] == b'c' {
            xids.push(u16::from_be_bytes([header[6], header[7]]));
        }
    }
    go.recv().await.unwrap();
    let mut out = BytesMut::new();
    Packet::Major(0)
        .encode(Dialect::V4, 2, xids[0], &mut out)
        .unwrap();
    Packet::Minor(7)
        .encode(Dialect::V4, 2, xids[0], &mut out)
        .unwrap();
    io.write_all(&out).await.unwrap();
    drain(&mut io).await;
}

/// A consumer whose future is kept but no longer polled (as one held across a `select`
/// that chose another branch) must not hold up the session's other consumers. It was the
/// last to wait, so the relay hands the pump's wake-ups to it alone and they are lost:
/// the driver task's watchdog must act on them soon after. Keepalives are off, so no
/// timer of the pump would come to the rescue. (Without the watchdog it hangs.)
#[test]
fn a_waiter_that_stops_polling_does_not_hold_up_the_others() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (go, told) = smol::channel::bounded(1);
        let _peer = smol::spawn(ends_the_first_command_when_told(b, told));
        let session = Session::new(a, without_keepalives()).await.unwrap();
        let first = session.run(Command::new("first")).await.unwrap();
        let second = session.run(Command::new("second")).await.unwrap();
        // The first command's consumer waits on a thread of its own...
        let (done, outcome) = smol::channel::bounded(1);
        std::thread::spawn(move || {
            let _ = done.send_blocking(smol::block_on(first.wait()));
        });
        Timer::after(Duration::from_millis(100)).await;
        // ...then the second's waits once, after it, and is kept but never polled again.
        let mut kept = Box::pin(second.wait());
        assert!(future::poll_once(&mut kept).await.is_none());
        go.send(()).await.unwrap();
        let asked = Instant::now();
        assert_eq!(outcome.recv().await.unwrap(), Outcome::Exited(7));
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        drop(kept);
    }));
}

/// A peer that answers the hello with keepalives off, reads one command request and then
/// closes the connection once `go` says so.
async fn closes_after_the_first_command(
    mut io: Async<UnixStream>,
    go: smol::channel::Receiver<()>,
) {
    answer_hello(&mut io, 0).await;
    while read_packet(&mut io).await[0] != b'c' {}
    go.recv().await.unwrap();
}

/// The same as a select that gave up on a consumer, with nobody else using the session
/// afterwards: the wake-up for the peer's close goes to the consumer that waited last,
/// which no longer listens, and the session must still notice the close by itself (as it
/// must notice keepalives due, or a dead peer) while the caller does not touch it.
#[test]
fn a_session_nobody_waits_on_still_sees_the_link_end() {
    let (a, b) = Async::<UnixStream>::pair().unwrap();
    let (go, told) = smol::channel::bounded(1);
    let peer = smol::spawn(closes_after_the_first_command(b, told));
    let (session, mut run) = smol::block_on(guard(10, async {
        let session = Session::new(a, without_keepalives()).await.unwrap();
        let run = session.run(Command::new("sleep 9")).await.unwrap();
        (session, run)
    }));
    // Waits once, on this thread, and gives up: its waker stays the one registered.
    smol::block_on(async {
        let gave_up = future::or(async { run.next().await.map(|_| false) }, async {
            Timer::after(Duration::from_millis(50)).await;
            Some(true)
        });
        assert_eq!(gave_up.await, Some(true));
    });
    smol::block_on(go.send(())).unwrap();
    smol::block_on(peer);
    let closed = Instant::now();
    // Not in a `block_on` and not calling into the session: only its task can notice.
    while !session.is_closed() {
        assert!(
            closed.elapsed() < Duration::from_secs(3),
            "the session did not see its peer close"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(run);
}

/// A peer that answers the hello with keepalives off and returns the packet types of
/// the client's next write (on a packet socket, one read is one write).
async fn first_read_after_hello(mut io: Async<UnixStream>) -> Vec<u8> {
    answer_hello(&mut io, 0).await;
    let mut buf = vec![0u8; 64 << 10];
    let n = io.read(&mut buf).await.unwrap();
    let mut types = Vec::new();
    let mut at = 0;
    while at + 8 <= n {
        types.push(buf[at]);
        at += usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])).max(8);
    }
    types
}

/// A connected pair of packet sockets: each write stays a record of its own, so a peer
/// sees how the client wrote, not how the kernel happened to gather the bytes.
fn packet_socket_pair() -> (Async<UnixStream>, Async<UnixStream>) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let [a, b] = fds.map(|fd| unsafe { UnixStream::from_raw_fd(fd) });
    (Async::new(a).unwrap(), Async::new(b).unwrap())
}

#[test]
fn a_command_without_stdin_goes_out_with_its_end_of_stdin_in_one_write() {
    smol::block_on(guard(10, async {
        let (a, b) = packet_socket_pair();
        let peer = smol::spawn(first_read_after_hello(b));
        let session = Session::new(a, without_keepalives()).await.unwrap();
        let run = session
            .run_without_stdin(Command::new("true"))
            .await
            .unwrap();
        assert_eq!(peer.await, [b'c', b'X']);
        // Stdin is closed already: closing it again is refused, nothing more is sent.
        assert!(run.close_stdin().await.is_err());
    }));
}

#[test]
fn requests_made_while_the_driver_waits_to_write_are_sent() {
    // The driver is not woken for data queued while the transport is full (it takes
    // that data once its pending write completes); this checks nothing is left behind.
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let peer = smol::spawn(slow_reader(b, Duration::from_millis(300)));
        let session = Session::new(a, ClientConfig::default()).await.unwrap();
        let run = session.run(Command::new("cat")).await.unwrap();
        // More than the socket buffer but less than the machine's transmit limit, so
        // this returns while the driver is left waiting to write.
        const STDIN: usize = 768 << 10;
        run.write_stdin(vec![7u8; STDIN]).await.unwrap();
        Timer::after(Duration::from_millis(100)).await;
        assert!(!peer.is_finished());
        run.close_stdin().await.unwrap();
        session.flush().await.unwrap();
        let types = peer.await;
        assert_eq!(types.first(), Some(&b'c'));
        assert_eq!(types.last(), Some(&b'X'));
        assert!(types[1..types.len() - 1].iter().all(|t| *t == b'D'));
        assert_eq!(types.len(), 2 + STDIN.div_ceil(32758));
    }));
}

#[test]
fn client_detects_keepalive_expiry_with_a_real_timer() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let _peer = smol::spawn(silent_server(b, 1));
        let config = ClientConfig {
            keepalive: 1,
            limits: Limits {
                min_keepalive: Duration::from_millis(500),
                ..Limits::default()
            },
            ..ClientConfig::default()
        };
        let session = Session::new(a, config).await.unwrap();
        let connected = Instant::now();
        assert_eq!(session.info().unwrap().keepalive, 1);
        let run = session.run(Command::new("sleep")).await.unwrap();
        let outcome = run.wait().await;
        let elapsed = connected.elapsed();
        assert_eq!(
            outcome,
            Outcome::LinkLost(LinkError::KeepaliveExpired(Duration::from_secs(1)))
        );
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1800),
            "{elapsed:?}"
        );
        assert!(matches!(
            session.error(),
            Some(Error::Link(LinkError::KeepaliveExpired(_)))
        ));
    }));
}

#[test]
fn server_detects_a_silent_client_with_a_real_timer() {
    smol::block_on(guard(10, async {
        let (mut a, b) = Async::<UnixStream>::pair().unwrap();
        let config = ServerConfig {
            keepalive: 1,
            limits: Limits {
                min_keepalive: Duration::from_millis(500),
                ..Limits::default()
            },
            ..ServerConfig::default()
        };
        let start = Instant::now();
        let server = smol::spawn(tuppence_smol::serve(b, config, ToyAgent::new()));
        let mut hello = BytesMut::new();
        Packet::Hello(Hello {
            major: 4,
            minor: 0,
            keepalive: 1,
        })
        .encode(Dialect::V4, 0, 0, &mut hello)
        .unwrap();
        a.write_all(&hello).await.unwrap();
        let result = server.await;
        let elapsed = start.elapsed();
        assert!(
            matches!(result, Err(Error::Link(LinkError::KeepaliveExpired(_)))),
            "{result:?}"
        );
        assert!(elapsed < Duration::from_millis(1800), "{elapsed:?}");
    }));
}

#[test]
fn a_consumer_that_stops_reading_stops_the_transport() {
    smol::block_on(guard(30, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let agent = ToyAgent::new();
        let produced = agent.flood_sent.clone();
        // Few machine events, so the bound is the inbox (1 MiB) plus a few packets.
        let config = ClientConfig {
            limits: Limits {
                max_events: 32,
                ..Limits::default()
            },
            ..ClientConfig::default()
        };
        let (session, _server) = connect(a, b, agent, config).await;
        let mut run = session.run(Command::new("flood 64")).await.unwrap();
        Timer::after(Duration::from_millis(300)).await;
        let stalled_at = produced.load(Ordering::SeqCst);
        assert!(stalled_at > 0, "nothing flowed");
        assert!(
            stalled_at < 8 << 20,
            "the agent produced {stalled_at} bytes while nobody read"
        );
        Timer::after(Duration::from_millis(100)).await;
        assert!(produced.load(Ordering::SeqCst) - stalled_at < 128 << 10);
        let mut total = 0usize;
        let mut outcome = None;
        while let Some(ev) = run.next().await {
            match ev {
                RunEvent::Stdout(d) => total += d.len(),
                RunEvent::Finished(o) => outcome = Some(o),
                RunEvent::Stderr(_) => {}
            }
        }
        assert_eq!(outcome, Some(Outcome::Exited(0)));
        assert_eq!(total, 64 << 20);
    }));
}

#[test]
fn batched_output_keeps_order_and_event_boundaries() {
    smol::block_on(guard(30, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let (session, _server) = connect(a, b, ToyAgent::new(), ClientConfig::default()).await;
        // More events than a batch (half the inbox) holds.
        let mut run = session.run(Command::new("count 3000")).await.unwrap();
        let mut i = 0;
        while let Some(ev) = run.next().await {
            match ev {
                RunEvent::Stdout(d) => {
                    assert_eq!(d, format!("{i}\n").as_bytes());
                    i += 1;
                }
                RunEvent::Finished(o) => assert_eq!(o, Outcome::Exited(0)),
                RunEvent::Stderr(d) => panic!("unexpected stderr {d:?}"),
            }
        }
        assert_eq!(i, 3000);
    }));
}

#[test]
fn a_consumer_holding_a_batch_still_stops_the_transport() {
    smol::block_on(guard(30, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let agent = ToyAgent::new();
        let produced = agent.flood_sent.clone();
        let config = ClientConfig {
            limits: Limits {
                max_events: 32,
                ..Limits::default()
            },
            ..ClientConfig::default()
        };
        let (session, _server) = connect(a, b, agent, config).await;
        let mut run = session.run(Command::new("flood 64")).await.unwrap();
        // Let the inbox fill, then take a batch (up to half the inbox) and keep it
        // unread.
        Timer::after(Duration::from_millis(300)).await;
        let stalled_at = produced.load(Ordering::SeqCst);
        let Some(RunEvent::Stdout(first)) = run.next().await else {
            panic!("no output");
        };
        Timer::after(Duration::from_millis(300)).await;
        // The batch still counts against the inbox's bound: taking it made no room.
        let more = produced.load(Ordering::SeqCst) - stalled_at;
        assert!(
            more < 256 << 10,
            "{more} bytes produced while the batch sat unread"
        );
        let mut total = first.len();
        while let Some(ev) = run.next().await {
            if let RunEvent::Stdout(d) = ev {
                total += d.len();
            }
        }
        assert_eq!(total, 64 << 20);
    }));
}

#[test]
fn dropping_every_handle_closes_the_connection() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let server = smol::spawn(tuppence_smol::serve(
            b,
            ServerConfig::default(),
            ToyAgent::new(),
        ));
        let (session, driver) = Session::with_driver(a, ClientConfig::default());
        let driver = smol::spawn(driver);
        let out = session.output(Command::new("exit 0")).await.unwrap();
        assert_eq!(out.outcome, Outcome::Exited(0));
        // A stdin close queued just before the drop is still delivered.
        let run = session.run(Command::new("echo")).await.unwrap();
        let control = run.control();
        drop(run);
        control.close_stdin().await.unwrap();
        drop(control);
        drop(session);
        assert_eq!(driver.await.map_err(|e| e.to_string()), Ok(()));
        assert_eq!(server.await.map_err(|e| e.to_string()), Ok(()));
    }));
}

#[test]
fn a_dropped_driver_wakes_every_waiter() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let _server = smol::spawn(tuppence_smol::serve(
            b,
            ServerConfig::default(),
            ToyAgent::new(),
        ));
        let (session, driver) = Session::with_driver(a, ClientConfig::default());
        let driver = smol::spawn(driver);
        session.connected().await.unwrap();
        let mut run = session.run(Command::new("sleep")).await.unwrap();
        let waiter = future::poll_once(run.next()).await;
        assert!(waiter.is_none());
        assert!(driver.cancel().await.is_none());
        assert_eq!(
            run.next().await,
            Some(RunEvent::Finished(Outcome::LinkLost(LinkError::Closed)))
        );
        assert_eq!(run.next().await, None);
        let err = session.run(Command::new("echo")).await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{err:?}");
    }));
}

#[test]
fn connect_times_out_against_a_mute_peer() {
    smol::block_on(guard(10, async {
        let (a, _b) = Async::<UnixStream>::pair().unwrap();
        let err = Session::with_timeout(a, ClientConfig::default(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ConnectTimeout(_)), "{err:?}");
    }));
}

#[test]
fn legacy_dialect_is_spoken_when_the_client_asks_for_it() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let config = ClientConfig {
            dialect: Dialect::Legacy3,
            ..ClientConfig::default()
        };
        let (session, _server) = connect(a, b, ToyAgent::new(), config).await;
        assert_eq!(session.info().unwrap().server_version, (3, 0));
        let out = session.output(Command::new("exit 4")).await.unwrap();
        assert_eq!(out.outcome, Outcome::Exited(4));
        assert_eq!(out.stderr, b"bye\n");
        echo_round_trip(&session, pattern(100_000)).await;
        let err = session.monitor("lines").await.unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
    }));
}

#[test]
fn dropped_monitors_and_transfers_are_ended_on_the_agent() {
    smol::block_on(guard(10, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let agent = ToyAgent::new();
        let (ended, aborted) = (
            agent.monitors_ended.clone(),
            agent.transfers_aborted.clone(),
        );
        let (session, _server) = connect(a, b, agent, ClientConfig::default()).await;

        let monitor = session.monitor("lines").await.unwrap();
        monitor.settle(1).await.unwrap();
        drop(monitor);
        reaches(&ended, 1).await;

        // An inject whose source stalls, abandoned by its caller.
        let (mut feed, source) = Async::<UnixStream>::pair().unwrap();
        feed.write_all(&pattern(100_000)).await.unwrap();
        let inject = session.inject("root", "/tmp/never", 0o600, source, |_| {});
        let timed_out = future::or(async { Some(inject.await) }, async {
            Timer::after(Duration::from_millis(200)).await;
            None
        })
        .await;
        assert!(timed_out.is_none());
        reaches(&aborted, 1).await;

        // The session is still fine.
        let out = session.output(Command::new("exit 0")).await.unwrap();
        assert_eq!(out.outcome, Outcome::Exited(0));
        drop(feed);
    }));
}

/// An agent that refuses the connection with words (`M`, `m` on xid 0, then the close):
/// the session fails with the reason, not with "closed".
#[test]
fn a_refusal_reaches_the_session_as_its_reason() {
    use tuppence::link::Refusal;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let agent = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut theirs = theirs;
        let mut hello = [0u8; 12];
        theirs.read_exact(&mut hello).unwrap();
        let mut out = BytesMut::new();
        Packet::Major(87)
            .encode(Dialect::V4, 7, 0, &mut out)
            .unwrap();
        Packet::Minor(3)
            .encode(Dialect::V4, 7, 0, &mut out)
            .unwrap();
        theirs.write_all(&out).unwrap();
    });
    let result = future::block_on(async {
        Session::new(Async::new(ours).unwrap(), ClientConfig::default()).await
    });
    agent.join().unwrap();
    match result {
        Err(Error::Link(e)) => {
            assert_eq!(e, LinkError::Refused(Refusal::too_many_clients(3)));
        }
        other => panic!("expected the refusal, got {:?}", other.err()),
    }
}

/// An app whose every command floods stdout until the machine refuses (its session ended).
struct Flood;

impl tuppence_smol::App for Flood {
    async fn handle(
        &mut self,
        event: tuppence::link::ServerEvent,
        agent: &tuppence_smol::Responder,
    ) {
        if let tuppence::link::ServerEvent::RunCommand { xid, .. } = event {
            while agent.output(xid, 1, vec![b'o'; 65536]).await.is_ok() {}
        }
    }
}

/// `serve` on a device link (one byte pipe, successive clients): a new client's hello
/// ends the vanished client's session, and the output the pump had taken for it but not
/// written is dropped with the machine's own queue (`Server::poll_discard_unsent`), not
/// sent to the new client before its reply. (Only what the socket already holds comes
/// first.)
#[test]
fn a_new_hello_on_a_device_link_drops_the_old_sessions_unsent_output() {
    smol::block_on(guard(20, async {
        let (mut host, b) = Async::<UnixStream>::pair().unwrap();
        let config = ServerConfig {
            keepalive: 0,
            ..ServerConfig::default()
        }
        .for_device_link();
        let _server = smol::spawn(tuppence_smol::serve(b, config, Flood));
        let hello = Packet::Hello(Hello {
            major: 4,
            minor: 0,
            keepalive: 0,
        });
        let command = Packet::Command(tuppence::wire::CommandRequest {
            user: "root".into(),
            command: "flood".into(),
            timeout: 0,
            request_tty: 0,
            reserved: [0, 0],
            env: Vec::new(),
        });
        // Client A: hello, a command; reads a little of its output and vanishes.
        host.write_all(&hello.to_bytes(Dialect::V4, 0, 0).unwrap())
            .await
            .unwrap();
        host.write_all(&command.to_bytes(Dialect::V4, 1, 1).unwrap())
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < 100_000 {
            got += host.read(&mut buf).await.unwrap();
        }
        // The server fills the socket and its own queues; then client B says hello on
        // the same pipe, and reads nothing until the server has surely read it.
        Timer::after(Duration::from_millis(300)).await;
        host.write_all(&hello.to_bytes(Dialect::V4, 0, 0).unwrap())
            .await
            .unwrap();
        Timer::after(Duration::from_millis(300)).await;
        let reply = hello.to_bytes(Dialect::V4, 1, 0).unwrap();
        let mut seen = Vec::new();
        let before = loop {
            if let Some(at) = seen.windows(reply.len()).position(|w| w == &reply[..]) {
                break at;
            }
            let n = host.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the link");
            seen.extend_from_slice(&buf[..n]);
        };
        // What a unix socket holds in flight: the sender's buffer (the default size).
        let socket: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(212_992);
        println!("{before} bytes of the old session before the reply (socket buffer: {socket})");
        // Without the discard the pump's own backlog (up to the machine's 1 MiB transmit
        // limit) came first too.
        assert!(
            before <= 2 * socket + 128 * 1024,
            "{before} bytes of the old session came before the hello reply"
        );
    }));
}

/// A controller holding hundreds of idle sessions: the bulk receive buffer a transfer grew
/// is given back once the session is idle (no live transaction), and grown again for the
/// next one.
#[test]
fn receive_buffer_grows_for_bulk_data_and_shrinks_when_idle() {
    smol::block_on(guard(20, async {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        let _server = smol::spawn(tuppence_smol::serve(
            b,
            ServerConfig::default(),
            ToyAgent::new(),
        ));
        let (session, driver) = Session::with_driver(a, ClientConfig::default());
        let mut driver = Box::pin(driver);
        let small = driver.read_buffer_len();
        assert!(small <= 16 * 1024, "starts small: {small}");
        for round in 0..2 {
            // The driver is polled here, beside the consumer, so its buffer can be
            // watched while the consumer waits.
            let now_len = std::cell::Cell::new(0);
            let watch = async {
                loop {
                    let end = future::or(async { Some(driver.as_mut().await) }, async {
                        future::yield_now().await;
                        None
                    })
                    .await;
                    if let Some(end) = end {
                        panic!("the driver ended: {end:?}");
                    }
                    now_len.set(driver.read_buffer_len());
                }
            };
            let consumer = async {
                let data = pattern(4 << 20);
                let mut run = session.run(Command::new("echo")).await.unwrap();
                let control = run.control();
                let writer = smol::spawn({
                    let data = data.clone();
                    async move {
                        control.write_stdin(data).await.unwrap();
                        control.close_stdin().await.unwrap();
                    }
                });
                let mut back = 0;
                let mut outcome = None;
                while let Some(ev) = run.next().await {
                    if back == 0 {
                        // The consumer pauses: the driver reads until the inbox is full.
                        Timer::after(Duration::from_millis(200)).await;
                        assert!(now_len.get() > small, "round {round}: bulk data grew it");
                    }
                    match ev {
                        RunEvent::Stdout(d) => back += d.len(),
                        RunEvent::Stderr(d) => panic!("unexpected stderr {d:?}"),
                        RunEvent::Finished(o) => outcome = Some(o),
                    }
                }
                writer.await;
                assert_eq!(outcome, Some(Outcome::Exited(0)));
                assert_eq!(back, data.len());
            };
            future::or(consumer, watch).await;
            assert_eq!(driver.read_buffer_len(), small, "round {round}: idle again");
        }
    }));
}
