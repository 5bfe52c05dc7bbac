//! The client's packets as the server machine handles them: hellos and sessions, new
//! requests, packets for live transactions, and what makes no sense (answered with words
//! where a client would otherwise wait).

use std::time::Duration;

use super::{Kind, LastHello, Server};
use crate::link::core::Core;
use crate::link::input::Input;
use crate::link::stats::count;
use crate::link::{
    LinkError, Refusal, ServerEvent, Violation, effective_keepalive, negotiate_keepalive, status,
};
use crate::wire::{DecodeError, Dialect, Frame, Hello, Packet, PacketType};

impl Server {
    pub(super) fn violation(&mut self, v: Violation) {
        count(&mut self.core.stats.violations, 1);
        self.events.push_back(ServerEvent::ProtocolViolation(v));
    }

    /// A bad packet: answered with 71 on its xid if that opens no live transaction. A
    /// hello that does not parse is refused (see the type docs).
    fn on_decode_error(&mut self, e: DecodeError) {
        self.last_hello = None;
        let header = e.header().copied();
        self.violation(Violation::Decode(e));
        if let Some(refusal) = self.refusal {
            return self.send_refusal(refusal);
        }
        let Some(h) = header else {
            return;
        };
        let ours = h.cid == self.config.cid;
        if h.kind == PacketType::Hello.code(self.core.dialect()) && (ours || h.cid == 0) {
            if self.config.hello_resets_session {
                let bad = Refusal::bad_hello();
                let _ = self.send(0, Packet::Major(bad.status));
                let _ = self.send(0, Packet::Minor(bad.detail));
            } else {
                self.send_refusal(Refusal::bad_hello());
            }
        } else if ours && !self.transactions.contains_key(&h.xid) {
            let _ = self.send(h.xid, Packet::Major(status::EPROTO));
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        if let Some(refusal) = self.refusal {
            return self.send_refusal(refusal);
        }
        let cid = self.config.cid;
        self.last_hello = None;
        if let Packet::Hello(hello) = &frame.packet
            && (frame.cid == 0 || frame.cid == cid)
        {
            self.on_hello(hello.clone());
            if self.config.hello_resets_session {
                let bytes = frame
                    .packet
                    .to_bytes(self.core.dialect(), frame.cid, frame.xid);
                self.last_hello = bytes.ok().map(|bytes| LastHello {
                    bytes,
                    reply_end: self
                        .core
                        .stats
                        .bytes_sent
                        .saturating_add(self.core.transmit_buffered() as u64),
                });
            }
            return;
        }
        if frame.cid != cid {
            count(&mut self.core.stats.foreign_cid_dropped, 1);
            return;
        }
        self.core.saw_traffic();
        let xid = frame.xid;
        match frame.packet {
            Packet::Keepalive => {}
            Packet::Quit => self.events.push_back(ServerEvent::Quit),
            packet if self.transactions.contains_key(&xid) => self.on_live(xid, packet),
            packet => self.on_new(xid, packet),
        }
    }

    /// A hello on a device link: whoever sent it starts a new session (see
    /// [`ServerConfig::hello_resets_session`]). Also run for a hello with nothing live, so
    /// that queued keepalives or answers of the old session do not reach the new client.
    fn reset_session(&mut self) {
        let mut aborted: Vec<u16> = self.transactions.keys().copied().collect();
        aborted.sort_unstable();
        self.transactions.clear();
        self.closing.clear();
        self.core.discard_transmit();
        self.discard_unsent = true;
        if !aborted.is_empty() {
            count(&mut self.core.stats.session_resets, 1);
            self.events.push_back(ServerEvent::SessionReset { aborted });
        }
    }

    fn on_hello(&mut self, hello: Hello) {
        self.core.saw_traffic();
        if self.config.hello_resets_session {
            self.reset_session();
        }
        let keepalive = negotiate_keepalive(hello.keepalive, self.config.keepalive);
        let (major, minor) = self.core.dialect().version();
        let reply = Packet::Hello(Hello {
            major,
            minor,
            keepalive,
        });
        let _ = self.send(0, reply);
        self.core.set_keepalive(
            effective_keepalive(keepalive, self.config.limits.min_keepalive),
            true,
        );
        self.events.push_back(ServerEvent::Hello {
            client_version: (hello.major, hello.minor),
            keepalive,
        });
    }

    /// Refuses a request at once with `errno`, in the shape the client expects for that
    /// request: `M` and `m`=0 for a command (the C client ends a command only at `m`), `M`
    /// alone for the others.
    fn refuse_request(&mut self, xid: u16, packet: &Packet, errno: u32) {
        let _ = self.send(xid, Packet::Major(errno));
        if matches!(packet, Packet::Command(_)) {
            let _ = self.send(xid, Packet::Minor(0));
        }
    }

    fn on_new(&mut self, xid: u16, packet: Packet) {
        if is_request(&packet) && self.transactions.len() >= self.config.limits.max_transactions {
            return self.refuse_request(xid, &packet, status::EAGAIN);
        }
        match packet {
            Packet::Command(c) => {
                if c.command.is_empty() {
                    let _ = self.send(xid, Packet::Major(status::EPROTO));
                    return self.violation(Violation::Unexpected {
                        xid,
                        packet: PacketType::Command,
                        why: "empty command",
                    });
                }
                let tty = c.wants_tty();
                let timeout = match c.timeout {
                    0 => self.config.default_command_timeout,
                    s => Duration::from_secs(u64::from(s)),
                };
                self.transactions.insert(
                    xid,
                    Kind::Command {
                        eof_sent: [false, tty],
                        stdin_done: false,
                    },
                );
                if tty {
                    // No separate stderr on a tty: say so before any output.
                    let _ = self.send(xid, Packet::Eof { channel: 2 });
                }
                self.events.push_back(ServerEvent::RunCommand {
                    xid,
                    user: c.user,
                    command: c.command,
                    timeout,
                    tty,
                    env: c.env,
                });
            }
            Packet::Inject { user, path, mode } => {
                self.transactions.insert(xid, Kind::Inject { ready: false });
                self.events.push_back(ServerEvent::Inject {
                    xid,
                    user,
                    path,
                    mode,
                });
            }
            Packet::Extract { user, path } => {
                self.transactions.insert(
                    xid,
                    Kind::Extract {
                        ready: false,
                        eof_sent: false,
                    },
                );
                self.events
                    .push_back(ServerEvent::Extract { xid, user, path });
            }
            Packet::Monitor { source } => {
                self.transactions.insert(xid, Kind::Monitor);
                self.events.push_back(ServerEvent::Monitor { xid, source });
            }
            // Late stdin, EOF or interrupt after the command ended: normal, drop.
            Packet::Data { .. } | Packet::Eof { .. } | Packet::Interrupt { .. } => {
                count(&mut self.core.stats.unknown_xid_dropped, 1);
            }
            // Nothing pending on a non-monitor: settled at once.
            Packet::Settle { seq } => {
                let _ = self.send(xid, Packet::Settle { seq });
            }
            Packet::ProcInfoQuery { .. } => {
                let _ = self.send(xid, Packet::Major(status::ESRCH));
            }
            other => {
                let _ = self.send(xid, Packet::Major(status::EPROTO));
                self.violation(Violation::Unexpected {
                    xid,
                    packet: other.packet_type(),
                    why: "not a request a client may send",
                });
            }
        }
    }

    fn on_live(&mut self, xid: u16, packet: Packet) {
        if is_request(&packet) {
            // The xid is taken: say so at once, and leave the live transaction alone.
            let kind = packet.packet_type();
            self.refuse_request(xid, &packet, status::EBUSY);
            return self.violation(Violation::Unexpected {
                xid,
                packet: kind,
                why: "a request on an xid that is still live (answered EBUSY)",
            });
        }
        if self.closing.contains(&xid) {
            // The client already ended or aborted it: what follows is late.
            count(&mut self.core.stats.unknown_xid_dropped, 1);
            return;
        }
        let Some(kind) = self.transactions.get_mut(&xid) else {
            return;
        };
        let event = match (kind, packet) {
            (Kind::Command { stdin_done, .. }, Packet::Data { channel: 0, data }) => {
                if *stdin_done {
                    None
                } else {
                    Some(ServerEvent::Stdin { xid, data })
                }
            }
            (Kind::Command { stdin_done, .. }, Packet::Eof { channel: 0 }) => {
                (!std::mem::replace(stdin_done, true)).then_some(ServerEvent::StdinEnd { xid })
            }
            (Kind::Command { .. }, Packet::Interrupt { signal }) => {
                Some(ServerEvent::Interrupt { xid, signal })
            }
            (Kind::Command { .. }, Packet::ProcInfoQuery { mask }) => {
                Some(ServerEvent::ProcInfo { xid, mask })
            }
            (
                Kind::Command { .. } | Kind::Inject { .. } | Kind::Extract { .. },
                Packet::Settle { seq },
            ) => {
                let _ = self.send(xid, Packet::Settle { seq });
                None
            }
            (Kind::Inject { .. }, Packet::Data { channel: 0, data }) => {
                Some(ServerEvent::InjectData { xid, data })
            }
            (Kind::Inject { .. }, Packet::Eof { channel: 0 }) => {
                Some(ServerEvent::InjectEnd { xid })
            }
            (Kind::Inject { .. } | Kind::Extract { .. }, Packet::Interrupt { .. }) => {
                // Answered `m`=EINTR when the application polls the event.
                self.closing.insert(xid);
                Some(ServerEvent::TransferAborted { xid })
            }
            (Kind::Monitor, Packet::Settle { seq }) => Some(ServerEvent::Settle { xid, seq }),
            (Kind::Monitor, Packet::Eof { channel: 0 }) => {
                // Answered `X`, `M`=0, `m`=0 when the application polls the event.
                self.closing.insert(xid);
                Some(ServerEvent::MonitorEnd { xid })
            }
            (
                Kind::Inject { .. } | Kind::Extract { .. } | Kind::Monitor,
                Packet::ProcInfoQuery { .. },
            ) => {
                let _ = self.send(xid, Packet::ProcInfoResponse { fields: Vec::new() });
                None
            }
            (_, packet) => {
                self.violation(Violation::Unexpected {
                    xid,
                    packet: packet.packet_type(),
                    why: "not valid for this transaction now",
                });
                None
            }
        };
        if let Some(e) = event {
            self.events.push_back(e);
        }
    }
}

/// The packets that open a transaction.
fn is_request(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::Command(_)
            | Packet::Inject { .. }
            | Packet::Extract { .. }
            | Packet::Monitor { .. }
    )
}

impl Input for Server {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }
    /// Input waits while events are undrained, and also while the peer leaves twice the
    /// transmit limit unread: every request may be answered (71, `S`, `EAGAIN`, …), so a
    /// peer that floods requests and never reads would otherwise grow the transmit buffer
    /// without bound. Output alone never gets there (it stops at the limit).
    fn has_room(&self) -> bool {
        self.events.len() < self.config.limits.max_events
            && self.core.transmit_buffered()
                <= self.config.limits.max_transmit_buffer.saturating_mul(2)
    }
    /// A device link found a new client's hello where the packet boundaries were lost:
    /// a new session starts here (its hello, decoded next, is in `dialect`).
    fn on_resync(&mut self, dialect: Dialect) {
        self.last_hello = None;
        self.core.decoder.set_dialect(dialect);
        self.reset_session();
    }
    fn on_frame(&mut self, frame: Frame) {
        Server::on_frame(self, frame)
    }
    fn on_bad_packet(&mut self, error: DecodeError) {
        self.on_decode_error(error)
    }
    fn on_violation(&mut self, violation: Violation) {
        self.violation(violation)
    }
    fn on_fatal(&mut self, error: LinkError) {
        self.die(error)
    }
}
