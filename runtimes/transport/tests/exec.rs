//! The `exec:` transport with plain commands (no agent): the command's stdio, its fate,
//! and closing a command that does not go away by itself.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use tuppence_transport::exec::{EXIT_GRACE, KILL_WAIT, TERM_GRACE};
use tuppence_transport::{
    ConnectOptions, ExecStderr, Target, Transport, TransportError, TransportKind,
};

/// Connects with the command's stderr kept, not shown (the test output stays readable;
/// passing it through is tested with the CLI).
fn connect(command: &str) -> Transport {
    let target: Target = format!("exec:{command}").parse().expect("target");
    let options = ConnectOptions::default().exec_stderr(ExecStderr::TailOnly);
    target.connect_with(&options).expect("connect")
}

/// Everything the command writes to its stdout, until it closes it.
fn read_all(t: &mut Transport) -> String {
    let mut out = Vec::new();
    t.read_to_end(&mut out).expect("read");
    String::from_utf8(out).expect("utf-8")
}

/// Whether a process with this id exists (a zombie counts).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn stdin_and_stdout_are_one_socket_and_echo() {
    let mut t = connect("cat");
    assert_eq!(t.kind(), TransportKind::Exec);
    t.write_all(b"ping\n").expect("write");
    let mut buf = [0u8; 5];
    t.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping\n");
    // A half-close is the command's end of file on stdin: cat exits, we read EOF.
    assert!(t.shutdown_write().expect("shutdown"));
    assert_eq!(read_all(&mut t), "");
    let h = t.exec().expect("exec handle");
    let end = h.end_report(Duration::from_secs(10));
    assert_eq!(end.status.and_then(|s| s.code()), Some(0), "{end}");

    // Both fds are the same socket.
    let mut t = connect("sh -c 'readlink /proc/self/fd/0 /proc/self/fd/1'");
    let out = read_all(&mut t);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("socket:["), "{out}");
    assert_eq!(lines[0], lines[1]);
}

#[test]
fn the_command_runs_in_its_own_process_group() {
    let mut t = connect(r#"sh -c 'echo $$ $(cut -d" " -f5 /proc/$$/stat)'"#);
    let out = read_all(&mut t);
    let mut it = out.split_whitespace();
    let pid = it.next().expect("pid");
    let pgid = it.next().expect("pgid");
    assert_eq!(pid, pgid, "{out}");
    assert_eq!(pid, t.exec().expect("handle").id().to_string());
}

#[test]
fn our_non_blocking_flag_is_not_the_commands() {
    let mut t = connect("sh -c 'read x; grep ^flags: /proc/self/fdinfo/0 /proc/self/fdinfo/1'");
    t.set_nonblocking(true).expect("nonblocking");
    let ours = rustix::fs::fcntl_getfl(&t).expect("getfl");
    assert!(ours.contains(rustix::fs::OFlags::NONBLOCK));
    // Now let the command look at its own fds (reading blocking again).
    t.set_nonblocking(false).expect("blocking");
    t.write_all(b"go\n").expect("write");
    let out = read_all(&mut t);
    let flags: Vec<u32> = out
        .lines()
        .map(|l| {
            let v = l.rsplit('\t').next().expect("value");
            u32::from_str_radix(v.trim(), 8).expect("octal")
        })
        .collect();
    assert_eq!(flags.len(), 2, "{out}");
    for f in flags {
        assert_eq!(f & libc::O_NONBLOCK as u32, 0, "{out}");
    }
}

#[test]
fn a_command_that_cannot_start_is_a_spawn_error() {
    let target: Target = "exec:/nonexistent/program --stdio".parse().expect("target");
    match target.connect() {
        Err(TransportError::Spawn { command, source }) => {
            assert_eq!(command, "/nonexistent/program --stdio");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let msg = target.connect().expect_err("spawn").to_string();
    assert!(
        msg.starts_with("cannot start `/nonexistent/program --stdio`: No such file"),
        "{msg}"
    );
}

#[test]
fn the_end_report_has_status_and_stderr_tail() {
    let mut t = connect("sh -c 'echo first >&2; echo second >&2; exit 3'");
    assert_eq!(read_all(&mut t), "");
    let end = t
        .exec()
        .expect("handle")
        .end_report(Duration::from_secs(10));
    assert_eq!(end.status.and_then(|s| s.code()), Some(3));
    assert!(!end.killed_on_close);
    assert_eq!(end.stderr_tail, "first\nsecond\n");
    assert!(
        end.to_string()
            .ends_with("exited with status 3; its stderr ended with: first | second")
    );

    // Only the tail is kept.
    let mut t =
        connect("sh -c 'i=0; while [ $i -lt 2000 ]; do echo line-$i >&2; i=$((i+1)); done'");
    assert_eq!(read_all(&mut t), "");
    let end = t
        .exec()
        .expect("handle")
        .end_report(Duration::from_secs(10));
    assert!(end.stderr_tail.len() <= tuppence_transport::exec::STDERR_TAIL);
    assert!(
        end.stderr_tail.ends_with("line-1999\n"),
        "{}",
        end.stderr_tail
    );
    assert!(
        end.to_string()
            .ends_with("line-1997 | line-1998 | line-1999")
    );

    // Killed by a signal.
    let mut t = connect("sh -c 'kill -9 $$'");
    assert_eq!(read_all(&mut t), "");
    let end = t
        .exec()
        .expect("handle")
        .end_report(Duration::from_secs(10));
    assert_eq!(end.status.and_then(|s| s.signal()), Some(9));
    assert!(end.to_string().contains("was killed by signal 9"), "{end}");
}

#[test]
fn dropping_the_link_ends_and_reaps_the_command() {
    let t = connect("cat");
    let clone = t.try_clone().expect("clone");
    let pid = t.exec().expect("handle").id();
    drop(t);
    // A clone keeps it open.
    assert!(exists(pid));
    assert_eq!(clone.exec().and_then(|h| h.try_status()), None);
    let started = Instant::now();
    drop(clone);
    // cat exits at end of file; it was reaped (no zombie left).
    assert!(!exists(pid), "pid {pid} left behind");
    assert!(started.elapsed() < EXIT_GRACE, "{:?}", started.elapsed());
}

/// A command that ignores the end of its stdin is TERMed after the grace; one that also
/// ignores TERM is KILLed. Either way closing is bounded and the process is gone.
#[test]
fn a_command_that_outlives_the_link_is_terminated_then_killed() {
    for (command, signal) in [
        ("sh -c 'exec sleep 1000'", 15),
        ("sh -c 'trap \"\" TERM; while :; do sleep 0.05; done'", 9),
    ] {
        let t = connect(command);
        let h = t.exec().expect("handle");
        let pid = h.id();
        // Dropping the last clone of the link closes the command (a handle does not
        // keep it open).
        let started = Instant::now();
        drop(t);
        let took = started.elapsed();
        let status = h.try_status();
        assert_eq!(status.and_then(|s| s.signal()), Some(signal), "{command}");
        assert!(took >= EXIT_GRACE, "{command}: {took:?}");
        let bound = EXIT_GRACE + TERM_GRACE + KILL_WAIT + Duration::from_secs(2);
        assert!(took < bound, "{command}: {took:?}");
        assert!(!exists(pid), "{command}: pid {pid} left behind");
        let end = h.end_report(Duration::ZERO);
        assert!(end.killed_on_close);
        assert!(
            end.to_string().contains("sent when the link closed"),
            "{end}"
        );
        // Closing again is immediate.
        let again = Instant::now();
        assert_eq!(h.close(), status);
        assert!(again.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn the_whole_process_group_is_signalled() {
    // The shell's background child ignores the end of stdin too; TERM to the group gets it.
    let mut t = connect("sh -c 'sleep 1000 & echo $!; wait'");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while t.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let child: u32 = String::from_utf8(line)
        .expect("utf-8")
        .parse()
        .expect("pid");
    let h = t.exec().expect("handle");
    drop(t);
    h.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The background sleep is not our child: init (or a subreaper) reaps it.
    while exists(child)
        && std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "sleep {child} survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bare_fd_still_gets_the_command_reaped() {
    let t = connect("cat");
    let pid = t.exec().expect("handle").id();
    let fd: std::os::fd::OwnedFd = t.into();
    assert!(fd.as_raw_fd() >= 0);
    assert!(exists(pid));
    drop(fd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(pid) {
        assert!(Instant::now() < deadline, "cat {pid} not reaped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A command stopped in the background (as one that reads the terminal is, by SIGTTIN)
/// is continued along with the TERM, so it ends by TERM rather than waiting for the KILL.
#[test]
fn a_stopped_command_is_continued_to_take_its_term() {
    let t = connect("sh -c 'kill -STOP $$; sleep 1000'");
    let h = t.exec().expect("handle");
    let pid = h.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "sh {pid} never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(t);
    assert_eq!(h.try_status().and_then(|s| s.signal()), Some(15));
}
