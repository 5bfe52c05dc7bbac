//! Rust errors as the Python exceptions of `tuppence._errors` (one class per fault, under
//! `tuppence.Error`; the classes are Python code so that they can also derive from
//! `OSError`, `TimeoutError` or `subprocess`'s exceptions).

use pyo3::call::PyCallArgs;
use pyo3::prelude::*;
use tuppence_blocking::{ChatError, Error, PatternError};

/// An instance of `tuppence._errors.<class>` built from `args`, as a `PyErr`.
pub(crate) fn raise<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: PyCallArgs<'py>,
{
    let built = py
        .import("tuppence._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1(args));
    match built {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// A session error, by fault.
pub(crate) fn session_error(py: Python<'_>, e: Error) -> PyErr {
    let text = e.to_string();
    match e {
        Error::Connect(_) | Error::ConnectTimeout(_) => raise(py, "ConnectError", (text,)),
        Error::Io(_) => raise(py, "TransportError", (text,)),
        Error::Link(_) => raise(py, "LinkError", (text,)),
        Error::Usage(_) => raise(py, "UsageError", (text,)),
        Error::Remote { what, errno } => raise(
            py,
            "RemoteError",
            (
                errno,
                tuppence_blocking::errno_text(errno).to_string(),
                what,
            ),
        ),
        Error::Aborted => raise(py, "Aborted", (text,)),
        Error::Local { ref source, .. } => {
            raise(py, "LocalError", (source.raw_os_error(), text.clone()))
        }
        Error::LocalFile(ref f) => {
            let errno = std::error::Error::source(f)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            raise(py, "LocalError", (errno, text.clone()))
        }
        _ => raise(py, "Error", (text,)),
    }
}

/// A chat error: the chat's own faults, or the session's.
pub(crate) fn chat_error(py: Python<'_>, e: ChatError<Error>) -> PyErr {
    let text = e.to_string();
    match e {
        ChatError::Timeout(_) => raise(py, "ExpectTimeout", (text,)),
        ChatError::Eof(_) => raise(py, "EndOfOutput", (text,)),
        ChatError::Full { limit } => raise(py, "BufferFull", (text, limit)),
        ChatError::Session(e) => session_error(py, e),
        _ => raise(py, "Error", (text,)),
    }
}

pub(crate) fn pattern_error(py: Python<'_>, e: PatternError) -> PyErr {
    raise(py, "PatternError", (e.to_string(),))
}

/// The session this object belonged to was closed.
pub(crate) fn closed(py: Python<'_>) -> PyErr {
    raise(py, "UsageError", ("the session is closed",))
}
