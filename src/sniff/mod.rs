//! The sniff task protocol: a server asks an agent on the system under test to run
//! information-gathering tasks in the background (ping hosts, fetch TLS certificates, detect
//! NAT) and answers when each is done.
//!
//! On a byte stream every message is framed as `u32 big-endian length | message`
//! ([`encode_frame`], [`FrameDecoder`]). A [`Request`] is `id[4] | type u8 | params`, an
//! [`Answer`] `id[4] | status u8 | data` with status `U` (unknown type), `A` (the previous
//! task under this id was aborted), `O` (success + data) or `F` (failure + data). The id is
//! opaque ([`TaskId`]).
//!
//! Two sans-IO machines drive it:
//! * [`Agent`] (system under test) owns the task table and the answer order; it says which
//!   processes to start and kill through [`Action`]s and never runs anything itself. It is a
//!   [`Machine`](crate::Machine), so the runtime drives it with the same loop as the link
//!   machines.
//! * [`Requester`] (server) allocates ids, builds typed requests and decodes answers into
//!   typed results ([`Event`]).
//!
//! Task types plug in through [`TaskType`]; the built-ins are [`nop`], [`ping`], [`cert`]
//! and [`nat`], byte-compatible with the C `sniff` plugin of ucollect.
//!
//! ```
//! use std::time::Instant;
//! use bytes::BytesMut;
//! use tuppence::Machine;
//! use tuppence::sniff::{Agent, AgentConfig, Event, Requester, RequesterConfig, TaskResult};
//!
//! // The caller owns the clock: `now` comes from the runtime's event loop.
//! fn nop_round_trip(now: Instant) {
//!     let mut server = Requester::new(RequesterConfig::default());
//!     let mut agent = Agent::new(AgentConfig::default());
//!     let id = server.nop().unwrap();
//!
//!     let mut wire = BytesMut::new();
//!     server.poll_transmit(now, &mut wire);
//!     agent.handle_bytes(now, &wire).unwrap();
//!     assert!(agent.poll_action().is_none()); // a NOP runs nothing
//!
//!     let mut back = BytesMut::new();
//!     agent.poll_transmit(now, &mut back);
//!     server.handle_bytes(now, &back).unwrap();
//!     assert_eq!(server.poll_event(), Some(Event::Finished { id, result: TaskResult::Nop }));
//! }
//! nop_round_trip(Instant::now());
//! ```
mod agent;
pub mod cert;
mod error;
mod frame;
mod message;
pub mod nat;
pub mod nop;
pub mod ping;
mod reader;
mod requester;
mod task;
#[cfg(test)]
mod test_support;

pub use agent::{
    ANSWER_OVERHEAD, Action, Agent, AgentConfig, AgentStats, DEFAULT_MAX_QUEUED_BYTES,
    RequestError, TaskHandle,
};
pub use error::{DecodeError, EncodeError, PayloadError, UsageError};
pub use frame::{DEFAULT_MAX_FRAME, FrameDecoder, LEN_PREFIX, decode_frame, encode_frame};
pub use message::{Answer, MESSAGE_HEADER_LEN, Request, Status, TaskId};
pub use requester::{Event, Requester, RequesterConfig, TaskKind, TaskResult};
pub use task::{
    DEFAULT_OUTPUT_CAP, Outcome, ProcessSpec, TaskFinish, TaskOutput, TaskPlan, TaskType, code,
};
