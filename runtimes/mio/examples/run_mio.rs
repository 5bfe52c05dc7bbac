//! Runs one command over a target with the mio adapter and exits with its status:
//! `cargo run -p tuppence-mio --example run_mio -- unix:/run/tuppence.sock uname -a`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome};
use tuppence_mio::{Flow, run_client};
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
    let transport = match target.connect() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("run: {target}: {e}");
            return ExitCode::from(202);
        }
    };
    if let Err(e) = transport.set_nonblocking(true) {
        eprintln!("run: {target}: {e}");
        return ExitCode::from(202);
    }
    let config = ClientConfig {
        dialect: target.dialect,
        ..ClientConfig::default()
    };
    let mut client = Client::new(config, Instant::now());
    let command = if command.is_empty() {
        "uname -a".to_string()
    } else {
        command
    };
    // Nothing to feed it: its stdin ends with the request.
    let Ok(xid) = client.run_without_stdin(Command::new(command)) else {
        return ExitCode::from(2);
    };
    let mut outcome = None;
    let result = run_client(transport, client, |_, event| match event {
        ClientEvent::Output { channel, data, .. } => {
            let _ = if channel == 2 {
                std::io::stderr().write_all(&data)
            } else {
                std::io::stdout().write_all(&data)
            };
            Flow::Continue
        }
        ClientEvent::Finished { xid: x, outcome: o } if x == xid => {
            outcome = Some(o);
            Flow::Stop
        }
        _ => Flow::Continue,
    });
    match (result, outcome) {
        (_, Some(Outcome::Exited(code))) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        (_, Some(Outcome::Signaled(sig))) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        (_, Some(other)) => {
            eprintln!("run: {other:?}");
            ExitCode::from(201)
        }
        (Err(e), None) => {
            eprintln!("run: {target}: {e}");
            ExitCode::from(202)
        }
        (Ok(_), None) => ExitCode::from(203),
    }
}
