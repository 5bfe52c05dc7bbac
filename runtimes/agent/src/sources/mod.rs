//! Event sources for the `O` (monitor) request.
//!
//! A monitor streams *lines* from a source as `D` ch 0 packets; `S` (settle) asks for everything
//! that is pending *now*. Each source here:
//!
//! * produces whole lines, each ending in `\n` (a line longer than [`MAX_LINE`] is cut into
//!   pieces of that size, each given a `\n`);
//! * reads only what it is asked for: [`EventSource::read_new`] returns at most `max_lines`
//!   lines and says whether it stopped because it ran dry ([`Batch::drained`]). The backlog
//!   stays where it was produced (the kernel's ring, the file on disk, the agent's ring
//!   buffer), so the agent's memory is bounded by the batch, and a monitor whose client is slow
//!   simply reads later. Where the producer overwrites old data meanwhile (the kernel ring,
//!   the audit ring), the loss is counted ([`EventSource::dropped`]) and announced to the
//!   client in a line `[tuppence: N lines dropped]` in place of the lost ones;
//! * tells the event loop how to wake it: [`EventSource::poll_fd`] (readable = call
//!   `read_new`), or [`EventSource::poll_interval`] (call `read_new` on a timer), or neither
//!   (the agent's trail: call after pushing a record).
//!
//! Edge-triggered loops must call `read_new` until `drained` is true before waiting again.
//!
//! Source names, as in the request: `kmsg`, `file:PATH`, `agent` ([`open_source`]). Who a
//! monitor reads as — the agent, or one of the users `--allow-user` permits — is [`ReadAs`].
//!
//! Nothing here blocks: a followed file is opened like an extract ([`crate::paths`]), and a
//! FIFO, socket or device is refused with EINVAL (22), a directory with EISDIR (21), whether
//! it is there when the monitor starts or appears later (the monitor then ends with that
//! status).

mod access;
mod audit;
mod file_follow;
mod kmsg;

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use bytes::Bytes;

pub use access::ReadAs;
pub use audit::{
    AuditEvent, AuditOutcome, AuditSubscriber, AuditTrail, CommandEnd, Cut,
    DEFAULT_CAPACITY as AUDIT_CAPACITY,
};
pub use file_follow::{DEFAULT_INTERVAL as FILE_POLL_INTERVAL, FileFollow};
pub use kmsg::Kmsg;

use crate::paths::PathError;
use crate::status;

/// The longest line a source emits in one piece (bounds each source's partial-line buffer).
pub const MAX_LINE: usize = 64 * 1024;

/// Lines read in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The lines, oldest first, each ending in `\n`.
    pub lines: Vec<Bytes>,
    /// True when the source had nothing more to give at the time of the call; false when the
    /// call stopped at `max_lines` and more is pending.
    pub drained: bool,
}

/// A failed source operation.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The request named no known source.
    #[error("unknown event source {0:?}")]
    Unknown(String),
    /// The path of a `file:` source cannot be followed (a directory, a FIFO, socket or
    /// device, or the kernel refused it).
    #[error(transparent)]
    Path(#[from] PathError),
    /// The monitor's readers may not read this source (see [`ReadAs`]).
    #[error("permission denied: {0}")]
    Denied(&'static str),
    /// Opening or reading the source failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl SourceError {
    /// The status word: 2 for an unknown source (ARCHITECTURE.md, "Link protocol"), 13 for
    /// a source the readers may not read, 21 for a directory, 22 for a FIFO, socket or
    /// device, else the errno.
    pub fn errno(&self) -> u32 {
        match self {
            SourceError::Unknown(_) => status::ENOENT,
            SourceError::Path(e) => e.errno(),
            SourceError::Denied(_) => status::EACCES,
            SourceError::Io { source, .. } => status::errno_of(source),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> SourceError {
        SourceError::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// What the monitor machinery needs from a source.
pub trait EventSource {
    /// An fd that becomes readable when `read_new` has something, if the source has one.
    fn poll_fd(&self) -> Option<BorrowedFd<'_>>;

    /// How often to call `read_new` when there is no fd to poll (regular files are always
    /// "readable" to poll, so they need a timer).
    fn poll_interval(&self) -> Option<Duration>;

    /// Reads at most `max_lines` new lines.
    fn read_new(&mut self, max_lines: usize) -> Result<Batch, SourceError>;

    /// For settle: like `read_new`, but first looks for anything produced up to now, even if
    /// the poll timer has not fired (e.g. a rotated file). Call until `drained`.
    fn flush(&mut self, max_lines: usize) -> Result<Batch, SourceError> {
        self.read_new(max_lines)
    }

    /// Lines lost because the producer overwrote them before they were read.
    fn dropped(&self) -> u64;
}

/// Opens a source by its request name: `kmsg`, `agent` (a new subscriber of `trail`) or
/// `file:PATH`, read as `read_as`. Unknown names → [`SourceError::Unknown`] (status 2); a
/// source the readers may not read → 13.
pub fn open_source(
    name: &[u8],
    trail: &AuditTrail,
    read_as: &ReadAs,
) -> Result<Box<dyn EventSource + Send>, SourceError> {
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    match name {
        b"kmsg" => Ok(Box::new(read_as.open_kmsg(Kmsg::open)?)),
        b"agent" => {
            read_as.may_read_trail()?;
            Ok(Box::new(trail.subscribe()))
        }
        _ => match name.strip_prefix(b"file:") {
            Some(path) if !path.is_empty() => {
                use std::os::unix::ffi::OsStrExt;
                let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
                Ok(Box::new(FileFollow::open_as(path, read_as.clone())?))
            }
            _ => Err(SourceError::Unknown(
                String::from_utf8_lossy(name).into_owned(),
            )),
        },
    }
}

/// The line announcing lost lines.
pub(crate) fn dropped_line(n: u64) -> Bytes {
    Bytes::from(format!("[tuppence: {n} lines dropped]\n"))
}

/// Formats a timestamp in microseconds like the kernel log: `[    12.345678] `.
pub(crate) fn push_timestamp(out: &mut Vec<u8>, micros: u64) {
    out.extend_from_slice(
        format!("[{:5}.{:06}] ", micros / 1_000_000, micros % 1_000_000).as_bytes(),
    );
}
