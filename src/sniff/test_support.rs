//! Helpers shared by the built-in task types' unit tests, which all check the same plans and
//! the same endings.

use super::{Outcome, ProcessSpec, TaskFinish, TaskOutput, TaskPlan};

/// The outcome of a plan that answers at once; a plan that runs a process fails the test.
#[track_caller]
pub(crate) fn answered(plan: TaskPlan) -> Outcome {
    match plan {
        TaskPlan::Answer(o) => o,
        other => panic!("expected an answer at once, got {other:?}"),
    }
}

/// The process of a plan that runs one; a plan that answers at once fails the test.
#[track_caller]
pub(crate) fn spec_of(plan: TaskPlan) -> ProcessSpec {
    match plan {
        TaskPlan::Run { spec, .. } => spec,
        other => panic!("expected a process to run, got {other:?}"),
    }
}

/// Checks the endings that are not a completed output: the type's own `spawn` and `read`
/// codes, and the agent's limits, which every built-in type answers with the shared codes.
#[track_caller]
pub(crate) fn assert_endings(f: &dyn TaskFinish, spawn: u8, read: u8) {
    for (o, c) in [
        (TaskOutput::SpawnFailed, spawn),
        (TaskOutput::ReadFailed, read),
        (TaskOutput::TimedOut, b'T'),
        (TaskOutput::OutputTooLarge, b'L'),
        (TaskOutput::TooManyTasks, b'Q'),
    ] {
        assert_eq!(f.finish(o.clone()), Outcome::failure_code(c), "{o:?}");
    }
}
