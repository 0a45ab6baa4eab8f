//! `e2e-backends`: the conformance harness for LocalAI backend workers, a drop-in for
//! LocalAI's `tests/e2e-backends` (same `BACKEND_TEST_*` variables and capability names).
//!
//! One trial per capability, on `libtest-mimic`, so `--list`, name filters, `--exact`,
//! `--nocapture` (prints each check's details and the worker's logs) and the exit code work
//! like `cargo test`. Capabilities not in `BACKEND_TEST_CAPS` are reported as ignored, with
//! the reason. JUnit XML: `--format junit` prints it on stdout (the usual lines then go to
//! stderr), `BACKEND_TEST_JUNIT=FILE` writes it to a file.
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use e2e_backends::caps::{self, Capability, CheckError, Verdict};
use e2e_backends::config::Config;
use e2e_backends::context::Context;
use e2e_backends::junit::{self, Outcome, Record};
use libtest_mimic::{Arguments, Completion, Trial};

fn main() -> ExitCode {
    let (argv, junit_stdout) = take_junit_format(std::env::args().collect());
    let mut args = Arguments::from_iter(argv);
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
    // All trials share one worker and some change its state (free, loads with other
    // options), so they run one at a time, in capability order.
    args.test_threads = Some(1);
    let junit_file = std::env::var_os("BACKEND_TEST_JUNIT").filter(|p| !p.is_empty());
    let ctx = match Context::new(config, args.nocapture) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let records = Arc::new(Mutex::new(Vec::new()));
    let trials = Capability::ALL
        .iter()
        .map(|&cap| trial(cap, Arc::clone(&ctx), Arc::clone(&records)))
        .collect();
    let conclusion = if junit_stdout {
        stdout_to_stderr(|| libtest_mimic::run(&args, trials))
    } else {
        libtest_mimic::run(&args, trials)
    };
    ctx.shutdown();
    if !args.list && (junit_stdout || junit_file.is_some()) {
        let records = records.lock().unwrap_or_else(|e| e.into_inner());
        let xml = junit::to_xml("e2e-backends", &records);
        if junit_stdout {
            print!("{xml}");
        }
        if let Some(path) = junit_file
            && let Err(e) = std::fs::write(&path, &xml)
        {
            eprintln!("error: BACKEND_TEST_JUNIT {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    }
    conclusion.exit_code()
}

/// One capability's trial; its result is also recorded for JUnit.
fn trial(cap: Capability, ctx: Arc<Context>, records: Arc<Mutex<Vec<Record>>>) -> Trial {
    Trial::ignorable_test(cap.name(), move || {
        let started = Instant::now();
        let result = if ctx.config.requested(cap) {
            let limit = ctx.config.trial_timeout;
            ctx.block_on(async {
                tokio::time::timeout(limit, caps::check(cap, &ctx))
                    .await
                    .unwrap_or_else(|_| {
                        Err(CheckError::Failed(format!(
                            "no result within {limit:?} (BACKEND_TEST_TIMEOUT)"
                        )))
                    })
            })
        } else {
            Ok(Verdict::Ignored(format!(
                "not in BACKEND_TEST_CAPS ({})",
                ctx.config
                    .caps
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(",")
            )))
        };
        let (outcome, completion) = match result {
            Ok(Verdict::Passed) => (Outcome::Passed, Ok(Completion::Completed)),
            Ok(Verdict::Ignored(reason)) => (
                Outcome::Ignored(reason.clone()),
                Ok(Completion::ignored_with(reason)),
            ),
            Err(e) => {
                let message = e.to_string();
                (Outcome::Failed(message.clone()), Err(message.into()))
            }
        };
        records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Record {
                name: cap.name().to_string(),
                outcome,
                duration: started.elapsed(),
            });
        completion
    })
}

/// Removes `--format junit` / `--format=junit` (which libtest-mimic does not know) and says
/// whether it was there.
fn take_junit_format(argv: Vec<String>) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(argv.len());
    let mut junit = false;
    let mut args = argv.into_iter().peekable();
    while let Some(arg) = args.next() {
        if arg == "--format=junit" {
            junit = true;
        } else if arg == "--format" && args.peek().is_some_and(|v| v == "junit") {
            args.next();
            junit = true;
        } else {
            out.push(arg);
        }
    }
    (out, junit)
}

/// Runs `f` with file descriptor 1 pointing at stderr, so that only the JUnit document
/// printed afterwards reaches stdout.
fn stdout_to_stderr<T>(f: impl FnOnce() -> T) -> T {
    let _ = std::io::stdout().flush();
    // SAFETY: dup/dup2 on the process's own standard descriptors; the saved copy is
    // restored and closed below.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 {
        return f();
    }
    // SAFETY: as above, on the process's own standard descriptors.
    unsafe { libc::dup2(2, 1) };
    let result = f();
    let _ = std::io::stdout().flush();
    // SAFETY: as above; `saved` is the descriptor dup returned.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    result
}
