//! The `P` request: facts about a command's process from `/proc`.
//!
//! Field types (ARCHITECTURE.md, "Link protocol"; bit *n* of the mask asks for type *n*),
//! all big-endian:
//!
//! | type | field | encoding | source |
//! |---|---|---|---|
//! | 1 | pid | u32 | the argument |
//! | 2 | process group | u32 | `/proc/PID/stat` field 5 |
//! | 3 | state | u8, the letter (`R`, `S`, `D`, `Z`, `T`, …) | stat field 3 |
//! | 4 | uid | u32, effective | `/proc/PID/status` `Uid:` |
//! | 5 | gid | u32, effective | `/proc/PID/status` `Gid:` |
//! | 6 | resident set | u32 KiB | stat field 24 × page size |
//! | 7 | user CPU time | u32 ms | stat field 14 |
//! | 8 | system CPU time | u32 ms | stat field 15 |
//! | 9 | elapsed since start | u32 ms | now − stat field 22 |
//! | 10 | threads | u32 | stat field 20 |
//! | 11 | command name | bytes (≤ 15, the kernel's `comm`) | stat field 2 |
//!
//! The effective ids are reported because that is what decides what the process may do (and
//! what `ps` shows). Values that do not fit a u32 saturate. The elapsed time uses
//! `CLOCK_BOOTTIME`, the clock `/proc/uptime` and the start times in `/proc/PID/stat` are
//! measured on, read directly rather than parsing `/proc/uptime` (same value, ns resolution,
//! one file less).
//!
//! `/proc/PID/stat` is parsed from the *last* `)`: the command name is arbitrary bytes and may
//! itself contain spaces and parentheses.

use std::io;

use crate::status;

/// Field type numbers: the core's, so agent and client cannot disagree.
pub use tuppence::wire::field;

/// The highest field type this agent knows.
pub const MAX_FIELD: u8 = field::COMM;

/// A failed procinfo query.
#[derive(Debug, thiserror::Error)]
pub enum ProcInfoError {
    /// The process does not exist (any more).
    #[error("no such process: {0}")]
    Gone(u32),
    /// `/proc` could not be read or parsed.
    #[error("reading /proc/{pid}: {source}")]
    Io {
        /// The process asked about.
        pid: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ProcInfoError {
    /// The status word: ESRCH (3) for a process that is gone.
    pub fn errno(&self) -> u32 {
        match self {
            ProcInfoError::Gone(_) => status::ESRCH,
            ProcInfoError::Io { source, .. } => status::errno_of(source),
        }
    }
}

/// The fields of `/proc/PID/stat` procinfo uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    pub comm: Vec<u8>,
    pub state: u8,
    pub pgrp: u64,
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u64,
    pub starttime: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. `None` when it does not have the expected shape.
pub(crate) fn parse_stat(text: &[u8]) -> Option<Stat> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = text[open + 1..close].to_vec();
    // Fields after the name, numbered as in proc(5): index 0 here is field 3 (state).
    let rest: Vec<&[u8]> = text[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    let field = |n: usize| -> Option<&[u8]> { rest.get(n.checked_sub(3)?).copied() };
    let num = |n: usize| -> Option<u64> {
        let f = field(n)?;
        // rss can be negative in theory (it is signed in the kernel); treat that as 0.
        if f.first() == Some(&b'-') {
            return Some(0);
        }
        std::str::from_utf8(f).ok()?.parse().ok()
    };
    let state = *field(3)?.first()?;
    Some(Stat {
        comm,
        state,
        pgrp: num(5)?,
        utime: num(14)?,
        stime: num(15)?,
        num_threads: num(20)?,
        starttime: num(22)?,
        rss_pages: num(24)?,
    })
}

/// The effective uid and gid from `/proc/PID/status` (`Uid:\treal\teffective\t…`).
fn parse_status_ids(text: &[u8]) -> Option<(u64, u64)> {
    let mut uid = None;
    let mut gid = None;
    for line in text.split(|&b| b == b'\n') {
        let pick = |prefix: &[u8]| -> Option<u64> {
            let rest = line.strip_prefix(prefix)?;
            let mut fields = rest
                .split(|b| b.is_ascii_whitespace())
                .filter(|f| !f.is_empty());
            let _real = fields.next()?;
            std::str::from_utf8(fields.next()?).ok()?.parse().ok()
        };
        if let Some(v) = pick(b"Uid:") {
            uid = Some(v);
        } else if let Some(v) = pick(b"Gid:") {
            gid = Some(v);
        }
        if uid.is_some() && gid.is_some() {
            break;
        }
    }
    Some((uid?, gid?))
}

fn sat32(v: u64) -> [u8; 4] {
    u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes()
}

fn ticks_to_ms(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1000 / u128::from(hz))
        .try_into()
        .unwrap_or(u64::MAX)
}

fn read_proc(pid: u32, file: &str) -> Result<Vec<u8>, ProcInfoError> {
    std::fs::read(format!("/proc/{pid}/{file}")).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) {
            ProcInfoError::Gone(pid)
        } else {
            ProcInfoError::Io { pid, source: e }
        }
    })
}

fn malformed(pid: u32, file: &str) -> ProcInfoError {
    ProcInfoError::Io {
        pid,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/{file}"),
        ),
    }
}

/// Reads the fields the mask asks for, in ascending type order, each once; unknown bits are
/// ignored. Reads `/proc/PID/status` only when uid or gid is asked for.
///
/// pid 0 and a process that is gone give [`ProcInfoError::Gone`] (ESRCH, 3).
pub fn read_procinfo(pid: u32, mask: u32) -> Result<Vec<(u8, Vec<u8>)>, ProcInfoError> {
    let wants = |t: u8| mask & (1u32 << t) != 0;
    if pid == 0 {
        return Err(ProcInfoError::Gone(pid));
    }
    let stat_text = read_proc(pid, "stat")?;
    let stat = parse_stat(&stat_text).ok_or_else(|| malformed(pid, "stat"))?;
    let ids = if wants(field::UID) || wants(field::GID) {
        let text = read_proc(pid, "status")?;
        Some(parse_status_ids(&text).ok_or_else(|| malformed(pid, "status"))?)
    } else {
        None
    };
    let hz = rustix::param::clock_ticks_per_second();
    let mut out = Vec::new();
    for t in 1..=MAX_FIELD {
        if !wants(t) {
            continue;
        }
        let value: Vec<u8> = match t {
            field::PID => pid.to_be_bytes().to_vec(),
            field::PGID => sat32(stat.pgrp).to_vec(),
            field::STATE => vec![stat.state],
            field::UID => sat32(ids.map(|(u, _)| u).unwrap_or(u64::MAX)).to_vec(),
            field::GID => sat32(ids.map(|(_, g)| g).unwrap_or(u64::MAX)).to_vec(),
            field::RSS_KIB => {
                let page = rustix::param::page_size() as u64;
                sat32(stat.rss_pages.saturating_mul(page) / 1024).to_vec()
            }
            field::UTIME_MS => sat32(ticks_to_ms(stat.utime, hz)).to_vec(),
            field::STIME_MS => sat32(ticks_to_ms(stat.stime, hz)).to_vec(),
            field::ELAPSED_MS => {
                let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
                let now_ms = u64::try_from(now.tv_sec).unwrap_or(0) * 1000
                    + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
                sat32(now_ms.saturating_sub(ticks_to_ms(stat.starttime, hz))).to_vec()
            }
            field::THREADS => sat32(stat.num_threads).to_vec(),
            field::COMM => stat.comm.clone(),
            _ => continue,
        };
        out.push((t, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"1234 (we(ir) d)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 5000 8388608 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";

    #[test]
    fn stat_with_parentheses_and_spaces_in_the_name() {
        let st = parse_stat(SAMPLE).expect("parses");
        assert_eq!(st.comm, b"we(ir) d)");
        assert_eq!(st.state, b'S');
        assert_eq!(st.pgrp, 1234);
        assert_eq!(st.utime, 7);
        assert_eq!(st.stime, 3);
        assert_eq!(st.num_threads, 2);
        assert_eq!(st.starttime, 5000);
        assert_eq!(st.rss_pages, 300);
    }

    #[test]
    fn malformed_stat_is_none() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"1 (x) S 1"), None);
        assert_eq!(parse_stat(b"1 )x( S 1 2 3"), None);
    }

    #[test]
    fn status_ids_take_the_effective_column() {
        let text = b"Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t50\t51\t50\t50\n";
        assert_eq!(parse_status_ids(text), Some((1001, 51)));
        assert_eq!(parse_status_ids(b"Name:\tx\n"), None);
    }

    #[test]
    fn self_fields_in_order() {
        let pid = std::process::id();
        let all = read_procinfo(pid, u32::MAX).expect("self");
        let types: Vec<u8> = all.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, (1..=11).collect::<Vec<u8>>());
        assert_eq!(all[0].1, pid.to_be_bytes());
        for (t, v) in &all {
            match *t {
                field::STATE => assert_eq!(v.len(), 1),
                field::COMM => assert!(!v.is_empty()),
                _ => assert_eq!(v.len(), 4),
            }
        }
        let some = read_procinfo(pid, (1 << field::PID) | (1 << field::COMM) | 1 | (1 << 31))
            .expect("self");
        assert_eq!(
            some.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![1, 11]
        );
        assert!(read_procinfo(pid, 0).expect("self").is_empty());
    }

    #[test]
    fn missing_process_is_esrch() {
        let err = read_procinfo(0, 2).unwrap_err();
        assert_eq!(err.errno(), status::ESRCH);
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        let err = read_procinfo(1 << 23, 2).unwrap_err();
        assert_eq!(err.errno(), status::ESRCH);
    }
}
