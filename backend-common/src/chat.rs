//! The chat layer of a loaded model: its chat template turns `Messages` + `Tools` into the
//! prompt the model was trained on, and its tool/reasoning parsers turn the generated text
//! back into content, reasoning and tool calls.
use crate::engine::{EngineError, ModelInfo, Prompt, ToolCallConstraint};
use crate::load::ParserChoice;
use crate::parsers::{
    ChatParser, ParseOptions, ParserSelection, ToolSpec, model_family, select_parsers,
};
use crate::pb::PredictOptions;
use crate::template::{ChatMessage, ChatTemplate, RenderRequest, TemplateError};

mod forced;

/// How the request lets the model use its tools (`ToolChoice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (also when unset).
    Auto,
    /// No tool calls: output is plain content.
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this function.
    Function(String),
}

impl ToolChoice {
    /// Parses `ToolChoice` as LocalAI sends it: `"auto"` with JSON quotes, an object
    /// `{"type":"function","function":{"name":...}}`, or a bare word.
    pub fn parse(raw: &str) -> Result<Self, EngineError> {
        let raw = raw.trim();
        let bad = |why: &str| {
            EngineError::InvalidArgument(format!(
                "ToolChoice: {why}; send \"auto\", \"none\", \"required\" or {{\"type\":\"function\",\"function\":{{\"name\":\"...\"}}}}"
            ))
        };
        let word = |w: &str| match w {
            "" | "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" | "any" => Ok(ToolChoice::Required),
            other => Err(bad(&format!("`{other}` is not a tool choice"))),
        };
        if !(raw.starts_with('"') || raw.starts_with('{')) {
            return word(raw);
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
        match &value {
            serde_json::Value::String(w) => word(w),
            serde_json::Value::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .map(|n| ToolChoice::Function(n.to_string()))
                .ok_or_else(|| bad("the object has no function.name")),
            _ => Err(bad("not a string or an object")),
        }
    }
}

/// A request's prompt and, for chat requests, the parser for its output.
pub struct PreparedPrompt {
    /// What the engine continues.
    pub prompt: Prompt,
    /// Turns the output into content, reasoning and tool calls (chat requests only).
    pub parser: Option<ChatParser>,
    /// The call the output must be, when the tool choice forces one.
    pub tool_call: Option<ToolCallConstraint>,
}

/// Template and parsers of the loaded model.
pub struct ChatSetup {
    template: Result<ChatTemplate, String>,
    parsers: ParserSelection,
}

fn parser_error(e: crate::parsers::ParserError) -> EngineError {
    EngineError::InvalidArgument(e.to_string())
}

fn template_error(e: TemplateError) -> EngineError {
    match e {
        TemplateError::NoChatTemplate { .. } => EngineError::FailedPrecondition(format!(
            "{e}; send a raw `Prompt` instead of Messages with UseTokenizerTemplate"
        )),
        other => EngineError::InvalidArgument(other.to_string()),
    }
}

impl ChatSetup {
    /// The chat layer of a model just loaded from `file_name`. Parsers default by the model
    /// family of its own name, then of the file name; user options win. A template that does
    /// not compile is logged and reported on the requests that need it.
    pub fn new(
        info: &ModelInfo,
        file_name: &str,
        choice: &ParserChoice,
    ) -> Result<Self, EngineError> {
        let (tool, reasoning) = (choice.tool.as_deref(), choice.reasoning.as_deref());
        let family_name = info
            .name
            .as_deref()
            .filter(|n| model_family(n).is_some())
            .unwrap_or(file_name);
        let parsers = select_parsers(family_name, tool, reasoning).map_err(parser_error)?;
        for warning in parsers.warnings() {
            tracing::warn!("{warning}");
        }
        tracing::info!(tool = ?parsers.tool, reasoning = ?parsers.reasoning, family_name, "parsers selected");
        let template = ChatTemplate::new(
            info.chat_template.clone(),
            info.special_tokens.clone(),
            file_name,
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "the model's chat template does not compile");
            e.to_string()
        });
        Ok(ChatSetup { template, parsers })
    }

    /// The prompt of a request: `Prompt` as is, or `Messages` + `Tools` through the template.
    pub fn prepare(&self, req: &PredictOptions) -> Result<PreparedPrompt, EngineError> {
        let tool_choice = ToolChoice::parse(&req.tool_choice)?;
        if !req.use_tokenizer_template {
            if req.prompt.is_empty() {
                return Err(EngineError::InvalidArgument(
                    "Prompt is empty; send the text to continue, or Messages with UseTokenizerTemplate".into(),
                ));
            }
            return Ok(PreparedPrompt {
                prompt: Prompt {
                    text: req.prompt.clone(),
                    add_bos: true,
                },
                parser: None,
                tool_call: None,
            });
        }
        let template = self.template.as_ref().map_err(|e| {
            EngineError::FailedPrecondition(format!(
                "the model's chat template cannot be used: {e}"
            ))
        })?;
        let tools = if req.tools.trim().is_empty() {
            Vec::new()
        } else {
            ToolSpec::list_from_openai_json(&req.tools)
                .map_err(|e| EngineError::InvalidArgument(format!("Tools: {e}")))?
        };
        if let ToolChoice::Function(name) = &tool_choice
            && !tools.iter().any(|t| &t.name == name)
        {
            return Err(EngineError::InvalidArgument(format!(
                "ToolChoice names function `{name}`, which is not among the request's Tools"
            )));
        }
        if tool_choice == ToolChoice::Required && tools.is_empty() {
            return Err(EngineError::InvalidArgument(
                "ToolChoice is \"required\" but the request has no Tools".into(),
            ));
        }
        let messages: Vec<ChatMessage> = req
            .messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
                name: m.name.clone(),
                tool_call_id: m.tool_call_id.clone(),
                reasoning_content: m.reasoning_content.clone(),
                tool_calls: m.tool_calls.clone(),
            })
            .collect();
        let text = template
            .render(&RenderRequest {
                messages: &messages,
                tools: &req.tools,
                add_generation_prompt: true,
                metadata: &req.metadata,
            })
            .map_err(template_error)?;
        let enable_thinking = req.metadata.get("enable_thinking").and_then(|v| {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            }
        });
        let reasoning = self.parsers.reasoning.kind();
        let tool = self
            .parsers
            .tool
            .kind()
            .filter(|_| tool_choice != ToolChoice::None && !tools.is_empty());
        let tool_call = forced::forced_tool_call(tool, &tools, &tool_choice)?;
        let options = ParseOptions {
            thinking_forced_open: reasoning.is_some_and(|r| r.prompt_opens_reasoning(&text)),
            tools,
            enable_thinking,
        };
        Ok(PreparedPrompt {
            // The template writes BOS itself when the model wants one (as transformers does).
            prompt: Prompt {
                text,
                add_bos: false,
            },
            parser: Some(ChatParser::new(tool, reasoning, options)),
            tool_call,
        })
    }
}

impl ChatSetup {
    /// What LocalAI's core asks of a loaded model (ModelMetadata): whether its template
    /// reacts to `enable_thinking` (rendered both ways, as llama.cpp decides it), the
    /// template rendered for one user message "test" with thinking on, and the markup of
    /// its tool parser and reasoning parser. A text-only model has no media marker.
    pub fn metadata(&self) -> crate::pb::ModelMetadataResponse {
        let mut response = crate::pb::ModelMetadataResponse::default();
        if let Some(kind) = self.parsers.tool.kind()
            && let Some(mut markers) = crate::parsers::tool_format(kind)
        {
            if let Some((start, end)) = self
                .parsers
                .reasoning
                .kind()
                .and_then(crate::parsers::reasoning_markers)
            {
                markers.reasoning_start = start.into();
                markers.reasoning_end = end.into();
            }
            response.tool_format = Some(markers);
        }
        let Ok(template) = &self.template else {
            return response;
        };
        let messages = [ChatMessage {
            role: "user".into(),
            content: "test".into(),
            ..Default::default()
        }];
        let render = |thinking: &str| {
            let metadata = std::collections::HashMap::from([(
                "enable_thinking".to_string(),
                thinking.to_string(),
            )]);
            template
                .render(&RenderRequest {
                    messages: &messages,
                    tools: "",
                    add_generation_prompt: true,
                    metadata: &metadata,
                })
                .ok()
        };
        if let Some(on) = render("true") {
            response.supports_thinking = render("false").is_some_and(|off| off != on);
            response.rendered_template = on;
        }
        response
    }
}

/// The fields of `PredictOptions` that shape a prompt, as JSON, for the prompt dry-run
/// (`<worker> render --model M --request request.json`). Keys are the proto names
/// (`Messages`, `Tools`, ...) or their lower-case forms; `Tools` and a message's
/// `tool_calls` may be given as JSON values or as the JSON strings LocalAI sends.
#[derive(Debug, serde::Deserialize)]
pub struct PromptRequest {
    #[serde(default, alias = "Messages")]
    messages: Vec<PromptMessage>,
    #[serde(default, alias = "Tools")]
    tools: Option<serde_json::Value>,
    #[serde(default, alias = "ToolChoice", alias = "tool_choice")]
    toolchoice: Option<serde_json::Value>,
    #[serde(default, alias = "Metadata")]
    metadata: std::collections::HashMap<String, serde_json::Value>,
    #[serde(default, alias = "Prompt")]
    prompt: String,
}

#[derive(Debug, serde::Deserialize)]
struct PromptMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    tool_call_id: String,
    #[serde(default)]
    reasoning_content: String,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
}

/// A JSON value as the string LocalAI would send: strings stay, anything else is encoded.
fn as_wire_string(value: Option<serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

impl PromptRequest {
    /// Parses the dry-run request file.
    pub fn from_json(json: &str) -> Result<Self, EngineError> {
        serde_json::from_str(json).map_err(|e| {
            EngineError::InvalidArgument(format!(
                "request file: {e}; expected {{\"Messages\": [{{\"role\": ..., \"content\": ...}}], \"Tools\": [...], \"Metadata\": {{...}}}}"
            ))
        })
    }

    /// The `PredictOptions` LocalAI would send for it (chat when `Messages` is given).
    pub fn into_predict_options(self) -> PredictOptions {
        let chat = !self.messages.is_empty();
        PredictOptions {
            use_tokenizer_template: chat,
            prompt: self.prompt,
            messages: self
                .messages
                .into_iter()
                .map(|m| crate::pb::Message {
                    role: m.role,
                    content: m.content.unwrap_or_default(),
                    name: m.name,
                    tool_call_id: m.tool_call_id,
                    reasoning_content: m.reasoning_content,
                    tool_calls: as_wire_string(m.tool_calls),
                })
                .collect(),
            tools: as_wire_string(self.tools),
            // LocalAI's core sends a string choice with its JSON quotes.
            tool_choice: self.toolchoice.map(|v| v.to_string()).unwrap_or_default(),
            metadata: self
                .metadata
                .into_iter()
                .map(|(k, v)| (k, as_wire_string(Some(v))))
                .collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{SpecialTokens, TemplateSource};

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn setup(template: Option<&str>, name: &str, options: &[&str]) -> ChatSetup {
        let info = ModelInfo {
            name: Some(name.into()),
            context_length: 512,
            chat_template: template.map(|t| TemplateSource::Single(t.into())),
            special_tokens: SpecialTokens::default(),
            vocab_size: 100,
        };
        let request = crate::load::LoadRequest::from_proto(&crate::pb::ModelOptions {
            model_file: "model.gguf".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        })
        .unwrap();
        ChatSetup::new(&info, "model.gguf", &request.parsers).unwrap()
    }

    fn chat_request(tools: &str, tool_choice: &str) -> PredictOptions {
        PredictOptions {
            use_tokenizer_template: true,
            messages: vec![crate::pb::Message {
                role: "user".into(),
                content: "Hi".into(),
                ..Default::default()
            }],
            tools: tools.into(),
            tool_choice: tool_choice.into(),
            ..Default::default()
        }
    }

    const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}]"#;

    #[test]
    fn metadata_tells_a_thinking_template_from_one_that_is_not() {
        let thinking = format!(
            "{CHATML}{{% if add_generation_prompt and enable_thinking is defined and not enable_thinking %}}<think>\n\n</think>\n\n{{% endif %}}"
        );
        let qwen3 = setup(Some(&thinking), "Qwen3-0.6B", &[]).metadata();
        assert!(qwen3.supports_thinking);
        assert_eq!(
            qwen3.rendered_template,
            "<|im_start|>user\ntest<|im_end|>\n<|im_start|>assistant\n"
        );
        let markers = qwen3.tool_format.expect("Qwen3 calls tools the Hermes way");
        assert_eq!(markers.format_type, "json_native");
        assert_eq!(
            (
                markers.reasoning_start.as_str(),
                markers.reasoning_end.as_str()
            ),
            ("<think>", "</think>")
        );
        assert!(qwen3.media_marker.is_empty());
        let plain = setup(Some(CHATML), "SmolLM2-135M", &["tool_parser:qwen3_coder"]).metadata();
        assert!(!plain.supports_thinking);
        assert_eq!(
            plain.tool_format.map(|f| f.format_type),
            Some("tag_with_tagged".to_string())
        );
        let none = setup(None, "SmolLM2-135M", &[]).metadata();
        assert!(!none.supports_thinking && none.rendered_template.is_empty());
    }

    #[test]
    fn tool_choice_forms() {
        assert_eq!(ToolChoice::parse("\"auto\"").unwrap(), ToolChoice::Auto);
        assert_eq!(ToolChoice::parse("auto").unwrap(), ToolChoice::Auto);
        assert_eq!(ToolChoice::parse("").unwrap(), ToolChoice::Auto);
        assert_eq!(
            ToolChoice::parse("\"required\"").unwrap(),
            ToolChoice::Required
        );
        assert_eq!(
            ToolChoice::parse(r#"{"type":"function","function":{"name":"f"}}"#).unwrap(),
            ToolChoice::Function("f".into())
        );
        for bad in [
            "{",
            "\"sometimes\"",
            "{\"type\":\"function\"}",
            "42",
            "maybe",
        ] {
            assert!(
                matches!(ToolChoice::parse(bad), Err(EngineError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn chat_request_renders_the_template() {
        let s = setup(Some(CHATML), "SmolLM2", &[]);
        let p = s.prepare(&chat_request("", "")).unwrap();
        assert_eq!(
            p.prompt.text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!p.prompt.add_bos);
        assert!(p.parser.is_some());
    }

    #[test]
    fn raw_prompt_passes_through() {
        let s = setup(None, "x", &[]);
        let req = PredictOptions {
            prompt: "Once upon".into(),
            ..Default::default()
        };
        let p = s.prepare(&req).unwrap();
        assert_eq!(
            p.prompt,
            Prompt {
                text: "Once upon".into(),
                add_bos: true
            }
        );
        assert!(p.parser.is_none());
        let empty = s.prepare(&PredictOptions::default());
        assert!(matches!(empty, Err(EngineError::InvalidArgument(_))));
    }

    #[test]
    fn no_template_is_failed_precondition() {
        let s = setup(None, "x", &[]);
        assert!(matches!(
            s.prepare(&chat_request("", "")),
            Err(EngineError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn bad_tools_and_choices_are_invalid() {
        let s = setup(Some(CHATML), "Qwen2.5-Coder", &[]);
        for (tools, choice) in [
            ("[{", ""),
            ("{\"not\":\"a list\"}", ""),
            (TOOLS, r#"{"type":"function","function":{"name":"other"}}"#),
            ("", "\"required\""),
        ] {
            let r = s.prepare(&chat_request(tools, choice));
            assert!(
                matches!(r, Err(EngineError::InvalidArgument(_))),
                "{tools} {choice}"
            );
        }
    }

    #[test]
    fn family_default_parses_tool_calls() {
        let s = setup(Some(CHATML), "Qwen2.5 Coder 0.5B Instruct", &[]);
        let mut p = s.prepare(&chat_request(TOOLS, "\"auto\"")).unwrap();
        let parser = p.parser.as_mut().unwrap();
        parser.push("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}\n</tool_call>");
        parser.finish();
        let m = parser.message();
        assert_eq!(m.tool_calls.len(), 1);
        assert_eq!(m.tool_calls[0].name, "get_weather");
    }

    #[test]
    fn dry_run_request_file_becomes_predict_options() {
        let json = r#"{"Messages": [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}],
            "Tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            "ToolChoice": "auto", "Metadata": {"enable_thinking": false}}"#;
        let req = PromptRequest::from_json(json)
            .unwrap()
            .into_predict_options();
        assert!(req.use_tokenizer_template);
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.messages[1].content, "");
        assert!(req.messages[1].tool_calls.starts_with("[{\"id\":\"c1\""));
        assert!(req.tools.contains("get_weather"));
        assert_eq!(req.tool_choice, "\"auto\"");
        assert_eq!(req.metadata["enable_thinking"], "false");
        let s = setup(Some(CHATML), "Qwen2.5-Coder", &[]);
        assert!(
            s.prepare(&req)
                .unwrap()
                .prompt
                .text
                .ends_with("<|im_start|>assistant\n")
        );
        assert!(matches!(
            PromptRequest::from_json("[1]"),
            Err(EngineError::InvalidArgument(_))
        ));
    }
}
