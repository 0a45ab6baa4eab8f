//! Kimi K2 tool calls (`kimi_k2`):
//! `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX <|tool_call_argument_begin|>ARGS<|tool_call_end|>...<|tool_calls_section_end|>`.
//!
//! The model's own id (`functions.NAME:IDX`) is the call id; a call whose id lacks `:IDX` is
//! skipped. Arguments pass through verbatim (trimmed), even when they are not valid JSON.

use super::markers::{Scan, leading_ws, scan};
use super::stream::{End, Sink, Stage};

const SECTION_BEGIN: [&str; 2] = [
    "<|tool_calls_section_begin|>",
    "<|tool_call_section_begin|>",
];
const SECTION_END: &str = "<|tool_calls_section_end|>";
const CALL_BEGIN: &str = "<|tool_call_begin|>";
const ARGUMENT_BEGIN: &str = "<|tool_call_argument_begin|>";
const CALL_END: &str = "<|tool_call_end|>";

/// Longest accepted call id.
const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone)]
enum Mode {
    Prose,
    Section,
    Id(String),
    /// Arguments; `started` once past leading whitespace, `ws` held trailing whitespace.
    Arguments {
        started: bool,
        ws: String,
    },
    /// A call with an invalid id, skipped to its end.
    Skip,
}

/// Streaming Kimi K2 tool-call parser.
pub(crate) struct Kimi {
    mode: Mode,
    section_seen: bool,
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
        }
    }

    /// Scans for `markers`; returns (text before, bytes used, marker index if found).
    fn find(rest: &str, markers: &[&str], end: End) -> (usize, usize, Option<usize>) {
        match scan(rest, markers, end) {
            Scan::Found { at, marker } => (at, at + markers[marker].len(), Some(marker)),
            Scan::Partial { at } => (at, at, None),
            Scan::Clear => (rest.len(), rest.len(), None),
        }
    }

    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        let (used, next) = match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose => {
                let (text, used, found) = Kimi::find(rest, &SECTION_BEGIN, end);
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
                let (_, used, found) = Kimi::find(rest, &[CALL_BEGIN, SECTION_END], end);
                match found {
                    Some(0) => (used, Mode::Id(String::new())),
                    Some(_) => (used, Mode::Prose),
                    None => (used, Mode::Section),
                }
            }
            Mode::Id(mut id) => {
                let (text, used, found) = Kimi::find(rest, &[ARGUMENT_BEGIN, CALL_END], end);
                id.push_str(&rest[..text]);
                match found {
                    _ if id.len() > MAX_ID_LEN => (used, Mode::Skip),
                    None => (used, Mode::Id(id)),
                    Some(marker) => {
                        let id = id.trim();
                        match name_from_id(id) {
                            Some(name) if marker == 0 => {
                                out.call_start(name, Some(id));
                                (
                                    used,
                                    Mode::Arguments {
                                        started: false,
                                        ws: String::new(),
                                    },
                                )
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
            Mode::Arguments { started, mut ws } => {
                if !started {
                    let lead = leading_ws(rest);
                    if lead == rest.len() {
                        self.mode = Mode::Arguments { started, ws };
                        return Some(lead);
                    }
                    self.mode = Mode::Arguments { started: true, ws };
                    return Some(lead);
                }
                let (text, used, found) = Kimi::find(rest, &[CALL_END, SECTION_END], end);
                let chunk = &rest[..text];
                let body = chunk.trim_end();
                if !body.is_empty() {
                    out.call_args(&ws);
                    out.call_args(body);
                    ws.clear();
                }
                ws.push_str(&chunk[body.len()..]);
                match found {
                    Some(0) => (used, Mode::Section),
                    Some(_) => (used, Mode::Prose),
                    None => (used, Mode::Arguments { started, ws }),
                }
            }
            Mode::Skip => {
                let (_, used, found) = Kimi::find(rest, &[CALL_END], end);
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
}

impl Stage for Kimi {
    fn advance(&mut self, input: &str, end: End, out: &mut dyn Sink) -> usize {
        let mut used = 0;
        while let Some(step) = self.step(&input[used..], end, out) {
            used += step;
        }
        used
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
