//! How a LoadModel request maps onto llama.cpp's model and context parameters.
//!
//! Kept apart from the FFI so every mapping rule (defaults, aliases, validation) is a plain
//! function of the request that unit tests can check.
use std::path::PathBuf;

use backend_common::engine::{EngineError, LoadRequest};

/// Option keys this worker reads from `ModelOptions.Options`.
pub const KNOWN_OPTIONS: &[&str] = &[
    "parallel",
    "n_parallel",
    "tool_parser",
    "reasoning_parser",
    "use_jinja",
    "jinja",
    "cache_reuse",
    "context_shift",
    "warmup",
];

/// Context length used when the request leaves `ContextSize` at 0 and the model was trained
/// on more: enough for chat, and a KV cache that fits small machines.
pub const DEFAULT_CONTEXT: u32 = 8192;

/// Sequences decoded together when `parallel` is not given (llama-server's default).
pub const DEFAULT_PARALLEL: u32 = 4;

/// KV cache element types accepted in `CacheTypeKey` / `CacheTypeValue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// 32-bit float.
    F32,
    /// 16-bit float (llama.cpp's default).
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit quantised.
    Q8_0,
    /// 4-bit quantised.
    Q4_0,
    /// 4-bit quantised with offsets.
    Q4_1,
    /// 5-bit quantised.
    Q5_0,
    /// 5-bit quantised with offsets.
    Q5_1,
    /// 4-bit non-linear.
    Iq4Nl,
}

impl CacheType {
    fn parse(field: &str, raw: &str) -> Result<Option<Self>, EngineError> {
        Ok(Some(match raw.trim().to_ascii_lowercase().as_str() {
            "" => return Ok(None),
            "f32" => CacheType::F32,
            "f16" => CacheType::F16,
            "bf16" => CacheType::Bf16,
            "q8_0" => CacheType::Q8_0,
            "q4_0" => CacheType::Q4_0,
            "q4_1" => CacheType::Q4_1,
            "q5_0" => CacheType::Q5_0,
            "q5_1" => CacheType::Q5_1,
            "iq4_nl" => CacheType::Iq4Nl,
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "{field}: `{other}` is not a KV cache type; use one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl"
                )));
            }
        }))
    }

    /// Bytes per element, for memory estimates (block formats rounded up).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            CacheType::F32 => 4.0,
            CacheType::F16 | CacheType::Bf16 => 2.0,
            CacheType::Q8_0 => 34.0 / 32.0,
            CacheType::Q5_0 | CacheType::Q5_1 => 24.0 / 32.0,
            CacheType::Q4_0 | CacheType::Q4_1 | CacheType::Iq4Nl => 20.0 / 32.0,
        }
    }
}

/// Flash attention policy (`FlashAttention`: on/off/auto, or true/false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttention {
    /// Let llama.cpp decide.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Everything LoadModel decides, before touching llama.cpp.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// The GGUF file.
    pub path: PathBuf,
    /// Per-sequence context length; 0 means "from the model" (capped at [`DEFAULT_CONTEXT`]).
    pub context_size: u32,
    /// Logical batch size for prompt processing.
    pub n_batch: u32,
    /// CPU threads.
    pub threads: i32,
    /// Layers to offload to a GPU (ignored by CPU builds).
    pub gpu_layers: u32,
    /// Memory-map the weights.
    pub mmap: bool,
    /// Lock the weights in RAM.
    pub mlock: bool,
    /// Default seed of requests that send none.
    pub seed: Option<u32>,
    /// Compute embeddings instead of logits.
    pub embeddings: bool,
    /// Flash attention policy.
    pub flash_attention: FlashAttention,
    /// KV cache key type.
    pub cache_type_k: Option<CacheType>,
    /// KV cache value type.
    pub cache_type_v: Option<CacheType>,
    /// RoPE base frequency override.
    pub rope_freq_base: Option<f32>,
    /// RoPE frequency scale override.
    pub rope_freq_scale: Option<f32>,
    /// A LoRA adapter and its scale.
    pub lora: Option<(PathBuf, f32)>,
    /// Sequences decoded together in one batch.
    pub parallel: u32,
    /// Run one empty decode after loading so the first request does not pay for it.
    pub warmup: bool,
    /// `cache_reuse:N`: a request whose prompt starts with at least N tokens a free slot
    /// still holds from its last request reuses them instead of evaluating them again
    /// (llama-server's prompt cache; 0 = off).
    pub cache_reuse: u32,
    /// `GrammarTriggers`: words that switch a request's `Grammar` on when the output first
    /// contains one (llama.cpp's lazy grammar, as LocalAI's core sets them for tool calls).
    pub grammar_triggers: Vec<String>,
    /// `context_shift`: a generation that fills its context drops the older half of what
    /// follows its first token and goes on, as llama-server does, instead of stopping.
    pub context_shift: bool,
    /// Options that were read and are valid but cannot be honoured, each with the reason;
    /// logged at load so an operator sees them.
    pub ignored: Vec<String>,
}

/// Reads the llama-server options this worker accepts but cannot act on, and says why for
/// each one given; a malformed value is still an error.
fn ignored_options(req: &LoadRequest) -> Result<Vec<String>, EngineError> {
    let mut ignored = Vec::new();
    // Chat templates are always the model's Jinja template, rendered by backend-common.
    if req.extra.get_bool(&["use_jinja", "jinja"])? == Some(false) {
        ignored.push(
            "option `jinja:false` is ignored: this worker always renders the model's own Jinja chat template and has no legacy template engine to fall back to".to_string(),
        );
    }
    Ok(ignored)
}

fn positive_or_none(v: f32) -> Option<f32> {
    (v.is_finite() && v > 0.0).then_some(v)
}

impl LoadSettings {
    /// Reads a LoadModel request.
    pub fn from_request(req: &LoadRequest) -> Result<Self, EngineError> {
        let o = &req.options;
        let non_negative = |field: &str, v: i32| {
            u32::try_from(v).map_err(|_| {
                EngineError::InvalidArgument(format!(
                    "{field}: {v} is negative; use 0 for the default"
                ))
            })
        };
        let threads = match o.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as i32),
            n if n < 0 => {
                return Err(EngineError::InvalidArgument(format!(
                    "Threads: {n} is negative; use 0 for one per CPU core"
                )));
            }
            n => n,
        };
        let flash_attention = match o.flash_attention.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => FlashAttention::Auto,
            "on" | "true" | "1" | "enabled" => FlashAttention::On,
            "off" | "false" | "0" | "disabled" => FlashAttention::Off,
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "FlashAttention: `{other}` is not one of on, off, auto"
                )));
            }
        };
        let lora = (!o.lora_adapter.is_empty()).then(|| {
            let adapter = PathBuf::from(&o.lora_adapter);
            let path = if adapter.is_absolute() || o.model_path.is_empty() {
                adapter
            } else {
                PathBuf::from(&o.model_path).join(adapter)
            };
            let scale = if o.lora_scale == 0.0 {
                1.0
            } else {
                o.lora_scale
            };
            (path, scale)
        });
        let parallel = req
            .extra
            .get_int::<u32>(&["parallel", "n_parallel"])?
            .unwrap_or(DEFAULT_PARALLEL);
        if parallel == 0 || parallel > 64 {
            return Err(EngineError::InvalidArgument(format!(
                "option `parallel`: {parallel} must be between 1 and 64"
            )));
        }
        req.extra.warn_unknown(KNOWN_OPTIONS);
        let ignored = ignored_options(req)?;
        Ok(LoadSettings {
            path: req.path.clone(),
            context_size: non_negative("ContextSize", o.context_size)?,
            n_batch: match non_negative("NBatch", o.n_batch)? {
                0 => 512,
                n => n,
            },
            threads,
            gpu_layers: non_negative("NGPULayers", o.ngpu_layers)?,
            mmap: o.m_map,
            mlock: o.m_lock,
            seed: (o.seed > 0).then_some(o.seed as u32),
            embeddings: o.embeddings,
            flash_attention,
            cache_type_k: CacheType::parse("CacheTypeKey", &o.cache_type_key)?,
            cache_type_v: CacheType::parse("CacheTypeValue", &o.cache_type_value)?,
            rope_freq_base: positive_or_none(o.rope_freq_base),
            rope_freq_scale: positive_or_none(o.rope_freq_scale),
            lora,
            parallel,
            warmup: req.extra.get_bool(&["warmup"])?.unwrap_or(true),
            context_shift: req.extra.get_bool(&["context_shift"])?.unwrap_or(false),
            cache_reuse: req.extra.get_int::<u32>(&["cache_reuse"])?.unwrap_or(0),
            grammar_triggers: o
                .grammar_triggers
                .iter()
                .map(|t| t.word.clone())
                .filter(|w| !w.is_empty())
                .collect(),
            ignored,
        })
    }

    /// The per-sequence context for a model trained on `n_ctx_train` tokens.
    pub fn effective_context(&self, n_ctx_train: u32) -> u32 {
        match self.context_size {
            0 => n_ctx_train.clamp(1, DEFAULT_CONTEXT),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_common::options::Options;
    use backend_common::pb::ModelOptions;

    fn request(o: ModelOptions) -> LoadRequest {
        LoadRequest {
            extra: Options::parse(&o.options),
            options: o,
            path: PathBuf::from("/m/x.gguf"),
        }
    }

    #[test]
    fn defaults() {
        let s = LoadSettings::from_request(&request(ModelOptions::default())).unwrap();
        assert_eq!(
            (s.context_size, s.n_batch, s.parallel),
            (0, 512, DEFAULT_PARALLEL)
        );
        assert!(s.threads >= 1 && s.warmup && s.lora.is_none());
        assert!(s.ignored.is_empty());
        assert_eq!(s.flash_attention, FlashAttention::Auto);
        assert_eq!(s.effective_context(32768), DEFAULT_CONTEXT);
        assert_eq!(s.effective_context(2048), 2048);
    }

    #[test]
    fn fields_and_options_map() {
        let s = LoadSettings::from_request(&request(ModelOptions {
            context_size: 1024,
            threads: 2,
            seed: 7,
            flash_attention: "on".into(),
            cache_type_key: "q8_0".into(),
            lora_adapter: "a.gguf".into(),
            model_path: "/models".into(),
            options: vec!["n_parallel:2".into(), "warmup:false".into()],
            ..Default::default()
        }))
        .unwrap();
        assert_eq!((s.context_size, s.threads, s.seed), (1024, 2, Some(7)));
        assert_eq!(s.flash_attention, FlashAttention::On);
        assert_eq!(s.cache_type_k, Some(CacheType::Q8_0));
        assert_eq!(s.lora, Some((PathBuf::from("/models/a.gguf"), 1.0)));
        assert_eq!((s.parallel, s.warmup), (2, false));
        assert_eq!(s.effective_context(32768), 1024);
    }

    #[test]
    fn llama_server_options_are_read_and_unsupported_ones_reported() {
        let with = |options: &[&str]| {
            LoadSettings::from_request(&request(ModelOptions {
                options: options.iter().map(|o| o.to_string()).collect(),
                ..Default::default()
            }))
        };
        let honoured = with(&["use_jinja:true", "cache_reuse:0", "context_shift:false"]).unwrap();
        assert!(honoured.ignored.is_empty(), "{:?}", honoured.ignored);
        assert!(!honoured.context_shift);
        let s = with(&["jinja:false", "cache_reuse:256", "context_shift"]).unwrap();
        assert!(s.context_shift);
        assert_eq!(s.cache_reuse, 256);
        assert_eq!(s.ignored.len(), 1, "{:?}", s.ignored);
        for (note, option) in s.ignored.iter().zip(["jinja"]) {
            assert!(note.contains(option) && note.contains("ignored"), "{note}");
        }
        for bad in [
            "cache_reuse:lots",
            "context_shift:sometimes",
            "use_jinja:2x",
        ] {
            let e = with(&[bad]).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_are_invalid_argument() {
        for o in [
            ModelOptions {
                context_size: -1,
                ..Default::default()
            },
            ModelOptions {
                threads: -2,
                ..Default::default()
            },
            ModelOptions {
                flash_attention: "sometimes".into(),
                ..Default::default()
            },
            ModelOptions {
                cache_type_value: "q3".into(),
                ..Default::default()
            },
            ModelOptions {
                options: vec!["parallel:0".into()],
                ..Default::default()
            },
            ModelOptions {
                options: vec!["parallel:many".into()],
                ..Default::default()
            },
            ModelOptions {
                options: vec!["warmup:perhaps".into()],
                ..Default::default()
            },
        ] {
            let e = LoadSettings::from_request(&request(o)).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
        }
    }
}
