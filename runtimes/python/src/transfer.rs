//! inject and extract: from and to bytes, binary file objects and local paths.
//!
//! A transfer is one blocking call of the Rust session, so it runs on a thread of its own
//! while the calling thread waits in slices ([`wait::offload`]). Ctrl-C or the caller's
//! timeout aborts it through the session's `AbortHandle`: the agent is sent an interrupt
//! and removes an inject's temporary file. (The handle aborts every transfer in progress
//! on that session, which is what Ctrl-C in a script means.)

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use crate::errors::{raise, session_error};
use crate::{Conn, bytes, wait};

/// Where inject data comes from.
enum Source {
    Bytes(PyBackedBytes),
    Path(PathBuf),
    Reader(Py<PyAny>),
}

/// Where extracted data goes.
enum Sink {
    Memory,
    Path(PathBuf),
    Writer(Py<PyAny>),
}

fn py_io(e: PyErr) -> io::Error {
    io::Error::other(e.to_string())
}

/// A binary Python file object read from the transfer's thread (taking the GIL per
/// read).
struct PyReader(Py<PyAny>);

impl Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Python::attach(|py| {
            let data = self
                .0
                .bind(py)
                .call_method1("read", (buf.len(),))
                .map_err(py_io)?;
            if data.is_none() {
                // A non-blocking file with nothing yet: read again.
                return Err(io::ErrorKind::Interrupted.into());
            }
            let data: PyBackedBytes = data.extract().map_err(|_| {
                io::Error::other("the source's read() must return bytes (open it in binary mode)")
            })?;
            let n = data.len().min(buf.len());
            buf.get_mut(..n)
                .unwrap_or_default()
                .copy_from_slice(data.get(..n).unwrap_or_default());
            Ok(n)
        })
    }
}

/// A binary Python file object written from the transfer's thread.
struct PyWriter(Py<PyAny>);

impl Write for PyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Python::attach(|py| {
            let written = self
                .0
                .bind(py)
                .call_method1("write", (bytes(py, buf),))
                .map_err(py_io)?;
            // Raw files may write less and say how much; buffered ones write all.
            Ok(written
                .extract::<usize>()
                .unwrap_or(buf.len())
                .min(buf.len()))
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Python::attach(|py| {
            let f = self.0.bind(py);
            if f.hasattr("flush").map_err(py_io)? {
                f.call_method0("flush").map_err(py_io)?;
            }
            Ok(())
        })
    }
}

/// Runs a transfer on its own thread; the deadline or Ctrl-C aborts it.
fn run_transfer<T: Send + 'static>(
    py: Python<'_>,
    conn: Arc<Conn>,
    timeout: Option<f64>,
    work: impl FnOnce(&Conn) -> Result<T, tuppence_blocking::Error> + Send + 'static,
) -> PyResult<T> {
    let timeout = wait::duration(timeout)?;
    let abort = conn.session.abort_handle();
    let worker = conn.clone();
    let r = wait::offload(
        py,
        wait::deadline(timeout),
        move || work(&worker),
        || {
            abort.abort();
        },
    )?;
    match r {
        Some(r) => r.map_err(|e| session_error(py, e)),
        None => Err(raise(
            py,
            "TransferTimeout",
            (format!(
                "the transfer did not finish within {:?} and was aborted",
                timeout.unwrap_or_default()
            ),),
        )),
    }
}

pub(crate) fn inject(
    py: Python<'_>,
    conn: Arc<Conn>,
    user: String,
    path: String,
    mode: u32,
    source: &Bound<'_, PyAny>,
    timeout: Option<f64>,
) -> PyResult<u64> {
    let source = if let Ok(b) = source.extract::<PyBackedBytes>() {
        Source::Bytes(b)
    } else if source.hasattr("read")? {
        Source::Reader(source.clone().unbind())
    } else {
        Source::Path(source.extract::<PathBuf>()?)
    };
    run_transfer(py, conn, timeout, move |c| {
        let s = &c.session;
        match source {
            Source::Bytes(b) => s.inject(&user, &path, mode, &b[..], |_| {}),
            Source::Reader(r) => s.inject(&user, &path, mode, PyReader(r), |_| {}),
            Source::Path(p) => {
                let f = std::fs::File::open(&p).map_err(|e| tuppence_blocking::Error::Local {
                    what: "open",
                    source: io::Error::new(e.kind(), format!("{}: {e}", p.display())),
                })?;
                s.inject(&user, &path, mode, f, |_| {})
            }
        }
    })
}

pub(crate) fn extract<'py>(
    py: Python<'py>,
    conn: Arc<Conn>,
    user: String,
    path: String,
    dest: Option<&Bound<'py, PyAny>>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let sink = match dest {
        None => Sink::Memory,
        Some(d) if d.is_none() => Sink::Memory,
        Some(d) if d.hasattr("write")? => Sink::Writer(d.clone().unbind()),
        Some(d) => Sink::Path(d.extract::<PathBuf>()?),
    };
    let memory = matches!(sink, Sink::Memory);
    let (n, data) = run_transfer(py, conn, timeout, move |c| {
        let s = &c.session;
        match sink {
            Sink::Memory => {
                let mut data = Vec::new();
                let n = s.extract(&user, &path, &mut data, |_| {})?;
                Ok((n, data))
            }
            Sink::Writer(w) => Ok((s.extract(&user, &path, PyWriter(w), |_| {})?, Vec::new())),
            Sink::Path(p) => Ok((s.extract_to(&user, &path, &p, |_| {})?, Vec::new())),
        }
    })?;
    if memory {
        Ok(bytes(py, &data))
    } else {
        Ok(n.into_pyobject(py)?.into_any())
    }
}
