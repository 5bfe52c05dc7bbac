//! The embedded agent (what the `local` target is) sets its cgroups up only after its
//! first turn has answered the hello (`LinkDaemonConfig::defer_cgroups`): the containment
//! it gives commands must not depend on that order. Its commands' cgroups are made directly
//! in the process's own cgroup (`LinkDaemonConfig::cgroups_in_own`).

mod agent_harness;

use agent_harness::{PATIENCE, Raw};
use bytes::Bytes;
use tuppence::wire::{CommandRequest, Dialect, Hello, Packet};
use tuppence_agent::cgroup::{CgroupTree, own_cgroup_dir};
use tuppence_agent::embedded::EmbeddedAgent;
use tuppence_agent::serve::LinkDaemonConfig;

/// The command's `0::` line of `/proc/self/cgroup`, run through `raw` as `xid`.
fn cgroup_of_a_command(raw: &mut Raw, xid: u16) -> String {
    let packets = raw.frames_until(xid, |p| matches!(p, Packet::Minor(_)));
    let mut out = Vec::new();
    for p in &packets {
        if let Packet::Data { channel: 1, data } = p {
            out.extend_from_slice(data);
        }
    }
    assert!(
        packets.contains(&Packet::Minor(0)),
        "the command failed: {packets:?}"
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in {text:?}"))
        .to_owned()
}

fn command(xid: u16) -> (u16, Packet) {
    let user = tuppence_agent::User::current()
        .expect("the current user has a passwd entry")
        .name()
        .to_vec();
    (
        xid,
        Packet::Command(CommandRequest {
            user: Bytes::from(user),
            command: Bytes::from_static(b"cat /proc/self/cgroup"),
            timeout: 0,
            request_tty: 0,
            reserved: [0, 0],
            env: Vec::new(),
        }),
    )
}

/// A command that arrives in the same read as the hello (before the deferred cgroups are
/// set up) and one after it both run in a cgroup of their own, made by this agent directly
/// in the process's own cgroup, and none of them is left once the agent is gone.
#[test]
fn commands_of_an_embedded_agent_run_in_their_own_cgroups_from_the_first() {
    // Whether this system lets the test process make cgroups at all (root on the host, a
    // writable cgroup2 with cgroup.kill).
    if let Err(e) = CgroupTree::create() {
        eprintln!("skipped: cgroups cannot be used here: {e}");
        return;
    }
    let own = own_cgroup_dir().expect("own cgroup");
    let (agent, ours) = EmbeddedAgent::start(LinkDaemonConfig {
        audit: false,
        ..LinkDaemonConfig::default()
    })
    .expect("start");
    let mut raw = Raw::on(ours, Dialect::V4);
    let (major, minor) = Dialect::V4.version();
    let hello = Packet::Hello(Hello {
        major,
        minor,
        keepalive: 0,
    });
    // The first connection's cid is 1: the command can go in the hello's write.
    let (xid, first) = command(1);
    let mut bytes = hello.to_bytes(Dialect::V4, 0, 0).expect("hello").to_vec();
    bytes.extend_from_slice(&first.to_bytes(Dialect::V4, 1, xid).expect("command"));
    raw.send(&bytes);
    let reply = raw.next_frame(PATIENCE).expect("the hello's answer");
    assert!(matches!(reply.packet, Packet::Hello(_)), "{reply:?}");
    assert_eq!(reply.cid, 1);
    raw.cid = reply.cid;

    let pid = std::process::id();
    let first_cgroup = cgroup_of_a_command(&mut raw, xid);
    let (xid, second) = command(2);
    raw.send_packet(xid, &second);
    let second_cgroup = cgroup_of_a_command(&mut raw, xid);
    // Leaves of this agent directly in the process's own cgroup (`cgroups_in_own`):
    // `tuppence-PID-N-cK`, N the same for both.
    let own_path = own_cgroup_path();
    let mut agent_prefix = None;
    for cgroup in [&first_cgroup, &second_cgroup] {
        let (parent, leaf) = cgroup.rsplit_once('/').expect("a path");
        assert_eq!(
            if parent.is_empty() { "/" } else { parent },
            own_path,
            "not directly in this process's own cgroup: {cgroup}"
        );
        let (prefix, n) = leaf.rsplit_once("-c").expect("a leaf's name");
        assert!(
            prefix.starts_with(&format!("tuppence-{pid}-")) && n.parse::<u32>().is_ok(),
            "not a leaf of this process: {cgroup}"
        );
        assert_eq!(agent_prefix.get_or_insert(prefix.to_owned()), prefix);
    }
    drop(raw);
    drop(agent);
    let prefix = format!("{}-c", agent_prefix.expect("leaves"));
    let left: Vec<String> = std::fs::read_dir(&own)
        .expect("own cgroup")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// This process's cgroup as `/proc/self/cgroup` names it.
fn own_cgroup_path() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .expect("/proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line")
        .to_owned()
}
