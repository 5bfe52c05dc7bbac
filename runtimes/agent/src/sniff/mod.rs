//! The agent side of the sniff task protocol, over real processes and transports.
//!
//! The core crate's [`tuppence::sniff`] machines decide *what* happens: the
//! [`Agent`](tuppence::sniff::Agent) owns the task table and the order of answers. This
//! module does the I/O:
//!
//! * [`runner`] — [`TaskRunner`]: starts each task's process in its own process group, reads
//!   its stdout up to the cap, reaps it through a pidfd, kills whole groups on abort. Any
//!   number of tasks in one thread.
//! * [`daemon`] — the sniff daemon's policy, on the same event loop as `tuppence serve`:
//!   [`serve()`] for one connected stream, [`SniffDaemon`] / [`serve_listener`] for a
//!   listener (one agent per connection).
//!
//! The requesting side is a client: `tuppence_blocking::sniff`. The command line
//! (`tuppence sniff serve|request`) is in the `tuppence` binary.

pub mod daemon;
pub mod runner;

pub use daemon::{
    ServeError, SniffDaemon, SniffDaemonConfig, StopHandle, serve, serve_listener,
    serve_listener_until, serve_until,
};
pub use runner::{RunnerConfig, StartError, TaskRunner, TaskStderr};
