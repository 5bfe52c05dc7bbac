//! Connections coming and going: malformed input, disconnects, the client limit, quit and
//! stop.

mod agent_harness;

use std::net::Shutdown;
use std::time::Duration;

use agent_harness::{
    PATIENCE, Raw, TestAgent, dead, eventually, first_line_pid, gone, header, proc_state,
    quiet_config, raw_packet,
};
use bytes::Bytes;
use tuppence::link::{ClientConfig, Command, LinkError, Outcome, Refusal};
use tuppence::wire::{CommandRequest, Packet};
use tuppence_agent::serve::{LinkDaemonConfig, RunEnd};
use tuppence_blocking::{Error, Run, RunEvent, Session};

/// Reads a command's first line: the pid it printed.
fn printed_pid(run: &mut Run<'_>) -> u32 {
    let mut seen = Vec::new();
    while !seen.contains(&b'\n') {
        match run.next_timeout(Some(PATIENCE)).unwrap() {
            Some(RunEvent::Stdout(d)) => seen.extend_from_slice(&d),
            other => panic!("waiting for a pid: {other:?}"),
        }
    }
    first_line_pid(&seen)
}

fn command(cmd: &'static str) -> Packet {
    Packet::Command(CommandRequest {
        user: Bytes::from_static(b"root"),
        command: Bytes::from_static(cmd.as_bytes()),
        timeout: 0,
        request_tty: 0,
        reserved: [0, 0],
        env: Vec::new(),
    })
}

/// Runs `echo hi` on a raw connection and checks the full 4.0 answer.
fn raw_echo(raw: &mut Raw, xid: u16) {
    raw.send_packet(xid, &command("echo hi"));
    raw.send_packet(xid, &Packet::Eof { channel: 0 });
    let mut got = raw.frames_until(xid, |p| matches!(p, Packet::Minor(_)));
    // The two EOFs come in the order the pipes reported them.
    got[1..3].sort_by_key(|p| match p {
        Packet::Eof { channel } => *channel,
        _ => 0,
    });
    assert_eq!(
        got,
        vec![
            Packet::Data {
                channel: 1,
                data: Bytes::from_static(b"hi\n")
            },
            Packet::Eof { channel: 1 },
            Packet::Eof { channel: 2 },
            Packet::Major(0),
            Packet::Minor(0),
        ]
    );
}

#[test]
fn malformed_packets_hurt_only_their_own_connection() {
    let agent = TestAgent::start();
    // A client in the middle of a command while the others misbehave.
    let bystander = agent.session();
    let waiting = bystander
        .run(Command::new("read line; echo \"got $line\""))
        .unwrap();

    // Garbage from the first byte.
    for seed in 1..=8u32 {
        let mut raw = Raw::connect(&agent.sock);
        let mut x = seed.wrapping_mul(0x9e37_79b9);
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        raw.send(&junk);
    }

    // A length below the header size cannot be resynchronised: that connection is closed.
    let mut short = Raw::connect(&agent.sock);
    let cid = short.hello();
    short.send(&header(b'c', 4, cid, 1));
    assert!(
        short.closed_by_agent(PATIENCE),
        "len < 8 must close the connection"
    );

    // Bad packets with intact framing are answered with 71 and the connection goes on.
    let mut raw = Raw::connect(&agent.sock);
    let cid = raw.hello();
    raw.send(&raw_packet(b'Z', cid, 5, b"what is this"));
    assert_eq!(
        raw.frames_until(5, |_| true),
        vec![Packet::Major(71)],
        "unknown type"
    );
    raw.send(&raw_packet(b'c', cid, 6, b"rootecho no terminators"));
    assert_eq!(
        raw.frames_until(6, |_| true),
        vec![Packet::Major(71)],
        "command without NULs"
    );
    raw.send(&raw_packet(b'i', cid, 7, b"root\0/tmp/x\0\0"));
    assert_eq!(
        raw.frames_until(7, |_| true),
        vec![Packet::Major(71)],
        "inject with a short mode"
    );
    // Packets for other cids and stray data for unknown xids are dropped silently.
    raw.send(&raw_packet(
        b'c',
        cid.wrapping_add(100),
        8,
        b"root\0echo x\0",
    ));
    raw.send(&raw_packet(b'D', cid, 9, b"\0\0stray stdin"));
    raw.send(&raw_packet(b'I', cid, 10, b"KILL\0"));
    raw_echo(&mut raw, 11);

    // A packet cut short by a disconnect.
    let mut cut = Raw::connect(&agent.sock);
    let cid = cut.hello();
    let mut partial = header(b'c', 200, cid, 1);
    partial.extend_from_slice(b"root\0ec");
    cut.send(&partial);
    drop(cut);

    // A fresh connection works…
    let fresh = agent.session();
    let out = fresh.output(Command::new("echo fresh")).unwrap();
    assert_eq!(out.stdout, b"fresh\n");
    // …and so does the one that was there all along.
    waiting.write_stdin(b"still here\n").unwrap();
    let mut text = Vec::new();
    loop {
        match waiting.next_timeout(Some(PATIENCE)).unwrap() {
            Some(RunEvent::Stdout(d)) => text.extend_from_slice(&d),
            Some(RunEvent::Finished(o)) => {
                assert_eq!(o, Outcome::Exited(0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(text, b"got still here\n");
}

#[test]
fn disconnect_kills_and_reaps_what_the_connection_started() {
    let agent = TestAgent::start();
    let (s, handle) = agent.session_with_handle();
    let mut direct = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let pid = printed_pid(&mut direct);
    let mut background = s.run(Command::new("sleep 100 & echo $!; wait")).unwrap();
    let grandchild = printed_pid(&mut background);
    assert!(!dead(pid) && !dead(grandchild));
    handle.shutdown(Shutdown::Both).unwrap();
    // The agent's own child is killed and reaped (no zombie left); the grandchild is
    // killed (its parent is init now, which reaps it in its own time).
    assert!(
        eventually(Duration::from_secs(1), || gone(pid)),
        "the command is still there after the disconnect: {:?}",
        proc_state(pid)
    );
    assert!(
        eventually(Duration::from_secs(1), || dead(grandchild)),
        "its background job is still running: {:?}",
        proc_state(grandchild)
    );
    // The agent goes on.
    let out = agent.session().output(Command::new("echo on")).unwrap();
    assert_eq!(out.stdout, b"on\n");
}

#[test]
fn max_clients_limit() {
    let agent = TestAgent::with_config(LinkDaemonConfig {
        max_clients: 2,
        ..quiet_config()
    });
    let (first, first_handle) = agent.session_with_handle();
    let second = agent.session();
    // The third is refused with words, at once: the client learns why.
    let third = Session::new(
        agent.stream(),
        ClientConfig::default(),
        Duration::from_secs(10),
    );
    let refused = LinkError::Refused(Refusal::too_many_clients(2));
    match third {
        Err(Error::Link(e)) => {
            assert_eq!(e, refused);
            assert_eq!(
                e.to_string(),
                "agent refused the connection: too many clients (max 2)"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    // A C executor client (3.0) is answered in its dialect: status packets where it
    // expects the hello reply, then the close.
    let mut legacy = Raw::connect_as(&agent.sock, tuppence::wire::Dialect::Legacy3);
    legacy.send_packet(
        0,
        &Packet::Hello(tuppence::wire::Hello {
            major: 3,
            minor: 0,
            keepalive: 0,
        }),
    );
    let answer: Vec<(u16, Packet)> = std::iter::from_fn(|| legacy.next_frame(PATIENCE))
        .map(|f| (f.xid, f.packet))
        .collect();
    assert_eq!(
        answer,
        vec![(0, Packet::Major(87)), (0, Packet::Minor(2))],
        "then the close"
    );
    for s in [&first, &second] {
        assert_eq!(s.output(Command::new("echo ok")).unwrap().stdout, b"ok\n");
    }
    // A place frees up when a client leaves.
    first_handle.shutdown(Shutdown::Both).unwrap();
    let again = agent.session();
    assert_eq!(
        again.output(Command::new("echo in")).unwrap().stdout,
        b"in\n"
    );
    drop(first);
}

#[test]
fn quit_returns_quit_and_kills_children() {
    let agent = TestAgent::start();
    let s = agent.session();
    let mut run = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let pid = printed_pid(&mut run);
    let other = agent.session();
    other.quit().unwrap();
    assert_eq!(agent.join(), RunEnd::Quit);
    assert!(
        eventually(Duration::from_secs(1), || gone(pid)),
        "left behind by quit: {:?}",
        proc_state(pid)
    );
    assert!(matches!(
        run.next_timeout(Some(PATIENCE)).unwrap(),
        Some(RunEvent::Finished(Outcome::LinkLost(_)))
    ));
}

#[test]
fn quit_can_be_refused() {
    let agent = TestAgent::with_config(LinkDaemonConfig {
        allow_quit: false,
        ..quiet_config()
    });
    agent.session().quit().unwrap();
    // Still serving, on a new connection too.
    let s = agent.session();
    assert_eq!(
        s.output(Command::new("echo here")).unwrap().stdout,
        b"here\n"
    );
    assert_eq!(agent.stop(), RunEnd::Stopped);
}

#[test]
fn stop_handle_stops_and_kills_children() {
    let agent = TestAgent::start();
    let s = agent.session();
    let mut direct = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let pid = printed_pid(&mut direct);
    let mut tty = s
        .run(Command::new("echo $$; exec sleep 100").tty(true))
        .unwrap();
    let tty_pid = printed_pid(&mut tty);
    let mut background = s.run(Command::new("sleep 100 & echo $!; wait")).unwrap();
    let grandchild = printed_pid(&mut background);
    let stop = agent.stop_handle();
    // From another thread, as a signal-handling thread would.
    std::thread::spawn(move || stop.stop()).join().unwrap();
    assert_eq!(agent.join(), RunEnd::Stopped);
    for p in [pid, tty_pid] {
        assert!(
            eventually(Duration::from_secs(1), || gone(p)),
            "pid {p} left behind by stop: {:?}",
            proc_state(p)
        );
    }
    assert!(eventually(Duration::from_secs(1), || dead(grandchild)));
}

#[test]
fn a_burst_of_many_small_packets_is_served_without_waiting_for_more_input() {
    // More packets in one write than the machine queues events for at once: the rest must
    // be decoded in the next turns, not when the client happens to send something again
    // (this client sends nothing more and has keepalives off).
    let agent = TestAgent::start();
    let mut raw = Raw::connect(&agent.sock);
    let cid = raw.hello();
    raw.send_packet(1, &command("cat"));
    const N: usize = 3000;
    let mut burst = Vec::new();
    for i in 0..N {
        burst.extend_from_slice(&raw_packet(b'D', cid, 1, &[0, 0, b'a' + (i % 26) as u8]));
    }
    burst.extend_from_slice(&raw_packet(b'X', cid, 1, &[0, 0]));
    raw.send(&burst);
    let mut echoed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let frame = raw
            .next_frame(left)
            .unwrap_or_else(|| panic!("stalled after {} of {N} bytes", echoed.len()));
        match frame.packet {
            Packet::Data { channel: 1, data } => echoed.extend_from_slice(&data),
            Packet::Minor(code) => {
                assert_eq!(code, 0);
                break;
            }
            _ => {}
        }
    }
    let expected: Vec<u8> = (0..N).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(echoed, expected);
}

#[test]
fn embedded_connection_and_exit_when_idle() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut agent = tuppence_agent::serve::LinkDaemon::new(LinkDaemonConfig {
        exit_when_idle: true,
        ..quiet_config()
    })
    .unwrap();
    agent
        .add_connection(tuppence_transport::Transport::Unix(theirs), "pair")
        .unwrap();
    let handle = std::thread::spawn(move || agent.run());
    let keep = ours.try_clone().unwrap();
    let s = Session::new(ours, ClientConfig::default(), PATIENCE).unwrap();
    assert_eq!(
        s.output(Command::new("echo pair")).unwrap().stdout,
        b"pair\n"
    );
    let mut run = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let pid = printed_pid(&mut run);
    keep.shutdown(Shutdown::Both).unwrap();
    assert!(eventually(PATIENCE, || handle.is_finished()));
    assert_eq!(handle.join().unwrap().unwrap(), RunEnd::Idle);
    assert!(
        eventually(Duration::from_secs(1), || gone(pid)),
        "{:?}",
        proc_state(pid)
    );
}

#[test]
fn many_clients_at_once() {
    let agent = TestAgent::start();
    std::thread::scope(|sc| {
        for t in 0..12 {
            let agent = &agent;
            sc.spawn(move || {
                let s = agent.session();
                for i in 0..5 {
                    let run = s.run(Command::new("cat; echo \" $$\" >&2")).unwrap();
                    let line = format!("client {t} command {i}\n").repeat(1000);
                    run.write_stdin(line.as_bytes()).unwrap();
                    run.close_stdin().unwrap();
                    let out = run.collect().unwrap();
                    assert_eq!(out.outcome, Outcome::Exited(0));
                    assert!(out.stdout == line.as_bytes(), "client {t} command {i}");
                }
            });
        }
    });
}
