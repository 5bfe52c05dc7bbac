//! Opening a session on a target, including `local`: an agent embedded in this process.
//!
//! `local` exists so that `tuppence run -- uname -a` works on a fresh machine with nothing
//! installed or started: the same agent code `tuppence serve` runs is started on a thread
//! and spoken to over one end of a unix socket pair. The commands it starts are therefore
//! children of this process, and are killed when it stops.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tuppence::link::{ClientConfig, KEEPALIVE_SERVER_DEFAULT};
use tuppence_agent::embedded::{EmbeddedAgent, Stepper};
use tuppence_agent::serve::LinkDaemonConfig;
use tuppence_blocking::{Reading, Session, SteppedPeer};
use tuppence_transport::{Endpoint, ExecHandle, Target};

use crate::cli::TargetArgs;
use crate::exit::{self, Failure};

/// How long closing a connection waits for queued requests to be written.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Every command waits on its session until it is done with it: the session reads on the
/// waiting thread until data flows (a short `run` starts no reader thread).
const READING: Reading = Reading::OnDemand;

/// A session and, for `local`, the agent thread behind it.
///
/// Dropping it closes the session first and then, for `local`, stops the agent so that no
/// command outlives this process (fields drop in declaration order).
pub struct Connection {
    pub target: Target,
    session: Session,
    local: Option<EmbeddedAgent>,
    /// On `local`, the user this process runs as (see [`Connection::default_user`]).
    local_user: String,
    /// `exec:`, `ssh:`, `chroot:`: the command behind the link, closed with the connection.
    exec: Option<ExecHandle>,
    /// A link that may end at a device (a unix socket in front of a VM's serial port): a
    /// handle on it, to wait at close until the other end has taken what was written.
    device: Option<tuppence_transport::Transport>,
}

/// The command behind this process's `exec:`/`ssh:`/`chroot:` connection, for
/// [`explain`]: a failure is reported after the connection is gone.
static EXEC: Mutex<Option<ExecHandle>> = Mutex::new(None);

/// How long [`explain`] waits for a command that is still running to exit.
const EXEC_REPORT_WAIT: Duration = Duration::from_millis(500);

/// Adds to a connection or protocol failure how the command behind an `exec:`, `ssh:` or
/// `chroot:` link ended (its exit status and last stderr lines): a link that closed is
/// otherwise just "closed by peer", and the reason is in the command's fate.
pub fn explain(mut failure: Failure) -> Failure {
    if !matches!(failure.code, exit::CONNECTION | exit::PROTOCOL) {
        return failure;
    }
    let handle = EXEC.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(handle) = handle {
        let end = handle.end_report(EXEC_REPORT_WAIT);
        failure.message = format!("{} ({end})", failure.message);
    }
    failure
}

impl TargetArgs {
    /// The target to use: `-t`, else `$TUPPENCE_TARGET` (clap reads it), else `local`.
    /// Parsed here rather than by clap so a bad target is one line and the usage status.
    pub fn target(&self) -> Result<Target, Failure> {
        self.target
            .parse::<Target>()
            .map_err(|e| Failure::usage(format!("bad target {:?}: {e}", self.target)))
    }

    fn client_config(&self, target: &Target) -> ClientConfig {
        let config = ClientConfig {
            dialect: target.dialect,
            keepalive: self.keepalive.unwrap_or(KEEPALIVE_SERVER_DEFAULT),
            ..ClientConfig::default()
        };
        // A serial or virtio port (or QEMU's socket in front of one) may still carry what
        // the agent sent a previous client, and may have lost our hello in what that
        // client left unfinished.
        if target.endpoint.may_be_device_link() {
            config.for_device_link()
        } else {
            config
        }
    }

    /// Opens the target and waits for the agent's hello.
    pub fn connect(&self) -> Result<Connection, Failure> {
        let target = self.target()?;
        let timeout = Duration::from_secs_f64(self.connect_timeout);
        let config = self.client_config(&target);
        let context = target.to_string();
        if target.endpoint == Endpoint::Local {
            return connect_local(target, config, timeout).map_err(|f| f.at(&context));
        }
        // chroot: runs this very binary's agent, unless the target names another (the
        // target keeps its user-written form for messages).
        let mut opened = target.clone();
        if let Endpoint::Chroot {
            agent: agent @ None,
            ..
        } = &mut opened.endpoint
        {
            *agent = std::env::current_exe().ok();
        }
        tracing::debug!(target = %opened, "connecting");
        let transport = opened
            .connect()
            .map_err(|e| exit::transport(e).at(&context))?;
        let exec = transport.exec();
        let device = if opened.endpoint.may_be_device_link() {
            transport.try_clone().ok()
        } else {
            None
        };
        if let Some(handle) = &exec {
            tracing::debug!(pid = handle.id(), command = handle.command(), "started");
            *EXEC.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle.clone());
        }
        let session = match Session::with_reading(transport, config, timeout, READING) {
            Ok(session) => session,
            Err(e) => {
                // A command that never answered is stopped before its fate is reported.
                if let Some(handle) = &exec {
                    handle.close();
                }
                return Err(Failure::session(e).at(&context));
            }
        };
        log_hello(&session);
        Ok(Connection {
            target,
            session,
            local: None,
            local_user: String::new(),
            exec,
            device,
        })
    }
}

fn connect_local(
    target: Target,
    config: ClientConfig,
    timeout: Duration,
) -> Result<Connection, Failure> {
    let cannot = |e: std::io::Error| {
        Failure::new(
            exit::CONNECTION,
            format!("cannot start the embedded agent: {}", exit::io_text(&e)),
        )
    };
    // Stepped by the session while it waits (see `tuppence_agent::embedded`): a short
    // command runs on this one thread.
    let (local, ours, stepper) = EmbeddedAgent::start_stepped(LinkDaemonConfig {
        // Its audit lines would only repeat what the user just typed.
        audit: false,
        ..LinkDaemonConfig::default()
    })
    .map_err(cannot)?;
    // See `default_user`.
    let local_user = match tuppence_agent::User::current() {
        Ok(u) => String::from_utf8_lossy(u.name()).into_owned(),
        Err(_) => "root".to_owned(),
    };
    let peer = Box::new(LocalPeer(stepper));
    match Session::with_stepped_peer(ours, config, timeout, peer) {
        Ok(session) => {
            log_hello(&session);
            Ok(Connection {
                target,
                session,
                local: Some(local),
                local_user,
                exec: None,
                device: None,
            })
        }
        // An agent that could not get ready closed its end: say why, not "closed".
        Err(e) => Err(match local.setup_error() {
            Some(why) => cannot(why),
            None => Failure::session(e),
        }),
    }
}

/// The embedded agent, as the session steps it.
struct LocalPeer(Stepper);

impl SteppedPeer for LocalPeer {
    fn step(&mut self, limit: Duration) -> std::io::Result<()> {
        self.0.step(limit)
    }
    fn run_alone(&mut self) -> std::io::Result<()> {
        self.0.run_alone()
    }
}

fn log_hello(session: &Session) {
    let info = session.info();
    tracing::debug!(
        cid = info.cid,
        version = %format_args!("{}.{}", info.server_version.0, info.server_version.1),
        keepalive = info.keepalive,
        latency = ?info.latency,
        "connected"
    );
}

impl Connection {
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The user to act as when `-u` is not given: `root` on a real target, as the C
    /// executor; on `local`, whoever runs this command, since an unprivileged user cannot
    /// switch to root and the embedded agent runs with our own credentials.
    pub fn default_user(&self) -> String {
        if self.local.is_some() {
            self.local_user.clone()
        } else {
            "root".to_owned()
        }
    }

    /// Sends `q`. The session is closed afterwards; an embedded agent quits by itself.
    pub fn quit(self) -> Result<(), tuppence_blocking::Error> {
        self.session.quit()
    }
}

impl Drop for Connection {
    /// Lets requests still queued leave before the session closes and this process exits:
    /// the KILL of a command whose deadline expired, the interrupt of an aborted inject
    /// (so the agent removes its temporary). Bounded, so a peer that stopped reading
    /// cannot hold the exit.
    fn drop(&mut self) {
        let _ = self.session.flush(Some(CLOSE_FLUSH));
        // Written is not delivered: QEMU's chardev drops what it had not read from its
        // socket when the socket closes (a `quit` the guest agent never saw).
        if let Some(device) = &self.device {
            tuppence_transport::wait_taken(device, CLOSE_FLUSH);
        }
        // The command behind an exec: link reads end of file and exits (an agent does at
        // once); one that does not is signalled (bounded: see `ExecHandle::close`).
        if let Some(exec) = &self.exec {
            exec.close();
        }
    }
}
