//! `tuppence._native`: the Rust blocking client for Python.
//!
//! Everything here is a thin layer over `tuppence-blocking` (the protocol is not
//! re-implemented) and `tuppence-agent`'s embedded agent (the `local` target). The
//! pythonic API (`tuppence`) and the twopence compatibility module (`tuppence.twopence`)
//! are Python code on top of these classes.
//!
//! Threads: every object is usable from any Python thread; every wait releases the GIL
//! and is interruptible with Ctrl-C (see `wait.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tuppence::link::{ClientConfig, Command, KEEPALIVE_SERVER_DEFAULT, Outcome};
use tuppence_agent::embedded::EmbeddedAgent;
use tuppence_agent::serve::LinkDaemonConfig;
use tuppence_blocking::Session;
use tuppence_transport::{Endpoint, Target};

mod chat;
mod errors;
mod process;
mod transfer;
mod wait;

use errors::{closed, raise, session_error};

/// A session and, for `local`, the agent behind it. Fields drop in order: the session
/// closes before the embedded agent stops (and kills what is left).
pub(crate) struct Conn {
    pub(crate) session: Session,
    _local: Option<EmbeddedAgent>,
}

/// A connection to an agent (see `tuppence.Session` for the documented API).
#[pyclass(frozen, module = "tuppence._native")]
pub struct Connection {
    conn: Mutex<Option<Arc<Conn>>>,
    target: String,
    local: bool,
    default_user: String,
    dialect: &'static str,
}

/// Opens `target` (any tuppence target, `legacy+` included, or `local`: an agent embedded
/// in this process) and waits up to `timeout` seconds for the agent's hello.
#[pyfunction]
#[pyo3(signature = (target, timeout=10.0, keepalive=None))]
fn connect(
    py: Python<'_>,
    target: &str,
    timeout: f64,
    keepalive: Option<u16>,
) -> PyResult<Connection> {
    let parsed: Target = target
        .parse()
        .map_err(|e| raise(py, "UsageError", (format!("bad target {target:?}: {e}"),)))?;
    let timeout = wait::duration(Some(timeout))?.unwrap_or(Duration::from_secs(10));
    let mut config = ClientConfig {
        dialect: parsed.dialect,
        keepalive: keepalive.unwrap_or(KEEPALIVE_SERVER_DEFAULT),
        ..ClientConfig::default()
    };
    if parsed.endpoint.may_be_device_link() {
        config = config.for_device_link();
    }
    let local = parsed.endpoint == Endpoint::Local;
    let dialect = if parsed.dialect == tuppence::wire::Dialect::Legacy3 {
        "3.0"
    } else {
        "4.0"
    };
    let opened = py.detach(|| -> Result<Conn, tuppence_blocking::Error> {
        if local {
            let (agent, stream) = EmbeddedAgent::start(LinkDaemonConfig {
                audit: false,
                // The application embedding the agent (Python, its `subprocess`) starts
                // children of its own; the agent must not reap them.
                reap_orphans: false,
                ..LinkDaemonConfig::default()
            })?;
            // An agent that could not get ready closed its end: say why, not "closed".
            let session = match Session::new(stream, config, timeout) {
                Ok(session) => session,
                Err(e) => return Err(agent.setup_error().map_or(e, Into::into)),
            };
            Ok(Conn {
                session,
                _local: Some(agent),
            })
        } else {
            let transport = parsed.connect()?;
            Ok(Conn {
                session: Session::new(transport, config, timeout)?,
                _local: None,
            })
        }
    });
    let conn = opened.map_err(|e| session_error(py, e))?;
    // On `local` the agent runs as whoever runs Python: act as that user by default.
    let default_user = if local {
        tuppence_agent::User::current()
            .map(|u| String::from_utf8_lossy(u.name()).into_owned())
            .unwrap_or_else(|_| "root".to_owned())
    } else {
        "root".to_owned()
    };
    Ok(Connection {
        conn: Mutex::new(Some(Arc::new(conn))),
        target: parsed.to_string(),
        local,
        default_user,
        dialect,
    })
}

/// Parses a target without opening it: `(canonical form, kind)`, the kind being
/// `local`, `virtio`, `serial`, `vsock`, `unix`, `tcp`, `exec`, `ssh` or `chroot`.
#[pyfunction]
fn parse_target(py: Python<'_>, target: &str) -> PyResult<(String, &'static str)> {
    let parsed: Target = target
        .parse()
        .map_err(|e| raise(py, "UsageError", (format!("bad target {target:?}: {e}"),)))?;
    let kind = match parsed.endpoint {
        Endpoint::Local => "local",
        Endpoint::Virtio { .. } => "virtio",
        Endpoint::Serial { .. } => "serial",
        Endpoint::Vsock { .. } => "vsock",
        Endpoint::Unix { .. } => "unix",
        Endpoint::Tcp { .. } => "tcp",
        Endpoint::Exec { .. } => "exec",
        Endpoint::Ssh { .. } => "ssh",
        Endpoint::Chroot { .. } => "chroot",
    };
    Ok((parsed.to_string(), kind))
}

impl Connection {
    pub(crate) fn conn(&self, py: Python<'_>) -> PyResult<Arc<Conn>> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| closed(py))
    }
}

/// The command a run, a chat or a background process starts.
pub(crate) fn command(
    cmd: &[u8],
    user: &[u8],
    timeout: Option<f64>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    tty: bool,
) -> PyResult<Command> {
    let mut c = Command::new(cmd.to_vec()).user(user.to_vec()).tty(tty);
    if let Some(t) = wait::duration(timeout)? {
        c = c.timeout(t);
    }
    for (name, value) in env {
        c = c.env(name, value);
    }
    Ok(c)
}

/// How a transaction ended, as `(kind, value, text)`: `("exit", code)`, `("signal",
/// signo)`, `("timeout", 0)`, `("failed", errno)`, `("completed", 0)`, `("lost", 0)`,
/// with a description.
pub(crate) fn outcome_tuple(o: &Outcome) -> (&'static str, i64, String) {
    match o {
        Outcome::Exited(c) => ("exit", i64::from(*c), format!("exited with status {c}")),
        Outcome::Signaled(s) => ("signal", i64::from(*s), format!("killed by signal {s}")),
        Outcome::TimedOut => ("timeout", 0, "killed at its timeout".to_owned()),
        Outcome::Failed { errno } => (
            "failed",
            i64::from(*errno),
            tuppence_blocking::errno_text(*errno).to_string(),
        ),
        Outcome::Completed => ("completed", 0, "completed".to_owned()),
        Outcome::LinkLost(e) => ("lost", 0, e.to_string()),
    }
}

#[pymethods]
impl Connection {
    /// The target, as tuppence writes it.
    #[getter]
    fn target(&self) -> &str {
        &self.target
    }

    /// True for the embedded `local` agent.
    #[getter]
    fn local(&self) -> bool {
        self.local
    }

    /// The protocol version spoken: "4.0", or "3.0" with `legacy+`.
    #[getter]
    fn dialect(&self) -> &'static str {
        self.dialect
    }

    /// The user commands run as when none is given: `root`, or on `local` whoever runs
    /// Python.
    #[getter]
    fn default_user(&self) -> &str {
        &self.default_user
    }

    /// True once the session was closed (here or by the agent).
    #[getter]
    fn closed(&self) -> bool {
        match &*self.conn.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => c.session.is_closed(),
            None => true,
        }
    }

    /// `(cid, (major, minor), keepalive, latency_seconds)` from the agent's hello.
    fn info(&self, py: Python<'_>) -> PyResult<(u16, (u8, u8), u16, f64)> {
        let i = self.conn(py)?.session.info();
        Ok((
            i.cid,
            i.server_version,
            i.keepalive,
            i.latency.as_secs_f64(),
        ))
    }

    /// Starts a command; see `tuppence.Process`. `stdin=False` starts it with its stdin
    /// already ended (the request and the end go out in one write).
    #[pyo3(signature = (command, user, timeout=None, env=Vec::new(), tty=false, stdin=true))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        command: &[u8],
        user: &[u8],
        timeout: Option<f64>,
        env: Vec<(Vec<u8>, Vec<u8>)>,
        tty: bool,
        stdin: bool,
    ) -> PyResult<process::Process> {
        let cmd = self::command(command, user, timeout, env, tty)?;
        process::Process::start(py, self.conn(py)?, cmd, stdin)
    }

    /// Starts a command on a tty for a chat; see `tuppence.Chat`.
    #[pyo3(signature = (command, user, timeout=None, env=Vec::new(), limit=None))]
    fn chat(
        &self,
        py: Python<'_>,
        command: &[u8],
        user: &[u8],
        timeout: Option<f64>,
        env: Vec<(Vec<u8>, Vec<u8>)>,
        limit: Option<usize>,
    ) -> PyResult<chat::Chat> {
        let cmd = self::command(command, user, timeout, env, true)?;
        chat::Chat::start(py, self.conn(py)?, cmd, limit)
    }

    /// Subscribes to an event source of the agent.
    fn monitor(&self, py: Python<'_>, source: &[u8]) -> PyResult<process::Monitor> {
        process::Monitor::start(py, self.conn(py)?, source)
    }

    /// Asks the agent to exit.
    fn quit(&self, py: Python<'_>) -> PyResult<()> {
        let conn = self.conn(py)?;
        py.detach(|| conn.session.quit())
            .map_err(|e| session_error(py, e))
    }

    /// Closes the session: new operations fail; the link closes once the last process,
    /// chat and monitor of it is gone too (the embedded agent then stops and kills what
    /// it still runs).
    fn close(&self, py: Python<'_>) {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = conn {
            // Let what is queued leave (a KILL, an abort) before the link may close.
            py.detach(|| {
                let _ = conn.session.flush(Some(Duration::from_secs(2)));
                drop(conn);
            });
        }
    }

    /// Copies `source` (bytes, a binary file object, or a local path) to `path` on the
    /// system under test; returns the number of bytes sent.
    #[pyo3(signature = (user, path, mode, source, timeout=None))]
    fn inject(
        &self,
        py: Python<'_>,
        user: String,
        path: String,
        mode: u32,
        source: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        transfer::inject(py, self.conn(py)?, user, path, mode, source, timeout)
    }

    /// Copies `path` from the system under test to `dest` (None: returned as bytes; a
    /// binary file object; a local path, written as `cp` writes); returns the bytes, or
    /// the number of bytes received.
    #[pyo3(signature = (user, path, dest=None, timeout=None))]
    fn extract<'py>(
        &self,
        py: Python<'py>,
        user: String,
        path: String,
        dest: Option<&Bound<'py, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        transfer::extract(py, self.conn(py)?, user, path, dest, timeout)
    }
}

pub(crate) fn bytes<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyAny> {
    PyBytes::new(py, data).into_any()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(parse_target, m)?)?;
    m.add_class::<Connection>()?;
    m.add_class::<process::Process>()?;
    m.add_class::<process::Monitor>()?;
    m.add_class::<chat::Chat>()?;
    m.add("SLICE_SECONDS", wait::SLICE.as_secs_f64())?;
    Ok(())
}
