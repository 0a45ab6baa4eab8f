//! `backend-vllm-rs`: a LocalAI backend worker on candle.
//!
//! Started by LocalAI as `run.sh --addr HOST:PORT`; serves the `backend.Backend` gRPC
//! service for one model at a time.
use std::process::ExitCode;

use clap::Parser;

use backend_common::cli::ServeArgs;
use backend_vllm_rs::engine::CandleEngine;

/// A LocalAI gRPC backend worker on candle (vLLM's options, GGUF models).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    backend_common::server::run(CandleEngine::new(), &cli.serve)
}
