//! Streams under load: `concurrency` (parallel streams all complete) and `cancel` (a dropped
//! stream stops and does not stall what comes next).
use std::time::{Duration, Instant};

use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, PredictOptions};

use super::{CheckError, Rpc, Verdict, collect, ensure, text};
use crate::context::Context;
use crate::testing::raw;

/// Tokens of each `concurrency` stream.
const PARALLEL_TOKENS: i32 = 16;

/// N streams at once, each completing with text and, with IgnoreEOS, exactly its Tokens
/// counted.
pub async fn concurrency(ctx: &Context) -> Result<Verdict, CheckError> {
    ctx.loaded_client().await?;
    let mut tasks = Vec::new();
    for i in 0..ctx.config.concurrency {
        let mut client = ctx.client().await?;
        let request = PredictOptions {
            ignore_eos: true,
            ..raw(
                &format!("{} (question {i})", ctx.config.prompt),
                PARALLEL_TOKENS,
            )
        };
        tasks.push(tokio::spawn(async move {
            collect("PredictStream", client.predict_stream(request).await).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let replies = task
            .await
            .map_err(|e| CheckError::Setup(format!("stream task {i}: {e}")))?
            .map_err(|e| {
                CheckError::Failed(format!("stream {i} of {}: {e}", ctx.config.concurrency))
            })?;
        ctx.note(format!("stream {i}: {:?}", text(&replies)));
        ensure!(!text(&replies).is_empty(), "stream {i} carried no text");
        let last = replies.last().map(|r| r.tokens);
        ensure!(
            last == Some(PARALLEL_TOKENS),
            "stream {i} did not end with its {PARALLEL_TOKENS} tokens counted: {last:?}"
        );
    }
    Ok(Verdict::Passed)
}

/// How long the worker may take to notice a dropped stream and leave BUSY.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How long the Predict after the dropped stream may take.
const NEXT_GRACE: Duration = Duration::from_secs(10);
/// Tokens of that Predict.
const NEXT_TOKENS: i32 = 8;

/// A long stream is BUSY; dropped after its first chunk, the worker leaves BUSY within
/// [`CANCEL_GRACE`] (whether it then says READY is the `status` check's business) and
/// answers a short Predict within [`NEXT_GRACE`].
pub async fn cancel(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let long = PredictOptions {
        ignore_eos: true,
        ..raw(&ctx.config.prompt, 400)
    };
    let mut stream = client.predict_stream(long).await.rpc("PredictStream")?;
    let first = stream.message().await.map_err(|status| CheckError::Rpc {
        call: "PredictStream",
        status,
    })?;
    ensure!(first.is_some(), "the stream ended before its first chunk");
    let running = client.status(HealthMessage {}).await.rpc("Status")?;
    ensure!(
        running.state == State::Busy as i32,
        "while a stream is generating, Status reports {:?}, not BUSY",
        State::try_from(running.state)
    );
    drop(stream);
    let dropped = Instant::now();
    let mut state = State::Busy;
    while dropped.elapsed() < CANCEL_GRACE {
        let status = client.status(HealthMessage {}).await.rpc("Status")?;
        state = State::try_from(status.state).unwrap_or(State::Error);
        if state != State::Busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.note(format!(
        "state {state:?} {:?} after the drop",
        dropped.elapsed()
    ));
    ensure!(
        state != State::Busy,
        "the worker was still BUSY {CANCEL_GRACE:?} after the client dropped its stream: the generation goes on for nobody"
    );
    let short = PredictOptions {
        ignore_eos: true,
        ..raw(&ctx.config.prompt, NEXT_TOKENS)
    };
    let next = tokio::time::timeout(NEXT_GRACE, client.predict(short)).await;
    let reply = next
        .map_err(|_| {
            CheckError::Failed(format!(
                "a short Predict after the dropped stream took longer than {NEXT_GRACE:?}"
            ))
        })?
        .rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "the Predict after the dropped stream returned nothing"
    );
    // Whether a reply must carry its counts is the `predict` check's business.
    ensure!(
        reply.tokens == 0 || reply.tokens == NEXT_TOKENS,
        "the Predict after the dropped stream counts {} tokens, not {NEXT_TOKENS}",
        reply.tokens
    );
    Ok(Verdict::Passed)
}
