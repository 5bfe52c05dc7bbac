//! Every flow of the link protocol (ARCHITECTURE.md, "Link protocol"), in both dialects,
//! through a Client↔Server pair: the exact events each side reports and, where order
//! matters, the exact packets on the wire. One test binary, one module per flow.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod commands;
mod errors;
mod hello;
mod limits;
mod monitor;
mod support;
mod transfers;
