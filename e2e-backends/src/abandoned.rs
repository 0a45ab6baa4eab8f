//! Requests whose client went away while they queued are dropped before they cost a
//! prefill: a worker serving one sequence at a time gets a long stream, then two requests
//! with long prompts that queue behind it and are abandoned (a stream dropped, a unary call
//! timed out by its client), then the long stream is cancelled. A new short request must be
//! answered at once, not after the abandoned prompts, and the worker must be READY again.
use std::path::Path;
use std::time::{Duration, Instant};

use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions};

use crate::testing::{self, QWEN, bench_prompt, load_options, raw};

/// Waits this long for the worker to notice the abandoned requests.
const NOTICE: Duration = Duration::from_millis(500);

/// Runs the check on `binary`; `one_at_a_time` is the option that makes it serve one
/// sequence at a time (`parallel:1`, `max_num_seqs:1`).
pub async fn check(binary: &Path, one_at_a_time: &str) {
    let options = ModelOptions {
        options: vec![one_at_a_time.to_string()],
        ..load_options(QWEN)
    };
    let (_worker, mut client) = testing::started_with(binary, options).await;
    let long_answer = PredictOptions {
        ignore_eos: true,
        ..raw("Write a long story about a lighthouse.", 400)
    };
    let mut running = client
        .predict_stream(long_answer)
        .await
        .unwrap()
        .into_inner();
    running
        .message()
        .await
        .unwrap()
        .expect("the long stream runs");

    // About 900 tokens each: several seconds of prefill on 2 cores.
    let long_prompt = || raw(&bench_prompt(40), 1);
    let queued = client
        .predict_stream(long_prompt())
        .await
        .unwrap()
        .into_inner();
    drop(queued);
    let mut unary = client.clone();
    let timed_out = tokio::time::timeout(NOTICE, unary.predict(long_prompt())).await;
    assert!(timed_out.is_err(), "the unary call had to queue");
    tokio::time::sleep(NOTICE).await;
    drop(running);

    let started = Instant::now();
    let reply = client.predict(raw("Hello", 1)).await.unwrap().into_inner();
    let waited = started.elapsed();
    assert!(!reply.message.is_empty());
    assert!(
        waited < Duration::from_secs(3),
        "a new request waited {waited:?}: the abandoned prompts were processed first"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = client.status(HealthMessage {}).await.unwrap().into_inner();
        if status.state == State::Ready as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "still {:?}", status.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
