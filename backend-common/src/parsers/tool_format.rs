//! How a model's tool calls and reasoning are marked up, in the vocabulary of LocalAI's
//! `ToolFormatMarkers` (llama.cpp's template analysis): LocalAI's core copies them into its
//! function-calling config, so its own fallback parser reads the model's tool markup.
//!
//! `format_type` is `json_native` (a JSON object names the function and holds its
//! arguments), `tag_with_json` (tags name the function, JSON holds the arguments) or
//! `tag_with_tagged` (tags name the function and each argument).
use super::registry::{ReasoningParserKind, ToolParserKind};
use crate::pb::ToolFormatMarkers;

/// The markers of the calls `kind` parses, where they are plain text LocalAI's parser can
/// use; `None` for formats outside its three shapes (Python lists, Harmony, control-token
/// sections with per-call ids).
pub fn tool_format(kind: ToolParserKind) -> Option<ToolFormatMarkers> {
    use ToolParserKind::*;
    let json = |section_start: &str, section_end: &str, args_field: &str| ToolFormatMarkers {
        format_type: "json_native".into(),
        section_start: section_start.into(),
        section_end: section_end.into(),
        name_field: "name".into(),
        args_field: args_field.into(),
        call_id_position: "none".into(),
        ..Default::default()
    };
    Some(match kind {
        Hermes | LlamacppHermes2Pro | Granite4 | Xlam => {
            json("<tool_call>", "</tool_call>", "arguments")
        }
        Llama3Json => json("", "", "parameters"),
        Mistral => ToolFormatMarkers {
            tools_array_wrapped: true,
            ..json("[TOOL_CALLS]", "", "arguments")
        },
        Jamba => ToolFormatMarkers {
            tools_array_wrapped: true,
            ..json("<tool_calls>", "</tool_calls>", "arguments")
        },
        Granite => ToolFormatMarkers {
            tools_array_wrapped: true,
            ..json("<|tool_call|>", "", "arguments")
        },
        Internlm => json("<|action_start|><|plugin|>", "<|action_end|>", "parameters"),
        Qwen3Coder | Qwen3Xml => ToolFormatMarkers {
            format_type: "tag_with_tagged".into(),
            section_start: "<tool_call>".into(),
            section_end: "</tool_call>".into(),
            func_name_prefix: "<function=".into(),
            func_name_suffix: ">".into(),
            func_close: "</function>".into(),
            arg_name_prefix: "<parameter=".into(),
            arg_name_suffix: ">".into(),
            arg_value_suffix: "</parameter>".into(),
            call_id_position: "none".into(),
            ..Default::default()
        },
        Glm45 | Glm47 => ToolFormatMarkers {
            format_type: "tag_with_tagged".into(),
            section_start: "<tool_call>".into(),
            section_end: "</tool_call>".into(),
            arg_name_prefix: "<arg_key>".into(),
            arg_name_suffix: "</arg_key>".into(),
            arg_value_prefix: "<arg_value>".into(),
            arg_value_suffix: "</arg_value>".into(),
            call_id_position: "none".into(),
            ..Default::default()
        },
        Pythonic
        | Llama4Pythonic
        | Granite20bFc
        | Phi4MiniJson
        | DeepSeekV3
        | DeepSeekV31
        | KimiK2
        | Openai
        | LlamacppDeepSeekR1
        | LlamacppGranite
        | LlamacppFunctionaryV31Llama31
        | LlamacppFunctionaryV32 => return None,
    })
}

/// The first start and end markers of a reasoning parser's tags (`None` for Harmony, whose
/// reasoning is a channel, not a tag pair).
pub fn reasoning_markers(kind: ReasoningParserKind) -> Option<(&'static str, &'static str)> {
    let format = kind.think_format()?;
    Some((format.start.first()?, format.end.first()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parser_either_has_a_known_shape_or_none() {
        let shapes = ["json_native", "tag_with_json", "tag_with_tagged"];
        for kind in ToolParserKind::all() {
            if let Some(markers) = tool_format(kind) {
                assert!(shapes.contains(&markers.format_type.as_str()), "{kind:?}");
                assert_eq!(markers.call_id_position, "none", "{kind:?}");
                if markers.format_type == "json_native" {
                    assert!(!markers.name_field.is_empty() && !markers.args_field.is_empty());
                } else {
                    assert!(!markers.arg_name_prefix.is_empty(), "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn the_families_localai_names_have_their_markup() {
        let hermes = tool_format(ToolParserKind::Hermes).unwrap();
        assert_eq!(
            (hermes.section_start.as_str(), hermes.section_end.as_str()),
            ("<tool_call>", "</tool_call>")
        );
        let llama = tool_format(ToolParserKind::Llama3Json).unwrap();
        assert_eq!(llama.args_field, "parameters");
        let mistral = tool_format(ToolParserKind::Mistral).unwrap();
        assert!(mistral.tools_array_wrapped && mistral.section_start == "[TOOL_CALLS]");
        let coder = tool_format(ToolParserKind::Qwen3Coder).unwrap();
        assert_eq!(coder.func_name_prefix, "<function=");
        assert_eq!(coder.arg_value_suffix, "</parameter>");
        assert_eq!(tool_format(ToolParserKind::Pythonic), None);
        assert_eq!(
            reasoning_markers(ReasoningParserKind::Qwen3),
            Some(("<think>", "</think>"))
        );
        assert_eq!(reasoning_markers(ReasoningParserKind::OpenaiGptOss), None);
    }
}
