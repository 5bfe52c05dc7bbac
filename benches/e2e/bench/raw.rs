//! The physical-limit reference: the same bytes through a raw unix socket, with a minimal
//! reader/writer on each side (a reused buffer, `read` then `write_all`, nothing else).
//!
//! The server runs in its own process, like the agent. One request per connection, one
//! line: `E PATH` sends the file and closes; `I PATH` writes what arrives until EOF into
//! PATH, then answers `ok`; `S PATH` does the same with one `fdatasync` before the `ok` (the
//! reference of the durable inject); `X COMMAND` runs `/bin/sh -c COMMAND` with its stdout on the
//! socket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};

/// Buffer of the raw reader/writer on both sides (socat's `-b 131072`).
pub const RAW_BUF: usize = 128 * 1024;

pub fn serve(sock: &Path) {
    let listener = UnixListener::bind(sock).expect("raw listener");
    let mut buf = vec![0u8; RAW_BUF];
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        handle(conn, &mut buf);
    }
}

/// [`serve`] with a thread per connection: the reference for many concurrent streams
/// (the farm figure), where a server taking one connection at a time would queue them.
pub fn serve_threaded(sock: &Path) {
    let listener = UnixListener::bind(sock).expect("raw listener");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || handle(conn, &mut vec![0u8; RAW_BUF]));
    }
}

fn handle(mut conn: UnixStream, buf: &mut [u8]) {
    // The same socket buffers as the agent's and the clients' (tuppence-transport's
    // choice), so the reference is not handicapped by the kernel's defaults.
    tuppence_transport::tune_socket_buffers(&conn);
    let Ok(line) = read_line(&mut conn) else {
        return;
    };
    let (op, arg) = line.split_at(1.min(line.len()));
    let arg = arg.trim_start();
    let r = match op {
        "E" => File::open(arg).and_then(|mut f| copy(&mut f, &mut conn, buf)),
        "I" => File::create(arg)
            .and_then(|mut f| copy(&mut conn, &mut f, buf))
            .and_then(|n| conn.write_all(b"ok").map(|()| n)),
        "S" => File::create(arg)
            .and_then(|mut f| copy(&mut conn, &mut f, buf).map(|n| (f, n)))
            .and_then(|(f, n)| f.sync_data().map(|()| n))
            .and_then(|n| conn.write_all(b"ok").map(|()| n)),
        "X" => conn.try_clone().and_then(|out| {
            Command::new("/bin/sh")
                .args(["-c", arg])
                .stdin(Stdio::null())
                .stdout(std::os::fd::OwnedFd::from(out))
                .status()
                .map(|_| 0)
        }),
        _ => Ok(0),
    };
    if let Err(e) = r {
        eprintln!("raw server: {line}: {e}");
    }
}

fn read_line(conn: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        conn.read_exact(&mut b)?;
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

/// The minimal copy loop; returns the bytes copied.
pub fn copy(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        match from.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                to.write_all(&buf[..k])?;
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn request(sock: &Path, line: &str) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(sock)?;
    tuppence_transport::tune_socket_buffers(&s);
    s.write_all(format!("{line}\n").as_bytes())?;
    Ok(s)
}

/// Reads `path` through the raw server into `sink`; returns the bytes received.
pub fn extract(sock: &Path, path: &Path, sink: &mut impl Write) -> io::Result<u64> {
    let mut s = request(sock, &format!("E {}", path.display()))?;
    let mut buf = vec![0u8; RAW_BUF];
    let n = copy(&mut s, sink, &mut buf)?;
    sink.flush()?;
    Ok(n)
}

/// Sends `source` to the raw server, which writes it to `path`.
pub fn inject(sock: &Path, source: &mut impl Read, path: &Path) -> io::Result<u64> {
    send(sock, "I", source, path)
}

/// As [`inject`], with one `fdatasync` of `path` before the server answers.
pub fn inject_synced(sock: &Path, source: &mut impl Read, path: &Path) -> io::Result<u64> {
    send(sock, "S", source, path)
}

fn send(sock: &Path, op: &str, source: &mut impl Read, path: &Path) -> io::Result<u64> {
    let mut s = request(sock, &format!("{op} {}", path.display()))?;
    let mut buf = vec![0u8; RAW_BUF];
    let n = copy(source, &mut s, &mut buf)?;
    s.shutdown(Shutdown::Write)?;
    let mut ok = Vec::new();
    s.read_to_end(&mut ok)?;
    if ok != b"ok" {
        return Err(io::Error::other("raw inject: no ok"));
    }
    Ok(n)
}

/// Runs `command` on the raw server with its stdout on the socket; counts what arrives.
pub fn exec(sock: &Path, command: &str) -> io::Result<u64> {
    let mut s = request(sock, &format!("X {command}"))?;
    let mut buf = vec![0u8; RAW_BUF];
    copy(&mut s, &mut io::sink(), &mut buf)
}
