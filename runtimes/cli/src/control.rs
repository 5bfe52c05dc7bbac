//! The small commands: `ping`, `quit`, `interrupt`, `monitor`, `procinfo`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tuppence::link::{Command, Outcome, Signal};
use tuppence::wire::{Dialect, ProcInfoField, field};
use tuppence_blocking::{MonitorEvent, RunEvent, errno_text};

use crate::cli::{Field, InterruptArgs, MonitorArgs, PingArgs, ProcinfoArgs, QuitArgs, TargetArgs};
use crate::exit::{self, Failure};
use crate::run::{join_command, outcome_status};

pub fn ping(args: PingArgs) -> Result<u8, Failure> {
    let conn = args.target.connect()?;
    let info = conn.session().info();
    let keepalive = match info.keepalive {
        0 => "off".to_owned(),
        k => format!("{k} s"),
    };
    let line = format!(
        "{}: protocol {}.{}, cid {}, keepalive {}, hello round trip {:.3} ms",
        conn.target,
        info.server_version.0,
        info.server_version.1,
        info.cid,
        keepalive,
        info.latency.as_secs_f64() * 1000.0
    );
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::local("stdout", &e))?;
    Ok(0)
}

pub fn quit(args: QuitArgs) -> Result<u8, Failure> {
    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    conn.quit().map_err(|e| Failure::session(e).at(&ctx))?;
    Ok(0)
}

/// Runs `kill` on the target: see `INTERRUPT_AFTER` in `cli.rs` for why this signals a
/// process group rather than a transaction of another connection.
pub fn interrupt(args: InterruptArgs) -> Result<u8, Failure> {
    if args.pgid <= 1 {
        return Err(Failure::usage(format!(
            "{} is not a command's process group (tuppence never starts one as 0 or 1)",
            args.pgid
        )));
    }
    // `parse_signal_name` admitted only letters and digits: safe inside a shell command.
    // `kill -SIG -PGID` is the one form busybox, dash and bash all take, for names and
    // numbers alike: dash rejects `kill -15 -- -PGID` ("Illegal number: -") and busybox
    // `kill -s INT -- -PGID` ("invalid number '--'", status 1), as found in the QEMU test.
    let command = format!("kill -{} -{}", args.signal, args.pgid);
    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let user = args.user.clone().unwrap_or_else(|| conn.default_user());
    let out = conn
        .session()
        .output(Command::new(command).user(user.clone()))
        .map_err(|e| Failure::session(e).at(&ctx))?;
    let _ = io::stdout().write_all(&out.stdout);
    let _ = io::stderr().write_all(&out.stderr);
    outcome_status(out.outcome, 0.0, &user).map_err(|f| f.at(&ctx))
}

pub fn monitor(args: MonitorArgs) -> Result<u8, Failure> {
    refuse_legacy(&args.target, "monitor")?;
    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let session = conn.session();
    let monitor = session
        .monitor(&args.source)
        .map_err(|e| Failure::session(e).at(&ctx))?;
    const SETTLE_SEQ: u32 = 1;
    if args.settle {
        monitor
            .settle(SETTLE_SEQ)
            .map_err(|e| Failure::session(e).at(&ctx))?;
    }
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Failure::local("signal handlers", &e))?;
    let handle = signals.handle();
    let ended = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let mut signals = signals;
        let (monitor, ended) = (&monitor, &ended);
        scope.spawn(move || {
            for _ in signals.forever() {
                if ended.swap(true, Ordering::SeqCst) {
                    exit::say("tuppence: interrupted");
                    std::process::exit(i32::from(exit::INTERRUPTED));
                }
                // The agent answers with the end of the subscription, which ends the loop.
                let _ = monitor.end();
            }
        });
        let mut out = io::stdout();
        let r = loop {
            match monitor.next_timeout(None) {
                Ok(Some(MonitorEvent::Data(d))) => {
                    if let Err(e) = out.write_all(&d).and_then(|()| out.flush()) {
                        if e.kind() != io::ErrorKind::BrokenPipe {
                            break Err(Failure::local("stdout", &e));
                        }
                        // Nobody reads us any more: end quietly, like `tail -f | head`.
                        let _ = monitor.end();
                        ended.store(true, Ordering::SeqCst);
                    }
                }
                Ok(Some(MonitorEvent::Settled(SETTLE_SEQ))) if args.settle => {
                    let _ = monitor.end();
                    ended.store(true, Ordering::SeqCst);
                }
                Ok(Some(MonitorEvent::Settled(_))) => {}
                Ok(Some(MonitorEvent::Finished(outcome))) => break Ok(outcome),
                Ok(None) => break Ok(Outcome::Completed),
                Err(e) => break Err(Failure::session(e)),
            }
        };
        handle.close();
        r
    });
    match result.map_err(|f| f.at(&ctx))? {
        Outcome::Completed => Ok(0),
        Outcome::Failed { errno: 2 } => Err(Failure::new(
            exit::REMOTE_FAILURE,
            format!(
                "no event source {:?} on the agent (try agent, kmsg or file:PATH)",
                args.source
            ),
        )
        .at(&ctx)),
        Outcome::Failed { errno } => Err(Failure::new(
            exit::REMOTE_FAILURE,
            format!("monitor {:?} failed: {}", args.source, errno_text(errno)),
        )
        .at(&ctx)),
        other => outcome_status(other, 0.0, "").map_err(|f| f.at(&ctx)),
    }
}

impl Field {
    const ALL: [Field; 11] = [
        Field::Pid,
        Field::Pgid,
        Field::State,
        Field::Uid,
        Field::Gid,
        Field::RssKib,
        Field::UtimeMs,
        Field::StimeMs,
        Field::ElapsedMs,
        Field::Threads,
        Field::Comm,
    ];

    fn kind(self) -> u8 {
        match self {
            Field::Pid => field::PID,
            Field::Pgid => field::PGID,
            Field::State => field::STATE,
            Field::Uid => field::UID,
            Field::Gid => field::GID,
            Field::RssKib => field::RSS_KIB,
            Field::UtimeMs => field::UTIME_MS,
            Field::StimeMs => field::STIME_MS,
            Field::ElapsedMs => field::ELAPSED_MS,
            Field::Threads => field::THREADS,
            Field::Comm => field::COMM,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Pid => "pid",
            Field::Pgid => "pgid",
            Field::State => "state",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::RssKib => "rss_kib",
            Field::UtimeMs => "utime_ms",
            Field::StimeMs => "stime_ms",
            Field::ElapsedMs => "elapsed_ms",
            Field::Threads => "threads",
            Field::Comm => "comm",
        }
    }

    /// The value as text: numbers in decimal, the state letter, the command name with
    /// anything unprintable or blank escaped so a line stays `NAME=VALUE NAME=VALUE`.
    fn show(self, f: &ProcInfoField) -> String {
        match self {
            Field::State => match f.value.first() {
                Some(&b) if b.is_ascii_graphic() => char::from(b).to_string(),
                Some(&b) => format!("\\x{b:02x}"),
                None => "?".to_owned(),
            },
            Field::Comm => f
                .value
                .iter()
                .flat_map(|&b| {
                    if b.is_ascii_graphic() && b != b'\\' {
                        vec![char::from(b)]
                    } else {
                        format!("\\x{b:02x}").chars().collect()
                    }
                })
                .collect(),
            _ => match f.as_u32() {
                Some(v) => v.to_string(),
                None => "?".to_owned(),
            },
        }
    }
}

/// One line of `NAME=VALUE` pairs in the order asked; fields the agent could not supply
/// are left out.
fn procinfo_line(wanted: &[Field], fields: &[ProcInfoField]) -> String {
    wanted
        .iter()
        .filter_map(|w| {
            fields
                .iter()
                .find(|f| f.kind == w.kind())
                .map(|f| format!("{}={}", w.name(), w.show(f)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn procinfo(args: ProcinfoArgs) -> Result<u8, Failure> {
    let wanted: Vec<Field> = if args.field.is_empty() {
        Field::ALL.to_vec()
    } else {
        args.field.clone()
    };
    let mask = wanted
        .iter()
        .fold(0u32, |m, f| m | field::mask_bit(f.kind()));
    refuse_legacy(&args.target, "procinfo")?;
    let conn = args.target.connect()?;
    let ctx = conn.target.to_string();
    let user = args.user.clone().unwrap_or_else(|| conn.default_user());
    let mut cmd = Command::new(join_command(&args.command)).user(user.clone());
    if args.timeout > 0.0 {
        cmd = cmd.timeout(Duration::from_secs_f64(args.timeout));
    }
    let session = conn.session();
    let run = session
        .run_without_stdin(cmd)
        .map_err(|e| Failure::session(e).at(&ctx))?;

    // Output is copied to stderr while we wait; stdout is for the samples. Returns the
    // outcome if the command ended before `until`.
    let drain_until = |until: Option<Instant>| -> Result<Option<Outcome>, Failure> {
        loop {
            let timeout = match until {
                Some(t) => {
                    let now = Instant::now();
                    if now >= t {
                        return Ok(None);
                    }
                    Some(t - now)
                }
                None => None,
            };
            match run.next_timeout(timeout) {
                Ok(Some(RunEvent::Stdout(d) | RunEvent::Stderr(d))) => {
                    let _ = io::stderr().write_all(&d);
                }
                Ok(Some(RunEvent::Finished(o))) => return Ok(Some(o)),
                Ok(None) if until.is_none() => {
                    return Ok(Some(Outcome::LinkLost(tuppence::link::LinkError::Closed)));
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(Failure::session(e)),
            }
        }
    };
    let sample = || -> Result<bool, Failure> {
        match run.procinfo(mask) {
            Ok(fields) => {
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "{}", procinfo_line(&wanted, &fields));
                let _ = out.flush();
                Ok(true)
            }
            // ESRCH: the command is gone; its end is the next event.
            Err(tuppence_blocking::Error::Remote { errno: 3, .. }) => Ok(false),
            Err(e) => Err(Failure::session(e)),
        }
    };

    let result = (|| -> Result<u8, Failure> {
        let first = Instant::now() + Duration::from_secs_f64(args.after);
        if let Some(o) = drain_until(Some(first))? {
            return Err(ended_too_soon(o, &user));
        }
        if !sample()? {
            let o = drain_until(None)?.unwrap_or(Outcome::Completed);
            return Err(ended_too_soon(o, &user));
        }
        if let Some(every) = args.every {
            let every = Duration::from_secs_f64(every.max(0.01));
            loop {
                if let Some(o) = drain_until(Some(Instant::now() + every))? {
                    return outcome_status(o, args.timeout, &user);
                }
                if !sample()? {
                    let o = drain_until(None)?.unwrap_or(Outcome::Completed);
                    return outcome_status(o, args.timeout, &user);
                }
            }
        }
        if args.wait {
            let o = drain_until(None)?.unwrap_or(Outcome::Completed);
            return outcome_status(o, args.timeout, &user);
        }
        let _ = run.interrupt(Signal::KILL);
        // Collect the end so the agent has reaped it before we hang up.
        let _ = drain_until(Some(Instant::now() + Duration::from_secs(5)))?;
        Ok(0)
    })();
    drop(run);
    drop(conn);
    result.map_err(|f| f.at(&ctx))
}

/// Monitors and procinfo do not exist in protocol 3.0: say so before connecting (and, for
/// procinfo, before starting a command for nothing).
fn refuse_legacy(target: &TargetArgs, what: &str) -> Result<(), Failure> {
    let t = target.target()?;
    if t.dialect == Dialect::Legacy3 {
        return Err(Failure::usage(format!(
            "{what} is not available in protocol 3.0 (the legacy+ dialect)"
        ))
        .at(t));
    }
    Ok(())
}

fn ended_too_soon(outcome: Outcome, user: &str) -> Failure {
    match outcome_status(outcome, 0.0, user) {
        Ok(code) => Failure::new(
            exit::REMOTE_FAILURE,
            format!("the command ended (status {code}) before it could be sampled"),
        ),
        Err(f) => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procinfo_lines() {
        let fields = vec![
            ProcInfoField::u32(field::PID, 42),
            ProcInfoField {
                kind: field::STATE,
                value: bytes_of(b"S"),
            },
            ProcInfoField {
                kind: field::COMM,
                value: bytes_of(b"my prog"),
            },
        ];
        let line = procinfo_line(&Field::ALL, &fields);
        assert_eq!(line, "pid=42 state=S comm=my\\x20prog");
        assert_eq!(
            procinfo_line(&[Field::Comm, Field::Pid], &fields),
            "comm=my\\x20prog pid=42"
        );
    }

    fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
        bytes::Bytes::from_static(b)
    }
}
