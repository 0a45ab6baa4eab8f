//! The Grammar front-end as both workers run it: our reader (`GrammarInput`: GBNF parsed and
//! rewritten to Lark for llguidance, JSON schemas, Lark), then, as the llama.cpp worker does,
//! llama.cpp's GBNF parser building a grammar sampler over SmolLM2's vocabulary (read once,
//! without weights, from `models/` or `$MODELS_DIR`). Nothing may crash: a grammar is either
//! refused or built.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;

static MODEL: LazyLock<(LlamaBackend, LlamaModel)> = LazyLock::new(|| {
    let dir = std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut backend = LlamaBackend::init().expect("llama.cpp initialises");
    backend.void_logs();
    let params = LlamaModelParams::default().with_vocab_only(true);
    let model = LlamaModel::load_from_file(&backend, &path, &params)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make models` first)", path.display()));
    (backend, model)
});

fuzz_target!(|data: &[u8]| {
    let Ok(grammar) = std::str::from_utf8(data) else {
        return;
    };
    if grammar.trim().is_empty() {
        return;
    }
    let Ok(input) = backend_common::constraint::GrammarInput::read(grammar) else {
        return;
    };
    let _ = input.to_lark();
    if !matches!(input, backend_common::constraint::GrammarInput::Gbnf(_)) {
        return;
    }
    let (_, model) = &*MODEL;
    let _ = LlamaSampler::grammar(model, grammar, "root");
});
