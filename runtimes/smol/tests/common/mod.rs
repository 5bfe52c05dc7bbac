//! A toy agent for the tests: an [`App`] with scripted commands, in-memory files and a
//! line-emitting monitor, served by `tuppence_smol::serve` over real transports.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::Timer;
use bytes::Bytes;
use futures_lite::future;
use tuppence::link::{ClientConfig, ServerConfig, ServerEvent};
use tuppence::wire::ProcInfoField;
use tuppence_smol::{App, Responder, Session};

pub type Files = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// Commands:
/// * `exit N` — prints `bye` on stderr, exits N;
/// * `count N` — prints the lines `0` … `N-1` from a task, one output call each, exits 0;
/// * `flood N` — prints N MiB of zeroes from a task, exits 0 (counted in `flood_sent`);
/// * `echo` — stdin to stdout, exits 0 at stdin EOF;
/// * `sleep` — waits for an interrupt (TERM → signal 15, INT → 2, else 9);
/// * anything else fails with errno 2.
///
/// Files live in `files`; `/close-midway` is streamed halfway and then the connection is
/// closed. The monitor source `lines` emits three lines per settle request.
pub struct ToyAgent {
    pub files: Files,
    pub flood_sent: Arc<AtomicU64>,
    /// Close the connection once this many inject bytes arrived.
    pub close_after_inject: Option<usize>,
    /// Monitors the client ended, transfers it aborted.
    pub monitors_ended: Arc<AtomicU64>,
    pub transfers_aborted: Arc<AtomicU64>,
    waiting: HashMap<u16, Vec<u8>>,
    incoming: HashMap<u16, (Vec<u8>, Vec<u8>)>,
    monitors: HashMap<u16, u32>,
}

impl ToyAgent {
    pub fn new() -> Self {
        ToyAgent {
            files: Files::default(),
            flood_sent: Arc::new(AtomicU64::new(0)),
            close_after_inject: None,
            monitors_ended: Arc::default(),
            transfers_aborted: Arc::default(),
            waiting: HashMap::new(),
            incoming: HashMap::new(),
            monitors: HashMap::new(),
        }
    }
}

impl App for ToyAgent {
    async fn handle(&mut self, event: ServerEvent, agent: &Responder) {
        let _ = self.answer(event, agent).await;
    }
}

impl ToyAgent {
    async fn answer(
        &mut self,
        event: ServerEvent,
        agent: &Responder,
    ) -> Result<(), tuppence_smol::Error> {
        match event {
            ServerEvent::RunCommand { xid, command, .. } => {
                let text = String::from_utf8_lossy(&command).into_owned();
                let (name, arg) = text.split_once(' ').unwrap_or((&text, ""));
                let arg: u64 = arg.parse().unwrap_or(0);
                match name {
                    "exit" => {
                        agent.output(xid, 2, "bye\n").await?;
                        agent.command_exited(xid, arg as u32)?;
                    }
                    "count" => {
                        let agent = agent.clone();
                        smol::spawn(async move {
                            for i in 0..arg {
                                if agent.output(xid, 1, format!("{i}\n")).await.is_err() {
                                    return;
                                }
                                future::yield_now().await;
                            }
                            let _ = agent.command_exited(xid, 0);
                        })
                        .detach();
                    }
                    "flood" => {
                        let agent = agent.clone();
                        let sent = self.flood_sent.clone();
                        smol::spawn(async move {
                            let piece = Bytes::from(vec![0u8; 64 * 1024]);
                            for _ in 0..arg * 16 {
                                if agent.output(xid, 1, piece.clone()).await.is_err() {
                                    return;
                                }
                                sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
                            }
                            let _ = agent.command_exited(xid, 0);
                        })
                        .detach();
                    }
                    "echo" | "sleep" => {
                        self.waiting.insert(xid, name.as_bytes().to_vec());
                    }
                    _ => agent.fail(xid, 2)?,
                }
            }
            ServerEvent::Stdin { xid, data } => agent.output(xid, 1, data).await?,
            ServerEvent::StdinEnd { xid }
                if self.waiting.get(&xid).is_some_and(|c| c == b"echo") =>
            {
                self.waiting.remove(&xid);
                agent.command_exited(xid, 0)?;
            }
            ServerEvent::Interrupt { xid, signal } => {
                self.waiting.remove(&xid);
                let signo = match &signal[..] {
                    b"TERM" => 15,
                    b"INT" => 2,
                    _ => 9,
                };
                agent.command_killed(xid, signo)?;
            }
            ServerEvent::ProcInfo { xid, .. } => {
                agent.procinfo(xid, vec![ProcInfoField::u32(1, 1000 + u32::from(xid))])?;
            }
            ServerEvent::Inject { xid, path, .. } => {
                self.incoming.insert(xid, (path.to_vec(), Vec::new()));
                agent.inject_ready(xid)?;
            }
            ServerEvent::InjectData { xid, data } => {
                if let Some((_, content)) = self.incoming.get_mut(&xid) {
                    content.extend_from_slice(&data);
                    if self.close_after_inject.is_some_and(|n| content.len() >= n) {
                        agent.close();
                    }
                }
            }
            ServerEvent::InjectEnd { xid } => {
                if let Some((path, content)) = self.incoming.remove(&xid) {
                    self.files.lock().unwrap().insert(path, content);
                    agent.inject_done(xid, Ok(()))?;
                }
            }
            ServerEvent::TransferAborted { xid } => {
                self.incoming.remove(&xid);
                self.transfers_aborted.fetch_add(1, Ordering::SeqCst);
            }
            ServerEvent::Extract { xid, path, .. } => {
                let midway = &path[..] == b"/close-midway";
                let content = if midway {
                    Some(vec![7u8; 4 << 20])
                } else {
                    self.files.lock().unwrap().get(&path[..]).cloned()
                };
                match content {
                    None => agent.fail(xid, 2)?,
                    Some(content) => {
                        let agent = agent.clone();
                        smol::spawn(async move {
                            let _ = agent.extract_ready(xid);
                            let content = Bytes::from(content);
                            let len = if midway {
                                content.len() / 2
                            } else {
                                content.len()
                            };
                            if agent.output(xid, 0, content.slice(..len)).await.is_err() {
                                return;
                            }
                            if midway {
                                agent.close();
                            } else {
                                let _ = agent.extract_done(xid, Ok(()));
                            }
                        })
                        .detach();
                    }
                }
            }
            ServerEvent::Monitor { xid, source } => {
                if &source[..] == b"lines" {
                    self.monitors.insert(xid, 0);
                } else {
                    agent.fail(xid, 2)?;
                }
            }
            ServerEvent::Settle { xid, seq } => {
                if let Some(n) = self.monitors.get_mut(&xid) {
                    for _ in 0..3 {
                        *n += 1;
                        let line = format!("event {n}\n");
                        agent.output(xid, 0, line).await?;
                    }
                }
                agent.settled(xid, seq)?;
            }
            ServerEvent::MonitorEnd { xid } => {
                self.monitors.remove(&xid);
                self.monitors_ended.fetch_add(1, Ordering::SeqCst);
            }
            ServerEvent::Quit => agent.close(),
            _ => {}
        }
        Ok(())
    }
}

/// Runs `fut`, failing the test if it takes longer than `secs`: a hang is a failure,
/// never a stuck test run.
pub async fn guard<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        Timer::after(Duration::from_secs(secs)).await;
        panic!("timed out after {secs} s");
    })
    .await
}

/// Serves `agent` on `server_io` in a spawned task and connects a session on `client_io`.
pub async fn connect<C, S>(
    client_io: C,
    server_io: S,
    agent: ToyAgent,
    config: ClientConfig,
) -> (Session, smol::Task<Result<(), tuppence_smol::Error>>)
where
    C: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
{
    let server = smol::spawn(tuppence_smol::serve(
        server_io,
        ServerConfig::default(),
        agent,
    ));
    let session = Session::new(client_io, config).await.expect("hello reply");
    (session, server)
}

/// Waits (polling briefly) until `counter` reaches `n`; the caller's `guard` bounds it.
pub async fn reaches(counter: &AtomicU64, n: u64) {
    while counter.load(Ordering::SeqCst) < n {
        Timer::after(Duration::from_millis(5)).await;
    }
}

/// `len` bytes in which every byte value occurs (for `len` ≥ 256), in an order that is
/// not just a repeating ramp.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 8)) as u8)
        .collect()
}
