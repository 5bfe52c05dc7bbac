//! A link that may end at a device (a unix socket in front of a VM's serial port, as
//! QEMU's chardev is) stays open at exit until the other end has read what was written.
//! QEMU drops what it had not read from its socket when the socket closes, so a `quit`
//! the CLI wrote and closed at once could never reach the guest (seen in the QEMU test).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tuppence::Machine;
use tuppence::link::{Server, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_tuppence");

/// A peer that answers the hello, then does not read for a while (a busy serial port),
/// and looks at its socket as QEMU would: has the client hung up before it read the rest?
#[test]
fn quit_on_a_device_link_waits_until_the_peer_has_read_it() {
    let dir = std::env::temp_dir().join(format!("tuppence-device-close-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("serial.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let mut child = Command::new(BIN)
        .args(["quit", "-t", &format!("unix:{}", sock.display())])
        .env_remove("TUPPENCE_TARGET")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tuppence quit");
    let (mut peer, _) = listener.accept().expect("accept");
    let mut server = Server::new(ServerConfig::default(), Instant::now());
    let mut buf = [0u8; 4096];
    // The hello (and anything sent with it) until the reply is out.
    loop {
        let n = peer.read(&mut buf).expect("read");
        assert!(n > 0, "the client closed before its hello");
        server
            .handle_bytes(Instant::now(), &buf[..n])
            .expect("hello");
        let mut out = BytesMut::new();
        server.poll_transmit(Instant::now(), &mut out);
        if !out.is_empty() {
            peer.write_all(&out).expect("reply");
            break;
        }
    }
    // Busy: the quit, written meanwhile, waits in our receive queue.
    std::thread::sleep(Duration::from_millis(300));
    let hung_up = {
        let fds = &mut [rustix::event::PollFd::new(
            &peer,
            rustix::event::PollFlags::RDHUP,
        )];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(fds, Some(&now)).expect("poll");
        fds[0].revents().contains(rustix::event::PollFlags::RDHUP)
    };
    assert!(!hung_up, "the client hung up before the peer read its quit");
    let mut rest = Vec::new();
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = peer.read_to_end(&mut rest);
    assert!(!rest.is_empty(), "the quit never came");
    let status = child.wait().expect("wait");
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(status.success(), "{status}: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
