//! What a constraint costs: decode tokens/s with and without one, single stream and 8
//! streams, for the candle worker (llguidance: a JSON schema, and the same shape in GBNF)
//! and the llama.cpp worker (its GBNF grammar sampler), both real binaries over gRPC on
//! loopback, same GGUF (Qwen2.5-Coder-0.5B Q4_K_M), threads and greedy requests, in one run.
//!
//! Every request generates exactly `BENCH_TOKENS` (default 96) tokens: free ones ignore EOS,
//! constrained ones write a JSON string too long to end sooner. Figures are aggregate tokens
//! over the wall time from the first request to the last token, best of `BENCH_ROUNDS`.
//!
//! Run: `cargo bench --profile dev --workspace --bench constrained` (env `BENCH_THREADS`,
//! `BENCH_ROUNDS`, `BENCH_TOKENS`). backend-llamacpp must be built in the same target
//! directory.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use backend_common::pb::PredictOptions;
use e2e_backends::client::Client;
use e2e_backends::testing::{
    QWEN, bench_env, bench_load_options, bench_settings, bench_worker, model, sibling_binary,
};

/// A JSON object whose one string is longer than any run of the benchmark.
const SCHEMA: &str = r#"{"type": "object", "properties": {"story": {"type": "string", "minLength": 1500}}, "required": ["story"], "additionalProperties": false}"#;

/// The same shape in GBNF, as LocalAI's core writes strings.
const GBNF: &str = r#"root ::= "{\"story\": \"" char{1500,} "\"}"
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
"#;

/// Ways a request is constrained in this benchmark.
#[derive(Clone, Copy)]
enum Constraint {
    Free,
    JsonSchema,
    Gbnf,
}

impl Constraint {
    fn name(self) -> &'static str {
        match self {
            Constraint::Free => "free",
            Constraint::JsonSchema => "JSON schema",
            Constraint::Gbnf => "GBNF",
        }
    }

    fn request(self, i: usize, tokens: i32) -> PredictOptions {
        let grammar = match self {
            Constraint::Free => String::new(),
            Constraint::JsonSchema => SCHEMA.into(),
            Constraint::Gbnf => GBNF.into(),
        };
        PredictOptions {
            prompt: format!("Story number {i}, as JSON with one field, \"story\":\n"),
            tokens,
            temperature: 0.0,
            ignore_eos: true,
            grammar,
            ..Default::default()
        }
    }
}

/// The tokens one stream produced.
async fn stream(mut client: Client, req: PredictOptions) -> Result<u32> {
    let mut s = client.predict_stream(req).await?.into_inner();
    let mut tokens = 0;
    while let Some(reply) = s.message().await? {
        tokens = tokens.max(reply.tokens.max(0) as u32);
    }
    Ok(tokens)
}

/// Aggregate tokens/s of `n` streams under `constraint`, started together.
async fn aggregate(client: &Client, n: usize, constraint: Constraint, tokens: i32) -> Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(stream(client.clone(), constraint.request(i, tokens))))
        .collect();
    let mut total = 0;
    for t in tasks {
        let produced = t.await??;
        ensure!(
            produced == tokens as u32,
            "a {} stream ended after {produced} of {tokens} tokens",
            constraint.name()
        );
        total += produced;
    }
    Ok(f64::from(total) / started.elapsed().as_secs_f64())
}

/// Best aggregate tokens/s of each (constraint, streams) pair on one worker.
async fn measure(
    binary: &Path,
    extra: &[&str],
    constraints: &[Constraint],
    rounds: usize,
    tokens: i32,
) -> Result<Vec<(usize, Vec<f64>)>> {
    let (threads, _) = bench_settings(rounds);
    let options = bench_load_options(&model(QWEN), threads, extra);
    let (worker, _) = bench_worker(binary, options).await?;
    let client = worker.client(None).await?;
    // Warm up: first touch of weights and KV pages, the grammar compiler's token trie.
    for &c in constraints {
        aggregate(&client, 1, c, 8).await?;
    }
    let mut rows = Vec::new();
    for n in [1, 8] {
        let mut row = Vec::new();
        for &c in constraints {
            let mut best = 0f64;
            for _ in 0..rounds {
                best = best.max(aggregate(&client, n, c, tokens).await?);
            }
            row.push(best);
        }
        rows.push((n, row));
    }
    worker.stop(Duration::from_secs(5)).await?;
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<()> {
    let (threads, rounds) = bench_settings(2);
    let tokens: i32 = bench_env("BENCH_TOKENS", 96);
    let candle = Path::new(env!("CARGO_BIN_EXE_backend-vllm-rs"));
    let llama = sibling_binary(candle, "backend-llamacpp").context("the llama.cpp worker")?;
    println!(
        "constrained decoding, {QWEN}, {threads} threads, {tokens} tokens per stream, best of {rounds}"
    );
    let all = [Constraint::Free, Constraint::JsonSchema, Constraint::Gbnf];
    let candle_rows = measure(candle, &[], &all, rounds, tokens).await?;
    let llama_only = [Constraint::Free, Constraint::Gbnf];
    let llama_rows = measure(&llama, &["parallel:8"], &llama_only, rounds, tokens).await?;
    println!("| worker | streams | free tok/s | JSON schema tok/s (ratio) | GBNF tok/s (ratio) |");
    println!("|---|---|---|---|---|");
    for (n, row) in &candle_rows {
        println!(
            "| backend-vllm-rs | {n} | {:.1} | {:.1} ({:.2}x) | {:.1} ({:.2}x) |",
            row[0],
            row[1],
            row[1] / row[0],
            row[2],
            row[2] / row[0]
        );
    }
    for (n, row) in &llama_rows {
        println!(
            "| backend-llamacpp | {n} | {:.1} | n/a | {:.1} ({:.2}x) |",
            row[0],
            row[1],
            row[1] / row[0]
        );
    }
    Ok(())
}
