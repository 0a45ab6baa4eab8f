//! Proves that the generated `backend_common::pb` types are wire-compatible with LocalAI's
//! `Backend` service as fixed by `proto/wire-contract.md`.
//!
//! The contract's tables are transcribed below as data: (number, name, type) for every field of
//! every message, the `StatusResponse.State` values and the RPCs. Nothing in them comes from the
//! generated code or from `proto/backend.proto`. From those tables the tests
//! - encode each message BY HAND (keys, varints, fixed-width and length-delimited records, repeated
//!   numbers both packed and unpacked, nested messages, map entries) with a distinct sample value
//!   per field, decode it with the generated type and check every Rust field;
//! - repeat that one field at a time, so fields whose samples cannot differ (bools) are still told
//!   apart and no Rust field picks up a neighbour's number;
//! - check that prost re-encodes the decoded structs to exactly the hand-made bytes;
//! - check that the numbers the contract skips (PredictOptions 24, ModelOptions 16, 22-25,
//!   ToolFormatMarkers 19) decode as unknown fields, without error;
//! - check the `State` and `EmbeddingLayout` values, ERROR = -1 included;
//! - check the compiled descriptor `pb::FILE_DESCRIPTOR_SET` (package, every field's name,
//!   number, type and label, the enum, the service and its methods) and the
//!   `/backend.Backend/<Rpc>` paths the generated client sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use backend_common::pb;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use tonic::codegen::{Service, StdError, http};

// ---------------------------------------------------------------------------------------------
// The contract, as data.
// ---------------------------------------------------------------------------------------------

/// A field type as the contract spells it.
#[derive(Clone, Copy)]
enum Ty {
    String,
    Bytes,
    Int32,
    Uint64,
    Float,
    Double,
    Bool,
    Enum(&'static EnumSchema),
    RepString,
    RepInt32,
    RepFloat,
    Message(&'static Schema),
    RepMessage(&'static Schema),
    MapStringString,
    MapStringUint64,
}
use Ty as T;

/// One message of the contract: its name and its fields, in field-number order.
struct Schema {
    name: &'static str,
    fields: &'static [(u32, &'static str, Ty)],
}

/// One enum of the contract: its name (as nested in its message) and its values.
struct EnumSchema {
    name: &'static str,
    values: &'static [(&'static str, i32)],
}

static PREDICT_OPTIONS: Schema = Schema {
    name: "PredictOptions",
    fields: &[
        (1, "Prompt", T::String),
        (2, "Seed", T::Int32),
        (3, "Threads", T::Int32),
        (4, "Tokens", T::Int32),
        (5, "TopK", T::Int32),
        (6, "Repeat", T::Int32),
        (7, "Batch", T::Int32),
        (8, "NKeep", T::Int32),
        (9, "Temperature", T::Float),
        (10, "Penalty", T::Float),
        (11, "F16KV", T::Bool),
        (12, "DebugMode", T::Bool),
        (13, "StopPrompts", T::RepString),
        (14, "IgnoreEOS", T::Bool),
        (15, "TailFreeSamplingZ", T::Float),
        (16, "TypicalP", T::Float),
        (17, "FrequencyPenalty", T::Float),
        (18, "PresencePenalty", T::Float),
        (19, "Mirostat", T::Int32),
        (20, "MirostatETA", T::Float),
        (21, "MirostatTAU", T::Float),
        (22, "PenalizeNL", T::Bool),
        (23, "LogitBias", T::String),
        (25, "MLock", T::Bool),
        (26, "MMap", T::Bool),
        (27, "PromptCacheAll", T::Bool),
        (28, "PromptCacheRO", T::Bool),
        (29, "Grammar", T::String),
        (30, "MainGPU", T::String),
        (31, "TensorSplit", T::String),
        (32, "TopP", T::Float),
        (33, "PromptCachePath", T::String),
        (34, "Debug", T::Bool),
        (35, "EmbeddingTokens", T::RepInt32),
        (36, "Embeddings", T::String),
        (37, "RopeFreqBase", T::Float),
        (38, "RopeFreqScale", T::Float),
        (39, "NegativePromptScale", T::Float),
        (40, "NegativePrompt", T::String),
        (41, "NDraft", T::Int32),
        (42, "Images", T::RepString),
        (43, "UseTokenizerTemplate", T::Bool),
        (44, "Messages", T::RepMessage(&MESSAGE)),
        (45, "Videos", T::RepString),
        (46, "Audios", T::RepString),
        (47, "CorrelationId", T::String),
        (48, "Tools", T::String),
        (49, "ToolChoice", T::String),
        (50, "Logprobs", T::Int32),
        (51, "TopLogprobs", T::Int32),
        (52, "Metadata", T::MapStringString),
        (53, "MinP", T::Float),
        (54, "ModelIdentity", T::String),
    ],
};

static MODEL_OPTIONS: Schema = Schema {
    name: "ModelOptions",
    fields: &[
        (1, "Model", T::String),
        (2, "ContextSize", T::Int32),
        (3, "Seed", T::Int32),
        (4, "NBatch", T::Int32),
        (5, "F16Memory", T::Bool),
        (6, "MLock", T::Bool),
        (7, "MMap", T::Bool),
        (8, "VocabOnly", T::Bool),
        (9, "LowVRAM", T::Bool),
        (10, "Embeddings", T::Bool),
        (11, "NUMA", T::Bool),
        (12, "NGPULayers", T::Int32),
        (13, "MainGPU", T::String),
        (14, "TensorSplit", T::String),
        (15, "Threads", T::Int32),
        (17, "RopeFreqBase", T::Float),
        (18, "RopeFreqScale", T::Float),
        (19, "RMSNormEps", T::Float),
        (20, "NGQA", T::Int32),
        (21, "ModelFile", T::String),
        (26, "PipelineType", T::String),
        (27, "SchedulerType", T::String),
        (28, "CUDA", T::Bool),
        (29, "CFGScale", T::Float),
        (30, "IMG2IMG", T::Bool),
        (31, "CLIPModel", T::String),
        (32, "CLIPSubfolder", T::String),
        (33, "CLIPSkip", T::Int32),
        (34, "Tokenizer", T::String),
        (35, "LoraBase", T::String),
        (36, "LoraAdapter", T::String),
        (37, "NoMulMatQ", T::Bool),
        (38, "AudioPath", T::String),
        (39, "DraftModel", T::String),
        (40, "Quantization", T::String),
        (41, "MMProj", T::String),
        (42, "LoraScale", T::Float),
        (43, "RopeScaling", T::String),
        (44, "YarnExtFactor", T::Float),
        (45, "YarnAttnFactor", T::Float),
        (46, "YarnBetaFast", T::Float),
        (47, "YarnBetaSlow", T::Float),
        (48, "ControlNet", T::String),
        (49, "Type", T::String),
        (50, "GPUMemoryUtilization", T::Float),
        (51, "TrustRemoteCode", T::Bool),
        (52, "EnforceEager", T::Bool),
        (53, "SwapSpace", T::Int32),
        (54, "MaxModelLen", T::Int32),
        (55, "TensorParallelSize", T::Int32),
        (56, "FlashAttention", T::String),
        (57, "NoKVOffload", T::Bool),
        (58, "LoadFormat", T::String),
        (59, "ModelPath", T::String),
        (60, "LoraAdapters", T::RepString),
        (61, "LoraScales", T::RepFloat),
        (62, "Options", T::RepString),
        (63, "CacheTypeKey", T::String),
        (64, "CacheTypeValue", T::String),
        (65, "GrammarTriggers", T::RepMessage(&GRAMMAR_TRIGGER)),
        (66, "DisableLogStatus", T::Bool),
        (67, "DType", T::String),
        (68, "LimitImagePerPrompt", T::Int32),
        (69, "LimitVideoPerPrompt", T::Int32),
        (70, "LimitAudioPerPrompt", T::Int32),
        (71, "Reranking", T::Bool),
        (72, "Overrides", T::RepString),
        (73, "EngineArgs", T::String),
        (74, "Proxy", T::Message(&PROXY_OPTIONS)),
        (75, "EnableScore", T::Bool),
    ],
};

static HEALTH_MESSAGE: Schema = Schema {
    name: "HealthMessage",
    fields: &[],
};

static REPLY: Schema = Schema {
    name: "Reply",
    fields: &[
        (1, "message", T::Bytes),
        (2, "tokens", T::Int32),
        (3, "prompt_tokens", T::Int32),
        (4, "timing_prompt_processing", T::Double),
        (5, "timing_token_generation", T::Double),
        (6, "audio", T::Bytes),
        (7, "logprobs", T::Bytes),
        (8, "chat_deltas", T::RepMessage(&CHAT_DELTA)),
    ],
};

static CHAT_DELTA: Schema = Schema {
    name: "ChatDelta",
    fields: &[
        (1, "content", T::String),
        (2, "reasoning_content", T::String),
        (3, "tool_calls", T::RepMessage(&TOOL_CALL_DELTA)),
    ],
};

static TOOL_CALL_DELTA: Schema = Schema {
    name: "ToolCallDelta",
    fields: &[
        (1, "index", T::Int32),
        (2, "id", T::String),
        (3, "name", T::String),
        (4, "arguments", T::String),
    ],
};

static MESSAGE: Schema = Schema {
    name: "Message",
    fields: &[
        (1, "role", T::String),
        (2, "content", T::String),
        (3, "name", T::String),
        (4, "tool_call_id", T::String),
        (5, "reasoning_content", T::String),
        (6, "tool_calls", T::String),
    ],
};

static RESULT: Schema = Schema {
    name: "Result",
    fields: &[(1, "message", T::String), (2, "success", T::Bool)],
};

static TOKENIZATION_RESPONSE: Schema = Schema {
    name: "TokenizationResponse",
    fields: &[(1, "length", T::Int32), (2, "tokens", T::RepInt32)],
};

static STATUS_RESPONSE: Schema = Schema {
    name: "StatusResponse",
    fields: &[
        (1, "state", T::Enum(&STATE)),
        (2, "memory", T::Message(&MEMORY_USAGE_DATA)),
    ],
};

static STATE: EnumSchema = EnumSchema {
    name: "StatusResponse.State",
    values: &[
        ("UNINITIALIZED", 0),
        ("BUSY", 1),
        ("READY", 2),
        ("ERROR", -1),
    ],
};

static MEMORY_USAGE_DATA: Schema = Schema {
    name: "MemoryUsageData",
    fields: &[
        (1, "total", T::Uint64),
        (2, "breakdown", T::MapStringUint64),
    ],
};

static GRAMMAR_TRIGGER: Schema = Schema {
    name: "GrammarTrigger",
    fields: &[(1, "word", T::String)],
};

static EMBEDDING_RESULT: Schema = Schema {
    name: "EmbeddingResult",
    fields: &[
        (1, "embeddings", T::RepFloat),
        (2, "tokens", T::Int32),
        (3, "dim", T::Int32),
        (4, "prompt_tokens", T::Int32),
        (5, "layout", T::Enum(&EMBEDDING_LAYOUT)),
    ],
};

static EMBEDDING_LAYOUT: EnumSchema = EnumSchema {
    name: "EmbeddingLayout",
    values: &[
        ("EMBEDDING_LAYOUT_UNSPECIFIED", 0),
        ("EMBEDDING_LAYOUT_FINAL", 1),
        ("EMBEDDING_LAYOUT_PER_TOKEN", 2),
    ],
};

static PROXY_OPTIONS: Schema = Schema {
    name: "ProxyOptions",
    fields: &[
        (1, "upstream_url", T::String),
        (2, "mode", T::String),
        (3, "provider", T::String),
        (4, "api_key_env", T::String),
        (5, "api_key_file", T::String),
        (6, "upstream_model", T::String),
        (7, "request_timeout_seconds", T::Int32),
        (8, "cache_prompt", T::Bool),
    ],
};

static DETOKENIZE_REQUEST: Schema = Schema {
    name: "DetokenizeRequest",
    fields: &[(1, "tokens", T::RepInt32)],
};

static DETOKENIZE_RESPONSE: Schema = Schema {
    name: "DetokenizeResponse",
    fields: &[(1, "content", T::String)],
};

static SCORE_REQUEST: Schema = Schema {
    name: "ScoreRequest",
    fields: &[
        (1, "prompt", T::String),
        (2, "candidates", T::RepString),
        (3, "include_token_logprobs", T::Bool),
        (4, "length_normalize", T::Bool),
        (5, "ModelIdentity", T::String),
        (6, "stable_prefix_len", T::Int32),
    ],
};

static SCORE_RESPONSE: Schema = Schema {
    name: "ScoreResponse",
    fields: &[(1, "candidates", T::RepMessage(&CANDIDATE_SCORE))],
};

static CANDIDATE_SCORE: Schema = Schema {
    name: "CandidateScore",
    fields: &[
        (1, "log_prob", T::Double),
        (2, "length_normalized_log_prob", T::Double),
        (3, "tokens", T::RepMessage(&TOKEN_LOG_PROB)),
        (4, "num_tokens", T::Int32),
    ],
};

static TOKEN_LOG_PROB: Schema = Schema {
    name: "TokenLogProb",
    fields: &[(1, "token", T::String), (2, "log_prob", T::Double)],
};

static RERANK_REQUEST: Schema = Schema {
    name: "RerankRequest",
    fields: &[
        (1, "query", T::String),
        (2, "documents", T::RepString),
        (3, "top_n", T::Int32),
        (4, "ModelIdentity", T::String),
    ],
};

static RERANK_RESULT: Schema = Schema {
    name: "RerankResult",
    fields: &[
        (1, "usage", T::Message(&USAGE)),
        (2, "results", T::RepMessage(&DOCUMENT_RESULT)),
    ],
};

static DOCUMENT_RESULT: Schema = Schema {
    name: "DocumentResult",
    fields: &[
        (1, "index", T::Int32),
        (2, "text", T::String),
        (3, "relevance_score", T::Float),
    ],
};

static USAGE: Schema = Schema {
    name: "Usage",
    fields: &[
        (1, "total_tokens", T::Int32),
        (2, "prompt_tokens", T::Int32),
    ],
};

static METRICS_REQUEST: Schema = Schema {
    name: "MetricsRequest",
    fields: &[],
};

static METRICS_RESPONSE: Schema = Schema {
    name: "MetricsResponse",
    fields: &[
        (1, "slot_id", T::Int32),
        (2, "prompt_json_for_slot", T::String),
        (3, "tokens_per_second", T::Float),
        (4, "tokens_generated", T::Int32),
        (5, "prompt_tokens_processed", T::Int32),
    ],
};

static MODEL_METADATA_RESPONSE: Schema = Schema {
    name: "ModelMetadataResponse",
    fields: &[
        (1, "supports_thinking", T::Bool),
        (2, "rendered_template", T::String),
        (3, "tool_format", T::Message(&TOOL_FORMAT_MARKERS)),
        (4, "media_marker", T::String),
    ],
};

static TOOL_FORMAT_MARKERS: Schema = Schema {
    name: "ToolFormatMarkers",
    fields: &[
        (1, "format_type", T::String),
        (2, "section_start", T::String),
        (3, "section_end", T::String),
        (4, "per_call_start", T::String),
        (5, "per_call_end", T::String),
        (6, "func_name_prefix", T::String),
        (7, "func_name_suffix", T::String),
        (8, "func_close", T::String),
        (9, "arg_name_prefix", T::String),
        (10, "arg_name_suffix", T::String),
        (11, "arg_value_prefix", T::String),
        (12, "arg_value_suffix", T::String),
        (13, "arg_separator", T::String),
        (14, "name_field", T::String),
        (15, "args_field", T::String),
        (16, "id_field", T::String),
        (17, "fun_name_is_key", T::Bool),
        (18, "tools_array_wrapped", T::Bool),
        (20, "reasoning_start", T::String),
        (21, "reasoning_end", T::String),
        (22, "content_start", T::String),
        (23, "content_end", T::String),
        (24, "args_start", T::String),
        (25, "args_end", T::String),
        (26, "function_field", T::String),
        (27, "parameter_order", T::RepString),
        (28, "gen_id_field", T::String),
        (29, "call_id_position", T::String),
        (30, "call_id_prefix", T::String),
        (31, "call_id_suffix", T::String),
    ],
};

/// Every message of the contract.
static ALL_SCHEMAS: [&Schema; 28] = [
    &PREDICT_OPTIONS,
    &MODEL_OPTIONS,
    &HEALTH_MESSAGE,
    &REPLY,
    &CHAT_DELTA,
    &TOOL_CALL_DELTA,
    &MESSAGE,
    &RESULT,
    &TOKENIZATION_RESPONSE,
    &STATUS_RESPONSE,
    &MEMORY_USAGE_DATA,
    &GRAMMAR_TRIGGER,
    &EMBEDDING_RESULT,
    &PROXY_OPTIONS,
    &DETOKENIZE_REQUEST,
    &DETOKENIZE_RESPONSE,
    &SCORE_REQUEST,
    &SCORE_RESPONSE,
    &CANDIDATE_SCORE,
    &TOKEN_LOG_PROB,
    &RERANK_REQUEST,
    &RERANK_RESULT,
    &DOCUMENT_RESULT,
    &USAGE,
    &METRICS_REQUEST,
    &METRICS_RESPONSE,
    &MODEL_METADATA_RESPONSE,
    &TOOL_FORMAT_MARKERS,
];

/// The numbers the contract skips: (message, numbers).
static SKIPPED: [(&Schema, &[u32]); 3] = [
    (&PREDICT_OPTIONS, &[24]),
    (&MODEL_OPTIONS, &[16, 22, 23, 24, 25]),
    (&TOOL_FORMAT_MARKERS, &[19]),
];

/// The numbers the contract skips in `schema`.
fn skipped_numbers(schema: &Schema) -> &'static [u32] {
    SKIPPED
        .iter()
        .find(|(s, _)| std::ptr::eq(*s, schema))
        .map_or(&[], |(_, numbers)| numbers)
}

/// The contract's RPCs: (name, request, response, response is a server stream).
const RPCS: &[(&str, &str, &str, bool)] = &[
    ("Health", "HealthMessage", "Reply", false),
    ("LoadModel", "ModelOptions", "Result", false),
    ("Predict", "PredictOptions", "Reply", false),
    ("PredictStream", "PredictOptions", "Reply", true),
    (
        "TokenizeString",
        "PredictOptions",
        "TokenizationResponse",
        false,
    ),
    ("Free", "HealthMessage", "Result", false),
    ("Status", "HealthMessage", "StatusResponse", false),
    ("Embedding", "PredictOptions", "EmbeddingResult", false),
    (
        "Detokenize",
        "DetokenizeRequest",
        "DetokenizeResponse",
        false,
    ),
    ("Score", "ScoreRequest", "ScoreResponse", false),
    ("Rerank", "RerankRequest", "RerankResult", false),
    ("GetMetrics", "MetricsRequest", "MetricsResponse", false),
    (
        "ModelMetadata",
        "ModelOptions",
        "ModelMetadataResponse",
        false,
    ),
];

/// The contract's package and service: paths are `/backend.Backend/<Rpc>`.
const PACKAGE: &str = "backend";
const SERVICE: &str = "Backend";

// ---------------------------------------------------------------------------------------------
// Values: the samples built from the tables, and what the generated structs hold.
// ---------------------------------------------------------------------------------------------

/// One field's value, in a shape shared by the samples and the decoded Rust structs.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    Bytes(Vec<u8>),
    I32(i32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Enum(i32),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
    /// A singular message field; `None` when unset.
    Msg(Option<Fields>),
    Msgs(Vec<Fields>),
    StrMap(BTreeMap<String, String>),
    U64Map(BTreeMap<String, u64>),
}

/// A field's contract name and value.
type FieldVal = (&'static str, Val);

/// A message's fields, in the contract's order.
type Fields = Vec<FieldVal>;

/// A generated message type paired with its contract table.
trait Contract: prost::Message + Default + PartialEq + std::fmt::Debug {
    fn schema() -> &'static Schema;
    /// Every Rust field's value, under the contract name of the field it must hold, in the
    /// contract's order.
    fn read(&self) -> Fields;
}

/// The sample of every field of `schema`, for the `variant`-th message of its kind (0 at the
/// top; nested messages get 1, 2, ... so that the elements of a repeated field all differ).
fn sample(schema: &Schema, variant: u32) -> Fields {
    schema
        .fields
        .iter()
        .map(|&(num, name, ty)| (name, sample_value(num, name, ty, variant)))
        .collect()
}

/// A distinct, non-default value for one field: strings contain the field name, int32 is the
/// field number, floats the number + 0.5, bools true; repeated fields have 2 elements (numbers
/// with a negative second one, a 10-byte varint for int32), maps 2 entries. uint64 values are
/// above 2^32 so that a 32-bit type could not hold them. Nested messages add 100 per variant.
fn sample_value(num: u32, name: &'static str, ty: Ty, variant: u32) -> Val {
    let n = (num + 100 * variant) as i32;
    let label = if variant == 0 {
        name.to_owned()
    } else {
        format!("{name}#{variant}")
    };
    match ty {
        T::String => Val::Str(format!("{label}: ✓")),
        T::Bytes => {
            let mut bytes = label.into_bytes();
            bytes.extend([0, 0xff]);
            Val::Bytes(bytes)
        }
        T::Int32 => Val::I32(n),
        T::Uint64 => Val::U64((1 << 40) + u64::from(num)),
        T::Float => Val::F32(n as f32 + 0.5),
        T::Double => Val::F64(f64::from(n) + 0.5),
        T::Bool => Val::Bool(true),
        // The most negative value (ERROR = -1: a negative enum is a 10-byte varint), or the
        // largest where none is negative (never the default 0).
        T::Enum(e) => {
            let min = e.values.iter().map(|v| v.1).min().unwrap();
            let max = e.values.iter().map(|v| v.1).max().unwrap();
            Val::Enum(if min < 0 { min } else { max })
        }
        T::RepString => Val::Strs(vec![format!("{label}[0]"), format!("{label}[1]")]),
        T::RepInt32 => Val::I32s(vec![n, -n]),
        T::RepFloat => Val::F32s(vec![n as f32 + 0.5, -(n as f32) - 0.25]),
        T::Message(s) => Val::Msg(Some(sample(s, 2 * variant + 1))),
        T::RepMessage(s) => Val::Msgs(vec![sample(s, 2 * variant + 1), sample(s, 2 * variant + 2)]),
        T::MapStringString => Val::StrMap(BTreeMap::from([
            (format!("{label}.key"), format!("{label}.value")),
            ("enable_thinking".to_owned(), "true".to_owned()),
        ])),
        T::MapStringUint64 => Val::U64Map(BTreeMap::from([
            (format!("{label}.weights"), (1 << 41) + u64::from(num)),
            (format!("{label}.kv_cache"), u64::from(num)),
        ])),
    }
}

// ---------------------------------------------------------------------------------------------
// Hand encoding.
// ---------------------------------------------------------------------------------------------

/// Encodes the `fields` that are given (any subset of `schema`) in field-number order, repeated
/// numbers `packed` or not.
fn encode(schema: &Schema, fields: &[FieldVal], packed: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    for &(num, name, ty) in schema.fields {
        if let Some((_, val)) = fields.iter().find(|(n, _)| *n == name) {
            encode_field(num, ty, val, packed, &mut buf);
        }
    }
    buf
}

/// Writes one field the way its contract type says.
fn encode_field(num: u32, ty: Ty, val: &Val, packed: bool, buf: &mut Vec<u8>) {
    match (ty, val) {
        (T::String, Val::Str(v)) => put_len(num, v.as_bytes(), buf),
        (T::Bytes, Val::Bytes(v)) => put_len(num, v, buf),
        (T::Int32, Val::I32(v)) | (T::Enum(_), Val::Enum(v)) => put_varint(num, int32(*v), buf),
        (T::Uint64, Val::U64(v)) => put_varint(num, *v, buf),
        (T::Bool, Val::Bool(v)) => put_varint(num, u64::from(*v), buf),
        (T::Float, Val::F32(v)) => {
            encode_key(num, WireType::ThirtyTwoBit, buf);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        (T::Double, Val::F64(v)) => {
            encode_key(num, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        (T::RepString, Val::Strs(v)) => v.iter().for_each(|s| put_len(num, s.as_bytes(), buf)),
        (T::RepInt32, Val::I32s(v)) => {
            let items: Vec<Vec<u8>> = v.iter().map(|x| varint(int32(*x))).collect();
            put_repeated(num, WireType::Varint, &items, packed, buf);
        }
        (T::RepFloat, Val::F32s(v)) => {
            let items: Vec<Vec<u8>> = v.iter().map(|x| x.to_le_bytes().to_vec()).collect();
            put_repeated(num, WireType::ThirtyTwoBit, &items, packed, buf);
        }
        (T::Message(_), Val::Msg(None)) => {}
        (T::Message(s), Val::Msg(Some(f))) => put_len(num, &encode(s, f, packed), buf),
        (T::RepMessage(s), Val::Msgs(v)) => {
            v.iter()
                .for_each(|f| put_len(num, &encode(s, f, packed), buf));
        }
        // A map is a repeated entry message: key = 1, value = 2.
        (T::MapStringString, Val::StrMap(m)) => {
            for (k, v) in m {
                let mut entry = Vec::new();
                put_len(1, k.as_bytes(), &mut entry);
                put_len(2, v.as_bytes(), &mut entry);
                put_len(num, &entry, buf);
            }
        }
        (T::MapStringUint64, Val::U64Map(m)) => {
            for (k, v) in m {
                let mut entry = Vec::new();
                put_len(1, k.as_bytes(), &mut entry);
                put_varint(2, *v, &mut entry);
                put_len(num, &entry, buf);
            }
        }
        (_, val) => panic!("field {num}: value {val:?} does not fit its type"),
    }
}

/// An int32 on the wire: sign-extended to 64 bits, so a negative one takes 10 bytes.
fn int32(v: i32) -> u64 {
    i64::from(v) as u64
}

fn varint(v: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_varint(v, &mut buf);
    buf
}

fn put_varint(num: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(num, WireType::Varint, buf);
    encode_varint(v, buf);
}

fn put_len(num: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(num, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// Repeated numbers whose encodings (without key) are `items`: packed into one length-delimited
/// record, or unpacked as one record of wire type `wire` per element.
fn put_repeated(num: u32, wire: WireType, items: &[Vec<u8>], packed: bool, buf: &mut Vec<u8>) {
    if packed {
        put_len(num, &items.concat(), buf);
    } else {
        for item in items {
            encode_key(num, wire, buf);
            buf.extend_from_slice(item);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the generated structs hold, under the contract's names.
// ---------------------------------------------------------------------------------------------

fn s(v: &str) -> Val {
    Val::Str(v.to_owned())
}

fn strs(v: &[String]) -> Val {
    Val::Strs(v.to_vec())
}

fn msgs<M: Contract>(v: &[M]) -> Val {
    Val::Msgs(v.iter().map(Contract::read).collect())
}

impl Contract for pb::PredictOptions {
    fn schema() -> &'static Schema {
        &PREDICT_OPTIONS
    }
    fn read(&self) -> Fields {
        vec![
            ("Prompt", s(&self.prompt)),
            ("Seed", Val::I32(self.seed)),
            ("Threads", Val::I32(self.threads)),
            ("Tokens", Val::I32(self.tokens)),
            ("TopK", Val::I32(self.top_k)),
            ("Repeat", Val::I32(self.repeat)),
            ("Batch", Val::I32(self.batch)),
            ("NKeep", Val::I32(self.n_keep)),
            ("Temperature", Val::F32(self.temperature)),
            ("Penalty", Val::F32(self.penalty)),
            ("F16KV", Val::Bool(self.f16kv)),
            ("DebugMode", Val::Bool(self.debug_mode)),
            ("StopPrompts", strs(&self.stop_prompts)),
            ("IgnoreEOS", Val::Bool(self.ignore_eos)),
            ("TailFreeSamplingZ", Val::F32(self.tail_free_sampling_z)),
            ("TypicalP", Val::F32(self.typical_p)),
            ("FrequencyPenalty", Val::F32(self.frequency_penalty)),
            ("PresencePenalty", Val::F32(self.presence_penalty)),
            ("Mirostat", Val::I32(self.mirostat)),
            ("MirostatETA", Val::F32(self.mirostat_eta)),
            ("MirostatTAU", Val::F32(self.mirostat_tau)),
            ("PenalizeNL", Val::Bool(self.penalize_nl)),
            ("LogitBias", s(&self.logit_bias)),
            ("MLock", Val::Bool(self.m_lock)),
            ("MMap", Val::Bool(self.m_map)),
            ("PromptCacheAll", Val::Bool(self.prompt_cache_all)),
            ("PromptCacheRO", Val::Bool(self.prompt_cache_ro)),
            ("Grammar", s(&self.grammar)),
            ("MainGPU", s(&self.main_gpu)),
            ("TensorSplit", s(&self.tensor_split)),
            ("TopP", Val::F32(self.top_p)),
            ("PromptCachePath", s(&self.prompt_cache_path)),
            ("Debug", Val::Bool(self.debug)),
            ("EmbeddingTokens", Val::I32s(self.embedding_tokens.clone())),
            ("Embeddings", s(&self.embeddings)),
            ("RopeFreqBase", Val::F32(self.rope_freq_base)),
            ("RopeFreqScale", Val::F32(self.rope_freq_scale)),
            ("NegativePromptScale", Val::F32(self.negative_prompt_scale)),
            ("NegativePrompt", s(&self.negative_prompt)),
            ("NDraft", Val::I32(self.n_draft)),
            ("Images", strs(&self.images)),
            (
                "UseTokenizerTemplate",
                Val::Bool(self.use_tokenizer_template),
            ),
            ("Messages", msgs(&self.messages)),
            ("Videos", strs(&self.videos)),
            ("Audios", strs(&self.audios)),
            ("CorrelationId", s(&self.correlation_id)),
            ("Tools", s(&self.tools)),
            ("ToolChoice", s(&self.tool_choice)),
            ("Logprobs", Val::I32(self.logprobs)),
            ("TopLogprobs", Val::I32(self.top_logprobs)),
            ("Metadata", Val::StrMap(sorted(&self.metadata))),
            ("MinP", Val::F32(self.min_p)),
            ("ModelIdentity", s(&self.model_identity)),
        ]
    }
}

impl Contract for pb::ModelOptions {
    fn schema() -> &'static Schema {
        &MODEL_OPTIONS
    }
    fn read(&self) -> Fields {
        vec![
            ("Model", s(&self.model)),
            ("ContextSize", Val::I32(self.context_size)),
            ("Seed", Val::I32(self.seed)),
            ("NBatch", Val::I32(self.n_batch)),
            ("F16Memory", Val::Bool(self.f16_memory)),
            ("MLock", Val::Bool(self.m_lock)),
            ("MMap", Val::Bool(self.m_map)),
            ("VocabOnly", Val::Bool(self.vocab_only)),
            ("LowVRAM", Val::Bool(self.low_vram)),
            ("Embeddings", Val::Bool(self.embeddings)),
            ("NUMA", Val::Bool(self.numa)),
            ("NGPULayers", Val::I32(self.ngpu_layers)),
            ("MainGPU", s(&self.main_gpu)),
            ("TensorSplit", s(&self.tensor_split)),
            ("Threads", Val::I32(self.threads)),
            ("RopeFreqBase", Val::F32(self.rope_freq_base)),
            ("RopeFreqScale", Val::F32(self.rope_freq_scale)),
            ("RMSNormEps", Val::F32(self.rms_norm_eps)),
            ("NGQA", Val::I32(self.ngqa)),
            ("ModelFile", s(&self.model_file)),
            ("PipelineType", s(&self.pipeline_type)),
            ("SchedulerType", s(&self.scheduler_type)),
            ("CUDA", Val::Bool(self.cuda)),
            ("CFGScale", Val::F32(self.cfg_scale)),
            ("IMG2IMG", Val::Bool(self.img2img)),
            ("CLIPModel", s(&self.clip_model)),
            ("CLIPSubfolder", s(&self.clip_subfolder)),
            ("CLIPSkip", Val::I32(self.clip_skip)),
            ("Tokenizer", s(&self.tokenizer)),
            ("LoraBase", s(&self.lora_base)),
            ("LoraAdapter", s(&self.lora_adapter)),
            ("NoMulMatQ", Val::Bool(self.no_mul_mat_q)),
            ("AudioPath", s(&self.audio_path)),
            ("DraftModel", s(&self.draft_model)),
            ("Quantization", s(&self.quantization)),
            ("MMProj", s(&self.mm_proj)),
            ("LoraScale", Val::F32(self.lora_scale)),
            ("RopeScaling", s(&self.rope_scaling)),
            ("YarnExtFactor", Val::F32(self.yarn_ext_factor)),
            ("YarnAttnFactor", Val::F32(self.yarn_attn_factor)),
            ("YarnBetaFast", Val::F32(self.yarn_beta_fast)),
            ("YarnBetaSlow", Val::F32(self.yarn_beta_slow)),
            ("ControlNet", s(&self.control_net)),
            ("Type", s(&self.r#type)),
            (
                "GPUMemoryUtilization",
                Val::F32(self.gpu_memory_utilization),
            ),
            ("TrustRemoteCode", Val::Bool(self.trust_remote_code)),
            ("EnforceEager", Val::Bool(self.enforce_eager)),
            ("SwapSpace", Val::I32(self.swap_space)),
            ("MaxModelLen", Val::I32(self.max_model_len)),
            ("TensorParallelSize", Val::I32(self.tensor_parallel_size)),
            ("FlashAttention", s(&self.flash_attention)),
            ("NoKVOffload", Val::Bool(self.no_kv_offload)),
            ("LoadFormat", s(&self.load_format)),
            ("ModelPath", s(&self.model_path)),
            ("LoraAdapters", strs(&self.lora_adapters)),
            ("LoraScales", Val::F32s(self.lora_scales.clone())),
            ("Options", strs(&self.options)),
            ("CacheTypeKey", s(&self.cache_type_key)),
            ("CacheTypeValue", s(&self.cache_type_value)),
            ("GrammarTriggers", msgs(&self.grammar_triggers)),
            ("DisableLogStatus", Val::Bool(self.disable_log_status)),
            ("DType", s(&self.d_type)),
            ("LimitImagePerPrompt", Val::I32(self.limit_image_per_prompt)),
            ("LimitVideoPerPrompt", Val::I32(self.limit_video_per_prompt)),
            ("LimitAudioPerPrompt", Val::I32(self.limit_audio_per_prompt)),
            ("Reranking", Val::Bool(self.reranking)),
            ("Overrides", strs(&self.overrides)),
            ("EngineArgs", s(&self.engine_args)),
            ("Proxy", Val::Msg(self.proxy.as_ref().map(Contract::read))),
            ("EnableScore", Val::Bool(self.enable_score)),
        ]
    }
}

impl Contract for pb::HealthMessage {
    fn schema() -> &'static Schema {
        &HEALTH_MESSAGE
    }
    fn read(&self) -> Fields {
        Vec::new()
    }
}

impl Contract for pb::Reply {
    fn schema() -> &'static Schema {
        &REPLY
    }
    fn read(&self) -> Fields {
        vec![
            ("message", Val::Bytes(self.message.clone())),
            ("tokens", Val::I32(self.tokens)),
            ("prompt_tokens", Val::I32(self.prompt_tokens)),
            (
                "timing_prompt_processing",
                Val::F64(self.timing_prompt_processing),
            ),
            (
                "timing_token_generation",
                Val::F64(self.timing_token_generation),
            ),
            ("audio", Val::Bytes(self.audio.clone())),
            ("logprobs", Val::Bytes(self.logprobs.clone())),
            ("chat_deltas", msgs(&self.chat_deltas)),
        ]
    }
}

impl Contract for pb::ChatDelta {
    fn schema() -> &'static Schema {
        &CHAT_DELTA
    }
    fn read(&self) -> Fields {
        vec![
            ("content", s(&self.content)),
            ("reasoning_content", s(&self.reasoning_content)),
            ("tool_calls", msgs(&self.tool_calls)),
        ]
    }
}

impl Contract for pb::ToolCallDelta {
    fn schema() -> &'static Schema {
        &TOOL_CALL_DELTA
    }
    fn read(&self) -> Fields {
        vec![
            ("index", Val::I32(self.index)),
            ("id", s(&self.id)),
            ("name", s(&self.name)),
            ("arguments", s(&self.arguments)),
        ]
    }
}

impl Contract for pb::Message {
    fn schema() -> &'static Schema {
        &MESSAGE
    }
    fn read(&self) -> Fields {
        vec![
            ("role", s(&self.role)),
            ("content", s(&self.content)),
            ("name", s(&self.name)),
            ("tool_call_id", s(&self.tool_call_id)),
            ("reasoning_content", s(&self.reasoning_content)),
            ("tool_calls", s(&self.tool_calls)),
        ]
    }
}

impl Contract for pb::Result {
    fn schema() -> &'static Schema {
        &RESULT
    }
    fn read(&self) -> Fields {
        vec![
            ("message", s(&self.message)),
            ("success", Val::Bool(self.success)),
        ]
    }
}

impl Contract for pb::TokenizationResponse {
    fn schema() -> &'static Schema {
        &TOKENIZATION_RESPONSE
    }
    fn read(&self) -> Fields {
        vec![
            ("length", Val::I32(self.length)),
            ("tokens", Val::I32s(self.tokens.clone())),
        ]
    }
}

impl Contract for pb::StatusResponse {
    fn schema() -> &'static Schema {
        &STATUS_RESPONSE
    }
    fn read(&self) -> Fields {
        vec![
            ("state", Val::Enum(self.state)),
            ("memory", Val::Msg(self.memory.as_ref().map(Contract::read))),
        ]
    }
}

impl Contract for pb::MemoryUsageData {
    fn schema() -> &'static Schema {
        &MEMORY_USAGE_DATA
    }
    fn read(&self) -> Fields {
        vec![
            ("total", Val::U64(self.total)),
            ("breakdown", Val::U64Map(sorted(&self.breakdown))),
        ]
    }
}

impl Contract for pb::GrammarTrigger {
    fn schema() -> &'static Schema {
        &GRAMMAR_TRIGGER
    }
    fn read(&self) -> Fields {
        vec![("word", s(&self.word))]
    }
}

impl Contract for pb::EmbeddingResult {
    fn schema() -> &'static Schema {
        &EMBEDDING_RESULT
    }
    fn read(&self) -> Fields {
        vec![
            ("embeddings", Val::F32s(self.embeddings.clone())),
            ("tokens", Val::I32(self.tokens)),
            ("dim", Val::I32(self.dim)),
            ("prompt_tokens", Val::I32(self.prompt_tokens)),
            ("layout", Val::Enum(self.layout)),
        ]
    }
}

impl Contract for pb::ProxyOptions {
    fn schema() -> &'static Schema {
        &PROXY_OPTIONS
    }
    fn read(&self) -> Fields {
        vec![
            ("upstream_url", s(&self.upstream_url)),
            ("mode", s(&self.mode)),
            ("provider", s(&self.provider)),
            ("api_key_env", s(&self.api_key_env)),
            ("api_key_file", s(&self.api_key_file)),
            ("upstream_model", s(&self.upstream_model)),
            (
                "request_timeout_seconds",
                Val::I32(self.request_timeout_seconds),
            ),
            ("cache_prompt", Val::Bool(self.cache_prompt)),
        ]
    }
}

impl Contract for pb::DetokenizeRequest {
    fn schema() -> &'static Schema {
        &DETOKENIZE_REQUEST
    }
    fn read(&self) -> Fields {
        vec![("tokens", Val::I32s(self.tokens.clone()))]
    }
}

impl Contract for pb::DetokenizeResponse {
    fn schema() -> &'static Schema {
        &DETOKENIZE_RESPONSE
    }
    fn read(&self) -> Fields {
        vec![("content", s(&self.content))]
    }
}

impl Contract for pb::ScoreRequest {
    fn schema() -> &'static Schema {
        &SCORE_REQUEST
    }
    fn read(&self) -> Fields {
        vec![
            ("prompt", s(&self.prompt)),
            ("candidates", strs(&self.candidates)),
            (
                "include_token_logprobs",
                Val::Bool(self.include_token_logprobs),
            ),
            ("length_normalize", Val::Bool(self.length_normalize)),
            ("ModelIdentity", s(&self.model_identity)),
            ("stable_prefix_len", Val::I32(self.stable_prefix_len)),
        ]
    }
}

impl Contract for pb::ScoreResponse {
    fn schema() -> &'static Schema {
        &SCORE_RESPONSE
    }
    fn read(&self) -> Fields {
        vec![("candidates", msgs(&self.candidates))]
    }
}

impl Contract for pb::CandidateScore {
    fn schema() -> &'static Schema {
        &CANDIDATE_SCORE
    }
    fn read(&self) -> Fields {
        vec![
            ("log_prob", Val::F64(self.log_prob)),
            (
                "length_normalized_log_prob",
                Val::F64(self.length_normalized_log_prob),
            ),
            ("tokens", msgs(&self.tokens)),
            ("num_tokens", Val::I32(self.num_tokens)),
        ]
    }
}

impl Contract for pb::TokenLogProb {
    fn schema() -> &'static Schema {
        &TOKEN_LOG_PROB
    }
    fn read(&self) -> Fields {
        vec![
            ("token", s(&self.token)),
            ("log_prob", Val::F64(self.log_prob)),
        ]
    }
}

impl Contract for pb::RerankRequest {
    fn schema() -> &'static Schema {
        &RERANK_REQUEST
    }
    fn read(&self) -> Fields {
        vec![
            ("query", s(&self.query)),
            ("documents", strs(&self.documents)),
            ("top_n", Val::I32(self.top_n)),
            ("ModelIdentity", s(&self.model_identity)),
        ]
    }
}

impl Contract for pb::RerankResult {
    fn schema() -> &'static Schema {
        &RERANK_RESULT
    }
    fn read(&self) -> Fields {
        vec![
            ("usage", Val::Msg(self.usage.as_ref().map(Contract::read))),
            ("results", msgs(&self.results)),
        ]
    }
}

impl Contract for pb::DocumentResult {
    fn schema() -> &'static Schema {
        &DOCUMENT_RESULT
    }
    fn read(&self) -> Fields {
        vec![
            ("index", Val::I32(self.index)),
            ("text", s(&self.text)),
            ("relevance_score", Val::F32(self.relevance_score)),
        ]
    }
}

impl Contract for pb::Usage {
    fn schema() -> &'static Schema {
        &USAGE
    }
    fn read(&self) -> Fields {
        vec![
            ("total_tokens", Val::I32(self.total_tokens)),
            ("prompt_tokens", Val::I32(self.prompt_tokens)),
        ]
    }
}

impl Contract for pb::MetricsRequest {
    fn schema() -> &'static Schema {
        &METRICS_REQUEST
    }
    fn read(&self) -> Fields {
        Vec::new()
    }
}

impl Contract for pb::MetricsResponse {
    fn schema() -> &'static Schema {
        &METRICS_RESPONSE
    }
    fn read(&self) -> Fields {
        vec![
            ("slot_id", Val::I32(self.slot_id)),
            ("prompt_json_for_slot", s(&self.prompt_json_for_slot)),
            ("tokens_per_second", Val::F32(self.tokens_per_second)),
            ("tokens_generated", Val::I32(self.tokens_generated)),
            (
                "prompt_tokens_processed",
                Val::I32(self.prompt_tokens_processed),
            ),
        ]
    }
}

impl Contract for pb::ModelMetadataResponse {
    fn schema() -> &'static Schema {
        &MODEL_METADATA_RESPONSE
    }
    fn read(&self) -> Fields {
        vec![
            ("supports_thinking", Val::Bool(self.supports_thinking)),
            ("rendered_template", s(&self.rendered_template)),
            (
                "tool_format",
                Val::Msg(self.tool_format.as_ref().map(Contract::read)),
            ),
            ("media_marker", s(&self.media_marker)),
        ]
    }
}

impl Contract for pb::ToolFormatMarkers {
    fn schema() -> &'static Schema {
        &TOOL_FORMAT_MARKERS
    }
    fn read(&self) -> Fields {
        vec![
            ("format_type", s(&self.format_type)),
            ("section_start", s(&self.section_start)),
            ("section_end", s(&self.section_end)),
            ("per_call_start", s(&self.per_call_start)),
            ("per_call_end", s(&self.per_call_end)),
            ("func_name_prefix", s(&self.func_name_prefix)),
            ("func_name_suffix", s(&self.func_name_suffix)),
            ("func_close", s(&self.func_close)),
            ("arg_name_prefix", s(&self.arg_name_prefix)),
            ("arg_name_suffix", s(&self.arg_name_suffix)),
            ("arg_value_prefix", s(&self.arg_value_prefix)),
            ("arg_value_suffix", s(&self.arg_value_suffix)),
            ("arg_separator", s(&self.arg_separator)),
            ("name_field", s(&self.name_field)),
            ("args_field", s(&self.args_field)),
            ("id_field", s(&self.id_field)),
            ("fun_name_is_key", Val::Bool(self.fun_name_is_key)),
            ("tools_array_wrapped", Val::Bool(self.tools_array_wrapped)),
            ("reasoning_start", s(&self.reasoning_start)),
            ("reasoning_end", s(&self.reasoning_end)),
            ("content_start", s(&self.content_start)),
            ("content_end", s(&self.content_end)),
            ("args_start", s(&self.args_start)),
            ("args_end", s(&self.args_end)),
            ("function_field", s(&self.function_field)),
            ("parameter_order", strs(&self.parameter_order)),
            ("gen_id_field", s(&self.gen_id_field)),
            ("call_id_position", s(&self.call_id_position)),
            ("call_id_prefix", s(&self.call_id_prefix)),
            ("call_id_suffix", s(&self.call_id_suffix)),
        ]
    }
}

fn sorted<V: Clone>(map: &HashMap<String, V>) -> BTreeMap<String, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Runs a generic check for every message of the contract.
macro_rules! for_every_message {
    ($check:ident) => {
        $check::<pb::PredictOptions>();
        $check::<pb::ModelOptions>();
        $check::<pb::HealthMessage>();
        $check::<pb::Reply>();
        $check::<pb::ChatDelta>();
        $check::<pb::ToolCallDelta>();
        $check::<pb::Message>();
        $check::<pb::Result>();
        $check::<pb::TokenizationResponse>();
        $check::<pb::StatusResponse>();
        $check::<pb::MemoryUsageData>();
        $check::<pb::GrammarTrigger>();
        $check::<pb::EmbeddingResult>();
        $check::<pb::ProxyOptions>();
        $check::<pb::DetokenizeRequest>();
        $check::<pb::DetokenizeResponse>();
        $check::<pb::ScoreRequest>();
        $check::<pb::ScoreResponse>();
        $check::<pb::CandidateScore>();
        $check::<pb::TokenLogProb>();
        $check::<pb::RerankRequest>();
        $check::<pb::RerankResult>();
        $check::<pb::DocumentResult>();
        $check::<pb::Usage>();
        $check::<pb::MetricsRequest>();
        $check::<pb::MetricsResponse>();
        $check::<pb::ModelMetadataResponse>();
        $check::<pb::ToolFormatMarkers>();
    };
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------

fn decode<M: Contract>(bytes: &[u8], what: &str) -> M {
    M::decode(bytes)
        .unwrap_or_else(|e| panic!("{} ({what}) does not decode: {e}", M::schema().name))
}

/// Asserts that `actual` (read from a decoded struct) covers exactly the contract's fields and
/// holds `expected`.
fn assert_fields(schema: &Schema, expected: &[FieldVal], actual: &[FieldVal], what: &str) {
    let names = |f: &[FieldVal]| f.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    let contract: Vec<_> = schema.fields.iter().map(|f| f.1).collect();
    assert_eq!(
        names(actual),
        contract,
        "{}: the test reads other fields than the contract lists",
        schema.name
    );
    assert_eq!(
        names(expected),
        contract,
        "{}: sample incomplete",
        schema.name
    );
    for ((num, name, _), ((_, want), (_, got))) in
        schema.fields.iter().zip(expected.iter().zip(actual))
    {
        assert_eq!(got, want, "{}.{name} (#{num}), {what}", schema.name);
    }
}

/// All fields at once, repeated numbers packed and then unpacked.
fn check_all_fields<M: Contract>() {
    let schema = M::schema();
    let expected = sample(schema, 0);
    for packed in [true, false] {
        let what = if packed { "packed" } else { "unpacked" };
        let bytes = encode(schema, &expected, packed);
        let decoded: M = decode(&bytes, what);
        assert_fields(schema, &expected, &decoded.read(), what);
    }
}

/// One field at a time: it must land in its Rust field, and every other one stays default.
fn check_each_field_alone<M: Contract>() {
    let schema = M::schema();
    let all = sample(schema, 0);
    for (i, (name, val)) in all.iter().enumerate() {
        let mut expected = M::default().read();
        expected[i].1 = val.clone();
        for packed in [true, false] {
            let what = format!("only {name} set, packed={packed}");
            let bytes = encode(schema, &[(*name, val.clone())], packed);
            let decoded: M = decode(&bytes, &what);
            assert_fields(schema, &expected, &decoded.read(), &what);
        }
    }
}

/// Keeps the first entry of every map (a `HashMap` re-encodes in no fixed order).
fn one_entry_maps(fields: &[FieldVal]) -> Fields {
    fn first<V: Clone>(map: &BTreeMap<String, V>) -> BTreeMap<String, V> {
        map.iter()
            .take(1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fields
        .iter()
        .map(|(name, val)| {
            let val = match val {
                Val::StrMap(m) => Val::StrMap(first(m)),
                Val::U64Map(m) => Val::U64Map(first(m)),
                Val::Msg(m) => Val::Msg(m.as_deref().map(one_entry_maps)),
                Val::Msgs(v) => Val::Msgs(v.iter().map(|f| one_entry_maps(f)).collect()),
                other => other.clone(),
            };
            (*name, val)
        })
        .collect()
}

/// prost writes what we wrote by hand: fields in number order, repeated numbers packed.
fn check_reencode<M: Contract>() {
    let schema = M::schema();
    let fields = one_entry_maps(&sample(schema, 0));
    let bytes = encode(schema, &fields, true);
    let decoded: M = decode(&bytes, "re-encode");
    assert_eq!(
        decoded.encode_to_vec(),
        bytes,
        "{}: prost's encoding differs from the hand encoding",
        schema.name
    );
}

#[test]
fn contract_tables_are_complete_and_ordered() {
    let numbers = |s: &Schema| s.fields.iter().map(|f| f.0).collect::<Vec<_>>();
    // The contract's tables: 1..=54 and 1..=75 with the skips, small messages 1..=n.
    let expected_last = [
        ("PredictOptions", 54),
        ("ModelOptions", 75),
        ("HealthMessage", 0),
        ("Reply", 8),
        ("ChatDelta", 3),
        ("ToolCallDelta", 4),
        ("Message", 6),
        ("Result", 2),
        ("TokenizationResponse", 2),
        ("StatusResponse", 2),
        ("MemoryUsageData", 2),
        ("GrammarTrigger", 1),
        ("EmbeddingResult", 5),
        ("ProxyOptions", 8),
        ("DetokenizeRequest", 1),
        ("DetokenizeResponse", 1),
        ("ScoreRequest", 6),
        ("ScoreResponse", 1),
        ("CandidateScore", 4),
        ("TokenLogProb", 2),
        ("RerankRequest", 4),
        ("RerankResult", 2),
        ("DocumentResult", 3),
        ("Usage", 2),
        ("MetricsRequest", 0),
        ("MetricsResponse", 5),
        ("ModelMetadataResponse", 4),
        ("ToolFormatMarkers", 31),
    ];
    for (schema, (name, last)) in ALL_SCHEMAS.iter().zip(expected_last) {
        assert_eq!(schema.name, name);
        let want: Vec<u32> = (1..=last)
            .filter(|n| !skipped_numbers(schema).contains(n))
            .collect();
        assert_eq!(numbers(schema), want, "{name}: numbers");
    }
    let field_count: usize = ALL_SCHEMAS.iter().map(|s| s.fields.len()).sum();
    assert_eq!(
        field_count,
        53 + 70
            + 8
            + 3
            + 4
            + 6
            + 2
            + 2
            + 2
            + 2
            + 1
            + 5
            + 8
            + 1
            + 1
            + 6
            + 1
            + 4
            + 2
            + 4
            + 2
            + 3
            + 2
            + 5
            + 4
            + 30
    );
}

#[test]
fn every_field_decodes_into_its_rust_field() {
    for_every_message!(check_all_fields);
}

#[test]
fn each_field_alone_lands_in_its_rust_field_only() {
    for_every_message!(check_each_field_alone);
}

#[test]
fn prost_encodes_the_same_bytes_as_the_hand_encoding() {
    for_every_message!(check_reencode);
}

#[test]
fn nested_messages_keep_their_order_and_values() {
    // Spot checks on top of the generic ones, written against the Rust fields directly.
    let reply_sample = sample(&REPLY, 0);
    let reply: pb::Reply = decode(&encode(&REPLY, &reply_sample, false), "nested");
    assert_eq!(reply.chat_deltas.len(), 2);
    assert_eq!(reply.chat_deltas[1].content, "content#2: ✓");
    assert_eq!(reply.chat_deltas[0].tool_calls[1].index, 1 + 100 * 4);
    assert_eq!(reply.chat_deltas[1].tool_calls[0].name, "name#5: ✓");
    assert_eq!(reply.message, b"message\0\xff");

    let options: pb::PredictOptions = decode(
        &encode(&PREDICT_OPTIONS, &sample(&PREDICT_OPTIONS, 0), true),
        "nested",
    );
    assert_eq!(options.messages.len(), 2);
    assert_eq!(options.messages[0].role, "role#1: ✓");
    assert_eq!(options.messages[1].tool_calls, "tool_calls#2: ✓");
    assert_eq!(options.metadata["enable_thinking"], "true");
    assert_eq!(options.metadata["Metadata.key"], "Metadata.value");
    assert_eq!(options.embedding_tokens, [35, -35]);

    let model: pb::ModelOptions = decode(
        &encode(&MODEL_OPTIONS, &sample(&MODEL_OPTIONS, 0), false),
        "nested",
    );
    let words: Vec<_> = model
        .grammar_triggers
        .iter()
        .map(|t| t.word.as_str())
        .collect();
    assert_eq!(words, ["word#1: ✓", "word#2: ✓"]);
    assert_eq!(model.lora_scales, [61.5, -61.25]);

    let status: pb::StatusResponse = decode(
        &encode(&STATUS_RESPONSE, &sample(&STATUS_RESPONSE, 0), true),
        "nested",
    );
    assert_eq!(status.state(), pb::status_response::State::Error);
    let memory = status.memory.expect("memory is set");
    assert_eq!(memory.total, (1 << 40) + 1);
    assert_eq!(memory.breakdown["breakdown#1.kv_cache"], 2);
    assert_eq!(memory.breakdown["breakdown#1.weights"], (1 << 41) + 2);
}

#[test]
fn skipped_numbers_decode_as_unknown_fields() {
    fn check<M: Contract>() {
        let schema = M::schema();
        // Every wire type under every skipped number, before and after the known fields.
        let mut unknown = Vec::new();
        for &num in skipped_numbers(schema) {
            assert!(schema.fields.iter().all(|f| f.0 != num), "{num} is skipped");
            put_varint(num, int32(-7), &mut unknown);
            put_len(num, b"unknown", &mut unknown);
            encode_key(num, WireType::ThirtyTwoBit, &mut unknown);
            unknown.extend_from_slice(&1.5f32.to_le_bytes());
            encode_key(num, WireType::SixtyFourBit, &mut unknown);
            unknown.extend_from_slice(&2.5f64.to_le_bytes());
        }
        let expected = sample(schema, 0);
        let bytes = [&unknown[..], &encode(schema, &expected, true), &unknown[..]].concat();
        let decoded: M = decode(&bytes, "with skipped numbers");
        assert_fields(schema, &expected, &decoded.read(), "with skipped numbers");
        let only_unknown: M = decode(&unknown, "only skipped numbers");
        assert_eq!(
            only_unknown,
            M::default(),
            "{}: skipped numbers set a field",
            schema.name
        );
    }
    check::<pb::PredictOptions>();
    check::<pb::ModelOptions>();
}

#[test]
fn status_state_values_match_the_contract() {
    use pb::status_response::State;
    for &(name, value) in STATE.values {
        let state = State::from_str_name(name).unwrap_or_else(|| panic!("no State {name}"));
        assert_eq!(state as i32, value, "State {name}");
        assert_eq!(State::try_from(value).map(|s| s.as_str_name()), Ok(name));
        let bytes = encode(&STATUS_RESPONSE, &[("state", Val::Enum(value))], true);
        let decoded: pb::StatusResponse = decode(&bytes, name);
        assert_eq!(decoded.state(), state, "State {name} decoded");
        // proto3 leaves the default (UNINITIALIZED = 0) out.
        let reencoded = if value == 0 { Vec::new() } else { bytes };
        assert_eq!(
            decoded.encode_to_vec(),
            reencoded,
            "State {name} re-encoded"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The descriptor and the service.
// ---------------------------------------------------------------------------------------------

/// The few parts of `google/protobuf/descriptor.proto` read here (same numbers as there), so
/// the test needs no `prost-types` dependency.
mod descriptor {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "4")]
        pub message_type: Vec<DescriptorProto>,
        #[prost(message, repeated, tag = "5")]
        pub enum_type: Vec<EnumDescriptorProto>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptorProto>,
        #[prost(string, optional, tag = "12")]
        pub syntax: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub field: Vec<FieldDescriptorProto>,
        #[prost(message, repeated, tag = "3")]
        pub nested_type: Vec<DescriptorProto>,
        #[prost(message, repeated, tag = "4")]
        pub enum_type: Vec<EnumDescriptorProto>,
        #[prost(message, optional, tag = "7")]
        pub options: Option<MessageOptions>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MessageOptions {
        #[prost(bool, optional, tag = "7")]
        pub map_entry: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FieldDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "3")]
        pub number: Option<i32>,
        #[prost(int32, optional, tag = "4")]
        pub label: Option<i32>,
        #[prost(int32, optional, tag = "5")]
        pub r#type: Option<i32>,
        #[prost(string, optional, tag = "6")]
        pub type_name: Option<String>,
        #[prost(bool, optional, tag = "17")]
        pub proto3_optional: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub value: Vec<EnumValueDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumValueDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "2")]
        pub number: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub input_type: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub output_type: Option<String>,
        #[prost(bool, optional, tag = "5")]
        pub client_streaming: Option<bool>,
        #[prost(bool, optional, tag = "6")]
        pub server_streaming: Option<bool>,
    }

    // FieldDescriptorProto.Label and .Type values.
    pub const OPTIONAL: i32 = 1;
    pub const REPEATED: i32 = 3;
    pub const DOUBLE: i32 = 1;
    pub const FLOAT: i32 = 2;
    pub const UINT64: i32 = 4;
    pub const INT32: i32 = 5;
    pub const BOOL: i32 = 8;
    pub const STRING: i32 = 9;
    pub const MESSAGE: i32 = 11;
    pub const BYTES: i32 = 12;
    pub const ENUM: i32 = 14;
}

/// The file of package `backend` in the compiled descriptor set.
fn backend_file() -> descriptor::FileDescriptorProto {
    let set = descriptor::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("FILE_DESCRIPTOR_SET decodes");
    set.file
        .into_iter()
        .find(|f| f.package.as_deref() == Some(PACKAGE))
        .expect("a file of package `backend`")
}

fn find_message<'a>(
    messages: &'a [descriptor::DescriptorProto],
    name: &str,
) -> &'a descriptor::DescriptorProto {
    messages
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("message {name} is not declared"))
}

/// A field as the descriptor describes it: (number, name, label, type, type name).
type FieldShape = (i32, String, i32, i32, Option<String>);

/// What the descriptor must say of contract field `(num, name, ty)` of message `message`.
fn expected_shape(message: &str, (num, name, ty): (u32, &str, Ty)) -> FieldShape {
    use descriptor as d;
    let qualified = |n: &str| Some(format!(".{PACKAGE}.{n}"));
    let (label, ty, type_name) = match ty {
        T::String => (d::OPTIONAL, d::STRING, None),
        T::Bytes => (d::OPTIONAL, d::BYTES, None),
        T::Int32 => (d::OPTIONAL, d::INT32, None),
        T::Uint64 => (d::OPTIONAL, d::UINT64, None),
        T::Float => (d::OPTIONAL, d::FLOAT, None),
        T::Double => (d::OPTIONAL, d::DOUBLE, None),
        T::Bool => (d::OPTIONAL, d::BOOL, None),
        T::Enum(e) => (d::OPTIONAL, d::ENUM, qualified(e.name)),
        T::RepString => (d::REPEATED, d::STRING, None),
        T::RepInt32 => (d::REPEATED, d::INT32, None),
        T::RepFloat => (d::REPEATED, d::FLOAT, None),
        T::Message(s) => (d::OPTIONAL, d::MESSAGE, qualified(s.name)),
        T::RepMessage(s) => (d::REPEATED, d::MESSAGE, qualified(s.name)),
        T::MapStringString | T::MapStringUint64 => (
            d::REPEATED,
            d::MESSAGE,
            qualified(&format!("{message}.{}", map_entry_name(name))),
        ),
    };
    (num as i32, name.to_owned(), label, ty, type_name)
}

/// protoc's name for the entry message of map field `name`: `breakdown` -> `BreakdownEntry`.
fn map_entry_name(name: &str) -> String {
    let camel: String = name
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_uppercase().chain(chars).collect::<String>()
            })
        })
        .collect();
    format!("{camel}Entry")
}

fn shapes(fields: &[descriptor::FieldDescriptorProto]) -> Vec<FieldShape> {
    let mut shapes: Vec<FieldShape> = fields
        .iter()
        .map(|f| {
            assert!(
                !f.proto3_optional.unwrap_or(false),
                "{:?} is `optional`",
                f.name
            );
            (
                f.number.unwrap_or_default(),
                f.name.clone().unwrap_or_default(),
                f.label.unwrap_or_default(),
                f.r#type.unwrap_or_default(),
                f.type_name.clone(),
            )
        })
        .collect();
    shapes.sort();
    shapes
}

#[test]
fn descriptor_declares_exactly_the_contract_fields() {
    use descriptor as d;
    let file = backend_file();
    assert_eq!(file.syntax.as_deref(), Some("proto3"));
    for schema in ALL_SCHEMAS {
        let message = find_message(&file.message_type, schema.name);
        let want: Vec<FieldShape> = schema
            .fields
            .iter()
            .map(|&f| expected_shape(schema.name, f))
            .collect();
        assert_eq!(shapes(&message.field), want, "{}: fields", schema.name);

        for &(_, name, ty) in schema.fields {
            let value_type = match ty {
                T::MapStringString => d::STRING,
                T::MapStringUint64 => d::UINT64,
                _ => continue,
            };
            let entry = find_message(&message.nested_type, &map_entry_name(name));
            assert_eq!(entry.options.as_ref().and_then(|o| o.map_entry), Some(true));
            let want = vec![
                (1, "key".to_owned(), d::OPTIONAL, d::STRING, None),
                (2, "value".to_owned(), d::OPTIONAL, value_type, None),
            ];
            assert_eq!(shapes(&entry.field), want, "{}.{name} entry", schema.name);
        }
    }

    let (outer, inner) = STATE.name.split_once('.').unwrap();
    let state = find_message(&file.message_type, outer)
        .enum_type
        .iter()
        .find(|e| e.name.as_deref() == Some(inner))
        .expect("enum StatusResponse.State");
    let mut got: Vec<(String, i32)> = state
        .value
        .iter()
        .map(|v| {
            (
                v.name.clone().unwrap_or_default(),
                v.number.unwrap_or_default(),
            )
        })
        .collect();
    let mut want: Vec<(String, i32)> = STATE
        .values
        .iter()
        .map(|&(n, v)| (n.to_owned(), v))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "StatusResponse.State values");

    let layout = file
        .enum_type
        .iter()
        .find(|e| e.name.as_deref() == Some(EMBEDDING_LAYOUT.name))
        .expect("enum EmbeddingLayout");
    let got: Vec<(String, i32)> = layout
        .value
        .iter()
        .map(|v| {
            (
                v.name.clone().unwrap_or_default(),
                v.number.unwrap_or_default(),
            )
        })
        .collect();
    let want: Vec<(String, i32)> = EMBEDDING_LAYOUT
        .values
        .iter()
        .map(|&(n, v)| (n.to_owned(), v))
        .collect();
    assert_eq!(got, want, "EmbeddingLayout values");
}

/// `/backend.Backend/<Rpc>`.
fn path(rpc: &str) -> String {
    format!("/{PACKAGE}.{SERVICE}/{rpc}")
}

#[test]
fn descriptor_declares_the_contract_service() {
    let file = backend_file();
    let service = file
        .service
        .iter()
        .find(|s| s.name.as_deref() == Some(SERVICE))
        .expect("service Backend");
    assert_eq!(
        pb::backend_server::SERVICE_NAME,
        format!("{PACKAGE}.{SERVICE}")
    );
    for &(rpc, request, response, stream) in RPCS {
        let method = service
            .method
            .iter()
            .find(|m| m.name.as_deref() == Some(rpc))
            .unwrap_or_else(|| panic!("rpc {rpc} is not declared"));
        let qualified = |n: &str| Some(format!(".{PACKAGE}.{n}"));
        assert_eq!(method.input_type, qualified(request), "{rpc} request");
        assert_eq!(method.output_type, qualified(response), "{rpc} response");
        assert!(
            !method.client_streaming.unwrap_or(false),
            "{rpc} client stream"
        );
        assert_eq!(
            method.server_streaming.unwrap_or(false),
            stream,
            "{rpc} server stream"
        );
    }
    let paths: Vec<String> = RPCS.iter().map(|r| path(r.0)).collect();
    assert_eq!(
        paths,
        [
            "/backend.Backend/Health",
            "/backend.Backend/LoadModel",
            "/backend.Backend/Predict",
            "/backend.Backend/PredictStream",
            "/backend.Backend/TokenizeString",
            "/backend.Backend/Free",
            "/backend.Backend/Status",
            "/backend.Backend/Embedding",
            "/backend.Backend/Detokenize",
            "/backend.Backend/Score",
            "/backend.Backend/Rerank",
            "/backend.Backend/GetMetrics",
            "/backend.Backend/ModelMetadata",
        ]
    );
}

/// A transport that records each request's path and answers with an empty HTTP response.
#[derive(Clone, Default)]
struct PathRecorder(Arc<Mutex<Vec<String>>>);

impl Service<http::Request<tonic::body::Body>> for PathRecorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = StdError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(request.uri().path().to_owned());
        std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
    }
}

#[tokio::test]
async fn generated_client_sends_the_contract_paths() {
    let recorder = PathRecorder::default();
    let mut client = pb::backend_client::BackendClient::new(recorder.clone());
    // The empty answers are not valid gRPC responses: only the requests matter here.
    let _ = client.health(pb::HealthMessage {}).await;
    let _ = client.load_model(pb::ModelOptions::default()).await;
    let _ = client.predict(pb::PredictOptions::default()).await;
    let _ = client.predict_stream(pb::PredictOptions::default()).await;
    let _ = client.tokenize_string(pb::PredictOptions::default()).await;
    let _ = client.free(pb::HealthMessage {}).await;
    let _ = client.status(pb::HealthMessage {}).await;
    let _ = client.embedding(pb::PredictOptions::default()).await;
    let _ = client.detokenize(pb::DetokenizeRequest::default()).await;
    let _ = client.score(pb::ScoreRequest::default()).await;
    let _ = client.rerank(pb::RerankRequest::default()).await;
    let _ = client.get_metrics(pb::MetricsRequest {}).await;
    let _ = client.model_metadata(pb::ModelOptions::default()).await;
    let sent = recorder.0.lock().unwrap().clone();
    let want: Vec<String> = RPCS.iter().map(|r| path(r.0)).collect();
    assert_eq!(sent, want);
}
