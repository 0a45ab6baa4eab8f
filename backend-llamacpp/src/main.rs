//! `backend-llamacpp`: a LocalAI backend worker on llama.cpp.
//!
//! Started by LocalAI as `run.sh --addr HOST:PORT`; serves the `backend.Backend` gRPC
//! service for one GGUF model at a time. `backend-llamacpp render` prints the exact prompt a
//! request would produce, without loading weights.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use backend_common::chat::{ChatSetup, PromptRequest};
use backend_common::cli::ServeArgs;
use backend_common::engine::EngineError;
use backend_common::options::Options;

mod engine;
mod sampler;
mod scheduler;
mod settings;

/// A LocalAI gRPC backend worker on llama.cpp.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the prompt a request renders to through the model's chat template (dry run).
    Render {
        /// The GGUF model (only its vocabulary and metadata are read).
        #[arg(long)]
        model: PathBuf,
        /// A JSON file with `Messages`, `Tools`, `ToolChoice`, `Metadata` (or `Prompt`).
        #[arg(long)]
        request: PathBuf,
        /// `key:value` model options, as in LoadModel (e.g. `tool_parser:hermes`).
        #[arg(long = "option")]
        options: Vec<String>,
    },
}

fn render(
    model: &std::path::Path,
    request: &std::path::Path,
    options: &[String],
) -> Result<String, EngineError> {
    let json = std::fs::read_to_string(request).map_err(|e| {
        EngineError::InvalidArgument(format!("cannot read {}: {e}", request.display()))
    })?;
    let req = PromptRequest::from_json(&json)?.into_predict_options();
    let (_backend, llama) = engine::load_vocab_only(model)?;
    let info = engine::model_info(&llama, llama.n_ctx_train());
    let file_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let setup = ChatSetup::new(&info, &file_name, &Options::parse(options))?;
    Ok(setup.prepare(&req)?.prompt.text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Render {
            model,
            request,
            options,
        }) => {
            backend_common::server::init_logging();
            match render(&model, &request, &options) {
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
