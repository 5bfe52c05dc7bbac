//! The agent on a serial line, with a pty pair standing in for the cable: the agent serves
//! the slave as `--serial` does, the tests are the host on the master. A pty, like a real
//! line, has no disconnect: a client that vanishes leaves no trace, and the next client's
//! bytes arrive on the same line.
//!
//! The virtio-serial port's behaviour is played by the same pty the other way round: the
//! agent serves the *master* as a `VirtioPort` and the host opens and closes the slave.
//! Like a guest's port, the master reads what the host wrote and then EOF (`EIO`) once no
//! host has it open, reports `POLLHUP` while none does, and works again when one opens it.

mod agent_harness;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_harness::{PATIENCE, TempDir, dead, eventually, first_line_pid, quiet_config};
use bytes::Bytes;
use rustix::event::{PollFd, PollFlags, poll};
use tuppence::link::ClientConfig;
use tuppence::wire::{CommandRequest, Decoder, Dialect, Frame, Hello, Packet, Sender};
use tuppence_agent::serve::{LinkDaemon, LinkDaemonConfig, RunEnd, StopHandle};
use tuppence_blocking::Session;
use tuppence_transport::{Listener, SerialLink, Transport};

/// The cable: a pty whose slave the agent serves. The master (the host's end) stays open
/// for the whole test, as a real line stays plugged in between clients.
struct Line {
    master: OwnedFd,
    slave: PathBuf,
}

impl Line {
    fn open() -> Line {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let mut t = rustix::termios::tcgetattr(&master).expect("tcgetattr");
        t.make_raw();
        rustix::termios::tcsetattr(&master, rustix::termios::OptionalActions::Now, &t)
            .expect("tcsetattr");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = PathBuf::from(name.to_str().expect("utf-8 pts name"));
        Line { master, slave }
    }

    /// A client speaking hand-made 4.0 packets on the host's end.
    fn raw_client(&self) -> RawClient {
        self.raw_client_in(Dialect::V4)
    }

    /// A client speaking hand-made packets of `dialect` on the host's end.
    fn raw_client_in(&self, dialect: Dialect) -> RawClient {
        RawClient::new(self.master.try_clone().expect("dup master"), dialect)
    }

    /// The host's end as a transport for `tuppence_blocking::Session`.
    fn transport(&self) -> Transport {
        let port = serial2::SerialPort::from(self.master.try_clone().expect("dup master"));
        Transport::Serial(SerialLink::from_serial_port(port).expect("serial link"))
    }
}

struct RawClient {
    fd: OwnedFd,
    dec: Decoder,
    dialect: Dialect,
    cid: u16,
}

impl RawClient {
    fn new(fd: OwnedFd, dialect: Dialect) -> RawClient {
        RawClient {
            fd,
            dec: Decoder::new(dialect, Sender::Server),
            dialect,
            cid: 0,
        }
    }

    fn send(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = rustix::io::write(&self.fd, bytes).expect("write to the line");
            bytes = &bytes[n..];
        }
    }

    fn send_packet(&mut self, xid: u16, packet: &Packet) {
        let bytes = self.encode(xid, packet);
        self.send(&bytes);
    }

    fn encode(&self, xid: u16, packet: &Packet) -> Bytes {
        packet.to_bytes(self.dialect, self.cid, xid).unwrap()
    }

    /// This client's hello (said once: no retry, as the C client).
    fn hello_packet(&self) -> Packet {
        let (major, minor) = self.dialect.version();
        Packet::Hello(Hello {
            major,
            minor,
            keepalive: 0,
        })
    }

    /// The next packet from the agent, `None` after `limit`.
    fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(frame) = self.dec.next_frame().expect("the agent sent a bad packet") {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ts = rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => panic!("poll: {e}"),
            }
            let n = rustix::io::read(&self.fd, &mut buf).expect("read the line");
            self.dec.push(&buf[..n]);
        }
    }

    /// Reads raw bytes up to and including `pattern` (which must come within PATIENCE);
    /// what follows it is decoded as usual. Returns the bytes skipped before it.
    fn skip_to(&mut self, pattern: &[u8]) -> usize {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            if let Some(at) = seen.windows(pattern.len()).position(|w| w == pattern) {
                self.dec.push(&seen[at + pattern.len()..]);
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no {pattern:02x?} within {PATIENCE:?}"
            );
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            let ts = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            if matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
                let n = rustix::io::read(&self.fd, &mut buf).expect("read the line");
                seen.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Says hello; the very first packet back must be the reply (nothing stale before
    /// it). Returns the cid.
    fn hello(&mut self) -> u16 {
        let hello = self.hello_packet();
        self.send_packet(0, &hello);
        self.hello_reply()
    }

    /// Waits for the hello reply, which must be the first packet. Returns the cid.
    fn hello_reply(&mut self) -> u16 {
        let frame = self.next_frame(PATIENCE).expect("hello reply");
        assert!(
            matches!(frame.packet, Packet::Hello(_)),
            "the first packet on the line after a new hello was not its reply: {frame:?}"
        );
        self.cid = frame.cid;
        frame.cid
    }

    /// Runs `sleep 100` on `xid`; returns its pid once it runs.
    fn run_sleep(&mut self, xid: u16) -> u32 {
        self.run(xid, "echo $$; exec sleep 100");
        let out = self.frames_until(xid, |p| matches!(p, Packet::Data { channel: 1, .. }));
        let Some(Packet::Data { data, .. }) = out.last() else {
            unreachable!()
        };
        first_line_pid(data)
    }

    fn run(&mut self, xid: u16, command: &str) {
        self.send_packet(
            xid,
            &Packet::Command(CommandRequest {
                user: Bytes::from(agent_harness_user()),
                command: Bytes::copy_from_slice(command.as_bytes()),
                timeout: 0,
                request_tty: 0,
                reserved: [0, 0],
                env: Vec::new(),
            }),
        );
    }

    /// Every packet until (and with) the one `stop` accepts; panics on a packet for
    /// another xid (a stale one) or after PATIENCE.
    fn frames_until(&mut self, xid: u16, stop: impl Fn(&Packet) -> bool) -> Vec<Packet> {
        let mut seen = Vec::new();
        loop {
            let frame = self
                .next_frame(PATIENCE)
                .unwrap_or_else(|| panic!("no answer for xid {xid}; got {seen:?}"));
            assert_eq!(
                (frame.cid, frame.xid),
                (self.cid, xid),
                "a packet that is not ours: {frame:?} (after {seen:?})"
            );
            let done = stop(&frame.packet);
            seen.push(frame.packet);
            if done {
                return seen;
            }
        }
    }
}

fn agent_harness_user() -> Vec<u8> {
    tuppence_agent::User::current()
        .expect("the current user has a passwd entry")
        .name()
        .to_vec()
}

/// An agent serving the line from a thread; dropping it stops the agent.
struct SerialAgent {
    stop: StopHandle,
    handle: Option<JoinHandle<std::io::Result<RunEnd>>>,
}

impl SerialAgent {
    fn start(config: LinkDaemonConfig, slave: &Path) -> SerialAgent {
        let listener = Listener::serial(slave, 115_200).expect("serve the pty slave");
        let mut agent = LinkDaemon::new(config).unwrap();
        agent.add_listener(listener).unwrap();
        let stop = agent.stop_handle().unwrap();
        let handle = std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || agent.run())
            .unwrap();
        SerialAgent {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for SerialAgent {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The status sequence of `echo hi` in 4.0: exactly this, nothing stale in between.
fn echo_hi(xid: u16, client: &mut RawClient) {
    client.run(xid, "echo hi");
    client.send_packet(xid, &Packet::Eof { channel: 0 });
    let got = client.frames_until(xid, |p| matches!(p, Packet::Minor(_)));
    let data = Packet::Data {
        channel: 1,
        data: Bytes::from_static(b"hi\n"),
    };
    if client.dialect == Dialect::Legacy3 {
        // 3.0: no EOF packets for stdout and stderr.
        assert_eq!(got, [data, Packet::Major(0), Packet::Minor(0)]);
        return;
    }
    // (stdout's data comes before its EOF; stderr's EOF may come first)
    let eofs = [Packet::Eof { channel: 1 }, Packet::Eof { channel: 2 }];
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[3..], [Packet::Major(0), Packet::Minor(0)], "{got:?}");
    assert!(
        eofs.iter().all(|e| got[..3].contains(e)) && got[..3].contains(&data),
        "{got:?}"
    );
    let pos = |p: &Packet| got.iter().position(|g| g == p);
    assert!(pos(&data) < pos(&eofs[0]), "{got:?}");
}

/// Client A starts `sleep 100` and an inject it never finishes, then vanishes without a
/// word (on a pty the agent sees nothing). Client B's hello ends A's session: A's process
/// group is killed, the partial file removed and not committed, and B's commands (the
/// same xids as A's) work and see nothing of A's session.
#[test]
fn new_client_on_a_serial_line_ends_the_vanished_clients_session() {
    let line = Line::open();
    let files = TempDir::new("device");
    let _agent = SerialAgent::start(quiet_config(), &line.slave);

    let mut a = line.raw_client();
    let cid = a.hello();
    let pid = a.run_sleep(1);
    let target = files.join("target.bin");
    let half = start_inject(&mut a, 2, &target, b"the first half of a file".to_vec());
    a.send(&half);
    assert!(
        eventually(PATIENCE, || entries(files.path()).len() == 1),
        "no temporary file: {:?}",
        entries(files.path())
    );
    // A vanishes: nothing is closed, nothing is said.
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!dead(pid), "the agent cannot know A is gone yet");

    let mut b = line.raw_client();
    assert_eq!(b.hello(), cid, "the same port session keeps its cid");
    assert!(
        eventually(PATIENCE, || dead(pid)),
        "A's sleep survived B's hello"
    );
    assert!(
        eventually(PATIENCE, || entries(files.path()).is_empty()),
        "A's partial file is still there: {:?}",
        entries(files.path())
    );
    // B's xids are A's: with A's session still live, 1 would be A's sleep and the EOF on
    // 2 would commit A's half file.
    echo_hi(1, &mut b);
    b.send_packet(2, &Packet::Eof { channel: 0 });
    echo_hi(3, &mut b);
    assert!(!target.exists(), "A's half file was committed");
    assert_eq!(
        b.next_frame(Duration::from_millis(300)),
        None,
        "more packets than B asked for"
    );
}

/// A client dies in the middle of writing a keepalive: its first 3 bytes stay in the
/// agent's decoder. After a silence longer than the port's limit they are line noise: the
/// next client's hello is answered (on the same session: no framing error, no reopen).
#[test]
fn stale_partial_packet_does_not_eat_the_next_hello() {
    let line = Line::open();
    let config = LinkDaemonConfig {
        port_stale_partial_after: Some(Duration::from_millis(300)),
        ..quiet_config()
    };
    let _agent = SerialAgent::start(config, &line.slave);
    let mut a = line.raw_client();
    let cid = a.hello();
    let keepalive = Packet::Keepalive.to_bytes(Dialect::V4, cid, 0).unwrap();
    a.send(&keepalive[..3]);
    drop(a);
    std::thread::sleep(Duration::from_millis(500));

    let mut b = line.raw_client();
    assert_eq!(
        b.hello(),
        cid,
        "the agent reopened the port (framing error?)"
    );
    echo_hi(1, &mut b);
}

/// The same leftover, and the next client comes at once: its hello is glued to the
/// leftover. The agent finds it once the client has waited the port's limit for its reply
/// (the client's own retry, after `DEVICE_HELLO_RETRY`, would get through too); `Session`
/// with the device-link settings, as the CLI uses it.
#[test]
fn a_session_connects_through_a_hello_glued_to_a_leftover() {
    let line = Line::open();
    let _agent = SerialAgent::start(quiet_config(), &line.slave);
    let mut a = line.raw_client();
    let cid = a.hello();
    let keepalive = Packet::Keepalive.to_bytes(Dialect::V4, cid, 0).unwrap();
    a.send(&keepalive[..3]);
    drop(a);

    let t0 = Instant::now();
    let session = Session::new(
        line.transport(),
        ClientConfig::default().for_device_link(),
        PATIENCE,
    )
    .expect("connect through the leftover");
    assert!(
        t0.elapsed() >= tuppence::link::DEVICE_STALE_PARTIAL_AFTER,
        "connected before the agent's limit: was the hello really glued? ({:?})",
        t0.elapsed()
    );
    assert_eq!(session.info().cid, cid);
    let out = session
        .output(tuppence::link::Command::new("echo ok").user(agent_harness_user()))
        .expect("run");
    assert_eq!(out.stdout, b"ok\n");
}

/// A vanished client leaves a backlog: its command writes far more than the line takes
/// (the agent's queues and the tty fill up). The new client's hello drops all of it (the
/// machine's queue, the bytes the agent took but had not written, the tty's output queue):
/// after the hello reply, nothing of the old output follows. What the line delivered
/// before the agent read the hello cannot be taken back; the client skips it (see
/// `ClientConfig::resync_before_hello`), as this test does by hand.
#[test]
fn old_output_backlog_does_not_reach_the_new_client() {
    old_output_before_the_reply(false);
}

/// The same, when the vanished client also left the start of a packet: the new client's
/// hello lands behind it and is found by the agent's timer when the silence after it
/// reaches the port's limit. That reset drops the backlog just as well.
#[test]
fn old_output_backlog_does_not_reach_a_client_whose_hello_was_behind_a_leftover() {
    old_output_before_the_reply(true);
}

/// Client A floods output it never reads and vanishes (after starting a packet it never
/// finishes, with `leftover`); client B says hello. Returns after checking that what came
/// before B's reply is no more than the pty itself holds.
fn old_output_before_the_reply(leftover: bool) {
    let line = Line::open();
    let _agent = SerialAgent::start(short_limit(), &line.slave);
    let mut a = line.raw_client();
    let cid = a.hello();
    a.run(1, "exec yes old-output");
    let first = a.frames_until(1, |p| matches!(p, Packet::Data { .. }));
    assert!(!first.is_empty());
    // Let the agent fill everything between the command and the line.
    std::thread::sleep(Duration::from_millis(500));
    if leftover {
        // (Right before B's hello: no silence between, so the agent finds the hello by
        // its timer, when B has waited for the reply as long as the port's limit.)
        let stdin = a.encode(
            1,
            &Packet::Data {
                channel: 0,
                data: Bytes::from(vec![b'i'; 100]),
            },
        );
        a.send(&stdin[..20]);
    }
    drop(a);

    let mut b = line.raw_client();
    let hello = b.hello_packet();
    b.send_packet(0, &hello);
    // B reads nothing for a while, so the line stays full: what the agent holds for the
    // line is still its own when it finds the hello, and must be dropped then (the hello
    // behind a leftover is found by the agent's timer).
    std::thread::sleep(3 * LIMIT);
    let reply = hello.to_bytes(Dialect::V4, cid, 0).unwrap();
    let before = b.skip_to(&reply);
    b.cid = cid;
    echo_hi(1, &mut b);
    assert_eq!(
        b.next_frame(Duration::from_millis(300)),
        None,
        "more packets than B asked for"
    );
    println!("{before} bytes of the old session were on the line before the hello reply");
    // What the pty itself buffers (tens of KiB); without the discard the agent's own
    // backlog (256 KiB and more) came first too.
    assert!(
        before < 128 * 1024,
        "{before} bytes of the old session came before the hello reply"
    );
}

/// The port's settings with a short limit for silences inside packets (see
/// `Limits::stale_partial_after`), so that the tests need not wait a second each time.
fn short_limit() -> LinkDaemonConfig {
    LinkDaemonConfig {
        port_stale_partial_after: Some(LIMIT),
        ..quiet_config()
    }
}

const LIMIT: Duration = Duration::from_millis(300);

/// Starts an inject to `target` on `xid` (the agent answers it is ready); returns the
/// packet of `data` for it, not yet sent.
fn start_inject(client: &mut RawClient, xid: u16, target: &Path, data: Vec<u8>) -> Bytes {
    client.send_packet(
        xid,
        &Packet::Inject {
            user: Bytes::from(agent_harness_user()),
            path: Bytes::from(target.to_str().unwrap().to_owned()),
            mode: 0o600,
        },
    );
    assert_eq!(client.frames_until(xid, |_| true), vec![Packet::Major(0)]);
    client.encode(
        xid,
        &Packet::Data {
            channel: 0,
            data: Bytes::from(data),
        },
    )
}

/// A live client that pauses for three times the port's limit in the middle of a data
/// packet (a loaded host, a descheduled VM, a slow line) is not cut, although its data
/// holds hellos (away from the pause): the inject completes byte-exact.
#[test]
fn a_client_pausing_mid_packet_on_a_serial_line_is_not_cut() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let line = Line::open();
        let files = TempDir::new("pause");
        let _agent = SerialAgent::start(short_limit(), &line.slave);
        let mut a = line.raw_client_in(dialect);
        a.hello();
        let mut data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for at in [500, 15_000] {
            let hello = a.hello_packet().to_bytes(dialect, 0, 0).unwrap();
            data[at..at + hello.len()].copy_from_slice(&hello);
        }
        let target = files.join("paused.bin");
        let packet = start_inject(&mut a, 1, &target, data.clone());
        a.send(&packet[..7000]);
        // The client stalls (this is the scenario, not a wait for the agent).
        std::thread::sleep(3 * LIMIT);
        a.send(&packet[7000..]);
        a.send_packet(1, &Packet::Eof { channel: 0 });
        assert_eq!(
            a.frames_until(1, |p| matches!(p, Packet::Minor(_))),
            vec![Packet::Minor(0)],
            "{dialect}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), data, "{dialect}");
    }
}

/// A client dies in the middle of a data packet; the next client, which says hello once
/// (as the C client) and in either dialect, comes at once: its hello lands behind the
/// leftover. The agent finds it when the client has waited the limit for its reply (a
/// strict client: the reply is the first packet it gets), ends the old session (the
/// partial file is removed) and serves the new one.
#[test]
fn a_hello_once_client_after_a_client_died_mid_packet_on_a_serial_line() {
    for new in [Dialect::V4, Dialect::Legacy3] {
        let line = Line::open();
        let files = TempDir::new("died");
        let _agent = SerialAgent::start(short_limit(), &line.slave);
        let mut a = line.raw_client();
        let cid = a.hello();
        let packet = start_inject(&mut a, 1, &files.join("half.bin"), vec![b'x'; 5000]);
        a.send(&packet[..1234]);
        assert!(
            eventually(PATIENCE, || entries(files.path()).len() == 1),
            "no temporary file"
        );
        drop(a);

        let mut b = line.raw_client_in(new);
        assert_eq!(b.hello(), cid, "{new}");
        echo_hi(1, &mut b);
        assert!(
            eventually(PATIENCE, || entries(files.path()).is_empty()),
            "{new}: the dead client's partial file is still there: {:?}",
            entries(files.path())
        );
    }
}

/// A C client (3.0) after a tuppence client (4.0) on the same line, and back: read in the
/// session's dialect, the new hello is a framing error (length 0). On a port that does not
/// end the link: the session switches to the hello's dialect and serves the new client.
#[test]
fn clients_of_both_dialects_take_turns_on_a_serial_line() {
    let line = Line::open();
    let _agent = SerialAgent::start(quiet_config(), &line.slave);
    let mut cid = None;
    for dialect in [Dialect::V4, Dialect::Legacy3, Dialect::V4, Dialect::Legacy3] {
        let mut client = line.raw_client_in(dialect);
        let got = client.hello();
        assert_eq!(
            *cid.get_or_insert(got),
            got,
            "{dialect}: the port was reopened"
        );
        echo_hi(1, &mut client);
    }
}

/// Where the virtio test's agent process writes the path of its pty's slave.
const PTY_FILE: &str = "TUPPENCE_TEST_VIRTIO_PTY";

/// The agent process of the virtio test below, when started by it (does nothing
/// otherwise): it serves a pty's master as a virtio-serial port and says where the slave
/// is. A process, so that the test can freeze it (SIGSTOP) while the host acts.
#[test]
#[ignore = "the agent process the virtio test starts; not a test by itself"]
fn virtio_agent_process() {
    use std::fs::File;
    use tuppence_transport::VirtioPort;
    let Some(file) = std::env::var_os(PTY_FILE).map(PathBuf::from) else {
        return;
    };
    // Die with the test thread that started us, whatever happens to it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let line = Line::open();
    let port = VirtioPort::from_file(
        File::from(line.master.try_clone().unwrap()),
        "pty master standing in for a virtio-serial port",
    );
    let mut agent = LinkDaemon::new(quiet_config()).unwrap();
    agent.add_listener(Listener::Virtio(port)).unwrap();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, line.slave.to_str().unwrap()).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(agent.run().unwrap(), RunEnd::Quit);
}

/// The virtio test's agent process; killed at drop.
struct ChildAgent(std::process::Child);

impl ChildAgent {
    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.0);
        rustix::process::kill_process(pid, signal).expect("signal the agent process");
    }
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One host connection to the virtio port played by a pty: the slave, opened raw.
fn virtio_host(slave: &Path) -> RawClient {
    let fd = rustix::fs::open(
        slave,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open the pty slave");
    let mut t = rustix::termios::tcgetattr(&fd).expect("tcgetattr");
    t.make_raw();
    rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &t).expect("tcsetattr");
    RawClient::new(fd, Dialect::V4)
}

/// A virtio-serial port, played by a pty: the agent serves the master as a `VirtioPort`,
/// each host connection opens the slave. A guest can read a new client's hello and only
/// then learn that the previous host connection closed (QEMU's control messages and data
/// travel apart): the hello, then EOF, in one read. That hello belongs to the port's next
/// session, which must answer it, with the port's cid (the client says hello once; one
/// that got the reply earlier goes on with that cid). Here the agent process is frozen
/// while the hello is written and the host connection closes, so it reads both at once.
#[test]
fn a_hello_read_just_before_the_port_hung_up_is_answered_by_the_next_session() {
    let dir = TempDir::new("virtio");
    let file = dir.join("slave");
    let agent = ChildAgent(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "virtio_agent_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PTY_FILE, &file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(PATIENCE, || file.exists()),
        "the agent process did not start"
    );
    let slave = PathBuf::from(std::fs::read_to_string(&file).unwrap());

    let mut a = virtio_host(&slave);
    let cid = a.hello();
    let pid = a.run_sleep(1);

    agent.signal(rustix::process::Signal::STOP);
    let hello = a.hello_packet().to_bytes(Dialect::V4, 0, 0).unwrap();
    a.send(&hello);
    drop(a);
    agent.signal(rustix::process::Signal::CONT);
    // (Room for the agent to read the hello and the EOF before the next host connects:
    // connecting earlier would undo the hang-up. Not an assertion.)
    std::thread::sleep(Duration::from_millis(300));

    // The next host connection: the client that sent the hello listens for the reply.
    let mut b = virtio_host(&slave);
    let reply = Packet::Hello(Hello {
        major: 4,
        minor: 0,
        keepalive: 0,
    })
    .to_bytes(Dialect::V4, cid, 0)
    .unwrap();
    b.skip_to(&reply);
    b.cid = cid;
    echo_hi(1, &mut b);
    assert!(
        eventually(PATIENCE, || dead(pid)),
        "the old session's sleep survived"
    );
}
