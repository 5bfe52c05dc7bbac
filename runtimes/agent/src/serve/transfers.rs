//! Injects and extracts: files written to a temporary beside the target and renamed into
//! place only when complete, and files read as the requesting user one chunk per turn
//! (many transfers on one link take turns). Each ends with exactly one record.

use bytes::Bytes;
use tuppence::link::status;
use tuppence_mio::ConnId;

use std::time::Instant;

use mio::Interest;

use super::arena::{BULK_CHUNK, whole_packets};
use super::connections::Tx;
use super::syncer::{Done, Job, Syncer};
use super::{LinkDaemon, SHUTDOWN_SYNC_WAIT, Tag};
use crate::sources::{AuditEvent, AuditOutcome};
use crate::{ExtractFile, InjectFile};

/// Inject data is written once per loop turn, or as soon as this much is waiting.
const INJECT_BATCH: usize = 1024 * 1024;

/// An inject: the temporary file and the data received but not yet written (written
/// once per loop turn, with `writev`).
pub(super) struct InjectTx {
    pub file: InjectFile,
    pub user: Vec<u8>,
    /// The path as requested (for its audit record).
    pub path: Vec<u8>,
    pub pending: Vec<Bytes>,
    pub pending_len: usize,
}

/// An extract, with the user and path as requested (for its audit record).
pub(super) struct ExtractTx {
    pub file: ExtractFile,
    pub user: Vec<u8>,
    pub path: Vec<u8>,
}

impl LinkDaemon {
    pub(super) fn start_inject(
        &mut self,
        id: ConnId,
        xid: u16,
        user: Bytes,
        path: Bytes,
        mode: u32,
    ) {
        let result = if self.user_allowed(&user) {
            InjectFile::create(&user, &path, mode).map_err(|e| e.errno())
        } else {
            Err(status::EACCES)
        };
        match result {
            Ok(file) => {
                self.answer(id, xid, "inject ready", |s| s.inject_ready(xid));
                let tx = InjectTx {
                    file,
                    user: user.to_vec(),
                    path: path.to_vec(),
                    pending: Vec::new(),
                    pending_len: 0,
                };
                self.put_tx(id, xid, Tx::Inject(Box::new(tx)));
            }
            Err(errno) => {
                self.answer(id, xid, "fail", |s| s.fail(xid, errno));
                self.audit(&AuditEvent::Inject {
                    cid: self.cid(id),
                    xid,
                    user: &user,
                    path: &path,
                    mode,
                    bytes: 0,
                    outcome: AuditOutcome::Status(errno),
                });
            }
        }
    }

    pub(super) fn on_inject_data(&mut self, id: ConnId, xid: u16, data: Bytes) {
        let full = match self.tx_mut(id, xid) {
            Some(Tx::Inject(t)) => {
                t.pending_len += data.len();
                t.pending.push(data);
                t.pending_len >= INJECT_BATCH
            }
            _ => return,
        };
        if full {
            self.write_inject(id, xid);
        } else if self.unwritten_injects.last() != Some(&(id, xid)) {
            self.unwritten_injects.push((id, xid));
        }
    }

    /// All data came: written here, then flushed and renamed into place off the loop
    /// ([`super::syncer`]), then recorded and answered ([`LinkDaemon::inject_finished`]).
    pub(super) fn on_inject_end(&mut self, id: ConnId, xid: u16) {
        self.write_inject(id, xid);
        let Some(Tx::Inject(t)) = self.take_tx(id, xid) else {
            return;
        };
        let InjectTx {
            file, user, path, ..
        } = *t;
        let job = Box::new(Job {
            id,
            cid: self.cid(id),
            xid,
            user,
            path,
            file,
            delay: self.config.inject_finish_delay,
        });
        match self.syncer.submit(job) {
            Ok(None) => {}
            Ok(Some(wake)) => {
                if self
                    .register(wake, Interest::READABLE, Tag::Synced)
                    .is_none()
                {
                    // Without the wake-up the loop would not see injects end; the next
                    // ones are finished here (`Syncer` is replaced, its thread ends).
                    let pending = self.syncer.wait_all(Instant::now() + SHUTDOWN_SYNC_WAIT);
                    self.syncer = Syncer::without_worker();
                    for done in pending {
                        self.inject_finished(done);
                    }
                }
            }
            Err(job) => {
                let done = job.finish();
                self.inject_finished(done);
            }
        }
    }

    /// Records and answers a finished inject, unless its connection is gone (a new
    /// connection in the same slot has another id).
    pub(super) fn inject_finished(&mut self, done: Done) {
        let Done {
            id,
            cid,
            xid,
            user,
            path,
            mode,
            bytes,
            result,
        } = done;
        self.audit(&AuditEvent::Inject {
            cid,
            xid,
            user: &user,
            path: &path,
            mode,
            bytes,
            outcome: AuditOutcome::Status(result.err().unwrap_or(0)),
        });
        if self.io.get(id).is_some_and(|c| c.state.cid == cid) {
            self.answer(id, xid, "inject done", |s| {
                s.inject_done(xid, result.map(|_| ()))
            });
        }
    }

    /// Writes the data an inject has received so far; a failure (a full disk: 28) ends the
    /// transfer, with its record.
    pub(super) fn write_inject(&mut self, id: ConnId, xid: u16) {
        let failed = match self.tx_mut(id, xid) {
            Some(Tx::Inject(t)) if !t.pending.is_empty() => {
                let r = t.file.write_bufs(&t.pending);
                t.pending.clear();
                t.pending_len = 0;
                r.err().map(|e| e.errno())
            }
            _ => None,
        };
        if let Some(errno) = failed {
            self.finish_tx(id, xid, errno);
            self.answer(id, xid, "inject done", |s| s.inject_done(xid, Err(errno)));
        }
    }

    pub(super) fn start_extract(&mut self, id: ConnId, xid: u16, user: Bytes, path: Bytes) {
        let result = if self.user_allowed(&user) {
            ExtractFile::open(&user, &path).map_err(|e| e.errno())
        } else {
            Err(status::EACCES)
        };
        match result {
            Ok(file) => {
                self.answer(id, xid, "extract ready", |s| s.extract_ready(xid));
                let tx = ExtractTx {
                    file,
                    user: user.to_vec(),
                    path: path.to_vec(),
                };
                self.put_tx(id, xid, Tx::Extract(Box::new(tx)));
            }
            Err(errno) => {
                self.answer(id, xid, "fail", |s| s.fail(xid, errno));
                self.audit(&AuditEvent::Extract {
                    cid: self.cid(id),
                    xid,
                    user: &user,
                    path: &path,
                    bytes: 0,
                    outcome: AuditOutcome::Status(errno),
                });
            }
        }
    }

    /// One chunk per call: many transfers on one link take turns.
    pub(super) fn pump_extract(&mut self, id: ConnId, xid: u16) {
        if !self.link_has_room(id) {
            return;
        }
        let Some(conn) = self.io.get_mut(id) else {
            return;
        };
        let want = whole_packets(BULK_CHUNK, conn.link.machine().max_data_chunk());
        let Some(Tx::Extract(t)) = conn.state.txs.get_mut(&xid) else {
            return;
        };
        let r = t.file.read_chunk(self.arena.room(want), want);
        let data = self.arena.take();
        let result = match r {
            Ok(0) => Ok(()),
            Ok(_) => {
                // `link_has_room` held, so the machine takes it.
                self.answer(id, xid, "output", |s| s.output(xid, 0, data));
                self.busy = true;
                return;
            }
            Err(e) => Err(e),
        };
        // The end: its record (with the error behind a failure), then the answer.
        let status = result.as_ref().map_or_else(|e| e.errno(), |()| 0);
        let cid = self.cid(id);
        if let Some(tx) = self.take_tx(id, xid) {
            let error = result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
            self.audit_end(cid, xid, &tx, AuditOutcome::Status(status), error);
            self.drop_tx(tx);
        }
        let result = result.map_err(|e| e.errno());
        self.answer(id, xid, "extract done", |s| s.extract_done(xid, result));
    }
}
