//! How a LoadModel request maps onto this engine, with vLLM's option names.
//!
//! Kept apart from loading so every rule (defaults, aliases, validation) is a plain function
//! of the request that unit tests can check.
use std::path::PathBuf;

use backend_common::engine::{EngineError, LoadRequest};

/// Option keys this worker reads from `ModelOptions.Options`.
pub const KNOWN_OPTIONS: &[&str] = &[
    "tool_parser",
    "reasoning_parser",
    "max_model_len",
    "gpu_memory_utilization",
    "dtype",
    "enforce_eager",
];

/// vLLM's default share of device memory the engine may use.
pub const DEFAULT_MEMORY_UTILIZATION: f64 = 0.9;

/// Compute type asked for (`DType` field or `dtype:` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    /// The model's own type (f32 activations for GGUF).
    Auto,
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl DTypeChoice {
    /// The compute dtype for weights saved in `saved`.
    pub fn resolve(self, saved: candle_core::DType) -> candle_core::DType {
        use candle_core::DType;
        match self {
            DTypeChoice::Auto => saved,
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::F16 => DType::F16,
            DTypeChoice::Bf16 => DType::BF16,
        }
    }

    fn parse(raw: &str) -> Result<Self, EngineError> {
        Ok(match raw.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => DTypeChoice::Auto,
            "f32" | "float32" | "float" => DTypeChoice::F32,
            "f16" | "float16" | "half" => DTypeChoice::F16,
            "bf16" | "bfloat16" => DTypeChoice::Bf16,
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "dtype: `{other}` is not one of auto, float32, float16, bfloat16"
                )));
            }
        })
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
    pub dtype: DTypeChoice,
    /// vLLM's switch against CUDA graphs; accepted, and the CPU path is always eager.
    pub enforce_eager: bool,
    /// Default seed of requests that send none.
    pub seed: Option<u32>,
}

impl LoadSettings {
    /// Reads a LoadModel request.
    pub fn from_request(req: &LoadRequest) -> Result<Self, EngineError> {
        let o = &req.options;
        if o.tensor_parallel_size > 1 {
            return Err(EngineError::Unimplemented(
                "TensorParallelSize > 1 (serving one model across several GPUs)",
            ));
        }
        match o.quantization.trim().to_ascii_lowercase().as_str() {
            // GGUF files carry their own quantization; a folder runs dense.
            "" | "none" | "gguf" => {}
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "Quantization `{other}` is not supported: load a GGUF file for quantized weights, or leave Quantization empty for a dense folder"
                )));
            }
        }
        let extra = &req.extra;
        let max_model_len = match extra.get_int::<i64>(&["max_model_len"])? {
            Some(n) => Some(n),
            None if o.max_model_len != 0 => Some(o.max_model_len as i64),
            None if o.context_size != 0 => Some(o.context_size as i64),
            None => None,
        };
        let max_model_len = match max_model_len {
            Some(n) if n <= 0 => {
                return Err(EngineError::InvalidArgument(format!(
                    "max_model_len: {n} must be positive (or 0 for the model's context length)"
                )));
            }
            other => other.map(|n| n as usize),
        };
        let memory_utilization = match extra.get_float(&["gpu_memory_utilization"])? {
            Some(f) => f,
            None if o.gpu_memory_utilization != 0.0 => o.gpu_memory_utilization as f64,
            None => DEFAULT_MEMORY_UTILIZATION,
        };
        if !(memory_utilization > 0.0 && memory_utilization <= 1.0) {
            return Err(EngineError::InvalidArgument(format!(
                "gpu_memory_utilization: {memory_utilization} must be in (0, 1]"
            )));
        }
        let dtype = match extra.get_str(&["dtype"]) {
            Some((_, v)) => DTypeChoice::parse(v)?,
            None => DTypeChoice::parse(&o.d_type)?,
        };
        let enforce_eager = extra
            .get_bool(&["enforce_eager"])?
            .unwrap_or(o.enforce_eager);
        extra.warn_unknown(KNOWN_OPTIONS);
        Ok(LoadSettings {
            path: req.path.clone(),
            max_model_len,
            memory_utilization,
            dtype,
            enforce_eager,
            seed: (o.seed > 0).then_some(o.seed as u32),
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
        assert_eq!(s.max_model_len, None);
        assert_eq!(s.memory_utilization, DEFAULT_MEMORY_UTILIZATION);
        assert_eq!(
            (s.dtype, s.enforce_eager, s.seed),
            (DTypeChoice::Auto, false, None)
        );
        assert_eq!(s.effective_max_len(32768).unwrap(), 32768);
    }

    #[test]
    fn options_win_over_fields() {
        let s = LoadSettings::from_request(&request(ModelOptions {
            max_model_len: 4096,
            context_size: 1024,
            gpu_memory_utilization: 0.5,
            d_type: "float16".into(),
            seed: 3,
            options: vec![
                "max_model_len:2048".into(),
                "dtype:bfloat16".into(),
                "enforce_eager".into(),
            ],
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(s.max_model_len, Some(2048));
        assert_eq!((s.dtype, s.enforce_eager), (DTypeChoice::Bf16, true));
        assert_eq!((s.memory_utilization, s.seed), (0.5, Some(3)));
        let fields = LoadSettings::from_request(&request(ModelOptions {
            max_model_len: 4096,
            context_size: 1024,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(fields.max_model_len, Some(4096));
        let ctx = LoadSettings::from_request(&request(ModelOptions {
            context_size: 1024,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(ctx.effective_max_len(32768).unwrap(), 1024);
        assert!(ctx.effective_max_len(512).is_err());
    }

    #[test]
    fn bad_values_and_tensor_parallel() {
        for o in [
            ModelOptions {
                d_type: "int3".into(),
                ..Default::default()
            },
            ModelOptions {
                options: vec!["gpu_memory_utilization:1.5".into()],
                ..Default::default()
            },
            ModelOptions {
                max_model_len: -4,
                ..Default::default()
            },
            ModelOptions {
                options: vec!["enforce_eager:maybe".into()],
                ..Default::default()
            },
            ModelOptions {
                quantization: "awq".into(),
                ..Default::default()
            },
        ] {
            let e = LoadSettings::from_request(&request(o)).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
        }
        let e = LoadSettings::from_request(&request(ModelOptions {
            tensor_parallel_size: 2,
            ..Default::default()
        }))
        .unwrap_err();
        assert!(matches!(e, EngineError::Unimplemented(_)), "{e}");
    }
}
