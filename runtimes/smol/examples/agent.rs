//! A small demo agent on a unix socket, to try `examples/run.rs` against:
//!
//! ```sh
//! cargo run -p tuppence-smol --example agent -- /tmp/tuppence.sock &
//! cargo run -p tuppence-smol --example run -- /tmp/tuppence.sock 'uname -a; exit 3'
//! ```
//!
//! It runs `/bin/sh -c COMMAND` as the current user with piped stdin/stdout/stderr and
//! forwards signals by name; it has none of `tuppence serve`'s care (no users, no ttys, no
//! process groups, no files, no timeouts) — it only shows how an [`App`] is written.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;

use async_io::Async;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt, future};
use smol::process::{ChildStdin, Command, Stdio};
use tuppence::link::{ServerConfig, ServerEvent};
use tuppence_smol::{App, Responder, serve};

#[derive(Default)]
struct ShellAgent {
    stdin: HashMap<u16, ChildStdin>,
    pids: HashMap<u16, u32>,
}

impl App for ShellAgent {
    async fn handle(&mut self, event: ServerEvent, agent: &Responder) {
        match event {
            ServerEvent::RunCommand {
                xid, command, env, ..
            } => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c")
                    .arg(String::from_utf8_lossy(&command).as_ref())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                for entry in &env {
                    let entry = String::from_utf8_lossy(entry);
                    if let Some((name, value)) = entry.split_once('=') {
                        cmd.env(name, value);
                    }
                }
                match cmd.spawn() {
                    Ok(mut child) => {
                        if let Some(stdin) = child.stdin.take() {
                            self.stdin.insert(xid, stdin);
                        }
                        self.pids.insert(xid, child.id());
                        let agent = agent.clone();
                        smol::spawn(async move {
                            let out = forward(&agent, xid, 1, child.stdout.take());
                            let err = forward(&agent, xid, 2, child.stderr.take());
                            // The status follows the output, as the protocol requires.
                            let ((), ()) = future::zip(out, err).await;
                            let _ = match child.status().await {
                                Ok(s) => match (s.code(), s.signal()) {
                                    (Some(code), _) => agent.command_exited(xid, code as u32),
                                    (None, Some(sig)) => agent.command_killed(xid, sig as u32),
                                    (None, None) => agent.fail(xid, 5),
                                },
                                Err(e) => agent.fail(xid, e.raw_os_error().unwrap_or(5) as u32),
                            };
                        })
                        .detach();
                    }
                    Err(e) => {
                        let _ = agent.fail(xid, e.raw_os_error().unwrap_or(2) as u32);
                    }
                }
            }
            // Written inline: a child that stops reading stdin holds back further
            // requests, which is the backpressure the link asks for.
            ServerEvent::Stdin { xid, data } => {
                if let Some(stdin) = self.stdin.get_mut(&xid)
                    && stdin.write_all(&data).await.is_err()
                {
                    self.stdin.remove(&xid);
                }
            }
            ServerEvent::StdinEnd { xid } => {
                // Dropping the pipe is the child's EOF.
                self.stdin.remove(&xid);
            }
            ServerEvent::Interrupt { xid, signal } => {
                if let Some(&pid) = self.pids.get(&xid) {
                    let signo = signal_number(&signal);
                    // SAFETY: kill(2) with a pid this agent spawned; no memory is involved.
                    unsafe { libc::kill(pid as libc::pid_t, signo) };
                }
            }
            ServerEvent::Inject { xid, .. }
            | ServerEvent::Extract { xid, .. }
            | ServerEvent::Monitor { xid, .. } => {
                const ENOSYS: u32 = 38;
                let _ = agent.fail(xid, ENOSYS);
            }
            ServerEvent::ProcInfo { xid, .. } => {
                let _ = agent.procinfo(xid, Vec::new());
            }
            ServerEvent::Quit => agent.close(),
            _ => {}
        }
    }
}

/// Copies a child's pipe to an output channel until EOF, then ends the channel.
async fn forward(agent: &Responder, xid: u16, channel: u16, pipe: Option<impl AsyncRead + Unpin>) {
    if let Some(mut pipe) = pipe {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 || agent.output(xid, channel, buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    }
    let _ = agent.output_end(xid, channel);
}

fn signal_number(name: &[u8]) -> i32 {
    let name = name.strip_prefix(b"SIG").unwrap_or(name);
    match name {
        b"HUP" => libc::SIGHUP,
        b"INT" => libc::SIGINT,
        b"QUIT" => libc::SIGQUIT,
        b"TERM" => libc::SIGTERM,
        b"USR1" => libc::SIGUSR1,
        b"USR2" => libc::SIGUSR2,
        _ => libc::SIGKILL,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: agent SOCKET_PATH")?;
    let _ = std::fs::remove_file(&path);
    smol::block_on(async {
        let listener = Async::<std::os::unix::net::UnixListener>::bind(&path)?;
        eprintln!("agent listening on {path}");
        let mut cid: u16 = 0;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. EMFILE: the client waits in the backlog. Ending the agent (or
                    // retrying at once, which would spin) are both wrong: wait a little for
                    // fds to come free and try again.
                    eprintln!("accept failed: {e}; retrying");
                    async_io::Timer::after(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            cid = cid.checked_add(1).unwrap_or(1);
            let config = ServerConfig {
                cid,
                ..ServerConfig::default()
            };
            smol::spawn(async move {
                match serve(stream, config, ShellAgent::default()).await {
                    Ok(()) => eprintln!("connection {cid} closed"),
                    Err(e) => eprintln!("connection {cid} failed: {e}"),
                }
            })
            .detach();
        }
    })
}
