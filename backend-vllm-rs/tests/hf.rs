//! Hugging Face folders: the folders `export-hf` writes from the real GGUFs run like the GGUFs
//! (greedy tokens, logits), and the dense model code of every architecture matches
//! candle-transformers' on the same safetensors (tiny random weights for Qwen3 and Mistral,
//! whose real weights cannot be fetched here).
mod common;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{mistral, qwen3};

use backend_vllm_rs::gguf::GgufFile;
use backend_vllm_rs::hf::{HfFolder, generation_eos_ids};
use backend_vllm_rs::model::{BatchItem, Model, SeqCache};
use backend_vllm_rs::tokenizer::ModelTokenizer;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn gguf_model(name: &str) -> Result<(Model, ModelTokenizer)> {
    let mut file = GgufFile::open(&e2e_backends::testing::model(name))?;
    let header = file.header()?;
    let tokenizer = ModelTokenizer::new(&header.vocab)?;
    let weights = file.weights(&header.config, &Device::Cpu)?;
    Ok((
        Model::new(header.config, weights, 512, &Device::Cpu)?,
        tokenizer,
    ))
}

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
    let mut cache = SeqCache::new();
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let out = model.forward(&mut [BatchItem {
            tokens: &input,
            cache: &mut cache,
        }])?;
        let next = out.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        tokens.push(next);
        logits.push(out);
        input = vec![next];
    }
    Ok((tokens, logits))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let (a, b) = (a.flatten_all()?, b.flatten_all()?);
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f32>()?)
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
fn a_bf16_folder_runs_close_to_f32() -> Result<()> {
    let (f32_model, tokenizer) = folder_model(&common::exported(SMOLLM2, DType::F32), DType::F32)?;
    let dir = common::exported(SMOLLM2, DType::BF16);
    assert_eq!(HfFolder::open(&dir)?.saved_dtype()?, DType::BF16);
    let (bf16_model, _) = folder_model(&dir, DType::BF16)?;
    assert!(bf16_model.weight_bytes() * 2 <= f32_model.weight_bytes() + 1_000_000);
    let prompt = tokenizer.encode(PROMPT, false)?;
    let (_, a) = greedy(&f32_model, &prompt, 1)?;
    let (_, b) = greedy(&bf16_model, &prompt, 1)?;
    let diff = max_abs_diff(&a[0], &b[0])?;
    eprintln!("SmolLM2 f32 vs bf16 folder: max abs diff {diff:.3}");
    assert!(diff < 1.5, "{diff}");
    Ok(())
}

/// Writes a folder with random weights for `config` (a `config.json` document) under the
/// Hugging Face names of a Llama-style model.
fn random_folder(dir: &Path, config: &serde_json::Value, qk_norm: bool) -> Result<()> {
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
    Ok(())
}

/// Our logits and the reference's after a 7-token prompt and two more single tokens.
fn compare_dense(
    dir: &Path,
    mut reference: impl FnMut(&Tensor, usize) -> Result<Tensor>,
) -> Result<f32> {
    let folder = HfFolder::open(dir)?;
    let weights = folder.weights(DType::F32, &Device::Cpu)?;
    let model = Model::new(folder.model_config.clone(), weights, 64, &Device::Cpu)?;
    let mut cache = SeqCache::new();
    let mut worst = 0f32;
    let mut position = 0;
    for input in [vec![1u32, 5, 9, 2, 7, 3, 11], vec![4], vec![8]] {
        let ours = model.forward(&mut [BatchItem {
            tokens: &input,
            cache: &mut cache,
        }])?;
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
fn qwen3_and_mistral_match_candle_transformers() -> Result<()> {
    let root = std::env::temp_dir().join(format!("vllm-rs-tiny-{}", std::process::id()));
    let dev = Device::Cpu;

    let config = tiny_config("Qwen3ForCausalLM", "qwen3");
    let dir = root.join("qwen3");
    random_folder(&dir, &config, true)?;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)?
    };
    let mut reference = qwen3::ModelForCausalLM::new(&serde_json::from_value(config.clone())?, vb)?;
    let qwen3_diff = compare_dense(&dir, |ids, pos| Ok(reference.forward(ids, pos)?))?;

    let config = tiny_config("MistralForCausalLM", "mistral");
    let dir = root.join("mistral");
    random_folder(&dir, &config, false)?;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)?
    };
    let mut reference = mistral::Model::new(&serde_json::from_value(config.clone())?, vb)?;
    let mistral_diff = compare_dense(&dir, |ids, pos| Ok(reference.forward(ids, pos)?))?;

    eprintln!(
        "max abs logit diff vs candle-transformers: qwen3 {qwen3_diff:.2e}, mistral {mistral_diff:.2e}"
    );
    assert!(qwen3_diff < 1e-4, "qwen3: {qwen3_diff}");
    assert!(mistral_diff < 1e-4, "mistral: {mistral_diff}");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
