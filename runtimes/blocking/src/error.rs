//! Errors of the blocking session.

use std::io;

use tuppence::link::{LinkError, UsageError};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target could not be opened or connected.
    #[error(transparent)]
    Connect(#[from] tuppence_transport::TransportError),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    /// The connection failed (peer closed, keepalive expired, protocol mismatch, …).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The request could not be made.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The agent reported a failure (errno of the system under test).
    #[error("{what} failed on the system under test: {}", errno_text(*errno))]
    Remote { what: &'static str, errno: u32 },
    /// The agent did not answer the hello in time.
    #[error("no hello reply within {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// The transfer was aborted through an [`crate::AbortHandle`] (the agent was sent an
    /// interrupt: it removes an inject's temporary).
    #[error("aborted")]
    Aborted,
    /// The local destination of [`crate::Session::extract_to`] could not be opened or put
    /// in place.
    #[error(transparent)]
    LocalFile(#[from] tuppence_transport::LocalFileError),
    /// A local file or stream used by a transfer failed.
    #[error("local {what}: {source}")]
    Local {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

pub use tuppence::link::errno_text;
