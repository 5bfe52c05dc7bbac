//! What keeps a command's descendants from outliving it, as one piece both event loops
//! (`serve` and the sniff task runner) set up the same way: a cgroup subtree (see
//! [`crate::cgroup`]) and the orphan reaper (see [`crate::reaper`]).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use std::sync::mpsc::Receiver;

use crate::cgroup::{self, CgroupError, CgroupTree};
use crate::reaper::{self, Reaper};

/// The containment of one event loop.
#[derive(Debug, Default)]
pub(crate) struct Containment {
    /// Each command's cgroup is a leaf of this, when cgroups are used.
    pub cgroups: Option<Arc<CgroupTree>>,
    /// Readable when a child exited: orphans to reap, cgroups to remove.
    pub reaper: Option<Reaper>,
    /// Which guarantee holds, in words (see [`Containment::describe`]).
    summary: String,
    /// Cgroups asked for and not made yet ([`Containment::deferred`]).
    pending: Option<Pending>,
}

/// A cgroup subtree still to be made, or being made by another thread.
#[derive(Debug)]
struct Pending {
    lazy: bool,
    /// The leaves go directly in this process's own cgroup ([`Containment::in_own_cgroup`]).
    in_own: bool,
    who: String,
    /// Where another thread sends the subtree it makes ([`Containment::made_by`]).
    made: Option<Receiver<Result<Arc<CgroupTree>, CgroupError>>>,
}

/// How long [`Containment::complete`] waits for a subtree another thread is making before
/// it makes one itself (that thread is the caller of `EmbeddedAgent::start`, which sends
/// it before it writes its hello: only a stalled machine waits at all).
const MADE_WAIT: Duration = Duration::from_secs(2);

impl Containment {
    /// Sets up what the settings ask for and the system allows; `who` names what runs
    /// (`"commands"`) in [`Containment::describe`]. Only failing to install the reaper is
    /// an error (cgroups may simply be unavailable). `lazy`: no probe process now, the
    /// first command is the probe ([`CgroupTree::create_lazy`]; only for children started
    /// by [`crate::spawn`]'s own spawn, which handles a refusal).
    pub fn new(
        cgroups: bool,
        reap_orphans: bool,
        lazy: bool,
        who: &str,
    ) -> io::Result<Containment> {
        let mut contain = Containment::deferred(cgroups, reap_orphans, lazy, who)?;
        contain.complete();
        Ok(contain)
    }

    /// As [`Containment::new`], but the cgroup subtree is made only by
    /// [`Containment::complete`] (until then commands must not be started). Finding the
    /// agent's own cgroup and making the subtree cost an embedded agent about 0.2 ms of
    /// its set-up, in which the client's hello waited for its answer; made after the
    /// answer, they overlap with the client reading it and sending its first request. The
    /// reaper is installed now: it is the part that can fail.
    pub fn deferred(
        cgroups: bool,
        reap_orphans: bool,
        lazy: bool,
        who: &str,
    ) -> io::Result<Containment> {
        let reaper = if reap_orphans {
            Some(Reaper::install()?)
        } else {
            None
        };
        let (pending, summary) = if cgroups {
            let pending = Pending {
                lazy,
                in_own: false,
                who: who.to_owned(),
                made: None,
            };
            (Some(pending), format!("{who}: cgroups not set up yet"))
        } else {
            (
                None,
                format!(
                    "cgroups disabled: {who} are killed by process group, which a process that calls setsid escapes"
                ),
            )
        };
        if pending.is_none() {
            debug!("{summary}");
        }
        Ok(Containment {
            cgroups: None,
            reaper,
            summary,
            pending,
        })
    }

    /// Makes the cgroup subtree a [deferred](Containment::deferred) containment still
    /// lacks (or says, once, why there is none); nothing when there is nothing pending.
    pub fn complete(&mut self) {
        let Some(Pending {
            lazy,
            in_own,
            who,
            made,
        }) = self.pending.take()
        else {
            return;
        };
        let made = made.and_then(|rx| rx.recv_timeout(MADE_WAIT).ok());
        let created = match made {
            Some(made) => made,
            None if lazy && in_own => CgroupTree::create_flat_lazy(),
            None if lazy => CgroupTree::create_lazy(),
            None => CgroupTree::create(),
        };
        let (cgroups, summary) = match created {
            Ok(tree) => {
                let summary = format!(
                    "{who} run in their own cgroup each (below {}): killing one kills everything it started",
                    tree.path().display()
                );
                (Some(tree), summary)
            }
            Err(e) => (
                None,
                format!(
                    "cgroup v2 cannot be used ({e}): {who} are killed by process group, which a process that calls setsid escapes"
                ),
            ),
        };
        debug!("{summary}");
        self.cgroups = cgroups;
        self.summary = summary;
    }

    /// A [deferred](Containment::deferred) lazy subtree is being made by another thread,
    /// which sends it (or why it could not) on `rx`: [`Containment::complete`] takes it from
    /// there (and makes one itself if none comes within a couple of seconds).
    pub fn made_by(&mut self, rx: Receiver<Result<Arc<CgroupTree>, CgroupError>>) {
        if let Some(p) = &mut self.pending
            && p.lazy
        {
            p.made = Some(rx);
        }
    }

    /// A [deferred](Containment::deferred) lazy containment makes its commands' cgroups
    /// directly in this process's own cgroup ([`CgroupTree::create_flat_lazy`]).
    pub fn in_own_cgroup(&mut self) {
        if let Some(p) = &mut self.pending
            && p.lazy
        {
            p.in_own = true;
        }
    }

    /// Whether [`Containment::complete`] still has a cgroup subtree to make.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Which guarantee holds, for a log line: cgroups, or process groups and why.
    pub fn describe(&self) -> &str {
        &self.summary
    }

    /// The fd to watch for readability, if orphans are reaped.
    pub fn fd(&self) -> Option<RawFd> {
        self.reaper.as_ref().map(Reaper::fd)
    }

    /// A child exited (the fd became readable): reap adopted orphans, remove emptied
    /// cgroups.
    pub fn on_child_exit(&self) {
        if let Some(r) = &self.reaper {
            r.drain();
        }
        reaper::reap_orphans();
        cgroup::retry_parked();
    }

    /// At shutdown, after every command was killed: waits up to `timeout` for the killed
    /// cgroups to empty and be removed, reaping orphans meanwhile, so that neither
    /// processes nor empty cgroup directories are left behind. Returns how many cgroups
    /// (of the whole process) still wait.
    pub fn settle(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            reaper::reap_orphans();
            let left = cgroup::retry_parked();
            if left == 0 || Instant::now() >= deadline {
                // The last processes may have died since the scan above.
                reaper::reap_orphans();
                return left;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    /// A deferred containment takes the subtree another thread made (the embedded
    /// agent's caller) rather than making a second one; with nobody sending (the sender
    /// gone), it makes its own.
    #[test]
    fn a_deferred_subtree_is_taken_from_the_thread_that_made_it() {
        let made = match CgroupTree::create_lazy() {
            Ok(tree) => tree,
            Err(e) => {
                eprintln!("skipped: cgroups cannot be used here: {e}");
                return;
            }
        };
        let path = made.path().to_owned();
        let (tx, rx) = sync_channel(1);
        let mut contain = Containment::deferred(true, false, true, "commands").expect("deferred");
        contain.made_by(rx);
        assert!(contain.is_pending() && contain.cgroups.is_none());
        tx.send(Ok(made)).expect("send");
        contain.complete();
        assert!(!contain.is_pending());
        let tree = contain.cgroups.as_ref().expect("a subtree");
        assert_eq!(tree.path(), path);
        assert!(
            contain.describe().contains("own cgroup"),
            "{}",
            contain.describe()
        );

        let (tx, rx) = sync_channel(1);
        let mut other = Containment::deferred(true, false, true, "commands").expect("deferred");
        other.made_by(rx);
        drop(tx);
        other.complete();
        let own = other.cgroups.as_ref().expect("a subtree of its own");
        assert_ne!(own.path(), path);
    }
}
