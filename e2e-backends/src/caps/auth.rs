//! `auth`: with LOCALAI_GRPC_AUTH_TOKEN set, every call without the right bearer token is
//! UNAUTHENTICATED, and calls with it work.
use backend_common::pb::{HealthMessage, PredictOptions};
use tonic::Code;

use super::{CheckError, Verdict, ensure};
use crate::client::{Client, connect};
use crate::context::Context;

/// Checks a worker started with a token (a fresh one when the harness can start it, else
/// the running worker with the run's token).
pub async fn auth(ctx: &Context) -> Result<Verdict, CheckError> {
    let generated = format!("e2e-{}", std::process::id());
    let token = ctx.config.token.clone().unwrap_or(generated);
    let fresh = ctx
        .spawn_fresh(
            &[(backend_common::server::AUTH_TOKEN_ENV, token.as_str())],
            Some(&token),
        )
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
    for (who, client_token) in [("no token", None), ("a wrong token", Some("wrong-token"))] {
        let mut client = connect(&addr, client_token).await?;
        refused(&mut client, who).await?;
    }
    let mut client = connect(&addr, Some(&token)).await?;
    client.health(HealthMessage {}).await.map_err(|status| {
        CheckError::Failed(format!("Health with the right token failed: {status}"))
    })?;
    Ok(Verdict::Passed)
}

/// Every kind of call from `client` is UNAUTHENTICATED.
async fn refused(client: &mut Client, who: &str) -> Result<(), CheckError> {
    let probe = PredictOptions {
        prompt: "Hi".into(),
        tokens: 1,
        ..Default::default()
    };
    let results = [
        ("Health", client.health(HealthMessage {}).await.err()),
        ("Status", client.status(HealthMessage {}).await.err()),
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
