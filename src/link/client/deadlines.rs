//! The client's own command deadlines: a command with a timeout that the agent has not
//! ended by its timeout plus `ClientConfig::deadline_grace` (counted from when its request
//! left) ends as timed out all the same, and the agent is sent KILL.

use std::time::{Duration, Instant};

use super::Client;
use crate::link::Outcome;
use crate::link::Signal;
use crate::link::stats::count;

/// Where a command stands with its client deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deadline {
    /// No deadline: not a command, no timeout, or `deadline_grace` is `None`.
    None,
    /// Timeout plus grace, to be counted from when the request leaves in `poll_transmit`.
    Unarmed(Duration),
    At(Instant),
}

impl Client {
    /// Starts the deadlines of the commands whose requests `poll_transmit` just took.
    pub(super) fn arm_deadlines(&mut self, now: Instant) {
        for xid in self.unarmed.drain(..) {
            if let Some(tx) = self.transactions.get_mut(&xid)
                && let Deadline::Unarmed(after) = tx.deadline
            {
                // An instant beyond the clock's range is no deadline at all.
                tx.deadline = match now.checked_add(after) {
                    Some(t) => {
                        self.deadlines.insert((t, xid));
                        Deadline::At(t)
                    }
                    None => Deadline::None,
                };
            }
        }
    }

    /// Ends the commands whose deadline has passed: the agent is sent KILL (in 3.0 the
    /// interrupt is always KILL), the application a timeout, and the xid is forgotten.
    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        if self.core.error.is_some() {
            return;
        }
        while let Some(&(t, xid)) = self.deadlines.first() {
            if t > now {
                return;
            }
            self.deadlines.pop_first();
            if !self.transactions.contains_key(&xid) {
                continue;
            }
            // No room check: a tiny packet that must go out even behind queued stdin.
            let kill = self.interrupt_packet(Signal::KILL);
            let _ = self.enqueue(xid, kill);
            count(&mut self.core.stats.deadlines_expired, 1);
            self.finish(xid, Outcome::TimedOut);
        }
    }
}
