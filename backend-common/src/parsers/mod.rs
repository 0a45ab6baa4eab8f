//! Tool-call and reasoning parsers for model output, named as in vLLM (plus llama.cpp-compatible
//! `llamacpp_*` variants), with one streaming implementation per format.
//!
//! Pick parsers with [`select_parsers`] (user option or model-family default), then drive a
//! [`ChatParser`] per request: [`ChatParser::push`] text as it is generated and
//! [`ChatParser::finish`] at the end, or [`ChatParser::parse`] a whole output. Streaming is linear
//! in the output length: text is consumed once, and only a possible partial marker (or a call
//! candidate not yet certain) is held back.
//!
//! This module depends only on std, serde, serde_json and thiserror.

mod call_object;
mod chat;
mod deepseek;
mod error;
mod functionary;
mod glm;
mod harmony;
mod json_calls;
mod json_scan;
mod kimi;
mod markers;
mod pylit;
mod pythonic;
mod qwen_xml;
mod reasoning;
mod registry;
mod stream;
mod tool_format;
mod types;

pub use chat::ChatParser;
pub use error::{ParserError, ParserRole};
pub use registry::{
    MODEL_FAMILIES, ModelFamily, ParserChoice, ParserSelection, ParserSource, ReasoningParserKind,
    ToolParserKind, model_family, normalize_model_name, select_parsers,
};
pub use tool_format::{reasoning_markers, tool_format};
pub use types::{ChatDelta, ParseOptions, ParsedMessage, ToolCall, ToolCallDelta, ToolSpec};
