//! An agent embedded in the calling process, spoken to over a unix socket pair: what the
//! `local` target is, for the CLI and the Python package alike (so neither carries its own
//! copy).
//!
//! [`EmbeddedAgent::start`]'s agent runs on a thread of its own (the Python package's);
//! [`EmbeddedAgent::start_stepped`]'s on its client's thread until it moves to one (the
//! CLI's, below). The commands either starts are children of this process. [`EmbeddedAgent`] stops it when dropped: every command it started is killed
//! and reaped and partial injected files are removed, within a bounded time.
//!
//! Either agent makes its commands' cgroups directly in this process's own cgroup
//! (`LinkDaemonConfig::cgroups_in_own`): a subtree would be one more cgroup to make and
//! remove for every `tuppence run`.
//!
//! A started agent sets itself up (its event loop) on its thread while the caller sets up
//! its cgroups and opens its session over the socket: the three overlap instead of adding
//! up. The hello is answered once the agent is ready; if it cannot get ready, its end of
//! the socket closes and [`EmbeddedAgent::setup_error`] says why. The agent takes the
//! cgroups after that answer (`LinkDaemonConfig::defer_cgroups`,
//! `LinkDaemon::cgroups_made_by`), before any command starts.
//!
//! # An agent stepped by its client
//!
//! [`EmbeddedAgent::start_stepped`] starts no thread: the agent runs only when the client
//! that waits for it calls [`Stepper::step`] (one turn of its loop, `LinkDaemon::turn`),
//! on the client's thread. A short command (`tuppence run -- true`) so runs on one thread
//! from start to end: no thread to start and no hand-off between threads for the hello,
//! the request, the status and the teardown (0.3 ms, an eighth of it, A/B in
//! `benches/e2e/README.md`). The agent is set up on the calling thread, so a set-up
//! failure is `start_stepped`'s error. The
//! client moves the agent to a thread of its own ([`Stepper::run_alone`]) as soon as it
//! stops waiting on it alone: when data flows, when it starts threads of its own (the
//! blocking session's reader thread). Dropping the agent while it is still stepped runs
//! its shutdown on the dropping thread.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tuppence_transport::Transport;

use crate::serve::{LinkDaemon, LinkDaemonConfig, RunEnd, StopHandle};

/// How long dropping an [`EmbeddedAgent`] waits for it to stop, and the longest anyone
/// waits for it to finish setting up.
const SHUTDOWN: Duration = Duration::from_secs(3);

/// A running embedded agent (see the module docs).
pub struct EmbeddedAgent {
    /// How the agent's set-up went, once its thread has said.
    setup: Mutex<Setup>,
    /// How the agent ended, sent by its thread once the agent is dropped (its commands
    /// reaped, its cgroups removed), or disconnected if the thread panicked. Drop waits on
    /// this, not on the thread's exit: what the thread does after (its own teardown) needs
    /// nobody, so a short-lived process (`tuppence run -- true`) exits as soon as the agent
    /// has cleaned up. In a mutex only so that the agent stays `Sync` (a receiver is not);
    /// drop has `&mut`.
    ended: Mutex<Receiver<io::Result<RunEnd>>>,
    /// [`EmbeddedAgent::start_stepped`]: where the agent is (see the module docs).
    stepped: Option<Arc<Mutex<Stepped>>>,
}

/// Where a stepped agent is.
enum Stepped {
    /// On no thread: it runs when [`Stepper::step`] is called. `ending` is for the thread
    /// it moves to, as [`EmbeddedAgent::start`]'s.
    Here {
        agent: Box<LinkDaemon>,
        ending: SyncSender<io::Result<RunEnd>>,
        stop: StopHandle,
    },
    /// On a thread of its own ([`Stepper::run_alone`]): it ends as a started agent does.
    Alone,
    /// It ended while stepped (its connection closed, a quit, a failure): it has shut
    /// down, and its thread never existed.
    Ended,
}

/// The client's handle on an agent started with [`EmbeddedAgent::start_stepped`]: it runs
/// the agent while it waits for it, and moves it to a thread when it stops doing that.
pub struct Stepper {
    stepped: Arc<Mutex<Stepped>>,
}

impl std::fmt::Debug for Stepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stepper").finish_non_exhaustive()
    }
}

impl Stepper {
    /// One turn of the agent's loop, waiting at most `limit` for something to do (a
    /// request, a command's output or exit, a deadline). Does nothing once the agent runs
    /// on its own thread or has ended. An error is the agent's loop failing: the agent is
    /// gone then, and its end of the socket closed.
    pub fn step(&self, limit: Duration) -> io::Result<()> {
        let mut stepped = self.stepped.lock().unwrap_or_else(PoisonError::into_inner);
        let Stepped::Here { agent, .. } = &mut *stepped else {
            return Ok(());
        };
        let until = Instant::now().checked_add(limit);
        match agent.turn(until) {
            Ok(None) => Ok(()),
            // Shut down already (it was told to end, or its connection closed).
            Ok(Some(_)) => {
                *stepped = Stepped::Ended;
                Ok(())
            }
            Err(e) => {
                *stepped = Stepped::Ended;
                Err(e)
            }
        }
    }

    /// Moves the agent to a thread of its own, which runs it until it ends as
    /// [`EmbeddedAgent::start`]'s thread does; nobody steps it any more. Nothing if it
    /// runs there already or has ended. An error if the thread cannot be started: the
    /// agent has been shut down then.
    pub fn run_alone(&self) -> io::Result<()> {
        let mut stepped = self.stepped.lock().unwrap_or_else(PoisonError::into_inner);
        let Stepped::Here { .. } = &*stepped else {
            return Ok(());
        };
        let Stepped::Here {
            mut agent,
            ending,
            stop,
        } = std::mem::replace(&mut *stepped, Stepped::Alone)
        else {
            return Ok(());
        };
        // Handed over once the thread exists, so that the agent stays here to be shut
        // down if it cannot start.
        let (give, take) = sync_channel::<(Box<LinkDaemon>, SyncSender<io::Result<RunEnd>>)>(1);
        let spawned = std::thread::Builder::new()
            .name("tuppence-local-agent".into())
            .spawn(move || {
                if let Ok((agent, ending)) = take.recv() {
                    serve_and_report(*agent, &ending);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = give.send((agent, ending));
                Ok(())
            }
            Err(e) => {
                stop.stop();
                let _ = agent.run();
                *stepped = Stepped::Ended;
                Err(e)
            }
        }
    }
}

/// Runs an agent until it ends, drops it (its commands reaped, its cgroups removed) and
/// only then says how it ended (see `EmbeddedAgent::ended`).
fn serve_and_report(mut agent: LinkDaemon, ending: &SyncSender<io::Result<RunEnd>>) {
    let end = agent.run();
    drop(agent);
    let _ = ending.send(end);
}

/// The outcome of the agent thread's set-up, as far as it is known.
enum Setup {
    /// Not heard yet: the thread sends its stop handle, or why it could not start.
    Pending(Receiver<io::Result<StopHandle>>),
    Ready(StopHandle),
    /// The set-up failed (the error, until [`EmbeddedAgent::setup_error`] takes it), or
    /// the thread ended without saying.
    Failed(Option<io::Error>),
}

impl Setup {
    /// Waits (at most `wait`) for the thread's word if it has not come yet.
    fn settle(&mut self, wait: Duration) {
        if let Setup::Pending(rx) = self {
            *self = match rx.recv_timeout(wait) {
                Ok(Ok(stop)) => Setup::Ready(stop),
                Ok(Err(e)) => Setup::Failed(Some(e)),
                Err(RecvTimeoutError::Disconnected) => Setup::Failed(None),
                Err(RecvTimeoutError::Timeout) => return,
            };
        }
    }
}

impl EmbeddedAgent {
    /// Starts an agent with `config` serving one connection, and returns it with the
    /// client's end of the socket pair at once: the agent sets itself up on its thread
    /// meanwhile (see the module docs). `config.exit_when_idle` is set: the agent returns
    /// when that connection closes. Only failing to create the socket pair or the thread
    /// is an error here.
    ///
    /// With `config.cgroups`, the calling thread sets the agent's cgroups up before it
    /// returns, while the agent's thread starts (which took longer); the agent takes them
    /// once it has answered the hello. Made on the agent's thread after that answer, they
    /// had delayed the first request by about 0.2 ms.
    pub fn start(config: LinkDaemonConfig) -> io::Result<(EmbeddedAgent, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        tuppence_transport::tune_socket_buffers(&ours);
        let (ready, setup) = sync_channel::<io::Result<StopHandle>>(1);
        let (ending, ended) = sync_channel::<io::Result<RunEnd>>(1);
        let cgroups = config.cgroups;
        let (tree, made) = sync_channel(1);
        // Never joined: it has nothing left to do once it has said how the agent ended
        // (see `ended`).
        std::thread::Builder::new()
            .name("tuppence-local-agent".into())
            .spawn(move || {
                let prepared = LinkDaemon::new(LinkDaemonConfig {
                    exit_when_idle: true,
                    defer_cgroups: true,
                    cgroups_in_own: true,
                    ..config
                })
                .and_then(|mut agent| {
                    if cgroups {
                        agent.cgroups_made_by(made);
                    }
                    agent.add_connection(Transport::Unix(theirs), "local")?;
                    let stop = agent.stop_handle()?;
                    Ok((agent, stop))
                });
                match prepared {
                    Ok((agent, stop)) => {
                        let _ = ready.send(Ok(stop));
                        serve_and_report(agent, &ending);
                    }
                    Err(e) => {
                        let again = io::Error::new(e.kind(), e.to_string());
                        let _ = ready.send(Err(e));
                        let _ = ending.send(Err(again));
                    }
                }
            })?;
        if cgroups {
            // An agent that could not start drops the receiver: the cgroups are removed
            // with the message that could not be delivered.
            let _ = tree.send(crate::cgroup::CgroupTree::create_flat_lazy());
        }
        Ok((
            EmbeddedAgent {
                setup: Mutex::new(Setup::Pending(setup)),
                ended: Mutex::new(ended),
                stepped: None,
            },
            ours,
        ))
    }

    /// Starts an agent with `config` serving one connection, on no thread: it runs when
    /// the returned [`Stepper`] is stepped, on the stepping thread, until the stepper moves
    /// it to a thread of its own (see the module docs). Returns with the client's end of
    /// the socket pair. The agent is set up here (its event loop and, with
    /// `config.cgroups`, its first command's cgroup), so a set-up failure is this call's
    /// error.
    /// `config.exit_when_idle` is set, as with [`EmbeddedAgent::start`].
    pub fn start_stepped(
        config: LinkDaemonConfig,
    ) -> io::Result<(EmbeddedAgent, UnixStream, Stepper)> {
        let (ours, theirs) = UnixStream::pair()?;
        tuppence_transport::tune_socket_buffers(&ours);
        let mut agent = LinkDaemon::new(LinkDaemonConfig {
            exit_when_idle: true,
            cgroups_in_own: true,
            ..config
        })?;
        agent.add_connection(Transport::Unix(theirs), "local")?;
        let stop = agent.stop_handle()?;
        let (ending, ended) = sync_channel::<io::Result<RunEnd>>(1);
        let stepped = Arc::new(Mutex::new(Stepped::Here {
            agent: Box::new(agent),
            ending,
            stop: stop.clone(),
        }));
        Ok((
            EmbeddedAgent {
                setup: Mutex::new(Setup::Ready(stop)),
                ended: Mutex::new(ended),
                stepped: Some(stepped.clone()),
            },
            ours,
            Stepper { stepped },
        ))
    }

    /// Why the agent could not get ready (its cgroups or event loop could not be set up,
    /// or its thread ended early), waiting a bounded time for its word: for the caller
    /// whose session over the socket failed, to say the real cause. `None` once the agent
    /// is ready, and after the error has been taken once.
    pub fn setup_error(&self) -> Option<io::Error> {
        let mut setup = self.setup.lock().unwrap_or_else(PoisonError::into_inner);
        setup.settle(SHUTDOWN);
        match &mut *setup {
            Setup::Failed(e) => Some(e.take().unwrap_or_else(|| {
                io::Error::other("the embedded agent's thread ended before it was ready")
            })),
            Setup::Pending(_) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "the embedded agent did not get ready in time",
            )),
            Setup::Ready(_) => None,
        }
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
        if let Some(stepped) = &self.stepped {
            let mut stepped = stepped.lock().unwrap_or_else(PoisonError::into_inner);
            match std::mem::replace(&mut *stepped, Stepped::Ended) {
                // Still stepped: it shuts down here, on this thread. One turn handles what
                // is ready (the client's last requests, its hang-up), then the shutdown.
                Stepped::Here {
                    mut agent, stop, ..
                } => {
                    stop.stop();
                    if let Err(e) = agent.run() {
                        tracing::warn!(error = %e, "the embedded agent failed");
                    }
                    return;
                }
                Stepped::Ended => return,
                // On its own thread: it is stopped as a started agent is.
                Stepped::Alone => {}
            }
        }
        let setup = self.setup.get_mut().unwrap_or_else(PoisonError::into_inner);
        setup.settle(SHUTDOWN);
        if let Setup::Ready(stop) = setup {
            stop.stop();
        }
        let ended = self.ended.get_mut().unwrap_or_else(PoisonError::into_inner);
        match ended.recv_timeout(SHUTDOWN) {
            Ok(Ok(_)) => {}
            // A set-up error `setup_error` handed out was said by whoever asked.
            Ok(Err(_)) if matches!(setup, Setup::Failed(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the embedded agent failed"),
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("the embedded agent did not stop in time")
            }
            Err(RecvTimeoutError::Disconnected) => tracing::warn!("the embedded agent panicked"),
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

    /// A healthy agent gets ready on its thread: no set-up error, and a drop before anyone
    /// connected still stops it.
    #[test]
    fn a_healthy_agent_reports_no_setup_error() {
        let (agent, ours) = EmbeddedAgent::start(LinkDaemonConfig {
            cgroups: false,
            ..LinkDaemonConfig::default()
        })
        .expect("start");
        assert!(agent.setup_error().is_none());
        let t = Instant::now();
        drop(agent);
        assert!(t.elapsed() < SHUTDOWN, "{:?}", t.elapsed());
        drop(ours);
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
