//! `exec:` targets through the CLI against `tuppence serve --stdio` (issue #17): every
//! operation in both dialects, with the agent's stdio a socket (what `exec:` gives it) or
//! two pipes; a command that dies mid-command, exits before the hello, does not exist or
//! outlives the link; its stderr passed through; what `serve --stdio` leaves on its fds.

mod reach_support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reach_support::*;
use tuppence::link::{ClientConfig, Command, Outcome};

/// The agent on a socket (`exec:` gives it one end of a socket pair), and on two pipes
/// (`cat`s between the socket and the agent), in both dialects.
fn targets() -> Vec<(String, bool)> {
    let pipes = format!("exec:sh -c 'cat | {BIN} serve --stdio | cat'");
    vec![
        (exec_target(false), false),
        (exec_target(true), true),
        (pipes.clone(), false),
        (format!("legacy+{pipes}"), true),
    ]
}

#[test]
fn every_operation_over_exec_in_both_dialects() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for (t, legacy) in targets() {
        let t = t.as_str();
        // Exit status, stdout and stderr apart.
        let out = run(&["run", "-t", t, "--", "echo out; echo err >&2; exit 3"]);
        assert_eq!(code(&out), 3, "{t}: {}", stderr(&out));
        assert_eq!(stdout(&out), "out\n", "{t}");
        assert_eq!(stderr(&out), "err\n", "{t}");
        // Stdin, every byte value, and its end.
        let out = run_with_input(&["run", "-t", t, "--", "cat"], &data);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert!(out.stdout == data, "{t}: {} bytes back", out.stdout.len());
        // A pty.
        let out = run(&["run", "-t", t, "--tty", "--", "tty; echo on-tty >&2"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.starts_with("/dev/pts/"), "{t}: {text:?}");
        assert!(text.contains("on-tty\r\n"), "{t}: {text:?}");
        // Inject and extract.
        let dir = TempDir::new("xfer");
        let (local, remote, back) = (dir.join("l"), dir.join("r"), dir.join("b"));
        std::fs::write(&local, &data).expect("write");
        let out = run(&["inject", "-t", t, "--mode", "0600", &local, &remote]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        let out = run(&["extract", "-t", t, &remote, &back]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert!(std::fs::read(&back).expect("extracted") == data, "{t}");
        // The hello: version and keepalive.
        let out = run(&["ping", "-t", t, "-k", "10"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        let text = stdout(&out);
        let version = if legacy {
            "protocol 3.0"
        } else {
            "protocol 4.0"
        };
        assert!(text.contains(version), "{t}: {text}");
        assert!(text.contains("keepalive 10 s"), "{t}: {text}");
        if legacy {
            let out = run(&["monitor", "-t", t, "agent"]);
            assert_eq!(code(&out), USAGE, "{t}: {}", stderr(&out));
        } else {
            let out = run(&["procinfo", "-t", t, "-f", "pid,pgid,comm", "--", "sleep 10"]);
            assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
            let line = stdout(&out);
            assert!(
                line.starts_with("pid=") && line.contains(" comm="),
                "{line}"
            );
            let out = run(&["monitor", "-t", t, "--settle", "agent"]);
            assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
            let out = run(&["monitor", "-t", t, "no-such-source"]);
            assert_eq!(code(&out), REMOTE_FAILURE, "{t}: {}", stderr(&out));
        }
        // A command signalled from another connection (another agent: each exec: starts
        // its own), by its process group.
        let mut runner = tuppence()
            .args(["run", "-t", t, "--", "echo $$; exec sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        // The shell's pid is its process group's id: the agent starts it with setsid.
        let pgid = first_line(&mut runner);
        let out = run(&["interrupt", "-t", t, "--signal", "TERM", &pgid]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        let st = wait_exit(&mut runner, LIMIT).expect("run ends");
        assert_eq!(st.code(), Some(128 + 15), "{t}");
    }
}

/// The first line a running `tuppence run` wrote to its stdout. Once it has, its signal
/// handlers are in place (they are installed before output is copied).
fn first_line(runner: &mut std::process::Child) -> String {
    let out = runner.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("a line");
    line.trim().to_owned()
}

/// Ctrl-C on the terminal reaches `tuppence`, which forwards INT to the remote command,
/// and not the command carrying the link (which runs in a process group of its own).
#[test]
fn ctrl_c_interrupts_the_remote_command_not_the_link() {
    for legacy in [false, true] {
        let t = exec_target(legacy);
        // A process group of its own, as a shell's foreground job.
        let mut runner = tuppence()
            .args(["run", "-t", &t, "--", "echo started; exec sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn run");
        assert_eq!(first_line(&mut runner), "started");
        let group = rustix::process::Pid::from_raw(runner.id() as i32).expect("pid");
        rustix::process::kill_process_group(group, rustix::process::Signal::INT).expect("kill");
        let st = wait_exit(&mut runner, LIMIT).expect("run ends");
        // 3.0 has no signal names: the C protocol's interrupt is KILL.
        let want = if legacy { 128 + 9 } else { 128 + 2 };
        assert_eq!(st.code(), Some(want), "{t}");
    }
}

#[test]
fn a_command_that_does_not_exist_is_a_connection_failure_with_the_reason() {
    for prefix in ["", "legacy+"] {
        let t = format!("{prefix}exec:/nonexistent/agent serve --stdio");
        let out = run(&["run", "-t", &t, "--", "true"]);
        assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(
                "cannot start `/nonexistent/agent serve --stdio`: No such file or directory"
            ),
            "{err}"
        );
    }
}

#[test]
fn a_command_that_exits_before_the_hello_says_how_and_why() {
    for prefix in ["", "legacy+"] {
        let t = format!("{prefix}exec:sh -c 'echo no container named x >&2; exit 9'");
        let started = Instant::now();
        let out = run(&["run", "-t", &t, "--", "true"]);
        assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
        let err = stderr(&out);
        // Its stderr, passed through, then our one line with its status and stderr.
        let mut lines = err.lines();
        assert_eq!(lines.next(), Some("no container named x"), "{err}");
        let last = lines.next().expect("error line");
        assert!(last.starts_with(&format!("tuppence: {t}: ")), "{err}");
        assert!(
            last.ends_with("exited with status 9; its stderr ended with: no container named x)"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn the_commands_stderr_passes_through() {
    let t = format!("exec:sh -c 'echo hello from exec >&2; exec {BIN} serve --stdio'");
    let out = run(&["run", "-t", &t, "--", "echo ok"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");
    assert_eq!(stderr(&out), "hello from exec\n");
}

/// The agent dies (SIGKILL) in the middle of a command: the client reports a connection
/// failure naming the signal, at once, in both dialects.
#[test]
fn agent_death_mid_command_is_a_clear_error_without_a_hang() {
    for legacy in [false, true] {
        let t = exec_target(legacy);
        let mut runner = tuppence()
            .args(["run", "-t", &t, "--", "echo $PPID; sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        let mut out = BufReader::new(runner.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("agent pid");
        let agent: i32 = line.trim().parse().expect("pid");
        let started = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(agent).expect("pid"),
            rustix::process::Signal::KILL,
        )
        .expect("kill");
        let st = wait_exit(&mut runner, LIMIT).expect("run ends");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let mut err = String::new();
        std::io::Read::read_to_string(&mut runner.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        assert_eq!(st.code(), Some(CONNECTION), "{t}: {err}");
        assert!(
            err.contains("connection lost while the command ran"),
            "{err}"
        );
        assert!(
            err.contains("serve --stdio` was killed by signal 9"),
            "{err}"
        );
    }
}

/// A command that keeps the link open after its agent ended (here a shell that sleeps on
/// with the socket as stdout) is terminated after the documented grace, and the client
/// ends normally.
#[test]
fn a_command_that_outlives_the_link_does_not_hang_the_client() {
    let t = format!("exec:sh -c 'echo pid $$ >&2; {BIN} serve --stdio; exec sleep 1000'");
    let started = Instant::now();
    let out = run(&["run", "-t", &t, "--", "echo done"]);
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "done\n");
    let err = stderr(&out);
    let pid: u32 = err
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .expect("pid line")
        .parse()
        .expect("pid");
    assert!(took >= tuppence_transport::exec::EXIT_GRACE, "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "sleep {pid} still runs"
    );
}

/// What `serve --stdio` does to its stdio: the file description it shares with its parent
/// is never made non-blocking (the parent shell reads it after the agent is gone), and
/// while it serves, its own fds 0 and 1 no longer hold the link (0 is /dev/null, 1 the
/// log) nor do its commands' fds.
#[test]
fn serve_stdio_leaves_the_shared_fds_alone() {
    let t = format!("exec:sh -c '{BIN} serve --stdio; grep -h ^flags: /proc/$$/fdinfo/0 >&2'");
    let script = "readlink /proc/$PPID/fd/0 /proc/$PPID/fd/1 /proc/$PPID/fd/2; \
                  for f in /proc/$$/fd/*; do readlink $f; done; true";
    let out = run(&["run", "-t", &t, "--", script]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"/dev/null"), "{text}");
    assert_eq!(lines.get(1), lines.get(2), "fd 1 is the log: {text}");
    assert!(
        lines.iter().skip(3).all(|l| !l.starts_with("socket:")),
        "a command holds a socket: {text}"
    );
    let err = stderr(&out);
    let flags: Vec<u32> = err
        .lines()
        .filter_map(|l| l.strip_prefix("flags:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).expect("octal"))
        .collect();
    // (fd 0 and fd 1 are one socket, one description; the shell's fd 1 is redirected
    // while grep runs, so fd 0 is the one to look at.)
    assert_eq!(flags.len(), 1, "{err}");
    assert_eq!(
        flags[0] & libc::O_NONBLOCK as u32,
        0,
        "left non-blocking: {err}"
    );
}

/// A parent may hand the agent stdio that is already non-blocking (its own business): the
/// relay waits for readiness instead of taking `EAGAIN` for the end of the link.
#[test]
fn serve_stdio_on_a_non_blocking_socket() {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    theirs.set_nonblocking(true).expect("nonblocking");
    let out_fd = theirs.try_clone().expect("clone");
    let mut agent = std::process::Command::new(BIN)
        .args(["serve", "--stdio"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(out_fd)))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent");
    let session =
        tuppence_blocking::Session::new(ours, ClientConfig::default(), LIMIT).expect("session");
    // After the hello the relay found nothing more to read (EAGAIN) until this request.
    let run = session
        .run(Command::new("head -c 200000 /dev/zero"))
        .expect("run");
    let _ = run.close_stdin();
    let out = run.collect().expect("output");
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert_eq!(out.stdout.len(), 200_000);
    drop(session);
    let st = wait_exit(&mut agent, LIMIT).expect("agent exits when the link closes");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn serve_stdio_refuses_listeners_and_exits_on_a_closed_link() {
    let out = run(&["serve", "--stdio", "--unix", "/tmp/x.sock"]);
    assert_eq!(code(&out), USAGE, "{}", stderr(&out));
    // No client at all: end of file on stdin is the end of the link.
    let out = run(&["serve", "--stdio"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(out.stderr.is_empty(), "quiet by default: {}", stderr(&out));
}

/// The client goes away (killed) in the middle of a command: `serve --stdio` sees its
/// link end, kills the command and exits, as for any disconnect.
#[test]
fn serve_stdio_ends_with_its_client() {
    let t = exec_target(false);
    let mut runner = tuppence()
        .args(["run", "-t", &t, "--", "echo $PPID $$; exec sleep 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    let line = first_line(&mut runner);
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let [agent, command] = pids[..] else {
        panic!("{line}")
    };
    assert!(alive(agent) && alive(command));
    runner.kill().expect("kill the client");
    let _ = runner.wait();
    assert!(
        wait_gone(command, LIMIT),
        "the command {command} outlived its client"
    );
    assert!(
        wait_gone(agent, LIMIT),
        "the agent {agent} outlived its link"
    );
}

/// A listening socket on stdin (the C agent accepted on one) is refused with words.
#[test]
fn serve_stdio_refuses_a_listening_socket() {
    let dir = TempDir::new("listening");
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("l.sock")).expect("bind");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--stdio"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .output()
        .expect("serve");
    assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "tuppence: serve: cannot serve on stdio: stdin is a socket that is not connected (--stdio serves one connected client, it does not listen)\n"
    );
}
