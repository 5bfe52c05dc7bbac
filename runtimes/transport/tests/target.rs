//! Target syntax: every form parses, prints canonically and parses back; every error is typed
//! and says what was expected.

mod common;

use std::path::PathBuf;

use common::{err, parse};
use tuppence_transport::{Dialect, Endpoint, ParseTargetError, Target, TransportError};

/// `(input, expected endpoint, canonical display)` for every form.
fn forms() -> Vec<(&'static str, Endpoint, &'static str)> {
    vec![
        (
            "virtio:/run/twopence/sut.sock",
            Endpoint::Virtio {
                path: "/run/twopence/sut.sock".into(),
            },
            "virtio:/run/twopence/sut.sock",
        ),
        (
            "serial:/dev/ttyS1",
            Endpoint::Serial {
                device: "/dev/ttyS1".into(),
                baud: 115_200,
            },
            "serial:/dev/ttyS1@115200",
        ),
        (
            "serial:/dev/ttyUSB0@9600",
            Endpoint::Serial {
                device: "/dev/ttyUSB0".into(),
                baud: 9600,
            },
            "serial:/dev/ttyUSB0@9600",
        ),
        (
            // An '@' inside a directory name belongs to the path.
            "serial:/dev/by@id/tty",
            Endpoint::Serial {
                device: "/dev/by@id/tty".into(),
                baud: 115_200,
            },
            "serial:/dev/by@id/tty@115200",
        ),
        (
            "serial:/dev/a@b@57600",
            Endpoint::Serial {
                device: "/dev/a@b".into(),
                baud: 57600,
            },
            "serial:/dev/a@b@57600",
        ),
        (
            "vsock:3:5000",
            Endpoint::Vsock { cid: 3, port: 5000 },
            "vsock:3:5000",
        ),
        (
            "vsock:host:1",
            Endpoint::Vsock { cid: 2, port: 1 },
            "vsock:2:1",
        ),
        (
            "vsock:local:4294967295",
            Endpoint::Vsock {
                cid: 1,
                port: u32::MAX,
            },
            "vsock:1:4294967295",
        ),
        (
            "vsock:hypervisor:7",
            Endpoint::Vsock { cid: 0, port: 7 },
            "vsock:0:7",
        ),
        (
            "vsock:any:5000",
            Endpoint::Vsock {
                cid: u32::MAX,
                port: 5000,
            },
            "vsock:any:5000",
        ),
        (
            "vsock:4294967295:1",
            Endpoint::Vsock {
                cid: u32::MAX,
                port: 1,
            },
            "vsock:any:1",
        ),
        (
            "unix:/run/tuppence.sock",
            Endpoint::Unix {
                path: "/run/tuppence.sock".into(),
            },
            "unix:/run/tuppence.sock",
        ),
        (
            "unix:relative/sock:with:colons",
            Endpoint::Unix {
                path: "relative/sock:with:colons".into(),
            },
            "unix:relative/sock:with:colons",
        ),
        (
            "tcp:sut.example:64123",
            Endpoint::Tcp {
                host: "sut.example".into(),
                port: 64123,
            },
            "tcp:sut.example:64123",
        ),
        (
            "tcp:127.0.0.1:0",
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 0,
            },
            "tcp:127.0.0.1:0",
        ),
        (
            "tcp:[::1]:65535",
            Endpoint::Tcp {
                host: "::1".into(),
                port: 65535,
            },
            "tcp:[::1]:65535",
        ),
        (
            "tcp:[fe80::1%eth0]:22",
            Endpoint::Tcp {
                host: "fe80::1%eth0".into(),
                port: 22,
            },
            "tcp:[fe80::1%eth0]:22",
        ),
        ("local", Endpoint::Local, "local"),
    ]
}

#[test]
fn every_form_parses_displays_and_round_trips_in_both_dialects() {
    for (input, endpoint, canonical) in forms() {
        for (prefix, dialect) in [("", Dialect::V4), ("legacy+", Dialect::Legacy3)] {
            let text = format!("{prefix}{input}");
            let t = parse(&text);
            assert_eq!(t.dialect, dialect, "{text}");
            assert_eq!(t.endpoint, endpoint, "{text}");
            let shown = t.to_string();
            assert_eq!(shown, format!("{prefix}{canonical}"), "{text}");
            assert_eq!(parse(&shown), t, "{text} -> {shown}");
            assert_eq!(t.transport_name(), input.split(':').next().unwrap_or(""));
        }
    }
}

#[test]
fn constructed_targets_round_trip() {
    let t = Target::new(Endpoint::Serial {
        device: PathBuf::from("/dev/ttyS0"),
        baud: 1,
    })
    .with_dialect(Dialect::Legacy3);
    assert_eq!(t.to_string(), "legacy+serial:/dev/ttyS0@1");
    assert_eq!(parse(&t.to_string()), t);
    let t = Target::new(Endpoint::Tcp {
        host: "2001:db8::7".into(),
        port: 80,
    });
    assert_eq!(t.to_string(), "tcp:[2001:db8::7]:80");
    assert_eq!(parse(&t.to_string()), t);
}

#[test]
fn errors_are_typed_and_say_what_was_expected() {
    use ParseTargetError as E;
    let cases: Vec<(&str, E)> = vec![
        ("", E::Empty),
        ("legacy+", E::Empty),
        ("foo:bar", E::UnknownTransport("foo".into())),
        ("foo", E::UnknownTransport("foo".into())),
        ("Unix:/x", E::UnknownTransport("Unix".into())),
        ("legacy+telnet:host", E::UnknownTransport("telnet".into())),
        (
            "legacy+legacy+local",
            E::UnknownTransport("legacy+local".into()),
        ),
        (
            "unix",
            E::MissingPath {
                transport: "unix",
                usage: "unix:PATH",
            },
        ),
        (
            "unix:",
            E::MissingPath {
                transport: "unix",
                usage: "unix:PATH",
            },
        ),
        (
            "virtio:",
            E::MissingPath {
                transport: "virtio",
                usage: "virtio:PATH",
            },
        ),
        (
            "serial:",
            E::MissingPath {
                transport: "serial",
                usage: "serial:DEVICE[@BAUD]",
            },
        ),
        (
            "serial:@9600",
            E::MissingPath {
                transport: "serial",
                usage: "serial:DEVICE[@BAUD]",
            },
        ),
        ("unix:/a\0b", E::NulInPath { transport: "unix" }),
        ("serial:/dev/ttyS1@", E::BadBaud(String::new())),
        ("serial:/dev/ttyS1@fast", E::BadBaud("fast".into())),
        ("serial:/dev/ttyS1@0", E::BadBaud("0".into())),
        ("serial:/dev/ttyS1@+9600", E::BadBaud("+9600".into())),
        ("serial:/dev/ttyS1@-1", E::BadBaud("-1".into())),
        (
            "serial:/dev/ttyS1@4294967296",
            E::BadBaud("4294967296".into()),
        ),
        (
            "vsock",
            E::MissingAddress {
                transport: "vsock",
                usage: "vsock:CID:PORT",
            },
        ),
        (
            "vsock:3",
            E::MissingPort {
                transport: "vsock",
                usage: "vsock:CID:PORT",
            },
        ),
        (
            "vsock:3:",
            E::MissingPort {
                transport: "vsock",
                usage: "vsock:CID:PORT",
            },
        ),
        ("vsock::5", E::BadCid(String::new())),
        ("vsock:guest:5", E::BadCid("guest".into())),
        ("vsock:4294967296:5", E::BadCid("4294967296".into())),
        (
            "vsock:3:x",
            E::BadPort {
                transport: "vsock",
                value: "x".into(),
                max: u32::MAX,
            },
        ),
        (
            "vsock:3:4294967296",
            E::BadPort {
                transport: "vsock",
                value: "4294967296".into(),
                max: u32::MAX,
            },
        ),
        (
            "vsock:3:5:6",
            E::BadPort {
                transport: "vsock",
                value: "5:6".into(),
                max: u32::MAX,
            },
        ),
        (
            "tcp",
            E::MissingAddress {
                transport: "tcp",
                usage: "tcp:HOST:PORT",
            },
        ),
        (
            "tcp:",
            E::MissingAddress {
                transport: "tcp",
                usage: "tcp:HOST:PORT",
            },
        ),
        (
            "tcp:host",
            E::MissingPort {
                transport: "tcp",
                usage: "tcp:HOST:PORT",
            },
        ),
        (
            "tcp:host:",
            E::MissingPort {
                transport: "tcp",
                usage: "tcp:HOST:PORT",
            },
        ),
        (
            "tcp:[::1]",
            E::MissingPort {
                transport: "tcp",
                usage: "tcp:[IPV6]:PORT",
            },
        ),
        ("tcp::80", E::MissingHost),
        ("tcp:[]:80", E::MissingHost),
        (
            "tcp:host:65536",
            E::BadPort {
                transport: "tcp",
                value: "65536".into(),
                max: 65535,
            },
        ),
        (
            "tcp:host:http",
            E::BadPort {
                transport: "tcp",
                value: "http".into(),
                max: 65535,
            },
        ),
        (
            "tcp:host:-1",
            E::BadPort {
                transport: "tcp",
                value: "-1".into(),
                max: 65535,
            },
        ),
        ("tcp:::1:80", E::UnbracketedIpv6("::1:80".into())),
        ("tcp:fe80::1:80", E::UnbracketedIpv6("fe80::1:80".into())),
        ("tcp:[::1:80", E::BadHost("[::1:80".into())),
        ("tcp:[::1]x80", E::BadHost("[::1]x80".into())),
        ("tcp:[host]:80", E::BadHost("host".into())),
        ("tcp:a b:80", E::BadHost("a b".into())),
        ("tcp:a/b:80", E::BadHost("a/b".into())),
        ("local:", E::LocalArgument(String::new())),
        ("local:x", E::LocalArgument("x".into())),
    ];
    for (input, expected) in cases {
        assert_eq!(err(input), expected, "{input:?}");
    }
}

#[test]
fn error_messages_name_the_expected_form() {
    let msg = |s: &str| err(s).to_string();
    assert_eq!(
        msg("foo:bar"),
        r#"unknown transport "foo" (expected virtio, serial, vsock, unix, tcp, local, exec, ssh or chroot)"#
    );
    assert!(msg("serial:/dev/ttyS1@fast").contains(r#"bad baud rate "fast""#));
    assert!(msg("serial:/dev/ttyS1@fast").contains("serial:/dev/ttyS1@115200"));
    assert!(msg("tcp:h:99999").contains("bad tcp port \"99999\""));
    assert!(msg("tcp:h:99999").contains("0 to 65535"));
    assert!(msg("unix:").contains("missing path"));
    assert!(msg("unix:").contains("unix:PATH"));
    assert!(msg("tcp:::1:80").contains("tcp:[ADDRESS]:PORT"));
    assert!(msg("vsock:x:1").contains("any, hypervisor, local, host"));
    assert!(msg("").contains("vsock:CID:PORT"));
}

#[test]
fn arbitrary_input_never_panics() {
    // A cheap deterministic fuzz over the grammar's alphabet.
    let alphabet: &[u8] = b"legacy+:virtioserialvsockunixtcplocal@[]/0123456789x %\0";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 24) as usize;
        let mut s = Vec::with_capacity(len);
        let mut x = state;
        for _ in 0..len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push(alphabet[((x >> 33) as usize) % alphabet.len()]);
        }
        let s = String::from_utf8_lossy(&s).into_owned();
        if let Ok(t) = s.parse::<Target>() {
            assert_eq!(parse(&t.to_string()), t, "{s:?}");
        }
    }
}

#[test]
fn local_is_not_connectable_or_listenable() {
    let t = parse("legacy+local");
    match t.connect() {
        Err(TransportError::Local { action }) => assert_eq!(action, "connect"),
        other => panic!("expected a Local error, got {other:?}"),
    }
    let l = tuppence_transport::Listener::bind(&t, &Default::default());
    assert!(matches!(l, Err(TransportError::Local { .. })));
}
