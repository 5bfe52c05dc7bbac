//! The sniff server's memory and fds stay bounded whatever its peers do: a flood of `N`
//! requests from connections that never read their answers, and more clients than it has
//! file descriptors for. The server runs in a child process, so its peak memory is its own.

mod sniff_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use sniff_support::{ChildServer, RawConn};

/// The server of the tests below, when started by them (does nothing otherwise).
#[test]
#[ignore = "the server process the tests start; not a test by itself"]
fn sniff_server_process() {
    sniff_support::run_child_server();
}

/// Writes `N` requests as fast as the server takes them, never reading, until it stops
/// taking them (a write blocks for a second) or `cap` bytes were written. Returns the bytes
/// written.
fn flood_nops(mut stream: UnixStream, cap: usize) -> usize {
    // `N` under id 7: u32 length 5, id, type.
    let one = [0, 0, 0, 5, 0, 0, 0, 7, b'N'];
    let block = one.repeat(64 * 1024 / one.len());
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut written = 0;
    while written < cap {
        match stream.write(&block) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    written
}

#[test]
fn connections_that_never_read_their_answers_cost_bounded_memory() {
    let server = ChildServer::spawn("");
    let mut good = server.raw();
    good.send(1, b'N', b"");
    good.expect(1, b'O', b"");
    let before = server.peak_kib();
    // Three flooders; each could write 48 MiB of requests (5 million `N`s).
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            let stream = UnixStream::connect(&server.path).unwrap();
            std::thread::spawn(move || flood_nops(stream, 48 << 20))
        })
        .collect();
    let written: Vec<usize> = flooders.into_iter().map(|t| t.join().unwrap()).collect();
    let after = server.peak_kib();
    println!(
        "requests taken before the server stopped reading: {written:?} bytes; peak memory {before} KiB -> {after} KiB"
    );
    assert!(
        after < 64 * 1024,
        "the server's peak memory reached {after} KiB (limit 64 MiB)"
    );
    for w in &written {
        assert!(*w < 16 << 20, "a flooder got {w} bytes of requests taken");
    }
    // A connection that reads is still served meanwhile.
    good.send(2, b'N', b"");
    good.expect(2, b'O', b"");
}

/// How a raw client fared: answered, or closed without an answer.
fn answered_or_closed(conn: &mut RawConn, deadline: Instant) -> Option<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    conn.stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 9];
    let mut got = 0;
    while got < buf.len() {
        match conn.stream.read(&mut buf[got..]) {
            Ok(0) => return Some(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // `O` for id 1 with no data.
    assert_eq!(buf, [0, 0, 0, 5, 0, 0, 0, 1, b'O']);
    Some(true)
}

#[test]
fn out_of_file_descriptors_every_client_is_answered_or_closed() {
    let server = ChildServer::spawn("nofile=40");
    let mut clients: Vec<RawConn> = (0..80).map(|_| server.raw()).collect();
    for c in &mut clients {
        c.send(1, b'N', b"");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let fates: Vec<Option<bool>> = clients
        .iter_mut()
        .map(|c| answered_or_closed(c, deadline))
        .collect();
    let answered = fates.iter().filter(|f| **f == Some(true)).count();
    let closed = fates.iter().filter(|f| **f == Some(false)).count();
    println!("of 80 clients under `ulimit -n 40`: {answered} answered, {closed} closed");
    assert_eq!(answered + closed, 80, "clients left waiting: {fates:?}");
    assert!(answered > 0 && closed > 0, "{fates:?}");
}
