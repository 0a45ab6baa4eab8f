//! The gRPC request path without an engine: bytes decoded as a `ModelOptions` (first byte
//! even) read into a `LoadRequest`, or as a `PredictOptions` (first byte odd) rendered by the
//! Qwen2.5 chat template with the Hermes tool parser, checked into a generation request, and
//! its prompt text fed as model output through the request's parser in two pieces. Nothing
//! may panic or abort; every refusal is an error value.
#![no_main]

use std::sync::LazyLock;

use backend_common::chat::ChatSetup;
use backend_common::engine::ModelInfo;
use backend_common::load::{LoadRequest, ParserChoice};
use backend_common::pb::{ModelOptions, PredictOptions};
use backend_common::request::{ModelLimits, generation_request};
use backend_common::template::TemplateSource;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const TEMPLATE: &str = include_str!(
    "../../backend-common/tests/fixtures/chat_templates/templates/Qwen-Qwen2.5-7B-Instruct.jinja"
);

static CHAT: LazyLock<(ChatSetup, ModelLimits)> = LazyLock::new(|| {
    let info = ModelInfo {
        name: Some("Qwen2.5 fuzz".into()),
        context_length: 4096,
        chat_template: Some(TemplateSource::Single(TEMPLATE.into())),
        special_tokens: Default::default(),
        vocab_size: char::MAX as u32 + 1,
    };
    let choice = ParserChoice {
        tool: Some("hermes".into()),
        reasoning: Some("qwen3".into()),
    };
    let chat = ChatSetup::new(&info, "qwen2.5-fuzz.gguf", &choice).expect("the fixture loads");
    let limits = ModelLimits {
        context_length: info.context_length,
        vocab_size: info.vocab_size,
        seed: None,
        grammar_triggers: vec!["<tool_call>".into()],
    };
    (chat, limits)
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        if let Ok(options) = ModelOptions::decode(bytes) {
            let _ = LoadRequest::from_proto(&options);
        }
        return;
    }
    let Ok(request) = PredictOptions::decode(bytes) else {
        return;
    };
    let (chat, limits) = &*CHAT;
    let Ok(prepared) = chat.prepare(&request) else {
        return;
    };
    // One token per character, as a tokenizer with a token for every character would give.
    let tokens: Vec<i32> = prepared.prompt.text.chars().map(|c| c as i32).collect();
    let text = prepared.prompt.text.clone();
    let Ok((_, Some(mut parser))) = generation_request(&request, prepared, tokens, limits) else {
        return;
    };
    let cut = (usize::from(selector) * 7) % (text.len() + 1);
    let cut = (0..=cut)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    parser.push(&text[..cut]);
    parser.push(&text[cut..]);
    parser.finish();
    let _ = parser.message();
});
