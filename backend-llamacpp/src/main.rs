//! `backend-llamacpp`: a LocalAI backend worker on llama.cpp.
//!
//! Started by LocalAI as `run.sh --addr HOST:PORT`; serves the `backend.Backend` gRPC
//! service for one GGUF model at a time.
use std::process::ExitCode;

use clap::Parser;

use backend_common::cli::ServeArgs;

mod engine;
mod sampler;
mod scheduler;
mod settings;

/// A LocalAI gRPC backend worker on llama.cpp.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let engine = match engine::LlamaEngine::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    backend_common::server::run(engine, &cli.serve)
}
