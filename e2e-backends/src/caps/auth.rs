//! `auth`: with LOCALAI_GRPC_AUTH_TOKEN set, every call without the right bearer token is
//! UNAUTHENTICATED, and calls with it work; set empty, it turns auth off.
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions};
use backend_common::server::AUTH_TOKEN_ENV;
use tonic::Code;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::client::{Client, connect};
use crate::context::Context;

/// Checks a worker started with a token (a fresh one when the harness can start it, else
/// the running worker with the run's token): refused without it, with a wrong one or with
/// one character short; with it, Health answers as on a worker without auth, and the model
/// loads and predicts.
pub async fn auth(ctx: &Context) -> Result<Verdict, CheckError> {
    let generated = format!("e2e-{}", std::process::id());
    let token = ctx.config.token.clone().unwrap_or(generated);
    let fresh = ctx
        .spawn_fresh(&[(AUTH_TOKEN_ENV, token.as_str())], Some(&token))
        .await?;
    let addr = match &fresh {
        Some(worker) => worker.addr().to_string(),
        None if ctx.config.token.is_some() => ctx.addr().await?,
        None => {
            return Ok(Verdict::Ignored(
                "BACKEND_ADDR names a running worker: set LOCALAI_GRPC_AUTH_TOKEN to the token it was started with".into(),
            ));
        }
    };
    // The token compared in full, not as a prefix.
    let mut short = token.chars();
    short.next_back();
    let load = ctx.model_options(&ctx.config.options, false).await?;
    for (who, client_token) in [
        ("no token", None),
        ("a wrong token", Some("wrong-token")),
        ("the token less its last character", Some(short.as_str())),
    ] {
        let mut client = connect(&addr, client_token).await?;
        refused(&mut client, who, &load).await?;
    }
    let mut client = connect(&addr, Some(&token)).await?;
    let health = client.health(HealthMessage {}).await.map_err(|status| {
        CheckError::Failed(format!("Health with the right token failed: {status}"))
    })?;
    // Whether that is "OK" is the `health` check's business; auth must not change it.
    if let Some(open) = without_auth(ctx).await? {
        ensure!(
            health.get_ref().message == open,
            "Health with the right token says {:?}, without auth {:?}",
            String::from_utf8_lossy(&health.get_ref().message),
            String::from_utf8_lossy(&open)
        );
    }
    if fresh.is_some() {
        let loaded = client.load_model(load).await.rpc("LoadModel")?;
        ensure!(
            loaded.success,
            "LoadModel with the right token answered success=false: {}",
            loaded.message
        );
    } else {
        client = ctx.loaded_client().await?;
    }
    let reply = client.predict(ctx.predict_options()).await.rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "Predict with the right token returned nothing"
    );
    Ok(Verdict::Passed)
}

/// What Health says, without a token, on a fresh worker started with the variable set
/// empty (auth off); `None` when the harness cannot start one.
async fn without_auth(ctx: &Context) -> Result<Option<Vec<u8>>, CheckError> {
    let Some(open) = ctx.spawn_fresh(&[(AUTH_TOKEN_ENV, "")], None).await? else {
        return Ok(None);
    };
    let mut client = open.client(None).await?;
    let health = client.health(HealthMessage {}).await.map_err(|status| {
        CheckError::Failed(format!(
            "with {AUTH_TOKEN_ENV} empty, auth must be off; Health without a token failed: {status}"
        ))
    })?;
    Ok(Some(health.into_inner().message))
}

/// Every kind of call from `client` is UNAUTHENTICATED.
async fn refused(client: &mut Client, who: &str, load: &ModelOptions) -> Result<(), CheckError> {
    let probe = PredictOptions {
        prompt: "Hi".into(),
        tokens: 1,
        ..Default::default()
    };
    let results = [
        ("Health", client.health(HealthMessage {}).await.err()),
        ("Status", client.status(HealthMessage {}).await.err()),
        ("LoadModel", client.load_model(load.clone()).await.err()),
        ("Predict", client.predict(probe.clone()).await.err()),
        (
            "PredictStream",
            client.predict_stream(probe.clone()).await.err(),
        ),
        ("TokenizeString", client.tokenize_string(probe).await.err()),
        ("Free", client.free(HealthMessage {}).await.err()),
    ];
    for (call, error) in results {
        let code = error.as_ref().map(|s| s.code());
        ensure!(
            code == Some(Code::Unauthenticated),
            "{call} with {who} must be UNAUTHENTICATED; got {}",
            error.map_or("success".to_string(), |s| s.to_string())
        );
    }
    Ok(())
}
