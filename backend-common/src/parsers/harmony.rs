//! OpenAI Harmony (gpt-oss) in its text form: `<|channel|>analysis<|message|>...<|end|>`
//! messages. The `analysis` channel is reasoning, a message with a recipient (`to=functions.NAME`)
//! is a tool call whose body is the arguments, anything else (`final`, `commentary`) is content.

use super::markers::{Scan, scan};
use super::stream::{End, Sink, Stage};

const MESSAGE: &str = "<|message|>";
const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const BODY_ENDS: [&str; 4] = ["<|end|>", "<|call|>", "<|return|>", START];

/// A header longer than this without `<|message|>` means the output is not Harmony.
const MAX_HEADER_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Reasoning,
    Content,
    Arguments,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Header(String),
    Body(Body),
    /// Between messages: waiting for `<|start|>`.
    Between,
    /// Not Harmony after all: everything is content.
    Plain,
}

/// Streaming Harmony parser; `tool_calls` decides whether recipient messages become calls.
pub(crate) struct Harmony {
    tool_calls: bool,
    mode: Mode,
}

impl Harmony {
    pub(crate) fn new(tool_calls: bool) -> Harmony {
        Harmony {
            tool_calls,
            mode: Mode::Header(String::new()),
        }
    }

    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Plain) {
            Mode::Header(header) => self.step_header(header, rest, end, out),
            Mode::Body(body) => self.step_body(body, rest, end, out),
            Mode::Between => self.step_between(rest, end),
            Mode::Plain => {
                out.content(rest);
                Some(rest.len())
            }
        }
    }

    fn step_header(
        &mut self,
        mut header: String,
        rest: &str,
        end: End,
        out: &mut dyn Sink,
    ) -> Option<usize> {
        let (taken, used, complete) = match scan(rest, &[MESSAGE, START], end) {
            Scan::Found { at, marker: 0 } => (at, at + MESSAGE.len(), true),
            Scan::Found { at, .. } => {
                // A new message begins: what came before was not a header.
                header.clear();
                self.mode = Mode::Header(header);
                return Some(at + START.len());
            }
            Scan::Partial { at } => (at, at, false),
            Scan::Clear => (rest.len(), rest.len(), false),
        };
        header.push_str(&rest[..taken]);
        if complete {
            self.mode = Mode::Body(self.open_body(&header, out));
        } else if header.len() > MAX_HEADER_LEN {
            out.content(&header);
            self.mode = Mode::Plain;
        } else {
            self.mode = Mode::Header(header);
        }
        (used > 0).then_some(used)
    }

    /// Decides what the message body is from its header.
    fn open_body(&self, header: &str, out: &mut dyn Sink) -> Body {
        if let Some(recipient) = header_field(header, "to=") {
            if self.tool_calls {
                let name = recipient.strip_prefix("functions.").unwrap_or(recipient);
                out.call_start(name, None);
                return Body::Arguments;
            }
            return Body::Content;
        }
        match header
            .find(CHANNEL)
            .and_then(|at| header_field(&header[at..], CHANNEL))
        {
            Some("analysis") => {
                out.reasoning_section();
                Body::Reasoning
            }
            _ => Body::Content,
        }
    }

    fn step_body(&mut self, body: Body, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let (text, used, next) = match scan(rest, &BODY_ENDS, end) {
            Scan::Found { at, marker } if BODY_ENDS[marker] == START => {
                (at, at + START.len(), Mode::Header(String::new()))
            }
            Scan::Found { at, marker } => (at, at + BODY_ENDS[marker].len(), Mode::Between),
            Scan::Partial { at } => (at, at, Mode::Body(body)),
            Scan::Clear => (rest.len(), rest.len(), Mode::Body(body)),
        };
        let text = &rest[..text];
        match body {
            Body::Reasoning => out.reasoning(text),
            Body::Content => out.content(text),
            Body::Arguments => out.call_args(text),
        }
        self.mode = next;
        (used > 0).then_some(used)
    }

    /// Text between messages (after `<|end|>`) is not part of any message and is dropped.
    fn step_between(&mut self, rest: &str, end: End) -> Option<usize> {
        match scan(rest, &[START, CHANNEL], end) {
            Scan::Found { at, marker } => {
                self.mode = Mode::Header(String::new());
                Some(at + if marker == 0 { START.len() } else { 0 })
            }
            Scan::Partial { at } => {
                self.mode = Mode::Between;
                (at > 0).then_some(at)
            }
            Scan::Clear => {
                self.mode = Mode::Between;
                Some(rest.len())
            }
        }
    }
}

/// The word following `key` in a header, up to whitespace or the next special token.
fn header_field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(key)? + key.len();
    let value = &header[at..];
    let len = value
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(value.len());
    Some(&value[..len]).filter(|v| !v.is_empty())
}

impl Stage for Harmony {
    fn advance(&mut self, input: &str, end: End, out: &mut dyn Sink) -> usize {
        let mut used = 0;
        while let Some(step) = self.step(&input[used..], end, out) {
            used += step;
        }
        used
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        if let Mode::Header(header) = std::mem::replace(&mut self.mode, Mode::Plain) {
            // An output that never opened a message body is plain text.
            out.content(&header);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_stop_at_special_tokens() {
        let header = " to=functions.get<|channel|>commentary <|constrain|>json";
        assert_eq!(header_field(header, "to="), Some("functions.get"));
        assert_eq!(header_field(header, CHANNEL), Some("commentary"));
        assert_eq!(header_field("<|channel|>", CHANNEL), None);
    }
}
