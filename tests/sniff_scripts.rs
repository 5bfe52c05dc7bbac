//! The built-in task scripts run for real under `/bin/sh`, with fake `ping`, `curl` and `ip`
//! commands (and a fake `openssl s_client` in front of the real `openssl x509`), and their
//! output goes through the task types' parsers. This checks the script/parser contract the
//! unit tests only state by hand. A test that cannot run here says so and passes nothing
//! silently: it prints `SKIP` with the reason.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::{Bytes, BytesMut};
use tuppence::sniff::cert::{Cert, CertConfig, CertRequest, CertTarget, StartTls};
use tuppence::sniff::nat::{Nat, NatConfig, NatReply, NatStatus};
use tuppence::sniff::ping::{Family, Ping, PingConfig, PingReply, PingRequest, PingTarget};
use tuppence::sniff::{Outcome, ProcessSpec, TaskOutput, TaskPlan, TaskType};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tuppence-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// An executable shell script, ready to run. Ready: a child that another test thread
    /// forked while the file was open for writing holds that fd until its own exec, and
    /// exec'ing the script meanwhile fails with ETXTBSY (the task script that ran the fake
    /// `ip` then saw no local address and answered NAT for a direct link). So the script
    /// is run once (with no arguments: the fakes do nothing harmful) until it is not busy.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..400 {
            match Command::new(&p)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
            {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break,
            }
        }
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_sh() -> bool {
    if Path::new("/bin/sh").exists() {
        return true;
    }
    println!("SKIP: /bin/sh is missing");
    false
}

/// Runs a spec the way a runtime would (stdin null, stderr discarded), with `path_first`
/// ahead of `PATH`, and returns stdout.
fn run(spec: &ProcessSpec, path_first: &Path) -> Bytes {
    let mut cmd = Command::new(std::ffi::OsStr::from_bytes(&spec.program));
    cmd.args(spec.args.iter().map(|a| std::ffi::OsStr::from_bytes(a)));
    for (k, v) in &spec.env {
        cmd.env(
            std::ffi::OsStr::from_bytes(k),
            std::ffi::OsStr::from_bytes(v),
        );
    }
    let path = format!(
        "{}:{}",
        path_first.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cmd
        .env("PATH", path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    Bytes::from(out.stdout)
}

fn start(t: &dyn TaskType, params: Bytes) -> (ProcessSpec, Box<dyn tuppence::sniff::TaskFinish>) {
    match t.start(params) {
        TaskPlan::Run { spec, finish } => (spec, finish),
        TaskPlan::Answer(o) => panic!("answered at once: {o:?}"),
    }
}

const FAKE_PING: &str = r#"
for host; do :; done
case $host in
bb.example)
	echo "PING bb.example (10.1.2.3): 56 data bytes"
	echo "64 bytes from 10.1.2.3: seq=0 ttl=64 time=0.038 ms"
	echo "64 bytes from 10.1.2.3: seq=1 ttl=64 time=0.057 ms"
	echo
	echo "--- bb.example ping statistics ---"
	echo "2 packets transmitted, 2 packets received, 0% packet loss"
	;;
iu.example)
	echo "PING iu.example (10.9.8.7) 56(84) bytes of data."
	echo "64 bytes from 10.9.8.7: icmp_seq=1 ttl=64 time=0.038 ms"
	echo "From 10.9.8.1 icmp_seq=2 Destination Host Unreachable"
	echo "64 bytes from 10.9.8.7: icmp_seq=3 ttl=64 time=12 ms"
	echo "rtt min/avg/max/mdev = 0.038/6.0/12.0/6.0 ms"
	;;
v6.example)
	echo "PING v6.example(v6.example (2001:db8::1)) 56 data bytes"
	echo "64 bytes from v6.example (2001:db8::1): icmp_seq=1 ttl=64 time=0.5 ms"
	;;
silent.example)
	echo "PING silent.example (10.0.0.9): 56 data bytes"
	;;
args*)
	echo "PING $host ($(echo "$*" | tr ' ' _)): 56 data bytes"
	;;
*)
	echo "ping: $host: Name or service not known" >&2
	exit 2
	;;
esac
"#;

fn target(family: Family, count: u8, host: &'static str) -> PingTarget {
    PingTarget {
        family,
        count,
        size: 56,
        host: Bytes::from_static(host.as_bytes()),
    }
}

#[test]
fn ping_script_output_parses_for_busybox_and_iputils() {
    if !have_sh() {
        return;
    }
    let dir = Dir::new("sniff-ping");
    let fake = dir.script("fakeping", FAKE_PING);
    let ping = Ping::new(PingConfig {
        ping: Bytes::from(fake.to_str().unwrap().to_string()),
        ..PingConfig::default()
    });
    let req = PingRequest {
        targets: vec![
            target(Family::Any, 2, "bb.example"),
            target(Family::V4, 3, "iu.example"),
            target(Family::V6, 1, "v6.example"),
            target(Family::Any, 2, "nx.example"),
            target(Family::Any, 2, "silent.example"),
            target(Family::V6, 7, "args'quoted $x;`x` example"),
        ],
    };
    let mut params = BytesMut::new();
    req.encode(&mut params).unwrap();
    let (spec, finish) = start(&ping, params.freeze());
    let out = run(&spec, &dir.0);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "10.1.2.3 0:0.038 1:0.057 END\n\
         10.9.8.7 0:0.038 2:12 END\n\
         2001:db8::1 0:0.5 END\n\
         END\n\
         10.0.0.9 END\n\
         -6_-c_7_-s_56_--_args'quoted_$x;`x`_example END\n"
    );
    let replies = req.parse_output(&out).unwrap();
    assert_eq!(
        replies[..5],
        [
            PingReply {
                ip: Bytes::from_static(b"10.1.2.3"),
                rtt_us: vec![Some(38), Some(57)]
            },
            PingReply {
                ip: Bytes::from_static(b"10.9.8.7"),
                rtt_us: vec![Some(38), None, Some(12000)]
            },
            PingReply {
                ip: Bytes::from_static(b"2001:db8::1"),
                rtt_us: vec![Some(500)]
            },
            PingReply::unresolved(),
            PingReply {
                ip: Bytes::from_static(b"10.0.0.9"),
                rtt_us: vec![None, None]
            },
        ]
    );
    assert!(finish.finish(TaskOutput::Complete(out)).ok);
}

#[test]
fn ping_script_with_a_missing_ping_reports_every_host_unresolved() {
    if !have_sh() {
        return;
    }
    let dir = Dir::new("sniff-noping");
    let ping = Ping::new(PingConfig {
        ping: Bytes::from_static(b"/nonexistent/ping"),
        ..PingConfig::default()
    });
    let req = PingRequest {
        targets: vec![target(Family::Any, 1, "a"), target(Family::Any, 1, "b")],
    };
    let mut params = BytesMut::new();
    req.encode(&mut params).unwrap();
    let (spec, _) = start(&ping, params.freeze());
    assert_eq!(&run(&spec, &dir.0)[..], b"END\nEND\n");
}

#[test]
fn nat_script_compares_the_public_address_with_local_ones() {
    if !have_sh() {
        return;
    }
    let dir = Dir::new("sniff-nat");
    dir.script(
        "ip",
        "echo '1: lo: <LOOPBACK,UP> mtu 65536'\n\
         echo '    inet 127.0.0.1/8 scope host lo'\n\
         echo '    inet 192.0.2.10/24 brd 192.0.2.255 scope global eth0'\n\
         echo '    inet6 2001:db8::5/64 scope global'\n",
    );
    dir.script(
        "curl",
        r#"for url; do :; done
case "$*" in
*-4*direct*) echo 192.0.2.10 ;;
*-4*) printf '198.51.100.1\r\n' ;;
*-6*direct*) exit 7 ;;
*-6*) echo 2001:db8::5 ;;
esac
"#,
    );
    for (url, want) in [
        (
            "http://direct.example/",
            NatReply {
                ipv4: NatStatus::Direct,
                ipv6: NatStatus::None,
            },
        ),
        (
            "http://nat.example/",
            NatReply {
                ipv4: NatStatus::Nat,
                ipv6: NatStatus::Direct,
            },
        ),
    ] {
        let nat = Nat::new(NatConfig {
            url: Bytes::from_static(url.as_bytes()),
            ..NatConfig::default()
        });
        let (spec, finish) = start(&nat, Bytes::new());
        let out = run(&spec, &dir.0);
        assert_eq!(NatReply::parse_output(&out), Ok(want), "{url}: {out:?}");
        assert_eq!(
            finish.finish(TaskOutput::Complete(out)),
            Outcome::success(Bytes::copy_from_slice(&want.encode()))
        );
    }
}

/// Makes a CA and a leaf certificate with the real openssl; `None` if that fails.
fn make_chain(dir: &Path) -> Option<(String, String)> {
    let ok = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let made = ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=Test CA",
    ]) && ok(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/O=Example/CN=leaf.example",
    ]) && {
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:www.leaf.example,DNS:leaf.example,IP:192.0.2.1\n",
        )
        .ok()?;
        ok(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "365",
            "-extfile",
            "ext.cnf",
        ])
    };
    if !made {
        return None;
    }
    Some((
        std::fs::read_to_string(dir.join("leaf.pem")).ok()?,
        std::fs::read_to_string(dir.join("ca.pem")).ok()?,
    ))
}

fn openssl_out(dir: &Path, args: &[&str], file: &str) -> String {
    let out = Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(dir.join(file))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cert_script_output_parses_with_real_x509() {
    if !have_sh() {
        return;
    }
    let dir = Dir::new("sniff-cert");
    let Some((leaf, ca)) = make_chain(&dir.0) else {
        println!("SKIP: openssl cannot make test certificates here");
        return;
    };
    // s_client is faked (no network); everything else goes to the real openssl. Two
    // transcripts as openssl 3 prints them: TLS 1.3 has no SSL-Session block before the first
    // ticket (only the "New, …, Cipher is …" line), TLS 1.2 has one.
    let chain = format!(
        "CONNECTED(00000003)\n---\nCertificate chain\n 0 s:CN = leaf.example\n{leaf} 1 s:CN = Test CA\n{ca}---\n\
         SSL handshake has read 2000 bytes\n---\n"
    );
    for (tail, cipher, protocol) in [
        (
            "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384\nServer public key is 2048 bit\n---\n",
            "TLS_AES_256_GCM_SHA384",
            "TLSv1.3",
        ),
        (
            "New, TLSv1.2, Cipher is ECDHE-RSA-AES256-GCM-SHA384\nSSL-Session:\n    \
             Protocol  : TLSv1.2\n    Cipher    : ECDHE-RSA-AES256-GCM-SHA384\n    Session-ID: AB\n---\n",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "TLSv1.2",
        ),
    ] {
        cert_transcript_parses(
            &dir,
            &leaf,
            &ca,
            &format!("{chain}{tail}"),
            cipher,
            protocol,
        );
    }
}

fn cert_transcript_parses(
    dir: &Dir,
    leaf: &str,
    ca: &str,
    transcript: &str,
    cipher: &str,
    protocol: &str,
) {
    std::fs::write(dir.0.join("transcript"), transcript).unwrap();
    let fake = dir.script(
        "fakeopenssl",
        &format!(
            "if [ \"$1\" = s_client ]; then\n\
             \tcase \"$*\" in *down.example*) exit 1 ;; esac\n\
             \tcat '{}'\n\telse exec openssl \"$@\"\nfi\n",
            dir.0.join("transcript").display()
        ),
    );
    let cert = Cert::new(CertConfig {
        openssl: Bytes::from(fake.to_str().unwrap().to_string()),
        ..CertConfig::default()
    });
    let all = |host: &'static str| CertTarget {
        starttls: StartTls::Smtp,
        want_cert: true,
        want_chain: true,
        want_details: true,
        want_params: true,
        port: 25,
        host: Bytes::from_static(host.as_bytes()),
    };
    let req = CertRequest {
        targets: vec![
            all("leaf.example"),
            all("down.example"),
            CertTarget {
                want_cert: false,
                want_chain: false,
                want_details: false,
                want_params: false,
                ..all("leaf.example")
            },
        ],
    };
    let mut params = BytesMut::new();
    req.encode(&mut params).unwrap();
    let (spec, finish) = start(&cert, params.freeze());
    let out = run(&spec, &dir.0);
    let replies = req
        .parse_output(&out)
        .unwrap_or_else(|c| panic!("code {}: {}", c as char, String::from_utf8_lossy(&out)));

    let body = |pem: &str| {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let fingerprint = openssl_out(
        &dir.0,
        &["x509", "-noout", "-fingerprint", "-sha1"],
        "leaf.pem",
    );
    let fingerprint = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "");
    let expiry = openssl_out(&dir.0, &["x509", "-noout", "-enddate"], "leaf.pem");
    let expiry = expiry.trim().trim_start_matches("notAfter=");

    let r = &replies[0];
    let tls = r.tls.as_ref().unwrap();
    assert_eq!(&tls.cipher[..], cipher.as_bytes());
    assert_eq!(&tls.protocol[..], protocol.as_bytes());
    assert_eq!(r.count(), 2);
    assert_eq!(String::from_utf8_lossy(&r.certs[0].value), body(leaf));
    assert_eq!(String::from_utf8_lossy(&r.certs[1].value), body(ca));
    let d = r.certs[0].details.as_ref().unwrap();
    assert_eq!(&d.names[..], b"leaf.example\nwww.leaf.example");
    assert_eq!(String::from_utf8_lossy(&d.expiry), expiry);
    assert_eq!(&r.certs[1].details.as_ref().unwrap().names[..], b"Test CA");

    assert_eq!(replies[1].count(), 0, "connection failed");
    assert_eq!(replies[2].count(), 1);
    assert_eq!(
        String::from_utf8_lossy(&replies[2].certs[0].value),
        fingerprint
    );
    assert!(finish.finish(TaskOutput::Complete(out)).ok);
}
