//! # tuppence-mio — the mio runtime adapter
//!
//! Drives any sans-IO [`tuppence::Machine`] — the link protocol's `Client` and `Server`,
//! the sniff protocol's `Agent` — over non-blocking file descriptors: sockets, serial
//! ports (a dup'd fd configured by serial2), vsock streams, virtio ports.
//!
//! * [`LinkIo`] binds one machine to one transport: reads into a reused buffer, feeds the
//!   machine, respects its backpressure, writes what it transmits, and tracks readiness
//!   (mio is edge-triggered, so work stopped by backpressure must resume without a new
//!   event).
//! * [`EventLoop`] runs any number of connections in one `mio::Poll`, each with the
//!   application's state for it ([`Connection`]), with timers taken from the machines'
//!   `poll_timeout`, and lets the application register extra fds (child pipes, pidfds,
//!   event sources) with a tag — the one loop both of the agent's daemons (`tuppence
//!   serve`, `tuppence sniff serve`) are built on.
//! * [`run_client`] is the simplest use: one client connection driven to completion.
//!
//! ```no_run
//! use std::os::unix::net::UnixStream;
//! use tuppence::link::{Client, ClientConfig, ClientEvent, Command};
//! use tuppence_mio::{run_client, Flow};
//!
//! let stream = UnixStream::connect("/run/tuppence.sock").unwrap();
//! // Socket buffers sized for transfers, as `tuppence_transport::Target::connect` does.
//! tuppence_transport::tune_socket_buffers(&stream);
//! stream.set_nonblocking(true).unwrap();
//! let mut client = Client::new(ClientConfig::default(), std::time::Instant::now());
//! let xid = client.run(Command::new("uname -a")).unwrap();
//! run_client(stream, client, |_client, event| match event {
//!     ClientEvent::Output { data, .. } => { print!("{}", String::from_utf8_lossy(&data)); Flow::Continue }
//!     ClientEvent::Finished { xid: x, .. } if x == xid => Flow::Stop,
//!     _ => Flow::Continue,
//! }).unwrap();
//! ```

mod client;
mod event_loop;
mod link_io;

pub use client::{Flow, RunClientError, run_client};
pub use event_loop::{ConnId, Connection, Ended, EventLoop, ExtraId, ExtraReady, StopHandle};
pub use link_io::{LinkIo, LinkIoError};
