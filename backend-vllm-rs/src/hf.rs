//! Loading a Hugging Face model folder: `config.json`, `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json` and/or
//! `chat_template.jinja`, `generation_config.json`.
//!
//! Weights are memory-mapped and copied once: matmul weights into the requested dtype, norms
//! and biases into f32, the CPU compute dtype (see [`crate::model`]).
//! A model named by hub id (`Qwen/Qwen2.5-0.5B-Instruct`) is looked up in the local Hugging
//! Face cache only: nothing can be downloaded.
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use backend_common::load::Pooling;
use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{
    Arch, CPU_COMPUTE_DTYPE, Layer, Linear, ModelConfig, Projections, SUPPORTED_ARCHS, Weights,
};

/// A Hugging Face folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file the folder must have is absent.
    #[error("{file} is missing from the model folder ({what})")]
    Missing {
        /// The file's name.
        file: String,
        /// What it holds.
        what: &'static str,
    },
    /// A file is there but unreadable or malformed.
    #[error("{file}: {reason}")]
    Invalid {
        /// The file's name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The architecture is not implemented.
    #[error(
        "architecture `{0}` is not supported by this backend (supported: {archs})",
        archs = SUPPORTED_ARCHS
    )]
    UnsupportedArch(String),
    /// A weight is missing or has the wrong shape.
    #[error("weight `{name}`: {reason}")]
    Weight {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(file: &str, reason: impl ToString) -> HfError {
    HfError::Invalid {
        file: file.to_string(),
        reason: reason.to_string(),
    }
}

/// `rope_scaling` of `config.json` (Llama 3.1's long-context scheme).
#[derive(Debug, Clone, Deserialize)]
struct RopeScaling {
    #[serde(alias = "type")]
    rope_type: String,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

/// The fields of `config.json` this model code reads.
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(alias = "dtype")]
    torch_dtype: Option<String>,
    rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    eos_token_id: Option<Value>,
    quantization_config: Option<Value>,
    sliding_window: Option<usize>,
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<String>,
}

/// An opened Hugging Face model folder.
#[derive(Debug)]
pub struct HfFolder {
    dir: PathBuf,
    config: HfConfig,
    /// The model's hyper-parameters.
    pub model_config: ModelConfig,
    shards: Vec<PathBuf>,
}

fn read(dir: &Path, file: &str, what: &'static str) -> Result<String, HfError> {
    let path = dir.join(file);
    if !path.exists() {
        return Err(HfError::Missing {
            file: file.to_string(),
            what,
        });
    }
    std::fs::read_to_string(&path).map_err(|e| invalid(file, e))
}

/// Token ids of a JSON value that is one id or a list of ids.
pub fn ids_of(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl HfFolder {
    /// Opens `dir`, reading `config.json` and finding the weight files.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        let text = read(dir, "config.json", "the model's architecture and sizes")?;
        let config: HfConfig =
            serde_json::from_str(&text).map_err(|e| invalid("config.json", e))?;
        let arch_name = config
            .architectures
            .first()
            .cloned()
            .or_else(|| config.model_type.clone())
            .ok_or_else(|| invalid("config.json", "names no `architectures` or `model_type`"))?;
        let arch = Arch::from_hf_name(&arch_name).ok_or(HfError::UnsupportedArch(arch_name))?;
        if let Some(q) = &config.quantization_config {
            let method = q
                .get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            return Err(invalid(
                "config.json",
                format!(
                    "weights quantized with `{method}` are not supported; use a dense folder or a GGUF file"
                ),
            ));
        }
        let heads = config.num_attention_heads;
        let kv_heads = config.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(invalid(
                "config.json",
                format!("{kv_heads} key/value heads do not divide {heads} attention heads"),
            ));
        }
        let head_dim = match config.head_dim {
            Some(d) => d,
            None if config.hidden_size.is_multiple_of(heads) => config.hidden_size / heads,
            None => {
                return Err(invalid(
                    "config.json",
                    format!(
                        "{heads} heads do not divide hidden_size {}",
                        config.hidden_size
                    ),
                ));
            }
        };
        let model_config = ModelConfig {
            arch,
            hidden: config.hidden_size,
            layers: config.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            vocab: config.vocab_size,
            rms_eps: config.rms_norm_eps,
            rope_theta: config.rope_theta.unwrap_or(10_000.0),
            context_length: config.max_position_embeddings.unwrap_or(2048),
            // Qwen2/3 configs carry a window too, switched off by `use_sliding_window: false`.
            sliding_window: config.sliding_window.filter(|_| arch == Arch::Mistral),
        };
        let shards = shard_files(dir)?;
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            config,
            model_config,
            shards,
        })
    }

    /// The model's name: `config.json`'s `_name_or_path`, else the folder's name.
    pub fn name(&self) -> Option<String> {
        self.config
            .name_or_path
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                self.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
    }

    /// The pooling a sentence-transformers folder declares (`1_Pooling/config.json`), if any.
    pub fn declared_pooling(&self) -> Option<Pooling> {
        let text = std::fs::read_to_string(self.dir.join("1_Pooling").join("config.json")).ok()?;
        let config: Value = serde_json::from_str(&text).ok()?;
        let on = |key: &str| config.get(key).and_then(Value::as_bool) == Some(true);
        if on("pooling_mode_lasttoken") {
            Some(Pooling::Last)
        } else if on("pooling_mode_cls_token") {
            Some(Pooling::Cls)
        } else if on("pooling_mode_mean_tokens") {
            Some(Pooling::Mean)
        } else {
            None
        }
    }

    /// Bytes of the weight files.
    pub fn weight_files_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    /// The dtype the weights were saved in (`torch_dtype`), f32 when unnamed.
    pub fn saved_dtype(&self) -> Result<DType, HfError> {
        match self.config.torch_dtype.as_deref() {
            None | Some("float32") => Ok(DType::F32),
            Some("bfloat16") => Ok(DType::BF16),
            Some("float16") => Ok(DType::F16),
            Some(other) => Err(invalid(
                "config.json",
                format!("torch_dtype `{other}` is not float32, bfloat16 or float16"),
            )),
        }
    }

    /// `eos_token_id` of `config.json`.
    pub fn eos_ids(&self) -> Vec<u32> {
        ids_of(self.config.eos_token_id.as_ref())
    }

    /// Llama 3.1's per-frequency RoPE divisors, when `rope_scaling` asks for them.
    fn rope_factors(&self) -> Result<Option<Vec<f32>>, HfError> {
        let Some(scaling) = &self.config.rope_scaling else {
            return Ok(None);
        };
        match scaling.rope_type.as_str() {
            "default" => Ok(None),
            "llama3" => {
                let (Some(factor), Some(low), Some(high), Some(original)) = (
                    scaling.factor,
                    scaling.low_freq_factor,
                    scaling.high_freq_factor,
                    scaling.original_max_position_embeddings,
                ) else {
                    return Err(invalid(
                        "config.json",
                        "rope_scaling llama3 needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings",
                    ));
                };
                let cfg = &self.model_config;
                let (low_wavelen, high_wavelen) = (original as f32 / low, original as f32 / high);
                let factors = (0..cfg.head_dim / 2)
                    .map(|i| {
                        let freq = 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / cfg.head_dim as f32);
                        let wavelen = 2.0 * std::f32::consts::PI / freq;
                        if wavelen < high_wavelen {
                            1.0
                        } else if wavelen > low_wavelen {
                            factor
                        } else {
                            let smooth = (original as f32 / wavelen - low) / (high - low);
                            // The divisor that gives (1 - s) f / factor + s f.
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect();
                Ok(Some(factors))
            }
            other => Err(invalid(
                "config.json",
                format!("rope_scaling type `{other}` is not supported (only llama3)"),
            )),
        }
    }

    /// Reads every weight, the matmul weights in `dtype`, onto `device`.
    pub fn weights(&self, dtype: DType, device: &Device) -> Result<Weights, HfError> {
        // SAFETY: the files are mapped read-only and copied out before this returns; a
        // folder changed underneath a running load is outside what any loader can guard.
        let st = unsafe { MmapedSafetensors::multi(&self.shards) }
            .map_err(|e| invalid("model.safetensors", e))?;
        let cfg = &self.model_config;
        let load_as = |name: &str, shape: &[usize], dtype: DType| -> Result<Tensor, HfError> {
            let weight_error = |reason: String| HfError::Weight {
                name: name.to_string(),
                reason,
            };
            let t = st
                .load(name, device)
                .map_err(|e| weight_error(e.to_string()))?;
            if t.dims() != shape {
                return Err(weight_error(format!(
                    "shape {:?}, config.json implies {shape:?}",
                    t.dims()
                )));
            }
            t.to_dtype(dtype).map_err(|e| weight_error(e.to_string()))
        };
        let load = |name: &str, shape: &[usize]| load_as(name, shape, CPU_COMPUTE_DTYPE);
        let dense = |name: &str, shape: &[usize]| {
            let t = load_as(name, shape, dtype)?;
            // f16 runs through candle's f16 gemm; bf16 through the model's own kernel.
            let m = if dtype == DType::F16 {
                QMatMul::TensorF16(t)
            } else {
                QMatMul::Tensor(t)
            };
            Linear::new(m).map_err(|e| HfError::Weight {
                name: name.to_string(),
                reason: e.to_string(),
            })
        };
        let (hidden, hd) = (cfg.hidden, cfg.head_dim);
        let (q_rows, kv_rows) = (cfg.heads * hd, cfg.kv_heads * hd);
        let intermediate = st
            .get("model.layers.0.mlp.up_proj.weight")
            .map_err(|e| HfError::Weight {
                name: "model.layers.0.mlp.up_proj.weight".into(),
                reason: e.to_string(),
            })?
            .shape()[0];
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let attn = |w: &str| format!("{p}.self_attn.{w}");
            let qkv_bias = if cfg.arch.has_qkv_bias() {
                Some([
                    load(&attn("q_proj.bias"), &[q_rows])?,
                    load(&attn("k_proj.bias"), &[kv_rows])?,
                    load(&attn("v_proj.bias"), &[kv_rows])?,
                ])
            } else {
                None
            };
            let qk_norm = if cfg.arch.has_qk_norm() {
                Some([
                    load(&attn("q_norm.weight"), &[hd])?,
                    load(&attn("k_norm.weight"), &[hd])?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: load(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                qkv: Projections::Separate(vec![
                    dense(&attn("q_proj.weight"), &[q_rows, hidden])?,
                    dense(&attn("k_proj.weight"), &[kv_rows, hidden])?,
                    dense(&attn("v_proj.weight"), &[kv_rows, hidden])?,
                ]),
                qkv_bias,
                qk_norm,
                o: dense(&attn("o_proj.weight"), &[hidden, q_rows])?,
                ffn_norm: load(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
                gate_up: Projections::Separate(vec![
                    dense(
                        &format!("{p}.mlp.gate_proj.weight"),
                        &[intermediate, hidden],
                    )?,
                    dense(&format!("{p}.mlp.up_proj.weight"), &[intermediate, hidden])?,
                ]),
                down: dense(
                    &format!("{p}.mlp.down_proj.weight"),
                    &[hidden, intermediate],
                )?,
            });
        }
        let embed = load_as("model.embed_tokens.weight", &[cfg.vocab, hidden], dtype)?;
        let tied = self.config.tie_word_embeddings || !has(&st, "lm_head.weight");
        let lm_head = if tied {
            let shared = if dtype == DType::F16 {
                QMatMul::TensorF16(embed.clone())
            } else {
                QMatMul::Tensor(embed.clone())
            };
            Linear::new(shared).map_err(|e| HfError::Weight {
                name: "model.embed_tokens.weight".into(),
                reason: e.to_string(),
            })?
        } else {
            dense("lm_head.weight", &[cfg.vocab, hidden])?
        };
        Ok(Weights {
            embed: QMatMul::Tensor(embed),
            layers,
            norm: load("model.norm.weight", &[hidden])?,
            lm_head,
            tied,
            rope_factors: self.rope_factors()?,
            dtype: CPU_COMPUTE_DTYPE,
        })
    }
}

fn has(st: &MmapedSafetensors, name: &str) -> bool {
    st.get(name).is_ok()
}

/// The safetensors files of `dir`: `model.safetensors`, or the shards its index names.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    const INDEX: &str = "model.safetensors.index.json";
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if !dir.join(INDEX).is_file() {
        return Err(HfError::Missing {
            file: "model.safetensors".into(),
            what: "the weights; a sharded model has model.safetensors.index.json instead",
        });
    }
    let index: Value = serde_json::from_str(&read(dir, INDEX, "the shard list")?)
        .map_err(|e| invalid(INDEX, e))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(INDEX, "has no `weight_map` object"))?;
    let names: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    if names.is_empty() {
        return Err(invalid(INDEX, "`weight_map` names no files"));
    }
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(HfError::Missing {
                    file: name.to_string(),
                    what: "a weight shard named in model.safetensors.index.json",
                })
            }
        })
        .collect()
}

/// Where the Hugging Face cache keeps models: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as `huggingface_hub` resolves it).
pub fn hub_cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = env("HF_HOME") {
        return home.join("hub");
    }
    let cache = env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// Whether `name` has the shape of a hub id (`org/name`, not a path on disk).
pub fn looks_like_hub_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The cached snapshot of hub model `id` (`models--org--name/snapshots/<rev>`, the revision
/// `refs/main` names, else the only one); `Err` holds the folder that was searched.
pub fn find_in_hub_cache(id: &str, cache: &Path) -> Result<PathBuf, PathBuf> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
    }
    let found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(repo),
    }
}

/// End-of-generation ids a folder names: `generation_config.json`'s and `config.json`'s
/// `eos_token_id` (either may be a list).
pub fn generation_eos_ids(folder: &HfFolder) -> Vec<u32> {
    let mut ids: HashSet<u32> = folder.eos_ids().into_iter().collect();
    if let Ok(text) = std::fs::read_to_string(folder.dir.join("generation_config.json"))
        && let Ok(json) = serde_json::from_str::<Value>(&text)
    {
        ids.extend(ids_of(json.get("eos_token_id")));
    }
    let mut ids: Vec<u32> = ids.into_iter().collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(looks_like_hub_id("Qwen/Qwen2.5-0.5B-Instruct"));
        for path in [
            "/models/x",
            "model.gguf",
            "a/b/c",
            "./x",
            "../x",
            "a/",
            "a b/c",
        ] {
            assert!(!looks_like_hub_id(path), "{path}");
        }
    }

    #[test]
    fn the_hub_cache_layout_is_followed() {
        let cache = std::env::temp_dir().join(format!("hf-cache-test-{}", std::process::id()));
        let repo = cache.join("models--org--m");
        let snapshot = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        assert_eq!(find_in_hub_cache("org/m", &cache), Err(repo.clone()));
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        assert_eq!(find_in_hub_cache("org/m", &cache), Ok(snapshot.clone()));
        // Two snapshots: `refs/main` decides.
        let other = repo.join("snapshots").join("def456");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("config.json"), "{}").unwrap();
        assert_eq!(find_in_hub_cache("org/m", &cache), Err(repo.clone()));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "def456\n").unwrap();
        assert_eq!(find_in_hub_cache("org/m", &cache), Ok(other));
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_folder_says_what_it_lacks() {
        let dir = std::env::temp_dir().join(format!("hf-folder-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = HfFolder::open(&dir).unwrap_err();
        assert!(e.to_string().contains("config.json is missing"), "{e}");
        let config = r#"{"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 4,
            "rms_norm_eps": 1e-6}"#;
        std::fs::write(dir.join("config.json"), config).unwrap();
        let e = HfFolder::open(&dir).unwrap_err();
        assert!(e.to_string().contains("GPTNeoXForCausalLM"), "{e}");
        std::fs::write(
            dir.join("config.json"),
            config.replace("GPTNeoXForCausalLM", "Qwen3ForCausalLM"),
        )
        .unwrap();
        let e = HfFolder::open(&dir).unwrap_err();
        assert!(
            e.to_string().contains("model.safetensors is missing"),
            "{e}"
        );
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let e = HfFolder::open(&dir).unwrap_err();
        assert!(
            e.to_string()
                .contains("model-00001-of-00002.safetensors is missing"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
