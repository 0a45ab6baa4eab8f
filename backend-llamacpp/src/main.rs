//! `backend-llamacpp`: a LocalAI backend worker on llama.cpp.
//!
//! Started by LocalAI as `run.sh --addr HOST:PORT`; serves the `backend.Backend` gRPC
//! service for one GGUF model at a time. `backend-llamacpp render` prints the exact prompt a
//! request would produce, without loading weights.
use std::process::ExitCode;

use clap::Subcommand;

use backend_common::cli::{RenderArgs, WorkerCli};
use backend_common::engine::EngineError;

mod engine;
mod ffi_guard;
mod sampler;
mod scheduler;
mod settings;
mod spin;

#[derive(Subcommand)]
enum Command {
    /// Print the prompt a request renders to through the model's chat template (dry run).
    Render(RenderArgs),
}

fn render(args: &RenderArgs) -> Result<String, EngineError> {
    let (_backend, llama) = engine::load_vocab_only(&args.model)?;
    args.render(&engine::model_info(&llama, llama.n_ctx_train()))
}

fn main() -> ExitCode {
    if let Err(e) = spin::exec_with_spin_count() {
        eprintln!(
            "warning: could not restart with GOMP_SPINCOUNT={} ({e}); decoding slows down badly when other processes compete for the cores",
            spin::SPIN_COUNT
        );
    }
    let cli = WorkerCli::<Command>::parse_for(
        env!("CARGO_BIN_NAME"),
        "A LocalAI gRPC backend worker on llama.cpp.",
    );
    match cli.command {
        Some(Command::Render(args)) => {
            backend_common::server::init_logging();
            match render(&args) {
                Ok(prompt) => {
                    print!("{prompt}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let engine = match engine::LlamaEngine::new() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            backend_common::server::run(engine, &cli.serve)
        }
    }
}
