//! The 4.0 decoder: arbitrary bytes in arbitrary chunks; every frame re-encodes and decodes
//! to itself; nothing panics. See `common/decode_check.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuppence::wire::Dialect;

#[path = "../common/decode_check.rs"]
mod decode_check;

fuzz_target!(|input: decode_check::Input<'_>| {
    decode_check::check(Dialect::V4, &input);
});
