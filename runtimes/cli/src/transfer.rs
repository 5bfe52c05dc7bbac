//! `tuppence inject` and `tuppence extract`.
//!
//! Both ends write atomically where a file is replaced: the agent writes an injected file
//! to a temporary and renames it into place, and so does `extract` locally for a new or
//! regular file, so a failed or interrupted transfer never leaves a truncated file where a
//! test expects a whole one. Other local destinations follow `cp` (ARCHITECTURE.md, "Agent
//! behaviour"; [`LocalFile`]): a FIFO, a device or `-` is written in place, a symbolic link
//! is followed; a failed write there (`/dev/full`) is reported with status 205.
//!
//! Ctrl-C during `inject` aborts the transfer at once, wherever it waits (for the agent,
//! for room on the link, or for input from a stalled pipe): the agent is sent an interrupt
//! and removes its temporary, and the status is 130; a second Ctrl-C exits without
//! waiting for anything. During `extract` nothing remote needs cleaning up, so the first
//! Ctrl-C removes the local temporary and exits at once, even while the agent is silent.
//!
//! An extract whose remote file shrank while the agent read it fails (the agent answers
//! 61, ENODATA): what arrived is no state the file was ever in, so it is discarded and the
//! reason printed, rather than a short copy passed off as the file.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tuppence::link::status::ENODATA;
use tuppence_blocking::{AbortHandle, Error as SessionError, errno_text};
use tuppence_transport::{LocalFile, LocalFileError};

use crate::cli::{ExtractArgs, InjectArgs};
use crate::exit::{self, Failure};

/// Mode of an injected file read from stdin (no local file to copy the mode from).
const STDIN_MODE: u32 = 0o644;
/// Pieces read ahead from a source that may stall (a pipe, a terminal), and their size:
/// what the session reads at once, whole packets (256 KiB pieces each left an 80-byte
/// packet behind).
const READ_AHEAD: usize = 4;
const READ_PIECE: usize = 8 * tuppence::wire::DEFAULT_MAX_CHUNK;
/// How often a wait for such a source checks whether the user interrupted.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

pub fn inject(args: InjectArgs) -> Result<u8, Failure> {
    let from_stdin = args.local.as_os_str() == "-";
    let (source, size, local_mode): (Box<dyn Read + Send>, Option<u64>, u32) = if from_stdin {
        (Box::new(io::stdin()), None, STDIN_MODE)
    } else {
        let f = File::open(&args.local)
            .map_err(|e| Failure::local(format!("cannot open {}", args.local.display()), &e))?;
        let meta = f
            .metadata()
            .map_err(|e| Failure::local(args.local.display(), &e))?;
        if meta.is_dir() {
            return Err(Failure::usage(format!(
                "{} is a directory (inject copies one file)",
                args.local.display()
            )));
        }
        let size = meta.is_file().then_some(meta.len());
        // Permission bits only: a local setuid or setgid bit must not turn into a remote
        // root-owned setuid file by accident (`--mode` can still ask for one).
        (Box::new(f), size, meta.permissions().mode() & 0o777)
    };
    let remote = if args.remote.ends_with('/') {
        let name = args
            .local
            .file_name()
            .filter(|_| !from_stdin)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{} names a directory; give the file name (stdin has none)",
                    args.remote
                ))
            })?;
        format!("{}{}", args.remote, name.to_string_lossy())
    } else {
        args.remote.clone()
    };
    if remote.is_empty() {
        return Err(Failure::usage("empty remote path"));
    }
    let mode = args.mode.unwrap_or(local_mode);

    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let user = args.user.clone().unwrap_or_else(|| conn.default_user());
    let watch = Interrupts::watch(None, false, Some(conn.session().abort_handle()))?;
    let bar = progress_bar(size);
    // A source that is not a regular file (stdin, a FIFO, a device) may stall forever: it
    // is read on a thread of its own, so that a Ctrl-C is not stuck behind a read.
    let reader: Box<dyn Read + Send> = if size.is_some() {
        Box::new(Watched {
            inner: source,
            stop: watch.flag.clone(),
        })
    } else {
        Box::new(ReadAhead::spawn(source, watch.flag.clone()))
    };
    let result = conn
        .session()
        .inject(&user, &remote, mode, reader, |n| bar.set_position(n));
    let interrupted = watch.finish();
    match result {
        Ok(n) => {
            bar.finish();
            tracing::info!(bytes = n, %remote, mode = %format_args!("{mode:04o}"), "injected");
            Ok(0)
        }
        Err(e) => {
            bar.abandon();
            if interrupted {
                return Err(Failure::new(
                    exit::INTERRUPTED,
                    format!("inject interrupted; {remote} was not written"),
                )
                .at(&ctx));
            }
            Err(transfer_failure(e, "inject into", &remote, &args.local).at(&ctx))
        }
    }
}

pub fn extract(args: ExtractArgs) -> Result<u8, Failure> {
    if args.remote.is_empty() {
        return Err(Failure::usage("empty remote path"));
    }
    // Opened before connecting: a local problem (no such directory, no permission, a
    // dangling link) is reported without touching the target. A FIFO's open waits for its
    // reader, as `cp` does.
    let mut dest = LocalFile::for_extract(&args.local, &args.remote).map_err(local_failure)?;
    let shown = if args.local.as_os_str() == "-" {
        PathBuf::from("stdout")
    } else {
        dest.path().to_owned()
    };

    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let user = args.user.clone().unwrap_or_else(|| conn.default_user());
    let watch = Interrupts::watch(dest.temporary().map(Path::to_owned), true, None)?;
    let bar = progress_bar(None);
    let writer = Watched {
        inner: &mut dest,
        stop: watch.flag.clone(),
    };
    let result = conn
        .session()
        .extract(&user, &args.remote, writer, |n| bar.set_position(n));
    let interrupted = watch.finish();
    drop(conn);
    match result {
        Ok(n) => {
            dest.commit().map_err(|e| local_failure(e).at(&ctx))?;
            bar.finish();
            tracing::info!(bytes = n, remote = %args.remote, "extracted");
            Ok(0)
        }
        Err(e) => {
            bar.abandon();
            // A replaced file's temporary is removed here; nothing was renamed.
            drop(dest);
            if interrupted {
                return Err(Failure::new(
                    exit::INTERRUPTED,
                    "extract interrupted; no local file was written",
                )
                .at(&ctx));
            }
            Err(transfer_failure(e, "extract", &args.remote, &shown).at(&ctx))
        }
    }
}

/// A local destination that cannot be opened or put in place: a local I/O failure, or a
/// usage error when the command line names no file (a remote path without a name).
fn local_failure(e: LocalFileError) -> Failure {
    let what = format!("cannot {} {}", e.action, e.path.display());
    if e.source.kind() == io::ErrorKind::InvalidInput {
        Failure::usage(format!("{what}: {}", exit::io_text(&e.source)))
    } else {
        Failure::local(what, &e.source)
    }
}

/// Names the file that failed: the remote one for the agent's errors, the local one for ours.
fn transfer_failure(e: SessionError, verb: &str, remote: &str, local: &Path) -> Failure {
    match e {
        SessionError::Remote { errno: ENODATA, .. } if verb == "extract" => Failure::new(
            exit::REMOTE_FAILURE,
            format!(
                "cannot extract {remote}: it shrank while it was read (truncated or rewritten \
                 meanwhile; {}); nothing was kept",
                errno_text(ENODATA)
            ),
        ),
        SessionError::Remote { errno, .. } => Failure::new(
            exit::REMOTE_FAILURE,
            format!("cannot {verb} {remote}: {}", errno_text(errno)),
        ),
        SessionError::Local { source, .. } => {
            let name = if local.as_os_str() == "-" {
                PathBuf::from(if verb == "extract" { "stdout" } else { "stdin" })
            } else {
                local.to_owned()
            };
            Failure::local(name.display(), &source)
        }
        other => Failure::session(other),
    }
}

/// A byte-counting bar on a terminal (bytes, rate and, when the size is known, ETA);
/// nothing otherwise, so logs and pipes stay clean. The protocol does not tell an
/// extract's size in advance, so extract shows bytes and rate only.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match size {
        Some(n) => (
            ProgressBar::new(n),
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Ctrl-C (and TERM, HUP) during a transfer: the first sets a flag the data path checks
/// and aborts the session's transfers through `abort` (or, with `at_once`, acts like the
/// second); the second removes the local temporary and exits.
struct Interrupts {
    flag: Arc<AtomicBool>,
    handle: signal_hook::iterator::Handle,
}

impl Interrupts {
    fn watch(
        cleanup: Option<PathBuf>,
        at_once: bool,
        abort: Option<AbortHandle>,
    ) -> Result<Interrupts, Failure> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| Failure::local("signal handlers", &e))?;
        let handle = signals.handle();
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let cleanup = Mutex::new(cleanup);
        let spawned = std::thread::Builder::new()
            .name("tuppence-signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if seen.swap(true, Ordering::SeqCst) || at_once {
                        if let Some(p) = cleanup.lock().unwrap_or_else(|e| e.into_inner()).take() {
                            let _ = std::fs::remove_file(p);
                        }
                        exit::say("tuppence: interrupted");
                        std::process::exit(i32::from(exit::INTERRUPTED));
                    }
                    if let Some(abort) = &abort {
                        abort.abort();
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(Failure::local("signal thread", &e));
        }
        Ok(Interrupts { flag, handle })
    }

    /// Stops watching; true if the user interrupted.
    fn finish(self) -> bool {
        self.handle.close();
        self.flag.load(Ordering::SeqCst)
    }
}

/// A reader or writer that fails once the user has interrupted, so the session's transfer
/// loop stops (and, for inject, aborts the remote side) at the next chunk.
struct Watched<T> {
    inner: T,
    stop: Arc<AtomicBool>,
}

fn interrupted_error() -> io::Error {
    io::Error::other("interrupted by the user")
}

impl<T: Read> Read for Watched<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(interrupted_error());
        }
        self.inner.read(buf)
    }
}

impl<T: Write> Write for Watched<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(interrupted_error());
        }
        self.inner.write(buf)
    }
    /// Passed through: the session writes every piece it has ready with one `writev`.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(interrupted_error());
        }
        self.inner.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A source read on a detached thread of its own, a piece ahead, so that a read that never
/// returns (a stalled pipe, an idle terminal) cannot keep the transfer from noticing the
/// user's Ctrl-C: waits for the next piece check the flag every [`INTERRUPT_POLL`]. The
/// thread is left behind when the process exits.
struct ReadAhead {
    rx: Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    at: usize,
    eof: bool,
    stop: Arc<AtomicBool>,
}

impl ReadAhead {
    fn spawn(mut source: Box<dyn Read + Send>, stop: Arc<AtomicBool>) -> ReadAhead {
        let (tx, rx) = sync_channel(READ_AHEAD);
        let spawned = std::thread::Builder::new()
            .name("tuppence-source".into())
            .spawn(move || {
                loop {
                    let mut buf = vec![0u8; READ_PIECE];
                    let msg = match source.read(&mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            Ok(buf)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(e),
                    };
                    let last = !matches!(&msg, Ok(b) if !b.is_empty());
                    if tx.send(msg).is_err() || last {
                        return;
                    }
                }
            });
        let rx = match spawned {
            Ok(_) => rx,
            Err(e) => {
                // The transfer then fails with this error instead of reading nothing.
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(e));
                rx
            }
        };
        ReadAhead {
            rx,
            piece: Vec::new(),
            at: 0,
            eof: false,
            stop,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(interrupted_error());
            }
            if let Some(rest) = self.piece.get(self.at..)
                && !rest.is_empty()
            {
                let n = rest.len().min(buf.len());
                buf.get_mut(..n)
                    .unwrap_or_default()
                    .copy_from_slice(rest.get(..n).unwrap_or_default());
                self.at += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            match self.rx.recv_timeout(INTERRUPT_POLL) {
                Ok(Ok(piece)) if piece.is_empty() => self.eof = true,
                Ok(Ok(piece)) => {
                    self.piece = piece;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_pieces_are_whole_packets() {
        assert_eq!(READ_PIECE % tuppence::wire::DEFAULT_MAX_CHUNK, 0);
    }

    /// What the read-ahead thread reads arrives whole and in order, whatever the size of
    /// the caller's reads.
    #[test]
    fn read_ahead_keeps_every_byte_in_order() {
        let data: Vec<u8> = (0..3 * READ_PIECE + 1234)
            .map(|i| (i % 251) as u8)
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut r = ReadAhead::spawn(Box::new(io::Cursor::new(data.clone())), stop);
        let mut back = Vec::new();
        let mut buf = vec![0u8; 100_000];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert!(back == data);
    }
}
