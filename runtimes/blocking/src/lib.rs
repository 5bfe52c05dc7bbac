//! # tuppence-blocking — the blocking client adapter
//!
//! A client [`Session`] on std threads and blocking I/O: a reader and a writer thread per
//! session; callers queue requests from their own threads and never write themselves, so
//! reading never waits on writing (see the `session` module). Works over any [`Stream`] —
//! unix and TCP sockets, `serial2::SerialPort`, vsock streams (via `tuppence-transport`)
//! — with no executor.
//!
//! ```no_run
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//! use tuppence::link::{ClientConfig, Command, Outcome};
//! use tuppence_blocking::Session;
//!
//! let stream = UnixStream::connect("/run/tuppence.sock")?;
//! // Socket buffers sized for transfers, as `tuppence_transport::Target::connect` does.
//! tuppence_transport::tune_socket_buffers(&stream);
//! let session = Session::new(stream, ClientConfig::default(), Duration::from_secs(10))?;
//! let out = session.output(Command::new("uname -a"))?;
//! assert_eq!(out.outcome, Outcome::Exited(0));
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Transactions are independent: several threads may run commands, inject and extract on
//! one session at once. A command with a timeout that the agent does not end within it
//! plus [`tuppence::link::ClientConfig::deadline_grace`] ends as timed out all the same.
//! [`Session::extract_to`] writes a local path as `cp` would; an [`AbortHandle`] aborts
//! transfers from another thread (a Ctrl-C handler). Each transaction's events are buffered up to a bound; a consumer
//! that stops reading eventually stops the reader thread (and, through the transport,
//! the agent) rather than growing memory.
//!
//! [`sniff`] is the requesting side of the other protocol, the sniff background tasks: a
//! [`sniff::SniffClient`] on one connection, or [`sniff::request`] for one request.

mod chat;
mod error;
mod ops;
mod peer;
mod session;
pub mod sniff;
mod stream;

pub use chat::Chat;
pub use error::{Error, errno_text};
pub use ops::{Monitor, Run};
pub use peer::SteppedPeer;
pub use session::{AbortHandle, Reading, Session};
pub use stream::Stream;
/// What a session reports, the same types in every client adapter (defined in the core).
pub use tuppence::link::{ConnectInfo, MonitorEvent, Output, RunEvent};
/// The matcher and errors of [`Chat`], re-exported.
pub use tuppence_expect::{
    ChatError, DEFAULT_LIMIT as CHAT_LIMIT, Match, Pattern, PatternError, Patterns,
};
