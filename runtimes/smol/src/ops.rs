//! The operations of a session: commands, transfers, monitors.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Stream, future};
use tuppence::link::status::ESRCH;
use tuppence::link::{
    Command, MonitorEvent, Outcome, Output, RunEvent, Signal, TransferEvent, UsageError,
};
use tuppence::wire::ProcInfoField;
use tuppence_transport::{LocalFile, PiecePool};

use crate::client::{Batch, SEND_PIECE};
use crate::{Error, Session};

/// Data pieces (packets of 32 KiB) an extract hands its sink in one vectored write at
/// most: a write per packet was a system call each for a file sink.
const WRITE_PIECES: usize = 64;
/// Send pieces an inject reads from its source at once (eight packets).
const READ_PIECES: usize = 4;
/// Read buffers an inject keeps for reuse: more than the link holds unwritten (the
/// machine's transmit bound of 1 MiB, plus a vectored write in progress).
const POOL_PIECES: usize = 12;

/// Writes all of `pieces`, in order, through the sink's vectored write: a partial write
/// resumes where it stopped (in the middle of a piece if need be), `EINTR` is retried, a
/// write of nothing is `WriteZero`.
async fn write_all_pieces<W: AsyncWrite + Unpin>(
    sink: &mut W,
    pieces: &[Bytes],
) -> std::io::Result<()> {
    use std::io::IoSlice;
    let mut iov: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut bufs = &mut iov[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = match future::poll_fn(|cx| Pin::new(&mut *sink).poll_write_vectored(cx, bufs)).await
        {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let left: usize = bufs.iter().map(|b| b.len()).sum();
        if n > left {
            return Err(std::io::Error::other(
                "the sink claims more bytes than it was given",
            ));
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

impl Session {
    /// Starts a command. Its output is read from the returned handle; stdin stays open
    /// until [`RunHandle::close_stdin`].
    pub async fn run(&self, cmd: Command) -> Result<RunHandle, Error> {
        let xid = self.open(|c| c.run(cmd.clone())).await?;
        Ok(self.run_handle(xid))
    }

    /// Starts a command whose stdin is empty. The request and the end of stdin go out in
    /// one write, where [`run`](Self::run) and then [`RunHandle::close_stdin`] take two.
    pub async fn run_without_stdin(&self, cmd: Command) -> Result<RunHandle, Error> {
        let xid = self.open(|c| c.run_without_stdin(cmd.clone())).await?;
        Ok(self.run_handle(xid))
    }

    fn run_handle(&self, xid: u16) -> RunHandle {
        RunHandle {
            control: RunControl {
                session: self.clone(),
                xid,
            },
            batch: Batch::default(),
            done: false,
        }
    }

    /// Runs a command with empty stdin and collects its output.
    pub async fn output(&self, cmd: Command) -> Result<Output, Error> {
        let run = self.run_without_stdin(cmd).await?;
        Ok(run.output().await)
    }

    /// Copies `source` to `path` on the system under test, created as `user` with exactly
    /// `mode` and renamed into place only when complete. `progress` is called with the
    /// bytes sent so far. Returns the number of bytes sent.
    ///
    /// If the future is dropped, or reading `source` fails, the transfer is aborted and
    /// the agent removes its temporary file.
    pub async fn inject<R: AsyncRead + Unpin>(
        &self,
        user: impl AsRef<[u8]>,
        path: impl AsRef<[u8]>,
        mode: u32,
        mut source: R,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        const WHAT: &str = "inject";
        let user = Bytes::copy_from_slice(user.as_ref());
        let path = Bytes::copy_from_slice(path.as_ref());
        let xid = self
            .open(|c| c.inject(user.clone(), path.clone(), mode))
            .await?;
        let mut guard = Transfer::new(self, xid);
        loop {
            match TransferEvent::from_event(self.next_event(xid).await) {
                Some(TransferEvent::Ready) => break,
                Some(TransferEvent::Finished(outcome)) => {
                    guard.disarm();
                    return Err(Error::from_outcome(WHAT, outcome));
                }
                // No data comes for an inject.
                Some(TransferEvent::Data(_)) | None => {}
            }
        }
        let mut sent = 0u64;
        // Several pieces per read of the source: fewer reads, and each piece is sent as
        // whole packets. Read straight into buffers the pump gives back once written
        // (copying each read into a new `Bytes` cost a `memcpy` per byte).
        let mut pool = PiecePool::new(POOL_PIECES, READ_PIECES * SEND_PIECE);
        loop {
            let mut buf = pool.take();
            let n = match source.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::local("read", e)),
            };
            buf.truncate(n);
            let piece = buf.freeze();
            pool.give(piece.clone());
            let r = self.send_data(piece, |c, d| c.send_file_data(xid, d)).await;
            if let Err(e) = r {
                return Err(guard.ended_early(e).await);
            }
            sent = sent.saturating_add(n as u64);
            progress(sent);
            // The agent may have given up mid-way (disk full, …): stop sending then.
            if let Poll::Ready(ev) = self.poll_inbox(xid, None)
                && let Some(TransferEvent::Finished(outcome)) = TransferEvent::from_event(ev)
            {
                guard.disarm();
                return Err(Error::from_outcome(WHAT, outcome));
            }
        }
        if let Err(e) = self.act(|c| c.finish_file(xid)).await {
            return Err(guard.ended_early(e).await);
        }
        let outcome = guard.finished().await;
        match outcome {
            Outcome::Completed => Ok(sent),
            other => Err(Error::from_outcome(WHAT, other)),
        }
    }

    /// Copies `path` from the system under test (read as `user`) into `sink`; `progress`
    /// is called with the bytes received so far. Returns the number of bytes received.
    ///
    /// A slow sink slows the link down rather than buffering the file. On error the sink
    /// may hold part of the file: write to a temporary and rename. If the future is
    /// dropped, or writing the sink fails, the transfer is aborted on the agent.
    pub async fn extract<W: AsyncWrite + Unpin>(
        &self,
        user: impl AsRef<[u8]>,
        path: impl AsRef<[u8]>,
        mut sink: W,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        const WHAT: &str = "extract";
        let user = Bytes::copy_from_slice(user.as_ref());
        let path = Bytes::copy_from_slice(path.as_ref());
        let xid = self.open(|c| c.extract(user.clone(), path.clone())).await?;
        let mut guard = Transfer::new(self, xid);
        let mut received = 0u64;
        let mut batch = Batch::default();
        let mut pieces: Vec<Bytes> = Vec::with_capacity(WRITE_PIECES);
        loop {
            let first = future::poll_fn(|cx| self.poll_batch(xid, &mut batch, cx)).await;
            // Every data piece already taken from the inbox goes out in one vectored
            // write (a sink that takes one buffer at a time still gets them all).
            let mut finished = None;
            let mut next = Some(first);
            while let Some(ev) = next.take() {
                match TransferEvent::from_event(ev) {
                    Some(TransferEvent::Data(data)) => pieces.push(data),
                    Some(TransferEvent::Finished(outcome)) => {
                        finished = Some(outcome);
                        break;
                    }
                    // An extract is never "ready" without data (its `M`=0 is no event).
                    Some(TransferEvent::Ready) | None => {}
                }
                if pieces.len() < WRITE_PIECES {
                    next = batch.pop_ready();
                }
            }
            if !pieces.is_empty() {
                write_all_pieces(&mut sink, &pieces)
                    .await
                    .map_err(|e| Error::local("write", e))?;
                let n: u64 = pieces.iter().map(|p| p.len() as u64).sum();
                received = received.saturating_add(n);
                pieces.clear();
                progress(received);
            }
            if let Some(outcome) = finished {
                guard.disarm();
                sink.flush().await.map_err(|e| Error::local("write", e))?;
                return match outcome {
                    Outcome::Completed => Ok(received),
                    other => Err(Error::from_outcome(WHAT, other)),
                };
            }
        }
    }

    /// Copies `path` from the system under test (read as `user`) to the local `dest`,
    /// opened as `cp` opens its destination ([`LocalFile`]): a new or regular file is
    /// written to a temporary and renamed into place only when the whole file arrived; a
    /// FIFO, device or `-` (stdout) is written in place; a symbolic link is followed; an
    /// existing directory gets the remote file's name inside it. Opening, writing and the
    /// final rename run on smol's blocking pool (opening a FIFO waits for its reader).
    /// Returns the number of bytes received; a failed write is an error, never dropped.
    pub async fn extract_to(
        &self,
        user: impl AsRef<[u8]>,
        path: impl AsRef<[u8]>,
        dest: impl AsRef<Path>,
        progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let dest = dest.as_ref().to_owned();
        let remote = String::from_utf8_lossy(path.as_ref()).into_owned();
        let file = smol::unblock(move || LocalFile::for_extract(&dest, &remote)).await?;
        let failure = Arc::new(Mutex::new(None));
        let mut sink = smol::Unblock::new(Recording {
            file,
            failure: failure.clone(),
        });
        let result = self.extract(user, path, &mut sink, progress).await;
        // `Unblock` reports a failed write as "write zero"; say what really failed.
        let recorded = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
        let n = match (result, recorded) {
            (Err(Error::Local { .. }), Some(e)) => return Err(Error::local("write", e)),
            (r, _) => r?,
        };
        let file = sink.into_inner().await.file;
        smol::unblock(move || file.commit()).await?;
        Ok(n)
    }

    /// Subscribes to an event source of the agent (`agent`, `kmsg`, `file:PATH`).
    pub async fn monitor(&self, source: impl AsRef<[u8]>) -> Result<Monitor, Error> {
        let source = Bytes::copy_from_slice(source.as_ref());
        let xid = self.open(|c| c.monitor(source.clone())).await?;
        Ok(Monitor {
            session: self.clone(),
            xid,
            batch: Batch::default(),
            done: false,
        })
    }
}

/// The control side of a running command: stdin, signals, process information. Cheap to
/// clone, so one task can feed stdin while another reads the output.
#[derive(Clone, Debug)]
pub struct RunControl {
    session: Session,
    xid: u16,
}

impl RunControl {
    /// The transaction id on the wire.
    pub fn xid(&self) -> u16 {
        self.xid
    }

    /// Sends bytes to the command's stdin, waiting while the transmit queue is full.
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        let xid = self.xid;
        self.session
            .send_data(data.into(), |c, d| c.send_stdin(xid, d))
            .await
    }

    /// Closes the command's stdin. A command that has already ended is not an error (its
    /// `Finished` may simply not have been read yet).
    pub async fn close_stdin(&self) -> Result<(), Error> {
        let xid = self.xid;
        match self.session.act(|c| c.close_stdin(xid)).await {
            Err(Error::Usage(UsageError::UnknownTransaction(_))) => Ok(()),
            other => other,
        }
    }

    /// Sends a signal to the command's process group (always KILL in protocol 3.0).
    pub async fn interrupt(&self, signal: Signal) -> Result<(), Error> {
        let xid = self.xid;
        self.session.act(|c| c.interrupt(xid, signal.clone())).await
    }

    /// Asks for process information (bit *n* of `mask` asks for field type *n*, see
    /// [`tuppence::wire::field`]) and waits for the answer. Output arriving meanwhile
    /// stays in the command's stream. A command that ended first gives
    /// `Error::Remote { errno: 3 }` (no such process).
    pub async fn procinfo(&self, mask: u32) -> Result<Vec<ProcInfoField>, Error> {
        const WHAT: &str = "procinfo";
        let rx = match self.session.procinfo_query(self.xid, mask).await {
            Ok(rx) => rx,
            Err(Error::Usage(UsageError::UnknownTransaction(_))) => {
                return Err(Error::Remote {
                    what: WHAT,
                    errno: ESRCH,
                });
            }
            Err(e) => return Err(e),
        };
        match rx.recv().await {
            Ok(fields) => Ok(fields),
            Err(_) => Err(self.session.error().unwrap_or(Error::Remote {
                what: WHAT,
                errno: ESRCH,
            })),
        }
    }
}

/// A running command: a stream of [`RunEvent`]s ending with `Finished`, plus the control
/// operations of [`RunControl`].
///
/// Output is buffered up to a bound; a handle that is not read stops the driver from
/// reading the transport. Dropping the handle discards further output (the command keeps
/// running until it ends or the session closes).
#[derive(Debug)]
pub struct RunHandle {
    control: RunControl,
    /// Output taken from the inbox in one go, handed out in order.
    batch: Batch,
    done: bool,
}

impl RunHandle {
    pub fn xid(&self) -> u16 {
        self.control.xid
    }

    /// A cloneable handle for stdin, signals and procinfo, usable from another task.
    pub fn control(&self) -> RunControl {
        self.control.clone()
    }

    /// See [`RunControl::write_stdin`].
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.control.write_stdin(data).await
    }

    /// See [`RunControl::close_stdin`].
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.control.close_stdin().await
    }

    /// See [`RunControl::interrupt`].
    pub async fn interrupt(&self, signal: Signal) -> Result<(), Error> {
        self.control.interrupt(signal).await
    }

    /// See [`RunControl::procinfo`].
    pub async fn procinfo(&self, mask: u32) -> Result<Vec<ProcInfoField>, Error> {
        self.control.procinfo(mask).await
    }

    /// The next piece of output, or the end; `None` after `Finished`.
    pub async fn next(&mut self) -> Option<RunEvent> {
        futures_lite::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Waits for the end, collecting all output.
    pub async fn output(mut self) -> Output {
        let mut out = Output::collect([]);
        while let Some(ev) = self.next().await {
            if out.add(ev) {
                break;
            }
        }
        out
    }

    /// Waits for the end, discarding output.
    pub async fn wait(self) -> Outcome {
        self.output().await.outcome
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<RunEvent>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let control = &self.control;
            let ev = match control.session.poll_batch(control.xid, &mut self.batch, cx) {
                Poll::Ready(ev) => ev,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(ev) = RunEvent::from_event(ev) {
                self.done = matches!(ev, RunEvent::Finished(_));
                return Poll::Ready(Some(ev));
            }
        }
    }
}

impl Stream for RunHandle {
    type Item = RunEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RunEvent>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        if !self.done {
            self.control.session.detach(self.control.xid);
        }
    }
}

/// A subscription to an event source of the agent: a stream of [`MonitorEvent`]s.
/// Dropping it ends the subscription on the agent.
#[derive(Debug)]
pub struct Monitor {
    session: Session,
    xid: u16,
    batch: Batch,
    done: bool,
}

impl Monitor {
    pub fn xid(&self) -> u16 {
        self.xid
    }

    /// Asks the source to flush what it has pending; `Settled(seq)` follows those events.
    pub async fn settle(&self, seq: u32) -> Result<(), Error> {
        let xid = self.xid;
        self.session.act(|c| c.settle(xid, seq)).await
    }

    /// Ends the subscription; the stream then yields `Finished(Completed)`.
    pub async fn end(&self) -> Result<(), Error> {
        let xid = self.xid;
        self.session.act(|c| c.end_monitor(xid)).await
    }

    /// The next event; `None` after `Finished`.
    pub async fn next(&mut self) -> Option<MonitorEvent> {
        futures_lite::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<MonitorEvent>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let ev = match self.session.poll_batch(self.xid, &mut self.batch, cx) {
                Poll::Ready(ev) => ev,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(ev) = MonitorEvent::from_event(ev) {
                self.done = matches!(ev, MonitorEvent::Finished(_));
                return Poll::Ready(Some(ev));
            }
        }
    }
}

impl Stream for Monitor {
    type Item = MonitorEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MonitorEvent>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if !self.done {
            // An already-ending monitor refuses a second end; that is fine.
            self.session.abandon(self.xid);
            self.session.detach(self.xid);
        }
    }
}

/// A transfer in progress: aborted on the agent (which removes its temporary file) if the
/// operation stops before the transaction finished.
struct Transfer<'s> {
    session: &'s Session,
    xid: u16,
    armed: bool,
}

impl<'s> Transfer<'s> {
    fn new(session: &'s Session, xid: u16) -> Self {
        Transfer {
            session,
            xid,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Waits for the transaction's `Finished`.
    async fn finished(&mut self) -> Outcome {
        loop {
            let ev = self.session.next_event(self.xid).await;
            if let Some(TransferEvent::Finished(outcome)) = TransferEvent::from_event(ev) {
                self.disarm();
                return outcome;
            }
        }
    }

    /// A send failed. If the transaction is gone the agent ended it (its `Finished`
    /// explains why); otherwise report the send error.
    async fn ended_early(&mut self, e: Error) -> Error {
        match e {
            Error::Usage(UsageError::UnknownTransaction(_) | UsageError::WrongState { .. }) => {
                let outcome = self.finished().await;
                Error::from_outcome("transfer", outcome)
            }
            other => other,
        }
    }
}

impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.abandon(self.xid);
            self.session.detach(self.xid);
        }
    }
}

/// The destination of `extract_to`, written on smol's blocking pool: keeps the first write
/// error, which `Unblock` would turn into a bare "write zero".
struct Recording {
    file: LocalFile,
    failure: Arc<Mutex<Option<std::io::Error>>>,
}

impl std::io::Write for Recording {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).map_err(|e| self.record(e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().map_err(|e| self.record(e))
    }
}

impl Recording {
    /// Keeps `e` (the first one) and returns an error of the same kind to `Unblock`.
    fn record(&self, e: std::io::Error) -> std::io::Error {
        let copy = match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        };
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        copy
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use std::collections::VecDeque;
    use std::io::{self, IoSlice};

    use super::*;

    /// A sink that takes at most `step` bytes per call, from one buffer or several, and
    /// answers with the scripted errors first.
    struct Sink {
        got: Vec<u8>,
        step: usize,
        vectored: bool,
        calls: usize,
        script: VecDeque<io::Result<usize>>,
    }

    impl Sink {
        fn new(step: usize, vectored: bool) -> Sink {
            Sink {
                got: Vec::new(),
                step,
                vectored,
                calls: 0,
                script: VecDeque::new(),
            }
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if let Some(r) = self.script.pop_front() {
                return Poll::Ready(r);
            }
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                return self.poll_write(cx, first);
            }
            self.calls += 1;
            if let Some(r) = self.script.pop_front() {
                return Poll::Ready(r);
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn pieces() -> (Vec<Bytes>, Vec<u8>) {
        let pieces: Vec<Bytes> = (0u8..5)
            .map(|i| Bytes::from(vec![i; 1000 + usize::from(i) * 7]))
            .chain([Bytes::new()])
            .collect();
        let all = pieces.concat();
        (pieces, all)
    }

    #[test]
    fn every_piece_arrives_in_order_through_partial_vectored_writes() {
        let (pieces, all) = pieces();
        // 333 bytes a call: most writes stop in the middle of a piece.
        let mut sink = Sink::new(333, true);
        future::block_on(write_all_pieces(&mut sink, &pieces)).expect("written");
        assert_eq!(sink.got, all);
        assert_eq!(sink.calls, all.len().div_ceil(333));
        // One call takes every piece when the sink can.
        let mut sink = Sink::new(usize::MAX, true);
        future::block_on(write_all_pieces(&mut sink, &pieces)).expect("written");
        assert_eq!((sink.got, sink.calls), (all, 1));
    }

    #[test]
    fn a_sink_without_vectored_writes_still_gets_every_piece() {
        let (pieces, all) = pieces();
        let mut sink = Sink::new(600, false);
        future::block_on(write_all_pieces(&mut sink, &pieces)).expect("written");
        assert_eq!(sink.got, all);
    }

    #[test]
    fn interrupted_is_retried_and_a_write_of_nothing_is_an_error() {
        let (pieces, all) = pieces();
        let mut sink = Sink::new(4096, true);
        sink.script
            .push_back(Err(io::ErrorKind::Interrupted.into()));
        future::block_on(write_all_pieces(&mut sink, &pieces)).expect("written");
        assert_eq!(sink.got, all);

        let mut sink = Sink::new(4096, true);
        sink.script.push_back(Ok(0));
        let e = future::block_on(write_all_pieces(&mut sink, &pieces)).expect_err("zero");
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);

        let mut sink = Sink::new(4096, true);
        sink.script.push_back(Ok(all.len() + 1));
        let e = future::block_on(write_all_pieces(&mut sink, &pieces)).expect_err("lies");
        assert_eq!(e.kind(), io::ErrorKind::Other);
    }
}
