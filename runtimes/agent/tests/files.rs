//! Inject and extract with real files.

mod common;
mod path_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::Once;

use bytes::BytesMut;
use common::{me, test_user};
use path_support::Dir;
use tuppence_agent::{ExtractFile, InjectFile, User, status};

/// A restrictive umask for this whole test binary: inject modes must not depend on it.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    });
}

/// A scratch directory with `mode`, removed at the end.
fn scratch(mode: u32) -> Dir {
    setup();
    Dir::new("files", mode)
}

fn b(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn inject_writes_content_with_the_exact_mode() {
    let me = me();
    let dir = scratch(0o755);
    let target = dir.join("out.txt");
    let mut file = InjectFile::create(me.as_bytes(), b(&target), 0o640).expect("create");
    assert_eq!(file.path(), target);
    file.write(b"hello ").expect("write");
    file.write(b"inject\n").expect("write");
    let done = file.finish().expect("finish");
    assert_eq!(done.bytes, 13);
    assert!(done.directory_synced, "the rename is flushed too");
    assert_eq!(fs::read(&target).expect("read"), b"hello inject\n");
    assert_eq!(
        mode_of(&target),
        0o640,
        "mode must not depend on the umask (077 here)"
    );
    assert_eq!(dir.names(), ["out.txt"], "no temporary left behind");

    // Replacing: new content and mode, old ones gone.
    let mut file = InjectFile::create(me.as_bytes(), b(&target), 0o755).expect("create");
    file.write(b"v2").expect("write");
    file.finish().expect("finish");
    assert_eq!(fs::read(&target).expect("read"), b"v2");
    assert_eq!(mode_of(&target), 0o755);

    // Mode 0 is honoured too.
    let zero = dir.join("zero");
    let file = InjectFile::create(me.as_bytes(), b(&zero), 0).expect("create");
    file.finish().expect("finish");
    assert_eq!(mode_of(&zero), 0);
}

#[test]
fn inject_writes_many_pieces_at_once() {
    let me = me();
    let dir = scratch(0o755);
    let target = dir.join("pieces");
    // More pieces than one writev takes, empty ones among them, large and small.
    let pieces: Vec<bytes::Bytes> = (0..200usize)
        .map(|i| {
            let len = match i % 5 {
                0 => 0,
                1 => 1,
                2 => 32_758,
                3 => 7,
                _ => 100_000,
            };
            bytes::Bytes::from(vec![(i % 251) as u8; len])
        })
        .collect();
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let mut file = InjectFile::create(me.as_bytes(), b(&target), 0o644).expect("create");
    file.write_bufs(&pieces[..3]).expect("write");
    file.write_bufs(&[]).expect("write nothing");
    file.write_bufs(&pieces[3..]).expect("write");
    assert_eq!(file.written(), expected.len() as u64);
    assert_eq!(file.finish().expect("finish").bytes, expected.len() as u64);
    assert_eq!(fs::read(&target).expect("read"), expected);
}

#[test]
fn inject_is_atomic() {
    let me = me();
    let dir = scratch(0o755);
    let target = dir.join("data");
    fs::write(&target, b"old").expect("seed");

    let mut file = InjectFile::create(me.as_bytes(), b(&target), 0o644).expect("create");
    file.write(&[b'x'; 100_000]).expect("write");
    // Before finish the target is untouched and the data is only in the temporary.
    assert_eq!(fs::read(&target).expect("read"), b"old");
    let tmp = String::from_utf8_lossy(file.temporary_name()).into_owned();
    assert!(tmp.starts_with(".data.tuppence-"), "{tmp}");
    assert_eq!(dir.names(), [tmp.clone(), "data".to_string()]);
    assert_eq!(
        mode_of(&dir.join(&tmp)),
        0o600,
        "temporary is private while written"
    );
    file.abort();
    assert_eq!(dir.names(), ["data"]);
    assert_eq!(fs::read(&target).expect("read"), b"old");

    // A new file: abort (here by drop) leaves neither file nor temporary.
    let fresh = dir.join("fresh");
    {
        let mut file = InjectFile::create(me.as_bytes(), b(&fresh), 0o644).expect("create");
        file.write(b"partial").expect("write");
        assert!(!fresh.exists(), "no partial file visible before finish");
    }
    assert_eq!(dir.names(), ["data"]);
}

#[test]
fn inject_refuses_directories_and_missing_dirs() {
    let me = me();
    let dir = scratch(0o755);
    let sub = dir.join("sub");
    fs::create_dir(&sub).expect("mkdir");
    let err = InjectFile::create(me.as_bytes(), b(&sub), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::EISDIR);
    let err = InjectFile::create(
        me.as_bytes(),
        format!("{}/", dir.0.display()).as_bytes(),
        0o644,
    )
    .unwrap_err();
    assert_eq!(err.errno(), status::EISDIR);
    let err = InjectFile::create(me.as_bytes(), b(&dir.join("missing/file")), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::ENOENT);
    let err = InjectFile::create(b"no-such-user-tuppence", b(&dir.join("x")), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::ENOENT);
    let long = "n".repeat(300);
    let err = InjectFile::create(me.as_bytes(), b(&dir.join(&long)), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::ENAMETOOLONG);
    // A fifo is not a regular file either.
    let fifo = dir.join("fifo");
    path_support::mkfifo(&fifo);
    let err = InjectFile::create(me.as_bytes(), b(&fifo), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::EINVAL, "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    assert_eq!(dir.names(), ["fifo", "sub"]);
}

#[test]
fn inject_long_names_and_symlinks() {
    let me = me();
    let dir = scratch(0o755);
    // A 255-byte name is valid; its temporary's name must be too.
    let long = "L".repeat(255);
    let mut file = InjectFile::create(me.as_bytes(), b(&dir.join(&long)), 0o600).expect("create");
    file.write(b"long").expect("write");
    file.finish().expect("finish");
    assert_eq!(fs::read(dir.join(&long)).expect("read"), b"long");

    // A symbolic link is followed: its target is replaced, the link stays.
    let real = dir.join("real");
    fs::write(&real, b"before").expect("seed");
    let link = dir.join("link");
    symlink("real", &link).expect("symlink");
    let mut file = InjectFile::create(me.as_bytes(), b(&link), 0o644).expect("create");
    assert_eq!(file.path(), real);
    file.write(b"after").expect("write");
    file.finish().expect("finish");
    assert!(
        fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&real).expect("read"), b"after");
}

#[test]
fn inject_relative_names_go_under_home() {
    let Some(name) = test_user() else { return };
    let user = User::lookup(name.as_bytes()).expect("user");
    let rel = format!("tuppence-rel-{}.txt", std::process::id());
    let mut file = InjectFile::create(name.as_bytes(), rel.as_bytes(), 0o640).expect("create");
    let expected = user.base_dir().join(&rel);
    assert_eq!(file.path(), expected);
    file.write(b"rel").expect("write");
    file.finish().expect("finish");
    let meta = fs::metadata(&expected).expect("stat");
    assert_eq!(
        meta.uid(),
        user.uid(),
        "the user's file belongs to the user"
    );
    assert_eq!(meta.gid(), user.gid());
    assert_eq!(meta.mode() & 0o7777, 0o640);

    // Extract as the user, by the same relative name.
    let mut ex = ExtractFile::open(name.as_bytes(), rel.as_bytes()).expect("open");
    let mut buf = BytesMut::new();
    while ex.read_chunk(&mut buf, 2).expect("read") > 0 {}
    assert_eq!(&buf[..], b"rel");
    fs::remove_file(&expected).expect("cleanup");
}

#[test]
fn permissions_are_the_users() {
    let Some(name) = test_user() else { return };
    // Root-only directory: the user may not create files in it.
    let private = scratch(0o700);
    let err = InjectFile::create(name.as_bytes(), b(&private.join("f")), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::EACCES, "{err}");
    assert!(private.names().is_empty());

    // Readable directory, root-only file: extract refused, inject over it refused (the
    // directory is not the user's to write).
    let open = scratch(0o755);
    let secret = open.join("secret");
    fs::write(&secret, b"s").expect("seed");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = ExtractFile::open(name.as_bytes(), b(&secret)).unwrap_err();
    assert_eq!(err.errno(), status::EACCES, "{err}");
    let err = InjectFile::create(name.as_bytes(), b(&secret), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::EACCES, "{err}");

    // A directory the user may write: fine, and the agent is root again afterwards.
    let shared = scratch(0o777);
    let mut file =
        InjectFile::create(name.as_bytes(), b(&shared.join("ok")), 0o644).expect("create");
    file.write(b"ok").expect("write");
    file.finish().expect("finish");
    let mut file =
        InjectFile::create(b"root", b(&private.join("root-ok")), 0o600).expect("root create");
    file.write(b"r").expect("write");
    file.finish().expect("root finish");
}

#[test]
fn extract_is_byte_exact() {
    let me = me();
    let dir = scratch(0o755);
    let path = dir.join("big");
    let data = pseudo_random(10_000_000, 7);
    fs::write(&path, &data).expect("seed");
    let mut ex = ExtractFile::open(me.as_bytes(), b(&path)).expect("open");
    assert_eq!(ex.size_hint(), data.len() as u64);
    let mut out = BytesMut::with_capacity(data.len());
    loop {
        let n = ex.read_chunk(&mut out, 32 * 1024).expect("read");
        assert!(n <= 32 * 1024);
        if n == 0 {
            break;
        }
    }
    assert_eq!(ex.read_so_far(), data.len() as u64);
    assert!(out[..] == data[..], "extracted bytes differ");
}

#[test]
fn extract_errors() {
    let me = me();
    let dir = scratch(0o755);
    let err = ExtractFile::open(me.as_bytes(), b(&dir.join("missing"))).unwrap_err();
    assert_eq!(err.errno(), status::ENOENT);
    let err = ExtractFile::open(me.as_bytes(), b(&dir.0)).unwrap_err();
    assert_eq!(err.errno(), status::EISDIR);
    let err = ExtractFile::open(b"no-such-user-tuppence", b"/etc/hostname").unwrap_err();
    assert_eq!(err.errno(), status::ENOENT);
    // /proc files are regular (size 0) and read to their end.
    let mut ex = ExtractFile::open(me.as_bytes(), b"/proc/self/stat").expect("open proc");
    let mut buf = BytesMut::new();
    while ex.read_chunk(&mut buf, 100).expect("read") > 0 {}
    assert!(buf.ends_with(b"\n"));
}

/// `fs.protected_symlinks`: a link planted by another user in a sticky world-writable
/// directory must stop the agent exactly where it stops root's shell. The agent used to read
/// the link itself and write through it: the root-only target was replaced and its mode reset.
#[test]
fn protected_symlinks_stop_inject_and_extract() {
    let Some(user) = test_user() else { return };
    let Some(_sysctl) = path_support::Sysctl::set("fs/protected_symlinks", "1") else {
        return;
    };
    let uid = User::lookup(user.as_bytes()).expect("user").uid();
    let planted = path_support::Planted::new(uid);
    assert!(
        planted.shell_is_refused(),
        "the kernel follows the planted link"
    );
    planted.assert_untouched();

    let err = InjectFile::create(b"root", b(&planted.link), 0o666).unwrap_err();
    assert_eq!(err.errno(), status::EACCES, "{err}");
    planted.assert_untouched();
    let err = ExtractFile::open(b"root", b(&planted.link)).unwrap_err();
    assert_eq!(err.errno(), status::EACCES, "{err}");

    // The same link owned by the directory's owner is followed, as the kernel allows: the
    // link's target is replaced (atomically, beside itself), the link stays.
    std::os::unix::fs::lchown(&planted.link, Some(0), Some(0)).expect("lchown");
    let mut file = InjectFile::create(b"root", b(&planted.link), 0o640).expect("create");
    assert_eq!(file.path(), planted.secret);
    file.write(b"replaced\n").expect("write");
    file.finish().expect("finish");
    assert_eq!(fs::read(&planted.secret).expect("read"), b"replaced\n");
    assert_eq!(mode_of(&planted.secret), 0o640);
    assert!(
        fs::symlink_metadata(&planted.link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    let mut ex = ExtractFile::open(b"root", b(&planted.link)).expect("extract via link");
    let mut buf = BytesMut::new();
    while ex.read_chunk(&mut buf, 64).expect("read") > 0 {}
    assert_eq!(&buf[..], b"replaced\n");
}

/// Links are followed by the kernel for inject: dangling links are refused (as `cp` refuses
/// them) instead of creating a file where the link points; loops end in ELOOP; a link to a
/// directory or a FIFO is refused like the directory or FIFO itself.
#[test]
fn inject_through_links_is_the_kernels_resolution() {
    let me = me();
    let dir = scratch(0o755);
    let dangling = dir.join("dangling");
    symlink("nowhere", &dangling).expect("symlink");
    let err = InjectFile::create(me.as_bytes(), b(&dangling), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::ENOENT, "{err}");
    assert!(!dir.join("nowhere").exists());
    let looped = dir.join("loop");
    symlink("loop", &looped).expect("symlink");
    let err = InjectFile::create(me.as_bytes(), b(&looped), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::ELOOP, "{err}");
    let to_dir = dir.join("to-dir");
    symlink(".", &to_dir).expect("symlink");
    let err = InjectFile::create(me.as_bytes(), b(&to_dir), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::EISDIR, "{err}");
    let fifo = dir.join("fifo");
    path_support::mkfifo(&fifo);
    let to_fifo = dir.join("to-fifo");
    symlink("fifo", &to_fifo).expect("symlink");
    let err = InjectFile::create(me.as_bytes(), b(&to_fifo), 0o644).unwrap_err();
    assert_eq!(err.errno(), status::EINVAL, "{err}");
    // A chain of links is followed to its end; the temporary goes beside the real file.
    let sub = dir.join("sub");
    fs::create_dir(&sub).expect("mkdir");
    fs::write(sub.join("real"), b"old").expect("seed");
    symlink("sub/real", dir.join("hop2")).expect("symlink");
    symlink("hop2", dir.join("hop1")).expect("symlink");
    let mut file = InjectFile::create(me.as_bytes(), b(&dir.join("hop1")), 0o600).expect("create");
    assert_eq!(file.path(), sub.join("real"));
    let tmp = String::from_utf8_lossy(file.temporary_name()).into_owned();
    assert!(
        sub.join(&tmp).exists(),
        "temporary not beside the real file"
    );
    file.write(b"new").expect("write");
    file.finish().expect("finish");
    assert_eq!(fs::read(sub.join("real")).expect("read"), b"new");
}

/// Extract never opens what is not a regular file: FIFOs (reading would wait for a writer),
/// devices and sockets are refused with EINVAL before anything is opened.
#[test]
fn extract_refuses_fifos_devices_and_sockets() {
    let me = me();
    let dir = scratch(0o755);
    let fifo = dir.join("fifo");
    path_support::mkfifo(&fifo);
    let err = ExtractFile::open(me.as_bytes(), b(&fifo)).unwrap_err();
    assert_eq!(err.errno(), status::EINVAL, "{err}");
    let err = ExtractFile::open(me.as_bytes(), b"/dev/zero").unwrap_err();
    assert_eq!(err.errno(), status::EINVAL, "{err}");
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let err = ExtractFile::open(me.as_bytes(), b(&sock)).unwrap_err();
    assert_eq!(err.errno(), status::EINVAL, "{err}");
    // /sys attributes are regular files too (their size says nothing) and read to their end.
    let mut ex = ExtractFile::open(me.as_bytes(), b"/sys/kernel/uevent_seqnum").expect("sysfs");
    let mut buf = BytesMut::new();
    while ex.read_chunk(&mut buf, 1).expect("read") > 0 {}
    assert!(buf.len() > 1 && buf.ends_with(b"\n"), "{buf:?}");
    // A /proc file larger than a page, read in small chunks to its end.
    let mut ex = ExtractFile::open(me.as_bytes(), b"/proc/self/smaps").expect("proc");
    assert_eq!(ex.size_hint(), 0);
    let mut buf = BytesMut::new();
    while ex.read_chunk(&mut buf, 1000).expect("read") > 0 {}
    assert!(buf.len() > 4096, "only {} bytes", buf.len());
}

/// #13.12: a file truncated while it is extracted is not a success: the short copy is
/// not a state the file was ever in.
#[test]
fn extract_of_a_file_that_shrinks_fails_with_enodata() {
    let me = me();
    let dir = scratch(0o755);
    let path = dir.join("shrinks");
    fs::write(&path, pseudo_random(200_000, 3)).expect("seed");
    let mut ex = ExtractFile::open(me.as_bytes(), b(&path)).expect("open");
    let mut out = BytesMut::new();
    assert_eq!(ex.read_chunk(&mut out, 50_000).expect("read"), 50_000);
    // Truncated in place (logrotate's copytruncate, a writer starting over).
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("reopen")
        .set_len(60_000)
        .expect("truncate");
    let err = loop {
        match ex.read_chunk(&mut out, 50_000) {
            Ok(0) => panic!("a shrunk file ended as a success"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), status::ENODATA, "{err}");
    assert!(err.to_string().contains("shrank"), "{err}");

    // Files that grow are read to their new end; sysfs attributes report more than they
    // hold (4096) and end early without having shrunk.
    fs::write(&path, b"short").expect("seed");
    let mut ex = ExtractFile::open(me.as_bytes(), b(&path)).expect("open");
    fs::write(&path, b"short and longer").expect("grow");
    let mut out = BytesMut::new();
    while ex.read_chunk(&mut out, 4).expect("read") > 0 {}
    assert_eq!(&out[..], b"short and longer");
    let sys = Path::new("/sys/class/net/lo/address");
    if sys.exists() {
        let mut ex = ExtractFile::open(me.as_bytes(), b(sys)).expect("open sysfs");
        let mut out = BytesMut::new();
        while ex
            .read_chunk(&mut out, 4096)
            .expect("sysfs reads to its end")
            > 0
        {}
        assert!(ex.size_hint() > out.len() as u64, "{}", ex.size_hint());
    } else {
        eprintln!("no /sys/class/net/lo/address here: the sysfs half is not checked");
    }
}

/// The page-cache state of a file (`cachestat(2)`, Linux 6.5+), in pages: (cached, dirty,
/// under writeback). `None` where the kernel does not have the call.
fn cachestat(path: &Path) -> Option<(u64, u64, u64)> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number on every architecture (the unified syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    let f = fs::File::open(path).expect("open temporary");
    let range = Range { off: 0, len: 0 };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and fills `st`, both live locals of the kernel's layout.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    if r != 0 {
        println!("SKIPPED: cachestat: {}", std::io::Error::last_os_error());
        return None;
    }
    Some((st.nr_cache, st.nr_dirty, st.nr_writeback))
}

fn is_tmpfs(path: &Path) -> bool {
    let st = rustix::fs::statfs(path).expect("statfs");
    st.f_type as u64 == 0x0102_1994
}

#[test]
fn inject_starts_writeback_while_the_data_arrives() {
    use tuppence_agent::files::{WRITEBACK_IN_FLIGHT, WRITEBACK_STEP};
    let me = me();
    let dir = scratch(0o755);
    if is_tmpfs(&dir.join(".")) {
        println!(
            "SKIPPED: {} is tmpfs: nothing is ever written back there",
            dir.join(".").display()
        );
        return;
    }
    let target = dir.join("big.bin");
    let mut file = InjectFile::create(me.as_bytes(), b(&target), 0o644).expect("create");
    let piece = bytes::Bytes::from(pseudo_random(1 << 20, 7));
    let total: u64 = 2 * WRITEBACK_IN_FLIGHT;
    for _ in 0..total >> 20 {
        file.write_bufs(std::slice::from_ref(&piece))
            .expect("write");
    }
    if !file.writeback().active() {
        println!("SKIPPED: this filesystem refuses sync_file_range");
        return;
    }
    let tmp = dir.join(std::str::from_utf8(file.temporary_name()).expect("utf-8"));
    let Some((cached, dirty, writeback)) = cachestat(&tmp) else {
        return;
    };
    // Before the final sync, almost nothing is left dirty: the writeback of every whole
    // step was started as it was written (without it, all 32 MiB would be dirty here).
    let page = 4096u64;
    println!("cached {cached} dirty {dirty} writeback {writeback} pages");
    assert!(
        dirty * page <= WRITEBACK_STEP,
        "{dirty} pages still dirty after {total} bytes"
    );
    assert_eq!(file.writeback().started(), total);
    // More than the in-flight bound was written, so the oldest ranges were waited for.
    assert!(file.writeback().waits().0 >= 1, "{:?}", file.writeback());
    assert_eq!(file.finish().expect("finish").bytes, total);
    assert_eq!(fs::metadata(&target).expect("stat").len(), total);
}

#[test]
fn writeback_turns_itself_off_where_sync_file_range_is_refused() {
    use std::os::fd::AsFd;
    use tuppence_agent::files::{WRITEBACK_STEP, Writeback};
    // A pipe and a character device: sync_file_range says ESPIPE there. The writeback
    // turns off quietly instead of failing (the final fdatasync is the guarantee).
    let (_r, w) = rustix::pipe::pipe().expect("pipe");
    let null = fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    for fd in [w.as_fd(), null.as_fd()] {
        let mut wb = Writeback::new();
        wb.advance(fd, 3 * WRITEBACK_STEP);
        assert!(!wb.active());
        assert_eq!(wb.started(), 0);
        // Later calls do nothing.
        wb.advance(fd, 6 * WRITEBACK_STEP);
        assert_eq!(wb.started(), 0);
    }
    // And an inject whose target is a FIFO or a device is still refused with 22, before
    // any temporary exists.
    let me = me();
    let dir = scratch(0o755);
    let fifo = dir.join("fifo");
    path_support::mkfifo(&fifo);
    for target in [fifo.as_path(), Path::new("/dev/null")] {
        let err = InjectFile::create(me.as_bytes(), b(target), 0o644).unwrap_err();
        assert_eq!(err.errno(), 22, "{err}");
    }
    assert_eq!(dir.names(), ["fifo"]);
}
