//! Measures a `true` round trip through `spawn_command` against bare spawns of `/bin/sh -c true`.
//!
//! `cargo run --release -p tuppence-agent --example spawn_cost [REPS] [ROUNDS]`
//!
//! Methods, interleaved round by round so machine noise hits all alike:
//! * `posix_spawn`: `Command::new("/bin/sh").args(["-c", "true"]).status()` with null stdio
//!   (std uses posix_spawn/vfork here);
//! * `fork+exec`: the same with an empty `pre_exec` hook (std's fork path);
//! * `tuppence`: `spawn_command` as the current user + wait for the pidfd + `try_wait` + stdout/stderr EOF,
//!   i.e. everything the agent does per command except the protocol;
//! * `+cgroup`: the same with the command in its own cgroup (`spawn_command_in`: `mkdir` of
//!   the leaf, the child's move into it, `rmdir` when the `Child` is dropped), when this
//!   system allows cgroups (root, cgroup2 with `cgroup.kill`).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::event::{PollFd, PollFlags};
use std::sync::Arc;
use tuppence_agent::fdio::{self, ReadOutcome};

use tuppence_agent::cgroup::CgroupTree;
use tuppence_agent::{SpawnSpec, spawn_command_in};

fn bare(fork: bool) -> Duration {
    let start = Instant::now();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if fork {
        // SAFETY: an empty hook; it only forces std's fork+exec path.
        unsafe {
            cmd.pre_exec(|| Ok(()));
        }
    }
    let status = cmd.status();
    let took = start.elapsed();
    assert!(matches!(status, Ok(s) if s.success()), "{status:?}");
    took
}

fn ours(spec: &SpawnSpec, cgroup: Option<&Arc<CgroupTree>>) -> Duration {
    let start = Instant::now();
    let mut child = match spawn_command_in(spec, cgroup) {
        Ok(child) => child,
        Err(e) => panic!("spawn: {e}"),
    };
    child.close_stdin();
    let mut buf = BytesMut::with_capacity(4096);
    let (mut out_eof, mut err_eof) = (false, false);
    loop {
        if out_eof && err_eof && matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        {
            let mut fds = vec![PollFd::from_borrowed_fd(child.pidfd(), PollFlags::IN)];
            fds.extend(
                child
                    .stdout_fd()
                    .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
            );
            fds.extend(
                child
                    .stderr_fd()
                    .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
            );
            let _ = rustix::event::poll(&mut fds, None);
        }
        if !out_eof && let Some(fd) = child.stdout_fd() {
            out_eof = matches!(fdio::read_into(fd, &mut buf, 4096), Ok(ReadOutcome::Eof));
        }
        if !err_eof && let Some(fd) = child.stderr_fd() {
            err_eof = matches!(fdio::read_into(fd, &mut buf, 4096), Ok(ReadOutcome::Eof));
        }
        if out_eof {
            child.close_stdout();
        }
        if err_eof {
            child.close_stderr();
        }
    }
    // Dropping it removes its cgroup.
    drop(child);
    start.elapsed()
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let median = us(v[v.len() / 2]);
    let p99 = us(v[(v.len() * 99 / 100).min(v.len() - 1)]);
    (median, p99)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let me = match tuppence_agent::User::current() {
        Ok(user) => user.name().to_vec(),
        Err(e) => panic!("who am I: {e}"),
    };
    let spec = SpawnSpec::new(me, "true");
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    println!("reps {reps} x rounds {rounds}, RLIMIT_NOFILE {nofile:?}");
    let tree = match CgroupTree::create() {
        Ok(tree) => Some(tree),
        Err(e) => {
            println!("+cgroup not measured: {e}");
            None
        }
    };
    for _ in 0..20 {
        bare(false);
        bare(true);
        ours(&spec, None);
        ours(&spec, tree.as_ref());
    }
    for round in 1..=rounds {
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            a.push(bare(false));
            b.push(bare(true));
            c.push(ours(&spec, None));
            if tree.is_some() {
                d.push(ours(&spec, tree.as_ref()));
            }
        }
        let (a, b, c) = (stats(a), stats(b), stats(c));
        let cg = if d.is_empty() {
            String::new()
        } else {
            let d = stats(d);
            format!(
                "  +cgroup {:.0}/{:.0} (+{:.0} µs, ×{:.2})",
                d.0,
                d.1,
                d.0 - c.0,
                d.0 / c.0
            )
        };
        println!(
            "round {round}: median/p99 µs  posix_spawn {:.0}/{:.0}  fork+exec {:.0}/{:.0}  tuppence {:.0}/{:.0}{cg}  ratio vs posix_spawn {:.2}, vs fork+exec {:.2}",
            a.0,
            a.1,
            b.0,
            b.1,
            c.0,
            c.1,
            c.0 / a.0,
            c.0 / b.0
        );
    }
}
