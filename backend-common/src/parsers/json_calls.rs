//! The engine behind every format whose calls are JSON: a call is introduced by an opener (a tag
//! such as `<tool_call>`, a fence, or a bare `{`/`[`), followed by a call object, an array of
//! call objects, or a name and a JSON arguments value, and optionally closed by a tag.
//!
//! A candidate call is held back until it is certain: its name is known and accepted and its
//! arguments are a whole JSON value. Text that turns out not to be a call (JSON with a missing
//! brace or an unquoted key included) is released as content, as vLLM does; output that ends
//! inside a call's arguments is that call with the arguments as written.

use super::call_object::{CallObject, ObjectFeed};
use super::json_scan::{Feed, JsonScanner};
use super::markers::{MarkerList, Prefix, Scan, leading_ws, name_prefix, scan, starts_with};
use super::stream::{End, Sink, Stage};
use super::types::ParseOptions;

/// What follows an opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// One call object.
    Object,
    /// A JSON array of call objects.
    Array,
    /// The items of an array whose `[` was part of the opener.
    ArrayItems,
    /// An array of call objects, or one call object.
    ObjectOrArray,
    /// An array of call objects, or a name and a JSON arguments value (Mistral).
    ArrayOrNamed { name_end: &'static str },
    /// A name up to `name_end`, then a JSON arguments value.
    Named {
        name_end: &'static str,
        consume_end: bool,
    },
}

/// Text that introduces calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opener {
    pub(crate) open: &'static str,
    pub(crate) close: Option<&'static str>,
    pub(crate) body: Body,
    /// The opener is the first character of the body (a bare `{` or `[`), not markup.
    pub(crate) part_of_body: bool,
    /// Whitespace before this opener belongs to the call, not to the content.
    pub(crate) absorb_ws: bool,
    /// Calls found here must name one of the request's tools.
    pub(crate) check_name: bool,
}

impl Opener {
    /// A tag followed by `body` and closed by `close`.
    pub(crate) const fn tag(open: &'static str, close: Option<&'static str>, body: Body) -> Opener {
        Opener {
            open,
            close,
            body,
            part_of_body: false,
            absorb_ws: false,
            check_name: false,
        }
    }

    /// A bare `{` or `[` that starts a body.
    pub(crate) const fn bare(open: &'static str, body: Body) -> Opener {
        Opener {
            open,
            close: None,
            body,
            part_of_body: true,
            absorb_ws: true,
            check_name: false,
        }
    }

    /// The same opener, absorbing the whitespace before it.
    pub(crate) const fn absorbing(mut self) -> Opener {
        self.absorb_ws = true;
        self
    }

    /// The same opener, requiring the call to name a request tool.
    pub(crate) const fn checked(mut self) -> Opener {
        self.check_name = true;
        self
    }
}

/// What happens to text that is not part of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prose {
    /// Content, streamed as it comes (dropped after the first call if `drop_after_call`).
    Stream { drop_after_call: bool },
    /// Held until the end; dropped entirely once calls are found (llama3_json, phi4).
    DropIfCalls,
}

/// When a call is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// As soon as its name is accepted and its arguments are whole.
    WhenParsed,
    /// Only once its closing tag is seen (Granite 4 requires complete calls).
    AtClose,
}

/// Description of one JSON-call format.
#[derive(Debug, Clone)]
pub(crate) struct JsonFormat {
    pub(crate) openers: Vec<Opener>,
    /// Markup removed from content.
    pub(crate) strip: &'static [&'static str],
    pub(crate) prose: Prose,
    pub(crate) commit: Commit,
    /// Trailing whitespace of content is dropped before every call, not only absorbing ones.
    pub(crate) trim_before_calls: bool,
    /// An unfinished candidate at the end is released as content (else dropped).
    pub(crate) release_unfinished: bool,
    /// A call object without arguments is not a call (else its arguments are `{}`).
    pub(crate) require_arguments: bool,
    /// Calls are recognised only at the very start of the output.
    pub(crate) anchored: bool,
    /// A failed candidate releases only the text after the opener and its whitespace (Mistral).
    pub(crate) release_without_opener: bool,
}

impl JsonFormat {
    /// A format with the common defaults: streamed content dropped after calls, commit at name,
    /// unfinished candidates released, arguments optional.
    pub(crate) fn new(openers: Vec<Opener>) -> JsonFormat {
        JsonFormat {
            openers,
            strip: &[],
            prose: Prose::Stream {
                drop_after_call: true,
            },
            commit: Commit::WhenParsed,
            trim_before_calls: false,
            release_unfinished: true,
            require_arguments: false,
            anchored: false,
            release_without_opener: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayExpect {
    Open,
    FirstOrEnd,
    Item,
    CommaOrEnd,
}

/// Where the parser is. The state of the object, name or arguments being read lives in
/// [`JsonCalls`] rather than here, so that switching on the mode for every piece moves no buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Prose,
    /// Anchored format whose start was not a call: everything is content.
    ContentOnly,
    /// After an opener, before its body.
    Skip,
    /// A call object, in [`JsonCalls::object`].
    Object,
    /// An array of call objects, the current one in [`JsonCalls::object`].
    Array(ArrayExpect),
    /// A function name, in [`JsonCalls::name`].
    Name,
    /// A JSON arguments value, scanned by [`JsonCalls::scanner`].
    Arguments,
    /// After a body: optional whitespace and close tag.
    Close,
}

/// Longest function name accepted in the `Named` form; longer text is prose.
const MAX_NAME_LEN: usize = 256;

/// Streaming parser for a [`JsonFormat`].
pub(crate) struct JsonCalls {
    format: JsonFormat,
    options: ParseOptions,
    /// Openers, then the markup to strip.
    markers: MarkerList,
    mode: Mode,
    /// The call object being read (`Mode::Object` and `Mode::Array`).
    object: CallObject,
    /// The function name being read (`Mode::Name`).
    name: String,
    /// The arguments value being read (`Mode::Arguments`).
    scanner: JsonScanner,
    /// Index into `format.openers` of the current candidate.
    opener: usize,
    /// Raw text of the current candidate while nothing of it is committed.
    held: String,
    /// The current candidate produced a call.
    candidate_committed: bool,
    /// A call awaiting its close tag (`Commit::AtClose`).
    pending_call: Option<(String, String)>,
    /// Calls were found (or an explicit empty call list).
    calls_found: bool,
    /// Some call absorbs the whitespace before it (so content holds its trailing whitespace).
    absorbs_ws: bool,
    /// Trailing whitespace of content, kept until we know whether a call follows.
    ws_hold: String,
    /// Content held for `Prose::DropIfCalls`.
    prose_hold: String,
    at_start: bool,
}

impl JsonCalls {
    pub(crate) fn new(format: JsonFormat, options: ParseOptions) -> JsonCalls {
        let markers = format
            .openers
            .iter()
            .map(|opener| opener.open)
            .chain(format.strip.iter().copied())
            .collect();
        let absorbs_ws =
            format.trim_before_calls || format.openers.iter().any(|opener| opener.absorb_ws);
        JsonCalls {
            format,
            options,
            markers,
            mode: Mode::Prose,
            object: CallObject::new(),
            name: String::new(),
            scanner: JsonScanner::new(),
            opener: 0,
            held: String::new(),
            candidate_committed: false,
            pending_call: None,
            calls_found: false,
            absorbs_ws,
            ws_hold: String::new(),
            prose_hold: String::new(),
            at_start: true,
        }
    }

    fn current(&self) -> Opener {
        self.format.openers[self.opener]
    }

    /// Routes text outside calls.
    fn emit_prose(&mut self, text: &str, out: &mut dyn Sink) {
        if text.is_empty() {
            return;
        }
        match self.format.prose {
            Prose::DropIfCalls if !self.calls_found => self.prose_hold.push_str(text),
            Prose::DropIfCalls => {}
            Prose::Stream {
                drop_after_call: true,
            } if self.calls_found => {}
            Prose::Stream { .. } => out.content(text),
        }
    }

    /// Content text, keeping trailing whitespace back when a call may absorb it.
    fn prose(&mut self, text: &str, out: &mut dyn Sink) {
        if !self.absorbs_ws {
            self.emit_prose(text, out);
            return;
        }
        let body = text.trim_end();
        if !body.is_empty() {
            self.flush_ws(out);
            self.emit_prose(body, out);
        }
        self.ws_hold.push_str(&text[body.len()..]);
    }

    /// Releases the held whitespace as content, keeping its buffer for the next run.
    fn flush_ws(&mut self, out: &mut dyn Sink) {
        if self.ws_hold.is_empty() {
            return;
        }
        let ws = std::mem::take(&mut self.ws_hold);
        self.emit_prose(&ws, out);
        self.ws_hold = ws;
        self.ws_hold.clear();
    }

    fn start_candidate(&mut self, opener: usize, out: &mut dyn Sink) {
        self.opener = opener;
        let current = self.current();
        let ws = std::mem::take(&mut self.ws_hold);
        if current.absorb_ws || self.format.trim_before_calls {
            self.held = ws;
        } else {
            self.emit_prose(&ws, out);
            self.held.clear();
        }
        if !current.part_of_body && !self.format.release_without_opener {
            self.held.push_str(current.open);
        }
        self.candidate_committed = false;
        self.pending_call = None;
        self.mode = Mode::Skip;
    }

    /// Keeps candidate text for a possible release.
    fn hold(&mut self, text: &str) {
        if !self.candidate_committed {
            self.held.push_str(text);
        }
    }

    /// The candidate is not a call: its text becomes content again.
    fn fail_candidate(&mut self, out: &mut dyn Sink) {
        let held = std::mem::take(&mut self.held);
        if !self.candidate_committed {
            self.emit_prose(&held, out);
        }
        self.pending_call = None;
        self.mode = if self.format.anchored && !self.candidate_committed {
            Mode::ContentOnly
        } else {
            Mode::Prose
        };
    }

    fn announce(&mut self, name: &str, out: &mut dyn Sink) {
        if !self.calls_found {
            self.calls_found = true;
            self.prose_hold.clear();
        }
        self.held.clear();
        self.candidate_committed = true;
        out.call_start(name, None);
    }

    fn accepts(&self, name: &str) -> bool {
        !self.current().check_name || self.options.has_tool(name)
    }

    /// False once the object names a function this opener refuses.
    fn object_name_accepted(&self) -> bool {
        self.object.name().is_none_or(|name| self.accepts(name))
    }

    /// Feeds a call object (alone or as an array item); returns bytes used and the feed result.
    fn feed_object(&mut self, rest: &str, out: &mut dyn Sink) -> (usize, ObjectOutcome) {
        let fed = self.object.feed(rest);
        let used = match fed {
            ObjectFeed::More => rest.len(),
            ObjectFeed::Done(n) | ObjectFeed::Invalid(n) => n,
        };
        self.hold(&rest[..used]);
        // An object whose name is refused is rejected only where it ends or breaks, as when the
        // whole text comes in one piece. Rejecting it as soon as its name ended would rescan the
        // rest of it as prose (a `<tool_call>` in it opening a call) only when a piece ended there.
        let outcome = match fed {
            ObjectFeed::More => ObjectOutcome::More,
            _ if !self.object_name_accepted() => ObjectOutcome::Rejected,
            ObjectFeed::Done(_) => self.object_done(out),
            // Not JSON (a missing brace, an unquoted key): the text is content, as in vLLM.
            ObjectFeed::Invalid(_) => ObjectOutcome::Rejected,
        };
        (used, outcome)
    }

    /// A whole call object: its call, when it names an accepted function.
    fn object_done(&mut self, out: &mut dyn Sink) -> ObjectOutcome {
        let Some(name) = self.object.name().map(str::to_owned) else {
            return ObjectOutcome::Rejected;
        };
        let arguments_seen = self.object.arguments_seen();
        if !self.accepts(&name) || (self.format.require_arguments && !arguments_seen) {
            return ObjectOutcome::Rejected;
        }
        let arguments = if arguments_seen {
            unwrap_string_arguments(self.object.take_arguments())
        } else {
            "{}".to_owned()
        };
        match self.format.commit {
            Commit::WhenParsed => {
                self.announce(&name, out);
                out.call_args(&arguments);
            }
            Commit::AtClose => self.pending_call = Some((name, arguments)),
        }
        ObjectOutcome::Finished
    }

    fn step_prose(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        self.mode = Mode::Prose;
        if self.format.anchored {
            return self.step_anchored_start(rest, end, out);
        }
        match self.markers.markers().scan(rest, end) {
            Scan::Found { at, marker } => {
                self.prose(&rest[..at], out);
                if marker < self.format.openers.len() {
                    self.start_candidate(marker, out);
                    let opener = self.current();
                    Some(
                        at + if opener.part_of_body {
                            0
                        } else {
                            opener.open.len()
                        },
                    )
                } else {
                    Some(at + self.markers.markers().list()[marker].len())
                }
            }
            Scan::Partial { at } => {
                self.prose(&rest[..at], out);
                (at > 0).then_some(at)
            }
            Scan::Clear => {
                self.prose(rest, out);
                Some(rest.len())
            }
        }
    }

    /// Anchored formats: a call list may only open the output.
    fn step_anchored_start(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        if !self.at_start {
            self.emit_prose(rest, out);
            return Some(rest.len());
        }
        let ws = leading_ws(rest);
        if ws > 0 {
            self.ws_hold.push_str(&rest[..ws]);
            return Some(ws);
        }
        let mut undecided = false;
        for index in 0..self.format.openers.len() {
            let opener = self.format.openers[index];
            match starts_with(rest, opener.open, end) {
                Prefix::Yes => {
                    self.at_start = false;
                    self.start_candidate(index, out);
                    return Some(if opener.part_of_body {
                        0
                    } else {
                        opener.open.len()
                    });
                }
                Prefix::Undecided => undecided = true,
                Prefix::No => {}
            }
        }
        if undecided {
            return None;
        }
        self.at_start = false;
        self.mode = Mode::ContentOnly;
        Some(0)
    }

    fn step_skip(&mut self, rest: &str) -> Option<usize> {
        self.mode = Mode::Skip;
        let ws = leading_ws(rest);
        if ws > 0 {
            if !self.format.release_without_opener {
                self.hold(&rest[..ws]);
            }
            return Some(ws);
        }
        let first = *rest.as_bytes().first()?;
        self.mode = match self.current().body {
            Body::Object => Mode::Object,
            Body::Array => Mode::Array(ArrayExpect::Open),
            Body::ArrayItems => Mode::Array(ArrayExpect::FirstOrEnd),
            Body::ObjectOrArray if first == b'[' => Mode::Array(ArrayExpect::Open),
            Body::ObjectOrArray => Mode::Object,
            Body::ArrayOrNamed { .. } if first == b'[' => Mode::Array(ArrayExpect::Open),
            Body::ArrayOrNamed { .. } | Body::Named { .. } => Mode::Name,
        };
        self.object = CallObject::new();
        self.name.clear();
        Some(0)
    }

    fn step_object(&mut self, rest: &str, out: &mut dyn Sink) -> Option<usize> {
        let (used, outcome) = self.feed_object(rest, out);
        match outcome {
            ObjectOutcome::More => self.mode = Mode::Object,
            ObjectOutcome::Finished => self.mode = Mode::Close,
            ObjectOutcome::Rejected => self.fail_candidate(out),
        }
        Some(used)
    }

    fn step_array(&mut self, expect: ArrayExpect, rest: &str, out: &mut dyn Sink) -> Option<usize> {
        let Some(&first) = rest.as_bytes().first() else {
            self.mode = Mode::Array(expect);
            return None;
        };
        if expect != ArrayExpect::Item && first.is_ascii_whitespace() {
            let ws = leading_ws(rest);
            self.hold(&rest[..ws]);
            self.mode = Mode::Array(expect);
            return Some(ws);
        }
        match (expect, first) {
            (ArrayExpect::Open, b'[') => {
                self.hold("[");
                self.mode = Mode::Array(ArrayExpect::FirstOrEnd);
                Some(1)
            }
            (ArrayExpect::FirstOrEnd | ArrayExpect::CommaOrEnd, b']') => {
                self.hold("]");
                if !self.calls_found {
                    // An explicit call list, even empty, means "tools were called".
                    self.calls_found = true;
                    self.prose_hold.clear();
                }
                self.mode = Mode::Close;
                Some(1)
            }
            (ArrayExpect::FirstOrEnd, _) => {
                self.object = CallObject::new();
                self.mode = Mode::Array(ArrayExpect::Item);
                Some(0)
            }
            (ArrayExpect::CommaOrEnd, b',') => {
                self.hold(",");
                self.object = CallObject::new();
                self.mode = Mode::Array(ArrayExpect::Item);
                Some(1)
            }
            (ArrayExpect::Item, _) => {
                let (used, outcome) = self.feed_object(rest, out);
                match outcome {
                    ObjectOutcome::More => self.mode = Mode::Array(ArrayExpect::Item),
                    ObjectOutcome::Finished => {
                        self.mode = Mode::Array(ArrayExpect::CommaOrEnd);
                    }
                    ObjectOutcome::Rejected => self.fail_candidate(out),
                }
                Some(used)
            }
            _ => {
                self.fail_candidate(out);
                Some(0)
            }
        }
    }

    fn step_name(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let (name_end, consume_end) = match self.current().body {
            Body::Named {
                name_end,
                consume_end,
            } => (name_end, consume_end),
            Body::ArrayOrNamed { name_end } => (name_end, false),
            _ => ("", false),
        };
        let (taken, ended) = match scan(rest, &[name_end], end) {
            Scan::Found { at, .. } => (at, true),
            Scan::Partial { at } => (at, false),
            Scan::Clear => (rest.len(), false),
        };
        let valid = name_prefix(&rest[..taken], self.name.len(), MAX_NAME_LEN, |c| {
            c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')
        });
        self.name.push_str(&rest[..valid]);
        self.hold(&rest[..valid]);
        if valid < taken {
            self.fail_candidate(out);
            return Some(valid);
        }
        if !ended {
            self.mode = Mode::Name;
            return (taken > 0).then_some(taken);
        }
        if self.name.is_empty() || !self.accepts(&self.name) {
            self.fail_candidate(out);
            return Some(taken);
        }
        let used = taken + if consume_end { name_end.len() } else { 0 };
        self.hold(&rest[taken..used]);
        // The call waits for its arguments: text that is not JSON makes it content.
        self.pending_call = Some((std::mem::take(&mut self.name), String::new()));
        self.scanner = JsonScanner::new();
        self.mode = Mode::Arguments;
        Some(used)
    }

    fn step_arguments(&mut self, rest: &str, out: &mut dyn Sink) -> Option<usize> {
        self.mode = Mode::Arguments;
        if self.scanner.is_untouched() {
            let ws = leading_ws(rest);
            if ws > 0 {
                return Some(ws);
            }
        }
        let (used, done) = match self.scanner.feed(rest) {
            Feed::More => (rest.len(), false),
            Feed::Done(n) => (n, true),
            Feed::Invalid(n) => {
                // Not JSON: the text is content, as in vLLM.
                self.hold(&rest[..n]);
                self.fail_candidate(out);
                return Some(n);
            }
        };
        self.hold(&rest[..used]);
        if let Some((_, arguments)) = &mut self.pending_call {
            arguments.push_str(&rest[..used]);
        }
        self.mode = if done { Mode::Close } else { Mode::Arguments };
        if done
            && self.format.commit == Commit::WhenParsed
            && let Some((name, arguments)) = self.pending_call.take()
        {
            self.announce(&name, out);
            out.call_args(&unwrap_string_arguments(arguments));
        }
        Some(used)
    }

    fn step_close(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        let Some(close) = self.current().close else {
            self.close_done(out);
            return Some(0);
        };
        let ws = leading_ws(rest);
        match starts_with(&rest[ws..], close, end) {
            Prefix::Yes => {
                self.close_done(out);
                Some(ws + close.len())
            }
            Prefix::Undecided => {
                self.mode = Mode::Close;
                None
            }
            Prefix::No if self.pending_call.is_some() => {
                self.fail_candidate(out);
                Some(0)
            }
            Prefix::No => {
                self.close_done(out);
                Some(0)
            }
        }
    }

    fn close_done(&mut self, out: &mut dyn Sink) {
        if let Some((name, arguments)) = self.pending_call.take() {
            self.announce(&name, out);
            out.call_args(&unwrap_string_arguments(arguments));
        }
        self.held.clear();
        self.mode = Mode::Prose;
    }
}

/// Arguments the model wrote as a JSON string that holds a JSON object are that object (not
/// the string, which clients would have to decode twice); any other value is kept as written.
fn unwrap_string_arguments(arguments: String) -> String {
    let held = serde_json::from_str::<String>(&arguments)
        .ok()
        .filter(|inner| {
            serde_json::from_str::<serde_json::Value>(inner).is_ok_and(|value| value.is_object())
        });
    match held {
        Some(inner) => inner.trim().to_owned(),
        None => arguments,
    }
}

/// What a fed call object amounted to.
enum ObjectOutcome {
    More,
    Finished,
    Rejected,
}

impl Stage for JsonCalls {
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize> {
        // Without input only these modes have anything left to do; the handlers of the others
        // are given input.
        if rest.is_empty() && !matches!(self.mode, Mode::ContentOnly | Mode::Close) {
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose => self.step_prose(rest, end, out),
            Mode::ContentOnly => {
                self.mode = Mode::ContentOnly;
                self.flush_ws(out);
                self.emit_prose(rest, out);
                (!rest.is_empty()).then_some(rest.len())
            }
            Mode::Skip => self.step_skip(rest),
            Mode::Object => self.step_object(rest, out),
            Mode::Array(expect) => self.step_array(expect, rest, out),
            Mode::Name => self.step_name(rest, end, out),
            Mode::Arguments => self.step_arguments(rest, out),
            Mode::Close => self.step_close(rest, end, out),
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) {
        match std::mem::replace(&mut self.mode, Mode::Prose) {
            Mode::Prose | Mode::ContentOnly => {}
            // The output ended inside a call's arguments (a generation cut at its token limit):
            // the call with what was written, as vLLM's and llama.cpp's parsers report it.
            Mode::Arguments if self.format.commit == Commit::WhenParsed => {
                if let Some((name, arguments)) = self.pending_call.take() {
                    self.announce(&name, out);
                    if arguments.is_empty() {
                        out.call_args("{}");
                    } else {
                        out.call_args(&arguments);
                    }
                }
            }
            Mode::Object | Mode::Array(ArrayExpect::Item)
                if self.format.commit == Commit::WhenParsed
                    && self.object.name().is_some_and(|name| self.accepts(name))
                    && (self.object.arguments_seen() || !self.format.require_arguments) =>
            {
                let name = self.object.name().unwrap_or_default().to_owned();
                self.announce(&name, out);
                if self.object.arguments_seen() {
                    out.call_args(&self.object.take_arguments());
                } else {
                    out.call_args("{}");
                }
            }
            Mode::Close if self.pending_call.is_none() => {}
            // The unfinished item of an array whose earlier calls were reported.
            Mode::Arguments | Mode::Object | Mode::Array(..) if self.candidate_committed => {}
            Mode::Skip
            | Mode::Object
            | Mode::Array(..)
            | Mode::Name
            | Mode::Arguments
            | Mode::Close => {
                if !self.format.release_unfinished {
                    self.held.clear();
                    self.pending_call = None;
                    self.candidate_committed = true;
                }
                self.fail_candidate(out);
            }
        }
        self.flush_ws(out);
        if !self.calls_found {
            let held = std::mem::take(&mut self.prose_hold);
            out.content(&held);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::parsers::{ChatParser, ParseOptions, ToolParserKind, ToolSpec};

    /// Found by the `tool_parsers` fuzz target: streamed a char at a time, a bare object naming
    /// no request tool was refused as soon as its name ended, so a `<tool_call>` key after it
    /// opened a call; parsed whole, the object was refused where it ended and stayed content.
    #[test]
    fn a_refused_object_is_content_however_it_is_cut() {
        let options = ParseOptions {
            tools: vec![ToolSpec {
                name: "get_weather".to_owned(),
                parameters: serde_json::Value::Null,
            }],
            ..ParseOptions::default()
        };
        let text = "{\"name\": \"nope\", \"<tool_call>\": {\"name\": \"get_weather\"}} done";
        let whole = ChatParser::parse(Some(ToolParserKind::Hermes), None, options.clone(), text);
        assert_eq!(whole.content.as_deref(), Some(text));
        assert!(whole.tool_calls.is_empty());

        let mut parser = ChatParser::new(Some(ToolParserKind::Hermes), None, options);
        let mut content = String::new();
        for (at, c) in text.char_indices() {
            let delta = parser.push(&text[at..at + c.len_utf8()]);
            assert!(delta.tool_calls.is_empty(), "a call at byte {at}");
            content.push_str(&delta.content);
        }
        content.push_str(&parser.finish().content);
        assert_eq!(content, text);
    }
}
