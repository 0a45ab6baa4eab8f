//! Errors of parser selection and request-tool decoding.

use thiserror::Error;

/// Which registry a parser name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParserRole {
    /// A tool-call parser (`tool_parser` option).
    Tool,
    /// A reasoning parser (`reasoning_parser` option).
    Reasoning,
}

impl std::fmt::Display for ParserRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParserRole::Tool => "tool",
            ParserRole::Reasoning => "reasoning",
        })
    }
}

/// Failure to pick a parser or to read the request's tools.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParserError {
    /// The name is not a parser we know of.
    #[error("unknown {role} parser {name:?}; known {role} parsers: {}", known.join(", "))]
    Unknown {
        /// Tool or reasoning.
        role: ParserRole,
        /// The name as given.
        name: String,
        /// Every name accepted for this role.
        known: Vec<&'static str>,
    },
    /// The name is a known upstream parser that this crate does not implement.
    #[error("{role} parser {name:?} is not implemented; implemented: {}", implemented.join(", "))]
    NotImplemented {
        /// Tool or reasoning.
        role: ParserRole,
        /// The name as given.
        name: String,
        /// The names that are implemented for this role.
        implemented: Vec<&'static str>,
    },
    /// The request's `tools` JSON could not be read.
    #[error("invalid tools JSON: {0}")]
    InvalidTools(String),
}
