//! Soak: 64 concurrent streams with random cancels against each worker (real binaries over
//! gRPC, SmolLM2 GGUF) for a while. Each stream asks for a random number of tokens with
//! `ignore_eos`; about a third are cancelled at a random point. Printed per worker: streams
//! finished and cancelled, finished streams that were not valid (valid: OK status, UTF-8 text,
//! exactly the tokens asked for on the last chunk), tokens/s, resident memory before and after
//! (target: within 5%), and how long after the last stream Status said READY (target: <= 1 s).
//!
//! "Before" is taken after a warm-up of the same load for a tenth of the time (at least 20 s),
//! so that buffers sized by the load (the allocator's per-thread arenas, the llama worker's
//! slots) are in it; what grows after that is what the run leaks or accumulates. (Both
//! workers reserve their KV cache at load.)
//!
//! Run: `cargo bench --workspace --bench soak` (env `BENCH_SOAK_SECS`, default 300;
//! `BENCH_STREAMS`, default 64; `BENCH_THREADS`). backend-llamacpp must be built in the same
//! target directory.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions};
use e2e_backends::client::Client;
use e2e_backends::testing::{
    bench_env, bench_load_options, bench_settings, bench_worker, memory_field, sibling_binary,
};

/// A small xorshift generator: the soak needs variety, not quality.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[derive(Default)]
struct Tally {
    finished: AtomicU64,
    cancelled: AtomicU64,
    invalid: AtomicU64,
    tokens: AtomicU64,
}

fn rss_mib(pid: u32) -> Result<f64> {
    memory_field(pid, "VmRSS")
        .map(|bytes| bytes as f64 / f64::from(1u32 << 20))
        .context("no VmRSS")
}

/// One user: streams until `deadline`, cancelling some streams part-way.
async fn user(mut client: Client, seed: u64, deadline: Instant, tally: Arc<Tally>) {
    let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    while Instant::now() < deadline {
        let tokens = 4 + random.below(60) as i32;
        let cancel_after = (random.below(3) == 0).then(|| random.below(tokens as u64));
        let request = PredictOptions {
            prompt: format!("Note {}: the weather today is", random.below(1000)),
            tokens,
            ignore_eos: true,
            temperature: 0.7,
            top_k: 40,
            seed: random.below(1 << 30) as i32,
            ..Default::default()
        };
        let Ok(stream) = client.predict_stream(request).await else {
            tally.invalid.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut stream = stream.into_inner();
        let mut chunks = 0u64;
        let mut text = Vec::new();
        let mut last_tokens = 0;
        let outcome = loop {
            if cancel_after.is_some_and(|after| chunks >= after) {
                break None;
            }
            match stream.message().await {
                Ok(Some(reply)) => {
                    chunks += 1;
                    text.extend_from_slice(&reply.message);
                    last_tokens = reply.tokens;
                }
                Ok(None) => break Some(true),
                Err(_) => break Some(false),
            }
        };
        match outcome {
            None => {
                drop(stream);
                tally.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            Some(ok) => {
                let valid = ok && std::str::from_utf8(&text).is_ok() && last_tokens == tokens;
                let counter = if valid {
                    &tally.finished
                } else {
                    &tally.invalid
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tally
                    .tokens
                    .fetch_add(last_tokens.max(0) as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn soak(binary: &Path, options: ModelOptions, streams: usize, secs: u64) -> Result<()> {
    let (worker, _) = bench_worker(binary, options).await?;
    let pid = worker.pid().context("no pid")?;
    let mut client = worker.client(None).await?;
    let loaded = rss_mib(pid)?;
    let warm_up = Instant::now() + Duration::from_secs((secs / 10).max(20));
    let users: Vec<_> = (0..streams)
        .map(|i| {
            let tally = Arc::new(Tally::default());
            tokio::spawn(user(client.clone(), 1000 + i as u64, warm_up, tally))
        })
        .collect();
    for user in users {
        user.await?;
    }
    let before = rss_mib(pid)?;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let users: Vec<_> = (0..streams)
        .map(|i| {
            tokio::spawn(user(
                client.clone(),
                i as u64 + 1,
                deadline,
                Arc::clone(&tally),
            ))
        })
        .collect();
    for user in users {
        user.await?;
    }
    let ended = Instant::now();
    let elapsed = (ended - started).as_secs_f64();
    let ready_after = loop {
        let status = client.status(HealthMessage {}).await?.into_inner();
        if status.state == State::Ready as i32 {
            break ended.elapsed();
        }
        anyhow::ensure!(
            ended.elapsed() < Duration::from_secs(60),
            "Status never came back to READY"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Memory freed by the last requests is returned within a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib(pid)?;
    let name = binary.file_name().unwrap_or_default().to_string_lossy();
    println!(
        "{name:<18} finished {:>6}  cancelled {:>6}  invalid {:>3}  {:>6.1} tok/s  RSS loaded {loaded:.0}, warm {before:.0} -> after {after:.0} MiB ({:+.1}%)  READY after {:.2} s",
        tally.finished.load(Ordering::Relaxed),
        tally.cancelled.load(Ordering::Relaxed),
        tally.invalid.load(Ordering::Relaxed),
        tally.tokens.load(Ordering::Relaxed) as f64 / elapsed,
        (after / before - 1.0) * 100.0,
        ready_after.as_secs_f64(),
    );
    worker.stop(Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (threads, _) = bench_settings(1);
    let secs: u64 = bench_env("BENCH_SOAK_SECS", 300);
    let streams: usize = bench_env("BENCH_STREAMS", 64);
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_backend-vllm-rs"));
    let llama = sibling_binary(&ours, "backend-llamacpp")?;
    let options = |extra: &[&str]| bench_load_options(&gguf, threads, extra);
    println!(
        "model {}, {threads} threads, {streams} streams for {secs} s each",
        gguf.display()
    );
    soak(&ours, options(&[]), streams, secs).await?;
    soak(&llama, options(&["parallel:16"]), streams, secs).await?;
    Ok(())
}
