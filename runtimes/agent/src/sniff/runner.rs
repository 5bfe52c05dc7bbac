//! The sniff task runner: starts the processes a [`sniff::Agent`](tuppence::sniff::Agent)
//! asks for, collects their stdout, and reports how each ended.
//!
//! # Why it is built this way
//!
//! * **One thread, any number of tasks.** Every task is two fds, its stdout pipe and its
//!   pidfd, registered in the runner's own `mio::Poll`. That poll's fd is itself pollable
//!   ([`AsRawFd`]), so a server loop registers *one* fd for all tasks and calls
//!   [`TaskRunner::process`] when it is readable (or on every turn: it never blocks).
//! * **Completion is EOF on stdout *and* the exit of the process** (the C plugin waited for
//!   EOF only, and left reaping to a global `waitpid(-1)`). The task type judges the output
//!   alone; the exit status is not reported.
//! * **The exited process is reaped last.** Until it is reaped, a zombie leader keeps its
//!   pid, and therefore its process-group id, from being reused. So every `kill(-pgid)` the
//!   runner sends — on abort, over the cap, or to clear stragglers of a finished task — goes
//!   out while the leader is still unreaped, and can never hit an unrelated group that
//!   inherited the number (pids wrap quickly where `pid_max` is 32768).
//! * **Nothing is left behind.** A finished task's group is SIGKILLed before the leader is
//!   reaped (a background process that closed its stdout would otherwise outlive the task);
//!   an aborted task is SIGKILLed at once and its leader reaped as soon as its pidfd says it
//!   died, in the same loop, so no zombie stays. Where cgroup v2 allows it
//!   ([`RunnerConfig::cgroups`]) each task runs in its own cgroup and these kills are
//!   `cgroup.kill`, which also reaches processes that left the task's process group
//!   (`setsid`); see [`crate::cgroup`]. Grandchildren whose parent exits are reparented to
//!   the runner's process, a child subreaper ([`RunnerConfig::reap_orphans`]), which reaps
//!   them as they exit (see [`crate::reaper`]); before, they went to PID 1, which in a
//!   container may never reap them.
//! * **Bounded.** Output is read straight into the task's buffer and never beyond
//!   [`ProcessSpec::output_cap`] + 1 bytes: the one extra byte proves the cap was exceeded.
//!   How many tasks run at once is the agent's
//!   [`AgentConfig::max_tasks`](tuppence::sniff::AgentConfig::max_tasks), so a runner holds
//!   at most `max_tasks × output_cap` bytes per agent.
//! * **Timeouts are not the runner's business**: the agent tracks them (`poll_timeout` /
//!   `handle_timeout`) and turns an expired task into an [`Action::Abort`].
//!
//! # Child setup
//!
//! Each task runs `program args…` (looked up in `PATH` when it has no `/`) in a new session
//! (so its own process group, and no controlling terminal it could read from or signal),
//! with every signal disposition at its default and an empty signal mask (the agent ignores
//! SIGPIPE; a shell pipeline under an ignored SIGPIPE would not stop when its reader goes
//! away), stdin from `/dev/null`, stdout to a pipe, stderr to `/dev/null` or the agent's own
//! stderr ([`TaskStderr`]), every other fd closed at exec, the agent's environment plus
//! [`ProcessSpec::env`], and the agent's working directory. These are the same helpers
//! `tuppence serve` uses for commands ([`crate::spawn`]).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::hash::Hash;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, warn};
use tuppence::sniff::{Action, ProcessSpec, TaskHandle, TaskOutput};

use crate::cgroup::{self, CgroupTree, Leaf};
use crate::contain::Containment;
use crate::fdio::{self, ReadOutcome};
use crate::spawn::{self, Child, SpawnError};

/// Most bytes read from one pipe per `read` call.
const CHUNK: usize = 64 * 1024;

/// Where a task's stderr goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskStderr {
    /// `/dev/null` (default): the built-in scripts send their tools' stderr there already,
    /// and a task cannot fill a log the operator did not ask for.
    #[default]
    Null,
    /// The agent's own stderr, i.e. its log when it runs as a service: for debugging a task
    /// type.
    Inherit,
}

/// How the runner starts processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    pub stderr: TaskStderr,
    /// Run each task in its own cgroup v2 when the system allows it (default `true`; see
    /// [`crate::cgroup`]). Without one, a process that leaves the task's process group
    /// survives the task's end.
    pub cgroups: bool,
    /// Make this process a child subreaper and reap the orphans of tasks (default `true`;
    /// see [`crate::reaper`]).
    pub reap_orphans: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            stderr: TaskStderr::default(),
            cgroups: true,
            reap_orphans: true,
        }
    }
}

/// Why a task could not be started. The caller reports it to the agent as
/// [`TaskOutput::SpawnFailed`] (see [`StartError::output`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A variable name in [`ProcessSpec::env`] is empty or holds `=` or NUL.
    #[error("invalid environment variable name {0:?}")]
    InvalidEnv(String),
    /// fork, the child's setup, exec or the pidfd failed (a program or argument with a NUL
    /// byte ends up here too: `exec` cannot carry it).
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The task's fds could not be registered with the runner's poll; it was killed.
    #[error("registering the task's fds: {0}")]
    Register(#[source] io::Error),
}

impl StartError {
    /// What to tell the agent.
    pub fn output(&self) -> TaskOutput {
        TaskOutput::SpawnFailed
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Stdout,
    Exit,
}

struct Task {
    child: Child,
    out: BytesMut,
    cap: usize,
    stdout_token: Option<Token>,
    exit_token: Token,
    /// stdout reached EOF (and was closed).
    eof: bool,
    /// The pidfd reported the exit; the leader is a zombie until reaped.
    exited: bool,
}

/// Runs sniff tasks; see the module docs. `K` identifies a task: a [`TaskHandle`] for one
/// agent, or e.g. `(connection, TaskHandle)` when one runner serves several agents.
///
/// Drive it with [`TaskRunner::start`] / [`TaskRunner::abort`] (or [`TaskRunner::apply`]
/// for an agent's [`Action`]s), call [`TaskRunner::process`] when its fd is readable, and
/// hand [`TaskRunner::poll_finished`] results to the agent's `task_finished`.
///
/// Dropping the runner SIGKILLs every task group it still owns; leaders that have not died
/// yet are reaped later by [`spawn::reap_dropped`]. Call [`TaskRunner::shutdown`] first to
/// reap them before returning.
pub struct TaskRunner<K = TaskHandle> {
    config: RunnerConfig,
    poll: Poll,
    events: Events,
    tasks: HashMap<K, Task>,
    tokens: HashMap<Token, (K, Source)>,
    /// Killed leaders waiting for their pidfd, by the pidfd's token.
    dying: HashMap<Token, Child>,
    finished: VecDeque<(K, TaskOutput)>,
    next_token: usize,
    /// Task cgroups and the orphan reaper (whose fd is registered as [`REAPER`]).
    contain: Containment,
}

/// The reaper's token in the runner's poll (task tokens count up from 0).
const REAPER: Token = Token(usize::MAX);

impl<K> fmt::Debug for TaskRunner<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRunner")
            .field("running", &self.tasks.len())
            .field("dying", &self.dying.len())
            .field("finished", &self.finished.len())
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Eq + Hash + fmt::Debug> TaskRunner<K> {
    pub fn new(config: RunnerConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let contain = Containment::new(config.cgroups, config.reap_orphans, false, "sniff tasks")?;
        if let Some(fd) = contain.fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), REAPER, Interest::READABLE)?;
        }
        Ok(TaskRunner {
            config,
            poll,
            events: Events::with_capacity(256),
            tasks: HashMap::new(),
            tokens: HashMap::new(),
            dying: HashMap::new(),
            finished: VecDeque::new(),
            next_token: 0,
            contain,
        })
    }

    /// The cgroup subtree tasks run in, if they run in cgroups.
    pub fn cgroup_tree(&self) -> Option<&Path> {
        self.contain.cgroups.as_deref().map(CgroupTree::path)
    }

    /// Tasks started and not yet finished or aborted.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Whether `key` is running.
    pub fn is_running(&self, key: K) -> bool {
        self.tasks.contains_key(&key)
    }

    /// Killed processes whose death has not been seen yet.
    pub fn dying(&self) -> usize {
        self.dying.len()
    }

    /// The process-group id of a running task (its leader's pid), for logs and tests.
    pub fn pgid(&self, key: K) -> Option<u32> {
        self.tasks.get(&key).map(|t| t.child.pgid())
    }

    /// Starts `spec` as task `key`. On error nothing runs and nothing is queued: report
    /// [`StartError::output`] to the agent yourself (the agent's answer then goes out in the
    /// same turn, as the C plugin's did for a failed fork). A task already running under
    /// `key` is aborted first.
    pub fn start(&mut self, key: K, spec: &ProcessSpec) -> Result<(), StartError> {
        spawn::reap_dropped();
        self.abort(key);
        let mut cmd = Command::new(OsStr::from_bytes(&spec.program));
        cmd.args(spec.args.iter().map(|a| OsStr::from_bytes(a)));
        for (name, value) in &spec.env {
            if name.is_empty() || name.contains(&b'=') || name.contains(&0) {
                return Err(StartError::InvalidEnv(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            cmd.env(OsStr::from_bytes(name), OsStr::from_bytes(value));
        }
        cmd.stdin(Stdio::null());
        cmd.stdout(Stdio::piped());
        cmd.stderr(match self.config.stderr {
            TaskStderr::Null => Stdio::null(),
            TaskStderr::Inherit => Stdio::inherit(),
        });
        let leaf = spawn::new_leaf(self.contain.cgroups.as_ref());
        let procs = leaf.as_ref().map(Leaf::procs_fd);
        // SAFETY: the hook runs in the forked child before exec and makes only raw,
        // async-signal-safe system calls (write, setsid, rt_sigaction, rt_sigprocmask,
        // close_range or fcntl) on no shared state: no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = procs {
                    cgroup::enter(fd)?;
                }
                rustix::process::setsid()?;
                spawn::reset_signals();
                spawn::mark_fds_cloexec()
            });
        }
        let child = spawn::launch(cmd, None, false, leaf)?;
        // From here on, dropping `child` kills its group.
        let stdout_token = self.token();
        let exit_token = self.token();
        let registry = self.poll.registry();
        let stdout_fd = child.stdout_fd().map(|fd| fd.as_raw_fd());
        let registered = stdout_fd
            .ok_or_else(|| io::Error::other("the child has no stdout pipe"))
            .and_then(|fd| registry.register(&mut SourceFd(&fd), stdout_token, Interest::READABLE))
            .and_then(|()| {
                let fd = child.pidfd().as_raw_fd();
                registry
                    .register(&mut SourceFd(&fd), exit_token, Interest::READABLE)
                    .inspect_err(|_| {
                        if let Some(fd) = stdout_fd {
                            let _ = registry.deregister(&mut SourceFd(&fd));
                        }
                    })
            });
        if let Err(e) = registered {
            return Err(StartError::Register(e));
        }
        debug!(?key, pid = child.pid(), program = %crate::escape::Quoted(&spec.program), "sniff task started");
        self.tokens.insert(stdout_token, (key, Source::Stdout));
        self.tokens.insert(exit_token, (key, Source::Exit));
        self.tasks.insert(
            key,
            Task {
                child,
                out: BytesMut::new(),
                cap: spec.output_cap,
                stdout_token: Some(stdout_token),
                exit_token,
                eof: false,
                exited: false,
            },
        );
        Ok(())
    }

    /// Kills task `key`'s whole process group with SIGKILL, discards its output and reaps
    /// it (at once if it is already dead, else as soon as its pidfd reports the death, in
    /// [`TaskRunner::process`]). Reports nothing. Returns whether such a task was running.
    pub fn abort(&mut self, key: K) -> bool {
        let Some(task) = self.tasks.remove(&key) else {
            return false;
        };
        debug!(?key, pid = task.child.pid(), "sniff task aborted");
        self.kill(task);
        true
    }

    /// Aborts every task whose key matches, e.g. all tasks of a connection that closed.
    pub fn abort_where(&mut self, mut matches: impl FnMut(&K) -> bool) -> usize {
        let keys: Vec<K> = self.tasks.keys().copied().filter(|k| matches(k)).collect();
        for &k in &keys {
            self.abort(k);
        }
        keys.len()
    }

    /// The next task that ended, with how it ended. Aborted tasks never appear here.
    pub fn poll_finished(&mut self) -> Option<(K, TaskOutput)> {
        self.finished.pop_front()
    }

    /// Handles whatever became ready: reads output, notes exits, reaps killed processes.
    /// Never blocks. Call it when the runner's fd is readable; calling it more often is
    /// harmless (one `epoll_wait` with a zero timeout).
    pub fn process(&mut self) -> io::Result<()> {
        self.poll_once(Some(Duration::ZERO))?;
        // The nested epoll fd only signals new readiness; drain everything now.
        while !self.events.is_empty() {
            self.poll_once(Some(Duration::ZERO))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None` = until something happens) for a task to make progress,
    /// then handles it like [`TaskRunner::process`]. For programs that have nothing but
    /// tasks to wait for.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.poll_once(timeout)?;
        self.process()
    }

    /// Aborts every task and waits up to `timeout` for the killed processes to be reaped.
    /// Returns how many are still not reaped (they are reaped later by
    /// [`spawn::reap_dropped`] once the runner is dropped).
    pub fn shutdown(&mut self, timeout: Duration) -> usize {
        self.abort_where(|_| true);
        let deadline = Instant::now() + timeout;
        while !self.dying.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(e) = self.wait(Some(left)) {
                warn!(error = %e, "waiting for killed sniff tasks");
                break;
            }
        }
        if self.contain.cgroups.is_some() || self.contain.reaper.is_some() {
            self.contain
                .settle(deadline.saturating_duration_since(Instant::now()));
        }
        self.dying.len()
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1);
        t
    }

    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.events.clear(),
            Err(e) => return Err(e),
        }
        let ready: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
        for token in ready {
            self.on_ready(token);
        }
        Ok(())
    }

    fn on_ready(&mut self, token: Token) {
        if token == REAPER {
            self.contain.on_child_exit();
            return;
        }
        if let Some(mut child) = self.dying.remove(&token) {
            match child.try_wait() {
                Ok(None) => {
                    self.dying.insert(token, child);
                }
                Ok(Some(_)) | Err(_) => {
                    let fd = child.pidfd().as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
            }
            return;
        }
        let Some(&(key, source)) = self.tokens.get(&token) else {
            return;
        };
        match source {
            Source::Stdout => self.read_stdout(key),
            Source::Exit => {
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.exited = true;
                    // Not reaped here: see the module docs.
                    let fd = task.child.pidfd().as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    self.tokens.remove(&task.exit_token);
                }
            }
        }
        self.complete_if_done(key);
    }

    /// Reads until the pipe would block (mio is edge-triggered), EOF, an error or the cap.
    fn read_stdout(&mut self, key: K) {
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        let ending = loop {
            let Some(fd) = task.child.stdout_fd() else {
                break None;
            };
            let room = task.cap.saturating_add(1).saturating_sub(task.out.len());
            match fdio::read_into(fd, &mut task.out, room.min(CHUNK)) {
                Ok(ReadOutcome::Data(_)) if task.out.len() > task.cap => {
                    break Some(TaskOutput::OutputTooLarge);
                }
                Ok(ReadOutcome::Data(_)) => {}
                Ok(ReadOutcome::WouldBlock) => break None,
                Ok(ReadOutcome::Eof) => {
                    task.eof = true;
                    if let Some(fd) = task.child.stdout_fd() {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&fd.as_raw_fd()));
                    }
                    task.child.close_stdout();
                    if let Some(t) = task.stdout_token.take() {
                        self.tokens.remove(&t);
                    }
                    break None;
                }
                Err(e) => {
                    warn!(?key, error = %e, "reading a sniff task's output");
                    break Some(TaskOutput::ReadFailed);
                }
            }
        };
        if let Some(output) = ending {
            if let Some(task) = self.tasks.remove(&key) {
                debug!(?key, ?output, "sniff task stopped");
                self.kill(task);
            }
            self.finished.push_back((key, output));
        }
    }

    fn complete_if_done(&mut self, key: K) {
        if !self.tasks.get(&key).is_some_and(|t| t.eof && t.exited) {
            return;
        }
        let Some(mut task) = self.tasks.remove(&key) else {
            return;
        };
        // Stragglers that closed their stdout would outlive the task; the leader is still
        // unreaped, so the group id is still ours (module docs).
        if let Err(e) = task.child.kill_all() {
            debug!(?key, error = %e, "clearing a finished task's group");
        }
        match task.child.try_wait() {
            Ok(Some(_)) => {}
            // Cannot happen once the pidfd reported the exit; park it rather than leak it.
            Ok(None) => self.park(task.child, task.exit_token),
            Err(e) => warn!(?key, error = %e, "reaping a sniff task"),
        }
        debug!(?key, bytes = task.out.len(), "sniff task finished");
        self.finished
            .push_back((key, TaskOutput::Complete(task.out.freeze())));
    }

    /// SIGKILLs a task's group, drops its stdout and reaps it now or once it has died.
    fn kill(&mut self, mut task: Task) {
        if let Some(t) = task.stdout_token.take() {
            self.tokens.remove(&t);
            if let Some(fd) = task.child.stdout_fd() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
        }
        task.child.close_stdout();
        self.tokens.remove(&task.exit_token);
        if let Err(e) = task.child.kill_all() {
            warn!(pid = task.child.pid(), error = %e, "killing a sniff task");
        }
        match task.child.try_wait() {
            Ok(Some(_)) => {
                if !task.exited {
                    let fd = task.child.pidfd().as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
            }
            Ok(None) => {
                if task.exited {
                    // Its pidfd is no longer registered; it will not report again.
                    self.park(task.child, task.exit_token);
                } else {
                    self.dying.insert(task.exit_token, task.child);
                }
            }
            Err(e) => warn!(pid = task.child.pid(), error = %e, "reaping a killed sniff task"),
        }
    }

    /// Registers a killed child's pidfd again so its death is seen.
    fn park(&mut self, child: Child, token: Token) {
        let fd = child.pidfd().as_raw_fd();
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            Ok(()) => {
                self.dying.insert(token, child);
            }
            // Dropping it hands it to `spawn::reap_dropped`.
            Err(e) => debug!(error = %e, "parking a killed sniff task"),
        }
    }
}

impl TaskRunner<TaskHandle> {
    /// Carries out one of the agent's actions. A `Start` that fails is returned as the output
    /// to report with `Agent::task_finished` right away.
    pub fn apply(&mut self, action: Action) -> Option<(TaskHandle, TaskOutput)> {
        match action {
            Action::Start { handle, spec } => match self.start(handle, &spec) {
                Ok(()) => None,
                Err(e) => {
                    warn!(?handle, error = %e, "starting a sniff task");
                    Some((handle, e.output()))
                }
            },
            Action::Abort { handle } => {
                self.abort(handle);
                None
            }
        }
    }
}

/// The runner's epoll fd: readable when a task needs [`TaskRunner::process`]. Register it
/// (level- or edge-triggered) in the server's own loop.
impl<K> AsRawFd for TaskRunner<K> {
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}
