//! Chat messages as they arrive on the wire, and their conversion into the
//! dicts Hugging Face chat templates read.

use serde_json::{Map, Value as Json};

use super::error::TemplateError;

/// One chat message in LocalAI's wire form; every field is a string and "" means unset
/// (the wire cannot tell an empty string from null).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant", "tool", ...
    pub role: String,
    /// The message text.
    pub content: String,
    /// Name of the author, or of the tool for a tool result.
    pub name: String,
    /// The tool call a tool result answers.
    pub tool_call_id: String,
    /// The assistant's reasoning ("thinking") text.
    pub reasoning_content: String,
    /// JSON array `[{index,id,type,function:{name,arguments}}]`, `arguments` being a JSON string.
    pub tool_calls: String,
}

impl ChatMessage {
    /// Converts the message into the dict a template sees, as transformers builds it.
    ///
    /// `content` is always present, as a string that may be "": on the wire "" and null
    /// are the same, llama.cpp's server always gives templates a `content` string, and
    /// templates such as Qwen3's read `message.content` on an assistant tool-call turn and
    /// raise when it is missing. The other empty fields are left out (transformers drops
    /// `None` values), `tool_calls` is decoded and each `function.arguments` becomes an
    /// object, and `reasoning_content` is also offered as `thinking` (transformers 5
    /// aliases it for gpt-oss templates).
    /// `index` is the message's position, used in error messages.
    pub fn to_template_json(&self, index: usize) -> Result<Json, TemplateError> {
        let mut out = Map::new();
        if !self.reasoning_content.is_empty() {
            // transformers builds `{"thinking": r, **message, "reasoning_content": r}`, so
            // `thinking` comes first and `reasoning_content` keeps its own place.
            out.insert(
                "thinking".to_owned(),
                Json::String(self.reasoning_content.clone()),
            );
        }
        // (key, value, kept even when empty)
        let fields = [
            ("role", &self.role, false),
            ("content", &self.content, true),
            ("name", &self.name, false),
            ("tool_call_id", &self.tool_call_id, false),
            ("reasoning_content", &self.reasoning_content, false),
        ];
        for (key, value, always) in fields {
            if always || !value.is_empty() {
                out.insert(key.to_owned(), Json::String(value.clone()));
            }
        }
        if !self.tool_calls.is_empty() {
            out.insert(
                "tool_calls".to_owned(),
                decode_tool_calls(&self.tool_calls, index)?,
            );
        }
        Ok(Json::Object(out))
    }
}

/// Decodes a `tool_calls` JSON string, turning each `function.arguments` string into
/// the value it encodes (LocalAI issue #10256: templates iterate `arguments|items`).
fn decode_tool_calls(raw: &str, message: usize) -> Result<Json, TemplateError> {
    let invalid = |reason: String| TemplateError::InvalidToolCalls { message, reason };
    let mut calls: Json = serde_json::from_str(raw).map_err(|e| invalid(e.to_string()))?;
    let list = calls
        .as_array_mut()
        .ok_or_else(|| invalid("the JSON value is not an array".to_owned()))?;
    for (call, entry) in list.iter_mut().enumerate() {
        let object = entry
            .as_object_mut()
            .ok_or_else(|| invalid(format!("tool call {call} is not an object")))?;
        let Some(function) = object.get_mut("function") else {
            continue;
        };
        let function = function
            .as_object_mut()
            .ok_or_else(|| invalid(format!("tool call {call}: function is not an object")))?;
        if let Some(Json::String(arguments)) = function.get("arguments") {
            let decoded = if arguments.trim().is_empty() {
                // Some clients send "" for a call without arguments; templates want a dict.
                Json::Object(Map::new())
            } else {
                serde_json::from_str(arguments).map_err(|e| {
                    TemplateError::InvalidToolArguments {
                        message,
                        call,
                        reason: e.to_string(),
                    }
                })?
            };
            function.insert("arguments".to_owned(), decoded);
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
            ..ChatMessage::default()
        }
    }

    #[test]
    fn content_is_always_a_string_and_other_empty_fields_are_left_out() {
        let json = message("user", "hi").to_template_json(0).unwrap();
        assert_eq!(json.to_string(), r#"{"role":"user","content":"hi"}"#);
        let json = message("assistant", "").to_template_json(0).unwrap();
        assert_eq!(json.to_string(), r#"{"role":"assistant","content":""}"#);
        let tool = ChatMessage {
            name: "get_weather".to_owned(),
            tool_call_id: "c1".to_owned(),
            ..message("tool", "")
        };
        assert_eq!(
            tool.to_template_json(0).unwrap().to_string(),
            r#"{"role":"tool","content":"","name":"get_weather","tool_call_id":"c1"}"#
        );
    }

    #[test]
    fn arguments_become_an_object_in_place() {
        let msg = ChatMessage {
            tool_calls: r#"[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"days\":2}"}}]"#.to_owned(),
            ..message("assistant", "")
        };
        let json = msg.to_template_json(0).unwrap();
        assert_eq!(
            json.to_string(),
            r#"{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris","days":2}}}]}"#
        );
    }

    #[test]
    fn blank_arguments_become_an_empty_object() {
        let msg = ChatMessage {
            tool_calls: r#"[{"function":{"name":"now","arguments":""}}]"#.to_owned(),
            ..message("assistant", "")
        };
        let json = msg.to_template_json(0).unwrap();
        assert_eq!(
            json["tool_calls"][0]["function"]["arguments"],
            Json::Object(Map::new())
        );
    }

    #[test]
    fn reasoning_is_also_offered_as_thinking_first() {
        let msg = ChatMessage {
            reasoning_content: "hmm".to_owned(),
            ..message("assistant", "4")
        };
        let json = msg.to_template_json(0).unwrap();
        assert_eq!(
            json.to_string(),
            r#"{"thinking":"hmm","role":"assistant","content":"4","reasoning_content":"hmm"}"#
        );
    }

    #[test]
    fn malformed_tool_calls_are_errors_that_say_what_to_send() {
        let bad_json = ChatMessage {
            tool_calls: "[{".to_owned(),
            ..message("assistant", "")
        };
        let err = bad_json.to_template_json(3).unwrap_err();
        assert!(matches!(
            err,
            TemplateError::InvalidToolCalls { message: 3, .. }
        ));
        assert!(err.to_string().contains("\"function\":{\"name\""), "{err}");

        let not_array = ChatMessage {
            tool_calls: "{}".to_owned(),
            ..message("assistant", "")
        };
        assert!(matches!(
            not_array.to_template_json(0),
            Err(TemplateError::InvalidToolCalls { .. })
        ));

        let bad_arguments = ChatMessage {
            tool_calls: r#"[{"function":{"name":"f","arguments":"{\"a\":"}}]"#.to_owned(),
            ..message("assistant", "")
        };
        assert!(matches!(
            bad_arguments.to_template_json(1),
            Err(TemplateError::InvalidToolArguments {
                message: 1,
                call: 0,
                ..
            })
        ));
    }
}
