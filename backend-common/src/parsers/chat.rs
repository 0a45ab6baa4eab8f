//! [`ChatParser`]: the per-request driver that runs the reasoning parser, then the tool parser,
//! over streamed model output, and gives both deltas and the whole message.

use super::registry::{ReasoningParserKind, ToolParserKind};
use super::stream::{End, Passthrough, PendingInput, Recorder, Sink, Stage};
use super::types::{ChatDelta, ParseOptions, ParsedMessage};

/// Sink of the reasoning stage: its content becomes the tool stage's input.
struct IntoTools<'a> {
    tool_input: &'a mut PendingInput,
    out: &'a mut Recorder,
}

impl Sink for IntoTools<'_> {
    fn content(&mut self, text: &str) {
        self.tool_input.push(text);
    }

    fn reasoning(&mut self, text: &str) {
        self.out.reasoning(text);
    }

    fn reasoning_section(&mut self) {
        self.out.reasoning_section();
    }

    fn call_start(&mut self, name: &str, id: Option<&str>) {
        self.out.call_start(name, id);
    }

    fn call_args(&mut self, fragment: &str) {
        self.out.call_args(fragment);
    }
}

/// Streaming parser for one generation: reasoning first, then tool calls.
///
/// Feed it with [`push`](ChatParser::push) (and [`push_special`](ChatParser::push_special) for
/// pieces that are one whole special token), end with [`finish`](ChatParser::finish). Each call
/// returns only what is new; the deltas merged by tool index equal [`message`](ChatParser::message),
/// which equals [`ChatParser::parse`] of the whole text.
pub struct ChatParser {
    reasoning: Option<(Box<dyn Stage>, PendingInput)>,
    tools: Box<dyn Stage>,
    tool_input: PendingInput,
    recorder: Recorder,
    content_always_present: bool,
    finished: bool,
}

impl ChatParser {
    /// A parser with the given tool and reasoning parsers (either may be absent).
    pub fn new(
        tool: Option<ToolParserKind>,
        reasoning: Option<ReasoningParserKind>,
        options: ParseOptions,
    ) -> ChatParser {
        let mut recorder = Recorder::new();
        // Harmony carries reasoning and calls in one syntax: its tool parser does both.
        let harmony_does_reasoning = tool == Some(ToolParserKind::Openai)
            && reasoning == Some(ReasoningParserKind::OpenaiGptOss);
        let tool_markers = tool.map_or(&[][..], ToolParserKind::call_markers);
        let reasoning = reasoning
            .filter(|_| !harmony_does_reasoning)
            .and_then(|kind| kind.stage(&options, tool_markers, &mut recorder))
            .map(|stage| (stage, PendingInput::default()));
        let tools = match tool {
            Some(kind) => kind.stage(&options),
            None => Box::new(Passthrough),
        };
        ChatParser {
            reasoning,
            tools,
            tool_input: PendingInput::default(),
            recorder,
            content_always_present: tool.is_some_and(ToolParserKind::content_always_present),
            finished: false,
        }
    }

    /// Parses a whole generation at once (the same code path as streaming).
    pub fn parse(
        tool: Option<ToolParserKind>,
        reasoning: Option<ReasoningParserKind>,
        options: ParseOptions,
        text: &str,
    ) -> ParsedMessage {
        let mut parser = ChatParser::new(tool, reasoning, options);
        parser.push(text);
        parser.finish();
        parser.message()
    }

    /// Feeds generated text; returns what it adds to the message (valid until the next call).
    pub fn push(&mut self, text: &str) -> &ChatDelta {
        self.recorder.begin_delta();
        if !self.finished {
            self.feed(text, End::Open);
        }
        self.recorder.end_delta();
        self.recorder.delta()
    }

    /// Feeds one whole special token: no marker is matched across its edges, so text held back
    /// as a possible partial marker before it is resolved at once.
    pub fn push_special(&mut self, token: &str) -> &ChatDelta {
        self.recorder.begin_delta();
        if !self.finished {
            self.feed("", End::Boundary);
            self.feed(token, End::Boundary);
        }
        self.recorder.end_delta();
        self.recorder.delta()
    }

    /// Ends the generation: resolves held-back text and unfinished calls.
    pub fn finish(&mut self) -> &ChatDelta {
        self.recorder.begin_delta();
        if !self.finished {
            self.finished = true;
            self.feed("", End::Eof);
        }
        self.recorder.end_delta();
        self.recorder.delta()
    }

    /// The message as parsed so far (complete after [`finish`](ChatParser::finish)).
    pub fn message(&self) -> ParsedMessage {
        self.recorder.message(self.content_always_present)
    }

    fn feed(&mut self, text: &str, end: End) {
        match &mut self.reasoning {
            Some((stage, input)) => {
                let mut sink = IntoTools {
                    tool_input: &mut self.tool_input,
                    out: &mut self.recorder,
                };
                input.feed(text, stage.as_mut(), end, &mut sink);
                if end.is_eof() {
                    stage.finish(&mut sink);
                }
                // Text the reasoning stage still holds sits between the tool input and the
                // boundary, so the tool stage may not treat its input as ending there.
                let tool_end = if end == End::Boundary && !input.is_empty() {
                    End::Open
                } else {
                    end
                };
                self.tool_input
                    .run(self.tools.as_mut(), tool_end, &mut self.recorder);
            }
            None => self
                .tool_input
                .feed(text, self.tools.as_mut(), end, &mut self.recorder),
        }
        if end.is_eof() {
            self.tools.finish(&mut self.recorder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::types::ToolSpec;
    use serde_json::json;

    fn weather_tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".to_owned(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }]
    }

    #[test]
    fn a_cut_marker_is_held_back_then_resolved() {
        let mut parser =
            ChatParser::new(Some(ToolParserKind::Hermes), None, ParseOptions::default());
        assert_eq!(parser.push("Hello <tool").content, "Hello ");
        // Not a marker after all: the held text comes out with what follows.
        assert_eq!(parser.push("kit>").content, "<toolkit>");
        assert_eq!(parser.push(" <tool_").content, " ");
        let delta = parser.push("call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}");
        assert_eq!(delta.content, "");
        assert_eq!(delta.tool_calls[0].name.as_deref(), Some("f"));
        assert_eq!(delta.tool_calls[0].arguments, "{\"a\": 1}");
        assert!(parser.finish().is_empty());
    }

    #[test]
    fn a_special_token_resolves_held_text_at_once() {
        let mut parser =
            ChatParser::new(Some(ToolParserKind::Hermes), None, ParseOptions::default());
        assert_eq!(parser.push("x <tool").content, "x ");
        assert_eq!(parser.push_special("<|im_end|>").content, "<tool<|im_end|>");
    }

    #[test]
    fn forced_open_thinking_needs_no_start_tag() {
        let options = ParseOptions {
            thinking_forced_open: true,
            ..ParseOptions::default()
        };
        let message = ChatParser::parse(
            None,
            Some(ReasoningParserKind::LlamacppDeepseek),
            options,
            "step one</think>\n\nanswer",
        );
        assert_eq!(message.reasoning_content.as_deref(), Some("step one"));
        assert_eq!(message.content.as_deref(), Some("answer"));
    }

    #[test]
    fn disabled_thinking_does_not_swallow_content() {
        let options = ParseOptions {
            enable_thinking: Some(false),
            ..ParseOptions::default()
        };
        let message = ChatParser::parse(
            Some(ToolParserKind::Hermes),
            Some(ReasoningParserKind::Qwen3),
            options,
            "Paris is the capital. Let me <think> about it.",
        );
        assert_eq!(message.reasoning_content, None);
        assert_eq!(
            message.content.as_deref(),
            Some("Paris is the capital. Let me <think> about it.")
        );
    }

    #[test]
    fn bare_json_naming_a_request_tool_is_a_call() {
        let options = ParseOptions {
            tools: weather_tools(),
            ..ParseOptions::default()
        };
        let bare = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        let message = ChatParser::parse(Some(ToolParserKind::Hermes), None, options.clone(), bare);
        assert_eq!(message.content, None);
        assert_eq!(message.tool_calls.len(), 1);
        assert_eq!(message.tool_calls[0].arguments, "{\"city\": \"Paris\"}");

        let fenced = format!("Sure.\n```json\n{bare}\n```");
        let message =
            ChatParser::parse(Some(ToolParserKind::Hermes), None, options.clone(), &fenced);
        assert_eq!(message.content.as_deref(), Some("Sure."));
        assert_eq!(message.tool_calls[0].name, "get_weather");

        // An object naming no request tool, or a request without tools, stays content.
        let other = "{\"name\": \"book_flight\", \"arguments\": {}}";
        let message = ChatParser::parse(Some(ToolParserKind::Hermes), None, options, other);
        assert_eq!(message.content.as_deref(), Some(other));
        assert!(message.tool_calls.is_empty());
        let message = ChatParser::parse(
            Some(ToolParserKind::Hermes),
            None,
            ParseOptions::default(),
            bare,
        );
        assert_eq!(message.content.as_deref(), Some(bare));
    }

    #[test]
    fn a_tool_call_inside_reasoning_is_not_lost() {
        let output = "I should look it up.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let message = ChatParser::parse(
            Some(ToolParserKind::Hermes),
            Some(ReasoningParserKind::DeepSeekR1),
            ParseOptions::default(),
            output,
        );
        assert_eq!(
            message.reasoning_content.as_deref(),
            Some("I should look it up.\n")
        );
        assert_eq!(message.tool_calls.len(), 1);
        assert_eq!(message.tool_calls[0].name, "get_weather");
    }

    #[test]
    fn reasoning_then_calls_stream_as_separate_fields() {
        let mut parser = ChatParser::new(
            Some(ToolParserKind::Hermes),
            Some(ReasoningParserKind::Qwen3),
            ParseOptions::default(),
        );
        let first = parser.push("<think>plan</think>Calling.");
        assert_eq!(first.reasoning_content, "plan");
        assert_eq!(first.content, "Calling.");
        // A call is reported once its JSON is whole: until then it may still turn out to be
        // malformed, and then it is content.
        let second = parser.push("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": [1, ");
        assert!(second.tool_calls.is_empty() && second.content.is_empty());
        let third = parser.push("2]}}</tool_call>");
        assert_eq!(third.tool_calls[0].index, 0);
        assert!(
            third.tool_calls[0]
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with("call_"))
        );
        assert_eq!(third.tool_calls[0].name.as_deref(), Some("f"));
        assert_eq!(third.tool_calls[0].arguments, "{\"x\": [1, 2]}");
        parser.finish();
        assert_eq!(parser.message().tool_calls[0].arguments, "{\"x\": [1, 2]}");
    }
}

#[cfg(test)]
mod malformed_calls {
    use super::*;
    use crate::parsers::{ToolParserKind, ToolSpec};

    /// Output of `kind` around `body`, parsed whole and streamed cut at every byte.
    fn parse_every_way(kind: ToolParserKind, text: &str) -> Vec<ParsedMessage> {
        let tools = ToolSpec::list_from_openai_json(
            r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#,
        )
        .unwrap();
        let options = || ParseOptions {
            tools: tools.clone(),
            ..Default::default()
        };
        let mut all = vec![ChatParser::parse(Some(kind), None, options(), text)];
        for cut in (1..text.len()).filter(|&cut| text.is_char_boundary(cut)) {
            let mut parser = ChatParser::new(Some(kind), None, options());
            parser.push(&text[..cut]);
            parser.push(&text[cut..]);
            parser.finish();
            all.push(parser.message());
        }
        all
    }

    const FORMATS: &[(ToolParserKind, &str, &str)] = &[
        (ToolParserKind::Hermes, "<tool_call>\n", "\n</tool_call>"),
        (
            ToolParserKind::LlamacppHermes2Pro,
            "<tool_call>\n",
            "\n</tool_call>",
        ),
        (ToolParserKind::Llama3Json, "", ""),
        (ToolParserKind::Mistral, "[TOOL_CALLS][", "]"),
        (ToolParserKind::Mistral, "[TOOL_CALLS]get_weather", ""),
        (ToolParserKind::Xlam, "[", "]"),
        (ToolParserKind::Jamba, "<tool_calls>[", "]</tool_calls>"),
    ];

    #[test]
    fn a_call_that_is_not_json_comes_back_as_content() {
        for &(kind, open, close) in FORMATS {
            let body = if open.ends_with("get_weather") {
                "{city: \"Paris\"}"
            } else {
                "{\"name\": \"get_weather\", \"arguments\": {city: \"Paris\"}}"
            };
            let text = format!("{open}{body}{close}");
            for message in parse_every_way(kind, &text) {
                assert!(
                    message.tool_calls.is_empty(),
                    "{kind:?} {text:?}: {message:?}"
                );
                let content = message.content.unwrap_or_default();
                assert!(
                    content.contains("city: \"Paris\""),
                    "{kind:?} {text:?}: the model's text is lost ({content:?})"
                );
            }
        }
    }

    #[test]
    fn arguments_written_as_a_json_string_holding_an_object_are_that_object() {
        // Mistral's named form needs an object after the name, so it is not tried here.
        for &(kind, open, close) in FORMATS
            .iter()
            .filter(|(_, open, _)| !open.ends_with("get_weather"))
        {
            let body =
                "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}";
            let text = format!("{open}{body}{close}");
            for message in parse_every_way(kind, &text) {
                assert_eq!(
                    message.tool_calls.len(),
                    1,
                    "{kind:?} {text:?}: {message:?}"
                );
                assert_eq!(
                    message.tool_calls[0].arguments, "{\"city\": \"Paris\"}",
                    "{kind:?} {text:?}"
                );
            }
        }
    }
}
