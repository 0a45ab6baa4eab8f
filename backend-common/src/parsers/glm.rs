//! GLM-4.5/4.6/4.7 tool calls (`glm45`, `glm47`):
//! `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>`, the name ended by
//! a newline (4.5) or directly by the first `<arg_key>` (4.7).
//!
//! A call counts only once its `</tool_call>` arrives (an unterminated call is content, as in
//! vLLM), so each call is emitted whole. Only text before the first call is content.

use serde_json::{Map, Value};

use super::markers::{Markers, Scan};
use super::pylit;
use super::stream::{End, Sink, Stage};
use super::types::ParseOptions;

const TOOL_CALL: &str = "<tool_call>";
const TOOL_CALL_END: &str = "</tool_call>";
const ARG_KEY: &str = "<arg_key>";
const ARG_KEY_END: &str = "</arg_key>";
const ARG_VALUE: &str = "<arg_value>";
const ARG_VALUE_END: &str = "</arg_value>";

// What each mode looks for, as marker sets built at compile time.
const OPEN: Markers = Markers::new(&[TOOL_CALL]);
const CLOSE: Markers = Markers::new(&[TOOL_CALL_END]);

/// Streaming GLM tool-call parser.
pub(crate) struct Glm {
    options: ParseOptions,
    /// A call is open: `<tool_call>` was seen, its end was not.
    in_call: bool,
    /// Text of the open call after `<tool_call>`, while waiting for its end.
    call: String,
    calls: usize,
}

impl Glm {
    pub(crate) fn new(options: ParseOptions) -> Glm {
        Glm {
            options,
            in_call: false,
            call: String::new(),
            calls: 0,
        }
    }

    fn prose(&self, text: &str, out: &mut dyn Sink) {
        if self.calls == 0 {
            out.content(text);
        }
    }

    /// Name and arguments of a complete call body.
    fn parse_call(&self, body: &str) -> Option<(String, Map<String, Value>)> {
        let name_end = [body.find('\n'), body.find(ARG_KEY)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(body.len());
        let name = body[..name_end].trim();
        if name.is_empty() {
            return None;
        }
        let mut arguments = Map::new();
        let mut rest = &body[name_end..];
        while let Some(at) = rest.find(ARG_KEY) {
            let after_key = &rest[at + ARG_KEY.len()..];
            let key_len = after_key.find(ARG_KEY_END)?;
            let key = after_key[..key_len].trim();
            let after = after_key[key_len + ARG_KEY_END.len()..]
                .trim_start_matches(|c: char| c.is_whitespace() || c == '\\' || c == 'n');
            let value_text = after.strip_prefix(ARG_VALUE)?;
            let value_len = value_text.find(ARG_VALUE_END)?;
            let value = &value_text[..value_len];
            arguments.insert(key.to_owned(), self.convert(name, key, value));
            rest = &value_text[value_len + ARG_VALUE_END.len()..];
        }
        Some((name.to_owned(), arguments))
    }

    /// A value declared as text is kept verbatim; anything else is decoded if it can be.
    fn convert(&self, function: &str, key: &str, value: &str) -> Value {
        let declared_text = self
            .options
            .tool(function)
            .and_then(|tool| tool.param_type(key))
            .is_some_and(|typed| typed.name == "string");
        if declared_text {
            return Value::String(value.to_owned());
        }
        let trimmed = value.trim();
        serde_json::from_str(trimmed)
            .ok()
            .or_else(|| pylit::literal(trimmed))
            .unwrap_or_else(|| Value::String(trimmed.to_owned()))
    }
}

impl Stage for Glm {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        if !self.in_call {
            return match OPEN.scan(rest, end) {
                Scan::Found { at, .. } => {
                    self.prose(&rest[..at], out);
                    self.call.clear();
                    self.in_call = true;
                    Some(at + TOOL_CALL.len())
                }
                Scan::Partial { at } => {
                    self.prose(&rest[..at], out);
                    (at > 0).then_some(at)
                }
                Scan::Clear => {
                    self.prose(rest, out);
                    Some(rest.len())
                }
            };
        }
        match CLOSE.scan(rest, end) {
            Scan::Found { at, .. } => {
                self.call.push_str(&rest[..at]);
                self.in_call = false;
                match self.parse_call(&self.call) {
                    Some((name, arguments)) => {
                        self.calls += 1;
                        out.call_start(&name, None);
                        out.call_args(&pylit::dumps(&Value::Object(arguments)));
                    }
                    None => self.prose(&format!("{TOOL_CALL}{}{TOOL_CALL_END}", self.call), out),
                }
                Some(at + TOOL_CALL_END.len())
            }
            Scan::Partial { at } => {
                self.call.push_str(&rest[..at]);
                (at > 0).then_some(at)
            }
            Scan::Clear => {
                self.call.push_str(rest);
                Some(rest.len())
            }
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        if self.in_call {
            self.in_call = false;
            self.prose(&format!("{TOOL_CALL}{}", self.call), out);
        }
    }
}
