//! The event loop's seams: it drives any `tuppence::Machine` (here the sniff protocol's
//! `Agent`, with the state the application keeps per connection), an ended connection
//! still writes what its machine queued (the linger), and one peer that never stops
//! sending cannot keep the loop from its other connections.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tuppence::Machine;
use tuppence::link::{Server, ServerConfig};
use tuppence::sniff::{Agent, AgentConfig, Event, Requester, RequesterConfig, TaskResult};
use tuppence::wire::{Dialect, Packet};
use tuppence_mio::{EventLoop, LinkIo, LinkIoError};

/// Sends NOP requests from a requester over `stream` and returns the bytes to write.
fn nops(requester: &mut Requester, n: usize) -> BytesMut {
    for _ in 0..n {
        requester.nop().unwrap();
    }
    let mut out = BytesMut::new();
    requester.poll_transmit(Instant::now(), &mut out);
    out
}

/// Reads answers until `n` events came (or the peer closed), with a deadline.
fn events(stream: &mut UnixStream, requester: &mut Requester, n: usize) -> Vec<Event> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < n {
        let k = stream.read(&mut buf).expect("answers within 20 s");
        if k == 0 {
            break;
        }
        let mut rest = &buf[..k];
        while !rest.is_empty() {
            let used = requester.handle_bytes(Instant::now(), rest).unwrap();
            rest = &rest[used..];
            while let Some(ev) = requester.poll_event() {
                got.push(ev);
            }
        }
    }
    got
}

#[test]
fn the_loop_drives_a_sniff_agent_with_its_per_connection_state() {
    let (mut host, agent_end) = UnixStream::pair().unwrap();
    agent_end.set_nonblocking(true).unwrap();
    let mut lp: EventLoop<UnixStream, Agent, &'static str> = EventLoop::new().unwrap();
    let id = lp
        .add(
            LinkIo::new(agent_end, Agent::new(AgentConfig::default())),
            "the requester",
        )
        .unwrap();
    let mut requester = Requester::new(RequesterConfig::default());
    host.write_all(&nops(&mut requester, 3)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lp.get(id).unwrap().link.machine().stats().answers < 3 {
        assert!(Instant::now() < deadline, "the agent never answered");
        lp.wait(Some(Instant::now() + Duration::from_millis(100)))
            .unwrap();
        let conn = lp.get_mut(id).unwrap();
        assert_eq!(conn.state, "the requester");
        // NOPs start nothing.
        assert!(conn.link.machine_mut().poll_action().is_none());
        lp.flush();
    }
    let got = events(&mut host, &mut requester, 3);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|e| matches!(
        e,
        Event::Finished {
            result: TaskResult::Nop,
            ..
        }
    )));
}

/// Both ends of the sniff protocol are `Machine`s, so the same generic loop drives the
/// requester as it drives the agent: no adapter declares either surface again.
#[test]
fn the_same_loop_drives_the_requester_side() {
    let (req_end, agent_end) = UnixStream::pair().unwrap();
    req_end.set_nonblocking(true).unwrap();
    agent_end.set_nonblocking(true).unwrap();
    let mut agents: EventLoop<UnixStream, Agent> = EventLoop::new().unwrap();
    let mut requesters: EventLoop<UnixStream, Requester> = EventLoop::new().unwrap();
    agents
        .add(
            LinkIo::new(agent_end, Agent::new(AgentConfig::default())),
            (),
        )
        .unwrap();
    let rid = requesters
        .add(
            LinkIo::new(req_end, Requester::new(RequesterConfig::default())),
            (),
        )
        .unwrap();
    let mut asked = Vec::new();
    {
        let r = requesters.get_mut(rid).unwrap().link.machine_mut();
        for _ in 0..5 {
            asked.push(r.nop().unwrap());
        }
        // An unknown task type is answered `U`, not dropped.
        asked.push(r.request(0xee, bytes::Bytes::new()).unwrap());
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < asked.len() {
        assert!(Instant::now() < deadline, "answers within 20 s: {got:?}");
        let tick = Some(Instant::now() + Duration::from_millis(20));
        requesters.flush();
        agents.wait(tick).unwrap();
        agents.flush();
        requesters.wait(tick).unwrap();
        let r = requesters.get_mut(rid).unwrap().link.machine_mut();
        while let Some(ev) = r.poll_event() {
            got.push(ev);
        }
    }
    for (ev, id) in got.iter().zip(&asked).take(5) {
        assert!(
            matches!(ev, Event::Finished { id: i, result: TaskResult::Nop } if i == id),
            "{ev:?}"
        );
    }
    assert!(matches!(
        got[5],
        Event::Finished {
            result: TaskResult::Unknown,
            ..
        }
    ));
    assert_eq!(requesters.get(rid).unwrap().link.machine().in_flight(), 0);
}

#[test]
fn an_ended_connection_still_writes_what_its_machine_queued() {
    let (mut host, agent_end) = UnixStream::pair().unwrap();
    agent_end.set_nonblocking(true).unwrap();
    let mut lp: EventLoop<UnixStream, Agent> = EventLoop::new().unwrap();
    lp.set_linger(Duration::from_secs(20));
    let id = lp
        .add(
            LinkIo::new(agent_end, Agent::new(AgentConfig::default())),
            (),
        )
        .unwrap();
    let mut requester = Requester::new(RequesterConfig {
        max_in_flight: 100_000,
        max_events: 100_000,
        ..RequesterConfig::default()
    });
    // Enough answers that they do not fit the socket buffer at once: the connection has
    // ended (the requester closed its side) long before they are all written.
    const N: usize = 20_000;
    let mut wire = nops(&mut requester, N);
    let writer = {
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || {
            host.write_all(&wire.split()).unwrap();
            host.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        events(&mut host, &mut requester, N)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        assert!(Instant::now() < deadline, "the connection never ended");
        lp.wait(Some(Instant::now() + Duration::from_millis(100)))
            .unwrap();
        lp.flush();
        if let Some(e) = lp.take_ended().pop() {
            break e;
        }
    };
    writer.join().unwrap();
    assert_eq!(ended.id, id);
    assert!(
        matches!(ended.error, LinkIoError::Closed),
        "{}",
        ended.error
    );
    assert_eq!(ended.conn.link.unwritten(), 0);
    drop(ended);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), N, "every answer reached the requester");
}

/// A transport that always has more to read (a peer that never stops sending): keepalives,
/// which the server machine drops without an event. Its readiness comes from a real
/// socket; it gives up (`WouldBlock`) after `limit` reads so that a loop without a read
/// budget fails the test instead of hanging it.
struct Endless {
    fd: UnixStream,
    keepalive: Vec<u8>,
    reads: usize,
    limit: usize,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads == self.limit {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.reads += 1;
        let mut n = 0;
        while n + self.keepalive.len() <= buf.len().min(4096) {
            buf[n..n + self.keepalive.len()].copy_from_slice(&self.keepalive);
            n += self.keepalive.len();
        }
        Ok(n)
    }
}

impl Write for Endless {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Endless {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[test]
fn a_peer_that_never_stops_sending_gets_a_bounded_share_of_each_turn() {
    let (fd, _other) = UnixStream::pair().unwrap();
    let keepalive = Packet::Keepalive
        .to_bytes(Dialect::V4, 1, 0)
        .unwrap()
        .to_vec();
    let server = Server::new(
        ServerConfig {
            cid: 1,
            dialect: Some(Dialect::V4),
            ..ServerConfig::default()
        },
        Instant::now(),
    );
    let mut link = LinkIo::new(
        Endless {
            fd,
            keepalive,
            reads: 0,
            limit: 1000,
        },
        server,
    );
    link.pump_read(Instant::now()).unwrap();
    let reads = link.io().reads;
    assert!(
        reads <= 16,
        "one pump read {reads} times from a peer that never stops"
    );
    // The loop comes back to it at once, without waiting for a readiness event.
    assert!(link.can_read_more());
    link.pump_read(Instant::now()).unwrap();
    assert!(link.io().reads > reads);
}
