//! Chat: drive an interactive command over a tty (expect a prompt, answer, expect again).
//!
//! The matching is `tuppence_expect::ExpectBuffer`'s (shared with the blocking adapter);
//! this file only feeds it from a [`RunHandle`] and enforces each call's deadline with an
//! `async_io::Timer`. Output that arrives while nobody expects stays in the handle's
//! bounded inbox and then holds the driver back (see the crate's guarantees); taken into
//! the chat's buffer it is bounded by the chat's limit ([`ChatError::Full`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use tuppence::link::{Command, Outcome, Signal};
use tuppence_expect::{ChatError, ExpectBuffer, Match, Patterns, Step};

use crate::{Error, RunControl, RunEvent, RunHandle, Session};

/// An interactive command: [`expect`](Self::expect) and [`read_line`](Self::read_line)
/// read its output; [`control`](Self::control) gives a handle that sends from another
/// task.
#[derive(Debug)]
pub struct Chat {
    run: RunHandle,
    buffer: ExpectBuffer,
    /// How the command ended, once its `Finished` was read.
    outcome: Option<Outcome>,
}

impl Session {
    /// Starts `cmd` on a tty (prompts are written as to a terminal; stdin's end reaches
    /// the command as the EOF character) and returns a chat on it.
    pub async fn chat(&self, cmd: Command) -> Result<Chat, Error> {
        Ok(Chat::new(self.run(cmd.tty(true)).await?))
    }
}

impl Chat {
    /// A chat on a command already started (without a tty, stdout and stderr are both
    /// matched, in arrival order).
    pub fn new(run: RunHandle) -> Chat {
        Chat::with_limit(run, tuppence_expect::DEFAULT_LIMIT)
    }

    /// A chat that keeps at most `limit` bytes of unconsumed output.
    pub fn with_limit(run: RunHandle, limit: usize) -> Chat {
        Chat {
            run,
            buffer: ExpectBuffer::new(limit),
            outcome: None,
        }
    }

    /// A cloneable handle for stdin, signals and procinfo.
    pub fn control(&self) -> RunControl {
        self.run.control()
    }

    /// Sends bytes to the command (no newline added).
    pub async fn send(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.run.write_stdin(data).await
    }

    /// Sends `line` and a newline.
    pub async fn send_line(&self, line: impl AsRef<[u8]>) -> Result<(), Error> {
        let mut data = line.as_ref().to_vec();
        data.push(b'\n');
        self.run.write_stdin(data).await
    }

    /// Closes the command's stdin (on a tty: the EOF character).
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.run.close_stdin().await
    }

    /// Sends a signal to the command's process group.
    pub async fn interrupt(&self, signal: Signal) -> Result<(), Error> {
        self.run.interrupt(signal).await
    }

    /// Waits up to `timeout` for one of `patterns` and consumes the output through the
    /// match; as `tuppence_blocking::Chat::expect`.
    pub async fn expect(
        &mut self,
        patterns: &Patterns,
        timeout: Duration,
    ) -> Result<Match, ChatError<Error>> {
        self.drive(Some(timeout), |b| b.poll_expect(patterns)).await
    }

    /// The next line (without `\n` or `\r\n`), waiting up to `timeout`; a last partial
    /// line at the end of the output, then `Ok(None)`.
    pub async fn read_line(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Bytes>, ChatError<Error>> {
        match self.drive(Some(timeout), ExpectBuffer::poll_line).await {
            Ok(line) => Ok(Some(line)),
            Err(ChatError::Eof(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits (up to `timeout`; `None` = as long as it takes) for the command to end; its
    /// remaining output stays buffered (past the limit: [`ChatError::Full`]).
    pub async fn wait(&mut self, timeout: Option<Duration>) -> Result<Outcome, ChatError<Error>> {
        match self.drive(timeout, |b| b.poll_end()).await {
            Err(ChatError::Eof(outcome)) => Ok(outcome),
            Err(e) => Err(e),
            Ok(never) => match never {},
        }
    }

    /// How the command ended, if that has been read.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// The unconsumed output.
    pub fn buffered(&self) -> &[u8] {
        self.buffer.buffered()
    }

    /// Takes the unconsumed output.
    pub fn take_buffered(&mut self) -> Bytes {
        self.buffer.take_all()
    }

    async fn drive<T>(
        &mut self,
        timeout: Option<Duration>,
        mut step: impl FnMut(&mut ExpectBuffer) -> Step<T>,
    ) -> Result<T, ChatError<Error>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let step = step(&mut self.buffer);
            if let Some(done) = ChatError::resolve(step, self.buffer.limit(), self.outcome.as_ref())
            {
                return done;
            }
            let run = &mut self.run;
            let first = match deadline {
                Some(d) => {
                    future::or(async { Some(run.next().await) }, async {
                        async_io::Timer::at(d).await;
                        None
                    })
                    .await
                }
                None => Some(run.next().await),
            };
            let Some(mut event) = first else {
                return Err(ChatError::Timeout(timeout.unwrap_or_default()));
            };
            // Then whatever else is already there (`next` is cancel-safe: an event is
            // taken only when it is returned).
            loop {
                match event {
                    Some(RunEvent::Stdout(d) | RunEvent::Stderr(d)) => self.buffer.push(d),
                    Some(RunEvent::Finished(outcome)) => {
                        self.outcome = Some(outcome);
                        self.buffer.set_eof();
                    }
                    None => self.buffer.set_eof(),
                }
                if !self.buffer.wants_data() {
                    break;
                }
                match future::poll_once(self.run.next()).await {
                    Some(e) => event = e,
                    None => break,
                }
            }
        }
    }
}
