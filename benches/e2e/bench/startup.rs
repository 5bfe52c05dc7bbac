//! Whole-process start-up (`--only startup`): `tuppence run -- true` on the `local` target
//! (an agent embedded in the CLI) and `tuppence run -t unix:SOCK -- true` to a running
//! agent, against a bare `sh -c true`, the four alternating, ratio of medians (`--quick`
//! guards the ratio of the fastest runs). The fourth, `tuppence --version`, is the binary's
//! own start and exit with no work, printed beside the reference: a `run` is at least that
//! plus the command's own spawn (`sh -c true` again, in the agent).
//!
//! The CLI binary is not a dependency of this bench: it is looked for beside the bench's
//! own target directory (`target/release/tuppence`, built by `cargo build --release`) or
//! named by `TUPPENCE_E2E_CLI`; without it the figure is skipped, saying so.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::clients::me;
use crate::plan::Plan;
use crate::procs::{Helper, Scratch};
use crate::stats::{Row, Target, median, min, spread};

pub const CLI_ENV: &str = "TUPPENCE_E2E_CLI";

/// The `tuppence` binary to measure.
fn cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CLI_ENV) {
        return Some(PathBuf::from(p));
    }
    // target/release/deps/e2e-HASH → target/release/tuppence
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("tuppence");
    p.is_file().then_some(p)
}

/// Milliseconds of one run of `args`, its output discarded; panics if it fails.
fn once(args: &[&str]) -> f64 {
    let start = Instant::now();
    let st = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(st.success(), "{args:?}: {st}");
    ms
}

pub fn startup(plan: &Plan, scratch: &Scratch) -> Vec<Row> {
    let Some(cli) = cli() else {
        println!(
            "\n== start-up: no tuppence binary beside this bench; skipped (cargo build --release -p tuppence-cli, or {CLI_ENV})"
        );
        return Vec::new();
    };
    let n = if plan.quick { 40 } else { 200 };
    println!(
        "\n== start-up: {} (whole process, {n} runs each, alternating)",
        cli.display()
    );
    let agent = Helper::start("agent", &scratch.0);
    let cli = cli.to_string_lossy().into_owned();
    let unix = format!("unix:{}", agent.sock.display());
    let user = me();
    let methods: [Vec<&str>; 4] = [
        vec!["/bin/sh", "-c", "true"],
        vec![&cli, "run", "--", "true"],
        vec![&cli, "run", "-t", &unix, "-u", &user, "--", "true"],
        vec![&cli, "--version"],
    ];
    for m in &methods {
        once(m);
    }
    let mut res = vec![Vec::new(); methods.len()];
    for i in 0..n {
        for k in 0..methods.len() {
            let m = (k + i) % methods.len();
            res[m].push(once(&methods[m]));
        }
    }
    drop(agent);
    let bare = median(&res[0]);
    let start_only = median(&res[3]);
    let names = [
        "`tuppence run -- true` (local: embedded agent)",
        "`tuppence run -t unix: -- true` (running agent)",
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ratio = median(&res[i + 1]) / bare;
            // The guard takes the fastest runs, as the throughput guards take the best rep:
            // on a shared 2-vCPU machine the median swings with other work (each run hands
            // the request across several threads, and every wake-up may wait for a CPU),
            // while a regression (a sleep, a probe process) slows the fastest run too.
            let fastest = min(&res[i + 1]) / min(&res[0]);
            Row {
                figure: format!("start-up, {name}"),
                value: format!("{} ms", spread(&res[i + 1], 2)),
                reference: format!(
                    "`sh -c true` {} ms; the binary's start alone (`tuppence --version`) {start_only:.2} ms (×{:.2})",
                    spread(&res[0], 2),
                    start_only / bare
                ),
                judged: ratio,
                judged_text: format!("×{ratio:.2}"),
                guarded: Some(fastest),
                target: Target::AtMost(3.0),
                unit: "×",
            }
        })
        .collect()
}
