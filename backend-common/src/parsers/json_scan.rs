//! Incremental validating scanner for one JSON value: it is fed text piece by piece and says where
//! the value ends, or where it stops being JSON, without ever re-reading earlier pieces. Also the
//! reverse direction for text: escaping it into a JSON string.

/// Outcome of feeding one piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// All of the piece belongs to the value, which is not finished yet.
    More,
    /// The value ends after this many bytes of the piece.
    Done(usize),
    /// The byte at this offset of the piece cannot continue the value.
    Invalid(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Number {
    /// The number may end here.
    fn is_complete(self) -> bool {
        matches!(
            self,
            Number::Zero | Number::Int | Number::Frac | Number::ExpDigits
        )
    }

    fn next(self, byte: u8) -> Option<Number> {
        use Number::*;
        match (self, byte) {
            (Minus, b'0') => Some(Zero),
            (Minus, b'1'..=b'9') => Some(Int),
            (Int, b'0'..=b'9') => Some(Int),
            (Zero | Int, b'.') => Some(Dot),
            (Dot | Frac, b'0'..=b'9') => Some(Frac),
            (Zero | Int | Frac, b'e' | b'E') => Some(Exp),
            (Exp, b'+' | b'-') => Some(ExpSign),
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => Some(ExpDigits),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a value.
    Value,
    /// Just after `[`: a value or `]`.
    ArrayFirst,
    /// Just after `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or the closer.
    After,
    /// Inside a string; `key` tells whether it is an object key.
    Str {
        key: bool,
        escape: Escape,
    },
    Number(Number),
    /// Inside `true`, `false` or `null`, `matched` bytes in.
    Literal {
        word: &'static [u8],
        matched: usize,
    },
    /// The value is complete.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    /// Inside `\uXXXX`, this many hex digits still to come.
    Unicode(u8),
}

/// Scanner state for one JSON value.
#[derive(Debug, Clone)]
pub(crate) struct JsonScanner {
    stack: Vec<u8>,
    state: State,
}

impl Default for JsonScanner {
    fn default() -> Self {
        JsonScanner {
            stack: Vec::new(),
            state: State::Value,
        }
    }
}

fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonScanner {
    /// A scanner expecting a fresh value (leading whitespace allowed).
    pub(crate) fn new() -> JsonScanner {
        JsonScanner::default()
    }

    /// True when nothing but whitespace has been fed.
    pub(crate) fn is_untouched(&self) -> bool {
        self.state == State::Value && self.stack.is_empty()
    }

    /// Feeds the next piece of text.
    pub(crate) fn feed(&mut self, text: &str) -> Feed {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            match self.state {
                State::Finished => return Feed::Done(i),
                State::Value | State::ArrayFirst => {
                    if is_ws(byte) {
                    } else if byte == b']' && self.state == State::ArrayFirst {
                        self.stack.pop();
                        if self.value_done() {
                            return Feed::Done(i + 1);
                        }
                    } else if !self.begin_value(byte) {
                        return Feed::Invalid(i);
                    }
                }
                State::ObjectFirst | State::Key => {
                    if is_ws(byte) {
                    } else if byte == b'"' {
                        self.state = State::Str {
                            key: true,
                            escape: Escape::None,
                        };
                    } else if byte == b'}' && self.state == State::ObjectFirst {
                        self.stack.pop();
                        if self.value_done() {
                            return Feed::Done(i + 1);
                        }
                    } else {
                        return Feed::Invalid(i);
                    }
                }
                State::Colon => {
                    if byte == b':' {
                        self.state = State::Value;
                    } else if !is_ws(byte) {
                        return Feed::Invalid(i);
                    }
                }
                State::After => match (byte, self.stack.last()) {
                    (b',', Some(b'{')) => self.state = State::Key,
                    (b',', Some(_)) => self.state = State::Value,
                    (b'}', Some(b'{')) | (b']', Some(b'[')) => {
                        self.stack.pop();
                        if self.value_done() {
                            return Feed::Done(i + 1);
                        }
                    }
                    _ if is_ws(byte) => {}
                    _ => return Feed::Invalid(i),
                },
                State::Str { key, escape } => match escape {
                    Escape::None => {
                        if byte == b'"' {
                            if key {
                                self.state = State::Colon;
                            } else if self.value_done() {
                                return Feed::Done(i + 1);
                            }
                        } else if byte == b'\\' {
                            self.state = State::Str {
                                key,
                                escape: Escape::Backslash,
                            };
                        } else if byte < 0x20 {
                            return Feed::Invalid(i);
                        }
                    }
                    Escape::Backslash => {
                        let escape = match byte {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                            b'u' => Escape::Unicode(4),
                            _ => return Feed::Invalid(i),
                        };
                        self.state = State::Str { key, escape };
                    }
                    Escape::Unicode(left) => {
                        if !byte.is_ascii_hexdigit() {
                            return Feed::Invalid(i);
                        }
                        let escape = if left > 1 {
                            Escape::Unicode(left - 1)
                        } else {
                            Escape::None
                        };
                        self.state = State::Str { key, escape };
                    }
                },
                State::Number(number) => match number.next(byte) {
                    Some(next) => self.state = State::Number(next),
                    None if number.is_complete() => {
                        // The byte belongs to whatever follows the number: look at it again.
                        if self.value_done() {
                            return Feed::Done(i);
                        }
                        continue;
                    }
                    None => return Feed::Invalid(i),
                },
                State::Literal { word, matched } => {
                    if word.get(matched) != Some(&byte) {
                        return Feed::Invalid(i);
                    }
                    if matched + 1 == word.len() {
                        if self.value_done() {
                            return Feed::Done(i + 1);
                        }
                    } else {
                        self.state = State::Literal {
                            word,
                            matched: matched + 1,
                        };
                    }
                }
            }
            i += 1;
        }
        Feed::More
    }

    /// Starts a value at `byte`; false when no value starts with it.
    fn begin_value(&mut self, byte: u8) -> bool {
        self.state = match byte {
            b'"' => State::Str {
                key: false,
                escape: Escape::None,
            },
            b'{' => {
                self.stack.push(b'{');
                State::ObjectFirst
            }
            b'[' => {
                self.stack.push(b'[');
                State::ArrayFirst
            }
            b'-' => State::Number(Number::Minus),
            b'0' => State::Number(Number::Zero),
            b'1'..=b'9' => State::Number(Number::Int),
            b't' => State::Literal {
                word: b"true",
                matched: 1,
            },
            b'f' => State::Literal {
                word: b"false",
                matched: 1,
            },
            b'n' => State::Literal {
                word: b"null",
                matched: 1,
            },
            _ => return false,
        };
        true
    }

    /// Marks a value complete; true when it was the top-level value.
    fn value_done(&mut self) -> bool {
        if self.stack.is_empty() {
            self.state = State::Finished;
            true
        } else {
            self.state = State::After;
            false
        }
    }
}

/// Appends `text` to `out` as the inside of a JSON string, escaped exactly as `serde_json` writes
/// it: `"`, `\` and control characters escaped, everything else verbatim.
///
/// Writing into a caller's buffer lets streamed text be escaped piece by piece without allocating.
pub(crate) fn push_string_body(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &byte) in text.as_bytes().iter().enumerate() {
        // `None`: a control character without a short form, written as `\u00XX`.
        let short = match byte {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0x00..=0x1f => None,
            _ => continue,
        };
        // `byte` is ASCII, so both `i` and `i + 1` are char boundaries.
        out.push_str(&text[start..i]);
        match short {
            Some(escape) => out.push_str(escape),
            None => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_bodies_are_escaped_like_serde_json() {
        let mut text: String = (0u8..0x80).map(char::from).collect();
        text.push_str("é\u{2028}😀\u{7f}");
        let quoted = serde_json::Value::String(text.clone()).to_string();
        let mut body = String::from("kept");
        push_string_body(&mut body, &text);
        assert_eq!(body, format!("kept{}", &quoted[1..quoted.len() - 1]));
    }

    fn scan_pieces(pieces: &[&str]) -> Vec<Feed> {
        let mut scanner = JsonScanner::new();
        pieces.iter().map(|piece| scanner.feed(piece)).collect()
    }

    #[test]
    fn object_end_is_found_across_pieces() {
        let feeds = scan_pieces(&["{\"a\": [1, \"}\\\"\"", "], \"b\": {}}", " tail"]);
        assert_eq!(feeds, vec![Feed::More, Feed::Done(11), Feed::Done(0)]);
    }

    #[test]
    fn number_ends_at_the_first_byte_after_it() {
        let mut scanner = JsonScanner::new();
        assert_eq!(scanner.feed("-12.5e"), Feed::More);
        assert_eq!(scanner.feed("3"), Feed::More);
        assert_eq!(scanner.feed("}"), Feed::Done(0));
        assert_eq!(JsonScanner::new().feed("1.}"), Feed::Invalid(2));
    }

    #[test]
    fn rejects_prose_in_braces() {
        assert_eq!(scan_pieces(&["{searchTool}"]), vec![Feed::Invalid(1)]);
        assert_eq!(scan_pieces(&["[1,]"]), vec![Feed::Invalid(3)]);
        assert_eq!(scan_pieces(&["\"a\nb\""]), vec![Feed::Invalid(2)]);
    }

    #[test]
    fn accepts_literals_and_unicode_escapes() {
        assert_eq!(
            scan_pieces(&["[true, false, null, \"\\u00e9\"]"]),
            vec![Feed::Done(29)]
        );
    }
}
