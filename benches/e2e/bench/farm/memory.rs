//! Client memory per session, measured in a fresh process of its own (the `farm-mem` role).

use super::*;

const FLAVOUR_ENV: &str = "TUPPENCE_E2E_FARM_FLAVOUR";
const COUNT_ENV: &str = "TUPPENCE_E2E_FARM_SESSIONS";
const FILE_ENV: &str = "TUPPENCE_E2E_FARM_FILE";

/// The `farm-mem` role: opens one session, reads VmRSS, opens N more (hello done, idle),
/// reads VmRSS again and prints both (KiB). `socks` is the agents' sockets joined by ':'.
pub fn memory_role(socks: &Path) -> ! {
    let socks: Vec<PathBuf> = socks
        .to_str()
        .expect("utf-8 paths")
        .split(':')
        .map(PathBuf::from)
        .collect();
    let n: usize = std::env::var(COUNT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("session count");
    let me = std::process::id();
    let rss = || procs::status_kib(me, "VmRSS");
    let src = PathBuf::from(std::env::var_os(FILE_ENV).expect("source file"));
    let dir = src.parent().expect("scratch dir").to_owned();
    let files = Work::Files {
        src,
        dir: dir.clone(),
    };
    // After a transfer: what the sessions still hold once idle again. `malloc_trim` first
    // returns the allocator's free pages, so what is left is held, not cached.
    let after_transfer = |errors: usize| {
        assert_eq!(errors, 0, "farm memory: transfer errors");
        clean(&dir, n + 1);
        // SAFETY: malloc_trim only releases free memory of glibc's heaps.
        unsafe { libc::malloc_trim(0) };
        rss()
    };
    let readings = match std::env::var(FLAVOUR_ENV).as_deref() {
        Ok("smol1") => {
            let mut f = SmolFarm::new();
            f.open(&socks, 1);
            let before = rss();
            f.open(&socks, n);
            let idle = rss();
            let out = f.run(&files);
            (before, idle, after_transfer(out.errors))
        }
        Ok("mio") => {
            let mut f = MioFarm::new();
            f.open(&socks, 1);
            let before = rss();
            f.open(&socks, n);
            let idle = rss();
            let out = f.run(&files);
            (before, idle, after_transfer(out.errors))
        }
        other => panic!("unknown farm flavour {other:?}"),
    };
    println!("{} {} {}", readings.0, readings.1, readings.2);
    std::process::exit(0);
}

/// VmRSS of a fresh process holding `n` idle sessions of `flavour`.
pub(super) struct Memory {
    /// KiB with one session open (the runtime's one-time costs counted).
    pub(super) before: u64,
    /// KiB with `n` more open, hello done, idle.
    pub(super) idle: u64,
    /// KiB once every session injected and extracted a file and is idle again, after
    /// `malloc_trim`.
    pub(super) after: u64,
}

impl Memory {
    pub(super) fn per_session(&self, n: usize) -> f64 {
        self.idle.saturating_sub(self.before) as f64 / n as f64
    }
    pub(super) fn per_session_after(&self, n: usize) -> f64 {
        self.after.saturating_sub(self.before) as f64 / n as f64
    }
}

pub(super) fn memory(flavour: &str, n: usize, agents: &[Helper], src: &Path) -> Memory {
    let socks: Vec<String> = agents
        .iter()
        .map(|a| a.sock.to_str().expect("utf-8 path").to_owned())
        .collect();
    let out = StdCommand::new(std::env::current_exe().expect("current exe"))
        .env(procs::ROLE_ENV, "farm-mem")
        .env(procs::SOCKET_ENV, socks.join(":"))
        .env(FLAVOUR_ENV, flavour)
        .env(COUNT_ENV, n.to_string())
        .env(FILE_ENV, src)
        .stderr(Stdio::inherit())
        .output()
        .expect("start the memory process");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [before, idle, after] = v[..] else {
        panic!("farm memory process: {text:?} ({})", out.status);
    };
    Memory {
        before,
        idle,
        after,
    }
}

// ---------------------------------------------------------------------------------------
// the figure
