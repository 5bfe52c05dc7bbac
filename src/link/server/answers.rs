//! The application's answers to the requests the server machine reported: each one checks
//! the transaction's kind and state and queues the packets the dialect expects.

use bytes::Bytes;

use super::{Kind, Server};
use crate::link::{Refusal, UsageError, status};
use crate::wire::{Dialect, Packet, ProcInfoField};

impl Server {
    /// Refuses the connection with words: the client's hello (or whatever it sends first)
    /// is answered with `M`=`refusal.status`, `m`=`refusal.detail` on xid 0 instead of a
    /// hello reply, and the machine then fails with [`LinkError::Refused`](crate::link::LinkError::Refused) (flush what it
    /// queued, then close). At once if the dialect is already known, otherwise when the
    /// client's first bytes arrive (the answer must be in its dialect). Call it right after
    /// [`Server::new`]; a connection already in use is not refused.
    pub fn refuse(&mut self, refusal: Refusal) {
        if self.core.error.is_some() || !self.transactions.is_empty() {
            return;
        }
        self.refusal = Some(refusal);
        if self.core.decoder.dialect_known() {
            self.send_refusal(refusal);
        }
    }

    /// Command output (channel 1 or 2), extract data or monitor events (channel 0).
    /// Accepted while [`Server::can_send`] is true; chunked into packets.
    pub fn output(&mut self, xid: u16, channel: u16, data: Bytes) -> Result<(), UsageError> {
        self.core.check_room()?;
        let v4 = self.core.dialect() == Dialect::V4;
        let mut announce = false;
        match (self.kind_mut(xid)?, channel) {
            (Kind::Command { eof_sent, .. }, 1 | 2)
                if !eof_sent.get(eof_slot(channel)).copied().unwrap_or(true) => {}
            (Kind::Extract { ready, eof_sent }, 0) if !*eof_sent => {
                announce = v4 && !*ready;
                *ready = true;
            }
            (Kind::Monitor, 0) => {}
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "send output on this channel",
                });
            }
        }
        if announce {
            self.send(xid, Packet::Major(0))?;
        }
        if data.is_empty() {
            return Ok(());
        }
        let cid = self.config.cid;
        self.core.queue_data(cid, xid, channel, data)?;
        Ok(())
    }

    /// End of a command output channel, or of extracted data.
    pub fn output_end(&mut self, xid: u16, channel: u16) -> Result<(), UsageError> {
        self.core.check_open()?;
        let dialect = self.core.dialect();
        let send = match (self.kind_mut(xid)?, channel) {
            (Kind::Command { eof_sent, .. }, 1 | 2) => {
                let first = eof_sent
                    .get_mut(eof_slot(channel))
                    .is_some_and(|slot| !std::mem::replace(slot, true));
                // 3.0 never signals the end of stdout/stderr: the status implies it.
                first && dialect == Dialect::V4
            }
            (Kind::Extract { eof_sent, .. }, 0) => !std::mem::replace(eof_sent, true),
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "end output on this channel",
                });
            }
        };
        if send {
            self.send(xid, Packet::Eof { channel })?;
        }
        Ok(())
    }

    /// The command exited with `code`.
    pub fn command_exited(&mut self, xid: u16, code: u32) -> Result<(), UsageError> {
        self.command_status(xid, 0, code)
    }

    /// The command was killed by signal `signo`.
    pub fn command_killed(&mut self, xid: u16, signo: u32) -> Result<(), UsageError> {
        self.command_status(xid, status::EFAULT, signo)
    }

    /// The agent killed the command at its timeout.
    pub fn timed_out(&mut self, xid: u16) -> Result<(), UsageError> {
        self.expect(xid, "time out (not a command)", |k| {
            matches!(k, Kind::Command { .. })
        })?;
        self.send(xid, Packet::Timeout)?;
        self.end(xid);
        Ok(())
    }

    /// The request failed with `errno` (spawn failure, unknown user, file error, unknown
    /// event source). Sends the status sequence the transaction's kind and state require.
    pub fn fail(&mut self, xid: u16, errno: u32) -> Result<(), UsageError> {
        self.core.check_open()?;
        let v4 = self.core.dialect() == Dialect::V4;
        let packets = match self.kind_mut(xid)? {
            Kind::Command { .. } => vec![Packet::Major(errno), Packet::Minor(0)],
            Kind::Inject { ready: false } | Kind::Extract { ready: false, .. } | Kind::Monitor => {
                vec![Packet::Major(errno)]
            }
            Kind::Inject { ready: true } => vec![Packet::Minor(errno)],
            Kind::Extract { ready: true, .. } if v4 => vec![Packet::Minor(errno)],
            Kind::Extract { ready: true, .. } => vec![Packet::Major(errno)],
        };
        for p in packets {
            self.send(xid, p)?;
        }
        self.end(xid);
        Ok(())
    }

    /// The inject target is open: tell the client to send data.
    pub fn inject_ready(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.kind_mut(xid)? {
            Kind::Inject { ready } if !*ready => *ready = true,
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "become ready (not an inject waiting to start)",
                });
            }
        }
        self.send(xid, Packet::Major(0))
    }

    /// The injected file was written and renamed into place (`Ok`) or failed (`Err(errno)`).
    pub fn inject_done(&mut self, xid: u16, result: Result<(), u32>) -> Result<(), UsageError> {
        match result {
            Ok(()) => {
                self.expect(xid, "complete (not a ready inject)", |k| {
                    matches!(k, Kind::Inject { ready: true })
                })?;
                self.send(xid, Packet::Minor(0))?;
                self.end(xid);
                Ok(())
            }
            Err(errno) => self.fail(xid, errno),
        }
    }

    /// The extract source is open: data follows (`M`=0 in 4.0; nothing in 3.0).
    pub fn extract_ready(&mut self, xid: u16) -> Result<(), UsageError> {
        let v4 = self.core.dialect() == Dialect::V4;
        match self.kind_mut(xid)? {
            Kind::Extract { ready, .. } if !*ready => *ready = true,
            _ => {
                return Err(UsageError::WrongState {
                    xid,
                    what: "become ready (not an extract waiting to start)",
                });
            }
        }
        if v4 {
            self.send(xid, Packet::Major(0))?;
        }
        Ok(())
    }

    /// All data was sent (`Ok`: EOF then `m`=0) or reading failed (`Err(errno)`).
    pub fn extract_done(&mut self, xid: u16, result: Result<(), u32>) -> Result<(), UsageError> {
        match result {
            Ok(()) => {
                self.expect(xid, "complete (not an extract)", |k| {
                    matches!(k, Kind::Extract { .. })
                })?;
                if let Some(Kind::Extract { ready: false, .. }) = self.transactions.get(&xid) {
                    // An empty file: announce it before ending it.
                    self.extract_ready(xid)?;
                }
                self.output_end(xid, 0)?;
                self.send(xid, Packet::Minor(0))?;
                self.end(xid);
                Ok(())
            }
            Err(errno) => self.fail(xid, errno),
        }
    }

    /// Every event pending at the settle request has been sent.
    pub fn settled(&mut self, xid: u16, seq: u32) -> Result<(), UsageError> {
        self.expect(xid, "settle (not a monitor)", |k| {
            matches!(k, Kind::Monitor)
        })?;
        self.send(xid, Packet::Settle { seq })
    }

    /// Answer to a procinfo query.
    pub fn procinfo(&mut self, xid: u16, fields: Vec<ProcInfoField>) -> Result<(), UsageError> {
        self.expect(xid, "answer procinfo (not a command)", |k| {
            matches!(k, Kind::Command { .. })
        })?;
        self.send(xid, Packet::ProcInfoResponse { fields })
    }

    fn command_status(&mut self, xid: u16, major: u32, minor: u32) -> Result<(), UsageError> {
        self.expect(xid, "report an exit status (not a command)", |k| {
            matches!(k, Kind::Command { .. })
        })?;
        for channel in [1, 2] {
            self.output_end(xid, channel)?;
        }
        self.send(xid, Packet::Major(major))?;
        self.send(xid, Packet::Minor(minor))?;
        self.end(xid);
        Ok(())
    }
}

/// Where a command's output channel (1 or 2) keeps whether its end was sent.
fn eof_slot(channel: u16) -> usize {
    usize::from(channel.saturating_sub(1))
}
