//! The `tuppence` binary; everything is in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    tuppence_cli::main()
}

/// `pow` for the progress bar's rate estimate (indicatif), the only function of the C
/// math library this binary calls: defined here, from the `libm` crate, the binary does
/// not need `libm.so.6`, which the dynamic loader otherwise opened, mapped and relocated
/// at every start (about 60 µs, a twentieth of `tuppence --version`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
// SAFETY: a plain C-ABI function with the meaning and signature of C's `pow`; nothing
// else in the binary defines this symbol (libm is not linked).
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
