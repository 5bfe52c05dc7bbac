//! The `tuppence` binary; everything is in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"))]
    static_nss::built_in_sources_only();
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

/// Name services in a statically linked binary (`.cargo/rustc-static-bin`, and the
/// guest build in the README).
///
/// A static glibc has the `files` and `dns` sources built in; for any other source that
/// `/etc/nsswitch.conf` names (`systemd`, `sss`, `ldap`, …) it `dlopen`s the system's
/// `libnss_*.so`, which brings a second, shared C library into the process. On Debian
/// (`passwd: files systemd`) that crashed the agent with SIGSEGV on the first user that
/// `/etc/passwd` does not have (`run -u no-such-user`). So a static binary asks only the
/// built-in sources: an unknown user is an error, as it is on a system without those
/// services. Users that only a directory service knows need the dynamic build
/// (`TUPPENCE_DYNAMIC=1 cargo build`).
#[cfg(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"))]
mod static_nss {
    use std::ffi::{CStr, c_char, c_int};

    unsafe extern "C" {
        /// glibc: replaces the sources `/etc/nsswitch.conf` gives for one database.
        fn __nss_configure_lookup(db: *const c_char, service_line: *const c_char) -> c_int;
    }

    const DATABASES: [(&CStr, &CStr); 4] = [
        (c"passwd", c"files"),
        (c"group", c"files"),
        (c"initgroups", c"files"),
        (c"hosts", c"files dns"),
    ];

    pub fn built_in_sources_only() {
        for (db, sources) in DATABASES {
            // SAFETY: both are NUL-terminated static strings; called on the main thread
            // before any other thread exists or any lookup is made. A failure (an unknown
            // database name) leaves that database as nsswitch.conf says.
            unsafe {
                __nss_configure_lookup(db.as_ptr(), sources.as_ptr());
            }
        }
    }
}
