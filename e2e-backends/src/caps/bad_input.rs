//! `bad_input`: requests a worker must refuse with the right status code, after which it
//! keeps serving.
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions, Reply};
use tonic::{Code, Response, Status, Streaming};

use super::{CheckError, Rpc, Verdict, ensure};
use crate::client::Client;
use crate::context::Context;
use crate::testing::{chat, raw};

/// Requests before LoadModel, malformed Tools and ToolChoice, a tool without a name, negative
/// Tokens, a prompt longer than the context, and loads of a missing file, of a file that is
/// not a model, with an unknown parser name, and with MMProj, DraftModel or LoraAdapter files
/// that do not exist; none of them costs the loaded model.
pub async fn bad_input(ctx: &Context) -> Result<Verdict, CheckError> {
    before_load(ctx).await?;
    let mut client = ctx.loaded_client().await?;
    let with_tools = |tools: &str, choice: &str| PredictOptions {
        tools: tools.into(),
        tool_choice: choice.into(),
        ..chat("Hi", 4)
    };
    let long_prompt = "word ".repeat(ctx.config.ctx_size as usize * 4);
    let cases = [
        (
            "malformed Tools JSON",
            with_tools("[{not json", ""),
            Code::InvalidArgument,
            "",
        ),
        (
            "malformed ToolChoice JSON",
            with_tools("", "{\"type\":"),
            Code::InvalidArgument,
            "",
        ),
        ("negative Tokens", raw("Hi", -5), Code::InvalidArgument, ""),
        (
            "a tool without a function name",
            with_tools(r#"[{"type":"function","function":{"parameters":{}}}]"#, ""),
            Code::InvalidArgument,
            "name",
        ),
        (
            "a prompt longer than the context",
            raw(&long_prompt, 4),
            Code::InvalidArgument,
            "context",
        ),
    ];
    for (what, request, code, names) in cases {
        expect_code(what, client.predict(request).await.err(), code, names)?;
    }
    bad_loads(ctx, &mut client).await?;
    still_serving(ctx, &mut client).await
}

/// LoadModel of a missing file is NOT_FOUND and of a file that is not a model (where the
/// worker sees this machine's files) INVALID_ARGUMENT, each naming the file; an unknown
/// parser name is refused, naming the parsers there are.
async fn bad_loads(ctx: &Context, client: &mut Client) -> Result<(), CheckError> {
    let missing = "/nonexistent/e2e-backends/model.gguf";
    let mut request = ctx.model_options(&ctx.config.options, false).await?;
    request.model_file = missing.into();
    let load = client.load_model(request).await;
    expect_code(
        "a missing model file",
        refusal(load),
        Code::NotFound,
        missing,
    )?;
    if ctx.runs_here() {
        let file = std::env::temp_dir().join(format!("not-a-model-{}.gguf", std::process::id()));
        std::fs::write(&file, b"hello, not a model")
            .map_err(|e| CheckError::Setup(format!("{}: {e}", file.display())))?;
        let mut request = ctx.model_options(&ctx.config.options, false).await?;
        request.model_file = file.display().to_string();
        let load = client.load_model(request).await;
        let _ = std::fs::remove_file(&file);
        expect_code(
            "a file that is not a model",
            refusal(load),
            Code::InvalidArgument,
            &file.display().to_string(),
        )?;
    }
    let mut options = ctx.config.options.clone();
    options.push("tool_parser:no_such_parser".into());
    let request = ctx.model_options(&options, false).await?;
    let load = client.load_model(request).await;
    if let Ok(reply) = &load
        && reply.get_ref().success
    {
        ctx.forget_load().await;
        return Err(CheckError::Failed(
            "LoadModel with tool_parser:no_such_parser succeeded; an explicitly asked parser that does not exist must be refused".into(),
        ));
    }
    expect_code(
        "an unknown parser name",
        refusal(load),
        Code::InvalidArgument,
        "hermes",
    )?;
    // A worker may lack the feature (INVALID_ARGUMENT) or look for the file (NOT_FOUND), but
    // it must never load as if the field were not there.
    let base = ctx.model_options(&ctx.config.options, false).await?;
    for (field, request) in [
        (
            "MMProj",
            ModelOptions {
                mm_proj: "/nonexistent/e2e-backends/mmproj.gguf".into(),
                ..base.clone()
            },
        ),
        (
            "DraftModel",
            ModelOptions {
                draft_model: "/nonexistent/e2e-backends/draft.gguf".into(),
                ..base.clone()
            },
        ),
        (
            "LoraAdapter",
            ModelOptions {
                lora_adapter: "/nonexistent/e2e-backends/adapter.gguf".into(),
                ..base.clone()
            },
        ),
    ] {
        let load = client.load_model(request).await;
        if let Ok(reply) = &load
            && reply.get_ref().success
        {
            ctx.forget_load().await;
            return Err(CheckError::Failed(format!(
                "LoadModel with a {field} that does not exist succeeded; it must be refused (NOT_FOUND, or INVALID_ARGUMENT when the feature is missing)"
            )));
        }
        let status = refusal(load);
        ensure!(
            status.as_ref().is_some_and(|s| {
                matches!(s.code(), Code::NotFound | Code::InvalidArgument)
                    && (s.message().contains(field) || s.message().contains("/nonexistent/"))
            }),
            "LoadModel with a missing {field} must be NOT_FOUND or INVALID_ARGUMENT naming it; got {status:?}"
        );
    }
    Ok(())
}

/// A refused LoadModel as a status: `success=false` counts as INVALID_ARGUMENT with its
/// message; `None` when the load succeeded.
fn refusal(load: Result<Response<backend_common::pb::Result>, Status>) -> Option<Status> {
    match load {
        Ok(reply) if reply.get_ref().success => None,
        Ok(reply) => Some(Status::invalid_argument(reply.into_inner().message)),
        Err(status) => Some(status),
    }
}

/// Predict, PredictStream and TokenizeString on a worker that has no model are
/// FAILED_PRECONDITION, saying to call LoadModel: on a fresh worker when the harness can
/// start one, else on the running one after Free.
async fn before_load(ctx: &Context) -> Result<(), CheckError> {
    let probe = PredictOptions {
        prompt: ctx.config.prompt.clone(),
        tokens: 4,
        ..Default::default()
    };
    let env = super::lifecycle::token_env(ctx);
    let fresh = ctx.spawn_fresh(&env, ctx.config.token.as_deref()).await?;
    let (mut client, when) = match &fresh {
        Some(fresh) => (
            fresh.client(ctx.config.token.as_deref()).await?,
            "before LoadModel",
        ),
        None => {
            let mut client = ctx.loaded_client().await?;
            client.free(HealthMessage {}).await.rpc("Free")?;
            ctx.forget_load().await;
            (client, "after Free")
        }
    };
    let predict = client.predict(probe.clone()).await.err();
    expect_code(
        &format!("Predict {when}"),
        predict,
        Code::FailedPrecondition,
        "LoadModel",
    )?;
    let stream = stream_error(client.predict_stream(probe.clone()).await).await;
    expect_code(
        &format!("PredictStream {when}"),
        stream,
        Code::FailedPrecondition,
        "",
    )?;
    let tokenize = client.tokenize_string(probe).await.err();
    expect_code(
        &format!("TokenizeString {when}"),
        tokenize,
        Code::FailedPrecondition,
        "",
    )
}

/// The error of a stream: of the call, or else of its first message.
async fn stream_error(stream: Result<Response<Streaming<Reply>>, Status>) -> Option<Status> {
    match stream {
        Err(status) => Some(status),
        Ok(stream) => stream.into_inner().message().await.err(),
    }
}

/// Fails unless `error` has `code` and its message names `names` (when not empty).
fn expect_code(
    what: &str,
    error: Option<Status>,
    code: Code,
    names: &str,
) -> Result<(), CheckError> {
    ensure!(
        error
            .as_ref()
            .is_some_and(|s| s.code() == code && s.message().contains(names)),
        "{what} must be refused with {code:?}{}; got {}",
        if names.is_empty() {
            String::new()
        } else {
            format!(", saying `{names}`")
        },
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
