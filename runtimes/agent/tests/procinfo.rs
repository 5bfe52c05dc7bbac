//! procinfo of real processes.

mod common;

use std::time::Duration;

use common::{eventually, me, run, test_user};
use tuppence_agent::procinfo::field;
use tuppence_agent::{SpawnSpec, User, read_procinfo, spawn_command, status};

fn u32_of(fields: &[(u8, Vec<u8>)], t: u8) -> u32 {
    let (_, v) = fields
        .iter()
        .find(|(ft, _)| *ft == t)
        .expect("field present");
    u32::from_be_bytes(v.as_slice().try_into().expect("4 bytes"))
}

fn bytes_of(fields: &[(u8, Vec<u8>)], t: u8) -> Vec<u8> {
    fields
        .iter()
        .find(|(ft, _)| *ft == t)
        .expect("field present")
        .1
        .clone()
}

fn check_sleep(user: &str) {
    let uid = User::lookup(user.as_bytes()).expect("user");
    let mut child = spawn_command(&SpawnSpec::new(user, "exec sleep 30")).expect("spawn");
    let pid = child.pid();
    let all = u32::MAX;
    assert!(
        eventually(Duration::from_secs(5), || {
            read_procinfo(pid, all)
                .map(|f| {
                    bytes_of(&f, field::STATE) == b"S" && bytes_of(&f, field::COMM) == b"sleep"
                })
                .unwrap_or(false)
        }),
        "sleep never showed up as sleeping"
    );
    std::thread::sleep(Duration::from_millis(100));
    let fields = read_procinfo(pid, all).expect("procinfo");
    let types: Vec<u8> = fields.iter().map(|(t, _)| *t).collect();
    assert_eq!(types, (1..=11).collect::<Vec<u8>>(), "ascending, each once");
    assert_eq!(u32_of(&fields, field::PID), pid);
    assert_eq!(u32_of(&fields, field::PGID), pid, "own process group");
    assert_eq!(bytes_of(&fields, field::STATE), b"S");
    assert_eq!(u32_of(&fields, field::UID), uid.uid());
    assert_eq!(u32_of(&fields, field::GID), uid.gid());
    assert!(u32_of(&fields, field::RSS_KIB) > 0);
    assert!(u32_of(&fields, field::UTIME_MS) < 5_000);
    assert!(u32_of(&fields, field::STIME_MS) < 5_000);
    let elapsed = u32_of(&fields, field::ELAPSED_MS);
    assert!((50..10_000).contains(&elapsed), "elapsed {elapsed} ms");
    assert_eq!(u32_of(&fields, field::THREADS), 1);
    assert_eq!(bytes_of(&fields, field::COMM), b"sleep");

    let some =
        read_procinfo(pid, (1 << field::STATE) | (1 << field::COMM) | (1 << 20)).expect("procinfo");
    assert_eq!(
        some.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [field::STATE, field::COMM]
    );

    child.kill_group(libc::SIGKILL).expect("kill");
    let _ = run(&mut child, b"", Duration::from_secs(10));
    let err = read_procinfo(pid, all).unwrap_err();
    assert_eq!(err.errno(), status::ESRCH);
}

#[test]
fn sleep_as_the_current_user() {
    check_sleep(&me());
}

#[test]
fn sleep_as_the_test_user() {
    let Some(name) = test_user() else { return };
    check_sleep(name);
}
