//! OpenAI Harmony (gpt-oss) in its text form: `<|channel|>analysis<|message|>...<|end|>`
//! messages. The `analysis` channel is reasoning, a message with a recipient (`to=functions.NAME`)
//! is a tool call whose body is the arguments, anything else (`final`, `commentary`) is content.

use super::markers::{Markers, Scan};
use super::stream::{End, Sink, Stage};

const MESSAGE: &str = "<|message|>";
const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const BODY_ENDS: [&str; 4] = ["<|end|>", "<|call|>", "<|return|>", START];

// What each mode looks for, as marker sets built at compile time.
const HEADER_ENDS: Markers = Markers::new(&[MESSAGE, START]);
const BODY_END_MARKERS: Markers = Markers::new(&BODY_ENDS);
const MESSAGE_STARTS: Markers = Markers::new(&[START, CHANNEL]);

/// A header longer than this without `<|message|>` means the output is not Harmony.
const MAX_HEADER_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Reasoning,
    Content,
    Arguments,
}

/// Where the parser is; the header being read lives in [`Harmony`], so that the mode is a plain
/// value to switch on for every piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A message header, gathered in [`Harmony::header`].
    Header,
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
    /// The header read so far (`Mode::Header`).
    header: String,
}

impl Harmony {
    pub(crate) fn new(tool_calls: bool) -> Harmony {
        Harmony {
            tool_calls,
            mode: Mode::Header,
            header: String::new(),
        }
    }

    fn step_header(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let (taken, used, found) = match HEADER_ENDS.scan(rest, end) {
            Scan::Found { at, marker: 0 } => (at, at + MESSAGE.len(), Some(MESSAGE)),
            Scan::Found { at, .. } => (at, at + START.len(), Some(START)),
            Scan::Partial { at } => (at, at, None),
            Scan::Clear => (rest.len(), rest.len(), None),
        };
        self.header.push_str(&rest[..taken]);
        // The length is checked before what ends the header, so that an over-long header is
        // plain text whether or not the piece that makes it too long also holds its end.
        if self.header.len() > MAX_HEADER_LEN {
            out.content(&self.header);
            self.mode = Mode::Plain;
            return Some(taken);
        }
        match found {
            Some(MESSAGE) => self.mode = Mode::Body(self.open_body(&self.header, out)),
            // A new message begins: what came before was not a header.
            Some(_) => self.header.clear(),
            None => {}
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
        let (text, used, next) = match BODY_END_MARKERS.scan(rest, end) {
            Scan::Found { at, marker } if BODY_ENDS[marker] == START => {
                self.header.clear();
                (at, at + START.len(), Mode::Header)
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
        match MESSAGE_STARTS.scan(rest, end) {
            Scan::Found { at, marker } => {
                self.header.clear();
                self.mode = Mode::Header;
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
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        match self.mode {
            Mode::Header => self.step_header(rest, end, out),
            Mode::Body(body) => self.step_body(body, rest, end, out),
            Mode::Between => self.step_between(rest, end),
            Mode::Plain => {
                out.content(rest);
                Some(rest.len())
            }
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        if self.mode == Mode::Header {
            // An output that never opened a message body is plain text.
            out.content(&self.header);
        }
        self.mode = Mode::Plain;
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

    /// Found by the `tool_parsers` fuzz target: a header over [`MAX_HEADER_LEN`] was plain text
    /// when streamed but opened a message when its `<|message|>` came in the same piece.
    #[test]
    fn an_over_long_header_is_plain_text_however_it_is_cut() {
        use crate::parsers::{ChatParser, ParseOptions, ToolParserKind};

        for end in [MESSAGE, START] {
            let text = format!("{}{end}{{\"a\": 1}}", "x".repeat(MAX_HEADER_LEN + 1));
            let whole = ChatParser::parse(
                Some(ToolParserKind::Openai),
                None,
                ParseOptions::default(),
                &text,
            );
            assert_eq!(whole.content.as_deref(), Some(text.as_str()), "{end}");
            assert!(whole.tool_calls.is_empty());

            let mut parser =
                ChatParser::new(Some(ToolParserKind::Openai), None, ParseOptions::default());
            let mut content = String::new();
            for piece in text.as_bytes().chunks(7) {
                let piece = std::str::from_utf8(piece).unwrap_or_default();
                content.push_str(&parser.push(piece).content);
            }
            content.push_str(&parser.finish().content);
            assert_eq!(content, text, "{end}");
        }
    }
}
