//! Chat features: LocalAI's `tools`, our `stream_tools` (the streamed call as LocalAI merges
//! it) and `reasoning` (reasoning_content kept apart from content).
use std::collections::{BTreeMap, HashMap};

use backend_common::pb::{Message, PredictOptions, Reply};
use serde_json::Value;

use super::{
    CheckError, MergedCall, Rpc, Verdict, collect, ensure, merge_calls, merged_text, text,
};
use crate::context::Context;

/// Text that is tool-call markup, never content, once a tool parser is active.
const MARKUP: [&str; 6] = [
    "tool_call",
    "\"name\"",
    "\"arguments\"",
    "<function",
    "[TOOL_CALLS]",
    "<|",
];

/// LocalAI's tools request: a system prompt, the tool prompt and one tool with a required
/// string `location`, ToolChoice "auto" (with its JSON quotes), through the model's template.
fn tool_request(ctx: &Context) -> PredictOptions {
    let tools = serde_json::json!([{
        "type": "function",
        "function": {
            "name": ctx.config.tool_name,
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and country, e.g. Paris, France"
                    }
                },
                "required": ["location"]
            }
        }
    }]);
    PredictOptions {
        use_tokenizer_template: true,
        messages: vec![
            Message {
                role: "system".into(),
                content:
                    "You are a helpful assistant with access to tools. Use them when they help."
                        .into(),
                ..Default::default()
            },
            Message {
                role: "user".into(),
                content: ctx.config.tool_prompt.clone(),
                ..Default::default()
            },
        ],
        tools: tools.to_string(),
        tool_choice: "\"auto\"".into(),
        tokens: 200,
        temperature: 0.0,
        ..Default::default()
    }
}

/// The unary reply's tool calls, merged as LocalAI merges them.
async fn unary_calls(ctx: &Context) -> Result<BTreeMap<i32, MergedCall>, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let reply = client.predict(tool_request(ctx)).await.rpc("Predict")?;
    let calls = merge_calls(&reply.chat_deltas);
    ctx.note(format!(
        "unary: message {:?}, calls {calls:?}",
        String::from_utf8_lossy(&reply.message)
    ));
    Ok(calls)
}

fn json_arguments(call: &MergedCall) -> Result<Value, CheckError> {
    let arguments: Value = serde_json::from_str(&call.arguments).map_err(|e| {
        CheckError::Failed(format!(
            "the arguments of `{}` are not JSON ({e}): {:?}",
            call.name, call.arguments
        ))
    })?;
    ensure!(
        arguments.is_object(),
        "the arguments of `{}` are not a JSON object: {arguments}",
        call.name
    );
    Ok(arguments)
}

/// LocalAI's `tools`: a unary chat with one tool yields a call named
/// BACKEND_TEST_TOOL_NAME (and, beyond upstream: the only call, at index 0, with an id, its
/// arguments a JSON object whose required `location` is taken from the prompt).
pub async fn tools(ctx: &Context) -> Result<Verdict, CheckError> {
    let calls = unary_calls(ctx).await?;
    let (index, call) = calls
        .iter()
        .find(|(_, c)| c.name == ctx.config.tool_name)
        .ok_or_else(|| {
            CheckError::Failed(format!(
                "no ChatDelta carries a tool call named `{}`; calls: {:?}",
                ctx.config.tool_name,
                calls.values().map(|c| &c.name).collect::<Vec<_>>()
            ))
        })?;
    ensure!(
        calls.len() == 1 && *index == 0,
        "one tool call, at index 0, was asked for; the reply has {:?}",
        calls
    );
    ensure!(!call.id.is_empty(), "the tool call has no id: {call:?}");
    let arguments = json_arguments(call)?;
    let location = arguments
        .get("location")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let prompt = &ctx.config.tool_prompt;
    let names = names(prompt);
    ensure!(
        names.iter().any(|name| location.contains(name)),
        "the required `location` must name what the prompt {prompt:?} does ({names:?}); the arguments are {arguments}"
    );
    Ok(Verdict::Passed)
}

/// The words of `prompt` that name something: those capitalised past its first word, or
/// every word when none is.
fn names(prompt: &str) -> Vec<&str> {
    let words: Vec<&str> = prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let capitalised: Vec<&str> = words
        .iter()
        .skip(1)
        .filter(|w| w.starts_with(char::is_uppercase))
        .copied()
        .collect();
    if capitalised.is_empty() {
        words
    } else {
        capitalised
    }
}

/// The streamed call: one stable index 0, id and name sent once, argument fragments that
/// join into the unary call's arguments, no markup or tool name in `message` or content,
/// counts at the end.
/// (The unary call's name is the `tools` check's business; its arguments are the reference.)
pub async fn stream_tools(ctx: &Context) -> Result<Verdict, CheckError> {
    let unary_calls = unary_calls(ctx).await?;
    let unary = match unary_calls.values().collect::<Vec<_>>()[..] {
        [call] => json_arguments(call)?,
        _ => {
            return Err(CheckError::Failed(format!(
                "the unary reply has {} tool calls, so the streamed call has nothing to be compared with",
                unary_calls.len()
            )));
        }
    };
    let mut client = ctx.loaded_client().await?;
    let replies = collect(
        "PredictStream",
        client.predict_stream(tool_request(ctx)).await,
    )
    .await?;
    check_no_markup(&replies, &ctx.config.tool_name)?;
    let deltas: Vec<_> = replies.iter().flat_map(|r| &r.chat_deltas).collect();
    let sent: Vec<_> = deltas.iter().flat_map(|d| &d.tool_calls).collect();
    ctx.note(format!(
        "{} chunks, tool call deltas: {sent:?}",
        replies.len()
    ));
    let calls = merge_calls(deltas.iter().copied());
    ensure!(
        calls.len() == 1,
        "the stream sent {} tool calls (indices {:?}) where the unary reply has one; LocalAI shows each index as a call",
        calls.len(),
        calls.keys().collect::<Vec<_>>()
    );
    ensure!(
        calls.contains_key(&0),
        "the one call must have index 0; it came at {:?}",
        calls.keys().collect::<Vec<_>>()
    );
    let names: Vec<_> = sent
        .iter()
        .filter(|c| !c.name.is_empty())
        .map(|c| c.name.as_str())
        .collect();
    ensure!(
        names == [ctx.config.tool_name.as_str()],
        "the tool name must be sent once, whole; it came as {names:?} (LocalAI keeps the last non-empty one)"
    );
    let ids = sent.iter().filter(|c| !c.id.is_empty()).count();
    ensure!(ids == 1, "the call id was sent {ids} times; send it once");
    let arguments: String = sent.iter().map(|c| c.arguments.as_str()).collect();
    let streamed: Value = serde_json::from_str(&arguments).map_err(|e| {
        CheckError::Failed(format!(
            "the argument fragments do not join into JSON ({e}): {arguments:?}"
        ))
    })?;
    ensure!(
        streamed == unary,
        "streamed arguments {streamed} differ from the unary call's {unary}"
    );
    let last = replies.last().map(|r| (r.tokens, r.prompt_tokens));
    ensure!(
        last.is_some_and(|(t, p)| t > 0 && p > 0),
        "the final chunk must carry the token counts; got {last:?}"
    );
    Ok(Verdict::Passed)
}

/// No tool-call markup, nor the name of the tool called, in the visible text or the
/// content of any chunk.
fn check_no_markup(replies: &[Reply], tool_name: &str) -> Result<(), CheckError> {
    for (i, reply) in replies.iter().enumerate() {
        let message = String::from_utf8_lossy(&reply.message);
        let contents = reply.chat_deltas.iter().map(|d| d.content.as_str());
        for text in std::iter::once(message.as_ref()).chain(contents) {
            let mut leaked = MARKUP.iter().copied().chain([tool_name]);
            if let Some(mark) = leaked.find(|m| text.contains(m)) {
                return Err(CheckError::Failed(format!(
                    "chunk {i} shows tool-call markup `{mark}` as text: {text:?}"
                )));
            }
        }
    }
    Ok(())
}

/// The fixed text the `reasoning` check asks a replaying backend to produce.
pub const REASONING_REPLAY: &str =
    "<think>The user asks for 2+2. Two plus two is four.</think>The answer is 4.";

/// reasoning_content is separated from content, without the think tags, streamed and unary.
/// With BACKEND_TEST_REPLAY_OPTION the backend replays [`REASONING_REPLAY`]; otherwise the
/// configured model must be one that reasons.
pub async fn reasoning(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.client().await?;
    if let Some(option) = &ctx.config.replay_option {
        let mut options = ctx.config.options.clone();
        options.push(format!("{option}:{REASONING_REPLAY}"));
        ctx.load(&mut client, &options, false).await?;
    } else {
        client = ctx.loaded_client().await?;
    }
    let request = PredictOptions {
        use_tokenizer_template: true,
        messages: vec![Message {
            role: "user".into(),
            content: "What is 2+2? Think it through, then answer.".into(),
            ..Default::default()
        }],
        metadata: HashMap::from([("enable_thinking".to_string(), "true".to_string())]),
        tokens: 400,
        temperature: 0.0,
        ..Default::default()
    };
    let unary = client.predict(request.clone()).await.rpc("Predict");
    let streamed = collect("PredictStream", client.predict_stream(request).await).await;
    if ctx.config.replay_option.is_some() {
        // The next check must find the configured model, not the replaying one.
        ctx.forget_load().await;
    }
    let unary = unary?;
    let streamed = streamed?;
    for (how, deltas) in [
        ("unary", unary.chat_deltas.iter().collect::<Vec<_>>()),
        (
            "streamed",
            streamed.iter().flat_map(|r| &r.chat_deltas).collect(),
        ),
    ] {
        let (content, reasoning) = merged_text(deltas);
        ctx.note(format!(
            "{how}: reasoning {reasoning:?}, content {content:?}"
        ));
        ensure!(
            !reasoning.trim().is_empty(),
            "{how}: no reasoning_content; content is {content:?}"
        );
        ensure!(
            !content.trim().is_empty(),
            "{how}: no content after the reasoning"
        );
        for tag in ["<think>", "</think>"] {
            ensure!(
                !content.contains(tag) && !reasoning.contains(tag),
                "{how}: `{tag}` leaked: reasoning {reasoning:?}, content {content:?}"
            );
        }
        ensure!(
            !content.contains(reasoning.trim()),
            "{how}: the reasoning is repeated in the content: {content:?}"
        );
    }
    let visible = text(&streamed);
    ensure!(
        !visible.contains("<think>"),
        "streamed message shows the think tags: {visible:?}"
    );
    Ok(Verdict::Passed)
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn names_are_the_capitalised_words() {
        assert_eq!(
            names("What's the weather like in Paris, France?"),
            ["Paris", "France"]
        );
        assert_eq!(names("weather in paris"), ["weather", "in", "paris"]);
    }
}
