//! The harness against a fault-injecting backend double: one switch at a time, each fault
//! must fail its capability and only that one (and with no fault, everything passes).
//!
//! This file is both the test and the double: run with `--addr HOST:PORT` it serves the
//! double (a scripted [`Engine`] behind backend-common's real `BackendService`, wrapped in a
//! thin gRPC service that corrupts its answers as `E2E_FAULT` says); run as a test it starts
//! the `e2e-backends` binary with `BACKEND_BINARY` pointing back at itself.
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend_common::engine::{
    EmbedInput, Embedding, Engine, EngineError, FinishReason, Flow, GeneratedToken,
    GenerationRequest, GenerationStats, LoadedModel, MemoryReport, ModelInfo, ScoredSequence,
    TokenLogprob, TokenSink,
};
use backend_common::load::LoadRequest;
use backend_common::pb::backend_server::{Backend, BackendServer};
use backend_common::pb::status_response::State;
use backend_common::pb::{self, ChatDelta, Reply, ToolCallDelta};
use backend_common::server::{AUTH_TOKEN_ENV, BackendService};
use backend_common::template::TemplateSource;
use clap::Parser;
use libtest_mimic::{Arguments, Trial};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// A fault the double can inject, and the capability that must catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    HealthNotOk,
    CountsMissing,
    DuplicateFinalChunk,
    UnaryToolRenamed,
    ToolNameSplit,
    CallRepeatedUnderNewIndex,
    ToolMarkupInContent,
    TokenizeLengthZero,
    LogprobsMissing,
    LogitBiasIgnored,
    ReasoningInContent,
    GrammarIgnored,
    ConcurrentStreamRefused,
    StatusNeverReady,
    FreeKeepsModel,
    AuthSkippedOnStatus,
    NegativeTokensAccepted,
    CancelIgnored,
    EmptyEmbedding,
    DetokenizeDropsLastChar,
    IdentityIgnored,
    MetricsEmpty,
    ScoreDropsFirstToken,
    MetadataUnrendered,
}

/// Each fault, its `E2E_FAULT` name and the capability that must fail.
const FAULTS: [(Fault, &str, &str); 24] = [
    (Fault::HealthNotOk, "health_not_ok", "health"),
    (Fault::CountsMissing, "counts_missing", "predict"),
    (
        Fault::DuplicateFinalChunk,
        "duplicate_final_chunk",
        "stream",
    ),
    (Fault::UnaryToolRenamed, "unary_tool_renamed", "tools"),
    (Fault::ToolNameSplit, "tool_name_split", "stream_tools"),
    (
        Fault::CallRepeatedUnderNewIndex,
        "call_repeated_under_new_index",
        "stream_tools",
    ),
    (
        Fault::ToolMarkupInContent,
        "tool_markup_in_content",
        "stream_tools",
    ),
    (
        Fault::TokenizeLengthZero,
        "tokenize_length_zero",
        "tokenize_length",
    ),
    (Fault::LogprobsMissing, "logprobs_missing", "logprobs"),
    (Fault::LogitBiasIgnored, "logit_bias_ignored", "logit_bias"),
    (
        Fault::ReasoningInContent,
        "reasoning_in_content",
        "reasoning",
    ),
    (Fault::GrammarIgnored, "grammar_ignored", "grammar"),
    (
        Fault::ConcurrentStreamRefused,
        "concurrent_stream_refused",
        "concurrency",
    ),
    (Fault::StatusNeverReady, "status_never_ready", "status"),
    (Fault::FreeKeepsModel, "free_keeps_model", "free"),
    (Fault::AuthSkippedOnStatus, "auth_skipped_on_status", "auth"),
    (
        Fault::NegativeTokensAccepted,
        "negative_tokens_accepted",
        "bad_input",
    ),
    (Fault::CancelIgnored, "cancel_ignored", "cancel"),
    (Fault::EmptyEmbedding, "empty_embedding", "embeddings"),
    (
        Fault::DetokenizeDropsLastChar,
        "detokenize_drops_last_char",
        "detokenize",
    ),
    (Fault::IdentityIgnored, "identity_ignored", "model_identity"),
    (Fault::MetricsEmpty, "metrics_empty", "metrics"),
    (
        Fault::ScoreDropsFirstToken,
        "score_drops_first_token",
        "score",
    ),
    (Fault::MetadataUnrendered, "metadata_unrendered", "metadata"),
];

/// Every capability the double offers (all but `json_schema`, which needs a real grammar
/// engine).
const CAPS: &str = "health,load,predict,stream,embeddings,tools,stream_tools,tokenize,tokenize_length,detokenize,model_identity,metrics,score,metadata,logprobs,logit_bias,reasoning,grammar,concurrency,status,free,auth,bad_input,cancel";

const TEMPLATE: &str = "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function.name }}{% if not loop.last %},{% endif %}{% endfor %}</tools><|im_end|>\n{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const ANSWER: &str = " Paris. It is a city of art, food and history.";

/// A scripted engine: one character per token, with outputs chosen from the request.
struct ScriptEngine {
    fault: Option<Fault>,
}

/// The double's "model": what it replays, and its faults.
struct ScriptModel {
    fault: Option<Fault>,
    replay: Option<String>,
    context: u32,
    /// The model file's size, reported as its weights.
    weights: u64,
    /// One generation at a time, like a single-slot engine.
    turn: Mutex<()>,
}

impl ScriptModel {
    fn is(&self, fault: Fault) -> bool {
        self.fault == Some(fault)
    }

    /// What to generate for `request`: [`Self::scripted`], less the tokens (characters) a
    /// LogitBias of -50 or less bans (backend-common checked that every id is a token).
    fn script(&self, request: &GenerationRequest) -> Result<String, EngineError> {
        let text = self.scripted(request)?;
        if self.is(Fault::LogitBiasIgnored) {
            return Ok(text);
        }
        let banned: Vec<char> = request
            .sampling
            .logit_bias
            .iter()
            .filter(|(_, b)| *b <= -50.0)
            .filter_map(|(id, _)| char::from_u32(*id as u32))
            .collect();
        Ok(text.chars().filter(|c| !banned.contains(c)).collect())
    }

    /// The text scripted for `request`, from its grammar, bias, tools or the loaded model.
    fn scripted(&self, request: &GenerationRequest) -> Result<String, EngineError> {
        if let Some(grammar) = &request.grammar {
            let first = first_literal(grammar)?;
            if !self.is(Fault::GrammarIgnored) {
                return Ok(first);
            }
        }
        if let Some(&(id, _)) = request.sampling.logit_bias.iter().find(|(_, b)| *b >= 50.0)
            && !self.is(Fault::LogitBiasIgnored)
        {
            let c = char::from_u32(id as u32)
                .ok_or_else(|| EngineError::InvalidArgument(format!("no token {id}")))?;
            return Ok(c
                .to_string()
                .repeat(request.max_tokens.unwrap_or(4) as usize));
        }
        let prompt: String = request
            .prompt
            .iter()
            .filter_map(|&id| char::from_u32(id as u32))
            .collect();
        if let Some(start) = prompt.find("<tools>") {
            let names = &prompt[start + "<tools>".len()..];
            let name = names.split([',', '<']).next().unwrap_or_default();
            return Ok(format!(
                "<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{\"location\": \"Paris, France\"}}}}\n</tool_call>"
            ));
        }
        Ok(self.replay.clone().unwrap_or_else(|| ANSWER.to_string()))
    }
}

/// The first alternative of a grammar of the form `root ::= "a" | "b"`; anything else is
/// refused, as an engine refuses grammars it cannot parse.
fn first_literal(grammar: &str) -> Result<String, EngineError> {
    let invalid = || EngineError::InvalidArgument(format!("cannot parse grammar {grammar:?}"));
    let body = grammar
        .trim()
        .strip_prefix("root ::=")
        .ok_or_else(invalid)?;
    let literals = body
        .split('|')
        .map(|alt| {
            alt.trim()
                .strip_prefix('"')
                .and_then(|a| a.strip_suffix('"'))
                .filter(|a| !a.contains('"'))
                .ok_or_else(invalid)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(literals[0].to_string())
}

impl Engine for ScriptEngine {
    type Model = ScriptModel;
    type Plan = ScriptModel;
    const OPTIONS: &'static [&'static str] = &["replay"];

    fn plan(&self, request: &LoadRequest) -> Result<ScriptModel, EngineError> {
        // Refuses what is not a GGUF file, an architecture it does not know, a context longer
        // than the model's and the LoRA adapter it cannot apply, as the real workers do.
        let header = backend_common::model_path::check_gguf_file(&request.path)?;
        let architecture = header.architecture().unwrap_or_default();
        if !matches!(architecture, "llama" | "qwen2") {
            return Err(EngineError::InvalidModel {
                path: request.path.clone(),
                reason: format!("architecture `{architecture}` is not one this double knows"),
            });
        }
        let trained = header.arch_int("context_length").unwrap_or(4096);
        if let Some(n) = request.context_size
            && u64::from(n) > trained
        {
            return Err(EngineError::InvalidArgument(format!(
                "ContextSize {n} is longer than the {trained} positions the model was trained on"
            )));
        }
        if let Some(lora) = &request.lora {
            return Err(EngineError::InvalidArgument(format!(
                "LoraAdapter `{}`: this double applies no LoRA adapter",
                lora.path.display()
            )));
        }
        let weights = std::fs::metadata(&request.path)
            .map_err(|_| EngineError::ModelNotFound(request.path.clone()))?
            .len();
        Ok(ScriptModel {
            fault: self.fault,
            replay: request
                .options
                .get_str(&["replay"])
                .map(|(_, v)| v.to_string()),
            context: request.context_size.unwrap_or(4096),
            weights,
            turn: Mutex::new(()),
        })
    }

    fn load(&self, model: ScriptModel) -> Result<(ScriptModel, ModelInfo), EngineError> {
        let info = ModelInfo {
            name: Some("Qwen3 fault double".into()),
            context_length: model.context,
            chat_template: Some(TemplateSource::Single(TEMPLATE.into())),
            special_tokens: Default::default(),
            vocab_size: char::MAX as u32 + 1,
        };
        Ok((model, info))
    }
}

impl LoadedModel for ScriptModel {
    fn tokenize(&self, text: &str, _add_bos: bool) -> Result<Vec<i32>, EngineError> {
        Ok(text.chars().map(|c| c as i32).collect())
    }

    fn detokenize(&self, ids: &[i32]) -> Result<String, EngineError> {
        ids.iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| {
                        EngineError::InvalidArgument(format!("tokens: {id} is no character"))
                    })
            })
            .collect()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError> {
        let _turn = self.turn.lock().unwrap();
        let prompt_tokens = request.prompt.len();
        let text = self.script(request)?;
        let limit = request.max_tokens.map_or(usize::MAX, |m| m as usize);
        // IgnoreEOS generates past the end of the text, except where a grammar ends it (a
        // grammar's text is all it admits).
        let chars: Vec<char> = if request.ignore_eos && request.grammar.is_none() {
            text.chars().cycle().take(limit.min(4096)).collect()
        } else {
            text.chars().take(limit).collect()
        };
        let mut delay = Duration::from_millis(1);
        let mut finish = if chars.len() == limit {
            FinishReason::Length
        } else {
            FinishReason::Eos
        };
        let mut generated = 0;
        for c in &chars {
            std::thread::sleep(delay);
            generated += 1;
            let piece = c.to_string().into_bytes();
            let logprob = request.logprobs.map(|top| TokenLogprob {
                logprob: -0.5,
                top: (0..top.max(1) as i32)
                    .map(|k| (*c as i32 + k, piece.clone(), -0.5 - k as f32))
                    .collect(),
            });
            let token = GeneratedToken {
                id: *c as i32,
                piece,
                special: false,
                logprob,
            };
            if sink.token(token) == Flow::Stop {
                if self.is(Fault::CancelIgnored) {
                    // Goes on for nobody, slowly, like an engine that never checks.
                    delay = Duration::from_millis(50);
                    continue;
                }
                finish = FinishReason::Stopped;
                break;
            }
        }
        Ok(GenerationStats {
            prompt_tokens: prompt_tokens as u32,
            completion_tokens: generated,
            prompt_ms: 1.0,
            generation_ms: generated as f64,
            finish,
        })
    }

    /// Each character of the scripted answer is likely (-0.5, what [`Self::generate`]
    /// reports), any other unlikely (-5).
    fn score(&self, sequences: &[ScoredSequence]) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(sequences
            .iter()
            .map(|s| {
                s.tokens[s.from..]
                    .iter()
                    .map(|&id| {
                        let likely = char::from_u32(id as u32).is_some_and(|c| ANSWER.contains(c));
                        if likely { -0.5 } else { -5.0 }
                    })
                    .collect()
            })
            .collect())
    }

    /// A bag of words: each word counts in one of 16 dimensions, so texts that share words
    /// are close. Token ids are characters, as [`LoadedModel::tokenize`] makes them.
    fn embed(&self, input: &EmbedInput) -> Result<Embedding, EngineError> {
        let text: String = match input {
            EmbedInput::Text(text) => text.clone(),
            EmbedInput::Tokens(ids) => ids
                .iter()
                .map(|&id| {
                    char::from_u32(id as u32).ok_or_else(|| {
                        EngineError::InvalidArgument(format!(
                            "EmbeddingTokens: token id {id} is outside the vocabulary"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if text.is_empty() {
            return Err(EngineError::InvalidArgument("nothing to embed".into()));
        }
        let mut v = vec![0.0f32; 16];
        for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()) {
            if !word.is_empty() {
                let hash = word
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
                v[hash as usize % 16] += 1.0;
            }
        }
        Ok(Embedding {
            values: v,
            dim: 16,
            per_token: false,
            input_tokens: text.chars().count(),
        })
    }

    fn memory(&self) -> MemoryReport {
        MemoryReport {
            parts: vec![
                ("weights".into(), self.weights),
                ("kv_cache".into(), 1 << 20),
            ],
        }
    }
}

/// backend-common's real service, with the replies corrupted as the fault says.
struct FaultService {
    inner: Arc<BackendService<ScriptEngine>>,
    fault: Option<Fault>,
    token: Option<String>,
    streams: Arc<AtomicUsize>,
}

impl FaultService {
    fn is(&self, fault: Fault) -> bool {
        self.fault == Some(fault)
    }

    fn authorize<T>(&self, request: &Request<T>, status_call: bool) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if status_call && self.is(Fault::AuthSkippedOnStatus) {
            return Ok(());
        }
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given == Some(format!("Bearer {token}").as_str()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// Rewrites a stream as a fault says; `None` passes it through.
struct StreamFault {
    fault: Option<Fault>,
    text: Vec<u8>,
    calls: BTreeMap<i32, ToolCallDelta>,
    markup_sent: bool,
}

impl StreamFault {
    /// The chunks to send for `reply`; `last` is the stream's final chunk.
    fn rewrite(&mut self, mut reply: Reply, last: bool) -> Vec<Reply> {
        let mut out = Vec::new();
        match self.fault {
            Some(Fault::DuplicateFinalChunk) => {
                self.text.extend_from_slice(&reply.message);
                if last && !self.text.is_empty() {
                    reply.message = self.text.clone();
                }
            }
            Some(Fault::ToolNameSplit) => {
                for delta in &mut reply.chat_deltas {
                    for call in &mut delta.tool_calls {
                        if call.name.len() > 1 {
                            let (head, tail) = call.name.split_at(call.name.len() / 2);
                            out.push(call_chunk(ToolCallDelta {
                                index: call.index,
                                id: call.id.clone(),
                                name: head.to_string(),
                                arguments: String::new(),
                            }));
                            call.name = tail.to_string();
                            call.id.clear();
                        }
                    }
                }
            }
            Some(Fault::CallRepeatedUnderNewIndex) => {
                for call in reply.chat_deltas.iter().flat_map(|d| &d.tool_calls) {
                    let merged = self.calls.entry(call.index).or_default();
                    merged.index = call.index;
                    if !call.id.is_empty() {
                        merged.id = call.id.clone();
                    }
                    if !call.name.is_empty() {
                        merged.name = call.name.clone();
                    }
                    merged.arguments.push_str(&call.arguments);
                }
                if last {
                    let next = self.calls.keys().max().map_or(0, |i| i + 1);
                    for call in self.calls.values() {
                        out.push(call_chunk(ToolCallDelta {
                            index: next + call.index,
                            ..call.clone()
                        }));
                    }
                }
            }
            Some(Fault::ToolMarkupInContent) => {
                let has_call = reply.chat_deltas.iter().any(|d| !d.tool_calls.is_empty());
                if has_call && !self.markup_sent {
                    self.markup_sent = true;
                    out.push(Reply {
                        message: b"<tool_call>".to_vec(),
                        chat_deltas: vec![ChatDelta {
                            content: "<tool_call>".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    });
                }
            }
            Some(Fault::ReasoningInContent) => reasoning_into_content(&mut reply),
            _ => {}
        }
        out.push(reply);
        out
    }
}

fn call_chunk(call: ToolCallDelta) -> Reply {
    Reply {
        chat_deltas: vec![ChatDelta {
            tool_calls: vec![call],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Puts the reasoning back into the content between think tags, as a backend without a
/// reasoning parser would.
fn reasoning_into_content(reply: &mut Reply) {
    for delta in &mut reply.chat_deltas {
        if !delta.reasoning_content.is_empty() {
            delta.content = format!(
                "<think>{}</think>{}",
                std::mem::take(&mut delta.reasoning_content),
                delta.content
            );
        }
    }
}

#[tonic::async_trait]
impl Backend for FaultService {
    async fn health(&self, request: Request<pb::HealthMessage>) -> Result<Response<Reply>, Status> {
        self.authorize(&request, false)?;
        let mut reply = self.inner.health(request).await?;
        if self.is(Fault::HealthNotOk) {
            reply.get_mut().message = b"SERVING".to_vec();
        }
        Ok(reply)
    }

    async fn load_model(
        &self,
        request: Request<pb::ModelOptions>,
    ) -> Result<Response<pb::Result>, Status> {
        self.authorize(&request, false)?;
        self.inner.load_model(request).await
    }

    async fn predict(
        &self,
        request: Request<pb::PredictOptions>,
    ) -> Result<Response<Reply>, Status> {
        self.authorize(&request, false)?;
        let mut request = request;
        if self.is(Fault::NegativeTokensAccepted) && request.get_ref().tokens < 0 {
            request.get_mut().tokens = 0;
        }
        if self.is(Fault::IdentityIgnored) {
            request.get_mut().model_identity.clear();
        }
        let mut response = self.inner.predict(request).await?;
        let reply = response.get_mut();
        match self.fault {
            Some(Fault::CountsMissing) => (reply.tokens, reply.prompt_tokens) = (0, 0),
            Some(Fault::LogprobsMissing) => reply.logprobs.clear(),
            Some(Fault::ReasoningInContent) => reasoning_into_content(reply),
            Some(Fault::UnaryToolRenamed) => {
                for call in reply.chat_deltas.iter_mut().flat_map(|d| &mut d.tool_calls) {
                    call.name = format!("functions.{}", call.name);
                }
            }
            _ => {}
        }
        Ok(response)
    }

    type PredictStreamStream = ReceiverStream<Result<Reply, Status>>;

    async fn predict_stream(
        &self,
        request: Request<pb::PredictOptions>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        self.authorize(&request, false)?;
        let active = Arc::clone(&self.streams);
        if active.fetch_add(1, Ordering::SeqCst) > 0 && self.is(Fault::ConcurrentStreamRefused) {
            active.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted("one stream at a time"));
        }
        let inner = match self.inner.predict_stream(request).await {
            Ok(inner) => inner.into_inner(),
            Err(status) => {
                active.fetch_sub(1, Ordering::SeqCst);
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let mut rewrite = StreamFault {
            fault: self.fault,
            text: Vec::new(),
            calls: BTreeMap::new(),
            markup_sent: false,
        };
        tokio::spawn(async move {
            let mut inner = inner.peekable();
            while let Some(item) = inner.next().await {
                let last = std::pin::Pin::new(&mut inner).peek().await.is_none();
                let chunks = match item {
                    Ok(reply) => rewrite.rewrite(reply, last).into_iter().map(Ok).collect(),
                    Err(status) => vec![Err(status)],
                };
                for chunk in chunks {
                    if tx.send(chunk).await.is_err() {
                        active.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tokenize_string(
        &self,
        request: Request<pb::PredictOptions>,
    ) -> Result<Response<pb::TokenizationResponse>, Status> {
        self.authorize(&request, false)?;
        let mut response = self.inner.tokenize_string(request).await?;
        if self.is(Fault::TokenizeLengthZero) {
            response.get_mut().length = 0;
        }
        Ok(response)
    }

    async fn free(
        &self,
        request: Request<pb::HealthMessage>,
    ) -> Result<Response<pb::Result>, Status> {
        self.authorize(&request, false)?;
        if self.is(Fault::FreeKeepsModel) {
            return Ok(Response::new(pb::Result {
                message: "freed".into(),
                success: true,
            }));
        }
        self.inner.free(request).await
    }

    async fn status(
        &self,
        request: Request<pb::HealthMessage>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&request, true)?;
        let mut response = self.inner.status(request).await?;
        if self.is(Fault::StatusNeverReady) && response.get_ref().state == State::Ready as i32 {
            response.get_mut().state = State::Uninitialized as i32;
        }
        Ok(response)
    }

    async fn embedding(
        &self,
        request: Request<pb::PredictOptions>,
    ) -> Result<Response<pb::EmbeddingResult>, Status> {
        self.authorize(&request, false)?;
        let mut response = self.inner.embedding(request).await?;
        if self.is(Fault::EmptyEmbedding) {
            response.get_mut().embeddings.clear();
        }
        Ok(response)
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        self.authorize(&request, false)?;
        let mut response = self.inner.detokenize(request).await?;
        if self.is(Fault::DetokenizeDropsLastChar) {
            response.get_mut().content.pop();
        }
        Ok(response)
    }

    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        self.authorize(&request, false)?;
        let mut response = self.inner.score(request).await?;
        if self.is(Fault::ScoreDropsFirstToken) {
            // An off-by-one at the prompt's end: the first candidate token goes unscored.
            for c in response.get_mut().candidates.iter_mut() {
                if c.tokens.is_empty() {
                    continue;
                }
                c.tokens.remove(0);
                c.num_tokens -= 1;
                c.log_prob = c.tokens.iter().map(|t| t.log_prob).sum();
                c.length_normalized_log_prob = c.log_prob / f64::from(c.num_tokens.max(1));
            }
        }
        Ok(response)
    }

    async fn rerank(
        &self,
        request: Request<pb::RerankRequest>,
    ) -> Result<Response<pb::RerankResult>, Status> {
        self.authorize(&request, false)?;
        self.inner.rerank(request).await
    }

    async fn get_metrics(
        &self,
        request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        self.authorize(&request, false)?;
        let mut response = self.inner.get_metrics(request).await?;
        if self.is(Fault::MetricsEmpty) {
            *response.get_mut() = pb::MetricsResponse::default();
        }
        Ok(response)
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelOptions>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.authorize(&request, false)?;
        let mut response = self.inner.model_metadata(request).await?;
        if self.is(Fault::MetadataUnrendered) {
            response.get_mut().rendered_template.clear();
        }
        Ok(response)
    }
}

/// The double's command line: LocalAI's.
#[derive(Parser)]
struct DoubleArgs {
    #[command(flatten)]
    serve: backend_common::cli::ServeArgs,
}

/// Serves the double until SIGTERM.
fn serve_double() -> anyhow::Result<()> {
    let args = DoubleArgs::parse();
    let fault = match std::env::var("E2E_FAULT").ok().filter(|f| !f.is_empty()) {
        None => None,
        Some(name) => Some(
            FAULTS
                .iter()
                .find(|(_, n, _)| *n == name)
                .map(|(f, _, _)| *f)
                .ok_or_else(|| anyhow::anyhow!("unknown E2E_FAULT {name}"))?,
        ),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = &args.serve.addr;
        let listener = tokio::net::TcpListener::bind((addr.host.as_str(), addr.port)).await?;
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let engine = ScriptEngine { fault };
        let service = FaultService {
            inner: Arc::new(BackendService::new(Arc::new(engine), shutdown, None)),
            fault,
            token: std::env::var(AUTH_TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            streams: Arc::new(AtomicUsize::new(0)),
        };
        // The size limit as the workers' server sets it.
        let limit = backend_common::server::MESSAGE_LIMIT;
        tonic::transport::Server::builder()
            .layer(backend_common::message_limit::MessageLimitLayer::new(limit))
            .add_service(
                BackendServer::new(service)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                backend_common::server::termination_signal(),
            )
            .await?;
        Ok(())
    })
}

/// Runs the harness against the double with `fault`; the outcome of each capability.
fn harness_outcomes(fault: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    // Tests run as threads of one process: each call writes a file of its own.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let model = std::env::temp_dir().join(format!(
        "fault-double-{}-{}.gguf",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    // A GGUF header the double reads (architecture, context length); it loads no weights.
    std::fs::write(&model, e2e_backends::testing::tiny_gguf("llama", 8192))?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-backends"))
        .args(["--format", "json"])
        .env("BACKEND_BINARY", std::env::current_exe()?)
        .env_remove("BACKEND_ADDR")
        .env("BACKEND_TEST_MODEL_FILE", &model)
        .env("BACKEND_TEST_CAPS", CAPS)
        .env("BACKEND_TEST_REPLAY_OPTION", "replay")
        .env("BACKEND_TEST_TIMEOUT", "60")
        .env(AUTH_TOKEN_ENV, "fault-test-token")
        .env("E2E_FAULT", fault.unwrap_or_default())
        .output();
    let _ = std::fs::remove_file(&model);
    let output = output?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut outcomes = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let event: serde_json::Value = serde_json::from_str(line)?;
        if event["type"] == "test"
            && let (Some(name), Some(result)) = (event["name"].as_str(), event["event"].as_str())
            && result != "started"
        {
            outcomes.insert(
                name.to_string(),
                format!("{result} {}", event["stdout"].as_str().unwrap_or_default()),
            );
        }
    }
    // A trial per capability; those not asked for are reported ignored.
    let trials = e2e_backends::caps::Capability::ALL.len();
    anyhow::ensure!(
        outcomes.len() == trials,
        "expected {trials} trial results, got {outcomes:?}; stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(outcomes)
}

/// Fails unless exactly `failing` failed and every other requested capability passed.
fn expect(fault: Option<&str>, failing: Option<&str>) -> Result<(), libtest_mimic::Failed> {
    let outcomes = harness_outcomes(fault).map_err(|e| e.to_string())?;
    for (name, outcome) in &outcomes {
        let expected = if name == "json_schema" {
            "ignored"
        } else if Some(name.as_str()) == failing {
            "failed"
        } else {
            "ok"
        };
        if !outcome.starts_with(expected) {
            return Err(format!(
                "with fault {fault:?}, `{name}` should be {expected} but is: {outcome}\nall: {outcomes:#?}"
            )
            .into());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a.starts_with("--addr")) {
        return match serve_double() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fault double: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Arguments::from_args();
    let mut trials = vec![Trial::test("no_fault_everything_passes", || {
        expect(None, None)
    })];
    for (_, name, cap) in FAULTS {
        trials.push(Trial::test(format!("{name}_fails_only_{cap}"), move || {
            expect(Some(name), Some(cap))
        }));
    }
    libtest_mimic::run(&args, trials).exit_code()
}
