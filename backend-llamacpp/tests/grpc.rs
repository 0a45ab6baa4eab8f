//! The llama.cpp worker end to end: the real binary, real gRPC over loopback, the real
//! SmolLM2-135M and Qwen2.5-Coder-0.5B models (fetched by `scripts/fetch-models.sh`).
use std::time::Duration;

use backend_common::pb::status_response::State;
use backend_common::pb::{
    GrammarTrigger, HealthMessage, Message, ModelOptions, PredictOptions, Reply,
};
use e2e_backends::client::Client;
use e2e_backends::testing::{collect, model, raw, text};
use e2e_backends::worker::Worker;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_backend-llamacpp");
const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

async fn start(env: &[(&str, &str)], token: Option<&str>) -> Worker {
    Worker::start(BINARY.as_ref(), env, token, Duration::from_secs(30))
        .await
        .expect("worker starts and answers Health")
}

fn load_options(name: &str) -> ModelOptions {
    ModelOptions {
        model: name.into(),
        model_file: model(name).display().to_string(),
        context_size: 1024,
        threads: 2,
        ..Default::default()
    }
}

/// Loads `options` and asserts it worked.
async fn load(client: &mut Client, options: ModelOptions) {
    let loaded = client.load_model(options).await.unwrap().into_inner();
    assert!(loaded.success, "{}", loaded.message);
}

async fn started_with(name: &str) -> (Worker, Client) {
    let worker = start(&[], None).await;
    let mut client = worker.client(None).await.unwrap();
    let loaded = client
        .load_model(load_options(name))
        .await
        .unwrap()
        .into_inner();
    assert!(loaded.success, "{}", loaded.message);
    (worker, client)
}

fn chat(user: &str) -> PredictOptions {
    PredictOptions {
        use_tokenizer_template: true,
        messages: vec![Message {
            role: "user".into(),
            content: user.into(),
            ..Default::default()
        }],
        tokens: 24,
        temperature: 0.0,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_status_before_and_after_load() {
    let worker = start(&[], None).await;
    let mut client = worker.client(None).await.unwrap();
    let health = client.health(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(health.message, b"OK");
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(status.state, State::Uninitialized as i32);
    assert!(status.memory.unwrap().total > 0);
    client.load_model(load_options(SMOLLM2)).await.unwrap();
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(status.state, State::Ready as i32);
    let memory = status.memory.unwrap();
    assert!(memory.breakdown["weights"] > 50_000_000, "{memory:?}");
    assert!(memory.breakdown.contains_key("kv_cache"));
}

#[tokio::test(flavor = "multi_thread")]
async fn predict_and_tokenize_before_load_are_failed_precondition() {
    let worker = start(&[], None).await;
    let mut client = worker.client(None).await.unwrap();
    let e = client.predict(raw("Hi", 4)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("LoadModel"), "{e}");
    let e = client.predict_stream(raw("Hi", 4)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = client.tokenize_string(raw("Hi", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_token_is_required_on_every_call() {
    let worker = start(&[("LOCALAI_GRPC_AUTH_TOKEN", "s3cret")], Some("s3cret")).await;
    let mut anonymous = worker.client(None).await.unwrap();
    let e = anonymous.health(HealthMessage {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = anonymous
        .load_model(load_options(SMOLLM2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = worker.client(Some("s3cre")).await.unwrap();
    assert_eq!(
        wrong.status(HealthMessage {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut client = worker.client(Some("s3cret")).await.unwrap();
    assert_eq!(
        client
            .health(HealthMessage {})
            .await
            .unwrap()
            .into_inner()
            .message,
        b"OK"
    );
    load(&mut client, load_options(SMOLLM2)).await;
    assert!(
        !client
            .predict(raw("Hello", 3))
            .await
            .unwrap()
            .into_inner()
            .message
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_token_auth_is_off() {
    let worker = start(&[("LOCALAI_GRPC_AUTH_TOKEN", "")], None).await;
    let mut client = worker.client(None).await.unwrap();
    assert_eq!(
        client
            .health(HealthMessage {})
            .await
            .unwrap()
            .into_inner()
            .message,
        b"OK"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn predict_counts_tokens_and_is_deterministic_when_greedy() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let a = client
        .predict(raw("The capital of France is", 12))
        .await
        .unwrap()
        .into_inner();
    let b = client
        .predict(raw("The capital of France is", 12))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.message.is_empty());
    assert_eq!(a.message, b.message, "greedy decoding repeats");
    assert_eq!(a.tokens, 12);
    assert!(a.prompt_tokens >= 5, "{}", a.prompt_tokens);
    assert!(a.timing_token_generation > 0.0 && a.timing_prompt_processing > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_equals_unary_and_ends_with_counts() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let unary = client
        .predict(raw("Once upon a time", 16))
        .await
        .unwrap()
        .into_inner();
    let replies = collect(&mut client, raw("Once upon a time", 16)).await;
    assert!(replies.len() > 2, "tokens arrive as separate chunks");
    assert_eq!(text(&replies).as_bytes(), unary.message.as_slice());
    let last = replies.last().unwrap();
    assert_eq!(
        (last.tokens, last.prompt_tokens),
        (unary.tokens, unary.prompt_tokens)
    );
    assert!(
        replies[..replies.len() - 1].iter().all(|r| r.tokens == 0),
        "counts only on the last chunk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_through_the_model_template() {
    let (_worker, mut client) = started_with(QWEN).await;
    let reply = client
        .predict(chat(
            "What is the capital of France? Answer in one sentence.",
        ))
        .await
        .unwrap()
        .into_inner();
    let answer = String::from_utf8_lossy(&reply.message);
    assert!(answer.contains("Paris"), "{answer}");
    assert!(
        !answer.contains("<|im_end|>") && !answer.contains("<|im_start|>"),
        "{answer}"
    );
    assert_eq!(reply.chat_deltas.len(), 1);
    assert_eq!(reply.chat_deltas[0].content, answer);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_strings_are_never_emitted() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let free = client
        .predict(raw("1, 2, 3, 4, 5,", 16))
        .await
        .unwrap()
        .into_inner();
    let free = String::from_utf8(free.message).unwrap();
    let stop = free
        .split(',')
        .nth(2)
        .map(|s| format!("{},", s))
        .unwrap_or_else(|| free.clone());
    let mut req = raw("1, 2, 3, 4, 5,", 16);
    req.stop_prompts = vec![stop.clone()];
    let stopped = collect(&mut client, req).await;
    let stopped = text(&stopped);
    assert!(!stopped.contains(&stop), "{stopped:?} contains {stop:?}");
    assert!(free.starts_with(&stopped), "{free:?} / {stopped:?}");
    assert!(stopped.len() < free.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenize_fills_tokens_and_length() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let t = client
        .tokenize_string(raw("Hello world, hello world", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.length as usize, t.tokens.len());
    assert!(t.length >= 4, "{t:?}");
    let again = client
        .tokenize_string(raw("Hello world, hello world", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t, again);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_loads_name_the_problem_and_keep_the_model() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut missing = load_options(SMOLLM2);
    missing.model_file = "/nonexistent/model.gguf".into();
    let e = client.load_model(missing).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("/nonexistent/model.gguf"), "{e}");
    let not_gguf = std::env::temp_dir().join(format!("not-a-model-{}.gguf", std::process::id()));
    std::fs::write(&not_gguf, b"hello, not a model").unwrap();
    let mut bad = load_options(SMOLLM2);
    bad.model_file = not_gguf.display().to_string();
    let e = client.load_model(bad).await.unwrap_err();
    std::fs::remove_file(&not_gguf).unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let mut parser = load_options(SMOLLM2);
    parser.options = vec!["tool_parser:no_such_parser".into()];
    let e = client.load_model(parser).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("hermes"),
        "names the known parsers: {e}"
    );
    // None of these cost the loaded model.
    assert!(
        !client
            .predict(raw("Hello", 3))
            .await
            .unwrap()
            .into_inner()
            .message
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_argument_and_the_model_keeps_serving() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut negative = raw("Hi", -5);
    negative.tokens = -5;
    assert_eq!(
        client.predict(negative).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut grammar = raw("Hi", 5);
    grammar.grammar = "root ::= (".into();
    assert_eq!(
        client.predict(grammar).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut tools = chat("Hi");
    tools.tools = "[{not json".into();
    assert_eq!(
        client.predict(tools).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut choice = chat("Hi");
    choice.tool_choice = "{\"type\":".into();
    assert_eq!(
        client.predict(choice).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let long = "word ".repeat(2000);
    let e = client.predict(raw(&long, 5)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("context"), "{e}");
    assert!(
        !client
            .predict(raw("Hello", 3))
            .await
            .unwrap()
            .into_inner()
            .message
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn free_releases_and_load_works_again() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    assert!(
        client
            .free(HealthMessage {})
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(status.state, State::Uninitialized as i32);
    assert_eq!(
        client.predict(raw("Hi", 3)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    load(&mut client, load_options(SMOLLM2)).await;
    assert!(
        !client
            .predict(raw("Hello", 3))
            .await
            .unwrap()
            .into_inner()
            .message
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_all_complete() {
    let (worker, _client) = started_with(SMOLLM2).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut client = worker.client(None).await.unwrap();
        tasks.push(tokio::spawn(async move {
            collect(&mut client, raw(&format!("Story number {i}:"), 12)).await
        }));
    }
    for task in tasks {
        let replies = task.await.unwrap();
        assert_eq!(replies.last().unwrap().tokens, 12);
        assert!(!text(&replies).is_empty());
    }
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

    let worker = start(&[], None).await;
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
    PredictOptions {
        use_tokenizer_template: true,
        messages: vec![
            Message {
                role: "system".into(),
                content: "You are a helpful assistant with access to tools.".into(),
                ..Default::default()
            },
            Message {
                role: "user".into(),
                content: "What's the weather like in Paris, France?".into(),
                ..Default::default()
            },
        ],
        tools: WEATHER_TOOLS.into(),
        tool_choice: "\"auto\"".into(),
        tokens: 200,
        temperature: 0.0,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qwen_calls_get_weather_unary_and_streamed() {
    let (_worker, mut client) = started_with(QWEN).await;
    let unary = client
        .predict(weather_request())
        .await
        .unwrap()
        .into_inner();
    let calls: Vec<_> = unary
        .chat_deltas
        .iter()
        .flat_map(|d| &d.tool_calls)
        .collect();
    assert_eq!(calls.len(), 1, "{unary:?}");
    assert_eq!(calls[0].name, "get_weather");
    assert!(!calls[0].id.is_empty());
    let unary_args: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
    assert!(unary_args.to_string().contains("Paris"), "{unary_args}");

    let replies = collect(&mut client, weather_request()).await;
    let (mut names, mut ids, mut arguments, mut indices) =
        (Vec::new(), Vec::new(), String::new(), Vec::new());
    for reply in &replies {
        let visible = String::from_utf8_lossy(&reply.message);
        assert!(
            !visible.contains("tool_call") && !visible.contains("\"name\""),
            "markup leaked: {visible:?}"
        );
        for delta in &reply.chat_deltas {
            assert!(
                !delta.content.contains("get_weather"),
                "the call leaked into content"
            );
            for call in &delta.tool_calls {
                indices.push(call.index);
                if !call.name.is_empty() {
                    names.push(call.name.clone());
                }
                if !call.id.is_empty() {
                    ids.push(call.id.clone());
                }
                arguments.push_str(&call.arguments);
            }
        }
    }
    assert_eq!(
        names,
        vec!["get_weather".to_string()],
        "the name is sent once, whole"
    );
    assert_eq!(ids.len(), 1, "the id is sent once");
    assert!(
        indices.iter().all(|&i| i == 0),
        "one stable index: {indices:?}"
    );
    let streamed_args: serde_json::Value =
        serde_json::from_str(&arguments).expect("fragments join into JSON");
    assert_eq!(streamed_args, unary_args);
    let last = replies.last().unwrap();
    assert!(last.tokens > 0 && last.prompt_tokens > 0);
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
async fn cancelled_stream_frees_the_worker() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut stream = client
        .predict_stream(raw("Write a very long story about a dragon:", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some(), "a first chunk");
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(status.state, State::Busy as i32, "still generating");
    drop(stream);
    // Without cancellation this request would run to the end of its 1024-token context,
    // about 40 s at SmolLM2's speed here.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.status(HealthMessage {}).await.unwrap().into_inner();
        if status.state == State::Ready as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?} 5 s after the client left",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = tokio::time::timeout(Duration::from_secs(10), client.predict(raw("Hello", 8)))
        .await
        .expect("the next request is served promptly")
        .unwrap()
        .into_inner();
    assert_eq!(next.tokens, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn logprobs_cover_every_token_with_sorted_alternatives() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut req = raw("The capital of France is", 8);
    req.logprobs = 1;
    req.top_logprobs = 3;
    let reply = client.predict(req.clone()).await.unwrap().into_inner();
    let entries = logprob_entries(&reply);
    assert_eq!(entries.len(), reply.tokens as usize, "{entries:?}");
    let mut pieces = Vec::new();
    for entry in &entries {
        let logprob = entry["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{entry}");
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        assert!(values.iter().all(|&v| v <= 0.0), "{values:?}");
        assert_eq!(entry["id"], top[0]["id"], "greedy picks the best: {entry}");
        assert_eq!(logprob, values[0]);
        pieces.extend(
            entry["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(pieces, reply.message, "entries spell the answer");
    let streamed: usize = collect(&mut client, req)
        .await
        .iter()
        .map(|r| logprob_entries(r).len())
        .sum();
    assert_eq!(
        streamed,
        entries.len(),
        "the stream carries the same entries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_seed_samples_the_same_text() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let sampled = |seed: i32| {
        let mut req = raw("Once upon a time", 24);
        req.temperature = 0.9;
        req.seed = seed;
        req
    };
    let a = client.predict(sampled(1234)).await.unwrap().into_inner();
    let b = client.predict(sampled(1234)).await.unwrap().into_inner();
    assert!(!a.message.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&a.message),
        String::from_utf8_lossy(&b.message)
    );
    let streamed = collect(&mut client, sampled(1234)).await;
    assert_eq!(text(&streamed).as_bytes(), a.message.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn logit_bias_can_ban_the_greedy_first_token() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut req = raw("The capital of France is", 6);
    req.logprobs = 1;
    let free = client.predict(req.clone()).await.unwrap().into_inner();
    let first = logprob_entries(&free)[0]["id"].as_i64().unwrap();
    req.logit_bias = format!("{{\"{first}\": -100}}");
    let biased = client.predict(req.clone()).await.unwrap().into_inner();
    let biased_first = logprob_entries(&biased)[0]["id"].as_i64().unwrap();
    assert_ne!(biased_first, first);
    assert_ne!(biased.message, free.message);
    req.logit_bias = "{\"99999999\": 5}".into();
    let e = client.predict(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("LogitBias"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ignore_eos_generates_exactly_the_token_limit() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut req = chat("Reply with one word: yes or no. Is water wet?");
    req.tokens = 48;
    let free = client.predict(req.clone()).await.unwrap().into_inner();
    assert!(free.tokens < 48, "the model stops by itself: {free:?}");
    req.ignore_eos = true;
    let forced = client.predict(req.clone()).await.unwrap().into_inner();
    assert_eq!(forced.tokens, 48);
    let streamed = collect(&mut client, req).await;
    assert_eq!(streamed.last().unwrap().tokens, 48);
}

#[tokio::test(flavor = "multi_thread")]
async fn context_shift_goes_past_the_end_of_the_context() {
    let worker = start(&[], None).await;
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
    let worker = start(&[], None).await;
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
    // Only the few new tokens were evaluated: a fraction of the cold prompt's time.
    assert!(
        warm.timing_prompt_processing * 4.0 < cold.timing_prompt_processing,
        "warm {} ms vs cold {} ms",
        warm.timing_prompt_processing,
        cold.timing_prompt_processing
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
async fn grammar_triggers_make_the_grammar_lazy() {
    let worker = start(&[], None).await;
    let mut client = worker.client(None).await.unwrap();
    let mut req = raw("Once upon a time, in a small village by the sea,", 24);
    req.grammar = r#"root ::= "DONE" [.]"#.into();
    let with = |triggers: &[&str]| ModelOptions {
        grammar_triggers: triggers
            .iter()
            .map(|w| GrammarTrigger {
                word: w.to_string(),
            })
            .collect(),
        ..load_options(SMOLLM2)
    };
    load(&mut client, with(&[])).await;
    let strict = client.predict(req.clone()).await.unwrap().into_inner();
    assert_eq!(String::from_utf8_lossy(&strict.message), "DONE.");
    // With a trigger the story never contains, the grammar never starts: free text.
    load(&mut client, with(&["DONE"])).await;
    let lazy = client.predict(req.clone()).await.unwrap().into_inner();
    let text = String::from_utf8_lossy(&lazy.message);
    assert!(!text.contains("DONE") && lazy.tokens == 24, "{text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grammar_constrains_the_output_to_json() {
    let (_worker, mut client) = started_with(SMOLLM2).await;
    let mut req = chat("Describe a person as JSON with a name and an age.");
    req.tokens = 100;
    req.grammar = r#"root ::= "{" ws "\"name\":" ws name "," ws "\"age\":" ws age ws "}"
name ::= "\"" [A-Za-z ]{1,20} "\""
age ::= [1-9] [0-9]?
ws ::= " "?"#
        .into();
    for reply in [
        client.predict(req.clone()).await.unwrap().into_inner(),
        Reply {
            message: text(&collect(&mut client, req.clone()).await).into_bytes(),
            ..Default::default()
        },
    ] {
        let answer = String::from_utf8_lossy(&reply.message);
        let value: serde_json::Value = serde_json::from_str(&answer).expect("valid JSON");
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 2, "{answer}");
        assert!(!object["name"].as_str().unwrap().is_empty(), "{answer}");
        assert!(
            (1..100).contains(&object["age"].as_u64().unwrap()),
            "{answer}"
        );
    }
}

const TWO_TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location", "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The city and country, e.g. Paris, France"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}, {"type": "function", "function": {"name": "get_time", "description": "Get the current time in a time zone", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}]"#;

/// The weather question with two tools on offer and the given tool choice.
fn forced_request(tool_choice: &str) -> PredictOptions {
    PredictOptions {
        tools: TWO_TOOLS.into(),
        tool_choice: tool_choice.into(),
        tokens: 60,
        ..weather_request()
    }
}

/// The one call of a reply, merged from its chat deltas as LocalAI merges them.
fn single_call(replies: &[Reply]) -> (String, serde_json::Value) {
    let (mut names, mut arguments, mut indices) = (Vec::new(), String::new(), Vec::new());
    for delta in replies.iter().flat_map(|r| &r.chat_deltas) {
        for call in &delta.tool_calls {
            indices.push(call.index);
            if !call.name.is_empty() {
                names.push(call.name.clone());
            }
            arguments.push_str(&call.arguments);
        }
    }
    assert_eq!(names.len(), 1, "one call, named once: {replies:?}");
    assert!(indices.iter().all(|&i| i == 0), "{indices:?}");
    let arguments = serde_json::from_str(&arguments)
        .unwrap_or_else(|e| panic!("arguments {arguments:?} are not JSON: {e}"));
    (names.remove(0), arguments)
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

/// A tool whose schema Qwen does not follow on its own (it writes "Paris" or "Paris, France"
/// for the location): a location of three capitals.
const STRICT_TOOL: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location", "parameters": {"type": "object", "properties": {"location": {"type": "string", "pattern": "^[A-Z]{3}$"}, "unit": {"type": "string", "enum": ["kelvin"]}}, "required": ["location", "unit"]}}}]"#;

#[tokio::test(flavor = "multi_thread")]
async fn auto_tool_choice_constrains_a_call_once_the_model_opens_one() {
    let (_worker, mut client) = started_with(QWEN).await;
    let request = PredictOptions {
        tools: STRICT_TOOL.into(),
        ..weather_request()
    };
    let unary = client.predict(request.clone()).await.unwrap().into_inner();
    let (name, arguments) = single_call(std::slice::from_ref(&unary));
    assert_eq!(name, "get_weather");
    // The lazy grammar took over where the call began: the schema holds.
    assert_eq!(arguments["unit"], "kelvin", "{arguments}");
    let location = arguments["location"].as_str().unwrap_or_default();
    assert!(
        location.len() == 3 && location.chars().all(|c| c.is_ascii_uppercase()),
        "{arguments}"
    );
    let streamed = collect(&mut client, request).await;
    assert_eq!(single_call(&streamed), (name, arguments));
    // Before any call the model stays free: a question that needs no tool gets prose.
    let prose = client
        .predict(PredictOptions {
            messages: vec![Message {
                role: "user".into(),
                content: "Write one sentence about the history of the Eiffel Tower.".into(),
                ..Default::default()
            }],
            tools: STRICT_TOOL.into(),
            tokens: 40,
            ..weather_request()
        })
        .await
        .unwrap()
        .into_inner();
    let content = String::from_utf8_lossy(&prose.message);
    assert!(content.contains("Eiffel"), "{content:?}");
    assert!(
        prose.chat_deltas.iter().all(|d| d.tool_calls.is_empty()),
        "{prose:?}"
    );
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

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_pooled_normalised_and_meaningful() {
    let worker = start(&[], None).await;
    let mut client = worker.client(None).await.unwrap();
    load(&mut client, load_options(SMOLLM2)).await;
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
    assert_eq!(
        embed(text("The cat sat on the mat.")).await,
        cat,
        "deterministic"
    );
    let prompt = embed(PredictOptions {
        prompt: "The cat sat on the mat.".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(prompt, cat, "Prompt is used when Embeddings is empty");
    let kitten = embed(text("A kitten was sitting on the rug.")).await;
    let finance = embed(text("Quarterly revenue grew by eight percent.")).await;
    assert_ne!(kitten, cat);
    assert!(
        cosine(&cat, &kitten) > cosine(&cat, &finance),
        "similar {} vs unrelated {}",
        cosine(&cat, &kitten),
        cosine(&cat, &finance)
    );
    let mut client = client.clone();
    let e = client.embedding(text("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // EmbeddingTokens (token ids, as LocalAI forwards an integer `input`) embed those ids:
    // the text's own ids give the text's embedding.
    let ids = client
        .tokenize_string(PredictOptions {
            prompt: "The cat sat on the mat.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let by_ids = embed(PredictOptions {
        embedding_tokens: ids.clone(),
        embeddings: "ignored when ids are sent".into(),
        ..Default::default()
    })
    .await;
    assert!(cosine(&by_ids, &cat) > 0.9999, "{}", cosine(&by_ids, &cat));
    for bad in [vec![-1], vec![ids[0], 1 << 30]] {
        let e = client
            .embedding(PredictOptions {
                embedding_tokens: bad,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("EmbeddingTokens"), "{e}");
    }
    // Generation still works on a model loaded for embeddings.
    assert_eq!(
        client
            .predict(raw("Hello", 4))
            .await
            .unwrap()
            .into_inner()
            .tokens,
        4
    );
}
