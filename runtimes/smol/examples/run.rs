//! Runs one command on an agent listening on a unix socket, streaming its output and
//! forwarding this process's stdin; exits with the command's exit code.
//!
//! ```sh
//! cargo run -p tuppence-smol --example agent -- /tmp/tuppence.sock &
//! echo hello | cargo run -p tuppence-smol --example run -- /tmp/tuppence.sock 'cat; exit 3'
//! ```
//!
//! Exit codes: the command's own; 128+N if it was killed by signal N; 124 if the agent
//! timed it out; 127 if it could not be started; 255 if the link failed.

use std::io::Write;
use std::process::ExitCode;

use futures_lite::AsyncReadExt;
use tuppence::link::{ClientConfig, Command, Outcome};
use tuppence_smol::{RunEvent, Session, errno_text};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(command)) = (args.next(), args.next()) else {
        eprintln!("usage: run SOCKET_PATH COMMAND");
        return ExitCode::from(2);
    };
    match smol::block_on(run(&socket, &command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("run: {e}");
            ExitCode::from(255)
        }
    }
}

async fn run(socket: &str, command: &str) -> Result<u8, Box<dyn std::error::Error>> {
    let stream = tuppence_smol::connect_unix(socket).await?;
    let session = Session::new(stream, ClientConfig::default()).await?;
    let mut run = session.run(Command::new(command.to_owned())).await?;

    // Forward stdin from a task; the command's end ends the program whether or not
    // stdin reached EOF.
    let control = run.control();
    smol::spawn(async move {
        let mut stdin = smol::Unblock::new(std::io::stdin());
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 || control.write_stdin(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
        let _ = control.close_stdin().await;
    })
    .detach();

    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(event) = run.next().await {
        match event {
            RunEvent::Stdout(data) => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            RunEvent::Stderr(data) => {
                stderr.write_all(&data)?;
            }
            RunEvent::Finished(outcome) => {
                return Ok(match outcome {
                    Outcome::Exited(code) => u8::try_from(code).unwrap_or(255),
                    Outcome::Signaled(sig) => u8::try_from(128 + sig.min(127)).unwrap_or(255),
                    Outcome::TimedOut => {
                        eprintln!("run: the agent killed the command at its timeout");
                        124
                    }
                    Outcome::Failed { errno } => {
                        eprintln!(
                            "run: the command could not be started: {}",
                            errno_text(errno)
                        );
                        127
                    }
                    Outcome::LinkLost(e) => {
                        eprintln!("run: link lost: {e}");
                        255
                    }
                    other => {
                        eprintln!("run: unexpected outcome {other:?}");
                        255
                    }
                });
            }
        }
    }
    Ok(255)
}
