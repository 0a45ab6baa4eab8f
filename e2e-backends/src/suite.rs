//! The trial runner of the harness, shared by the `e2e-backends` binary and the workers'
//! contract tests: one libtest-mimic trial per capability, all on one [`Context`] (one
//! worker), each result also recorded for JUnit.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libtest_mimic::{Arguments, Completion, Trial};

use crate::caps::{self, Capability, CheckError, Verdict};
use crate::config::Config;
use crate::context::Context;
use crate::junit::{self, Outcome, Record};

/// Where the JUnit document of a run goes.
#[derive(Debug, Clone, Default)]
pub struct JunitOutput {
    /// `--format junit`: on stdout, once the trials are done (their usual lines then go to
    /// stderr).
    pub stdout: bool,
    /// A file it is written to.
    pub file: Option<PathBuf>,
}

/// libtest's arguments from a command line, with `--format junit` / `--format=junit`
/// (which libtest-mimic does not know) taken out; the flag says whether it was there.
pub fn arguments(argv: impl IntoIterator<Item = String>) -> (Arguments, bool) {
    let mut rest = Vec::new();
    let mut junit = false;
    let mut argv = argv.into_iter().peekable();
    while let Some(arg) = argv.next() {
        if arg == "--format=junit" {
            junit = true;
        } else if arg == "--format" && argv.peek().is_some_and(|v| v == "junit") {
            argv.next();
            junit = true;
        } else {
            rest.push(arg);
        }
    }
    (Arguments::from_iter(rest), junit)
}

/// Runs one trial per capability (those not in `config.caps` are reported as ignored) as
/// `args` says, then writes the JUnit document where `junit` says. The exit code is
/// libtest's, or a failure when the runtime cannot start or the JUnit file cannot be
/// written.
pub fn run(config: Config, mut args: Arguments, junit: JunitOutput) -> ExitCode {
    // All trials share one worker and some change its state (free, loads with other
    // options), so they run one at a time, in capability order.
    args.test_threads = Some(1);
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
    let conclusion = if junit.stdout {
        stdout_to_stderr(|| libtest_mimic::run(&args, trials))
    } else {
        libtest_mimic::run(&args, trials)
    };
    ctx.shutdown();
    if !args.list && (junit.stdout || junit.file.is_some()) {
        let records = records.lock().unwrap_or_else(|e| e.into_inner());
        let xml = junit::to_xml("e2e-backends", &records);
        if junit.stdout {
            print!("{xml}");
        }
        if let Some(path) = &junit.file
            && let Err(e) = std::fs::write(path, &xml)
        {
            eprintln!("error: JUnit file {}: {e}", path.display());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn junit_format_is_taken_out() {
        let (args, junit) = arguments(argv(&["e2e", "--format", "junit", "stream"]));
        assert!(junit);
        assert_eq!(args.filter.as_deref(), Some("stream"));
        let (_, junit) = arguments(argv(&["e2e", "--format=junit"]));
        assert!(junit);
        let (args, junit) = arguments(argv(&["e2e", "--exact", "health"]));
        assert!(!junit && args.exact);
    }
}
