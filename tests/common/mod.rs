//! Shared test support. Each integration test uses only part of it.
#![allow(dead_code)]

pub mod pair;
