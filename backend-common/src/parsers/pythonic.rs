//! Pythonic tool calls (`pythonic`, `llama4_pythonic`): the whole output is a Python list of
//! keyword calls, `[f(a=1), g(b='x')]`, optionally wrapped in `<|python_start|>...<|python_end|>`.
//!
//! Each call is emitted when its closing parenthesis arrives; a call whose values cannot be
//! converted is dropped without losing its siblings. Output that is not such a list is content.

use serde_json::Value;

use super::markers::{Prefix, leading_ws, starts_with};
use super::pylit;
use super::stream::{End, Sink, Stage};

const PYTHON_START: &str = "<|python_start|>";
const PYTHON_END: &str = "<|python_end|>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the list: whitespace and an optional `<|python_start|>`.
    Start {
        tag_seen: bool,
    },
    ItemOrEnd,
    Item,
    CommaOrEnd,
    /// After the list: whitespace and an optional `<|python_end|>` are dropped.
    After,
    Content,
}

/// Lexical state inside one call's text.
#[derive(Debug, Clone, Copy, Default)]
struct Lexer {
    depth: u32,
    quote: Option<u8>,
    escape: bool,
    opened: bool,
}

/// Streaming pythonic-call parser.
pub(crate) struct Pythonic {
    mode: Mode,
    lexer: Lexer,
    /// Text of the list so far, released as content if no call comes out of it; once a call
    /// has, only the text of the current item.
    held: String,
    /// Where the current item starts in `held`: items are read in place rather than copied
    /// once more.
    item_start: usize,
    calls: usize,
}

impl Pythonic {
    pub(crate) fn new() -> Pythonic {
        Pythonic {
            mode: Mode::Start { tag_seen: false },
            lexer: Lexer::default(),
            held: String::new(),
            item_start: 0,
            calls: 0,
        }
    }

    fn hold(&mut self, text: &str) {
        self.held.push_str(text);
    }

    /// Starts reading a list item.
    fn start_item(&mut self) {
        if self.calls > 0 {
            // Nothing before the item can be released any more.
            self.held.clear();
        }
        self.item_start = self.held.len();
        self.lexer = Lexer::default();
        self.mode = Mode::Item;
    }

    /// Not a call list: what was held is content, and so is everything after it.
    fn give_up(&mut self, out: &mut dyn Sink) {
        if self.calls == 0 {
            out.content(&std::mem::take(&mut self.held));
            self.mode = Mode::Content;
        } else {
            self.mode = Mode::After;
        }
    }

    fn emit_item(&mut self, out: &mut dyn Sink) {
        let item = self.held.get(self.item_start..).unwrap_or_default();
        if let Some((name, arguments)) = pylit::call(item) {
            self.calls += 1;
            self.held.clear();
            out.call_start(&name, None);
            out.call_args(&pylit::dumps(&Value::Object(arguments)));
        }
    }

    fn step_item(&mut self, rest: &str, out: &mut dyn Sink) -> Option<usize> {
        let mut lexer = self.lexer;
        for (i, byte) in rest.bytes().enumerate() {
            if let Some(quote) = lexer.quote {
                if lexer.escape {
                    lexer.escape = false;
                } else if byte == b'\\' {
                    lexer.escape = true;
                } else if byte == quote {
                    lexer.quote = None;
                }
                continue;
            }
            match byte {
                b'\'' | b'"' => lexer.quote = Some(byte),
                b'(' | b'[' | b'{' => {
                    lexer.opened = true;
                    lexer.depth += 1;
                }
                b')' | b']' | b'}' if lexer.depth > 0 => {
                    lexer.depth -= 1;
                    if lexer.depth == 0 {
                        let used = i + 1;
                        self.hold(&rest[..used]);
                        self.emit_item(out);
                        self.mode = Mode::CommaOrEnd;
                        return Some(used);
                    }
                }
                // Before its parenthesis a call is a (dotted) name; anything else ends the list.
                _ if !(lexer.opened
                    || byte.is_ascii_alphanumeric()
                    || matches!(byte, b'_' | b'.' | b' ')
                    || byte >= 0x80) =>
                {
                    self.hold(&rest[..i]);
                    self.give_up(out);
                    return Some(i);
                }
                _ => {}
            }
        }
        self.lexer = lexer;
        self.hold(rest);
        Some(rest.len())
    }
}

impl Stage for Pythonic {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let first = *rest.as_bytes().first()?;
        match self.mode {
            Mode::Start { tag_seen } => {
                let ws = leading_ws(rest);
                if ws > 0 {
                    self.hold(&rest[..ws]);
                    return Some(ws);
                }
                if !tag_seen {
                    match starts_with(rest, PYTHON_START, end) {
                        Prefix::Yes => {
                            self.hold(PYTHON_START);
                            self.mode = Mode::Start { tag_seen: true };
                            return Some(PYTHON_START.len());
                        }
                        Prefix::Undecided => return None,
                        Prefix::No => {}
                    }
                }
                if first == b'[' {
                    self.hold("[");
                    self.mode = Mode::ItemOrEnd;
                    Some(1)
                } else {
                    self.give_up(out);
                    Some(0)
                }
            }
            Mode::ItemOrEnd | Mode::CommaOrEnd if first.is_ascii_whitespace() => {
                let ws = leading_ws(rest);
                self.hold(&rest[..ws]);
                Some(ws)
            }
            Mode::ItemOrEnd | Mode::CommaOrEnd if first == b']' => {
                self.hold("]");
                if self.calls == 0 {
                    self.give_up(out);
                } else {
                    self.mode = Mode::After;
                }
                Some(1)
            }
            Mode::CommaOrEnd if first == b',' => {
                self.hold(",");
                self.start_item();
                Some(1)
            }
            Mode::CommaOrEnd => {
                self.give_up(out);
                Some(0)
            }
            Mode::ItemOrEnd => {
                self.start_item();
                Some(0)
            }
            Mode::Item => self.step_item(rest, out),
            Mode::After => {
                let ws = leading_ws(rest);
                if ws > 0 {
                    return Some(ws);
                }
                match starts_with(rest, PYTHON_END, end) {
                    Prefix::Yes => Some(PYTHON_END.len()),
                    Prefix::Undecided => None,
                    Prefix::No => {
                        self.mode = Mode::Content;
                        Some(0)
                    }
                }
            }
            Mode::Content => {
                out.content(rest);
                Some(rest.len())
            }
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        if !matches!(self.mode, Mode::After | Mode::Content) && self.calls == 0 {
            out.content(&std::mem::take(&mut self.held));
        }
    }
}
