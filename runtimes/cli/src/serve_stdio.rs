//! `tuppence serve --stdio [--root-directory DIR]`: the agent for one client on this
//! process's stdin and stdout — what `exec:`, `ssh:` and `chroot:` targets start.
//!
//! The order matters:
//!
//! 1. the stdio fds are taken for the link first ([`StdioRelay::take`]: fds 0 and 1 are
//!    then `/dev/null` and the log, so nothing printed by mistake can corrupt the protocol;
//!    and `/dev/null` may not exist in the new root);
//! 2. then the chroot, before the agent looks at anything (its cgroup tree, the orphan
//!    reaper), so that everything it serves, opens and runs is inside DIR — as the C
//!    agent's `--root-directory`, which chrooted before opening its port;
//! 3. then the agent, with `exit_when_idle`: it returns when the one link closes (or on
//!    `quit`, or a signal), after killing what it started;
//! 4. and last, the relay gets [`FLUSH`] to write the agent's last bytes to stdout.

use std::path::Path;
use std::time::Duration;

use tuppence_agent::serve::LinkDaemon;
use tuppence_transport::StdioRelay;

use crate::cli::ServeArgs;
use crate::exit::{self, Failure};
use crate::serve::{agent_config, log_end, stop_on_signals};

/// How long the agent's last bytes may take to reach stdout once it has stopped.
const FLUSH: Duration = Duration::from_secs(5);

pub fn serve_stdio(args: &ServeArgs) -> Result<u8, Failure> {
    let (link, relay) = StdioRelay::take().map_err(|e| {
        Failure::new(
            exit::CONNECTION,
            format!("cannot serve on stdio: {}", exit::io_text(&e)),
        )
        .at("serve")
    })?;
    if let Some(dir) = &args.root_directory {
        enter_root(dir)?;
    }
    let cannot = |e: std::io::Error| {
        Failure::new(
            exit::CONNECTION,
            format!("cannot start the agent: {}", exit::io_text(&e)),
        )
    };
    let mut config = agent_config(args);
    config.exit_when_idle = true;
    let mut agent = LinkDaemon::new(config).map_err(cannot)?;
    let peer = if relay.is_socket() {
        "stdio (socket)"
    } else {
        "stdio"
    };
    agent.add_connection(link, peer).map_err(cannot)?;
    let stop = agent.stop_handle().map_err(cannot)?;
    let signals = stop_on_signals("tuppence serve", Vec::new(), move || stop.stop())?;
    tracing::info!("serving one client on {peer}; {}", agent.containment());
    let end = agent.run();
    // The agent's end of the link closes with it: the relay then writes what is left.
    drop(agent);
    signals.close();
    if !relay.finish(FLUSH) {
        tracing::warn!("the client stopped reading; its last answers were dropped");
    }
    log_end(end.map_err(cannot)?);
    Ok(0)
}

/// `chroot(DIR)` and `chdir("/")`, for `--root-directory`.
pub fn enter_root(dir: &Path) -> Result<(), Failure> {
    let fail = |what: String| Failure::new(exit::CONNECTION, what).at("serve");
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Err(fail(format!(
            "--root-directory {}: chroot needs root (running as uid {})",
            dir.display(),
            euid.as_raw()
        )));
    }
    std::os::unix::fs::chroot(dir).map_err(|e| {
        fail(format!(
            "cannot chroot to {}: {}",
            dir.display(),
            exit::io_text(&e)
        ))
    })?;
    std::env::set_current_dir("/").map_err(|e| {
        fail(format!(
            "cannot change to / in {}: {}",
            dir.display(),
            exit::io_text(&e)
        ))
    })?;
    tracing::info!(root = %dir.display(), "chrooted");
    Ok(())
}
