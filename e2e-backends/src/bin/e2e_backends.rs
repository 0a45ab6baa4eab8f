//! `e2e-backends`: the conformance harness for LocalAI backend workers, a drop-in for
//! LocalAI's `tests/e2e-backends` (same `BACKEND_TEST_*` variables and capability names).
//!
//! One trial per capability, on `libtest-mimic`, so `--list`, name filters, `--exact`,
//! `--nocapture` (prints each check's details and the worker's logs) and the exit code work
//! like `cargo test`. Capabilities not in `BACKEND_TEST_CAPS` are reported as ignored, with
//! the reason. JUnit XML: `--format junit` prints it on stdout (the usual lines then go to
//! stderr), `BACKEND_TEST_JUNIT=FILE` writes it to a file.
use std::path::PathBuf;
use std::process::ExitCode;

use e2e_backends::config::Config;
use e2e_backends::suite::{self, JunitOutput};

fn main() -> ExitCode {
    let (args, junit_stdout) = suite::arguments(std::env::args());
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if config.target.is_none() && !args.list {
        eprintln!(
            "error: no worker to test: set BACKEND_IMAGE (a local backend image), BACKEND_BINARY \
             (a worker binary, started with --addr) or BACKEND_ADDR (HOST:PORT of a running worker)"
        );
        return ExitCode::from(2);
    }
    let junit = JunitOutput {
        stdout: junit_stdout,
        file: std::env::var_os("BACKEND_TEST_JUNIT")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    };
    suite::run(config, args, junit)
}
