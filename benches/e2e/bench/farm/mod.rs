//! The farm figure: ONE client process (this one) holding many sessions at once, as a test
//! farm's controller drives many guests, in two flavours: smol with every session on one
//! thread (one `LocalExecutor` under one `block_on`), and mio with every session's
//! `link::Client` on one `EventLoop`.
//!
//! The agents are several processes (`farm_agents`, sessions dealt round-robin): a farm is
//! many guests, each with its own agent, and one agent's single loop serving all the
//! connections would measure that agent rather than the client.
//!
//! Measured against references in the same run, interleaved rep by rep:
//! * commands/s: every session runs `farm_cmds` × `true` in sequence, all sessions at once;
//!   the reference is this process spawning the same number of `sh -c true` from as many
//!   threads as there are sessions (the spawn limit at that concurrency);
//! * starvation: each session's finish time for that fixed workload, slowest / median;
//! * transfers: every session injects a `farm_file` file and extracts it back, all at once;
//!   the reference is the raw copy (`raw::serve_threaded`, as many raw server processes as
//!   agents) with the same number of concurrent streams, one thread each;
//! * memory per idle session: in a fresh process of its own (`memory_role`), so no earlier
//!   figure's freed memory is reused: VmRSS after opening N sessions (hello done, idle)
//!   minus VmRSS before, over N. A first session is opened before the "before" reading, so
//!   one-time costs (the reactor, the event loop) are not counted per session.

mod memory;
mod mio_farm;
mod smol_farm;

pub use memory::memory_role;
use mio_farm::MioFarm;
use smol_farm::SmolFarm;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Instant;

use async_io::Async;
use bytes::BytesMut;
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome};
use tuppence_mio::{ConnId, EventLoop, LinkIo};

use crate::clients::{InPlace, me};
use crate::plan::Plan;
use crate::procs::{self, Helper, Scratch};
use crate::stats::{Row, Target, median, spread};
use crate::{make_file, progress, raw};

/// One run of a workload over every session: per-session finish times (seconds from the
/// common start), the wall time, errors and bytes moved.
#[derive(Default)]
pub(super) struct Outcomes {
    finish: Vec<f64>,
    wall: f64,
    errors: usize,
    bytes: u64,
    /// CPU seconds of this (the client) process and of the server processes.
    client_cpu: f64,
    server_cpu: f64,
}

/// CPU time (user + system, every thread) of a process, from `/proc/PID/stat`.
pub(super) fn process_cpu(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 12th and 13th.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<f64>() / hz
}

/// Runs `f`, recording the CPU this process and `servers` used meanwhile.
pub(super) fn timed_cpu(servers: &[Helper], f: impl FnOnce() -> Outcomes) -> Outcomes {
    let sum = || servers.iter().map(|h| process_cpu(h.pid())).sum::<f64>();
    let (c0, s0) = (procs::self_cpu(), sum());
    let mut out = f();
    out.client_cpu = (procs::self_cpu() - c0).as_secs_f64();
    out.server_cpu = sum() - s0;
    out
}

/// What every session does in one run.
#[derive(Clone)]
pub(super) enum Work {
    /// `true`, this many times in sequence.
    Cmds(usize),
    /// Inject `src` to this session's remote file, then extract it back to a local one.
    Files { src: PathBuf, dir: PathBuf },
}

impl Work {
    pub(super) fn remote(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("farm-remote-{i}"))
    }
    pub(super) fn local(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("farm-local-{i}"))
    }
}

pub(super) fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("connect to an agent");
    tuppence_transport::tune_socket_buffers(&s);
    s
}

// ---------------------------------------------------------------------------------------
// smol, one thread
/// `n` threads, each spawning `sh -c true` `k` times in sequence.
pub(super) fn spawn_limit(n: usize, k: usize) -> Outcomes {
    let start = Instant::now();
    let finish: Vec<f64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn_scoped(s, || {
                        for _ in 0..k {
                            let st = StdCommand::new("/bin/sh")
                                .args(["-c", "true"])
                                .stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status()
                                .expect("spawn sh");
                            assert!(st.success());
                        }
                        start.elapsed().as_secs_f64()
                    })
                    .expect("thread")
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .collect()
    });
    Outcomes {
        wall: start.elapsed().as_secs_f64(),
        finish,
        ..Outcomes::default()
    }
}

/// `n` concurrent raw streams, one thread each: inject `src`, extract it back.
pub(super) fn raw_streams(n: usize, socks: &[PathBuf], src: &Path, dir: &Path) -> Outcomes {
    let start = Instant::now();
    let results: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let sock = &socks[i % socks.len()];
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let remote = Work::remote(dir, i);
                        let mut source = File::open(src).expect("source");
                        let a = raw::inject(sock, &mut source, &remote).expect("raw inject");
                        let mut sink = File::create(Work::local(dir, i)).expect("sink");
                        a + raw::extract(sock, &remote, &mut sink).expect("raw extract")
                    })
                    .expect("thread")
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .collect()
    });
    Outcomes {
        wall: start.elapsed().as_secs_f64(),
        bytes: results.iter().sum(),
        ..Outcomes::default()
    }
}

pub(super) fn clean(dir: &Path, n: usize) {
    for i in 0..n {
        let _ = std::fs::remove_file(Work::remote(dir, i));
        let _ = std::fs::remove_file(Work::local(dir, i));
    }
}

// ---------------------------------------------------------------------------------------
// memory per idle session, in a process of its own
pub fn farm(plan: &Plan, scratch: &Scratch) -> Vec<Row> {
    let (n, k, nagents) = (plan.farm_sessions, plan.farm_cmds, plan.farm_agents);
    let size = plan.farm_file;
    println!(
        "\n== farm: one client process, {n} sessions over {nagents} agent processes; \
         {k} × `true` per session, {} KiB inject + extract per session; {} reps",
        size >> 10,
        plan.farm_reps
    );
    procs::raise_nofile();
    let agents: Vec<Helper> = (0..nagents)
        .map(|_| Helper::start("agent", &scratch.0))
        .collect();
    let raws: Vec<Helper> = (0..nagents)
        .map(|_| Helper::start("raw-mt", &scratch.0))
        .collect();
    let agent_socks: Vec<PathBuf> = agents.iter().map(|a| a.sock.clone()).collect();
    let raw_socks: Vec<PathBuf> = raws.iter().map(|a| a.sock.clone()).collect();

    let src = scratch.join("farm-source.bin");
    make_file(&src, size);
    let files = Work::Files {
        src: src.clone(),
        dir: scratch.0.clone(),
    };

    // Memory first, each flavour in a fresh process.
    let mut mem = Vec::new();
    for flavour in ["smol1", "mio"] {
        let m = memory::memory(flavour, n, &agents, &src);
        progress(format!(
            "{flavour}: VmRSS {} KiB with one session, {} KiB with {} idle ({:.1} KiB per session), \
             {} KiB after a transfer each ({:.1} KiB per session)",
            m.before,
            m.idle,
            n + 1,
            m.per_session(n),
            m.after,
            m.per_session_after(n)
        ));
        mem.push(m);
    }

    let mut smol = SmolFarm::new();
    smol.open(&agent_socks, n);
    let mut mio = MioFarm::new();
    mio.open(&agent_socks, n);

    // Correctness once per flavour, outside the timed runs.
    let mut errors = [0usize; 2];
    for (m, errs) in errors.iter_mut().enumerate() {
        let out = if m == 0 {
            smol.run(&files)
        } else {
            mio.run(&files)
        };
        *errs += out.errors;
        for i in 0..n {
            let got = std::fs::read(Work::local(&scratch.0, i)).ok();
            assert!(
                got == std::fs::read(&src).ok(),
                "farm: flavour {m} session {i} moved its file wrong ({:?} bytes, {} errors)",
                got.map(|g| g.len()),
                out.errors
            );
        }
        clean(&scratch.0, n);
    }

    // [method][rep]: 0 = reference, 1 = smol, 2 = mio.
    let mut cmds: Vec<Vec<Outcomes>> = (0..3).map(|_| Vec::new()).collect();
    let mut xfer: Vec<Vec<Outcomes>> = (0..3).map(|_| Vec::new()).collect();
    for rep in 0..plan.farm_reps {
        for j in 0..3 {
            let m = (j + rep) % 3;
            cmds[m].push(match m {
                0 => timed_cpu(&agents, || spawn_limit(n, k)),
                1 => timed_cpu(&agents, || smol.run(&Work::Cmds(k))),
                _ => timed_cpu(&agents, || mio.run(&Work::Cmds(k))),
            });
        }
        for j in 0..3 {
            let m = (j + rep) % 3;
            xfer[m].push(match m {
                0 => timed_cpu(&raws, || raw_streams(n, &raw_socks, &src, &scratch.0)),
                1 => timed_cpu(&agents, || smol.run(&files)),
                _ => timed_cpu(&agents, || mio.run(&files)),
            });
            clean(&scratch.0, n);
        }
        let rate = |o: &Outcomes| (n * k) as f64 / o.wall;
        let tput = |o: &Outcomes| o.bytes as f64 / o.wall / 1e6;
        let cpu = |o: &Outcomes| format!("{:.2}/{:.2}", o.client_cpu, o.server_cpu);
        progress(format!(
            "rep {}: cmd/s spawn {:.0}, smol {:.0}, mio {:.0}; MB/s raw {:.0}, smol {:.0}, mio {:.0}",
            rep + 1,
            rate(&cmds[0][rep]),
            rate(&cmds[1][rep]),
            rate(&cmds[2][rep]),
            tput(&xfer[0][rep]),
            tput(&xfer[1][rep]),
            tput(&xfer[2][rep]),
        ));
        progress(format!(
            "rep {}: CPU s client/servers: commands spawn {}, smol {}, mio {}; transfers raw {}, smol {}, mio {}",
            rep + 1,
            cpu(&cmds[0][rep]),
            cpu(&cmds[1][rep]),
            cpu(&cmds[2][rep]),
            cpu(&xfer[0][rep]),
            cpu(&xfer[1][rep]),
            cpu(&xfer[2][rep]),
        ));
    }
    drop(smol);
    drop(mio);
    drop(agents);
    drop(raws);
    let _ = std::fs::remove_file(&src);

    let rate = |o: &Outcomes| (n * k) as f64 / o.wall;
    let tput = |o: &Outcomes| o.bytes as f64 / o.wall / 1e6;
    let spread_of = |v: &[Outcomes], f: &dyn Fn(&Outcomes) -> f64, d| {
        spread(&v.iter().map(f).collect::<Vec<_>>(), d)
    };
    let mut rows = Vec::new();
    for (m, name) in [(1, "smol, 1 thread"), (2, "mio")] {
        let errs = errors[m - 1]
            + cmds[m].iter().map(|o| o.errors).sum::<usize>()
            + xfer[m].iter().map(|o| o.errors).sum::<usize>();
        let poison = if errs > 0 { f64::NAN } else { 0.0 };
        let ratios: Vec<f64> = cmds[m]
            .iter()
            .zip(&cmds[0])
            .map(|(a, r)| rate(a) / rate(r))
            .collect();
        let best = ratios.iter().copied().fold(f64::NAN, f64::max);
        rows.push(Row {
            figure: format!("farm: {n} sessions × {k} `true`, one client, {name}"),
            value: format!("{} cmd/s, {errs} errors", spread_of(&cmds[m], &rate, 0)),
            reference: format!(
                "`sh -c true` from {n} threads: {} cmd/s",
                spread_of(&cmds[0], &rate, 0)
            ),
            judged: median(&ratios) + poison,
            judged_text: spread(&ratios, 2),
            guarded: Some(best + poison),
            target: Target::AtLeast(0.8),
            unit: "",
        });
        let starve: Vec<f64> = cmds[m]
            .iter()
            .map(|o| crate::stats::max(&o.finish) / median(&o.finish))
            .collect();
        rows.push(Row {
            figure: format!("farm: slowest / median session finish, {n} × {k} `true`, {name}"),
            value: format!(
                "median finish {} s",
                spread_of(&cmds[m], &|o| median(&o.finish), 3)
            ),
            reference: format!(
                "spawn threads: slowest / median {}",
                spread(
                    &cmds[0]
                        .iter()
                        .map(|o| crate::stats::max(&o.finish) / median(&o.finish))
                        .collect::<Vec<_>>(),
                    2
                )
            ),
            judged: median(&starve),
            judged_text: format!("×{}", spread(&starve, 2)),
            guarded: None,
            target: Target::AtMost(2.0),
            unit: "×",
        });
        let tratios: Vec<f64> = xfer[m]
            .iter()
            .zip(&xfer[0])
            .map(|(a, r)| tput(a) / tput(r))
            .collect();
        let tstarve: Vec<f64> = xfer[m]
            .iter()
            .map(|o| crate::stats::max(&o.finish) / median(&o.finish))
            .collect();
        rows.push(Row {
            figure: format!(
                "farm: {n} sessions × {} KiB inject + extract, aggregate, {name}",
                size >> 10
            ),
            value: format!(
                "{} MB/s (slowest / median session {}); CPU s client / agents {} / {}",
                spread_of(&xfer[m], &tput, 0),
                spread(&tstarve, 2),
                spread_of(&xfer[m], &|o| o.client_cpu, 2),
                spread_of(&xfer[m], &|o| o.server_cpu, 2)
            ),
            reference: format!(
                "raw copy, {n} streams: {} MB/s; CPU s client / servers {} / {}",
                spread_of(&xfer[0], &tput, 0),
                spread_of(&xfer[0], &|o| o.client_cpu, 2),
                spread_of(&xfer[0], &|o| o.server_cpu, 2)
            ),
            judged: errs as f64,
            judged_text: format!("{} ({errs} errors)", spread(&tratios, 2)),
            guarded: None,
            target: Target::NoErrors,
            unit: "",
        });
        let mm = &mem[m - 1];
        let per = mm.per_session(n);
        rows.push(Row {
            figure: format!("farm: client memory per idle session, {name}"),
            value: format!(
                "{per:.1} KiB (VmRSS {} → {} KiB for {n} sessions)",
                mm.before, mm.idle
            ),
            reference: "—".into(),
            judged: per,
            judged_text: format!("{per:.1} KiB"),
            guarded: None,
            target: Target::AtMost(64.0),
            unit: " KiB",
        });
        // The footprint a farm keeps after moving files: read buffers sized for bulk data
        // must have been given back (they were 400 KiB per session before).
        let after = mm.per_session_after(n);
        rows.push(Row {
            figure: format!(
                "farm: client memory per session after a {} KiB inject + extract each, idle, {name}",
                size >> 10
            ),
            value: format!(
                "{after:.1} KiB (VmRSS {} → {} KiB for {n} sessions, after `malloc_trim`)",
                mm.before, mm.after
            ),
            reference: "—".into(),
            judged: after,
            judged_text: format!("{after:.1} KiB"),
            guarded: None,
            target: Target::AtMost(64.0),
            unit: " KiB",
        });
    }
    rows
}
