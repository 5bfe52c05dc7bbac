//! A link-protocol client written from raw bytes, for the QEMU test (tests/vm/run.sh builds
//! it with `rustc`; std only). It behaves like the C client where tuppence's own client is
//! kinder to the agent: it says hello exactly once, never again, whatever happens. It can
//! also stall in the middle of a packet, as a client on a loaded host does.
//!
//! ```text
//! raw_client SOCKET 3|4 run COMMAND
//!     hello, then run COMMAND as root; its stdout goes to stdout; exits with its code
//! raw_client SOCKET 3|4 inject SRC DEST PAUSE_MS
//!     hello, then inject SRC as DEST, stopping PAUSE_MS in the middle of a data packet;
//!     exits 0 when the agent reports the file written
//! ```
//!
//! Before the hello reply it skips what is not one (the agent may still send the previous
//! client's output), like `ClientConfig::resync_before_hello`. Everything is bounded by a
//! deadline (`RAW_CLIENT_DEADLINE` seconds, default 40): exit 3 and a message on stderr
//! when it passes. Exit 2 for a protocol or transport error, 1 when the agent reports a
//! failure.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::time::{Duration, Instant};


struct Link {
    sock: UnixStream,
    v4: bool,
    cid: u16,
    buf: Vec<u8>,
    end: Instant,
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("raw_client: {msg}");
    exit(code)
}

impl Link {
    fn header(&self, kind: u8, xid: u16, len: usize) -> Vec<u8> {
        let len = u16::try_from(len).unwrap_or_else(|_| fail(2, "packet too long"));
        let mut h = vec![kind, 0];
        let words = if self.v4 {
            [len, self.cid, xid]
        } else {
            [self.cid, xid, len]
        };
        for w in words {
            h.extend_from_slice(&w.to_be_bytes());
        }
        h
    }

    fn packet(&self, kind: u8, xid: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = self.header(kind, xid, 8 + payload.len());
        p.extend_from_slice(payload);
        p
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.sock.write_all(bytes) {
            fail(2, &format!("write: {e}"));
        }
    }

    /// Reads more bytes into `buf`, within the deadline.
    fn fill(&mut self) {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            fail(3, "timed out (no answer before the deadline)");
        }
        self.sock.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 65536];
        match self.sock.read(&mut chunk) {
            Ok(0) => fail(2, "the agent closed the link"),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                fail(3, "timed out (no answer before the deadline)")
            }
            Err(e) => fail(2, &format!("read: {e}")),
        }
    }

    /// `(type, cid, xid, len)` of the 8 bytes at `at`.
    fn parse(&self, at: usize) -> (u8, u16, u16, usize) {
        let b = &self.buf[at..at + 8];
        let w = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        if self.v4 {
            (b[0], w(4), w(6), usize::from(w(2)))
        } else {
            (b[0], w(2), w(4), usize::from(w(6)))
        }
    }

    /// Skips to the hello reply (type `h`, xid 0, length 12) and takes the cid from it.
    fn hello_reply(&mut self) {
        loop {
            let mut at = 0;
            while at + 8 <= self.buf.len() {
                let (kind, cid, xid, len) = self.parse(at);
                if kind == b'h' && self.buf[at + 1] == 0 && xid == 0 && len == 12 {
                    while self.buf.len() < at + 12 {
                        self.fill();
                    }
                    let major = self.buf[at + 8];
                    if major != if self.v4 { 4 } else { 3 } {
                        fail(2, &format!("agent speaks {major}.x"));
                    }
                    self.cid = cid;
                    self.buf.drain(..at + 12);
                    return;
                }
                at += 1;
            }
            self.fill();
        }
    }

    /// The next packet for this client: `(type, xid, payload)`.
    fn next(&mut self) -> (u8, u16, Vec<u8>) {
        loop {
            if self.buf.len() >= 8 {
                let (kind, cid, xid, len) = self.parse(0);
                if len < 8 {
                    fail(2, &format!("framing error: length {len}"));
                }
                if self.buf.len() >= len {
                    let payload = self.buf[8..len].to_vec();
                    self.buf.drain(..len);
                    if cid == self.cid && kind != b'K' {
                        return (kind, xid, payload);
                    }
                    continue;
                }
            }
            self.fill();
        }
    }
}

fn c_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn u32_at(p: &[u8]) -> u32 {
    if p.len() < 4 {
        fail(2, "short status packet");
    }
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        fail(2, "usage: raw_client SOCKET 3|4 run COMMAND | inject SRC DEST PAUSE_MS");
    }
    let deadline = std::env::var("RAW_CLIENT_DEADLINE")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(40), Duration::from_secs);
    let sock = UnixStream::connect(&args[1]).unwrap_or_else(|e| fail(2, &format!("connect {}: {e}", args[1])));
    let v4 = match args[2].as_str() {
        "4" => true,
        "3" => false,
        other => fail(2, &format!("dialect {other}: 3 or 4")),
    };
    let mut link = Link {
        sock,
        v4,
        cid: 0,
        buf: Vec::new(),
        end: Instant::now() + deadline,
    };
    // The hello, once: 3.0 or 4.0, keepalives off.
    let hello = link.packet(b'h', 0, &[if v4 { 4 } else { 3 }, 0, 0, 0]);
    link.send(&hello);
    link.hello_reply();
    match args[3].as_str() {
        "run" if args.len() == 5 => {
            let mut payload = Vec::new();
            c_string("root", &mut payload);
            c_string(&args[4], &mut payload);
            for word in [60u32, 0, 0, 0] {
                payload.extend_from_slice(&word.to_be_bytes());
            }
            let request = link.packet(b'c', 1, &payload);
            link.send(&request);
            let eof = if v4 { b'X' } else { b'E' };
            let stdin_eof = link.packet(eof, 1, &0u16.to_be_bytes());
            link.send(&stdin_eof);
            let mut major = 0;
            let mut stdout = std::io::stdout();
            loop {
                let (kind, xid, payload) = link.next();
                if xid != 1 {
                    continue;
                }
                match kind {
                    b'D' if payload.len() >= 2 && payload[1] == 1 => {
                        stdout.write_all(&payload[2..]).ok();
                    }
                    b'D' => {
                        std::io::stderr().write_all(payload.get(2..).unwrap_or_default()).ok();
                    }
                    b'M' => major = u32_at(&payload),
                    b'm' => {
                        let minor = u32_at(&payload);
                        stdout.flush().ok();
                        if major != 0 {
                            fail(1, &format!("command failed: M={major} m={minor}"));
                        }
                        exit(i32::try_from(minor).unwrap_or(1));
                    }
                    b'T' => fail(1, "command timed out"),
                    _ => {}
                }
            }
        }
        "inject" if args.len() == 7 => {
            let data = std::fs::read(&args[4]).unwrap_or_else(|e| fail(2, &format!("read {}: {e}", args[4])));
            let pause = Duration::from_millis(args[6].parse().unwrap_or_else(|_| fail(2, "PAUSE_MS")));
            let mut payload = Vec::new();
            c_string("root", &mut payload);
            c_string(&args[5], &mut payload);
            payload.extend_from_slice(&0o644u32.to_be_bytes());
            let request = link.packet(b'i', 1, &payload);
            link.send(&request);
            loop {
                let (kind, xid, payload) = link.next();
                match (kind, xid) {
                    (b'M', 1) if u32_at(&payload) == 0 => break,
                    (b'M' | b'm', 1) => fail(1, &format!("inject refused: errno {}", u32_at(&payload))),
                    _ => {}
                }
            }
            // Data packets of 16 KiB; the middle one is written in two parts with a stall.
            let chunks: Vec<&[u8]> = data.chunks(16 * 1024).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let mut p = vec![0, 0];
                p.extend_from_slice(chunk);
                let packet = link.packet(b'D', 1, &p);
                if i == chunks.len() / 2 {
                    let half = packet.len() / 2;
                    link.send(&packet[..half]);
                    std::thread::sleep(pause);
                    link.send(&packet[half..]);
                } else {
                    link.send(&packet);
                }
            }
            let eof = if v4 { b'X' } else { b'E' };
            let end = link.packet(eof, 1, &0u16.to_be_bytes());
            link.send(&end);
            loop {
                let (kind, xid, payload) = link.next();
                match (kind, xid) {
                    (b'm', 1) => match u32_at(&payload) {
                        0 => exit(0),
                        errno => fail(1, &format!("inject failed: errno {errno}")),
                    },
                    (b'M', 1) => fail(1, &format!("inject failed: M={}", u32_at(&payload))),
                    _ => {}
                }
            }
        }
        _ => fail(2, "usage: raw_client SOCKET 3|4 run COMMAND | inject SRC DEST PAUSE_MS"),
    }
}
