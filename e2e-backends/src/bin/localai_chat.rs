//! `localai-chat`: chat with a LocalAI backend worker over gRPC, streaming the reply.
//!
//! Either talks to a running worker (`--addr`) or starts one (`--spawn BINARY`), loads the
//! model, streams one answer to stdout, prints counts and speed to stderr, and stops the
//! worker it started.
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backend_common::pb::{Message, ModelOptions, PredictOptions};
use clap::Parser;
use e2e_backends::client::connect;
use e2e_backends::worker::Worker;

/// Chat with a LocalAI backend worker.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Start this worker binary on a free loopback port (and stop it afterwards).
    #[arg(long, conflicts_with = "addr")]
    spawn: Option<PathBuf>,
    /// Address of a running worker, HOST:PORT.
    #[arg(long)]
    addr: Option<String>,
    /// Model file to load (sent as ModelFile).
    #[arg(long)]
    model: PathBuf,
    /// The user's message.
    #[arg(
        long,
        default_value = "What is the capital of France? Answer in one sentence."
    )]
    prompt: String,
    /// A system message.
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// Send the prompt as raw text instead of chat messages through the model's template.
    #[arg(long)]
    raw: bool,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: i32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Context size to load the model with.
    #[arg(long, default_value_t = 2048)]
    context_size: i32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let token = std::env::var("LOCALAI_GRPC_AUTH_TOKEN").ok();
    let token = token.as_deref().filter(|t| !t.is_empty());
    let (worker, addr) = match (&args.spawn, &args.addr) {
        (Some(binary), _) => {
            let w = Worker::start(binary, &[], token, Duration::from_secs(30))
                .await
                .with_context(|| format!("starting {}", binary.display()))?;
            let addr = w.addr.clone();
            eprintln!("[worker {} listening on {addr}]", binary.display());
            (Some(w), addr)
        }
        (None, Some(addr)) => (None, addr.clone()),
        (None, None) => bail!("give --spawn BINARY or --addr HOST:PORT"),
    };
    let result = chat(&args, &addr, token).await;
    if let Some(w) = worker {
        let status = w.stop(Duration::from_secs(10)).await?;
        eprintln!("[worker stopped: {status}]");
    }
    result
}

async fn chat(args: &Args, addr: &str, token: Option<&str>) -> Result<()> {
    let mut client = connect(addr, token).await?;
    let model = std::fs::canonicalize(&args.model)
        .with_context(|| format!("model file {}", args.model.display()))?;
    let started = Instant::now();
    let loaded = client
        .load_model(ModelOptions {
            model: model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model_file: model.display().to_string(),
            context_size: args.context_size,
            ..Default::default()
        })
        .await
        .context("LoadModel")?
        .into_inner();
    if !loaded.success {
        bail!("LoadModel failed: {}", loaded.message);
    }
    eprintln!("[{} in {:.2?}]", loaded.message, started.elapsed());
    let mut request = PredictOptions {
        tokens: args.max_tokens,
        temperature: args.temperature,
        ..Default::default()
    };
    if args.raw {
        request.prompt = args.prompt.clone();
    } else {
        request.use_tokenizer_template = true;
        request.messages = vec![
            Message {
                role: "system".into(),
                content: args.system.clone(),
                ..Default::default()
            },
            Message {
                role: "user".into(),
                content: args.prompt.clone(),
                ..Default::default()
            },
        ];
    }
    eprintln!("> {}", args.prompt);
    let mut stream = client.predict_stream(request).await?.into_inner();
    let mut out = std::io::stdout().lock();
    let (mut tokens, mut prompt_tokens, mut gen_ms) = (0, 0, 0.0);
    while let Some(reply) = stream.message().await? {
        out.write_all(&reply.message)?;
        out.flush()?;
        if reply.tokens > 0 {
            (tokens, prompt_tokens, gen_ms) = (
                reply.tokens,
                reply.prompt_tokens,
                reply.timing_token_generation,
            );
        }
    }
    writeln!(out)?;
    let speed = if gen_ms > 0.0 {
        tokens as f64 * 1000.0 / gen_ms
    } else {
        0.0
    };
    eprintln!("[{prompt_tokens} prompt tokens, {tokens} generated, {speed:.1} tok/s]");
    Ok(())
}
