//! [`CandleEngine`]: the candle implementation of the shared [`Engine`] trait.
//!
//! One request generates at a time (a lock around the decode loop); continuous batching of
//! concurrent requests through [`Model::forward`]'s batches is the scheduler's job, a later
//! step that needs no change to the model code.
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device};

use backend_common::engine::{
    Engine, EngineError, FinishReason, Flow, GeneratedToken, GenerationRequest, GenerationStats,
    LoadedModel, MemoryReport, ModelInfo, TokenSink,
};
use backend_common::load::{self, LoadRequest};
use backend_common::template::{HfTemplateConfig, SpecialTokens, TemplateSource};

use crate::gguf::GgufFile;
use crate::hf::{self, HfFolder};
use crate::model::{BatchItem, CPU_COMPUTE_DTYPE, Model, ModelConfig, ModelError, SeqCache};
use crate::sampler::{Sampler, token_logprob};
use crate::settings::{self, LoadSettings};
use crate::tokenizer::ModelTokenizer;

/// Prompt tokens run in one forward; bounds the attention scores' memory on long prompts.
const PREFILL_CHUNK: usize = 512;

/// A loaded model and what serving it needs.
pub struct CandleModel {
    model: Model,
    tokenizer: ModelTokenizer,
    memory: MemoryReport,
    decode: Mutex<()>,
}

/// The candle engine.
pub struct CandleEngine {
    device: Device,
}

impl Default for CandleEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl CandleEngine {
    /// An engine on the CPU.
    pub fn new() -> Self {
        CandleEngine {
            device: Device::Cpu,
        }
    }
}

/// A load checked against the memory budget, its model open and its weights not read yet.
pub struct CandlePlan {
    path: PathBuf,
    reader: Reader,
    prepared: Prepared,
    max_len: usize,
    kv_bytes: u64,
}

fn internal(e: ModelError) -> EngineError {
    EngineError::Internal(e.to_string())
}

/// Total memory of the machine, from `/proc/meminfo` (None where it cannot be read).
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where a LoadModel request's model is.
enum Source {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face folder (possibly a hub cache snapshot).
    Folder(PathBuf),
}

impl Source {
    /// The model at `path`; a missing path that is a hub id (`Model` as LocalAI's vLLM
    /// backend receives it) is looked up in the Hugging Face cache.
    fn locate(path: &Path, model: &str) -> Result<Source, EngineError> {
        if path.is_dir() {
            return Ok(Source::Folder(path.to_path_buf()));
        }
        if !path.exists() && hf::looks_like_hub_id(model) {
            return hf::find_in_hub_cache(model, &hf::hub_cache_dir())
                .map(Source::Folder)
                .map_err(|searched| EngineError::HubModelNotCached {
                    id: model.to_string(),
                    searched,
                });
        }
        backend_common::model_path::check_gguf_file(path)?;
        Ok(Source::Gguf(path.to_path_buf()))
    }
}

/// What loading produced before the model is swapped in.
struct Prepared {
    config: ModelConfig,
    tokenizer: ModelTokenizer,
    name: Option<String>,
    chat_template: Option<TemplateSource>,
    special_tokens: SpecialTokens,
    /// Bytes the weights will take in memory.
    weight_bytes: u64,
    /// The dtype matmul weights are held in.
    weight_dtype: DType,
}

/// A model's reader, open and checked, its weights not read yet.
enum Reader {
    Gguf(GgufFile),
    Folder(Box<HfFolder>),
}

fn invalid_model(path: &Path) -> impl Fn(String) -> EngineError + '_ {
    move |reason| EngineError::InvalidModel {
        path: path.to_path_buf(),
        reason,
    }
}

/// Opens the model and reads everything but its weights.
fn prepare(source: &Source, dtype: load::DType) -> Result<(Reader, Prepared), EngineError> {
    match source {
        Source::Gguf(path) => {
            let invalid = invalid_model(path);
            let file = GgufFile::open(path).map_err(|e| invalid(e.to_string()))?;
            let header = file.header().map_err(|e| invalid(e.to_string()))?;
            let tokenizer =
                ModelTokenizer::new(&header.vocab).map_err(|e| invalid(e.to_string()))?;
            if !matches!(dtype, load::DType::Auto | load::DType::F32) {
                tracing::warn!(
                    ?dtype,
                    "GGUF weights run quantized with f32 activations; dtype ignored"
                );
            }
            let special_tokens = SpecialTokens {
                bos_token: tokenizer.bos_text().map(str::to_string),
                eos_token: tokenizer.eos_text().map(str::to_string),
            };
            let prepared = Prepared {
                config: header.config,
                tokenizer,
                name: header.name,
                chat_template: header.chat_template.map(TemplateSource::Single),
                special_tokens,
                weight_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
                weight_dtype: DType::F32,
            };
            Ok((Reader::Gguf(file), prepared))
        }
        Source::Folder(dir) => {
            let invalid = invalid_model(dir);
            let folder = HfFolder::open(dir).map_err(|e| invalid(e.to_string()))?;
            let saved = folder.saved_dtype().map_err(|e| invalid(e.to_string()))?;
            let weight_dtype = settings::resolve_dtype(dtype, saved);
            let tokenizer = ModelTokenizer::from_hf_dir(dir, &hf::generation_eos_ids(&folder))
                .map_err(|e| invalid(e.to_string()))?;
            let template = HfTemplateConfig::from_dir(dir).map_err(|e| invalid(e.to_string()))?;
            let saved_bytes: u64 = folder.weight_files_bytes();
            let weight_bytes =
                saved_bytes / saved.size_in_bytes() as u64 * weight_dtype.size_in_bytes() as u64;
            let name = folder.name();
            let prepared = Prepared {
                config: folder.model_config.clone(),
                tokenizer,
                name,
                chat_template: template.templates,
                special_tokens: template.tokens,
                weight_bytes,
                weight_dtype,
            };
            Ok((Reader::Folder(Box::new(folder)), prepared))
        }
    }
}

/// What LoadModel would report for the model at `path` (a GGUF file, a folder or a cached
/// hub id), reading its metadata and tokenizer but not its weights.
pub fn describe(path: &Path) -> Result<ModelInfo, EngineError> {
    let source = Source::locate(path, &path.to_string_lossy())?;
    let (_, prepared) = prepare(&source, load::DType::Auto)?;
    let context_length = prepared.config.context_length;
    Ok(prepared.info(context_length))
}

impl Prepared {
    /// What LoadModel reports for this model served with `max_len` positions.
    fn info(&self, max_len: usize) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            context_length: u32::try_from(max_len).unwrap_or(u32::MAX),
            chat_template: self.chat_template.clone(),
            special_tokens: self.special_tokens.clone(),
            vocab_size: u32::try_from(self.config.vocab).unwrap_or(u32::MAX),
        }
    }
}

impl Engine for CandleEngine {
    type Model = CandleModel;
    type Plan = CandlePlan;
    const OPTIONS: &'static [&'static str] = settings::OPTIONS;

    fn plan(&self, request: &LoadRequest) -> Result<CandlePlan, EngineError> {
        let settings = LoadSettings::from_request(request)?;
        let path = settings.path.clone();
        let source = Source::locate(&path, &request.model)?;
        let (reader, prepared) = prepare(&source, settings.dtype)?;
        let config = &prepared.config;
        let max_len = settings.effective_max_len(config.context_length)?;
        let kv_bytes = max_len as u64 * config.kv_bytes_per_token(CPU_COMPUTE_DTYPE);
        if let Some(total) = machine_memory() {
            let budget = (total as f64 * settings.memory_utilization) as u64;
            let weights = prepared.weight_bytes;
            if weights + kv_bytes > budget {
                return Err(EngineError::ResourceExhausted(format!(
                    "{} MiB of weights and {} MiB of KV cache for max_model_len {max_len} exceed gpu_memory_utilization {} of {} MiB; lower max_model_len or raise gpu_memory_utilization",
                    weights >> 20,
                    kv_bytes >> 20,
                    settings.memory_utilization,
                    total >> 20
                )));
            }
        }
        Ok(CandlePlan {
            path,
            reader,
            prepared,
            max_len,
            kv_bytes,
        })
    }

    fn load(&self, plan: CandlePlan) -> Result<(CandleModel, ModelInfo), EngineError> {
        let started = Instant::now();
        let CandlePlan {
            path,
            reader,
            prepared,
            max_len,
            kv_bytes,
        } = plan;
        let config = prepared.config.clone();
        let weights = match reader {
            Reader::Gguf(mut file) => file
                .weights(&config, &self.device)
                .map_err(|e| invalid_model(&path)(e.to_string()))?,
            Reader::Folder(folder) => folder
                .weights(prepared.weight_dtype, &self.device)
                .map_err(|e| invalid_model(&path)(e.to_string()))?,
        };
        let model = Model::new(config, weights, max_len, &self.device).map_err(internal)?;
        let memory = MemoryReport {
            parts: vec![
                ("weights".to_string(), model.weight_bytes()),
                ("kv_cache".to_string(), kv_bytes),
            ],
        };
        tracing::info!(
            arch = ?model.config().arch,
            layers = model.config().layers,
            weights = ?prepared.weight_dtype,
            max_len,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let info = prepared.info(max_len);
        let loaded = CandleModel {
            model,
            tokenizer: prepared.tokenizer,
            memory,
            decode: Mutex::new(()),
        };
        Ok((loaded, info))
    }
}

impl LoadedModel for CandleModel {
    fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<i32>, EngineError> {
        let ids = self
            .tokenizer
            .encode(text, add_bos)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        Ok(ids.into_iter().map(|t| t as i32).collect())
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError> {
        // A lazy constraint ("auto") is a safeguard this engine does without; a forced one
        // or a grammar would be silently ignored, so they are refused.
        let forced_call = request.tool_call.as_ref().is_some_and(|c| c.lazy.is_none());
        if request.grammar.is_some() || forced_call {
            return Err(EngineError::Unimplemented(
                "constrained decoding (Grammar, forced ToolChoice)",
            ));
        }
        let tokenizer = &self.tokenizer;
        let model = &self.model;
        let prompt: Vec<u32> = request.prompt.iter().map(|&id| id as u32).collect();
        let max_len = model.max_positions();
        let vocab = model.config().vocab;
        let mut sampler = Sampler::new(request, vocab, tokenizer.eog());
        let _turn = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut cache = SeqCache::new();
        let mut logits = None;
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            let mut batch = [BatchItem {
                tokens: chunk,
                cache: &mut cache,
            }];
            logits = Some(model.forward(&mut batch).map_err(internal)?);
        }
        let mut first_token = None;
        let mut generated = 0u32;
        let finish = loop {
            let Some(current) = logits.take() else {
                return Err(EngineError::Internal("no logits after the prompt".into()));
            };
            let mut row: Vec<f32> = current
                .squeeze(0)
                .and_then(|r| r.to_vec1())
                .map_err(|e| internal(e.into()))?;
            let raw = request.logprobs.map(|top| (row.clone(), top));
            let token = sampler.sample(&mut row);
            first_token.get_or_insert_with(Instant::now);
            generated += 1;
            if tokenizer.is_eog(token) && !request.ignore_eos {
                break FinishReason::Eos;
            }
            let logprob = raw.map(|(raw, top)| {
                token_logprob(&raw, token, top, |id| tokenizer.piece(id).to_vec())
            });
            let flow = sink.token(GeneratedToken {
                id: token as i32,
                piece: tokenizer.piece(token).to_vec(),
                special: tokenizer.is_control(token),
                logprob,
            });
            if flow == Flow::Stop {
                break FinishReason::Stopped;
            }
            if request.max_tokens.is_some_and(|max| generated >= max) || cache.len() >= max_len {
                break FinishReason::Length;
            }
            let next = [token];
            let mut batch = [BatchItem {
                tokens: &next,
                cache: &mut cache,
            }];
            logits = Some(model.forward(&mut batch).map_err(internal)?);
        };
        let end = Instant::now();
        let first = first_token.unwrap_or(end);
        Ok(GenerationStats {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: generated,
            prompt_ms: first.duration_since(started).as_secs_f64() * 1000.0,
            generation_ms: end.duration_since(first).as_secs_f64() * 1000.0,
            finish,
        })
    }

    fn memory(&self) -> MemoryReport {
        self.memory.clone()
    }
}
