//! Commands started in the background (`tuppence.Process`) and monitors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use self_cell::self_cell;
use tuppence::link::{Command, Signal};
use tuppence_blocking::{Monitor as RustMonitor, MonitorEvent, Run, RunEvent};

use crate::errors::{raise, session_error};
use crate::{Conn, bytes, outcome_tuple, wait};

type RunRef<'a> = Run<'a>;

self_cell!(
    /// A running command and the session it borrows.
    pub(crate) struct OwnedRun {
        owner: Arc<Conn>,
        #[covariant]
        dependent: RunRef,
    }
);

/// A running command: its output as events, its stdin, signals, procinfo.
#[pyclass(frozen, module = "tuppence._native")]
pub struct Process {
    run: Arc<OwnedRun>,
    /// The end was delivered: nothing more will come (the run's `None` is then final).
    ended: AtomicBool,
}

impl Process {
    /// Starts `cmd`; with `stdin` false its stdin is ended with the request.
    pub(crate) fn start(
        py: Python<'_>,
        conn: Arc<Conn>,
        cmd: Command,
        stdin: bool,
    ) -> PyResult<Process> {
        let run = py
            .detach(|| {
                OwnedRun::try_new(conn, |c| {
                    if stdin {
                        c.session.run(cmd)
                    } else {
                        c.session.run_without_stdin(cmd)
                    }
                })
            })
            .map_err(|e| session_error(py, e))?;
        Ok(Process {
            run: Arc::new(run),
            ended: AtomicBool::new(false),
        })
    }
}

/// An event as a tuple: `("stdout", data)`, `("stderr", data)`, or the end:
/// `("end", kind, value, text)` (see `outcome_tuple`).
fn event_tuple<'py>(py: Python<'py>, ev: RunEvent) -> PyResult<Bound<'py, PyAny>> {
    Ok(match ev {
        RunEvent::Stdout(d) => ("stdout", bytes(py, &d)).into_pyobject(py)?.into_any(),
        RunEvent::Stderr(d) => ("stderr", bytes(py, &d)).into_pyobject(py)?.into_any(),
        RunEvent::Finished(o) => {
            let (kind, value, text) = outcome_tuple(&o);
            ("end", kind, value, text).into_pyobject(py)?.into_any()
        }
    })
}

#[pymethods]
impl Process {
    /// The transaction id on the wire.
    #[getter]
    fn xid(&self) -> u16 {
        self.run.borrow_dependent().xid()
    }

    /// The next event, waiting up to `timeout` seconds (None: until there is one);
    /// None on timeout and after the end.
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let deadline = wait::deadline(wait::duration(timeout)?);
        if self.ended.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let run = self.run.borrow_dependent();
        let got = wait::sliced(py, deadline, |slice| match run.next_timeout(Some(slice)) {
            Ok(None) => None,
            other => Some(other),
        })?;
        match got {
            Some(Ok(Some(ev))) => {
                if matches!(ev, RunEvent::Finished(_)) {
                    self.ended.store(true, Ordering::SeqCst);
                }
                Ok(Some(event_tuple(py, ev)?))
            }
            Some(Ok(None)) | None => Ok(None),
            Some(Err(e)) => Err(session_error(py, e)),
        }
    }

    /// Sends bytes to the command's stdin; waits (interruptibly) while the link is
    /// congested.
    fn write(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<()> {
        let run = self.run.clone();
        let stopper = self.run.clone();
        let r = wait::offload(
            py,
            None,
            move || run.borrow_dependent().write_stdin(&data),
            move || {
                let _ = stopper.borrow_dependent().interrupt(Signal::named("KILL"));
            },
        )?;
        match r {
            Some(r) => r.map_err(|e| session_error(py, e)),
            None => Ok(()),
        }
    }

    /// Closes the command's stdin.
    fn close_stdin(&self, py: Python<'_>) -> PyResult<()> {
        let run = self.run.borrow_dependent();
        py.detach(|| run.close_stdin())
            .map_err(|e| session_error(py, e))
    }

    /// Sends a signal ("INT", "TERM", "KILL", ...) to the command's process group.
    fn interrupt(&self, py: Python<'_>, signal: &str) -> PyResult<()> {
        let run = self.run.borrow_dependent();
        let sig = Signal::named(signal.as_bytes().to_vec());
        py.detach(|| run.interrupt(sig))
            .map_err(|e| session_error(py, e))
    }

    /// Process information: `[(field type, value)]`, the value an int (4-byte fields)
    /// or bytes.
    fn procinfo<'py>(&self, py: Python<'py>, mask: u32) -> PyResult<Vec<(u8, Bound<'py, PyAny>)>> {
        let run = self.run.clone();
        let fields = wait::offload(
            py,
            None,
            move || run.borrow_dependent().procinfo(mask),
            || {},
        )?;
        let Some(fields) = fields else {
            return Err(raise(py, "Error", ("procinfo stopped",)));
        };
        let fields = fields.map_err(|e| session_error(py, e))?;
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let value = match f.as_u32() {
                Some(v) => v.into_pyobject(py)?.into_any(),
                None => bytes(py, &f.value),
            };
            out.push((f.kind, value));
        }
        Ok(out)
    }
}

type MonitorRef<'a> = RustMonitor<'a>;

self_cell!(
    /// A subscription and the session it borrows.
    pub(crate) struct OwnedMonitor {
        owner: Arc<Conn>,
        #[covariant]
        dependent: MonitorRef,
    }
);

/// A subscription to an event source of the agent.
#[pyclass(frozen, module = "tuppence._native")]
pub struct Monitor {
    inner: OwnedMonitor,
    ended: AtomicBool,
}

impl Monitor {
    pub(crate) fn start(py: Python<'_>, conn: Arc<Conn>, source: &[u8]) -> PyResult<Monitor> {
        let source = String::from_utf8_lossy(source).into_owned();
        let inner = py
            .detach(|| OwnedMonitor::try_new(conn, |c| c.session.monitor(&source)))
            .map_err(|e| session_error(py, e))?;
        Ok(Monitor {
            inner,
            ended: AtomicBool::new(false),
        })
    }
}

#[pymethods]
impl Monitor {
    /// The next event, waiting up to `timeout` seconds: `("data", bytes)`,
    /// `("settled", seq)`, `("end", kind, value, text)`; None on timeout and after the end.
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let deadline = wait::deadline(wait::duration(timeout)?);
        if self.ended.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let m = self.inner.borrow_dependent();
        let got = wait::sliced(py, deadline, |slice| match m.next_timeout(Some(slice)) {
            Ok(None) => None,
            other => Some(other),
        })?;
        Ok(match got {
            Some(Ok(Some(MonitorEvent::Data(d)))) => {
                Some(("data", bytes(py, &d)).into_pyobject(py)?.into_any())
            }
            Some(Ok(Some(MonitorEvent::Settled(seq)))) => {
                Some(("settled", seq).into_pyobject(py)?.into_any())
            }
            Some(Ok(Some(MonitorEvent::Finished(o)))) => {
                self.ended.store(true, Ordering::SeqCst);
                let (kind, value, text) = outcome_tuple(&o);
                Some(("end", kind, value, text).into_pyobject(py)?.into_any())
            }
            Some(Ok(None)) | None => None,
            Some(Err(e)) => return Err(session_error(py, e)),
        })
    }

    /// Asks the source to deliver what it has pending, then `("settled", seq)`.
    fn settle(&self, py: Python<'_>, seq: u32) -> PyResult<()> {
        let m = self.inner.borrow_dependent();
        py.detach(|| m.settle(seq))
            .map_err(|e| session_error(py, e))
    }

    /// Ends the subscription; `("end", "completed", ...)` follows.
    fn end(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.inner.borrow_dependent();
        py.detach(|| m.end()).map_err(|e| session_error(py, e))
    }
}
