//! How a LoadModel request maps onto this engine, with vLLM's option names.
//!
//! Kept apart from loading so every rule (defaults, validation) is a plain function of the
//! request that unit tests can check; the fields and options every worker shares are read
//! once in backend-common's [`LoadRequest`].
use std::path::PathBuf;

use backend_common::engine::EngineError;
use backend_common::load::{DType, LoadRequest};

/// Option keys this worker reads besides the common ones (vLLM's `max_model_len`,
/// `gpu_memory_utilization` and `dtype` are common). vLLM's command-line spelling
/// (`--max-num-seqs`) reads the same, see [`backend_common::options`].
pub const OPTIONS: &[&str] = &[
    "block_size",
    "max_num_seqs",
    "parallel",
    "n_parallel",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "kv_cache_memory",
    "kv_cache_memory_bytes",
];

/// vLLM's default share of device memory the engine may use.
pub const DEFAULT_MEMORY_UTILIZATION: f64 = 0.9;

/// Positions per KV block (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Sequences running at once (vLLM's default).
pub const DEFAULT_MAX_NUM_SEQS: usize = 256;

/// Tokens per forward pass. Smaller than vLLM's GPU default (2048): on a CPU a prefill chunk
/// of 256 tokens already runs the matmuls at full efficiency, and a bigger one would stall
/// the running streams for seconds.
pub const DEFAULT_MAX_NUM_BATCHED_TOKENS: usize = 256;

/// Most KV cache on the CPU when `kv_cache_memory` is not given: vLLM's CPU backend default
/// (`VLLM_CPU_KVCACHE_SPACE` unset means 4 GiB), within `gpu_memory_utilization`.
pub const DEFAULT_CPU_KV_BYTES: u64 = 4 << 30;

/// Sequences of the full model length the default KV cache holds (up to
/// [`DEFAULT_CPU_KV_BYTES`]). The cache is reserved at load, so its default follows what a
/// CPU serves well (aggregate decode on a few cores stops growing past about 8 streams)
/// rather than reserving gigabytes for a small model.
pub const DEFAULT_KV_SEQUENCES: u64 = 8;

/// The compute dtype for weights saved in `saved` when `asked` was requested.
pub fn resolve_dtype(asked: DType, saved: candle_core::DType) -> candle_core::DType {
    match asked {
        DType::Auto => saved,
        DType::F32 => candle_core::DType::F32,
        DType::F16 => candle_core::DType::F16,
        DType::Bf16 => candle_core::DType::BF16,
    }
}

/// Everything LoadModel decides before reading the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// The GGUF file or Hugging Face folder.
    pub path: PathBuf,
    /// Longest sequence (prompt + output) served; `None` means the model's trained context.
    pub max_model_len: Option<usize>,
    /// Share of the machine's memory that weights and KV cache may take.
    pub memory_utilization: f64,
    /// Compute type asked for.
    pub dtype: DType,
    /// The engine core's limits.
    pub core: CoreSettings,
}

/// How the scheduler and the paged KV cache are sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreSettings {
    /// Positions per KV block (`block_size`).
    pub block_size: usize,
    /// Sequences running at once (`max_num_seqs`).
    pub max_num_seqs: usize,
    /// Tokens per forward pass (`max_num_batched_tokens`).
    pub max_num_batched_tokens: usize,
    /// Share full blocks between prompts with the same prefix (`enable_prefix_caching`).
    pub prefix_caching: bool,
    /// Bytes of KV cache (`kv_cache_memory`); `None` for the default.
    pub kv_cache_bytes: Option<u64>,
}

impl CoreSettings {
    fn from_request(req: &LoadRequest) -> Result<Self, EngineError> {
        let o = &req.options;
        let bad =
            |e: backend_common::options::OptionError| EngineError::InvalidArgument(e.to_string());
        let ranged = |keys: &[&str], default: usize, max: usize| -> Result<usize, EngineError> {
            match o.get_int::<i64>(keys).map_err(bad)? {
                None => Ok(default),
                Some(v) if v >= 1 && v as u64 <= max as u64 => Ok(v as usize),
                Some(v) => Err(EngineError::InvalidArgument(format!(
                    "option `{}`: {v} must be between 1 and {max}",
                    o.get_str(keys).map_or(keys[0], |(k, _)| k)
                ))),
            }
        };
        let kv_cache_bytes = match o
            .get_int::<i64>(&["kv_cache_memory", "kv_cache_memory_bytes"])
            .map_err(bad)?
        {
            None => None,
            Some(v) if v > 0 => Some(v as u64),
            Some(v) => {
                return Err(EngineError::InvalidArgument(format!(
                    "option `kv_cache_memory`: {v} must be a positive number of bytes"
                )));
            }
        };
        Ok(CoreSettings {
            block_size: ranged(&["block_size"], DEFAULT_BLOCK_SIZE, 1024)?,
            // llama.cpp's `parallel` (LocalAI's name for concurrent sequences) means the same.
            max_num_seqs: ranged(
                &["max_num_seqs", "parallel", "n_parallel"],
                DEFAULT_MAX_NUM_SEQS,
                4096,
            )?,
            max_num_batched_tokens: ranged(
                &["max_num_batched_tokens"],
                DEFAULT_MAX_NUM_BATCHED_TOKENS,
                1 << 20,
            )?,
            prefix_caching: o
                .get_bool(&["enable_prefix_caching"])
                .map_err(bad)?
                .unwrap_or(true),
            kv_cache_bytes,
        })
    }

    /// Bytes of KV cache to allocate: `kv_cache_memory`, else room for
    /// [`DEFAULT_KV_SEQUENCES`] sequences of `sequence_bytes` each, within the CPU default
    /// and what `budget` (the share of memory weights and KV may take) leaves after `weights`.
    pub fn kv_bytes(&self, budget: Option<u64>, weights: u64, sequence_bytes: u64) -> u64 {
        self.kv_cache_bytes.unwrap_or_else(|| {
            let default = sequence_bytes
                .saturating_mul(DEFAULT_KV_SEQUENCES)
                .min(DEFAULT_CPU_KV_BYTES);
            budget.map_or(default, |b| b.saturating_sub(weights).min(default))
        })
    }
}

impl LoadSettings {
    /// Reads a LoadModel request.
    pub fn from_request(req: &LoadRequest) -> Result<Self, EngineError> {
        if req.tensor_parallel_size > 1 {
            return Err(EngineError::Unimplemented(
                "TensorParallelSize > 1 (serving one model across several GPUs)",
            ));
        }
        // A CPU build: GPU 0 (LocalAI's default) is read as "the device there is".
        if let Some(main) = req.main_gpu.filter(|&m| m > 0) {
            return Err(EngineError::InvalidArgument(format!(
                "MainGPU {main}: this build of the worker runs on the CPU and sees no GPU"
            )));
        }
        if req.tensor_split.iter().filter(|&&v| v > 0.0).count() > 1 {
            return Err(EngineError::InvalidArgument(
                "TensorSplit spreads the model over several GPUs; this build of the worker runs on the CPU: leave it empty".into(),
            ));
        }
        if let Some(lora) = &req.lora {
            return Err(EngineError::InvalidArgument(format!(
                "LoraAdapter `{}`: this backend does not apply LoRA adapters; merge the adapter into the weights, or use the llama.cpp backend",
                lora.path.display()
            )));
        }
        match req.quantization.as_str() {
            // GGUF files carry their own quantization; a folder runs dense.
            "" | "none" | "gguf" => {}
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "Quantization `{other}` is not supported: load a GGUF file for quantized weights, or leave Quantization empty for a dense folder"
                )));
            }
        }
        Ok(LoadSettings {
            path: req.path.clone(),
            max_model_len: req.max_model_len.or(req.context_size).map(|n| n as usize),
            memory_utilization: req.memory_utilization.unwrap_or(DEFAULT_MEMORY_UTILIZATION),
            dtype: req.dtype,
            core: CoreSettings::from_request(req)?,
        })
    }

    /// The longest sequence served for a model trained on `trained` positions.
    pub fn effective_max_len(&self, trained: usize) -> Result<usize, EngineError> {
        match self.max_model_len {
            None => Ok(trained.max(1)),
            Some(n) if n <= trained => Ok(n),
            Some(n) => Err(EngineError::InvalidArgument(format!(
                "max_model_len {n} is longer than the {trained} positions the model was trained on"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_common::pb::ModelOptions;

    fn settings(o: ModelOptions) -> Result<LoadSettings, EngineError> {
        let req = LoadRequest::from_proto(&ModelOptions {
            model_file: "/m/x.gguf".into(),
            ..o
        })?;
        LoadSettings::from_request(&req)
    }

    #[test]
    fn defaults() {
        let s = settings(ModelOptions::default()).unwrap();
        assert_eq!(s.max_model_len, None);
        assert_eq!(s.memory_utilization, DEFAULT_MEMORY_UTILIZATION);
        assert_eq!(s.dtype, DType::Auto);
        assert_eq!(s.effective_max_len(32768).unwrap(), 32768);
        assert_eq!(
            s.core,
            CoreSettings {
                block_size: 16,
                max_num_seqs: 256,
                max_num_batched_tokens: DEFAULT_MAX_NUM_BATCHED_TOKENS,
                prefix_caching: true,
                kv_cache_bytes: None,
            }
        );
        // Eight sequences of 1 GiB would be 8 GiB: the CPU default caps it.
        assert_eq!(
            s.core.kv_bytes(Some(10 << 30), 1 << 30, 1 << 30),
            DEFAULT_CPU_KV_BYTES
        );
        assert_eq!(s.core.kv_bytes(Some(3 << 30), 1 << 30, 1 << 30), 2 << 30);
        // Eight sequences of 50 MiB: 400 MiB, not the whole CPU default.
        assert_eq!(
            s.core.kv_bytes(Some(10 << 30), 1 << 30, 50 << 20),
            400 << 20
        );
    }

    #[test]
    fn gpu_fields_beyond_the_cpu_are_refused() {
        let gpu = |main_gpu: &str, tensor_split: &str| {
            settings(ModelOptions {
                ngpu_layers: 99,
                main_gpu: main_gpu.into(),
                tensor_split: tensor_split.into(),
                ..Default::default()
            })
        };
        assert!(gpu("0", "1").is_ok(), "LocalAI's defaults for one GPU");
        for (main_gpu, split, says) in [("1", "", "MainGPU 1"), ("", "1,1", "TensorSplit")] {
            let e = gpu(main_gpu, split).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    fn with_options(options: &[&str]) -> Result<LoadSettings, EngineError> {
        settings(ModelOptions {
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn engine_core_options_in_both_spellings() {
        let s = with_options(&[
            "--max-num-seqs:8",
            "--enable-prefix-caching:false",
            "--block-size:32",
            "max_num_batched_tokens:64",
            "kv_cache_memory:1048576",
        ])
        .unwrap();
        assert_eq!(
            s.core,
            CoreSettings {
                block_size: 32,
                max_num_seqs: 8,
                max_num_batched_tokens: 64,
                prefix_caching: false,
                kv_cache_bytes: Some(1 << 20),
            }
        );
        assert_eq!(s.core.kv_bytes(Some(1 << 40), 0, 1 << 30), 1 << 20);
        assert_eq!(with_options(&["parallel:4"]).unwrap().core.max_num_seqs, 4);
        for (bad, needle) in [
            ("max_num_seqs:0", "between 1 and"),
            ("parallel:0", "option `parallel`: 0 must be between 1 and"),
            ("parallel:abc", "not a valid integer"),
            ("block_size:abc", "not a valid integer"),
            ("enable_prefix_caching:maybe", "boolean"),
            ("kv_cache_memory:-5", "positive number of bytes"),
        ] {
            let e = with_options(&[bad]).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{bad}: {e}");
            assert!(e.to_string().contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn max_model_len_falls_back_to_the_context_size() {
        let both = settings(ModelOptions {
            max_model_len: 4096,
            context_size: 1024,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(both.max_model_len, Some(4096));
        let ctx = settings(ModelOptions {
            context_size: 1024,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ctx.effective_max_len(32768).unwrap(), 1024);
        assert!(ctx.effective_max_len(512).is_err());
    }

    #[test]
    fn a_lora_adapter_is_refused_by_name() {
        let e = settings(ModelOptions {
            lora_adapter: "/nowhere/adapter.gguf".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
        assert!(
            e.to_string()
                .contains("LoraAdapter `/nowhere/adapter.gguf`"),
            "{e}"
        );
    }

    #[test]
    fn quantization_and_tensor_parallel() {
        let e = settings(ModelOptions {
            quantization: "awq".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
        let e = settings(ModelOptions {
            tensor_parallel_size: 2,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, EngineError::Unimplemented(_)), "{e}");
        assert!(
            settings(ModelOptions {
                quantization: "GGUF".into(),
                ..Default::default()
            })
            .is_ok()
        );
    }
}
