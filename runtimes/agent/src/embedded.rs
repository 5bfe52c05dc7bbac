//! An agent embedded in the calling process, spoken to over a unix socket pair: what the
//! `local` target is, for the CLI and the Python package alike (so neither carries its own
//! copy).
//!
//! The agent runs on a thread of its own; the commands it starts are children of this
//! process. [`EmbeddedAgent`] stops it when dropped: every command it started is killed
//! and reaped and partial injected files are removed, within a bounded time.

use std::io;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tuppence_transport::Transport;

use crate::serve::{LinkDaemon, LinkDaemonConfig, RunEnd, StopHandle};

/// How long dropping an [`EmbeddedAgent`] waits for it to stop.
const SHUTDOWN: Duration = Duration::from_secs(3);

/// A running embedded agent (see the module docs).
pub struct EmbeddedAgent {
    stop: StopHandle,
    thread: Option<JoinHandle<io::Result<RunEnd>>>,
}

impl EmbeddedAgent {
    /// Starts an agent with `config` serving one connection, and returns it with the
    /// client's end of the socket pair. `config.exit_when_idle` is set: the agent returns
    /// when that connection closes.
    pub fn start(config: LinkDaemonConfig) -> io::Result<(EmbeddedAgent, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        tuppence_transport::tune_socket_buffers(&ours);
        let mut agent = LinkDaemon::new(LinkDaemonConfig {
            exit_when_idle: true,
            ..config
        })?;
        agent.add_connection(Transport::Unix(theirs), "local")?;
        let stop = agent.stop_handle()?;
        let thread = std::thread::Builder::new()
            .name("tuppence-local-agent".into())
            .spawn(move || agent.run())?;
        Ok((
            EmbeddedAgent {
                stop,
                thread: Some(thread),
            },
            ours,
        ))
    }
}

impl std::fmt::Debug for EmbeddedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedAgent").finish_non_exhaustive()
    }
}

impl Drop for EmbeddedAgent {
    /// Stops the agent (which kills and reaps every command it started and removes partial
    /// injected files) and waits a bounded time for it.
    fn drop(&mut self) {
        self.stop.stop();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + SHUTDOWN;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!("the embedded agent did not stop in time");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match thread.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the embedded agent failed"),
            Err(_) => tracing::warn!("the embedded agent panicked"),
        }
    }
}
