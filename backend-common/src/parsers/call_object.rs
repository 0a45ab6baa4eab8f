//! Incremental parser of one JSON tool-call object, `{"name": ..., "arguments": ...}`.
//!
//! The arguments value is gathered as raw text, piece by piece, as the model wrote it. `parameters` is accepted as an alias of `arguments`.

use super::json_scan::{Feed, JsonScanner};

/// Outcome of feeding one piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectFeed {
    /// All of the piece was used; the object is not finished.
    More,
    /// The object ends after this many bytes of the piece.
    Done(usize),
    /// The byte at this offset is not valid here; text before it was used.
    Invalid(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Arguments,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Key { first: bool },
    InKey { escape: bool },
    Colon,
    Value,
    InValue(Field),
    After,
    Done,
}

/// State of one call object being parsed.
#[derive(Debug, Clone)]
pub(crate) struct CallObject {
    state: State,
    key: String,
    value: JsonScanner,
    name_text: String,
    name: Option<String>,
    arguments: String,
    arguments_seen: bool,
}

impl Default for CallObject {
    fn default() -> Self {
        CallObject {
            state: State::Open,
            key: String::new(),
            value: JsonScanner::new(),
            name_text: String::new(),
            name: None,
            arguments: String::new(),
            arguments_seen: false,
        }
    }
}

fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

impl CallObject {
    /// A parser expecting `{` (after optional whitespace).
    pub(crate) fn new() -> CallObject {
        CallObject::default()
    }

    /// The function name, once its string is complete.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// True once an `arguments`/`parameters` value has started.
    pub(crate) fn arguments_seen(&self) -> bool {
        self.arguments_seen
    }

    /// Takes the arguments text gathered since the previous call.
    pub(crate) fn take_arguments(&mut self) -> String {
        std::mem::take(&mut self.arguments)
    }

    /// Feeds the next piece of text.
    pub(crate) fn feed(&mut self, text: &str) -> ObjectFeed {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            match self.state {
                State::Done => return ObjectFeed::Done(i),
                State::Open => match byte {
                    b'{' => self.state = State::Key { first: true },
                    _ if is_ws(byte) => {}
                    _ => return ObjectFeed::Invalid(i),
                },
                State::Key { first } => match byte {
                    b'"' => {
                        self.key.clear();
                        self.key.push('"');
                        self.state = State::InKey { escape: false };
                    }
                    b'}' if first => {
                        self.state = State::Done;
                        return ObjectFeed::Done(i + 1);
                    }
                    _ if is_ws(byte) => {}
                    _ => return ObjectFeed::Invalid(i),
                },
                State::InKey { escape } => {
                    let rest = &text[i..];
                    match string_end(rest, escape) {
                        Ok(end) => {
                            self.key.push_str(&rest[..end]);
                            self.state = State::Colon;
                            i += end;
                            continue;
                        }
                        Err(escape) => {
                            self.key.push_str(rest);
                            self.state = State::InKey { escape };
                            return ObjectFeed::More;
                        }
                    }
                }
                State::Colon => match byte {
                    b':' => self.state = State::Value,
                    _ if is_ws(byte) => {}
                    _ => return ObjectFeed::Invalid(i),
                },
                State::Value => {
                    if !is_ws(byte) {
                        let field = self.field_for(byte);
                        self.value = JsonScanner::new();
                        self.state = State::InValue(field);
                        continue;
                    }
                }
                State::InValue(field) => {
                    let rest = &text[i..];
                    match self.value.feed(rest) {
                        Feed::More => {
                            self.keep_value(field, rest);
                            return ObjectFeed::More;
                        }
                        Feed::Done(used) => {
                            self.keep_value(field, &rest[..used]);
                            self.value_finished(field);
                            self.state = State::After;
                            i += used;
                            continue;
                        }
                        Feed::Invalid(at) => {
                            self.keep_value(field, &rest[..at]);
                            return ObjectFeed::Invalid(i + at);
                        }
                    }
                }
                State::After => match byte {
                    b',' => self.state = State::Key { first: false },
                    b'}' => {
                        self.state = State::Done;
                        return ObjectFeed::Done(i + 1);
                    }
                    _ if is_ws(byte) => {}
                    _ => return ObjectFeed::Invalid(i),
                },
            }
            i += 1;
        }
        ObjectFeed::More
    }

    /// Decides what the value starting with `first` is, from the key before it.
    fn field_for(&mut self, first: u8) -> Field {
        let key: Option<String> = serde_json::from_str(&self.key).ok();
        match key.as_deref() {
            Some("name") if self.name.is_none() && first == b'"' => {
                self.name_text.clear();
                Field::Name
            }
            Some("arguments" | "parameters") if !self.arguments_seen => {
                self.arguments_seen = true;
                Field::Arguments
            }
            _ => Field::Other,
        }
    }

    fn keep_value(&mut self, field: Field, text: &str) {
        match field {
            Field::Name => self.name_text.push_str(text),
            Field::Arguments => self.arguments.push_str(text),
            Field::Other => {}
        }
    }

    fn value_finished(&mut self, field: Field) {
        if field == Field::Name {
            self.name = serde_json::from_str(&self.name_text).ok();
        }
    }
}

/// Finds the end of a JSON string body (just after the closing quote) in `text`, given whether
/// the previous piece ended inside an escape; on no end, returns the escape state at the end.
fn string_end(text: &str, mut escape: bool) -> Result<usize, bool> {
    for (i, byte) in text.bytes().enumerate() {
        if escape {
            escape = false;
        } else if byte == b'\\' {
            escape = true;
        } else if byte == b'"' {
            return Ok(i + 1);
        }
    }
    Err(escape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_arguments_and_reads_name_in_any_order() {
        let mut object = CallObject::new();
        assert_eq!(object.feed("{\"arguments\": {\"a\""), ObjectFeed::More);
        assert_eq!(object.name(), None);
        assert_eq!(object.take_arguments(), "{\"a\"");
        assert_eq!(object.feed(": 1}, \"na"), ObjectFeed::More);
        assert_eq!(object.feed("me\": \"f\\\"x\"} tail"), ObjectFeed::Done(12));
        assert_eq!(object.name(), Some("f\"x"));
        assert_eq!(object.take_arguments(), ": 1}");
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(CallObject::new().feed("  [1]"), ObjectFeed::Invalid(2));
        assert_eq!(CallObject::new().feed("{name: 1}"), ObjectFeed::Invalid(1));
    }

    #[test]
    fn primitive_arguments_end_at_the_delimiter() {
        let mut object = CallObject::new();
        assert_eq!(
            object.feed("{\"parameters\": 12, \"name\": \"n\"}"),
            ObjectFeed::Done(31)
        );
        assert_eq!(object.take_arguments(), "12");
        assert!(object.arguments_seen());
    }
}
