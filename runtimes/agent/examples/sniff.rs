//! `sniff`: serve or request sniff tasks over any tuppence transport.
//!
//! ```text
//! cargo run -p tuppence-agent --example sniff -- serve --listen unix:/tmp/sniff.sock
//! cargo run -p tuppence-agent --example sniff -- request unix:/tmp/sniff.sock ping 127.0.0.1
//! ```
//!
//! All parsing and printing lives in `tuppence_agent::sniff::cli`, so the `tuppence` CLI can
//! offer the same as `tuppence sniff …`. Exit codes: 0 the task succeeded, 1 it failed (or
//! the agent does not know it), 2 bad arguments, 3 no answer (connection, timeout) or
//! `serve` failed.

use std::process::ExitCode;

use tuppence_agent::sniff::cli::{
    self, EXIT_ERROR, EXIT_USAGE, SniffCommand, USAGE, parse_args, run_request, run_serve,
};

fn main() -> ExitCode {
    let command = match parse_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sniff: {e}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match command {
        SniffCommand::Help => {
            print!("{USAGE}");
            Ok(0)
        }
        SniffCommand::Serve(args) => run_serve(&args, stop_on_signals).map(|()| 0),
        SniffCommand::Request(args) => run_request(&args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e @ cli::CliError::Args(_)) => {
            eprintln!("sniff: {e}\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("sniff: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// SIGTERM and SIGINT stop the server: its tasks are killed and a unix socket's file is
/// removed (the default action would leave both behind).
fn stop_on_signals(stop: tuppence_agent::sniff::StopHandle) {
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]);
    match signals {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    stop.stop();
                }
            });
        }
        Err(e) => {
            eprintln!("sniff: cannot handle signals ({e}); not serving");
            stop.stop();
        }
    }
}
