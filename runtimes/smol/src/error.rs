//! Errors of the async client session and the server driver.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tuppence::link::{LinkError, Outcome, UsageError};

/// Why an operation failed.
///
/// Every waiter of a session sees one of these (or, for a command, an
/// [`Outcome::LinkLost`]) once the connection is gone; nothing waits forever on a dead
/// link.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed with an I/O error. Shared (`Arc`) because every waiter of the
    /// connection receives the same error.
    #[error("transport: {0}")]
    Transport(#[source] Arc<io::Error>),
    /// The connection failed: the peer closed it, the keepalive expired, the versions
    /// differ, the byte stream lost its framing.
    #[error(transparent)]
    Link(LinkError),
    /// The request could not be made (wrong state, unknown transaction, not available in
    /// the dialect, a string with a NUL inside, …).
    #[error(transparent)]
    Usage(UsageError),
    /// The agent reported a failure: an errno of the system under test.
    #[error("{what} failed on the system under test: {}", errno_text(*errno))]
    Remote { what: &'static str, errno: u32 },
    /// A transaction ended in a way its operation cannot explain (e.g. an inject that
    /// reports an exit code).
    #[error("{what} ended unexpectedly: {outcome:?}")]
    Unexpected {
        what: &'static str,
        outcome: Outcome,
    },
    /// The agent did not answer the hello in time.
    #[error("no hello reply within {0:?}")]
    ConnectTimeout(Duration),
    /// The local destination of [`crate::Session::extract_to`] could not be opened or put
    /// in place.
    #[error(transparent)]
    LocalFile(Arc<tuppence_transport::LocalFileError>),
    /// A local source or sink of a transfer failed.
    #[error("local {what}: {source}")]
    Local {
        what: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// This side closed the connection: every session handle was dropped, the driver
    /// future was dropped before the link ended, or the server application called
    /// [`crate::Responder::close`].
    #[error("the connection was closed by this side")]
    Closed,
}

impl From<UsageError> for Error {
    /// A failed connection is reported as [`Error::Link`], whatever intent noticed it.
    fn from(e: UsageError) -> Self {
        match e {
            UsageError::Link(link) => Error::Link(link),
            other => Error::Usage(other),
        }
    }
}

impl From<tuppence_transport::LocalFileError> for Error {
    fn from(e: tuppence_transport::LocalFileError) -> Self {
        Error::LocalFile(Arc::new(e))
    }
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        Error::Link(e)
    }
}

impl Error {
    pub(crate) fn local(what: &'static str, source: io::Error) -> Self {
        Error::Local {
            what,
            source: Arc::new(source),
        }
    }

    /// The error a transfer or query reports for a transaction outcome other than success.
    pub(crate) fn from_outcome(what: &'static str, outcome: Outcome) -> Self {
        match outcome {
            Outcome::Failed { errno } => Error::Remote { what, errno },
            Outcome::LinkLost(e) => Error::Link(e),
            outcome => Error::Unexpected { what, outcome },
        }
    }
}

pub use tuppence::link::errno_text;
