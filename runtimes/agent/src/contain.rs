//! What keeps a command's descendants from outliving it, as one piece both event loops
//! (`serve` and the sniff task runner) set up the same way: a cgroup subtree (see
//! [`crate::cgroup`]) and the orphan reaper (see [`crate::reaper`]).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cgroup::{self, CgroupTree};
use crate::reaper::{self, Reaper};

/// The containment of one event loop.
#[derive(Debug, Default)]
pub(crate) struct Containment {
    /// Each command's cgroup is a leaf of this, when cgroups are used.
    pub cgroups: Option<Arc<CgroupTree>>,
    /// Readable when a child exited: orphans to reap, cgroups to remove.
    pub reaper: Option<Reaper>,
}

impl Containment {
    /// Sets up what the settings ask for and the system allows; `who` names what runs
    /// (`"commands"`) in the one log line that says which guarantee holds. Only failing to install the
    /// reaper is an error (cgroups may simply be unavailable).
    pub fn new(cgroups: bool, reap_orphans: bool, who: &str) -> io::Result<Containment> {
        let reaper = if reap_orphans {
            Some(Reaper::install()?)
        } else {
            None
        };
        let cgroups = if cgroups {
            match CgroupTree::create() {
                Ok(tree) => {
                    info!(cgroup = %tree.path().display(), "{who} run in their own cgroup each: killing one kills everything it started");
                    Some(tree)
                }
                Err(e) => {
                    warn!(reason = %e, "cgroup v2 cannot be used: {who} are killed by process group, which a process that calls setsid escapes");
                    None
                }
            }
        } else {
            info!(
                "cgroups disabled: {who} are killed by process group, which a process that calls setsid escapes"
            );
            None
        };
        Ok(Containment { cgroups, reaper })
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
