//! Signal names as clients send them (`INT`, `SIGTERM`, `9`).

/// Parses a signal name from an `I` request: `INT`, `SIGINT`, `sigint`, `2` all mean SIGINT;
/// the empty name means SIGKILL (the C executor's only interrupt). Unknown names and numbers
/// outside 1..=64 give `None`.
pub fn signal_from_name(name: impl AsRef<[u8]>) -> Option<i32> {
    let name = name.as_ref();
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    if name.is_empty() {
        return Some(libc::SIGKILL);
    }
    if name.iter().all(u8::is_ascii_digit) {
        if name.len() > 2 {
            return None;
        }
        let n = name
            .iter()
            .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
        return (1..=64).contains(&n).then_some(n);
    }
    let bare = if name.len() > 3 && name[..3].eq_ignore_ascii_case(b"SIG") {
        &name[3..]
    } else {
        name
    };
    SIGNALS
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(bare))
        .map(|&(_, sig)| sig)
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];
