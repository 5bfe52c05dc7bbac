//! Durable inject onto a real filesystem (`--only disk`): the agent's inject (temporary file,
//! writeback started as it goes, `fdatasync`, rename) against the same bytes copied from a
//! raw socket into a file with one final `fdatasync`, interleaved in the same run.
//!
//! The target directory is `--disk-dir DIR`, else `TUPPENCE_E2E_DISK_DIR`, else `/var/tmp`.
//! tmpfs is refused: there is nothing to sync there, so the figure would measure nothing.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::plan::Plan;
use crate::procs::{Helper, Scratch};
use crate::stats::{Row, Target, spread};
use crate::{make_file, mbps, progress, raw, same_content};

/// Where the disk figure writes when nothing else is said.
const DEFAULT_DIR: &str = "/var/tmp";
pub const DIR_ENV: &str = "TUPPENCE_E2E_DISK_DIR";

/// The directory to write to: the command line's, the environment's, or `/var/tmp`.
pub fn dir(plan: &Plan) -> PathBuf {
    plan.disk_dir
        .clone()
        .or_else(|| std::env::var_os(DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// The filesystem's name (from `statfs`'s magic number) and whether it is tmpfs.
fn fs_type(dir: &Path) -> Result<(String, bool), String> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs fills the local struct from a NUL-terminated path.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    let magic = st.f_type as u64;
    let name = match magic {
        0xEF53 => "ext2/3/4".to_owned(),
        0x5846_5342 => "xfs".to_owned(),
        0x9123_683E => "btrfs".to_owned(),
        0x0102_1994 => "tmpfs".to_owned(),
        0x794C_7630 => "overlayfs".to_owned(),
        0x2FC1_2FC1 => "zfs".to_owned(),
        0xF2F5_2010 => "f2fs".to_owned(),
        m => format!("magic {m:#x}"),
    };
    Ok((name, magic == 0x0102_1994))
}

pub fn disk(plan: &Plan, scratch: &Scratch) -> Vec<Row> {
    let size = plan.size;
    let mib = size >> 20;
    let base = dir(plan);
    let (fs, tmpfs) = match fs_type(&base) {
        Ok(t) => t,
        Err(e) => {
            println!("\n== disk: {e}; skipped");
            return Vec::new();
        }
    };
    println!(
        "\n== durable inject onto {} ({fs}): {mib} MiB, {} reps (methods interleaved)",
        base.display(),
        plan.reps
    );
    if tmpfs {
        println!(
            "  disk: {} is tmpfs, which has nothing to sync; skipped (give --disk-dir or {DIR_ENV} on a disk)",
            base.display()
        );
        return Vec::new();
    }
    let work = base.join(format!("tuppence-e2e-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("disk scratch dir");
    let src = scratch.join("disk-source.bin");
    make_file(&src, size);
    let remote = work.join("remote.bin");
    let agent = Helper::start("agent", &scratch.0);
    let raw = Helper::start("raw", &scratch.0);
    let mut adapters = plan.disk_adapters(&agent.sock);
    for a in adapters.iter_mut() {
        a.inject(&src, &remote);
        assert!(
            same_content(&src, &remote),
            "{}: disk inject differs",
            a.name()
        );
    }
    let _ = std::fs::remove_file(&remote);

    // res[method]: 0 = the raw copy with one fdatasync, 1.. = adapters; MB/s per rep.
    let methods = 1 + adapters.len();
    let mut res = vec![Vec::new(); methods];
    for rep in 0..plan.reps {
        for k in 0..methods {
            let m = (k + rep) % methods;
            let start = Instant::now();
            let n = if m == 0 {
                let mut source = File::open(&src).expect("source");
                raw::inject_synced(&raw.sock, &mut source, &remote).expect("raw synced inject")
            } else {
                adapters[m - 1].inject(&src, &remote)
            };
            let took = start.elapsed();
            assert_eq!(n, size, "disk method {m}: wrong size");
            res[m].push(mbps(n, took));
            let _ = std::fs::remove_file(&remote);
        }
        progress(format!("rep {} done", rep + 1));
    }
    let best = |r: &[f64]| r.iter().copied().fold(f64::NAN, f64::max);
    let mut rows = Vec::new();
    for (i, a) in adapters.iter().enumerate() {
        let ratios: Vec<f64> = res[i + 1].iter().zip(&res[0]).map(|(a, b)| a / b).collect();
        rows.push(Row {
            figure: format!("durable inject {mib} MiB onto {fs}, {}", a.name()),
            value: format!("{} MB/s", spread(&res[i + 1], 0)),
            reference: format!(
                "raw socket copy into a file, one final fdatasync {} MB/s",
                spread(&res[0], 0)
            ),
            judged: crate::stats::median(&ratios),
            judged_text: spread(&ratios, 2),
            guarded: Some(best(&ratios)),
            target: Target::AtLeast(0.8),
            unit: "",
        });
    }
    drop(adapters);
    drop(agent);
    drop(raw);
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_dir_all(&work);
    rows
}
