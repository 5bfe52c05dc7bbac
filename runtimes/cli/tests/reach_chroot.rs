//! `chroot:DIR` and `serve --root-directory` (issue #17): an agent chrooted into a minimal
//! root this test builds from a static busybox (`/bin/busybox`, Debian's busybox-static).

mod reach_support;

use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use reach_support::*;

const REQUIRED: &str = "TUPPENCE_REACH_REQUIRED";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "id", "pwd", "test", "sleep", "kill", "wc", "head",
];

/// DIR with `/bin/sh` and a few applets (busybox), `/etc/passwd`, root's home, `/tmp`,
/// `/dev/null`, `/dev/ptmx` and `/marker`.
fn build_root(dir: &Path) -> Result<(), String> {
    let bin = dir.join("bin");
    for d in ["bin", "etc", "root", "tmp", "dev/pts"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    // A hard link where it can be: a copy is written through an fd that a child forked by
    // another test thread holds until its exec, and exec'ing the copy meanwhile fails with
    // ETXTBSY (the check below retries for that case).
    if std::fs::hard_link(BUSYBOX, bin.join("busybox")).is_err() {
        std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    }
    for a in APPLETS {
        symlink("busybox", bin.join(a)).map_err(|e| format!("link {a}: {e}"))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").map_err(|e| e.to_string())?;
    std::fs::write(dir.join("marker"), "inside\n").map_err(|e| e.to_string())?;
    for (name, major, minor) in [("null", 1, 3), ("ptmx", 5, 2)] {
        let path = dir.join("dev").join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| format!("mknod {}: {e}", path.display()))?;
    }
    // The busybox must run inside (a dynamic one would not find its libraries). A copy
    // can be briefly busy (see above): a failure is retried before it counts.
    let mut last = None;
    for _ in 0..20 {
        let out = std::process::Command::new("chroot")
            .arg(dir)
            .args(["/bin/sh", "-c", "true"])
            .output()
            .map_err(|e| format!("chroot: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        last = Some(out);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let why = last.map_or_else(String::new, |o| {
        format!(
            "{}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
    });
    Err(format!(
        "{BUSYBOX} does not run in a chroot (not static?): {why}"
    ))
}

/// A built root, or a skip with the reason.
macro_rules! root_or_skip {
    ($tag:expr) => {{
        if !is_root() {
            skip!(REQUIRED, "chroot needs root");
        }
        if !Path::new(BUSYBOX).exists() {
            skip!(REQUIRED, "no {BUSYBOX} (install busybox-static)");
        }
        let dir = TempDir::new($tag);
        if let Err(why) = build_root(dir.path()) {
            skip!(REQUIRED, "cannot build a root: {why}");
        }
        dir
    }};
}

#[test]
fn commands_and_files_in_a_chroot_in_both_dialects() {
    let dir = root_or_skip!("chroot");
    let root = dir.path().to_str().expect("utf-8");
    let outside = TempDir::new("chroot-local");
    for prefix in ["", "legacy+"] {
        let t = format!("{prefix}chroot:{root}");
        // `/` is DIR; the home directory of root inside is the working directory.
        let out = run(&["run", "-t", &t, "--", "cat /marker; ls /; pwd; id -u"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "inside\nbin\ndev\netc\nmarker\nroot\ntmp\n/root\n0\n",
            "{t}"
        );
        // Files go in and out of DIR.
        let local = outside.join("local-in");
        std::fs::write(&local, b"to the chroot\n").expect("write");
        let out = run(&["inject", "-t", &t, &local, "/tmp/injected"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert_eq!(
            std::fs::read(dir.path().join("tmp/injected")).expect("injected"),
            b"to the chroot\n"
        );
        let out = run(&["extract", "-t", &t, "/marker", "-"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert_eq!(stdout(&out), "inside\n");
        // Outside DIR is out of reach.
        let out = run(&["extract", "-t", &t, "/../../../../etc/hostname", "-"]);
        assert_eq!(code(&out), REMOTE_FAILURE, "{t}: {}", stderr(&out));
        let out = run(&["run", "-t", &t, "--", "ls /work /usr 2>&1; true"]);
        assert!(
            stdout(&out).contains("No such file"),
            "{t}: {}",
            stdout(&out)
        );
    }
    // An explicit agent path is used as given.
    let t = format!("chroot:{root}?agent={BIN}");
    let out = run(&["run", "-t", &t, "--", "echo explicit"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "explicit\n");
}

/// A pty inside the root needs its own devpts at DIR/dev/pts (the kernel looks for `pts`
/// beside the `ptmx` node): bound from the host's in a private mount namespace.
#[test]
fn a_tty_in_a_chroot_with_its_devpts() {
    let dir = root_or_skip!("chroot-tty");
    let root = dir.path().to_str().expect("utf-8");
    let script = format!(
        "mount --bind /dev/pts {root}/dev/pts && exec {BIN} run -t chroot:{root} --tty -- 'test -t 0 && echo on-a-tty'"
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) if !String::from_utf8_lossy(&o.stderr).contains("mount") => o,
        Ok(o) => {
            println!(
                "SKIPPED: cannot bind /dev/pts in a private mount namespace: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("SKIPPED: no unshare: {e}");
            return;
        }
    };
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "on-a-tty\r\n");
    // Without it the agent says why, and the client passes it on.
    let out = run(&[
        "run",
        "-t",
        &format!("chroot:{root}"),
        "--tty",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), REMOTE_FAILURE, "{}", stderr(&out));
}

#[test]
fn root_directory_needs_root() {
    if !is_root() {
        // Already unprivileged: the refusal is what we get.
        let out = run(&["serve", "--stdio", "--root-directory", "/"]);
        assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("chroot needs root"),
            "{}",
            stderr(&out)
        );
        return;
    }
    // As another uid (no account needed to run as one).
    let out = std::process::Command::new(BIN)
        .args(["serve", "--stdio", "--root-directory", "/"])
        .uid(1001)
        .gid(1001)
        .stdin(Stdio::null())
        .output()
        .expect("run as uid 1001");
    assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "tuppence: serve: --root-directory /: chroot needs root (running as uid 1001)\n"
    );
    // The client of a chroot: target shows the agent's reason in its own error.
    let out = std::process::Command::new(BIN)
        .args(["run", "-t", "chroot:/", "--", "true"])
        .uid(1001)
        .gid(1001)
        .env_remove("TUPPENCE_TARGET")
        .stdin(Stdio::null())
        .output()
        .expect("run as uid 1001");
    assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with("tuppence: chroot:/: ")
                && l.contains("exited with status 202")
                && l.contains("chroot needs root (running as uid 1001)")),
        "{err}"
    );
    // A directory that is not there.
    let out = run(&["serve", "--stdio", "--root-directory", "/nonexistent/root"]);
    assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot chroot to /nonexistent/root: No such file or directory"),
        "{}",
        stderr(&out)
    );
}

/// `--root-directory` with a listener: the socket is opened inside the new root.
#[test]
fn root_directory_with_a_unix_listener() {
    let dir = root_or_skip!("chroot-unix");
    let mut agent = std::process::Command::new(BIN)
        .args(["serve", "--unix", "/agent.sock", "--root-directory"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    // Its ready line says the listener is open (after the log line of the chroot).
    let err = std::io::BufReader::new(agent.stderr.take().expect("stderr"));
    let mut lines = std::io::BufRead::lines(err);
    let ready = loop {
        let line = lines.next().expect("a ready line").expect("utf-8");
        if line.contains("ready on") {
            break line;
        }
    };
    assert!(ready.ends_with("ready on unix:/agent.sock"), "{ready}");
    let t = format!("unix:{}/agent.sock", dir.path().display());
    let out = run(&["run", "-t", &t, "--", "cat /marker"]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "inside\n");
}
