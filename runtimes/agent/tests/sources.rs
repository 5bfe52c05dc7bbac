//! Event sources against real files and the real kernel log.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::wait_readable;
use tuppence_agent::sources::{
    AuditEvent, AuditOutcome, AuditTrail, CommandEnd, EventSource, FileFollow, Kmsg, MAX_LINE,
    ReadAs, SourceError, open_source,
};
use tuppence_agent::status;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("tuppence-agent-src-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("mkdir");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn append(path: &std::path::Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(data).expect("append");
}

fn lines(src: &mut dyn EventSource) -> Vec<String> {
    let batch = src.read_new(1000).expect("read");
    assert!(batch.drained);
    batch
        .lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

#[test]
fn file_follow_sees_only_new_lines() {
    let dir = Scratch::new("follow");
    let path = dir.0.join("log");
    fs::write(&path, b"old line\n").expect("seed");
    let mut f = FileFollow::open(&path).expect("open");
    assert_eq!(f.poll_interval(), Some(Duration::from_millis(200)));
    assert!(f.poll_fd().is_none());
    assert!(
        lines(&mut f).is_empty(),
        "lines from before the start are not events"
    );

    append(&path, b"a\nb");
    assert_eq!(lines(&mut f), ["a\n"], "partial line held back");
    append(&path, b"c\n");
    assert_eq!(lines(&mut f), ["bc\n"]);
    assert!(lines(&mut f).is_empty());

    // Batches stop at max_lines and say so.
    append(&path, b"1\n2\n3\n4\n5\n");
    let batch = f.read_new(3).expect("read");
    assert_eq!(batch.lines.len(), 3);
    assert!(!batch.drained);
    let batch = f.flush(3).expect("flush");
    assert_eq!(batch.lines, [Bytes::from("4\n"), Bytes::from("5\n")]);
    assert!(batch.drained);
    assert_eq!(f.dropped(), 0);
}

#[test]
fn file_follow_survives_truncation_and_rotation() {
    let dir = Scratch::new("rotate");
    let path = dir.0.join("log");
    fs::write(&path, b"").expect("seed");
    let mut f = FileFollow::open(&path).expect("open");
    append(&path, b"first line, rather long\n");
    assert_eq!(lines(&mut f), ["first line, rather long\n"]);

    // Truncation (copytruncate, "> log"): start again from the top.
    fs::write(&path, b"short\n").expect("truncate");
    assert_eq!(lines(&mut f), ["short\n"]);

    // Rotation: the old file gets one more line after the rename, then a new file appears.
    let mut old_writer = OpenOptions::new().append(true).open(&path).expect("writer");
    old_writer.write_all(b"partial").expect("write");
    fs::rename(&path, dir.0.join("log.1")).expect("rotate");
    old_writer.write_all(b" done\nlast old\n").expect("write");
    assert_eq!(
        lines(&mut f),
        ["partial done\n", "last old\n"],
        "no successor yet"
    );
    fs::write(&path, b"new 1\n").expect("new file");
    old_writer.write_all(b"straggler").expect("write");
    assert_eq!(
        lines(&mut f),
        ["straggler\n", "new 1\n"],
        "old file drained first"
    );
    append(&path, b"new 2\n");
    assert_eq!(lines(&mut f), ["new 2\n"]);

    // Deleted, then recreated.
    fs::remove_file(&path).expect("rm");
    assert!(lines(&mut f).is_empty());
    fs::write(&path, b"again\n").expect("recreate");
    assert_eq!(lines(&mut f), ["again\n"]);
}

#[test]
fn file_follow_edge_cases() {
    let dir = Scratch::new("edge");
    // Not there yet: everything in it is new once it appears.
    let later = dir.0.join("later");
    let mut f = FileFollow::open(&later).expect("open missing");
    assert!(lines(&mut f).is_empty());
    fs::write(&later, b"x\ny\n").expect("create");
    assert_eq!(lines(&mut f), ["x\n", "y\n"]);

    // Very long lines come in MAX_LINE pieces.
    append(&later, &vec![b'z'; MAX_LINE + 10]);
    append(&later, b"\n");
    let got = f.read_new(10).expect("read").lines;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].len(), MAX_LINE + 1);
    assert_eq!(got[1].len(), 11);
    assert!(got.iter().all(|l| l.ends_with(b"\n")));

    let err = FileFollow::open(&dir.0).unwrap_err();
    assert_eq!(err.errno(), status::EISDIR);
}

#[test]
fn audit_trail_cursors_and_bound() {
    let trail = AuditTrail::new(4);
    let mut a = trail.subscribe();
    assert!(!a.has_pending());
    trail.push(&AuditEvent::Connect {
        cid: 1,
        peer: "unix",
    });
    trail.push(&AuditEvent::CommandStart {
        cid: 1,
        xid: 1,
        pid: 100,
        user: b"root",
        command: b"true",
        tty: false,
    });
    trail.push(&AuditEvent::CommandEnd {
        cid: 1,
        xid: 1,
        pid: 100,
        end: CommandEnd::Exited(0),
        cut: None,
    });
    let mut b = trail.subscribe();
    assert!(a.has_pending());
    assert!(!b.has_pending());
    let got = lines(&mut a);
    assert_eq!(got.len(), 3);
    assert!(
        got[0].contains("agent: cid=1 connect peer=\"unix\""),
        "{got:?}"
    );
    assert!(
        got[1].contains("run pid=100 user=\"root\" tty=no cmd=\"true\""),
        "{got:?}"
    );
    assert!(got[2].ends_with("end pid=100 exit code=0\n"), "{got:?}");
    assert!(got.iter().all(|l| l.starts_with('[') && l.ends_with('\n')));
    assert!(
        lines(&mut b).is_empty(),
        "a new subscriber starts at the end"
    );

    // Six more records into a ring of four: `a` lost two of them.
    for i in 0..6 {
        trail.push(&AuditEvent::Inject {
            cid: 1,
            xid: 2 + i,
            user: b"root",
            path: b"/tmp/f",
            mode: 0o644,
            bytes: 10,
            outcome: AuditOutcome::Status(0),
        });
    }
    assert_eq!(trail.len(), 4);
    let batch = a.read_new(2).expect("read");
    assert_eq!(batch.lines[0], Bytes::from("[tuppence: 2 lines dropped]\n"));
    assert_eq!(batch.lines.len(), 3);
    assert!(!batch.drained);
    assert_eq!(a.dropped(), 2);
    let rest = lines(&mut a);
    assert_eq!(rest.len(), 2);
    assert!(
        rest[1].contains("xid=7 inject user=\"root\" path=\"/tmp/f\" mode=0644 bytes=10 status=0")
    );
    assert!(!a.has_pending());
    // `b` too, independently.
    let got = lines(&mut b);
    assert_eq!(got.len(), 5);
    assert_eq!(b.dropped(), 2);
}

#[test]
fn kmsg_reads_new_records() {
    let mut k = match Kmsg::open() {
        Ok(k) => k,
        Err(e) => {
            println!("SKIPPED: /dev/kmsg not readable here: {e}");
            return;
        }
    };
    assert!(k.poll_fd().is_some());
    let marker = format!(
        "tuppence-agent-test-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    );
    let written = OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut w| w.write_all(format!("<6>{marker}\n").as_bytes()));
    if let Err(e) = written {
        println!("SKIPPED (partly): cannot write to /dev/kmsg: {e}");
        let _ = k.read_new(100).expect("read");
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(std::time::Instant::now() < deadline, "marker never arrived");
        let _ = wait_readable(k.poll_fd().expect("fd"), Duration::from_millis(200));
        let batch = k.read_new(100).expect("read");
        if let Some(line) = batch
            .lines
            .iter()
            .find(|l| l.windows(marker.len()).any(|w| w == marker.as_bytes()))
        {
            let text = String::from_utf8_lossy(line);
            assert!(text.starts_with('['), "{text}");
            assert!(text.ends_with(&format!("] {marker}\n")), "{text}");
            break;
        }
    }
}

#[test]
fn sources_by_name() {
    let trail = AuditTrail::default();
    let mut agent = open_source(b"agent", &trail, &ReadAs::Agent).expect("agent");
    trail.push(&AuditEvent::Disconnect { cid: 9 });
    assert!(agent.read_new(10).expect("read").lines[0].ends_with(b"agent: cid=9 disconnect\n"));
    let dir = Scratch::new("named");
    let path = dir.0.join("f");
    let mut name = b"file:".to_vec();
    name.extend_from_slice(path.to_string_lossy().as_bytes());
    let mut file = open_source(&name, &trail, &ReadAs::Agent).expect("file");
    append(&path, b"hi\n");
    assert_eq!(
        file.read_new(10).expect("read").lines,
        [Bytes::from("hi\n")]
    );
    for bad in [&b"nope"[..], b"file:", b""] {
        let err = open_source(bad, &trail, &ReadAs::Agent)
            .err()
            .expect("unknown");
        assert!(matches!(err, SourceError::Unknown(_)));
        assert_eq!(err.errno(), status::ENOENT);
    }
    match open_source(b"kmsg", &trail, &ReadAs::Agent) {
        Ok(k) => assert!(k.poll_fd().is_some()),
        Err(e) => println!("SKIPPED: kmsg by name: {e}"),
    }
}
