//! The mio flavour: every session's `link::Client` on one `EventLoop`, each driven by a
//! small state machine (`Step`).

use super::*;

/// Where one mio session is in its workload.
#[derive(Default)]
pub(super) enum Step {
    #[default]
    Idle,
    Cmd(u16),
    InjectWait(u16),
    Injecting(u16),
    Extracting(u16),
    Done,
}

/// One mio session's state, kept beside its machine in the loop.
#[derive(Default)]
pub(super) struct MioSession {
    step: Step,
    connected: bool,
    cmds_left: usize,
    source: Option<File>,
    sink: Option<File>,
    eof: bool,
    finish: f64,
    errors: usize,
    bytes: u64,
}

pub(super) struct MioFarm {
    lp: EventLoop<UnixStream, Client, MioSession>,
    ids: Vec<ConnId>,
    user: String,
}

/// Bytes read from the local file per piece of inject data (whole packets).
const PIECE: usize = 8 * tuppence::wire::DEFAULT_MAX_CHUNK;

impl MioFarm {
    pub(super) fn new() -> MioFarm {
        MioFarm {
            lp: EventLoop::new().expect("mio event loop"),
            ids: Vec::new(),
            user: me(),
        }
    }

    /// Opens `n` more sessions, dealt round-robin over `socks`, and waits for every hello.
    pub(super) fn open(&mut self, socks: &[PathBuf], n: usize) {
        let mut new = Vec::new();
        for i in 0..n {
            let stream = connect(&socks[i % socks.len()]);
            stream.set_nonblocking(true).expect("nonblocking");
            let client = Client::new(ClientConfig::default(), Instant::now());
            let id = self
                .lp
                .add(LinkIo::new(stream, client), MioSession::default())
                .expect("add link");
            new.push(id);
        }
        self.lp.flush();
        while new
            .iter()
            .any(|&id| !self.lp.get(id).expect("alive").state.connected)
        {
            self.turn(None);
        }
        self.ids.extend(new);
    }

    /// One turn: wait, hand every event to its session, flush and feed until nothing more
    /// fits (a flush can make room without an event).
    pub(super) fn turn(&mut self, ctx: Option<(&Work, Instant)>) {
        if let Some(ended) = self.lp.take_ended().pop() {
            panic!("farm mio: a link failed: {}", ended.error);
        }
        self.lp.wait(None).expect("mio wait");
        let user = &self.user;
        if let Some((work, start)) = ctx {
            for (i, &id) in self.ids.iter().enumerate() {
                let conn = self.lp.get_mut(id).expect("alive");
                let (client, st) = (conn.link.machine_mut(), &mut conn.state);
                while let Some(ev) = client.poll_event() {
                    on_event(client, st, ev, work, i, user, start);
                }
            }
        } else {
            // Opening: the new sessions' hello replies.
            for id in self.lp.ids() {
                let conn = self.lp.get_mut(id).expect("alive");
                while let Some(ev) = conn.link.machine_mut().poll_event() {
                    if matches!(ev, ClientEvent::Connected { .. }) {
                        conn.state.connected = true;
                    }
                }
            }
        }
        self.lp.flush();
        while self.feed() {
            self.lp.flush();
        }
    }

    /// Queues inject data for every injecting session while its machine takes it.
    pub(super) fn feed(&mut self) -> bool {
        let mut queued = false;
        let mut buf = BytesMut::new();
        for &id in &self.ids {
            let conn = self.lp.get_mut(id).expect("alive");
            let (client, st) = (conn.link.machine_mut(), &mut conn.state);
            let Step::Injecting(xid) = st.step else {
                continue;
            };
            let Some(source) = st.source.as_mut() else {
                continue;
            };
            while !st.eof && client.can_send() {
                queued = true;
                buf.reserve(PIECE);
                buf.resize(PIECE, 0);
                let n = source.read(&mut buf[..]).expect("read source");
                buf.truncate(n);
                if n == 0 {
                    st.eof = true;
                    client.finish_file(xid).expect("finish file");
                } else {
                    st.bytes += n as u64;
                    client
                        .send_file_data(xid, buf.split().freeze())
                        .expect("file data");
                }
            }
        }
        queued
    }

    pub(super) fn run(&mut self, work: &Work) -> Outcomes {
        let start = Instant::now();
        for (i, &id) in self.ids.iter().enumerate() {
            let conn = self.lp.get_mut(id).expect("alive");
            let (client, st) = (conn.link.machine_mut(), &mut conn.state);
            *st = MioSession {
                connected: true,
                ..MioSession::default()
            };
            begin(client, st, work, i, &self.user);
        }
        self.lp.flush();
        while self.lp.states().any(|(_, s)| !matches!(s.step, Step::Done)) {
            self.turn(Some((work, start)));
        }
        let mut out = Outcomes {
            wall: start.elapsed().as_secs_f64(),
            ..Outcomes::default()
        };
        for (_, s) in self.lp.states() {
            out.finish.push(s.finish);
            out.errors += s.errors;
            out.bytes += s.bytes;
        }
        out
    }
}

pub(super) fn begin(client: &mut Client, st: &mut MioSession, work: &Work, i: usize, user: &str) {
    match work {
        Work::Cmds(k) => {
            st.cmds_left = *k;
            next_cmd(client, st, user);
        }
        Work::Files { src, dir } => {
            let remote = Work::remote(dir, i);
            let xid = client
                .inject(
                    user.to_owned(),
                    remote.to_str().expect("utf-8 path").to_owned(),
                    0o644,
                )
                .expect("inject");
            st.source = Some(File::open(src).expect("source"));
            st.step = Step::InjectWait(xid);
        }
    }
}

pub(super) fn next_cmd(client: &mut Client, st: &mut MioSession, user: &str) {
    if st.cmds_left == 0 {
        st.step = Step::Done;
        return;
    }
    st.cmds_left -= 1;
    let xid = client
        .run(Command::new("true").user(user.to_owned()))
        .expect("run");
    client.close_stdin(xid).expect("close stdin");
    st.step = Step::Cmd(xid);
}

pub(super) fn on_event(
    client: &mut Client,
    st: &mut MioSession,
    ev: ClientEvent,
    work: &Work,
    i: usize,
    user: &str,
    start: Instant,
) {
    let done = |st: &mut MioSession| {
        st.step = Step::Done;
        st.finish = start.elapsed().as_secs_f64();
    };
    match (&st.step, ev) {
        (&Step::Cmd(x), ClientEvent::Finished { xid, outcome }) if x == xid => {
            if outcome != Outcome::Exited(0) {
                eprintln!("farm mio: {outcome:?}");
                st.errors += 1;
            }
            next_cmd(client, st, user);
            if matches!(st.step, Step::Done) {
                done(st);
            }
        }
        (&Step::InjectWait(x), ClientEvent::InjectReady { xid }) if x == xid => {
            st.step = Step::Injecting(xid);
        }
        (&(Step::InjectWait(x) | Step::Injecting(x)), ClientEvent::Finished { xid, outcome })
            if x == xid =>
        {
            if outcome != Outcome::Completed {
                eprintln!("farm mio inject: {outcome:?}");
                st.errors += 1;
            }
            st.source = None;
            let Work::Files { dir, .. } = work else {
                return;
            };
            let remote = Work::remote(dir, i);
            let xid = client
                .extract(
                    user.to_owned(),
                    remote.to_str().expect("utf-8 path").to_owned(),
                )
                .expect("extract");
            st.sink = Some(File::create(Work::local(dir, i)).expect("sink"));
            st.step = Step::Extracting(xid);
        }
        (&Step::Extracting(x), ClientEvent::Output { xid, data, .. }) if x == xid => {
            if let Some(sink) = st.sink.as_mut() {
                sink.write_all(&data).expect("write sink");
            }
            st.bytes += data.len() as u64;
        }
        (&Step::Extracting(x), ClientEvent::Finished { xid, outcome }) if x == xid => {
            if outcome != Outcome::Completed {
                eprintln!("farm mio extract: {outcome:?}");
                st.errors += 1;
            }
            st.sink = None;
            done(st);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// references
