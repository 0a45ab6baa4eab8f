//! [`LlamaEngine`]: the llama.cpp implementation of the shared [`Engine`] trait.
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use llama_cpp_2::LlamaBackendDeviceType;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::{LlamaModel, RopeType};
use llama_cpp_2::token::LlamaToken;

use backend_common::engine::{
    EMBEDDINGS_OFF, EmbedInput, Embedding, Engine, EngineError, FinishReason, Flow,
    GenerationRequest, GenerationStats, LoadedModel, MemoryReport, ModelInfo, ScoredSequence,
    TokenSink,
};
use backend_common::load::{CacheType, FlashAttention, LoadRequest, Pooling};
use backend_common::template::{SpecialTokens, TemplateSource};

use crate::sampler;
use crate::scheduler::{EmbedJob, Event, Job, LoopConfig, Scheduler, Task};
use crate::settings::{self, Device, LoadSettings, Placement, SplitMode};

/// How often a request waiting for its next token checks that its client still listens.
const ABANDON_POLL: Duration = Duration::from_millis(50);

/// A loaded model and the decode loop serving it.
pub struct LlamaLoaded {
    // Field order matters: the scheduler's thread must end before the model is released.
    scheduler: Scheduler,
    model: Arc<LlamaModel>,
    embeddings: bool,
    /// `pooling:none`: Embedding gives one vector per token.
    per_token: bool,
    context_per_slot: u32,
    eog: Vec<LlamaToken>,
    memory: MemoryReport,
}

/// The llama.cpp engine.
pub struct LlamaEngine {
    backend: Arc<LlamaBackend>,
}

impl LlamaEngine {
    /// Initialises llama.cpp (once per process) and routes its logs to `tracing`.
    pub fn new() -> Result<Self, EngineError> {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        let backend = LlamaBackend::init()
            .map_err(|e| EngineError::Internal(format!("cannot initialise llama.cpp: {e}")))?;
        Ok(LlamaEngine {
            backend: Arc::new(backend),
        })
    }
}

/// A load request checked before the loaded model is released.
pub struct LlamaPlan {
    request: LoadRequest,
    settings: LoadSettings,
    placement: Placement,
}

/// The devices llama.cpp found (the CPU, and GPUs in a CUDA build on a machine with one).
fn devices() -> Vec<Device> {
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| Device {
            index: d.index,
            name: d.name,
            gpu: matches!(
                d.device_type,
                LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
            ),
        })
        .collect()
}

fn kv_type(t: CacheType) -> KvCacheType {
    match t {
        CacheType::F32 => KvCacheType::F32,
        CacheType::F16 => KvCacheType::F16,
        CacheType::Bf16 => KvCacheType::BF16,
        CacheType::Q8_0 => KvCacheType::Q8_0,
        CacheType::Q4_0 => KvCacheType::Q4_0,
        CacheType::Q4_1 => KvCacheType::Q4_1,
        CacheType::Q5_0 => KvCacheType::Q5_0,
        CacheType::Q5_1 => KvCacheType::Q5_1,
        CacheType::Iq4Nl => KvCacheType::IQ4_NL,
    }
}

/// Parameters of the generation context. Embeddings stay off there even for models loaded
/// with `Embeddings`: they would make every token an output and slow generation down; the
/// Embedding call has a context of its own ([`embedding_params`]).
fn context_params(r: &LoadRequest, s: &LoadSettings, context_per_slot: u32) -> LlamaContextParams {
    let total = context_per_slot.saturating_mul(s.parallel);
    common_params(r)
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_batch(s.n_batch)
        .with_n_ubatch(s.n_batch)
        .with_n_seq_max(s.parallel)
        .with_kv_unified(false)
}

/// Parameters of the embedding context: one sequence, and a batch that holds a whole text,
/// since pooling covers one micro-batch.
fn embedding_params(
    model: &LlamaModel,
    r: &LoadRequest,
    context_per_slot: u32,
) -> LlamaContextParams {
    let pooling = match r.pooling {
        Some(Pooling::None) => LlamaPoolingType::None,
        Some(Pooling::Mean) => LlamaPoolingType::Mean,
        Some(Pooling::Cls) => LlamaPoolingType::Cls,
        Some(Pooling::Last) => LlamaPoolingType::Last,
        None => embedding_pooling(model),
    };
    common_params(r)
        .with_n_ctx(NonZeroU32::new(context_per_slot))
        .with_n_batch(context_per_slot)
        .with_n_ubatch(context_per_slot)
        .with_n_seq_max(1)
        .with_embeddings(true)
        .with_pooling_type(pooling)
}

/// The model's own pooling when its GGUF declares one (embedding models), else mean pooling
/// (chat models declare none, and llama.cpp would then pool nothing).
fn embedding_pooling(model: &LlamaModel) -> LlamaPoolingType {
    let declared = model
        .meta_val_str("general.architecture")
        .ok()
        .and_then(|arch| model.meta_val_str(&format!("{arch}.pooling_type")).ok())
        .and_then(|v| v.trim().parse::<i32>().ok());
    match declared {
        Some(kind) if kind > 0 => LlamaPoolingType::Unspecified,
        _ => LlamaPoolingType::Mean,
    }
}

/// What both contexts share: threads, attention, KV types and RoPE overrides.
fn common_params(s: &LoadRequest) -> LlamaContextParams {
    let threads = i32::try_from(s.threads).unwrap_or(i32::MAX);
    let mut p = LlamaContextParams::default()
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_flash_attention_policy(match s.flash_attention {
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        });
    if let Some(t) = s.cache_type_k {
        p = p.with_type_k(kv_type(t));
    }
    if let Some(t) = s.cache_type_v {
        p = p.with_type_v(kv_type(t));
    }
    if let Some(base) = s.rope_freq_base {
        p = p.with_rope_freq_base(base);
    }
    if let Some(scale) = s.rope_freq_scale {
        p = p.with_rope_freq_scale(scale);
    }
    p
}

/// Bytes of KV cache for `tokens` positions of `model`.
fn kv_cache_bytes(model: &LlamaModel, s: &LoadRequest, tokens: u32) -> u64 {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let head_dim = n(i64::from(model.n_embd())) / n(i64::from(model.n_head())).max(1);
    let per_token = n(i64::from(model.n_layer())) * n(i64::from(model.n_head_kv())) * head_dim;
    settings::kv_bytes(s, u64::from(tokens), (per_token, per_token)) as u64
}

impl Engine for LlamaEngine {
    type Model = LlamaLoaded;
    type Plan = LlamaPlan;
    const OPTIONS: &'static [&'static str] = settings::OPTIONS;

    fn plan(&self, request: &LoadRequest) -> Result<LlamaPlan, EngineError> {
        let settings = LoadSettings::from_request(request)?;
        let placement = settings::placement(request, &settings, &devices())?;
        let header = backend_common::model_path::check_gguf_file(&request.path)?;
        if let (Some(kv_elements), Some(memory)) = (
            header.kv_elements_per_token(),
            backend_common::host::machine_memory(),
        ) {
            let n_ctx_train = header
                .arch_int("context_length")
                .map_or(settings::DEFAULT_CONTEXT, |n| {
                    u32::try_from(n).unwrap_or(u32::MAX)
                });
            let weights = std::fs::metadata(&request.path).map_or(0, |m| m.len());
            settings::check_memory_fits(
                request,
                &settings,
                n_ctx_train,
                kv_elements,
                weights,
                memory,
            )?;
        }
        if let Some(lora) = &request.lora
            && !lora.path.is_file()
        {
            return Err(EngineError::ModelNotFound(lora.path.clone()));
        }
        Ok(LlamaPlan {
            request: request.clone(),
            settings,
            placement,
        })
    }

    fn load(&self, plan: LlamaPlan) -> Result<(LlamaLoaded, ModelInfo), EngineError> {
        let LlamaPlan {
            request,
            settings,
            placement,
        } = plan;
        let mut params = LlamaModelParams::default()
            .with_n_gpu_layers(request.gpu_layers)
            .with_use_mmap(request.mmap)
            .with_use_mlock(request.mlock);
        if let Some(main) = placement.main_gpu {
            params = params.with_main_gpu(main as i32);
        }
        if let Some(mode) = placement.split_mode {
            params = params.with_split_mode(match mode {
                SplitMode::None => LlamaSplitMode::None,
                SplitMode::Layer => LlamaSplitMode::Layer,
                SplitMode::Row => LlamaSplitMode::Row,
            });
        }
        if !placement.devices.is_empty() {
            params = params
                .with_devices(&placement.devices)
                .map_err(|e| EngineError::InvalidArgument(format!("option `device`: {e}")))?;
        }
        let mut model =
            LlamaModel::load_from_file(&self.backend, &request.path, &params).map_err(|e| {
                EngineError::InvalidModel {
                    path: request.path.clone(),
                    reason: format!("llama.cpp could not load it ({e})"),
                }
            })?;
        let lora = match &request.lora {
            Some(adapter) => Some((
                model
                    .lora_adapter_init(&adapter.path)
                    .map_err(|e| EngineError::InvalidModel {
                        path: adapter.path.clone(),
                        reason: format!("not a LoRA adapter for this model ({e})"),
                    })?,
                adapter.scale,
            )),
            None => None,
        };
        let model = Arc::new(model);
        let context_per_slot = settings::effective_context(&request, model.n_ctx_train());
        // M-RoPE positions (vision models) cannot be moved in llama.cpp's KV cache.
        let shiftable = !matches!(
            model.rope_type(),
            Some(RopeType::MRope | RopeType::IMRope | RopeType::Vision)
        );
        if settings.context_shift && !shiftable {
            tracing::warn!(
                "option `context_shift` is ignored: this model's multi-section RoPE positions cannot be shifted; a request that fills its context stops there"
            );
        }
        let config = LoopConfig {
            parallel: settings.parallel,
            context_per_slot,
            n_batch: settings.n_batch,
            warmup: settings.warmup,
            context_shift: settings.context_shift && shiftable,
            cache_reuse: settings.cache_reuse,
        };
        let scheduler = Scheduler::start(
            Arc::clone(&self.backend),
            Arc::clone(&model),
            context_params(&request, &settings, context_per_slot),
            request
                .embeddings
                .then(|| embedding_params(&model, &request, context_per_slot)),
            config,
            lora,
        )?;
        let vocab = model.vocab();
        let eog = vocab.tokens().filter(|&t| vocab.is_eog(t)).collect();
        let mut memory = MemoryReport {
            parts: vec![
                ("weights".to_string(), model.size()),
                (
                    "kv_cache".to_string(),
                    kv_cache_bytes(&model, &request, context_per_slot * settings.parallel),
                ),
            ],
        };
        if request.embeddings {
            memory.parts.push((
                "embedding_kv_cache".to_string(),
                kv_cache_bytes(&model, &request, context_per_slot),
            ));
        }
        let info = model_info(&model, context_per_slot);
        let loaded = LlamaLoaded {
            scheduler,
            model,
            embeddings: request.embeddings,
            per_token: request.pooling == Some(Pooling::None),
            context_per_slot,
            eog,
            memory,
        };
        Ok((loaded, info))
    }
}

impl LoadedModel for LlamaLoaded {
    fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<i32>, EngineError> {
        Ok(tokenize(&self.model, text, add_bos)?
            .into_iter()
            .map(|t| t.0)
            .collect())
    }

    fn detokenize(&self, ids: &[i32]) -> Result<String, EngineError> {
        let vocab = self.model.vocab();
        let n_vocab = self.model.n_vocab();
        let mut bytes = Vec::new();
        for &id in ids {
            if !(0..n_vocab).contains(&id) {
                return Err(EngineError::InvalidArgument(format!(
                    "tokens: id {id} is outside the vocabulary (0..{n_vocab})"
                )));
            }
            bytes.extend(vocab.token_to_piece(LlamaToken(id), true, None));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError> {
        let sampler = sampler::build(&self.model, request, &self.eog)?;
        let (events, received) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        self.scheduler.submit(Job {
            prompt: request.prompt.iter().map(|&id| LlamaToken(id)).collect(),
            task: Task::Generate {
                request: Box::new(request.clone()),
                sampler,
            },
            events,
            cancel: Arc::clone(&cancel),
        })?;
        let mut stopped = false;
        loop {
            let event = match received.recv_timeout(ABANDON_POLL) {
                Ok(event) => event,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Nobody listens (the client went away while the request queued or
                    // prefilled): the decode loop drops it at its next step.
                    if !stopped && sink.abandoned() {
                        stopped = true;
                        cancel.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match event {
                Event::Token(token) if !stopped => {
                    if sink.token(token) == Flow::Stop {
                        stopped = true;
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                Event::Token(_) => {}
                Event::Done(result) => {
                    return result.map(|mut stats| {
                        if stopped {
                            stats.finish = FinishReason::Stopped;
                        }
                        stats
                    });
                }
            }
        }
        Err(EngineError::Internal(
            "the decode loop ended without finishing the request".into(),
        ))
    }

    fn score(&self, sequences: &[ScoredSequence]) -> Result<Vec<Vec<f32>>, EngineError> {
        // Every candidate is a job of its own, so they run in parallel slots.
        let mut replies = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let (events, received) = mpsc::channel();
            self.scheduler.submit(Job {
                prompt: sequence.tokens.iter().map(|&id| LlamaToken(id)).collect(),
                task: Task::Score {
                    from: sequence.from.max(1),
                },
                events,
                cancel: Arc::new(AtomicBool::new(false)),
            })?;
            replies.push(received);
        }
        let mut scores = Vec::with_capacity(replies.len());
        for received in replies {
            let mut logprobs = Vec::new();
            loop {
                match received.recv() {
                    Ok(Event::Token(token)) => {
                        logprobs.push(token.logprob.map_or(f32::NAN, |l| l.logprob))
                    }
                    Ok(Event::Done(result)) => {
                        result?;
                        break;
                    }
                    Err(_) => {
                        return Err(EngineError::Internal(
                            "the decode loop ended before the scores were done".into(),
                        ));
                    }
                }
            }
            scores.push(logprobs);
        }
        Ok(scores)
    }

    fn embed(&self, input: &EmbedInput) -> Result<Embedding, EngineError> {
        if !self.embeddings {
            return Err(EngineError::FailedPrecondition(EMBEDDINGS_OFF.into()));
        }
        let tokens = match input {
            EmbedInput::Text(text) if text.is_empty() => {
                return Err(EngineError::InvalidArgument(
                    "Embeddings, EmbeddingTokens and Prompt are all empty; send the text to embed"
                        .into(),
                ));
            }
            EmbedInput::Text(text) => tokenize(&self.model, text, true)?,
            EmbedInput::Tokens(ids) => {
                let n_vocab = self.model.n_vocab();
                if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= n_vocab) {
                    return Err(EngineError::InvalidArgument(format!(
                        "EmbeddingTokens: token id {bad} is outside the vocabulary (0..{n_vocab})"
                    )));
                }
                ids.iter().map(|&id| LlamaToken(id)).collect()
            }
        };
        if tokens.len() > self.context_per_slot as usize {
            return Err(EngineError::InvalidArgument(format!(
                "the input has {} tokens but an embedding takes at most {}; shorten it or load with a larger ContextSize",
                tokens.len(),
                self.context_per_slot
            )));
        }
        let (reply, result) = mpsc::channel();
        self.scheduler.embed(EmbedJob {
            tokens,
            per_token: self.per_token,
            reply,
        })?;
        result.recv().map_err(|_| {
            EngineError::Internal("the decode loop ended before the embedding was done".into())
        })?
    }

    fn memory(&self) -> MemoryReport {
        let mut report = self.memory.clone();
        // Named as the candle worker names its prefix cache's hits.
        report.parts.push((
            "prefix_cache_hit_tokens".to_string(),
            self.scheduler.reused_tokens(),
        ));
        report
    }
}

/// What the chat layer needs to know about a model: its name, template and BOS/EOS text.
pub fn model_info(model: &LlamaModel, context_length: u32) -> ModelInfo {
    ModelInfo {
        name: model.meta_val_str("general.name").ok(),
        context_length,
        chat_template: model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .map(TemplateSource::Single),
        special_tokens: special_tokens(model),
        vocab_size: u32::try_from(model.n_vocab()).unwrap_or(0),
    }
}

/// Loads only the vocabulary and metadata of a GGUF (no weights), for the prompt dry-run.
pub fn load_vocab_only(path: &Path) -> Result<(LlamaBackend, LlamaModel), EngineError> {
    backend_common::model_path::check_gguf_file(path)?;
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let backend = LlamaBackend::init()
        .map_err(|e| EngineError::Internal(format!("cannot initialise llama.cpp: {e}")))?;
    let params = LlamaModelParams::default().with_vocab_only(true);
    let model = LlamaModel::load_from_file(&backend, path, &params).map_err(|e| {
        EngineError::InvalidModel {
            path: path.to_path_buf(),
            reason: format!("llama.cpp could not read it ({e})"),
        }
    })?;
    Ok((backend, model))
}

/// BOS/EOS as text, for chat templates that write them (`{{ bos_token }}`).
fn special_tokens(model: &LlamaModel) -> SpecialTokens {
    let vocab = model.vocab();
    let text = |token: LlamaToken| {
        (token.0 >= 0)
            .then(|| String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned())
            .filter(|t| !t.is_empty())
    };
    SpecialTokens {
        bos_token: text(vocab.bos()),
        eos_token: text(vocab.eos()),
    }
}

/// Tokenizes with special tokens parsed (`<|im_start|>` written in a prompt is one token);
/// BOS is added when asked and the model uses one.
fn tokenize(model: &LlamaModel, text: &str, add_bos: bool) -> Result<Vec<LlamaToken>, EngineError> {
    let tokens = model.vocab().tokenize(text.as_bytes(), add_bos, true);
    match crate::ffi_guard::take_exception() {
        Some(thrown) => Err(EngineError::InvalidArgument(format!(
            "llama.cpp could not tokenize the text: {thrown}"
        ))),
        None => Ok(tokens),
    }
}
