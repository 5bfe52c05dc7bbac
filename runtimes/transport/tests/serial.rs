//! Serial transport over a pseudo-terminal standing in for a serial cable.

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{exchange, pattern, read_n};
use serial2::SerialPort;
use tuppence_transport::{
    ListenOptions, Listener, Peer, SerialLink, Target, Transport, TransportError, TransportKind,
};

/// A pty master (the "other end of the cable") and its slave's path.
fn open_pty() -> (OwnedFd, PathBuf) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let path = PathBuf::from(name.to_str().expect("utf-8 pts name"));
    (master, path)
}

/// Wraps a pty master as a raw serial link.
fn master_link(master: OwnedFd) -> Transport {
    let mut port = SerialPort::from(master);
    let mut s = port.get_configuration().expect("get");
    s.set_raw();
    port.set_configuration(&s).expect("set raw");
    Transport::Serial(SerialLink::from_serial_port(port).expect("link"))
}

#[test]
fn one_mebibyte_each_way_byte_exact_through_a_pty() {
    let (master, slave_path) = open_pty();
    let target: Target = format!("serial:{}", slave_path.display())
        .parse()
        .expect("target");
    let client = target.connect().expect("open serial target");
    assert_eq!(client.kind(), TransportKind::Serial);
    let far = master_link(master);

    let up = pattern(1 << 20, 11);
    let down = pattern(1 << 20, 12);
    for b in [0x00u8, 0x03, 0x04, 0x11, 0x13, 0xff] {
        assert!(up[..16].contains(&b) && down[..16].contains(&b));
    }
    let t0 = Instant::now();
    exchange(
        client.try_clone().expect("clone"),
        client,
        far.try_clone().expect("clone"),
        far,
        &up,
        &down,
    );
    println!("2 MiB through the pty in {:?}", t0.elapsed());
}

#[test]
fn serial_open_configures_raw_8n1_vmin1_clocal() {
    let (_master, slave_path) = open_pty();
    let link = SerialLink::open(&slave_path, 57600).expect("open");
    assert_eq!(link.path(), Some(slave_path.as_path()));
    let settings = link.port().get_configuration().expect("get");
    assert_eq!(settings.get_baud_rate().expect("baud"), 57600);
    assert_eq!(
        settings.get_char_size().expect("cs"),
        serial2::CharSize::Bits8
    );
    assert_eq!(
        settings.get_stop_bits().expect("sb"),
        serial2::StopBits::One
    );
    assert_eq!(
        settings.get_parity().expect("parity"),
        serial2::Parity::None
    );
    assert_eq!(
        settings.get_flow_control().expect("flow"),
        serial2::FlowControl::None
    );
    let t = settings.as_termios();
    assert_eq!(
        t.c_cc[libc::VMIN],
        1,
        "VMIN=1: a blocking read never returns 0"
    );
    assert_eq!(t.c_cc[libc::VTIME], 0);
    assert_ne!(t.c_cflag & libc::CLOCAL, 0, "modem control ignored");
    assert_ne!(t.c_cflag & libc::CREAD, 0, "receiver on");
    assert_eq!(
        t.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN),
        0
    );
    assert_eq!(
        t.c_iflag & (libc::IXON | libc::IXOFF | libc::ICRNL | libc::ISTRIP),
        0
    );
    assert_eq!(t.c_oflag & libc::OPOST, 0);
}

#[test]
fn reads_wait_or_would_block_never_time_out_or_fake_eof() {
    let (master, slave_path) = open_pty();
    let mut far = master_link(master);
    let link = Transport::Serial(SerialLink::open(&slave_path, 115_200).expect("open"));

    // Non-blocking: no data is WouldBlock at once (serial2's own read would wait 3 s and
    // say TimedOut).
    link.set_nonblocking(true).expect("nb");
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let e = (&link).read(&mut buf).expect_err("no data");
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert!(
        !link
            .wait_readable(Some(Duration::from_millis(30)))
            .expect("wait")
    );

    // Blocking: the read waits for the byte instead of returning 0.
    link.set_nonblocking(false).expect("blocking");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        far.write_all(b"\x00late").expect("write");
        far
    });
    let t0 = Instant::now();
    let got = read_n(&link, 5).expect("blocking read");
    assert_eq!(got, b"\x00late");
    assert!(t0.elapsed() >= Duration::from_millis(100));
    drop(writer.join().expect("writer"));
}

#[test]
fn pty_master_read_after_slave_closed_is_eof() {
    let (a, b) = SerialPort::pair().expect("pty pair");
    // A plain File on the master fails with EIO once the slave is gone ...
    let raw_master = File::from(a.as_fd().try_clone_to_owned().expect("dup"));
    let master = Transport::Serial(SerialLink::from_serial_port(a).expect("link"));
    let mut slave = Transport::Serial(SerialLink::from_serial_port(b).expect("link"));

    slave.write_all(b"last words").expect("write");
    drop(slave);

    // ... buffered bytes still come first ...
    assert_eq!(read_n(&master, 10).expect("read"), b"last words");
    let mut buf = [0u8; 16];
    let e = (&raw_master).read(&mut buf).expect_err("raw read");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // ... and the transport reports end of file instead, blocking or not.
    assert_eq!((&master).read(&mut buf).expect("eof"), 0);
    master.set_nonblocking(true).expect("nb");
    assert_eq!((&master).read(&mut buf).expect("eof"), 0);
    assert!(
        master
            .wait_readable(Some(Duration::ZERO))
            .expect("hangup is readable")
    );
}

#[test]
fn pty_slave_read_after_master_closed_is_eof() {
    let (master, slave_path) = open_pty();
    let slave = Transport::Serial(SerialLink::open(&slave_path, 115_200).expect("open"));
    drop(master);
    let mut buf = [0u8; 16];
    assert_eq!((&slave).read(&mut buf).expect("eof"), 0);
}

#[test]
fn serial_listener_hands_out_one_session_at_a_time() {
    let (master, slave_path) = open_pty();
    let mut far = master_link(master);
    let target: Target = format!("serial:{}@9600", slave_path.display())
        .parse()
        .expect("target");
    let listener = Listener::bind(&target, &ListenOptions::default()).expect("open tty");
    assert_eq!(listener.kind(), TransportKind::Serial);
    assert!(listener.accept_interval().is_some());
    assert_eq!(listener.local_endpoint().expect("ep"), target.endpoint);

    let (mut session, peer) = listener.accept().expect("accept");
    assert_eq!(peer, Peer::Serial(slave_path.clone()));
    let e = listener.accept().expect_err("second session");
    assert_eq!(e.kind(), ErrorKind::ResourceBusy);
    let clone = session.try_clone().expect("clone");

    far.write_all(b"ping").expect("write");
    assert_eq!(read_n(&mut session, 4).expect("read"), b"ping");
    session.write_all(b"pong").expect("write");
    assert_eq!(read_n(&mut far, 4).expect("read"), b"pong");

    drop(session);
    assert_eq!(
        listener.accept().expect_err("clone alive").kind(),
        ErrorKind::ResourceBusy
    );
    drop(clone);
    let (again, _) = listener.accept().expect("accept after the session ended");

    // The cable's other end goes away: the session reads EOF, and the line is hung up.
    drop(again);
    drop(far);
    let e = listener.accept().expect_err("hung up");
    assert_eq!(e.kind(), ErrorKind::NotConnected);
}

#[test]
fn serial_open_errors_are_typed() {
    match SerialLink::open("/dev/this-tty-does-not-exist", 115_200) {
        Err(e @ TransportError::Open { .. }) => {
            assert!(
                e.to_string().contains("/dev/this-tty-does-not-exist"),
                "{e}"
            );
        }
        other => panic!("expected Open error, got {other:?}"),
    }
    // Not a tty: opening works, configuring does not.
    match SerialLink::open("/dev/null", 115_200) {
        Err(e @ TransportError::NotATty { .. }) => {
            assert!(e.to_string().contains("/dev/null is not a terminal"), "{e}");
        }
        other => panic!("expected NotATty error, got {other:?}"),
    }
}
