//! `tuppence run`: a remote command that behaves like a local one.
//!
//! Three activities share one `&Run`: this thread writes the command's output to ours, a
//! forwarder feeds it our stdin, and a signal thread turns Ctrl-C into remote signals (started
//! only once the command has run for [`SIGNAL_THREAD_AFTER`]: most commands end sooner). Our
//! stdin is read by a detached thread of its own (a read on a terminal cannot be
//! cancelled), so the forwarder polls a "done" flag between chunks and never outlives the
//! command.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;
use tuppence::link::{COMMAND_DEADLINE_GRACE, Command, Outcome, Signal};
use tuppence::wire::{Dialect, field};
use tuppence_blocking::{Run, RunEvent, errno_text};

use crate::cli::RunArgs;
use crate::exit::{self, Failure};
use crate::term::{self, RawTerminal};

/// Size of one read from our stdin, and how many such chunks may wait for the link. Whole
/// packets: a full pipe's 64 KiB went out as two full packets and one of 20 bytes.
const STDIN_CHUNK: usize = 2 * tuppence::wire::DEFAULT_MAX_CHUNK;
const STDIN_QUEUE: usize = 4;
/// How often the stdin forwarder checks whether the command has ended.
const FORWARDER_POLL: Duration = Duration::from_millis(100);
/// A command still running after this gets the signal thread. A signal that arrives sooner
/// is held by the handler (signal-hook's self-pipe) and forwarded when the thread starts;
/// a shorter command never pays for a thread it did not need.
const SIGNAL_THREAD_AFTER: Duration = Duration::from_millis(20);
/// How long a command that ignores SIGPIPE may keep writing into a closed pipe.
const PIPE_GRACE: Duration = Duration::from_secs(1);

pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let command = join_command(&args.command);
    let env = environment(&args.env)?;
    let mut outputs = Outputs::open(args.stdout.as_deref(), args.stderr.as_deref())?;
    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let user = args.user.clone().unwrap_or_else(|| conn.default_user());

    let mut cmd = Command::new(command).user(user.clone()).tty(args.tty);
    if args.timeout > 0.0 {
        cmd = cmd.timeout(Duration::from_secs_f64(args.timeout));
    }
    for (name, value) in &env {
        cmd = cmd.env(name, value);
    }
    // What the agent is told (60 in 3.0 without --timeout), for the deadline's message.
    let timeout_secs = cmd.timeout_secs_in(conn.target.dialect);
    let session = conn.session();
    // Caught from before the command starts: a Ctrl-C from then on reaches the command
    // (held until the signal thread starts) instead of killing us and orphaning it.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| Failure::local("signal handlers", &e))?;
    let signals_handle = signals.handle();
    // Reading a terminal nobody asked us to forward would steal the user's typing and
    // leave the remote command waiting for an EOF that never comes: close its stdin.
    // Nothing to read on a stdin that is /dev/null or closed (`</dev/null`, `<&-`, as
    // scripts and harnesses start us): the command starts with its stdin closed (the
    // request and the end in one write), without the reader and forwarder threads (two
    // of the thread wake-ups of a short run).
    let forward_stdin = (args.tty || args.interactive || !io::stdin().is_terminal())
        && !has_nothing_to_read(io::stdin());
    let run = if forward_stdin {
        session.run(cmd)
    } else {
        session.run_without_stdin(cmd)
    }
    .map_err(|e| Failure::session(e).at(&ctx))?;
    log_start(&run, conn.target.dialect);

    let raw = if args.tty && forward_stdin {
        RawTerminal::enable().map_err(|e| Failure::local("terminal", &e))?
    } else {
        None
    };
    let (stdin, stop_stdin) = if forward_stdin {
        let (rx, stop) = spawn_stdin_reader();
        (Some(rx), stop)
    } else {
        (None, None)
    };
    let done = AtomicBool::new(false);

    let result = std::thread::scope(|scope| {
        let run = &run;
        if let Some(rx) = stdin {
            let done = &done;
            scope.spawn(move || forward_stdin_to(run, rx, done));
        }
        let mut signals = Some(signals);
        let start_signal_thread = || {
            if let Some(signals) = signals.take() {
                let spawned = std::thread::Builder::new()
                    .name("tuppence-signal".into())
                    .spawn_scoped(scope, move || forward_signals(run, signals));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the signal thread; Ctrl-C is not forwarded");
                }
            }
        };
        let r = pump_output(run, &mut outputs, start_signal_thread);
        done.store(true, Ordering::SeqCst);
        // Wakes the forwarder at once. If the queue is full it is busy writing, and its
        // next write fails (the command is gone); the poll stays as the last resort.
        if let Some(stop) = &stop_stdin {
            let _ = stop.try_send(StdinChunk::Stop);
        }
        signals_handle.close();
        r
    });
    drop(raw);
    drop(run);
    // The client's own deadline ended it, not the agent (ARCHITECTURE.md, "Client
    // deadlines").
    let ended_here = conn.session().stats().deadlines_expired > 0;
    // Closes the session (after the KILL of an expired deadline has left); an embedded
    // agent is stopped, killing anything left over.
    drop(conn);

    let (outcome, local_failure) = result.map_err(|e| Failure::session(e).at(&ctx))?;
    if let Some(f) = local_failure {
        return Err(f.at(&ctx));
    }
    if outcome == Outcome::TimedOut && ended_here {
        return Err(Failure::new(
            exit::TIMEOUT,
            format!(
                "command timed out after {} s; the agent had not ended it {} s later, so it was sent KILL and not waited for",
                timeout_secs,
                COMMAND_DEADLINE_GRACE.as_secs()
            ),
        )
        .at(&ctx));
    }
    outcome_status(outcome, args.timeout, &user).map_err(|f| f.at(&ctx))
}

/// What the exit status of `tuppence run` is for each way a command can end.
pub fn outcome_status(outcome: Outcome, timeout: f64, user: &str) -> Result<u8, Failure> {
    match outcome {
        Outcome::Exited(code) => Ok(u8::try_from(code).unwrap_or(u8::MAX)),
        Outcome::Signaled(signo) => Ok(u8::try_from(signo.saturating_add(128)).unwrap_or(u8::MAX)),
        Outcome::Completed => Ok(0),
        Outcome::TimedOut => {
            let after = if timeout > 0.0 {
                format!("after {} s", timeout.ceil())
            } else {
                "at the agent's default timeout".to_owned()
            };
            Err(Failure::new(
                exit::TIMEOUT,
                format!("command timed out {after} and was killed by the agent"),
            ))
        }
        Outcome::Failed { errno } => Err(Failure::new(
            exit::REMOTE_FAILURE,
            format!(
                "command did not start as user {user:?}: {}",
                errno_text(errno)
            ),
        )),
        Outcome::LinkLost(e) => {
            let f = exit::link(&e);
            Err(Failure::new(
                f.code,
                format!("connection lost while the command ran: {}", f.message),
            ))
        }
    }
}

/// The command words joined by spaces, as ssh does: the remote `/bin/sh -c` parses them.
pub fn join_command(words: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(w.as_bytes());
    }
    out
}

/// One `NAME=VALUE` for the remote environment, as bytes (names and values need not be
/// UTF-8).
type EnvVar = (Vec<u8>, Vec<u8>);

/// `-e NAME=VALUE` and `-e NAME` (value from our environment; skipped when unset).
fn environment(specs: &[OsString]) -> Result<Vec<EnvVar>, Failure> {
    let mut env = Vec::new();
    for spec in specs {
        let bytes = spec.as_bytes();
        let (name, value) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) => (&bytes[..i], Some(bytes[i + 1..].to_vec())),
            None => (bytes, None),
        };
        if name.is_empty() {
            return Err(Failure::usage(format!(
                "-e {:?}: empty variable name (expected NAME or NAME=VALUE)",
                spec
            )));
        }
        let value = match value {
            Some(v) => v,
            None => match std::env::var_os(OsStr::from_bytes(name)) {
                Some(v) => v.into_vec(),
                None => {
                    tracing::warn!(
                        name = %String::from_utf8_lossy(name),
                        "-e: not set in this environment; not passed"
                    );
                    continue;
                }
            },
        };
        env.push((name.to_vec(), value));
    }
    Ok(env)
}

/// With `-v`, says which transaction and process group the command got, so a user can
/// find it again (`tuppence interrupt PGID` from another terminal).
fn log_start(run: &Run<'_>, dialect: Dialect) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    if dialect != Dialect::V4 {
        tracing::info!(xid = run.xid(), "command started");
        return;
    }
    let mask = field::mask_bit(field::PID) | field::mask_bit(field::PGID);
    match run.procinfo(mask) {
        Ok(fields) => {
            let get = |k| fields.iter().find(|f| f.kind == k).and_then(|f| f.as_u32());
            tracing::info!(
                xid = run.xid(),
                pid = get(field::PID),
                pgid = get(field::PGID),
                "command started"
            );
        }
        Err(_) => tracing::info!(xid = run.xid(), "command started (already ended)"),
    }
}

/// Whether `fd` certainly has nothing to read: it is `/dev/null`, whose reads end at once
/// (compared by device number, so a bind-mounted one counts too), or it is closed. std
/// reopens a closed stdin as `/dev/null` before `main`, so both are what `<&-` gives.
fn has_nothing_to_read(fd: impl std::os::fd::AsFd) -> bool {
    use rustix::fs::{FileType, fstat, stat};
    match fstat(fd) {
        Err(e) => e == rustix::io::Errno::BADF,
        Ok(st) => {
            FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                && stat("/dev/null").is_ok_and(|null| {
                    FileType::from_raw_mode(null.st_mode) == FileType::CharacterDevice
                        && null.st_rdev == st.st_rdev
                })
        }
    }
}

enum StdinChunk {
    Data(Vec<u8>),
    Eof,
    Failed(io::Error),
    /// The command's output ended: stop forwarding now (sent by `run` itself, so that an
    /// idle stdin pipe does not hold the exit for a whole [`FORWARDER_POLL`]).
    Stop,
}

/// Reads our stdin on a detached thread: a read on a terminal or an idle pipe cannot be
/// interrupted, and the process exits without waiting for it.
fn spawn_stdin_reader() -> (Receiver<StdinChunk>, Option<SyncSender<StdinChunk>>) {
    let (tx, rx) = sync_channel(STDIN_QUEUE);
    let stop = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("tuppence-stdin".into())
        .spawn(move || read_stdin(&tx));
    match spawned {
        Ok(_) => (rx, Some(stop)),
        Err(e) => {
            // The receiver then reports a disconnected channel, which closes remote stdin.
            tracing::warn!(error = %e, "cannot start the stdin reader; the command gets no input");
            (rx, None)
        }
    }
}

fn read_stdin(tx: &SyncSender<StdinChunk>) {
    let mut stdin = io::stdin().lock();
    loop {
        let mut buf = vec![0u8; STDIN_CHUNK];
        let msg = match stdin.read(&mut buf) {
            Ok(0) => StdinChunk::Eof,
            Ok(n) => {
                buf.truncate(n);
                StdinChunk::Data(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => StdinChunk::Failed(e),
        };
        let last = !matches!(msg, StdinChunk::Data(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

fn forward_stdin_to(run: &Run<'_>, rx: Receiver<StdinChunk>, done: &AtomicBool) {
    loop {
        match rx.recv_timeout(FORWARDER_POLL) {
            Ok(StdinChunk::Data(d)) => {
                // Fails once the command has ended (its stdin is gone): nothing to do.
                if run.write_stdin(&d).is_err() {
                    return;
                }
            }
            Ok(StdinChunk::Eof) => {
                let _ = run.close_stdin();
                return;
            }
            Ok(StdinChunk::Failed(e)) => {
                tracing::warn!(error = %exit::io_text(&e), "reading stdin failed; closing the command's stdin");
                let _ = run.close_stdin();
                return;
            }
            Ok(StdinChunk::Stop) => return,
            Err(RecvTimeoutError::Timeout) => {
                if done.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = run.close_stdin();
                return;
            }
        }
    }
}

/// First signal: forwarded by name. Second: KILL. Third: give up and exit now (the link
/// may be dead and the remote never answer).
fn forward_signals(run: &Run<'_>, mut signals: Signals) {
    let mut count = 0u32;
    for sig in signals.forever() {
        count += 1;
        let signal = match (count, sig) {
            (1, SIGINT) => Signal::INT,
            (1, SIGTERM) => Signal::TERM,
            (1, SIGHUP) => Signal::HUP,
            (1, SIGQUIT) => Signal::QUIT,
            (2, _) | (1, _) => Signal::KILL,
            _ => {
                term::restore();
                exit::say("tuppence: interrupted; not waiting for the remote command any longer");
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
        };
        tracing::info!(signal = %String::from_utf8_lossy(signal.name()), "forwarding signal to the remote command");
        if let Err(e) = run.interrupt(signal) {
            tracing::warn!(error = %e, "cannot forward the signal");
        }
    }
}

/// Copies output until the command ends. Returns how it ended and, if writing our output
/// failed, the failure to report instead of its status. Calls `start_signal_thread` once,
/// when the command has run for [`SIGNAL_THREAD_AFTER`].
fn pump_output(
    run: &Run<'_>,
    outputs: &mut Outputs,
    mut start_signal_thread: impl FnMut(),
) -> Result<(Outcome, Option<Failure>), tuppence_blocking::Error> {
    let mut local_failure = None;
    let mut discard = false;
    // When the remote command was sent SIGPIPE, and whether it was then sent KILL.
    let mut piped: Option<(Instant, bool)> = None;
    let mut signal_thread_at = Some(Instant::now() + SIGNAL_THREAD_AFTER);
    loop {
        let event = match signal_thread_at {
            Some(at) => {
                let now = Instant::now();
                let ev = run.next_timeout(Some(at.saturating_duration_since(now)))?;
                if ev.is_none() && Instant::now() >= at {
                    // Timed out, not ended: the command is a long one.
                    start_signal_thread();
                    signal_thread_at = None;
                    continue;
                }
                ev
            }
            None => run.next()?,
        };
        let (data, to_stderr) = match event {
            Some(RunEvent::Stdout(d)) => (d, false),
            Some(RunEvent::Stderr(d)) => (d, true),
            Some(RunEvent::Finished(outcome)) => return Ok((outcome, local_failure)),
            None => {
                return Ok((
                    Outcome::LinkLost(tuppence::link::LinkError::Closed),
                    local_failure,
                ));
            }
        };
        if discard {
            // A command that ignores SIGPIPE never sees EPIPE (the agent still reads its
            // output): it would run to its timeout. Give it a moment, then KILL it.
            if let Some((since, false)) = piped
                && since.elapsed() > PIPE_GRACE
            {
                let _ = run.interrupt(Signal::KILL);
                piped = Some((since, true));
            }
            continue;
        }
        if let Err(e) = outputs.write(to_stderr, &data) {
            discard = true;
            if e.kind() == io::ErrorKind::BrokenPipe {
                // Whoever reads us went away (`| head`): give the remote command the
                // SIGPIPE a local one would get, and report its death as a shell would.
                let _ = run.interrupt(Signal::named("PIPE"));
                piped = Some((Instant::now(), false));
            } else {
                let _ = run.interrupt(Signal::KILL);
                local_failure = Some(Failure::local(outputs.name(to_stderr), &e));
            }
        }
    }
}

/// Where the command's stdout and stderr go.
struct Outputs {
    stdout: Sink,
    stderr: Sink,
}

enum Sink {
    Stdout,
    Stderr,
    File(PathBuf, Arc<Mutex<File>>),
}

impl Outputs {
    fn open(stdout: Option<&Path>, stderr: Option<&Path>) -> Result<Outputs, Failure> {
        let create = |p: &Path| {
            File::create(p)
                .map(|f| Sink::File(p.to_owned(), Arc::new(Mutex::new(f))))
                .map_err(|e| Failure::local(format!("cannot create {}", p.display()), &e))
        };
        let out = match stdout {
            Some(p) => create(p)?,
            None => Sink::Stdout,
        };
        let err = match (stderr, &out) {
            // One file for both: share the handle so neither truncates or overwrites the
            // other's output.
            (Some(p), Sink::File(q, f)) if same_file(p, q) => Sink::File(q.clone(), f.clone()),
            (Some(p), _) => create(p)?,
            (None, _) => Sink::Stderr,
        };
        Ok(Outputs {
            stdout: out,
            stderr: err,
        })
    }

    fn write(&mut self, to_stderr: bool, data: &[u8]) -> io::Result<()> {
        let sink = if to_stderr {
            &self.stderr
        } else {
            &self.stdout
        };
        match sink {
            Sink::Stdout => {
                let mut o = io::stdout().lock();
                o.write_all(data)?;
                o.flush()
            }
            Sink::Stderr => {
                let mut o = io::stderr().lock();
                o.write_all(data)?;
                o.flush()
            }
            Sink::File(_, f) => f.lock().unwrap_or_else(|e| e.into_inner()).write_all(data),
        }
    }

    fn name(&self, to_stderr: bool) -> String {
        match if to_stderr {
            &self.stderr
        } else {
            &self.stdout
        } {
            Sink::Stdout => "stdout".to_owned(),
            Sink::Stderr => "stderr".to_owned(),
            Sink::File(p, _) => p.display().to_string(),
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

#[cfg(test)]
mod tests {

    #[test]
    fn stdin_is_read_in_whole_packets() {
        let chunk = tuppence::wire::DEFAULT_MAX_CHUNK;
        assert_eq!(STDIN_CHUNK % chunk, 0);
        assert!(STDIN_CHUNK >= 64 * 1024 - chunk);
    }

    use super::*;

    /// `run` starts no stdin threads for `</dev/null`, and forwards anything else.
    #[test]
    fn only_dev_null_has_nothing_to_read() {
        let null = File::open("/dev/null").expect("open /dev/null");
        assert!(has_nothing_to_read(&null));
        let (r, w) = std::io::pipe().expect("pipe");
        assert!(!has_nothing_to_read(&r));
        drop(w);
        // Closed (or at end of file) now, but a pipe may still hold data: forwarded.
        assert!(!has_nothing_to_read(&r));
        let me = File::open(std::env::current_exe().expect("exe")).expect("open");
        assert!(!has_nothing_to_read(&me));
        let zero = File::open("/dev/zero").expect("open /dev/zero");
        assert!(!has_nothing_to_read(&zero));
    }

    #[test]
    fn words_are_joined_like_ssh() {
        let w: Vec<OsString> = ["echo", "a b", "$HOME"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(join_command(&w), b"echo a b $HOME");
    }

    #[test]
    fn statuses() {
        assert_eq!(outcome_status(Outcome::Exited(3), 0.0, "u").ok(), Some(3));
        assert_eq!(
            outcome_status(Outcome::Signaled(15), 0.0, "u").ok(),
            Some(143)
        );
        assert_eq!(
            outcome_status(Outcome::Exited(1000), 0.0, "u").ok(),
            Some(255)
        );
        let f = outcome_status(Outcome::TimedOut, 1.0, "u").err();
        assert_eq!(f.map(|f| f.code), Some(exit::TIMEOUT));
        let f = outcome_status(Outcome::Failed { errno: 2 }, 0.0, "u").err();
        assert_eq!(f.map(|f| f.code), Some(exit::REMOTE_FAILURE));
    }

    #[test]
    fn env_specs() {
        // SAFETY-free: only reads. PATH is set in any test environment.
        let specs: Vec<OsString> = ["A=1", "B=", "PATH", "TUPPENCE_SURELY_UNSET_VAR"]
            .iter()
            .map(OsString::from)
            .collect();
        let env = environment(&specs).ok().unwrap_or_default();
        assert_eq!(env.len(), 3);
        assert_eq!(env[0], (b"A".to_vec(), b"1".to_vec()));
        assert_eq!(env[1], (b"B".to_vec(), b"".to_vec()));
        assert_eq!(env[2].0, b"PATH".to_vec());
        assert!(environment(&[OsString::from("=x")]).is_err());
    }
}
