//! The QEMU guest test (`tests/vm/run.sh`) from cargo: boots a guest whose initramfs holds
//! this test's `tuppence` binary and drives it over virtio-serial, a serial port and
//! in-guest AF_VSOCK.
//!
//! It boots a VM (about a minute under TCG), so it is ignored by default:
//!
//! ```text
//! cargo test -p tuppence-cli --test vm -- --ignored --nocapture
//! ```
//!
//! CI runs the same script through `.ci/vm-test` with a static build instead. Here the
//! binary is cargo's own (dynamically linked): the script copies the libraries `ldd` names
//! into the initramfs and says so. When QEMU, a guest kernel or a static busybox is missing
//! the script prints `SKIPPED: reason` and exits 77; because this test only runs when asked
//! for by name, that is reported as a failure carrying the reason, never as a pass.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "boots a QEMU guest (about a minute under TCG): cargo test -p tuppence-cli --test vm -- --ignored"]
fn qemu_guest_virtio_serial_vsock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/vm/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("TUPPENCE_BIN", env!("CARGO_BIN_EXE_tuppence"))
        .output()
        .expect("run tests/vm/run.sh with bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    match out.status.code() {
        Some(0) => {}
        Some(77) => {
            let reason = stdout
                .lines()
                .find(|l| l.starts_with("SKIPPED:"))
                .unwrap_or("SKIPPED: (no reason printed)");
            panic!("{reason} (this test was asked for explicitly, so a skip is not a pass)");
        }
        other => {
            let closing = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("vm: "))
                .unwrap_or("no closing line");
            panic!("tests/vm/run.sh exited with {other:?}: {closing}");
        }
    }
}
