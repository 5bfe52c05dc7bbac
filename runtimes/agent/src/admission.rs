//! Accepting clients when file descriptors run out, for both accept loops (`serve` and
//! `sniff serve`).
//!
//! When `accept` fails with `EMFILE` the client stays in the listen backlog. An
//! edge-triggered loop (mio) is not told about it again until *another* client arrives, so
//! without care it waits forever: the issue saw 45 of 100 clients never get a hello under
//! `ulimit -n 64`. So a listener that ran out is *starved*: the loop retries `accept` on
//! every turn (a closed connection or an ended command frees fds) and at least every
//! [`ACCEPT_RETRY`]. If no fd comes free within a while ([`REFUSE_AFTER`] by default), the
//! waiting clients are
//! told so instead of being left waiting: the loop closes a [`Reserve`] fd kept for this,
//! accepts one client into its place, answers it (the link agent refuses it with a
//! status; sniff, whose protocol has no words for it, closes it), and opens the reserve
//! again once that connection is closed.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How often a starved listener is retried at the least.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// How long a listener stays starved before waiting clients are refused (the default of
/// `LinkDaemonConfig::fd_wait`).
pub const REFUSE_AFTER: Duration = Duration::from_millis(500);

/// Whether an `accept` error means that resources ran out for a while (the client is still
/// in the backlog): `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`.
pub(crate) fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether the error is the per-process fd limit, which the [`Reserve`] can get around.
pub(crate) fn is_fd_limit(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMFILE)
}

/// One fd kept open (on `/dev/null`) to be given up when `accept` hits the fd limit.
#[derive(Debug)]
pub(crate) struct Reserve {
    fd: Option<OwnedFd>,
}

impl Reserve {
    pub fn new() -> Reserve {
        let mut r = Reserve { fd: None };
        r.restore();
        r
    }

    /// Closes the reserve fd; returns whether there was one to close.
    pub fn release(&mut self) -> bool {
        self.fd.take().is_some()
    }

    /// Opens the reserve fd again if it is not held (failing quietly: it is retried at the
    /// next release).
    pub fn restore(&mut self) {
        if self.fd.is_none() {
            self.fd = rustix::fs::open(
                c"/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok();
        }
    }
}

/// A listener whose last `accept` ran out of resources.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Starved {
    /// Since when, without a successful `accept` in between.
    pub since: Instant,
}

impl Starved {
    pub fn new(now: Instant) -> Starved {
        Starved { since: now }
    }

    /// Whether waiting clients should now be refused rather than kept waiting longer
    /// than `wait`.
    pub fn refuse_now(&self, now: Instant, wait: Duration) -> bool {
        now.saturating_duration_since(self.since) >= wait
    }
}

/// A log line that may repeat without bound (one per refused client), shown at most once
/// per [`Throttle::WINDOW`] with the number of times it was held back.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    next: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// `Some(n)`: log now, mentioning the `n` occurrences held back since the last line.
    /// `None`: count this one and stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.held = self.held.saturating_add(1);
            return None;
        }
        self.next = Some(now + Self::WINDOW);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counts_what_it_holds_back() {
        let now = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.allow(now), Some(0));
        assert_eq!(t.allow(now), None);
        assert_eq!(t.allow(now + Duration::from_secs(1)), None);
        assert_eq!(t.allow(now + Throttle::WINDOW), Some(2));
    }

    #[test]
    fn reserve_gives_up_and_takes_back_an_fd() {
        let mut r = Reserve::new();
        assert!(r.release());
        assert!(!r.release());
        r.restore();
        assert!(r.release());
    }
}
