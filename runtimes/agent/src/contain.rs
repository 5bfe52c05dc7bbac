//! What keeps a command's descendants from outliving it, as one piece both event loops
//! (`serve` and the sniff task runner) set up the same way: a cgroup subtree (see
//! [`crate::cgroup`]) and the orphan reaper (see [`crate::reaper`]).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::cgroup::{self, CgroupTree};
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
    /// Cgroups asked for and not made yet ([`Containment::deferred`]): `(lazy, who)`.
    pending: Option<(bool, String)>,
}

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
            (
                Some((lazy, who.to_owned())),
                format!("{who}: cgroups not set up yet"),
            )
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
        let Some((lazy, who)) = self.pending.take() else {
            return;
        };
        let created = if lazy {
            CgroupTree::create_lazy()
        } else {
            CgroupTree::create()
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
