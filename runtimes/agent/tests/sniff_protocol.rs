//! The sniff agent over a real unix socket with real processes: answer order, aborts,
//! cancellation, concurrency, limits, malformed input, and the life of task processes.

mod sniff_support;

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::sniff::{Event, TaskId, TaskKind, TaskResult};
use tuppence_agent::sniff::{SniffDaemonConfig, serve};
use tuppence_blocking::sniff::{SniffClient, SniffRequest};
use tuppence_transport::Transport;

use sniff_support::*;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn nop_answers_ok_with_no_data() {
    let server = Server::start();
    let mut c = server.raw();
    c.send(0x0102_0304, b'N', b"ignored params");
    c.expect(0x0102_0304, b'O', b"");
}

#[test]
fn unknown_type_answers_u_and_the_running_task_still_answers() {
    let server = Server::start();
    let mut c = server.raw();
    c.send(1, b's', b"sleep 0.3; echo done");
    c.send(1, b'Z', b"");
    c.expect(1, b'U', b"");
    c.expect(1, b'O', b"done\n");
}

#[test]
fn a_second_request_under_a_running_id_aborts_the_first_and_kills_its_group() {
    let server = Server::start();
    let mut c = server.raw();
    // A shell with a child (`sleep` in the background, then `wait`), so the group has more
    // than the leader.
    let (script, pidfile) = pid_script(&server.dir, "sleep 30 & wait");
    c.send(2, b's', script.as_bytes());
    let pid = read_pid(&pidfile);
    let (_, pgrp, session) = proc_stat(pid).expect("the task runs");
    assert_eq!((pgrp, session), (pid, pid), "own session and process group");
    wait_until(LIMIT, "the background sleep", || {
        live_group_members(pid).len() >= 2
    });

    c.send(2, b's', b"echo second");
    c.expect(2, b'A', b"");
    c.expect(2, b'O', b"second\n");
    assert_group_gone(pid);
}

#[test]
fn nop_cancels_a_running_task() {
    let server = Server::start();
    let mut client = SniffClient::connect(&server.target).unwrap();
    let id = TaskId::from(3);
    let (script, pidfile) = pid_script(&server.dir, "exec sleep 30");
    client
        .send(id, &SniffRequest::raw(b's', Bytes::from(script)))
        .unwrap();
    let pid = read_pid(&pidfile);
    let started = Instant::now();
    client.send(id, &SniffRequest::nop()).unwrap();
    assert_eq!(
        client.next_event(LIMIT).unwrap(),
        Event::Aborted {
            id,
            task: TaskKind::Other(b's')
        }
    );
    assert_eq!(
        client.next_event(LIMIT).unwrap(),
        Event::Finished {
            id,
            result: TaskResult::Nop
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_group_gone(pid);
}

#[test]
fn a_hundred_tasks_run_at_once() {
    let server = Server::start();
    let mut client = SniffClient::connect(&server.target).unwrap();
    let started = Instant::now();
    for n in 0..100u32 {
        let script = format!("sleep 1; echo {n}");
        client
            .send(
                TaskId::from(n),
                &SniffRequest::raw(b's', Bytes::from(script)),
            )
            .unwrap();
    }
    let mut seen = HashSet::new();
    while seen.len() < 100 {
        match client.next_event(LIMIT).unwrap() {
            Event::Finished {
                id,
                result: TaskResult::Other(out),
            } => {
                assert_eq!(out, Bytes::from(format!("{}\n", id.get())));
                assert!(seen.insert(id.get()), "{id} answered twice");
            }
            other => panic!("{other:?}"),
        }
    }
    // One after the other this would take 100 s.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn output_over_the_cap_is_l_and_the_task_is_killed() {
    let server = Server::start();
    let mut c = server.raw();
    // Writes 5000 bytes, then would sleep: the cap (1000) must stop it, not its end.
    let (script, pidfile) = pid_script(&server.dir, "head -c 5000 /dev/zero; exec sleep 30");
    c.send(4, b'l', script.as_bytes());
    c.expect(4, b'F', b"L");
    assert_group_gone(read_pid(&pidfile));
    // Exactly at the cap is fine.
    c.send(5, b'l', b"head -c 1000 /dev/zero");
    let a = c.answer(LIMIT).unwrap();
    assert_eq!((a.status.byte(), a.data.len()), (b'O', 1000));
}

#[test]
fn a_task_past_its_timeout_is_t_and_killed() {
    let server = Server::start();
    let mut c = server.raw();
    let started = Instant::now();
    let (script, pidfile) = pid_script(&server.dir, "sleep 30 & wait");
    c.send(6, b't', script.as_bytes());
    c.expect(6, b'F', b"T");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_group_gone(read_pid(&pidfile));
}

#[test]
fn a_program_that_cannot_start_fails_at_once() {
    let server = Server::start();
    let mut c = server.raw();
    c.send(7, b'x', b"true");
    c.expect(7, b'F', b"F");
    // The connection goes on.
    c.send(8, b'N', b"");
    c.expect(8, b'O', b"");
}

#[test]
fn the_task_environment_is_the_agents_plus_the_specs_and_signals_are_reset() {
    let server = Server::start();
    let mut c = server.raw();
    // stdin is /dev/null, SIGPIPE is at its default (a test harness may ignore it), the
    // signal mask is empty, and the spec's variable is set.
    c.send(
        9,
        b's',
        b"read x; echo \"read=$? test=$SNIFF_TEST\"; \
          grep -E '^Sig(Blk|Ign)' /proc/self/status",
    );
    c.expect(
        9,
        b'O',
        b"read=1 test=1\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
    );
}

#[test]
fn a_short_message_is_dropped_and_the_connection_goes_on() {
    let server = Server::start();
    let mut c = server.raw();
    c.send_bytes(b"\x00\x00\x00\x02ab");
    c.send(10, b'N', b"");
    c.expect(10, b'O', b"");
}

#[test]
fn an_over_long_frame_closes_only_that_connection() {
    let server = Server::start();
    let mut bad = server.raw();
    bad.send(11, b'N', b"");
    bad.send_bytes(b"\xff\xff\xff\xff");
    bad.expect(11, b'O', b"");
    assert!(bad.answer(LIMIT).is_none(), "the agent closes the stream");

    let mut fresh = server.raw();
    fresh.send(12, b'N', b"");
    fresh.expect(12, b'O', b"");
}

#[test]
fn closing_the_connection_kills_its_tasks() {
    let server = Server::start();
    let mut c = server.raw();
    let (script, pidfile) = pid_script(&server.dir, "sleep 30 & wait");
    c.send(13, b's', script.as_bytes());
    let pid = read_pid(&pidfile);
    drop(c);
    assert_group_gone(pid);
}

#[test]
fn clients_with_the_same_ids_do_not_disturb_each_other() {
    let server = Server::start();
    let mut a = server.raw();
    let mut b = server.raw();
    a.send(1, b's', b"sleep 0.3; echo a");
    b.send(1, b's', b"echo b");
    b.expect(1, b'O', b"b\n");
    a.expect(1, b'O', b"a\n");
}

#[test]
fn serve_runs_one_stream_until_the_peer_closes() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let agent = std::thread::spawn(move || {
        serve(
            test_agent(),
            Transport::Unix(theirs),
            &SniffDaemonConfig::default(),
        )
    });
    let mut client = SniffClient::new(Transport::Unix(ours)).unwrap();
    let id = TaskId::from(42);
    client
        .send(id, &SniffRequest::raw(b's', Bytes::from_static(b"echo hi")))
        .unwrap();
    assert_eq!(
        client.wait_for(id, LIMIT).unwrap(),
        TaskResult::Other(Bytes::from_static(b"hi\n"))
    );
    client
        .send(
            TaskId::from(43),
            &SniffRequest::raw(b's', Bytes::from_static(b"sleep 30")),
        )
        .unwrap();
    drop(client);
    let stats = agent.join().unwrap().expect("the peer closed cleanly");
    assert_eq!(stats.answers, 1);
    assert_eq!(stats.requests, 2);
}
