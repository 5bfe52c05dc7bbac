//! The three client adapters, each used the way its documentation shows: the mio
//! `EventLoop` in a hand-written loop, a smol `Session` (driver task on smol's global
//! executor, callers in `block_on`), and a blocking `Session` (reader thread).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_io::Async;
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome};
use tuppence_mio::{ConnId, EventLoop, LinkIo};

/// What every figure asks of an adapter.
pub trait Adapter {
    fn name(&self) -> &'static str;
    /// One `true` from request to exit status; returns the time it took.
    fn round_trip(&mut self) -> Duration;
    /// Copies remote `path` into local `dest`; returns the bytes received.
    fn extract(&mut self, path: &Path, dest: &Path) -> u64;
    /// Copies local `src` to remote `path`; returns the bytes sent.
    fn inject(&mut self, src: &Path, path: &Path) -> u64;
    /// Runs `command` and counts (discards) its stdout.
    fn output(&mut self, command: &str) -> u64;
}

pub fn me() -> String {
    let user = tuppence_agent::User::current().expect("the current user has a passwd entry");
    String::from_utf8_lossy(user.name()).into_owned()
}

pub fn connect_unix(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("connect to the agent");
    // As `tuppence_transport::Target::connect` does for every unix and tcp target.
    tuppence_transport::tune_socket_buffers(&s);
    s
}

// ---------------------------------------------------------------------------------------
// mio

/// A client machine on the mio `EventLoop`.
pub struct MioClient {
    driver: EventLoop<UnixStream, Client>,
    id: ConnId,
    user: String,
}

impl MioClient {
    pub fn connect(sock: &Path) -> MioClient {
        let stream = connect_unix(sock);
        stream.set_nonblocking(true).expect("nonblocking");
        let mut driver = EventLoop::new().expect("mio event loop");
        let client = Client::new(ClientConfig::default(), Instant::now());
        let id = driver
            .add(LinkIo::new(stream, client), ())
            .expect("add link");
        let mut c = MioClient {
            driver,
            id,
            user: me(),
        };
        c.until(|_, ev| matches!(ev, ClientEvent::Connected { .. }));
        c
    }

    pub fn client(&mut self) -> &mut Client {
        self.driver
            .get_mut(self.id)
            .expect("the link is alive")
            .link
            .machine_mut()
    }

    pub fn command(&self, command: &str) -> Command {
        Command::new(command.to_owned()).user(self.user.clone())
    }

    /// Turns of the loop, every event to `on_event`, until it returned true (the events
    /// of that turn are all handed over).
    pub fn until(&mut self, on_event: impl FnMut(&mut Client, ClientEvent) -> bool) {
        self.drive(|_| false, on_event);
    }

    /// As `until`, with `feed` queueing more data while the machine takes it (it returns
    /// whether it queued anything). It is called again after every flush, since a flush
    /// can make room without any event coming to wake the loop.
    pub fn drive(
        &mut self,
        mut feed: impl FnMut(&mut Client) -> bool,
        mut on_event: impl FnMut(&mut Client, ClientEvent) -> bool,
    ) {
        loop {
            // Flush, then feed what the flush made room for, until nothing more fits.
            self.driver.flush();
            while feed(self.client()) {
                self.driver.flush();
            }
            if let Some(ended) = self.driver.take_ended().pop() {
                panic!("mio: the link failed: {}", ended.error);
            }
            self.driver.wait(None).expect("mio wait");
            let client = self
                .driver
                .get_mut(self.id)
                .expect("the link is alive")
                .link
                .machine_mut();
            let mut done = false;
            while let Some(ev) = client.poll_event() {
                done |= on_event(client, ev);
            }
            if done {
                self.driver.flush();
                return;
            }
        }
    }

    /// Waits for the `Finished` of `xid`, handing the other events of it to `on_data`.
    fn finish(&mut self, xid: u16, mut on_data: impl FnMut(Bytes)) -> Outcome {
        let mut outcome = None;
        self.until(|_, ev| match ev {
            ClientEvent::Output { xid: x, data, .. } if x == xid => {
                on_data(data);
                false
            }
            ClientEvent::Finished { xid: x, outcome: o } if x == xid => {
                outcome = Some(o);
                true
            }
            _ => false,
        });
        outcome.expect("finished")
    }
}

impl Adapter for MioClient {
    fn name(&self) -> &'static str {
        "mio"
    }

    fn round_trip(&mut self) -> Duration {
        let start = Instant::now();
        let cmd = self.command("true");
        let xid = self.client().run(cmd).expect("run");
        self.client().close_stdin(xid).expect("close stdin");
        let outcome = self.finish(xid, |_| {});
        let took = start.elapsed();
        assert_eq!(outcome, Outcome::Exited(0));
        took
    }

    fn extract(&mut self, path: &Path, dest: &Path) -> u64 {
        let mut sink = File::create(dest).expect("create dest");
        let user = self.user.clone();
        let xid = self
            .client()
            .extract(user, path.to_str().expect("utf-8 path").to_owned())
            .expect("extract");
        let mut n = 0u64;
        let outcome = self.finish(xid, |data| {
            sink.write_all(&data).expect("write dest");
            n += data.len() as u64;
        });
        assert_eq!(outcome, Outcome::Completed);
        n
    }

    fn inject(&mut self, src: &Path, path: &Path) -> u64 {
        let mut source = File::open(src).expect("open source");
        let user = self.user.clone();
        let xid = self
            .client()
            .inject(user, path.to_str().expect("utf-8 path").to_owned(), 0o644)
            .expect("inject");
        self.until(|_, ev| match ev {
            ClientEvent::InjectReady { xid: x } if x == xid => true,
            ClientEvent::Finished { xid: x, outcome } if x == xid => {
                panic!("inject refused: {outcome:?}")
            }
            _ => false,
        });
        let mut sent = 0u64;
        let mut eof = false;
        let mut buf = BytesMut::new();
        let mut outcome = None;
        self.drive(
            |client| {
                let mut queued = false;
                while !eof && client.can_send() {
                    queued = true;
                    buf.reserve(PIECE);
                    let start = buf.len();
                    buf.resize(start + PIECE, 0);
                    let n = source.read(&mut buf[start..]).expect("read source");
                    buf.truncate(start + n);
                    if n == 0 {
                        eof = true;
                        client.finish_file(xid).expect("finish file");
                    } else {
                        sent += n as u64;
                        client
                            .send_file_data(xid, buf.split().freeze())
                            .expect("file data");
                    }
                }
                queued
            },
            |_, ev| match ev {
                ClientEvent::Finished { xid: x, outcome: o } if x == xid => {
                    outcome = Some(o);
                    true
                }
                _ => false,
            },
        );
        assert_eq!(outcome, Some(Outcome::Completed));
        sent
    }

    fn output(&mut self, command: &str) -> u64 {
        let cmd = self.command(command);
        let xid = self.client().run(cmd).expect("run");
        self.client().close_stdin(xid).expect("close stdin");
        let mut n = 0u64;
        let outcome = self.finish(xid, |data| n += data.len() as u64);
        assert_eq!(outcome, Outcome::Exited(0));
        n
    }
}

/// Bytes read from a local file per piece of inject data: whole packets (a piece of
/// 64 KiB would be sent as two full packets and one of 20 bytes).
const PIECE: usize = 8 * tuppence::wire::DEFAULT_MAX_CHUNK;

// ---------------------------------------------------------------------------------------
// smol

type SmolDriver = Pin<Box<tuppence_smol::Driver<Async<UnixStream>>>>;

/// The smol session, either as documented (`Session::new`: its driver is a task on smol's
/// global executor, a thread of its own) or with its driver polled by the caller's own
/// `block_on` (`Session::with_driver`: one thread for the driver, the reactor and the
/// caller, no cross-thread wakeups).
pub struct SmolClient {
    session: tuppence_smol::Session,
    driver: Option<SmolDriver>,
    user: String,
}

impl SmolClient {
    pub fn connect(sock: &Path) -> SmolClient {
        let session = smol::block_on(async {
            let stream = tuppence_smol::connect_unix(sock).await?;
            tuppence_smol::Session::new(stream, ClientConfig::default())
                .await
                .map_err(std::io::Error::other)
        })
        .expect("smol session");
        SmolClient {
            session,
            driver: None,
            user: me(),
        }
    }

    pub fn connect_local(sock: &Path) -> SmolClient {
        let stream = smol::block_on(tuppence_smol::connect_unix(sock)).expect("connect");
        let (session, driver) =
            tuppence_smol::Session::with_driver(stream, ClientConfig::default());
        let mut c = SmolClient {
            session,
            driver: Some(Box::pin(driver)),
            user: me(),
        };
        let s = c.session.clone();
        c.block_on(async move { s.connected().await })
            .expect("smol hello");
        c
    }

    /// Runs `fut` to completion, polling the driver too when it is ours.
    fn block_on<T>(&mut self, fut: impl std::future::Future<Output = T>) -> T {
        match &mut self.driver {
            None => smol::block_on(fut),
            Some(driver) => smol::block_on(futures_lite::future::or(fut, async {
                let end = driver.as_mut().await;
                panic!("the smol driver ended: {end:?}")
            })),
        }
    }

    pub fn command(&self, command: &str) -> Command {
        Command::new(command.to_owned()).user(self.user.clone())
    }
}

/// A local file as an async sink/source. Reads and writes of tmpfs files never wait for
/// a device, so doing them in place is what a user would do too.
pub struct InPlace(pub File);

impl AsyncWrite for InPlace {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().0.write(buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().0.write_vectored(bufs))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().0.flush())
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for InPlace {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().0.read(buf))
    }
}

impl Adapter for SmolClient {
    fn name(&self) -> &'static str {
        if self.driver.is_some() {
            "smol, 1 thread"
        } else {
            "smol"
        }
    }

    fn round_trip(&mut self) -> Duration {
        let cmd = self.command("true");
        let session = self.session.clone();
        let start = Instant::now();
        let out = self.block_on(session.output(cmd)).expect("run");
        let took = start.elapsed();
        assert_eq!(out.outcome, Outcome::Exited(0));
        took
    }

    fn extract(&mut self, path: &Path, dest: &Path) -> u64 {
        let sink = InPlace(File::create(dest).expect("create dest"));
        let (session, user) = (self.session.clone(), self.user.clone());
        self.block_on(session.extract(user, path.to_str().expect("utf-8 path"), sink, |_| {}))
            .expect("extract")
    }

    fn inject(&mut self, src: &Path, path: &Path) -> u64 {
        let source = InPlace(File::open(src).expect("open source"));
        let (session, user) = (self.session.clone(), self.user.clone());
        self.block_on(session.inject(
            user,
            path.to_str().expect("utf-8 path"),
            0o644,
            source,
            |_| {},
        ))
        .expect("inject")
    }

    fn output(&mut self, command: &str) -> u64 {
        let cmd = self.command(command);
        let session = self.session.clone();
        self.block_on(async move {
            let mut run = session.run(cmd).await.expect("run");
            run.close_stdin().await.expect("close stdin");
            let mut n = 0u64;
            while let Some(ev) = run.next().await {
                match ev {
                    tuppence_smol::RunEvent::Stdout(d) => n += d.len() as u64,
                    tuppence_smol::RunEvent::Stderr(_) => {}
                    tuppence_smol::RunEvent::Finished(o) => assert_eq!(o, Outcome::Exited(0)),
                }
            }
            n
        })
    }
}

// ---------------------------------------------------------------------------------------
// blocking

pub struct BlockingClient {
    session: tuppence_blocking::Session,
    user: String,
}

impl BlockingClient {
    pub fn connect(sock: &Path) -> BlockingClient {
        let session = tuppence_blocking::Session::new(
            connect_unix(sock),
            ClientConfig::default(),
            Duration::from_secs(10),
        )
        .expect("blocking session");
        BlockingClient {
            session,
            user: me(),
        }
    }
}

impl Adapter for BlockingClient {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn round_trip(&mut self) -> Duration {
        let cmd = Command::new("true").user(self.user.clone());
        let start = Instant::now();
        let out = self.session.output(cmd).expect("run");
        let took = start.elapsed();
        assert_eq!(out.outcome, Outcome::Exited(0));
        took
    }

    fn extract(&mut self, path: &Path, dest: &Path) -> u64 {
        let sink = File::create(dest).expect("create dest");
        self.session
            .extract(&self.user, path.to_str().expect("utf-8 path"), sink, |_| {})
            .expect("extract")
    }

    fn inject(&mut self, src: &Path, path: &Path) -> u64 {
        let source = File::open(src).expect("open source");
        self.session
            .inject(
                &self.user,
                path.to_str().expect("utf-8 path"),
                0o644,
                source,
                |_| {},
            )
            .expect("inject")
    }

    fn output(&mut self, command: &str) -> u64 {
        let cmd = Command::new(command.to_owned()).user(self.user.clone());
        let run = self.session.run(cmd).expect("run");
        run.close_stdin().expect("close stdin");
        let mut n = 0u64;
        while let Some(ev) = run.next().expect("output") {
            match ev {
                tuppence_blocking::RunEvent::Stdout(d) => n += d.len() as u64,
                tuppence_blocking::RunEvent::Stderr(_) => {}
                tuppence_blocking::RunEvent::Finished(o) => {
                    assert_eq!(o, Outcome::Exited(0));
                    break;
                }
            }
        }
        n
    }
}
