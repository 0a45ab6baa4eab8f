//! What is particular to the candle worker, end to end: the real binary, real gRPC over
//! loopback, the real SmolLM2-135M and Qwen2.5-Coder-0.5B GGUFs (fetched by
//! `scripts/fetch-models.sh`) and the Hugging Face folders exported from them, compared
//! with llama.cpp. What every worker must do is checked by the conformance suite in
//! `contract.rs`.
mod common;

use std::path::{Path, PathBuf};

use backend_common::pb::{HealthMessage, ModelOptions};
use e2e_backends::client::Client;
use e2e_backends::testing::{self, QWEN, SMOLLM2, chat, load, load_options, model, raw};
use e2e_backends::worker::Worker;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_backend-vllm-rs");

/// A fresh worker with `options` loaded.
async fn started_with(options: ModelOptions) -> (Worker, Client) {
    testing::started_with(BINARY.as_ref(), options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn qwen_answers_paris_like_llamacpp() {
    let (_worker, mut client) = started_with(load_options(QWEN)).await;
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
    // The answer llama.cpp gives greedily on the same GGUF and chat.
    assert_eq!(answer, "The capital of France is Paris.");
    assert_eq!(reply.chat_deltas.len(), 1);
    assert_eq!(reply.chat_deltas[0].content, answer);
    assert!(reply.prompt_tokens > 10 && reply.tokens > 5, "{reply:?}");
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
fn folder_options(name: &str) -> ModelOptions {
    let mut o = load_options(name);
    o.model_file = common::exported(name, candle_core::DType::F32)
        .display()
        .to_string();
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenize_equals_llamacpp() {
    let llamacpp = testing::start(&llamacpp_binary()).await;
    let mut reference = llamacpp.client(None).await.unwrap();
    let ours = testing::start(BINARY.as_ref()).await;
    let mut client = ours.client(None).await.unwrap();
    for name in [SMOLLM2, QWEN] {
        load(&mut reference, load_options(name)).await;
        let expected = token_ids(&mut reference).await;
        // The GGUF, then the folder exported from it (its own tokenizer.json).
        for (form, options) in [
            ("GGUF", load_options(name)),
            ("folder", folder_options(name)),
        ] {
            load(&mut client, options).await;
            let got = token_ids(&mut client).await;
            for ((s, e), g) in TOKENIZER_STRINGS.iter().zip(&expected).zip(&got) {
                assert_eq!(g, e, "{name} {form}: {s:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hugging_face_folder_answers_like_the_gguf() {
    let (_worker, mut client) = started_with(folder_options(QWEN)).await;
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

fn foreign_gguf(path: &Path) {
    use candle_core::quantized::gguf_file::{Value, write};
    let mut file = std::fs::File::create(path).unwrap();
    let arch = Value::String("gemma3".into());
    write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_models_name_the_problem_and_keep_the_model() {
    let (_worker, mut client) = started_with(load_options(SMOLLM2)).await;
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
        let mut bad = load_options(SMOLLM2);
        bad.model_file = path.display().to_string();
        let e = client.load_model(bad).await.unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert!(e.message().contains(needle), "{e}");
    }
    std::fs::remove_dir_all(&scratch).unwrap();

    // A hub id with no local copy: nothing is downloaded, and the message says where the
    // copy was looked for.
    let mut hub = load_options(SMOLLM2);
    hub.model = "no-such-org/no-such-model".into();
    hub.model_file.clear();
    let e = client.load_model(hub).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(
        e.message().contains("models--no-such-org--no-such-model")
            && e.message().contains("does not download"),
        "{e}"
    );

    let mut parallel = load_options(SMOLLM2);
    parallel.tensor_parallel_size = 2;
    let e = client.load_model(parallel).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e}");
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
async fn engine_args_and_flag_spellings_set_engine_options() {
    let block_size = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let status = client.status(HealthMessage {}).await.unwrap().into_inner();
            status.memory.unwrap().breakdown["kv_block_size"]
        }
    };
    let mut options = load_options(SMOLLM2);
    options.engine_args = r#"{"block_size": 32, "max-num-seqs": 4}"#.into();
    // EngineArgs come after Options, so they win.
    options.options = vec!["block_size:8".into()];
    let (_worker, mut client) = started_with(options).await;
    assert_eq!(block_size(&mut client).await, 32);
    let mut flags = load_options(SMOLLM2);
    flags.options = vec!["--block-size=64".into()];
    load(&mut client, flags).await;
    assert_eq!(block_size(&mut client).await, 64);
    let mut typo = load_options(SMOLLM2);
    typo.engine_args = r#"{"max_num_seq": 4}"#.into();
    let e = client.load_model(typo).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("did you mean `max_num_seqs`?"), "{e}");
    // The refused load kept the model.
    assert_eq!(block_size(&mut client).await, 64);
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Starts the worker in the background of a shell, kills the shell, and returns how long the
/// worker lived on (up to `wait`).
fn outlives_parent_by(watch: &str, wait: std::time::Duration) -> std::time::Duration {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script =
        format!("{watch} '{BINARY}' --addr 127.0.0.1:{port} 2>/dev/null & echo $!; sleep 60");
    let mut parent = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u32 = line.trim().parse().unwrap();
    // Serving: its port answers.
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 30,
            "the worker never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    parent.kill().unwrap();
    parent.wait().unwrap();
    let orphaned = std::time::Instant::now();
    while !ended(pid) && orphaned.elapsed() < wait {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let lived = orphaned.elapsed();
    if !ended(pid) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    lived
}

#[test]
fn a_worker_whose_parent_dies_shuts_down_within_two_intervals() {
    let interval = std::time::Duration::from_millis(300);
    let lived = outlives_parent_by(
        "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL=300ms",
        std::time::Duration::from_secs(10),
    );
    assert!(lived <= 2 * interval, "the orphaned worker lived {lived:?}");
    // With the watch off it serves on.
    let lived = outlives_parent_by(
        "LOCALAI_BACKEND_PARENT_WATCH=off LOCALAI_BACKEND_PARENT_WATCH_INTERVAL=300ms",
        4 * interval,
    );
    assert!(lived >= 4 * interval, "{lived:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_pool_as_asked_and_agree_with_llamacpp() {
    let text = |t: &str| backend_common::pb::PredictOptions {
        embeddings: t.into(),
        ..Default::default()
    };
    let sentence = "The cat sat on the mat.";
    let (_worker, mut client) = started_with(load_options(QWEN)).await;
    let off = client.embedding(text(sentence)).await.unwrap_err();
    assert_eq!(off.code(), Code::FailedPrecondition, "{off}");
    assert!(off.message().contains("Embeddings"), "{off}");

    let with = |pooling: Option<&str>| ModelOptions {
        embeddings: true,
        options: pooling
            .map(|p| format!("pooling:{p}"))
            .into_iter()
            .collect(),
        ..load_options(QWEN)
    };
    let mut embed = async |options: ModelOptions| {
        load(&mut client, options).await;
        client.embedding(text(sentence)).await.unwrap().into_inner()
    };
    let per_token = embed(with(Some("none"))).await;
    assert_eq!(
        per_token.layout,
        backend_common::pb::EmbeddingLayout::PerToken as i32
    );
    assert_eq!(per_token.dim, 896, "Qwen2.5-0.5B's hidden size");
    assert!(per_token.tokens > 1 && per_token.tokens == per_token.prompt_tokens);
    let rows: Vec<&[f32]> = per_token.embeddings.chunks(896).collect();
    assert_eq!(rows.len(), per_token.tokens as usize);
    let cls = embed(with(Some("cls"))).await;
    let last = embed(with(Some("last"))).await;
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    assert!(
        close(&cls.embeddings, rows[0]),
        "cls is the first token's vector"
    );
    assert!(
        close(&last.embeddings, rows[rows.len() - 1]),
        "last is the last token's"
    );
    let mean = embed(with(None)).await;
    assert_eq!(
        (mean.tokens, mean.dim, mean.layout),
        (1, 896, backend_common::pb::EmbeddingLayout::Final as i32)
    );

    // llama.cpp pools the same model's hidden states the same way (mean, normalised).
    let llama = testing::sibling_binary(BINARY.as_ref(), "backend-llamacpp").unwrap();
    let (_other, mut reference) = testing::started_with(&llama, with(None)).await;
    let theirs = reference
        .embedding(text(sentence))
        .await
        .unwrap()
        .into_inner();
    let cosine: f32 = mean
        .embeddings
        .iter()
        .zip(&theirs.embeddings)
        .map(|(a, b)| a * b)
        .sum();
    eprintln!("cosine with llama.cpp's embedding: {cosine}");
    assert!(cosine > 0.99, "cosine with llama.cpp's embedding {cosine}");
}
