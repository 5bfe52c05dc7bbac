//! The task-type plug-in interface: parse parameters into a plan, turn collected output into
//! an answer. The core never runs anything itself; a [`ProcessSpec`] describes what the
//! runtime must run.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// Default cap on a task's stdout (DESIGN §5): past it the runtime stops the task and
/// reports [`TaskOutput::OutputTooLarge`].
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

/// A kind of task the agent can run, keyed by its type byte. Implement it to add task types.
pub trait TaskType: Send {
    /// The request type byte this type answers to.
    fn type_byte(&self) -> u8;

    /// Parses the request parameters (everything after the type byte) into a plan. Must not
    /// panic on any input; parameters that do not parse are answered with the type's "bad
    /// input" failure through [`TaskPlan::Answer`].
    fn start(&self, params: Bytes) -> TaskPlan;
}
