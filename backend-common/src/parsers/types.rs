//! Value types produced by the parsers: whole messages, streamed deltas and request tools.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ParserError;

/// One complete tool call found in model output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id: the model's own when the format carries one (Kimi), else a generated `call_...`.
    pub id: String,
    /// Function name, whole.
    pub name: String,
    /// Arguments as JSON text (OpenAI wire form); raw model text when the model wrote invalid JSON.
    pub arguments: String,
}

/// The parsed form of a whole generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedMessage {
    /// Visible text; `None` when there is none.
    pub content: Option<String>,
    /// Reasoning text; `None` when the output had no reasoning section.
    pub reasoning_content: Option<String>,
    /// Tool calls in order of appearance.
    pub tool_calls: Vec<ToolCall>,
}

/// A fragment of one tool call inside a [`ChatDelta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Stable position of the call in the message (0-based).
    pub index: usize,
    /// Call id, present only in the first fragment of a call.
    pub id: Option<String>,
    /// Function name, present only in the first fragment of a call.
    pub name: Option<String>,
    /// Next piece of the arguments JSON text (may be empty).
    pub arguments: String,
}

/// What one step of streaming adds to the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// New visible text.
    pub content: String,
    /// New reasoning text.
    pub reasoning_content: String,
    /// New tool-call fragments, at most one entry per call index.
    pub tool_calls: Vec<ToolCallDelta>,
}

impl ChatDelta {
    /// True when the delta carries nothing.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.reasoning_content.is_empty() && self.tool_calls.is_empty()
    }
}

/// A tool offered by the request: its name and JSON-schema parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Function name.
    pub name: String,
    /// JSON schema of the parameters (`Value::Null` when absent).
    pub parameters: Value,
}

impl ToolSpec {
    /// Reads the OpenAI `tools` array (`[{"type":"function","function":{"name":..,"parameters":..}}]`).
    ///
    /// Entries of another `type` than `function` are skipped; a function without a name is an
    /// error (a call to it could never be reported); an empty string means no tools.
    pub fn list_from_openai_json(tools_json: &str) -> Result<Vec<ToolSpec>, ParserError> {
        if tools_json.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_str(tools_json)
            .map_err(|err| ParserError::InvalidTools(err.to_string()))?;
        let entries = value
            .as_array()
            .ok_or_else(|| ParserError::InvalidTools("expected a JSON array".to_owned()))?;
        let mut specs = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let kind = entry
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                continue;
            }
            let function = entry.get("function").unwrap_or(entry);
            let name = function.get("name").and_then(Value::as_str).unwrap_or("");
            if name.trim().is_empty() {
                return Err(ParserError::InvalidTools(format!(
                    "tool {i} has no function name; give each tool `function.name`"
                )));
            }
            specs.push(ToolSpec {
                name: name.to_owned(),
                parameters: function.get("parameters").cloned().unwrap_or(Value::Null),
            });
        }
        Ok(specs)
    }

    /// JSON-schema `type` of one parameter, lowercased, if the schema declares it.
    pub(crate) fn param_type(&self, param: &str) -> Option<ParamType> {
        let schema = self.parameters.get("properties")?.get(param)?;
        Some(ParamType::from_schema(schema))
    }
}

/// Declared type of a tool parameter, as far as the XML-style parsers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamType {
    /// Primary type name, lowercased (`"string"` when the schema gives none).
    pub(crate) name: String,
    /// The schema admits `null`.
    pub(crate) nullable: bool,
}

impl ParamType {
    fn from_schema(schema: &Value) -> ParamType {
        if let Some(kind) = schema.get("type") {
            let name = match kind {
                Value::String(s) => s.trim().to_lowercase(),
                // `["string", "null"]`: the first non-null entry is the type.
                Value::Array(kinds) => {
                    let names: Vec<String> = kinds
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| s.trim().to_lowercase())
                        .collect();
                    let nullable = names.iter().any(|n| n == "null");
                    let name = names
                        .into_iter()
                        .find(|n| n != "null")
                        .unwrap_or_else(|| "string".to_owned());
                    return ParamType { name, nullable };
                }
                _ => "string".to_owned(),
            };
            let nullable = name == "null";
            return ParamType { name, nullable };
        }
        if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
            let mut nullable = false;
            let mut picked: Option<String> = None;
            for option in options {
                if let Some(kind) = option.get("type").and_then(Value::as_str) {
                    let kind = kind.trim().to_lowercase();
                    if kind == "null" {
                        nullable = true;
                    } else if picked.is_none() {
                        picked = Some(kind);
                    }
                }
            }
            return ParamType {
                name: picked.unwrap_or_else(|| "string".to_owned()),
                nullable,
            };
        }
        ParamType {
            name: "string".to_owned(),
            nullable: false,
        }
    }

    /// The parameter is text: its value is taken verbatim.
    pub(crate) fn is_string(&self) -> bool {
        matches!(
            self.name.as_str(),
            "string" | "str" | "text" | "varchar" | "char" | "enum"
        )
    }
}

/// Per-request context the parsers need besides the text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParseOptions {
    /// The request's tools; bare-JSON detection and typed XML arguments depend on them.
    pub tools: Vec<ToolSpec>,
    /// `enable_thinking` as passed to the chat template; `None` when not given.
    pub enable_thinking: Option<bool>,
    /// The rendered prompt already opened the reasoning block (e.g. ends with `<think>`).
    pub thinking_forced_open: bool,
}

impl ParseOptions {
    /// The request tool with this name, if any.
    pub(crate) fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|tool| tool.name == name)
    }

    /// True when the request offers a tool of this name.
    pub(crate) fn has_tool(&self, name: &str) -> bool {
        self.tool(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_need_a_function_name() {
        let specs = ToolSpec::list_from_openai_json(
            r#"[{"type":"function","function":{"name":"a","parameters":{"type":"object"}}},
                {"name":"b"},
                {"type":"code_interpreter"}]"#,
        )
        .unwrap();
        let names: Vec<_> = specs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        for nameless in [
            r#"[{"type":"function","function":{"parameters":{}}}]"#,
            r#"[{"type":"function","function":{"name":"  "}}]"#,
            r#"[{"type":"function","function":{"name":7}}]"#,
        ] {
            let e = ToolSpec::list_from_openai_json(nameless).unwrap_err();
            assert!(e.to_string().contains("tool 0 has no function name"), "{e}");
        }
    }
}
