//! What a request's output must follow, written in llguidance's Lark dialect: one front-end
//! for every way a request constrains its output, so an engine that decodes with llguidance
//! only compiles the result.
//!
//! - `Grammar` in GBNF (what LocalAI's core writes for JSON mode and function calling) is
//!   read by [`gbnf::Grammar`] and rewritten;
//! - `Grammar` holding a JSON object is a JSON schema (as LocalAI's vLLM backend treats it);
//! - `Grammar` starting with `%llguidance` is Lark, passed on as llama.cpp does;
//! - the load's `GrammarTriggers` make it lazy: free text until a trigger word, then the
//!   grammar from that word on;
//! - a [`ToolCallConstraint`] (forced or "auto" `ToolChoice`) becomes the call's literal
//!   prefix, a `%json` schema of its object, and its suffix.
use serde_json::{Value, json};

use crate::engine::{EngineError, GenerationRequest, ToolCallConstraint};
use crate::gbnf;

/// The Lark form of a request's output constraint.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConstraint {
    /// The grammar, in llguidance's Lark dialect (start rule `start`).
    pub lark: String,
    /// Whether it holds from the first token or once a trigger appears.
    pub start: ConstraintStart,
}

/// Where a constraint begins to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintStart {
    /// The whole output follows the grammar.
    Immediately,
    /// The output is free until one of these appears; from there on it follows the grammar.
    Triggered(Triggers),
}

/// What switches a lazy constraint on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Triggers {
    /// Words whose first appearance starts the constrained part (the word included).
    pub words: Vec<String>,
    /// A `{` opening the output (after blanks) starts it too: a bare tool-call object.
    pub object_at_start: bool,
}

impl Triggers {
    /// Where in `text` (the output so far) the constrained part begins, if it has.
    pub fn find(&self, text: &[u8]) -> Option<usize> {
        if self.object_at_start {
            let first = text.iter().position(|b| !b.is_ascii_whitespace());
            if let Some(i) = first.filter(|&i| text[i] == b'{') {
                return Some(i);
            }
        }
        self.words
            .iter()
            .filter(|w| !w.is_empty())
            .filter_map(|w| text.windows(w.len()).position(|s| s == w.as_bytes()))
            .min()
    }
}

/// How JSON is written under a schema unless the schema says otherwise (`x-guidance`): the
/// separators Python's `json.dumps` writes and no other whitespace, which is what models
/// trained on tool calls produce, and leaves a small model no room to pad forever.
fn json_style() -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": "
    })
}

/// `schema` with this crate's JSON style, unless it sets its own.
fn styled(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(json_style);
    }
    schema
}

fn invalid(reason: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidArgument(format!("Grammar: {reason}"))
}

/// What a request's `Grammar` field holds, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarInput {
    /// GBNF (llama.cpp's dialect), parsed.
    Gbnf(gbnf::Grammar),
    /// A JSON schema: the field is a JSON object (GBNF cannot start with `{`).
    JsonSchema(Value),
    /// Lark for llguidance, marked as llama.cpp marks it: the text starts with `%llguidance`.
    Lark(String),
}

impl GrammarInput {
    /// Reads `grammar`; a mistake is INVALID_ARGUMENT saying what (and where, for GBNF).
    pub fn read(grammar: &str) -> Result<GrammarInput, EngineError> {
        let trimmed = grammar.trim_start();
        if trimmed.starts_with("%llguidance") {
            return Ok(GrammarInput::Lark(grammar.to_string()));
        }
        if trimmed.starts_with('{') {
            let schema: Value = serde_json::from_str(trimmed).map_err(|e| {
                invalid(format!(
                    "starts with `{{`, so it is read as a JSON schema, but it is not JSON ({e})"
                ))
            })?;
            return Ok(GrammarInput::JsonSchema(schema));
        }
        gbnf::check_group_depth(grammar).map_err(invalid)?;
        gbnf::Grammar::parse(grammar)
            .map(GrammarInput::Gbnf)
            .map_err(invalid)
    }

    /// The same constraint in llguidance's Lark dialect.
    pub fn to_lark(&self) -> String {
        match self {
            GrammarInput::Gbnf(grammar) => grammar.to_lark(),
            GrammarInput::JsonSchema(schema) => format!("start: %json {}\n", styled(schema)),
            GrammarInput::Lark(lark) => lark.clone(),
        }
    }
}

/// The Lark form of `grammar` (GBNF, a JSON schema, or `%llguidance` Lark).
pub fn grammar_to_lark(grammar: &str) -> Result<String, EngineError> {
    GrammarInput::read(grammar).map(|input| input.to_lark())
}

/// The Lark form of a tool-call constraint: exactly one call, or (lazy) one or more calls
/// separated by newlines from where the model opens the first.
fn tool_call_to_lark(call: &ToolCallConstraint) -> (String, ConstraintStart) {
    let literal = |text: &str| serde_json::to_string(text).expect("a string serialises");
    let object = format!("call_object: %json {}\n", styled(&call.schema));
    let mut wrapped = Vec::new();
    if !call.prefix.is_empty() {
        wrapped.push(literal(&call.prefix));
    }
    wrapped.push("call_object".to_string());
    if !call.suffix.is_empty() {
        wrapped.push(literal(&call.suffix));
    }
    let wrapped = wrapped.join(" ");
    match &call.lazy {
        None => (
            format!("start: {wrapped}\n{object}"),
            ConstraintStart::Immediately,
        ),
        Some(lazy) => {
            let one = if lazy.bare_object_at_start {
                format!("{wrapped} | call_object")
            } else {
                wrapped
            };
            let lark = format!("start: call (\"\\n\"* call)*\ncall: {one}\n{object}");
            let triggers = Triggers {
                words: vec![lazy.opener.clone()],
                object_at_start: lazy.bare_object_at_start,
            };
            (lark, ConstraintStart::Triggered(triggers))
        }
    }
}

/// The constraint `request` puts on its output, if any.
pub fn output_constraint(
    request: &GenerationRequest,
) -> Result<Option<OutputConstraint>, EngineError> {
    if let Some(grammar) = &request.grammar {
        let lark = grammar_to_lark(grammar)?;
        let start = if request.grammar_triggers.iter().any(|w| !w.is_empty()) {
            ConstraintStart::Triggered(Triggers {
                words: request.grammar_triggers.clone(),
                object_at_start: false,
            })
        } else {
            ConstraintStart::Immediately
        };
        return Ok(Some(OutputConstraint { lark, start }));
    }
    Ok(request.tool_call.as_ref().map(|call| {
        let (lark, start) = tool_call_to_lark(call);
        OutputConstraint { lark, start }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CallStart;

    #[test]
    fn json_schemas_get_the_house_style_unless_they_choose() {
        let lark = grammar_to_lark(r#" {"type":"object"}"#).unwrap();
        assert!(lark.starts_with("start: %json {"), "{lark}");
        assert!(lark.contains(r#""item_separator":", ""#), "{lark}");
        let own = grammar_to_lark(r#"{"type":"object","x-guidance":{"whitespace_flexible":true}}"#)
            .unwrap();
        assert!(!own.contains("item_separator"), "{own}");
        let e = grammar_to_lark("{not json").unwrap_err();
        assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("JSON schema"), "{e}");
        // Any JSON value is a schema (`true` accepts everything); llguidance judges it.
        assert!(grammar_to_lark("{}").is_ok());
        let e = grammar_to_lark("[1]").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn lark_passes_through() {
        let lark = "%llguidance {}\nstart: \"a\"\n";
        assert_eq!(grammar_to_lark(lark).unwrap(), lark);
    }

    #[test]
    fn gbnf_errors_say_where() {
        let e = grammar_to_lark("root ::= \"a\"\nitem ::= (\"b\"").unwrap_err();
        assert!(e.to_string().starts_with("Grammar: line 2"), "{e}");
        let e = grammar_to_lark(&format!("root ::= {}", "(".repeat(500))).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
    }

    #[test]
    fn triggers_find_the_first_word_or_an_opening_object() {
        let t = Triggers {
            words: vec!["<tool_call>".into(), "<call>".into()],
            object_at_start: true,
        };
        assert_eq!(t.find(b"  {\"name\""), Some(2));
        assert_eq!(t.find(b"say {"), None);
        assert_eq!(t.find(b"x <call> y <tool_call>"), Some(2));
        assert_eq!(t.find(b"<tool_call"), None);
    }

    #[test]
    fn tool_calls_wrap_a_json_object() {
        let call = ToolCallConstraint {
            prefix: "<tool_call>\n".into(),
            schema: json!({"type": "object"}),
            suffix: "\n</tool_call>".into(),
            lazy: None,
        };
        let (lark, start) = tool_call_to_lark(&call);
        assert_eq!(start, ConstraintStart::Immediately);
        assert!(
            lark.starts_with("start: \"<tool_call>\\n\" call_object \"\\n</tool_call>\"\n"),
            "{lark}"
        );
        let lazy = ToolCallConstraint {
            lazy: Some(CallStart {
                opener: "<tool_call>".into(),
                bare_object_at_start: true,
            }),
            ..call
        };
        let (lark, start) = tool_call_to_lark(&lazy);
        assert!(lark.contains("| call_object\n"), "{lark}");
        assert_eq!(
            start,
            ConstraintStart::Triggered(Triggers {
                words: vec!["<tool_call>".into()],
                object_at_start: true
            })
        );
    }
}
