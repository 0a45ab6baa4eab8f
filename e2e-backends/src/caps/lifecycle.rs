//! The model's life cycle: `free` (Free, then LoadModel again) and `status`.
use backend_common::pb::HealthMessage;
use backend_common::pb::status_response::State;
use tonic::Code;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;

/// Free succeeds; then Status says UNINITIALIZED, Predict and TokenizeString are
/// FAILED_PRECONDITION (no model), and LoadModel works again. The calls after Free go over a
/// new connection, as LocalAI makes one a call: a worker may close its connections after
/// Free (ours restart in place to hand their memory back).
pub async fn free(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let freed = client.free(HealthMessage {}).await.rpc("Free");
    ctx.forget_load().await;
    let freed = freed?;
    ensure!(
        freed.success,
        "Free answered success=false: {}",
        freed.message
    );
    let mut client = ctx.client().await?;
    let status = client.status(HealthMessage {}).await.rpc("Status")?;
    ensure!(
        status.state == State::Uninitialized as i32,
        "after Free, Status reports {:?}, not UNINITIALIZED",
        State::try_from(status.state)
    );
    let predict = client.predict(ctx.predict_options()).await.err();
    let tokenize = client.tokenize_string(ctx.predict_options()).await.err();
    for (call, error) in [("Predict", predict), ("TokenizeString", tokenize)] {
        let got = match error {
            Some(status) if status.code() == Code::FailedPrecondition => {
                ctx.note(format!("{call} after Free: {status}"));
                continue;
            }
            Some(status) => status.to_string(),
            None => "success: the model was not released".to_string(),
        };
        return Err(CheckError::Failed(format!(
            "{call} after Free must be FAILED_PRECONDITION (no model); got {got}"
        )));
    }
    let mut client = ctx.loaded_client().await?;
    let reply = client.predict(ctx.predict_options()).await.rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "Predict after Free and LoadModel returned nothing"
    );
    Ok(Verdict::Passed)
}

/// Status reports memory and says UNINITIALIZED on a fresh worker (where the harness can
/// start one), READY with a model loaded and idle, with the memory of its weights (at
/// least half the model file) and of its KV cache.
pub async fn status(ctx: &Context) -> Result<Verdict, CheckError> {
    if let Some(fresh) = ctx
        .spawn_fresh(&token_env(ctx), ctx.config.token.as_deref())
        .await?
    {
        let mut client = fresh.client(ctx.config.token.as_deref()).await?;
        let status = client.status(HealthMessage {}).await.rpc("Status")?;
        ensure!(
            status.state == State::Uninitialized as i32,
            "a worker without a model reports state {:?}, not UNINITIALIZED",
            State::try_from(status.state)
        );
        let total = status.memory.map(|m| m.total);
        ensure!(
            total.is_some_and(|t| t > 0),
            "a worker without a model reports no memory in use: {total:?}"
        );
    }
    let mut client = ctx.loaded_client().await?;
    let status = client.status(HealthMessage {}).await.rpc("Status")?;
    ctx.note(format!("Status: {status:?}"));
    ensure!(
        status.state == State::Ready as i32,
        "with a model loaded and no request running, Status reports {:?}, not READY",
        State::try_from(status.state)
    );
    let memory = status.memory.unwrap_or_default();
    let weights = memory.breakdown.get("weights").copied().unwrap_or(0);
    let least = ctx.model_file_size().await?.unwrap_or(0) / 2;
    ensure!(
        weights > 0 && weights >= least,
        "with a model loaded, the memory breakdown must name its `weights` (at least {least} bytes, half the model file); got {:?}",
        memory.breakdown
    );
    ensure!(
        memory.breakdown.contains_key("kv_cache"),
        "with a model loaded, the memory breakdown must name its `kv_cache`; got {:?}",
        memory.breakdown
    );
    Ok(Verdict::Passed)
}

/// The auth variable for a started worker, when the run has a token.
pub fn token_env(ctx: &Context) -> Vec<(&'static str, &str)> {
    ctx.config
        .token
        .as_deref()
        .map(|t| vec![(backend_common::server::AUTH_TOKEN_ENV, t)])
        .unwrap_or_default()
}
