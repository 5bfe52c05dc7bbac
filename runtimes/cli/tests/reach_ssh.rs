//! `ssh:` targets (issue #17) against a real OpenSSH server this test starts on loopback,
//! with a throwaway host key and user key in a temporary directory: the CLI in both
//! dialects, the blocking adapter, and the errors ssh itself reports.
//!
//! Skipped (with the reason printed) where sshd cannot run: not root (its privilege
//! separation directory and the login), or OpenSSH not installed. Under `CI=true` or
//! `TUPPENCE_REACH_REQUIRED=1` (`.ci/run` sets it) a skip fails instead.

mod reach_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reach_support::*;
use tuppence::link::{Command, Outcome};

const REQUIRED: &str = "TUPPENCE_REACH_REQUIRED";
const SSHD: &str = "/usr/sbin/sshd";

struct Sshd {
    child: Child,
    port: u16,
    /// sshd also listens on ::1 (where the host has IPv6 loopback).
    ipv6: bool,
    dir: TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `?agent=…&o=…`: this build's agent, our key and known-hosts file, nothing from the
    /// user's own keys or agent.
    fn query(&self) -> String {
        format!(
            "?agent={BIN}&o=IdentityFile={}&o=IdentitiesOnly=yes&o=UserKnownHostsFile={}&o=StrictHostKeyChecking=accept-new&o=LogLevel=ERROR",
            self.key("user_key").display(),
            self.key("known_hosts").display()
        )
    }

    fn target(&self, prefix: &str) -> String {
        format!("{prefix}ssh:root@127.0.0.1:{}{}", self.port, self.query())
    }
}

fn keygen(path: &Path) -> Result<(), String> {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Starts sshd on a free loopback port; `Err` says why it cannot run here.
fn start_sshd() -> Result<Sshd, String> {
    if !is_root() {
        return Err("sshd needs root here (privilege separation, logging in as root)".into());
    }
    if !Path::new(SSHD).exists() {
        return Err(format!("no {SSHD} (install openssh-server)"));
    }
    let dir = TempDir::new("sshd");
    keygen(&dir.path().join("host_key"))?;
    keygen(&dir.path().join("user_key"))?;
    std::fs::copy(
        dir.path().join("user_key.pub"),
        dir.path().join("authorized_keys"),
    )
    .map_err(|e| format!("authorized_keys: {e}"))?;
    // sshd's privilege separation directory (what the Debian service creates at boot).
    std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
    let mut last = String::new();
    for _ in 0..5 {
        // A port that was free a moment ago (sshd cannot listen on port 0).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nListenAddress [::1]:{port}\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nPidFile none\n",
                dir.path().join("host_key").display(),
                dir.path().join("authorized_keys").display()
            ),
        )
        .map_err(|e| format!("sshd_config: {e}"))?;
        let mut child = std::process::Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{SSHD}: {e}"))?;
        // Its log, on a thread (sshd keeps writing to it).
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().ok_or("no stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut ipv4 = false;
        let mut ipv6 = false;
        let mut log = String::new();
        // Both addresses are tried before the first connection is accepted.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
            log.push_str(&line);
            log.push('\n');
            ipv4 |= line.contains(&format!("listening on 127.0.0.1 port {port}"));
            ipv6 |= line.contains(&format!("listening on ::1 port {port}"));
            if ipv4 && (ipv6 || log.contains("::1")) {
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
        }
        if ipv4 {
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Ok(Sshd {
                child,
                port,
                ipv6,
                dir,
            });
        }
        let _ = child.kill();
        let _ = child.wait();
        last = log;
    }
    Err(format!("sshd did not start: {last}"))
}

#[test]
fn ssh_targets_against_a_real_sshd() {
    let sshd = match start_sshd() {
        Ok(s) => s,
        Err(why) => skip!(REQUIRED, "{why}"),
    };
    for prefix in ["", "legacy+"] {
        let t = sshd.target(prefix);
        let out = run(&["run", "-t", &t, "--", "echo via ssh; echo err >&2; exit 5"]);
        assert_eq!(code(&out), 5, "{t}: {}", stderr(&out));
        assert_eq!(stdout(&out), "via ssh\n");
        assert_eq!(stderr(&out), "err\n");

        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        let local = TempDir::new("ssh-xfer");
        let (src, remote, back) = (local.join("src"), local.join("remote"), local.join("back"));
        std::fs::write(&src, &data).expect("write");
        let out = run(&["inject", "-t", &t, &src, &remote]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        let out = run(&["extract", "-t", &t, &remote, &back]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert!(std::fs::read(&back).expect("back") == data, "{t}");

        let out = run(&["ping", "-t", &t]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        let want = if prefix.is_empty() {
            "protocol 4.0"
        } else {
            "protocol 3.0"
        };
        assert!(stdout(&out).contains(want), "{}", stdout(&out));
    }
    if sshd.ipv6 {
        let t = format!("ssh:[::1]:{}{}", sshd.port, sshd.query());
        let out = run(&["run", "-t", &t, "--", "echo over v6"]);
        assert_eq!(code(&out), 0, "{t}: {}", stderr(&out));
        assert_eq!(stdout(&out), "over v6\n");
    } else {
        println!("SKIPPED (partly): no IPv6 loopback for sshd, ssh:[::1] not tried");
    }

    // The library: the blocking adapter on the same target.
    let target: tuppence_transport::Target = sshd.target("").parse().expect("target");
    let session = tuppence_blocking::Session::connect(&target, LIMIT).expect("session");
    let out = session
        .output(Command::new("echo library"))
        .expect("output");
    assert_eq!(out.stdout, b"library\n");
    assert_eq!(out.outcome, Outcome::Exited(0));
    drop(session);

    // What ssh itself reports ends up in our error: a key the server does not know...
    let t = format!(
        "ssh:root@127.0.0.1:{}?agent={BIN}&o=IdentityFile={}&o=IdentitiesOnly=yes&o=UserKnownHostsFile={}&o=LogLevel=ERROR",
        sshd.port,
        sshd.key("host_key").display(),
        sshd.key("known_hosts").display()
    );
    let out = run(&["run", "-t", &t, "--", "true"]);
    assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().expect("error line");
    assert!(last.contains("exited with status 255"), "{err}");
    assert!(last.contains("Permission denied"), "{err}");
    // ...and a remote agent that is not there.
    let t = sshd
        .target("")
        .replace(&format!("agent={BIN}"), "agent=/nonexistent/tuppence");
    let out = run(&["run", "-t", &t, "--", "true"]);
    assert_eq!(code(&out), CONNECTION, "{}", stderr(&out));
    let last = stderr(&out).lines().last().expect("line").to_owned();
    assert!(last.contains("exited with status 127"), "{last}");
    assert!(last.contains("/nonexistent/tuppence"), "{last}");
}
