//! An agent embedded in the calling process, spoken to over a unix socket pair: what the
//! `local` target is, for the CLI and the Python package alike (so neither carries its own
//! copy).
//!
//! The agent runs on a thread of its own; the commands it starts are children of this
//! process. [`EmbeddedAgent`] stops it when dropped: every command it started is killed
//! and reaped and partial injected files are removed, within a bounded time.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use tuppence_transport::Transport;

use crate::serve::{LinkDaemon, LinkDaemonConfig, RunEnd, StopHandle};

/// How long dropping an [`EmbeddedAgent`] waits for it to stop.
const SHUTDOWN: Duration = Duration::from_secs(3);

/// A running embedded agent (see the module docs).
pub struct EmbeddedAgent {
    stop: StopHandle,
    thread: Option<JoinHandle<io::Result<RunEnd>>>,
    /// Disconnected when the agent's thread ends (its sender is dropped with the thread's
    /// closure, also on a panic): drop waits on it instead of polling the thread, so a
    /// short-lived process (`tuppence run -- true`) exits as soon as the agent has stopped.
    /// In a mutex only so that the agent stays `Sync` (a receiver is not); drop has `&mut`.
    ended: Mutex<Receiver<()>>,
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
        let (ending, ended) = sync_channel::<()>(0);
        let thread = std::thread::Builder::new()
            .name("tuppence-local-agent".into())
            .spawn(move || {
                let _ending = ending;
                agent.run()
            })?;
        Ok((
            EmbeddedAgent {
                stop,
                thread: Some(thread),
                ended: Mutex::new(ended),
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
        let ended = self
            .ended
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(SHUTDOWN) {
            tracing::warn!("the embedded agent did not stop in time");
            return;
        }
        match thread.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the embedded agent failed"),
            Err(_) => tracing::warn!("the embedded agent panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The Python package shares a connection (and its agent) between threads.
    #[test]
    fn the_agent_is_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<EmbeddedAgent>();
    }

    /// Dropping the agent returns as soon as its thread has ended. It used to poll the
    /// thread every 5 ms, so every drop took at least 5 ms (a third of a `tuppence run --
    /// true` on the `local` target).
    #[test]
    fn drop_returns_as_soon_as_the_agent_has_stopped() {
        let mut fastest = Duration::MAX;
        for _ in 0..10 {
            let (agent, ours) = EmbeddedAgent::start(LinkDaemonConfig {
                cgroups: false,
                ..LinkDaemonConfig::default()
            })
            .expect("start");
            let t = Instant::now();
            drop(agent);
            fastest = fastest.min(t.elapsed());
            drop(ours);
        }
        assert!(
            fastest < Duration::from_millis(5),
            "the fastest of 10 drops took {fastest:?}"
        );
    }
}
