//! The candle worker end to end: the real binary, real gRPC over loopback, the real
//! SmolLM2-135M and Qwen2.5-Coder-0.5B GGUFs (fetched by `scripts/fetch-models.sh`) and the
//! Hugging Face folders exported from them.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, Message, ModelOptions, PredictOptions};
use e2e_backends::client::Client;
use e2e_backends::testing::{collect, model, raw, text};
use e2e_backends::worker::Worker;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_backend-vllm-rs");
const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

async fn start(binary: &Path) -> Worker {
    Worker::start(binary, &[], None, Duration::from_secs(30))
        .await
        .expect("worker starts and answers Health")
}

fn load_options(name: &str, options: &[&str]) -> ModelOptions {
    ModelOptions {
        model: name.into(),
        model_file: model(name).display().to_string(),
        context_size: 1024,
        threads: 2,
        options: options.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    }
}

async fn started_with(name: &str, options: &[&str]) -> (Worker, Client) {
    start_loaded(load_options(name, options)).await
}

async fn start_loaded(options: ModelOptions) -> (Worker, Client) {
    let worker = start(BINARY.as_ref()).await;
    let mut client = worker.client(None).await.unwrap();
    let loaded = client.load_model(options).await.unwrap().into_inner();
    assert!(loaded.success, "{}", loaded.message);
    (worker, client)
}

fn chat(user: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        use_tokenizer_template: true,
        messages: vec![Message {
            role: "user".into(),
            content: user.into(),
            ..Default::default()
        }],
        tokens,
        temperature: 0.0,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qwen_answers_paris_like_llamacpp() {
    let (_worker, mut client) = started_with(QWEN, &[]).await;
    let reply = client
        .predict(chat("What is the capital of France?", 32))
        .await
        .unwrap()
        .into_inner();
    let answer = String::from_utf8_lossy(&reply.message);
    eprintln!(
        "answer {answer:?}: {} prompt tokens in {:.0} ms, {} tokens in {:.0} ms",
        reply.prompt_tokens,
        reply.timing_prompt_processing,
        reply.tokens,
        reply.timing_token_generation
    );
    // llama.cpp's greedy answer on the same GGUF (shared/models/README.md).
    assert_eq!(answer, "The capital of France is Paris.");
    assert_eq!(reply.chat_deltas.len(), 1);
    assert_eq!(reply.chat_deltas[0].content, answer);
    assert!(reply.prompt_tokens > 10 && reply.tokens > 5, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_is_deterministic_and_stream_equals_unary() {
    let (_worker, mut client) = started_with(SMOLLM2, &[]).await;
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
    assert!(a.timing_token_generation > 0.0 && a.timing_prompt_processing > 0.0);
    let replies = collect(&mut client, raw("The capital of France is", 12)).await;
    assert!(replies.len() > 2, "tokens arrive as separate chunks");
    assert_eq!(text(&replies).as_bytes(), a.message.as_slice());
    let last = replies.last().unwrap();
    assert_eq!(
        (last.tokens, last.prompt_tokens),
        (a.tokens, a.prompt_tokens)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_controls() {
    let (_worker, mut client) = started_with(SMOLLM2, &[]).await;
    let seeded = |seed| PredictOptions {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed,
        ..raw("Once upon a time", 16)
    };
    let a = client.predict(seeded(42)).await.unwrap().into_inner();
    let b = client.predict(seeded(42)).await.unwrap().into_inner();
    assert_eq!(a.message, b.message, "same seed, same text");

    let mut logprobs = raw("Once upon a time", 4);
    logprobs.logprobs = 1;
    logprobs.top_logprobs = 3;
    let reply = client.predict(logprobs).await.unwrap().into_inner();
    let json: serde_json::Value = serde_json::from_slice(&reply.logprobs).unwrap();
    let entries = json["content"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    let first = &entries[0];
    let top = first["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(
        top[0]["id"], first["id"],
        "greedy picks the most likely token"
    );
    assert!(first["logprob"].as_f64().unwrap() <= 0.0);

    let greedy_first = first["id"].as_i64().unwrap();
    let mut banned = raw("Once upon a time", 4);
    banned.logprobs = 1;
    banned.logit_bias = format!("{{\"{greedy_first}\": -100}}");
    let reply = client.predict(banned).await.unwrap().into_inner();
    let json: serde_json::Value = serde_json::from_slice(&reply.logprobs).unwrap();
    assert_ne!(json["content"][0]["id"].as_i64().unwrap(), greedy_first);

    let mut endless = chat("Say hi.", 40);
    endless.ignore_eos = true;
    let reply = client.predict(endless).await.unwrap().into_inner();
    assert_eq!(reply.tokens, 40, "IgnoreEOS runs to the token limit");
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
async fn qwen_streams_a_get_weather_tool_call() {
    let (_worker, mut client) = started_with(QWEN, &["tool_parser:hermes"]).await;
    let replies = collect(&mut client, weather_request()).await;
    let (mut names, mut ids, mut arguments) = (Vec::new(), Vec::new(), String::new());
    for reply in &replies {
        let visible = String::from_utf8_lossy(&reply.message);
        assert!(!visible.contains("\"name\""), "markup leaked: {visible:?}");
        for delta in &reply.chat_deltas {
            assert!(
                !delta.content.contains("get_weather"),
                "the call leaked into content"
            );
            for call in &delta.tool_calls {
                assert_eq!(call.index, 0);
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
    assert_eq!(names, vec!["get_weather".to_string()], "{replies:?}");
    assert_eq!(ids.len(), 1, "the id is sent once");
    let args: serde_json::Value =
        serde_json::from_str(&arguments).expect("fragments join into JSON");
    assert!(args.to_string().contains("Paris"), "{args}");
    let last = replies.last().unwrap();
    assert!(last.tokens > 0 && last.prompt_tokens > 0);
}

/// The llama.cpp worker built in the same target directory.
fn llamacpp_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = dir.join(format!("backend-llamacpp{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: build it first (cargo build -p backend-llamacpp)",
        binary.display()
    );
    binary
}

const TOKENIZER_STRINGS: &[&str] = &[
    "Hello world",
    " Hello  world ",
    "The year 2024 had 366 days; 1234567 is big.",
    "I'm sure they've said we'll go, don't you?",
    "naïve café — 東京 🚀 emoji",
    "line one\nline two\n\n\ttabbed\r\nend",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "   leading spaces and trailing   ",
    "<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call>",
];

async fn token_ids(client: &mut Client) -> Vec<Vec<i32>> {
    let mut out = Vec::new();
    for s in TOKENIZER_STRINGS {
        let t = client
            .tokenize_string(raw(s, 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.length as usize, t.tokens.len());
        out.push(t.tokens);
    }
    out
}

/// Load options for the Hugging Face folder exported from GGUF `name` (f32 weights).
fn folder_options(name: &str, options: &[&str]) -> ModelOptions {
    let mut o = load_options(name, options);
    o.model_file = common::exported(name, candle_core::DType::F32)
        .display()
        .to_string();
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenize_equals_llamacpp() {
    let llamacpp = start(&llamacpp_binary()).await;
    let mut reference = llamacpp.client(None).await.unwrap();
    let ours = start(BINARY.as_ref()).await;
    let mut client = ours.client(None).await.unwrap();
    for name in [SMOLLM2, QWEN] {
        let loaded = reference
            .load_model(load_options(name, &[]))
            .await
            .unwrap()
            .into_inner();
        assert!(loaded.success);
        let expected = token_ids(&mut reference).await;
        // The GGUF, then the folder exported from it (its own tokenizer.json).
        for (form, options) in [
            ("GGUF", load_options(name, &[])),
            ("folder", folder_options(name, &[])),
        ] {
            let loaded = client.load_model(options).await.unwrap().into_inner();
            assert!(loaded.success, "{}", loaded.message);
            let got = token_ids(&mut client).await;
            for ((s, e), g) in TOKENIZER_STRINGS.iter().zip(&expected).zip(&got) {
                assert_eq!(g, e, "{name} {form}: {s:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hugging_face_folder_answers_like_the_gguf() {
    let (_worker, mut client) = start_loaded(folder_options(QWEN, &[])).await;
    let reply = client
        .predict(chat("What is the capital of France?", 12))
        .await
        .unwrap()
        .into_inner();
    let answer = String::from_utf8_lossy(&reply.message);
    assert_eq!(answer, "The capital of France is Paris.");
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    let weights = status.memory.unwrap().breakdown["weights"];
    // f32 weights: four bytes for each of Qwen's ~494M parameters.
    assert!(weights > 1_900_000_000, "{weights}");
}

/// Runs the worker binary with `args` (a subcommand).
fn run_cli<'a>(args: impl IntoIterator<Item = &'a std::ffi::OsStr>) -> std::process::Output {
    std::process::Command::new(BINARY)
        .args(args)
        .output()
        .unwrap()
}

/// The standard output of a run that must have succeeded.
fn succeeded(out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn export_hf_and_render_from_the_command_line() {
    let scratch = std::env::temp_dir().join(format!("vllm-rs-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let smollm2 = model(SMOLLM2);
    succeeded(run_cli([
        "export-hf".as_ref(),
        "--dtype".as_ref(),
        "f16".as_ref(),
        smollm2.as_os_str(),
        scratch.as_os_str(),
    ]));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(scratch.join(file).is_file(), "{file} not written");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scratch.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["torch_dtype"], "float16");

    // The folder renders the same prompt as the GGUF it came from.
    let request = scratch.join("request.json");
    std::fs::write(
        &request,
        r#"{"Messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#,
    )
    .unwrap();
    let render = |model: &Path| {
        succeeded(run_cli([
            "render".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--request".as_ref(),
            request.as_os_str(),
        ]))
    };
    let from_gguf = render(&model(SMOLLM2));
    assert!(
        from_gguf.contains("<|im_start|>user\nHi<|im_end|>"),
        "{from_gguf}"
    );
    assert_eq!(render(&scratch), from_gguf);

    let not_gguf = scratch.join("notes.gguf");
    std::fs::write(&not_gguf, b"not a model").unwrap();
    let out = run_cli([
        "export-hf".as_ref(),
        not_gguf.as_os_str(),
        scratch.join("out").as_os_str(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.gguf") && stderr.contains("GGUF"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn free_releases_and_load_works_again() {
    let (_worker, mut client) = started_with(SMOLLM2, &[]).await;
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(status.state, State::Ready as i32);
    let memory = status.memory.unwrap();
    assert!(memory.breakdown["weights"] > 50_000_000, "{memory:?}");
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
    assert_eq!(
        client
            .tokenize_string(raw("Hi", 0))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let loaded = client
        .load_model(load_options(SMOLLM2, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(loaded.success);
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

/// A GGUF with a valid header for an architecture this backend does not implement.
fn foreign_gguf(path: &Path) {
    use candle_core::quantized::gguf_file::{Value, write};
    let mut file = std::fs::File::create(path).unwrap();
    let arch = Value::String("gemma3".into());
    write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_loads_name_the_problem_and_keep_the_model() {
    let (_worker, mut client) = started_with(SMOLLM2, &[]).await;
    let mut missing = load_options(SMOLLM2, &[]);
    missing.model_file = "/nonexistent/folder/model.gguf".into();
    let e = client.load_model(missing).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(
        e.message().contains("/nonexistent/folder/model.gguf"),
        "{e}"
    );

    let scratch = std::env::temp_dir().join(format!("vllm-rs-bad-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let not_gguf = scratch.join("notes.gguf");
    std::fs::write(&not_gguf, b"hello, not a model").unwrap();
    let foreign = scratch.join("gemma.gguf");
    foreign_gguf(&foreign);
    // A folder with a config.json but no weights or tokenizer.
    let folder = scratch.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("config.json"),
        r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 4, "rms_norm_eps": 1e-6}"#,
    )
    .unwrap();
    for (path, code, needle) in [
        (&not_gguf, Code::InvalidArgument, "GGUF"),
        (&foreign, Code::InvalidArgument, "gemma3"),
        (&scratch, Code::InvalidArgument, "config.json is missing"),
        (
            &folder,
            Code::InvalidArgument,
            "model.safetensors is missing",
        ),
    ] {
        let mut bad = load_options(SMOLLM2, &[]);
        bad.model_file = path.display().to_string();
        let e = client.load_model(bad).await.unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert!(e.message().contains(needle), "{e}");
    }
    std::fs::remove_dir_all(&scratch).unwrap();

    // A hub id with no local copy: nothing is downloaded, and the message says where the
    // copy was looked for.
    let mut hub = load_options(SMOLLM2, &[]);
    hub.model = "no-such-org/no-such-model".into();
    hub.model_file.clear();
    let e = client.load_model(hub).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(
        e.message().contains("models--no-such-org--no-such-model")
            && e.message().contains("does not download"),
        "{e}"
    );

    let mut parallel = load_options(SMOLLM2, &[]);
    parallel.tensor_parallel_size = 2;
    let e = client.load_model(parallel).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e}");
    let parser = load_options(SMOLLM2, &["tool_parser:no_such_parser"]);
    let e = client.load_model(parser).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
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
