//! How a LoadModel request maps onto llama.cpp: the options only this worker reads, and the
//! defaults it gives the common fields.
//!
//! Kept apart from the FFI so every rule is a plain function of the request that unit tests
//! can check; the common fields are read once in backend-common's [`LoadRequest`].
use backend_common::engine::EngineError;
use backend_common::load::{CacheType, LoadRequest};

/// Option keys this worker reads from `ModelOptions.Options` (besides the common ones).
pub const OPTIONS: &[&str] = &[
    "parallel",
    "n_parallel",
    "cache_reuse",
    "context_shift",
    "warmup",
    "split_mode",
    "device",
    "devices",
];

/// Context length used when the request leaves `ContextSize` at 0 and the model was trained
/// on more: enough for chat, and a KV cache that fits small machines.
pub const DEFAULT_CONTEXT: u32 = 8192;

/// Sequences decoded together when `parallel` is not given (llama-server's default).
pub const DEFAULT_PARALLEL: u32 = 4;

/// Shortest shared prefix a new request reuses from a free slot's cache when `cache_reuse`
/// is not given: the prompt cache is on by default, as in LocalAI's llama.cpp backend; a
/// system prompt or an earlier turn is longer than this, while a shared BOS or role header
/// alone is not worth giving up a fresh evaluation for.
pub const DEFAULT_CACHE_REUSE: u32 = 32;

/// Logical batch size when `NBatch` is 0 (llama.cpp's default).
pub const DEFAULT_BATCH: u32 = 512;

/// What this worker decides from a LoadModel request beyond the common fields.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// Sequences decoded together in one batch.
    pub parallel: u32,
    /// Logical batch size for prompt processing.
    pub n_batch: u32,
    /// Run one empty decode after loading so the first request does not pay for it.
    pub warmup: bool,
    /// `cache_reuse:N`: a request whose prompt starts with at least N tokens a free slot
    /// still holds from its last request reuses them instead of evaluating them again
    /// (llama-server's prompt cache; 0 = off, [`DEFAULT_CACHE_REUSE`] when not given).
    pub cache_reuse: u32,
    /// `context_shift`: a generation that fills its context drops the older half of what
    /// follows its first token and goes on, as llama-server does, instead of stopping.
    pub context_shift: bool,
    /// `split_mode:none|layer|row`: how layers spread over several GPUs.
    pub split_mode: Option<SplitMode>,
    /// `device:NAME` / `devices:A,B`: the llama.cpp devices to use (`CUDA0`, ...), by name.
    pub devices: Vec<String>,
}

/// `split_mode:` values (llama.cpp's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    /// One GPU holds everything.
    None,
    /// Whole layers spread over the GPUs.
    Layer,
    /// Rows of each layer's matrices spread over the GPUs.
    Row,
}

/// A llama.cpp device as the worker sees it when loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// ggml's index of the device.
    pub index: usize,
    /// Its name (`CPU`, `CUDA0`).
    pub name: String,
    /// Whether it is a GPU (layers can be offloaded to it).
    pub gpu: bool,
}

/// Where the weights go: what `MainGPU`, `TensorSplit`, `device(s)` and `split_mode` ask,
/// checked against the devices there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Indices of the devices to use (empty: llama.cpp's choice, every GPU).
    pub devices: Vec<usize>,
    /// The main GPU, when given.
    pub main_gpu: Option<u32>,
    /// The split mode, when given.
    pub split_mode: Option<SplitMode>,
}

/// Checks the request's GPU fields against `devices` (what llama.cpp found at load). A GPU
/// that does not exist, or a split this worker cannot apply, is INVALID_ARGUMENT naming the
/// devices there are; `NGPULayers` on a machine without GPU is served on the CPU, as
/// llama.cpp does (LocalAI sends it whenever it thinks a GPU may help).
pub fn placement(
    req: &LoadRequest,
    settings: &LoadSettings,
    devices: &[Device],
) -> Result<Placement, EngineError> {
    let gpus: Vec<&Device> = devices.iter().filter(|d| d.gpu).collect();
    let seen = || {
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        format!(
            "this worker sees {} GPU(s); its devices are {}",
            gpus.len(),
            names.join(", ")
        )
    };
    if let Some(main) = req.main_gpu
        && main as usize >= gpus.len().max(1)
    {
        return Err(EngineError::InvalidArgument(format!(
            "MainGPU {main}: {}",
            seen()
        )));
    }
    let shared = req.tensor_split.iter().filter(|&&v| v > 0.0).count();
    if shared > 1 {
        return Err(EngineError::InvalidArgument(format!(
            "TensorSplit gives shares to {shared} GPUs, which this worker does not split by share ({}); leave it empty, or pick GPUs with the `devices` option",
            seen()
        )));
    }
    let chosen = settings
        .devices
        .iter()
        .map(|name| {
            devices
                .iter()
                .find(|d| d.name.eq_ignore_ascii_case(name))
                .map(|d| d.index)
                .ok_or_else(|| {
                    EngineError::InvalidArgument(format!(
                        "option `device`: no device `{name}`; {}",
                        seen()
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if req.gpu_layers > 0 && gpus.is_empty() {
        tracing::info!(
            layers = req.gpu_layers,
            "NGPULayers asks for a GPU, but this build or machine has none: every layer runs on the CPU"
        );
    }
    Ok(Placement {
        devices: chosen,
        main_gpu: req.main_gpu,
        split_mode: settings.split_mode,
    })
}

impl LoadSettings {
    /// Reads this worker's options of a LoadModel request.
    pub fn from_request(req: &LoadRequest) -> Result<Self, EngineError> {
        let options = &req.options;
        let parallel = options
            .get_int::<u32>(&["parallel", "n_parallel"])?
            .unwrap_or(DEFAULT_PARALLEL);
        if parallel == 0 || parallel > 64 {
            return Err(EngineError::InvalidArgument(format!(
                "option `parallel`: {parallel} must be between 1 and 64"
            )));
        }
        Ok(LoadSettings {
            parallel,
            n_batch: req.n_batch.unwrap_or(DEFAULT_BATCH),
            warmup: options.get_bool(&["warmup"])?.unwrap_or(true),
            context_shift: options.get_bool(&["context_shift"])?.unwrap_or(false),
            cache_reuse: options
                .get_int::<u32>(&["cache_reuse"])?
                .unwrap_or(DEFAULT_CACHE_REUSE),
            split_mode: match options.get_str(&["split_mode"]) {
                None => None,
                Some((_, mode)) => Some(match mode.trim().to_ascii_lowercase().as_str() {
                    "none" => SplitMode::None,
                    "layer" => SplitMode::Layer,
                    "row" => SplitMode::Row,
                    other => {
                        return Err(EngineError::InvalidArgument(format!(
                            "option `split_mode:{other}`: use none, layer or row"
                        )));
                    }
                }),
            },
            devices: options
                .get_str(&["devices", "device"])
                .map(|(_, v)| {
                    v.split([',', '/'])
                        .map(|d| d.trim().to_string())
                        .filter(|d| !d.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The per-sequence context for a model trained on `n_ctx_train` tokens: `ContextSize`, or
/// the trained length capped at [`DEFAULT_CONTEXT`].
pub fn effective_context(req: &LoadRequest, n_ctx_train: u32) -> u32 {
    req.context_size
        .unwrap_or_else(|| n_ctx_train.clamp(1, DEFAULT_CONTEXT))
}

/// Refuses a load whose weights and KV cache could never fit in the machine's `memory`, worked
/// out from the model's own numbers before anything is loaded (llama.cpp would spend most of
/// a minute allocating before it failed). `kv_elements` are the model's key and value elements
/// per position; `weights` its file size.
pub fn check_memory_fits(
    req: &LoadRequest,
    s: &LoadSettings,
    n_ctx_train: u32,
    kv_elements: (u64, u64),
    weights: u64,
    memory: u64,
) -> Result<(), EngineError> {
    let per_slot = effective_context(req, n_ctx_train);
    let positions = u64::from(per_slot) * u64::from(s.parallel + u32::from(req.embeddings));
    let kv = kv_bytes(req, positions, kv_elements);
    if kv + weights as f64 <= memory as f64 {
        return Ok(());
    }
    let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
    Err(EngineError::ResourceExhausted(format!(
        "a context of {per_slot} tokens for each of {} sequences needs {:.1} GiB of KV cache besides {:.1} GiB of weights, and this machine has {:.1} GiB; lower ContextSize, the `parallel` option, or the cache types",
        s.parallel + u32::from(req.embeddings),
        gib(kv),
        gib(weights as f64),
        gib(memory as f64),
    )))
}

/// Bytes of KV cache for `positions` token positions of a model with `kv_elements` key and
/// value elements per position, in the request's cache types (f16 by default).
pub fn kv_bytes(req: &LoadRequest, positions: u64, kv_elements: (u64, u64)) -> f64 {
    let k = bytes_per_element(req.cache_type_k.unwrap_or(CacheType::F16));
    let v = bytes_per_element(req.cache_type_v.unwrap_or(CacheType::F16));
    positions as f64 * (kv_elements.0 as f64 * k + kv_elements.1 as f64 * v)
}

/// Bytes per KV cache element, for memory estimates (block formats rounded up).
pub fn bytes_per_element(t: CacheType) -> f64 {
    match t {
        CacheType::F32 => 4.0,
        CacheType::F16 | CacheType::Bf16 => 2.0,
        CacheType::Q8_0 => 34.0 / 32.0,
        CacheType::Q5_0 | CacheType::Q5_1 => 24.0 / 32.0,
        CacheType::Q4_0 | CacheType::Q4_1 | CacheType::Iq4Nl => 20.0 / 32.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_common::pb::ModelOptions;

    #[test]
    fn impossible_contexts_are_refused_from_the_numbers() {
        let request = |context_size| {
            LoadRequest::from_proto(&ModelOptions {
                model_file: "/m/x.gguf".into(),
                context_size,
                ..Default::default()
            })
            .unwrap()
        };
        // SmolLM2-135M: 30 layers x 3 KV heads x 64 for keys and values; 100 MB of weights.
        let kv = (30 * 3 * 64, 30 * 3 * 64);
        let fits = |context_size, memory| {
            let req = request(context_size);
            let s = LoadSettings::from_request(&req).unwrap();
            check_memory_fits(&req, &s, 8192, kv, 100 << 20, memory)
        };
        // 8192 x 4 positions x (5760 + 5760) elements x 2 bytes = 0.70 GiB, besides 0.1 GiB.
        assert!(fits(0, 24 << 30).is_ok());
        assert!(fits(8192, 1 << 30).is_ok());
        match fits(1_000_000_000, 24 << 30) {
            Err(EngineError::ResourceExhausted(message)) => {
                assert!(
                    message.contains("1000000000 tokens") && message.contains("ContextSize"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            fits(8192, 768 << 20),
            Err(EngineError::ResourceExhausted(_))
        ));
    }

    fn request(o: ModelOptions) -> LoadRequest {
        LoadRequest::from_proto(&ModelOptions {
            model_file: "/m/x.gguf".into(),
            ..o
        })
        .unwrap()
    }

    fn with(options: &[&str]) -> Result<LoadSettings, EngineError> {
        LoadSettings::from_request(&request(ModelOptions {
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }))
    }

    #[test]
    fn defaults() {
        let r = request(ModelOptions::default());
        let s = LoadSettings::from_request(&r).unwrap();
        assert_eq!((s.n_batch, s.parallel), (DEFAULT_BATCH, DEFAULT_PARALLEL));
        assert!(s.warmup && !s.context_shift);
        assert_eq!(s.cache_reuse, DEFAULT_CACHE_REUSE);
        assert_eq!(effective_context(&r, 32768), DEFAULT_CONTEXT);
        assert_eq!(effective_context(&r, 2048), 2048);
    }

    #[test]
    fn fields_and_options_map() {
        let r = request(ModelOptions {
            context_size: 1024,
            n_batch: 64,
            options: vec!["n_parallel:2".into(), "warmup:false".into()],
            ..Default::default()
        });
        let s = LoadSettings::from_request(&r).unwrap();
        assert_eq!((s.parallel, s.warmup, s.n_batch), (2, false, 64));
        assert_eq!(effective_context(&r, 32768), 1024);
        let s = with(&["cache_reuse:256", "context_shift"]).unwrap();
        assert!(s.context_shift);
        assert_eq!(s.cache_reuse, 256);
        assert_eq!(
            with(&["cache_reuse:0"]).unwrap().cache_reuse,
            0,
            "turned off"
        );
    }

    #[test]
    fn bad_values_are_invalid_argument() {
        for bad in [
            "parallel:0",
            "parallel:many",
            "warmup:perhaps",
            "cache_reuse:lots",
            "context_shift:sometimes",
            "split_mode:diagonal",
        ] {
            let e = with(&[bad]).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{bad}: {e}");
        }
    }

    fn devices(gpus: usize) -> Vec<Device> {
        let cpu = Device {
            index: 0,
            name: "CPU".into(),
            gpu: false,
        };
        let gpu = |i: usize| Device {
            index: i + 1,
            name: format!("CUDA{i}"),
            gpu: true,
        };
        std::iter::once(cpu).chain((0..gpus).map(gpu)).collect()
    }

    #[test]
    fn gpu_fields_are_checked_against_the_devices() {
        let place = |o: ModelOptions, gpus: usize| {
            let r = request(o);
            placement(&r, &LoadSettings::from_request(&r).unwrap(), &devices(gpus))
        };
        // LocalAI's usual GPU request on a CPU-only machine is served on the CPU.
        let cpu = place(
            ModelOptions {
                ngpu_layers: 99,
                main_gpu: "0".into(),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!((cpu.devices.len(), cpu.main_gpu), (0, Some(0)));
        let one = place(
            ModelOptions {
                options: vec!["devices:cuda0".into(), "split_mode:layer".into()],
                tensor_split: "1".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert_eq!(one.devices, vec![1]);
        assert_eq!(one.split_mode, Some(SplitMode::Layer));
        for (o, says) in [
            (
                ModelOptions {
                    main_gpu: "1".into(),
                    ..Default::default()
                },
                "MainGPU 1: this worker sees 1 GPU(s); its devices are CPU, CUDA0",
            ),
            (
                ModelOptions {
                    tensor_split: "3,1".into(),
                    ..Default::default()
                },
                "TensorSplit gives shares to 2 GPUs",
            ),
            (
                ModelOptions {
                    options: vec!["device:CUDA1".into()],
                    ..Default::default()
                },
                "no device `CUDA1`",
            ),
        ] {
            let e = place(o, 1).unwrap_err();
            assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
