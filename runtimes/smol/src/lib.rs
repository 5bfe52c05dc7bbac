//! # tuppence-smol — async client and server drivers on smol / async-io
//!
//! Drives the sans-IO [`tuppence::link`] machines over any
//! `AsyncRead + AsyncWrite + Unpin + Send` byte stream: `Async<UnixStream>` (open it with
//! [`connect_unix`], which sizes its buffers for transfers), `Async<TcpStream>`
//! ([`connect_tcp`]), or `Async<File>` on a pty or serial fd (configure a serial port
//! with serial2, then wrap a dup'd `File` of its fd — never `Async<SerialPort>`, whose
//! reads block for up to their timeout).
//!
//! * **Client**: [`Session::new`] spawns a driver task that owns the stream and the
//!   `Client` machine; the cloneable [`Session`] runs commands ([`RunHandle`], a `Stream`
//!   of [`RunEvent`]s), transfers files ([`Session::inject`], [`Session::extract`]),
//!   subscribes to event sources ([`Monitor`]) and quits the agent — many at once.
//!   While a caller waits for the session in its own `block_on`, its thread reads the
//!   link itself (the driver task is left alone and its thread gives async-io's reactor
//!   up), so bulk output costs no hand-off between threads.
//!   [`Session::with_driver`] returns the driver future instead, for another executor,
//!   or to poll it beside your own work in one `block_on` (the second example), with no
//!   task and no executor thread at all.
//! * **Server**: [`serve`] runs one agent connection, handing requests to an [`App`] that
//!   answers through a [`Responder`]; [`Responder::output`] waits while the link is
//!   congested.
//!
//! `examples/run.rs` runs one command over a unix socket; `examples/agent.rs` is a small
//! shell-running agent to try it against.
//!
//! ```no_run
//! use tuppence::link::{ClientConfig, Command, Outcome};
//! use tuppence_smol::{RunEvent, Session};
//!
//! smol::block_on(async {
//!     // Socket buffers sized for transfers (see `connect_unix`).
//!     let stream = tuppence_smol::connect_unix("/run/tuppence.sock").await?;
//!     let session = Session::new(stream, ClientConfig::default()).await?;
//!     // Nothing to feed it: its stdin ends with the request (`run` keeps it open).
//!     let mut run = session.run_without_stdin(Command::new("uname -a")).await?;
//!     while let Some(event) = run.next().await {
//!         match event {
//!             RunEvent::Stdout(data) => print!("{}", String::from_utf8_lossy(&data)),
//!             RunEvent::Stderr(data) => eprint!("{}", String::from_utf8_lossy(&data)),
//!             RunEvent::Finished(outcome) => assert_eq!(outcome, Outcome::Exited(0)),
//!         }
//!     }
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same with the driver polled on the caller's thread, beside the work:
//!
//! ```no_run
//! use futures_lite::future;
//! use tuppence::link::{ClientConfig, Command};
//! use tuppence_smol::{Error, Session};
//!
//! let output = smol::block_on(async {
//!     let stream = tuppence_smol::connect_unix("/run/tuppence.sock").await?;
//!     let (session, driver) = Session::with_driver(stream, ClientConfig::default());
//!     let work = async { session.output(Command::new("cat /var/log/big.log")).await };
//!     // The driver ends only with the link (or once every handle is gone).
//!     let link = async { Err(driver.await.err().unwrap_or(Error::Closed)) };
//!     Ok::<_, Box<dyn std::error::Error>>(future::or(work, link).await?)
//! })?;
//! println!("{} bytes", output.stdout.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Guarantees
//!
//! * **Bounded memory.** Each transaction buffers at most 256 events or 1 MiB of data,
//!   counting what its handle took from the driver in one batch but has not handed out
//!   yet (plus the machine's own bounded queues, see [`tuppence::link::Limits`]); a consumer
//!   that stops reading makes the driver stop reading the transport. Writers wait while
//!   the machine's transmit buffer is over its limit.
//! * **No hangs on a dead link.** End of stream, an I/O error, keepalive expiry (detected
//!   by an `async_io::Timer` at the machine's `poll_timeout`), or the driver being dropped
//!   wake every waiter: commands finish with `Outcome::LinkLost`, other operations fail
//!   with a typed [`Error`].
//! * **No panics** on any input: peer garbage is the machine's typed error.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod chat;
mod client;
mod connect;
mod error;
mod ops;
mod pump;
mod server;

pub use chat::Chat;
pub use client::{DEFAULT_CONNECT_TIMEOUT, Driver, Session};
pub use connect::{connect_tcp, connect_unix};
pub use error::{Error, errno_text};
pub use ops::{Monitor, RunControl, RunHandle};
pub use server::{App, Responder, serve};
/// What a session reports, the same types in every client adapter (defined in the core).
pub use tuppence::link::{ConnectInfo, MonitorEvent, Output, RunEvent};
/// The matcher and errors of [`Chat`], re-exported.
pub use tuppence_expect::{
    ChatError, DEFAULT_LIMIT as CHAT_LIMIT, Match, Pattern, PatternError, Patterns,
};
