//! The capabilities the harness checks, with LocalAI's names and meanings plus our own, and
//! what the checks share: their error type, RPC helpers and LocalAI's way of merging replies.
use std::collections::BTreeMap;

use backend_common::pb::{ChatDelta, PredictOptions, Reply};
use tonic::{Response, Status, Streaming};

use crate::context::Context;
use crate::testing::raw;

mod auth;
mod bad_input;
mod basic;
mod embeddings;
mod grammar;
mod identity;
mod lifecycle;
mod metadata;
mod metrics;
mod sampling;
mod score;
mod streams;
mod tools;

/// A capability: one trial of the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Health answers "OK".
    Health,
    /// LoadModel succeeds.
    Load,
    /// A unary Predict returns text and token counts.
    Predict,
    /// PredictStream returns text in chunks, counts on the last, no repeated tail.
    Stream,
    /// Embedding returns a usable vector.
    Embeddings,
    /// A unary chat with one tool calls it (LocalAI's `tools`).
    Tools,
    /// The same call streamed as LocalAI merges it.
    StreamTools,
    /// TokenizeString gives tokens (LocalAI's check).
    Tokenize,
    /// TokenizeString fills a matching `length`, a token a word at least, deterministically.
    TokenizeLength,
    /// Logprobs JSON in LocalAI's shape.
    Logprobs,
    /// LogitBias steers sampling.
    LogitBias,
    /// reasoning_content is separated from content.
    Reasoning,
    /// The output obeys a GBNF grammar; an invalid one is INVALID_ARGUMENT.
    Grammar,
    /// The output obeys a JSON-schema grammar.
    JsonSchema,
    /// Parallel streams all complete.
    Concurrency,
    /// A dropped stream does not stall the worker.
    Cancel,
    /// Free, then LoadModel again, works.
    Free,
    /// Status reports the state.
    Status,
    /// Calls without the bearer token are UNAUTHENTICATED.
    Auth,
    /// Bad requests get the right status code and the worker keeps serving.
    BadInput,
    /// Detokenize gives back the text TokenizeString split.
    Detokenize,
    /// A request naming another model (`ModelIdentity`) is NOT_FOUND.
    ModelIdentity,
    /// GetMetrics reports the busiest running generation.
    Metrics,
    /// Score gives each continuation the log-probability Predict would.
    Score,
    /// ModelMetadata describes the loaded model's template and tool markup.
    Metadata,
}

impl Capability {
    /// Every capability, in the order the trials run: `cancel` last, since a worker that
    /// fails it may stay busy for a while.
    pub const ALL: [Capability; 25] = [
        Capability::Health,
        Capability::Load,
        Capability::Predict,
        Capability::Stream,
        Capability::Embeddings,
        Capability::Tools,
        Capability::StreamTools,
        Capability::Tokenize,
        Capability::TokenizeLength,
        Capability::Detokenize,
        Capability::ModelIdentity,
        Capability::Metrics,
        Capability::Score,
        Capability::Metadata,
        Capability::Logprobs,
        Capability::LogitBias,
        Capability::Reasoning,
        Capability::Grammar,
        Capability::JsonSchema,
        Capability::Concurrency,
        Capability::Status,
        Capability::Free,
        Capability::Auth,
        Capability::BadInput,
        Capability::Cancel,
    ];

    /// The name used in `BACKEND_TEST_CAPS` and as the trial name.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Health => "health",
            Capability::Load => "load",
            Capability::Predict => "predict",
            Capability::Stream => "stream",
            Capability::Embeddings => "embeddings",
            Capability::Tools => "tools",
            Capability::StreamTools => "stream_tools",
            Capability::Tokenize => "tokenize",
            Capability::TokenizeLength => "tokenize_length",
            Capability::Logprobs => "logprobs",
            Capability::LogitBias => "logit_bias",
            Capability::Reasoning => "reasoning",
            Capability::Grammar => "grammar",
            Capability::JsonSchema => "json_schema",
            Capability::Concurrency => "concurrency",
            Capability::Cancel => "cancel",
            Capability::Free => "free",
            Capability::Status => "status",
            Capability::Auth => "auth",
            Capability::BadInput => "bad_input",
            Capability::Detokenize => "detokenize",
            Capability::ModelIdentity => "model_identity",
            Capability::Metrics => "metrics",
            Capability::Score => "score",
            Capability::Metadata => "metadata",
        }
    }

    /// The capability called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// All names, for messages.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.name()).collect()
    }
}

/// A check that ran to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The worker behaves.
    Passed,
    /// The check cannot be made here; why.
    Ignored(String),
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The worker misbehaved.
    #[error("{0}")]
    Failed(String),
    /// A call that must succeed failed.
    #[error("{call} failed: {status}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// Its status.
        status: Status,
    },
    /// The harness could not set up the check.
    #[error("{0}")]
    Setup(String),
    /// No connection to the worker.
    #[error(transparent)]
    Connect(#[from] crate::client::ConnectError),
    /// The worker could not be started.
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
}

/// Fails the check with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {{
        // Bound first, so that a float comparison is not negated where it is written.
        let holds: bool = $cond;
        if !holds {
            return Err($crate::caps::CheckError::Failed(format!($($msg)+)));
        }
    }};
}
pub(crate) use ensure;

/// Names the RPC of a failed call.
pub(crate) trait Rpc<T> {
    /// The reply, or [`CheckError::Rpc`].
    fn rpc(self, call: &'static str) -> Result<T, CheckError>;
}

impl<T> Rpc<T> for Result<Response<T>, Status> {
    fn rpc(self, call: &'static str) -> Result<T, CheckError> {
        self.map(Response::into_inner)
            .map_err(|status| CheckError::Rpc { call, status })
    }
}

/// Runs the check of `cap`.
pub async fn check(cap: Capability, ctx: &Context) -> Result<Verdict, CheckError> {
    match cap {
        Capability::Health => basic::health(ctx).await,
        Capability::Load => basic::load(ctx).await,
        Capability::Predict => basic::predict(ctx).await,
        Capability::Stream => basic::stream(ctx).await,
        Capability::Embeddings => embeddings::embeddings(ctx).await,
        Capability::Tools => tools::tools(ctx).await,
        Capability::StreamTools => tools::stream_tools(ctx).await,
        Capability::Tokenize => basic::tokenize(ctx).await,
        Capability::TokenizeLength => basic::tokenize_length(ctx).await,
        Capability::Detokenize => identity::detokenize(ctx).await,
        Capability::ModelIdentity => identity::model_identity(ctx).await,
        Capability::Metrics => metrics::metrics(ctx).await,
        Capability::Score => score::score(ctx).await,
        Capability::Metadata => metadata::metadata(ctx).await,
        Capability::Logprobs => sampling::logprobs(ctx).await,
        Capability::LogitBias => sampling::logit_bias(ctx).await,
        Capability::Reasoning => tools::reasoning(ctx).await,
        Capability::Grammar => grammar::grammar(ctx).await,
        Capability::JsonSchema => grammar::json_schema(ctx).await,
        Capability::Concurrency => streams::concurrency(ctx).await,
        Capability::Cancel => streams::cancel(ctx).await,
        Capability::Free => lifecycle::free(ctx).await,
        Capability::Status => lifecycle::status(ctx).await,
        Capability::Auth => auth::auth(ctx).await,
        Capability::BadInput => bad_input::bad_input(ctx).await,
    }
}

/// A sampled raw-prompt request with a fixed seed (and every truncation sampler on), which
/// must give the same text each time.
pub(crate) fn seeded(prompt: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed: 1234,
        ..raw(prompt, tokens)
    }
}

/// How many words `text` has: a lower bound for its tokens in any tokenizer that splits
/// on spaces.
pub(crate) fn words(text: &str) -> i32 {
    text.split_whitespace().count() as i32
}

/// Reads a stream to its end.
pub(crate) async fn collect(
    call: &'static str,
    stream: Result<Response<Streaming<Reply>>, Status>,
) -> Result<Vec<Reply>, CheckError> {
    let mut stream = stream.rpc(call)?;
    let mut replies = Vec::new();
    while let Some(reply) = stream
        .message()
        .await
        .map_err(|status| CheckError::Rpc { call, status })?
    {
        replies.push(reply);
    }
    Ok(replies)
}

/// The visible text of replies, concatenated as LocalAI does.
pub(crate) fn text(replies: &[Reply]) -> String {
    replies
        .iter()
        .map(|r| String::from_utf8_lossy(&r.message).into_owned())
        .collect()
}

/// A tool call after LocalAI merged its deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MergedCall {
    /// The last non-empty id.
    pub id: String,
    /// The last non-empty name.
    pub name: String,
    /// The concatenated argument fragments.
    pub arguments: String,
}

/// Merges tool-call deltas by index the way LocalAI's core does.
pub(crate) fn merge_calls<'a>(
    deltas: impl IntoIterator<Item = &'a ChatDelta>,
) -> BTreeMap<i32, MergedCall> {
    let mut calls: BTreeMap<i32, MergedCall> = BTreeMap::new();
    for call in deltas.into_iter().flat_map(|d| &d.tool_calls) {
        let merged = calls.entry(call.index).or_default();
        if !call.id.is_empty() {
            merged.id = call.id.clone();
        }
        if !call.name.is_empty() {
            merged.name = call.name.clone();
        }
        merged.arguments.push_str(&call.arguments);
    }
    calls
}

/// Content and reasoning of chat deltas, concatenated as LocalAI does.
pub(crate) fn merged_text<'a>(deltas: impl IntoIterator<Item = &'a ChatDelta>) -> (String, String) {
    let mut content = String::new();
    let mut reasoning = String::new();
    for d in deltas {
        content.push_str(&d.content);
        reasoning.push_str(&d.reasoning_content);
    }
    (content, reasoning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_common::pb::ToolCallDelta;

    #[test]
    fn names_round_trip() {
        for cap in Capability::ALL {
            assert_eq!(Capability::parse(cap.name()), Some(cap));
        }
        assert_eq!(Capability::parse("streaming"), None);
    }

    #[test]
    fn merge_is_localai_s() {
        let delta = |index, id: &str, name: &str, arguments: &str| ChatDelta {
            tool_calls: vec![ToolCallDelta {
                index,
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            }],
            ..Default::default()
        };
        let deltas = [
            delta(0, "c1", "get_", "{\"a\""),
            delta(0, "", "weather", ":1}"),
            delta(1, "c2", "f", ""),
        ];
        let calls = merge_calls(&deltas);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[&0],
            MergedCall {
                id: "c1".into(),
                name: "weather".into(),
                arguments: "{\"a\":1}".into()
            }
        );
    }
}
