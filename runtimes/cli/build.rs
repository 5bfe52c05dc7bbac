//! Links the `tuppence` binary as a position-dependent executable on Linux with glibc.
//!
//! A PIE makes the dynamic loader apply ~14 800 relative relocations at every start, and
//! writing them dirties (page-faults) ~70 pages of the binary: about 0.2 ms of a 3.6 ms
//! `tuppence run -- true`, whose goal is 3× a bare `sh -c true` (benches/e2e, `--only
//! startup`). Without PIE the linker resolves them once. The price: the binary's own code
//! and data are not at a random address (libraries, heap and stacks still are).
//! Static linking would save more, but glibc's NSS (users from LDAP, sssd) needs the
//! shared C library. Only the binary is affected: the library, tests and the Python
//! module stay position independent.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=tuppence=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
