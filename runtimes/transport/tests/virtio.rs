//! Virtio-serial port behaviour, emulated with a pty.
//!
//! The agent's "port" is a pty master opened through `VirtioPort::open("/dev/ptmx")`; the
//! "host" is whoever opens the slave. After the slave has been opened and closed, the master
//! behaves like a virtio port with no host: `poll` reports `POLLHUP` at once and reads end
//! (a pty master's `EIO`, mapped to EOF). Opening the slave again is a host connecting.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::read_n;
use tuppence_transport::{
    Listener, Peer, SerialLink, Transport, TransportError, TransportKind, VirtioPort,
};

/// CPU time (user + system) consumed so far by the calling thread. Per thread rather than
/// per process, so tests running in parallel in this binary do not count.
fn thread_cpu_time() -> Duration {
    // SAFETY: `getrusage` fills the zeroed struct we own; RUSAGE_THREAD is Linux's
    // per-thread variant.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A pty master as a "virtio port", and the slave path the "host" opens.
fn emulated_port() -> (VirtioPort, PathBuf) {
    let port = VirtioPort::open("/dev/ptmx").expect("open /dev/ptmx");
    rustix::pty::grantpt(port.as_fd()).expect("grantpt");
    rustix::pty::unlockpt(port.as_fd()).expect("unlockpt");
    let name = rustix::pty::ptsname(port.as_fd(), Vec::new()).expect("ptsname");
    let slave = PathBuf::from(name.to_str().expect("utf-8"));
    // A host that came and went: from now on the port reports POLLHUP until the next one.
    drop(SerialLink::open(&slave, 115_200).expect("open slave"));
    (port, slave)
}

#[test]
fn wait_for_host_sleeps_instead_of_spinning_and_sessions_follow_the_host() {
    let (port, slave) = emulated_port();
    assert!(!port.host_connected().expect("poll"));

    // Why a plain poll loop is wrong: with no host, poll returns at once (POLLHUP).
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&port),
        events: libc::POLLIN,
        revents: 0,
    };
    let t0 = Instant::now();
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
    assert_eq!(n, 1);
    assert_ne!(pfd.revents & libc::POLLHUP, 0);
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "poll does not wait"
    );

    let listener = Listener::Virtio(port);
    assert_eq!(listener.kind(), TransportKind::Virtio);
    assert_eq!(listener.accept_interval(), Some(VirtioPort::RETRY_INTERVAL));
    listener.set_nonblocking(true).expect("nb");
    assert_eq!(
        listener.accept().expect_err("no host").kind(),
        ErrorKind::WouldBlock
    );
    let Listener::Virtio(port) = &listener else {
        unreachable!()
    };

    // The host connects after about a second, sends a greeting, then waits to be told to
    // leave.
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let host_path = slave.clone();
    let host = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        let mut host = SerialLink::open(&host_path, 115_200).expect("host connects");
        host.write_all(b"hello from host\0\xff")
            .expect("host writes");
        let reply = read_n(&host, 5).expect("host reads");
        leave_rx.recv().expect("told to leave");
        drop(host);
        reply
    });

    let cpu0 = thread_cpu_time();
    let t0 = Instant::now();
    assert!(
        port.wait_for_host(Some(Duration::from_secs(10)))
            .expect("wait")
    );
    let waited = t0.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu0);
    println!("wait_for_host: waited {waited:?}, used {cpu:?} of CPU");
    assert!(
        waited >= Duration::from_millis(900),
        "returned early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "took too long: {waited:?}");
    assert!(
        cpu < Duration::from_millis(100),
        "waiting for the host burned {cpu:?} of CPU (busy loop?)"
    );

    // Blocking accept now returns at once with a session on the same fd.
    listener.set_nonblocking(false).expect("blocking");
    let (session, peer) = listener.accept().expect("accept");
    assert!(matches!(peer, Peer::Virtio(_)));
    assert_eq!(session.kind(), TransportKind::Virtio);
    assert_eq!(
        read_n(&session, 17).expect("greeting"),
        b"hello from host\0\xff"
    );
    (&session).write_all(b"reply").expect("reply");
    assert_eq!(
        listener.accept().expect_err("one session at a time").kind(),
        ErrorKind::ResourceBusy
    );

    // The host leaves: the session reads EOF, not an error, and the port says so.
    leave_tx.send(()).expect("tell host");
    assert_eq!(host.join().expect("host thread"), b"reply");
    let mut buf = [0u8; 8];
    assert_eq!((&session).read(&mut buf).expect("eof"), 0);
    let Transport::Virtio(link) = &session else {
        unreachable!()
    };
    assert!(!link.host_connected().expect("poll"));
    drop(session);

    // Waiting with a timeout and no host gives up after the timeout, also without spinning.
    let cpu0 = thread_cpu_time();
    let t0 = Instant::now();
    assert!(
        !port
            .wait_for_host(Some(Duration::from_millis(300)))
            .expect("wait")
    );
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(thread_cpu_time().saturating_sub(cpu0) < Duration::from_millis(50));

    // A second host is served on the same open port (no reopen: a real port would be
    // EBUSY while we hold it).
    let mut host2 = SerialLink::open(&slave, 115_200).expect("host 2");
    host2.write_all(b"again").expect("write");
    let (session2, _) = listener.accept().expect("accept host 2");
    assert_eq!(read_n(&session2, 5).expect("read"), b"again");
}

#[test]
fn opening_a_missing_port_is_a_typed_error() {
    match VirtioPort::open("/dev/virtio-ports/no.such.port") {
        Err(e @ TransportError::Open { .. }) => {
            assert!(e.to_string().contains("virtio-serial port"), "{e}");
        }
        other => panic!("expected Open error, got {other:?}"),
    }
}
