//! Our own terminal: raw mode for `run --tty`, restored on every way out.
//!
//! In `--tty` mode the remote command has a pseudo-terminal of its own that does the line
//! editing and turns Ctrl-C into SIGINT; ours must pass every key through untouched, as
//! `ssh -t` does. Leaving a user's terminal raw after we exit would be rude, so the saved
//! settings live in a global that the drop guard and the emergency exit path both restore.

use std::io::{self, IsTerminal};
use std::sync::Mutex;

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcsetattr};

static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts stdin's terminal in raw mode until dropped.
pub struct RawTerminal(());

impl RawTerminal {
    /// `Ok(None)` when stdin is not a terminal (nothing to do).
    pub fn enable() -> io::Result<Option<RawTerminal>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let original = tcgetattr(&stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(Some(RawTerminal(())))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal settings saved by [`RawTerminal::enable`], if any.
pub fn restore() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = tcsetattr(io::stdin(), OptionalActions::Now, &t);
    }
}
