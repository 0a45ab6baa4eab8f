//! Python literal syntax to JSON: the values of pythonic tool calls (`f(a=1, b='x')`) and the
//! `ast.literal_eval` fallback that XML-style parsers apply to untyped argument values.

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is rejected rather than risking the stack.
const MAX_DEPTH: usize = 128;

struct Reader<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn identifier(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let ident = &rest[..len];
        if ident.is_empty() || ident.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        self.pos += len;
        Some(ident)
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_ws();
        if self.depth >= MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            '\'' | '"' => self.string().map(Value::String),
            '[' => self.sequence('[', ']'),
            '(' => self.sequence('(', ')'),
            '{' => self.dict(),
            '-' | '+' | '.' | '0'..='9' => self.number(),
            'r' | 'R' | 'u' | 'U' if self.rest()[1..].starts_with(['\'', '"']) => {
                self.string().map(Value::String)
            }
            _ => match self.identifier()? {
                "True" => Some(Value::Bool(true)),
                "False" => Some(Value::Bool(false)),
                "None" => Some(Value::Null),
                _ => None,
            },
        }
    }

    fn sequence(&mut self, open: char, close: char) -> Option<Value> {
        self.eat(open);
        self.depth += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                break;
            }
            items.push(self.value()?);
            if !self.eat(',') {
                if !self.eat(close) {
                    return None;
                }
                break;
            }
        }
        self.depth -= 1;
        Some(Value::Array(items))
    }

    fn dict(&mut self) -> Option<Value> {
        self.eat('{');
        self.depth += 1;
        let mut map = Map::new();
        loop {
            if self.eat('}') {
                break;
            }
            let key = match self.value()? {
                Value::String(s) => s,
                // Python allows any hashable key; JSON (like json.dumps) wants text.
                other @ (Value::Number(_) | Value::Bool(_) | Value::Null) => other.to_string(),
                _ => return None,
            };
            if !self.eat(':') {
                return None;
            }
            let value = self.value()?;
            map.insert(key, value);
            if !self.eat(',') {
                if !self.eat('}') {
                    return None;
                }
                break;
            }
        }
        self.depth -= 1;
        Some(Value::Object(map))
    }

    fn number(&mut self) -> Option<Value> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-' | '_')))
            .unwrap_or(rest.len());
        let literal: String = rest[..len].chars().filter(|&c| c != '_').collect();
        self.pos += len;
        let literal = literal.strip_prefix('+').unwrap_or(&literal);
        if let Ok(int) = literal.parse::<i64>() {
            return Some(Value::Number(int.into()));
        }
        let float: f64 = literal.parse().ok()?;
        Number::from_f64(float).map(Value::Number)
    }

    fn string(&mut self) -> Option<String> {
        let rest = self.rest();
        let mut raw = false;
        let mut start = 0;
        match rest.as_bytes().first()? {
            b'r' | b'R' => {
                raw = true;
                start = 1;
            }
            b'u' | b'U' => start = 1,
            _ => {}
        }
        let body = &rest[start..];
        let quote = body.chars().next()?;
        let triple: String = std::iter::repeat_n(quote, 3).collect();
        let (delimiter, open_len) = if body.starts_with(&triple) {
            (triple.as_str(), 3)
        } else {
            (&triple[..1], 1)
        };
        let mut out = String::new();
        let mut chars = body[open_len..].char_indices();
        while let Some((offset, c)) = chars.next() {
            // The delimiter is the quote repeated: only a quote can start it.
            if c == quote && body[open_len + offset..].starts_with(delimiter) {
                self.pos += start + open_len + offset + delimiter.len();
                return Some(out);
            }
            if c != '\\' {
                if c == '\n' && delimiter.len() == 1 {
                    return None;
                }
                out.push(c);
                continue;
            }
            let (_, escaped) = chars.next()?;
            if raw {
                out.push('\\');
                out.push(escaped);
                continue;
            }
            match escaped {
                '\n' => {}
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'v' => out.push('\u{b}'),
                '\\' | '\'' | '"' => out.push(escaped),
                'x' | 'u' | 'U' => {
                    let digits = match escaped {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let mut code = 0u32;
                    for _ in 0..digits {
                        let (_, d) = chars.next()?;
                        code = code * 16 + d.to_digit(16)?;
                    }
                    out.push(char::from_u32(code)?);
                }
                // Python keeps unknown escapes verbatim.
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
        None
    }
}

/// Parses a whole Python literal (`'x'`, `3`, `[1, {'a': None}]`, ...) into JSON.
pub(crate) fn literal(text: &str) -> Option<Value> {
    let mut reader = Reader {
        text,
        pos: 0,
        depth: 0,
    };
    let value = reader.value()?;
    reader.skip_ws();
    reader.rest().is_empty().then_some(value)
}

/// Parses a keyword-argument call `name(key=value, ...)` into its name and JSON arguments.
pub(crate) fn call(text: &str) -> Option<(String, Map<String, Value>)> {
    let mut reader = Reader {
        text,
        pos: 0,
        depth: 0,
    };
    let mut name = reader.identifier()?.to_owned();
    // Dotted names (`functions.get`) are kept whole.
    while reader.rest().starts_with('.') {
        reader.pos += 1;
        name.push('.');
        name.push_str(reader.identifier()?);
    }
    if !reader.eat('(') {
        return None;
    }
    let mut arguments = Map::new();
    loop {
        if reader.eat(')') {
            break;
        }
        let key = reader.identifier()?.to_owned();
        if !reader.eat('=') {
            return None;
        }
        let value = reader.value()?;
        arguments.insert(key, value);
        if !reader.eat(',') {
            if !reader.eat(')') {
                return None;
            }
            break;
        }
    }
    reader.skip_ws();
    reader.rest().is_empty().then_some((name, arguments))
}

/// `serde_json` formatter with Python `json.dumps` separators (`", "` and `": "`).
struct DumpsFormatter;

impl Formatter for DumpsFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Serialises like Python's `json.dumps(value, ensure_ascii=False)`, the layout vLLM produces.
pub(crate) fn dumps(value: &Value) -> String {
    let mut bytes = Vec::new();
    let mut serializer = Serializer::with_formatter(&mut bytes, DumpsFormatter);
    // Serialising a `Value` into memory cannot fail, and its output is UTF-8.
    match value.serialize(&mut serializer) {
        Ok(()) => String::from_utf8(bytes).unwrap_or_else(|_| value.to_string()),
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_python_values() {
        assert_eq!(
            literal("{'a': [1, -2.5, True, None], 'b': (\"x\",), 3: 'y'}"),
            Some(json!({"a": [1, -2.5, true, null], "b": ["x"], "3": "y"}))
        );
        assert_eq!(literal(r"'Martha\'s \x41'"), Some(json!("Martha's A")));
        assert_eq!(literal("b'z'"), None);
        assert_eq!(literal("2025-08-01"), None);
    }

    #[test]
    fn dumps_uses_python_separators() {
        assert_eq!(
            dumps(&json!({"a": [1, 2], "b": "é"})),
            "{\"a\": [1, 2], \"b\": \"é\"}"
        );
    }

    #[test]
    fn parses_keyword_calls() {
        let (name, arguments) = call("get_weather(city='LA', days=3,)").expect("a call");
        assert_eq!(name, "get_weather");
        assert_eq!(Value::Object(arguments), json!({"city": "LA", "days": 3}));
        assert_eq!(call("f(1)"), None);
        assert_eq!(call("f(x=1) tail"), None);
    }
}
