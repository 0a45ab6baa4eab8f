//! `bad_input`: requests a worker must refuse with the right status code, after which it
//! keeps serving.
use backend_common::pb::{HealthMessage, Message, PredictOptions};
use tonic::Code;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::client::Client;
use crate::context::Context;

/// Predict before LoadModel, malformed Tools and ToolChoice, negative Tokens, a prompt
/// longer than the context and an unknown parser name.
pub async fn bad_input(ctx: &Context) -> Result<Verdict, CheckError> {
    before_load(ctx).await?;
    let mut client = ctx.loaded_client().await?;
    let chat = |tools: &str, choice: &str| PredictOptions {
        use_tokenizer_template: true,
        messages: vec![Message {
            role: "user".into(),
            content: "Hi".into(),
            ..Default::default()
        }],
        tools: tools.into(),
        tool_choice: choice.into(),
        tokens: 4,
        ..Default::default()
    };
    let raw = |prompt: String, tokens: i32| PredictOptions {
        prompt,
        tokens,
        ..Default::default()
    };
    let long_prompt = "word ".repeat(ctx.config.ctx_size as usize * 4);
    let cases = [
        (
            "malformed Tools JSON",
            chat("[{not json", ""),
            &[Code::InvalidArgument][..],
        ),
        (
            "malformed ToolChoice JSON",
            chat("", "{\"type\":"),
            &[Code::InvalidArgument],
        ),
        (
            "negative Tokens",
            raw("Hi".into(), -5),
            &[Code::InvalidArgument],
        ),
        (
            "a prompt longer than the context",
            raw(long_prompt, 4),
            &[Code::InvalidArgument, Code::OutOfRange],
        ),
    ];
    for (what, request, codes) in cases {
        expect_code(what, client.predict(request).await.err(), codes)?;
    }
    let mut options = ctx.config.options.clone();
    options.push("tool_parser:no_such_parser".into());
    let request = ctx.model_options(&options, false).await?;
    let load = client.load_model(request).await;
    match load {
        Ok(reply) if reply.get_ref().success => {
            ctx.forget_load().await;
            return Err(CheckError::Failed(
                "LoadModel with tool_parser:no_such_parser succeeded; an explicitly asked parser that does not exist must be refused".into(),
            ));
        }
        Ok(_) => {}
        Err(status) => expect_code(
            "an unknown parser name",
            Some(status),
            &[Code::InvalidArgument],
        )?,
    }
    still_serving(ctx, &mut client).await
}

/// Predict on a worker that has no model is FAILED_PRECONDITION: a fresh worker when the
/// harness can start one, else the running one after Free.
async fn before_load(ctx: &Context) -> Result<(), CheckError> {
    let probe = PredictOptions {
        prompt: ctx.config.prompt.clone(),
        tokens: 4,
        ..Default::default()
    };
    let env = super::lifecycle::token_env(ctx);
    match ctx.spawn_fresh(&env, ctx.config.token.as_deref()).await? {
        Some(fresh) => {
            let mut client = fresh.client(ctx.config.token.as_deref()).await?;
            expect_code(
                "Predict before LoadModel",
                client.predict(probe).await.err(),
                &[Code::FailedPrecondition],
            )
        }
        None => {
            let mut client = ctx.loaded_client().await?;
            client.free(HealthMessage {}).await.rpc("Free")?;
            ctx.forget_load().await;
            expect_code(
                "Predict after Free",
                client.predict(probe).await.err(),
                &[Code::FailedPrecondition],
            )
        }
    }
}

fn expect_code(what: &str, error: Option<tonic::Status>, codes: &[Code]) -> Result<(), CheckError> {
    let code = error.as_ref().map(|s| s.code());
    ensure!(
        code.is_some_and(|c| codes.contains(&c)),
        "{what} must be refused with {codes:?}; got {}",
        error.map_or("success".to_string(), |s| s.to_string())
    );
    Ok(())
}

/// Health answers and the loaded model answers.
async fn still_serving(ctx: &Context, client: &mut Client) -> Result<Verdict, CheckError> {
    // Whether the message is "OK" is the `health` check's business; here it must answer.
    client.health(HealthMessage {}).await.rpc("Health")?;
    let mut client = ctx.loaded_client().await?;
    let reply = client.predict(ctx.predict_options()).await.rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "after the bad requests Predict returns nothing"
    );
    Ok(Verdict::Passed)
}
