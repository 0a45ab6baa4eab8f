//! How a LoadModel request maps onto this engine, with vLLM's option names.
//!
//! Kept apart from loading so every rule (defaults, validation) is a plain function of the
//! request that unit tests can check; the fields and options every worker shares are read
//! once in backend-common's [`LoadRequest`].
use std::path::PathBuf;

use backend_common::engine::EngineError;
use backend_common::load::{DType, LoadRequest};

/// Option keys this worker reads besides the common ones (vLLM's `max_model_len`,
/// `gpu_memory_utilization` and `dtype` are common).
pub const OPTIONS: &[&str] = &[];

/// vLLM's default share of device memory the engine may use.
pub const DEFAULT_MEMORY_UTILIZATION: f64 = 0.9;

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
}

impl LoadSettings {
    /// Reads a LoadModel request.
    pub fn from_request(req: &LoadRequest) -> Result<Self, EngineError> {
        if req.tensor_parallel_size > 1 {
            return Err(EngineError::Unimplemented(
                "TensorParallelSize > 1 (serving one model across several GPUs)",
            ));
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
