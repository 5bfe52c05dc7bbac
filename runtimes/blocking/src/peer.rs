//! A peer that lives in this process and runs only when its session steps it: an agent
//! embedded in the client (`tuppence_agent::embedded::EmbeddedAgent::start_stepped`).
//!
//! Why: the `local` target's agent on a thread of its own cost a thread start and a
//! hand-off between threads at every request and answer, a third of a short command's
//! start-up. A session given such a peer ([`crate::Session::with_stepped_peer`]) steps it
//! where it would otherwise wait for input, and reads what it answered without waiting.
//! It hands the peer to a thread of its own ([`SteppedPeer::run_alone`]) at the moment it
//! starts its own reader thread: from then on both ends run by themselves, as over any
//! other stream.

use std::io;
use std::time::Duration;

/// A peer the session runs while it waits for it (see the module docs).
pub trait SteppedPeer: Send {
    /// Does the peer's work that is ready, waiting at most `limit` for some: afterwards
    /// whatever it answered is in the session's stream. An error means the peer is gone
    /// (its end of the stream closed); the session ends with it.
    fn step(&mut self, limit: Duration) -> io::Result<()>;
    /// From now on the peer runs without being stepped (on a thread of its own).
    fn run_alone(&mut self) -> io::Result<()>;
}
