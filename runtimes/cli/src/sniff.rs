//! `tuppence sniff …`: the sniff background-task protocol, agent and requester side.
//! The argument parsing and printing live in `tuppence_agent::sniff::cli`, so the example
//! binary there and this subcommand cannot drift apart.

use std::ffi::OsString;

use tuppence_agent::sniff::cli::{self, SniffCommand};

use crate::exit::{self, Failure};

/// Runs `tuppence sniff ARGS…`; returns the exit status.
pub fn sniff(args: Vec<OsString>) -> Result<u8, Failure> {
    let command = cli::parse_args(args)
        .map_err(|e| Failure::new(exit::USAGE, format!("sniff: {e}\n{}", cli::USAGE)))?;
    match command {
        SniffCommand::Help => {
            print!("{}", cli::USAGE);
            Ok(0)
        }
        SniffCommand::Serve(args) => cli::run_serve(&args)
            .map(|()| 0)
            .map_err(|e| Failure::new(exit::CONNECTION, format!("sniff serve: {e}"))),
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
