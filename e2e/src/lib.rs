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
use std::thread;

use tuppence_agent::serve::{LinkDaemon, LinkDaemonConfig, StopHandle};
use tuppence_transport::Transport;

/// A running agent; stopped (its commands killed) when dropped.
pub struct LocalAgent {
    stop: StopHandle,
    thread: Option<thread::JoinHandle<()>>,
}

impl LocalAgent {
    /// Starts the agent; returns it and the client's end of the socket pair.
    pub fn start() -> (LocalAgent, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        tuppence_transport::tune_socket_buffers(&ours);
        let mut agent = LinkDaemon::new(LinkDaemonConfig {
            exit_when_idle: true,
            audit: false,
            ..LinkDaemonConfig::default()
        })
        .expect("agent");
        agent
            .add_connection(Transport::Unix(theirs), "test")
            .expect("add connection");
        let stop = agent.stop_handle().expect("stop handle");
        let thread = thread::spawn(move || {
            let _ = agent.run();
        });
        (
            LocalAgent {
                stop,
                thread: Some(thread),
            },
            ours,
        )
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The user running the tests (the agent runs commands as them).
pub fn me() -> String {
    let user = tuppence_agent::User::current().expect("the current user has a passwd entry");
    String::from_utf8_lossy(user.name()).into_owned()
}
