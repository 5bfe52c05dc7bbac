//! Finishing injects off the event loop.
//!
//! An inject's last steps ([`InjectFile::finish`]: `fdatasync`, the rename, the directory's
//! `fsync`) wait for the disk: a few milliseconds here, seconds on a slow card, a busy
//! network filesystem or a disk that is failing. Done on the loop, they would stall every
//! other connection (commands, output, keepalives) for that long. One worker thread, started
//! at the first inject, finishes them in the order they came and wakes the loop through a
//! pipe; the loop then records and answers each one. Where the thread cannot be started,
//! the loop finishes the inject itself, as before.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::pipe::PipeFlags;
use tuppence_mio::ConnId;

use crate::files::{InjectFile, Injected};

/// An inject whose data has all been written, to be finished.
pub(super) struct Job {
    pub id: ConnId,
    /// The connection's id when the job was made: a connection slot reused by a new
    /// connection by the time the job is done must not get the answer.
    pub cid: u16,
    pub xid: u16,
    pub user: Vec<u8>,
    pub path: Vec<u8>,
    pub file: InjectFile,
    /// Testing aid: wait this long first, as a slow disk would
    /// (`LinkDaemonConfig::inject_finish_delay`).
    pub delay: Duration,
}

/// A finished inject, to be recorded and answered.
pub(super) struct Done {
    pub id: ConnId,
    pub cid: u16,
    pub xid: u16,
    pub user: Vec<u8>,
    pub path: Vec<u8>,
    pub mode: u32,
    pub bytes: u64,
    pub result: Result<Injected, u32>,
}

impl Job {
    /// Finishes the inject (on whichever thread calls it).
    pub fn finish(self) -> Done {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let mode = self.file.mode();
        let bytes = self.file.written();
        let result = self.file.finish().map_err(|e| e.errno());
        Done {
            id: self.id,
            cid: self.cid,
            xid: self.xid,
            user: self.user,
            path: self.path,
            mode,
            bytes,
            result,
        }
    }
}

struct Worker {
    jobs: Sender<Box<Job>>,
    done: Receiver<Done>,
    /// Readable when a job is done (the loop watches it).
    wake: OwnedFd,
    thread: JoinHandle<()>,
}

/// The worker and the count of injects it has not given back yet.
pub(super) struct Syncer {
    worker: Option<Worker>,
    /// No worker is ever started (see [`Syncer::without_worker`]).
    disabled: bool,
    in_flight: usize,
}

impl Syncer {
    pub fn new() -> Syncer {
        Syncer {
            worker: None,
            disabled: false,
            in_flight: 0,
        }
    }

    /// A syncer that never starts a worker: every inject is finished by the caller.
    pub fn without_worker() -> Syncer {
        Syncer {
            worker: None,
            disabled: true,
            in_flight: 0,
        }
    }

    /// Injects handed over and not taken back yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Hands `job` to the worker. The first call starts it and returns the fd the loop must
    /// watch (readable: call [`Syncer::take_done`]). `Err` gives the job back when there is
    /// no worker: the caller finishes it itself.
    pub fn submit(&mut self, job: Box<Job>) -> Result<Option<RawFd>, Box<Job>> {
        let mut started = None;
        if self.disabled {
            return Err(job);
        }
        if self.worker.is_none() {
            match self.start() {
                Ok(fd) => started = Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the inject finisher; injects are finished on the loop");
                    return Err(job);
                }
            }
        }
        let Some(worker) = &self.worker else {
            return Err(job);
        };
        match worker.jobs.send(job) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(started)
            }
            // The thread is gone (it cannot panic short of a bug): finish here.
            Err(mpsc::SendError(job)) => Err(job),
        }
    }

    fn start(&mut self) -> std::io::Result<RawFd> {
        let (wake, notify) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let (jobs, job_rx) = mpsc::channel::<Box<Job>>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("tuppence-sync".into())
            .spawn(move || {
                for job in job_rx {
                    if done_tx.send(job.finish()).is_err() {
                        return;
                    }
                    // A full pipe already wakes the loop: nothing is lost if this fails.
                    let _ = rustix::io::write(&notify, &[1]);
                }
            })?;
        let fd = wake.as_raw_fd();
        self.worker = Some(Worker {
            jobs,
            done,
            wake,
            thread,
        });
        Ok(fd)
    }

    /// The injects finished since the last call (the wake-up pipe is emptied too).
    pub fn take_done(&mut self) -> Vec<Done> {
        let Some(worker) = &self.worker else {
            return Vec::new();
        };
        let mut buf = [0u8; 256];
        while matches!(rustix::io::read(&worker.wake, &mut buf), Ok(n) if n > 0) {}
        let done: Vec<Done> = worker.done.try_iter().collect();
        self.in_flight -= done.len();
        done
    }

    /// Waits until every inject handed over is finished, or `deadline`; returns them.
    pub fn wait_all(&mut self, deadline: Instant) -> Vec<Done> {
        let mut all = Vec::new();
        let Some(worker) = &self.worker else {
            return all;
        };
        while self.in_flight > all.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match worker.done.recv_timeout(left) {
                Ok(d) => all.push(d),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        self.in_flight -= all.len();
        all
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after the job it is on. It is not
        // joined: a sync stuck on a dead disk must not hang the agent's exit.
        if let Some(worker) = self.worker.take() {
            drop(worker.jobs);
            if worker.thread.is_finished() {
                let _ = worker.thread.join();
            }
        }
    }
}
