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
        // Emptied: removed, or kept for the next command (`SPARE_LEAVES`), then empty.
        let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
        assert!(procs.is_empty(), "{way}: the leaf still holds {procs}");
    }
}

fn run_to_exit(
    spec: &SpawnSpec,
    tree: &std::sync::Arc<crate::cgroup::CgroupTree>,
) -> (Child, ExitStatus) {
    let mut child = spawn_command_in(spec, Some(tree)).expect("spawn");
    child.close_stdin();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (child, status);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// An emptied leaf is handed to the next command (a new cgroup costs the clone that first
/// uses it 30-45 µs more); one that still holds a process is never reused but killed and
/// removed; the tree keeps at most `SPARE_LEAVES` and removes them when it goes.
#[test]
fn emptied_leaves_are_reused_and_busy_ones_are_not() {
    use crate::cgroup::{CgroupTree, SPARE_LEAVES};
    let tree = match CgroupTree::create() {
        Ok(tree) => tree,
        Err(e) => {
            println!("SKIPPED: cgroup v2 cannot be used here: {e}");
            return;
        }
    };
    let me = User::current().expect("current user");
    let done = SpawnSpec::new(me.name().to_vec(), "true");
    // The same leaf, twice in a row; the command born in the reused one runs.
    let (first, status) = run_to_exit(&done, &tree);
    assert_eq!(status, ExitStatus::Exited(0));
    let leaf = first.cgroup_path().expect("a cgroup");
    first.kill_all().expect("kill_all of a finished command");
    drop(first);
    let spares = tree.spare_count();
    assert!(spares >= 1, "the emptied leaf was not kept");
    let (second, status) = run_to_exit(&done, &tree);
    assert_eq!(second.cgroup_path().as_ref(), Some(&leaf), "not reused");
    assert_eq!(status, ExitStatus::Exited(0), "born into a reused leaf");
    drop(second);
    // A killed leaf is not reused, even empty: the kernel would kill what is born in it.
    let mut third = spawn_command_in(
        &SpawnSpec::new(me.name().to_vec(), "exec sleep 100"),
        Some(&tree),
    )
    .expect("spawn");
    let killed_leaf = third.cgroup_path().expect("a cgroup");
    let spares = tree.spare_count();
    third.interrupt(libc::SIGKILL).expect("kill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while third.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed command did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(third);
    assert_eq!(tree.spare_count(), spares, "a killed leaf became a spare");
    assert!(
        !killed_leaf.exists(),
        "the killed, empty leaf was not removed"
    );
    let (fourth, status) = run_to_exit(&done, &tree);
    assert_eq!(status, ExitStatus::Exited(0));
    drop(fourth);
    // A command that leaves a process behind in its leaf: not reused, killed, removed.
    let pidfile = std::env::temp_dir().join(format!("tuppence-leaf-{}", std::process::id()));
    let escape = SpawnSpec::new(
        me.name().to_vec(),
        format!(
            "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}",
            pidfile.display()
        ),
    );
    let (busy, _) = run_to_exit(&escape, &tree);
    let busy_leaf = busy.cgroup_path().expect("a cgroup");
    let before = tree.spare_count();
    drop(busy);
    assert_eq!(tree.spare_count(), before, "a busy leaf became a spare");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let _ = std::fs::remove_file(&pidfile);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        // The killed sleep is reparented to us (a test process is no subreaper: to init or
        // to whoever is); the leaf goes once it is gone.
        crate::cgroup::retry_parked();
        if !busy_leaf.exists() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the busy leaf stayed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Gone, or a zombie (reparented to whoever reaps orphans here, maybe this process).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state.rsplit(") ").next().and_then(|r| r.chars().next());
    assert!(
        matches!(state, None | Some('Z' | 'X')),
        "the escaped process survived: {state:?}"
    );
    // At most SPARE_LEAVES are kept; the others are removed.
    let leaves: Vec<_> = (0..SPARE_LEAVES + 3)
        .map(|_| tree.leaf().expect("leaf"))
        .collect();
    let paths: Vec<_> = leaves.iter().map(crate::cgroup::Leaf::path).collect();
    drop(leaves);
    assert_eq!(tree.spare_count(), SPARE_LEAVES);
    assert_eq!(paths.iter().filter(|p| p.exists()).count(), SPARE_LEAVES);
    // The tree removes its spares, then itself.
    let root = tree.path().to_path_buf();
    drop(tree);
    assert!(!root.exists(), "the subtree stayed");
}

#[test]
fn fd_names() {
    assert_eq!(parse_fd(b"17"), Some(17));
    assert_eq!(parse_fd(b"."), None);
    assert_eq!(parse_fd(b""), None);
}
