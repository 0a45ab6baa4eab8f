//! DeepSeek tool calls. V3/R1 (`deepseek_v3`):
//! `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`;
//! V3.1 (`deepseek_v31`): `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`.
//!
//! The lenient variant (llama.cpp) also accepts the `<｜tool▁calls｜>` opener some distills emit
//! and calls without `<｜tool▁call▁begin｜>`. Only text before the call section is content.

use super::json_scan::{Feed, JsonScanner};
use super::markers::{Markers, Prefix, Scan, leading_ws, starts_with};
use super::stream::{End, Sink, Stage};

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_BEGIN_LOOSE: &str = "<｜tool▁calls｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";
const FENCE_END: &str = "\n```";

// What each mode looks for, as marker sets built at compile time.
const OPENERS: Markers = Markers::new(&[CALLS_BEGIN]);
const LENIENT_OPENERS: Markers = Markers::new(&[CALLS_BEGIN, CALLS_BEGIN_LOOSE]);
const SECTION_STOPS: Markers = Markers::new(&[CALL_BEGIN, CALLS_END]);
/// Lenient: a call may start without its begin marker.
const LENIENT_SECTION_STOPS: Markers = Markers::new(&[CALL_BEGIN, CALLS_END, SEP]);
const CALL_TYPE_STOPS: Markers = Markers::new(&[SEP, CALL_END]);
const V3_RAW_STOPS: Markers = Markers::new(&[FENCE_END, CALL_END, CALLS_END]);
const V31_RAW_STOPS: Markers = Markers::new(&[CALL_END, CALLS_END]);
const CALL_ENDS: Markers = Markers::new(&[CALL_END, CALLS_END]);
const V3_NAME_ENDS: Markers = Markers::new(&["\n", CALL_END]);
const V31_NAME_ENDS: Markers = Markers::new(&[SEP, CALL_END]);

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

/// Where the parser is; the name or arguments being read live in [`DeepSeek`], so that the mode
/// is a plain value to switch on for every piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Prose,
    Section,
    /// V3: the call type before the separator.
    CallType,
    /// A function name, gathered in [`DeepSeek::name`].
    Name,
    Fence,
    /// JSON arguments, scanned by [`DeepSeek::scanner`].
    Arguments,
    RawArguments,
    AfterArguments,
}

/// Streaming DeepSeek tool-call parser.
pub(crate) struct DeepSeek {
    layout: Layout,
    lenient: bool,
    mode: Mode,
    section_seen: bool,
    /// The function name read so far (`Mode::Name`).
    name: String,
    /// The arguments value being read (`Mode::Arguments`).
    scanner: JsonScanner,
}

impl DeepSeek {
    pub(crate) fn new(layout: Layout, lenient: bool) -> DeepSeek {
        DeepSeek {
            layout,
            lenient,
            mode: Mode::Prose,
            section_seen: false,
            name: String::new(),
            scanner: JsonScanner::new(),
        }
    }

    /// Starts reading a function name; returns the mode for it.
    fn start_name(&mut self) -> Mode {
        self.name.clear();
        Mode::Name
    }

    /// Starts reading arguments; returns the mode for them.
    fn start_arguments(&mut self) -> Mode {
        self.scanner = JsonScanner::new();
        Mode::Arguments
    }

    fn step_name(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let ends = match self.layout {
            Layout::V3 => &V3_NAME_ENDS,
            Layout::V31 => &V31_NAME_ENDS,
        };
        let (taken, used, done) = match ends.scan(rest, end) {
            Scan::Found { at, marker: 0 } => (at, at + ends.list()[0].len(), true),
            // A call without arguments.
            Scan::Found { at, .. } => (at, at, true),
            Scan::Partial { at } => (at, at, false),
            Scan::Clear => (rest.len(), rest.len(), false),
        };
        self.name.push_str(&rest[..taken]);
        if self.name.len() > MAX_NAME_LEN {
            self.mode = Mode::AfterArguments;
            return Some(used);
        }
        if !done {
            self.mode = Mode::Name;
            return (used > 0).then_some(used);
        }
        let name = self.name.trim();
        if name.is_empty() {
            self.mode = Mode::AfterArguments;
            return Some(used);
        }
        out.call_start(name, None);
        self.mode = match self.layout {
            Layout::V3 => Mode::Fence,
            Layout::V31 => self.start_arguments(),
        };
        Some(used)
    }
}

impl Stage for DeepSeek {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose => {
                let openers = if self.lenient {
                    &LENIENT_OPENERS
                } else {
                    &OPENERS
                };
                let (text, used, next) = match openers.scan(rest, end) {
                    Scan::Found { at, marker } => {
                        (at, at + openers.list()[marker].len(), Mode::Section)
                    }
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
                let markers = if self.lenient {
                    &LENIENT_SECTION_STOPS
                } else {
                    &SECTION_STOPS
                };
                match markers.scan(rest, end) {
                    Scan::Found { at, marker: 0 } => {
                        self.mode = match self.layout {
                            Layout::V3 => Mode::CallType,
                            Layout::V31 => self.start_name(),
                        };
                        Some(at + CALL_BEGIN.len())
                    }
                    Scan::Found { at, marker: 1 } => Some(at + CALLS_END.len()),
                    Scan::Found { at, .. } => {
                        self.mode = self.start_name();
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
            Mode::CallType => match CALL_TYPE_STOPS.scan(rest, end) {
                Scan::Found { at, marker: 0 } => {
                    self.mode = self.start_name();
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
            Mode::Name => self.step_name(rest, end, out),
            Mode::Fence => {
                let ws = leading_ws(rest);
                if ws > 0 {
                    self.mode = Mode::Fence;
                    return Some(ws);
                }
                for fence in ["```json", "```"] {
                    match starts_with(rest, fence, end) {
                        Prefix::Yes => {
                            self.mode = self.start_arguments();
                            return Some(fence.len());
                        }
                        Prefix::Undecided => {
                            self.mode = Mode::Fence;
                            return None;
                        }
                        Prefix::No => {}
                    }
                }
                self.mode = self.start_arguments();
                Some(0)
            }
            Mode::Arguments => {
                self.mode = Mode::Arguments;
                let untouched = self.scanner.is_untouched();
                if untouched {
                    let ws = leading_ws(rest);
                    if ws > 0 {
                        return Some(ws);
                    }
                }
                let (used, next) = match self.scanner.feed(rest) {
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
                if let Some(next) = next {
                    self.mode = next;
                }
                Some(used)
            }
            Mode::RawArguments => {
                let stops = match self.layout {
                    Layout::V3 => &V3_RAW_STOPS,
                    Layout::V31 => &V31_RAW_STOPS,
                };
                let (text, next) = match stops.scan(rest, end) {
                    Scan::Found { at, .. } => (at, Mode::AfterArguments),
                    Scan::Partial { at } => (at, Mode::RawArguments),
                    Scan::Clear => (rest.len(), Mode::RawArguments),
                };
                out.call_args(&rest[..text]);
                self.mode = next;
                (text > 0 || matches!(self.mode, Mode::AfterArguments)).then_some(text)
            }
            Mode::AfterArguments => match CALL_ENDS.scan(rest, end) {
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

    fn finish(&mut self, out: &mut dyn Sink) {
        // A call cut off before its arguments still gets valid (empty) ones.
        match self.mode {
            Mode::Fence => out.call_args("{}"),
            Mode::Arguments if self.scanner.is_untouched() => out.call_args("{}"),
            _ => {}
        }
    }
}
