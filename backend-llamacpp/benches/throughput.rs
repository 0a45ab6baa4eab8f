//! Throughput of the llama.cpp worker against llama.cpp's own decode loop: the same
//! llama-cpp-2 build, model, threads, prompt and greedy sampling, measured in one run.
//!
//! Prints prefill and decode tokens/s of (a) a plain decode loop on llama-cpp-2 in this
//! process and (b) a stream through our gRPC worker (the real binary on loopback), their
//! ratio, and the worker's aggregate tokens/s at 1, 4 and 8 concurrent streams.
//! Run: `cargo bench -p backend-llamacpp --bench throughput` (env `BENCH_THREADS`,
//! `BENCH_MODEL`, `BENCH_ROUNDS`). `BENCH_VARIANTS=NAME=BINARY,...` also measures other
//! builds of the worker (the image's llama.cpp variants) against this one, in the same run.
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backend_common::pb::{ModelOptions, PredictOptions};
use e2e_backends::testing::{Timing, bench_prompt, bench_settings, bench_worker, timed_stream};
use e2e_backends::worker::Worker;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;

const CONTEXT: u32 = 1024;
const BATCH: u32 = 512;
const NEW_TOKENS: u32 = 64;

fn prompt_text() -> String {
    bench_prompt(16)
}

/// llama.cpp's own loop: one prompt batch, then greedy decode one token at a time.
fn direct_loop(model_path: &PathBuf, threads: i32, rounds: usize) -> Result<Vec<Timing>> {
    let backend = LlamaBackend::init()?;
    let model = LlamaModel::load_from_file(&backend, model_path, &LlamaModelParams::default())?;
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(CONTEXT))
            .with_n_batch(BATCH)
            .with_n_ubatch(BATCH)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = model.new_context(&backend, params)?;
        let tokens = model.vocab().tokenize(prompt_text().as_bytes(), true, true);
        let mut batch = LlamaBatch::new(BATCH as usize, 1);
        let mut sampler = LlamaSampler::greedy();
        let start = Instant::now();
        batch.add_sequence(&tokens, 0, false)?;
        ctx.decode(&mut batch)?;
        let mut token = sampler.sample(&ctx, batch.n_tokens() - 1);
        let prompt_s = start.elapsed().as_secs_f64();
        let decode_start = Instant::now();
        let first = tokens.len() as i32;
        for pos in first..first + NEW_TOKENS as i32 - 1 {
            batch.clear();
            batch.add(token, pos, &[0], true)?;
            ctx.decode(&mut batch)?;
            token = sampler.sample(&ctx, 0);
        }
        runs.push(Timing {
            prompt_tokens: tokens.len() as u32,
            prompt_s,
            new_tokens: NEW_TOKENS,
            decode_s: decode_start.elapsed().as_secs_f64(),
        });
    }
    Ok(runs)
}

fn request(prompt: String, tokens: u32) -> PredictOptions {
    PredictOptions {
        prompt,
        tokens: tokens as i32,
        temperature: 0.0,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Starts `binary` and loads the model as every measured worker is loaded.
async fn start_loaded(binary: &Path, model: &Path, threads: i32) -> Result<Worker> {
    let options = ModelOptions {
        model_file: model.display().to_string(),
        context_size: CONTEXT as i32,
        n_batch: BATCH as i32,
        threads,
        // Every round sends the same prompt, as the in-process loop it is compared with
        // evaluates it afresh each time: the prompt cache would skip it.
        options: vec!["parallel:8".into(), "cache_reuse:0".into()],
        ..Default::default()
    };
    Ok(bench_worker(binary, options).await?.0)
}

/// Streams through the worker; timings as the worker reports them on the last chunk.
async fn worker_runs(worker: &Worker, rounds: usize) -> Result<Vec<Timing>> {
    let mut client = worker.client(None).await?;
    let mut runs = Vec::new();
    for _ in 0..rounds {
        runs.push(timed_stream(&mut client, request(prompt_text(), NEW_TOKENS)).await?);
    }
    Ok(runs)
}

/// Aggregate generated tokens/s of `streams` concurrent requests, wall clock.
async fn aggregate(worker: &Worker, streams: usize, tokens: u32) -> Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut client = worker.client(None).await?;
        tasks.push(tokio::spawn(async move {
            let req = request(format!("Request {i}: tell a story about the sea."), tokens);
            let mut stream = client.predict_stream(req).await?.into_inner();
            let mut generated = 0;
            while let Some(reply) = stream.message().await? {
                generated = generated.max(reply.tokens);
            }
            anyhow::Ok(generated as u64)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = std::env::var_os("BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    let (threads, rounds) = bench_settings(3);
    println!(
        "model {}, {threads} threads, {NEW_TOKENS} new tokens, best of {rounds}",
        model.display()
    );

    let direct = {
        let model = model.clone();
        tokio::task::spawn_blocking(move || direct_loop(&model, threads, rounds)).await??
    };
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_backend-llamacpp"));
    let worker = start_loaded(&binary, &model, threads).await?;
    let ours = worker_runs(&worker, rounds).await?;

    let prompt_tokens = direct[0].prompt_tokens;
    println!("{:<28} {:>14} {:>14}", "", "prefill tok/s", "decode tok/s");
    let (dp, dd) = (
        Timing::best(&direct, Timing::prefill_tps),
        Timing::best(&direct, Timing::decode_tps),
    );
    let (wp, wd) = (
        Timing::best(&ours, Timing::prefill_tps),
        Timing::best(&ours, Timing::decode_tps),
    );
    println!(
        "{:<28} {dp:>14.1} {dd:>14.1}",
        "llama.cpp loop (in-process)"
    );
    println!("{:<28} {wp:>14.1} {wd:>14.1}", "backend-llamacpp over gRPC");
    println!(
        "{:<28} {:>14.3} {:>14.3}",
        "ratio (target >= 0.97)",
        wp / dp,
        wd / dd
    );
    println!("(prompt of {prompt_tokens} tokens)");

    let mut single = 0.0;
    for streams in [1usize, 4, 8] {
        let tps = aggregate(&worker, streams, 32).await?;
        if streams == 1 {
            single = tps;
        }
        println!(
            "{streams} concurrent streams: {tps:>8.1} tok/s aggregate ({:.2}x one stream)",
            tps / single
        );
    }
    worker.stop(Duration::from_secs(10)).await?;

    let variants = std::env::var("BENCH_VARIANTS").unwrap_or_default();
    for spec in variants.split(',').filter(|s| !s.trim().is_empty()) {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("BENCH_VARIANTS: `{spec}` is not NAME=BINARY"))?;
        let variant = start_loaded(Path::new(path.trim()), &model, threads).await?;
        let runs = worker_runs(&variant, rounds).await?;
        variant.stop(Duration::from_secs(10)).await?;
        let (vp, vd) = (
            Timing::best(&runs, Timing::prefill_tps),
            Timing::best(&runs, Timing::decode_tps),
        );
        println!(
            "variant {name:<20} {vp:>14.1} {vd:>14.1}   ({:.3}x / {:.3}x this build)",
            vp / wp,
            vd / wd
        );
    }
    Ok(())
}
