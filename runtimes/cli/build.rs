//! Links the `tuppence` binary's unwinder statically on linux-gnu.
//!
//! Rust's std asks for `-lgcc_s`, so every start of the binary loads `libgcc_s.so.1`: one
//! more library to map and bind, and its constructor probes the CPU with `cpuid`, which
//! traps to the hypervisor in a VM. That was about 5% of the CPU of a whole
//! `tuppence run -- true`. The same unwinder is in GCC's static `libgcc_eh.a`: a linker
//! script named `libgcc_s.so` in a directory searched before the system's makes `-lgcc_s`
//! mean that archive. Only the binary gets it (not the library, tests or other crates),
//! and only when the archive is there: anything else keeps the shared unwinder.
//!
//! Where glibc's static library is installed the binary is linked statically anyway
//! (`.cargo/rustc-static-bin`) and this script's `-L` is never searched for `-lgcc_s`: it
//! matters for a dynamic build (`TUPPENCE_DYNAMIC=1`, or no `libc.a`).
//!
//! `TUPPENCE_SHARED_UNWINDER=1` keeps the shared one (for an A/B measurement).

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TUPPENCE_SHARED_UNWINDER");
    println!("cargo:rerun-if-env-changed=CC");
    // Read by `.cargo/rustc-static-bin`, which cargo does not fingerprint: a change of
    // either reruns this script, and so rebuilds the binary.
    println!("cargo:rerun-if-env-changed=TUPPENCE_DYNAMIC");
    println!("cargo:rerun-if-changed=../../.cargo/rustc-static-bin");
    if let Some(archive) = static_unwinder() {
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let dir = out.join("static-unwinder");
        fs::create_dir_all(&dir).expect("create OUT_DIR/static-unwinder");
        let script = format!(
            "/* -lgcc_s for tuppence: the static unwinder */\nINPUT(\"{}\")\n",
            archive.display()
        );
        fs::write(dir.join("libgcc_s.so"), script).expect("write the linker script");
        // The linker searches every -L directory, in order, for every -l, before its own.
        println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
    }
}

/// The path of `libgcc_eh.a` when the binary should link it, else `None`.
fn static_unwinder() -> Option<PathBuf> {
    let var = |k: &str| env::var(k).unwrap_or_default();
    if env::var_os("TUPPENCE_SHARED_UNWINDER").is_some_and(|v| v != "0") {
        return None;
    }
    // A static (crt-static) build links libgcc_eh already; a cross build cannot ask the
    // host's compiler for the target's archive.
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static")
        || var("TARGET") != var("HOST")
    {
        return None;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Without the archive, the compiler prints the bare name back.
    let usable = out.status.success()
        && path.is_absolute()
        && path.is_file()
        && !path.to_string_lossy().contains(['"', '\n']);
    if usable {
        Some(path)
    } else {
        println!("cargo:warning=libgcc_eh.a not found; tuppence keeps the shared unwinder");
        None
    }
}
