//! Fuzz target: arbitrary bytes (as lossy UTF-8) through every tool parser, alone and behind each
//! reasoning parser, whole and streamed at input-chosen split points. Nothing may panic and the
//! streamed deltas, merged, must equal the whole parse.
//!
//! Run with `cargo fuzz run tool_parsers` from `backend-common/`.

#![no_main]

use backend_common::parsers::{
    ChatParser, ParseOptions, ParsedMessage, ReasoningParserKind, ToolParserKind, ToolSpec,
};
use libfuzzer_sys::fuzz_target;

/// A message reduced to what must agree between whole and streamed parsing.
#[derive(Debug, PartialEq)]
struct Outcome {
    content: String,
    reasoning: String,
    calls: Vec<(String, String, String)>,
}

impl Outcome {
    fn of(message: &ParsedMessage) -> Outcome {
        Outcome {
            content: message.content.clone().unwrap_or_default(),
            reasoning: message.reasoning_content.clone().unwrap_or_default(),
            calls: message
                .tool_calls
                .iter()
                .map(|call| {
                    (
                        stable_id(&call.id),
                        call.name.clone(),
                        call.arguments.clone(),
                    )
                })
                .collect(),
        }
    }
}

/// Generated ids differ between parser instances; model-given ids must match.
fn stable_id(id: &str) -> String {
    if id.starts_with("call_") {
        String::new()
    } else {
        id.to_owned()
    }
}

/// Splits `text` into pieces whose lengths (in chars) come from `lengths`.
fn split<'a>(text: &'a str, lengths: &[u8]) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut index = 0;
    while !rest.is_empty() {
        let chars = usize::from(
            lengths
                .get(index % lengths.len().max(1))
                .copied()
                .unwrap_or(1)
                % 8,
        ) + 1;
        let cut = rest
            .char_indices()
            .nth(chars)
            .map_or(rest.len(), |(at, _)| at);
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
        index += 1;
    }
    pieces
}

fn check(
    tool: Option<ToolParserKind>,
    reasoning: Option<ReasoningParserKind>,
    options: &ParseOptions,
    text: &str,
    lengths: &[u8],
) {
    let whole = ChatParser::parse(tool, reasoning, options.clone(), text);
    let mut parser = ChatParser::new(tool, reasoning, options.clone());
    let mut content = String::new();
    let mut reasoning_text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut merge = |delta: &backend_common::parsers::ChatDelta| {
        content.push_str(&delta.content);
        reasoning_text.push_str(&delta.reasoning_content);
        for call in &delta.tool_calls {
            if call.index == calls.len() {
                assert!(
                    call.id.is_some() && call.name.is_some(),
                    "new call without id/name"
                );
                calls.push((
                    stable_id(call.id.as_deref().unwrap_or_default()),
                    call.name.clone().unwrap_or_default(),
                    call.arguments.clone(),
                ));
            } else {
                assert!(call.index + 1 == calls.len(), "fragment for a closed call");
                assert!(
                    call.id.is_none() && call.name.is_none(),
                    "id/name sent twice"
                );
                calls[call.index].2.push_str(&call.arguments);
            }
        }
    };
    for piece in split(text, lengths) {
        merge(parser.push(piece));
    }
    merge(parser.finish());
    let streamed = Outcome {
        content,
        reasoning: reasoning_text,
        calls,
    };
    assert_eq!(
        streamed,
        Outcome::of(&whole),
        "tool {tool:?}, reasoning {reasoning:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let (lengths, body) = data.split_at(data.len().min(8));
    let text = String::from_utf8_lossy(body);
    let tools = if lengths.first().is_some_and(|b| b & 1 == 1) {
        ToolSpec::list_from_openai_json(
            r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}}}}}]"#,
        )
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let options = ParseOptions {
        tools,
        enable_thinking: match lengths.get(1).map(|b| b % 3) {
            Some(1) => Some(true),
            Some(2) => Some(false),
            _ => None,
        },
        thinking_forced_open: lengths.get(2).is_some_and(|b| b & 1 == 1),
    };
    for tool in ToolParserKind::all() {
        check(Some(tool), None, &options, &text, lengths);
    }
    for reasoning in ReasoningParserKind::all() {
        check(
            Some(ToolParserKind::Hermes),
            Some(reasoning),
            &options,
            &text,
            lengths,
        );
        check(None, Some(reasoning), &options, &text, lengths);
    }
});
