//! Waiting without holding the GIL, interruptibly.
//!
//! Every wait of the module runs in slices of at most [`SLICE`] with the GIL released
//! (other Python threads run meanwhile), and calls `check_signals` between slices, so
//! Ctrl-C raises `KeyboardInterrupt` within a slice even while the remote side is silent.
//! What to undo on the remote side (interrupt the command, abort the transfer) is decided
//! by the caller of the wait.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The longest stretch spent waiting without looking at signals.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// Seconds from Python as a duration (`None` stays `None`).
pub(crate) fn duration(secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(
            Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        )),
        Some(s) if s.is_infinite() && s > 0.0 => Ok(None),
        Some(s) => Err(PyValueError::new_err(format!(
            "a timeout must be a number of seconds >= 0, not {s}"
        ))),
    }
}

/// A deadline `timeout` from now; `None` = no deadline (also when too far to represent).
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Calls `step` with the GIL released, each time with the time it may wait (a slice),
/// until it returns `Some`; returns `Ok(None)` once `deadline` has passed, or the error
/// of a signal handler (`KeyboardInterrupt`).
pub(crate) fn sliced<T, F>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut step: F,
) -> PyResult<Option<T>>
where
    T: Send,
    F: FnMut(Duration) -> Option<T> + Send,
{
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        if let Some(v) = py.detach(|| step(slice)) {
            return Ok(Some(v));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

/// How long an operation stopped by a deadline or Ctrl-C may take to wind down (its
/// thread to see the abort) before the call returns anyway.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);

/// Runs `work` on a thread of its own while this thread waits for it in slices (GIL
/// released, signals checked). If `deadline` passes (`Ok(None)`) or a signal handler
/// raises (`Err`), `stop` is called (it aborts the remote operation) and the work gets
/// [`STOP_GRACE`] to finish before the call returns. For blocking calls that take no
/// timeout themselves (transfers, a write waiting for transmit room).
pub(crate) fn offload<T, F, S>(
    py: Python<'_>,
    deadline: Option<Instant>,
    work: F,
    stop: S,
) -> PyResult<Option<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    S: FnOnce(),
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tuppence-call".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
    // A `Receiver` is not `Sync`; the slices take it in turn.
    let rx = std::sync::Mutex::new(rx);
    let recv = |t| rx.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(t);
    let waited = sliced(py, deadline, |slice| match recv(slice) {
        Ok(v) => Some(Some(v)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
        // The thread died without an answer (a panic): nothing to wait for.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(None),
    });
    match waited {
        Ok(Some(Some(v))) => Ok(Some(v)),
        Ok(Some(None)) => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "the operation's thread ended without a result",
        )),
        stopped => {
            stop();
            let _ = py.detach(|| recv(STOP_GRACE));
            stopped.map(|_| None)
        }
    }
}
