//! `tuppence serve`: the agent, on the listeners the command line names.
//!
//! Every listener is opened before the agent starts, so a typo or a busy port fails at
//! once with one line instead of after the VM has booted. Then one line, `tuppence serve:
//! ready on ...`, goes to stderr: test harnesses (the QEMU test among them) wait for it
//! instead of polling for a socket file. SIGTERM and SIGINT go to a thread that asks the
//! agent loop to stop, so it kills and reaps its commands and removes partial files
//! before the process exits; its unix sockets' files go when the listeners are dropped.
//! A second signal while it winds down exits at once, after removing those files itself
//! (the listeners are never dropped then). `sniff serve` uses the same handling.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tuppence_agent::serve::{LinkDaemon, LinkDaemonConfig, RunEnd};
use tuppence_transport::{
    DEFAULT_VIRTIO_PORT, Endpoint, ListenOptions, Listener, Target, TransportError, VSOCK_CID_ANY,
};

use crate::cli::ServeArgs;
use crate::exit::{self, Failure};

pub fn serve(args: ServeArgs) -> Result<u8, Failure> {
    if args.stdio {
        return crate::serve_stdio::serve_stdio(&args);
    }
    if let Some(dir) = &args.root_directory {
        crate::serve_stdio::enter_root(dir)?;
    }
    let targets = listen_targets(&args)?;
    let options = ListenOptions {
        unix_mode: args.unix_mode,
    };
    let mut listeners = Vec::with_capacity(targets.len());
    for target in &targets {
        if matches!(target.endpoint, Endpoint::Tcp { .. }) {
            tracing::warn!(
                %target,
                "listening on TCP: the protocol has no authentication; anyone who can reach this address can run commands as any allowed user"
            );
        }
        let listener = Listener::bind(target, &options).map_err(listen_failure)?;
        listeners.push(listener);
    }
    let sockets: Vec<SocketFile> = targets.iter().filter_map(SocketFile::of).collect();
    let shown: Vec<String> = listeners
        .iter()
        .zip(&targets)
        .map(|(l, t)| match l.local_endpoint() {
            Ok(e) => e.to_string(),
            Err(_) => t.to_string(),
        })
        .collect();

    let config = agent_config(&args);
    let cannot = |e: std::io::Error| {
        Failure::new(
            exit::CONNECTION,
            format!("cannot start the agent: {}", exit::io_text(&e)),
        )
    };
    let mut agent = LinkDaemon::new(config).map_err(cannot)?;
    for l in listeners {
        agent.add_listener(l).map_err(cannot)?;
    }
    let stop = agent.stop_handle().map_err(cannot)?;
    let signal_handle = stop_on_signals("tuppence serve", sockets, move || stop.stop())?;

    exit::say(format_args!(
        "tuppence serve: ready on {}",
        shown.join(", ")
    ));
    tracing::info!("{}", agent.containment());
    let end = agent.run().map_err(cannot)?;
    signal_handle.close();
    log_end(end);
    Ok(0)
}

/// The agent's settings from the command line (for listeners and for `--stdio`).
pub(crate) fn agent_config(args: &ServeArgs) -> LinkDaemonConfig {
    LinkDaemonConfig {
        max_clients: args.max_clients.max(1),
        max_transactions: args.max_transactions.max(1),
        default_timeout: Duration::from_secs_f64(args.default_timeout),
        socket_keepalive: args.keepalive,
        port_keepalive: args.port_keepalive,
        port_stale_partial_after: (args.port_partial_timeout > 0.0)
            .then(|| Duration::from_secs_f64(args.port_partial_timeout)),
        allow_users: if args.allow_users.is_empty() {
            None
        } else {
            Some(
                args.allow_users
                    .iter()
                    .map(|u| u.as_bytes().to_vec())
                    .collect(),
            )
        },
        allow_quit: !args.no_quit,
        audit: !args.no_audit,
        exit_when_idle: false,
        cgroups: !args.no_cgroups,
        ..LinkDaemonConfig::default()
    }
}

pub(crate) fn log_end(end: RunEnd) {
    match end {
        RunEnd::Quit => tracing::info!("quit by a client"),
        RunEnd::Stopped => tracing::info!("stopped by a signal"),
        RunEnd::Idle => tracing::info!("nothing left to serve"),
    }
}

/// A unix socket file a server created, and its identity right after `bind`: removed on
/// a forced exit only while the path still names that socket (not a newer agent's).
pub(crate) struct SocketFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl SocketFile {
    /// The socket file of a bound unix target; `None` for other transports.
    pub(crate) fn of(target: &Target) -> Option<SocketFile> {
        let Endpoint::Unix { path } = &target.endpoint else {
            return None;
        };
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Some(SocketFile {
            path: path.clone(),
            identity,
        })
    }

    fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && Some((m.dev(), m.ino())) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// SIGTERM and SIGINT for a server (`serve`, `sniff serve`), on a thread of their own: the
/// first calls `stop`, and the server winds down (kills what it started, drops its
/// listeners, which removes their socket files); a second one while it does exits at once
/// with 128 + the signal, after removing `sockets`, which the listeners, never dropped on
/// that path, would leave behind. Close the returned handle once the server has stopped.
pub(crate) fn stop_on_signals(
    name: &'static str,
    sockets: Vec<SocketFile>,
    stop: impl Fn() + Send + 'static,
) -> Result<signal_hook::iterator::Handle, Failure> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| Failure::local("signal handlers", &e))?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("tuppence-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                if stopping {
                    // A second signal while the server winds down: the user means it.
                    for s in &sockets {
                        s.remove();
                    }
                    exit::say(format_args!("{name}: killed while stopping"));
                    std::process::exit(128 + sig);
                }
                stopping = true;
                // Stop first: with a closed stderr the log line can fail, and the agent
                // must stop all the same.
                stop();
                tracing::info!(signal = sig, "stopping");
            }
        })
        .map_err(|e| Failure::local("signal thread", &e))?;
    Ok(handle)
}

/// The listeners in a fixed order: virtio, serial, vsock, unix, tcp; with none given, the
/// default virtio port, as the C agent does.
fn listen_targets(args: &ServeArgs) -> Result<Vec<Target>, Failure> {
    let mut targets = Vec::new();
    for path in &args.virtio {
        targets.push(Target::new(Endpoint::Virtio { path: path.clone() }));
    }
    for spec in &args.serial {
        targets.push(parse_as("serial", spec)?);
    }
    for &port in &args.vsock {
        targets.push(Target::new(Endpoint::Vsock {
            cid: VSOCK_CID_ANY,
            port,
        }));
    }
    for path in &args.unix {
        targets.push(Target::new(Endpoint::Unix { path: path.clone() }));
    }
    for spec in &args.tcp {
        targets.push(parse_as("tcp", spec)?);
    }
    if targets.is_empty() {
        tracing::info!("no listener given; serving the virtio-serial port {DEFAULT_VIRTIO_PORT}");
        targets.push(Target::new(Endpoint::Virtio {
            path: DEFAULT_VIRTIO_PORT.into(),
        }));
    }
    Ok(targets)
}

/// `--serial DEV[@BAUD]` and `--tcp ADDR:PORT` use the target syntax without the prefix.
fn parse_as(transport: &str, spec: &str) -> Result<Target, Failure> {
    format!("{transport}:{spec}")
        .parse::<Target>()
        .map_err(|e| Failure::usage(format!("--{transport} {spec:?}: {e}")))
}

/// The transport's message names the endpoint already.
fn listen_failure(e: TransportError) -> Failure {
    Failure::new(exit::CONNECTION, exit::clean(&e.to_string())).at("serve")
}
