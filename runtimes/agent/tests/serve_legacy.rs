//! The C executor's 3.0 dialect against the same agent: it is detected from the client's
//! first bytes and every 3.0 rule holds on that connection, while 4.0 clients are served
//! alongside.

mod agent_harness;

use agent_harness::{PATIENCE, Raw, TempDir, TestAgent, first_line_pid, gone};
use bytes::Bytes;
use tuppence::link::{Command, Outcome, Signal};
use tuppence::wire::{CommandRequest, Dialect, Packet};
use tuppence_blocking::{Error, RunEvent};

#[test]
fn legacy_client_core_operations() {
    let agent = TestAgent::start();
    let s = agent.legacy_session();
    // A 4.0 client on the same agent at the same time.
    let modern = agent.session();
    assert_eq!(modern.info().server_version, (4, 0));

    let out = s
        .output(Command::new("echo out; echo err >&2; exit 3"))
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.outcome, Outcome::Exited(3));

    // stdin
    let run = s.run(Command::new("tr a-z A-Z")).unwrap();
    let data: Vec<u8> = b"legacy stdin\n".repeat(20_000);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            run.write_stdin(&data).unwrap();
            run.close_stdin().unwrap();
        });
    });
    let out = run.collect().unwrap();
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(out.stdout == data.to_ascii_uppercase());

    // inject and extract
    let files = TempDir::new("legacy");
    let path = files.join_str("file.bin");
    let content: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    s.inject("root", &path, 0o640, &content[..], |_| {})
        .unwrap();
    assert!(std::fs::read(&path).unwrap() == content);
    let mut back = Vec::new();
    s.extract("root", &path, &mut back, |_| {}).unwrap();
    assert!(back == content);
    let e = s
        .extract("root", &files.join_str("missing"), Vec::new(), |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::Remote { errno: 2, .. }), "{e}");

    // interrupt: 3.0 has no signal names, it is always KILL
    let run = s.run(Command::new("echo $$; exec sleep 100")).unwrap();
    let mut first = Vec::new();
    while !first.contains(&b'\n') {
        match run.next_timeout(Some(PATIENCE)).unwrap() {
            Some(RunEvent::Stdout(d)) => first.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    let pid = first_line_pid(&first);
    run.interrupt(Signal::TERM).unwrap();
    assert_eq!(run.collect().unwrap().outcome, Outcome::Signaled(9));
    assert!(agent_harness::eventually(
        std::time::Duration::from_secs(2),
        || gone(pid)
    ));

    // the 4.0 client was not disturbed
    let out = modern.output(Command::new("echo modern")).unwrap();
    assert_eq!(out.stdout, b"modern\n");
}

fn command(cmd: &str, tty: bool) -> Packet {
    Packet::Command(CommandRequest {
        user: Bytes::from_static(b"root"),
        command: Bytes::from(cmd.to_owned()),
        timeout: 0,
        request_tty: u32::from(tty),
        reserved: [0, 0],
        env: Vec::new(),
    })
}

/// Packet types (as 3.0 letters) of everything on `xid` up to the terminal `stop`.
fn sequence(raw: &mut Raw, xid: u16, stop: impl Fn(&Packet) -> bool) -> Vec<Packet> {
    raw.frames_until(xid, stop)
}

#[test]
fn legacy_status_sequences_are_the_c_executors() {
    let agent = TestAgent::start();
    let mut raw = Raw::connect_as(&agent.sock, Dialect::Legacy3);
    raw.hello();

    // Command: data, then M 0 and m code; no EOF for channels 1/2.
    raw.send_packet(1, &command("echo hi; exit 2", false));
    raw.send_packet(1, &Packet::Eof { channel: 0 });
    assert_eq!(
        sequence(&mut raw, 1, |p| matches!(p, Packet::Minor(_))),
        vec![
            Packet::Data {
                channel: 1,
                data: Bytes::from_static(b"hi\n")
            },
            Packet::Major(0),
            Packet::Minor(2),
        ]
    );

    // tty: E on channel 2 comes first, as C clients expect.
    raw.send_packet(2, &command("exit 0", true));
    let got = sequence(&mut raw, 2, |p| matches!(p, Packet::Minor(_)));
    assert_eq!(got.first(), Some(&Packet::Eof { channel: 2 }), "{got:?}");
    assert_eq!(got[got.len() - 2..], [Packet::Major(0), Packet::Minor(0)]);

    // Unknown user: M errno, m 0.
    raw.send_packet(
        3,
        &Packet::Command(CommandRequest {
            user: Bytes::from_static(b"no-such-user-tuppence"),
            command: Bytes::from_static(b"true"),
            timeout: 0,
            request_tty: 0,
            reserved: [0, 0],
            env: Vec::new(),
        }),
    );
    assert_eq!(
        sequence(&mut raw, 3, |p| matches!(p, Packet::Minor(_))),
        vec![Packet::Major(2), Packet::Minor(0)]
    );

    // Extract success: data, E on channel 0, m 0, and no M at all.
    let files = TempDir::new("legacy-raw");
    let path = files.join("x.txt");
    std::fs::write(&path, b"hello extract\n").unwrap();
    raw.send_packet(
        4,
        &Packet::Extract {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(path.to_str().unwrap().to_owned()),
        },
    );
    assert_eq!(
        sequence(&mut raw, 4, |p| matches!(p, Packet::Minor(_))),
        vec![
            Packet::Data {
                channel: 0,
                data: Bytes::from_static(b"hello extract\n")
            },
            Packet::Eof { channel: 0 },
            Packet::Minor(0),
        ]
    );
    // Extract failure: M errno alone.
    raw.send_packet(
        5,
        &Packet::Extract {
            user: Bytes::from_static(b"root"),
            path: Bytes::from_static(b"/nonexistent/file"),
        },
    );
    assert_eq!(sequence(&mut raw, 5, |_| true), vec![Packet::Major(2)]);

    // Inject: M 0 go-ahead, data, E, then m 0.
    let target = files.join("in.txt");
    raw.send_packet(
        6,
        &Packet::Inject {
            user: Bytes::from_static(b"root"),
            path: Bytes::from(target.to_str().unwrap().to_owned()),
            mode: 0o600,
        },
    );
    assert_eq!(sequence(&mut raw, 6, |_| true), vec![Packet::Major(0)]);
    raw.send_packet(
        6,
        &Packet::Data {
            channel: 0,
            data: Bytes::from_static(b"injected\n"),
        },
    );
    raw.send_packet(6, &Packet::Eof { channel: 0 });
    assert_eq!(sequence(&mut raw, 6, |_| true), vec![Packet::Minor(0)]);
    assert_eq!(std::fs::read(&target).unwrap(), b"injected\n");

    // Interrupt without payload: KILL, reported as M 14, m 9.
    raw.send_packet(7, &command("exec sleep 100", false));
    raw.send_packet(
        7,
        &Packet::Interrupt {
            signal: Bytes::new(),
        },
    );
    assert_eq!(
        sequence(&mut raw, 7, |p| matches!(p, Packet::Minor(_))),
        vec![Packet::Major(14), Packet::Minor(9)]
    );
}
