//! The requesting side of sniff, blocking: a [`Transport`] and a [`Requester`], nothing
//! else.
//!
//! Blocking is enough here: a requester sends a few requests and waits for their answers,
//! and [`Transport::wait_readable`] bounds every wait, so a silent agent costs a timeout, not
//! a hang.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tracing::debug;
use tuppence::sniff::cert::CertRequest;
use tuppence::sniff::nat::NatParams;
use tuppence::sniff::ping::PingRequest;
use tuppence::sniff::{
    DecodeError, EncodeError, Event, Requester, RequesterConfig, TaskId, TaskKind, TaskResult,
    UsageError,
};
use tuppence_transport::{Target, Transport, TransportError};

use crate::fdio::{self, ReadOutcome};

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
pub enum ClientError {
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

/// A blocking sniff requester on one connection.
pub struct Client {
    transport: Transport,
    requester: Requester,
    /// Received bytes the requester has not taken yet.
    rx: BytesMut,
    closed: bool,
}

impl Client {
    /// Wraps a connected transport (put in blocking mode).
    pub fn new(transport: Transport) -> io::Result<Client> {
        transport.set_nonblocking(false)?;
        Ok(Client {
            transport,
            requester: Requester::new(RequesterConfig::default()),
            rx: BytesMut::new(),
            closed: false,
        })
    }

    /// Connects to an agent.
    pub fn connect(target: &Target) -> Result<Client, ClientError> {
        Ok(Client::new(target.connect()?)?)
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
    pub fn send(&mut self, id: TaskId, req: &SniffRequest) -> Result<(), ClientError> {
        self.requester
            .send_as(id, req.kind.clone(), req.params.clone())?;
        let mut out = BytesMut::new();
        self.requester.poll_transmit(&mut out);
        (&self.transport).write_all(&out)?;
        Ok(())
    }

    /// The next event, waiting at most `timeout` for it.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.requester.poll_event() {
                return Ok(ev);
            }
            if !self.rx.is_empty() {
                let n = self.requester.handle_bytes(&self.rx)?;
                self.rx.advance(n);
                if n > 0 {
                    continue;
                }
            }
            if self.closed {
                return Err(ClientError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.transport.wait_readable(Some(left))? {
                return Err(ClientError::Timeout(timeout));
            }
            self.read()?;
        }
    }

    /// Waits at most `timeout` for the final answer to the request under `id`; other events
    /// (answers to other ids, `A`s, malformed answers) are logged and skipped.
    pub fn wait_for(&mut self, id: TaskId, timeout: Duration) -> Result<TaskResult, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).map_err(|e| match e {
                ClientError::Timeout(_) => ClientError::Timeout(timeout),
                other => other,
            })? {
                Event::Finished { id: i, result } if i == id => return Ok(result),
                other => debug!(?other, "sniff event skipped"),
            }
        }
    }

    fn read(&mut self) -> Result<(), ClientError> {
        match fdio::read_from(&self.transport, &mut self.rx, CHUNK)? {
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof => self.closed = true,
            // A spurious wake-up: the caller waits again.
            ReadOutcome::WouldBlock => {}
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
) -> Result<TaskResult, ClientError> {
    let mut client = Client::connect(target)?;
    client.send(id, req)?;
    client.wait_for(id, timeout)
}
