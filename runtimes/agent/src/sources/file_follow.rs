//! `file:PATH`: lines appended to a file after the monitor started (`tail -F`).
//!
//! * Starts at the file's current end. A file that does not exist yet is waited for; once it
//!   appears, all of it is new.
//! * **Rotation** (the name now refers to another inode, e.g. `logrotate` renamed the file and
//!   created a new one): the old file is read to its end first, so nothing written before the
//!   rotation is lost, then the new file is followed from its start.
//! * **Truncation** (same inode, size below what was read, e.g. `copytruncate` or `> file`):
//!   reading restarts at offset 0. A truncation followed by regrowth past the old size between
//!   two polls cannot be told from appends; those lines are missed.
//! * A partial last line (no `\n` yet) is held back until it is completed, because an event is
//!   a whole line; it is emitted with a `\n` added when the file is rotated or truncated under
//!   it, or when it reaches [`MAX_LINE`].
//!
//! * **Who reads**: the file is opened, and reopened at a rotation, as the monitor's readers
//!   ([`ReadAs`]) with the kernel resolving the path ([`crate::paths`]); only a regular file
//!   is opened (`O_NONBLOCK`, after an `O_PATH` look), so a FIFO at the path — there at the
//!   start or swapped in later — can never make the agent wait for a writer. It ends the
//!   monitor with EINVAL instead.
//!
//! Regular files are always "readable" for `poll`, so this source has no fd to poll: the loop
//! calls [`EventSource::read_new`] every [`EventSource::poll_interval`] (200 ms by default), and
//! settle calls [`EventSource::flush`]. The backlog is the file itself; memory is bounded by
//! one read chunk plus one line.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{Batch, EventSource, MAX_LINE, ReadAs, SourceError};

/// How much is read from the file at a time.
const CHUNK: usize = 64 * 1024;

/// The default polling interval: fast enough for interactive use, slow enough to cost nothing.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

/// A follower of one file.
#[derive(Debug)]
pub struct FileFollow {
    path: PathBuf,
    read_as: ReadAs,
    /// Which of `read_as`'s readers opened the current file.
    reader: usize,
    file: Option<File>,
    ident: (u64, u64),
    offset: u64,
    pending: BytesMut,
    interval: Duration,
}

impl FileFollow {
    /// Starts following `path` at its current end, as the agent.
    pub fn open(path: &Path) -> Result<FileFollow, SourceError> {
        FileFollow::open_as(path, ReadAs::Agent)
    }

    /// Starts following `path` at its current end, read as `read_as`. Fails for a directory
    /// (21), a FIFO, socket or device (22), or what the readers may not open (the kernel's
    /// errno); a path that does not exist yet is waited for.
    pub fn open_as(path: &Path, read_as: ReadAs) -> Result<FileFollow, SourceError> {
        let mut follow = FileFollow {
            path: path.to_path_buf(),
            read_as,
            reader: 0,
            file: None,
            ident: (0, 0),
            offset: 0,
            pending: BytesMut::new(),
            interval: DEFAULT_INTERVAL,
        };
        if follow.open_new()?
            && let Some(file) = follow.file.as_mut()
        {
            follow.offset = file
                .seek(SeekFrom::End(0))
                .map_err(|e| SourceError::io(format!("seek {}", path.display()), e))?;
        }
        Ok(follow)
    }

    /// Changes the polling interval.
    pub fn with_interval(mut self, interval: Duration) -> FileFollow {
        self.interval = interval;
        self
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &str, e: io::Error) -> SourceError {
        SourceError::io(format!("{op} {}", self.path.display()), e)
    }

    /// Takes one line out of `pending`: up to and including a `\n`, or a [`MAX_LINE`] piece.
    fn take_line(&mut self) -> Option<Bytes> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(i) if i < MAX_LINE => Some(self.pending.split_to(i + 1).freeze()),
            _ if self.pending.len() >= MAX_LINE => {
                let mut piece = self.pending.split_to(MAX_LINE);
                piece.extend_from_slice(b"\n");
                Some(piece.freeze())
            }
            _ => None,
        }
    }

    /// Emits the held-back partial line (the file it belonged to is gone or was cut).
    fn take_partial(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let mut rest = self.pending.split();
        rest.extend_from_slice(b"\n");
        Some(rest.freeze())
    }

    /// Opens the file now at `path` from its start; false if there is none (yet).
    fn open_new(&mut self) -> Result<bool, SourceError> {
        match self.read_as.open_regular(&self.path) {
            Ok((opened, reader)) => {
                self.ident = (opened.stat.st_dev, opened.stat.st_ino);
                self.reader = reader;
                self.offset = 0;
                self.file = Some(File::from(opened.fd));
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// At the end of the open file: has the name moved on, or was the file cut? Returns true
    /// when there is something new to read.
    fn check_rotation(&mut self, batch: &mut Batch) -> Result<bool, SourceError> {
        let meta = match self.read_as.stat(self.reader, &self.path) {
            Ok(meta) => meta,
            // Removed, and no successor yet: keep the old file open (a writer may still be
            // appending to it) and look again next time.
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if (meta.st_dev, meta.st_ino) != self.ident {
            batch.lines.extend(self.take_partial());
            self.file = None;
            return self.open_new();
        }
        let len = u64::try_from(meta.st_size).unwrap_or(0);
        if len < self.offset {
            batch.lines.extend(self.take_partial());
            if let Some(file) = self.file.as_mut() {
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| self.err("seek", e))?;
            }
            self.offset = 0;
            return Ok(len > 0);
        }
        Ok(false)
    }

    /// Reads one chunk into `pending`; 0 at the end of the file.
    fn read_chunk(&mut self) -> Result<usize, SourceError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let start = self.pending.len();
        self.pending.resize(start + CHUNK, 0);
        let result = loop {
            match file.read(&mut self.pending[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(n) => {
                self.pending.truncate(start + n);
                self.offset += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.pending.truncate(start);
                Err(self.err("read", e))
            }
        }
    }
}

impl EventSource for FileFollow {
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn read_new(&mut self, max_lines: usize) -> Result<Batch, SourceError> {
        let mut batch = Batch::default();
        loop {
            while batch.lines.len() < max_lines {
                match self.take_line() {
                    Some(line) => batch.lines.push(line),
                    None => break,
                }
            }
            if batch.lines.len() >= max_lines {
                return Ok(batch);
            }
            if self.file.is_none() {
                if !self.open_new()? {
                    batch.drained = true;
                    return Ok(batch);
                }
                continue;
            }
            if self.read_chunk()? > 0 {
                continue;
            }
            if !self.check_rotation(&mut batch)? {
                batch.drained = true;
                return Ok(batch);
            }
        }
    }

    fn dropped(&self) -> u64 {
        0
    }
}
