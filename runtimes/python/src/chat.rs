//! Chats (`tuppence.Chat`): `tuppence_blocking::Chat` with interruptible, GIL-free waits.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use self_cell::self_cell;
use tuppence::link::{Command, Signal};
use tuppence_blocking::{Chat as RustChat, ChatError, Pattern, Patterns};

use crate::errors::{chat_error, pattern_error, raise, session_error};
use crate::{Conn, bytes, outcome_tuple, wait};

type ChatRef<'a> = RustChat<'a>;

self_cell!(
    /// A chat and the session it borrows.
    pub(crate) struct OwnedChat {
        owner: Arc<Conn>,
        #[covariant]
        dependent: ChatRef,
    }
);

/// An interactive command on a tty.
#[pyclass(frozen, module = "tuppence._native")]
pub struct Chat {
    inner: OwnedChat,
}

impl Chat {
    pub(crate) fn start(
        py: Python<'_>,
        conn: Arc<Conn>,
        cmd: Command,
        limit: Option<usize>,
    ) -> PyResult<Chat> {
        let limit = limit.unwrap_or(tuppence_blocking::CHAT_LIMIT);
        let inner = py
            .detach(|| {
                OwnedChat::try_new(conn, |c| {
                    Ok::<_, tuppence_blocking::Error>(RustChat::with_limit(
                        c.session.run(cmd.tty(true))?,
                        limit,
                    ))
                })
            })
            .map_err(|e| session_error(py, e))?;
        Ok(Chat { inner })
    }

    fn chat(&self) -> &RustChat<'_> {
        self.inner.borrow_dependent()
    }

    /// Runs a chat wait in slices until it is not a slice's timeout; the overall
    /// deadline's expiry is an `ExpectTimeout`.
    fn sliced<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        mut call: impl FnMut(&RustChat<'_>, Duration) -> Result<T, ChatError<tuppence_blocking::Error>>
        + Send,
    ) -> PyResult<T> {
        let timeout = wait::duration(timeout)?;
        let chat = self.chat();
        let got = wait::sliced(py, wait::deadline(timeout), |slice| {
            match call(chat, slice) {
                Err(ChatError::Timeout(_)) => None,
                other => Some(other),
            }
        })?;
        match got {
            Some(r) => r.map_err(|e| chat_error(py, e)),
            None => Err(raise(
                py,
                "ExpectTimeout",
                (format!(
                    "nothing expected arrived within {:?}",
                    timeout.unwrap_or_default()
                ),),
            )),
        }
    }
}

/// `[("literal", bytes) | ("regex", utf-8 bytes)]` as compiled patterns.
fn patterns(py: Python<'_>, specs: Vec<(String, Vec<u8>)>) -> PyResult<Patterns> {
    let mut list = Vec::with_capacity(specs.len());
    for (kind, value) in specs {
        list.push(match kind.as_str() {
            "literal" => Pattern::literal(value),
            "regex" => {
                Pattern::regex(String::from_utf8(value).map_err(|_| {
                    raise(py, "PatternError", ("a regular expression must be UTF-8",))
                })?)
            }
            other => {
                return Err(raise(
                    py,
                    "PatternError",
                    (format!("unknown pattern kind {other}"),),
                ));
            }
        });
    }
    Patterns::new(list).map_err(|e| pattern_error(py, e))
}

#[pymethods]
impl Chat {
    #[getter]
    fn xid(&self) -> u16 {
        self.chat().run().xid()
    }

    /// Waits for one of the patterns; returns `(index, consumed, start)` where the match
    /// is `consumed[start:]`.
    #[pyo3(signature = (specs, timeout=None))]
    fn expect<'py>(
        &self,
        py: Python<'py>,
        specs: Vec<(String, Vec<u8>)>,
        timeout: Option<f64>,
    ) -> PyResult<(usize, Bound<'py, PyAny>, usize)> {
        let p = patterns(py, specs)?;
        let m = self.sliced(py, timeout, |chat, slice| chat.expect(&p, slice))?;
        Ok((m.pattern, bytes(py, &m.consumed), m.start))
    }

    /// The next line without its end; None once the output has ended.
    #[pyo3(signature = (timeout=None))]
    fn read_line<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let line = self.sliced(py, timeout, |chat, slice| chat.read_line(slice))?;
        Ok(line.map(|l| bytes(py, &l)))
    }

    /// Waits for the command's end: `(kind, value, text, unconsumed output)`.
    #[pyo3(signature = (timeout=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<(&'static str, i64, String, Bound<'py, PyAny>)> {
        let mut rest = Vec::new();
        let outcome = self.sliced(py, timeout, |chat, slice| {
            loop {
                match chat.wait(Some(slice)) {
                    // The buffer is full: keep what is in it and wait on.
                    Err(ChatError::Full { .. }) => rest.extend_from_slice(&chat.take_buffered()),
                    other => return other,
                }
            }
        })?;
        rest.extend_from_slice(&self.chat().take_buffered());
        let (kind, value, text) = outcome_tuple(&outcome);
        Ok((kind, value, text, bytes(py, &rest)))
    }

    /// Sends bytes to the command.
    fn send(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<()> {
        let chat = self.chat();
        py.detach(|| chat.send(&data))
            .map_err(|e| session_error(py, e))
    }

    /// Closes the command's stdin (the EOF character on its tty).
    fn close_stdin(&self, py: Python<'_>) -> PyResult<()> {
        let chat = self.chat();
        py.detach(|| chat.close_stdin())
            .map_err(|e| session_error(py, e))
    }

    /// Sends a signal to the command's process group.
    fn interrupt(&self, py: Python<'_>, signal: &str) -> PyResult<()> {
        let chat = self.chat();
        let sig = Signal::named(signal.as_bytes().to_vec());
        py.detach(|| chat.interrupt(sig))
            .map_err(|e| session_error(py, e))
    }

    /// The unconsumed output (a copy).
    fn buffered<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        bytes(py, &self.chat().buffered())
    }

    /// Takes the unconsumed output.
    fn take_buffered<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        bytes(py, &self.chat().take_buffered())
    }

    /// `(kind, value, text)` once the command's end has been read, else None.
    fn outcome(&self) -> Option<(&'static str, i64, String)> {
        self.chat().outcome().map(|o| outcome_tuple(&o))
    }
}
