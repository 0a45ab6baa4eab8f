//! Serving many users at once: the candle worker's engine core against the llama.cpp worker,
//! both real binaries over gRPC on loopback, same GGUF (Qwen2.5-Coder-0.5B Q4_K_M), threads
//! and greedy requests, measured in one run:
//!
//! 1. aggregate decode tokens/s at 1, 2, 4, 8 and 16 concurrent streams of 64 new tokens
//!    (all tokens of all streams over the wall time from the first request to the last
//!    token; short distinct prompts), the llama worker with `parallel:16`;
//! 2. time to first token (p50, p95) of short requests arriving while 8 streams decode;
//! 3. the prefix cache: time to first token of a request repeating a ~1,000-token prefix
//!    against the same request cold (candle worker; target <= 20%), and the llama.cpp
//!    worker's prompt cache by default and with `cache_reuse:0`;
//! 4. memory: peak resident set of the candle worker serving 16 streams of 512 positions
//!    (256 prompt, 256 new) with a KV budget of exactly that, against weights + KV budget +
//!    100 MB.
//!
//! Run: `cargo bench --workspace --bench concurrency` (env `BENCH_THREADS`, `BENCH_ROUNDS`,
//! `BENCH_STREAMS=1,2,4,8,16`). backend-llamacpp must be built in the same target directory.
//! `BENCH_BASELINE=PATH` also measures another build of the candle worker (an older commit)
//! at the same stream counts, in the same run.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions};
use e2e_backends::client::Client;
use e2e_backends::testing::{
    bench_env, bench_load_options, bench_prompt, bench_settings, bench_worker, peak_rss,
    sibling_binary,
};
use e2e_backends::worker::Worker;

const NEW_TOKENS: i32 = 64;

fn request(prompt: String, tokens: i32) -> PredictOptions {
    PredictOptions {
        prompt,
        tokens,
        temperature: 0.0,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Seconds until the first chunk, and the tokens the stream reported at its end.
async fn stream(mut client: Client, req: PredictOptions) -> Result<(f64, u32)> {
    let started = Instant::now();
    let mut s = client.predict_stream(req).await?.into_inner();
    let mut first = None;
    let mut tokens = 0;
    while let Some(reply) = s.message().await? {
        first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        tokens = tokens.max(reply.tokens.max(0) as u32);
    }
    Ok((first.context("the stream ended without a chunk")?, tokens))
}

/// Aggregate tokens/s of `n` streams started together.
async fn aggregate(client: &Client, n: usize) -> Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let prompt = format!("Story number {i}: once upon a time,");
            tokio::spawn(stream(client.clone(), request(prompt, NEW_TOKENS)))
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??.1;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Time to first token of `probes` short requests, one after the other, while 8 streams of
/// 256 tokens decode.
async fn ttft_under_load(client: &Client, probes: usize) -> Result<Vec<f64>> {
    let load: Vec<_> = (0..8)
        .map(|i| {
            let prompt = format!("Background story {i}: the old lighthouse keeper");
            tokio::spawn(stream(client.clone(), request(prompt, 256)))
        })
        .collect();
    // Let every background stream reach its decode phase.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ttft = Vec::new();
    for i in 0..probes {
        let prompt = format!("Question {i}: what is the capital of France?");
        ttft.push(stream(client.clone(), request(prompt, 1)).await?.0);
    }
    for t in load {
        t.await??;
    }
    ttft.sort_by(f64::total_cmp);
    Ok(ttft)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Figures {
    aggregate: Vec<(usize, f64)>,
    ttft: Vec<f64>,
}

async fn measure(
    binary: &Path,
    options: ModelOptions,
    streams: &[usize],
    rounds: usize,
) -> Result<Figures> {
    let (worker, _) = bench_worker(binary, options).await?;
    let client = worker.client(None).await?;
    // Warm up (first-touch of the KV cache and weights).
    aggregate(&client, 1).await?;
    let mut figures = Figures {
        aggregate: Vec::new(),
        ttft: Vec::new(),
    };
    for &n in streams {
        let mut best = 0f64;
        for _ in 0..rounds {
            best = best.max(aggregate(&client, n).await?);
        }
        figures.aggregate.push((n, best));
    }
    figures.ttft = ttft_under_load(&client, 6).await?;
    worker.stop(Duration::from_secs(5)).await?;
    Ok(figures)
}

/// Time to first token of a request repeating a ~1,000-token prefix, cold and warm.
async fn prefix_cache(binary: &Path, mut options: ModelOptions) -> Result<(f64, f64, Worker)> {
    options.context_size = 2048;
    let (worker, _) = bench_worker(binary, options).await?;
    let client = worker.client(None).await?;
    let prefix = bench_prompt(45);
    let cold = stream(
        client.clone(),
        request(format!("{prefix} First question:"), 1),
    )
    .await?
    .0;
    let warm = stream(
        client.clone(),
        request(format!("{prefix} Second question:"), 1),
    )
    .await?
    .0;
    Ok((cold, warm, worker))
}

/// Peak RSS of 16 streams of 512 positions with a KV budget of 16 x 512 positions; returns
/// (peak, weights, KV budget) in bytes.
async fn memory_at_16(binary: &Path, mut options: ModelOptions) -> Result<(u64, u64, u64)> {
    // Qwen2.5-0.5B keeps 2 x 24 layers x 2 heads x 64 f32 per position: 24,576 bytes.
    let budget = 16 * 512 * 24_576u64;
    options.options.push(format!("kv_cache_memory:{budget}"));
    let (worker, _) = bench_worker(binary, options).await?;
    let mut client = worker.client(None).await?;
    // About 256 prompt tokens each, all different from the first token on.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let prompt = format!("Reader {i} asks: {}", bench_prompt(11));
            tokio::spawn(stream(client.clone(), request(prompt, 256)))
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let status = client.status(HealthMessage {}).await?.into_inner();
    let parts = status.memory.unwrap_or_default().breakdown;
    let peak = worker.pid().and_then(peak_rss).context("no VmHWM")?;
    worker.stop(Duration::from_secs(5)).await?;
    Ok((peak, parts["weights"], parts["kv_cache"]))
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let (threads, rounds) = bench_settings(1);
    let streams: Vec<usize> = bench_env("BENCH_STREAMS", "1,2,4,8,16".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_backend-vllm-rs"));
    let llama = sibling_binary(&ours, "backend-llamacpp")?;
    let options = |extra: &[&str]| bench_load_options(&gguf, threads, extra);
    println!(
        "model {}, {threads} threads, best of {rounds}",
        gguf.display()
    );
    let candle = measure(&ours, options(&[]), &streams, rounds).await?;
    let llama_figures = measure(&llama, options(&["parallel:16"]), &streams, rounds).await?;
    if let Ok(baseline) = std::env::var("BENCH_BASELINE") {
        let old = measure(Path::new(&baseline), options(&[]), &streams, rounds).await?;
        println!("\nbaseline {baseline}: aggregate decode tokens/s");
        for (&(n, theirs), &(_, ours)) in old.aggregate.iter().zip(&candle.aggregate) {
            println!(
                "{n:>8} {theirs:>12.1}   this build {ours:.1} ({:.2}x)",
                ours / theirs
            );
        }
    }

    println!("\naggregate decode tokens/s ({NEW_TOKENS} tokens per stream)");
    println!(
        "{:>8} {:>12} {:>12} {:>8}",
        "streams", "vllm-rs", "llama", "ratio"
    );
    let single = candle.aggregate.first().map_or(1.0, |&(_, t)| t);
    for (&(n, ours), &(_, theirs)) in candle.aggregate.iter().zip(&llama_figures.aggregate) {
        println!(
            "{n:>8} {ours:>12.1} {theirs:>12.1} {:>8.2}   (vllm-rs {:.2}x its single stream)",
            ours / theirs,
            ours / single
        );
    }
    println!("\ntime to first token while 8 streams decode (s)");
    for (name, f) in [("vllm-rs", &candle), ("llama", &llama_figures)] {
        println!(
            "{name:>8}: p50 {:.2}  p95 {:.2}",
            percentile(&f.ttft, 0.5),
            percentile(&f.ttft, 0.95)
        );
    }
    let (cold, warm, worker) = prefix_cache(&ours, options(&[])).await?;
    println!(
        "\nprefix cache (~1,000-token prefix): time to first token cold {cold:.2} s, repeated {warm:.2} s: {:.0}% (target <= 20%)",
        warm / cold * 100.0
    );
    worker.stop(Duration::from_secs(5)).await?;
    // The llama.cpp worker's prompt cache, on by default, against itself turned off.
    for (label, extra) in [
        ("default", &[][..]),
        ("cache_reuse:0", &["cache_reuse:0"][..]),
    ] {
        let (cold, warm, worker) = prefix_cache(&llama, options(extra)).await?;
        println!(
            "llama {label}: time to first token cold {cold:.2} s, repeated {warm:.2} s: {:.0}%",
            warm / cold * 100.0
        );
        worker.stop(Duration::from_secs(5)).await?;
    }
    let (peak, weights, kv) = memory_at_16(&ours, options(&[])).await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "\nmemory, 16 streams of 512 positions: peak RSS {:.0} MiB; weights {:.0} + KV budget {:.0} + 100 = {:.0} MiB ({})",
        mib(peak),
        mib(weights),
        mib(kv),
        mib(weights + kv) + 100.0,
        if peak <= weights + kv + (100 << 20) {
            "within"
        } else {
            "over"
        }
    );
    Ok(())
}
