//! The `tuppence` binary; everything is in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    tuppence_cli::main()
}
