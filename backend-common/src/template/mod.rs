//! Hugging Face compatible chat templates.
//!
//! Renders a model's Jinja chat template with minijinja so that the prompt is byte-identical
//! to Python transformers' `apply_chat_template(messages, tools=..., add_generation_prompt=...,
//! tokenize=False, **kwargs)` (checked against transformers 5.24 by
//! `tests/chat_template_conformance.rs`). Messages arrive in LocalAI's wire form
//! ([`ChatMessage`]); the request's `Tools` JSON and `Metadata` map become the template's
//! `tools` and extra keyword arguments (such as `enable_thinking`).

mod env;
mod error;
mod messages;
mod source;
mod tojson;

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDateTime;
use minijinja::{Environment, Value};
use serde_json::Value as Json;

pub use error::TemplateError;
pub use messages::ChatMessage;
pub use source::{HfTemplateConfig, SpecialTokens, TemplateSource};

use env::{Clock, RaisedException};

/// Template variables that the request's metadata cannot replace (transformers would
/// reject them as duplicate keyword arguments).
const RESERVED_NAMES: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// The `Metadata` key whose JSON object current LocalAI merges into the template's variables.
const TEMPLATE_KWARGS: &str = "chat_template_kwargs";

/// One render's inputs, as a LocalAI `PredictOptions` carries them.
#[derive(Debug, Clone, Copy)]
pub struct RenderRequest<'a> {
    /// The conversation.
    pub messages: &'a [ChatMessage],
    /// The request's `Tools`: a JSON array of `{"type":"function","function":{...}}`, or "".
    pub tools: &'a str,
    /// Whether to end the prompt with the assistant turn's header.
    pub add_generation_prompt: bool,
    /// The request's `Metadata`; each entry becomes a template variable, with "true"/"false"
    /// (any case) turned into booleans.
    pub metadata: &'a HashMap<String, String>,
}

/// A model's compiled chat template(s), ready to render requests.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    templates: Option<TemplateSource>,
    tokens: SpecialTokens,
    origin: String,
}

impl ChatTemplate {
    /// Compiles `templates` (None for a model without a template: requests that need one
    /// then fail with [`TemplateError::NoChatTemplate`] naming `origin`).
    pub fn new(
        templates: Option<TemplateSource>,
        tokens: SpecialTokens,
        origin: impl Into<String>,
    ) -> Result<Self, TemplateError> {
        // Only minijinja rejecting our fixed syntax settings can fail here.
        let mut env =
            env::new_environment(Clock::Local).map_err(|source| TemplateError::Syntax {
                name: "(environment settings)".to_owned(),
                source,
            })?;
        let sources: Vec<(String, &str)> = match &templates {
            None => Vec::new(),
            Some(TemplateSource::Single(source)) => vec![("default".to_owned(), source)],
            Some(TemplateSource::Named(named)) => named
                .iter()
                .map(|(name, source)| (name.clone(), source.as_str()))
                .collect(),
        };
        for (name, source) in sources {
            env.add_template_owned(name.clone(), env::rewrite_generation_tags(source))
                .map_err(|source| TemplateError::Syntax { name, source })?;
        }
        Ok(ChatTemplate {
            env,
            templates,
            tokens,
            origin: origin.into(),
        })
    }

    /// Compiles one template string, e.g. a GGUF's `tokenizer.chat_template`.
    pub fn from_source(source: &str, tokens: SpecialTokens) -> Result<Self, TemplateError> {
        Self::new(
            Some(TemplateSource::Single(source.to_owned())),
            tokens,
            "the template",
        )
    }

    /// Loads the template(s) and bos/eos tokens of a Hugging Face model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TemplateError> {
        let config = HfTemplateConfig::from_dir(dir)?;
        Self::new(
            config.templates,
            config.tokens,
            format!("the model folder {}", dir.display()),
        )
    }

    /// Pins `strftime_now` to `now` instead of the local clock (for reproducible prompts).
    pub fn with_fixed_time(mut self, now: NaiveDateTime) -> Self {
        env::set_clock(&mut self.env, Clock::Fixed(now));
        self
    }

    /// Whether the model has a chat template at all.
    pub fn has_template(&self) -> bool {
        self.templates.is_some()
    }

    /// The bos/eos tokens passed to the template.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.tokens
    }

    /// Renders the prompt for `request`, as transformers' `apply_chat_template(tokenize=False)`.
    pub fn render(&self, request: &RenderRequest<'_>) -> Result<String, TemplateError> {
        let templates = self
            .templates
            .as_ref()
            .ok_or_else(|| TemplateError::NoChatTemplate {
                origin: self.origin.clone(),
            })?;
        if request.messages.is_empty() {
            return Err(TemplateError::EmptyConversation);
        }
        let tools = parse_tools(request.tools)?;
        let (name, _) = templates.select(tools.is_some())?;
        let messages = request
            .messages
            .iter()
            .enumerate()
            .map(|(i, message)| message.to_template_json(i).map(|json| json_to_value(&json)))
            .collect::<Result<Vec<_>, _>>()?;

        let mut context: Vec<(String, Value)> = Vec::new();
        let tokens = [
            ("bos_token", &self.tokens.bos_token),
            ("eos_token", &self.tokens.eos_token),
        ];
        for (key, token) in tokens {
            if let Some(token) = token {
                context.push((key.to_owned(), Value::from(token.as_str())));
            }
        }
        // Metadata comes after the tokens so it may override them, as transformers' kwargs do;
        // `chat_template_kwargs` (current LocalAI: a JSON object) is merged last of all.
        for (key, value) in request.metadata {
            if !RESERVED_NAMES.contains(&key.as_str()) && key != TEMPLATE_KWARGS {
                context.push((key.clone(), metadata_value(value)));
            }
        }
        if let Some(kwargs) = request.metadata.get(TEMPLATE_KWARGS) {
            let invalid = |reason: String| TemplateError::InvalidTemplateKwargs { reason };
            let kwargs: Json = serde_json::from_str(kwargs).map_err(|e| invalid(e.to_string()))?;
            let Json::Object(kwargs) = kwargs else {
                return Err(invalid(format!("{kwargs} is not an object")));
            };
            for (key, value) in &kwargs {
                if !RESERVED_NAMES.contains(&key.as_str()) {
                    context.push((key.clone(), json_to_value(value)));
                }
            }
        }
        context.push(("messages".to_owned(), Value::from(messages)));
        context.push((
            "tools".to_owned(),
            tools.as_ref().map_or(Value::from(()), json_to_value),
        ));
        context.push(("documents".to_owned(), Value::from(())));
        context.push((
            "add_generation_prompt".to_owned(),
            Value::from(request.add_generation_prompt),
        ));

        let template = self
            .env
            .get_template(name)
            .map_err(|source| TemplateError::Render { source })?;
        template
            .render(Value::from_pairs(context))
            .map_err(render_error)
    }
}

/// Renders the exact prompt a request produces, for a prompt dry-run: the template
/// source, the bos/eos tokens ("" = unset), the conversation, the `Tools` JSON string
/// ("" = none), `add_generation_prompt` and the request's `Metadata`.
pub fn render_prompt(
    template_source: &str,
    bos_token: &str,
    eos_token: &str,
    messages: &[ChatMessage],
    tools: &str,
    add_generation_prompt: bool,
    metadata: &HashMap<String, String>,
) -> Result<String, TemplateError> {
    let token = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let template = ChatTemplate::from_source(
        template_source,
        SpecialTokens {
            bos_token: token(bos_token),
            eos_token: token(eos_token),
        },
    )?;
    template.render(&RenderRequest {
        messages,
        tools,
        add_generation_prompt,
        metadata,
    })
}

/// The request's `Tools` JSON: "" or `null` means no tools (the template sees `none`).
fn parse_tools(tools: &str) -> Result<Option<Json>, TemplateError> {
    if tools.trim().is_empty() {
        return Ok(None);
    }
    let invalid = |reason: String| TemplateError::InvalidTools { reason };
    let parsed: Json = serde_json::from_str(tools).map_err(|e| invalid(e.to_string()))?;
    match &parsed {
        Json::Null => Ok(None),
        Json::Array(list) => match list.iter().position(|tool| !tool.is_object()) {
            Some(i) => Err(invalid(format!("tool {i} is not an object"))),
            None => Ok(Some(parsed)),
        },
        _ => Err(invalid("the JSON value is not an array".to_owned())),
    }
}

/// Metadata values are strings on the wire; "true"/"false" in any case are booleans.
fn metadata_value(value: &str) -> Value {
    if value.eq_ignore_ascii_case("true") {
        Value::from(true)
    } else if value.eq_ignore_ascii_case("false") {
        Value::from(false)
    } else {
        Value::from(value)
    }
}

/// Converts JSON to template values, keeping key order.
fn json_to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, f) => Value::from(f.unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(json_to_value).collect::<Vec<_>>()),
        Json::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// Separates the template's own `raise_exception` from engine errors.
fn render_error(error: minijinja::Error) -> TemplateError {
    let raised = std::iter::successors(std::error::Error::source(&error), |e| e.source())
        .find_map(|e| e.downcast_ref::<RaisedException>())
        .map(|raised| raised.0.clone());
    match raised {
        Some(message) => TemplateError::Raised { message },
        None => TemplateError::Render { source: error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> ChatMessage {
        ChatMessage {
            role: "user".to_owned(),
            content: content.to_owned(),
            ..ChatMessage::default()
        }
    }

    fn render(
        template: &str,
        messages: &[ChatMessage],
        tools: &str,
        metadata: &[(&str, &str)],
    ) -> String {
        let metadata: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        render_prompt(template, "<s>", "</s>", messages, tools, true, &metadata)
            .unwrap_or_else(|e| format!("ERROR: {e}"))
    }

    #[test]
    fn enable_thinking_metadata_becomes_a_boolean() {
        let template = "{{ enable_thinking is sameas true }}|{{ enable_thinking is sameas false }}|{{ other }}";
        for (value, expected) in [
            ("true", "True|False|x"),
            ("TRUE", "True|False|x"),
            ("False", "False|True|x"),
        ] {
            assert_eq!(
                render(
                    template,
                    &[user("hi")],
                    "",
                    &[("enable_thinking", value), ("other", "x")]
                ),
                expected
            );
        }
        assert_eq!(
            render("{{ enable_thinking is defined }}", &[user("hi")], "", &[]),
            "False"
        );
    }

    #[test]
    fn chat_template_kwargs_are_merged_last_and_reasoning_effort_passes() {
        let template = "{{ enable_thinking }}|{{ reasoning_effort }}|{{ depth }}|{{ chat_template_kwargs is defined }}";
        let metadata = [
            ("enable_thinking", "true"),
            ("reasoning_effort", "high"),
            (
                "chat_template_kwargs",
                r#"{"enable_thinking": false, "depth": 3, "messages": "ignored"}"#,
            ),
        ];
        assert_eq!(
            render(template, &[user("hi")], "", &metadata),
            "False|high|3|False"
        );
        for bad in ["[1]", "{"] {
            let out = render(
                template,
                &[user("hi")],
                "",
                &[("chat_template_kwargs", bad)],
            );
            assert!(
                out.starts_with("ERROR: Metadata chat_template_kwargs is not a JSON object"),
                "{out}"
            );
        }
    }

    #[test]
    fn arguments_reach_the_template_as_an_object() {
        let assistant = ChatMessage {
            role: "assistant".to_owned(),
            tool_calls: r#"[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"days\":2}"}}]"#.to_owned(),
            ..ChatMessage::default()
        };
        let template = "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}(\
            {% for k, v in c.function.arguments|items %}{{ k }}={{ v }};{% endfor %}\
            {{ c.function.arguments|tojson }}){% endfor %}{% endfor %}";
        assert_eq!(
            render(template, &[user("hi"), assistant], "", &[]),
            r#"get_weather(city=Paris;days=2;{"city": "Paris", "days": 2})"#
        );
    }

    #[test]
    fn empty_content_reaches_the_template_as_a_string() {
        let assistant = ChatMessage {
            role: "assistant".to_owned(),
            tool_calls: r#"[{"function":{"name":"now","arguments":""}}]"#.to_owned(),
            ..ChatMessage::default()
        };
        let template = "{% for m in messages %}{{ m.content is string }}:{{ m.content|length }};\
            {% endfor %}";
        assert_eq!(
            render(template, &[user("hi"), assistant], "", &[]),
            "True:2;True:0;"
        );
    }

    #[test]
    fn tools_and_tokens_are_passed_like_transformers() {
        let template = "{{ bos_token }}{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}{{ eos_token }}";
        assert_eq!(
            render(template, &[user("hi")], "", &[]),
            "<s>TrueTrueTrue</s>"
        );
        let tools = r#"[{"type":"function","function":{"name":"f","parameters":{"b":1,"a":2}}}]"#;
        assert_eq!(
            render("{{ tools|tojson }}", &[user("hi")], tools, &[]),
            r#"[{"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": 2}}}]"#
        );
        assert!(render("x", &[user("hi")], "{}", &[]).contains("not an array"));
        // Metadata cannot replace the conversation.
        assert_eq!(
            render(
                "{{ messages|length }}",
                &[user("hi")],
                "",
                &[("messages", "x")]
            ),
            "1"
        );
    }

    #[test]
    fn errors_are_typed() {
        let no_messages = render_prompt("x", "", "", &[], "", true, &HashMap::new());
        assert!(matches!(no_messages, Err(TemplateError::EmptyConversation)));
        let raised = render_prompt(
            "{{ raise_exception('System role not supported') }}",
            "",
            "",
            &[user("hi")],
            "",
            true,
            &HashMap::new(),
        );
        assert!(
            matches!(&raised, Err(TemplateError::Raised { message }) if message == "System role not supported"),
            "{raised:?}"
        );
        let syntax = render_prompt("{% if %}", "", "", &[user("hi")], "", true, &HashMap::new());
        assert!(matches!(syntax, Err(TemplateError::Syntax { .. })));
        let missing = ChatTemplate::new(None, SpecialTokens::default(), "model.gguf").map(|t| {
            t.render(&RenderRequest {
                messages: &[user("hi")],
                tools: "",
                add_generation_prompt: true,
                metadata: &HashMap::new(),
            })
        });
        assert!(
            matches!(&missing, Ok(Err(TemplateError::NoChatTemplate { origin })) if origin == "model.gguf"),
            "{missing:?}"
        );
    }

    #[test]
    fn tool_use_template_is_chosen_when_tools_are_given() {
        let named = TemplateSource::Named(vec![
            ("default".to_owned(), "plain".to_owned()),
            ("tool_use".to_owned(), "tools:{{ tools|length }}".to_owned()),
        ]);
        let template = ChatTemplate::new(Some(named), SpecialTokens::default(), "test").unwrap();
        let metadata = HashMap::new();
        let messages = [user("hi")];
        let with_messages = |tools| RenderRequest {
            messages: &messages,
            tools,
            add_generation_prompt: false,
            metadata: &metadata,
        };
        assert_eq!(template.render(&with_messages("")).unwrap(), "plain");
        assert_eq!(
            template
                .render(&with_messages(
                    r#"[{"type":"function","function":{"name":"f"}}]"#
                ))
                .unwrap(),
            "tools:1"
        );
    }

    #[test]
    fn hf_folder_template_and_tokens_are_used() {
        let dir = std::env::temp_dir().join(format!("template-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let folder = ChatTemplate::from_hf_dir(&dir).unwrap();
        assert!(!folder.has_template());
        let request = RenderRequest {
            messages: &[user("hi")],
            tools: "",
            add_generation_prompt: false,
            metadata: &HashMap::new(),
        };
        assert!(matches!(
            folder.render(&request),
            Err(TemplateError::NoChatTemplate { origin }) if origin.contains("template-hf-")
        ));
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
                "bos_token": {"content": "<|begin|>"}, "eos_token": "<|end|>"}"#,
        )
        .unwrap();
        let folder = ChatTemplate::from_hf_dir(&dir).unwrap();
        assert_eq!(folder.render(&request).unwrap(), "<|begin|>hi<|end|>");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
