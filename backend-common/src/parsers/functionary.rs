//! Functionary v3.2 (`llamacpp_functionary_v3_2`, llama.cpp's format): the output is a sequence of
//! `NAME\n BODY` segments, the later ones introduced by `>>>`. `all` is the content channel,
//! `python` carries raw code (a `python` call with `{"code": ...}`), any other name is a call with
//! JSON arguments.

use super::json_scan::{Feed, JsonScanner, push_string_body};
use super::markers::{Markers, Scan, leading_ws};
use super::stream::{End, Sink, Stage};

const SEGMENT: &str = ">>>";
// The segment marker as a marker set, built at compile time.
const SEGMENTS: Markers = Markers::new(&[SEGMENT]);

/// Longest accepted segment name.
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone)]
enum Mode {
    Header(String),
    Content,
    Arguments(JsonScanner),
    /// Arguments that are not JSON, passed through to the next segment.
    RawArguments,
    Code,
    /// After a call's arguments: anything up to the next segment is dropped.
    AfterCall,
}

/// Streaming Functionary v3.2 parser.
pub(crate) struct Functionary {
    mode: Mode,
    /// Scratch buffer for escaping code, reused across pieces.
    escaped: String,
}

impl Functionary {
    pub(crate) fn new() -> Functionary {
        Functionary {
            mode: Mode::Header(String::new()),
            escaped: String::new(),
        }
    }
}

impl Stage for Functionary {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        let (text, used, segment_end) = match SEGMENTS.scan(rest, end) {
            Scan::Found { at, .. } => (at, at + SEGMENT.len(), true),
            Scan::Partial { at } => (at, at, false),
            Scan::Clear => (rest.len(), rest.len(), false),
        };
        let after_segment = || Mode::Header(String::new());
        match std::mem::replace(&mut self.mode, Mode::Content) {
            Mode::Header(mut name) => {
                let line_end = rest.find('\n');
                let line = &rest[..line_end.unwrap_or(rest.len())];
                let valid = line
                    .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
                    .unwrap_or(line.len());
                name.push_str(&line[..valid]);
                if valid < line.len() || name.len() > MAX_NAME_LEN {
                    // Not a segment header: plain text from here on.
                    out.content(&name);
                    return Some(valid);
                }
                let Some(line_end) = line_end else {
                    self.mode = Mode::Header(name);
                    return Some(line.len());
                };
                self.mode = match name.as_str() {
                    "all" | "" => Mode::Content,
                    "python" => {
                        out.call_start("python", None);
                        out.call_args("{\"code\": \"");
                        Mode::Code
                    }
                    _ => {
                        out.call_start(&name, None);
                        Mode::Arguments(JsonScanner::new())
                    }
                };
                Some(line_end + 1)
            }
            Mode::Content => {
                out.content(&rest[..text]);
                self.mode = if segment_end {
                    after_segment()
                } else {
                    Mode::Content
                };
                (used > 0).then_some(used)
            }
            Mode::Code => {
                self.escaped.clear();
                push_string_body(&mut self.escaped, &rest[..text]);
                out.call_args(&self.escaped);
                self.mode = if segment_end {
                    out.call_args("\"}");
                    after_segment()
                } else {
                    Mode::Code
                };
                (used > 0).then_some(used)
            }
            Mode::Arguments(mut scanner) => {
                if scanner.is_untouched() {
                    let ws = leading_ws(rest);
                    if ws > 0 {
                        self.mode = Mode::Arguments(scanner);
                        return Some(ws);
                    }
                }
                let (taken, next) = match scanner.feed(rest) {
                    Feed::More => (rest.len(), Mode::Arguments(scanner)),
                    Feed::Done(n) => (n, Mode::AfterCall),
                    Feed::Invalid(n) => (n, Mode::RawArguments),
                };
                out.call_args(&rest[..taken]);
                self.mode = next;
                Some(taken)
            }
            Mode::RawArguments => {
                out.call_args(&rest[..text]);
                self.mode = if segment_end {
                    after_segment()
                } else {
                    Mode::RawArguments
                };
                (used > 0).then_some(used)
            }
            Mode::AfterCall => {
                self.mode = if segment_end {
                    after_segment()
                } else {
                    Mode::AfterCall
                };
                (used > 0).then_some(used)
            }
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        match std::mem::replace(&mut self.mode, Mode::Content) {
            Mode::Header(name) => out.content(&name),
            Mode::Code => out.call_args("\"}"),
            Mode::Arguments(scanner) if scanner.is_untouched() => out.call_args("{}"),
            _ => {}
        }
    }
}
