//! The task-type plug-in interface: parse parameters into a plan, turn collected output into
//! an answer. The core never runs anything itself; a [`ProcessSpec`] describes what the
//! runtime must run.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::PayloadError;

/// Default cap on a task's stdout (ARCHITECTURE.md, "Sniff protocol"): past it the runtime
/// stops the task and reports [`TaskOutput::OutputTooLarge`].
pub const DEFAULT_OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// Failure codes the agent's own limits produce, shared by every built-in task type.
///
/// None of them collides with a code of a built-in type (ping `I F P R O`, certificate
/// `I F P R B E C`, NAT `S M U`). User task types choose their own codes in
/// [`TaskFinish::finish`]; reusing these for the same meaning keeps servers simple.
pub mod code {
    /// `T`: the task ran past its timeout and was killed.
    pub const TIMEOUT: u8 = b'T';
    /// `L`: the task's output went over the output cap, or the answer made from it would not
    /// fit in one frame.
    pub const OUTPUT_TOO_LARGE: u8 = b'L';
    /// `Q`: the agent already runs its maximum number of tasks; the server may retry later.
    pub const TOO_MANY_TASKS: u8 = b'Q';
}

/// How a task ended, as the runtime (or the agent's own limits) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskOutput {
    /// stdout reached EOF; these are all the bytes read (at most the cap). The exit status is
    /// deliberately absent: like the C plugin, completion is EOF on stdout and the task type
    /// judges the output alone.
    Complete(Bytes),
    /// The process could not be started (fork/exec/pipe failure).
    SpawnFailed,
    /// Reading its stdout failed.
    ReadFailed,
    /// It ran past its timeout (reported by the agent itself, see `Agent::handle_timeout`).
    TimedOut,
    /// Its stdout went over the cap, or the answer built from it would not fit in a frame.
    OutputTooLarge,
    /// The agent refused to start it: the concurrent-task limit was reached.
    TooManyTasks,
}

impl TaskOutput {
    /// The stdout of a completed task, or the failure code of any other ending: `spawn` and
    /// `read` are the task type's own codes (the C plugin's types chose differently), the
    /// agent's limits are the shared [`code`]s. Every built-in type ends this way.
    pub(crate) fn complete_or(self, spawn: u8, read: u8) -> Result<Bytes, u8> {
        match self {
            TaskOutput::Complete(out) => Ok(out),
            TaskOutput::SpawnFailed => Err(spawn),
            TaskOutput::ReadFailed => Err(read),
            TaskOutput::TimedOut => Err(code::TIMEOUT),
            TaskOutput::OutputTooLarge => Err(code::OUTPUT_TOO_LARGE),
            TaskOutput::TooManyTasks => Err(code::TOO_MANY_TASKS),
        }
    }
}

/// The status and data of an `O`/`F` answer, before the id is put in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `true` → `O`, `false` → `F`.
    pub ok: bool,
    pub data: Bytes,
}

impl Outcome {
    /// `O` with `data`.
    pub fn success(data: Bytes) -> Outcome {
        Outcome { ok: true, data }
    }

    /// `F` with `data`.
    pub fn failure(data: Bytes) -> Outcome {
        Outcome { ok: false, data }
    }

    /// `F` with a single code byte, the form every built-in failure takes.
    pub fn failure_code(code: u8) -> Outcome {
        Outcome::failure(Bytes::copy_from_slice(&[code]))
    }

    /// `O` with the data, or `F` with the code: how a built-in type's finish ends.
    pub(crate) fn from_result(result: Result<Bytes, u8>) -> Outcome {
        match result {
            Ok(data) => Outcome::success(data),
            Err(code) => Outcome::failure_code(code),
        }
    }
}

/// A process for the runtime to run. Everything is bytes because parameters come from the
/// wire (host names need not be UTF-8); a Unix runtime passes them on as `OsStr`s.
///
/// The runtime's contract: stdin from `/dev/null`, stdout collected, stderr discarded, the
/// process in a new process group with signal mask and dispositions reset; the task is
/// complete at EOF on stdout (not at exit, as in the C plugin). On `Action::Abort` it kills the
/// whole group, reaps it and reports nothing. If stdout exceeds `output_cap` it kills the
/// group and reports [`TaskOutput::OutputTooLarge`].
#[derive(Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Path or name (looked up in `PATH`) of the program.
    pub program: Bytes,
    /// Arguments after `argv[0]` (which is `program`).
    pub args: Vec<Bytes>,
    /// Variables added to (or replacing in) the agent's environment.
    pub env: Vec<(Bytes, Bytes)>,
    /// Time the task may run; `None` = the agent's default. The agent enforces it itself
    /// (`poll_timeout`/`handle_timeout`), so the runtime may ignore it.
    pub timeout: Option<Duration>,
    /// Most stdout bytes collected. The agent lowers it to its own configured cap.
    pub output_cap: usize,
}

impl ProcessSpec {
    /// `program args…` with no environment additions, the default timeout and cap.
    pub fn new(program: impl Into<Bytes>, args: Vec<Bytes>) -> ProcessSpec {
        ProcessSpec {
            program: program.into(),
            args,
            env: Vec::new(),
            timeout: None,
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }
}

/// How a built-in type runs its script: `shell -c script argv0 tool args…` under the type's
/// timeout and output cap. Everything from the wire goes in as separate arguments after the
/// script, never into its text, so the shell parses none of it.
pub(crate) struct ShellScript<'a> {
    pub(crate) shell: &'a Bytes,
    pub(crate) script: &'static str,
    /// `$0` of the script, naming it in `ps` and in the shell's own messages.
    pub(crate) argv0: &'static str,
    /// The command the script drives (`ping`, `openssl`, `curl`), split into words by it.
    pub(crate) tool: &'a Bytes,
    pub(crate) timeout: Option<Duration>,
    pub(crate) output_cap: usize,
}

impl ShellScript<'_> {
    /// The process that runs the script with `args` after the tool.
    pub(crate) fn spec(self, args: impl IntoIterator<Item = Bytes>) -> ProcessSpec {
        let args = args.into_iter();
        let mut all = Vec::with_capacity(args.size_hint().0.saturating_add(4));
        all.push(Bytes::from_static(b"-c"));
        all.push(Bytes::from_static(self.script.as_bytes()));
        all.push(Bytes::from_static(self.argv0.as_bytes()));
        all.push(self.tool.clone());
        all.extend(args);
        ProcessSpec {
            timeout: self.timeout,
            output_cap: self.output_cap,
            ..ProcessSpec::new(self.shell.clone(), all)
        }
    }
}

/// Why a host name cannot be a script argument: an argument ends at its first NUL, so the
/// script would look up another host than the one asked for (the C plugin silently cut it
/// there). Ping and certificate targets are refused for it, when decoded and when encoded.
pub(crate) fn check_host(host: &[u8]) -> Result<(), &'static str> {
    if host.contains(&0) {
        return Err("host contains a NUL byte");
    }
    Ok(())
}

impl fmt::Debug for ProcessSpec {
    /// Scripts make the derived form unreadable; show arguments shortened.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn short(b: &Bytes) -> String {
            let s = String::from_utf8_lossy(b);
            match s.char_indices().nth(40) {
                Some((cut, _)) => format!("{:?}…", s.get(..cut).unwrap_or_default()),
                None => format!("{s:?}"),
            }
        }
        f.debug_struct("ProcessSpec")
            .field("program", &short(&self.program))
            .field("args", &self.args.iter().map(short).collect::<Vec<_>>())
            .field("env", &self.env.len())
            .field("timeout", &self.timeout)
            .field("output_cap", &self.output_cap)
            .finish()
    }
}

/// The per-task half of a task type: what it remembers from the parameters to judge the
/// output later (ping needs each host's count, certificates need each host's flags).
pub trait TaskFinish: Send + fmt::Debug {
    /// Turns how the task ended into its `O`/`F` answer. Called at most once per task by the
    /// agent, except that an answer too large for a frame is replaced by a second call with
    /// [`TaskOutput::OutputTooLarge`].
    fn finish(&self, output: TaskOutput) -> Outcome;
}

/// What a request asks the runtime to do.
#[derive(Debug)]
pub enum TaskPlan {
    /// Run a process; `finish` turns its output into the answer.
    Run {
        spec: ProcessSpec,
        finish: Box<dyn TaskFinish>,
    },
    /// Answer at once without running anything (NOP, parameters that do not parse).
    Answer(Outcome),
}

impl TaskPlan {
    /// Runs the process `spec` makes for parameters that parsed, keeping them to judge the
    /// output; parameters that did not are answered at once with the `bad_params` code.
    pub(crate) fn run_or_refuse<R: TaskFinish + 'static>(
        params: Result<R, PayloadError>,
        bad_params: u8,
        spec: impl FnOnce(&R) -> ProcessSpec,
    ) -> TaskPlan {
        match params {
            Ok(req) => TaskPlan::Run {
                spec: spec(&req),
                finish: Box::new(req),
            },
            Err(_) => TaskPlan::Answer(Outcome::failure_code(bad_params)),
        }
    }
}

/// A kind of task the agent can run, keyed by its type byte. Implement it to add task types.
pub trait TaskType: Send {
    /// The request type byte this type answers to.
    fn type_byte(&self) -> u8;

    /// Parses the request parameters (everything after the type byte) into a plan. Must not
    /// panic on any input; parameters that do not parse are answered with the type's "bad
    /// input" failure through [`TaskPlan::Answer`].
    fn start(&self, params: Bytes) -> TaskPlan;
}
