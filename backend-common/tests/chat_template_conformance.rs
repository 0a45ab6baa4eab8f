//! Conformance of our chat-template renderer with Python transformers.
//!
//! `tests/fixtures/chat_templates/` holds about 70 real chat templates (from llama.cpp, via
//! the `llama-cpp-python==0.3.36` sdist), a set of conversations in LocalAI's wire form, and
//! for every (template, conversation) pair what transformers' `apply_chat_template(...,
//! tokenize=False)` returned: the prompt, or the exception it raised. `generate.py` there
//! writes them and says how to re-run it. This test renders every pair with
//! `backend_common::template` and compares byte for byte; when Python raised through the
//! template's `raise_exception`, our error must carry the same message, and for other Python
//! exceptions (undefined attributes, type errors) we must fail too.
//!
//! Pairs that still differ are listed in `KNOWN_DIFFERENCES` with the reason: the test fails
//! when an unlisted pair differs and when a listed pair starts to match.
//!
//! Fixtures are read from `$CHAT_TEMPLATE_FIXTURES` when set, else from this crate's
//! `tests/fixtures/chat_templates`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use backend_common::template::{
    ChatMessage, ChatTemplate, RenderRequest, SpecialTokens, TemplateError,
};
use chrono::NaiveDateTime;
use serde_json::Value as Json;

/// jinja2 raises TypeError on `{% for tool in tools %}` when `tools` is None (a request
/// without tools); minijinja iterates none as empty, so we render the prompt without tools.
const NONE_ITERATION: &str = "python fails iterating tools=None; we render an empty tool list";
/// `tools|map(attribute='function')` is a generator in jinja2, which json.dumps rejects;
/// minijinja's `map` yields a list, so our `tojson` writes the tool list.
const MAP_IS_A_LIST: &str = "python's map() is a generator that tojson rejects; ours is a list";
/// jinja2 HTML-escapes a plain string added to a `|safe` Markup string, so the template's
/// tojson output reaches the model as `{&#34;name&#34;: ...}`; minijinja concatenates as is.
const MARKUP_CONCATENATION: &str = "python HTML-escapes str added to a |safe string; we do not";

/// (template, conversation, why we differ from transformers).
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "plain",
        NONE_ITERATION,
    ),
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "system",
        NONE_ITERATION,
    ),
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "multi_turn",
        NONE_ITERATION,
    ),
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "multi_turn_no_generation_prompt",
        NONE_ITERATION,
    ),
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "thinking_on",
        NONE_ITERATION,
    ),
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "thinking_off",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        "plain",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        "system",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        "multi_turn",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        "multi_turn_no_generation_prompt",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        "thinking_on",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        "thinking_off",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "plain",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "system",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "multi_turn",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "multi_turn_no_generation_prompt",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "thinking_on",
        NONE_ITERATION,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "thinking_off",
        NONE_ITERATION,
    ),
    ("llama-cpp-deepseek-r1", "tool_call", MAP_IS_A_LIST),
    ("llama-cpp-deepseek-r1", "tools_offered", MAP_IS_A_LIST),
    ("llama-cpp-deepseek-r1", "several_tools", MAP_IS_A_LIST),
    (
        "meetkai-functionary-medium-v3.1",
        "tool_call",
        MARKUP_CONCATENATION,
    ),
    (
        "meetkai-functionary-medium-v3.1",
        "tools_offered",
        MARKUP_CONCATENATION,
    ),
    (
        "meetkai-functionary-medium-v3.1",
        "several_tools",
        MARKUP_CONCATENATION,
    ),
];

fn fixtures_dir() -> PathBuf {
    std::env::var_os("CHAT_TEMPLATE_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates"),
        PathBuf::from,
    )
}

fn read_json(path: &PathBuf) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(value: &Json, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("fixture field {key:?} is not a string in {value}"))
        .to_owned()
}

struct Conversation {
    name: String,
    messages: Vec<ChatMessage>,
    tools: String,
    metadata: HashMap<String, String>,
    add_generation_prompt: bool,
}

fn conversation(value: &Json) -> Conversation {
    let messages = value["messages"]
        .as_array()
        .expect("messages is a list")
        .iter()
        .map(|m| ChatMessage {
            role: text(m, "role"),
            content: text(m, "content"),
            name: text(m, "name"),
            tool_call_id: text(m, "tool_call_id"),
            reasoning_content: text(m, "reasoning_content"),
            tool_calls: text(m, "tool_calls"),
        })
        .collect();
    let metadata = value["metadata"]
        .as_object()
        .expect("metadata is a map")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("metadata values are strings").to_owned(),
            )
        })
        .collect();
    Conversation {
        name: text(value, "name"),
        messages,
        tools: text(value, "tools"),
        metadata,
        add_generation_prompt: value["add_generation_prompt"].as_bool().expect("bool"),
    }
}

/// Describes how our result differs from the expectation, or None when it conforms.
fn difference(expected: &Json, ours: &Result<String, TemplateError>) -> Option<String> {
    match (expected.get("prompt").and_then(Json::as_str), ours) {
        (Some(want), Ok(got)) if want == got => None,
        (Some(want), Ok(got)) => {
            let at = want
                .char_indices()
                .zip(got.chars())
                .find(|((_, a), b)| a != b)
                .map_or(want.len().min(got.len()), |((i, _), _)| i);
            let around = |s: &str| {
                let chars: String = s
                    .char_indices()
                    .filter(|(i, _)| i + 40 >= at && *i < at + 40)
                    .map(|(_, c)| c)
                    .collect();
                format!("{chars:?}")
            };
            Some(format!(
                "prompts differ at byte {at}: python {} / ours {}",
                around(want),
                around(got)
            ))
        }
        (Some(_), Err(err)) => Some(format!("python rendered, we failed: {err}")),
        (None, result) => {
            let error = &expected["error"];
            let kind = error["type"].as_str().unwrap_or_default();
            let message = error["message"].as_str().unwrap_or_default();
            match result {
                Ok(_) => Some(format!("python raised {kind}: {message}; we rendered")),
                Err(TemplateError::Raised { message: ours }) if kind == "TemplateError" => (ours
                    != message)
                    .then(|| format!("raise_exception message {ours:?} != {message:?}")),
                Err(_) if kind == "TemplateError" => Some(format!(
                    "python raised {message:?} from the template; we failed otherwise"
                )),
                Err(_) => None,
            }
        }
    }
}

#[test]
fn every_template_renders_like_transformers() {
    let dir = fixtures_dir();
    let setup = read_json(&dir.join("conversations.json"));
    let tokens = SpecialTokens {
        bos_token: Some(text(&setup, "bos_token")),
        eos_token: Some(text(&setup, "eos_token")),
    };
    let now: NaiveDateTime = text(&setup, "now").parse().expect("fixture time");
    let conversations: Vec<Conversation> = setup["conversations"]
        .as_array()
        .expect("conversations is a list")
        .iter()
        .map(conversation)
        .collect();

    let mut templates: Vec<(String, PathBuf)> = std::fs::read_dir(dir.join("templates"))
        .expect("templates folder")
        .map(|entry| entry.expect("dir entry").path())
        .filter_map(|path| {
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".jinja")?
                .to_owned();
            Some((name, path))
        })
        .collect();
    templates.sort();
    assert!(
        templates.len() >= 60,
        "only {} templates found in {}",
        templates.len(),
        dir.display()
    );
    assert!(
        conversations.len() >= 8,
        "only {} conversations",
        conversations.len()
    );

    let known: BTreeMap<(&str, &str), &str> = KNOWN_DIFFERENCES
        .iter()
        .map(|(template, conversation, reason)| ((*template, *conversation), *reason))
        .collect();
    let mut identical = 0;
    let mut listed_differences = 0;
    let mut failures = Vec::new();
    let mut visited = Vec::new();
    for (name, path) in &templates {
        let source = std::fs::read_to_string(path).expect("template");
        let expected = read_json(&dir.join("expected").join(format!("{name}.json")));
        for conversation in &conversations {
            let want = &expected[&conversation.name];
            assert!(
                want.is_object(),
                "{name}: no expectation for {}",
                conversation.name
            );
            let request = RenderRequest {
                messages: &conversation.messages,
                tools: &conversation.tools,
                add_generation_prompt: conversation.add_generation_prompt,
                metadata: &conversation.metadata,
            };
            let ours = ChatTemplate::from_source(&source, tokens.clone())
                .and_then(|template| template.with_fixed_time(now).render(&request));
            let key = (name.as_str(), conversation.name.as_str());
            visited.push(key);
            match (difference(want, &ours), known.get(&key)) {
                (None, None) => identical += 1,
                (None, Some(_)) => failures.push(format!(
                    "{name} / {}: listed in KNOWN_DIFFERENCES but now conforms; remove it",
                    conversation.name
                )),
                (Some(_), Some(_)) => listed_differences += 1,
                (Some(diff), None) => {
                    failures.push(format!("{name} / {}: {diff}", conversation.name))
                }
            }
        }
    }
    for (template, conversation) in known.keys() {
        if !visited.contains(&(*template, *conversation)) {
            failures.push(format!(
                "{template} / {conversation}: listed but no such pair"
            ));
        }
    }
    println!(
        "{} templates x {} conversations: {identical} identical, {listed_differences} known differences",
        templates.len(),
        conversations.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
