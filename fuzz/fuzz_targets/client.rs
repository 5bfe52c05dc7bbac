//! The Client machine under arbitrary server bytes, well-formed server packets, time
//! steps and client intents. Checks: no panic; bounded queues; refused intents queue
//! nothing; xids are never 0 and never reused while live; every transaction finishes at
//! most once; every transmitted byte decodes as whole client packets with the right cid.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tuppence::Machine;
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Signal, UsageError};
use tuppence::wire::{Decoder, Dialect, Hello, Packet, Sender};

#[path = "../common/link_machine.rs"]
mod link_machine;
use link_machine::{LimitsInput, feed, no_nul, procinfo_fields};

#[derive(Arbitrary, Debug)]
struct Config {
    v4: bool,
    keepalive: u16,
    limits: LimitsInput,
    /// A device link: hello retry, resync before the hello reply.
    device: bool,
}

#[derive(Arbitrary, Debug)]
enum ServerPacket {
    Hello {
        major: Option<u8>,
        minor: u8,
        keepalive: u16,
    },
    Major(u32),
    Minor(u32),
    Timeout,
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
        fields: Vec<(u8, Vec<u8>)>,
    },
    /// A request type, which a server never sends.
    Quit,
}

/// Which xid an op names: one of the live transactions, or any small number.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Xid {
    Live(u8),
    Raw(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Bytes(Vec<u8>),
    Packet {
        other_layout: bool,
        foreign_cid: bool,
        xid: Xid,
        packet: ServerPacket,
    },
    Advance(u16),
    Back(u16),
    Timeout,
    Eof,
    Poll,
    Run {
        command: Vec<u8>,
        tty: bool,
        timeout: u16,
    },
    Stdin {
        xid: Xid,
        len: u16,
    },
    CloseStdin(Xid),
    Interrupt {
        xid: Xid,
        signal: Vec<u8>,
    },
    Inject {
        path: Vec<u8>,
        mode: u32,
    },
    FileData {
        xid: Xid,
        len: u16,
    },
    Finish(Xid),
    Extract {
        path: Vec<u8>,
    },
    Monitor {
        source: Vec<u8>,
    },
    Settle {
        xid: Xid,
        seq: u32,
    },
    EndMonitor(Xid),
    ProcInfo {
        xid: Xid,
        mask: u32,
    },
    Quit,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

struct Harness {
    client: Client,
    dialect: Dialect,
    max_events: usize,
    max_tx: usize,
    max_transactions: usize,
    now: Instant,
    inbox: Vec<u8>,
    /// Feeds so far: every other one goes through `handle_buf`.
    feeds: usize,
    sent: Decoder,
    live: BTreeSet<u16>,
}

impl Harness {
    fn pick(&self, x: Xid) -> u16 {
        match x {
            Xid::Raw(r) => u16::from(r % 8),
            Xid::Live(i) if !self.live.is_empty() => {
                let i = usize::from(i) % self.live.len();
                self.live.iter().nth(i).copied().unwrap_or(0)
            }
            Xid::Live(i) => u16::from(i % 8),
        }
    }

    fn feed(&mut self) {
        self.feeds += 1;
        let owned = self.feeds.is_multiple_of(2);
        if feed(&mut self.client, self.now, &mut self.inbox, owned) {
            assert!(!self.client.is_connected());
        }
    }

    fn drain_events(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.client.poll_event() {
            n += 1;
            if let ClientEvent::Finished { xid, .. } = ev {
                assert!(
                    self.live.remove(&xid),
                    "xid {xid} finished but was not live"
                );
            }
        }
        n
    }

    fn poll(&mut self) {
        let n = self.drain_events();
        // Intake stops at max_events; LinkDead and one LinkLost per transaction on top.
        assert!(
            n <= self.max_events + self.max_transactions + 2,
            "{n} events queued"
        );
        if !self.inbox.is_empty() {
            self.feed();
            self.drain_events();
        }
        assert_eq!(self.client.transactions(), self.live.len());
        if self.client.error().is_some() {
            assert!(self.live.is_empty(), "transactions outlived the connection");
        }
        let mut out = BytesMut::new();
        let n = self.client.poll_transmit(self.now, &mut out);
        assert_eq!(n, out.len());
        self.sent.push(&out);
        loop {
            match self.sent.next_frame() {
                Ok(Some(f)) => match f.packet {
                    Packet::Hello(_) => assert_eq!((f.cid, f.xid), (0, 0)),
                    _ => assert_eq!(Some(f.cid), self.client.cid(), "{f:?}"),
                },
                Ok(None) => break,
                Err(e) => panic!("client sent undecodable bytes: {e}"),
            }
        }
        assert_eq!(
            self.sent.buffered(),
            0,
            "poll_transmit ended inside a packet"
        );
    }

    /// Runs an intent: refused ones queue nothing; over the limit, everything is refused.
    fn intent<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, UsageError>) -> Option<T> {
        let before = self.client.transmit_buffered();
        let live = self.client.transactions();
        let r = f(&mut self.client);
        if before > self.max_tx {
            assert!(r.is_err(), "intent accepted over the transmit limit");
        }
        match r {
            Ok(v) => Some(v),
            Err(_) => {
                assert_eq!(
                    self.client.transmit_buffered(),
                    before,
                    "refused intent queued"
                );
                assert_eq!(self.client.transactions(), live);
                None
            }
        }
    }

    fn opened(&mut self, xid: Option<u16>) {
        if let Some(xid) = xid {
            assert_ne!(xid, 0, "xid 0 allocated");
            // (Finished events not drained yet keep an xid in `live`; allocation cannot
            // wrap round to it within one input.)
            assert!(self.live.insert(xid), "xid {xid} reused while live");
            assert!(self.client.transactions() <= self.max_transactions);
        }
    }
}

fn to_packet(p: ServerPacket, ours: (u8, u8)) -> Packet {
    match p {
        ServerPacket::Hello {
            major,
            minor,
            keepalive,
        } => Packet::Hello(Hello {
            major: major.unwrap_or(ours.0),
            minor,
            keepalive,
        }),
        ServerPacket::Major(v) => Packet::Major(v),
        ServerPacket::Minor(v) => Packet::Minor(v),
        ServerPacket::Timeout => Packet::Timeout,
        ServerPacket::Data { channel, data } => Packet::Data {
            channel,
            data: Bytes::from(data),
        },
        ServerPacket::Eof { channel } => Packet::Eof { channel },
        ServerPacket::Keepalive => Packet::Keepalive,
        ServerPacket::Settle { seq } => Packet::Settle { seq },
        ServerPacket::ProcInfo { fields } => Packet::ProcInfoResponse {
            fields: procinfo_fields(fields),
        },
        ServerPacket::Quit => Packet::Quit,
    }
}

fuzz_target!(|input: Input| {
    let c = input.config;
    let dialect = if c.v4 { Dialect::V4 } else { Dialect::Legacy3 };
    let limits = c.limits.limits();
    let epoch = Instant::now();
    let mut h = Harness {
        client: Client::new(
            {
                let config = ClientConfig {
                    dialect,
                    keepalive: c.keepalive,
                    handshake_timeout: Some(Duration::from_secs(u64::from(c.keepalive % 120) + 1)),
                    limits: limits.clone(),
                    ..ClientConfig::default()
                };
                if c.device {
                    config.for_device_link()
                } else {
                    config
                }
            },
            epoch,
        ),
        dialect,
        max_events: limits.max_events,
        max_tx: limits.max_transmit_buffer,
        max_transactions: limits.max_transactions,
        now: epoch + Duration::from_secs(3600),
        inbox: Vec::new(),
        feeds: 0,
        sent: Decoder::new(dialect, Sender::Client),
        live: BTreeSet::new(),
    };
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Bytes(b) => {
                h.inbox.extend_from_slice(&b);
                h.feed();
            }
            Op::Packet {
                other_layout,
                foreign_cid,
                xid,
                packet,
            } => {
                let d = match (other_layout, h.dialect) {
                    (false, d) => d,
                    (true, Dialect::V4) => Dialect::Legacy3,
                    (true, _) => Dialect::V4,
                };
                let cid = h.client.cid().unwrap_or(1);
                let cid = if foreign_cid {
                    cid.wrapping_add(1)
                } else {
                    cid
                };
                let xid = h.pick(xid);
                if let Ok(b) = to_packet(packet, h.dialect.version()).to_bytes(d, cid, xid) {
                    h.inbox.extend_from_slice(&b);
                    h.feed();
                }
            }
            Op::Advance(ms) => h.now += Duration::from_millis(u64::from(ms) * 50),
            Op::Back(ms) => h
                .client
                .handle_timeout(h.now - Duration::from_millis(u64::from(ms))),
            Op::Timeout => {
                h.client.handle_timeout(h.now);
                h.client.handle_timeout(h.now);
            }
            Op::Eof => {
                h.client.handle_eof(h.now);
                assert!(h.client.error().is_some());
            }
            Op::Poll => h.poll(),
            Op::Run {
                command,
                tty,
                timeout,
            } => {
                let cmd = Command::new(no_nul(command))
                    .tty(tty)
                    .timeout(Duration::from_secs(u64::from(timeout)));
                let x = h.intent(|c| c.run(cmd));
                h.opened(x);
            }
            Op::Stdin { xid, len } => {
                let xid = h.pick(xid);
                let data = Bytes::from(vec![b'i'; usize::from(len % 4096)]);
                h.intent(|c| c.send_stdin(xid, data));
            }
            Op::CloseStdin(xid) => {
                let xid = h.pick(xid);
                h.intent(|c| c.close_stdin(xid));
            }
            Op::Interrupt { xid, signal } => {
                let xid = h.pick(xid);
                h.intent(|c| c.interrupt(xid, Signal::named(no_nul(signal))));
            }
            Op::Inject { path, mode } => {
                let x = h.intent(|c| c.inject("root", no_nul(path), mode));
                h.opened(x);
            }
            Op::FileData { xid, len } => {
                let xid = h.pick(xid);
                let data = Bytes::from(vec![b'f'; usize::from(len % 4096)]);
                h.intent(|c| c.send_file_data(xid, data));
            }
            Op::Finish(xid) => {
                let xid = h.pick(xid);
                h.intent(|c| c.finish_file(xid));
            }
            Op::Extract { path } => {
                let x = h.intent(|c| c.extract("root", no_nul(path)));
                h.opened(x);
            }
            Op::Monitor { source } => {
                let x = h.intent(|c| c.monitor(no_nul(source)));
                h.opened(x);
            }
            Op::Settle { xid, seq } => {
                let xid = h.pick(xid);
                h.intent(|c| c.settle(xid, seq));
            }
            Op::EndMonitor(xid) => {
                let xid = h.pick(xid);
                h.intent(|c| c.end_monitor(xid));
            }
            Op::ProcInfo { xid, mask } => {
                let xid = h.pick(xid);
                h.intent(|c| c.procinfo(xid, mask));
            }
            Op::Quit => {
                h.intent(|c| c.quit());
            }
        }
    }
    h.poll();
});
