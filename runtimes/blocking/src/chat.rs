//! Chat: drive an interactive command over a tty (expect a prompt, answer, expect again).
//!
//! The matching is `tuppence_expect::ExpectBuffer`'s (shared with the smol adapter); this
//! file only feeds it from a [`Run`] and enforces each call's deadline.
//!
//! Output that arrives while nobody expects stays where it is: in the run's inbox (256
//! events), then in the machine, then in the transport; the agent stops reading the
//! command, which then blocks on its writes. Nothing is dropped and memory stays bounded —
//! but, as for any unread [`Run`], a session whose reader thread waits for this chat does
//! not deliver other transactions' output meanwhile. Taken into the chat's buffer, output
//! is bounded by its limit ([`tuppence_expect::DEFAULT_LIMIT`] by default): an expect that
//! finds no match in a full buffer fails with [`ChatError::Full`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tuppence::link::{Command, Outcome, Signal};
use tuppence_expect::{ChatError, ExpectBuffer, Match, Patterns, Step};

use crate::{Error, Run, RunEvent, Session};

/// An interactive command. Every method takes `&self`: one thread may expect while
/// another sends (calls that read output take turns).
pub struct Chat<'s> {
    run: Run<'s>,
    state: Mutex<State>,
}

struct State {
    buffer: ExpectBuffer,
    /// How the command ended, once its `Finished` was read.
    outcome: Option<Outcome>,
}

impl Session {
    /// Starts `cmd` on a tty (so that prompts are written as to a terminal and the agent
    /// delivers stdin's end as the EOF character) and returns a chat on it.
    pub fn chat(&self, cmd: Command) -> Result<Chat<'_>, Error> {
        Ok(Chat::new(self.run(cmd.tty(true))?))
    }
}

impl<'s> Chat<'s> {
    /// A chat on a command already started (with or without a tty; without one, stdout
    /// and stderr are both matched, in arrival order).
    pub fn new(run: Run<'s>) -> Chat<'s> {
        Chat::with_limit(run, tuppence_expect::DEFAULT_LIMIT)
    }

    /// A chat that keeps at most `limit` bytes of unconsumed output.
    pub fn with_limit(run: Run<'s>, limit: usize) -> Chat<'s> {
        Chat {
            run,
            state: Mutex::new(State {
                buffer: ExpectBuffer::new(limit),
                outcome: None,
            }),
        }
    }

    /// The command: its xid, procinfo.
    pub fn run(&self) -> &Run<'s> {
        &self.run
    }

    /// Sends bytes to the command (no newline added).
    pub fn send(&self, data: &[u8]) -> Result<(), Error> {
        self.run.write_stdin(data)
    }

    /// Sends `line` and a newline (on a tty, what Enter sends once translated).
    pub fn send_line(&self, line: &[u8]) -> Result<(), Error> {
        let mut data = Vec::with_capacity(line.len() + 1);
        data.extend_from_slice(line);
        data.push(b'\n');
        self.run.write_stdin(&data)
    }

    /// Closes the command's stdin (on a tty: the EOF character, `^D`).
    pub fn close_stdin(&self) -> Result<(), Error> {
        self.run.close_stdin()
    }

    /// Sends a signal to the command's process group.
    pub fn interrupt(&self, signal: Signal) -> Result<(), Error> {
        self.run.interrupt(signal)
    }

    /// Waits up to `timeout` for one of `patterns` (see [`ExpectBuffer`] for which match
    /// wins) and consumes the output through it. Fails with [`ChatError::Timeout`] at the
    /// deadline, [`ChatError::Eof`] when the command ended first, [`ChatError::Full`] when
    /// the buffer is full without a match; the output stays buffered in each case.
    pub fn expect(
        &self,
        patterns: &Patterns,
        timeout: Duration,
    ) -> Result<Match, ChatError<Error>> {
        self.drive(Some(timeout), |b| b.poll_expect(patterns))
    }

    /// The next line (without `\n` or `\r\n`), waiting up to `timeout`. At the end of the
    /// output a last partial line is returned as it is, then `Ok(None)`.
    pub fn read_line(&self, timeout: Duration) -> Result<Option<Bytes>, ChatError<Error>> {
        match self.drive(Some(timeout), ExpectBuffer::poll_line) {
            Ok(line) => Ok(Some(line)),
            Err(ChatError::Eof(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits (up to `timeout`; `None` = as long as it takes) for the command to end and
    /// returns how. Its remaining output is kept in the buffer ([`Chat::take_buffered`]);
    /// past the limit this fails with [`ChatError::Full`]: take the output and wait again.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Outcome, ChatError<Error>> {
        match self.drive(timeout, |b| b.poll_end()) {
            Err(ChatError::Eof(outcome)) => Ok(outcome),
            Err(e) => Err(e),
            Ok(never) => match never {},
        }
    }

    /// How the command ended, if that has been read.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().outcome.clone()
    }

    /// A copy of the unconsumed output.
    pub fn buffered(&self) -> Bytes {
        Bytes::copy_from_slice(self.lock().buffer.buffered())
    }

    /// Takes the unconsumed output.
    pub fn take_buffered(&self) -> Bytes {
        self.lock().buffer.take_all()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the buffer from the run until `step` is ready, fails, or the deadline passes.
    fn drive<T>(
        &self,
        timeout: Option<Duration>,
        mut step: impl FnMut(&mut ExpectBuffer) -> Step<T>,
    ) -> Result<T, ChatError<Error>> {
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        loop {
            let step = step(&mut st.buffer);
            if let Some(done) = ChatError::resolve(step, st.buffer.limit(), st.outcome.as_ref()) {
                return done;
            }
            // `None` inside: a deadline too far to represent, i.e. none.
            let wait = match deadline {
                Some(Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ChatError::Timeout(timeout.unwrap_or_default()));
                    }
                    Some(left)
                }
                _ => None,
            };
            // One event with the time left, then whatever else is already there.
            let mut wait = wait;
            while st.buffer.wants_data() {
                match self.run.next_timeout(wait).map_err(ChatError::Session)? {
                    Some(RunEvent::Stdout(d) | RunEvent::Stderr(d)) => st.buffer.push(d),
                    Some(RunEvent::Finished(outcome)) => {
                        st.outcome = Some(outcome);
                        st.buffer.set_eof();
                    }
                    None => break,
                }
                wait = Some(Duration::ZERO);
            }
        }
    }
}
