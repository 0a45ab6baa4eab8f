//! Kimi K2 tool calls (`kimi_k2`):
//! `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX <|tool_call_argument_begin|>ARGS<|tool_call_end|>...<|tool_calls_section_end|>`.
//!
//! The model's own id (`functions.NAME:IDX`) is the call id; a call whose id lacks `:IDX` is
//! skipped. Arguments pass through verbatim (trimmed), even when they are not valid JSON.

use super::markers::{Markers, Scan, leading_ws};
use super::stream::{End, Sink, Stage};

const SECTION_BEGIN: [&str; 2] = [
    "<|tool_calls_section_begin|>",
    "<|tool_call_section_begin|>",
];
const SECTION_END: &str = "<|tool_calls_section_end|>";
const CALL_BEGIN: &str = "<|tool_call_begin|>";
const ARGUMENT_BEGIN: &str = "<|tool_call_argument_begin|>";
const CALL_END: &str = "<|tool_call_end|>";

// What each mode looks for, as marker sets built at compile time.
const PROSE_STOPS: Markers = Markers::new(&SECTION_BEGIN);
const SECTION_STOPS: Markers = Markers::new(&[CALL_BEGIN, SECTION_END]);
const ID_STOPS: Markers = Markers::new(&[ARGUMENT_BEGIN, CALL_END]);
const ARGUMENT_STOPS: Markers = Markers::new(&[CALL_END, SECTION_END]);
const SKIP_STOPS: Markers = Markers::new(&[CALL_END]);

/// Longest accepted call id.
const MAX_ID_LEN: usize = 256;

/// Where the parser is; the id and whitespace being gathered live in [`Kimi`], so that the mode
/// is a plain value to switch on for every piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Prose,
    Section,
    /// A call id, gathered in [`Kimi::id`].
    Id,
    /// Arguments; `started` once past leading whitespace.
    Arguments {
        started: bool,
    },
    /// A call with an invalid id, skipped to its end.
    Skip,
}

/// Streaming Kimi K2 tool-call parser.
pub(crate) struct Kimi {
    mode: Mode,
    section_seen: bool,
    /// The call id read so far (`Mode::Id`).
    id: String,
    /// Trailing whitespace of the arguments, held back until more arguments follow it.
    ws: String,
}

/// The function name in a call id `functions.NAME:IDX`, if the id is well formed.
fn name_from_id(id: &str) -> Option<&str> {
    let (head, index) = id.rsplit_once(':')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let head = head.split(':').next().unwrap_or(head);
    let name = head.rsplit('.').next().unwrap_or(head);
    (!name.is_empty()).then_some(name)
}

impl Kimi {
    pub(crate) fn new() -> Kimi {
        Kimi {
            mode: Mode::Prose,
            section_seen: false,
            id: String::new(),
            ws: String::new(),
        }
    }

    /// Scans for `markers`; returns (text before, bytes used, marker index if found).
    fn find(rest: &str, markers: &Markers, end: End) -> (usize, usize, Option<usize>) {
        match markers.scan(rest, end) {
            Scan::Found { at, marker } => (at, at + markers.list()[marker].len(), Some(marker)),
            Scan::Partial { at } => (at, at, None),
            Scan::Clear => (rest.len(), rest.len(), None),
        }
    }
}

impl Stage for Kimi {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        let (used, next) = match self.mode {
            Mode::Prose => {
                let (text, used, found) = Kimi::find(rest, &PROSE_STOPS, end);
                if !self.section_seen {
                    out.content(&rest[..text]);
                }
                if found.is_some() {
                    self.section_seen = true;
                    (used, Mode::Section)
                } else {
                    (used, Mode::Prose)
                }
            }
            Mode::Section => {
                let (_, used, found) = Kimi::find(rest, &SECTION_STOPS, end);
                match found {
                    Some(0) => {
                        self.id.clear();
                        (used, Mode::Id)
                    }
                    Some(_) => (used, Mode::Prose),
                    None => (used, Mode::Section),
                }
            }
            Mode::Id => {
                let (text, used, found) = Kimi::find(rest, &ID_STOPS, end);
                self.id.push_str(&rest[..text]);
                match found {
                    _ if self.id.len() > MAX_ID_LEN => (used, Mode::Skip),
                    None => (used, Mode::Id),
                    Some(marker) => {
                        let id = self.id.trim();
                        match name_from_id(id) {
                            Some(name) if marker == 0 => {
                                out.call_start(name, Some(id));
                                self.ws.clear();
                                (used, Mode::Arguments { started: false })
                            }
                            Some(name) => {
                                out.call_start(name, Some(id));
                                out.call_args("{}");
                                (used, Mode::Section)
                            }
                            None if marker == 0 => (used, Mode::Skip),
                            None => (used, Mode::Section),
                        }
                    }
                }
            }
            Mode::Arguments { started: false } => {
                let lead = leading_ws(rest);
                if lead < rest.len() {
                    self.mode = Mode::Arguments { started: true };
                }
                return Some(lead);
            }
            Mode::Arguments { started: true } => {
                let (text, used, found) = Kimi::find(rest, &ARGUMENT_STOPS, end);
                let chunk = &rest[..text];
                let body = chunk.trim_end();
                if !body.is_empty() {
                    if !self.ws.is_empty() {
                        out.call_args(&self.ws);
                        self.ws.clear();
                    }
                    out.call_args(body);
                }
                self.ws.push_str(&chunk[body.len()..]);
                match found {
                    Some(0) => (used, Mode::Section),
                    Some(_) => (used, Mode::Prose),
                    None => (used, self.mode),
                }
            }
            Mode::Skip => {
                let (_, used, found) = Kimi::find(rest, &SKIP_STOPS, end);
                (
                    used,
                    if found.is_some() {
                        Mode::Section
                    } else {
                        Mode::Skip
                    },
                )
            }
        };
        self.mode = next;
        (used > 0).then_some(used)
    }

    fn finish(&mut self, _out: &mut dyn Sink) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_well_formed_ids() {
        assert_eq!(name_from_id("functions.get_weather:0"), Some("get_weather"));
        assert_eq!(name_from_id("get_weather:12"), Some("get_weather"));
        assert_eq!(name_from_id("functions.invalid.0"), None);
        assert_eq!(name_from_id("functions.x:"), None);
    }
}
