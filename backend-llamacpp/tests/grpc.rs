//! What is particular to the llama.cpp worker, end to end: the real binary, real gRPC over
//! loopback, the real SmolLM2-135M and Qwen2.5-Coder-0.5B models (fetched by
//! `scripts/fetch-models.sh`). What every worker must do is checked by the conformance suite
//! in `contract.rs`.
use std::time::Duration;

use backend_common::pb::{self, EmbeddingLayout, ModelOptions, PredictOptions, Reply};
use e2e_backends::client::Client;
use e2e_backends::testing::{
    self, QWEN, SMOLLM2, TWO_TOOLS, collect, load, load_options, model, raw, single_call,
};
use e2e_backends::worker::Worker;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_backend-llamacpp");

/// A fresh worker without a model.
async fn start() -> Worker {
    testing::start(BINARY.as_ref()).await
}

/// A fresh worker with test model `name` loaded.
async fn started_with(name: &str) -> (Worker, Client) {
    testing::started_with(BINARY.as_ref(), load_options(name)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_running_streams_cleanly() {
    let (worker, mut client) = started_with(SMOLLM2).await;
    let mut stream = client
        .predict_stream(raw("Write a long story:", 0))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    assert!(!first.message.is_empty());
    let pid = worker.pid().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on the worker this test started.
    // SAFETY: kill(2) on the worker this test spawned and has not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut last = first;
    while let Some(reply) = stream
        .message()
        .await
        .expect("the stream ends without an error")
    {
        last = reply;
    }
    assert!(last.tokens > 0, "the final chunk carries the counts");
    let status = worker.stop(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn bad_address_flag_is_a_clear_error() {
    let out = std::process::Command::new(BINARY)
        .arg("--addr")
        .arg("localhost")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOST:PORT"), "{err}");
    let out = std::process::Command::new(BINARY)
        .arg("--addr=127.0.0.1:99999")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_backend_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let worker = start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", worker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"backend.Backend"), "{names:?}");
}

const WEATHER_TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location", "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The city and country, e.g. Paris, France"}}, "required": ["location"]}}}]"#;

fn weather_request() -> PredictOptions {
    testing::weather_request(WEATHER_TOOLS, "\"auto\"")
}

#[test]
fn render_prints_the_exact_prompt_without_loading_weights() {
    let request = std::env::temp_dir().join(format!("render-{}.json", std::process::id()));
    std::fs::write(
        &request,
        format!(r#"{{"Messages": [{{"role": "user", "content": "What's the weather like in Paris, France?"}}], "Tools": {WEATHER_TOOLS}}}"#),
    )
    .unwrap();
    let out = std::process::Command::new(BINARY)
        .args(["render", "--model"])
        .arg(model(QWEN))
        .arg("--request")
        .arg(&request)
        .output()
        .unwrap();
    std::fs::remove_file(&request).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prompt = String::from_utf8(out.stdout).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt}");
    assert!(
        prompt
            .contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
        "Python-style tojson: {prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>user\nWhat's the weather like in Paris, France?<|im_end|>\n<|im_start|>assistant\n"), "{prompt}");
}

/// The `logprobs` entries of a reply, in order.
fn logprob_entries(reply: &Reply) -> Vec<serde_json::Value> {
    if reply.logprobs.is_empty() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&reply.logprobs).unwrap();
    json["content"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn context_shift_goes_past_the_end_of_the_context() {
    let worker = start().await;
    let mut client = worker.client(None).await.unwrap();
    let with = |shift: bool| {
        let mut options = load_options(SMOLLM2);
        options.context_size = 64;
        options.options = vec!["parallel:1".into(), format!("context_shift:{shift}")];
        options
    };
    let mut req = raw("Once upon a time, in a small village by the sea,", 150);
    req.ignore_eos = true;
    load(&mut client, with(false)).await;
    let stopped = client.predict(req.clone()).await.unwrap().into_inner();
    assert!(
        stopped.tokens < 64,
        "without context_shift the context's end stops it: {}",
        stopped.tokens
    );
    load(&mut client, with(true)).await;
    let shifted = client.predict(req.clone()).await.unwrap().into_inner();
    assert_eq!(shifted.tokens, 150, "shifted twice and went on");
    let text = String::from_utf8_lossy(&shifted.message);
    assert!(
        text.split_whitespace().count() > 40,
        "real text after the shifts: {text:?}"
    );
    let streamed = collect(&mut client, req).await;
    assert_eq!(streamed.last().unwrap().tokens, 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_reuse_evaluates_only_the_new_part_of_a_prompt() {
    let worker = start().await;
    let mut client = worker.client(None).await.unwrap();
    let with = |options: &[&str]| ModelOptions {
        options: options.iter().map(|o| o.to_string()).collect(),
        ..load_options(SMOLLM2)
    };
    let history = "The history of the printing press begins in the fifteenth century, when movable type changed how books were made and read. ".repeat(14);
    let first = raw(&history, 8);
    let mut second = raw(&format!("{history}In short, the press"), 1);
    second.logprobs = 1;
    second.top_logprobs = 5;

    load(&mut client, with(&["parallel:1"])).await;
    let fresh = client.predict(second.clone()).await.unwrap().into_inner();

    let options = ["parallel:1", "cache_reuse:16"];
    load(&mut client, with(&options)).await;
    let cold = client.predict(first).await.unwrap().into_inner();
    let warm = client.predict(second).await.unwrap().into_inner();
    assert!(cold.prompt_tokens > 300, "{}", cold.prompt_tokens);
    assert_eq!(warm.prompt_tokens, fresh.prompt_tokens);
    // How much time the reuse saves is a benchmark's business (the tests beside this one
    // share the cores: a fresh CI run measured warm at 0.6 of cold); it is printed only.
    eprintln!(
        "cache reuse: warm {:.0} ms vs cold {:.0} ms",
        warm.timing_prompt_processing, cold.timing_prompt_processing
    );
    // The reused cache predicts as a fresh evaluation of the whole prompt does: the same
    // next-token distribution up to float noise (a small batch takes other kernels than a
    // large one, so a near tie may still flip a greedy pick, as in llama-server).
    let top = |reply: &Reply| -> Vec<(i64, f64)> {
        logprob_entries(reply)[0]["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_i64().unwrap(), t["logprob"].as_f64().unwrap()))
            .collect()
    };
    let (warm_top, fresh_top) = (top(&warm), top(&fresh));
    let shared: Vec<_> = warm_top
        .iter()
        .filter_map(|(id, lp)| {
            let other = fresh_top.iter().find(|(i, _)| i == id)?.1;
            Some((lp - other).abs())
        })
        .collect();
    assert!(
        shared.len() >= 4 && shared.iter().all(|d| *d < 0.1),
        "warm {warm_top:?} vs fresh {fresh_top:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prompt_cache_is_on_unless_turned_off() {
    let worker = start().await;
    let mut client = worker.client(None).await.unwrap();
    let system = "You are a careful assistant who answers questions about the history of printing, in short sentences. ".repeat(4);
    let mut reused = async |options: &[&str]| -> u64 {
        load(
            &mut client,
            ModelOptions {
                options: options.iter().map(|o| o.to_string()).collect(),
                ..load_options(SMOLLM2)
            },
        )
        .await;
        // A conversation's second turn repeats its first: the same long start.
        for turn in [
            "When was movable type invented?",
            "Who printed the first Bible?",
        ] {
            client
                .predict(raw(&format!("{system}{turn}"), 2))
                .await
                .unwrap();
        }
        let status = client
            .status(pb::HealthMessage {})
            .await
            .unwrap()
            .into_inner();
        status.memory.unwrap().breakdown["prefix_cache_hit_tokens"]
    };
    let by_default = reused(&["parallel:1"]).await;
    assert!(
        by_default >= 64,
        "the second turn reused {by_default} tokens"
    );
    assert_eq!(reused(&["parallel:1", "cache_reuse:0"]).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn grammar_triggers_make_the_grammar_lazy() {
    testing::grammar_triggers_make_the_grammar_lazy(BINARY.as_ref()).await;
}

/// The weather question with two tools on offer and the given tool choice.
fn forced_request(tool_choice: &str) -> PredictOptions {
    PredictOptions {
        tools: TWO_TOOLS.into(),
        tool_choice: tool_choice.into(),
        tokens: 60,
        ..weather_request()
    }
}

fn assert_weather_arguments(arguments: &serde_json::Value) {
    let object = arguments.as_object().expect("an object");
    assert!(
        object["location"].as_str().is_some_and(|l| !l.is_empty()),
        "{arguments}"
    );
    assert!(
        object.keys().all(|k| k == "location" || k == "unit"),
        "only the schema's properties: {arguments}"
    );
    if let Some(unit) = object.get("unit") {
        assert!(unit == "celsius" || unit == "fahrenheit", "{arguments}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_tool_choice_makes_qwen_call_a_tool() {
    let (_worker, mut client) = started_with(QWEN).await;
    let named = r#"{"type":"function","function":{"name":"get_weather"}}"#;
    for choice in ["\"required\"", named] {
        let unary = client
            .predict(forced_request(choice))
            .await
            .unwrap()
            .into_inner();
        let (name, arguments) = single_call(std::slice::from_ref(&unary));
        assert_eq!(name, "get_weather", "{choice}");
        assert_weather_arguments(&arguments);
        assert!(
            unary.message.is_empty(),
            "no markup or prose in the content: {:?}",
            String::from_utf8_lossy(&unary.message)
        );
        let streamed = collect(&mut client, forced_request(choice)).await;
        assert!(
            streamed.iter().all(|r| r.message.is_empty()),
            "{streamed:?}"
        );
        assert_eq!(single_call(&streamed), (name, arguments), "{choice}");
    }
    // Forcing overrides the model's own preference for get_weather here.
    let time = client
        .predict(forced_request(
            r#"{"type":"function","function":{"name":"get_time"}}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    let (name, arguments) = single_call(std::slice::from_ref(&time));
    assert_eq!(name, "get_time");
    assert!(
        arguments["zone"].as_str().is_some_and(|z| !z.is_empty()),
        "{arguments}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_tool_choice_constrains_a_call_once_the_model_opens_one() {
    let (_worker, mut client) = started_with(QWEN).await;
    testing::auto_tool_choice_constrains_a_call_once_qwen_opens_one(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_tool_choice_errors_name_the_problem() {
    let (worker, mut client) = started_with(QWEN).await;
    let mut with_grammar = forced_request("\"required\"");
    with_grammar.grammar = "root ::= \"x\"".into();
    let e = client.predict(with_grammar).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("Grammar"), "{e}");
    let mut kimi = load_options(QWEN);
    kimi.options = vec!["tool_parser:kimi_k2".into()];
    assert!(client.load_model(kimi).await.unwrap().into_inner().success);
    let e = client
        .predict(forced_request("\"required\""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("kimi_k2"), "{e}");
    drop(worker);
    let (_worker, mut smol) = started_with(SMOLLM2).await;
    let e = smol
        .predict_stream(forced_request("\"required\""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("tool_parser"), "{e}");
    let reply = smol.predict(raw("Hello", 3)).await.unwrap().into_inner();
    assert_eq!(reply.tokens, 3, "the model keeps serving");
}
#[tokio::test(flavor = "multi_thread")]
async fn embeddings_need_the_flag_and_are_normalised() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let text = |t: &str| PredictOptions {
        embeddings: t.into(),
        ..Default::default()
    };
    let e = client.embedding(text("hello")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("Embeddings"), "{e}");

    let mut options = load_options(SMOLLM2);
    options.embeddings = true;
    load(&mut client, options).await;
    let embed = |req: PredictOptions| {
        let mut client = client.clone();
        async move { client.embedding(req).await.unwrap().into_inner().embeddings }
    };
    let cat = embed(text("The cat sat on the mat.")).await;
    assert_eq!(cat.len(), 576, "SmolLM2-135M's n_embd");
    let norm: f32 = cat.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "normalised: {norm}");
    let prompt = embed(PredictOptions {
        prompt: "The cat sat on the mat.".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(prompt, cat, "Prompt is used when Embeddings is empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn pooling_none_gives_a_vector_per_token_and_pooling_picks_the_layout() {
    let worker = start().await;
    let mut client = worker.client(None).await.unwrap();
    let with_pooling = |pooling: &str| ModelOptions {
        embeddings: true,
        options: vec![format!("pooling:{pooling}")],
        ..load_options(SMOLLM2)
    };
    let text = PredictOptions {
        embeddings: "The cat sat on the mat.".into(),
        ..Default::default()
    };
    let rank = client.load_model(with_pooling("rank")).await.unwrap_err();
    assert_eq!(rank.code(), Code::InvalidArgument);
    assert!(rank.message().contains("pooling:rank"), "{rank}");

    load(&mut client, with_pooling("none")).await;
    let per_token = client.embedding(text.clone()).await.unwrap().into_inner();
    assert_eq!(per_token.layout, EmbeddingLayout::PerToken as i32);
    assert_eq!(per_token.dim, 576, "SmolLM2-135M's n_embd");
    assert!(per_token.tokens > 1);
    assert_eq!(per_token.tokens, per_token.prompt_tokens);
    assert_eq!(
        per_token.embeddings.len(),
        (per_token.tokens * per_token.dim) as usize
    );
    let rows: Vec<&[f32]> = per_token.embeddings.chunks(576).collect();
    for row in &rows {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "each row normalised: {norm}");
    }
    assert_ne!(rows[0], rows[1], "each token has its own vector");

    load(&mut client, with_pooling("mean")).await;
    let pooled = client.embedding(text).await.unwrap().into_inner();
    assert_eq!(pooled.layout, EmbeddingLayout::Final as i32);
    assert_eq!((pooled.tokens, pooled.dim), (1, 576));
    assert_eq!(pooled.prompt_tokens, per_token.prompt_tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn grammar_reads_json_schemas_and_says_where_gbnf_breaks() {
    let (_worker, mut client) = started_with(QWEN).await;
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "rank": {"enum": ["first", "second"]}
        },
        "required": ["city", "rank"],
        "additionalProperties": false
    });
    let request = PredictOptions {
        grammar: schema.to_string(),
        ..testing::chat("Name a city as JSON.", 60)
    };
    let reply = client.predict(request).await.unwrap().into_inner();
    let output = String::from_utf8_lossy(&reply.message);
    let value: serde_json::Value =
        serde_json::from_str(&output).unwrap_or_else(|e| panic!("{output:?}: {e}"));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 2, "{value}");
    assert!(
        object["city"]
            .as_str()
            .is_some_and(|c| c.chars().count() <= 20)
    );
    assert!(
        object["rank"] == "first" || object["rank"] == "second",
        "{value}"
    );
    for (grammar, says) in [
        ("root ::= \"a\"\nitem ::= (\"b\"", "line 2"),
        ("%llguidance {}\nstart: \"a\"", "candle worker"),
        ("{\"type\": ", "JSON schema"),
    ] {
        let e = client
            .predict(PredictOptions {
                grammar: grammar.into(),
                ..raw("Hello", 4)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{grammar:?}: {e}");
        assert!(e.message().contains(says), "{grammar:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_fields_name_the_devices_there_are() {
    let worker = start().await;
    let mut client = worker.client(None).await.unwrap();
    // LocalAI's usual request for a GPU machine: served on what there is.
    load(
        &mut client,
        ModelOptions {
            ngpu_layers: 9_999_999,
            main_gpu: "0".into(),
            ..load_options(SMOLLM2)
        },
    )
    .await;
    let reply = client.predict(raw("Hello", 3)).await.unwrap().into_inner();
    assert_eq!(reply.tokens, 3);
    let e = client
        .load_model(ModelOptions {
            options: vec!["device:NoSuchGPU9".into()],
            ..load_options(SMOLLM2)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("no device `NoSuchGPU9`") && e.message().contains("CPU"),
        "{e}"
    );
    let reply = client.predict(raw("Hello", 3)).await.unwrap().into_inner();
    assert_eq!(reply.tokens, 3, "the loaded model keeps serving");
}
