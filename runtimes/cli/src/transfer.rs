//! `tuppence inject` and `tuppence extract`.
//!
//! Both ends write atomically: the agent writes an injected file to a temporary and renames
//! it into place, and so does `extract` locally, so a failed or interrupted transfer never
//! leaves a truncated file where a test expects a whole one.
//!
//! Ctrl-C during `inject` is noticed between chunks: the transfer is aborted with an
//! interrupt, so the agent removes its temporary (this matters for `local`, whose agent
//! dies with us), and the status is 130; a second Ctrl-C exits at once. During `extract`
//! nothing remote needs cleaning up, so the first Ctrl-C removes the local temporary and
//! exits at once, even while the agent is silent.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tuppence_blocking::{Error as SessionError, errno_text};

use crate::cli::{ExtractArgs, InjectArgs};
use crate::exit::{self, Failure};

/// Mode of an injected file read from stdin (no local file to copy the mode from).
const STDIN_MODE: u32 = 0o644;

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
    let watch = Interrupts::watch(None, false)?;
    let bar = progress_bar(size);
    let reader = Watched {
        inner: source,
        stop: watch.flag.clone(),
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
    let to_stdout = args.local.as_os_str() == "-";
    let dest = if !to_stdout && args.local.is_dir() {
        let name = Path::new(&args.remote)
            .file_name()
            .ok_or_else(|| Failure::usage(format!("{} has no file name", args.remote)))?;
        args.local.join(name)
    } else {
        args.local.clone()
    };
    // Create the temporary before connecting: a local problem (no such directory, no
    // permission) is then reported without touching the target.
    let mut temp = if to_stdout {
        None
    } else {
        Some(TempFile::beside(&dest)?)
    };

    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let user = args.user.clone().unwrap_or_else(|| conn.default_user());
    let watch = Interrupts::watch(temp.as_ref().map(|t| t.path.clone()), true)?;
    let bar = progress_bar(None);
    let sink: Box<dyn Write> = match &temp {
        Some(t) => Box::new(&t.file),
        None => Box::new(io::stdout().lock()),
    };
    let writer = Watched {
        inner: sink,
        stop: watch.flag.clone(),
    };
    let result = conn
        .session()
        .extract(&user, &args.remote, writer, |n| bar.set_position(n));
    let interrupted = watch.finish();
    drop(conn);
    match result {
        Ok(n) => {
            if let Some(t) = temp.take() {
                t.persist(&dest)?;
            }
            bar.finish();
            tracing::info!(bytes = n, remote = %args.remote, "extracted");
            Ok(0)
        }
        Err(e) => {
            bar.abandon();
            // `temp` is dropped here, removing the partial file.
            drop(temp);
            if interrupted {
                return Err(Failure::new(
                    exit::INTERRUPTED,
                    "extract interrupted; no local file was written",
                )
                .at(&ctx));
            }
            Err(transfer_failure(e, "extract", &args.remote, &dest).at(&ctx))
        }
    }
}

/// Names the file that failed: the remote one for the agent's errors, the local one for ours.
fn transfer_failure(e: SessionError, verb: &str, remote: &str, local: &Path) -> Failure {
    match e {
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
/// (or, with `at_once`, acts like the second); the second removes the local temporary and
/// exits.
struct Interrupts {
    flag: Arc<AtomicBool>,
    handle: signal_hook::iterator::Handle,
}

impl Interrupts {
    fn watch(cleanup: Option<PathBuf>, at_once: bool) -> Result<Interrupts, Failure> {
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
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A temporary file beside the destination (same directory, so the final rename is atomic
/// and never crosses a filesystem), removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    /// Permission bits to give the result: those of the file it replaces, if any.
    keep_mode: Option<u32>,
    persisted: bool,
}

impl TempFile {
    fn beside(dest: &Path) -> Result<TempFile, Failure> {
        let name = dest
            .file_name()
            .ok_or_else(|| Failure::usage(format!("{} has no file name", dest.display())))?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let keep_mode = std::fs::metadata(dest)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions().mode() & 0o7777);
        let pid = std::process::id();
        for n in 0u32..100 {
            let path = dir.join(format!(".{}.tuppence-{pid}-{n}", name.to_string_lossy()));
            // 0666 minus the umask, as for any new file; `create_new` never follows or
            // reuses something already there.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        keep_mode,
                        persisted: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Failure::local(
                        format!("cannot create a file in {}", dir.display()),
                        &e,
                    ));
                }
            }
        }
        Err(Failure::new(
            exit::LOCAL_IO,
            format!("cannot find a free temporary name in {}", dir.display()),
        ))
    }

    /// Flushes to disk and renames into place.
    fn persist(mut self, dest: &Path) -> Result<(), Failure> {
        let fail = |e: &io::Error| Failure::local(dest.display(), e);
        self.file.sync_all().map_err(|e| fail(&e))?;
        if let Some(mode) = self.keep_mode {
            self.file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| fail(&e))?;
        }
        std::fs::rename(&self.path, dest).map_err(|e| fail(&e))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
