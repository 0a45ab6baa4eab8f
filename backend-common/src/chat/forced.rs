//! Tool-call constraints: the exact shape the output must take when `ToolChoice` demands a
//! call, and the shape a call must keep once the model starts one on its own (`auto`).
//!
//! How a call is written depends on the model's tool parser, so the shape is decided here,
//! next to the parsers; an engine with constrained decoding turns the description into its
//! own grammar format (llama.cpp: GBNF through its JSON-schema converter, lazily applied
//! from where a call begins for `auto`).
use serde_json::{Value, json};

use super::ToolChoice;
use crate::engine::{CallStart, EngineError, ToolCallConstraint};
use crate::parsers::{ToolParserKind, ToolSpec};

/// How one tool parser family writes a single call.
struct CallFormat {
    /// Literal text before the call object.
    prefix: &'static str,
    /// Key of the arguments object next to `name`.
    arguments_key: &'static str,
    /// Literal text after the call object.
    suffix: &'static str,
    /// The parser also reads a bare call object (no prefix) as a call.
    bare_object: bool,
}

/// Parsers whose call syntax is plain text around one JSON object; the others either use
/// control tokens to open a call or a non-JSON syntax, which a JSON schema cannot describe.
const FORCEABLE: &[ToolParserKind] = &[
    ToolParserKind::Hermes,
    ToolParserKind::LlamacppHermes2Pro,
    ToolParserKind::Granite4,
    ToolParserKind::Xlam,
    ToolParserKind::Llama3Json,
    ToolParserKind::Phi4MiniJson,
    ToolParserKind::Granite20bFc,
    ToolParserKind::Jamba,
];

fn call_format(kind: ToolParserKind) -> Option<CallFormat> {
    use ToolParserKind::*;
    let format = |prefix, arguments_key, suffix| {
        Some(CallFormat {
            prefix,
            arguments_key,
            suffix,
            bare_object: false,
        })
    };
    match kind {
        // The Hermes/Qwen templates ask for exactly this layout.
        // With request tools the Hermes parsers also read a bare object naming one (Qwen2.5
        // often writes one without the tags).
        Hermes | LlamacppHermes2Pro | Granite4 => Some(CallFormat {
            bare_object: true,
            ..format("<tool_call>\n", "arguments", "\n</tool_call>")?
        }),
        Xlam => format("<tool_call>\n", "arguments", "\n</tool_call>"),
        // Llama 3.x templates ask for `parameters`.
        Llama3Json => format("", "parameters", ""),
        Phi4MiniJson => format("functools[", "arguments", "]"),
        Granite20bFc => format("<function_call> ", "arguments", ""),
        Jamba => format("<tool_calls>[", "arguments", "]</tool_calls>"),
        _ => None,
    }
}

/// The schema of one call object of `tool`: its name as a constant and its parameters.
fn call_schema(tool: &ToolSpec, arguments_key: &str) -> Value {
    let parameters = if tool.parameters.is_object() {
        tool.parameters.clone()
    } else {
        json!({ "type": "object" })
    };
    json!({
        "type": "object",
        "properties": {
            "name": { "const": tool.name },
            arguments_key: parameters,
        },
        "required": ["name", arguments_key],
        "additionalProperties": false,
    })
}

fn forceable_names() -> String {
    FORCEABLE
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The constraint that makes the output the call `choice` demands, written the way `parser`
/// reads it. For "auto" it is lazy: the model writes what it likes until it opens a call
/// (the format's prefix), and from there the call must be valid (`lazy` set); formats
/// without a literal opener, parsers without a known format, and "none" get no constraint.
pub(super) fn forced_tool_call(
    parser: Option<ToolParserKind>,
    tools: &[ToolSpec],
    choice: &ToolChoice,
) -> Result<Option<ToolCallConstraint>, EngineError> {
    let (wanted, shown): (Vec<&ToolSpec>, String) = match choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Auto => return Ok(lazy_tool_call(parser, tools)),
        ToolChoice::Required => (tools.iter().collect(), "\"required\"".into()),
        ToolChoice::Function(name) => (
            tools.iter().filter(|t| &t.name == name).collect(),
            format!("function `{name}`"),
        ),
    };
    if wanted.is_empty() {
        return Err(EngineError::InvalidArgument(format!(
            "ToolChoice {shown} forces a call, but the request's Tools offer no such function"
        )));
    }
    let Some(kind) = parser else {
        return Err(EngineError::FailedPrecondition(format!(
            "ToolChoice {shown} forces a tool call, but this model has no tool parser to read it; load the model with the option `tool_parser:<name>` (forced calls work with {}) or send ToolChoice \"auto\"",
            forceable_names()
        )));
    };
    let Some(format) = call_format(kind) else {
        return Err(EngineError::FailedPrecondition(format!(
            "ToolChoice {shown} forces a tool call, but tool parser `{}` has no forced-call format here (forced calls work with {}); send ToolChoice \"auto\" or load the model with another `tool_parser:`",
            kind.name(),
            forceable_names()
        )));
    };
    Ok(Some(constraint(&format, &wanted, None)))
}

/// Calls of any of `tools` in `format`.
fn constraint(
    format: &CallFormat,
    tools: &[&ToolSpec],
    lazy: Option<CallStart>,
) -> ToolCallConstraint {
    let mut calls: Vec<Value> = tools
        .iter()
        .map(|t| call_schema(t, format.arguments_key))
        .collect();
    let schema = if calls.len() == 1 {
        calls.remove(0)
    } else {
        json!({ "anyOf": calls })
    };
    ToolCallConstraint {
        prefix: format.prefix.to_string(),
        schema,
        suffix: format.suffix.to_string(),
        lazy,
    }
}

/// "auto": any of `tools`, constrained only once the model writes the format's opener.
fn lazy_tool_call(
    parser: Option<ToolParserKind>,
    tools: &[ToolSpec],
) -> Option<ToolCallConstraint> {
    let format = call_format(parser?)?;
    let opener = format.prefix.trim();
    if opener.is_empty() || tools.is_empty() {
        return None;
    }
    let start = CallStart {
        opener: opener.to_string(),
        bare_object_at_start: format.bare_object,
    };
    Some(constraint(
        &format,
        &tools.iter().collect::<Vec<_>>(),
        Some(start),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::{ChatParser, ParseOptions};

    fn tools() -> Vec<ToolSpec> {
        ToolSpec::list_from_openai_json(
            r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}},
                {"type":"function","function":{"name":"get_time"}}]"#,
        )
        .unwrap()
    }

    #[test]
    fn none_needs_no_constraint() {
        let c = forced_tool_call(Some(ToolParserKind::Hermes), &tools(), &ToolChoice::None);
        assert_eq!(c.unwrap(), None);
    }

    #[test]
    fn auto_constrains_a_call_only_once_it_is_opened() {
        let c = forced_tool_call(Some(ToolParserKind::Hermes), &tools(), &ToolChoice::Auto)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.lazy,
            Some(CallStart {
                opener: "<tool_call>".into(),
                bare_object_at_start: true
            })
        );
        assert_eq!(c.schema["anyOf"].as_array().unwrap().len(), 2);
        // No opener to wait for, no known format, no parser: no constraint, and no error.
        for parser in [
            Some(ToolParserKind::Llama3Json),
            Some(ToolParserKind::KimiK2),
            None,
        ] {
            let c = forced_tool_call(parser, &tools(), &ToolChoice::Auto).unwrap();
            assert_eq!(c, None, "{parser:?}");
        }
        let forced = forced_tool_call(
            Some(ToolParserKind::Hermes),
            &tools(),
            &ToolChoice::Required,
        )
        .unwrap()
        .unwrap();
        assert_eq!(forced.lazy, None);
        let phi = forced_tool_call(
            Some(ToolParserKind::Phi4MiniJson),
            &tools(),
            &ToolChoice::Auto,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            phi.lazy.map(|l| (l.opener, l.bare_object_at_start)),
            Some(("functools[".into(), false))
        );
    }

    #[test]
    fn named_function_fixes_name_and_parameters() {
        let c = forced_tool_call(
            Some(ToolParserKind::Hermes),
            &tools(),
            &ToolChoice::Function("get_weather".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.prefix.as_str(), c.suffix.as_str()),
            ("<tool_call>\n", "\n</tool_call>")
        );
        assert_eq!(c.schema["properties"]["name"]["const"], "get_weather");
        assert_eq!(
            c.schema["properties"]["arguments"]["required"],
            json!(["location"])
        );
        assert_eq!(c.schema["additionalProperties"], false);
    }

    #[test]
    fn required_offers_every_tool() {
        let c = forced_tool_call(
            Some(ToolParserKind::Llama3Json),
            &tools(),
            &ToolChoice::Required,
        )
        .unwrap()
        .unwrap();
        let alternatives = c.schema["anyOf"].as_array().unwrap();
        assert_eq!(alternatives.len(), 2);
        assert_eq!(alternatives[1]["properties"]["name"]["const"], "get_time");
        assert_eq!(
            alternatives[1]["properties"]["parameters"],
            json!({"type": "object"}),
            "a tool without parameters takes any object"
        );
    }

    #[test]
    fn unsupported_parsers_and_missing_tools_are_named() {
        let e = forced_tool_call(
            Some(ToolParserKind::KimiK2),
            &tools(),
            &ToolChoice::Required,
        )
        .unwrap_err();
        assert!(matches!(e, EngineError::FailedPrecondition(_)), "{e}");
        assert!(
            e.to_string().contains("kimi_k2") && e.to_string().contains("hermes"),
            "{e}"
        );
        let e = forced_tool_call(None, &tools(), &ToolChoice::Required).unwrap_err();
        assert!(e.to_string().contains("tool_parser"), "{e}");
        let e = forced_tool_call(
            Some(ToolParserKind::Hermes),
            &tools(),
            &ToolChoice::Function("nope".into()),
        )
        .unwrap_err();
        assert!(matches!(e, EngineError::InvalidArgument(_)), "{e}");
    }

    /// A call written in each forceable format is read back by that format's parser.
    #[test]
    fn every_forced_format_parses_as_one_call() {
        for &kind in FORCEABLE {
            let format = call_format(kind).unwrap();
            let text = format!(
                "{}{{\"name\": \"get_weather\", \"{}\": {{\"location\": \"Paris\"}}}}{}",
                format.prefix, format.arguments_key, format.suffix
            );
            let options = ParseOptions {
                tools: tools(),
                ..Default::default()
            };
            let message = ChatParser::parse(Some(kind), None, options, &text);
            assert_eq!(message.tool_calls.len(), 1, "{kind:?}: {message:?}");
            assert_eq!(message.tool_calls[0].name, "get_weather", "{kind:?}");
            let args: Value = serde_json::from_str(&message.tool_calls[0].arguments).unwrap();
            assert_eq!(args, json!({"location": "Paris"}), "{kind:?}");
            assert!(
                message.content.as_deref().unwrap_or("").trim().is_empty(),
                "{kind:?}: {message:?}"
            );
        }
    }
}
