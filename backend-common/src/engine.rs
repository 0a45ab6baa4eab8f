//! The seam between the shared gRPC service and an inference engine.
//!
//! An engine does only what is specific to it: load a model, tokenize, and generate tokens
//! for a prompt under given sampling parameters. Everything about the protocol (validation,
//! stop sequences, UTF-8 assembly, reply building, status, auth) lives in this crate.
use std::path::PathBuf;

use crate::load::LoadRequest;
use crate::sampling::SamplingParams;
use crate::template::{SpecialTokens, TemplateSource};

/// What went wrong in an engine; mapped to a gRPC status at the server edge.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request that needs a model arrived before LoadModel succeeded.
    #[error("no model is loaded: call LoadModel first")]
    NotLoaded,
    /// The model file or folder does not exist.
    #[error("model not found: {0}")]
    ModelNotFound(PathBuf),
    /// The model is named by a Hugging Face hub id and no local copy exists; nothing is
    /// downloaded.
    #[error(
        "`{id}` looks like a Hugging Face hub id, and this backend does not download models: no copy at {} (the HF_HUB_CACHE / HF_HOME cache layout); put the model there or pass the path of a local folder",
        searched.display()
    )]
    HubModelNotCached {
        /// The hub id asked for.
        id: String,
        /// The cache folder where it would be.
        searched: PathBuf,
    },
    /// The model exists but could not be loaded.
    #[error("cannot load model {path}: {reason}")]
    InvalidModel {
        /// The path that was tried.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A request field or option is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be served in the worker's current state (e.g. the model has no
    /// chat template).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request does not fit (context, memory).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The engine does not offer this call.
    #[error("{0} is not supported by this backend")]
    Unimplemented(&'static str),
    /// An engine failure that is not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

/// Facts about the loaded model that the shared layer needs.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// The model's own name (GGUF `general.name`, HF `_name_or_path`), if any.
    pub name: Option<String>,
    /// Context length in tokens that requests must fit in.
    pub context_length: u32,
    /// The model's chat template(s), if it ships any.
    pub chat_template: Option<TemplateSource>,
    /// BOS/EOS token text for templates.
    pub special_tokens: SpecialTokens,
    /// Number of token ids (logit bias and token inputs are checked against it).
    pub vocab_size: u32,
}

/// The prompt of a generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Prompt text; special tokens written in it (`<|im_start|>`) are parsed as such.
    pub text: String,
    /// Whether the engine adds the model's BOS token (false when a chat template already
    /// wrote it).
    pub add_bos: bool,
}

/// A forced tool call: the output must be `prefix`, then one JSON value matching `schema`,
/// then `suffix`. The chat layer derives the shape from the model's tool parser; engines
/// turn it into their own grammar format.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallConstraint {
    /// Literal text before the call object (e.g. `<tool_call>\n`).
    pub prefix: String,
    /// JSON schema of the call object(s).
    pub schema: serde_json::Value,
    /// Literal text after the call object.
    pub suffix: String,
    /// `ToolChoice` "auto": where a call may begin; the constraint applies only from there
    /// on, to one or more calls, and the model is free before it. `None`: the whole output
    /// is exactly one call.
    pub lazy: Option<CallStart>,
}

/// Where a lazily constrained ("auto") tool call may begin.
#[derive(Debug, Clone, PartialEq)]
pub struct CallStart {
    /// The literal opener (`<tool_call>`): from its first appearance on, the output is calls
    /// (`prefix`, object, `suffix`).
    pub opener: String,
    /// A bare call object (`{"name": ...`) at the very start of the output is a call too
    /// (the parser reads one naming a request tool as a call).
    pub bare_object_at_start: bool,
}

/// What an Embedding call embeds.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    /// `Embeddings` (or `Prompt` when that is empty), tokenized with BOS.
    Text(String),
    /// `EmbeddingTokens`: token ids, used as given.
    Tokens(Vec<i32>),
}

/// A token sequence to score: the log-probability of each of `tokens[from..]` given the
/// tokens before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSequence {
    /// Prompt then continuation; shorter than the model's context.
    pub tokens: Vec<i32>,
    /// Index of the first scored token; at least 1 (a token needs one before it).
    pub from: usize,
}

/// Why an Embedding call is refused on a model loaded without `Embeddings`.
pub const EMBEDDINGS_OFF: &str = "the model was loaded without Embeddings; load it with `Embeddings: true` (`embeddings: true` in the LocalAI model config) to use the Embedding call";

/// An embedding as an engine computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The vectors, one after another, each normalised.
    pub values: Vec<f32>,
    /// Width of one vector.
    pub dim: usize,
    /// One vector per input token (`pooling:none`) rather than one pooled vector.
    pub per_token: bool,
    /// Tokens of the input that was embedded.
    pub input_tokens: usize,
}

impl Embedding {
    /// `v` scaled to unit length (a zero vector stays zero), as llama.cpp's server
    /// normalises embeddings (LocalAI's `embd_normalize` default).
    pub fn unit(v: &[f32]) -> Vec<f32> {
        let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
        v.iter().map(|&x| x * scale).collect()
    }
}

/// One generation request, validated.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt's token ids: never empty, and shorter than the model's context.
    pub prompt: Vec<i32>,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Maximum new tokens; `None` means until EOS or the end of the context.
    pub max_tokens: Option<u32>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// A GBNF grammar constraining the output, if any.
    pub grammar: Option<String>,
    /// Words that switch `grammar` on when the output first contains one (the load's
    /// `GrammarTriggers`); empty means the grammar applies from the first token.
    pub grammar_triggers: Vec<String>,
    /// The tool call the output must be (`ToolChoice` "required" or a named function), or
    /// must be once the model opens one ("auto", see [`ToolCallConstraint::lazy`]);
    /// never set together with `grammar`.
    pub tool_call: Option<ToolCallConstraint>,
    /// Number of top alternatives to report per token when logprobs are requested.
    pub logprobs: Option<u32>,
}

/// A token's log-probability and its best alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// Log-probability of the chosen token.
    pub logprob: f32,
    /// The best alternatives: (token id, piece bytes, log-probability).
    pub top: Vec<(i32, Vec<u8>, f32)>,
}

/// One generated token as the engine produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    /// Token id.
    pub id: i32,
    /// The token's bytes; a multi-byte character may be split across tokens.
    pub piece: Vec<u8>,
    /// A control token (`<|im_end|>`, `<|channel|>`): its piece is markup, not text.
    pub special: bool,
    /// Set when the request asked for logprobs.
    pub logprob: Option<TokenLogprob>,
}

/// Whether generation goes on after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Produce the next token.
    Continue,
    /// Stop now (stop sequence, client gone, shutdown).
    Stop,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token.
    Eos,
    /// `max_tokens` or the context end was reached.
    Length,
    /// The consumer asked to stop.
    Stopped,
}

/// Counts and timings of a finished generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens evaluated.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Milliseconds spent on the prompt.
    pub prompt_ms: f64,
    /// Milliseconds spent generating.
    pub generation_ms: f64,
    /// Why it ended.
    pub finish: FinishReason,
}

/// Receives tokens as they are generated.
pub trait TokenSink: Send {
    /// Called for each new token; returning [`Flow::Stop`] ends generation.
    fn token(&mut self, token: GeneratedToken) -> Flow;
    /// Whether nobody listens any more (the client is gone, or the worker is shutting
    /// down): an engine checks it while the request waits for its first token, and drops
    /// the request before spending work on it.
    fn abandoned(&self) -> bool {
        false
    }
}

/// Memory held by the engine, by part (bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Named parts, e.g. "weights", "kv_cache".
    pub parts: Vec<(String, u64)>,
}

/// An inference engine behind the shared gRPC service: it turns a LoadModel request into a
/// [`LoadedModel`]. The server owns what it loads, together with the model's chat setup, so a
/// request is always rendered and generated by one and the same model.
///
/// Methods are blocking; the server calls them from a blocking thread pool, one load at a
/// time.
pub trait Engine: Send + Sync + 'static {
    /// What a successful load gives.
    type Model: LoadedModel;
    /// A load request checked and read up to the weights (settings, metadata, tokenizer).
    type Plan: Send + 'static;
    /// Option keys (`ModelOptions.Options`) this engine reads besides
    /// [`COMMON_OPTIONS`](crate::load::COMMON_OPTIONS).
    const OPTIONS: &'static [&'static str];

    /// Checks `request` and reads what it can without the weights. An error here leaves the
    /// loaded model in place; after `Ok` the server releases it and calls [`Engine::load`].
    fn plan(&self, request: &LoadRequest) -> Result<Self::Plan, EngineError>;
    /// Loads the weights of a plan.
    fn load(&self, plan: Self::Plan) -> Result<(Self::Model, ModelInfo), EngineError>;
}

/// A loaded model. Several requests may call in at once; the model synchronises internally.
pub trait LoadedModel: Send + Sync + 'static {
    /// Tokenizes text as a raw prompt would be (BOS when `add_bos`, special tokens parsed).
    fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<i32>, EngineError>;
    /// Generates tokens for `request`, handing each to `sink` until it stops, EOS, or the limit.
    fn generate(
        &self,
        request: &GenerationRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError>;
    /// The text token ids stand for: their pieces joined (control tokens as their text),
    /// bytes that are not UTF-8 replaced; an id outside the vocabulary is INVALID_ARGUMENT.
    fn detokenize(&self, _ids: &[i32]) -> Result<String, EngineError> {
        Err(EngineError::Unimplemented("Detokenize"))
    }
    /// For each sequence, the log-probability of each scored token (`tokens[from..]`) given
    /// everything before it, in order. Engines run the sequences together.
    fn score(&self, _sequences: &[ScoredSequence]) -> Result<Vec<Vec<f32>>, EngineError> {
        Err(EngineError::Unimplemented("Score"))
    }
    /// An embedding of text or of token ids (for models loaded with `Embeddings`).
    fn embed(&self, _input: &EmbedInput) -> Result<Embedding, EngineError> {
        Err(EngineError::Unimplemented("Embedding"))
    }
    /// Memory the model holds, by part.
    fn memory(&self) -> MemoryReport;
}
