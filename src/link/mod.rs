//! The link protocol's connection state machines: [`Client`] (host side) and [`Server`]
//! (agent side), pure and deterministic.
//!
//! The contract (quinn-proto/str0m style; ARCHITECTURE.md, "Sans-IO contract"):
//!
//! * **inputs** — the [`Machine`](crate::Machine) methods: `handle_bytes(now, &[u8])`
//!   returns how many bytes were consumed (the rest is offered again after draining
//!   events), `handle_eof(now)`, `handle_timeout(now)` (idempotent);
//! * **intents** — `Client::run`, `inject`, `extract`, … and the server's answers
//!   (`output`, `command_exited`, `fail`, …); each returns a typed [`UsageError`] and
//!   queues nothing when it fails, e.g. `QueueFull` while the transmit buffer is over its
//!   limit;
//! * **outputs** — `poll_transmit(now, &mut BytesMut)` appends whole packets (or
//!   `poll_transmit_segments` into a [`Transmit`](crate::Transmit)), `poll_event()`,
//!   `poll_timeout()`: drain them after every input or intent.
//!
//! Modules: [`Client`] and [`Server`] (each a folder: the machine, its intents or answers,
//! its handling of the peer's packets); `core` (clock, keepalive timers, sticky error),
//! `input` (the shared input loop), `transmit` (the shared transmit queue), `stats`;
//! `event` and `streams` (what the machines tell the application, and the per-transaction
//! views the client adapters show); `config`, `command`, `error`, [`status`].
//!
//! Time is always passed in and never goes backwards inside a machine. A fatal
//! [`LinkError`] is sticky; packets queued before it can still be transmitted.
//!
//! ```
//! use std::time::Instant;
//! use bytes::BytesMut;
//! use tuppence::Machine;
//! use tuppence::link::{Client, ClientConfig, ClientEvent, Command, Outcome, Server, ServerConfig, ServerEvent};
//!
//! let now = Instant::now();
//! let mut client = Client::new(ClientConfig::default(), now);
//! let mut server = Server::new(ServerConfig::default(), now);
//! let xid = client.run(Command::new("echo hi")).unwrap();
//! let mut wire = BytesMut::new();
//! // Shuttle bytes until both sides are quiet; the "agent" answers every command at once.
//! for _ in 0..4 {
//!     client.poll_transmit(now, &mut wire);
//!     server.handle_bytes(now, &wire.split()).unwrap();
//!     while let Some(ev) = server.poll_event() {
//!         if let ServerEvent::RunCommand { xid, .. } = ev {
//!             server.output(xid, 1, "hi\n".into()).unwrap();
//!             server.command_exited(xid, 0).unwrap();
//!         }
//!     }
//!     server.poll_transmit(now, &mut wire);
//!     client.handle_bytes(now, &wire.split()).unwrap();
//! }
//! let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
//! assert!(events.contains(&ClientEvent::Finished { xid, outcome: Outcome::Exited(0) }));
//! ```

mod client;
mod command;
mod config;
mod core;
mod error;
mod event;
mod input;
mod server;
mod stats;
pub mod status;
mod streams;
mod transmit;

pub use client::Client;
pub use command::{Command, Signal};
pub use config::{
    COMMAND_DEADLINE_GRACE, ClientConfig, DEFAULT_COMMAND_TIMEOUT_SECS, DEFAULT_KEEPALIVE_SECS,
    DEVICE_HELLO_RETRY, DEVICE_STALE_PARTIAL_AFTER, KEEPALIVE_SERVER_DEFAULT, Limits,
    MIN_KEEPALIVE, ServerConfig, effective_keepalive, negotiate_keepalive,
};
pub use error::{LinkError, Refusal, UsageError, Violation};
pub use event::{ClientEvent, ConnectInfo, Outcome, ServerEvent};
pub use server::{Carryover, Server};
pub use stats::Stats;
pub use status::errno_text;
pub use streams::{MonitorEvent, Output, RunEvent, TransferEvent};
