//! `backend-vllm-rs`: a LocalAI backend worker on candle.
//!
//! Started by LocalAI as `run.sh --addr HOST:PORT`; serves the `backend.Backend` gRPC
//! service for one model at a time. `backend-vllm-rs render` prints the exact prompt a
//! request would produce; `backend-vllm-rs export-hf` writes a GGUF out as a Hugging Face
//! folder.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use backend_common::cli::{RenderArgs, WorkerCli};
use backend_common::engine::EngineError;
use backend_vllm_rs::engine::{self, CandleEngine};
use backend_vllm_rs::export;

/// Weight dtypes `export-hf` can write.
#[derive(Clone, Copy, ValueEnum)]
enum ExportDType {
    Bf16,
    F16,
    F32,
}

#[derive(Subcommand)]
enum Command {
    /// Print the prompt a request renders to through the model's chat template (dry run;
    /// the model is a GGUF file or a Hugging Face folder).
    Render(RenderArgs),
    /// Write a GGUF model out as a Hugging Face folder (config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json, generation_config.json).
    ExportHf {
        /// The GGUF file.
        gguf: PathBuf,
        /// The folder to write (created if missing).
        dir: PathBuf,
        /// Dtype of the written weights.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: ExportDType,
    },
}

fn main() -> ExitCode {
    // The kernels run on this crate's pool (`cpu_pool`); candle's own pool would only spin
    // beside it, so candle's few remaining parallel ops run on the calling thread.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = WorkerCli::<Command>::parse_for(
        env!("CARGO_BIN_NAME"),
        "A LocalAI gRPC backend worker on candle (vLLM's options; GGUF files and Hugging Face folders).",
    );
    let Some(command) = cli.command else {
        return backend_common::server::run(CandleEngine::new(), &cli.serve);
    };
    backend_common::server::init_logging();
    let result = match command {
        Command::Render(args) => engine::describe(&args.model)
            .and_then(|info| args.render(&info))
            .map(|prompt| print!("{prompt}")),
        Command::ExportHf { gguf, dir, dtype } => {
            let dtype = match dtype {
                ExportDType::Bf16 => candle_core::DType::BF16,
                ExportDType::F16 => candle_core::DType::F16,
                ExportDType::F32 => candle_core::DType::F32,
            };
            export::export_hf(&gguf, &dir, dtype)
                .map(|summary| {
                    eprintln!(
                        "wrote {} tensors ({} MiB) and the tokenizer to {}",
                        summary.tensors,
                        summary.weight_bytes >> 20,
                        dir.display()
                    );
                })
                .map_err(|e| EngineError::InvalidModel {
                    path: gguf.clone(),
                    reason: e.to_string(),
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
