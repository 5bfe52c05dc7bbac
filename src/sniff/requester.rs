//! The sniff requester machine (see [`Requester`]).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::cert::{CertReply, CertRequest};
use super::frame::{FramedInput, feed};
use super::nat::{NatParams, NatReply, TYPE as NAT};
use super::nop::TYPE as NOP;
use super::ping::{PingReply, PingRequest};
use super::{
    Answer, DEFAULT_MAX_FRAME, DecodeError, EncodeError, FrameDecoder, PayloadError, Request,
    Status, TaskId, UsageError, cert, ping,
};
use crate::{Machine, Transmit};

/// Requester limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequesterConfig {
    /// Largest request sent and answer accepted. Default [`DEFAULT_MAX_FRAME`].
    pub max_frame: usize,
    /// Most requests awaiting their answer. Default 4096.
    pub max_in_flight: usize,
    /// Undrained request bytes above which intents return [`UsageError::QueueFull`].
    /// Default [`DEFAULT_MAX_FRAME`].
    pub max_queued_bytes: usize,
    /// Undrained events above which `handle_bytes` consumes nothing more. Default 4096.
    pub max_events: usize,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        RequesterConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_in_flight: 4096,
            max_queued_bytes: DEFAULT_MAX_FRAME,
            max_events: 4096,
        }
    }
}

/// What a request asked for; decides how its answer is decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Nop,
    Ping(PingRequest),
    Cert(CertRequest),
    Nat,
    /// Any other type, sent with [`Requester::request`]; its data is returned raw.
    Other(u8),
}

impl TaskKind {
    /// The request type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            TaskKind::Nop => NOP,
            TaskKind::Ping(_) => ping::TYPE,
            TaskKind::Cert(_) => cert::TYPE,
            TaskKind::Nat => NAT,
            TaskKind::Other(t) => *t,
        }
    }
}

/// The final answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskResult {
    /// `U`: the agent does not know the type.
    Unknown,
    /// `F` and its data (built-ins: one code byte, see [`TaskResult::failure_code`]).
    Failed(Bytes),
    /// `O` to a NOP.
    Nop,
    /// `O` to a ping: one reply per target, in request order.
    Ping(Vec<PingReply>),
    /// `O` to a certificate request: one reply per service, in request order.
    Cert(Vec<CertReply>),
    /// `O` to a NAT request.
    Nat(NatReply),
    /// `O` to a request of another type: the raw data.
    Other(Bytes),
    /// `O` whose data does not decode for the request it answers.
    Undecodable { data: Bytes, error: PayloadError },
}

impl TaskResult {
    /// The code of a one-byte failure.
    pub fn failure_code(&self) -> Option<u8> {
        match self {
            TaskResult::Failed(d) if d.len() == 1 => d.first().copied(),
            _ => None,
        }
    }
}

/// Something the requester learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The request under `id` got its final answer.
    Finished { id: TaskId, result: TaskResult },
    /// `A`: the earlier request under `id` was aborted by a newer one; the newer one's answer
    /// follows.
    Aborted { id: TaskId, task: TaskKind },
    /// An answer for an id with nothing pending (or an `A` with nothing to abort).
    Unsolicited(Answer),
    /// A message that is not an answer; the stream goes on.
    Malformed(DecodeError),
}

/// The requester machine: the server side. It allocates task ids, encodes typed requests and
/// decodes answers into typed results. It has no timers: a server that wants to give up on a
/// task calls [`Requester::cancel`] (a NOP under the task's id, as the Python server did).
///
/// # Driving it
///
/// * **Intents**: [`Requester::nop`], [`Requester::ping`], [`Requester::cert`],
///   [`Requester::nat`], [`Requester::request`] (any type, raw parameters) return the new
///   task's id; [`Requester::cancel`] aborts a task in flight.
/// * **Inputs** ([`Machine`]): `handle_bytes` (framed stream, any chunking, returns the bytes
///   consumed) or [`Requester::handle_answer`] (one unframed answer).
/// * **Outputs**: `poll_transmit` ([`Machine`]: framed requests appended to the caller's
///   buffer) and [`Requester::poll_event`].
///
/// # Matching answers to requests
///
/// Answers are not self-describing (a ping answer needs each host's count, a certificate
/// answer each service's flags), so the requester remembers what it asked under each id, in
/// order. The agent answers the requests under one id in order, except that `A` answers the
/// oldest one (it was aborted by a newer one). With the ids this machine allocates, the only
/// way to have two requests under one id is `cancel`, whose NOP every agent knows, so: `A`
/// retires the oldest request and the next `O`/`F`/`U` answers the oldest remaining one.
/// An answer for an id with nothing pending (e.g. from a task of a previous connection:
/// agent tasks outlive connections) is reported as [`Event::Unsolicited`].
#[derive(Debug)]
pub struct Requester {
    config: RequesterConfig,
    next_id: u32,
    pending: HashMap<TaskId, VecDeque<TaskKind>>,
    transmit: BytesMut,
    decoder: FrameDecoder,
    events: VecDeque<Event>,
}

impl Requester {
    pub fn new(config: RequesterConfig) -> Requester {
        Requester {
            decoder: FrameDecoder::new(config.max_frame),
            config,
            next_id: 1,
            pending: HashMap::new(),
            transmit: BytesMut::new(),
            events: VecDeque::new(),
        }
    }

    // ---- getters ----

    pub fn config(&self) -> &RequesterConfig {
        &self.config
    }

    /// Ids with at least one request awaiting its answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The requests under `id` still awaiting an answer, oldest first.
    pub fn pending(&self, id: TaskId) -> impl Iterator<Item = &TaskKind> {
        self.pending.get(&id).into_iter().flatten()
    }

    /// Whether `handle_bytes` takes more input now.
    pub fn wants_input(&self) -> bool {
        self.events.len() < self.config.max_events
    }

    // ---- intents ----

    /// Sends a NOP under a new id (answered `O` at once).
    pub fn nop(&mut self) -> Result<TaskId, UsageError> {
        self.send(None, TaskKind::Nop, Bytes::new())
    }

    /// Sends a ping request.
    pub fn ping(&mut self, req: PingRequest) -> Result<TaskId, UsageError> {
        let mut p = BytesMut::new();
        req.encode(&mut p)?;
        self.send(None, TaskKind::Ping(req), p.freeze())
    }

    /// Sends a certificate request.
    pub fn cert(&mut self, req: CertRequest) -> Result<TaskId, UsageError> {
        let mut p = BytesMut::new();
        req.encode(&mut p)?;
        self.send(None, TaskKind::Cert(req), p.freeze())
    }

    /// Sends a NAT request (no parameters: the agent asks its configured URL).
    pub fn nat(&mut self) -> Result<TaskId, UsageError> {
        self.send(None, TaskKind::Nat, Bytes::new())
    }

    /// Sends a NAT request with parameters, e.g. the URL of the address service to ask.
    pub fn nat_with(&mut self, params: &NatParams) -> Result<TaskId, UsageError> {
        let mut p = BytesMut::new();
        params.encode(&mut p)?;
        self.send(None, TaskKind::Nat, p.freeze())
    }

    /// Sends a request of any type with raw parameters; its `O` data comes back as
    /// [`TaskResult::Other`] whatever the type byte.
    pub fn request(&mut self, task_type: u8, params: Bytes) -> Result<TaskId, UsageError> {
        self.send(None, TaskKind::Other(task_type), params)
    }

    /// Sends a request under an id the caller chose instead of an allocated one: for a
    /// command line's `--id`, or a server that keeps its own ids. `params` must be what the
    /// agent expects for `kind` (e.g. from [`PingRequest::encode`]); the answer is decoded
    /// as `kind` whatever they hold, so a deliberately bad parameter block still comes back
    /// as the type's failure.
    ///
    /// A request already pending under `id` stays pending and this one queues behind it: the
    /// agent aborts the older task (`A`, [`Event::Aborted`]) and then answers this one. An id
    /// this machine might also allocate is not reserved; mix the two only with care.
    pub fn send_as(&mut self, id: TaskId, kind: TaskKind, params: Bytes) -> Result<(), UsageError> {
        self.send(Some(id), kind, params).map(drop)
    }

    /// Cancels the task under `id`: sends a NOP under the same id. Expect
    /// [`Event::Aborted`] then the NOP's [`Event::Finished`], or, if the task had already
    /// finished, its own answer and then the NOP's.
    pub fn cancel(&mut self, id: TaskId) -> Result<(), UsageError> {
        if !self.pending.contains_key(&id) {
            return Err(UsageError::UnknownTask { id });
        }
        self.send(Some(id), TaskKind::Nop, Bytes::new()).map(drop)
    }

    fn send(
        &mut self,
        id: Option<TaskId>,
        kind: TaskKind,
        params: Bytes,
    ) -> Result<TaskId, UsageError> {
        if self.transmit.len() >= self.config.max_queued_bytes {
            return Err(UsageError::QueueFull);
        }
        let req = Request {
            id: TaskId::default(),
            task_type: kind.type_byte(),
            params,
        };
        let len = req.encoded_len();
        let max = self.config.max_frame.min(u32::MAX as usize);
        if len > max {
            return Err(EncodeError::FrameTooLong { len, max }.into());
        }
        let id = match id {
            Some(id) => id,
            None => self.allocate()?,
        };
        self.transmit
            .put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        Request { id, ..req }.encode(&mut self.transmit);
        self.pending.entry(id).or_default().push_back(kind);
        Ok(id)
    }

    /// The next id not in flight, counting up from 1 and wrapping (0 comes after u32::MAX,
    /// as in the Python server).
    fn allocate(&mut self) -> Result<TaskId, UsageError> {
        let max = self.config.max_in_flight;
        if self.pending.len() >= max {
            return Err(UsageError::TooManyInFlight { max });
        }
        // Among len+1 consecutive ids at least one is free.
        for _ in 0..=self.pending.len() {
            let id = TaskId::from(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
            if !self.pending.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(UsageError::TooManyInFlight { max })
    }

    // ---- inputs ----

    /// Handles one unframed answer (for transports that frame messages themselves). It
    /// always takes the answer; such callers bound events by checking
    /// [`Requester::wants_input`] before reading more.
    pub fn handle_answer(&mut self, message: Bytes) -> Result<(), DecodeError> {
        self.answer(Answer::decode(message)?);
        Ok(())
    }

    fn answer(&mut self, a: Answer) {
        let Some(queue) = self.pending.get_mut(&a.id) else {
            self.events.push_back(Event::Unsolicited(a));
            return;
        };
        if a.status == Status::Aborted && queue.len() < 2 {
            // Nothing newer to have aborted it: not about our requests.
            self.events.push_back(Event::Unsolicited(a));
            return;
        }
        let Some(kind) = queue.pop_front() else {
            self.events.push_back(Event::Unsolicited(a));
            return;
        };
        if queue.is_empty() {
            self.pending.remove(&a.id);
        }
        let id = a.id;
        let event = match a.status {
            Status::Aborted => Event::Aborted { id, task: kind },
            Status::Unknown => Event::Finished {
                id,
                result: TaskResult::Unknown,
            },
            Status::Failed => Event::Finished {
                id,
                result: TaskResult::Failed(a.data),
            },
            Status::Ok => Event::Finished {
                id,
                result: decode_ok(&kind, a.data),
            },
        };
        self.events.push_back(event);
    }

    // ---- outputs ----

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// The I/O surface (see [`Machine`]), so any runtime loop drives the requester as it drives
/// the agent. The requester has no timers (`poll_timeout` is always `None`; `now` is unused):
/// giving up on a task is the caller's [`Requester::cancel`]. `Error` is the fatal, sticky
/// framing error: the answer stream went out of step.
impl Machine for Requester {
    type Error = DecodeError;

    /// Feeds bytes of the framed answer stream (any chunking). Returns the bytes consumed:
    /// fewer than `data.len()` only while undrained events are over their bound. Answers
    /// that do not decode become [`Event::Malformed`]; `Err` is only the fatal, sticky
    /// [`DecodeError::FrameTooLong`].
    fn handle_bytes(&mut self, _now: Instant, data: &[u8]) -> Result<usize, DecodeError> {
        feed(self, data)
    }

    /// The agent closed its side: nothing more will be answered. Pending requests stay
    /// pending (see [`Requester::pending`]); the caller decides what that means.
    fn handle_eof(&mut self, _now: Instant) {}

    fn handle_timeout(&mut self, _now: Instant) {}

    /// Appends every queued request, framed, to `out`. Returns the bytes appended.
    fn poll_transmit(&mut self, _now: Instant, out: &mut BytesMut) -> usize {
        let n = self.transmit.len();
        out.extend_from_slice(&self.transmit);
        self.transmit.clear();
        n
    }

    /// Every queued request, framed, as one segment (requests are small: nothing to gain
    /// from splitting them).
    fn poll_transmit_segments(&mut self, _now: Instant, out: &mut Transmit) -> usize {
        let n = self.transmit.len();
        if n > 0 {
            out.push(self.transmit.split().freeze());
        }
        n
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn error(&self) -> Option<&DecodeError> {
        self.decoder.error()
    }

    fn accepts_input(&self) -> bool {
        self.wants_input() && self.decoder.error().is_none()
    }

    fn transmit_buffered(&self) -> usize {
        self.transmit.len()
    }
}

impl FramedInput for Requester {
    fn decoder(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    fn wants_input(&self) -> bool {
        Requester::wants_input(self)
    }

    fn on_message(&mut self, message: Bytes) {
        match Answer::decode(message) {
            Ok(a) => self.answer(a),
            Err(e) => self.events.push_back(Event::Malformed(e)),
        }
    }
}

fn decode_ok(kind: &TaskKind, data: Bytes) -> TaskResult {
    let undecodable = |data, error| TaskResult::Undecodable { data, error };
    match kind {
        TaskKind::Nop if data.is_empty() => TaskResult::Nop,
        TaskKind::Nop => {
            let extra = data.len();
            undecodable(data, PayloadError::TrailingBytes { extra })
        }
        TaskKind::Ping(req) => match req.decode_answer(data.clone()) {
            Ok(r) => TaskResult::Ping(r),
            Err(e) => undecodable(data, e),
        },
        TaskKind::Cert(req) => match req.decode_answer(data.clone()) {
            Ok(r) => TaskResult::Cert(r),
            Err(e) => undecodable(data, e),
        },
        TaskKind::Nat => match NatReply::decode(&data) {
            Ok(r) => TaskResult::Nat(r),
            Err(e) => undecodable(data, e),
        },
        TaskKind::Other(_) => TaskResult::Other(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u32, status: u8, data: &[u8]) -> Bytes {
        let mut m = id.to_be_bytes().to_vec();
        m.push(status);
        m.extend_from_slice(data);
        Bytes::from(m)
    }

    #[test]
    fn ids_count_from_one_and_skip_those_in_flight() {
        let mut r = Requester::new(RequesterConfig::default());
        assert_eq!(r.nop().unwrap(), TaskId::from(1));
        assert_eq!(r.nat().unwrap(), TaskId::from(2));
        r.next_id = u32::MAX;
        assert_eq!(r.nop().unwrap(), TaskId::from(u32::MAX));
        assert_eq!(r.nop().unwrap(), TaskId::from(0));
        assert_eq!(r.nop().unwrap(), TaskId::from(3), "1 and 2 are in flight");
        let mut out = BytesMut::new();
        r.poll_transmit(Instant::now(), &mut out);
        assert_eq!(&out[..9], b"\x00\x00\x00\x05\x00\x00\x00\x01N");
        assert_eq!(&out[9..18], b"\x00\x00\x00\x05\x00\x00\x00\x02n");
    }

    #[test]
    fn in_flight_and_queue_bounds() {
        let mut r = Requester::new(RequesterConfig {
            max_in_flight: 2,
            max_queued_bytes: 1000,
            ..RequesterConfig::default()
        });
        r.nop().unwrap();
        r.nop().unwrap();
        assert_eq!(r.nop(), Err(UsageError::TooManyInFlight { max: 2 }));
        r.handle_answer(answer(1, b'O', b"")).unwrap();
        assert!(r.nop().is_ok());
        let mut r = Requester::new(RequesterConfig {
            max_queued_bytes: 10,
            ..RequesterConfig::default()
        });
        r.nop().unwrap();
        r.nop().unwrap();
        assert_eq!(r.nop(), Err(UsageError::QueueFull));
        r.poll_transmit(Instant::now(), &mut BytesMut::new());
        assert!(r.nop().is_ok());
        assert_eq!(
            r.cancel(TaskId::from(77)),
            Err(UsageError::UnknownTask {
                id: TaskId::from(77)
            })
        );
    }

    #[test]
    fn cancel_expects_abort_then_nop() {
        let mut r = Requester::new(RequesterConfig::default());
        let id = r.nat().unwrap();
        r.cancel(id).unwrap();
        assert_eq!(r.pending(id).count(), 2);
        r.handle_answer(answer(1, b'A', b"")).unwrap();
        r.handle_answer(answer(1, b'O', b"")).unwrap();
        assert_eq!(
            r.poll_event(),
            Some(Event::Aborted {
                id,
                task: TaskKind::Nat
            })
        );
        assert_eq!(
            r.poll_event(),
            Some(Event::Finished {
                id,
                result: TaskResult::Nop
            })
        );
        assert_eq!(r.in_flight(), 0);
        // A late or stray answer is unsolicited.
        r.handle_answer(answer(1, b'O', b"N0")).unwrap();
        assert!(matches!(r.poll_event(), Some(Event::Unsolicited(_))));
    }

    #[test]
    fn send_as_uses_the_given_id_and_decodes_by_kind() {
        let mut r = Requester::new(RequesterConfig::default());
        let id = TaskId::from(0xdead_beef);
        r.send_as(id, TaskKind::Nat, Bytes::new()).unwrap();
        r.send_as(id, TaskKind::Other(b'Z'), Bytes::from_static(b"xy"))
            .unwrap();
        let mut out = BytesMut::new();
        r.poll_transmit(Instant::now(), &mut out);
        assert_eq!(
            &out[..],
            b"\x00\x00\x00\x05\xde\xad\xbe\xefn\x00\x00\x00\x07\xde\xad\xbe\xefZxy"
        );
        r.handle_answer(answer(0xdead_beef, b'A', b"")).unwrap();
        r.handle_answer(answer(0xdead_beef, b'O', b"raw")).unwrap();
        assert_eq!(
            r.poll_event(),
            Some(Event::Aborted {
                id,
                task: TaskKind::Nat
            })
        );
        assert_eq!(
            r.poll_event(),
            Some(Event::Finished {
                id,
                result: TaskResult::Other(Bytes::from_static(b"raw"))
            })
        );
        // The allocator is untouched.
        assert_eq!(r.nop().unwrap(), TaskId::from(1));
    }

    #[test]
    fn stray_abort_does_not_retire_the_request() {
        let mut r = Requester::new(RequesterConfig::default());
        let id = r.nat().unwrap();
        r.handle_answer(answer(1, b'A', b"")).unwrap();
        assert!(matches!(r.poll_event(), Some(Event::Unsolicited(_))));
        r.handle_answer(answer(1, b'O', b"DN")).unwrap();
        assert!(matches!(
            r.poll_event(),
            Some(Event::Finished {
                id: i,
                result: TaskResult::Nat(_)
            }) if i == id
        ));
    }

    #[test]
    fn results_decode_by_kind() {
        let mut r = Requester::new(RequesterConfig::default());
        r.nop().unwrap();
        r.nat().unwrap();
        r.request(b'Z', Bytes::from_static(b"p")).unwrap();
        r.nat().unwrap();
        r.nop().unwrap();
        r.handle_answer(answer(1, b'O', b"x")).unwrap();
        r.handle_answer(answer(2, b'F', b"S")).unwrap();
        r.handle_answer(answer(3, b'O', b"raw")).unwrap();
        r.handle_answer(answer(4, b'O', b"N?")).unwrap();
        r.handle_answer(answer(5, b'U', b"")).unwrap();
        assert!(r.handle_answer(answer(5, b'?', b"")).is_err());
        let results: Vec<_> = std::iter::from_fn(|| r.poll_event())
            .map(|e| match e {
                Event::Finished { result, .. } => result,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(results[0], TaskResult::Undecodable { .. }));
        assert_eq!(results[1].failure_code(), Some(b'S'));
        assert_eq!(results[2], TaskResult::Other(Bytes::from_static(b"raw")));
        assert!(matches!(results[3], TaskResult::Undecodable { .. }));
        assert_eq!(results[4], TaskResult::Unknown);
    }

    #[test]
    fn malformed_frames_become_events_and_the_stream_goes_on() {
        let mut r = Requester::new(RequesterConfig::default());
        r.nop().unwrap();
        let wire = b"\x00\x00\x00\x02ab\x00\x00\x00\x05\x00\x00\x00\x01O";
        assert_eq!(r.handle_bytes(Instant::now(), wire).unwrap(), wire.len());
        assert_eq!(
            r.poll_event(),
            Some(Event::Malformed(DecodeError::MessageTooShort { len: 2 }))
        );
        assert!(matches!(r.poll_event(), Some(Event::Finished { .. })));
        assert!(r.handle_bytes(Instant::now(), b"\x7f\xff\xff\xff").is_err());
        assert!(r.handle_bytes(Instant::now(), b"").is_err(), "sticky");
    }
}
