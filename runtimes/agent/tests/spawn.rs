//! Real processes through `spawn_command`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use common::{eventually, is_dead, me, run, run_tty, test_user, wait_readable};
use tuppence_agent::fdio::{self, ReadOutcome};
use tuppence_agent::spawn::{DEFAULT_PATH, tty_eof_sequence};
use tuppence_agent::{ExitStatus, SpawnSpec, User, spawn_command, spawn_command_nowait, status};

const LIMIT: Duration = Duration::from_secs(20);

fn spec(cmd: &str) -> SpawnSpec {
    SpawnSpec::new(me(), cmd)
}

fn env_map(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn stdout_and_stderr_are_separate() {
    let mut child = spawn_command(&spec("echo out; echo err >&2")).expect("spawn");
    assert!(!child.is_tty());
    assert_eq!(child.pgid(), child.pid());
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert_eq!(out.status.status_words(), (0, 0));
}

#[test]
fn exit_code() {
    let mut child = spawn_command(&spec("exit 3")).expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.status, ExitStatus::Exited(3));
}

#[test]
fn killed_by_term() {
    let mut child = spawn_command(&spec("kill -TERM $$; sleep 5")).expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.status, ExitStatus::Signaled(15));
    assert_eq!(out.status.status_words(), (status::EFAULT, 15));

    let mut child = spawn_command(&spec("sleep 30")).expect("spawn");
    child.kill_group(libc::SIGTERM).expect("kill");
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.status, ExitStatus::Signaled(libc::SIGTERM));
}

#[test]
fn environment_rules() {
    // Cargo sets this in the test process: it must not reach the child.
    // (when run through cargo; the check below holds either way).
    let leaked = "CARGO_MANIFEST_DIR";
    let mut s = spec("env");
    s.env = vec![
        b"PATH=/custom/bin:/usr/bin:/bin".to_vec(),
        b"FOO=bar".to_vec(),
        b"NOEQUALS".to_vec(),
        b"FOO=baz".to_vec(),
    ];
    let mut child = spawn_command(&s).expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    let env = env_map(&out.stdout);
    assert_eq!(
        env.get("PATH").map(String::as_str),
        Some("/custom/bin:/usr/bin:/bin")
    );
    assert_eq!(env.get("FOO").map(String::as_str), Some("baz"));
    let me = me();
    assert_eq!(env.get("USER"), Some(&me));
    let user = User::lookup(me.as_bytes()).expect("me");
    assert_eq!(env.get("HOME").map(|h| h.as_bytes()), Some(user.home()));
    assert!(!env.contains_key(leaked));
    assert!(!env.contains_key("NOEQUALS"));
    for name in env.keys() {
        // PWD is exported by the shell itself.
        assert!(
            ["PATH", "HOME", "USER", "FOO", "PWD"].contains(&name.as_str()),
            "unexpected {name}"
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("HOME="))
        .count();
    assert_eq!(listed, 1, "no duplicate HOME");

    // Without a client PATH the default applies, and client HOME/USER win.
    let mut s = spec("echo \"$PATH|$HOME|$USER\"");
    s.env = vec![b"HOME=/tmp".to_vec(), b"USER=someone".to_vec()];
    let mut child = spawn_command(&s).expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    let expected = format!("{}|/tmp|someone\n", String::from_utf8_lossy(DEFAULT_PATH));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn stdin_round_trip_one_mib() {
    let mut data = vec![0u8; 1 << 20];
    let mut x: u32 = 0x1234_5678;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut child = spawn_command(&spec("cat")).expect("spawn");
    let out = run(&mut child, &data, LIMIT);
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdin data came back changed");
}

#[test]
fn unknown_user_is_enoent() {
    let err = spawn_command(&SpawnSpec::new("no-such-user-tuppence", "true")).unwrap_err();
    assert_eq!(err.errno(), status::ENOENT);
    let err = spawn_command(&SpawnSpec::new(me(), "echo a\0b")).unwrap_err();
    assert_eq!(err.errno(), status::EINVAL);
}

#[test]
fn inherited_fds_are_closed() {
    // A pipe without O_CLOEXEC in the agent: it must not reach the command.
    let (leak_r, leak_w) = rustix::pipe::pipe().expect("pipe");
    let mut child = spawn_command(&spec("ls /proc/self/fd")).expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    drop((leak_r, leak_w));
    let fds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    // 0, 1, 2 and the directory ls itself opened to list them.
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "open fds in the command: {fds:?}"
    );
}

#[test]
fn signal_mask_and_dispositions_are_reset() {
    // SAFETY (test): the mask change is per thread and undone below; ignoring SIGTERM is
    // process-wide but harmless to the other tests (their children reset it).
    let mut old_mask = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let old_term = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), old_mask.as_mut_ptr());
        libc::signal(libc::SIGTERM, libc::SIG_IGN)
    };
    let spawned = spawn_command(&spec("grep -E '^Sig(Blk|Ign)' /proc/self/status"));
    // SAFETY (test): restores what was saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old_mask.as_ptr(), std::ptr::null_mut());
        libc::signal(libc::SIGTERM, old_term);
    }
    let mut child = spawned.expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[test]
fn tty_mode_has_a_terminal() {
    let mut s = spec("tty; echo to-stderr >&2");
    s.tty = true;
    let mut child = spawn_command(&s).expect("spawn");
    assert!(child.is_tty());
    assert!(child.stderr_fd().is_none());
    let (out, st) = run_tty(&mut child, b"", LIMIT);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("/dev/pts/"), "tty printed {text:?}");
    // stderr is on the pty too, with the normal output processing (\n -> \r\n).
    assert!(text.contains("to-stderr\r\n"), "{text:?}");
    assert_eq!(st, ExitStatus::Exited(0));
}

#[test]
fn tty_ctrl_c_interrupts() {
    let mut s = spec("sleep 30");
    s.tty = true;
    let mut child = spawn_command(&s).expect("spawn");
    let master = child.stdin_fd().expect("master");
    // A ^C typed while the shell is still starting is caught by dash and only acted on after
    // its foreground command ends (dash's race, not the terminal's): type it again, as a
    // person would, until the command goes.
    let mut ended = false;
    for _ in 0..20 {
        assert_eq!(fdio::write_some(master, b"\x03").expect("write"), Some(1));
        if wait_readable(child.pidfd(), Duration::from_millis(250)) {
            ended = true;
            break;
        }
    }
    assert!(ended, "^C did not end the command");
    let status = child.try_wait().expect("wait").expect("exited");
    assert!(
        matches!(
            status,
            ExitStatus::Signaled(libc::SIGINT) | ExitStatus::Exited(130)
        ),
        "{status:?}"
    );
}

#[test]
fn tty_eof_character_ends_input() {
    let mut s = spec("cat");
    s.tty = true;
    let mut child = spawn_command(&s).expect("spawn");
    let mut input = b"partial".to_vec();
    input.extend_from_slice(tty_eof_sequence(false));
    let (out, st) = run_tty(&mut child, &input, LIMIT);
    assert_eq!(st, ExitStatus::Exited(0));
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("partial"), "{text:?}");

    let mut child = spawn_command(&s).expect("spawn");
    let mut input = b"line\n".to_vec();
    input.extend_from_slice(tty_eof_sequence(true));
    let (_, st) = run_tty(&mut child, &input, LIMIT);
    assert_eq!(st, ExitStatus::Exited(0));
}

#[test]
fn pidfd_reports_exit_while_a_grandchild_holds_stdout() {
    let mut child = spawn_command(&spec("sleep 5 & echo started")).expect("spawn");
    child.close_stdin();
    assert!(
        wait_readable(child.pidfd(), Duration::from_secs(3)),
        "pidfd not readable"
    );
    assert_eq!(child.try_wait().expect("wait"), Some(ExitStatus::Exited(0)));
    // The status is remembered.
    assert_eq!(child.try_wait().expect("wait"), Some(ExitStatus::Exited(0)));
    let stdout = child.stdout_fd().expect("stdout");
    let mut buf = BytesMut::new();
    assert!(wait_readable(stdout, Duration::from_secs(3)));
    assert_eq!(
        fdio::read_into(stdout, &mut buf, 4096).expect("read"),
        ReadOutcome::Data(8)
    );
    assert_eq!(&buf[..], b"started\n");
    // The grandchild still holds the pipe: no EOF.
    assert_eq!(
        fdio::read_into(stdout, &mut buf, 4096).expect("read"),
        ReadOutcome::WouldBlock
    );
    // Killing the group takes the grandchild down, and with it the pipe.
    child.kill_group(libc::SIGKILL).expect("kill group");
    assert!(wait_readable(stdout, Duration::from_secs(3)));
    assert_eq!(
        fdio::read_into(stdout, &mut buf, 4096).expect("read"),
        ReadOutcome::Eof
    );
}

#[test]
fn kill_group_reaches_background_jobs() {
    let mut child = spawn_command(&spec("sleep 30 & echo $!; wait")).expect("spawn");
    let stdout = child.stdout_fd().expect("stdout");
    let mut buf = BytesMut::new();
    while !buf.ends_with(b"\n") {
        assert!(wait_readable(stdout, Duration::from_secs(3)));
        let _ = fdio::read_into(stdout, &mut buf, 64).expect("read");
    }
    let grandchild: u32 = String::from_utf8_lossy(&buf).trim().parse().expect("pid");
    assert!(!is_dead(grandchild));
    child.kill_group(libc::SIGTERM).expect("kill");
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.status, ExitStatus::Signaled(libc::SIGTERM));
    assert!(
        eventually(Duration::from_secs(3), || is_dead(grandchild)),
        "background job survived"
    );
}

#[test]
fn dropping_a_running_child_kills_it() {
    let child = spawn_command(&spec("sleep 30")).expect("spawn");
    let pid = child.pid();
    drop(child);
    assert!(eventually(Duration::from_secs(3), || is_dead(pid)));
    // Not even a zombie once the parked pidfd is reaped.
    assert!(eventually(Duration::from_secs(3), || {
        tuppence_agent::spawn::reap_dropped();
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
}

#[test]
fn runs_as_the_requested_user() {
    let Some(name) = test_user() else { return };
    let user = User::lookup(name.as_bytes()).expect("user");
    let mut child = spawn_command(&SpawnSpec::new(
        name,
        "id -u; id -g; id -G; pwd; echo \"$HOME $USER\"",
    ))
    .expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "{text:?} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines[0], user.uid().to_string());
    assert_eq!(lines[1], user.gid().to_string());
    let mut groups: Vec<u32> = lines[2]
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    groups.sort_unstable();
    let mut expected = user.groups().expect("groups");
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(groups, expected, "supplementary groups");
    let home = String::from_utf8_lossy(user.home()).to_string();
    assert_eq!(lines[3], home);
    assert_eq!(lines[4], format!("{home} {name}"));

    // The user's tty belongs to the user.
    let mut s = SpawnSpec::new(name, "stat -c %u \"$(tty)\"");
    s.tty = true;
    let mut child = spawn_command(&s).expect("spawn");
    let (out, st) = run_tty(&mut child, b"", LIMIT);
    assert_eq!(st, ExitStatus::Exited(0));
    assert_eq!(String::from_utf8_lossy(&out).trim(), user.uid().to_string());
}

#[test]
fn a_home_that_is_missing_falls_back_to_root_dir() {
    let Some(_) = test_user() else { return };
    let Ok(nobody) = User::lookup(b"nobody") else {
        println!("SKIPPED: no user nobody");
        return;
    };
    if std::path::Path::new(std::ffi::OsStr::new(&*String::from_utf8_lossy(
        nobody.home(),
    )))
    .is_dir()
    {
        println!("SKIPPED: nobody has a real home here");
        return;
    }
    let mut child = spawn_command(&SpawnSpec::new("nobody", "pwd")).expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.stdout, b"/\n");
    assert_eq!(out.status, ExitStatus::Exited(0));
}

#[test]
fn nowait_spawns_run_the_command() {
    let mut child = spawn_command_nowait(&spec("echo out; echo err >&2; exit 3")).expect("spawn");
    assert_eq!(child.pgid(), child.pid());
    let out = run(&mut child, b"in", LIMIT);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, ExitStatus::Exited(3));
    assert!(child.exec_error().is_none());
    assert!(!child.settle_exec(), "reaped: nothing left to free");
}

/// A signal sent at once, before or after the child's exec (there is no process group
/// before its setsid), ends it.
#[test]
fn nowait_spawns_can_be_killed_before_their_exec() {
    for _ in 0..20 {
        let mut child = spawn_command_nowait(&spec("sleep 30")).expect("spawn");
        child.kill_group(libc::SIGKILL).expect("kill");
        let out = run(&mut child, b"", LIMIT);
        assert_eq!(out.status, ExitStatus::Signaled(libc::SIGKILL));
        assert!(child.exec_error().is_none());
    }
    for _ in 0..20 {
        let child = spawn_command_nowait(&spec("sleep 30")).expect("spawn");
        let pid = child.pid();
        drop(child);
        assert!(eventually(Duration::from_secs(3), || {
            tuppence_agent::spawn::reap_dropped();
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }));
    }
}

/// A lazily created cgroup tree (the agent's) starts no probe process: its first command
/// is the probe, born in the first leaf, and marks the tree usable.
#[test]
fn a_lazy_cgroup_tree_is_probed_by_its_first_command() {
    use tuppence_agent::cgroup::CgroupTree;
    let tree = match CgroupTree::create_lazy() {
        Ok(tree) => tree,
        Err(e) => {
            println!("SKIPPED: cgroup v2 cannot be used here: {e}");
            return;
        }
    };
    assert!(!tree.is_verified() && !tree.is_refused());
    let mut child = tuppence_agent::spawn_command_nowait_in(
        &spec("cat /proc/self/cgroup; sh -c 'cat /proc/self/cgroup'"),
        Some(&tree),
    )
    .expect("spawn");
    let out = run(&mut child, b"", LIMIT);
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert!(
        tree.is_verified(),
        "the first command did not verify the tree"
    );
    // The command and its own child ran in the tree's first leaf: no probe leaf was made
    // before it.
    let name = tree.path().file_name().expect("name").to_string_lossy();
    let leaf = format!("/{name}/c1");
    let text = String::from_utf8_lossy(&out.stdout);
    let v2: Vec<&str> = text.lines().filter(|l| l.starts_with("0::")).collect();
    assert_eq!(v2.len(), 2, "{text}");
    assert!(v2.iter().all(|l| l.ends_with(&leaf)), "{text}");
}

/// If the kernel refuses to start the first command in its leaf, the tree is marked
/// refused and the command starts again without a cgroup (as the start-up probe's failure
/// used to make the agent run everything by process group). Provoked by making the tree
/// threaded: its leaves are then "domain invalid" and hold no processes.
#[test]
fn a_lazy_cgroup_tree_refused_at_the_first_command_runs_it_without_one() {
    use tuppence_agent::cgroup::CgroupTree;
    let tree = match CgroupTree::create_lazy() {
        Ok(tree) => tree,
        Err(e) => {
            println!("SKIPPED: cgroup v2 cannot be used here: {e}");
            return;
        }
    };
    if let Err(e) = std::fs::write(tree.path().join("cgroup.type"), "threaded") {
        println!("SKIPPED: cannot make the tree threaded: {e}");
        return;
    }
    let name = tree
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for _ in 0..2 {
        let mut child =
            tuppence_agent::spawn_command_nowait_in(&spec("cat /proc/self/cgroup"), Some(&tree))
                .expect("spawn");
        let out = run(&mut child, b"", LIMIT);
        assert_eq!(out.status, ExitStatus::Exited(0));
        assert!(tree.is_refused(), "the refusal was not noticed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(&name), "ran in the refused tree: {text}");
    }
}
