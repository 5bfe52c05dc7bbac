//! The smol flavour: every session on one thread (one `LocalExecutor` under one `block_on`).

use super::*;

pub(super) struct SmolFarm {
    ex: smol::LocalExecutor<'static>,
    sessions: Vec<tuppence_smol::Session>,
    user: String,
}

impl SmolFarm {
    pub(super) fn new() -> SmolFarm {
        SmolFarm {
            ex: smol::LocalExecutor::new(),
            sessions: Vec::new(),
            user: me(),
        }
    }

    /// Opens `n` more sessions, dealt round-robin over `socks`, and waits for every hello.
    pub(super) fn open(&mut self, socks: &[PathBuf], n: usize) {
        let mut new = Vec::new();
        for i in 0..n {
            let stream = Async::new(connect(&socks[i % socks.len()])).expect("async stream");
            let (session, driver) =
                tuppence_smol::Session::with_driver(stream, ClientConfig::default());
            self.ex.spawn(driver).detach();
            new.push(session);
        }
        let all = new.clone();
        smol::block_on(self.ex.run(async move {
            for s in &all {
                s.connected().await.expect("smol hello");
            }
        }));
        self.sessions.extend(new);
    }

    pub(super) fn run(&mut self, work: &Work) -> Outcomes {
        let start = Instant::now();
        let tasks: Vec<_> = self
            .sessions
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (s, user, work) = (s.clone(), self.user.clone(), work.clone());
                self.ex.spawn(async move {
                    let (mut errors, mut bytes) = (0usize, 0u64);
                    match work {
                        Work::Cmds(k) => {
                            for _ in 0..k {
                                let cmd = Command::new("true").user(user.clone());
                                match s.output(cmd).await {
                                    Ok(o) if o.outcome == Outcome::Exited(0) => {}
                                    other => {
                                        eprintln!("farm smol: {other:?}");
                                        errors += 1;
                                    }
                                }
                            }
                        }
                        Work::Files { src, dir } => {
                            let remote = Work::remote(&dir, i);
                            let remote = remote.to_str().expect("utf-8 path");
                            let source = InPlace(File::open(&src).expect("source"));
                            match s.inject(&user, remote, 0o644, source, |_| {}).await {
                                Ok(n) => bytes += n,
                                Err(e) => {
                                    eprintln!("farm smol inject: {e}");
                                    errors += 1;
                                }
                            }
                            let sink = InPlace(File::create(Work::local(&dir, i)).expect("sink"));
                            match s.extract(&user, remote, sink, |_| {}).await {
                                Ok(n) => bytes += n,
                                Err(e) => {
                                    eprintln!("farm smol extract: {e}");
                                    errors += 1;
                                }
                            }
                        }
                    }
                    (start.elapsed().as_secs_f64(), errors, bytes)
                })
            })
            .collect();
        let mut out = Outcomes::default();
        let results = smol::block_on(self.ex.run(async move {
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await);
            }
            v
        }));
        out.wall = start.elapsed().as_secs_f64();
        for (f, e, b) in results {
            out.finish.push(f);
            out.errors += e;
            out.bytes += b;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// mio, one event loop
