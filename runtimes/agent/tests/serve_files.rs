//! Inject and extract through the serve loop.
//!
//! Every test in this binary runs with umask 077, so a mode that comes out exact was set
//! by the agent, not left to the umask.

mod agent_harness;
mod common;
mod path_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use agent_harness::{PATIENCE, Raw, TempDir, TestAgent, eventually};
use bytes::Bytes;
use tuppence::wire::Packet;
use tuppence_blocking::Error;

fn strict_umask() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: umask only sets the process's file creation mask.
        unsafe { libc::umask(0o077) };
    });
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Names in a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn remote_errno(e: &Error) -> Option<u32> {
    match e {
        Error::Remote { errno, .. } => Some(*errno),
        _ => None,
    }
}

#[test]
fn inject_content_and_exact_mode() {
    strict_umask();
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("inject");
    let path = files.join("target.bin");
    let p = path.to_str().unwrap();
    let content = random_bytes(3_000_001, 7);
    let mut progress = 0;
    let sent = s
        .inject("root", p, 0o640, &content[..], |n| progress = n)
        .unwrap();
    assert_eq!(sent, content.len() as u64);
    assert_eq!(progress, sent);
    assert!(std::fs::read(&path).unwrap() == content);
    assert_eq!(mode_of(&path), 0o640, "umask 077 must not apply");

    // Replacing: new content, new mode (wider than the umask allows), nothing left over.
    s.inject("root", p, 0o666, &b"short\n"[..], |_| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"short\n");
    assert_eq!(mode_of(&path), 0o666);
    // An empty file is a file too.
    s.inject("root", p, 0o600, &b""[..], |_| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    assert_eq!(entries(files.path()), vec!["target.bin".to_string()]);
}

/// The blocking session reads an inject into buffers it reuses once the link has written
/// them: with reads of every size, and more of them than the pool holds, each byte still
/// arrives as read (a buffer reused too early would overwrite data not yet sent), and the
/// progress counts up to the whole size.
#[test]
fn inject_from_reused_buffers_is_byte_exact() {
    /// Returns reads of varying, mostly short, sizes.
    struct Uneven<'a> {
        data: &'a [u8],
        calls: usize,
    }
    impl std::io::Read for Uneven<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            let want = [1, 4096, 100_000, usize::MAX, 32_758][self.calls % 5];
            let n = want.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }
    strict_umask();
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("inject-pool");
    let path = files.join("target.bin");
    let content = random_bytes(9_000_011, 8);
    let mut seen = Vec::new();
    let source = Uneven {
        data: &content,
        calls: 0,
    };
    let sent = s
        .inject("root", path.to_str().unwrap(), 0o600, source, |n| {
            seen.push(n)
        })
        .unwrap();
    assert_eq!(sent, content.len() as u64);
    assert!(
        std::fs::read(&path).unwrap() == content,
        "injected bytes differ"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress went back");
    assert_eq!(seen.last(), Some(&sent));
}

#[test]
fn inject_failures() {
    strict_umask();
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("inject-fail");
    let e = s
        .inject(
            "root",
            files.join_str("missing/dir/file").as_str(),
            0o644,
            &b"x"[..],
            |_| {},
        )
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(2), "{e}");
    let e = s
        .inject(
            "root",
            files.path().to_str().unwrap(),
            0o644,
            &b"x"[..],
            |_| {},
        )
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(21), "{e}");
    let e = s
        .inject("no-such-user-tuppence", "f", 0o644, &b"x"[..], |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(2), "{e}");
    assert!(entries(files.path()).is_empty());
}

#[test]
fn inject_relative_name_as_another_user_lands_in_their_home() {
    strict_umask();
    let Some(user) = common::test_user() else {
        return;
    };
    let account = tuppence_agent::User::lookup(user.as_bytes()).unwrap();
    let name = format!("tuppence-inject-{}.txt", std::process::id());
    let path = Path::new(std::ffi::OsStr::new(
        &String::from_utf8_lossy(account.home()).into_owned(),
    ))
    .join(&name);
    let _ = std::fs::remove_file(&path);
    let agent = TestAgent::start();
    let s = agent.session();
    s.inject(user, &name, 0o604, &b"as the user\n"[..], |_| {})
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.uid(), account.uid());
    assert_eq!(meta.mode() & 0o7777, 0o604);
    assert_eq!(std::fs::read(&path).unwrap(), b"as the user\n");
    // The user cannot write where only root may.
    let root_only = TempDir::new("root-only");
    std::fs::set_permissions(root_only.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = s
        .inject(user, &root_only.join_str("f"), 0o644, &b"x"[..], |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(13), "{e}");
    std::fs::remove_file(&path).unwrap();
}

/// The temporary beside `target` (`.NAME.tuppence-*`), if any.
/// Waits until an inject's temporary beside `name` holds all `len` bytes.
fn wait_until_written(files: &TempDir, name: &str, len: usize) {
    assert!(eventually(PATIENCE, || {
        temporaries(files.path(), name)
            .iter()
            .any(|t| std::fs::metadata(files.join(t)).is_ok_and(|m| m.len() == len as u64))
    }));
}

fn temporaries(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.tuppence-");
    entries(dir)
        .into_iter()
        .filter(|e| e.starts_with(&prefix))
        .collect()
}

#[test]
fn disconnect_mid_inject_leaves_nothing() {
    strict_umask();
    let agent = TestAgent::start();
    let files = TempDir::new("inject-cut");
    let target = files.join("partial.bin");
    let mut raw = Raw::connect(&agent.sock);
    raw.hello();
    raw.send_packet(
        1,
        &Packet::Inject {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(target.to_str().unwrap().to_owned()),
            mode: 0o644,
        },
    );
    let answer = raw.frames_until(1, |p| matches!(p, Packet::Major(_)));
    assert_eq!(answer.last(), Some(&Packet::Major(0)), "{answer:?}");
    let chunk = Bytes::from(vec![0x5a; 30_000]);
    for _ in 0..4 {
        raw.send_packet(
            1,
            &Packet::Data {
                channel: 0,
                data: chunk.clone(),
            },
        );
    }
    // The agent has written the data so far into the temporary.
    let mut tmp = Vec::new();
    assert!(
        eventually(PATIENCE, || {
            tmp = temporaries(files.path(), "partial.bin");
            tmp.len() == 1
                && std::fs::metadata(files.path().join(&tmp[0])).is_ok_and(|m| m.len() == 120_000)
        }),
        "no temporary with the data: {:?}",
        entries(files.path())
    );
    assert!(
        !target.exists(),
        "the target appeared before the end of the data"
    );
    drop(raw);
    assert!(
        eventually(Duration::from_secs(2), || entries(files.path()).is_empty()),
        "left behind: {:?}",
        entries(files.path())
    );
    // The agent still serves.
    let s = agent.session();
    assert_eq!(
        s.output(tuppence::link::Command::new("echo ok"))
            .unwrap()
            .stdout,
        b"ok\n"
    );
}

#[test]
fn aborted_inject_keeps_the_old_file() {
    strict_umask();
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("inject-abort");
    let target = files.join("keep.txt");
    std::fs::write(&target, b"old content\n").unwrap();

    /// Gives one chunk, then fails like a broken local disk.
    struct Failing(bool);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(std::io::Error::other("local read failed"));
            }
            let n = buf.len().min(10_000);
            buf[..n].fill(b'n');
            Ok(n)
        }
    }
    let e = s
        .inject(
            "root",
            target.to_str().unwrap(),
            0o600,
            Failing(false),
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(e, Error::Local { .. }), "{e}");
    assert!(
        eventually(Duration::from_secs(2), || entries(files.path())
            == vec!["keep.txt".to_string()]),
        "{:?}",
        entries(files.path())
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"old content\n");
}

#[test]
fn extract_byte_exact_and_failures() {
    strict_umask();
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("extract");
    let path = files.join("source.bin");
    let content = random_bytes(5_000_003, 11);
    std::fs::write(&path, &content).unwrap();
    let mut back = Vec::new();
    let n = s
        .extract("root", path.to_str().unwrap(), &mut back, |_| {})
        .unwrap();
    assert_eq!(n, content.len() as u64);
    assert!(back == content, "extracted bytes differ");

    let empty = files.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let mut back = vec![1u8];
    back.clear();
    assert_eq!(
        s.extract("root", empty.to_str().unwrap(), &mut back, |_| {})
            .unwrap(),
        0
    );

    let e = s
        .extract(
            "root",
            files.join_str("missing").as_str(),
            Vec::new(),
            |_| {},
        )
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(2), "{e}");
    let e = s
        .extract("root", files.path().to_str().unwrap(), Vec::new(), |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(21), "{e}");

    if let Some(user) = common::test_user() {
        // Read as the user: a root-only file is refused.
        let secret = files.join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = s
            .extract(user, secret.to_str().unwrap(), Vec::new(), |_| {})
            .unwrap_err();
        assert_eq!(remote_errno(&e), Some(13), "{e}");
    }
}

/// An extract's data packets are all full but the last (issue 18, item 4): the agent reads
/// the file in whole packets, where a 256 KiB read used to leave an 80-byte runt behind
/// every eight full packets.
#[test]
fn extract_packs_no_runts() {
    strict_umask();
    let agent = TestAgent::start();
    let files = TempDir::new("extract-runts");
    let path = files.join("source.bin");
    let content = random_bytes(3 * 256 * 1024 + 12_345, 5);
    std::fs::write(&path, &content).unwrap();
    let mut raw = Raw::connect(&agent.sock);
    raw.hello();
    raw.send_packet(
        1,
        &Packet::Extract {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(path.to_str().unwrap().to_owned()),
        },
    );
    let packets = raw.frames_until(1, |p| matches!(p, Packet::Minor(_)));
    assert_eq!(packets.last(), Some(&Packet::Minor(0)));
    let mut back = Vec::new();
    let sizes: Vec<usize> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Data { data, .. } => {
                back.extend_from_slice(data);
                Some(data.len())
            }
            _ => None,
        })
        .collect();
    assert!(back == content, "extracted bytes differ");
    let (last, full) = sizes.split_last().unwrap();
    let chunk = tuppence::wire::DEFAULT_MAX_CHUNK;
    assert!(
        full.iter().all(|&n| n == chunk),
        "short packets before the last: {:?}",
        full.iter().filter(|&&n| n != chunk).collect::<Vec<_>>()
    );
    assert_eq!(*last, content.len() % chunk);
}

/// The blocking session writes an extract's ready pieces with one vectored write, resumes a
/// partial one where it stopped, and reports progress up to the whole size.
#[test]
fn extract_writes_ready_pieces_together() {
    use std::io::{IoSlice, Write};
    /// Takes at most 100 000 bytes per call; counts its calls.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        plain: usize,
        vectored: usize,
        several: usize,
    }
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.plain += 1;
            let n = buf.len().min(100_000);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            self.vectored += 1;
            self.several += usize::from(bufs.len() > 1);
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(100_000 - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    strict_umask();
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("extract-vectored");
    let path = files.join("source.bin");
    let content = random_bytes(5_000_003, 12);
    std::fs::write(&path, &content).unwrap();
    let mut sink = Sink::default();
    let mut seen = Vec::new();
    let n = s
        .extract("root", path.to_str().unwrap(), &mut sink, |n| seen.push(n))
        .unwrap();
    assert_eq!(n, content.len() as u64);
    assert!(sink.got == content, "extracted bytes differ");
    assert_eq!(sink.plain, 0, "pieces written one by one");
    assert!(sink.several > 0, "no write took more than one piece");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress went back");
    assert_eq!(seen.last(), Some(&n));
}

#[test]
fn interrupting_an_extract_ends_it_with_eintr() {
    strict_umask();
    let agent = TestAgent::start();
    let files = TempDir::new("extract-int");
    let path = files.join("big.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut raw = Raw::connect(&agent.sock);
    raw.hello();
    raw.send_packet(
        1,
        &Packet::Extract {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(path.to_str().unwrap().to_owned()),
        },
    );
    // Wait for data to flow, then interrupt.
    let first = raw.frames_until(1, |p| matches!(p, Packet::Data { .. }));
    assert_eq!(first[0], Packet::Major(0));
    raw.send_packet(
        1,
        &Packet::Interrupt {
            signal: Bytes::new(),
        },
    );
    let rest = raw.frames_until(1, |p| matches!(p, Packet::Minor(_) | Packet::Major(_)));
    assert_eq!(rest.last(), Some(&Packet::Minor(4)), "{:?}", rest.last());
    let data: usize = rest
        .iter()
        .map(|p| match p {
            Packet::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert!(data < 64 << 20, "the whole file was sent anyway");
    // The connection goes on.
    raw.send_packet(
        2,
        &Packet::Extract {
            user: Bytes::from_static(b"root"),
            path: Bytes::from_static(b"/nonexistent"),
        },
    );
    assert_eq!(raw.frames_until(2, |_| true), vec![Packet::Major(2)]);
}

/// Through the serve loop: inject, extract and `file:` monitors resolve a client's path with
/// the kernel, so a link planted in a sticky directory stops root's inject as it stops
/// root's shell (the agent used to read the link itself and overwrite the root-only file).
#[test]
fn planted_links_stop_root_as_they_stop_roots_shell() {
    let Some(user) = common::test_user() else {
        return;
    };
    let Some(_sysctl) = path_support::Sysctl::set("fs/protected_symlinks", "1") else {
        return;
    };
    let uid = tuppence_agent::User::lookup(user.as_bytes()).unwrap().uid();
    let planted = path_support::Planted::new(uid);
    assert!(
        planted.shell_is_refused(),
        "the kernel follows the planted link"
    );
    let agent = TestAgent::start();
    let s = agent.session();
    let link = planted.link.to_str().unwrap();
    let e = s
        .inject("root", link, 0o666, &b"overwritten\n"[..], |_| {})
        .unwrap_err();
    assert_eq!(remote_errno(&e), Some(13), "{e}");
    planted.assert_untouched();
    let e = s.extract("root", link, Vec::new(), |_| {}).unwrap_err();
    assert_eq!(remote_errno(&e), Some(13), "{e}");
    let m = s.monitor(&format!("file:{link}")).unwrap();
    assert_eq!(
        m.next_timeout(Some(PATIENCE)).unwrap(),
        Some(tuppence_blocking::MonitorEvent::Finished(
            tuppence::link::Outcome::Failed { errno: 13 }
        ))
    );
    planted.assert_untouched();
}

/// Extract never waits on what a client names: a FIFO, a device or a socket is refused with
/// EINVAL at once, and the agent goes on serving. /proc and /sys files (size 0) are read to
/// their end.
#[test]
fn extract_of_fifos_and_devices_is_refused_and_pseudo_files_are_read_whole() {
    let agent = TestAgent::start();
    let s = agent.session();
    let files = TempDir::new("extract-special");
    let fifo = files.join("fifo");
    path_support::mkfifo(&fifo);
    let sock = agent.sock.to_str().unwrap().to_owned();
    for path in [fifo.to_str().unwrap(), "/dev/zero", "/dev/null", &sock] {
        let e = s.extract("root", path, Vec::new(), |_| {}).unwrap_err();
        assert_eq!(remote_errno(&e), Some(22), "{path}: {e}");
    }
    // The agent runs in this process: its /proc/self is ours, and the same size-0 file.
    let mut status = Vec::new();
    s.extract("root", "/proc/self/status", &mut status, |_| {})
        .unwrap();
    let text = String::from_utf8_lossy(&status);
    assert!(
        text.starts_with("Name:") && text.contains("\nVmRSS:"),
        "{text}"
    );
    let mut maps = Vec::new();
    s.extract("root", "/proc/self/smaps", &mut maps, |_| {})
        .unwrap();
    assert!(maps.len() > 8192, "only {} bytes of smaps", maps.len());
    let mut seqnum = Vec::new();
    s.extract("root", "/sys/kernel/uevent_seqnum", &mut seqnum, |_| {})
        .unwrap();
    assert!(
        seqnum.len() > 1 && seqnum.ends_with(b"\n"),
        "{:?}",
        String::from_utf8_lossy(&seqnum)
    );
}

/// An inject's flush to disk happens off the agent's loop: while one inject waits on a slow
/// disk (a second here, the testing aid), another connection's commands are answered at
/// once, and the inject's answer comes only when its file is in place.
#[test]
fn a_slow_inject_flush_does_not_stall_other_connections() {
    strict_umask();
    let slow = Duration::from_millis(1500);
    let agent = TestAgent::with_config(tuppence_agent::serve::LinkDaemonConfig {
        inject_finish_delay: slow,
        ..agent_harness::quiet_config()
    });
    let files = TempDir::new("slow-sync");
    let path = files.join("slow.bin");
    let content = random_bytes(200_000, 3);
    let injector = {
        let s = agent.session();
        let p = path.clone();
        let content = content.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let r = s.inject("root", p.to_str().unwrap(), 0o600, &content[..], |_| {});
            // The answer means the file is in place.
            let in_place = std::fs::read(&p).ok() == Some(content);
            (r, started.elapsed(), in_place)
        })
    };
    // Wait until the inject's data has all been written (its temporary is full size).
    wait_until_written(&files, "slow.bin", content.len());
    let started = std::time::Instant::now();
    let other = agent.session();
    for _ in 0..3 {
        let out = other
            .output(tuppence::link::Command::new("true"))
            .expect("a command while the inject flushes");
        assert_eq!(out.outcome, tuppence::link::Outcome::Exited(0));
    }
    let took = started.elapsed();
    assert!(
        took < slow / 2,
        "a hello and 3 commands took {took:?} while an inject was flushing: the loop was stalled"
    );
    let (r, inject_took, in_place) = injector.join().unwrap();
    assert_eq!(r.expect("inject"), content.len() as u64);
    assert!(inject_took >= slow, "{inject_took:?}");
    assert!(in_place, "answered before the file was in place");
    assert_eq!(entries(files.path()), ["slow.bin"]);
}

/// A client that sent a whole inject and left while it was being flushed still gets its
/// file (all the data came), and the agent's next client, which may get the same slot, is
/// not sent the stale answer.
#[test]
fn an_inject_flushed_after_its_client_left_lands_and_answers_no_one_else() {
    strict_umask();
    let slow = Duration::from_millis(1500);
    let agent = TestAgent::with_config(tuppence_agent::serve::LinkDaemonConfig {
        inject_finish_delay: slow,
        ..agent_harness::quiet_config()
    });
    let files = TempDir::new("left-sync");
    let path = files.join("left.bin");
    let content = random_bytes(100_000, 5);
    let (s, cut) = agent.session_with_handle();
    let injector = {
        let p = path.clone();
        let content = content.clone();
        std::thread::spawn(move || {
            let _ = s.inject("root", p.to_str().unwrap(), 0o600, &content[..], |_| {});
        })
    };
    wait_until_written(&files, "left.bin", content.len());
    // The end of the data follows the data at once; then the client goes.
    std::thread::sleep(Duration::from_millis(300));
    cut.shutdown(std::net::Shutdown::Both).unwrap();
    injector.join().unwrap();

    let next = agent.session();
    let until = std::time::Instant::now() + slow + Duration::from_millis(500);
    while std::time::Instant::now() < until {
        let out = next.output(tuppence::link::Command::new("true")).unwrap();
        assert_eq!(out.outcome, tuppence::link::Outcome::Exited(0));
    }
    assert!(eventually(PATIENCE, || std::fs::read(&path).ok()
        == Some(content.clone())));
    assert_eq!(entries(files.path()), ["left.bin"]);
    let stats = next.stats();
    assert_eq!(
        (
            stats.foreign_cid_dropped,
            stats.unknown_xid_dropped,
            stats.violations
        ),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// Stopping the agent while an inject is being flushed finishes it first: the file lands
/// and its client gets its answer before the connection is closed.
#[test]
fn stopping_the_agent_finishes_an_inject_being_flushed() {
    strict_umask();
    let agent = TestAgent::with_config(tuppence_agent::serve::LinkDaemonConfig {
        inject_finish_delay: Duration::from_millis(1000),
        ..agent_harness::quiet_config()
    });
    let files = TempDir::new("stop-sync");
    let path = files.join("stop.bin");
    let content = random_bytes(100_000, 9);
    let s = agent.session();
    let injector = {
        let p = path.clone();
        let content = content.clone();
        std::thread::spawn(move || {
            s.inject("root", p.to_str().unwrap(), 0o600, &content[..], |_| {})
        })
    };
    wait_until_written(&files, "stop.bin", content.len());
    std::thread::sleep(Duration::from_millis(300));
    agent.stop();
    assert_eq!(
        injector.join().unwrap().expect("answered"),
        content.len() as u64
    );
    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert_eq!(entries(files.path()), ["stop.bin"]);
}
