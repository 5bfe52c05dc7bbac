//! Commands through the serve loop: a real agent on a unix socket, driven by the blocking
//! client, running real processes.

mod agent_harness;
mod common;

use std::time::{Duration, Instant};

use agent_harness::{PATIENCE, TestAgent, dead, eventually, first_line_pid, gone, proc_state};
use tuppence::link::{Command, Outcome, Signal};
use tuppence::wire::field;
use tuppence_agent::serve::LinkDaemonConfig;
use tuppence_blocking::{Run, RunEvent};

/// Reads a running command's output until it contains `marker`; returns what was read.
fn read_until(run: &mut Run<'_>, marker: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !seen.windows(marker.len()).any(|w| w == marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        match run.next_timeout(Some(left)).unwrap() {
            Some(RunEvent::Stdout(d) | RunEvent::Stderr(d)) => seen.extend_from_slice(&d),
            other => panic!(
                "waiting for {:?}: {other:?} after {:?}",
                String::from_utf8_lossy(marker),
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    seen
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn echo_stderr_and_exit_code() {
    let agent = TestAgent::start();
    let s = agent.session();
    let out = s.output(Command::new("echo hello")).unwrap();
    assert_eq!(out.stdout, b"hello\n");
    assert!(out.stderr.is_empty());
    assert_eq!(out.outcome, Outcome::Exited(0));

    let out = s
        .output(Command::new("echo out; echo err >&2; exit 3"))
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.outcome, Outcome::Exited(3));

    // The shell killing itself is reported as a signal, not an exit code.
    let out = s.output(Command::new("kill -TERM $$")).unwrap();
    assert_eq!(out.outcome, Outcome::Signaled(15));
}

#[test]
fn environment_rules() {
    let agent = TestAgent::start();
    let s = agent.session();
    let cmd = Command::new(
        "echo \"FOO=$FOO\"; echo \"PATH=$PATH\"; echo \"HOME=$HOME\"; echo \"USER=$USER\"; \
         echo \"CARGO=${CARGO_MANIFEST_DIR-unset}\"; pwd",
    )
    .env("FOO", "bar baz")
    .env("PATH", "/custom/bin:/usr/bin:/bin");
    let out = s.output(cmd).unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0), "{}", text(&out.stderr));
    let root = tuppence_agent::User::lookup(b"root").unwrap();
    let home = text(root.home());
    assert_eq!(
        text(&out.stdout),
        format!(
            "FOO=bar baz\nPATH=/custom/bin:/usr/bin:/bin\nHOME={home}\nUSER=root\nCARGO=unset\n{home}\n"
        ),
        "the client's variables reach the command, its PATH wins, HOME/USER are set, the \
         agent's own environment does not leak, cwd is the home directory"
    );

    // The client's HOME and USER win too; without a PATH the agent supplies one.
    let out = s
        .output(
            Command::new("echo \"$HOME $USER\"; echo \"$PATH\"")
                .env("HOME", "/x")
                .env("USER", "someone"),
        )
        .unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0), "{}", text(&out.stderr));
    let default_path = text(tuppence_agent::spawn::DEFAULT_PATH);
    assert_eq!(text(&out.stdout), format!("/x someone\n{default_path}\n"));
}

#[test]
fn runs_as_another_user() {
    let Some(user) = common::test_user() else {
        return;
    };
    let agent = TestAgent::start();
    let s = agent.session();
    let out = s
        .output(Command::new("id -un; echo $HOME; echo $USER; pwd").user(user))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0), "{}", text(&out.stderr));
    let account = tuppence_agent::User::lookup(user.as_bytes()).unwrap();
    let home = text(account.home());
    assert_eq!(
        text(&out.stdout),
        format!("{user}\n{home}\n{user}\n{home}\n")
    );
}

#[test]
fn commands_inherit_no_agent_fds() {
    let agent = TestAgent::start();
    let s = agent.session();
    let _other = agent.session();
    // Another command is running, so the agent holds pipes, a pidfd and sockets.
    let busy = s.run(Command::new("exec sleep 100")).unwrap();
    // `ls` lists the fds of the shell, which waits for it holding only its own.
    let out = s.output(Command::new("ls /proc/$$/fd")).unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0\n1\n2\n");
    let out = s.output(Command::new("ls /proc/$$/fd").tty(true)).unwrap();
    let fds: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "on a tty");
    busy.interrupt(Signal::KILL).unwrap();
}

#[test]
fn unknown_user_is_enoent() {
    let agent = TestAgent::start();
    let s = agent.session();
    let out = s
        .output(Command::new("echo should not run").user("no-such-user-tuppence"))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Failed { errno: 2 });
    assert!(out.stdout.is_empty());
    // The connection is still fine.
    let out = s.output(Command::new("echo ok")).unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

#[test]
fn stdin_round_trip_of_one_mebibyte() {
    let agent = TestAgent::start();
    let s = agent.session();
    let run = s.run(Command::new("cat; echo done >&2")).unwrap();
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // Written from another thread while the session's reader buffers the echo (1 MiB is
    // well within what it holds for one transaction).
    std::thread::scope(|sc| {
        sc.spawn(|| {
            run.write_stdin(&data).unwrap();
            run.close_stdin().unwrap();
        });
    });
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert_eq!(out.stderr, b"done\n");
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdin came back altered");
}

#[test]
fn ten_megabytes_of_output_byte_exact() {
    let agent = TestAgent::start();
    let s = agent.session();
    let file = agent.dir.join_str("random");
    let out = s
        .output(Command::new(format!(
            "head -c 10000000 /dev/urandom | tee {file}"
        )))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0), "{}", text(&out.stderr));
    let written = std::fs::read(&file).unwrap();
    assert_eq!(written.len(), 10_000_000);
    assert_eq!(out.stdout.len(), written.len());
    assert!(
        out.stdout == written,
        "output differs from what the command wrote"
    );
}

#[test]
fn timeout_kills_the_whole_group_including_a_grandchild() {
    let agent = TestAgent::start();
    let s = agent.session();
    let start = Instant::now();
    let mut run = s
        .run(Command::new("sleep 30 & echo $!; wait").timeout(Duration::from_secs(2)))
        .unwrap();
    let first = read_until(&mut run, b"\n");
    let sleep_pid = first_line_pid(&first);
    assert!(!dead(sleep_pid), "the background sleep should be running");
    let mut rest = Vec::new();
    let outcome = loop {
        match run.next().unwrap() {
            Some(RunEvent::Finished(o)) => break o,
            Some(RunEvent::Stdout(d) | RunEvent::Stderr(d)) => rest.extend_from_slice(&d),
            None => panic!("no end"),
        }
    };
    let elapsed = start.elapsed();
    assert_eq!(outcome, Outcome::TimedOut, "{}", text(&rest));
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(3),
        "T after {elapsed:?}"
    );
    // The grandchild was killed with its group (it is not the agent's child, so a zombie
    // waiting for init counts as dead).
    assert!(
        eventually(Duration::from_secs(1), || dead(sleep_pid)),
        "the grandchild sleep survived the timeout: {:?}",
        proc_state(sleep_pid)
    );
}

#[test]
fn the_status_of_a_shell_that_exited_is_not_held_back_by_its_grandchild_beyond_the_timeout() {
    // The shell exits at once but a background job keeps stdout open: the status goes out
    // at the timeout at the latest, as the shell's exit status (not T), and the job dies.
    let agent = TestAgent::start();
    let s = agent.session();
    let start = Instant::now();
    let mut run = s
        .run(Command::new("sleep 30 & echo $!; exit 4").timeout(Duration::from_secs(1)))
        .unwrap();
    let pid = first_line_pid(&read_until(&mut run, b"\n"));
    let outcome = loop {
        if let Some(RunEvent::Finished(o)) = run.next().unwrap() {
            break o;
        }
    };
    assert_eq!(outcome, Outcome::Exited(4));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(eventually(Duration::from_secs(1), || dead(pid)));
}

#[test]
fn interrupt_int_term_kill() {
    let agent = TestAgent::start();
    let s = agent.session();
    for (signal, signo) in [(Signal::INT, 2), (Signal::TERM, 15), (Signal::KILL, 9)] {
        let mut run = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
        let pid = first_line_pid(&read_until(&mut run, b"\n"));
        run.interrupt(signal.clone()).unwrap();
        let start = Instant::now();
        let outcome = loop {
            if let Some(RunEvent::Finished(o)) = run.next().unwrap() {
                break o;
            }
        };
        assert_eq!(outcome, Outcome::Signaled(signo), "{signal:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // The agent reaped its child.
        assert!(
            eventually(Duration::from_secs(2), || gone(pid)),
            "{signal:?}: pid {pid} left as {:?}",
            proc_state(pid)
        );
    }
    // Signal names with the SIG prefix and numbers work too; an unknown name is ignored.
    let mut run = s.run(Command::new("echo go; exec sleep 100")).unwrap();
    read_until(&mut run, b"go\n");
    run.interrupt(Signal::named("NOSUCHSIGNAL")).unwrap();
    run.interrupt(Signal::named("SIGHUP")).unwrap();
    assert_eq!(run.collect().unwrap().outcome, Outcome::Signaled(1));
    let run = s.run(Command::new("exec sleep 100")).unwrap();
    run.interrupt(Signal::named("10")).unwrap();
    assert_eq!(run.collect().unwrap().outcome, Outcome::Signaled(10));
}

#[test]
fn tty_mode_interrupt_reaches_the_command() {
    let agent = TestAgent::start();
    let s = agent.session();
    // A loop of short sleeps: whenever SIGINT lands (in a sleep or between two), the trap
    // runs at once. (With one long foreground sleep, a signal landing just before the fork
    // would leave the trap pending until the sleep ends.)
    let script = "trap 'echo caught; exit 7' INT; tty; echo ready; while :; do sleep 0.1; done";

    // `I INT` from the client.
    let mut run = s
        .run(Command::new(script).tty(true).timeout(PATIENCE))
        .unwrap();
    let mut seen = read_until(&mut run, b"ready");
    assert!(seen.starts_with(b"/dev/pts/"), "{}", text(&seen));
    run.interrupt(Signal::INT).unwrap();
    let out = run.collect().unwrap();
    seen.extend_from_slice(&out.stdout);
    assert_eq!(out.outcome, Outcome::Exited(7), "{}", text(&seen));
    assert!(text(&seen).contains("caught"), "{}", text(&seen));
    assert!(out.stderr.is_empty(), "a tty has no separate stderr");

    // ^C typed on the terminal: the pty is the controlling terminal, so the line
    // discipline turns it into SIGINT for the foreground group.
    let mut run = s
        .run(Command::new(script).tty(true).timeout(PATIENCE))
        .unwrap();
    let mut seen = read_until(&mut run, b"ready");
    run.write_stdin(b"\x03").unwrap();
    let out = run.collect().unwrap();
    seen.extend_from_slice(&out.stdout);
    assert_eq!(out.outcome, Outcome::Exited(7), "{}", text(&seen));
    assert!(text(&seen).contains("caught"), "{}", text(&seen));
}

#[test]
fn tty_mode_stdin_and_eof() {
    let agent = TestAgent::start();
    let s = agent.session();
    let run = s
        .run(Command::new("stty -echo; echo go; cat; echo end").tty(true))
        .unwrap();
    let mut run = run;
    read_until(&mut run, b"go");
    run.write_stdin(b"line one\npartial").unwrap();
    run.close_stdin().unwrap();
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    let t = text(&out.stdout);
    assert!(t.contains("line one\r\npartial"), "{t:?}");
    assert!(t.ends_with("end\r\n"), "{t:?}");
}

#[test]
fn tty_mode_volume_both_ways() {
    let agent = TestAgent::start();
    let s = agent.session();
    // 200 kB of input in short lines (a terminal's line buffer is 4 KiB), echo off.
    let mut run = s
        .run(
            Command::new("stty -echo; echo go; wc -c; seq 1 20000")
                .tty(true)
                .timeout(PATIENCE),
        )
        .unwrap();
    read_until(&mut run, b"go");
    let line = format!("{}\n", "x".repeat(99));
    let input = line.repeat(2000);
    run.write_stdin(input.as_bytes()).unwrap();
    run.close_stdin().unwrap();
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    let t = text(&out.stdout);
    // (The end of the "go" line may come here too.)
    let mut lines = t
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty());
    assert_eq!(lines.next(), Some("200000"), "{}", &t[..t.len().min(200)]);
    let numbers: Vec<&str> = lines.collect();
    assert_eq!(numbers.len(), 20000);
    assert_eq!(numbers[19999], "20000");
}

#[test]
fn two_hundred_concurrent_commands_on_one_connection() {
    let agent = TestAgent::start();
    let s = agent.session();
    let start = Instant::now();
    let runs: Vec<_> = (0..200)
        .map(|n| s.run(Command::new(format!("sleep 0.5; echo {n}"))).unwrap())
        .collect();
    for (n, run) in runs.into_iter().enumerate() {
        let out = run.collect().unwrap();
        assert_eq!(out.outcome, Outcome::Exited(0), "command {n}");
        assert_eq!(text(&out.stdout), format!("{n}\n"), "command {n}");
    }
    // One after the other would take 100 s.
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

#[test]
fn procinfo_of_a_running_sleep() {
    let agent = TestAgent::start();
    let s = agent.session();
    let mut run = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let pid = first_line_pid(&read_until(&mut run, b"\n"));
    let mask = (1u32 << field::PID) | (1 << field::STATE) | (1 << field::COMM);
    // The shell execs sleep right after the echo, and sleep then goes to sleep: ask until
    // both have happened.
    let mut fields = Vec::new();
    assert!(
        eventually(PATIENCE, || {
            fields = run.procinfo(mask).unwrap();
            let has = |kind, value: &[u8]| {
                fields
                    .iter()
                    .any(|f| f.kind == kind && f.value.as_ref() == value)
            };
            has(field::COMM, b"sleep") && has(field::STATE, b"S")
        }),
        "{fields:?}"
    );
    let kinds: Vec<u8> = fields.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, vec![field::PID, field::STATE, field::COMM]);
    assert_eq!(fields[0].as_u32(), Some(pid));
    assert_eq!(fields[1].value.as_ref(), b"S");
    assert_eq!(proc_state(pid), Some(b'S'));
    run.interrupt(Signal::KILL).unwrap();
    assert_eq!(run.collect().unwrap().outcome, Outcome::Signaled(9));
}

/// Asked at once after the start (the agent does not wait for a command's exec), the
/// process group is the command's own, never the agent's: a client that signals the group
/// it was told must not hit the agent.
#[test]
fn procinfo_right_after_the_start_gives_the_command_s_own_group() {
    let agent = TestAgent::start();
    let s = agent.session();
    let own_group = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
    for _ in 0..50 {
        let run = s.run(Command::new("exec sleep 100")).unwrap();
        let fields = run
            .procinfo((1u32 << field::PID) | (1 << field::PGID))
            .unwrap();
        let (pid, pgid) = (fields[0].as_u32().unwrap(), fields[1].as_u32().unwrap());
        assert_eq!(pgid, pid, "{fields:?}");
        assert_ne!(pgid, own_group);
        run.interrupt(Signal::KILL).unwrap();
        assert_eq!(run.collect().unwrap().outcome, Outcome::Signaled(9));
    }
}

#[test]
fn allow_users_refuses_other_users_with_eacces() {
    let agent = TestAgent::with_config(LinkDaemonConfig {
        allow_users: Some(vec![b"root".to_vec()]),
        ..agent_harness::quiet_config()
    });
    let s = agent.session();
    let out = s.output(Command::new("echo hi").user("nobody")).unwrap();
    assert_eq!(out.outcome, Outcome::Failed { errno: 13 });
    assert!(out.stdout.is_empty());
    // Even a name that does not exist: the list is checked first, nothing is looked up.
    let out = s
        .output(Command::new("echo hi").user("no-such-user"))
        .unwrap();
    assert_eq!(out.outcome, Outcome::Failed { errno: 13 });
    let path = agent.dir.join_str("refused");
    let e = s
        .inject("nobody", &path, 0o644, &b"x"[..], |_| {})
        .unwrap_err();
    assert!(
        matches!(e, tuppence_blocking::Error::Remote { errno: 13, .. }),
        "{e}"
    );
    assert!(!std::path::Path::new(&path).exists());
    let e = s
        .extract("nobody", "/etc/hostname", Vec::new(), |_| {})
        .unwrap_err();
    assert!(
        matches!(e, tuppence_blocking::Error::Remote { errno: 13, .. }),
        "{e}"
    );
    // The allowed user works.
    let out = s.output(Command::new("id -un")).unwrap();
    assert_eq!(out.stdout, b"root\n");
}

/// A consumer that stops taking output holds back a bounded amount of it: a mebibyte in the
/// blocking session's inbox (which counts bytes, not only events), plus the machine's own
/// bounded queue, not 256 packets of 32 KiB: the rest waits in the agent and the socket.
#[test]
fn a_stalled_consumer_bounds_the_output_held() {
    let agent = TestAgent::start();
    let s = agent.session();
    let run = s.run(Command::new("head -c 64M /dev/zero")).unwrap();
    run.close_stdin().unwrap();
    // Let the reader thread fill what it may.
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = s.stats().bytes_received;
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < 4 << 20,
        "{last} bytes taken in while nobody consumed"
    );
    // Everything still arrives, in order, once the consumer comes back.
    let mut n = 0u64;
    while let Some(ev) = run.next().unwrap() {
        match ev {
            RunEvent::Stdout(d) => {
                assert!(d.iter().all(|&b| b == 0));
                n += d.len() as u64;
            }
            RunEvent::Stderr(_) => {}
            RunEvent::Finished(o) => {
                assert_eq!(o, Outcome::Exited(0));
                break;
            }
        }
    }
    assert_eq!(n, 64 << 20);
}
