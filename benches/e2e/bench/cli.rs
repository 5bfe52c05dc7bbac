//! `--only cli`: the `tuppence` command line's own `inject` and `extract`, a whole process
//! per transfer (start-up, connect, hello, the transfer, the local temporary and its
//! rename), against the raw socket copy of the same bytes, interleaved in the same run.
//!
//! The CLI runs as this bench binary started again with `TUPPENCE_E2E_ROLE=cli`: the
//! bench links `tuppence-cli`'s library and calls `tuppence_cli::main`, the very function
//! the `tuppence` binary's `main` is. So `cargo bench --bench e2e` always measures the
//! current CLI code, with no separately built `target/release/tuppence` that could be
//! missing or stale. `TUPPENCE_E2E_CLI_B=/path/to/tuppence` adds a second, real binary
//! (another build) as method "cli B", interleaved with the others, for A/B comparisons.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{self, Helper, ROLE_ENV, Scratch};
use crate::stats::{Row, Target, median, spread};
use crate::{make_file, mbps, progress, raw, same_content};

/// The role that makes this binary the `tuppence` command line.
pub const CLI_ROLE: &str = "cli";
/// A second `tuppence` binary to measure beside this build's CLI.
pub const CLI_B_ENV: &str = "TUPPENCE_E2E_CLI_B";
/// The target ratio to the raw copy (issue #18, item 1).
const TARGET: f64 = 0.85;

/// In a process started with the CLI role: runs `tuppence` with this process's arguments.
pub fn run_cli_if_asked() -> Option<ExitCode> {
    (std::env::var_os(ROLE_ENV)? == CLI_ROLE).then(tuppence_cli::main)
}

/// One way to start `tuppence`.
struct Cli {
    name: String,
    exe: PathBuf,
    /// This bench binary in the CLI role (else a real `tuppence` binary).
    role: bool,
}

impl Cli {
    /// Runs `tuppence ARGS` to completion; returns its wall time. Its stderr is captured
    /// (never a terminal: no progress bar) and shown if it fails.
    fn run(&self, args: &[OsString]) -> Duration {
        let mut cmd = Command::new(&self.exe);
        if self.role {
            cmd.env(ROLE_ENV, CLI_ROLE);
        } else {
            cmd.env_remove(ROLE_ENV);
        }
        cmd.env_remove("TUPPENCE_TARGET")
            .env_remove("TUPPENCE_LOG")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let out = cmd.output().expect("start tuppence");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{}: tuppence {:?}: {}\n{}",
            self.name,
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }
}

/// CPU time (user + system) of the waited-for children of this process: the CLI runs.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn cli(plan: &crate::Plan, scratch: &Scratch) -> Vec<Row> {
    let size = plan.size;
    let mib = size >> 20;
    let mut clis = vec![Cli {
        name: "cli".into(),
        exe: std::env::current_exe().expect("current exe"),
        role: true,
    }];
    if let Some(b) = std::env::var_os(CLI_B_ENV) {
        clis.push(Cli {
            name: "cli B".into(),
            exe: PathBuf::from(b),
            role: false,
        });
    }
    println!(
        "\n== the `tuppence` CLI's inject and extract: {mib} MiB, {} reps, a process per transfer \
         (methods interleaved: raw, {})",
        plan.reps,
        clis.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let src = scratch.join("cli-source.bin");
    make_file(&src, size);
    let agent = Helper::start("agent", &scratch.0);
    let raw = Helper::start("raw", &scratch.0);
    let target = format!("unix:{}", agent.sock.display());
    let user = crate::clients::me();
    let dest = scratch.join("cli-dest.bin");
    let remote = scratch.join("cli-remote.bin");
    let os = |s: &str| OsString::from(s);
    let inject_args = [
        os("inject"),
        os("-t"),
        os(&target),
        os("-u"),
        os(&user),
        src.clone().into(),
        remote.clone().into(),
    ];
    let extract_args = [
        os("extract"),
        os("-t"),
        os(&target),
        os("-u"),
        os(&user),
        src.clone().into(),
        dest.clone().into(),
    ];
    // Correctness once per method, outside the timed runs (and a warm-up).
    for c in &clis {
        c.run(&inject_args);
        assert!(same_content(&src, &remote), "{}: inject differs", c.name);
        c.run(&extract_args);
        assert!(same_content(&src, &dest), "{}: extract differs", c.name);
    }
    let _ = std::fs::remove_file(&dest);
    let _ = std::fs::remove_file(&remote);

    let figures = ["inject", "extract"];
    let methods = 1 + clis.len();
    // mbs[figure][method], cpu[figure][method]: one entry per rep; method 0 is raw.
    let mut mbs = vec![vec![Vec::new(); methods]; figures.len()];
    let mut cpu = vec![vec![(Vec::new(), Vec::new()); methods]; figures.len()];
    for rep in 0..plan.reps {
        for (fi, f) in figures.iter().enumerate() {
            for k in 0..methods {
                let m = (k + rep) % methods;
                let server = if m == 0 { &raw } else { &agent };
                let (server_cpu, client_cpu) = (server.cpu(), children_cpu());
                let self_cpu = procs::self_cpu();
                let took = match (*f, m) {
                    ("inject", 0) => {
                        let start = Instant::now();
                        let mut source = std::fs::File::open(&src).expect("source");
                        raw::inject(&raw.sock, &mut source, &remote).expect("raw inject");
                        start.elapsed()
                    }
                    (_, 0) => {
                        let start = Instant::now();
                        let mut sink = std::fs::File::create(&dest).expect("dest");
                        raw::extract(&raw.sock, &src, &mut sink).expect("raw extract");
                        start.elapsed()
                    }
                    ("inject", _) => clis[m - 1].run(&inject_args),
                    (_, _) => clis[m - 1].run(&extract_args),
                };
                // The raw client is this process; a CLI run is a child.
                let client = if m == 0 {
                    procs::self_cpu() - self_cpu
                } else {
                    children_cpu() - client_cpu
                };
                let c = &mut cpu[fi][m];
                c.0.push((server.cpu() - server_cpu).as_secs_f64());
                c.1.push(client.as_secs_f64());
                let written = if *f == "inject" { &remote } else { &dest };
                let got = std::fs::metadata(written).map_or(0, |m| m.len());
                assert_eq!(got, size, "{f} method {m}: wrong size");
                mbs[fi][m].push(mbps(size, took));
                let _ = std::fs::remove_file(&dest);
                let _ = std::fs::remove_file(&remote);
            }
        }
        progress(format!("rep {} done", rep + 1));
    }
    let mut rows = Vec::new();
    for (fi, f) in figures.iter().enumerate() {
        let reference = &mbs[fi][0];
        progress(format!(
            "cli {f}: CPU s per run, server / client: raw {} / {}",
            spread(&cpu[fi][0].0, 3),
            spread(&cpu[fi][0].1, 3)
        ));
        for (i, c) in clis.iter().enumerate() {
            let v = &mbs[fi][i + 1];
            progress(format!(
                "cli {f}: CPU s per run, server / client: {} {} / {}",
                c.name,
                spread(&cpu[fi][i + 1].0, 3),
                spread(&cpu[fi][i + 1].1, 3)
            ));
            let ratios: Vec<f64> = v.iter().zip(reference).map(|(a, b)| a / b).collect();
            progress(format!(
                "cli {f}: {} ratio per rep {:.2?}",
                c.name,
                ratios
                    .iter()
                    .map(|r| (r * 100.0).round() / 100.0)
                    .collect::<Vec<_>>()
            ));
            if i > 0 {
                let vs_a: Vec<f64> = v.iter().zip(&mbs[fi][1]).map(|(b, a)| b / a).collect();
                progress(format!(
                    "cli {f}: B / A per rep, median {:.2} ({})",
                    median(&vs_a),
                    spread(&vs_a, 2)
                ));
            }
            let best = ratios.iter().copied().fold(f64::NAN, f64::max);
            let what = match *f {
                "inject" => format!("`tuppence inject` {mib} MiB tmpfs file, whole process"),
                _ => format!("`tuppence extract` {mib} MiB → tmpfs file, whole process"),
            };
            let suffix = if i == 0 {
                String::new()
            } else {
                format!(" ({})", c.name)
            };
            rows.push(Row {
                figure: format!("{what}{suffix}"),
                value: format!("{} MB/s", spread(v, 0)),
                reference: format!("raw socket copy {} MB/s", spread(reference, 0)),
                judged: median(&ratios),
                judged_text: spread(&ratios, 2),
                guarded: Some(best),
                target: Target::AtLeast(TARGET),
                unit: "",
            });
        }
    }
    drop(agent);
    drop(raw);
    let _ = std::fs::remove_file(&src);
    rows
}
