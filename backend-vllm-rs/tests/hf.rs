//! Hugging Face folders: the folders `export-hf` writes from the real GGUFs run like the GGUFs
//! (greedy tokens, logits), and the dense model code of every architecture matches
//! candle-transformers' on the same safetensors (tiny random weights for Qwen3 and Mistral,
//! whose real weights cannot be fetched here).
mod common;
mod gguf_models;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{mistral, qwen3};

use backend_vllm_rs::gguf::GgufFile;
use backend_vllm_rs::hf::{HfFolder, generation_eos_ids};
use backend_vllm_rs::model::{Model, SingleSequence};
use backend_vllm_rs::tokenizer::ModelTokenizer;
use gguf_models::{gguf_model, max_abs_diff};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn folder_model(dir: &Path, dtype: DType) -> Result<(Model, ModelTokenizer)> {
    let folder = HfFolder::open(dir)?;
    let tokenizer = ModelTokenizer::from_hf_dir(dir, &generation_eos_ids(&folder))?;
    let weights = folder.weights(dtype, &Device::Cpu)?;
    Ok((
        Model::new(folder.model_config.clone(), weights, 512, &Device::Cpu)?,
        tokenizer,
    ))
}

/// Greedy tokens after `prompt`, with the logits of each step.
fn greedy(model: &Model, prompt: &[u32], steps: usize) -> Result<(Vec<u32>, Vec<Tensor>)> {
    let mut seq = SingleSequence::new(model, prompt.len() + steps)?;
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let out = seq.feed(model, &input)?;
        let next = out.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        tokens.push(next);
        logits.push(out);
        input = vec![next];
    }
    Ok((tokens, logits))
}

/// Preemption recomputes a sequence's prompt and output in one prefill: the logits after it
/// must be those of the token-by-token decode. On f32 weights they agree to float rounding.
/// (On GGUF weights candle's quantized matmuls pick other kernels for one row than for many,
/// with their own int8 rounding of activations: there they differ by up to ~1 logit.)
#[test]
fn recomputing_a_decoded_sequence_gives_its_logits() -> Result<()> {
    for name in [SMOLLM2, QWEN] {
        let (model, tokenizer) = folder_model(&common::exported(name, DType::F32), DType::F32)?;
        let prompt =
            tokenizer.encode("Once upon a time, in a land far away, there lived a", false)?;
        let (generated, decoded) = greedy(&model, &prompt, 40)?;
        let tokens: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
        let mut worst = 0f32;
        for steps in [10, 25, 39] {
            let at = prompt.len() + steps;
            let again = SingleSequence::new(&model, at)?.feed(&model, &tokens[..at])?;
            worst = worst.max(max_abs_diff(&again, &decoded[steps])?);
        }
        eprintln!("{name} (f32 folder): recomputed vs decoded, max abs logit diff {worst:.2e}");
        assert!(worst < 1e-3, "{worst}");
    }
    Ok(())
}

/// The weights of a folder written by these tests, for candle-transformers' reference models.
fn reference_weights(dir: &Path, dev: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the file was written by this test and nothing changes it while it is mapped.
    Ok(unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, dev)?
    })
}

#[test]
fn exported_qwen_folder_gives_the_gguf_greedy_tokens() -> Result<()> {
    let dir = common::exported(QWEN, DType::F32);
    let (gguf, gguf_tokenizer) = gguf_model(QWEN)?;
    let (folder, folder_tokenizer) = folder_model(&dir, DType::F32)?;
    let prompt = gguf_tokenizer.encode(PROMPT, false)?;
    assert_eq!(folder_tokenizer.encode(PROMPT, false)?, prompt);
    let (expected, gguf_logits) = greedy(&gguf, &prompt, 10)?;
    let (got, folder_logits) = greedy(&folder, &prompt, 10)?;
    let text = |ids: &[u32]| {
        ids.iter()
            .flat_map(|&t| gguf_tokenizer.piece(t).to_vec())
            .collect::<Vec<u8>>()
    };
    eprintln!(
        "GGUF {:?}, folder {:?}; first-step logits differ by {:.3} (Q8_K activations on the GGUF side)",
        String::from_utf8_lossy(&text(&expected)),
        String::from_utf8_lossy(&text(&got)),
        max_abs_diff(&gguf_logits[0], &folder_logits[0])?
    );
    assert_eq!(got, expected);
    assert!(String::from_utf8_lossy(&text(&got)).starts_with("The capital of France is Paris."));
    Ok(())
}

#[test]
fn exported_smollm2_folder_undoes_the_qk_permutation() -> Result<()> {
    // Llama's Q/K rows are permuted in GGUF: a folder exported without undoing it gives
    // unrelated logits, not ones a quantisation step away.
    let dir = common::exported(SMOLLM2, DType::F32);
    let (gguf, tokenizer) = gguf_model(SMOLLM2)?;
    let (folder, _) = folder_model(&dir, DType::F32)?;
    let prompt = tokenizer.encode(PROMPT, false)?;
    let (_, gguf_logits) = greedy(&gguf, &prompt, 1)?;
    let (_, folder_logits) = greedy(&folder, &prompt, 1)?;
    let diff = max_abs_diff(&gguf_logits[0], &folder_logits[0])?;
    let scale = gguf_logits[0]
        .abs()?
        .max_keepdim(1)?
        .flatten_all()?
        .to_vec1::<f32>()?[0];
    eprintln!("SmolLM2 GGUF vs exported f32 folder: max abs diff {diff:.3} (scale {scale:.1})");
    assert!(diff < 0.1 * scale, "{diff} of {scale}");
    Ok(())
}

#[test]
fn bf16_and_f16_weights_run_close_to_f32() -> Result<()> {
    let f32_dir = common::exported(SMOLLM2, DType::F32);
    let (f32_model, tokenizer) = folder_model(&f32_dir, DType::F32)?;
    let dir = common::exported(SMOLLM2, DType::BF16);
    assert_eq!(HfFolder::open(&dir)?.saved_dtype()?, DType::BF16);
    let prompt = tokenizer.encode(PROMPT, false)?;
    let (_, reference) = greedy(&f32_model, &prompt, 1)?;
    // A bf16 folder as saved, and the f32 folder converted to f16 at load (`dtype:float16`).
    for (label, model) in [
        ("bf16 folder", folder_model(&dir, DType::BF16)?.0),
        ("f32 folder as f16", folder_model(&f32_dir, DType::F16)?.0),
    ] {
        assert!(model.weight_bytes() * 2 <= f32_model.weight_bytes() + 1_000_000);
        let (_, logits) = greedy(&model, &prompt, 1)?;
        let diff = max_abs_diff(&reference[0], &logits[0])?;
        eprintln!("SmolLM2 f32 vs {label}: max abs diff {diff:.3}");
        assert!(diff < 1.5, "{label}: {diff}");
    }
    Ok(())
}

#[test]
fn a_sharded_folder_loads_like_one_file() -> Result<()> {
    let root = std::env::temp_dir().join(format!("vllm-rs-shards-{}", std::process::id()));
    let config = tiny_config("Qwen3ForCausalLM", "qwen3");
    let single = root.join("single");
    let tensors = random_folder(&single, &config, true)?;
    // The same tensors in two shards, listed by an index.
    let sharded = root.join("sharded");
    std::fs::create_dir_all(&sharded)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<&str, Tensor> = part
            .iter()
            .map(|n| (n.as_str(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.join(file))?;
        for n in part.iter() {
            map.insert(n.to_string(), file.into());
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": map }).to_string(),
    )?;
    std::fs::copy(single.join("config.json"), sharded.join("config.json"))?;
    let logits = |dir: &Path| -> Result<Tensor> {
        let model = dense_model(dir)?;
        Ok(SingleSequence::new(&model, 5)?.feed(&model, &[3, 1, 4, 1, 5])?)
    };
    let (expected, got) = (logits(&single)?, logits(&sharded)?);
    assert_eq!(max_abs_diff(&expected, &got)?, 0.0);
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Writes a folder with random weights for `config` (a `config.json` document) under the
/// Hugging Face names of a Llama-style model.
fn random_folder(
    dir: &Path,
    config: &serde_json::Value,
    qk_norm: bool,
) -> Result<HashMap<String, Tensor>> {
    let get = |k: &str| config[k].as_u64().unwrap() as usize;
    let (hidden, layers, vocab) = (
        get("hidden_size"),
        get("num_hidden_layers"),
        get("vocab_size"),
    );
    let (heads, kv_heads, hd, inter) = (
        get("num_attention_heads"),
        get("num_key_value_heads"),
        get("head_dim"),
        get("intermediate_size"),
    );
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut rand = |name: String, shape: &[usize], mean: f32| -> Result<()> {
        t.insert(
            name,
            (Tensor::randn(0f32, 0.2, shape, &dev)? + mean as f64)?,
        );
        Ok(())
    };
    rand("model.embed_tokens.weight".into(), &[vocab, hidden], 0.0)?;
    rand("lm_head.weight".into(), &[vocab, hidden], 0.0)?;
    rand("model.norm.weight".into(), &[hidden], 1.0)?;
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        rand(format!("{p}.input_layernorm.weight"), &[hidden], 1.0)?;
        rand(
            format!("{p}.post_attention_layernorm.weight"),
            &[hidden],
            1.0,
        )?;
        rand(
            format!("{p}.self_attn.q_proj.weight"),
            &[heads * hd, hidden],
            0.0,
        )?;
        rand(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv_heads * hd, hidden],
            0.0,
        )?;
        rand(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv_heads * hd, hidden],
            0.0,
        )?;
        rand(
            format!("{p}.self_attn.o_proj.weight"),
            &[hidden, heads * hd],
            0.0,
        )?;
        if qk_norm {
            rand(format!("{p}.self_attn.q_norm.weight"), &[hd], 1.0)?;
            rand(format!("{p}.self_attn.k_norm.weight"), &[hd], 1.0)?;
        }
        rand(format!("{p}.mlp.gate_proj.weight"), &[inter, hidden], 0.0)?;
        rand(format!("{p}.mlp.up_proj.weight"), &[inter, hidden], 0.0)?;
        rand(format!("{p}.mlp.down_proj.weight"), &[hidden, inter], 0.0)?;
    }
    std::fs::create_dir_all(dir)?;
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    std::fs::write(dir.join("config.json"), serde_json::to_string(config)?)?;
    Ok(t)
}

/// The f32 model of folder `dir`.
fn dense_model(dir: &Path) -> Result<Model> {
    let folder = HfFolder::open(dir)?;
    let weights = folder.weights(DType::F32, &Device::Cpu)?;
    Ok(Model::new(
        folder.model_config.clone(),
        weights,
        64,
        &Device::Cpu,
    )?)
}

/// Our logits and the reference's after a 7-token prompt and two more single tokens.
fn compare_dense(
    model: &Model,
    mut reference: impl FnMut(&Tensor, usize) -> Result<Tensor>,
) -> Result<f32> {
    let mut seq = SingleSequence::new(model, 9)?;
    let mut worst = 0f32;
    let mut position = 0;
    for input in [vec![1u32, 5, 9, 2, 7, 3, 11], vec![4], vec![8]] {
        let ours = seq.feed(model, &input)?;
        let ids = Tensor::new(input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let theirs = reference(&ids, position)?.flatten_all()?;
        worst = worst.max(max_abs_diff(&ours, &theirs)?);
        position += input.len();
    }
    Ok(worst)
}

fn tiny_config(arch: &str, model_type: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": [arch], "model_type": model_type,
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        // Qwen3's head_dim is not hidden_size / heads.
        "head_dim": 16, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": false, "attention_bias": false,
        "sliding_window": null, "max_window_layers": 2, "use_sliding_window": false,
        "hidden_act": "silu", "torch_dtype": "float32"
    })
}

#[test]
fn qwen3_folder_and_gguf_and_mistral_match_candle_transformers() -> Result<()> {
    let root = std::env::temp_dir().join(format!("vllm-rs-tiny-{}", std::process::id()));
    let dev = Device::Cpu;

    let config = tiny_config("Qwen3ForCausalLM", "qwen3");
    let dir = root.join("qwen3");
    let tensors = random_folder(&dir, &config, true)?;
    let vb = reference_weights(&dir, &dev)?;
    let mut reference = qwen3::ModelForCausalLM::new(&serde_json::from_value(config.clone())?, vb)?;
    let qwen3_diff = compare_dense(&dense_model(&dir)?, |ids, pos| {
        Ok(reference.forward(ids, pos)?)
    })?;
    // The same weights as a GGUF file (f32 tensors, llama.cpp's names) run the same.
    let gguf = root.join("qwen3.gguf");
    write_qwen3_gguf(&gguf, &config, &tensors)?;
    let mut file = GgufFile::open(&gguf)?;
    let header = file.header()?;
    let weights = file.weights(&header.config, &dev)?;
    let gguf_model = Model::new(header.config, weights, 64, &dev)?;
    reference.clear_kv_cache();
    let gguf_diff = compare_dense(&gguf_model, |ids, pos| Ok(reference.forward(ids, pos)?))?;

    let config = tiny_config("MistralForCausalLM", "mistral");
    let dir = root.join("mistral");
    random_folder(&dir, &config, false)?;
    let vb = reference_weights(&dir, &dev)?;
    let mut reference = mistral::Model::new(&serde_json::from_value(config.clone())?, vb)?;
    let mistral_diff = compare_dense(&dense_model(&dir)?, |ids, pos| {
        Ok(reference.forward(ids, pos)?)
    })?;

    eprintln!(
        "max abs logit diff vs candle-transformers: qwen3 {qwen3_diff:.2e} (GGUF {gguf_diff:.2e}), mistral {mistral_diff:.2e}"
    );
    assert!(qwen3_diff < 1e-4, "qwen3: {qwen3_diff}");
    assert!(gguf_diff < 1e-4, "qwen3 GGUF: {gguf_diff}");
    assert!(mistral_diff < 1e-4, "mistral: {mistral_diff}");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Writes `tensors` (Hugging Face names) as a Qwen3 GGUF with a small byte-level vocabulary.
fn write_qwen3_gguf(
    path: &Path,
    config: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    use candle_core::quantized::gguf_file::{Value, write};
    use candle_core::quantized::{GgmlDType, QTensor};
    let get = |k: &str| config[k].as_u64().unwrap() as u32;
    let mut renamed: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in tensors {
        let gguf_name = match name.as_str() {
            "model.embed_tokens.weight" => "token_embd.weight".to_string(),
            "lm_head.weight" => "output.weight".to_string(),
            "model.norm.weight" => "output_norm.weight".to_string(),
            other => {
                let rest = other.strip_prefix("model.layers.").unwrap();
                let (layer, weight) = rest.split_once('.').unwrap();
                let short = match weight {
                    "input_layernorm.weight" => "attn_norm.weight",
                    "post_attention_layernorm.weight" => "ffn_norm.weight",
                    "self_attn.q_proj.weight" => "attn_q.weight",
                    "self_attn.k_proj.weight" => "attn_k.weight",
                    "self_attn.v_proj.weight" => "attn_v.weight",
                    "self_attn.o_proj.weight" => "attn_output.weight",
                    "self_attn.q_norm.weight" => "attn_q_norm.weight",
                    "self_attn.k_norm.weight" => "attn_k_norm.weight",
                    "mlp.gate_proj.weight" => "ffn_gate.weight",
                    "mlp.up_proj.weight" => "ffn_up.weight",
                    "mlp.down_proj.weight" => "ffn_down.weight",
                    other => panic!("unexpected weight {other}"),
                };
                format!("blk.{layer}.{short}")
            }
        };
        renamed.push((gguf_name, QTensor::quantize(t, GgmlDType::F32)?));
    }
    // Printable single characters are valid byte-level tokens.
    let tokens: Vec<Value> = (0..get("vocab_size"))
        .map(|i| Value::String(char::from(b'0' + i as u8).to_string()))
        .collect();
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("qwen3".into())),
        ("qwen3.embedding_length", Value::U32(get("hidden_size"))),
        ("qwen3.block_count", Value::U32(get("num_hidden_layers"))),
        (
            "qwen3.attention.head_count",
            Value::U32(get("num_attention_heads")),
        ),
        (
            "qwen3.attention.head_count_kv",
            Value::U32(get("num_key_value_heads")),
        ),
        ("qwen3.attention.key_length", Value::U32(get("head_dim"))),
        (
            "qwen3.attention.layer_norm_rms_epsilon",
            Value::F32(config["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        (
            "qwen3.rope.freq_base",
            Value::F32(config["rope_theta"].as_f64().unwrap() as f32),
        ),
        (
            "qwen3.context_length",
            Value::U32(get("max_position_embeddings")),
        ),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("0 1".into())]),
        ),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = renamed.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path)?;
    write(&mut file, &metadata, &tensors)?;
    Ok(())
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers() -> Result<()> {
    use candle_transformers::models::llama;
    let root = std::env::temp_dir().join(format!("vllm-rs-llama3-{}", std::process::id()));
    let mut config = tiny_config("LlamaForCausalLM", "llama");
    // candle-transformers' Llama derives head_dim from hidden_size / heads.
    config["head_dim"] = 8.into();
    config["rope_theta"] = 10000.0.into();
    // Wavelengths 6, 63, 628 and 6283 positions: one below the high-frequency cut (16), one in
    // the smoothed band, two scaled by the full factor.
    config["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    });
    random_folder(&root, &config, false)?;
    let dev = Device::Cpu;
    let vb = reference_weights(&root, &dev)?;
    let cfg = serde_json::from_value::<llama::LlamaConfig>(config)?.into_config(false);
    let reference = llama::Llama::load(vb, &cfg)?;
    let mut cache = llama::Cache::new(true, DType::F32, &cfg, &dev)?;
    let diff = compare_dense(&dense_model(&root)?, |ids, pos| {
        Ok(reference.forward(ids, pos, &mut cache)?)
    })?;
    eprintln!("llama3 rope scaling: max abs logit diff {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

#[test]
fn mistral_sliding_window_matches_candle_transformers_prefill() -> Result<()> {
    let root = std::env::temp_dir().join(format!("vllm-rs-window-{}", std::process::id()));
    let dev = Device::Cpu;
    let mut config = tiny_config("MistralForCausalLM", "mistral");
    config["sliding_window"] = 3.into();
    random_folder(&root, &config, false)?;
    // candle-transformers lets a query see `sliding_window + 1` keys, Hugging Face and vLLM
    // `sliding_window`: its config gets one less. Only a prefill is compared: its decode steps
    // apply no window.
    let mut reference_config = config.clone();
    reference_config["sliding_window"] = 2.into();
    let vb = reference_weights(&root, &dev)?;
    let mut reference = mistral::Model::new(&serde_json::from_value(reference_config)?, vb)?;
    let prompt = [1u32, 5, 9, 2, 7, 3, 11];
    let ids = Tensor::new(prompt.as_slice(), &dev)?.unsqueeze(0)?;
    let theirs = reference.forward(&ids, 0)?.flatten_all()?;
    let prefill = |model: &Model| -> Result<Tensor> {
        Ok(SingleSequence::new(model, prompt.len())?.feed(model, &prompt)?)
    };
    let windowed = dense_model(&root)?;
    assert_eq!(windowed.config().sliding_window, Some(3));
    let diff = max_abs_diff(&prefill(&windowed)?, &theirs)?;
    // Without the window the last query sees all 7 keys: other logits.
    config["sliding_window"] = serde_json::Value::Null;
    std::fs::write(root.join("config.json"), config.to_string())?;
    let full = max_abs_diff(&prefill(&dense_model(&root)?)?, &theirs)?;
    eprintln!("mistral window 3: max abs logit diff {diff:.2e}; without the window {full:.2e}");
    assert!(diff < 1e-4, "{diff}");
    assert!(full > 1e-3, "{full}");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
