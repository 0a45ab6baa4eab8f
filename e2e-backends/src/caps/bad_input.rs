//! `bad_input`: requests a worker must refuse with the right status code, after which it
//! keeps serving.
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions, Reply};
use tonic::{Code, Response, Status, Streaming};

use super::{CheckError, Rpc, Verdict, ensure};
use crate::client::Client;
use crate::context::Context;
use crate::testing::{chat, raw, tiny_gguf};

/// Requests before LoadModel; Predict requests with malformed Tools and ToolChoice, a tool
/// without a name, out-of-range sampling fields, a Grammar nested too deep, a prompt longer
/// than the context, a message over the size limit; and loads of a missing file, of a file
/// that is not a model, of a truncated GGUF, with an unknown parser name, with MMProj,
/// DraftModel or LoraAdapter files that do not exist, with an impossible context size and
/// with a million threads. None of them costs the loaded model: Health answers, and a greedy
/// Predict answers as it did before them.
pub async fn bad_input(ctx: &Context) -> Result<Verdict, CheckError> {
    before_load(ctx).await?;
    let mut client = ctx.loaded_client().await?;
    let before = greedy(&mut client, ctx).await?;
    let with_tools = |tools: &str, choice: &str| PredictOptions {
        tools: tools.into(),
        tool_choice: choice.into(),
        ..chat("Hi", 4)
    };
    let sampled = |edit: fn(&mut PredictOptions)| {
        let mut request = raw("Hi", 4);
        edit(&mut request);
        request
    };
    let deep_grammar = format!("root ::= {}\"a\"{}", "(".repeat(5000), ")".repeat(5000));
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
        (
            "a Grammar nested 5,000 groups deep",
            PredictOptions {
                grammar: deep_grammar,
                ..raw("Hi", 4)
            },
            Code::InvalidArgument,
            "Grammar",
        ),
        (
            "a Temperature that is not a number",
            sampled(|r| r.temperature = f32::NAN),
            Code::InvalidArgument,
            "Temperature",
        ),
        (
            "a negative Temperature",
            sampled(|r| r.temperature = -1.0),
            Code::InvalidArgument,
            "Temperature",
        ),
        (
            "TopP over 1",
            sampled(|r| r.top_p = 1.5),
            Code::InvalidArgument,
            "TopP",
        ),
        (
            "a negative MinP",
            sampled(|r| r.min_p = -0.5),
            Code::InvalidArgument,
            "MinP",
        ),
        (
            "TypicalP over 1",
            sampled(|r| r.typical_p = 2.0),
            Code::InvalidArgument,
            "TypicalP",
        ),
        (
            "a negative TopK",
            sampled(|r| r.top_k = -3),
            Code::InvalidArgument,
            "TopK",
        ),
        (
            "a negative Repeat",
            sampled(|r| r.repeat = -1),
            Code::InvalidArgument,
            "Repeat",
        ),
        (
            "a negative Penalty",
            sampled(|r| r.penalty = -1.0),
            Code::InvalidArgument,
            "Penalty",
        ),
        (
            "an infinite PresencePenalty",
            sampled(|r| r.presence_penalty = f32::INFINITY),
            Code::InvalidArgument,
            "PresencePenalty",
        ),
        (
            "a FrequencyPenalty that is not a number",
            sampled(|r| r.frequency_penalty = f32::NAN),
            Code::InvalidArgument,
            "FrequencyPenalty",
        ),
        (
            "LogitBias that is not JSON",
            sampled(|r| r.logit_bias = "{15043: -100".into()),
            Code::InvalidArgument,
            "LogitBias",
        ),
        (
            "LogitBias that is a JSON array",
            sampled(|r| r.logit_bias = "[1, 2]".into()),
            Code::InvalidArgument,
            "LogitBias",
        ),
        (
            "LogitBias for a token outside the vocabulary",
            sampled(|r| r.logit_bias = r#"{"99999999": -100}"#.into()),
            Code::InvalidArgument,
            "LogitBias",
        ),
        (
            "TopLogprobs over 20",
            sampled(|r| {
                r.logprobs = 1;
                r.top_logprobs = 21;
            }),
            Code::InvalidArgument,
            "TopLogprobs",
        ),
        (
            "negative Logprobs",
            sampled(|r| r.logprobs = -1),
            Code::InvalidArgument,
            "Logprobs",
        ),
        (
            "an empty Prompt without UseTokenizerTemplate",
            raw("", 4),
            Code::InvalidArgument,
            "Prompt",
        ),
        (
            "a TopP that is not a number",
            sampled(|r| r.top_p = f32::NAN),
            Code::InvalidArgument,
            "TopP",
        ),
        (
            "MinP over 1",
            sampled(|r| r.min_p = 1.5),
            Code::InvalidArgument,
            "MinP",
        ),
        (
            "a tool whose name is a number",
            with_tools(r#"[{"type":"function","function":{"name":5}}]"#, ""),
            Code::InvalidArgument,
            "name",
        ),
        (
            "a ToolChoice word that is not a choice",
            with_tools("", "sometimes"),
            Code::InvalidArgument,
            "sometimes",
        ),
        (
            "negative TopLogprobs",
            sampled(|r| {
                r.logprobs = 1;
                r.top_logprobs = -1;
            }),
            Code::InvalidArgument,
            "TopLogprobs",
        ),
        (
            "an image for a text-only model",
            sampled(|r| r.images = vec!["aGVsbG8=".into()]),
            Code::InvalidArgument,
            "Images",
        ),
        (
            "a video for a text-only model",
            sampled(|r| r.videos = vec!["aGVsbG8=".into()]),
            Code::InvalidArgument,
            "Videos",
        ),
        (
            "audio for a text-only model",
            sampled(|r| r.audios = vec!["aGVsbG8=".into()]),
            Code::InvalidArgument,
            "Audios",
        ),
        (
            "Tools that are a JSON object, not a list",
            with_tools(r#"{"type":"function","function":{"name":"f"}}"#, ""),
            Code::InvalidArgument,
            "array",
        ),
        (
            "a ToolChoice naming a function Tools do not offer",
            with_tools(
                r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#,
                r#"{"type":"function","function":{"name":"get_time"}}"#,
            ),
            Code::InvalidArgument,
            "get_time",
        ),
        (
            "a Grammar and a forced ToolChoice together",
            PredictOptions {
                grammar: "root ::= \"a\"".into(),
                ..with_tools(
                    r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#,
                    "required",
                )
            },
            Code::InvalidArgument,
            "Grammar",
        ),
    ];
    for (what, request, code, names) in cases {
        expect_code(what, client.predict(request).await.err(), code, names)?;
    }
    over_the_size_limit(&client).await?;
    bad_loads(ctx, &mut client).await?;
    bad_load_fields(ctx, &mut client).await?;
    impossible_sizes(ctx, &mut client).await?;
    still_serving(ctx, &mut client, &before).await?;
    threads_beyond_the_cores(ctx, &mut client).await
}

/// LoadModel fields and options with values no worker can take are INVALID_ARGUMENT naming
/// the field, checked before the loaded model is released.
async fn bad_load_fields(ctx: &Context, client: &mut Client) -> Result<(), CheckError> {
    let base = ctx.model_options(&ctx.config.options, false).await?;
    let with_option = |option: &str| {
        let mut request = base.clone();
        request.options.push(option.into());
        request
    };
    let cases = [
        (
            "a negative ContextSize",
            ModelOptions {
                context_size: -1,
                ..base.clone()
            },
            "ContextSize",
        ),
        (
            "negative Threads",
            ModelOptions {
                threads: -2,
                ..base.clone()
            },
            "Threads",
        ),
        (
            "a negative NBatch",
            ModelOptions {
                n_batch: -8,
                ..base.clone()
            },
            "NBatch",
        ),
        (
            "a negative TensorParallelSize",
            ModelOptions {
                tensor_parallel_size: -1,
                ..base.clone()
            },
            "TensorParallelSize",
        ),
        (
            "an unknown FlashAttention value",
            ModelOptions {
                flash_attention: "sometimes".into(),
                ..base.clone()
            },
            "FlashAttention",
        ),
        (
            "an unknown CacheTypeKey",
            ModelOptions {
                cache_type_key: "q3".into(),
                ..base.clone()
            },
            "CacheTypeKey",
        ),
        (
            "an unknown CacheTypeValue",
            ModelOptions {
                cache_type_value: "fp8x".into(),
                ..base.clone()
            },
            "CacheTypeValue",
        ),
        (
            "several LoRA adapters",
            ModelOptions {
                lora_adapters: vec!["/nonexistent/a.gguf".into(), "/nonexistent/b.gguf".into()],
                ..base.clone()
            },
            "LoraAdapters",
        ),
        (
            "neither ModelFile nor Model",
            ModelOptions {
                model_file: String::new(),
                model: String::new(),
                ..base.clone()
            },
            "ModelFile",
        ),
        ("an unknown dtype", with_option("dtype:float8"), "dtype"),
        (
            "gpu_memory_utilization over 1",
            with_option("gpu_memory_utilization:1.5"),
            "gpu_memory_utilization",
        ),
        (
            "a negative max_model_len",
            with_option("max_model_len:-5"),
            "max_model_len",
        ),
        (
            "an unknown reasoning parser",
            with_option("reasoning_parser:no_such_parser"),
            "no_such_parser",
        ),
        (
            "enforce_eager that is not a boolean",
            with_option("enforce_eager:maybe"),
            "enforce_eager",
        ),
    ];
    for (what, request, names) in cases {
        let load = client.load_model(request).await;
        if loaded(&load) {
            ctx.forget_load().await;
        }
        expect_code(
            &format!("LoadModel with {what}"),
            refusal(load),
            Code::InvalidArgument,
            names,
        )?;
    }
    Ok(())
}

/// A context of a billion tokens is refused at once (RESOURCE_EXHAUSTED, or INVALID_ARGUMENT
/// beyond what the model was trained on), naming the number, instead of trying to allocate it.
async fn impossible_sizes(ctx: &Context, client: &mut Client) -> Result<(), CheckError> {
    let request = ModelOptions {
        context_size: 1_000_000_000,
        ..ctx.model_options(&ctx.config.options, false).await?
    };
    let started = std::time::Instant::now();
    let load = client.load_model(request).await;
    let took = started.elapsed();
    if loaded(&load) {
        ctx.forget_load().await;
    }
    let status = refusal(load);
    ensure!(
        status.as_ref().is_some_and(|s| {
            matches!(s.code(), Code::ResourceExhausted | Code::InvalidArgument)
                && s.message().contains("1000000000")
        }),
        "LoadModel with ContextSize 1000000000 must be RESOURCE_EXHAUSTED or INVALID_ARGUMENT naming the size; got {status:?}"
    );
    ensure!(
        took < std::time::Duration::from_secs(10),
        "LoadModel with ContextSize 1000000000 took {took:?} to be refused; the numbers tell at once"
    );
    Ok(())
}

/// LoadModel with a million threads loads (with as many as the machine has) and answers: no
/// worker may die starting that many. (Its answer may differ from the configured load's, whose
/// thread count differs.)
async fn threads_beyond_the_cores(
    ctx: &Context,
    client: &mut Client,
) -> Result<Verdict, CheckError> {
    let request = ModelOptions {
        threads: 1_000_000,
        ..ctx.model_options(&ctx.config.options, false).await?
    };
    ctx.forget_load().await;
    client
        .load_model(request)
        .await
        .rpc("LoadModel with Threads 1000000")?;
    let answer = greedy(client, ctx).await?;
    ensure!(
        !answer.is_empty(),
        "loaded with Threads 1000000, Predict returns nothing"
    );
    Ok(Verdict::Passed)
}

/// True when a LoadModel succeeded (the harness must then forget what it had loaded).
fn loaded(load: &Result<Response<backend_common::pb::Result>, Status>) -> bool {
    load.as_ref().is_ok_and(|reply| reply.get_ref().success)
}

/// The loaded model's greedy answer to the configured prompt.
async fn greedy(client: &mut Client, ctx: &Context) -> Result<Vec<u8>, CheckError> {
    let request = PredictOptions {
        temperature: 0.0,
        top_k: 1,
        ..ctx.predict_options()
    };
    Ok(client.predict(request).await.rpc("Predict")?.message)
}

/// A Predict request a little over the 50 MiB message limit is RESOURCE_EXHAUSTED (what gRPC's
/// own servers answer), sent by a client that allows it out.
async fn over_the_size_limit(client: &Client) -> Result<(), CheckError> {
    let limit = backend_common::server::MESSAGE_LIMIT;
    let mut big = client.clone().max_encoding_message_size(2 * limit);
    let request = raw(&"a".repeat(limit + 1024), 4);
    expect_code(
        "a message over the 50 MiB limit",
        big.predict(request).await.err(),
        Code::ResourceExhausted,
        "limit",
    )
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
        let model = std::path::PathBuf::from(&request_model_file(ctx).await?);
        if model.is_file() && model.extension().is_some_and(|e| e == "gguf") {
            let cut = std::env::temp_dir().join(format!("truncated-{}.gguf", std::process::id()));
            truncated_copy(&model, &cut)
                .map_err(|e| CheckError::Setup(format!("{}: {e}", cut.display())))?;
            let mut request = ctx.model_options(&ctx.config.options, false).await?;
            request.model_file = cut.display().to_string();
            let load = client.load_model(request).await;
            let _ = std::fs::remove_file(&cut);
            expect_code(
                "a truncated GGUF",
                refusal(load),
                Code::InvalidArgument,
                "truncated",
            )?;
        }
        // A GGUF whose header is sound but whose architecture no engine knows: refused while
        // loading at the latest, after which the model loaded before must serve again.
        let alien = std::env::temp_dir().join(format!("alien-{}.gguf", std::process::id()));
        std::fs::write(&alien, tiny_gguf("e2e_no_such_architecture", 4096))
            .map_err(|e| CheckError::Setup(format!("{}: {e}", alien.display())))?;
        let mut request = ctx.model_options(&ctx.config.options, false).await?;
        request.model_file = alien.display().to_string();
        let load = client.load_model(request).await;
        let _ = std::fs::remove_file(&alien);
        if loaded(&load) {
            ctx.forget_load().await;
        }
        let status = refusal(load);
        ensure!(
            status.as_ref().is_some_and(|s| matches!(
                s.code(),
                Code::InvalidArgument | Code::FailedPrecondition | Code::Unimplemented
            )),
            "LoadModel of a GGUF of an unknown architecture must be refused; got {status:?}"
        );
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

/// The configured model's file as LoadModel is sent it.
async fn request_model_file(ctx: &Context) -> Result<String, CheckError> {
    Ok(ctx
        .model_options(&ctx.config.options, false)
        .await?
        .model_file)
}

/// Copies the first half of `model` to `to`: a download cut short.
fn truncated_copy(model: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use std::io::Read;
    let from = std::fs::File::open(model)?;
    let half = from.metadata()?.len() / 2;
    std::io::copy(&mut from.take(half), &mut std::fs::File::create(to)?)?;
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
            // A worker may close its connections after Free (see `lifecycle::free`).
            (ctx.client().await?, "after Free")
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

/// Health answers, and the loaded model gives the greedy answer it gave `before`.
async fn still_serving(
    ctx: &Context,
    client: &mut Client,
    before: &[u8],
) -> Result<Verdict, CheckError> {
    // Whether the message is "OK" is the `health` check's business; here it must answer.
    client.health(HealthMessage {}).await.rpc("Health")?;
    let mut client = ctx.loaded_client().await?;
    let after = greedy(&mut client, ctx).await?;
    ensure!(
        after == before,
        "after the bad requests the greedy answer changed: {:?} before, {:?} after",
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(&after)
    );
    Ok(Verdict::Passed)
}
