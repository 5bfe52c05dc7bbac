//! Helpers shared by the transport tests.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tuppence-transport-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic bytes covering every value, starting with the ones a cooked tty would eat:
/// NUL, ^C (INTR), ^D (EOF), XON, XOFF, 0xff.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![
        0x00, 0x03, 0x04, 0x11, 0x13, 0xff, b'\n', b'\r', 0x1a, 0x1c, 0x7f,
    ];
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Reads exactly `len` bytes (or fails on an early EOF).
pub fn read_n(mut r: impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Sends `a_to_b` from `a` to `b` and `b_to_a` back at the same time (four threads, so
/// neither side's kernel buffer can fill up and deadlock) and checks both arrive intact.
pub fn exchange<A, B>(a: A, a2: A, b: B, b2: B, a_to_b: &[u8], b_to_a: &[u8])
where
    A: Read + Write + Send + 'static,
    B: Read + Write + Send + 'static,
{
    let (ab, ba) = (a_to_b.to_vec(), b_to_a.to_vec());
    let (ab_len, ba_len) = (ab.len(), ba.len());
    let w1 = std::thread::spawn(move || {
        let mut a = a;
        a.write_all(&ab).expect("write a->b");
        a.flush().expect("flush a");
        a
    });
    let w2 = std::thread::spawn(move || {
        let mut b = b;
        b.write_all(&ba).expect("write b->a");
        b.flush().expect("flush b");
        b
    });
    let r1 = std::thread::spawn(move || read_n(b2, ab_len).expect("read at b"));
    let r2 = std::thread::spawn(move || read_n(a2, ba_len).expect("read at a"));
    let got_ab = r1.join().expect("reader b");
    let got_ba = r2.join().expect("reader a");
    drop(w1.join().expect("writer a"));
    drop(w2.join().expect("writer b"));
    assert!(got_ab == a_to_b, "a->b bytes differ");
    assert!(got_ba == b_to_a, "b->a bytes differ");
}

/// Parses a target that must parse.
pub fn parse(s: &str) -> tuppence_transport::Target {
    match s.parse::<tuppence_transport::Target>() {
        Ok(t) => t,
        Err(e) => panic!("{s:?} should parse, got {e}"),
    }
}

/// The error of a target that must not parse.
pub fn err(s: &str) -> tuppence_transport::ParseTargetError {
    match s.parse::<tuppence_transport::Target>() {
        Ok(t) => panic!("{s:?} should fail, parsed as {t:?}"),
        Err(e) => e,
    }
}
