//! `tuppence`: the command line of the tuppence test executor.
//!
//! Client commands (`run`, `inject`, `extract`, `interrupt`, `monitor`, `procinfo`,
//! `quit`, `ping`) open a session with `tuppence-blocking` on a target parsed by
//! `tuppence-transport`; `local` embeds `tuppence-agent` in this process. `serve` runs
//! that agent on listeners. Exit statuses are documented in [`exit`] and by `--help`.
//!
//! Every failure is reported as one line on stderr and a status from [`exit`]; nothing
//! here panics on bad input, and clap's own errors use the usage status (204) rather than
//! 2, which a remote command may legitimately return.
//!
//! The binary (`src/main.rs`) only calls [`main`]; the code is a library so that the e2e
//! bench can run the same CLI in a process of its own (`--only cli`) without depending on
//! a separately built `target/release/tuppence` that may be stale or missing.

mod cli;
mod connect;
mod control;
mod exit;
mod run;
mod serve;
mod serve_stdio;
mod sniff;
mod term;
mod transfer;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::CommandFactory;
use clap::error::ErrorKind;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use cli::{Cli, Command};

/// The whole `tuppence` command: parses `std::env::args`, runs the command, reports.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_fast() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(&cli);
    if !matches!(cli.command, Command::Serve(_) | Command::Sniff(_)) {
        keep_freed_memory();
    }
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Inject(a) => transfer::inject(a),
        Command::Extract(a) => transfer::extract(a),
        Command::Interrupt(a) => control::interrupt(a),
        Command::Monitor(a) => control::monitor(a),
        Command::Procinfo(a) => control::procinfo(a),
        Command::Quit(a) => control::quit(a),
        Command::Ping(a) => control::ping(a),
        Command::Serve(a) => serve::serve(a),
        Command::Sniff(a) => sniff::sniff(a),
        Command::Completions(a) => {
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "tuppence", &mut std::io::stdout());
            Ok(0)
        }
    };
    term::restore();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            let failure = connect::explain(failure);
            exit::say(&failure);
            ExitCode::from(failure.code)
        }
    }
}

/// A client command is a short process that moves data in pieces of 32 KiB to 256 KiB.
/// glibc gives each piece of 128 KiB or more its own `mmap` (page faults on every page,
/// then `munmap`) and trims freed memory back to the kernel (`madvise`), so the same
/// pages fault in again for the next piece: a transfer of 256 MiB took 16 000 to 33 000
/// page faults. Keeping freed memory for reuse makes them a few hundred.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes parameters of glibc's allocator; it is called before
    // this process starts any thread that allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Logs go to stderr so stdout carries only the remote command's output. The level is
/// `warn` for client commands and `serve --stdio`, and `info` for `serve` (whose audit
/// trail is info events), moved by -v/-q; `TUPPENCE_LOG` (a level, or levels per target
/// such as `warn,tuppence_agent=trace`) overrides both.
fn init_logging(cli: &Cli) {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    // `serve --stdio` is started by a client, which shows its stderr: warnings only.
    let base: i32 = match &cli.command {
        Command::Serve(s) if !s.stdio => 3,
        _ => 2,
    };
    let level = (base + i32::from(cli.log.verbose) - i32::from(cli.log.quiet)).clamp(0, 5);
    let default = LEVELS
        .get(usize::try_from(level).unwrap_or(2))
        .copied()
        .unwrap_or("warn");
    // `Targets` (`warn`, `tuppence_agent=trace,debug`) rather than `EnvFilter`: span and
    // field filters were never used here, and EnvFilter links a regex engine whose tables
    // are about a third of the binary's start-up relocations.
    let spec = std::env::var("TUPPENCE_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let from_env = spec.as_deref().map(str::parse::<Targets>);
    let filter = match &from_env {
        Some(Ok(targets)) => targets.clone(),
        _ => default.parse().unwrap_or_default(),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(|| exit::QuietStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    // A long-running agent's log wants timestamps; a client's few lines do not.
    let _ = if matches!(cli.command, Command::Serve(_)) {
        registry.with(layer).try_init()
    } else {
        registry.with(layer.without_time()).try_init()
    };
    if let (Some(spec), Some(Err(e))) = (&spec, &from_env) {
        tracing::warn!("TUPPENCE_LOG={spec:?} is not a filter ({e}); logging at {default}");
    }
}
