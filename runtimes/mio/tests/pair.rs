//! tuppence-mio over real unix sockets: a client driven by `run_client` against a server
//! machine driven by an `EventLoop` in another thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, Limits, LinkError, Outcome, Server, ServerConfig,
    ServerEvent,
};
use tuppence::wire::{Dialect, Hello, Packet};
use tuppence_mio::{EventLoop, Flow, LinkIo, LinkIoError, RunClientError, run_client};

/// A toy agent: echoes stdin to stdout; a command `exit N` exits with N once stdin ends.
fn serve(stream: UnixStream) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        stream.set_nonblocking(true).unwrap();
        let server = Server::new(ServerConfig::default(), Instant::now());
        let mut driver: EventLoop<UnixStream, Server> = EventLoop::new().unwrap();
        let id = driver.add(LinkIo::new(stream, server), ()).unwrap();
        let mut codes = std::collections::HashMap::new();
        loop {
            driver.wait(None).unwrap();
            let Some(conn) = driver.get_mut(id) else {
                return;
            };
            let m = conn.link.machine_mut();
            while let Some(ev) = m.poll_event() {
                match ev {
                    ServerEvent::RunCommand { xid, command, .. } => {
                        let code: u32 = std::str::from_utf8(&command)
                            .unwrap()
                            .trim_start_matches("exit ")
                            .parse()
                            .unwrap_or(0);
                        codes.insert(xid, code);
                        m.output(xid, 2, Bytes::from_static(b"started\n")).unwrap();
                    }
                    ServerEvent::Stdin { xid, data } => m.output(xid, 1, data).unwrap(),
                    ServerEvent::StdinEnd { xid } => m.command_exited(xid, codes[&xid]).unwrap(),
                    _ => {}
                }
            }
            driver.flush();
            if !driver.take_ended().is_empty() {
                return;
            }
        }
    })
}

#[test]
fn command_output_and_exit_code() {
    let (a, b) = UnixStream::pair().unwrap();
    let agent = serve(b);
    a.set_nonblocking(true).unwrap();
    let mut client = Client::new(ClientConfig::default(), Instant::now());
    let xid = client.run(Command::new("exit 3")).unwrap();
    client
        .send_stdin(xid, Bytes::from_static(b"hello"))
        .unwrap();
    client.close_stdin(xid).unwrap();
    let (mut out, mut err, mut outcome) = (Vec::new(), Vec::new(), None);
    run_client(a, client, |_, ev| {
        match ev {
            ClientEvent::Output {
                channel: 1, data, ..
            } => out.extend_from_slice(&data),
            ClientEvent::Output {
                channel: 2, data, ..
            } => err.extend_from_slice(&data),
            ClientEvent::Finished { outcome: o, .. } => {
                outcome = Some(o);
                return Flow::Stop;
            }
            _ => {}
        }
        Flow::Continue
    })
    .unwrap();
    assert_eq!(out, b"hello");
    assert_eq!(err, b"started\n");
    assert_eq!(outcome, Some(Outcome::Exited(3)));
    drop(agent);
}

#[test]
fn one_mebibyte_round_trip_with_backpressure() {
    let (a, b) = UnixStream::pair().unwrap();
    let _agent = serve(b);
    a.set_nonblocking(true).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut client = Client::new(ClientConfig::default(), Instant::now());
    let xid = client.run(Command::new("exit 0")).unwrap();
    let mut offset = 0;
    let mut echoed = Vec::new();
    let mut finished = None;
    // Feed stdin as the transmit queue allows; that exercises QueueFull and resumption.
    let feed = |c: &mut Client, offset: &mut usize| {
        while *offset < data.len() && c.can_send() {
            let end = (*offset + 100_000).min(data.len());
            c.send_stdin(xid, Bytes::copy_from_slice(&data[*offset..end]))
                .unwrap();
            *offset = end;
        }
        if *offset == data.len() && c.is_live(xid) {
            let _ = c.close_stdin(xid);
        }
    };
    feed(&mut client, &mut offset);
    run_client(a, client, |c, ev| {
        match ev {
            ClientEvent::Output {
                channel: 1, data, ..
            } => echoed.extend_from_slice(&data),
            ClientEvent::Finished { outcome, .. } => {
                finished = Some(outcome);
                return Flow::Stop;
            }
            _ => {}
        }
        feed(c, &mut offset);
        Flow::Continue
    })
    .unwrap();
    assert_eq!(finished, Some(Outcome::Exited(0)));
    assert!(
        echoed == data,
        "echoed {} bytes, sent {}",
        echoed.len(),
        data.len()
    );
}

#[test]
fn keepalive_expiry_is_detected_by_a_real_timer() {
    let (a, mut b) = UnixStream::pair().unwrap();
    // A peer that answers the hello (keepalive 1 s) and then goes silent.
    let peer = thread::spawn(move || {
        let mut buf = [0u8; 12];
        b.read_exact(&mut buf).unwrap();
        let reply = Packet::Hello(Hello {
            major: 4,
            minor: 0,
            keepalive: 1,
        });
        b.write_all(&reply.to_bytes(Dialect::V4, 5, 0).unwrap())
            .unwrap();
        let mut sink = [0u8; 64];
        while let Ok(n) = b.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    });
    a.set_nonblocking(true).unwrap();
    let config = ClientConfig {
        keepalive: 1,
        limits: Limits {
            min_keepalive: Duration::from_millis(500),
            ..Limits::default()
        },
        ..ClientConfig::default()
    };
    let start = Instant::now();
    let mut saw_dead = false;
    let r = run_client(a, Client::new(config, start), |_, ev| {
        saw_dead |= ev == ClientEvent::LinkDead;
        Flow::Continue
    });
    let elapsed = start.elapsed();
    assert!(saw_dead);
    assert!(
        matches!(
            r,
            Err(RunClientError::Link(LinkIoError::Link(
                LinkError::KeepaliveExpired(_)
            )))
        ),
        "{r:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    peer.join().unwrap();
}

#[test]
fn disconnect_mid_command_fails_the_transaction_not_hangs() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let peer = thread::spawn(move || {
        let mut buf = [0u8; 12];
        b.read_exact(&mut buf).unwrap();
        let reply = Packet::Hello(Hello {
            major: 4,
            minor: 0,
            keepalive: 0,
        });
        b.write_all(&reply.to_bytes(Dialect::V4, 5, 0).unwrap())
            .unwrap();
        let data = Packet::Data {
            channel: 1,
            data: Bytes::from_static(b"partial"),
        };
        b.write_all(&data.to_bytes(Dialect::V4, 5, 1).unwrap())
            .unwrap();
        // Wait for the command packet, then hang up.
        let mut cmd = [0u8; 8];
        b.read_exact(&mut cmd).unwrap();
    });
    a.set_nonblocking(true).unwrap();
    let mut client = Client::new(ClientConfig::default(), Instant::now());
    let xid = client.run(Command::new("sleep 100")).unwrap();
    let mut outcome = None;
    let r = run_client(a, client, |_, ev| {
        if let ClientEvent::Finished { xid: x, outcome: o } = ev {
            assert_eq!(x, xid);
            outcome = Some(o);
        }
        Flow::Continue
    });
    assert_eq!(outcome, Some(Outcome::LinkLost(LinkError::Closed)));
    assert!(
        matches!(
            r,
            Err(RunClientError::Link(LinkIoError::Link(LinkError::Closed)))
        ),
        "{r:?}"
    );
    peer.join().unwrap();
}

#[test]
fn a_peer_that_does_not_read_pushes_back_into_the_machine() {
    use std::os::fd::AsRawFd;
    let (a, _b) = UnixStream::pair().unwrap();
    // Small socket buffers so the stall shows quickly.
    let size: libc::c_int = 64 * 1024;
    // SAFETY: valid fd and option value for the duration of the call.
    unsafe {
        libc::setsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    a.set_nonblocking(true).unwrap();
    let mut server = Server::new(
        ServerConfig {
            dialect: Some(Dialect::V4),
            ..ServerConfig::default()
        },
        Instant::now(),
    );
    let cmd = Packet::Command(tuppence::wire::CommandRequest {
        user: "root".into(),
        command: "yes".into(),
        timeout: 0,
        request_tty: 0,
        reserved: [0, 0],
        env: vec![],
    });
    let bytes = cmd.to_bytes(Dialect::V4, 1, 1).unwrap();
    server.handle_bytes(Instant::now(), &bytes).unwrap();
    while server.poll_event().is_some() {}
    let mut link = LinkIo::new(a, server);
    // Produce output as long as the machine says it can take more, like the agent does.
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let mut produced = 0usize;
    for _ in 0..1000 {
        if !link.machine().can_send() {
            break;
        }
        link.machine_mut().output(1, 1, chunk.clone()).unwrap();
        produced += chunk.len();
        link.pump_write(Instant::now()).unwrap();
    }
    assert!(!link.machine().can_send(), "the machine never pushed back");
    // Memory stays bounded: the machine's limit, one chunk over it, and the high-water mark.
    assert!(
        produced < 4 << 20,
        "produced {produced} bytes for a peer that reads nothing"
    );
    assert!(link.unwritten() <= 512 * 1024, "{}", link.unwritten());
}

/// A device port's next session starts with what the previous one handed over at its
/// hang-up (`Server::carryover`): preloaded bytes are read before the transport, as if
/// just received, and answered over it.
#[test]
fn preloaded_bytes_are_read_before_the_transport() {
    let (mut host, agent_end) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    agent_end.set_nonblocking(true).unwrap();
    let now = Instant::now();
    let server = Server::new(ServerConfig::default().for_device_link(), now);
    let mut link = LinkIo::new(agent_end, server);
    let hello = Packet::Hello(Hello {
        major: 4,
        minor: 0,
        keepalive: 0,
    })
    .to_bytes(Dialect::V4, 0, 0)
    .unwrap();
    assert_eq!(link.preload(&hello), hello.len());
    // Nothing on the socket yet: the hello comes from the preload.
    assert!(link.can_read_more());
    assert!(link.pump_read(now).unwrap());
    assert!(matches!(
        link.machine_mut().poll_event(),
        Some(ServerEvent::Hello { .. })
    ));
    link.pump_write(now).unwrap();
    let mut reply = [0u8; 12];
    host.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], b'h');
    // A preload never takes more than the receive buffer holds.
    let huge = vec![0u8; 1 << 20];
    assert!(link.preload(&huge) < huge.len());
}

/// A controller holding hundreds of idle sessions: the bulk receive buffer a transfer grew
/// is given back once the client is idle (no live transaction), and grown again for the
/// next transfer.
#[test]
fn receive_buffer_grows_for_bulk_data_and_shrinks_when_idle() {
    let (a, b) = UnixStream::pair().unwrap();
    let _agent = serve(b);
    a.set_nonblocking(true).unwrap();
    let mut driver: EventLoop<UnixStream, Client> = EventLoop::new().unwrap();
    let client = Client::new(ClientConfig::default(), Instant::now());
    let id = driver.add(LinkIo::new(a, client), ()).unwrap();
    let small = driver.get(id).unwrap().link.read_buffer_len();
    assert!(small <= 16 * 1024, "starts small: {small}");
    for round in 0..2 {
        let data = Bytes::from(vec![b'x'; 1 << 20]);
        let link = &mut driver.get_mut(id).unwrap().link;
        let xid = link.machine_mut().run(Command::new("exit 0")).unwrap();
        let (mut sent, mut echoed, mut finished, mut largest) = (0, 0, false, 0);
        let mut closed = false;
        while !finished {
            driver.flush();
            let conn = driver.get_mut(id).unwrap();
            let c = conn.link.machine_mut();
            // A window, so the toy agent's echo never finds its queue full.
            while sent < data.len() && sent - echoed < 256 * 1024 && c.can_send() {
                let end = (sent + 64 * 1024).min(data.len());
                c.send_stdin(xid, data.slice(sent..end)).unwrap();
                sent = end;
            }
            if sent == data.len() && !closed {
                closed = c.close_stdin(xid).is_ok();
            }
            driver.flush();
            driver
                .wait(Some(Instant::now() + Duration::from_secs(5)))
                .unwrap();
            let conn = driver.get_mut(id).unwrap();
            largest = largest.max(conn.link.read_buffer_len());
            while let Some(ev) = conn.link.machine_mut().poll_event() {
                match ev {
                    ClientEvent::Output {
                        channel: 1, data, ..
                    } => echoed += data.len(),
                    ClientEvent::Finished { outcome, .. } => {
                        assert_eq!(outcome, Outcome::Exited(0));
                        finished = true;
                    }
                    _ => {}
                }
            }
            assert!(driver.take_ended().is_empty(), "round {round}: link ended");
        }
        assert_eq!(echoed, data.len());
        assert!(largest > small, "round {round}: bulk data grew the buffer");
        let link = &driver.get(id).unwrap().link;
        assert!(link.machine().is_idle());
        assert_eq!(link.read_buffer_len(), small, "round {round}: idle again");
    }
}

/// The agent's side: a connection whose command took 1 MiB of stdin gives its bulk
/// receive regions back when the command's exit status leaves, with no read after it (an
/// agent holds many connections that moved data once and then wait).
#[test]
fn server_gives_back_its_receive_buffer_when_the_last_answer_leaves() {
    let (a, b) = UnixStream::pair().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let agent = thread::spawn(move || {
        b.set_nonblocking(true).unwrap();
        let server = Server::new(ServerConfig::default(), Instant::now());
        let mut driver: EventLoop<UnixStream, Server> = EventLoop::new().unwrap();
        let id = driver.add(LinkIo::new(b, server), ()).unwrap();
        let mut largest = 0;
        loop {
            driver.wait(None).unwrap();
            let Some(conn) = driver.get_mut(id) else {
                return;
            };
            largest = largest.max(conn.link.read_buffer_len());
            let m = conn.link.machine_mut();
            let mut exited = false;
            while let Some(ev) = m.poll_event() {
                match ev {
                    ServerEvent::RunCommand { .. } | ServerEvent::Stdin { .. } => {}
                    ServerEvent::StdinEnd { xid } => {
                        m.command_exited(xid, 0).unwrap();
                        exited = true;
                    }
                    _ => {}
                }
            }
            driver.flush();
            if exited {
                let link = &driver.get(id).unwrap().link;
                tx.send((largest, link.read_buffer_len(), link.machine().is_idle()))
                    .unwrap();
            }
            if !driver.take_ended().is_empty() {
                return;
            }
        }
    });
    a.set_nonblocking(true).unwrap();
    let mut driver: EventLoop<UnixStream, Client> = EventLoop::new().unwrap();
    let client = Client::new(ClientConfig::default(), Instant::now());
    let id = driver.add(LinkIo::new(a, client), ()).unwrap();
    let data = Bytes::from(vec![b'x'; 1 << 20]);
    let xid = driver
        .get_mut(id)
        .unwrap()
        .link
        .machine_mut()
        .run(Command::new("cat"))
        .unwrap();
    let (mut sent, mut closed, mut finished) = (0, false, false);
    while !finished {
        let c = driver.get_mut(id).unwrap().link.machine_mut();
        while sent < data.len() && c.can_send() {
            let end = (sent + 64 * 1024).min(data.len());
            c.send_stdin(xid, data.slice(sent..end)).unwrap();
            sent = end;
        }
        if sent == data.len() && !closed {
            closed = c.close_stdin(xid).is_ok();
        }
        driver.flush();
        driver
            .wait(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        let conn = driver.get_mut(id).unwrap();
        while let Some(ev) = conn.link.machine_mut().poll_event() {
            if let ClientEvent::Finished { outcome, .. } = ev {
                assert_eq!(outcome, Outcome::Exited(0));
                finished = true;
            }
        }
        assert!(driver.take_ended().is_empty(), "link ended");
    }
    let (largest, after, idle) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        largest > 16 * 1024,
        "1 MiB of stdin did not grow the buffer: {largest}"
    );
    assert!(idle, "the server is not idle after the exit status");
    assert_eq!(after, 0, "regions kept after the last answer left");
    drop(driver);
    agent.join().unwrap();
}
