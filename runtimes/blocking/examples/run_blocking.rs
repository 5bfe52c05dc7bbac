//! Runs one command over a target with the blocking adapter and exits with its status:
//! `cargo run -p tuppence-blocking --example run_blocking -- unix:/run/tuppence.sock uname -a`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use tuppence::link::{Command, Outcome};
use tuppence_blocking::{RunEvent, Session};
use tuppence_transport::Target;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(target), command) = (args.next(), args.collect::<Vec<_>>().join(" ")) else {
        eprintln!("usage: run TARGET COMMAND...");
        return ExitCode::from(2);
    };
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("run: {e}");
            return ExitCode::from(2);
        }
    };
    let session = match Session::connect(&target, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("run: {target}: {e}");
            return ExitCode::from(202);
        }
    };
    let command = if command.is_empty() {
        "uname -a".to_string()
    } else {
        command
    };
    // Nothing to feed it: its stdin ends with the request.
    let run = match session.run_without_stdin(Command::new(command)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("run: {e}");
            return ExitCode::from(202);
        }
    };
    loop {
        match run.next() {
            Ok(Some(RunEvent::Stdout(d))) => drop(std::io::stdout().write_all(&d)),
            Ok(Some(RunEvent::Stderr(d))) => drop(std::io::stderr().write_all(&d)),
            Ok(Some(RunEvent::Finished(Outcome::Exited(code)))) => {
                return ExitCode::from(u8::try_from(code).unwrap_or(255));
            }
            Ok(Some(RunEvent::Finished(Outcome::Signaled(sig)))) => {
                return ExitCode::from(u8::try_from(128 + sig).unwrap_or(255));
            }
            Ok(Some(RunEvent::Finished(other))) => {
                eprintln!("run: {other:?}");
                return ExitCode::from(201);
            }
            Ok(None) => return ExitCode::from(203),
            Err(e) => {
                eprintln!("run: {e}");
                return ExitCode::from(202);
            }
        }
    }
}
