//! The model's life cycle: `free` (Free, then LoadModel again) and `status`.
use backend_common::pb::HealthMessage;
use backend_common::pb::status_response::State;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;

/// Free succeeds, a Predict then fails (no model), and LoadModel works again.
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
    let after = client.predict(ctx.predict_options()).await;
    ensure!(
        after.is_err(),
        "Predict still answers after Free: the model was not released"
    );
    if let Err(status) = after {
        ctx.note(format!("Predict after Free: {status}"));
    }
    let mut client = ctx.loaded_client().await?;
    let reply = client.predict(ctx.predict_options()).await.rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "Predict after Free and LoadModel returned nothing"
    );
    Ok(Verdict::Passed)
}

/// Status says READY with a model loaded and idle (UNINITIALIZED on a fresh worker, where
/// the harness can start one).
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
    }
    let mut client = ctx.loaded_client().await?;
    let status = client.status(HealthMessage {}).await.rpc("Status")?;
    ctx.note(format!("Status: {status:?}"));
    ensure!(
        status.state == State::Ready as i32,
        "with a model loaded and no request running, Status reports {:?}, not READY",
        State::try_from(status.state)
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
