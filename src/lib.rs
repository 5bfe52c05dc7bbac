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
//! * [`Machine`] — what every machine offers an I/O loop (bytes and time in, bytes and
//!   deadlines out), and [`Transmit`], the queued bytes it hands over as segments.
//!
//! `ARCHITECTURE.md` at the repository root maps the crates and modules and records the
//! protocol decisions the code relies on.

// No peer input may panic the core: every wire length is checked before it is used and
// every count is bounded (ARCHITECTURE.md, "Boundaries"). These lints hold that line for
// every module of the crate; test code (`cfg(test)`) may index and unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

mod cursor;
pub mod link;
mod machine;
pub mod sniff;
mod transmit;
pub mod wire;

pub use machine::Machine;
pub use transmit::Transmit;
