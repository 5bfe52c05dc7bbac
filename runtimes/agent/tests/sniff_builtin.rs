//! The built-in task types end to end with the real tools: `ping`, `openssl` against a TLS
//! server the test starts, `curl` against an HTTP server the test starts. A test whose tool
//! is missing prints `SKIPPED: …` and returns.

mod sniff_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::sniff::cert::{CertRequest, CertTarget, StartTls};
use tuppence::sniff::nat::{NatParams, NatReply, NatStatus};
use tuppence::sniff::ping::{Family, PingRequest, PingTarget};
use tuppence::sniff::{TaskId, TaskResult};
use tuppence_blocking::sniff::{SniffRequest, request};

use sniff_support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn ping_target(host: &str, count: u8) -> PingTarget {
    PingTarget {
        family: Family::Any,
        count,
        size: 56,
        host: Bytes::copy_from_slice(host.as_bytes()),
    }
}

#[test]
fn ping_localhost_three_times() {
    if !have("ping") {
        println!("SKIPPED: no ping");
        return;
    }
    let server = Server::start();
    let req = SniffRequest::ping(PingRequest {
        targets: vec![ping_target("127.0.0.1", 3)],
    })
    .unwrap();
    let result = request(&server.target, TaskId::from(1), &req, LIMIT).unwrap();
    let TaskResult::Ping(replies) = result else {
        panic!("{result:?}")
    };
    assert_eq!(&replies[0].ip[..], b"127.0.0.1");
    assert_eq!(replies[0].rtt_us.len(), 3);
    assert!(
        replies[0].rtt_us.iter().all(Option::is_some),
        "{:?}",
        replies[0].rtt_us
    );
}

#[test]
fn an_unresolvable_name_has_an_empty_ip() {
    if !have("ping") {
        // Without ping the script reports every host unresolved anyway; say so.
        println!("SKIPPED: no ping (the answer would be empty for any host)");
        return;
    }
    let server = Server::start();
    let req = SniffRequest::ping(PingRequest {
        targets: vec![ping_target("nonexistent.invalid", 1)],
    })
    .unwrap();
    let result = request(&server.target, TaskId::from(2), &req, LIMIT).unwrap();
    let TaskResult::Ping(replies) = result else {
        panic!("{result:?}")
    };
    assert!(!replies[0].is_resolved(), "{replies:?}");
    assert!(replies[0].rtt_us.is_empty());
}

#[test]
fn bad_parameters_are_f_i() {
    let server = Server::start();
    let mut c = server.raw();
    // Ping: count 0. Certificate: unknown STARTTLS protocol 6. NAT: not an http(s) URL.
    c.send(1, b'P', b"\x00\x01\x34\x00\x00\x38\x00\x00\x00\x01h");
    c.expect(1, b'F', b"I");
    c.send(2, b'C', b"\x00\x01\x06\x01\xbb\x00\x00\x00\x01h");
    c.expect(2, b'F', b"I");
    c.send(3, b'n', b"\x00\x00\x00\x03x:y");
    c.expect(3, b'F', b"I");
    c.send(4, b'P', b"\x00");
    c.expect(4, b'F', b"I");
}

/// A self-signed certificate for `localhost` and an `openssl s_server` on a free port.
struct TlsServer {
    dir: TempDir,
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start() -> Option<TlsServer> {
        if !have("openssl") {
            println!("SKIPPED: no openssl");
            return None;
        }
        let dir = TempDir::new("tls");
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
                "-days",
                "30",
                "-keyout",
            ])
            .arg(dir.path("key.pem"))
            .arg("-out")
            .arg(dir.path("cert.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !made.success() {
            println!("SKIPPED: openssl cannot make a test certificate here");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(dir.path("cert.pem"))
            .arg("-key")
            .arg(dir.path("key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = TlsServer { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn x509(&self, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .arg("x509")
            .arg("-in")
            .arg(self.dir.path("cert.pem"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cert_target(host: &str, port: u16, flags: u8) -> CertTarget {
    CertTarget {
        starttls: StartTls::None,
        want_cert: flags & 1 != 0,
        want_chain: flags & 2 != 0,
        want_details: flags & 4 != 0,
        want_params: flags & 8 != 0,
        port,
        host: Bytes::copy_from_slice(host.as_bytes()),
    }
}

#[test]
fn certificates_from_a_local_tls_server() {
    let Some(tls) = TlsServer::start() else {
        return;
    };
    let server = Server::start();
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let req = CertRequest {
        targets: vec![
            // Fingerprint only.
            cert_target("localhost", tls.port, 0),
            // Whole certificate, chain, names + expiry, cipher + protocol.
            cert_target("localhost", tls.port, 1 | 2 | 4 | 8),
            // Nothing listens there.
            cert_target("127.0.0.1", closed_port, 8),
        ],
    };
    let result = request(
        &server.target,
        TaskId::from(5),
        &SniffRequest::cert(req).unwrap(),
        LIMIT,
    )
    .unwrap();
    let TaskResult::Cert(replies) = result else {
        panic!("{result:?}")
    };

    let fingerprint = tls.x509(&["-noout", "-fingerprint", "-sha1"]);
    let fingerprint = fingerprint.rsplit('=').next().unwrap().replace(':', "");
    let fp = &replies[0];
    assert_eq!(fp.count(), 1);
    assert!(fp.tls.is_none());
    assert_eq!(String::from_utf8_lossy(&fp.certs[0].value), fingerprint);
    assert!(fp.certs[0].details.is_none());

    let full = &replies[1];
    assert_eq!(full.count(), 1, "self-signed: the chain is the certificate");
    let pem = std::fs::read_to_string(tls.dir.path("cert.pem")).unwrap();
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(
        String::from_utf8_lossy(&full.certs[0].value),
        body.join("\n")
    );
    let details = full.certs[0].details.as_ref().unwrap();
    let names = String::from_utf8_lossy(&details.names).into_owned();
    assert!(names.lines().any(|n| n == "localhost"), "{names:?}");
    let expiry = tls.x509(&["-noout", "-enddate"]);
    assert_eq!(
        String::from_utf8_lossy(&details.expiry),
        expiry.trim_start_matches("notAfter=")
    );
    let params = full.tls.as_ref().unwrap();
    assert!(
        params.protocol.starts_with(b"TLSv1"),
        "{:?}",
        params.protocol
    );
    assert!(!params.cipher.is_empty());

    assert_eq!(replies[2].count(), 0, "closed port");
    assert!(replies[2].tls.is_none());
}

/// A tiny HTTP server answering every request with `body`; runs until the test ends.
fn http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes());
        }
    });
    port
}

#[test]
fn nat_against_a_local_address_service_is_direct() {
    for tool in ["curl", "ip"] {
        if !have(tool) {
            println!("SKIPPED: no {tool}");
            return;
        }
    }
    let port = http_server("127.0.0.1");
    let server = Server::start();
    let url = format!("http://127.0.0.1:{port}/getip");
    let req = SniffRequest::nat(&NatParams {
        url: Some(Bytes::from(url)),
    })
    .unwrap();
    let result = request(&server.target, TaskId::from(6), &req, LIMIT).unwrap();
    let TaskResult::Nat(NatReply { ipv4, .. }) = result else {
        panic!("{result:?}")
    };
    assert_eq!(ipv4, NatStatus::Direct);
    // The answer the wire carries: `D` for IPv4.
    let mut c = server.raw();
    let url = format!("http://127.0.0.1:{port}/getip");
    let mut params = (url.len() as u32).to_be_bytes().to_vec();
    params.extend_from_slice(url.as_bytes());
    c.send(7, b'n', &params);
    let a = c.answer(LIMIT).unwrap();
    assert_eq!((a.status.byte(), a.data.first()), (b'O', Some(&b'D')));
}
