//! Memory stays bounded whatever the peer does: floods of stdin, and output or file data
//! for a client that does not read.
//!
//! The agent runs in a child process here (this test binary started again, running only
//! `agent_process`), so its peak memory (`VmHWM`) can be measured without the test's own
//! buffers in it.

mod agent_harness;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent_harness::{ChildAgent, PATIENCE, Raw, TempDir, eventually};
use tuppence::link::{Command, Outcome};
use tuppence::wire::{Dialect, Hello, Packet};
use tuppence_blocking::{RunEvent, Session};

/// How much the agent's peak memory may grow during a flood. The agent holds about 1 MiB
/// per direction per connection (`transmit_limit`, `stdin_limit`) plus fixed buffers; a
/// flood that is buffered instead of pushed back grows it by the whole flood.
const GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// The agent of the tests below, when started by them (does nothing otherwise).
#[test]
#[ignore = "the agent process the memory tests start; not a test by itself"]
fn agent_process() {
    agent_harness::run_child_agent();
}

/// Runs a small command both ways so one-time allocations are in the baseline.
fn warm_up(s: &Session) {
    let run = s.run(Command::new("cat")).unwrap();
    run.write_stdin(&vec![b'w'; 300_000]).unwrap();
    run.close_stdin().unwrap();
    let out = run.collect().unwrap();
    assert_eq!(out.stdout.len(), 300_000);
}

fn assert_growth(what: &str, before: u64, after: u64) {
    let growth = after.saturating_sub(before);
    println!("{what}: agent peak memory {before} KiB -> {after} KiB (+{growth} KiB)");
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "{what}: the agent's peak memory grew by {growth} KiB (limit {GROWTH_LIMIT_KIB} KiB)"
    );
}

#[test]
fn stdin_flood_into_a_command_that_does_not_read() {
    let agent = ChildAgent::spawn();
    let s = agent.session();
    warm_up(&s);
    let before = agent.peak_kib();
    let flood = vec![b'f'; 64 << 20];
    let run = s.run(Command::new("sleep 2")).unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // Fails once the command has ended and the rest has nowhere to go: fine.
            let _ = run.write_stdin(&flood);
        });
    });
    let after = agent.peak_kib();
    assert_eq!(run.collect().unwrap().outcome, Outcome::Exited(0));
    assert_growth("64 MiB of stdin into `sleep 2`", before, after);
    // The connection is still in order.
    assert_eq!(s.output(Command::new("echo ok")).unwrap().stdout, b"ok\n");
    agent.quit(s);
}

/// Watches the agent's peak memory for `window` (while the client reads nothing); returns
/// early once it is past the limit.
fn peak_while_idle(agent: &ChildAgent, before: u64, window: Duration) -> u64 {
    let end = Instant::now() + window;
    loop {
        let peak = agent.peak_kib();
        if peak >= before + GROWTH_LIMIT_KIB || Instant::now() >= end {
            return peak;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn output_for_a_client_that_does_not_read() {
    const TOTAL: usize = 64_000_000;
    let agent = ChildAgent::spawn();
    let s = agent.session();
    warm_up(&s);
    let before = agent.peak_kib();
    let run = s
        .run(Command::new(format!("head -c {TOTAL} /dev/zero")))
        .unwrap();
    let mut received = 0usize;
    match run.next_timeout(Some(PATIENCE)).unwrap() {
        Some(RunEvent::Stdout(d)) => received += d.len(),
        other => panic!("{other:?}"),
    }
    // The client stops reading; the command could write everything within this window.
    let after = peak_while_idle(&agent, before, Duration::from_millis(1500));
    // Nothing was lost meanwhile.
    loop {
        match run.next_timeout(Some(PATIENCE)).unwrap() {
            Some(RunEvent::Stdout(d)) => received += d.len(),
            Some(RunEvent::Finished(o)) => {
                assert_eq!(o, Outcome::Exited(0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    drop(run);
    assert_eq!(received, TOTAL);
    assert_growth("64 MB of output, client not reading", before, after);
    agent.quit(s);
}

/// A sink that takes nothing until released.
struct Gated {
    gate: Option<mpsc::Receiver<()>>,
    len: u64,
    nonzero: bool,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        self.len += buf.len() as u64;
        self.nonzero |= buf.iter().any(|&b| b != 0);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn extract_for_a_client_that_does_not_read() {
    const SIZE: u64 = 96 << 20;
    let agent = ChildAgent::spawn();
    let s = agent.session();
    warm_up(&s);
    let files = TempDir::new("sparse");
    let path = files.join("sparse.img");
    // Sparse: costs no disk, reads as zeros.
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    let before = agent.peak_kib();
    let (release, gate) = mpsc::channel();
    let mut sink = Gated {
        gate: Some(gate),
        len: 0,
        nonzero: false,
    };
    let after = std::thread::scope(|sc| {
        let extract = sc.spawn(|| {
            s.extract("root", path.to_str().unwrap(), &mut sink, |_| {})
                .unwrap()
        });
        let after = peak_while_idle(&agent, before, Duration::from_millis(1500));
        release.send(()).unwrap();
        assert_eq!(extract.join().unwrap(), SIZE);
        after
    });
    assert_eq!(sink.len, SIZE);
    assert!(!sink.nonzero);
    assert_growth("96 MiB extract, client not reading", before, after);
    agent.quit(s);
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 of `rest`.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn request_flood_from_a_client_that_does_not_read() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tuppence::wire::{Dialect, Hello, Packet};

    let agent = ChildAgent::spawn();
    let s = agent.session();
    warm_up(&s);
    let before = agent.peak_kib();

    // A raw client: hello, then settles on an xid that is no monitor, each answered at once
    // with a 12-byte `S`, written as fast as the agent takes them; it never reads.
    let mut flooder = UnixStream::connect(&agent.sock).unwrap();
    let mut hello = bytes::BytesMut::new();
    let (major, minor) = Dialect::V4.version();
    Packet::Hello(Hello {
        major,
        minor,
        keepalive: 0,
    })
    .encode(Dialect::V4, 0, 0, &mut hello)
    .unwrap();
    flooder.write_all(&hello).unwrap();
    // The reply's header (`type res len cid xid`) carries this connection's cid.
    let mut reply = [0u8; 12];
    std::io::Read::read_exact(&mut flooder, &mut reply).unwrap();
    let cid = u16::from_be_bytes([reply[4], reply[5]]);
    let mut one = bytes::BytesMut::new();
    Packet::Settle { seq: 7 }
        .encode(Dialect::V4, cid, 9, &mut one)
        .unwrap();
    let flood = one.repeat((64 << 20) / one.len());
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut w = flooder.try_clone().unwrap();
        let written = written.clone();
        std::thread::spawn(move || {
            for piece in flood.chunks(64 << 10) {
                // Fails once the test shuts the socket down: the end of the flood.
                if w.write_all(piece).is_err() {
                    return;
                }
                written.fetch_add(piece.len(), Ordering::Relaxed);
            }
        })
    };
    // Wait until the agent stops taking the flood.
    let mut last = usize::MAX;
    assert!(
        eventually(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(300));
            let now = written.load(Ordering::Relaxed);
            std::mem::replace(&mut last, now) == now
        }),
        "the agent kept taking requests"
    );
    assert!(
        last < 32 << 20,
        "the agent took {last} bytes of requests whose answers nobody reads"
    );
    // Pushing back costs no CPU: the agent waits for the peer instead of retrying.
    let ticks = cpu_ticks(agent.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(agent.child.id()) - ticks;
    assert!(
        spent < 30,
        "the agent used {spent} ticks in 1 s while pushed back"
    );
    // Others are served meanwhile.
    assert_eq!(s.output(Command::new("echo ok")).unwrap().stdout, b"ok\n");
    let after = agent.peak_kib();
    flooder.shutdown(std::net::Shutdown::Both).unwrap();
    writer.join().unwrap();
    assert_growth("64 MiB of requests, client not reading", before, after);
    agent.quit(s);
}

/// What a raw client got in answer to its hello.
#[derive(Debug, PartialEq)]
enum Welcome {
    Served,
    Refused(u32, u32),
    Nothing,
}

/// Connects `n` raw clients and sends each a hello (without reading yet).
fn hello_clients(agent: &ChildAgent, n: usize) -> Vec<Raw> {
    (0..n)
        .map(|_| {
            let mut raw = Raw::on(agent.stream(), Dialect::V4);
            raw.send_packet(
                0,
                &Packet::Hello(Hello {
                    major: 4,
                    minor: 0,
                    keepalive: 0,
                }),
            );
            raw
        })
        .collect()
}

/// How the agent answered a client's hello, waiting until `deadline` at most.
fn welcome(raw: &mut Raw, deadline: Instant) -> Welcome {
    let left = |d: Instant| {
        d.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    match raw.next_frame(left(deadline)).map(|f| f.packet) {
        Some(Packet::Hello(_)) => Welcome::Served,
        Some(Packet::Major(status)) => match raw.next_frame(left(deadline)).map(|f| f.packet) {
            Some(Packet::Minor(detail)) => {
                assert!(
                    raw.closed_by_agent(PATIENCE),
                    "a refusal ends with the close"
                );
                Welcome::Refused(status, detail)
            }
            other => panic!("a refusal without its detail: {other:?}"),
        },
        Some(other) => panic!("unexpected answer to a hello: {other:?}"),
        None => Welcome::Nothing,
    }
}

#[test]
fn out_of_file_descriptors_every_client_is_served_or_refused_with_words() {
    let agent = ChildAgent::spawn_with("nofile=48");
    let mut clients = hello_clients(&agent, 100);
    let deadline = Instant::now() + PATIENCE;
    let answers: Vec<Welcome> = clients.iter_mut().map(|c| welcome(c, deadline)).collect();
    let served = answers.iter().filter(|a| **a == Welcome::Served).count();
    let refused = answers
        .iter()
        .filter(|a| **a == Welcome::Refused(24, 0))
        .count();
    println!("of 100 clients under `ulimit -n 48`: {served} served, {refused} refused with EMFILE");
    assert_eq!(
        served + refused,
        100,
        "every client gets an answer: {answers:?}"
    );
    assert!(served > 0 && refused > 0, "{answers:?}");
    // Once the clients are gone, the agent serves again (a client refused while it was
    // still closing them tries again, as a real one would).
    drop(clients);
    let mut session = None;
    assert!(
        eventually(PATIENCE, || {
            session = tuppence_blocking::Session::new(
                agent.stream(),
                tuppence::link::ClientConfig::default(),
                PATIENCE,
            )
            .ok();
            session.is_some()
        }),
        "the agent does not serve again"
    );
    let s = session.unwrap();
    assert_eq!(
        s.output(Command::new("echo back")).unwrap().stdout,
        b"back\n"
    );
    agent.quit(s);
}

#[test]
fn a_client_queued_while_fds_ran_out_is_served_when_they_come_free() {
    // Clients wait for fds as long as the test needs.
    let agent = ChildAgent::spawn_with("nofile=48,fd_wait_ms=60000");
    let mut clients = hello_clients(&agent, 60);
    // The agent serves what it can; the rest wait in its backlog.
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut served, mut waiting): (Vec<Raw>, Vec<Raw>) = (Vec::new(), Vec::new());
    for mut c in clients.drain(..) {
        match welcome(&mut c, deadline) {
            Welcome::Served => served.push(c),
            Welcome::Nothing => waiting.push(c),
            other => panic!("refused although fd_wait is a minute: {other:?}"),
        }
    }
    println!(
        "{} served, {} waiting for an fd",
        served.len(),
        waiting.len()
    );
    assert!(!waiting.is_empty(), "the fd limit was not reached");
    // Ten served clients leave: that frees fds, and nothing else happens on the listener.
    served.truncate(served.len().saturating_sub(10));
    let deadline = Instant::now() + PATIENCE;
    let first = welcome(&mut waiting[0], deadline);
    assert_eq!(first, Welcome::Served, "a waiting client was not picked up");
}

#[test]
fn a_flood_of_tiny_stdin_packets_costs_bounded_memory() {
    let agent = ChildAgent::spawn();
    let s = agent.session();
    warm_up(&s);
    let before = agent.peak_kib();
    let mut raw = Raw::on(agent.stream(), Dialect::V4);
    let cid = raw.hello();
    raw.send_packet(
        1,
        &Packet::Command(tuppence::wire::CommandRequest {
            user: bytes::Bytes::from_static(b"root"),
            command: bytes::Bytes::from_static(b"sleep 3"),
            timeout: 0,
            request_tty: 0,
            reserved: [0, 0],
            env: Vec::new(),
        }),
    );
    // 1-byte stdin packets (11 bytes each) for a command that does not read them, until
    // the agent stops taking them or 48 MiB were sent.
    let mut one = bytes::BytesMut::new();
    Packet::Data {
        channel: 0,
        data: bytes::Bytes::from_static(b"x"),
    }
    .encode(Dialect::V4, cid, 1, &mut one)
    .unwrap();
    let block = one.repeat(64 * 1024 / one.len());
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut written = 0usize;
    while written < 48 << 20 {
        match raw.stream.write(&block) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    let after = agent.peak_kib();
    println!("{written} bytes of 1-byte stdin packets taken");
    assert_growth("a flood of 1-byte stdin packets", before, after);
    drop(raw);
    assert_eq!(s.output(Command::new("echo ok")).unwrap().stdout, b"ok\n");
    agent.quit(s);
}
