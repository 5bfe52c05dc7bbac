//! The requesting side of the sniff protocol, blocking: a [`Transport`] and the core's
//! [`Requester`] machine, nothing else. The agent side is `tuppence_agent::sniff`.
//!
//! Blocking is enough here: a requester sends a few requests and waits for their answers,
//! and [`Transport::wait_readable`] bounds every wait, so a silent agent costs a timeout, not
//! a hang.
//!
//! ```no_run
//! use std::time::Duration;
//! use tuppence::sniff::{TaskId, TaskResult};
//! use tuppence_blocking::sniff::{SniffRequest, request};
//!
//! let target = "unix:/run/tuppence-sniff.sock".parse()?;
//! let result = request(&target, TaskId::from(7), &SniffRequest::nop(), Duration::from_secs(5))?;
//! assert_eq!(result, TaskResult::Nop);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tuppence::Machine;
use tuppence::sniff::cert::CertRequest;
use tuppence::sniff::nat::NatParams;
use tuppence::sniff::ping::PingRequest;
use tuppence::sniff::{
    DecodeError, EncodeError, Event, Requester, RequesterConfig, TaskId, TaskKind, TaskResult,
    UsageError,
};
use tuppence_transport::{Target, Transport, TransportError};

/// Bytes read per call.
const CHUNK: usize = 64 * 1024;

/// One request: what it is (which decides how its answer is decoded) and its encoded
/// parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniffRequest {
    pub kind: TaskKind,
    pub params: Bytes,
}

impl SniffRequest {
    /// `N`: answered `O` at once; under a running id it cancels that task.
    pub fn nop() -> SniffRequest {
        SniffRequest {
            kind: TaskKind::Nop,
            params: Bytes::new(),
        }
    }

    /// `P`: ping hosts.
    pub fn ping(req: PingRequest) -> Result<SniffRequest, EncodeError> {
        let mut p = BytesMut::new();
        req.encode(&mut p)?;
        Ok(SniffRequest {
            kind: TaskKind::Ping(req),
            params: p.freeze(),
        })
    }

    /// `C`: fetch TLS certificates.
    pub fn cert(req: CertRequest) -> Result<SniffRequest, EncodeError> {
        let mut p = BytesMut::new();
        req.encode(&mut p)?;
        Ok(SniffRequest {
            kind: TaskKind::Cert(req),
            params: p.freeze(),
        })
    }

    /// `n`: NAT detection, against the agent's configured URL (`url: None`) or `url`.
    pub fn nat(params: &NatParams) -> Result<SniffRequest, EncodeError> {
        let mut p = BytesMut::new();
        params.encode(&mut p)?;
        Ok(SniffRequest {
            kind: TaskKind::Nat,
            params: p.freeze(),
        })
    }

    /// Any type byte with raw parameters; an `O` answer comes back as
    /// [`TaskResult::Other`].
    pub fn raw(task_type: u8, params: Bytes) -> SniffRequest {
        SniffRequest {
            kind: TaskKind::Other(task_type),
            params,
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SniffError {
    /// The target could not be opened.
    #[error(transparent)]
    Connect(#[from] TransportError),
    /// Reading or writing the transport failed.
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    /// The request could not be sent (see [`UsageError`]).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The agent's answer stream went out of step (a length prefix over the frame limit).
    #[error("answer stream out of step: {0}")]
    Framing(#[from] DecodeError),
    /// The agent closed the connection before answering.
    #[error("the agent closed the connection")]
    Closed,
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A blocking sniff requester on one connection. (A link-protocol session is
/// [`crate::Session`]; this is the other protocol's client, hence its own name.)
pub struct SniffClient {
    transport: Transport,
    requester: Requester,
    /// Received bytes the requester has not taken yet.
    rx: BytesMut,
    /// The reused read buffer.
    buf: Box<[u8]>,
    closed: bool,
    /// Events [`SniffClient::wait_for`] passed over (answers to other ids, `A`s,
    /// malformed answers).
    skipped: u64,
}

impl SniffClient {
    /// Wraps a connected transport (put in blocking mode).
    pub fn new(transport: Transport) -> io::Result<SniffClient> {
        transport.set_nonblocking(false)?;
        Ok(SniffClient {
            transport,
            requester: Requester::new(RequesterConfig::default()),
            rx: BytesMut::new(),
            buf: vec![0; CHUNK].into_boxed_slice(),
            closed: false,
            skipped: 0,
        })
    }

    /// Connects to an agent.
    pub fn connect(target: &Target) -> Result<SniffClient, SniffError> {
        Ok(SniffClient::new(target.connect()?)?)
    }

    /// Events [`SniffClient::wait_for`] passed over so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The transport, e.g. to send raw bytes in a test.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The requester machine (what is pending under which id).
    pub fn requester(&self) -> &Requester {
        &self.requester
    }

    /// Sends `req` under `id` (see [`Requester::send_as`]: a request already pending under
    /// `id` is aborted by the agent, `A` first).
    pub fn send(&mut self, id: TaskId, req: &SniffRequest) -> Result<(), SniffError> {
        self.requester
            .send_as(id, req.kind.clone(), req.params.clone())?;
        let mut out = BytesMut::new();
        self.requester.poll_transmit(Instant::now(), &mut out);
        (&self.transport).write_all(&out)?;
        Ok(())
    }

    /// The next event, waiting at most `timeout` for it.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, SniffError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.requester.poll_event() {
                return Ok(ev);
            }
            if !self.rx.is_empty() {
                let n = self.requester.handle_bytes(Instant::now(), &self.rx)?;
                self.rx.advance(n);
                if n > 0 {
                    continue;
                }
            }
            if self.closed {
                return Err(SniffError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.transport.wait_readable(Some(left))? {
                return Err(SniffError::Timeout(timeout));
            }
            self.read()?;
        }
    }

    /// Waits at most `timeout` for the final answer to the request under `id`; other events
    /// (answers to other ids, `A`s, malformed answers) are counted ([`SniffClient::skipped`])
    /// and passed over.
    pub fn wait_for(&mut self, id: TaskId, timeout: Duration) -> Result<TaskResult, SniffError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).map_err(|e| match e {
                SniffError::Timeout(_) => SniffError::Timeout(timeout),
                other => other,
            })? {
                Event::Finished { id: i, result } if i == id => return Ok(result),
                Event::Finished { .. }
                | Event::Aborted { .. }
                | Event::Unsolicited(_)
                | Event::Malformed(_) => self.skipped += 1,
            }
        }
    }

    fn read(&mut self) -> Result<(), SniffError> {
        match (&self.transport).read(&mut self.buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self
                .rx
                .extend_from_slice(self.buf.get(..n).unwrap_or_default()),
            // A spurious wake-up: the caller waits again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// Connects to `target`, sends `req` under `id` and waits at most `timeout` for its answer.
/// The connection is closed on return, which makes the agent kill the task if it is still
/// running (e.g. after a timeout).
pub fn request(
    target: &Target,
    id: TaskId,
    req: &SniffRequest,
    timeout: Duration,
) -> Result<TaskResult, SniffError> {
    let mut client = SniffClient::connect(target)?;
    client.send(id, req)?;
    client.wait_for(id, timeout)
}
