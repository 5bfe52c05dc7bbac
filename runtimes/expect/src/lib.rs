//! # tuppence-expect — the matcher behind chat/expect
//!
//! A *chat* drives an interactive command (a login prompt, `passwd`, an installer) over a
//! tty: wait for one of several patterns, answer, wait again. This crate is the part of
//! that which does no I/O, shared by the blocking and the smol client adapters:
//!
//! * [`Patterns`]: literals and regular expressions (the regex crate's syntax), compiled
//!   once;
//! * [`ExpectBuffer`]: the unconsumed output, fed in any chunks; [`ExpectBuffer::poll_expect`]
//!   finds the first match to complete (the result does not depend on the chunking),
//!   [`ExpectBuffer::poll_line`] the next line; bounded, never dropping output;
//! * [`ChatError`]: how an expect fails, with the adapter's own error type inside.
//!
//! ```
//! use tuppence_expect::{ExpectBuffer, Pattern, Patterns, Step};
//!
//! let prompts = Patterns::new([Pattern::literal("Password: "), Pattern::regex(r"\$ $")])?;
//! let mut buf = ExpectBuffer::default();
//! buf.push("Last login: today\r\nPass".into());
//! assert_eq!(buf.poll_expect(&prompts), Step::NeedData);
//! buf.push("word: ".into());
//! let Step::Ready(m) = buf.poll_expect(&prompts) else { panic!() };
//! assert_eq!((m.pattern, m.matched()), (0, &b"Password: "[..]));
//! assert_eq!(m.before(), b"Last login: today\r\n");
//! # Ok::<(), tuppence_expect::PatternError>(())
//! ```

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod buffer;
mod error;
mod pattern;

pub use buffer::{DEFAULT_LIMIT, ExpectBuffer, Match, Step};
pub use error::ChatError;
pub use pattern::{Pattern, PatternError, Patterns};
