//! # tuppence — sans-IO core
//!
//! tuppence lets a host drive a *system under test* (a VM, a board on a serial cable, a
//! container) without a network: run commands with live stdin/stdout/stderr, push files in,
//! pull files out, interrupt, watch event sources, and run background information-gathering
//! tasks.
//!
//! This crate is the pure core: codecs and state machines that consume bytes and emit events
//! and bytes. It performs no I/O, starts no threads and reads no clock: time is passed in as
//! an [`std::time::Instant`]. Runtime crates (`tuppence-mio`, `tuppence-smol`,
//! `tuppence-blocking`) wire it to real transports.
//!
//! * [`wire`] — the link protocol codec (4.0 and the C executor's 3.0 dialect).
//! * [`link`] — the link protocol's connection machines, [`link::Client`] and [`link::Server`].
//! * [`sniff`] — the sniff task protocol: framing, messages, pluggable task types, the
//!   `Agent` and `Requester` machines.

mod cursor;
pub mod link;
pub mod sniff;
pub mod wire;

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
