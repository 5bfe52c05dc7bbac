//! `tuppence sniff …`: the sniff background-task protocol, agent and requester side.
//! The argument parsing and printing live in `tuppence_agent::sniff::cli`, so the example
//! binary there and this subcommand cannot drift apart.

use std::ffi::OsString;

use tuppence_agent::sniff::cli::{self, ServeArgs, ServeMode, SniffCommand};

use crate::exit::{self, Failure};
use crate::serve::{SocketFile, stop_on_signals};

/// Runs `tuppence sniff ARGS…`; returns the exit status.
pub fn sniff(args: Vec<OsString>) -> Result<u8, Failure> {
    let command = cli::parse_args(args)
        .map_err(|e| Failure::new(exit::USAGE, format!("sniff: {e}\n{}", cli::USAGE)))?;
    match command {
        SniffCommand::Help => {
            print!("{}", cli::USAGE);
            Ok(0)
        }
        SniffCommand::Serve(args) => serve(&args),
        SniffCommand::Request(args) => {
            let target = args.target.to_string();
            match cli::run_request(&args, &mut std::io::stdout()) {
                // 0 = `O`, 1 = `F`/`U`: the task's own verdict.
                Ok(code) if code <= 1 => Ok(code),
                Ok(_) => Err(Failure::new(
                    exit::CONNECTION,
                    format!("{target}: no answer"),
                )),
                Err(e) => Err(Failure::new(exit::CONNECTION, e.to_string())),
            }
        }
    }
}

/// `sniff serve`: until SIGTERM or SIGINT (or, with `--connect`, the peer closing). The
/// first signal stops the server, which kills its tasks and removes its unix socket's
/// file; a second one exits at once (removing the file too). Killed by the signal, as it
/// was, the process left the file behind.
fn serve(args: &ServeArgs) -> Result<u8, Failure> {
    let sockets = match &args.mode {
        ServeMode::Listen(t) => vec![t.clone()],
        ServeMode::Connect(_) => Vec::new(),
    };
    let mut handle = None;
    let mut failed = None;
    let r = cli::run_serve(args, |stop| {
        // Called once the listener is bound, so the socket file's identity is known.
        let files = sockets.iter().filter_map(SocketFile::of).collect();
        let on_signal = stop.clone();
        match stop_on_signals("tuppence sniff serve", files, move || on_signal.stop()) {
            Ok(h) => handle = Some(h),
            Err(f) => {
                // Not serving without a way to stop cleanly.
                failed = Some(f);
                stop.stop();
            }
        }
    });
    if let Some(h) = handle {
        h.close();
    }
    if let Some(f) = failed {
        return Err(f);
    }
    r.map(|()| 0)
        .map_err(|e| Failure::new(exit::CONNECTION, format!("sniff serve: {e}")))
}
