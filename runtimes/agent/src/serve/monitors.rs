//! Monitors: an event source (`kmsg`, `file:PATH`, `agent`) watched for a client. Lines
//! go out while the link can take them; a settle request is answered once everything
//! pending at it has been sent; the client's end is answered by the machine.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Instant;

use bytes::Bytes;
use mio::Interest;
use tracing::warn;
use tuppence_mio::{ConnId, ExtraId};

use super::connections::Tx;
use super::{LinkDaemon, Tag};
use crate::escape::Clean;
use crate::sources::{AuditEvent, AuditOutcome, EventSource, open_source};

/// Lines taken from an event source per call.
const LINES: usize = 64;

/// A monitor: its source and what it still has to send.
pub(super) struct MonitorTx {
    /// The source's name as requested (for its audit record).
    pub name: Bytes,
    pub source: Box<dyn EventSource + Send>,
    pub extra: Option<ExtraId>,
    pub readable: bool,
    pub next_poll: Option<Instant>,
    /// Lines read but not yet accepted by the link.
    pub stash: VecDeque<Bytes>,
    /// Settle requests waiting for the source to be drained.
    pub settles: VecDeque<u32>,
}

impl LinkDaemon {
    pub(super) fn start_monitor(&mut self, id: ConnId, xid: u16, source: Bytes, now: Instant) {
        match open_source(&source, &self.trail, &self.monitor_readers()) {
            Ok(src) => {
                let extra = src
                    .poll_fd()
                    .map(|fd| fd.as_raw_fd())
                    .and_then(|fd| self.register(fd, Interest::READABLE, Tag::Source(id, xid)));
                let next_poll = src.poll_interval().map(|i| now + i);
                let tx = MonitorTx {
                    name: source,
                    source: src,
                    extra,
                    readable: true,
                    next_poll,
                    stash: VecDeque::new(),
                    settles: VecDeque::new(),
                };
                self.put_tx(id, xid, Tx::Monitor(Box::new(tx)));
            }
            Err(e) => {
                self.answer(id, xid, "fail", |s| s.fail(xid, e.errno()));
                self.audit(&AuditEvent::Monitor {
                    cid: self.cid(id),
                    xid,
                    source: &source,
                    outcome: AuditOutcome::Status(e.errno()),
                });
            }
        }
    }

    pub(super) fn on_settle(&mut self, id: ConnId, xid: u16, seq: u32) {
        if let Some(Tx::Monitor(m)) = self.tx_mut(id, xid) {
            m.settles.push_back(seq);
            m.readable = true;
        }
    }

    pub(super) fn pump_monitor(&mut self, id: ConnId, xid: u16, now: Instant) {
        let Some(Tx::Monitor(mut m)) = self.take_tx(id, xid) else {
            return;
        };
        let due = m.next_poll.is_some_and(|t| now >= t);
        let trail = m.extra.is_none() && m.next_poll.is_none();
        if due || trail {
            m.readable = true;
        }
        loop {
            // First what was read but not yet sent.
            while let Some(line) = m.stash.front() {
                if !self.link_has_room(id) {
                    break;
                }
                let line = line.clone();
                // `link_has_room` held, so the machine takes it.
                self.answer(id, xid, "output", |s| s.output(xid, 0, line));
                m.stash.pop_front();
            }
            if !m.stash.is_empty() || !m.readable {
                break;
            }
            let batch = if m.settles.is_empty() {
                m.source.read_new(LINES)
            } else {
                m.source.flush(LINES)
            };
            match batch {
                Ok(batch) => {
                    m.stash.extend(batch.lines);
                    if batch.drained {
                        m.readable = false;
                    }
                }
                Err(e) => {
                    // The source cannot go on (a FIFO swapped in for a followed file, a file
                    // its readers may no longer open...): the monitor ends with the status.
                    let cid = self.cid(id);
                    if !self.config.audit {
                        // (With --audit the record's line says it, with the error.)
                        warn!(cid, xid, error = %Clean(&e), "event source failed; monitor ended");
                    }
                    let tx = Tx::Monitor(m);
                    self.audit_end(cid, xid, &tx, AuditOutcome::Status(e.errno()), Some(&e));
                    self.drop_tx(tx);
                    self.answer(id, xid, "fail", |s| s.fail(xid, e.errno()));
                    return;
                }
            }
        }
        if m.stash.is_empty() && !m.readable {
            while let Some(seq) = m.settles.pop_front() {
                self.answer(id, xid, "settled", |s| s.settled(xid, seq));
            }
        } else if self.link_has_room(id) {
            self.busy = true;
        }
        if due {
            m.next_poll = m.source.poll_interval().map(|i| now + i);
        }
        self.put_tx(id, xid, Tx::Monitor(m));
    }
}
