//! Helpers for tests and benchmarks that drive a real worker: where the test models are, the
//! workers' contract suite, starting and loading a worker, raw requests, reading a whole
//! stream, and a stream's timings. The test helpers panic on failure, as test code does;
//! the benchmark ones return errors.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use backend_common::pb::{Message, ModelOptions, PredictOptions, Reply};

use crate::caps::Capability;
use crate::client::Client;
use crate::config::Config;
use crate::suite::{self, JunitOutput};
use crate::worker::Worker;

/// The small test model: SmolLM2-135M-Instruct.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The test model that calls tools: Qwen2.5-Coder-0.5B-Instruct.
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// The path of a test model in `$MODELS_DIR` (default: `models/` at the workspace root);
/// panics with the command that fetches it when it is missing.
pub fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (or make models) first",
        path.display()
    );
    path
}

/// Runs the conformance suite as a worker's contract test (the `main` of a `harness = false`
/// test target): `binary` with the [`QWEN`] GGUF, `tool_parser:hermes`, 2 threads and the
/// capabilities `caps`, the rest as the harness's defaults. Only the test's arguments come
/// from outside (name filters, `--nocapture`, `--format junit`), not the environment.
pub fn contract(binary: &str, caps: &[Capability]) -> ExitCode {
    let qwen = model(QWEN).display().to_string();
    let caps: Vec<_> = caps.iter().map(|c| c.name()).collect();
    let caps = caps.join(",");
    let vars = [
        ("BACKEND_BINARY", binary),
        ("BACKEND_TEST_MODEL_FILE", &qwen),
        ("BACKEND_TEST_CAPS", &caps),
        ("BACKEND_TEST_OPTIONS", "tool_parser:hermes"),
        ("BACKEND_TEST_THREADS", "2"),
    ];
    let config = Config::from_env(|name| {
        vars.iter()
            .find(|(var, _)| *var == name)
            .map(|(_, value)| value.to_string())
    })
    .expect("the contract configuration is valid");
    let (args, junit_stdout) = suite::arguments(std::env::args());
    let junit = JunitOutput {
        stdout: junit_stdout,
        file: None,
    };
    suite::run(config, args, junit)
}

/// Starts `binary` as LocalAI does (no auth) and waits until Health answers "OK".
pub async fn start(binary: &Path) -> Worker {
    Worker::start(binary, &[], None, Duration::from_secs(30))
        .await
        .expect("worker starts and answers Health")
}

/// LoadModel options for test model `name`: its file, a 1024-token context, 2 threads.
pub fn load_options(name: &str) -> ModelOptions {
    ModelOptions {
        model: name.into(),
        model_file: model(name).display().to_string(),
        context_size: 1024,
        threads: 2,
        ..Default::default()
    }
}

/// Loads `options` through `client` and asserts it worked.
pub async fn load(client: &mut Client, options: ModelOptions) {
    let loaded = client.load_model(options).await.unwrap().into_inner();
    assert!(loaded.success, "{}", loaded.message);
}

/// A fresh worker of `binary` with `options` loaded, and a client of it.
pub async fn started_with(binary: &Path, options: ModelOptions) -> (Worker, Client) {
    let worker = start(binary).await;
    let mut client = worker.client(None).await.unwrap();
    load(&mut client, options).await;
    (worker, client)
}

/// A greedy raw-prompt request for `tokens` new tokens.
pub fn raw(prompt: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        prompt: prompt.into(),
        tokens,
        temperature: 0.0,
        ..Default::default()
    }
}

/// A greedy chat request of one user message, through the model's template.
pub fn chat(user: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        use_tokenizer_template: true,
        messages: vec![Message {
            role: "user".into(),
            content: user.into(),
            ..Default::default()
        }],
        ..raw("", tokens)
    }
}

/// Two tools: the weather in a location (with an optional unit) and the time in a zone.
pub const TWO_TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location", "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The city and country, e.g. Paris, France"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"], "additionalProperties": false}}}, {"type": "function", "function": {"name": "get_time", "description": "Get the current time in a time zone", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"], "additionalProperties": false}}}]"#;

/// A weather tool whose schema Qwen does not follow on its own (it writes "Paris" or "Paris,
/// France" for the location): a location of three capitals, and a unit it never picks.
pub const STRICT_TOOL: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location", "parameters": {"type": "object", "properties": {"location": {"type": "string", "pattern": "^[A-Z]{3}$"}, "unit": {"type": "string", "enum": ["kelvin"]}}, "required": ["location", "unit"]}}}]"#;

/// "What's the weather like in Paris, France?" through the model's template, with a system
/// prompt, `tools` (OpenAI JSON) and `tool_choice`; greedy, up to 200 tokens.
pub fn weather_request(tools: &str, tool_choice: &str) -> PredictOptions {
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
        tools: tools.into(),
        tool_choice: tool_choice.into(),
        tokens: 200,
        temperature: 0.0,
        ..Default::default()
    }
}

/// The one tool call of a reply's chat deltas, merged as LocalAI merges them: its name and
/// its arguments parsed as JSON.
pub fn single_call(replies: &[Reply]) -> (String, serde_json::Value) {
    let (mut names, mut arguments) = (Vec::new(), String::new());
    for call in replies
        .iter()
        .flat_map(|r| &r.chat_deltas)
        .flat_map(|d| &d.tool_calls)
    {
        assert_eq!(call.index, 0, "one call: {replies:?}");
        if !call.name.is_empty() {
            names.push(call.name.clone());
        }
        arguments.push_str(&call.arguments);
    }
    assert_eq!(names.len(), 1, "one call, named once: {replies:?}");
    let arguments = serde_json::from_str(&arguments)
        .unwrap_or_else(|e| panic!("arguments {arguments:?} are not JSON: {e}"));
    (names.remove(0), arguments)
}

/// `GrammarTriggers` make a load's grammars lazy, on the worker `binary` with SmolLM2: with
/// no trigger the grammar holds from the first token; with a trigger the story never writes,
/// the text stays free; with a word the story writes early, the text is free up to it and
/// follows the grammar from the word on.
pub async fn grammar_triggers_make_the_grammar_lazy(binary: &Path) {
    use backend_common::pb::GrammarTrigger;
    let worker = start(binary).await;
    let mut client = worker.client(None).await.unwrap();
    let mut request = raw("Once upon a time, in a small village by the sea,", 24);
    request.grammar = r#"root ::= "DONE" [.]"#.into();
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
    let strict = client.predict(request.clone()).await.unwrap().into_inner();
    assert_eq!(String::from_utf8_lossy(&strict.message), "DONE.");
    load(&mut client, with(&["DONE"])).await;
    let lazy = client.predict(request.clone()).await.unwrap().into_inner();
    let free = String::from_utf8_lossy(&lazy.message).into_owned();
    assert!(!free.contains("DONE") && lazy.tokens == 24, "{free:?}");
    let word = free
        .split_whitespace()
        .find(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .expect("a word in the story")
        .to_string();
    let before = &free[..free.find(&word).unwrap()];
    request.grammar = format!("root ::= \"{word}\" \" and the end.\"");
    load(&mut client, with(&[&word])).await;
    let triggered = client.predict(request).await.unwrap().into_inner();
    assert_eq!(
        String::from_utf8_lossy(&triggered.message),
        format!("{before}{word} and the end."),
    );
}

/// ToolChoice "auto" with [`STRICT_TOOL`] on a worker serving Qwen through `client`: once the
/// model opens a call, the lazy constraint makes it follow the schema Qwen ignores on its own
/// (unary and streamed alike); a question that needs no tool gets free prose, and "none"
/// never yields a call.
pub async fn auto_tool_choice_constrains_a_call_once_qwen_opens_one(client: &mut Client) {
    let request = weather_request(STRICT_TOOL, "\"auto\"");
    let unary = client.predict(request.clone()).await.unwrap().into_inner();
    let (name, arguments) = single_call(std::slice::from_ref(&unary));
    assert_eq!(name, "get_weather");
    assert_eq!(arguments["unit"], "kelvin", "{arguments}");
    let location = arguments["location"].as_str().unwrap_or_default();
    assert!(
        location.len() == 3 && location.chars().all(|c| c.is_ascii_uppercase()),
        "{arguments}"
    );
    assert_eq!(
        arguments.as_object().map(|o| o.len()),
        Some(2),
        "{arguments}"
    );
    let streamed = collect(client, request).await;
    assert_eq!(single_call(&streamed), (name, arguments));
    let no_call = |reply: &Reply| reply.chat_deltas.iter().all(|d| d.tool_calls.is_empty());
    let prose = client
        .predict(PredictOptions {
            messages: vec![Message {
                role: "user".into(),
                content: "Write one sentence about the history of the Eiffel Tower.".into(),
                ..Default::default()
            }],
            tokens: 40,
            ..weather_request(STRICT_TOOL, "\"auto\"")
        })
        .await
        .unwrap()
        .into_inner();
    let content = String::from_utf8_lossy(&prose.message);
    assert!(content.contains("Eiffel"), "{content:?}");
    assert!(no_call(&prose), "{prose:?}");
    let none = client
        .predict(weather_request(STRICT_TOOL, "\"none\""))
        .await
        .unwrap()
        .into_inner();
    assert!(no_call(&none), "{none:?}");
}

/// Every chunk of a PredictStream, in order.
pub async fn collect(client: &mut Client, req: PredictOptions) -> Vec<Reply> {
    let mut stream = client.predict_stream(req).await.unwrap().into_inner();
    let mut replies = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        replies.push(r);
    }
    replies
}

/// The visible text of a stream's chunks, joined.
pub fn text(replies: &[Reply]) -> String {
    replies
        .iter()
        .map(|r| String::from_utf8_lossy(&r.message).into_owned())
        .collect()
}

/// The prompt the throughput benchmarks prefill: `sentences` sentences of English prose.
pub fn bench_prompt(sentences: usize) -> String {
    "The history of the printing press begins in the fifteenth century, when movable type changed how books were made and read. "
        .repeat(sentences)
}

/// The timings of one generation.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Prompt tokens evaluated.
    pub prompt_tokens: u32,
    /// Seconds until the first new token.
    pub prompt_s: f64,
    /// New tokens generated.
    pub new_tokens: u32,
    /// Seconds from the first new token to the last.
    pub decode_s: f64,
}

impl Timing {
    /// The timings a worker reports on a stream's last chunk.
    pub fn of_reply(last: &Reply) -> Timing {
        Timing {
            prompt_tokens: last.prompt_tokens.max(0) as u32,
            prompt_s: last.timing_prompt_processing / 1000.0,
            new_tokens: last.tokens.max(0) as u32,
            decode_s: last.timing_token_generation / 1000.0,
        }
    }

    /// Prompt tokens per second.
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_s
    }

    /// Decode tokens per second: the first new token comes with the prefill, the rest are one
    /// decode step each.
    pub fn decode_tps(&self) -> f64 {
        self.new_tokens.saturating_sub(1) as f64 / self.decode_s
    }

    /// The best of `runs` by `key`.
    pub fn best(runs: &[Timing], key: fn(&Timing) -> f64) -> f64 {
        runs.iter().map(key).fold(0.0, f64::max)
    }
}

/// `BENCH_THREADS` (default: one per core) and `BENCH_ROUNDS` (default `rounds`), as the
/// benchmarks read them.
pub fn bench_settings(rounds: usize) -> (i32, usize) {
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rounds);
    (threads, rounds)
}

/// A benchmark setting from the environment variable `name`, or `default`.
pub fn bench_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// LoadModel options the benchmarks use: `model`'s file, a 1024-token context, `threads`, and
/// the `key:value` options `extra`.
pub fn bench_load_options(model: &Path, threads: i32, extra: &[&str]) -> ModelOptions {
    ModelOptions {
        model_file: model.display().to_string(),
        context_size: 1024,
        threads,
        options: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Starts `binary` for a benchmark (its logs at `warn`) and loads `options` on it; returns
/// the worker and the seconds LoadModel took.
pub async fn bench_worker(binary: &Path, options: ModelOptions) -> anyhow::Result<(Worker, f64)> {
    use anyhow::Context;
    let worker = Worker::start(
        binary,
        &[("RUST_LOG", "warn")],
        None,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("starting {}", binary.display()))?;
    let mut client = worker.client(None).await?;
    let started = std::time::Instant::now();
    let loaded = client.load_model(options).await?.into_inner();
    let load_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(loaded.success, "{}", loaded.message);
    Ok((worker, load_s))
}

/// The worker binary `name` built beside `binary` (the same target directory), for benchmarks
/// that measure one worker against the other.
pub fn sibling_binary(binary: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let sibling = binary.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        sibling.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        sibling.display()
    );
    Ok(sibling)
}

/// A well-formed GGUF v3 without weights worth the name: `general.architecture`, its
/// `context_length`, and one tensor of 16 F32 zeros. For doubles and for loads that must fail
/// past the header.
pub fn tiny_gguf(architecture: &str, context_length: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(1u64.to_le_bytes());
    out.extend(2u64.to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    string(&mut out, architecture);
    string(&mut out, &format!("{architecture}.context_length"));
    out.extend(10u32.to_le_bytes());
    out.extend(context_length.to_le_bytes());
    string(&mut out, "token_embd.weight");
    out.extend(1u32.to_le_bytes());
    out.extend(16u64.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.resize(out.len().div_ceil(32) * 32 + 64, 0);
    out
}

/// Peak resident memory (`VmHWM`) of process `pid` in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    memory_field(pid, "VmHWM")
}

/// A memory figure of `/proc/PID/status` (`VmRSS`, `RssAnon`, `VmHWM`...) in bytes.
pub fn memory_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Streams `req` and returns the timings the worker reports on the last chunk.
pub async fn timed_stream(client: &mut Client, req: PredictOptions) -> anyhow::Result<Timing> {
    let mut stream = client.predict_stream(req).await?.into_inner();
    let mut last = None;
    while let Some(reply) = stream.message().await? {
        last = Some(reply);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("the stream ended without a chunk"))?;
    Ok(Timing::of_reply(&last))
}
