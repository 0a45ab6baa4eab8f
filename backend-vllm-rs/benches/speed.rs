//! Speed of the candle worker, each figure against a peer measured in the same run:
//!
//! 1. Single-stream prefill and decode tokens/s on the Qwen2.5-Coder-0.5B Q4_K_M GGUF, this
//!    worker against backend-llamacpp (both real binaries over gRPC on loopback, same file,
//!    threads, prompt and greedy decoding; timings as each worker reports them). Target
//!    ratio >= 0.9, goal >= 1.0.
//!    The same on SmolLM2-135M-Instruct Q4_1 (every matrix Q4_1), target >= 0.9.
//! 2. LoadModel wall time and peak resident memory (VmHWM) of both workers for each file.
//! 3. Decode tokens/s of the bf16 Hugging Face folder exported from that GGUF, in this process,
//!    against the memory-bandwidth bound measured here: bytes of weights one decode step
//!    reads, over the copy bandwidth of a buffer larger than the caches. Target >= 60%.
//!
//! Run: `cargo bench -p backend-vllm-rs --bench speed` (env `BENCH_THREADS`, `BENCH_ROUNDS`).
//! backend-llamacpp must be built in the same target directory (`cargo build --workspace`);
//! `BENCH_LLAMA=PATH` measures another build of it instead (e.g. the AVX-512 one from
//! `make llama-variant-avx512 PROFILE=dev`).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device};

use backend_common::pb::{ModelOptions, PredictOptions};
use backend_vllm_rs::export::export_hf;
use backend_vllm_rs::hf::HfFolder;
use backend_vllm_rs::model::{Model, SingleSequence};
use e2e_backends::testing::{
    Timing, bench_prompt, bench_settings, bench_worker, peak_rss, sibling_binary, timed_stream,
};

const CONTEXT: i32 = 1024;
const NEW_TOKENS: i32 = 32;

/// A worker's figures.
struct Measured {
    load_s: f64,
    peak_rss: u64,
    runs: Vec<Timing>,
}

async fn measure_worker(
    binary: &Path,
    model: &Path,
    threads: i32,
    rounds: usize,
) -> Result<Measured> {
    let options = ModelOptions {
        model_file: model.display().to_string(),
        context_size: CONTEXT,
        threads,
        ..Default::default()
    };
    let (worker, load_s) = bench_worker(binary, options).await?;
    let mut client = worker.client(None).await?;
    let mut runs = Vec::new();
    for round in 0..rounds {
        // Each round's prompt starts differently, so neither worker's prefix cache (both on
        // by default) spares a round its prefill.
        let request = PredictOptions {
            prompt: format!("Round {round}. {}", bench_prompt(8)),
            tokens: NEW_TOKENS,
            temperature: 0.0,
            ignore_eos: true,
            ..Default::default()
        };
        runs.push(timed_stream(&mut client, request).await?);
    }
    let peak_rss = worker.pid().and_then(peak_rss).unwrap_or(0);
    worker.stop(Duration::from_secs(5)).await?;
    Ok(Measured {
        load_s,
        peak_rss,
        runs,
    })
}

/// Bytes per second of copying a 512 MiB buffer (read and write both counted as in `STREAM`'s
/// copy: the bytes read), best of a few rounds, split over `threads` threads.
fn copy_bandwidth(threads: usize) -> f64 {
    const SIZE: usize = 512 << 20;
    let src = vec![1u8; SIZE];
    let mut dst = vec![0u8; SIZE];
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|s| {
            let chunk = SIZE / threads;
            for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        best = best.max(SIZE as f64 / start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    best
}

/// Decode tokens/s of the model in `dir` (bf16), in this process; and its bytes read per token.
fn folder_decode(dir: &Path, prompt_len: usize, rounds: usize) -> Result<(f64, u64)> {
    let folder = HfFolder::open(dir)?;
    let weights = folder.weights(DType::BF16, &Device::Cpu)?;
    let model = Model::new(
        folder.model_config.clone(),
        weights,
        CONTEXT as usize,
        &Device::Cpu,
    )?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 1000 + i).collect();
    let mut best = 0f64;
    for _ in 0..rounds {
        let mut seq = SingleSequence::new(&model, prompt_len + NEW_TOKENS as usize)?;
        seq.feed(&model, &prompt)?;
        let start = Instant::now();
        for step in 0..NEW_TOKENS as u32 - 1 {
            seq.feed(&model, &[2000 + step])?;
        }
        best = best.max((NEW_TOKENS - 1) as f64 / start.elapsed().as_secs_f64());
    }
    Ok((best, model.bytes_read_per_token()))
}

/// Prints both workers' figures on `gguf` and their ratios (`target` for the tok/s ratios).
async fn compare_workers(
    llama_bin: &Path,
    ours_bin: &Path,
    gguf: &Path,
    threads: i32,
    rounds: usize,
    target: f64,
) -> Result<()> {
    let llama = measure_worker(llama_bin, gguf, threads, rounds).await?;
    let ours = measure_worker(ours_bin, gguf, threads, rounds).await?;
    println!(
        "{:<18} {:>14} {:>14} {:>10} {:>14}",
        "", "prefill tok/s", "decode tok/s", "load s", "peak RSS MiB"
    );
    for (name, m) in [("backend-llamacpp", &llama), ("backend-vllm-rs", &ours)] {
        println!(
            "{name:<18} {:>14.1} {:>14.2} {:>10.2} {:>14}",
            Timing::best(&m.runs, Timing::prefill_tps),
            Timing::best(&m.runs, Timing::decode_tps),
            m.load_s,
            m.peak_rss >> 20
        );
    }
    println!(
        "{:<18} {:>14.3} {:>14.3} {:>10.2} {:>14.2}   (vllm-rs / llamacpp; target >= {target} for tok/s)",
        "ratio",
        Timing::best(&ours.runs, Timing::prefill_tps)
            / Timing::best(&llama.runs, Timing::prefill_tps),
        Timing::best(&ours.runs, Timing::decode_tps)
            / Timing::best(&llama.runs, Timing::decode_tps),
        ours.load_s / llama.load_s,
        ours.peak_rss as f64 / llama.peak_rss.max(1) as f64
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let (threads, rounds) = bench_settings(2);
    let ours_bin = PathBuf::from(env!("CARGO_BIN_EXE_backend-vllm-rs"));
    let llama_bin = match std::env::var_os("BENCH_LLAMA") {
        Some(path) => PathBuf::from(path),
        None => sibling_binary(&ours_bin, "backend-llamacpp")?,
    };
    println!(
        "{}, {threads} threads, {NEW_TOKENS} new tokens, best of {rounds}; llama worker {}",
        gguf.display(),
        llama_bin.display()
    );

    compare_workers(&llama_bin, &ours_bin, &gguf, threads, rounds, 0.9).await?;
    let smollm2 = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    println!("{}, {threads} threads", smollm2.display());
    compare_workers(&llama_bin, &ours_bin, &smollm2, threads, rounds, 0.9).await?;

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-qwen-bf16");
    if !dir.join("config.json").is_file() {
        export_hf(&gguf, &dir, DType::BF16)?;
    }
    let bandwidth = copy_bandwidth(threads as usize);
    let (tps, bytes) = folder_decode(&dir, 64, rounds)?;
    let bound = bandwidth / bytes as f64;
    println!(
        "bf16 folder decode: {tps:.2} tok/s; {} MiB of weights read per token at {:.1} GB/s copy bandwidth bound it to {bound:.2} tok/s: {:.0}% of the bound (target >= 60%)",
        bytes >> 20,
        bandwidth / 1e9,
        100.0 * tps / bound
    );
    Ok(())
}
