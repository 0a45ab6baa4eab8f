//! How long llama.cpp's OpenMP threads spin at a barrier before they sleep.
//!
//! libgomp's default (300,000 spins) makes decoding collapse when other processes want the
//! same cores: a thread waiting for a partner that the kernel took off its core spins through
//! its whole time slice, at every one of the hundreds of barriers of a token. Sleeping at once
//! (`OMP_WAIT_POLICY=passive`) costs two thirds of the quiet speed instead. libgomp reads its
//! settings before `main` runs, so the worker starts itself again with [`SPIN_COUNT`] when the
//! environment chooses none (the images' `run.sh` sets the same value). Figures: `BENCHMARKS.md`, bench `contention` of backend-vllm-rs.

use std::ffi::OsString;

/// Spins before a waiting OpenMP thread sleeps.
pub const SPIN_COUNT: &str = "10000";

/// Variables that, when set, mean the operator chose the wait policy.
const CHOSEN: &[&str] = &["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"];

/// Replaces this process with itself started with `GOMP_SPINCOUNT` set, unless the
/// environment already sets a wait policy or the process was started through a dynamic loader
/// (the images' `run.sh` does that, and sets the variable itself); returns only then, or when
/// the new image could not be started (the error says why; the worker then runs with
/// libgomp's default).
pub fn exec_with_spin_count() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    if CHOSEN.iter().any(|name| std::env::var_os(name).is_some()) {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut argv = std::env::args_os();
    let started_as = argv.next().unwrap_or_default();
    // Under `ld.so --library-path ... BINARY`, the executable is the loader, not us.
    if exe.file_name() != std::path::Path::new(&started_as).file_name() {
        return Ok(());
    }
    let args: Vec<OsString> = argv.collect();
    Err(std::process::Command::new(exe)
        .args(args)
        .env("GOMP_SPINCOUNT", SPIN_COUNT)
        .exec())
}
