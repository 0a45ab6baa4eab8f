//! Fuzzes the chat-template renderer: any template and any messages must give a prompt
//! or an error, never a panic.
//!
//! Input layout: `template \0 messages [\0 tools]`. The messages blob holds one message a
//! line, fields separated by tabs in `ChatMessage` order (role, content, name,
//! tool_call_id, reasoning_content, tool_calls); the first byte's low bits pick
//! `add_generation_prompt` and `enable_thinking`.
#![no_main]

use std::collections::HashMap;

use backend_common::template::{ChatMessage, render_prompt};
use libfuzzer_sys::fuzz_target;

fn message(line: &str) -> ChatMessage {
    let mut fields = line.split('\t').map(str::to_owned);
    let mut next = || fields.next().unwrap_or_default();
    ChatMessage {
        role: next(),
        content: next(),
        name: next(),
        tool_call_id: next(),
        reasoning_content: next(),
        tool_calls: next(),
    }
}

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or_default();
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let template = parts.next().unwrap_or_default();
    let messages: Vec<ChatMessage> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .map(message)
        .collect();
    let tools = parts.next().unwrap_or_default();
    let mut metadata = HashMap::new();
    metadata.insert(
        "enable_thinking".to_owned(),
        if flags & 2 == 0 { "false" } else { "TRUE" }.to_owned(),
    );
    let _ = render_prompt(
        template,
        "<s>",
        "</s>",
        &messages,
        tools,
        flags & 1 == 1,
        &metadata,
    );
});
