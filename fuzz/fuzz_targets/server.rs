//! The Server machine under arbitrary client bytes, well-formed client packets, time
//! steps and agent answers. Checks: no panic; bounded queues; every transmitted byte
//! decodes as whole server packets carrying the connection's cid; sticky errors. On a
//! device link also the resynchronisation on hellos (silences inside packets, framing
//! errors, a dialect change with the session) and the carryover of a hang-up into the
//! port's next session.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tuppence::Machine;
use tuppence::link::{Server, ServerConfig};
use tuppence::wire::{CommandRequest, Decoder, Dialect, Hello, Packet, Sender};

#[path = "../common/link_machine.rs"]
mod link_machine;
use link_machine::{LimitsInput, feed, no_nul, procinfo_fields};

#[derive(Arbitrary, Debug)]
struct Config {
    /// None: detect from the first bytes.
    dialect: Option<bool>,
    cid: u16,
    keepalive: u16,
    limits: LimitsInput,
    /// A device link: a hello resets the session, stale partial packets are dropped.
    device: bool,
}

#[derive(Arbitrary, Debug)]
enum ClientPacket {
    Hello {
        major: u8,
        minor: u8,
        keepalive: u16,
    },
    Command {
        user: Vec<u8>,
        command: Vec<u8>,
        timeout: u32,
        tty: u32,
        env: Vec<Vec<u8>>,
    },
    Inject {
        user: Vec<u8>,
        path: Vec<u8>,
        mode: u32,
    },
    Extract {
        user: Vec<u8>,
        path: Vec<u8>,
    },
    Quit,
    Interrupt {
        signal: Vec<u8>,
    },
    Monitor {
        source: Vec<u8>,
    },
    Data {
        channel: u16,
        data: Vec<u8>,
    },
    Eof {
        channel: u16,
    },
    Keepalive,
    Settle {
        seq: u32,
    },
    ProcInfo {
        mask: u32,
    },
    Major(u32),
    Minor(u32),
    Timeout,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes from the client.
    Bytes(Vec<u8>),
    /// A well-formed packet (strings without NUL) in `v4` or 3.0 layout.
    Packet {
        v4: bool,
        foreign_cid: bool,
        xid: u8,
        packet: ClientPacket,
    },
    Advance(u16),
    /// A caller passing an earlier time (the machine must clamp it).
    Back(u16),
    Timeout,
    Eof,
    /// The application drains events and transmits.
    Poll,
    Output {
        xid: u8,
        channel: u8,
        len: u16,
    },
    OutputEnd {
        xid: u8,
        channel: u8,
    },
    Exited {
        xid: u8,
        code: u32,
    },
    Killed {
        xid: u8,
        signo: u32,
    },
    TimedOut {
        xid: u8,
    },
    Fail {
        xid: u8,
        errno: u32,
    },
    InjectReady {
        xid: u8,
    },
    InjectDone {
        xid: u8,
        err: Option<u32>,
    },
    ExtractReady {
        xid: u8,
    },
    ExtractDone {
        xid: u8,
        err: Option<u32>,
    },
    Settled {
        xid: u8,
        seq: u32,
    },
    ProcInfo {
        xid: u8,
        fields: Vec<(u8, Vec<u8>)>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

fn to_packet(p: ClientPacket) -> Packet {
    match p {
        ClientPacket::Hello {
            major,
            minor,
            keepalive,
        } => Packet::Hello(Hello {
            major,
            minor,
            keepalive,
        }),
        ClientPacket::Command {
            user,
            command,
            timeout,
            tty,
            env,
        } => Packet::Command(CommandRequest {
            user: no_nul(user),
            command: no_nul(command),
            timeout,
            request_tty: tty,
            reserved: [0, 0],
            env: env.into_iter().take(8).map(no_nul).collect(),
        }),
        ClientPacket::Inject { user, path, mode } => Packet::Inject {
            user: no_nul(user),
            path: no_nul(path),
            mode,
        },
        ClientPacket::Extract { user, path } => Packet::Extract {
            user: no_nul(user),
            path: no_nul(path),
        },
        ClientPacket::Quit => Packet::Quit,
        ClientPacket::Interrupt { signal } => Packet::Interrupt {
            signal: no_nul(signal),
        },
        ClientPacket::Monitor { source } => Packet::Monitor {
            source: no_nul(source),
        },
        ClientPacket::Data { channel, data } => Packet::Data {
            channel,
            data: Bytes::from(data),
        },
        ClientPacket::Eof { channel } => Packet::Eof { channel },
        ClientPacket::Keepalive => Packet::Keepalive,
        ClientPacket::Settle { seq } => Packet::Settle { seq },
        ClientPacket::ProcInfo { mask } => Packet::ProcInfoQuery { mask },
        ClientPacket::Major(v) => Packet::Major(v),
        ClientPacket::Minor(v) => Packet::Minor(v),
        ClientPacket::Timeout => Packet::Timeout,
    }
}

struct Harness {
    server: Server,
    config: ServerConfig,
    cid: u16,
    max_events: usize,
    max_tx: usize,
    now: Instant,
    /// Client bytes the server has not consumed yet (backpressure).
    inbox: Vec<u8>,
    /// Feeds so far: every other one goes through `handle_buf`.
    feeds: usize,
    /// Decoder for everything the server transmitted, created at the first transmit.
    sent: Option<Decoder>,
    /// Upper bound of what may be queued since the last drain.
    budget: usize,
    /// Data bytes per packet the server sends.
    chunk: usize,
}

impl Harness {
    fn feed(&mut self) {
        self.feeds += 1;
        let owned = self.feeds.is_multiple_of(2);
        feed(&mut self.server, self.now, &mut self.inbox, owned);
    }

    fn poll(&mut self) {
        let mut events = 0usize;
        while self.server.poll_event().is_some() {
            events += 1;
            // Intake stops at max_events; on top may come LinkDead, and a SessionReset
            // with the hello that caused it; on a device link a resynchronisation adds
            // its StalePartial and SessionReset (at most once per input or timer).
            assert!(events <= self.max_events + 4, "{events} events queued");
        }
        if self.server.poll_discard_unsent() {
            // A new session: what was transmitted before belongs to the old one, and the
            // new one may speak the other dialect.
            self.sent = None;
        }
        if !self.inbox.is_empty() {
            // Held bytes (the server pushed back) are answered now: credit them again, the
            // budget of their arrival went with the last transmit.
            self.budget += 4 * self.inbox.len() + 64;
            self.feed();
            while self.server.poll_event().is_some() {}
        }
        self.check_tx();
        let mut out = BytesMut::new();
        let n = self.server.poll_transmit(self.now, &mut out);
        assert_eq!(n, out.len());
        assert_eq!(self.server.transmit_buffered(), 0);
        self.budget = 0;
        if out.is_empty() {
            return;
        }
        let dialect = self.server.dialect();
        let dec = self
            .sent
            .get_or_insert_with(|| Decoder::new(dialect, Sender::Server));
        assert_eq!(dec.dialect(), dialect, "dialect changed after transmitting");
        dec.push(&out);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => assert_eq!(f.cid, self.cid, "{f:?}"),
                Ok(None) => break,
                Err(e) => panic!("server sent undecodable bytes: {e}"),
            }
        }
        assert_eq!(dec.buffered(), 0, "poll_transmit ended inside a packet");
    }

    fn check_tx(&self) {
        let queued = self.server.transmit_buffered();
        assert!(
            queued <= self.max_tx + self.budget,
            "transmit queue {queued} over limit {} + budget {}",
            self.max_tx,
            self.budget
        );
    }
}

/// Runs an answer; a refused one must queue nothing.
fn refused(s: &mut Server, f: impl FnOnce(&mut Server) -> Result<(), tuppence::link::UsageError>) {
    let before = s.transmit_buffered();
    let live = s.transactions();
    if f(s).is_err() {
        assert_eq!(
            s.transmit_buffered(),
            before,
            "a refused answer queued bytes"
        );
        assert_eq!(
            s.transactions(),
            live,
            "a refused answer changed the transactions"
        );
    }
}

fuzz_target!(|input: Input| {
    let c = input.config;
    let cid = c.cid.max(1);
    let limits = c.limits.limits();
    let dialect = c
        .dialect
        .map(|v4| if v4 { Dialect::V4 } else { Dialect::Legacy3 });
    let epoch = Instant::now();
    let mut config = ServerConfig {
        cid,
        dialect,
        keepalive: c.keepalive,
        limits: limits.clone(),
        ..ServerConfig::default()
    };
    if c.device {
        config = config.for_device_link();
    }
    let mut h = Harness {
        server: Server::new(config.clone(), epoch),
        config,
        cid,
        max_events: limits.max_events,
        max_tx: limits.max_transmit_buffer,
        now: epoch + Duration::from_secs(3600),
        inbox: Vec::new(),
        feeds: 0,
        sent: None,
        budget: 0,
        chunk: limits
            .max_send_packet
            .saturating_sub(10)
            .clamp(1, tuppence::wire::MAX_CHUNK),
    };
    for op in input.ops.into_iter().take(256) {
        let xid_of = |x: u8| u16::from(x % 8);
        let s = &mut h.server;
        match op {
            Op::Bytes(b) => {
                h.budget += 4 * b.len() + 64;
                h.inbox.extend_from_slice(&b);
                h.feed();
            }
            Op::Packet {
                v4,
                foreign_cid,
                xid,
                packet,
            } => {
                let d = dialect.unwrap_or(if v4 { Dialect::V4 } else { Dialect::Legacy3 });
                let p = to_packet(packet);
                let pcid = if foreign_cid {
                    cid.wrapping_add(1)
                } else {
                    cid
                };
                let pcid = if matches!(p, Packet::Hello(_)) && !foreign_cid {
                    0
                } else {
                    pcid
                };
                if let Ok(b) = p.to_bytes(d, pcid, xid_of(xid)) {
                    h.budget += 4 * b.len() + 64;
                    h.inbox.extend_from_slice(&b);
                    h.feed();
                }
            }
            Op::Advance(ms) => h.now += Duration::from_millis(u64::from(ms) * 50),
            Op::Back(ms) => {
                let earlier = h.now - Duration::from_millis(u64::from(ms));
                s.handle_timeout(earlier);
                h.budget += 16;
            }
            Op::Timeout => {
                s.handle_timeout(h.now);
                s.handle_timeout(h.now); // idempotent
                h.budget += 16;
            }
            Op::Eof => {
                s.handle_eof(h.now);
                assert!(s.error().is_some());
                if h.config.hello_resets_session {
                    // A hang-up on a port: the next session takes over what belongs to it.
                    let carry = s.carryover(0);
                    let written = s.carryover(usize::MAX);
                    assert!(carry.input.len() <= written.input.len());
                    // (A hello decoded in step carries over as it was, whatever its version.)
                    assert!(
                        written.input.is_empty() || written.input.first() == Some(&b'h'),
                        "carryover does not start with a hello: {:?}",
                        written.input
                    );
                    assert!(written.input.len() <= tuppence::wire::MAX_PACKET_LEN + 16);
                    h.server = Server::new(h.config.clone(), h.now);
                    h.server.resume_from(&carry);
                    h.sent = None;
                    h.inbox = carry.input.to_vec();
                    h.budget += 4 * h.inbox.len() + 64;
                    h.feed();
                }
            }
            Op::Poll => h.poll(),
            Op::Output { xid, channel, len } => {
                let len = usize::from(len % 4096);
                let before = s.transmit_buffered();
                let r = s.output(
                    xid_of(xid),
                    u16::from(channel % 4),
                    Bytes::from(vec![b'o'; len]),
                );
                if before > h.max_tx {
                    assert!(r.is_err(), "output accepted over the transmit limit");
                }
                if r.is_err() {
                    assert_eq!(
                        s.transmit_buffered(),
                        before,
                        "a refused intent queued bytes"
                    );
                }
                h.budget += len + 64 + 10 * (len / h.chunk + 1);
            }
            Op::OutputEnd { xid, channel } => {
                refused(s, |s| s.output_end(xid_of(xid), u16::from(channel % 4)));
                h.budget += 64;
            }
            Op::Exited { xid, code } => {
                refused(s, |s| s.command_exited(xid_of(xid), code));
                h.budget += 64;
            }
            Op::Killed { xid, signo } => {
                refused(s, |s| s.command_killed(xid_of(xid), signo));
                h.budget += 64;
            }
            Op::TimedOut { xid } => {
                refused(s, |s| s.timed_out(xid_of(xid)));
                h.budget += 64;
            }
            Op::Fail { xid, errno } => {
                refused(s, |s| s.fail(xid_of(xid), errno));
                h.budget += 64;
            }
            Op::InjectReady { xid } => {
                refused(s, |s| s.inject_ready(xid_of(xid)));
                h.budget += 64;
            }
            Op::InjectDone { xid, err } => {
                refused(s, |s| s.inject_done(xid_of(xid), err.map_or(Ok(()), Err)));
                h.budget += 64;
            }
            Op::ExtractReady { xid } => {
                refused(s, |s| s.extract_ready(xid_of(xid)));
                h.budget += 64;
            }
            Op::ExtractDone { xid, err } => {
                refused(s, |s| s.extract_done(xid_of(xid), err.map_or(Ok(()), Err)));
                h.budget += 64;
            }
            Op::Settled { xid, seq } => {
                refused(s, |s| s.settled(xid_of(xid), seq));
                h.budget += 64;
            }
            Op::ProcInfo { xid, fields } => {
                let fields = procinfo_fields(fields);
                h.budget += fields.iter().map(|f| f.value.len() + 2).sum::<usize>() + 64;
                refused(s, |s| s.procinfo(xid_of(xid), fields));
            }
        }
        h.check_tx();
    }
    h.poll();
});
