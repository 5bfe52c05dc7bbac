//! Internals exposed to the fuzz crate only (built with `--cfg fuzzing`).
