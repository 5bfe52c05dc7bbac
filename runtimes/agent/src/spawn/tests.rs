//! Unit tests of spawning.

use super::setup::{mark_fds_cloexec_by_scan, parse_fd};
use super::*;

#[test]
fn signal_names() {
    assert_eq!(signal_from_name("INT"), Some(libc::SIGINT));
    assert_eq!(signal_from_name("SIGINT"), Some(libc::SIGINT));
    assert_eq!(signal_from_name("sigterm"), Some(libc::SIGTERM));
    assert_eq!(signal_from_name("Kill"), Some(libc::SIGKILL));
    assert_eq!(signal_from_name(""), Some(libc::SIGKILL));
    assert_eq!(signal_from_name(b"\0"), Some(libc::SIGKILL));
    assert_eq!(signal_from_name("9"), Some(9));
    assert_eq!(signal_from_name("64"), Some(64));
    assert_eq!(signal_from_name("65"), None);
    assert_eq!(signal_from_name("0"), None);
    assert_eq!(signal_from_name("999"), None);
    assert_eq!(signal_from_name("SIG"), None);
    assert_eq!(signal_from_name("NOPE"), None);
    assert_eq!(signal_from_name(b"\xff"), None);
    for name in [
        "HUP", "INT", "QUIT", "ILL", "ABRT", "FPE", "KILL", "SEGV", "PIPE", "ALRM", "TERM", "USR1",
        "USR2", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
    ] {
        assert!(signal_from_name(name).is_some(), "{name}");
        assert_eq!(
            signal_from_name(format!("SIG{name}")),
            signal_from_name(name)
        );
    }
}

#[test]
fn env_rules() {
    let root = User::lookup(b"root").expect("root");
    let client = vec![
        b"PATH=/x".to_vec(),
        b"A=1".to_vec(),
        b"NOEQUALS".to_vec(),
        b"=empty".to_vec(),
        b"A=2".to_vec(),
        b"B=".to_vec(),
    ];
    let env = build_env(&client, &root);
    assert_eq!(env.get(b"PATH".as_slice()), Some(&b"/x".to_vec()));
    assert_eq!(env.get(b"A".as_slice()), Some(&b"2".to_vec()));
    assert_eq!(env.get(b"B".as_slice()), Some(&Vec::new()));
    assert_eq!(env.get(b"USER".as_slice()), Some(&b"root".to_vec()));
    assert!(env.contains_key(b"HOME".as_slice()));
    assert_eq!(env.len(), 5);
    let env = build_env(&[b"HOME=/h".to_vec(), b"USER=u".to_vec()], &root);
    assert_eq!(env.get(b"HOME".as_slice()), Some(&b"/h".to_vec()));
    assert_eq!(env.get(b"USER".as_slice()), Some(&b"u".to_vec()));
    assert_eq!(env.get(b"PATH".as_slice()), Some(&DEFAULT_PATH.to_vec()));
}

#[test]
fn status_words() {
    assert_eq!(ExitStatus::Exited(3).status_words(), (0, 3));
    assert_eq!(ExitStatus::Signaled(15).status_words(), (14, 15));
}

#[test]
fn proc_scan_fallback_marks_fds_cloexec() {
    // The fallback for kernels without CLOSE_RANGE_CLOEXEC, exercised directly (setting
    // FD_CLOEXEC on this test process's fds is harmless).
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    for fd in [&r, &w] {
        let flags = rustix::io::fcntl_getfd(fd).expect("getfd");
        assert!(!flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
    mark_fds_cloexec_by_scan().expect("scan");
    for fd in [&r, &w] {
        let flags = rustix::io::fcntl_getfd(fd).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
}

#[test]
fn a_failed_exec_is_reported_with_its_errno() {
    let setup = || ChildSetup {
        cgroup_procs: None,
        tty: false,
        switch: false,
        uid: rustix::process::getuid(),
        gid: rustix::process::getgid(),
        groups: Vec::new(),
        home: None,
    };
    let null = || {
        rustix::fs::open(
            c"/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("/dev/null")
    };
    let fds = [null(), null(), null()];
    let raw = fds.each_ref().map(AsRawFd::as_raw_fd);
    let prepared = || {
        vfork::Prepared::new(
            c"/nonexistent/program",
            Vec::new(),
            Vec::new(),
            raw,
            setup(),
            None,
        )
    };
    let err = vfork::spawn(prepared(), vfork::Mode::Wait).expect_err("no such program");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

    // Without waiting: the child exits 127 and the errno is in the block. (Tracked, so
    // that an orphan reaper of another test in this process leaves it alone.)
    let (pid, pending) =
        reaper::spawn_tracked(|| vfork::spawn(prepared(), vfork::Mode::NoWait)).expect("started");
    let pending = pending.expect("a pending block");
    let raw = libc::pid_t::try_from(pid).expect("pid");
    let mut status = 0;
    let reaped = reaper::reap_tracked(pid, || {
        // SAFETY: waitpid on the child just started, with a valid status pointer.
        Ok(Some(unsafe { libc::waitpid(raw, &mut status, 0) }))
    });
    assert_eq!(reaped.expect("waitpid"), Some(raw));
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 127);
    assert!(pending.settled());
    assert_eq!(pending.error(), libc::ENOENT);
}

/// A command runs in its own leaf, whichever way it got there: born in it
/// (`clone3(CLONE_INTO_CGROUP)`) or moving itself there (the fallback).
#[test]
fn commands_start_in_their_own_cgroup_both_ways() {
    let tree = match crate::cgroup::CgroupTree::create() {
        Ok(tree) => tree,
        Err(e) => {
            println!("SKIPPED: cgroup v2 cannot be used here: {e}");
            return;
        }
    };
    let me = User::current().expect("current user");
    let spec = SpawnSpec::new(me.name().to_vec(), "cat /proc/self/cgroup");
    for way in ["clone3", "fallback"] {
        if way == "fallback" {
            vfork::clone3::disable();
        }
        let mut child = spawn_command_in(&spec, Some(&tree)).expect("spawn");
        let leaf = child.cgroup_path().expect("a cgroup");
        child.close_stdin();
        let mut out = bytes::BytesMut::new();
        let fd = child.stdout_fd().expect("stdout");
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        loop {
            let _ = rustix::event::poll(&mut fds, None);
            match fdio::read_into(fd, &mut out, 4096).expect("read") {
                fdio::ReadOutcome::Eof => break,
                _ => continue,
            }
        }
        let own = crate::cgroup::own_cgroup_dir().expect("own cgroup");
        let rel = leaf.strip_prefix(&own).expect("below our own cgroup");
        let text = String::from_utf8_lossy(&out);
        let line = text
            .lines()
            .find(|l| l.starts_with("0::"))
            .expect("0:: line");
        assert!(
            line.ends_with(&format!("/{}", rel.display())),
            "{way}: the command is in {line}, not in {}",
            leaf.display()
        );
        while child.try_wait().expect("wait").is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(child);
        assert!(!leaf.exists(), "{way}: the leaf was not removed");
    }
}

#[test]
fn fd_names() {
    assert_eq!(parse_fd(b"17"), Some(17));
    assert_eq!(parse_fd(b"."), None);
    assert_eq!(parse_fd(b""), None);
}
