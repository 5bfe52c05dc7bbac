//! A quinn-style `Pair`: a [`Client`] and a [`Server`] wired in memory.
//!
//! * a simulated clock (`now`) that only moves when a test says so, or jumps to the
//!   earliest `poll_timeout` of the two machines ([`Pair::jump`], [`Pair::run_until`]);
//! * a link that re-chunks the bytes in flight ([`Chunking`]: whole, 1 byte at a time, or
//!   random splits from a seeded xorshift) and can be cut ([`Pair::link_up`]);
//! * the application behind the server (an [`App`], as `tuppence_smol::App` is; [`ScriptedApp`] runs a tiny script
//!   written in the command text, [`NoApp`] leaves every answer to the test);
//! * [`Pair::drive`] shuttles bytes until both sides are quiet, with a step bound.
//!
//! Backpressure is respected: when `handle_bytes` consumes less than offered, the harness
//! drains that machine's events and offers the rest again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, LinkError, Server, ServerConfig, ServerEvent,
};
use tuppence::wire::{Decoder, Dialect, Frame, Packet, ProcInfoField, Sender, field};

/// Steps `drive` may take before the test fails as "never quiet".
pub const MAX_STEPS: usize = 10_000;

/// A tiny deterministic generator (xorshift64*), so no test depends on a new crate.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Never 0: xorshift would stay at 0 forever.
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// How the link cuts the bytes in flight before offering them to the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// Everything a side transmitted in one `handle_bytes` call.
    Whole,
    /// One byte per call.
    Bytewise,
    /// Random cut points from a seeded generator (mostly small pieces, sometimes large).
    Random(u64),
}

/// The server-side application: answers the machine's events through its intents (the
/// same concept as `tuppence_smol::App`, in memory).
pub trait App {
    fn on_event(&mut self, server: &mut Server, now: Instant, event: &ServerEvent);
}

/// An agent that does nothing: the test answers every request itself.
#[derive(Debug, Default)]
pub struct NoApp;

impl App for NoApp {
    fn on_event(&mut self, _: &mut Server, _: Instant, _: &ServerEvent) {}
}

/// What a [`ScriptedApp`] still has to do for a command.
#[derive(Clone, Debug)]
struct Running {
    /// Script tokens not yet carried out (after a `cat` or `hold`).
    rest: VecDeque<String>,
    /// `cat`: stdin is echoed on channel 1 until its EOF.
    echo: bool,
    /// On a tty, stderr goes to channel 1 too.
    tty: bool,
}

/// A fake agent driven by scripts written in the request itself, so that random tests can
/// generate them:
///
/// * commands are `;`-separated tokens: `out=TEXT` (stdout), `err=TEXT` (stderr),
///   `exit=N`, `kill=N` (killed by signal N), `fail=N` (spawn failure errno N), `timeout`,
///   `cat` (echo stdin on channel 1 until stdin EOF, then go on), `hold` (wait for an
///   interrupt); without a terminal token the command exits 0. Any interrupt kills a
///   command with the signal's number.
/// * inject: `/nonexistent/…` → errno 2, `/readonly/…` → 13 before ready; otherwise ready,
///   the data is stored, and a path containing `full` fails with 28 at the end.
/// * extract: a stored file, `/gen/N` (N pattern bytes), `/midfail` (10 bytes then errno 5),
///   anything else → errno 2. Data goes in pieces of `extract_piece` bytes.
/// * monitor `agent` is accepted (anything else → 2); settle sends `event-SEQ` then `S`.
/// * procinfo answers pid = 4000 + xid when bit 1 of the mask is set.
#[derive(Debug)]
pub struct ScriptedApp {
    running: HashMap<u16, Running>,
    injects: HashMap<u16, (Bytes, Vec<u8>)>,
    pub files: HashMap<Vec<u8>, Vec<u8>>,
    pub monitors: Vec<u16>,
    pub quit: bool,
    pub extract_piece: usize,
    /// Usage errors the agent got back from the machine (a correct agent gets none).
    pub errors: Vec<String>,
}

impl Default for ScriptedApp {
    fn default() -> Self {
        ScriptedApp {
            running: HashMap::new(),
            injects: HashMap::new(),
            files: HashMap::new(),
            monitors: Vec::new(),
            quit: false,
            extract_piece: 1000,
            errors: Vec::new(),
        }
    }
}

/// Signal number for a signal name as the agent maps it (`""` = KILL).
pub fn signo(name: &[u8]) -> u32 {
    let name = name.strip_prefix(b"SIG").unwrap_or(name);
    match name {
        b"HUP" => 1,
        b"INT" => 2,
        b"QUIT" => 3,
        b"" | b"KILL" => 9,
        b"USR1" => 10,
        b"USR2" => 12,
        b"TERM" => 15,
        _ => 9,
    }
}

impl ScriptedApp {
    fn check(&mut self, r: Result<(), tuppence::link::UsageError>) {
        if let Err(e) = r {
            self.errors.push(e.to_string());
        }
    }

    /// Carries out script tokens until a terminal or suspending one.
    fn run_script(&mut self, server: &mut Server, xid: u16, tty: bool, mut rest: VecDeque<String>) {
        while let Some(tok) = rest.pop_front() {
            let (key, val) = match tok.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (tok.clone(), String::new()),
            };
            let num = || val.parse::<u32>().unwrap_or(0);
            let r = match key.as_str() {
                "out" => server.output(xid, 1, Bytes::from(val.into_bytes())),
                "err" => server.output(xid, if tty { 1 } else { 2 }, Bytes::from(val.into_bytes())),
                "exit" => return self.end(server.command_exited(xid, num()), xid),
                "kill" => return self.end(server.command_killed(xid, num()), xid),
                "fail" => return self.end(server.fail(xid, num()), xid),
                "timeout" => return self.end(server.timed_out(xid), xid),
                "cat" | "hold" => {
                    self.running.insert(
                        xid,
                        Running {
                            rest,
                            echo: key == "cat",
                            tty,
                        },
                    );
                    return;
                }
                other => panic!("unknown script token {other:?}"),
            };
            self.check(r);
        }
        let r = server.command_exited(xid, 0);
        self.end(r, xid);
    }

    fn end(&mut self, r: Result<(), tuppence::link::UsageError>, xid: u16) {
        self.running.remove(&xid);
        self.check(r);
    }
}

impl App for ScriptedApp {
    fn on_event(&mut self, server: &mut Server, _now: Instant, event: &ServerEvent) {
        match event {
            ServerEvent::RunCommand {
                xid, command, tty, ..
            } => {
                let text = String::from_utf8_lossy(command).into_owned();
                let tokens = text
                    .split(';')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect();
                self.run_script(server, *xid, *tty, tokens);
            }
            ServerEvent::Stdin { xid, data } if self.running.get(xid).is_some_and(|r| r.echo) => {
                let r = server.output(*xid, 1, data.clone());
                self.check(r);
            }
            ServerEvent::StdinEnd { xid } => {
                if let Some(run) = self.running.get(xid).filter(|r| r.echo) {
                    let (rest, tty) = (run.rest.clone(), run.tty);
                    self.running.remove(xid);
                    self.run_script(server, *xid, tty, rest);
                }
            }
            ServerEvent::Interrupt { xid, signal } if server.is_live(*xid) => {
                let r = server.command_killed(*xid, signo(signal));
                self.end(r, *xid);
            }
            ServerEvent::Inject { xid, path, .. } => {
                let r = if path.starts_with(b"/nonexistent") {
                    server.fail(*xid, 2)
                } else if path.starts_with(b"/readonly") {
                    server.fail(*xid, 13)
                } else {
                    self.injects.insert(*xid, (path.clone(), Vec::new()));
                    server.inject_ready(*xid)
                };
                self.check(r);
            }
            ServerEvent::InjectData { xid, data } => {
                if let Some((_, buf)) = self.injects.get_mut(xid) {
                    buf.extend_from_slice(data);
                }
            }
            ServerEvent::InjectEnd { xid } => {
                if let Some((path, data)) = self.injects.remove(xid) {
                    let r = if path.windows(4).any(|w| w == b"full") {
                        server.inject_done(*xid, Err(28))
                    } else {
                        self.files.insert(path.to_vec(), data);
                        server.inject_done(*xid, Ok(()))
                    };
                    self.check(r);
                }
            }
            ServerEvent::Extract { xid, path, .. } => {
                let content = if let Some(n) = path.strip_prefix(b"/gen/") {
                    let n: usize = String::from_utf8_lossy(n).parse().unwrap_or(0);
                    Some((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
                } else if path.as_ref() == b"/midfail" {
                    let r = server.extract_ready(*xid);
                    self.check(r);
                    let r = server.output(*xid, 0, Bytes::from_static(b"0123456789"));
                    self.check(r);
                    let r = server.extract_done(*xid, Err(5));
                    return self.check(r);
                } else {
                    self.files.get(path.as_ref()).cloned()
                };
                let Some(content) = content else {
                    let errno = if path.as_ref() == b"/dir" { 21 } else { 2 };
                    let r = server.fail(*xid, errno);
                    return self.check(r);
                };
                let r = server.extract_ready(*xid);
                self.check(r);
                for piece in content.chunks(self.extract_piece.max(1)) {
                    let r = server.output(*xid, 0, Bytes::copy_from_slice(piece));
                    self.check(r);
                }
                let r = server.extract_done(*xid, Ok(()));
                self.check(r);
            }
            ServerEvent::TransferAborted { xid } => {
                self.injects.remove(xid);
            }
            ServerEvent::Monitor { xid, source } => {
                let r = if source.as_ref() == b"agent" {
                    self.monitors.push(*xid);
                    Ok(())
                } else {
                    server.fail(*xid, 2)
                };
                self.check(r);
            }
            ServerEvent::Settle { xid, seq } => {
                let r = server.output(*xid, 0, Bytes::from(format!("event-{seq}")));
                self.check(r);
                let r = server.settled(*xid, *seq);
                self.check(r);
            }
            ServerEvent::MonitorEnd { xid } => self.monitors.retain(|m| m != xid),
            ServerEvent::ProcInfo { xid, mask } => {
                let mut fields = Vec::new();
                if mask & field::mask_bit(field::PID) != 0 {
                    fields.push(ProcInfoField::u32(field::PID, 4000 + u32::from(*xid)));
                }
                let r = server.procinfo(*xid, fields);
                self.check(r);
            }
            ServerEvent::Quit => self.quit = true,
            // A new client on a device link: the old session's work is abandoned.
            ServerEvent::SessionReset { aborted } => {
                for xid in aborted {
                    self.running.remove(xid);
                    self.injects.remove(xid);
                    self.monitors.retain(|m| m != xid);
                }
            }
            _ => {}
        }
    }
}

/// Decodes a whole recorded byte stream; panics on any decode error.
pub fn decode_all(dialect: Dialect, sender: Sender, bytes: &[u8]) -> Vec<Frame> {
    let mut dec = Decoder::new(dialect, sender);
    dec.push(bytes);
    let mut frames = Vec::new();
    while let Some(f) = dec
        .next_frame()
        .unwrap_or_else(|e| panic!("recorded stream does not decode: {e}"))
    {
        frames.push(f);
    }
    assert_eq!(dec.buffered(), 0, "recorded stream ends inside a packet");
    frames
}

/// The client and the server wired in memory.
pub struct Pair<A: App = ScriptedApp> {
    pub client: Client,
    pub server: Server,
    pub agent: A,
    pub epoch: Instant,
    pub now: Instant,
    pub chunking: Chunking,
    rng: XorShift,
    /// When false, transmitted bytes are lost (a cut cable).
    pub link_up: bool,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// Every byte each side transmitted while the link was up, in order.
    pub c2s_log: Vec<u8>,
    pub s2c_log: Vec<u8>,
    pub client_events: Vec<ClientEvent>,
    pub server_events: Vec<ServerEvent>,
    /// Fatal errors `handle_bytes` returned.
    pub client_error: Option<LinkError>,
    pub server_error: Option<LinkError>,
    /// Number of `handle_bytes` calls that consumed less than offered.
    pub short_reads: usize,
}

impl Pair<ScriptedApp> {
    /// A pair speaking `dialect` (the server detects it) with default configs.
    pub fn new(dialect: Dialect) -> Self {
        Pair::with_agent(
            ClientConfig {
                dialect,
                ..ClientConfig::default()
            },
            ServerConfig::default(),
            ScriptedApp::default(),
        )
    }
}

impl<A: App> Pair<A> {
    pub fn with_agent(client: ClientConfig, server: ServerConfig, agent: A) -> Self {
        let epoch = Instant::now();
        Pair {
            client: Client::new(client, epoch),
            server: Server::new(server, epoch),
            agent,
            epoch,
            now: epoch,
            chunking: Chunking::Whole,
            rng: XorShift::new(0),
            link_up: true,
            c2s: Vec::new(),
            s2c: Vec::new(),
            c2s_log: Vec::new(),
            s2c_log: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_error: None,
            server_error: None,
            short_reads: 0,
        }
    }

    /// The client vanishes without a word and a new one takes its place on the same link,
    /// as on a serial line: what the old client transmitted still reaches the server, and
    /// what the server sent that the old one did not read reaches the new one. The byte
    /// logs and the client's events start afresh.
    pub fn replace_client(&mut self, config: ClientConfig) {
        self.client = Client::new(config, self.now);
        self.c2s_log.clear();
        self.s2c_log.clear();
        self.client_events.clear();
        self.client_error = None;
    }

    pub fn chunked(mut self, chunking: Chunking) -> Self {
        self.set_chunking(chunking);
        self
    }

    pub fn set_chunking(&mut self, chunking: Chunking) {
        self.chunking = chunking;
        if let Chunking::Random(seed) = chunking {
            self.rng = XorShift::new(seed);
        }
    }

    /// Time since the pair was created.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Sizes of the pieces the link cuts `len` bytes into.
    fn cuts(&mut self, len: usize) -> Vec<usize> {
        match self.chunking {
            Chunking::Whole => vec![len],
            Chunking::Bytewise => vec![1; len],
            Chunking::Random(_) => {
                let mut v = Vec::new();
                let mut left = len;
                while left > 0 {
                    // Mostly small pieces (packet boundaries fall anywhere), sometimes big.
                    let cap = 1usize << self.rng.below(12);
                    let n = 1 + self.rng.below(cap.min(left));
                    v.push(n);
                    left -= n;
                }
                v
            }
        }
    }

    /// Drains the server's events into the log and the agent; returns how many.
    pub fn drain_server(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.server.poll_event() {
            n += 1;
            self.agent.on_event(&mut self.server, self.now, &ev);
            self.server_events.push(ev);
        }
        n
    }

    pub fn drain_client(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.client.poll_event() {
            n += 1;
            self.client_events.push(ev);
        }
        n
    }

    fn deliver_to_server(&mut self) {
        let data = std::mem::take(&mut self.c2s);
        self.deliver(
            &data,
            "server",
            |p, bytes| p.server.handle_bytes(p.now, bytes),
            Self::drain_server,
            |p| &mut p.server_error,
        );
    }

    fn deliver_to_client(&mut self) {
        let data = std::mem::take(&mut self.s2c);
        self.deliver(
            &data,
            "client",
            |p, bytes| p.client.handle_bytes(p.now, bytes),
            Self::drain_client,
            |p| &mut p.client_error,
        );
    }

    /// Offers `data` to one side in the pair's cuts, re-offering what a short read left after
    /// draining that side's events, and counts the short reads. A fatal error is kept in
    /// that side's `error` slot (the first one wins) and ends the delivery. The two sides
    /// differ only in the machine, its drain and its error slot, hence the three functions.
    fn deliver(
        &mut self,
        data: &[u8],
        side: &str,
        handle: impl Fn(&mut Self, &[u8]) -> Result<usize, LinkError>,
        drain: impl Fn(&mut Self) -> usize,
        error: impl Fn(&mut Self) -> &mut Option<LinkError>,
    ) {
        let mut at = 0;
        for n in self.cuts(data.len()) {
            let piece = &data[at..at + n];
            at += n;
            let mut off = 0;
            while off < piece.len() {
                match handle(self, &piece[off..]) {
                    Ok(used) => {
                        if used < piece.len() - off {
                            self.short_reads += 1;
                        }
                        off += used;
                        let drained = drain(self);
                        assert!(
                            used > 0 || drained > 0,
                            "{side} consumed nothing and had no events to drain"
                        );
                    }
                    Err(e) => {
                        drain(self);
                        error(self).get_or_insert(e);
                        return;
                    }
                }
            }
        }
        drain(self);
    }

    /// One round: client transmits, server reads, server transmits, client reads.
    /// Returns whether any byte moved.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        let mut buf = BytesMut::new();
        if self.client.poll_transmit(self.now, &mut buf) > 0 {
            moved = true;
            if self.link_up {
                self.c2s_log.extend_from_slice(&buf);
                self.c2s.extend_from_slice(&buf);
            }
        }
        if !self.c2s.is_empty() {
            self.deliver_to_server();
        }
        buf.clear();
        if self.server.poll_transmit(self.now, &mut buf) > 0 {
            moved = true;
            if self.link_up {
                self.s2c_log.extend_from_slice(&buf);
                self.s2c.extend_from_slice(&buf);
            }
        }
        if !self.s2c.is_empty() {
            self.deliver_to_client();
        }
        moved
    }

    /// Steps at the current time until nothing moves. Panics after [`MAX_STEPS`].
    pub fn drive(&mut self) {
        self.drain_server();
        self.drain_client();
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("the pair was still busy after {MAX_STEPS} steps");
    }

    /// The earliest `poll_timeout` of the two machines.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.client.poll_timeout(), self.server.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves the clock to the earliest timeout (never backwards), fires both machines'
    /// timers and drives. Returns the new time, or `None` when no timer is armed.
    pub fn jump(&mut self) -> Option<Instant> {
        let t = self.next_timeout()?;
        self.now = self.now.max(t);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
        Some(self.now)
    }

    /// Jumps from timeout to timeout until `deadline`, then sets the clock to it.
    pub fn run_until(&mut self, deadline: Instant) {
        for _ in 0..MAX_STEPS {
            match self.next_timeout() {
                Some(t) if t <= deadline => {
                    self.jump();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    self.drive();
                    return;
                }
            }
        }
        panic!("more than {MAX_STEPS} timer firings before the deadline");
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Moves the clock without firing timers (the caller then calls `handle_timeout`).
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    pub fn take_client_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events)
    }

    pub fn take_server_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.server_events)
    }

    /// Client events without `Connected` (which every test sees first).
    pub fn transaction_events(&mut self) -> Vec<ClientEvent> {
        self.take_client_events()
            .into_iter()
            .filter(|e| !matches!(e, ClientEvent::Connected { .. }))
            .collect()
    }

    /// Every packet the server sent, decoded in the dialect in use.
    pub fn server_frames(&self) -> Vec<Frame> {
        decode_all(self.client.dialect(), Sender::Server, &self.s2c_log)
    }

    /// Every packet the client sent.
    pub fn client_frames(&self) -> Vec<Frame> {
        decode_all(self.client.dialect(), Sender::Client, &self.c2s_log)
    }

    /// The packets the server sent on one xid (hello and keepalives excluded).
    pub fn server_packets(&self, xid: u16) -> Vec<Packet> {
        self.server_frames()
            .into_iter()
            .filter(|f| f.xid == xid && !matches!(f.packet, Packet::Hello(_) | Packet::Keepalive))
            .map(|f| f.packet)
            .collect()
    }

    /// Connects (hello and reply) and forgets the handshake events.
    pub fn connect(&mut self) {
        self.drive();
        assert!(self.client.is_connected(), "handshake did not complete");
        self.take_client_events();
        self.take_server_events();
    }
}

/// The raw headers of a recorded stream: `(type byte, cid, xid, len)`, read with the
/// dialect's layout. Shows what the decoder hides (e.g. `'X'` vs `'E'`).
pub fn raw_headers(dialect: Dialect, bytes: &[u8]) -> Vec<(u8, u16, u16, u16)> {
    use tuppence::wire::{HEADER_LEN, Header};
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= bytes.len() {
        let head: &[u8; HEADER_LEN] = bytes[at..at + HEADER_LEN].try_into().unwrap();
        let h = Header::decode(dialect, head);
        out.push((h.kind, h.cid, h.xid, h.len));
        at += usize::from(h.len).max(HEADER_LEN);
    }
    out
}

/// Encodes one packet (test helper; panics if it cannot be encoded).
pub fn packet(dialect: Dialect, cid: u16, xid: u16, p: Packet) -> Bytes {
    p.to_bytes(dialect, cid, xid).expect("test packet encodes")
}

/// A new client's hello in `dialect` (cid 0, xid 0, the dialect's version).
pub fn hello_packet(dialect: Dialect, keepalive: u16) -> Bytes {
    let (major, minor) = dialect.version();
    packet(
        dialect,
        0,
        0,
        Packet::Hello(tuppence::wire::Hello {
            major,
            minor,
            keepalive,
        }),
    )
}

/// A command request as root, without a tty or environment.
pub fn command_packet(dialect: Dialect, cid: u16, xid: u16, command: &str, timeout: u32) -> Bytes {
    packet(
        dialect,
        cid,
        xid,
        Packet::Command(tuppence::wire::CommandRequest {
            user: Bytes::from_static(b"root"),
            command: Bytes::copy_from_slice(command.as_bytes()),
            timeout,
            request_tty: 0,
            reserved: [0, 0],
            env: Vec::new(),
        }),
    )
}
