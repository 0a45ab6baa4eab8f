//! Streams under load: `concurrency` (parallel streams all complete) and `cancel` (a dropped
//! stream stops and does not stall what comes next).
use std::time::{Duration, Instant};

use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, PredictOptions};

use super::{CheckError, Rpc, Verdict, collect, ensure, text};
use crate::context::Context;

/// N streams at once, each completing with text and its counts.
pub async fn concurrency(ctx: &Context) -> Result<Verdict, CheckError> {
    ctx.loaded_client().await?;
    let mut tasks = Vec::new();
    for i in 0..ctx.config.concurrency {
        let mut client = ctx.client().await?;
        let request = PredictOptions {
            prompt: format!("{} (question {i})", ctx.config.prompt),
            tokens: 16,
            temperature: 0.0,
            ..Default::default()
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
            last.is_some_and(|t| t > 0),
            "stream {i} did not end with its counts: {last:?}"
        );
    }
    Ok(Verdict::Passed)
}

/// How long the worker may take to notice a dropped stream and serve the next request.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// A long stream dropped after its first chunk: the worker leaves BUSY and answers a short
/// Predict within [`CANCEL_GRACE`].
pub async fn cancel(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let long = PredictOptions {
        prompt: ctx.config.prompt.clone(),
        tokens: 400,
        temperature: 0.0,
        ignore_eos: true,
        ..Default::default()
    };
    let mut stream = client.predict_stream(long).await.rpc("PredictStream")?;
    let first = stream.message().await.map_err(|status| CheckError::Rpc {
        call: "PredictStream",
        status,
    })?;
    ensure!(first.is_some(), "the stream ended before its first chunk");
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
        prompt: ctx.config.prompt.clone(),
        tokens: 8,
        temperature: 0.0,
        ..Default::default()
    };
    let next = tokio::time::timeout(CANCEL_GRACE, client.predict(short)).await;
    let reply = next
        .map_err(|_| {
            CheckError::Failed(format!(
                "a short Predict after the dropped stream took longer than {CANCEL_GRACE:?}"
            ))
        })?
        .rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "the Predict after the dropped stream returned nothing"
    );
    Ok(Verdict::Passed)
}
