//! LoadModel's request, read once for every engine: where the model is, LocalAI's typed
//! `ModelOptions` fields validated with LocalAI's defaults, and the `key:value` options.
//!
//! Engines read [`LoadRequest`] and never the raw protobuf, so a field means the same in
//! every worker and a bad value gets the same INVALID_ARGUMENT from each. What only one
//! engine understands (llama.cpp's `parallel`, say) stays a `key:value` option that the
//! engine reads itself and lists in [`Engine::OPTIONS`](crate::engine::Engine::OPTIONS).
use std::path::PathBuf;

use crate::engine::EngineError;
use crate::model_path;
use crate::options::Options;
use crate::pb::ModelOptions;

/// Option keys read here, whatever the engine.
pub const COMMON_OPTIONS: &[&str] = &[
    "tool_parser",
    "reasoning_parser",
    "max_model_len",
    "gpu_memory_utilization",
    "dtype",
    "enforce_eager",
    "use_jinja",
    "jinja",
    "pooling",
];

/// `ModelOptions.EngineArgs` (a JSON object of engine arguments, vLLM's `AsyncEngineArgs`
/// names) as options appended after `Options`, so they win. A key that neither this crate
/// nor the engine (`engine_options`) reads is INVALID_ARGUMENT, with the closest known key.
pub fn engine_args_options(
    engine_args: &str,
    engine_options: &[&str],
) -> Result<Vec<String>, EngineError> {
    if engine_args.trim().is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |reason: String| EngineError::InvalidArgument(format!("EngineArgs: {reason}"));
    let value: serde_json::Value = serde_json::from_str(engine_args).map_err(|e| {
        invalid(format!(
            "not JSON ({e}); send a JSON object such as {{\"max_num_seqs\": 8}}"
        ))
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid(format!("{value} is not a JSON object")))?;
    let known: Vec<&str> = COMMON_OPTIONS
        .iter()
        .chain(engine_options)
        .copied()
        .collect();
    let mut options = Vec::new();
    for (key, value) in object {
        let name = key.trim_start_matches('-').replace('-', "_");
        if !known.contains(&name.as_str()) {
            let hint = known
                .iter()
                .min_by_key(|k| edit_distance(k, &name))
                .filter(|k| edit_distance(k, &name) <= 3)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "`{key}` is not an argument this backend reads (it reads {}){hint}",
                known.join(", ")
            )));
        }
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => value.to_string(),
            other => {
                return Err(invalid(format!(
                    "`{key}`: {other} is not a string, number or boolean"
                )));
            }
        };
        options.push(format!("{name}:{value}"));
    }
    Ok(options)
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// KV cache element types accepted in `CacheTypeKey` / `CacheTypeValue` (llama.cpp's names).
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
}

/// Flash attention policy (`FlashAttention`: on/off/auto, or true/false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttention {
    /// Let the engine decide.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl FlashAttention {
    fn parse(raw: &str) -> Result<Self, EngineError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(FlashAttention::Auto),
            "on" | "true" | "1" | "enabled" => Ok(FlashAttention::On),
            "off" | "false" | "0" | "disabled" => Ok(FlashAttention::Off),
            other => Err(EngineError::InvalidArgument(format!(
                "FlashAttention: `{other}` is not one of on, off, auto"
            ))),
        }
    }
}

/// Compute type asked for (`DType` field or `dtype:` option, vLLM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// The model's own type.
    Auto,
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    fn parse(raw: &str) -> Result<Self, EngineError> {
        Ok(match raw.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => DType::Auto,
            "f32" | "float32" | "float" => DType::F32,
            "f16" | "float16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::Bf16,
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "dtype: `{other}` is not one of auto, float32, float16, bfloat16"
                )));
            }
        })
    }
}

/// How Embedding pools the token vectors (`pooling:` option, llama.cpp's names, which LocalAI
/// passes through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// `none`: one vector per token (LocalAI's PER_TOKEN layout).
    None,
    /// `mean`: the average of the token vectors.
    Mean,
    /// `cls`: the first token's vector.
    Cls,
    /// `last`: the last token's vector.
    Last,
}

impl Pooling {
    fn parse(value: &str) -> Result<Self, EngineError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Pooling::None),
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "last" => Ok(Pooling::Last),
            "rank" => Err(EngineError::InvalidArgument(
                "option `pooling:rank` is for reranking models, which these workers do not serve; use none, mean, cls or last".into(),
            )),
            other => Err(EngineError::InvalidArgument(format!(
                "option `pooling:{other}`: use none, mean, cls or last"
            ))),
        }
    }
}

/// A LoRA adapter to apply on top of the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// The adapter file (`LoraAdapter`, relative to `ModelPath` unless absolute).
    pub path: PathBuf,
    /// `LoraScale` (1 when 0).
    pub scale: f32,
}

/// Parser names the options chose (`tool_parser:NAME`, `reasoning_parser:NAME`); checked
/// against the registry before any model is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParserChoice {
    /// The tool-call parser, when given.
    pub tool: Option<String>,
    /// The reasoning parser, when given.
    pub reasoning: Option<String>,
}

/// A LoadModel request, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRequest {
    /// The model file or folder (`ModelFile`, or `Model` under `ModelPath`).
    pub path: PathBuf,
    /// `Model` as sent: a Hugging Face hub id for engines that look ids up in a local cache.
    pub model: String,
    /// `Options`, parsed; engine-specific keys are read by the engine.
    pub options: Options,
    /// Parsers the options chose.
    pub parsers: ParserChoice,
    /// Default seed of requests that send none (`Seed` > 0).
    pub seed: Option<u32>,
    /// CPU threads (`Threads`; 0 means one per core).
    pub threads: u32,
    /// Context length per sequence (`ContextSize`; `None` for the engine's default).
    pub context_size: Option<u32>,
    /// Logical batch size of prompt processing (`NBatch`; `None` for the engine's default).
    pub n_batch: Option<u32>,
    /// The model serves Embedding (`Embeddings`).
    pub embeddings: bool,
    /// `pooling:` for Embedding; `None` leaves it to the model.
    pub pooling: Option<Pooling>,
    /// Layers offloaded to a GPU (`NGPULayers`).
    pub gpu_layers: u32,
    /// The GPU that holds what is not split (`MainGPU`, a device index).
    pub main_gpu: Option<u32>,
    /// Each GPU's share of the layers (`TensorSplit`, `"3,1"` or `"3/1"`); empty when not
    /// given.
    pub tensor_split: Vec<f32>,
    /// Memory-map the weights (`MMap`).
    pub mmap: bool,
    /// Lock the weights in RAM (`MLock`).
    pub mlock: bool,
    /// `FlashAttention`.
    pub flash_attention: FlashAttention,
    /// `CacheTypeKey`.
    pub cache_type_k: Option<CacheType>,
    /// `CacheTypeValue`.
    pub cache_type_v: Option<CacheType>,
    /// `RopeFreqBase` when positive.
    pub rope_freq_base: Option<f32>,
    /// `RopeFreqScale` when positive.
    pub rope_freq_scale: Option<f32>,
    /// `LoraAdapter` and `LoraScale`.
    pub lora: Option<LoraAdapter>,
    /// `GrammarTriggers`: words that switch a request's `Grammar` on when the output first
    /// contains one (llama.cpp's lazy grammar, as LocalAI's core sets them for tool calls).
    pub grammar_triggers: Vec<String>,
    /// Longest sequence served: option `max_model_len`, else `MaxModelLen`.
    pub max_model_len: Option<u32>,
    /// Share of memory weights and KV cache may take: option `gpu_memory_utilization`, else
    /// `GPUMemoryUtilization`; in (0, 1].
    pub memory_utilization: Option<f64>,
    /// Option `dtype`, else `DType`.
    pub dtype: DType,
    /// `Quantization`, lower case; empty when not given.
    pub quantization: String,
    /// `TensorParallelSize` (0 and 1 both mean one device).
    pub tensor_parallel_size: u32,
    /// Options and fields that are valid but that no engine here acts on, each with the
    /// reason; logged at load so an operator sees them.
    pub ignored: Vec<String>,
}

fn non_negative(field: &str, v: i32) -> Result<u32, EngineError> {
    u32::try_from(v).map_err(|_| {
        EngineError::InvalidArgument(format!("{field}: {v} is negative; use 0 for the default"))
    })
}

fn positive_or_none(v: f32) -> Option<f32> {
    (v.is_finite() && v > 0.0).then_some(v)
}

/// `TensorSplit`: shares separated by `,` or `/`, each a number >= 0, not all zero.
fn tensor_split(raw: &str) -> Result<Vec<f32>, EngineError> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |why: &str| {
        EngineError::InvalidArgument(format!(
            "TensorSplit `{raw}`: {why}; write each GPU's share, e.g. `3,1`"
        ))
    };
    let shares = raw
        .split([',', '/'])
        .map(|s| {
            s.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| invalid("a share is not a number >= 0"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if shares.iter().all(|&v| v == 0.0) {
        return Err(invalid("every share is 0"));
    }
    Ok(shares)
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

impl LoadRequest {
    /// Reads and checks a LoadModel request; nothing is read from disk but the path's form.
    pub fn from_proto(o: &ModelOptions) -> Result<Self, EngineError> {
        let path = model_path::resolve(o)?;
        let options = Options::parse(&o.options);
        let parsers = ParserChoice {
            tool: options
                .get_str(&["tool_parser"])
                .map(|(_, v)| v.to_string()),
            reasoning: options
                .get_str(&["reasoning_parser"])
                .map(|(_, v)| v.to_string()),
        };
        crate::parsers::select_parsers("", parsers.tool.as_deref(), parsers.reasoning.as_deref())
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let cores = crate::host::cores();
        let mut ignored = Vec::new();
        let threads = match o.threads {
            n if n < 0 => {
                return Err(EngineError::InvalidArgument(format!(
                    "Threads: {n} is negative; use 0 for one per CPU core"
                )));
            }
            0 => cores,
            // More threads than cores only slow decoding down, and a huge count makes the
            // engines fail to start their thread pools.
            n if n as u32 > cores => {
                ignored.push(format!(
                    "Threads: {n} is more than the {cores} CPU cores this process may use; using {cores}"
                ));
                cores
            }
            n => n as u32,
        };
        let max_model_len = match options.get_int::<i64>(&["max_model_len"])? {
            Some(n) => n,
            None => i64::from(o.max_model_len),
        };
        let max_model_len = match u32::try_from(max_model_len) {
            Ok(n) => nonzero(n),
            Err(_) => {
                return Err(EngineError::InvalidArgument(format!(
                    "max_model_len: {max_model_len} must be positive (or 0 for the model's context length)"
                )));
            }
        };
        let memory_utilization = match options.get_float(&["gpu_memory_utilization"])? {
            Some(f) => Some(f),
            None if o.gpu_memory_utilization != 0.0 => Some(f64::from(o.gpu_memory_utilization)),
            None => None,
        };
        if let Some(share) = memory_utilization
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(EngineError::InvalidArgument(format!(
                "gpu_memory_utilization: {share} must be in (0, 1]"
            )));
        }
        let dtype = match options.get_str(&["dtype"]) {
            Some((_, v)) => DType::parse(v)?,
            None => DType::parse(&o.d_type)?,
        };
        // Features no worker here has: refused by name, never loaded as if absent.
        for (field, value, what) in [
            ("MMProj", &o.mm_proj, "multimodal projectors (image input)"),
            (
                "DraftModel",
                &o.draft_model,
                "speculative decoding with a draft model",
            ),
        ] {
            if !value.is_empty() {
                return Err(EngineError::InvalidArgument(format!(
                    "{field} `{value}`: this backend does not support {what}; remove {field}"
                )));
            }
        }
        if !o.lora_adapters.is_empty() {
            return Err(EngineError::InvalidArgument(format!(
                "LoraAdapters ({} adapters): several LoRA adapters at once are not supported; load one with LoraAdapter",
                o.lora_adapters.len()
            )));
        }
        let lora = (!o.lora_adapter.is_empty()).then(|| {
            let adapter = PathBuf::from(&o.lora_adapter);
            LoraAdapter {
                path: if adapter.is_absolute() || o.model_path.is_empty() {
                    adapter
                } else {
                    PathBuf::from(&o.model_path).join(adapter)
                },
                scale: if o.lora_scale == 0.0 {
                    1.0
                } else {
                    o.lora_scale
                },
            }
        });
        // Both workers always render the model's own Jinja template (backend-common's).
        if options.get_bool(&["use_jinja", "jinja"])? == Some(false) {
            ignored.push(
                "option `jinja:false` is ignored: this worker always renders the model's own Jinja chat template and has no legacy template engine to fall back to".to_string(),
            );
        }
        if options
            .get_bool(&["enforce_eager"])?
            .unwrap_or(o.enforce_eager)
        {
            ignored.push(
                "`enforce_eager` is ignored: this build runs on the CPU, which is always eager (it has no CUDA graphs to turn off)".to_string(),
            );
        }
        Ok(LoadRequest {
            path,
            model: o.model.clone(),
            parsers,
            seed: (o.seed > 0).then_some(o.seed as u32),
            threads,
            context_size: nonzero(non_negative("ContextSize", o.context_size)?),
            n_batch: nonzero(non_negative("NBatch", o.n_batch)?),
            embeddings: o.embeddings,
            pooling: options
                .get_str(&["pooling"])
                .map(|(_, v)| Pooling::parse(v))
                .transpose()?,
            gpu_layers: non_negative("NGPULayers", o.ngpu_layers)?,
            main_gpu: match o.main_gpu.trim() {
                "" => None,
                index => Some(index.parse::<u32>().map_err(|_| {
                    EngineError::InvalidArgument(format!(
                        "MainGPU `{index}` is not a device index (0, 1, ...)"
                    ))
                })?),
            },
            tensor_split: tensor_split(&o.tensor_split)?,
            mmap: o.m_map,
            mlock: o.m_lock,
            flash_attention: FlashAttention::parse(&o.flash_attention)?,
            cache_type_k: CacheType::parse("CacheTypeKey", &o.cache_type_key)?,
            cache_type_v: CacheType::parse("CacheTypeValue", &o.cache_type_value)?,
            rope_freq_base: positive_or_none(o.rope_freq_base),
            rope_freq_scale: positive_or_none(o.rope_freq_scale),
            lora,
            grammar_triggers: o
                .grammar_triggers
                .iter()
                .map(|t| t.word.clone())
                .filter(|w| !w.is_empty())
                .collect(),
            max_model_len,
            memory_utilization,
            dtype,
            quantization: o.quantization.trim().to_ascii_lowercase(),
            tensor_parallel_size: non_negative("TensorParallelSize", o.tensor_parallel_size)?,
            ignored,
            options,
        })
    }

    /// Logs every option key that neither this module nor the engine (`engine_options`)
    /// reads, and every option that is valid but ignored.
    pub fn log_unread(&self, engine_options: &[&str]) {
        let known: Vec<&str> = COMMON_OPTIONS
            .iter()
            .chain(engine_options)
            .copied()
            .collect();
        self.options.warn_unknown(&known);
        for note in &self.ignored {
            tracing::warn!("{note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_args_become_options_and_unknown_keys_get_a_hint() {
        let options = engine_args_options(
            r#"{"max_num_seqs": 8, "enable-prefix-caching": false, "dtype": "bf16"}"#,
            &["max_num_seqs", "enable_prefix_caching"],
        )
        .unwrap();
        assert_eq!(
            options,
            [
                "max_num_seqs:8",
                "enable_prefix_caching:false",
                "dtype:bf16"
            ]
        );
        assert_eq!(engine_args_options(" ", &[]).unwrap(), Vec::<String>::new());
        let e = engine_args_options(r#"{"max_num_seq": 8}"#, &["max_num_seqs"]).unwrap_err();
        assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
        assert!(
            e.to_string().contains("did you mean `max_num_seqs`?"),
            "{e}"
        );
        let e = engine_args_options(r#"{"zzzzzzzzzz": 1}"#, &[]).unwrap_err();
        assert!(!e.to_string().contains("did you mean"), "{e}");
        for bad in ["[1]", "{", r#"{"dtype": [1]}"#] {
            let e = engine_args_options(bad, &[]).unwrap_err();
            assert!(e.to_string().starts_with("EngineArgs: "), "{e}");
        }
    }

    fn load(o: ModelOptions) -> Result<LoadRequest, EngineError> {
        LoadRequest::from_proto(&ModelOptions {
            model_file: "/m/x.gguf".into(),
            ..o
        })
    }

    fn options(list: &[&str]) -> ModelOptions {
        ModelOptions {
            options: list.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let r = load(ModelOptions::default()).unwrap();
        assert_eq!(r.path, PathBuf::from("/m/x.gguf"));
        assert!(r.threads >= 1);
        assert_eq!((r.context_size, r.n_batch, r.seed), (None, None, None));
        assert_eq!((r.max_model_len, r.memory_utilization), (None, None));
        assert_eq!(r.flash_attention, FlashAttention::Auto);
        assert_eq!(r.dtype, DType::Auto);
        assert!(r.lora.is_none() && r.ignored.is_empty());
        assert_eq!(r.parsers, ParserChoice::default());
    }

    #[test]
    fn main_gpu_and_tensor_split_are_read_or_refused() {
        let r = load(ModelOptions {
            main_gpu: " 1 ".into(),
            tensor_split: "3/1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((r.main_gpu, r.tensor_split), (Some(1), vec![3.0, 1.0]));
        let r = load(ModelOptions::default()).unwrap();
        assert_eq!((r.main_gpu, r.tensor_split.len()), (None, 0));
        for (main_gpu, split, says) in [
            ("first", "", "MainGPU `first`"),
            ("-1", "", "MainGPU `-1`"),
            ("", "1,x", "TensorSplit `1,x`"),
            ("", "0,0", "every share is 0"),
            ("", "1,-2", "TensorSplit `1,-2`"),
        ] {
            let e = load(ModelOptions {
                main_gpu: main_gpu.into(),
                tensor_split: split.into(),
                ..Default::default()
            })
            .unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn threads_beyond_the_cores_are_clamped_and_said() {
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let r = load(ModelOptions {
            threads: 1_000_000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.threads, cores);
        assert!(
            r.ignored
                .iter()
                .any(|note| note.contains("Threads: 1000000")),
            "{:?}",
            r.ignored
        );
    }

    #[test]
    fn fields_map() {
        let r = load(ModelOptions {
            context_size: 1024,
            n_batch: 64,
            threads: 1,
            seed: 7,
            flash_attention: "on".into(),
            cache_type_key: "q8_0".into(),
            lora_adapter: "a.gguf".into(),
            model_path: "/models".into(),
            grammar_triggers: vec![crate::pb::GrammarTrigger {
                word: "<tool_call>".into(),
            }],
            ..options(&["tool_parser:hermes"])
        })
        .unwrap();
        assert_eq!((r.context_size, r.n_batch), (Some(1024), Some(64)));
        assert_eq!((r.threads, r.seed), (1, Some(7)));
        assert_eq!(r.flash_attention, FlashAttention::On);
        assert_eq!(r.cache_type_k, Some(CacheType::Q8_0));
        assert_eq!(
            r.lora,
            Some(LoraAdapter {
                path: PathBuf::from("/models/a.gguf"),
                scale: 1.0
            })
        );
        assert_eq!(r.grammar_triggers, vec!["<tool_call>"]);
        assert_eq!(r.parsers.tool.as_deref(), Some("hermes"));
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        for (o, needle) in [
            (
                ModelOptions {
                    mm_proj: "mmproj.gguf".into(),
                    ..options(&[])
                },
                "MMProj `mmproj.gguf`",
            ),
            (
                ModelOptions {
                    draft_model: "/nowhere/draft.gguf".into(),
                    ..options(&[])
                },
                "DraftModel `/nowhere/draft.gguf`",
            ),
            (
                ModelOptions {
                    lora_adapters: vec!["a.gguf".into(), "b.gguf".into()],
                    ..options(&[])
                },
                "LoraAdapters (2 adapters)",
            ),
        ] {
            let e = load(o).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn options_win_over_fields() {
        let r = load(ModelOptions {
            max_model_len: 4096,
            gpu_memory_utilization: 0.5,
            d_type: "float16".into(),
            ..options(&["max_model_len:2048", "dtype:bfloat16"])
        })
        .unwrap();
        assert_eq!(r.max_model_len, Some(2048));
        assert_eq!(r.dtype, DType::Bf16);
        assert_eq!(r.memory_utilization, Some(0.5));
        let fields = load(ModelOptions {
            max_model_len: 4096,
            d_type: "half".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (fields.max_model_len, fields.dtype),
            (Some(4096), DType::F16)
        );
    }

    #[test]
    fn valid_but_ignored_options_are_reported() {
        let r = load(options(&["jinja:false", "enforce_eager"])).unwrap();
        assert_eq!(r.ignored.len(), 2, "{:?}", r.ignored);
        for (note, option) in r.ignored.iter().zip(["jinja", "enforce_eager"]) {
            assert!(note.contains(option) && note.contains("ignored"), "{note}");
        }
        assert!(
            load(options(&["use_jinja:true"]))
                .unwrap()
                .ignored
                .is_empty()
        );
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
                n_batch: -8,
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
                d_type: "int3".into(),
                ..Default::default()
            },
            ModelOptions {
                max_model_len: -4,
                ..Default::default()
            },
            options(&["gpu_memory_utilization:1.5"]),
            options(&["enforce_eager:maybe"]),
            options(&["use_jinja:2x"]),
            options(&["tool_parser:nope"]),
        ] {
            let e = load(o.clone()).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{o:?}: {e}");
        }
        let e = load(options(&["tool_parser:nope"])).unwrap_err();
        assert!(e.to_string().contains("hermes"), "{e}");
    }
}
