//! The helper processes: the agent and the raw reference server run as this bench binary
//! started again with `TUPPENCE_E2E_ROLE` set, so their memory and CPU are their own.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tuppence_agent::serve::{LinkDaemon, LinkDaemonConfig};
use tuppence_transport::Listener;

pub const ROLE_ENV: &str = "TUPPENCE_E2E_ROLE";
pub const SOCKET_ENV: &str = "TUPPENCE_E2E_SOCKET";
/// A command line to start agent processes under (e.g. `strace -c -f -o FILE` or
/// `perf record -g -o FILE --`), for profiling. Peak-memory figures are then the wrapper's.
pub const AGENT_WRAP_ENV: &str = "TUPPENCE_E2E_AGENT_WRAP";

/// The agent's settings in every figure: the defaults, with room for the 100-connection
/// figure (the default allows 64 clients).
pub fn agent_config() -> LinkDaemonConfig {
    let mut c = LinkDaemonConfig {
        max_clients: 256,
        ..LinkDaemonConfig::default()
    };
    if let Some(v) = std::env::var("TUPPENCE_E2E_TRANSMIT_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.transmit_limit = v;
    }
    // Containment off, to measure what it costs per command (`--only rt`, A/B).
    if std::env::var_os("TUPPENCE_E2E_NO_CGROUPS").is_some() {
        c.cgroups = false;
    }
    if std::env::var_os("TUPPENCE_E2E_NO_REAPER").is_some() {
        c.reap_orphans = false;
    }
    c
}

/// Runs the role named by the environment, if any (then never returns).
pub fn run_role_if_asked() {
    let Some(role) = std::env::var_os(ROLE_ENV) else {
        return;
    };
    let sock = PathBuf::from(std::env::var_os(SOCKET_ENV).expect("socket path"));
    // Die with the bench that started us, whatever happens to it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    raise_nofile();
    match role.to_str() {
        Some("agent") => {
            let listener = Listener::unix(&sock, 0o600).expect("agent listener");
            let mut agent = LinkDaemon::new(agent_config()).expect("agent");
            agent.add_listener(listener).expect("add listener");
            if let Err(e) = agent.run() {
                eprintln!("agent: {e}");
            }
        }
        Some("raw") => crate::raw::serve(&sock),
        Some("raw-mt") => crate::raw::serve_threaded(&sock),
        Some("farm-mem") => crate::farm::memory_role(&sock),
        other => panic!("unknown role {other:?}"),
    }
    std::process::exit(0);
}

/// 1000 concurrent commands hold 4000 fds in the agent: use the hard limit.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A helper process serving a unix socket; killed at drop.
pub struct Helper {
    child: Child,
    role: String,
    pub sock: PathBuf,
}

impl Helper {
    pub fn start(role: &str, dir: &Path) -> Helper {
        static N: AtomicUsize = AtomicUsize::new(0);
        let sock = dir.join(format!("{role}-{}.sock", N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_file(&sock);
        let exe = std::env::current_exe().expect("current exe");
        let wrap = match std::env::var(AGENT_WRAP_ENV) {
            Ok(w) if role == "agent" => w.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let child = cmd
            .env(ROLE_ENV, role)
            .env(SOCKET_ENV, &sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start helper process");
        let mut h = Helper {
            child,
            role: role.to_owned(),
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The socket file exists before `listen`: wait for a connect to succeed.
        while UnixStream::connect(&h.sock).is_err() {
            assert!(
                h.child.try_wait().ok().flatten().is_none(),
                "{role} process exited"
            );
            assert!(Instant::now() < deadline, "{role} process did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        h
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resets the process's peak RSS to its current RSS.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// CPU time the helper's main thread (its only one) has used.
    pub fn cpu(&self) -> Duration {
        let text =
            std::fs::read_to_string(format!("/proc/{}/schedstat", self.pid())).unwrap_or_default();
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Duration::from_nanos(ns)
    }

    pub fn status_kib(&self, field: &str) -> u64 {
        status_kib(self.pid(), field)
    }

    /// Context switches of the helper's main thread (its only one).
    pub fn switches(&self) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let rest = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))?;
                rest.trim().parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // An agent is asked to quit, so a profiler wrapping it sees a normal exit.
        if self.role == "agent"
            && let Ok(stream) = UnixStream::connect(&self.sock)
            && let Ok(s) = tuppence_blocking::Session::new(
                stream,
                tuppence::link::ClientConfig::default(),
                Duration::from_secs(5),
            )
            && s.quit().is_ok()
        {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// A `/proc/PID/status` field in KiB (0 if unreadable).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

/// A scratch directory (on tmpfs when available), removed at drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!("tuppence-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Context switches (voluntary + involuntary) of this process, every thread.
pub fn self_switches() -> u64 {
    // SAFETY: getrusage fills a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// CPU time (user + system) of this process, every thread.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage fills a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
