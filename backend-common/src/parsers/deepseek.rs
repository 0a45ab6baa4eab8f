//! DeepSeek tool calls. V3/R1 (`deepseek_v3`):
//! `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`;
//! V3.1 (`deepseek_v31`): `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`.
//!
//! The lenient variant (llama.cpp) also accepts the `<｜tool▁calls｜>` opener some distills emit
//! and calls without `<｜tool▁call▁begin｜>`. Only text before the call section is content.

use super::json_scan::{Feed, JsonScanner};
use super::markers::{Prefix, Scan, leading_ws, scan, starts_with};
use super::stream::{End, Sink, Stage};

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_BEGIN_LOOSE: &str = "<｜tool▁calls｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";
const FENCE_END: &str = "\n```";

/// Longest accepted function name.
const MAX_NAME_LEN: usize = 256;

/// Which DeepSeek layout to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `TYPE<sep>NAME` + fenced JSON arguments.
    V3,
    /// `NAME<sep>ARGS`.
    V31,
}

#[derive(Debug, Clone)]
enum Mode {
    Prose,
    Section,
    /// V3: the call type before the separator.
    CallType,
    Name(String),
    Fence,
    Arguments(JsonScanner),
    RawArguments,
    AfterArguments,
}

/// Streaming DeepSeek tool-call parser.
pub(crate) struct DeepSeek {
    layout: Layout,
    lenient: bool,
    mode: Mode,
    section_seen: bool,
}

impl DeepSeek {
    pub(crate) fn new(layout: Layout, lenient: bool) -> DeepSeek {
        DeepSeek {
            layout,
            lenient,
            mode: Mode::Prose,
            section_seen: false,
        }
    }

    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose => {
                let openers: &[&str] = if self.lenient {
                    &[CALLS_BEGIN, CALLS_BEGIN_LOOSE]
                } else {
                    &[CALLS_BEGIN]
                };
                let (text, used, next) = match scan(rest, openers, end) {
                    Scan::Found { at, marker } => (at, at + openers[marker].len(), Mode::Section),
                    Scan::Partial { at } => (at, at, Mode::Prose),
                    Scan::Clear => (rest.len(), rest.len(), Mode::Prose),
                };
                if !self.section_seen {
                    out.content(&rest[..text]);
                }
                if matches!(next, Mode::Section) {
                    self.section_seen = true;
                }
                self.mode = next;
                (used > 0).then_some(used)
            }
            Mode::Section => {
                // Lenient: a call may start without its begin marker.
                let markers: &[&str] = if self.lenient {
                    &[CALL_BEGIN, CALLS_END, SEP]
                } else {
                    &[CALL_BEGIN, CALLS_END]
                };
                match scan(rest, markers, end) {
                    Scan::Found { at, marker: 0 } => {
                        self.mode = match self.layout {
                            Layout::V3 => Mode::CallType,
                            Layout::V31 => Mode::Name(String::new()),
                        };
                        Some(at + CALL_BEGIN.len())
                    }
                    Scan::Found { at, marker: 1 } => Some(at + CALLS_END.len()),
                    Scan::Found { at, .. } => {
                        self.mode = Mode::Name(String::new());
                        Some(at + SEP.len())
                    }
                    Scan::Partial { at } => {
                        self.mode = Mode::Section;
                        (at > 0).then_some(at)
                    }
                    Scan::Clear => {
                        self.mode = Mode::Section;
                        Some(rest.len())
                    }
                }
            }
            Mode::CallType => match scan(rest, &[SEP, CALL_END], end) {
                Scan::Found { at, marker: 0 } => {
                    self.mode = Mode::Name(String::new());
                    Some(at + SEP.len())
                }
                Scan::Found { at, .. } => {
                    self.mode = Mode::Section;
                    Some(at + CALL_END.len())
                }
                Scan::Partial { at } => {
                    self.mode = Mode::CallType;
                    (at > 0).then_some(at)
                }
                Scan::Clear => {
                    self.mode = Mode::CallType;
                    Some(rest.len())
                }
            },
            Mode::Name(name) => self.step_name(name, rest, end, out),
            Mode::Fence => {
                let ws = leading_ws(rest);
                if ws > 0 {
                    self.mode = Mode::Fence;
                    return Some(ws);
                }
                for fence in ["```json", "```"] {
                    match starts_with(rest, fence, end) {
                        Prefix::Yes => {
                            self.mode = Mode::Arguments(JsonScanner::new());
                            return Some(fence.len());
                        }
                        Prefix::Undecided => {
                            self.mode = Mode::Fence;
                            return None;
                        }
                        Prefix::No => {}
                    }
                }
                self.mode = Mode::Arguments(JsonScanner::new());
                Some(0)
            }
            Mode::Arguments(mut scanner) => {
                if scanner.is_untouched() {
                    let ws = leading_ws(rest);
                    if ws > 0 {
                        self.mode = Mode::Arguments(scanner);
                        return Some(ws);
                    }
                }
                let untouched = scanner.is_untouched();
                let (used, next) = match scanner.feed(rest) {
                    Feed::More => (rest.len(), None),
                    Feed::Done(n) => (n, Some(Mode::AfterArguments)),
                    // A marker right away: the call has no arguments.
                    Feed::Invalid(0) if untouched && rest.starts_with('<') => {
                        out.call_args("{}");
                        (0, Some(Mode::AfterArguments))
                    }
                    Feed::Invalid(n) => (n, Some(Mode::RawArguments)),
                };
                out.call_args(&rest[..used]);
                self.mode = next.unwrap_or(Mode::Arguments(scanner));
                Some(used)
            }
            Mode::RawArguments => {
                let stops: &[&str] = match self.layout {
                    Layout::V3 => &[FENCE_END, CALL_END, CALLS_END],
                    Layout::V31 => &[CALL_END, CALLS_END],
                };
                let (text, next) = match scan(rest, stops, end) {
                    Scan::Found { at, .. } => (at, Mode::AfterArguments),
                    Scan::Partial { at } => (at, Mode::RawArguments),
                    Scan::Clear => (rest.len(), Mode::RawArguments),
                };
                out.call_args(&rest[..text]);
                self.mode = next;
                (text > 0 || matches!(self.mode, Mode::AfterArguments)).then_some(text)
            }
            Mode::AfterArguments => match scan(rest, &[CALL_END, CALLS_END], end) {
                Scan::Found { at, marker: 0 } => {
                    self.mode = Mode::Section;
                    Some(at + CALL_END.len())
                }
                Scan::Found { at, .. } => Some(at + CALLS_END.len()),
                Scan::Partial { at } => {
                    self.mode = Mode::AfterArguments;
                    (at > 0).then_some(at)
                }
                Scan::Clear => {
                    self.mode = Mode::AfterArguments;
                    Some(rest.len())
                }
            },
        }
    }

    fn step_name(
        &mut self,
        mut name: String,
        rest: &str,
        end: End,
        out: &mut dyn Sink,
    ) -> Option<usize> {
        let terminator = match self.layout {
            Layout::V3 => "\n",
            Layout::V31 => SEP,
        };
        let (taken, used, done) = match scan(rest, &[terminator, CALL_END], end) {
            Scan::Found { at, marker: 0 } => (at, at + terminator.len(), true),
            // A call without arguments.
            Scan::Found { at, .. } => (at, at, true),
            Scan::Partial { at } => (at, at, false),
            Scan::Clear => (rest.len(), rest.len(), false),
        };
        name.push_str(&rest[..taken]);
        if name.len() > MAX_NAME_LEN {
            self.mode = Mode::AfterArguments;
            return Some(used);
        }
        if !done {
            self.mode = Mode::Name(name);
            return (used > 0).then_some(used);
        }
        let name = name.trim();
        if name.is_empty() {
            self.mode = Mode::AfterArguments;
            return Some(used);
        }
        out.call_start(name, None);
        self.mode = match self.layout {
            Layout::V3 => Mode::Fence,
            Layout::V31 => Mode::Arguments(JsonScanner::new()),
        };
        Some(used)
    }
}

impl Stage for DeepSeek {
    fn advance(&mut self, input: &str, end: End, out: &mut dyn Sink) -> usize {
        let mut used = 0;
        while let Some(step) = self.step(&input[used..], end, out) {
            used += step;
        }
        used
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        // A call cut off before its arguments still gets valid (empty) ones.
        match &self.mode {
            Mode::Fence => out.call_args("{}"),
            Mode::Arguments(scanner) if scanner.is_untouched() => out.call_args("{}"),
            _ => {}
        }
    }
}
