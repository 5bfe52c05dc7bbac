//! Unix and TCP transports over loopback: listen, accept, connect, bytes both ways.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::time::{Duration, Instant};

use common::{TempDir, exchange, pattern, read_n};
use tuppence_transport::{
    Endpoint, ListenOptions, Listener, Peer, Target, Transport, TransportError, TransportKind,
};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat socket")
        .permissions()
        .mode()
        & 0o7777
}

/// Accepts on a thread while the caller connects.
fn connect_pair(listener: &Listener, target: &Target) -> (Transport, Transport, Peer) {
    std::thread::scope(|s| {
        let acc = s.spawn(|| listener.accept().expect("accept"));
        let client = target.connect().expect("connect");
        let (server, peer) = acc.join().expect("accept thread");
        (client, server, peer)
    })
}

#[test]
fn unix_listener_is_0600_and_carries_bytes_both_ways() {
    let dir = TempDir::new("unix");
    let path = dir.path().join("agent.sock");
    let target: Target = format!("unix:{}", path.display()).parse().expect("target");
    let listener = Listener::bind(&target, &ListenOptions::default()).expect("bind");
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(listener.kind(), TransportKind::Unix);
    assert_eq!(listener.accept_interval(), None);
    assert_eq!(
        listener.local_endpoint().expect("endpoint"),
        target.endpoint
    );

    let (client, server, peer) = connect_pair(&listener, &target);
    assert_eq!(client.kind(), TransportKind::Unix);
    match peer {
        Peer::Unix(Some(c)) => {
            assert_eq!(c.pid, i32::try_from(std::process::id()).expect("pid"));
            assert_eq!(c.uid, rustix::process::getuid().as_raw());
            assert_eq!(c.gid, rustix::process::getgid().as_raw());
        }
        other => panic!("expected unix credentials, got {other:?}"),
    }
    assert!(peer.to_string().starts_with("unix peer pid "));

    let up = pattern(256 * 1024, 1);
    let down = pattern(200 * 1024 + 7, 2);
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    exchange(client, c2, server, s2, &up, &down);

    drop(listener);
    assert!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
}

/// Connected and accepted unix sockets get larger buffers than the kernel's defaults
/// (fewer writable wake-ups for a streaming writer).
#[test]
fn unix_connections_get_larger_socket_buffers() {
    use rustix::net::sockopt::{socket_recv_buffer_size, socket_send_buffer_size};
    let dir = TempDir::new("unix-buffers");
    let path = dir.path().join("agent.sock");
    let target: Target = format!("unix:{}", path.display()).parse().expect("target");
    let listener = Listener::bind(&target, &ListenOptions::default()).expect("bind");
    let (client, server, _) = connect_pair(&listener, &target);
    let (plain, _other) = std::os::unix::net::UnixStream::pair().expect("pair");
    let default_send = socket_send_buffer_size(&plain).expect("SO_SNDBUF");
    let default_recv = socket_recv_buffer_size(&plain).expect("SO_RCVBUF");
    for (side, t) in [("client", &client), ("server", &server)] {
        let send = socket_send_buffer_size(t).expect("SO_SNDBUF");
        let recv = socket_recv_buffer_size(t).expect("SO_RCVBUF");
        assert!(
            send > default_send,
            "{side}: send buffer {send} (default {default_send})"
        );
        assert!(
            recv > default_recv,
            "{side}: receive buffer {recv} (default {default_recv})"
        );
    }
}

#[test]
fn unix_mode_is_configurable() {
    let dir = TempDir::new("unix-mode");
    let path = dir.path().join("s");
    let _l = Listener::unix(&path, 0o660).expect("bind");
    assert_eq!(mode_of(&path), 0o660);
}

#[test]
fn stale_unix_socket_is_replaced_but_live_sockets_and_files_are_not() {
    let dir = TempDir::new("unix-stale");
    let path = dir.path().join("s");

    // A socket file left behind by a dead agent: std does not unlink on drop.
    drop(StdUnixListener::bind(&path).expect("std bind"));
    assert!(path.exists());
    let l = Listener::unix(&path, 0o600).expect("stale socket is replaced");
    assert_eq!(mode_of(&path), 0o600);

    // While it accepts, a second agent must not steal the path.
    match Listener::unix(&path, 0o600) {
        Err(TransportError::SocketInUse { path: p }) => assert_eq!(p, path),
        other => panic!("expected SocketInUse, got {other:?}"),
    }
    drop(l);

    // A regular file is never deleted.
    let file = dir.path().join("precious");
    std::fs::write(&file, b"data").expect("write");
    match Listener::unix(&file, 0o600) {
        Err(e @ TransportError::NotASocket { .. }) => {
            assert!(e.to_string().contains("not a socket"), "{e}");
        }
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"data");
}

#[test]
fn dropping_a_listener_leaves_a_newer_socket_alone() {
    let dir = TempDir::new("unix-newer");
    let path = dir.path().join("s");
    let old = Listener::unix(&path, 0o600).expect("bind");
    std::fs::remove_file(&path).expect("rm");
    let _newer = StdUnixListener::bind(&path).expect("newer agent");
    drop(old);
    assert!(path.exists(), "the newer agent's socket is still there");
}

#[test]
fn unix_path_too_long_is_a_clear_error() {
    let long = format!("/tmp/{}", "x".repeat(200));
    let e = Listener::unix(&long, 0o600).expect_err("too long");
    assert!(e.to_string().contains("107 bytes"), "{e}");
}

#[test]
fn virtio_target_on_the_host_is_a_unix_socket_connect() {
    let dir = TempDir::new("virtio-host");
    let path = dir.path().join("qemu-channel.sock");
    // Stand-in for QEMU's chardev socket.
    let qemu = StdUnixListener::bind(&path).expect("bind");
    let target: Target = format!("virtio:{}", path.display())
        .parse()
        .expect("target");
    let mut t = target.connect().expect("connect");
    let (mut guest, _) = qemu.accept().expect("accept");
    t.write_all(b"hello\0\xff").expect("write");
    assert_eq!(read_n(&mut guest, 7).expect("read"), b"hello\0\xff");
    guest.write_all(b"back").expect("write");
    assert_eq!(read_n(&mut t, 4).expect("read"), b"back");
}

#[test]
fn connect_errors_name_the_target() {
    let dir = TempDir::new("unix-missing");
    let target: Target = format!("unix:{}/nope.sock", dir.path().display())
        .parse()
        .expect("target");
    match target.connect() {
        Err(e @ TransportError::Connect { .. }) => {
            assert!(e.to_string().contains("nope.sock"), "{e}");
        }
        other => panic!("expected Connect error, got {other:?}"),
    }
}

#[test]
fn tcp_loopback_bytes_both_ways_nodelay_and_half_close() {
    let target: Target = "tcp:127.0.0.1:0".parse().expect("target");
    let listener = Listener::bind(&target, &ListenOptions::default()).expect("bind");
    let Endpoint::Tcp { host, port } = listener.local_endpoint().expect("addr") else {
        panic!("tcp listener reports a tcp endpoint");
    };
    assert_eq!(host, "127.0.0.1");
    assert_ne!(port, 0);
    let client_target: Target = format!("tcp:127.0.0.1:{port}").parse().expect("target");

    let (client, server, peer) = connect_pair(&listener, &client_target);
    let Peer::Tcp(addr) = peer else {
        panic!("tcp peer expected, got {peer:?}");
    };
    assert!(addr.ip().is_loopback());
    for t in [&client, &server] {
        assert_eq!(t.kind(), TransportKind::Tcp);
        let Transport::Tcp(s) = t else {
            panic!("tcp transport expected")
        };
        assert!(s.nodelay().expect("nodelay"), "TCP_NODELAY is set");
    }

    let up = pattern(1 << 20, 3);
    let down = pattern(1 << 20, 4);
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    exchange(
        client.try_clone().expect("clone"),
        c2,
        server.try_clone().expect("clone"),
        s2,
        &up,
        &down,
    );

    // Half-close: the server reads EOF, and can still answer.
    assert!(client.shutdown_write().expect("shutdown"));
    let mut buf = [0u8; 8];
    assert_eq!((&server).read(&mut buf).expect("read"), 0);
    (&server)
        .write_all(b"late")
        .expect("write after peer half-close");
    assert_eq!(read_n(&client, 4).expect("read"), b"late");
}

#[test]
fn tcp_v6_loopback_when_available() {
    let Ok(listener) = Listener::tcp("[::1]:0".parse().expect("addr")) else {
        println!("SKIPPED: no IPv6 loopback on this host");
        return;
    };
    let ep = listener.local_endpoint().expect("addr");
    let target = Target::new(ep);
    assert!(target.to_string().starts_with("tcp:[::1]:"), "{target}");
    let (mut c, mut s, _) = connect_pair(&listener, &target);
    c.write_all(b"v6").expect("write");
    assert_eq!(read_n(&mut s, 2).expect("read"), b"v6");
}

#[test]
fn tcp_connection_refused_is_a_connect_error() {
    // Take a free port, release it, connect to it: refused (on loopback only).
    let l = Listener::tcp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let Endpoint::Tcp { port, .. } = l.local_endpoint().expect("addr") else {
        panic!("tcp endpoint expected")
    };
    drop(l);
    let target: Target = format!("tcp:127.0.0.1:{port}").parse().expect("target");
    match target.connect() {
        Err(TransportError::Connect { source, .. }) => {
            assert_eq!(source.kind(), ErrorKind::ConnectionRefused);
        }
        other => panic!("expected refused, got {other:?}"),
    }
}

#[test]
fn nonblocking_mode_and_wait_readable() {
    let dir = TempDir::new("unix-nb");
    let path = dir.path().join("s");
    let listener = Listener::unix(&path, 0o600).expect("bind");
    listener.set_nonblocking(true).expect("nb");
    assert_eq!(
        listener.accept().expect_err("no client yet").kind(),
        ErrorKind::WouldBlock
    );
    listener.set_nonblocking(false).expect("blocking");
    let target = Target::new(listener.local_endpoint().expect("ep"));
    let (client, server, _) = connect_pair(&listener, &target);

    server.set_nonblocking(true).expect("nb");
    let mut buf = [0u8; 16];
    assert_eq!(
        (&server).read(&mut buf).expect_err("no data").kind(),
        ErrorKind::WouldBlock
    );
    let t0 = Instant::now();
    assert!(
        !server
            .wait_readable(Some(Duration::from_millis(50)))
            .expect("wait")
    );
    assert!(t0.elapsed() >= Duration::from_millis(45));

    // Write through a clone and `&Transport`; read on the original.
    let clone = client.try_clone().expect("clone");
    (&clone).write_all(b"xyz").expect("write");
    assert!(
        server
            .wait_readable(Some(Duration::from_secs(5)))
            .expect("wait")
    );
    assert_eq!((&server).read(&mut buf).expect("read"), 3);
    assert_eq!(&buf[..3], b"xyz");

    // Closing every client handle: EOF, not an error, even in non-blocking mode.
    drop(client);
    drop(clone);
    assert!(
        server
            .wait_readable(Some(Duration::from_secs(5)))
            .expect("wait")
    );
    assert_eq!((&server).read(&mut buf).expect("eof"), 0);
}
