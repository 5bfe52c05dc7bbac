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
        let reaper = if reap_orphans {
            Some(Reaper::install()?)
        } else {
            None
        };
        let (cgroups, summary) = if cgroups {
            let created = if lazy {
                CgroupTree::create_lazy()
            } else {
                CgroupTree::create()
            };
            match created {
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
            }
        } else {
            (
                None,
                format!(
                    "cgroups disabled: {who} are killed by process group, which a process that calls setsid escapes"
                ),
            )
        };
        debug!("{summary}");
        Ok(Containment {
            cgroups,
            reaper,
            summary,
        })
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
