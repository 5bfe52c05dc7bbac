//! The sniff agent machine (see [`Agent`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::cert::Cert;
use super::frame::{FramedInput, feed};
use super::nat::Nat;
use super::nop::Nop;
use super::ping::Ping;
use super::{
    Answer, DEFAULT_MAX_FRAME, DEFAULT_OUTPUT_CAP, DecodeError, FrameDecoder, LEN_PREFIX,
    MESSAGE_HEADER_LEN, Outcome, ProcessSpec, Request, Status, TaskFinish, TaskId, TaskOutput,
    TaskPlan, TaskType, code,
};
use crate::{Machine, Transmit};

/// How many dropped-message errors are kept for [`Agent::poll_error`]; more are only counted.
const MAX_ERRORS: usize = 16;

/// What a queued answer costs beyond its bytes on the wire: its slot in the queue. Counted
/// in [`Agent::queued_bytes`], so that a flood of requests with tiny answers (`N`, 9 bytes
/// framed) is bounded by the memory it takes, not by its wire size: counting only the 9
/// bytes, one connection that never read its answers held 173 MB.
pub const ANSWER_OVERHEAD: usize = std::mem::size_of::<Answer>();

/// Default of [`AgentConfig::max_queued_bytes`].
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 20;

/// Agent limits. Every field has a bounded default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Largest request accepted and answer sent. Default [`DEFAULT_MAX_FRAME`].
    pub max_frame: usize,
    /// Most tasks running at once. Default 256.
    pub max_tasks: usize,
    /// Most stdout bytes a task may produce; lowers each [`ProcessSpec::output_cap`].
    /// Default [`DEFAULT_OUTPUT_CAP`] (16 MiB).
    pub output_cap: usize,
    /// Timeout of tasks whose type sets none; `None` = run until done or aborted (the C
    /// plugin's behaviour). Default 10 minutes, so a server that forgets a task does not
    /// leave a process behind forever.
    pub default_timeout: Option<Duration>,
    /// Undrained answers (framed bytes plus [`ANSWER_OVERHEAD`] each) above which input is
    /// refused: a peer that does not read its answers stops being read. Answers to tasks
    /// that finish are queued whatever this says (a single one may be `max_frame` long).
    /// Default [`DEFAULT_MAX_QUEUED_BYTES`] (1 MiB).
    pub max_queued_bytes: usize,
    /// Undrained actions above which input is refused. Default 1024.
    pub max_queued_actions: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_tasks: 256,
            output_cap: DEFAULT_OUTPUT_CAP,
            default_timeout: Some(Duration::from_secs(600)),
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_queued_actions: 1024,
        }
    }
}

/// One run of a task: the id it was requested under plus a run number unique within this
/// agent, so a runtime's report about an old run can never hit a newer task with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskHandle {
    pub id: TaskId,
    pub run: u64,
}

/// Something the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start this process; report its end with [`Agent::task_finished`] and `handle`.
    Start {
        handle: TaskHandle,
        spec: ProcessSpec,
    },
    /// Kill the process group of this run and reap it; report nothing. Its output is
    /// discarded (the agent has already answered `A`).
    Abort { handle: TaskHandle },
}

/// Why [`Agent::handle_request`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The message is not a request (too short). Nothing changed.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// The output queues are full: drain `poll_action`/`poll_transmit` and retry.
    #[error("the agent's output queues are full; drain them first")]
    QueueFull,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Frames or messages received, well-formed or not.
    pub requests: u64,
    /// Messages dropped because they were not requests.
    pub malformed: u64,
    /// `U` answers.
    pub unknown_type: u64,
    /// Tasks aborted by a new request under their id (`A` answers).
    pub aborted: u64,
    /// Tasks aborted at their timeout.
    pub timed_out: u64,
    /// Requests refused by the concurrent-task limit.
    pub refused: u64,
    /// Completions ignored because their task was no longer running.
    pub ignored_completions: u64,
    /// Answers queued, of any status.
    pub answers: u64,
}

struct Running {
    run: u64,
    deadline: Option<Instant>,
    output_cap: usize,
    finish: Box<dyn TaskFinish>,
}

/// The agent machine: runs on the system under test, owns the task table and the order of
/// answers. It never starts or kills anything itself; it tells the runtime what to do.
///
/// # Driving it (quinn-proto style)
///
/// * **Inputs** (`handle_*`): [`Machine::handle_bytes`] for a framed byte stream (any
///   chunking; returns the bytes consumed), or [`Agent::handle_request`] for one unframed
///   message from a transport that frames itself; [`Agent::task_finished`] when a process's
///   stdout reached EOF (or it failed); [`Machine::handle_timeout`] when [`Machine::poll_timeout`]
///   has passed. Time is always passed in and clamped never to go backwards.
/// * **Outputs** (`poll_*`), drained after every input: [`Agent::poll_action`] first
///   ([`Action::Start`]/[`Action::Abort`], in order), then [`Machine::poll_transmit`] (framed
///   answers appended to the caller's buffer) or [`Agent::poll_answer`] (unframed), then
///   [`Machine::poll_timeout`]; [`Agent::poll_error`] reports malformed messages that were
///   dropped.
///
/// # Rules (ARCHITECTURE.md, "Sniff protocol"; the C plugin's order)
///
/// * Unknown type → `U`; a task running under that id keeps running.
/// * Known type under a running id → the old task is aborted ([`Action::Abort`], its output
///   discarded, `A` queued), then the new one starts or is answered at once (NOP, bad
///   parameters). So `A` always precedes the new task's answer.
/// * Each task gets exactly one answer, or `A` if it was aborted, never both. A completion
///   for a task that is no longer in the table (aborted, timed out, unknown handle) is
///   ignored: handles carry a run number, so a late completion of an aborted task can never
///   be mistaken for the new task under the same id.
/// * A request shorter than 5 bytes is dropped and reported (the C plugin crashed on it); an
///   over-long frame is a fatal, sticky error: the stream cannot be resynchronised.
///
/// # Limits
///
/// * At most [`AgentConfig::max_tasks`] processes at once; a request over the limit is
///   answered at once with its type's [`TaskOutput::TooManyTasks`] failure (built-ins: `F Q`).
///   `F` rather than `U`, because `U` tells a server the type is unsupported, which it is not.
/// * Output is capped ([`AgentConfig::output_cap`], the runtime stops the task: `F L`), tasks
///   time out ([`AgentConfig::default_timeout`], the agent aborts them: `F T`), and an answer
///   too large for one frame becomes the type's `OutputTooLarge` failure.
/// * Queues are bounded: while undrained answers exceed [`AgentConfig::max_queued_bytes`] or
///   undrained actions exceed [`AgentConfig::max_queued_actions`], `handle_bytes` consumes
///   nothing more and `handle_request` returns [`RequestError::QueueFull`] (backpressure on
///   the peer). Completions and timeouts are always accepted; their number is bounded by
///   `max_tasks`, so the queues overshoot by at most that many answers.
pub struct Agent {
    config: AgentConfig,
    /// Task types indexed by type byte (256 slots, so lookup is a bounds-checked `get`).
    types: Vec<Option<Box<dyn TaskType>>>,
    tasks: HashMap<TaskId, Running>,
    /// Deadline → task, ordered so `poll_timeout` is the first key.
    deadlines: BTreeMap<(Instant, u64), TaskId>,
    next_run: u64,
    actions: VecDeque<Action>,
    answers: VecDeque<Answer>,
    /// Framed size of `answers`.
    queued_bytes: usize,
    decoder: FrameDecoder,
    errors: VecDeque<DecodeError>,
    now: Option<Instant>,
    /// The requester closed its side ([`Machine::handle_eof`]): no more requests.
    input_closed: bool,
    stats: AgentStats,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("running", &self.tasks.len())
            .field("queued_actions", &self.actions.len())
            .field("queued_answers", &self.answers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent with the built-in task types `N`, `P`, `C` and `n` in their default
    /// configuration (replace one with [`Agent::register`]).
    pub fn new(config: AgentConfig) -> Agent {
        let mut agent = Agent::without_task_types(config);
        agent.register(Box::new(Nop));
        agent.register(Box::new(Ping::default()));
        agent.register(Box::new(Cert::default()));
        agent.register(Box::new(Nat::default()));
        agent
    }

    /// An agent that knows no task type: every request is answered `U` until types are
    /// registered.
    pub fn without_task_types(config: AgentConfig) -> Agent {
        let max_frame = config
            .max_frame
            .clamp(MESSAGE_HEADER_LEN.saturating_add(1), u32::MAX as usize);
        Agent {
            config: AgentConfig {
                max_frame,
                ..config
            },
            types: std::iter::repeat_with(|| None).take(256).collect(),
            tasks: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_run: 0,
            actions: VecDeque::new(),
            answers: VecDeque::new(),
            queued_bytes: 0,
            decoder: FrameDecoder::new(max_frame),
            errors: VecDeque::new(),
            now: None,
            input_closed: false,
            stats: AgentStats::default(),
        }
    }

    /// Adds a task type, replacing (and returning) the one with the same type byte.
    pub fn register(&mut self, task_type: Box<dyn TaskType>) -> Option<Box<dyn TaskType>> {
        let slot = self.types.get_mut(usize::from(task_type.type_byte()))?;
        slot.replace(task_type)
    }

    // ---- getters ----

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn stats(&self) -> AgentStats {
        self.stats
    }

    /// Tasks currently running (started and neither finished nor aborted).
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Whether a task runs under `id`, and which run it is.
    pub fn running_task(&self, id: TaskId) -> Option<TaskHandle> {
        self.tasks.get(&id).map(|t| TaskHandle { id, run: t.run })
    }

    /// Whether the agent takes more requests now (its output queues are under their bounds
    /// and the requester has not closed its side).
    pub fn wants_input(&self) -> bool {
        !self.input_closed
            && self.queued_bytes < self.config.max_queued_bytes
            && self.actions.len() < self.config.max_queued_actions
    }

    /// What the answers waiting for [`Machine::poll_transmit`] take: their framed bytes plus
    /// [`ANSWER_OVERHEAD`] each (0 when none wait).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    // ---- inputs ----

    /// Handles one unframed request (for transports that frame messages themselves).
    pub fn handle_request(&mut self, now: Instant, message: Bytes) -> Result<(), RequestError> {
        if !self.wants_input() {
            return Err(RequestError::QueueFull);
        }
        self.stats.requests = self.stats.requests.saturating_add(1);
        let req = Request::decode(message).inspect_err(|_| {
            self.stats.malformed = self.stats.malformed.saturating_add(1);
        })?;
        self.request(now, req);
        Ok(())
    }

    /// Reports the end of a run started by [`Action::Start`]: stdout reached EOF (`Complete`)
    /// or the run failed. Returns `false` (and does nothing) when the run is no longer in the
    /// table — it was aborted or timed out, or the handle is unknown — so a late completion
    /// never produces a second answer. A `Complete` output longer than the run's cap is
    /// treated as [`TaskOutput::OutputTooLarge`].
    pub fn task_finished(&mut self, now: Instant, handle: TaskHandle, output: TaskOutput) -> bool {
        self.advance(now);
        if self
            .tasks
            .get(&handle.id)
            .is_none_or(|t| t.run != handle.run)
        {
            self.stats.ignored_completions = self.stats.ignored_completions.saturating_add(1);
            return false;
        }
        let Some(task) = self.tasks.remove(&handle.id) else {
            return false;
        };
        self.unschedule(&task);
        let output = match output {
            TaskOutput::Complete(out) if out.len() > task.output_cap => TaskOutput::OutputTooLarge,
            other => other,
        };
        let outcome = task.finish.finish(output);
        self.answer(handle.id, outcome, Some(&*task.finish));
        true
    }

    // ---- outputs ----

    /// The next thing the runtime must do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next answer, unframed.
    pub fn poll_answer(&mut self) -> Option<Answer> {
        let a = self.answers.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(queue_cost(&a));
        Some(a)
    }

    /// The next malformed message that was dropped (at most 16 are kept; all are counted in
    /// [`AgentStats::malformed`]).
    pub fn poll_error(&mut self) -> Option<DecodeError> {
        self.errors.pop_front()
    }

    // ---- internals ----

    fn advance(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |last| last.max(now));
        self.now = Some(now);
        now
    }

    fn dropped(&mut self, e: DecodeError) {
        self.stats.malformed = self.stats.malformed.saturating_add(1);
        if self.errors.len() < MAX_ERRORS {
            self.errors.push_back(e);
        }
    }

    fn request(&mut self, now: Instant, req: Request) {
        let now = self.advance(now);
        let id = req.id;
        let plan = match self
            .types
            .get(usize::from(req.task_type))
            .and_then(Option::as_ref)
        {
            Some(t) => t.start(req.params),
            None => {
                // Before the abort step on purpose: the running task keeps running.
                self.stats.unknown_type = self.stats.unknown_type.saturating_add(1);
                self.push_answer(Answer::unknown(id));
                return;
            }
        };
        if let Some(old) = self.tasks.remove(&id) {
            self.unschedule(&old);
            self.stats.aborted = self.stats.aborted.saturating_add(1);
            self.stop(TaskHandle { id, run: old.run });
            self.push_answer(Answer::aborted(id));
        }
        match plan {
            TaskPlan::Answer(outcome) => self.answer(id, outcome, None),
            TaskPlan::Run { mut spec, finish } => {
                if self.tasks.len() >= self.config.max_tasks {
                    self.stats.refused = self.stats.refused.saturating_add(1);
                    let outcome = finish.finish(TaskOutput::TooManyTasks);
                    self.answer(id, outcome, Some(&*finish));
                    return;
                }
                spec.output_cap = spec.output_cap.min(self.config.output_cap);
                spec.timeout = spec.timeout.or(self.config.default_timeout);
                let run = self.next_run;
                self.next_run = self.next_run.wrapping_add(1);
                // A timeout too far away to represent is no timeout.
                let deadline = spec.timeout.and_then(|t| now.checked_add(t));
                if let Some(d) = deadline {
                    self.deadlines.insert((d, run), id);
                }
                self.tasks.insert(
                    id,
                    Running {
                        run,
                        deadline,
                        output_cap: spec.output_cap,
                        finish,
                    },
                );
                self.actions.push_back(Action::Start {
                    handle: TaskHandle { id, run },
                    spec,
                });
            }
        }
    }

    /// Makes the runtime stop a run: if its `Start` is still queued it is simply withdrawn
    /// (nothing was started), otherwise an `Abort` is queued.
    fn stop(&mut self, handle: TaskHandle) {
        let queued = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Start { handle: h, .. } if *h == handle));
        match queued {
            Some(pos) => {
                self.actions.remove(pos);
            }
            None => self.actions.push_back(Action::Abort { handle }),
        }
    }

    fn unschedule(&mut self, task: &Running) {
        if let Some(d) = task.deadline {
            self.deadlines.remove(&(d, task.run));
        }
    }

    /// Queues the `O`/`F` answer of a task, replacing one too large for a frame by the type's
    /// `OutputTooLarge` failure (or a bare `F L` if even that does not fit).
    fn answer(&mut self, id: TaskId, outcome: Outcome, finish: Option<&dyn TaskFinish>) {
        let max = self.config.max_frame.saturating_sub(MESSAGE_HEADER_LEN);
        let outcome = if outcome.data.len() <= max {
            outcome
        } else {
            finish
                .map(|f| f.finish(TaskOutput::OutputTooLarge))
                .filter(|o| o.data.len() <= max)
                .unwrap_or_else(|| Outcome::failure_code(code::OUTPUT_TOO_LARGE))
        };
        self.push_answer(Answer {
            id,
            status: if outcome.ok {
                Status::Ok
            } else {
                Status::Failed
            },
            data: outcome.data,
        });
    }

    fn push_answer(&mut self, a: Answer) {
        self.stats.answers = self.stats.answers.saturating_add(1);
        self.queued_bytes = self.queued_bytes.saturating_add(queue_cost(&a));
        self.answers.push_back(a);
    }
}

/// The I/O surface (see [`Machine`]). `Error` is the fatal, sticky framing error: the
/// request stream went out of step.
impl Machine for Agent {
    type Error = DecodeError;

    /// Feeds bytes of the framed request stream (any chunking). Returns how many bytes were
    /// consumed: fewer than `data.len()` only under backpressure (drain the outputs, then
    /// offer the rest again). Internal buffering never exceeds one frame.
    ///
    /// Malformed messages inside intact framing are dropped and reported by
    /// [`Agent::poll_error`]; the stream goes on. `Err` is only the fatal, sticky
    /// [`DecodeError::FrameTooLong`].
    fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, DecodeError> {
        self.advance(now);
        feed(self, data)
    }

    /// The requester closed its side: no more requests are taken. Running tasks go on and
    /// their answers are still queued (the runtime decides how long it waits for them).
    fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        self.input_closed = true;
    }

    /// Aborts every task whose deadline is at or before `now` and answers it with its type's
    /// [`TaskOutput::TimedOut`] failure. Idempotent; early calls do nothing.
    fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        while let Some((&(deadline, run), &id)) = self.deadlines.first_key_value() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, run));
            if self.tasks.get(&id).is_none_or(|t| t.run != run) {
                continue;
            }
            let Some(task) = self.tasks.remove(&id) else {
                continue;
            };
            self.stats.timed_out = self.stats.timed_out.saturating_add(1);
            self.stop(TaskHandle { id, run });
            let outcome = task.finish.finish(TaskOutput::TimedOut);
            self.answer(id, outcome, Some(&*task.finish));
        }
    }

    /// Appends every queued answer, framed, to `out`. Returns the bytes appended.
    fn poll_transmit(&mut self, _now: Instant, out: &mut BytesMut) -> usize {
        let before = out.len();
        out.reserve(
            self.queued_bytes
                .saturating_sub(self.answers.len().saturating_mul(ANSWER_OVERHEAD)),
        );
        while let Some(a) = self.poll_answer() {
            // `answer` made sure every queued answer fits in `max_frame` ≤ u32::MAX.
            out.put_u32(u32::try_from(a.encoded_len()).unwrap_or(u32::MAX));
            a.encode(out);
        }
        out.len().saturating_sub(before)
    }

    /// Every queued answer, framed, as one segment.
    fn poll_transmit_segments(&mut self, now: Instant, out: &mut Transmit) -> usize {
        let mut buf = BytesMut::new();
        let n = self.poll_transmit(now, &mut buf);
        out.push(buf.freeze());
        n
    }

    /// When [`Machine::handle_timeout`] should next be called.
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|(&(d, _), _)| d)
    }

    fn error(&self) -> Option<&DecodeError> {
        self.decoder.error()
    }

    fn accepts_input(&self) -> bool {
        self.wants_input() && self.decoder.error().is_none()
    }

    /// What the queued answers take (see [`Agent::queued_bytes`]).
    fn transmit_buffered(&self) -> usize {
        self.queued_bytes
    }
}

/// What a queued answer counts against [`AgentConfig::max_queued_bytes`].
fn queue_cost(a: &Answer) -> usize {
    a.encoded_len()
        .saturating_add(LEN_PREFIX)
        .saturating_add(ANSWER_OVERHEAD)
}

impl FramedInput for Agent {
    fn decoder(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    fn wants_input(&self) -> bool {
        Agent::wants_input(self)
    }

    fn on_message(&mut self, message: Bytes) {
        self.stats.requests = self.stats.requests.saturating_add(1);
        // `handle_bytes` has set the clock before feeding.
        let now = self.now;
        match Request::decode(message) {
            Ok(req) => {
                if let Some(now) = now {
                    self.request(now, req);
                }
            }
            Err(e) => self.dropped(e),
        }
    }
}
