//! Opening a socket for a session, tuned as `tuppence_transport` tunes every socket it
//! opens for the other adapters.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;

use async_io::Async;
use tuppence_transport::tune_socket_buffers;

/// Connects to an agent's unix socket, with [`tuppence_transport::SOCKET_BUFFER`]-sized
/// socket buffers.
///
/// Why not `Async::<UnixStream>::connect` alone: with the kernel's default buffers
/// (208 KiB) a transfer wakes the pump four times as often, each a thread switch when the
/// driver runs on another thread than the caller (measured in the e2e bench: smol inject
/// 0.68 → 0.81 of a raw socket copy with two threads, 0.66 → 0.89 with one).
pub async fn connect_unix(path: impl AsRef<Path>) -> io::Result<Async<UnixStream>> {
    let stream = Async::<UnixStream>::connect(path).await?;
    tune_socket_buffers(stream.get_ref());
    Ok(stream)
}

/// Connects to an agent's TCP address, tuned as [`connect_unix`], with `TCP_NODELAY`
/// (packets are whole when written; Nagle would only delay answers).
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<Async<TcpStream>> {
    let stream = Async::<TcpStream>::connect(addr).await?;
    tune_socket_buffers(stream.get_ref());
    stream.get_ref().set_nodelay(true)?;
    Ok(stream)
}
