//! Our `metrics` capability: GetMetrics (current LocalAI) reports the busiest running
//! generation, as LocalAI's llama.cpp backend reports its busiest slot, and nothing once
//! every generation has ended.
use std::time::Duration;

use backend_common::pb::{MetricsRequest, PredictOptions};

use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;
use crate::testing::raw;

/// While a long stream runs, GetMetrics reports at least the tokens the client has received,
/// the prompt's tokens and a decode speed; after it ends, zeros.
pub async fn metrics(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let request = PredictOptions {
        ignore_eos: true,
        ..raw(&ctx.config.prompt, 64)
    };
    let mut stream = client.predict_stream(request).await.rpc("PredictStream")?;
    let mut received = 0;
    while received < 8 {
        match stream.message().await {
            Ok(Some(reply)) if !reply.message.is_empty() => received += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(status) => {
                return Err(CheckError::Rpc {
                    call: "PredictStream",
                    status,
                });
            }
        }
    }
    let during = client
        .get_metrics(MetricsRequest {})
        .await
        .rpc("GetMetrics")?;
    ctx.note(format!("during the stream: {during:?}"));
    ensure!(
        during.tokens_generated >= received
            && during.prompt_tokens_processed > 0
            && during.tokens_per_second > 0.0,
        "GetMetrics during a stream that has sent {received} chunks reports {during:?}"
    );
    while stream
        .message()
        .await
        .map_err(|status| CheckError::Rpc {
            call: "PredictStream",
            status,
        })?
        .is_some()
    {}
    // The engine may finish its bookkeeping just after the last chunk.
    let mut after = client
        .get_metrics(MetricsRequest {})
        .await
        .rpc("GetMetrics")?;
    for _ in 0..20 {
        if after.tokens_generated == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = client
            .get_metrics(MetricsRequest {})
            .await
            .rpc("GetMetrics")?;
    }
    ensure!(
        after.tokens_generated == 0 && after.prompt_tokens_processed == 0,
        "GetMetrics after every stream ended still reports {after:?}"
    );
    Ok(Verdict::Passed)
}
