//! The streaming machinery shared by all parsers: stage trait, input buffers and the recorder
//! that turns parser events into [`ChatDelta`]s and a [`ParsedMessage`].
//!
//! Every parser is a [`Stage`]: it consumes a prefix of its pending input and reports events to a
//! [`Sink`]. Input it cannot decide yet (a possible partial marker) stays pending; everything else
//! is consumed once, so the total work is linear in the output length.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use super::types::{ChatDelta, ParsedMessage, ToolCall, ToolCallDelta};

/// What may follow the input handed to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// More text may follow, possibly completing a marker that the input ends with.
    Open,
    /// More text may follow, but the input ends at a special-token boundary: no marker continues
    /// across it.
    Boundary,
    /// The generation is over.
    Eof,
}

impl End {
    /// True when a possible partial marker at the end of the input must be held back.
    pub(crate) fn may_continue_marker(self) -> bool {
        self == End::Open
    }

    /// True at the end of the generation.
    pub(crate) fn is_eof(self) -> bool {
        self == End::Eof
    }
}

/// Receiver of parser events.
pub(crate) trait Sink {
    /// Visible text.
    fn content(&mut self, text: &str);
    /// Reasoning text.
    fn reasoning(&mut self, text: &str);
    /// Records that the output has a reasoning section, even if it stays empty.
    fn reasoning_section(&mut self);
    /// A new tool call; `id` is the model's own id when the format carries one.
    fn call_start(&mut self, name: &str, id: Option<&str>);
    /// The next fragment of the current call's arguments.
    fn call_args(&mut self, fragment: &str);
}

/// An incremental parser.
pub(crate) trait Stage: Send {
    /// Consumes a prefix of `rest` in the parser's current mode and reports what it decided;
    /// `None` when nothing more can be decided until more input (or the end) comes. Returns
    /// lengths in bytes, on char boundaries.
    fn step(&mut self, rest: &str, end: End, out: &mut dyn Sink) -> Option<usize>;

    /// Consumes a prefix of `input` (returning its length in bytes, on a char boundary) and
    /// reports what it decided, step by step. At [`End::Eof`] it must consume everything.
    ///
    /// Empty input with [`End::Open`] holds nothing to decide, and callers skip such calls (a
    /// reasoning stage passes nothing on to the tool stage for most pieces).
    fn advance(&mut self, input: &str, end: End, out: &mut dyn Sink) -> usize {
        let mut used = 0;
        while let Some(step) = self.step(&input[used..], end, out) {
            used += step;
        }
        used
    }

    /// Resolves internal state at the end of the generation, after the final `advance`.
    fn finish(&mut self, out: &mut dyn Sink);
}

/// The stage used when no parser is selected: all text is content.
pub(crate) struct Passthrough;

impl Stage for Passthrough {
    fn step(&mut self, rest: &str, _end: End, out: &mut dyn Sink) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        out.content(rest);
        Some(rest.len())
    }

    fn finish(&mut self, _out: &mut dyn Sink) {}
}

/// Pending (unconsumed) input of one stage.
#[derive(Default)]
pub(crate) struct PendingInput {
    buf: String,
    start: usize,
}

impl PendingInput {
    /// Appends new text.
    pub(crate) fn push(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// True when nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.start >= self.buf.len()
    }

    /// Appends `text` and lets `stage` consume what it can, like [`push`](PendingInput::push)
    /// then [`run`](PendingInput::run).
    ///
    /// With nothing held (the usual case) the stage reads `text` in place and only what it leaves
    /// is copied, so a streamed piece costs no buffer traffic.
    pub(crate) fn feed(&mut self, text: &str, stage: &mut dyn Stage, end: End, out: &mut dyn Sink) {
        if text.is_empty() || !self.is_empty() {
            self.push(text);
            self.run(stage, end, out);
            return;
        }
        let used = consume(stage, text, end, out);
        if used < text.len() {
            self.buf.clear();
            self.start = 0;
            self.buf.push_str(&text[used..]);
        }
    }

    /// Lets `stage` consume what it can.
    pub(crate) fn run(&mut self, stage: &mut dyn Stage, end: End, out: &mut dyn Sink) {
        if end == End::Open && self.is_empty() {
            return;
        }
        let used = consume(stage, &self.buf[self.start..], end, out);
        self.start += used;
        // Compact once the consumed prefix dominates, keeping appends amortised O(1).
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 4096 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Runs `stage` over `pending`; returns how many bytes it consumed (all of them at the end).
fn consume(stage: &mut dyn Stage, pending: &str, end: End, out: &mut dyn Sink) -> usize {
    let mut used = stage.advance(pending, end, out).min(pending.len());
    // A stage reports byte counts; never split a character even if one misreports.
    while !pending.is_char_boundary(used) {
        used -= 1;
    }
    if end.is_eof() && used < pending.len() {
        // The contract says a stage consumes everything at the end; keep the text visible
        // rather than lose it if one does not.
        out.content(&pending[used..]);
        used = pending.len();
    }
    used
}

/// Source of generated tool-call ids (`call_` + 24 hex digits, random per parser instance).
struct IdSource {
    keys: RandomState,
    counter: u64,
}

impl IdSource {
    fn new() -> IdSource {
        IdSource {
            keys: RandomState::new(),
            counter: 0,
        }
    }

    fn next_id(&mut self) -> String {
        let mut high = self.keys.build_hasher();
        high.write_u64(self.counter);
        let mut low = self.keys.build_hasher();
        low.write_u64(!self.counter);
        self.counter += 1;
        format!("call_{:016x}{:08x}", high.finish(), low.finish() as u32)
    }
}

/// Collects events into the current delta and into the whole message.
pub(crate) struct Recorder {
    delta: ChatDelta,
    /// How many entries of `delta.tool_calls` belong to the delta being gathered. Entries after
    /// them are left from the previous delta and get overwritten in place, so that streaming
    /// arguments allocates nothing per push once the buffers have grown.
    live_calls: usize,
    /// Entries no delta needed lately, kept for their buffers.
    spare: Vec<ToolCallDelta>,
    content: String,
    reasoning: String,
    reasoning_seen: bool,
    calls: Vec<ToolCall>,
    ids: IdSource,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            delta: ChatDelta::default(),
            live_calls: 0,
            spare: Vec::new(),
            content: String::new(),
            reasoning: String::new(),
            reasoning_seen: false,
            calls: Vec::new(),
            ids: IdSource::new(),
        }
    }

    /// Starts a new delta, reusing the buffers of the previous one.
    pub(crate) fn begin_delta(&mut self) {
        self.delta.content.clear();
        self.delta.reasoning_content.clear();
        self.live_calls = 0;
    }

    /// Ends the delta begun by [`begin_delta`](Recorder::begin_delta): entries of the previous
    /// delta that were not overwritten are set aside.
    pub(crate) fn end_delta(&mut self) {
        if self.delta.tool_calls.len() > self.live_calls {
            self.spare
                .extend(self.delta.tool_calls.drain(self.live_calls..));
        }
    }

    /// The delta gathered between [`begin_delta`](Recorder::begin_delta) and
    /// [`end_delta`](Recorder::end_delta).
    pub(crate) fn delta(&self) -> &ChatDelta {
        &self.delta
    }

    /// The message so far; `content_always_present` reports empty content as `Some("")`.
    pub(crate) fn message(&self, content_always_present: bool) -> ParsedMessage {
        let content = if content_always_present || !self.content.is_empty() {
            Some(self.content.clone())
        } else {
            None
        };
        let reasoning_content = if self.reasoning_seen || !self.reasoning.is_empty() {
            Some(self.reasoning.clone())
        } else {
            None
        };
        ParsedMessage {
            content,
            reasoning_content,
            tool_calls: self.calls.clone(),
        }
    }

    /// Adds a tool-call entry to the delta, reusing an old entry's buffers when there is one.
    fn delta_entry(
        &mut self,
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: &str,
    ) {
        let calls = &mut self.delta.tool_calls;
        if self.live_calls == calls.len()
            && let Some(entry) = self.spare.pop()
        {
            calls.push(entry);
        }
        match calls.get_mut(self.live_calls) {
            Some(entry) => {
                entry.index = index;
                entry.id = id;
                entry.name = name;
                entry.arguments.clear();
                entry.arguments.push_str(arguments);
            }
            None => calls.push(ToolCallDelta {
                index,
                id,
                name,
                arguments: arguments.to_owned(),
            }),
        }
        self.live_calls += 1;
    }
}

impl Sink for Recorder {
    fn content(&mut self, text: &str) {
        self.delta.content.push_str(text);
        self.content.push_str(text);
    }

    fn reasoning(&mut self, text: &str) {
        self.delta.reasoning_content.push_str(text);
        self.reasoning.push_str(text);
    }

    fn reasoning_section(&mut self) {
        self.reasoning_seen = true;
    }

    fn call_start(&mut self, name: &str, id: Option<&str>) {
        let id = match id {
            Some(id) => id.to_owned(),
            None => self.ids.next_id(),
        };
        let index = self.calls.len();
        self.calls.push(ToolCall {
            id: id.clone(),
            name: name.to_owned(),
            arguments: String::new(),
        });
        self.delta_entry(index, Some(id), Some(name.to_owned()), "");
    }

    fn call_args(&mut self, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        let Some(call) = self.calls.last_mut() else {
            return;
        };
        call.arguments.push_str(fragment);
        let index = self.calls.len() - 1;
        let (live, stale) = self.delta.tool_calls.split_at_mut(self.live_calls);
        match (live.last_mut(), stale.first_mut()) {
            (Some(last), _) if last.index == index => last.arguments.push_str(fragment),
            // The usual streaming step: the previous delta's fragment entry becomes this one's.
            (_, Some(entry)) if entry.id.is_none() && entry.name.is_none() => {
                entry.index = index;
                entry.arguments.clear();
                entry.arguments.push_str(fragment);
                self.live_calls += 1;
            }
            _ => self.delta_entry(index, None, None, fragment),
        }
    }
}
