//! Decode speed when other processes want the same cores: each worker (real binaries over
//! gRPC, SmolLM2 GGUF, one greedy stream of 64 tokens) measured quiet and with `BENCH_HOGS`
//! (default 2) busy-looping processes beside it, for each environment in `BENCH_WORKER_ENV`
//! (`;`-separated sets of `NAME=VALUE,...`; default: the worker's own settings only), so that
//! spin and wait policies can be compared in one run. Targets (issue 13): quiet speed >= 0.97x
//! of the default, contended >= 40% of quiet.
//!
//! Run: `cargo bench --profile dev --workspace --bench contention` (env `BENCH_THREADS`,
//! `BENCH_ROUNDS`, `BENCH_HOGS`, `BENCH_WORKER_ENV`). `BENCH_BASELINE=PATH` also measures
//! another build of the candle worker (an older commit) in the same run.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};
use backend_common::pb::PredictOptions;
use e2e_backends::testing::{
    Timing, bench_env, bench_load_options, bench_settings, sibling_binary, timed_stream,
};
use e2e_backends::worker::Worker;

/// Processes that keep a core busy until dropped.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Result<Hogs> {
        let children = (0..n)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .context("starting a busy loop")
            })
            .collect::<Result<_>>()?;
        Ok(Hogs(children))
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Best decode tokens/s of `rounds` streams.
async fn decode_tps(worker: &Worker, rounds: usize) -> Result<f64> {
    let mut client = worker.client(None).await?;
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let request = PredictOptions {
            prompt: "Once upon a time".into(),
            tokens: 64,
            ignore_eos: true,
            temperature: 0.0,
            ..Default::default()
        };
        runs.push(timed_stream(&mut client, request).await?);
    }
    Ok(Timing::best(&runs, Timing::decode_tps))
}

async fn measure(
    binary: &Path,
    env: &[(String, String)],
    model: &Path,
    threads: i32,
    rounds: usize,
    hogs: usize,
) -> Result<()> {
    let mut vars: Vec<(&str, &str)> = vec![("RUST_LOG", "warn")];
    vars.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let worker = Worker::start(binary, &vars, None, Duration::from_secs(30)).await?;
    let mut client = worker.client(None).await?;
    let loaded = client
        .load_model(bench_load_options(model, threads, &[]))
        .await?
        .into_inner();
    anyhow::ensure!(loaded.success, "{}", loaded.message);
    let quiet = decode_tps(&worker, rounds).await?;
    let contended = {
        let _hogs = Hogs::start(hogs)?;
        decode_tps(&worker, rounds).await?
    };
    let name = binary.file_name().unwrap_or_default().to_string_lossy();
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{name:<18} {:<40} quiet {quiet:>6.1} tok/s  contended {contended:>6.1} tok/s  ({:.0}% of quiet)",
        if shown.is_empty() {
            "(defaults)".to_string()
        } else {
            shown.join(",")
        },
        100.0 * contended / quiet
    );
    worker.stop(Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (threads, rounds) = bench_settings(3);
    let hogs: usize = bench_env("BENCH_HOGS", 2);
    let envs: Vec<Vec<(String, String)>> = bench_env("BENCH_WORKER_ENV", String::new())
        .split(';')
        .map(|set| {
            set.split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .collect();
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_backend-vllm-rs"));
    let llama = sibling_binary(&ours, "backend-llamacpp")?;
    println!(
        "model {}, {threads} threads, best of {rounds}, {hogs} busy processes when contended",
        model.display()
    );
    let baseline = std::env::var_os("BENCH_BASELINE").map(PathBuf::from);
    for env in &envs {
        measure(&llama, env, &model, threads, rounds, hogs).await?;
        measure(&ours, env, &model, threads, rounds, hogs).await?;
        if let Some(baseline) = &baseline {
            measure(baseline, env, &model, threads, rounds, hogs).await?;
        }
    }
    Ok(())
}
