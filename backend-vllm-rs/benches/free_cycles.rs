//! Memory after Free: both workers, real binaries over gRPC, load the Qwen GGUF, answer one
//! request and Free it, 50 times. Printed per worker, in MiB: the resident set (its anonymous
//! part in brackets) when fresh (started, nothing loaded), loaded, and after Free at cycles 1,
//! 10, 25 and 50, with the ratios of the last to fresh (target <= 1.10) and to the first Free.
//! A worker that restarts in place after Free (the default) is read once its new image
//! answers Health over a new connection; the time from Free's reply to that answer is
//! printed too (median and slowest).
//!
//! Run: `cargo bench --workspace --bench free_cycles` (env `BENCH_CYCLES`, default 50;
//! `BENCH_THREADS`). backend-llamacpp must be built in the same target directory.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backend_common::pb::{HealthMessage, ModelOptions};
use e2e_backends::testing::{
    bench_env, bench_load_options, bench_settings, memory_field, peak_rss, raw, sibling_binary,
};
use e2e_backends::worker::Worker;

/// Resident memory of process `pid` in MiB: all of it (`VmRSS`), and its anonymous part
/// (`RssAnon`: heap, stacks; the rest is code and mapped files).
fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let mib = |field| {
        memory_field(pid, field)
            .map(|bytes| bytes as f64 / f64::from(1u32 << 20))
            .with_context(|| format!("no {field} for process {pid}"))
    };
    Ok((mib("VmRSS")?, mib("RssAnon")?))
}

async fn cycles(binary: &Path, options: &ModelOptions, cycles: usize) -> Result<()> {
    let worker = Worker::start(
        binary,
        &[("RUST_LOG", "warn")],
        None,
        Duration::from_secs(30),
    )
    .await?;
    let pid = worker.pid().context("the worker has no pid")?;
    let mut client = worker.client(None).await?;
    let fresh = rss_mib(pid)?;
    let mut loaded = (0.0, 0.0);
    let mut after_free = Vec::new();
    let mut restarts = Vec::new();
    for cycle in 1..=cycles {
        let reply = client.load_model(options.clone()).await?.into_inner();
        anyhow::ensure!(reply.success, "{}", reply.message);
        client.predict(raw("The capital of France is", 8)).await?;
        loaded = rss_mib(pid)?;
        let loaded_peak = peak_rss(pid).context("no VmHWM")?;
        client.free(HealthMessage {}).await?;
        let freed = Instant::now();
        // A new image starts its own peak count.
        while peak_rss(pid).is_none_or(|peak| peak >= loaded_peak / 2)
            && freed.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if freed.elapsed() < Duration::from_secs(10) {
            client = worker.client(None).await?;
            client.health(HealthMessage {}).await?;
            restarts.push(freed.elapsed());
        }
        after_free.push((cycle, rss_mib(pid)?));
    }
    let name = binary.file_name().unwrap_or_default().to_string_lossy();
    let show = |(all, anon): (f64, f64)| format!("{all:.1} ({anon:.1})");
    print!(
        "{name:<18} fresh {}  loaded {}  after Free:",
        show(fresh),
        show(loaded)
    );
    for &(cycle, mib) in &after_free {
        if [1, 10, 25, cycles].contains(&cycle) {
            print!("  #{cycle} {}", show(mib));
        }
    }
    let last = after_free.last().map_or(fresh, |&(_, mib)| mib);
    let first = after_free.first().map_or(fresh, |&(_, mib)| mib);
    println!(
        "   last/fresh {:.2}x, last/first Free {:.2}x",
        last.0 / fresh.0,
        last.0 / first.0
    );
    restarts.sort();
    match (restarts.get(restarts.len() / 2), restarts.last()) {
        (Some(median), Some(slowest)) => println!(
            "{name:<18} restarted after {} of {cycles} Frees: Free -> new image answering Health {:.1} ms median, {:.1} ms slowest",
            restarts.len(),
            median.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3
        ),
        _ => println!("{name:<18} did not restart after Free"),
    }
    worker.stop(Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let (threads, _) = bench_settings(1);
    let count: usize = bench_env("BENCH_CYCLES", 50);
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_backend-vllm-rs"));
    let llama = sibling_binary(&ours, "backend-llamacpp")?;
    let options = bench_load_options(&gguf, threads, &[]);
    println!(
        "model {}, {threads} threads, {count} load/answer/Free cycles; resident MiB",
        gguf.display()
    );
    cycles(&ours, &options, count).await?;
    cycles(&llama, &options, count).await?;
    Ok(())
}
