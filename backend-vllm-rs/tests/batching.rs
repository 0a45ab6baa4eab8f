//! The engine core end to end (real binary, gRPC on loopback, real models): concurrent
//! streams share forward passes and still each get what they get alone; a cancelled
//! stream's KV blocks come back; a prefix-cache hit and a preemption change no output; a
//! prompt that can never fit is refused while the others keep running.
//!
//! Where a check recomputes positions in other shapes than the run it is compared with
//! (prefix-cache hits, preemption), it runs on the f32 folder exported from the GGUF: on
//! quantized weights candle picks other matmul kernels for one row than for many, with
//! their own int8 rounding, and near-ties may go either way (see `hf.rs`,
//! `recomputing_a_decoded_sequence_gives_its_logits`).
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions};
use e2e_backends::client::Client;
use e2e_backends::testing::{self, SMOLLM2, bench_prompt, collect, load_options, raw, text};
use e2e_backends::worker::Worker;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_backend-vllm-rs");

async fn started_with(options: ModelOptions) -> (Worker, Client) {
    testing::started_with(BINARY.as_ref(), options).await
}

fn with_options(mut o: ModelOptions, options: &[&str]) -> ModelOptions {
    o.options.extend(options.iter().map(|s| s.to_string()));
    o
}

/// Eight prompts of different lengths (about 5 to 200 tokens).
fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = [
        "The capital of France is",
        "Write a haiku about the sea:",
        "def fibonacci(n):",
        "Once upon a time, in a land far away, there lived a",
        "List three colours of the rainbow: red,",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for sentences in [3, 6, 10] {
        prompts.push(format!("{} In short,", bench_prompt(sentences)));
    }
    prompts
}

/// A greedy request for exactly `tokens` tokens.
fn greedy(prompt: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        ignore_eos: true,
        ..raw(prompt, tokens)
    }
}

/// Logprobs closer than this are a near-tie: which of the two tokens wins may depend on
/// how the batch was shaped (the order of float additions), as in vLLM.
const NEAR_TIE: f64 = 0.01;

/// A greedy generation's tokens, with the margin of each choice over the runner-up.
#[derive(Debug, Clone)]
struct Greedy {
    ids: Vec<i64>,
    margins: Vec<f64>,
    text: String,
}

/// Runs `prompt` greedily for `tokens` tokens with logprobs.
async fn run_greedy(client: &mut Client, prompt: &str, tokens: i32) -> Greedy {
    let request = PredictOptions {
        logprobs: 1,
        top_logprobs: 2,
        ..greedy(prompt, tokens)
    };
    let reply = client.predict(request).await.unwrap().into_inner();
    let json: serde_json::Value = serde_json::from_slice(&reply.logprobs).unwrap();
    let content = json["content"].as_array().expect("logprobs content");
    let logprob = |v: &serde_json::Value| v["logprob"].as_f64().unwrap();
    Greedy {
        ids: content.iter().map(|e| e["id"].as_i64().unwrap()).collect(),
        margins: content
            .iter()
            .map(|e| logprob(&e["top_logprobs"][0]) - logprob(&e["top_logprobs"][1]))
            .collect(),
        text: String::from_utf8_lossy(&reply.message).into_owned(),
    }
}

/// Whether `got` equals `want` token for token, or leaves it only where `want` chose
/// between two near-tied tokens (after which the texts are different continuations).
fn same_up_to_near_ties(want: &Greedy, got: &Greedy) -> Result<(), String> {
    match want.ids.iter().zip(&got.ids).position(|(a, b)| a != b) {
        None if want.ids.len() == got.ids.len() => Ok(()),
        None => Err(format!(
            "{} tokens, alone {}",
            got.ids.len(),
            want.ids.len()
        )),
        Some(i) if want.margins[i] < NEAR_TIE => {
            eprintln!(
                "token {i}: a near-tie (margin {:.4}) went the other way: {:?} / {:?}",
                want.margins[i], want.text, got.text
            );
            Ok(())
        }
        Some(i) => Err(format!(
            "token {i} differs with a margin of {:.3}: alone {:?}, batched {:?}",
            want.margins[i], want.text, got.text
        )),
    }
}

/// The worker's Status breakdown.
async fn breakdown(client: &mut Client) -> HashMap<String, u64> {
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    status.memory.unwrap_or_default().breakdown
}

/// Runs every prompt alone, one after the other.
async fn alone(client: &mut Client, prompts: &[String], tokens: i32) -> Vec<Greedy> {
    let mut out = Vec::new();
    for p in prompts {
        out.push(run_greedy(client, p, tokens).await);
    }
    out
}

/// Runs every prompt at once, the i-th started `i * gap` after the first.
async fn together(client: &Client, prompts: &[String], tokens: i32, gap: Duration) -> Vec<Greedy> {
    let tasks: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut client = client.clone();
            let prompt = p.clone();
            tokio::spawn(async move {
                tokio::time::sleep(gap * i as u32).await;
                run_greedy(&mut client, &prompt, tokens).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Checks every batched run against its run alone; returns how many matched exactly.
fn check_all(expected: &[Greedy], got: &[Greedy], what: &str) -> usize {
    let mut exact = 0;
    for (i, (want, got)) in expected.iter().zip(got).enumerate() {
        if let Err(e) = same_up_to_near_ties(want, got) {
            panic!("prompt {i} {what}: {e}");
        }
        exact += usize::from(want.ids == got.ids);
    }
    eprintln!("{what}: {exact} of {} token for token", expected.len());
    exact
}

/// Load options for the f32 folder exported from the SmolLM2 GGUF.
fn f32_folder() -> ModelOptions {
    let mut options = load_options(SMOLLM2);
    options.model_file = common::exported(SMOLLM2, candle_core::DType::F32)
        .display()
        .to_string();
    options
}

async fn staggered_streams_equal_each_alone(options: ModelOptions) {
    // Every prompt is prefilled in one piece, alone or batched (the rows of a batch do not
    // change each other's kernels), so the comparison is exact but for near-ties.
    let options = with_options(
        options,
        &["enable_prefix_caching:false", "max_num_batched_tokens:2048"],
    );
    let (_worker, mut client) = started_with(options).await;
    let prompts = prompts();
    let expected = alone(&mut client, &prompts, 24).await;
    let started = Instant::now();
    let got = together(&client, &prompts, 24, Duration::from_millis(150)).await;
    eprintln!(
        "8 staggered streams in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    check_all(&expected, &got, "batched");
    assert_eq!(breakdown(&mut client).await["kv_blocks_used"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn staggered_gguf_streams_equal_each_alone() {
    staggered_streams_equal_each_alone(load_options(SMOLLM2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn staggered_hf_folder_streams_equal_each_alone() {
    staggered_streams_equal_each_alone(f32_folder()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_stream_returns_its_blocks() {
    let (_worker, mut client) = started_with(load_options(SMOLLM2)).await;
    let baseline = breakdown(&mut client).await;
    assert_eq!(baseline["kv_blocks_used"], 0);
    assert!(baseline["kv_blocks_total"] > 0);
    let prompt = bench_prompt(6);
    let mut stream = client
        .predict_stream(greedy(&prompt, 500))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().expect("a chunk");
    }
    let during = breakdown(&mut client).await;
    assert!(during["kv_blocks_used"] > 0, "{during:?}");
    assert_eq!(during["requests_running"], 1, "{during:?}");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = breakdown(&mut client).await;
        if now["kv_blocks_used"] == 0 && now["requests_running"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "blocks not returned: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The model still answers.
    assert!(!text(&collect(&mut client, greedy("Hello", 3)).await).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_cache_hit_gives_the_cold_output() {
    let (_worker, mut client) = started_with(f32_folder()).await;
    let system = bench_prompt(12);
    let first = format!("{system} Question one: what is this text about?");
    let second = format!("{system} Question two: name one word from it.");
    let cold = client
        .predict(greedy(&second, 16))
        .await
        .unwrap()
        .into_inner();
    client.predict(greedy(&first, 16)).await.unwrap();
    let before = breakdown(&mut client).await;
    let warm = client
        .predict(greedy(&second, 16))
        .await
        .unwrap()
        .into_inner();
    let after = breakdown(&mut client).await;
    let hit = after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"];
    eprintln!(
        "prefix hit of {hit} of {} prompt tokens; prompt {:.0} ms cold, {:.0} ms warm",
        warm.prompt_tokens, cold.timing_prompt_processing, warm.timing_prompt_processing
    );
    assert!(
        hit as i32 >= warm.prompt_tokens - 16,
        "{before:?} {after:?}"
    );
    assert_eq!(warm.message, cold.message);
    assert_eq!(warm.tokens, cold.tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn preemption_under_a_tiny_kv_cache_finishes_every_request() {
    // SmolLM2 keeps 2 x 30 layers x 3 heads x 64 f32 per position: 46,080 bytes, so a block
    // of 16 takes 737,280 and this cache holds 12 blocks (192 positions). Each request
    // needs up to 5 blocks; four at once need 20.
    let options = with_options(f32_folder(), &["kv_cache_memory:8847360"]);
    let (_worker, mut client) = started_with(options).await;
    assert_eq!(breakdown(&mut client).await["kv_blocks_total"], 12);
    let prompts: Vec<String> = prompts().into_iter().take(4).collect();
    let expected = alone(&mut client, &prompts, 60).await;
    let got = together(&client, &prompts, 60, Duration::ZERO).await;
    check_all(&expected, &got, "after preemption");
    let stats = breakdown(&mut client).await;
    assert!(stats["preemptions"] > 0, "{stats:?}");
    assert_eq!(stats["kv_blocks_used"], 0, "{stats:?}");

    // A prompt longer than the whole cache is refused with the numbers, and a request
    // running at the same time is not disturbed.
    let mut running = client.clone();
    let short = prompts[0].clone();
    let task = tokio::spawn(async move { text(&collect(&mut running, greedy(&short, 40)).await) });
    let e = client
        .predict(greedy(&bench_prompt(20), 4))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("12 blocks") && e.message().contains("kv_cache_memory"),
        "{e}"
    );
    let shorter = task.await.unwrap();
    assert!(
        !shorter.is_empty() && expected[0].text.starts_with(&shorter),
        "{shorter:?}"
    );
}
