//! [`CandleEngine`]: the candle implementation of the shared [`Engine`] trait.
//!
//! Loading sizes the paged KV cache and starts the [`EngineThread`] that owns the model;
//! every request then runs through that thread's scheduler, batched with the others.
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::{DType, Device};

use backend_common::engine::{
    EMBEDDINGS_OFF, EmbedInput, Embedding, Engine, EngineError, GenerationRequest, GenerationStats,
    LoadedModel, MemoryReport, ModelInfo, ScoredSequence, TokenSink,
};
use backend_common::load::{self, LoadRequest, Pooling};
use backend_common::template::{HfTemplateConfig, SpecialTokens, TemplateSource};

use engine_core::SchedulerConfig;

use crate::constrained::GrammarCompiler;
use crate::engine_thread::EngineThread;
use crate::gguf::GgufFile;
use crate::hf::{self, HfFolder};
use crate::model::{CPU_COMPUTE_DTYPE, KvCache, Model, ModelConfig, ModelError};
use crate::settings::{self, CoreSettings, LoadSettings};
use crate::tokenizer::ModelTokenizer;

/// A loaded model: the thread that runs it, and its tokenizer for the handlers.
pub struct CandleModel {
    engine: EngineThread,
    tokenizer: Arc<ModelTokenizer>,
    /// Built by the first constrained request (its token trie would cost every load,
    /// constrained or not).
    grammars: OnceLock<Result<GrammarCompiler, String>>,
    /// Width of the model's logits.
    vocab: usize,
    /// Positions a sequence may hold.
    max_len: usize,
    /// How Embedding pools, `None` when the model was loaded without `Embeddings`.
    embeddings: Option<Pooling>,
    weight_bytes: u64,
    kv_bytes: u64,
}

impl CandleModel {
    /// The model's grammar compiler, built on first use.
    fn grammar_compiler(&self) -> Result<&GrammarCompiler, EngineError> {
        self.grammars
            .get_or_init(|| {
                let started = Instant::now();
                let compiler = GrammarCompiler::new(self.tokenizer.clone(), self.vocab)
                    .map_err(|e| e.to_string());
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "grammar compiler ready"
                );
                compiler
            })
            .as_ref()
            .map_err(|e| EngineError::Internal(e.clone()))
    }
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
    core: CoreSettings,
    kv_blocks: usize,
    /// How Embedding pools, `None` when the model was loaded without `Embeddings`.
    embeddings: Option<Pooling>,
    /// CPU threads of the kernels (`Threads`).
    threads: u32,
}

fn internal(e: ModelError) -> EngineError {
    EngineError::Internal(e.to_string())
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
    /// The pooling an embedding model declares.
    pooling: Option<Pooling>,
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
                pooling: header.pooling,
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
            let pooling = folder.declared_pooling();
            let prepared = Prepared {
                config: folder.model_config.clone(),
                tokenizer,
                name,
                chat_template: template.templates,
                special_tokens: template.tokens,
                weight_bytes,
                weight_dtype,
                pooling,
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
        let core = settings.core.clone();
        let total = backend_common::host::machine_memory();
        let budget = total.map(|t| (t as f64 * settings.memory_utilization) as u64);
        let weights = prepared.weight_bytes;
        let sequence_bytes = max_len as u64 * config.kv_bytes_per_token(CPU_COMPUTE_DTYPE);
        let kv_bytes = core.kv_bytes(budget, weights, sequence_bytes);
        let block_bytes = KvCache::block_bytes(config, CPU_COMPUTE_DTYPE, core.block_size);
        let kv_blocks = (kv_bytes / block_bytes) as usize;
        if let (Some(total), Some(budget)) = (total, budget)
            && weights + kv_bytes > budget
        {
            return Err(EngineError::ResourceExhausted(format!(
                "{} MiB of weights and {} MiB of KV cache exceed gpu_memory_utilization {} of {} MiB; lower kv_cache_memory or raise gpu_memory_utilization",
                weights >> 20,
                kv_bytes >> 20,
                settings.memory_utilization,
                total >> 20
            )));
        }
        if kv_blocks == 0 {
            return Err(EngineError::ResourceExhausted(format!(
                "a KV cache of {kv_bytes} bytes holds no block of {} positions ({block_bytes} bytes for this model); raise kv_cache_memory",
                core.block_size
            )));
        }
        // The option, else what an embedding model declares, else the mean of a chat
        // model's hidden states (as llama.cpp pools one).
        let embeddings = request.embeddings.then(|| {
            request
                .pooling
                .or(prepared.pooling)
                .unwrap_or(Pooling::Mean)
        });
        Ok(CandlePlan {
            path,
            reader,
            prepared,
            max_len,
            core,
            kv_blocks,
            embeddings,
            threads: request.threads,
        })
    }

    fn load(&self, plan: CandlePlan) -> Result<(CandleModel, ModelInfo), EngineError> {
        let started = Instant::now();
        let CandlePlan {
            path,
            reader,
            prepared,
            max_len,
            core,
            kv_blocks,
            embeddings,
            threads,
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
        // What converting and stacking the weights freed goes back to the system before the
        // cache is reserved, so the load's peak is the weights and the cache, not those too.
        backend_common::host::release_free_memory();
        let kv = model
            .kv_cache(kv_blocks, core.block_size)
            .map_err(internal)?;
        let kv_bytes = kv_blocks as u64
            * KvCache::block_bytes(model.config(), CPU_COMPUTE_DTYPE, core.block_size);
        let weight_bytes = model.weight_bytes();
        tracing::info!(
            arch = ?model.config().arch,
            layers = model.config().layers,
            weights = ?prepared.weight_dtype,
            max_len,
            kv_blocks,
            block_size = core.block_size,
            kv_mib = kv_bytes >> 20,
            max_num_seqs = core.max_num_seqs,
            max_num_batched_tokens = core.max_num_batched_tokens,
            prefix_caching = core.prefix_caching,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let info = prepared.info(max_len);
        let tokenizer = Arc::new(prepared.tokenizer);
        let scheduler = SchedulerConfig {
            block_size: core.block_size,
            num_blocks: kv_blocks,
            max_num_seqs: core.max_num_seqs,
            max_num_batched_tokens: core.max_num_batched_tokens,
            max_model_len: max_len,
            prefix_caching: core.prefix_caching,
        };
        let vocab = model.config().vocab;
        let engine = EngineThread::start(model, kv, scheduler, tokenizer.clone())
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        // One model per process: its `Threads` holds for every kernel from now on.
        crate::cpu_pool::cpu_pool().set_threads(threads as usize);
        let loaded = CandleModel {
            engine,
            tokenizer,
            grammars: OnceLock::new(),
            vocab,
            max_len,
            embeddings,
            weight_bytes,
            kv_bytes,
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

    fn detokenize(&self, ids: &[i32]) -> Result<String, EngineError> {
        let vocab = self.tokenizer.vocab_size();
        let mut bytes = Vec::new();
        for &id in ids {
            let id = u32::try_from(id)
                .ok()
                .filter(|&id| (id as usize) < vocab)
                .ok_or_else(|| {
                    EngineError::InvalidArgument(format!(
                        "tokens: id {id} is outside the vocabulary (0..{vocab})"
                    ))
                })?;
            bytes.extend_from_slice(self.tokenizer.piece(id));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError> {
        let grammar = match backend_common::constraint::output_constraint(request)? {
            Some(constraint) => Some(self.grammar_compiler()?.compile(&constraint)?),
            None => None,
        };
        self.engine.generate(request, grammar, sink)
    }

    fn score(&self, sequences: &[ScoredSequence]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.engine.score(sequences)
    }

    fn embed(&self, input: &EmbedInput) -> Result<Embedding, EngineError> {
        let pooling = self
            .embeddings
            .ok_or_else(|| EngineError::FailedPrecondition(EMBEDDINGS_OFF.into()))?;
        let tokens = match input {
            EmbedInput::Text(text) if text.is_empty() => {
                return Err(EngineError::InvalidArgument(
                    "Embeddings, EmbeddingTokens and Prompt are all empty; send the text to embed"
                        .into(),
                ));
            }
            EmbedInput::Text(text) => self
                .tokenizer
                .encode(text, true)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?,
            EmbedInput::Tokens(ids) => {
                let vocab = self.vocab;
                ids.iter()
                    .map(|&id| {
                        u32::try_from(id)
                            .ok()
                            .filter(|&id| (id as usize) < vocab)
                            .ok_or_else(|| {
                                EngineError::InvalidArgument(format!(
                                    "EmbeddingTokens: token id {id} is outside the vocabulary (0..{vocab})"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        if tokens.is_empty() {
            return Err(EngineError::InvalidArgument(
                "the input has no tokens; send the text to embed".into(),
            ));
        }
        if tokens.len() > self.max_len {
            return Err(EngineError::InvalidArgument(format!(
                "the input has {} tokens but an embedding takes at most {}; shorten it or load with a larger max_model_len",
                tokens.len(),
                self.max_len
            )));
        }
        self.engine.embed(&tokens, pooling)
    }

    fn memory(&self) -> MemoryReport {
        let kv = self.engine.stats();
        let hit_percent = (kv.prefix_hit_tokens * 100)
            .checked_div(kv.prefix_queried_tokens)
            .unwrap_or(0);
        let parts = [
            ("weights", self.weight_bytes),
            ("kv_cache", self.kv_bytes),
            ("kv_blocks_total", kv.blocks_total as u64),
            ("kv_blocks_used", kv.blocks_used as u64),
            ("kv_blocks_cached", kv.blocks_cached as u64),
            ("kv_block_size", kv.block_size as u64),
            ("prefix_cache_queried_tokens", kv.prefix_queried_tokens),
            ("prefix_cache_hit_tokens", kv.prefix_hit_tokens),
            ("prefix_cache_hit_percent", hit_percent),
            ("preemptions", kv.preemptions),
            ("requests_running", kv.running as u64),
            ("requests_waiting", kv.waiting as u64),
        ];
        MemoryReport {
            parts: parts.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        }
    }
}
