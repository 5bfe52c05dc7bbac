//! Agent memory per idle connection after a transfer: many connections to ONE agent (a
//! controller's sessions to a guest), each injects a file once and then waits. The agent
//! must not keep a connection's bulk receive regions (256 KiB each) once its last answer
//! has left: before that was fixed, 60 such connections held 50 MB.

use std::path::Path;
use std::time::Duration;

use crate::plan::Plan;
use crate::procs::Helper;
use crate::stats::{Row, Target};
use crate::{mib, progress};

/// Fresh agent; `plan.idle_conns` blocking sessions; one 1 MiB inject each into `dir`;
/// VmRSS before the sessions, with them idle, and after the injects (all idle again).
pub fn agent_idle_after_transfers(plan: &Plan, dir: &Path) -> Row {
    let agent = Helper::start("agent", dir);
    let n = plan.idle_conns;
    let base = agent.status_kib("VmRSS");
    let sessions: Vec<tuppence_blocking::Session> = (0..n)
        .map(|_| {
            tuppence_blocking::Session::new(
                crate::clients::connect_unix(&agent.sock),
                tuppence::link::ClientConfig::default(),
                Duration::from_secs(10),
            )
            .expect("session")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let idle = agent.status_kib("VmRSS");
    let data = vec![0x5au8; 1 << 20];
    let user = crate::clients::me();
    for (i, s) in sessions.iter().enumerate() {
        let path = dir.join(format!("idle-{i}"));
        let sent = s
            .inject(&user, &path.to_string_lossy(), 0o600, &data[..], |_| {})
            .expect("inject");
        assert_eq!(sent, data.len() as u64);
        let _ = std::fs::remove_file(&path);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = agent.status_kib("VmRSS");
    let per = |kib: u64| kib.saturating_sub(base) as f64 / n as f64;
    progress(format!(
        "{n} connections to one agent: VmRSS {base} KiB, {idle} KiB idle ({:.1} KiB each), {after} KiB after a 1 MiB inject each ({:.1} KiB each), {:.1} MiB in all",
        per(idle),
        per(after),
        mib(after)
    ));
    drop(sessions);
    Row {
        figure: format!(
            "agent memory per idle connection after a 1 MiB inject each, {n} connections"
        ),
        value: format!(
            "{:.1} KiB (VmRSS {base} → {after} KiB; {:.1} KiB each before the injects)",
            per(after),
            per(idle)
        ),
        reference: "—".into(),
        judged: per(after),
        judged_text: format!("{:.1} KiB", per(after)),
        guarded: None,
        target: Target::AtMost(64.0),
        unit: " KiB",
    }
}
