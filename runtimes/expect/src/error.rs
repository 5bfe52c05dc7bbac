//! How a chat operation fails.

use std::time::Duration;

use tuppence::link::{LinkError, Outcome};

use crate::Step;

/// Why an expect, a line read or a wait of a chat did not complete. `E` is the client
/// adapter's own error (the session failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError<E> {
    /// The deadline passed first. The output received so far stays buffered.
    #[error("no match within {0:?}")]
    Timeout(Duration),
    /// The command ended, and its output with it, before a match (or a line). What it
    /// printed and nobody consumed is still buffered.
    #[error("the output ended before a match (the command ended: {0:?})")]
    Eof(Outcome),
    /// The chat's buffer holds its limit of unconsumed output and none of it matches:
    /// consume or discard it (`take_buffered`, `clear`) to go on. Nothing was dropped.
    #[error("{limit} bytes of output arrived without a match (the chat's limit)")]
    Full { limit: usize },
    /// The session failed.
    #[error(transparent)]
    Session(E),
}

impl<E> ChatError<E> {
    /// What a chat call does with a step of its buffer: `Some` when it is over (the value,
    /// or `Full`/`Eof` as errors, `outcome` being how the command ended), `None` when it
    /// needs more output. Shared by the adapters' waiting loops.
    pub fn resolve<T>(
        step: Step<T>,
        limit: usize,
        outcome: Option<&Outcome>,
    ) -> Option<Result<T, Self>> {
        match step {
            Step::Ready(v) => Some(Ok(v)),
            Step::Full => Some(Err(ChatError::Full { limit })),
            Step::Eof => Some(Err(ChatError::Eof(
                outcome
                    .cloned()
                    .unwrap_or(Outcome::LinkLost(LinkError::Closed)),
            ))),
            Step::NeedData => None,
        }
    }
}
