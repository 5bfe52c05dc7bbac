//! The agent's packets as the client machine handles them: the handshake (skipping a
//! previous session's output on a device link), then each transaction's answers.

use super::deadlines::Deadline;
use super::{Client, Kind, Transaction};
use crate::link::core::Core;
use crate::link::input::Input;
use crate::link::stats::count;
use crate::link::status::{EFAULT, EPROTO};
use crate::link::{
    ClientEvent, ConnectInfo, LinkError, Outcome, Refusal, Violation, effective_keepalive,
};
use crate::wire::{DecodeError, Frame, Hello, Packet};

impl Client {
    fn on_frame(&mut self, frame: Frame) {
        let Some(cid) = self.cid else {
            return self.on_handshake(frame);
        };
        if frame.cid != cid {
            count(&mut self.core.stats.foreign_cid_dropped, 1);
            return;
        }
        self.core.saw_traffic();
        match frame.packet {
            Packet::Keepalive | Packet::Hello(_) => {}
            packet => self.on_transaction_packet(frame.xid, packet),
        }
    }

    pub(super) fn on_handshake(&mut self, frame: Frame) {
        // An agent that will not serve us answers the hello with `M`=why, `m`=detail on
        // xid 0, then closes the connection.
        let resync = self.config.resync_before_hello;
        match (frame.packet, self.refusing) {
            (Packet::Major(status), None | Some((_, Some(_)))) if status != 0 && frame.xid == 0 => {
                self.refusing = Some((status, None));
            }
            (Packet::Minor(detail), Some((status, None))) if frame.xid == 0 => {
                if resync {
                    self.refusing = Some((status, Some(detail)));
                } else {
                    self.fail(LinkError::Refused(Refusal { status, detail }));
                }
            }
            (Packet::Hello(hello), None) => self.on_hello_reply(frame.cid, hello),
            (Packet::Hello(hello), Some(_)) if resync => {
                self.refusing = None;
                self.on_hello_reply(frame.cid, hello);
            }
            (packet, _) => self.fail(LinkError::Handshake(packet.packet_type().name())),
        }
    }

    pub(super) fn on_hello_reply(&mut self, cid: u16, hello: Hello) {
        let ours = self.config.dialect.version();
        if hello.major != ours.0 {
            return self.fail(LinkError::VersionMismatch {
                ours,
                theirs: (hello.major, hello.minor),
            });
        }
        self.core.saw_traffic();
        self.cid = Some(cid);
        self.server_version = Some((hello.major, hello.minor));
        self.core.set_keepalive(
            effective_keepalive(hello.keepalive, self.config.limits.min_keepalive),
            true,
        );
        self.connected = Some(ConnectInfo {
            cid,
            server_version: (hello.major, hello.minor),
            keepalive: hello.keepalive,
            latency: self.core.now().saturating_duration_since(self.started),
        });
        self.events.push_back(ClientEvent::Connected {
            cid,
            server_version: (hello.major, hello.minor),
            keepalive: hello.keepalive,
        });
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        for (xid, packet) in pending {
            // Validated when queued.
            let _ = self.core.queue(cid, xid, &packet);
            if matches!(
                self.transactions.get(&xid),
                Some(Transaction {
                    deadline: Deadline::Unarmed(_),
                    ..
                })
            ) {
                self.unarmed.push(xid);
            }
        }
    }

    pub(super) fn on_transaction_packet(&mut self, xid: u16, packet: Packet) {
        let Some(tx) = self.transactions.get_mut(&xid) else {
            count(&mut self.core.stats.unknown_xid_dropped, 1);
            return;
        };
        // 71 alone ends any transaction: the agent did not understand the request.
        if packet == Packet::Major(EPROTO) {
            return self.finish(xid, Outcome::Failed { errno: EPROTO });
        }
        match (&mut tx.kind, packet) {
            (Kind::Command, Packet::Data { channel, data }) if channel == 1 || channel == 2 => {
                self.events
                    .push_back(ClientEvent::Output { xid, channel, data });
            }
            (Kind::Command, Packet::Eof { channel }) if channel == 1 || channel == 2 => {
                self.events
                    .push_back(ClientEvent::OutputEnd { xid, channel });
            }
            (Kind::Command, Packet::Major(m)) if tx.major.is_none() => tx.major = Some(m),
            (Kind::Command, Packet::Minor(code)) => {
                let outcome = match tx.major.unwrap_or(0) {
                    0 => Outcome::Exited(code),
                    EFAULT if code != 0 => Outcome::Signaled(code),
                    errno => Outcome::Failed { errno },
                };
                self.finish(xid, outcome);
            }
            (Kind::Command, Packet::Timeout) => self.finish(xid, Outcome::TimedOut),
            (Kind::Command, Packet::ProcInfoResponse { fields }) => {
                self.events.push_back(ClientEvent::ProcInfo { xid, fields });
            }
            (Kind::Inject { ready, .. }, Packet::Major(0)) if !*ready => {
                *ready = true;
                self.events.push_back(ClientEvent::InjectReady { xid });
            }
            (Kind::Inject { .. } | Kind::Extract | Kind::Monitor { .. }, Packet::Major(errno))
                if errno != 0 =>
            {
                self.finish(xid, Outcome::Failed { errno })
            }
            (Kind::Inject { .. } | Kind::Extract | Kind::Monitor { .. }, Packet::Minor(0)) => {
                self.finish(xid, Outcome::Completed)
            }
            (Kind::Inject { .. } | Kind::Extract, Packet::Minor(errno)) => {
                self.finish(xid, Outcome::Failed { errno })
            }
            (Kind::Extract, Packet::Major(0)) if tx.major.is_none() => tx.major = Some(0),
            (Kind::Extract, Packet::Data { channel: 0, data }) => {
                self.events.push_back(ClientEvent::Output {
                    xid,
                    channel: 0,
                    data,
                });
            }
            (Kind::Extract, Packet::Eof { channel: 0 }) => {
                self.events
                    .push_back(ClientEvent::OutputEnd { xid, channel: 0 });
            }
            (Kind::Monitor { .. }, Packet::Data { channel: 0, data }) => {
                self.events
                    .push_back(ClientEvent::MonitorData { xid, data });
            }
            (Kind::Monitor { .. }, Packet::Settle { seq }) => {
                self.events.push_back(ClientEvent::Settled { xid, seq });
            }
            (Kind::Monitor { .. }, Packet::Eof { channel: 0 } | Packet::Major(0)) => {}
            (_, packet) => {
                self.unexpected(xid, &packet, "not valid for this transaction now");
            }
        }
    }
}

impl Input for Client {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }
    fn has_room(&self) -> bool {
        self.events.len() < self.config.limits.max_events
    }
    fn on_frame(&mut self, frame: Frame) {
        Client::on_frame(self, frame)
    }
    /// Before the hello reply, with `resync_before_hello`: drops what cannot start it
    /// (see `wire::Decoder::skip_to_reply`), so that stale output of a previous session,
    /// even from the middle of a packet, is skipped.
    fn prepare(&mut self) {
        if self.cid.is_none() && self.config.resync_before_hello {
            let skipped = self.core.decoder.skip_to_reply();
            count(&mut self.core.stats.skipped_before_hello, skipped);
        }
    }
    fn on_bad_packet(&mut self, error: DecodeError) {
        self.violation(Violation::Decode(error))
    }
    fn on_violation(&mut self, violation: Violation) {
        self.violation(violation)
    }
    fn on_fatal(&mut self, error: LinkError) {
        self.fail(error)
    }
}
