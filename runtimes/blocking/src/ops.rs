//! The operations of a session: commands, transfers, monitors.

use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tuppence::link::status::ESRCH;
use tuppence::link::{
    ClientEvent, Command, MonitorEvent, Outcome, Output, RunEvent, Signal, TransferEvent,
    UsageError,
};
use tuppence::wire::ProcInfoField;
use tuppence_transport::{LocalFile, PiecePool, write_all_vectored};

use crate::{Error, Session};

/// Packets of data an inject reads from its source at once.
const READ_PACKETS: usize = 8;
/// Read buffers an inject keeps for reuse: more than the link holds unwritten (the
/// machine's transmit bound of 1 MiB, plus a vectored write in progress).
const POOL_PIECES: usize = 12;
/// Data pieces (packets) an extract writes with one `writev` at most.
const WRITE_PIECES: usize = 64;
/// How long an aborted transfer waits for its interrupt to be written.
const ABORT_FLUSH: Duration = Duration::from_secs(2);

/// A running command. Dropping it stops delivery of its output (the command keeps running
/// until it ends or the session closes).
///
/// Every method takes `&self`, so one thread can wait for output with [`next`](Self::next)
/// while others feed stdin and send signals through the same `&Run` (a CLI forwarding its
/// own stdin and Ctrl-C). Only [`procinfo`](Self::procinfo) must not race with `next`: both
/// take events of the same transaction.
pub struct Run<'s> {
    session: &'s Session,
    xid: u16,
    done: AtomicBool,
    /// Events taken from the inbox in one go, not yet returned (taking them one at a time
    /// contended with the reader thread on the session lock).
    batch: Mutex<VecDeque<ClientEvent>>,
}

impl Session {
    /// Starts a command.
    pub fn run(&self, cmd: Command) -> Result<Run<'_>, Error> {
        let xid = self.open(false, |c| c.run(cmd.clone()))?;
        Ok(self.run_handle(xid))
    }

    /// Starts a command whose stdin is empty. The request and the end of stdin go out in
    /// one write, where [`run`](Self::run) and then [`Run::close_stdin`] take two.
    pub fn run_without_stdin(&self, cmd: Command) -> Result<Run<'_>, Error> {
        let xid = self.open(false, |c| c.run_without_stdin(cmd.clone()))?;
        Ok(self.run_handle(xid))
    }

    fn run_handle(&self, xid: u16) -> Run<'_> {
        Run {
            session: self,
            xid,
            done: AtomicBool::new(false),
            batch: Mutex::new(VecDeque::new()),
        }
    }

    /// Runs a command with no stdin and collects its output.
    pub fn output(&self, cmd: Command) -> Result<Output, Error> {
        self.run_without_stdin(cmd)?.collect()
    }

    /// Copies `source` into `path` on the system under test (created as `user` with
    /// exactly `mode`, renamed into place only when complete). `progress` is called with
    /// the bytes sent so far. Returns the number of bytes sent.
    ///
    /// If reading `source` fails, or an [`crate::AbortHandle`] aborts the transfer, the
    /// agent is sent an interrupt and removes its temporary file; after an abort this
    /// waits (a couple of seconds at most) for that interrupt to be written, so a process
    /// that exits next does not leave the temporary behind.
    pub fn inject(
        &self,
        user: &str,
        path: &str,
        mode: u32,
        source: impl Read,
        progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let r = self.inject_inner(user, path, mode, source, progress);
        self.after_abort(r)
    }

    fn inject_inner(
        &self,
        user: &str,
        path: &str,
        mode: u32,
        mut source: impl Read,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let xid = self.open(true, |c| c.inject(user.to_owned(), path.to_owned(), mode))?;
        let mut guard = Detach { session: self, xid };
        loop {
            match self
                .next_event(xid, None)?
                .and_then(TransferEvent::from_event)
            {
                Some(TransferEvent::Ready) => break,
                Some(TransferEvent::Finished(outcome)) => {
                    guard.xid = 0;
                    return Err(outcome_error("inject", outcome));
                }
                // No data comes for an inject.
                Some(TransferEvent::Data(_)) | None => {}
            }
        }
        let mut sent = 0u64;
        // Whole packets per read (256 KiB went out as eight full packets and one of 80
        // bytes), read straight into buffers the link gives back once written.
        let mut pool = PiecePool::new(POOL_PIECES, READ_PACKETS * self.max_data_chunk());
        loop {
            let mut buf = pool.take();
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Abort the remote side: the agent removes its temporary file.
                    self.abandon(xid);
                    return Err(Error::Local {
                        what: "read",
                        source: e,
                    });
                }
            };
            buf.truncate(n);
            let piece = buf.freeze();
            pool.give(piece.clone());
            if let Err(e) = self.send_data(xid, piece, |c, d| c.send_file_data(xid, d)) {
                return Err(self.ended_early(xid, e)?);
            }
            sent += n as u64;
            progress(sent);
            // A failure reported mid-transfer ends it early.
            if let Some(TransferEvent::Finished(outcome)) = self
                .next_event(xid, Some(Duration::ZERO))?
                .and_then(TransferEvent::from_event)
            {
                guard.xid = 0;
                return Err(outcome_error("inject", outcome));
            }
        }
        if let Err(e) = self.act(|c| c.finish_file(xid)) {
            return Err(self.ended_early(xid, e)?);
        }
        loop {
            if let Some(TransferEvent::Finished(outcome)) = self
                .next_event(xid, None)?
                .and_then(TransferEvent::from_event)
            {
                guard.xid = 0;
                return match outcome {
                    Outcome::Completed => Ok(sent),
                    other => Err(outcome_error("inject", other)),
                };
            }
        }
    }

    /// Copies `path` from the system under test (read as `user`) into `sink`; `progress`
    /// is called with the bytes received so far. Returns the number of bytes received.
    /// On error the sink may hold part of the file: write to a temporary and rename, or
    /// use [`Session::extract_to`]. A failed write to the sink (disk full) ends the
    /// transfer on the agent too; so does an [`crate::AbortHandle`].
    pub fn extract(
        &self,
        user: &str,
        path: &str,
        sink: impl Write,
        progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let r = self.extract_inner(user, path, sink, progress);
        self.after_abort(r)
    }

    fn extract_inner(
        &self,
        user: &str,
        path: &str,
        mut sink: impl Write,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let xid = self.open(true, |c| c.extract(user.to_owned(), path.to_owned()))?;
        let mut guard = Detach { session: self, xid };
        let mut received = 0u64;
        let mut batch = VecDeque::new();
        let mut pieces: Vec<Bytes> = Vec::with_capacity(WRITE_PIECES);
        loop {
            if batch.is_empty() {
                self.take_events(xid, None, usize::MAX, &mut batch)?;
            }
            // Every data piece that is ready goes out in one `writev`: a `write` per
            // 32 KiB packet was a system call each.
            let mut finished = None;
            while let Some(ev) = batch.pop_front() {
                match TransferEvent::from_event(ev) {
                    Some(TransferEvent::Data(data)) => {
                        pieces.push(data);
                        if pieces.len() == WRITE_PIECES {
                            break;
                        }
                    }
                    Some(TransferEvent::Finished(outcome)) => {
                        finished = Some(outcome);
                        break;
                    }
                    // An extract is never "ready" without data (its `M`=0 is no event).
                    Some(TransferEvent::Ready) | None => {}
                }
            }
            if !pieces.is_empty() {
                let mut iov: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
                if let Err(e) = write_all_vectored(&mut sink, &mut iov) {
                    // Nobody will take the rest: stop the agent sending it.
                    self.abandon(xid);
                    return Err(Error::Local {
                        what: "write",
                        source: e,
                    });
                }
                received += pieces.iter().map(|p| p.len() as u64).sum::<u64>();
                pieces.clear();
                progress(received);
            }
            if let Some(outcome) = finished {
                guard.xid = 0;
                sink.flush().map_err(|e| Error::Local {
                    what: "write",
                    source: e,
                })?;
                return match outcome {
                    Outcome::Completed => Ok(received),
                    other => Err(outcome_error("extract", other)),
                };
            }
        }
    }

    /// Copies `path` from the system under test (read as `user`) to the local `dest`,
    /// opened as `cp` opens its destination ([`LocalFile`]): a new or regular file is
    /// written to a temporary and renamed into place only when the whole file arrived; a
    /// FIFO, device or `-` (stdout) is written in place; a symbolic link is followed; an
    /// existing directory gets the remote file's name inside it. Returns the number of
    /// bytes received. A failed write (`/dev/full`: `ENOSPC`) is an error, never dropped.
    pub fn extract_to(
        &self,
        user: &str,
        path: &str,
        dest: &Path,
        progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let mut file = LocalFile::for_extract(dest, path)?;
        let n = self.extract(user, path, &mut file, progress)?;
        file.commit()?;
        Ok(n)
    }

    /// A send of a transfer failed. If the transaction is gone the agent ended it first
    /// (a failure it reported between two pieces: its `Finished` explains why, and that is
    /// the error); otherwise the send's own error.
    fn ended_early(&self, xid: u16, e: Error) -> Result<Error, Error> {
        if !matches!(
            e,
            Error::Usage(UsageError::UnknownTransaction(_) | UsageError::WrongState { .. })
        ) {
            return Ok(e);
        }
        loop {
            match self.next_event(xid, None)? {
                Some(ev) => {
                    if let Some(TransferEvent::Finished(outcome)) = TransferEvent::from_event(ev) {
                        return Ok(outcome_error("inject", outcome));
                    }
                }
                // Nothing more will come for it: the send's own error says what happened.
                None => return Ok(e),
            }
        }
    }

    /// After a transfer aborted through an [`crate::AbortHandle`]: waits a little for the
    /// interrupt to leave, so that the agent removes what the transfer left.
    fn after_abort<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        if matches!(r, Err(Error::Aborted)) {
            let _ = self.flush(Some(ABORT_FLUSH));
        }
        r
    }

    /// Subscribes to an event source on the agent (`agent`, `kmsg`, `file:PATH`).
    pub fn monitor(&self, source: &str) -> Result<Monitor<'_>, Error> {
        let xid = self.open(false, |c| c.monitor(source.to_owned()))?;
        Ok(Monitor {
            session: self,
            xid,
            done: AtomicBool::new(false),
        })
    }
}

impl Run<'_> {
    pub fn xid(&self) -> u16 {
        self.xid
    }

    /// Sends bytes to the command's stdin.
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), Error> {
        let xid = self.xid;
        self.session
            .send_data(xid, Bytes::copy_from_slice(data), |c, d| {
                c.send_stdin(xid, d)
            })
    }

    /// Closes the command's stdin. A command that has already ended is not an error
    /// (its `Finished` event may simply not have been read yet).
    pub fn close_stdin(&self) -> Result<(), Error> {
        let xid = self.xid;
        match self.session.act(|c| c.close_stdin(xid)) {
            Err(Error::Usage(tuppence::link::UsageError::UnknownTransaction(_))) => Ok(()),
            other => other,
        }
    }

    /// Sends a signal to the command's process group.
    pub fn interrupt(&self, signal: Signal) -> Result<(), Error> {
        let xid = self.xid;
        self.session.act(|c| c.interrupt(xid, signal.clone()))
    }

    /// Asks for process information (bit *n* of `mask` asks for field type *n*).
    /// Waits for the answer, keeping any output that arrives meanwhile for `next`.
    pub fn procinfo(&self, mask: u32) -> Result<Vec<ProcInfoField>, Error> {
        let xid = self.xid;
        self.session.act(|c| c.procinfo(xid, mask))?;
        let mut held = Vec::new();
        let result = loop {
            match self.session.next_event(xid, None)? {
                Some(ClientEvent::ProcInfo { fields, .. }) => break Ok(fields),
                Some(ev @ ClientEvent::Finished { .. }) => {
                    held.push(ev);
                    break Err(Error::Remote {
                        what: "procinfo",
                        errno: ESRCH,
                    });
                }
                Some(ev) => held.push(ev),
                None => {}
            }
        };
        self.session.requeue(xid, held);
        result
    }

    /// The next piece of output, or the end. `Ok(None)` when `timeout` passed first.
    pub fn next_timeout(&self, timeout: Option<Duration>) -> Result<Option<RunEvent>, Error> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // One waiter at a time: a second thread calling `next` waits here for the first.
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if batch.is_empty()
                && !self
                    .session
                    .take_events(self.xid, timeout, usize::MAX, &mut batch)?
            {
                return Ok(None);
            }
            let Some(ev) = batch.pop_front() else {
                continue;
            };
            if let Some(ev) = RunEvent::from_event(ev) {
                if matches!(ev, RunEvent::Finished(_)) {
                    self.done.store(true, Ordering::SeqCst);
                }
                return Ok(Some(ev));
            }
        }
    }

    /// The next piece of output, or the end; `None` after the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&self) -> Result<Option<RunEvent>, Error> {
        self.next_timeout(None)
    }

    /// Waits for the end, collecting all output.
    pub fn collect(self) -> Result<Output, Error> {
        let mut out = Output::collect([]);
        while let Some(ev) = self.next()? {
            if out.add(ev) {
                break;
            }
        }
        Ok(out)
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if !self.done.load(Ordering::SeqCst) {
            self.session.detach(self.xid);
        }
    }
}

/// A subscription to an agent event source. Like [`Run`], every method takes `&self`, so
/// another thread may [`end`](Self::end) it while one waits in
/// [`next_timeout`](Self::next_timeout).
pub struct Monitor<'s> {
    session: &'s Session,
    xid: u16,
    done: AtomicBool,
}

impl Monitor<'_> {
    /// The next event; `Ok(None)` on timeout or after the end.
    pub fn next_timeout(&self, timeout: Option<Duration>) -> Result<Option<MonitorEvent>, Error> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(None);
        }
        loop {
            let Some(ev) = self.session.next_event(self.xid, timeout)? else {
                return Ok(None);
            };
            if let Some(ev) = MonitorEvent::from_event(ev) {
                if matches!(ev, MonitorEvent::Finished(_)) {
                    self.done.store(true, Ordering::SeqCst);
                }
                return Ok(Some(ev));
            }
        }
    }

    /// Asks the source to flush what it has pending; `Settled(seq)` follows the events.
    pub fn settle(&self, seq: u32) -> Result<(), Error> {
        let xid = self.xid;
        self.session.act(|c| c.settle(xid, seq))
    }

    /// Ends the subscription; `Finished` follows.
    pub fn end(&self) -> Result<(), Error> {
        let xid = self.xid;
        self.session.act(|c| c.end_monitor(xid))
    }
}

impl Drop for Monitor<'_> {
    fn drop(&mut self) {
        if !self.done.load(Ordering::SeqCst) {
            // No waiting for transmit room in a drop: deferred if the queue is full.
            self.session.abandon(self.xid);
            self.session.detach(self.xid);
        }
    }
}

struct Detach<'s> {
    session: &'s Session,
    xid: u16,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if self.xid != 0 {
            self.session.detach(self.xid);
        }
    }
}

fn outcome_error(what: &'static str, outcome: Outcome) -> Error {
    match outcome {
        Outcome::Failed { errno } => Error::Remote { what, errno },
        Outcome::LinkLost(e) => Error::Link(e),
        other => Error::Io(std::io::Error::other(format!(
            "{what} ended unexpectedly: {other:?}"
        ))),
    }
}
