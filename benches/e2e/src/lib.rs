//! `tuppence-e2e`: the whole stack end to end — every client adapter against the real
//! agent — kept out of the core crate, whose dependency tree (normal and dev) names no
//! runtime crate.
//!
//! * `tests/`: behaviour every adapter must share (client deadlines, `extract_to`, a 50 MB
//!   stdin flood into `cat` with a slow consumer), each adapter against [`LocalAgent`].
//! * `benches/e2e`: the end-to-end figures (`cargo bench --bench e2e` from the repository
//!   root; see `benches/e2e/README.md`).
//!
//! This library is what they share: the agent `tuppence serve` runs, started in the test
//! process on one end of a socket pair (as the CLI's `local` target does).

use std::os::unix::net::UnixStream;

use tuppence_agent::embedded::EmbeddedAgent;
use tuppence_agent::serve::LinkDaemonConfig;

/// The embedded agent the tests and the bench's in-process checks use (what the CLI's
/// `local` target runs); stopped, its commands killed, when dropped.
pub type LocalAgent = EmbeddedAgent;

/// Starts a quiet embedded agent; returns it and the client's end of the socket pair.
pub fn local_agent() -> (LocalAgent, UnixStream) {
    EmbeddedAgent::start(LinkDaemonConfig {
        audit: false,
        ..LinkDaemonConfig::default()
    })
    .expect("embedded agent")
}

/// The user running the tests (the agent runs commands as them).
pub fn me() -> String {
    let user = tuppence_agent::User::current().expect("the current user has a passwd entry");
    String::from_utf8_lossy(user.name()).into_owned()
}
