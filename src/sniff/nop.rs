//! `N`: the no-op task. It ignores its parameters and answers `O` with no data at once, so a
//! NOP under a running id is how a server cancels that task (`A`, then `O`).

use bytes::Bytes;

use super::{Outcome, TaskPlan, TaskType};

/// The NOP type byte.
pub const TYPE: u8 = b'N';

/// The NOP task type.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nop;

impl TaskType for Nop {
    fn type_byte(&self) -> u8 {
        TYPE
    }

    fn start(&self, _params: Bytes) -> TaskPlan {
        TaskPlan::Answer(Outcome::success(Bytes::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::test_support::answered;

    #[test]
    fn nop_answers_ok_empty_whatever_the_params() {
        for params in [&b""[..], b"\x00\x01junk"] {
            let plan = Nop.start(Bytes::copy_from_slice(params));
            assert_eq!(answered(plan), Outcome::success(Bytes::new()));
        }
    }
}
