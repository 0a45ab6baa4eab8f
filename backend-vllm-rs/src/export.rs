//! `export-hf`: writes a GGUF model out as a Hugging Face folder, with this crate's own code.
//!
//! Every tensor is dequantized and renamed to its Hugging Face name; llama.cpp's Q/K row
//! permutation is undone for the architectures its converter applies it to; `tokenizer.json`
//! is the tokenizer [`ModelTokenizer`] builds from the GGUF vocabulary and merges, so ids are
//! the same as on the GGUF; the chat template, BOS/EOS and end-of-generation ids go to
//! `tokenizer_config.json` and `generation_config.json`.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::decoders::byte_level::ByteLevel;

use crate::gguf::{GgufError, GgufFile};
use crate::model::Arch;
use crate::tokenizer::ModelTokenizer;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The GGUF could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The GGUF uses something a Hugging Face folder of these architectures cannot express.
    #[error("cannot export: {0}")]
    Unsupported(String),
    /// Writing the folder failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of `model.safetensors`.
    pub weight_bytes: u64,
}

fn write_error(path: &Path, reason: impl ToString) -> ExportError {
    ExportError::Write {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ExportError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| write_error(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| write_error(path, e))
}

/// The Hugging Face class and `model_type` of `arch`.
fn hf_names(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    }
}

fn torch_dtype(dtype: DType) -> Result<&'static str, ExportError> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::BF16 => Ok("bfloat16"),
        DType::F16 => Ok("float16"),
        other => Err(ExportError::Unsupported(format!(
            "dtype {other:?} (use f32, bf16 or f16)"
        ))),
    }
}

/// Writes the model in `gguf` as a Hugging Face folder in `dir` (created if needed), weights
/// in `dtype`.
pub fn export_hf(gguf: &Path, dir: &Path, dtype: DType) -> Result<ExportSummary, ExportError> {
    let device = Device::Cpu;
    let torch_dtype = torch_dtype(dtype)?;
    let mut file = GgufFile::open(gguf)?;
    let header = file.header()?;
    let cfg = &header.config;
    if file.has_tensor("rope_freqs.weight") {
        return Err(ExportError::Unsupported(
            "rope_freqs.weight (long-context RoPE factors) has no config.json form here".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;

    let permuted = cfg.arch.gguf_permutes_qk();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |file: &mut GgufFile,
                   gguf_name: &str,
                   hf_name: String,
                   rope_heads: Option<usize>|
     -> Result<Tensor, ExportError> {
        let t = file.dequantized(gguf_name, rope_heads, &device)?;
        let t = t.to_dtype(dtype).map_err(|e| GgufError::Tensor {
            name: gguf_name.to_string(),
            reason: e.to_string(),
        })?;
        tensors.insert(hf_name, t.clone());
        Ok(t)
    };
    put(
        &mut file,
        "token_embd.weight",
        "model.embed_tokens.weight".into(),
        None,
    )?;
    put(
        &mut file,
        "output_norm.weight",
        "model.norm.weight".into(),
        None,
    )?;
    let tied = !file.has_tensor("output.weight");
    if !tied {
        put(&mut file, "output.weight", "lm_head.weight".into(), None)?;
    }
    let mut intermediate = 0;
    for i in 0..cfg.layers {
        let (g, h) = (format!("blk.{i}"), format!("model.layers.{i}"));
        let mut map = |gguf: &str, hf: &str, rope_heads: Option<usize>| {
            put(
                &mut file,
                &format!("{g}.{gguf}"),
                format!("{h}.{hf}"),
                rope_heads,
            )
        };
        map("attn_norm.weight", "input_layernorm.weight", None)?;
        map(
            "attn_q.weight",
            "self_attn.q_proj.weight",
            permuted.then_some(cfg.heads),
        )?;
        map(
            "attn_k.weight",
            "self_attn.k_proj.weight",
            permuted.then_some(cfg.kv_heads),
        )?;
        map("attn_v.weight", "self_attn.v_proj.weight", None)?;
        map("attn_output.weight", "self_attn.o_proj.weight", None)?;
        if cfg.arch.has_qkv_bias() {
            map("attn_q.bias", "self_attn.q_proj.bias", None)?;
            map("attn_k.bias", "self_attn.k_proj.bias", None)?;
            map("attn_v.bias", "self_attn.v_proj.bias", None)?;
        }
        if cfg.arch.has_qk_norm() {
            map("attn_q_norm.weight", "self_attn.q_norm.weight", None)?;
            map("attn_k_norm.weight", "self_attn.k_norm.weight", None)?;
        }
        map("ffn_norm.weight", "post_attention_layernorm.weight", None)?;
        map("ffn_gate.weight", "mlp.gate_proj.weight", None)?;
        let up = map("ffn_up.weight", "mlp.up_proj.weight", None)?;
        map("ffn_down.weight", "mlp.down_proj.weight", None)?;
        intermediate = up.dim(0).unwrap_or(0);
    }
    let weights_path = dir.join("model.safetensors");
    let count = tensors.len();
    candle_core::safetensors::save(&tensors, &weights_path)
        .map_err(|e| write_error(&weights_path, e))?;
    drop(tensors);

    let tokenizer = ModelTokenizer::new(&header.vocab)
        .map_err(|e| ExportError::Unsupported(format!("the GGUF vocabulary: {e}")))?;
    let vocab = &header.vocab;
    let (class, model_type) = hf_names(cfg.arch);
    let mut eos: Vec<u32> = [vocab.eos, vocab.eot].into_iter().flatten().collect();
    eos.dedup();
    write_json(
        &dir.join("config.json"),
        &json!({
            "_name_or_path": header.name,
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": cfg.hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab,
            "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.context_length,
            "sliding_window": cfg.sliding_window,
            "tie_word_embeddings": tied,
            "attention_bias": cfg.arch.has_qkv_bias(),
            "hidden_act": "silu",
            "torch_dtype": torch_dtype,
            "bos_token_id": vocab.bos,
            "eos_token_id": vocab.eos,
        }),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({ "bos_token_id": vocab.bos, "eos_token_id": eos }),
    )?;
    let text = |id: Option<u32>| id.and_then(|i| vocab.tokens.get(i as usize)).cloned();
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "bos_token": text(vocab.bos),
            "eos_token": text(vocab.eos),
            "add_bos_token": vocab.add_bos,
            "model_max_length": cfg.context_length,
            "chat_template": header.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )?;
    // The decoder is what transformers uses to turn ids back into text.
    let mut inner = tokenizer.inner().clone();
    inner.with_decoder(Some(ByteLevel::default()));
    let tokenizer_path = dir.join("tokenizer.json");
    inner
        .save(&tokenizer_path, false)
        .map_err(|e| write_error(&tokenizer_path, e))?;
    let weight_bytes = std::fs::metadata(&weights_path).map_or(0, |m| m.len());
    Ok(ExportSummary {
        tensors: count,
        weight_bytes,
    })
}
