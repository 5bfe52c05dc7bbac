//! The sniff task protocol over real processes and transports.
//!
//! The core crate's [`tuppence::sniff`] machines decide *what* happens: the
//! [`Agent`](tuppence::sniff::Agent) owns the task table and the order of answers, the
//! [`Requester`](tuppence::sniff::Requester) builds requests and decodes answers. This module
//! does the I/O:
//!
//! * [`runner`] — [`TaskRunner`]: starts each task's process in its own process group, reads
//!   its stdout up to the cap, reaps it through a pidfd, kills whole groups on abort. Any
//!   number of tasks in one thread.
//! * [`daemon`] — the agent side over transports, on the same event loop as `tuppence
//!   serve`: [`serve()`] for one connected stream, [`SniffDaemon`] / [`serve_listener`] for
//!   a listener (one agent per connection).
//! * [`client`] — the requesting side, blocking: [`Client`] for several requests on one
//!   connection, [`request`] for one request with a timeout.
//! * [`cli`] — argument parsing and answer printing (human text or JSON) for a `sniff`
//!   command line.
//!
//! ```no_run
//! use std::time::Duration;
//! use tuppence::sniff::{TaskId, TaskResult};
//! use tuppence_agent::sniff::{SniffRequest, request};
//!
//! let target = "unix:/run/tuppence-sniff.sock".parse()?;
//! let result = request(&target, TaskId::from(7), &SniffRequest::nop(), Duration::from_secs(5))?;
//! assert_eq!(result, TaskResult::Nop);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cli;
pub mod client;
pub mod daemon;
pub mod runner;

pub use client::{Client, ClientError, SniffRequest, request};
pub use daemon::{
    ServeError, SniffDaemon, SniffDaemonConfig, StopHandle, serve, serve_listener,
    serve_listener_until, serve_until,
};
pub use runner::{RunnerConfig, StartError, TaskRunner, TaskStderr};
