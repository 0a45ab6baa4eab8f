//! Reasoning parsers that split tagged reasoning (`<think>...</think>` and its relatives) from
//! content. The Harmony (gpt-oss) reasoning parser lives in `harmony.rs`.

use super::markers::{MarkerList, Prefix, Scan, leading_ws, starts_with};
use super::stream::{End, Sink, Stage};

/// How one tag-delimited reasoning format behaves.
#[derive(Debug, Clone)]
pub(crate) struct ThinkFormat {
    /// Markers that open reasoning.
    pub(crate) start: &'static [&'static str],
    /// Markers that close reasoning.
    pub(crate) end: &'static [&'static str],
    /// The output begins inside reasoning (the template opens it), unless thinking is disabled.
    pub(crate) starts_open: bool,
    /// A start marker counts only at the very beginning of the output (llama.cpp).
    pub(crate) start_only_at_beginning: bool,
    /// Whitespace right after the end marker is dropped (llama.cpp).
    pub(crate) skip_ws_after_end: bool,
    /// An opened reasoning section is reported even when empty (vLLM gives `""`, not null).
    pub(crate) report_empty: bool,
    /// Reasoning may open again after it closed (Mistral).
    pub(crate) reopen: bool,
    /// End markers met in content are removed (Mistral).
    pub(crate) strip_stray_end: bool,
    /// Markers that end reasoning implicitly and stay in the content (a tool call that the model
    /// began without closing its reasoning).
    pub(crate) implicit_end: Vec<&'static str>,
}

impl ThinkFormat {
    /// The common shape: `start`/`end` tags, output opening inside reasoning, vLLM conventions.
    pub(crate) fn opened_by_template(
        start: &'static [&'static str],
        end: &'static [&'static str],
    ) -> ThinkFormat {
        ThinkFormat {
            start,
            end,
            starts_open: true,
            start_only_at_beginning: false,
            skip_ws_after_end: false,
            report_empty: true,
            reopen: false,
            strip_stray_end: false,
            implicit_end: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reasoning,
    Content,
    /// Content after the reasoning closed for good: no more tags are looked at.
    Rest,
    /// Whitespace after the end marker that is being dropped.
    SkipWs,
    /// Just after a start marker: the line break that ends the marker's line is markup.
    AfterStart,
}

/// Streaming splitter for a [`ThinkFormat`].
pub(crate) struct ThinkTags {
    format: ThinkFormat,
    mode: Mode,
    at_beginning: bool,
    /// Markers looked for inside reasoning: end, start, implicit end (in that order).
    reasoning_markers: MarkerList,
    /// Markers looked for in content: start, then stray end markers to strip.
    content_markers: MarkerList,
}

impl ThinkTags {
    /// `open` tells whether the output begins inside reasoning.
    pub(crate) fn new(format: ThinkFormat, open: bool, out: &mut dyn Sink) -> ThinkTags {
        let mode = if open {
            if format.report_empty {
                out.reasoning_section();
            }
            Mode::Reasoning
        } else {
            Mode::Content
        };
        let reasoning_markers = format
            .end
            .iter()
            .chain(format.start)
            .chain(&format.implicit_end)
            .copied()
            .collect();
        let stray: &[&'static str] = if format.strip_stray_end {
            format.end
        } else {
            &[]
        };
        let content_markers = format.start.iter().chain(stray).copied().collect();
        ThinkTags {
            format,
            mode,
            at_beginning: true,
            reasoning_markers,
            content_markers,
        }
    }

    /// One step in the current mode; the trait's `step` also tracks the start of output.
    fn step_section(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        match self.mode {
            Mode::Reasoning => self.step_reasoning(rest, end, out),
            Mode::Content if self.format.start_only_at_beginning => {
                self.step_content_start(rest, end, out)
            }
            Mode::Content => self.step_content(rest, end, out),
            Mode::Rest => {
                out.content(rest);
                Some(rest.len())
            }
            Mode::SkipWs => {
                let ws = leading_ws(rest);
                if ws < rest.len() {
                    self.mode = Mode::Rest;
                }
                Some(ws)
            }
            Mode::AfterStart => {
                self.mode = Mode::Reasoning;
                if rest.starts_with("\r\n") {
                    Some(2)
                } else if rest.starts_with('\n') {
                    Some(1)
                } else if rest == "\r" && end.may_continue_marker() {
                    self.mode = Mode::AfterStart;
                    None
                } else {
                    Some(0)
                }
            }
        }
    }

    fn step_reasoning(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let ends = self.format.end.len();
        let starts = self.format.start.len();
        let markers = self.reasoning_markers.markers();
        match markers.scan(rest, end) {
            Scan::Found { at, marker } => {
                out.reasoning(&rest[..at]);
                let len = markers.list()[marker].len();
                if marker < ends {
                    self.close();
                    Some(at + len)
                } else if marker < ends + starts {
                    // A start tag inside reasoning is redundant markup.
                    self.mode = Mode::AfterStart;
                    Some(at + len)
                } else {
                    self.mode = Mode::Rest;
                    Some(at)
                }
            }
            Scan::Partial { at } => {
                out.reasoning(&rest[..at]);
                (at > 0).then_some(at)
            }
            Scan::Clear => {
                out.reasoning(rest);
                Some(rest.len())
            }
        }
    }

    fn close(&mut self) {
        self.mode = if self.format.reopen {
            Mode::Content
        } else if self.format.skip_ws_after_end {
            Mode::SkipWs
        } else {
            Mode::Rest
        };
    }

    fn open(&mut self, out: &mut dyn Sink) {
        if self.format.report_empty {
            out.reasoning_section();
        }
        self.mode = Mode::AfterStart;
    }

    fn step_content(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let starts = self.format.start.len();
        let markers = self.content_markers.markers();
        match markers.scan(rest, end) {
            Scan::Found { at, marker } => {
                out.content(&rest[..at]);
                let len = markers.list()[marker].len();
                if marker < starts {
                    self.open(out);
                }
                Some(at + len)
            }
            Scan::Partial { at } => {
                out.content(&rest[..at]);
                (at > 0).then_some(at)
            }
            Scan::Clear => {
                out.content(rest);
                Some(rest.len())
            }
        }
    }

    /// Formats whose start marker only counts first thing in the output.
    fn step_content_start(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if !self.at_beginning {
            self.mode = Mode::Rest;
            return Some(0);
        }
        let mut undecided = false;
        for start in self.format.start {
            match starts_with(rest, start, end) {
                Prefix::Yes => {
                    self.at_beginning = false;
                    self.open(out);
                    return Some(start.len());
                }
                Prefix::Undecided => undecided = true,
                Prefix::No => {}
            }
        }
        if undecided {
            return None;
        }
        self.at_beginning = false;
        self.mode = Mode::Rest;
        Some(0)
    }
}

impl Stage for ThinkTags {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let used = self.step_section(rest, end, out)?;
        self.at_beginning = self.at_beginning && used == 0;
        Some(used)
    }

    fn finish(&mut self, _out: &mut dyn Sink) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::stream::{PendingInput, Recorder};

    fn run(format: ThinkFormat, open: bool, pieces: &[&str]) -> (Option<String>, Option<String>) {
        let mut recorder = Recorder::new();
        let mut stage = ThinkTags::new(format, open, &mut recorder);
        let mut input = PendingInput::default();
        for piece in pieces {
            input.push(piece);
            input.run(&mut stage, End::Open, &mut recorder);
        }
        input.run(&mut stage, End::Eof, &mut recorder);
        stage.finish(&mut recorder);
        let message = recorder.message(false);
        (message.reasoning_content, message.content)
    }

    const THINK: &[&str] = &["<think>"];
    const UNTHINK: &[&str] = &["</think>"];

    #[test]
    fn the_line_break_after_a_start_marker_is_not_reasoning() {
        let format = || ThinkFormat {
            starts_open: false,
            ..ThinkFormat::opened_by_template(THINK, UNTHINK)
        };
        for text in [
            "<think>\nhmm\n</think>Answer",
            "<think>\r\nhmm\n</think>Answer",
        ] {
            for cut in 0..=text.len() {
                assert_eq!(
                    run(format(), false, &[&text[..cut], &text[cut..]]),
                    (Some("hmm\n".into()), Some("Answer".into())),
                    "{text:?} cut at {cut}"
                );
            }
        }
        // Only one line break is markup; a start marker the template wrote leaves the output's
        // first line break alone.
        assert_eq!(
            run(format(), false, &["<think>\n\nhmm</think>"])
                .0
                .as_deref(),
            Some("\nhmm")
        );
        assert_eq!(
            run(format(), true, &["\nhmm</think>"]).0.as_deref(),
            Some("\nhmm")
        );
    }

    #[test]
    fn forced_open_reasoning_ends_at_a_split_end_tag() {
        let format = ThinkFormat::opened_by_template(THINK, UNTHINK);
        let (reasoning, content) = run(format, true, &["I'm thinking</th", "ink>Answer"]);
        assert_eq!(reasoning.as_deref(), Some("I'm thinking"));
        assert_eq!(content.as_deref(), Some("Answer"));
    }

    #[test]
    fn disabled_thinking_keeps_everything_as_content() {
        let format = ThinkFormat::opened_by_template(THINK, UNTHINK);
        let (reasoning, content) = run(format, false, &["Plain ", "answer"]);
        assert_eq!(reasoning, None);
        assert_eq!(content.as_deref(), Some("Plain answer"));
    }

    #[test]
    fn implicit_end_hands_a_tool_call_to_the_content() {
        let mut format = ThinkFormat::opened_by_template(THINK, UNTHINK);
        format.implicit_end = vec!["<tool_call>"];
        let (reasoning, content) = run(format, true, &["Let me call.<tool", "_call>{}"]);
        assert_eq!(reasoning.as_deref(), Some("Let me call."));
        assert_eq!(content.as_deref(), Some("<tool_call>{}"));
    }
}
