//! Qwen3-Coder XML tool calls (`qwen3_coder`, `qwen3_xml`):
//! `<tool_call><function=NAME><parameter=KEY>VALUE</parameter>...</function></tool_call>`.
//!
//! Values are typed by the request's JSON schema; text values stream as they are generated,
//! other values are converted when complete. The arguments are built as JSON text in
//! `json.dumps` layout (`{"k": v, "k2": v2}`).

use serde_json::Value;

use super::json_scan::push_string_body;
use super::markers::{Markers, Prefix, Scan, leading_ws, name_prefix, scan, starts_with};
use super::pylit;
use super::stream::{End, Sink, Stage};
use super::types::{ParamType, ParseOptions};

const TOOL_CALL: &str = "<tool_call>";
const TOOL_CALL_END: &str = "</tool_call>";
const FUNCTION: &str = "<function=";
const FUNCTION_END: &str = "</function>";
const PARAMETER: &str = "<parameter=";
const PARAMETER_END: &str = "</parameter>";

// What each mode looks for, as marker sets built at compile time.
const CALL_STARTS: Markers = Markers::new(&[TOOL_CALL, FUNCTION]);
const FUNCTION_PARTS: [&str; 3] = [PARAMETER, FUNCTION_END, TOOL_CALL_END];
const FUNCTION_STOPS: Markers = Markers::new(&FUNCTION_PARTS);
const VALUE_STOPS: Markers = Markers::new(&[PARAMETER_END, PARAMETER, FUNCTION_END]);

/// Longest accepted function or parameter name.
const MAX_NAME_LEN: usize = 256;

#[derive(Debug, Clone, Default)]
struct ParamValue {
    /// How to convert the value; `None` streams it as text.
    typed: Option<ParamType>,
    /// JSON text that precedes the value (separator and key).
    prefix: String,
    started: bool,
    /// A newline held back: it is dropped if it turns out to be the value's last character.
    pending_newline: bool,
    /// The value so far, for typed values.
    text: String,
}

/// Where the parser is; the name or value being read lives in [`QwenXml`], so that the mode is a
/// plain value to switch on for every piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Prose,
    AfterToolCall,
    /// A function name, gathered in [`QwenXml::name`].
    FunctionName,
    InFunction,
    /// A parameter name, gathered in [`QwenXml::name`].
    ParamName,
    /// A parameter value, described by [`QwenXml::value`].
    Value,
    AfterFunction,
}

/// Streaming Qwen3 XML tool-call parser.
pub(crate) struct QwenXml {
    options: ParseOptions,
    mode: Mode,
    held: String,
    function: String,
    params: usize,
    calls: usize,
    /// The function or parameter name read so far.
    name: String,
    /// The parameter value being read.
    value: ParamValue,
    /// Scratch buffer for escaping text values, reused across pieces.
    escaped: String,
}

impl QwenXml {
    pub(crate) fn new(options: ParseOptions) -> QwenXml {
        QwenXml {
            options,
            mode: Mode::Prose,
            held: String::new(),
            function: String::new(),
            params: 0,
            calls: 0,
            name: String::new(),
            value: ParamValue::default(),
            escaped: String::new(),
        }
    }

    fn prose(&mut self, text: &str, out: &mut dyn Sink) {
        // Like vLLM, only text before the first call is content.
        if self.calls == 0 {
            out.content(text);
        }
    }

    fn release(&mut self, out: &mut dyn Sink) {
        let held = std::mem::take(&mut self.held);
        self.prose(&held, out);
        self.mode = Mode::Prose;
    }

    fn param_type(&self, key: &str) -> Option<ParamType> {
        let tool = self.options.tool(&self.function)?;
        let typed = tool.param_type(key)?;
        (!typed.is_string() || typed.nullable).then_some(typed)
    }

    /// Reads a function name (`function`) or parameter name up to `>`.
    fn step_name(
        &mut self,
        rest: &str,
        end: End,
        out: &mut dyn Sink,
        function: bool,
    ) -> Option<usize> {
        let (taken, found) = match scan(rest, &[">"], end) {
            Scan::Found { at, .. } => (at, true),
            Scan::Partial { at } => (at, false),
            Scan::Clear => (rest.len(), false),
        };
        let valid = name_prefix(&rest[..taken], self.name.len(), MAX_NAME_LEN, |c| c != '\n');
        self.name.push_str(&rest[..valid]);
        if function {
            self.held.push_str(&rest[..valid]);
        }
        if valid < taken {
            if function {
                self.release(out);
            } else {
                // Not a parameter after all: keep looking for the next one.
                self.mode = Mode::InFunction;
            }
            return Some(valid);
        }
        if !found {
            self.mode = if function {
                Mode::FunctionName
            } else {
                Mode::ParamName
            };
            return Some(taken);
        }
        let name = std::mem::take(&mut self.name);
        let name = name.trim();
        if function {
            self.function = name.to_owned();
            self.held.clear();
            self.params = 0;
            self.calls += 1;
            out.call_start(name, None);
            out.call_args("{");
            self.mode = Mode::InFunction;
        } else {
            let separator = if self.params == 0 { "" } else { ", " };
            self.params += 1;
            let prefix = format!("{separator}{}: ", Value::String(name.to_owned()));
            self.value = ParamValue {
                typed: self.param_type(name),
                prefix,
                started: false,
                pending_newline: false,
                text: String::new(),
            };
            self.mode = Mode::Value;
        }
        Some(taken + 1)
    }

    fn step_value(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let value = &mut self.value;
        let mut skipped = 0;
        if !value.started {
            value.started = true;
            // One newline after the opening tag is layout, not value.
            if rest.starts_with('\n') {
                skipped = 1;
            }
            if value.typed.is_none() {
                out.call_args(&value.prefix);
                out.call_args("\"");
            }
        }
        let body = &rest[skipped..];
        let (taken, stop) = match VALUE_STOPS.scan(body, end) {
            Scan::Found { at, marker } => (at, Some(marker)),
            Scan::Partial { at } => (at, None),
            Scan::Clear => (body.len(), None),
        };
        let mut chunk = &body[..taken];
        if value.typed.is_none() {
            if !chunk.is_empty() && value.pending_newline {
                out.call_args("\\n");
                value.pending_newline = false;
            }
            if let Some(stripped) = chunk.strip_suffix('\n') {
                value.pending_newline = true;
                chunk = stripped;
            }
            self.escaped.clear();
            push_string_body(&mut self.escaped, chunk);
            out.call_args(&self.escaped);
        } else {
            value.text.push_str(chunk);
        }
        let Some(marker) = stop else {
            self.mode = Mode::Value;
            return (skipped + taken > 0).then_some(skipped + taken);
        };
        self.end_value(out);
        self.mode = Mode::InFunction;
        // Only `</parameter>` belongs to the value; the others start what follows.
        let consumed = if marker == 0 { PARAMETER_END.len() } else { 0 };
        Some(skipped + taken + consumed)
    }

    fn end_value(&self, out: &mut dyn Sink) {
        let value = &self.value;
        match &value.typed {
            None => out.call_args("\""),
            Some(typed) => {
                let text = value.text.strip_suffix('\n').unwrap_or(&value.text);
                out.call_args(&value.prefix);
                out.call_args(&pylit::dumps(&convert(text, typed)));
            }
        }
    }
}

/// Converts a parameter value by its declared type, as vLLM's qwen3 parsers do.
pub(crate) fn convert(text: &str, typed: &ParamType) -> Value {
    let lower = text.to_lowercase();
    let is_null = lower == "null" || lower == "none";
    if typed.nullable && is_null {
        return Value::Null;
    }
    if typed.is_string() {
        return Value::String(text.to_owned());
    }
    if is_null {
        return Value::Null;
    }
    let name = typed.name.as_str();
    let as_text = || Value::String(text.to_owned());
    if ["int", "uint", "long", "short", "unsigned"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| as_text());
    }
    if name.starts_with("num") || name.starts_with("float") {
        return match text.trim().parse::<f64>() {
            Ok(float) if float.is_finite() && float.fract() == 0.0 && float.abs() < 9.0e15 => {
                Value::from(float as i64)
            }
            Ok(float) => serde_json::Number::from_f64(float)
                .map(Value::Number)
                .unwrap_or_else(as_text),
            Err(_) => as_text(),
        };
    }
    if matches!(name, "boolean" | "bool" | "binary") {
        return Value::Bool(lower.trim() == "true");
    }
    let container = matches!(name, "object" | "array" | "arr")
        || name.starts_with("dict")
        || name.starts_with("list");
    if container && let Ok(parsed) = serde_json::from_str::<Value>(text) {
        // A JSON string holding a Python repr: decode once more.
        if let Value::String(inner) = &parsed {
            return pylit::literal(inner).unwrap_or(parsed);
        }
        return parsed;
    }
    pylit::literal(text).unwrap_or_else(as_text)
}

impl Stage for QwenXml {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose => match CALL_STARTS.scan(rest, end) {
                Scan::Found { at, marker } => {
                    self.prose(&rest[..at], out);
                    if marker == 0 {
                        self.held = TOOL_CALL.to_owned();
                        self.mode = Mode::AfterToolCall;
                        Some(at + TOOL_CALL.len())
                    } else {
                        self.held = FUNCTION.to_owned();
                        self.name.clear();
                        self.mode = Mode::FunctionName;
                        Some(at + FUNCTION.len())
                    }
                }
                Scan::Partial { at } => {
                    self.prose(&rest[..at], out);
                    (at > 0).then_some(at)
                }
                Scan::Clear => {
                    self.prose(rest, out);
                    Some(rest.len())
                }
            },
            Mode::AfterToolCall => {
                let ws = leading_ws(rest);
                if ws > 0 {
                    self.held.push_str(&rest[..ws]);
                    self.mode = Mode::AfterToolCall;
                    return Some(ws);
                }
                match starts_with(rest, FUNCTION, end) {
                    Prefix::Yes => {
                        self.held.push_str(FUNCTION);
                        self.name.clear();
                        self.mode = Mode::FunctionName;
                        Some(FUNCTION.len())
                    }
                    Prefix::Undecided => {
                        self.mode = Mode::AfterToolCall;
                        None
                    }
                    Prefix::No => {
                        self.release(out);
                        Some(0)
                    }
                }
            }
            Mode::FunctionName => self.step_name(rest, end, out, true),
            Mode::ParamName => self.step_name(rest, end, out, false),
            Mode::InFunction => match FUNCTION_STOPS.scan(rest, end) {
                Scan::Found { at, marker: 0 } => {
                    self.name.clear();
                    self.mode = Mode::ParamName;
                    Some(at + PARAMETER.len())
                }
                Scan::Found { at, marker } => {
                    out.call_args("}");
                    self.mode = if marker == 1 {
                        Mode::AfterFunction
                    } else {
                        Mode::Prose
                    };
                    Some(at + FUNCTION_PARTS[marker].len())
                }
                Scan::Partial { at } => {
                    self.mode = Mode::InFunction;
                    (at > 0).then_some(at)
                }
                Scan::Clear => {
                    self.mode = Mode::InFunction;
                    Some(rest.len())
                }
            },
            Mode::Value => self.step_value(rest, end, out),
            Mode::AfterFunction => {
                let ws = leading_ws(rest);
                match starts_with(&rest[ws..], TOOL_CALL_END, end) {
                    Prefix::Yes => Some(ws + TOOL_CALL_END.len()),
                    Prefix::Undecided => {
                        self.mode = Mode::AfterFunction;
                        None
                    }
                    Prefix::No => Some(ws),
                }
            }
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose | Mode::AfterFunction => {}
            Mode::AfterToolCall | Mode::FunctionName => self.release(out),
            Mode::ParamName | Mode::InFunction => out.call_args("}"),
            Mode::Value => {
                if !self.value.started && self.value.typed.is_none() {
                    out.call_args(&self.value.prefix);
                    out.call_args("\"");
                }
                self.end_value(out);
                out.call_args("}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed(name: &str) -> ParamType {
        ParamType {
            name: name.to_owned(),
            nullable: false,
        }
    }

    #[test]
    fn converts_by_schema_type() {
        assert_eq!(convert("42", &typed("integer")), json!(42));
        assert_eq!(convert("x42", &typed("integer")), json!("x42"));
        assert_eq!(convert("3.0", &typed("number")), json!(3));
        assert_eq!(convert("2.5", &typed("float")), json!(2.5));
        assert_eq!(convert("True", &typed("boolean")), json!(true));
        assert_eq!(convert("{\"a\": 1}", &typed("object")), json!({"a": 1}));
        assert_eq!(convert("{'a': None}", &typed("object")), json!({"a": null}));
        assert_eq!(convert("null", &typed("integer")), Value::Null);
        assert_eq!(convert("null", &typed("string")), json!("null"));
    }
}
