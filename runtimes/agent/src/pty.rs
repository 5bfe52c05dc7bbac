//! Pseudo-terminals for commands that asked for a tty.
//!
//! The C executor opened the slave with `O_NOCTTY` in the child, so the command had no
//! controlling terminal and Ctrl-C did nothing. Here the parent opens the pair,
//! the child gets the slave as fds 0/1/2 and, after `setsid`, makes it its controlling
//! terminal with `TIOCSCTTY` (see [`crate::spawn`]); then `\x03` written to the master raises
//! SIGINT in the command's process group, as in an interactive shell.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pty::OpenptFlags;

use crate::fdio;

/// The two ends of a fresh pty.
#[derive(Debug)]
pub(crate) struct PtyPair {
    /// The agent's end: `O_RDWR|O_NONBLOCK|O_CLOEXEC`.
    pub master: OwnedFd,
    /// The command's end, `O_CLOEXEC|O_NOCTTY` in the agent (the child's copies on 0/1/2 are
    /// made by `dup2`, which clears `FD_CLOEXEC`).
    pub slave: OwnedFd,
}

/// The window size a command sees. Real terminals are never 0×0, and some programs (pagers,
/// progress bars) misbehave when they read 0 columns.
const ROWS: u16 = 24;
const COLS: u16 = 80;

/// Opens a pty pair in the kernel's default ("cooked") line discipline: canonical input, echo,
/// signal characters (ISIG) and `\n`→`\r\n` output processing, like a login terminal.
///
/// `owner` is the uid the slave should belong to when the command will run as another user
/// (as `login` and `sshd` do), so programs that reopen their tty by name can do so.
pub(crate) fn open_pty(owner: Option<u32>) -> io::Result<PtyPair> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let peer_flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let slave = match rustix::pty::ioctl_tiocgptpeer(&master, peer_flags) {
        Ok(fd) => fd,
        // Kernels before 4.13 lack TIOCGPTPEER: open the slave by name.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTTY) => {
            let name = rustix::pty::ptsname(&master, Vec::new())?;
            rustix::fs::open(
                name.as_c_str(),
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?
        }
        Err(e) => return Err(e.into()),
    };
    let winsize = rustix::termios::Winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, winsize)?;
    if let Some(uid) = owner {
        rustix::fs::fchown(&slave, Some(crate::user::uid(uid)), None)?;
    }
    fdio::set_nonblocking(&master)?;
    Ok(PtyPair { master, slave })
}
