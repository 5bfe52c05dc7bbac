//! The connect helpers size the socket buffers as `tuppence_transport` does for the other
//! adapters (a plain `Async::connect` keeps the kernel's defaults).

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use async_io::Async;

fn sockopt(fd: RawFd, opt: libc::c_int) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized option read into an int of that size.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &raw mut len) };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    usize::try_from(v).unwrap()
}

/// What a socket of `fd`'s kind gets when asked for the transport's size.
fn tuned_size(fd: &impl std::os::fd::AsFd) -> (usize, usize) {
    tuppence_transport::tune_socket_buffers(fd);
    let raw = fd.as_fd().as_raw_fd();
    (sockopt(raw, libc::SO_SNDBUF), sockopt(raw, libc::SO_RCVBUF))
}

#[test]
fn connect_unix_sizes_the_socket_buffers_as_the_transport_does() {
    let dir = std::env::temp_dir().join(format!("tuppence-smol-connect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let plain = smol::block_on(Async::<UnixStream>::connect(&path)).unwrap();
    let ours = smol::block_on(tuppence_smol::connect_unix(&path)).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let want = tuned_size(&a);
    drop((a, b));
    let fd = ours.get_ref().as_raw_fd();
    assert_eq!(
        (sockopt(fd, libc::SO_SNDBUF), sockopt(fd, libc::SO_RCVBUF)),
        want
    );
    let plain_snd = sockopt(plain.get_ref().as_raw_fd(), libc::SO_SNDBUF);
    assert!(
        want.0 > plain_snd,
        "tuned send buffer {} not above the default {plain_snd}",
        want.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_tcp_sizes_the_socket_buffers_and_sets_nodelay() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let ours = smol::block_on(tuppence_smol::connect_tcp(addr)).unwrap();
    let other = std::net::TcpStream::connect(addr).unwrap();
    let want = tuned_size(&other);
    let fd = ours.get_ref().as_raw_fd();
    assert_eq!(
        (sockopt(fd, libc::SO_SNDBUF), sockopt(fd, libc::SO_RCVBUF)),
        want
    );
    assert!(ours.get_ref().nodelay().unwrap());
}
