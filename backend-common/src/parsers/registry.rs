//! Parser names: which tool and reasoning parsers exist, which upstream names are known but not
//! implemented, and LocalAI's defaults by model family.

use super::deepseek::{DeepSeek, Layout};
use super::error::{ParserError, ParserRole};
use super::functionary::Functionary;
use super::glm::Glm;
use super::harmony::Harmony;
use super::json_calls::{Body, Commit, JsonCalls, JsonFormat, Opener, Prose};
use super::kimi::Kimi;
use super::pythonic::Pythonic as PythonicCalls;
use super::qwen_xml::QwenXml;
use super::reasoning::{ThinkFormat, ThinkTags};
use super::stream::{Sink, Stage};
use super::types::ParseOptions;

/// A tool-call parser implemented here (named as in vLLM; `llamacpp_*` follow llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolParserKind {
    /// `<tool_call>{json}</tool_call>` (Hermes, Qwen2.5, Qwen3).
    Hermes,
    /// Hermes tags, calls only when complete (Granite 4).
    Granite4,
    /// Bare JSON objects with `parameters` (Llama 3.x).
    Llama3Json,
    /// `[TOOL_CALLS]` followed by a JSON array or `name{args}`.
    Mistral,
    /// A Python list of calls.
    Pythonic,
    /// A Python list of calls, optionally in `<|python_start|>` tags.
    Llama4Pythonic,
    /// Qwen3-Coder XML.
    Qwen3Coder,
    /// Qwen3-Coder XML (vLLM's streaming-XML implementation of the same format).
    Qwen3Xml,
    /// `<|tool_call|>[...]` at the start of the output (Granite 3).
    Granite,
    /// `<function_call> {json}` (Granite 20B FC).
    Granite20bFc,
    /// `functools[...]` (Phi-4 mini).
    Phi4MiniJson,
    /// DeepSeek V3/R1 call section.
    DeepSeekV3,
    /// DeepSeek V3.1 call section.
    DeepSeekV31,
    /// JSON array in several wrappers (xLAM).
    Xlam,
    /// Kimi K2 call section.
    KimiK2,
    /// GLM-4.5/4.6 `<arg_key>`/`<arg_value>` calls.
    Glm45,
    /// GLM-4.7 `<arg_key>`/`<arg_value>` calls.
    Glm47,
    /// gpt-oss Harmony messages (also yields the reasoning).
    Openai,
    /// `<tool_calls>[...]</tool_calls>` (Jamba).
    Jamba,
    /// `<|action_start|><|plugin|>{json}<|action_end|>` (InternLM 2).
    Internlm,
    /// llama.cpp's lenient Hermes 2 Pro parsing.
    LlamacppHermes2Pro,
    /// llama.cpp's DeepSeek R1 parsing.
    LlamacppDeepSeekR1,
    /// llama.cpp's Granite parsing.
    LlamacppGranite,
    /// llama.cpp's Functionary v3.1 (Llama 3.1) parsing.
    LlamacppFunctionaryV31Llama31,
    /// llama.cpp's Functionary v3.2 parsing.
    LlamacppFunctionaryV32,
}

const TOOL_PARSERS: &[(&str, ToolParserKind)] = &[
    ("hermes", ToolParserKind::Hermes),
    ("granite4", ToolParserKind::Granite4),
    ("llama3_json", ToolParserKind::Llama3Json),
    ("llama4_json", ToolParserKind::Llama3Json),
    ("mistral", ToolParserKind::Mistral),
    ("pythonic", ToolParserKind::Pythonic),
    ("llama4_pythonic", ToolParserKind::Llama4Pythonic),
    ("qwen3_coder", ToolParserKind::Qwen3Coder),
    ("qwen3_xml", ToolParserKind::Qwen3Xml),
    ("granite", ToolParserKind::Granite),
    ("granite-20b-fc", ToolParserKind::Granite20bFc),
    ("phi4_mini_json", ToolParserKind::Phi4MiniJson),
    ("deepseek_v3", ToolParserKind::DeepSeekV3),
    ("deepseek_v31", ToolParserKind::DeepSeekV31),
    ("xlam", ToolParserKind::Xlam),
    ("kimi_k2", ToolParserKind::KimiK2),
    ("glm45", ToolParserKind::Glm45),
    ("glm47", ToolParserKind::Glm47),
    ("openai", ToolParserKind::Openai),
    ("jamba", ToolParserKind::Jamba),
    ("internlm", ToolParserKind::Internlm),
    ("llamacpp_hermes_2_pro", ToolParserKind::LlamacppHermes2Pro),
    ("llamacpp_deepseek_r1", ToolParserKind::LlamacppDeepSeekR1),
    ("llamacpp_granite", ToolParserKind::LlamacppGranite),
    (
        "llamacpp_functionary_v3_1_llama_3_1",
        ToolParserKind::LlamacppFunctionaryV31Llama31,
    ),
    (
        "llamacpp_functionary_v3_2",
        ToolParserKind::LlamacppFunctionaryV32,
    ),
];

/// Upstream tool-parser names that are recognised but not implemented.
const UNIMPLEMENTED_TOOL_PARSERS: &[&str] = &[
    "gemma4",
    "minimax_m2",
    "minimax",
    "ernie45",
    "olmo3",
    "seed_oss",
    "step3",
    "hunyuan_a13b",
    "longcat",
    "deepseek_v32",
    "functiongemma",
    "gigachat3",
];

/// A reasoning parser implemented here (named as in vLLM; `llamacpp_deepseek` follows llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasoningParserKind {
    /// `<think>...</think>`, output starting inside reasoning.
    DeepSeekR1,
    /// Like DeepSeek R1; a `<tool_call>` also ends the reasoning.
    Qwen3,
    /// `Here is my thought process:` ... `Here is my response:`.
    Granite,
    /// `[THINK]...[/THINK]` (Magistral).
    Mistral,
    /// Harmony `analysis` channel (gpt-oss).
    OpenaiGptOss,
    /// DeepSeek R1 logic unless thinking is disabled.
    Glm45,
    /// DeepSeek R1 logic only when thinking is enabled.
    DeepSeekV3,
    /// `<seed:think>...</seed:think>`.
    SeedOss,
    /// llama.cpp's `deepseek` reasoning format: `<think>` only at the very start.
    LlamacppDeepseek,
}

const REASONING_PARSERS: &[(&str, ReasoningParserKind)] = &[
    ("deepseek_r1", ReasoningParserKind::DeepSeekR1),
    ("qwen3", ReasoningParserKind::Qwen3),
    ("granite", ReasoningParserKind::Granite),
    ("mistral", ReasoningParserKind::Mistral),
    ("openai_gptoss", ReasoningParserKind::OpenaiGptOss),
    ("glm45", ReasoningParserKind::Glm45),
    ("deepseek_v3", ReasoningParserKind::DeepSeekV3),
    ("seed_oss", ReasoningParserKind::SeedOss),
    ("llamacpp_deepseek", ReasoningParserKind::LlamacppDeepseek),
];

/// Upstream reasoning-parser names that are recognised but not implemented.
const UNIMPLEMENTED_REASONING_PARSERS: &[&str] = &[
    "gemma4",
    "minimax_m2",
    "minimax_m2_append_think",
    "kimi_k2",
    "nemotron_v3",
    "olmo3",
    "ernie45",
    "hunyuan_a13b",
    "step3",
];

fn lookup<K: Copy>(
    role: ParserRole,
    name: &str,
    implemented: &[(&'static str, K)],
    unimplemented: &[&'static str],
) -> Result<K, ParserError> {
    let wanted = name.trim().to_lowercase();
    if let Some((_, kind)) = implemented.iter().find(|(known, _)| *known == wanted) {
        return Ok(*kind);
    }
    let implemented_names: Vec<&'static str> = implemented.iter().map(|(n, _)| *n).collect();
    if unimplemented.contains(&wanted.as_str()) {
        return Err(ParserError::NotImplemented {
            role,
            name: name.to_owned(),
            implemented: implemented_names,
        });
    }
    let mut known = implemented_names;
    known.extend_from_slice(unimplemented);
    Err(ParserError::Unknown {
        role,
        name: name.to_owned(),
        known,
    })
}

const THINK: &[&str] = &["<think>"];
const END_THINK: &[&str] = &["</think>"];

impl ToolParserKind {
    /// Looks a parser up by name (case-insensitive).
    pub fn from_name(name: &str) -> Result<ToolParserKind, ParserError> {
        lookup(
            ParserRole::Tool,
            name,
            TOOL_PARSERS,
            UNIMPLEMENTED_TOOL_PARSERS,
        )
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        TOOL_PARSERS
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("", |(name, _)| *name)
    }

    /// Every implemented parser, by canonical name.
    pub fn all() -> Vec<ToolParserKind> {
        let mut kinds: Vec<ToolParserKind> = Vec::new();
        for (_, kind) in TOOL_PARSERS {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
    }

    /// llama.cpp-compatible parsers report empty content as `""` rather than null.
    pub(crate) fn content_always_present(self) -> bool {
        matches!(
            self,
            ToolParserKind::LlamacppHermes2Pro
                | ToolParserKind::LlamacppDeepSeekR1
                | ToolParserKind::LlamacppGranite
                | ToolParserKind::LlamacppFunctionaryV31Llama31
                | ToolParserKind::LlamacppFunctionaryV32
        )
    }

    /// Markers that open a call; inside reasoning they end it (vLLM issue #39056).
    pub(crate) fn call_markers(self) -> &'static [&'static str] {
        use ToolParserKind::*;
        match self {
            Hermes | Granite4 | Qwen3Coder | Qwen3Xml | Glm45 | Glm47 => &["<tool_call>"],
            Llama3Json => &["<|python_tag|>"],
            Mistral => &["[TOOL_CALLS]"],
            Llama4Pythonic => &["<|python_start|>"],
            Granite => &["<|tool_call|>"],
            Granite20bFc => &["<function_call>"],
            Phi4MiniJson => &["functools["],
            DeepSeekV3 | DeepSeekV31 => &["<｜tool▁calls▁begin｜>"],
            Xlam => &["[TOOL_CALLS]", "<tool_call>"],
            KimiK2 => &["<|tool_calls_section_begin|>"],
            Jamba => &["<tool_calls>"],
            Internlm => &["<|action_start|>", "<|plugin|>"],
            Pythonic
            | Openai
            | LlamacppHermes2Pro
            | LlamacppDeepSeekR1
            | LlamacppGranite
            | LlamacppFunctionaryV31Llama31
            | LlamacppFunctionaryV32 => &[],
        }
    }

    /// The streaming parser for one request.
    pub(crate) fn stage(self, options: &ParseOptions) -> Box<dyn Stage> {
        use ToolParserKind::*;
        let json = |format: JsonFormat| -> Box<dyn Stage> {
            Box::new(JsonCalls::new(format, options.clone()))
        };
        match self {
            Hermes => json(hermes_format(options, false)),
            Granite4 => json(hermes_format(options, true)),
            Llama3Json => {
                let mut format = JsonFormat::new(vec![Opener::bare("{", Body::Object)]);
                format.strip = &["<|python_tag|>"];
                format.prose = Prose::DropIfCalls;
                format.require_arguments = true;
                json(format)
            }
            Phi4MiniJson => {
                let mut format =
                    JsonFormat::new(vec![Opener::tag("functools[", None, Body::ArrayItems)]);
                format.prose = Prose::DropIfCalls;
                json(format)
            }
            Mistral => {
                let mut format = JsonFormat::new(vec![Opener::tag(
                    "[TOOL_CALLS]",
                    None,
                    Body::ArrayOrNamed { name_end: "{" },
                )]);
                format.release_without_opener = true;
                json(format)
            }
            Granite => {
                let mut format = JsonFormat::new(vec![
                    Opener::tag("<|tool_call|>", None, Body::Array).absorbing(),
                    Opener::tag("<tool_call>", None, Body::Array).absorbing(),
                    Opener::bare("[", Body::Array),
                ]);
                format.anchored = true;
                json(format)
            }
            LlamacppGranite => {
                let mut format =
                    JsonFormat::new(vec![Opener::tag("<|tool_call|>", None, Body::Array)]);
                format.strip = &["<response>", "</response>"];
                format.release_unfinished = false;
                json(format)
            }
            Granite20bFc => json(JsonFormat::new(vec![Opener::tag(
                "<function_call>",
                None,
                Body::Object,
            )])),
            Jamba => json(JsonFormat::new(vec![Opener::tag(
                "<tool_calls>",
                Some("</tool_calls>"),
                Body::Array,
            )])),
            Internlm => {
                // `<|action_start|><|plugin|>` is two special tokens: match them separately.
                let mut format = JsonFormat::new(vec![Opener::tag(
                    "<|plugin|>",
                    Some("<|action_end|>"),
                    Body::Object,
                )]);
                format.strip = &["<|action_start|>"];
                json(format)
            }
            Xlam => {
                let mut format = JsonFormat::new(vec![
                    Opener::tag("```json", Some("```"), Body::ObjectOrArray),
                    Opener::tag("[TOOL_CALLS]", None, Body::ObjectOrArray),
                    Opener::tag("<tool_call>", Some("</tool_call>"), Body::ObjectOrArray),
                    Opener::bare("[", Body::Array),
                ]);
                format.trim_before_calls = true;
                json(format)
            }
            LlamacppHermes2Pro => json(llamacpp_hermes_format()),
            LlamacppFunctionaryV31Llama31 => {
                let mut format = JsonFormat::new(vec![Opener::tag(
                    "<function=",
                    Some("</function>"),
                    Body::Named {
                        name_end: ">",
                        consume_end: true,
                    },
                )]);
                format.release_unfinished = false;
                json(format)
            }
            Pythonic | Llama4Pythonic => Box::new(PythonicCalls::new()),
            Qwen3Coder | Qwen3Xml => Box::new(QwenXml::new(options.clone())),
            Glm45 | Glm47 => Box::new(Glm::new(options.clone())),
            DeepSeekV3 => Box::new(DeepSeek::new(Layout::V3, false)),
            DeepSeekV31 => Box::new(DeepSeek::new(Layout::V31, false)),
            LlamacppDeepSeekR1 => Box::new(DeepSeek::new(Layout::V3, true)),
            KimiK2 => Box::new(Kimi::new()),
            Openai => Box::new(Harmony::new(true)),
            LlamacppFunctionaryV32 => Box::new(Functionary::new()),
        }
    }
}

/// Hermes: `<tool_call>` tags; with request tools, also bare or fenced JSON naming one of them.
fn hermes_format(options: &ParseOptions, complete_calls_only: bool) -> JsonFormat {
    let mut openers = vec![Opener::tag(
        "<tool_call>",
        Some("</tool_call>"),
        Body::Object,
    )];
    if !options.tools.is_empty() {
        openers.extend([
            Opener::tag("```json", Some("```"), Body::Object)
                .absorbing()
                .checked(),
            Opener::tag("```", Some("```"), Body::Object)
                .absorbing()
                .checked(),
            Opener::bare("{", Body::Object).checked(),
        ]);
    }
    let mut format = JsonFormat::new(openers);
    if complete_calls_only {
        format.commit = Commit::AtClose;
        format.prose = Prose::Stream {
            drop_after_call: false,
        };
    }
    format
}

/// llama.cpp's Hermes 2 Pro: many wrappers, `<function=...>` forms, fences and bare JSON.
fn llamacpp_hermes_format() -> JsonFormat {
    let wrapped =
        |open: &'static str, close: &'static str| Opener::tag(open, Some(close), Body::Object);
    let named = |open: &'static str, name_end: &'static str| {
        Opener::tag(
            open,
            Some("</function>"),
            Body::Named {
                name_end,
                consume_end: true,
            },
        )
    };
    let mut format = JsonFormat::new(vec![
        wrapped("<tool_call>", "</tool_call>"),
        wrapped("<function_call>", "</function_call>"),
        wrapped("<tool>", "</tool>"),
        wrapped("<tools>", "</tools>"),
        wrapped("<response>", "</response>"),
        wrapped("<json>", "</json>"),
        wrapped("<xml>", "</xml>"),
        wrapped("<JSON>", "</JSON>"),
        wrapped("```json", "```"),
        wrapped("```xml", "```"),
        wrapped("```", "```"),
        named("<function=", ">"),
        named("<function name=\"", "\">"),
        Opener::bare("{", Body::Object),
    ]);
    format.release_unfinished = false;
    format
}

impl ReasoningParserKind {
    /// Looks a parser up by name (case-insensitive).
    pub fn from_name(name: &str) -> Result<ReasoningParserKind, ParserError> {
        lookup(
            ParserRole::Reasoning,
            name,
            REASONING_PARSERS,
            UNIMPLEMENTED_REASONING_PARSERS,
        )
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        REASONING_PARSERS
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("", |(name, _)| *name)
    }

    /// Every implemented parser.
    pub fn all() -> Vec<ReasoningParserKind> {
        REASONING_PARSERS.iter().map(|(_, kind)| *kind).collect()
    }

    /// True when `prompt` (the rendered template) already opened the reasoning block, i.e.
    /// ends with this parser's start tag: the output then begins inside reasoning.
    pub fn prompt_opens_reasoning(self, prompt: &str) -> bool {
        let prompt = prompt.trim_end();
        self.think_format()
            .is_some_and(|format| format.start.iter().any(|tag| prompt.ends_with(tag)))
    }

    pub(crate) fn think_format(self) -> Option<ThinkFormat> {
        use ReasoningParserKind::*;
        Some(match self {
            DeepSeekR1 | Glm45 | DeepSeekV3 => ThinkFormat::opened_by_template(THINK, END_THINK),
            Qwen3 => {
                let mut format = ThinkFormat::opened_by_template(THINK, END_THINK);
                format.implicit_end.push("<tool_call>");
                format
            }
            SeedOss => ThinkFormat::opened_by_template(&["<seed:think>"], &["</seed:think>"]),
            Mistral => {
                let mut format = ThinkFormat::opened_by_template(&["[THINK]"], &["[/THINK]"]);
                format.starts_open = false;
                format.reopen = true;
                format.strip_stray_end = true;
                format
            }
            Granite => {
                let mut format = ThinkFormat::opened_by_template(
                    &["Here is my thought process:", "Here's my thought process:"],
                    &["Here is my response:", "Here's my response:"],
                );
                format.starts_open = false;
                format
            }
            LlamacppDeepseek => {
                let mut format = ThinkFormat::opened_by_template(THINK, END_THINK);
                format.starts_open = false;
                format.start_only_at_beginning = true;
                format.skip_ws_after_end = true;
                format.report_empty = false;
                format
            }
            OpenaiGptOss => return None,
        })
    }

    /// The streaming parser for one request, or `None` when this request has no reasoning to
    /// split (thinking switched off for a parser that then passes text through).
    pub(crate) fn stage(
        self,
        options: &ParseOptions,
        tool_markers: &[&'static str],
        out: &mut dyn Sink,
    ) -> Option<Box<dyn Stage>> {
        let Some(mut format) = self.think_format() else {
            return Some(Box::new(Harmony::new(false)));
        };
        let forced = options.thinking_forced_open;
        let enabled = match self {
            // vLLM's deepseek_v3 reasoning is off unless thinking is asked for.
            ReasoningParserKind::DeepSeekV3 => options.enable_thinking == Some(true),
            _ => options.enable_thinking != Some(false),
        };
        if !forced
            && !enabled
            && matches!(
                self,
                ReasoningParserKind::DeepSeekV3 | ReasoningParserKind::Glm45
            )
        {
            return None;
        }
        let open = forced || (format.starts_open && enabled);
        if !open && format.starts_open {
            // Thinking is off: only a tag that opens the output starts reasoning.
            format.start_only_at_beginning = true;
        }
        if self != ReasoningParserKind::LlamacppDeepseek {
            format.implicit_end.extend_from_slice(tool_markers);
        }
        Some(Box::new(ThinkTags::new(format, open, out)))
    }
}

/// One row of LocalAI's model-family table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFamily {
    /// Substring of the normalised model name.
    pub pattern: &'static str,
    /// Default tool parser name, if any.
    pub tool_parser: Option<&'static str>,
    /// Default reasoning parser name, if any.
    pub reasoning_parser: Option<&'static str>,
}

const fn family(
    pattern: &'static str,
    tool_parser: Option<&'static str>,
    reasoning_parser: Option<&'static str>,
) -> ModelFamily {
    ModelFamily {
        pattern,
        tool_parser,
        reasoning_parser,
    }
}

/// LocalAI's parser defaults by model family.
pub const MODEL_FAMILIES: &[ModelFamily] = &[
    family("qwen3.5", Some("qwen3_xml"), Some("qwen3")),
    family("qwen3-coder", Some("qwen3_xml"), Some("qwen3")),
    family("qwen3", Some("hermes"), Some("qwen3")),
    family("qwen2.5", Some("hermes"), None),
    family("qwq", None, Some("deepseek_r1")),
    family("llama-4", Some("llama4_pythonic"), None),
    family("llama-3.3", Some("llama3_json"), None),
    family("llama-3.2", Some("llama3_json"), None),
    family("llama-3.1", Some("llama3_json"), None),
    family("mistral-nemo", Some("mistral"), Some("mistral")),
    family("mistral-small", Some("mistral"), Some("mistral")),
    family("mistral-large", Some("mistral"), Some("mistral")),
    family("magistral", Some("mistral"), Some("mistral")),
    family("deepseek-r1", Some("deepseek_v3"), Some("deepseek_r1")),
    family("deepseek-v3", Some("deepseek_v3"), Some("deepseek_v3")),
    family("glm-5", Some("glm47"), None),
    family("glm-4", Some("glm45"), Some("glm45")),
    family("gemma-4", Some("gemma4"), Some("gemma4")),
    family("granite-4", Some("granite4"), Some("granite")),
    family("minimax-m2.5", Some("minimax_m2"), Some("minimax_m2")),
    family("minimax", Some("minimax_m2"), Some("minimax_m2")),
    family("kimi-k2", Some("kimi_k2"), Some("kimi_k2")),
    family("nemotron", None, Some("nemotron_v3")),
    family("olmo", Some("olmo3"), Some("olmo3")),
    family("ernie", Some("ernie45"), Some("ernie45")),
    family("phi-4", Some("phi4_mini_json"), None),
    family("gpt-oss", Some("openai"), Some("openai_gptoss")),
    family("hermes", Some("hermes"), None),
];

/// Normalises a model name for family matching: lowercase, the part after the last `/`, without
/// `.gguf`, `_` as `-`.
pub fn normalize_model_name(model: &str) -> String {
    let lower = model.trim().to_lowercase();
    let base = lower.rsplit('/').next().unwrap_or(&lower);
    let base = base.strip_suffix(".gguf").unwrap_or(base);
    base.replace('_', "-")
}

/// The family row for a model name.
///
/// Among the patterns contained in the normalised name, the one found earliest wins and, among
/// those starting at the same place, the longest (`qwen3-coder` over `qwen3`). Position comes
/// first because fine-tunes put their own family before the base model's:
/// `Hermes-3-Llama-3.1-8B` is a Hermes model, not a Llama 3.1 one.
pub fn model_family(model: &str) -> Option<&'static ModelFamily> {
    let name = normalize_model_name(model);
    MODEL_FAMILIES
        .iter()
        .filter_map(|family| name.find(family.pattern).map(|at| (at, family)))
        .min_by_key(|(at, family)| (*at, std::cmp::Reverse(family.pattern.len())))
        .map(|(_, family)| family)
}

/// Where an active parser choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParserSource {
    /// The user's `tool_parser:` / `reasoning_parser:` option.
    User,
    /// The model-family table, through this pattern.
    ModelFamily(&'static str),
}

/// The parser chosen for one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParserChoice<K> {
    /// No parser: text passes through.
    None,
    /// This parser runs.
    Active {
        /// The parser.
        kind: K,
        /// Why it was chosen.
        source: ParserSource,
    },
    /// The family table names a parser that is not implemented: the caller should warn.
    Unsupported {
        /// The table's parser name.
        name: &'static str,
        /// The matching family pattern.
        pattern: &'static str,
    },
}

impl<K: Copy> ParserChoice<K> {
    /// The parser to run, if any.
    pub fn kind(&self) -> Option<K> {
        match self {
            ParserChoice::Active { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Tool and reasoning parsers chosen for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserSelection {
    /// The tool-call parser.
    pub tool: ParserChoice<ToolParserKind>,
    /// The reasoning parser.
    pub reasoning: ParserChoice<ReasoningParserKind>,
}

impl ParserSelection {
    /// One message per table default that is not implemented, for the load-time log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let ParserChoice::Unsupported { name, pattern } = self.tool {
            warnings.push(format!(
                "model family {pattern:?} defaults to tool parser {name:?}, which is not implemented; tool calls will not be parsed"
            ));
        }
        if let ParserChoice::Unsupported { name, pattern } = self.reasoning {
            warnings.push(format!(
                "model family {pattern:?} defaults to reasoning parser {name:?}, which is not implemented; reasoning will stay in the content"
            ));
        }
        warnings
    }
}

/// Chooses the parsers for `model`: a user-given name wins (an unknown or unimplemented one is an
/// error), else the model family's default (an unimplemented default is reported as
/// [`ParserChoice::Unsupported`]). Empty user names count as not given.
pub fn select_parsers(
    model: &str,
    user_tool_parser: Option<&str>,
    user_reasoning_parser: Option<&str>,
) -> Result<ParserSelection, ParserError> {
    let family = model_family(model);
    let tool = choose(
        user_tool_parser,
        family.and_then(|f| f.tool_parser.map(|name| (name, f.pattern))),
        ToolParserKind::from_name,
    )?;
    let reasoning = choose(
        user_reasoning_parser,
        family.and_then(|f| f.reasoning_parser.map(|name| (name, f.pattern))),
        ReasoningParserKind::from_name,
    )?;
    Ok(ParserSelection { tool, reasoning })
}

fn choose<K>(
    user: Option<&str>,
    default: Option<(&'static str, &'static str)>,
    from_name: fn(&str) -> Result<K, ParserError>,
) -> Result<ParserChoice<K>, ParserError> {
    if let Some(name) = user.filter(|name| !name.trim().is_empty()) {
        return Ok(ParserChoice::Active {
            kind: from_name(name)?,
            source: ParserSource::User,
        });
    }
    let Some((name, pattern)) = default else {
        return Ok(ParserChoice::None);
    };
    Ok(match from_name(name) {
        Ok(kind) => ParserChoice::Active {
            kind,
            source: ParserSource::ModelFamily(pattern),
        },
        Err(_) => ParserChoice::Unsupported { name, pattern },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_model_names() {
        assert_eq!(
            normalize_model_name("Qwen/Qwen3_Coder-30B.gguf"),
            "qwen3-coder-30b"
        );
    }

    #[test]
    fn picks_the_most_specific_family() {
        let pattern = |model: &str| model_family(model).map(|f| f.pattern);
        assert_eq!(pattern("Qwen3-Coder-30B-A3B"), Some("qwen3-coder"));
        assert_eq!(pattern("qwen3.5-9b"), Some("qwen3.5"));
        assert_eq!(pattern("Qwen3-8B"), Some("qwen3"));
        assert_eq!(pattern("MiniMax-M2.5"), Some("minimax-m2.5"));
        assert_eq!(
            pattern("NousResearch/Hermes-3-Llama-3.1-8B"),
            Some("hermes")
        );
        assert_eq!(pattern("Meta-Llama-3.1-8B-Instruct"), Some("llama-3.1"));
        assert_eq!(pattern("unknown-model"), None);
    }

    #[test]
    fn user_choice_wins_and_bad_names_are_errors() {
        let selection = select_parsers("qwen3-8b", Some("llama3_json"), None).expect("valid");
        assert_eq!(selection.tool.kind(), Some(ToolParserKind::Llama3Json));
        assert_eq!(selection.reasoning.kind(), Some(ReasoningParserKind::Qwen3));

        let unknown = select_parsers("qwen3-8b", Some("nope"), None).unwrap_err();
        assert!(matches!(unknown, ParserError::Unknown { .. }));
        assert!(unknown.to_string().contains("hermes"));

        let unimplemented = select_parsers("x", None, Some("gemma4")).unwrap_err();
        assert!(matches!(unimplemented, ParserError::NotImplemented { .. }));
    }

    #[test]
    fn unimplemented_defaults_are_reported_not_dropped() {
        let selection = select_parsers("google/gemma-4-27b", None, None).expect("valid");
        assert_eq!(
            selection.tool,
            ParserChoice::Unsupported {
                name: "gemma4",
                pattern: "gemma-4"
            }
        );
        assert_eq!(selection.warnings().len(), 2);
    }

    #[test]
    fn every_name_round_trips() {
        for kind in ToolParserKind::all() {
            assert_eq!(ToolParserKind::from_name(kind.name()), Ok(kind));
        }
        for kind in ReasoningParserKind::all() {
            assert_eq!(ReasoningParserKind::from_name(kind.name()), Ok(kind));
        }
    }
}
