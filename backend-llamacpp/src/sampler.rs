//! A request's sampling parameters as a llama.cpp sampler chain.
//!
//! The order follows llama.cpp's common sampler: biases and grammar first (they remove or
//! reshape candidates), then penalties, the truncations, temperature, and the final draw.
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use backend_common::constraint::GrammarInput;
use backend_common::engine::{EngineError, GenerationRequest, ToolCallConstraint};
use backend_common::gbnf;

/// Root rule of a forced tool call's grammar; the JSON-schema converter names the call
/// object's own rule `root`, which this one wraps in the parser's literal text.
const FORCED_CALL_ROOT: &str = "forced-call";

/// Root rule of the lazy ("auto") grammar: one or more calls, newlines between them.
const LAZY_CALLS_ROOT: &str = "tool-calls";
/// One call of the lazy grammar: wrapped in the format's literals, or a bare object.
const LAZY_CALL: &str = "tool-call";
/// A bare call object opening the output (the capture is where the grammar starts).
const BARE_CALL_AT_START: &str = r#"^\s*(\{\s*"name")"#;

/// Builds the sampler for one request (validated by backend-common: logit biases name
/// tokens of the vocabulary). `eog` lists the end-of-generation tokens, banned when the
/// request ignores EOS.
pub fn build(
    model: &LlamaModel,
    request: &GenerationRequest,
    eog: &[LlamaToken],
) -> Result<LlamaSampler, EngineError> {
    let p = &request.sampling;
    let n_vocab = model.n_vocab();
    let mut chain = Vec::new();

    let mut biases: Vec<LlamaLogitBias> = p
        .logit_bias
        .iter()
        .map(|&(id, bias)| LlamaLogitBias::new(LlamaToken(id), bias))
        .collect();
    if request.ignore_eos {
        biases.extend(
            eog.iter()
                .map(|&t| LlamaLogitBias::new(t, f32::NEG_INFINITY)),
        );
    }
    if !biases.is_empty() {
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if let Some(grammar) = &request.grammar {
        let grammar = gbnf_of(grammar)?;
        let triggers = &request.grammar_triggers;
        let sampler = if triggers.is_empty() {
            LlamaSampler::grammar(model, &grammar, "root")
        } else {
            LlamaSampler::grammar_lazy(model, &grammar, "root", triggers, &[])
        }
        .map_err(|e| {
            EngineError::InvalidArgument(format!(
                "Grammar: not a valid GBNF grammar with a `root` rule ({e})"
            ))
        })?;
        chain.push(sampler);
    } else if let Some(call) = &request.tool_call {
        let grammar = tool_call_grammar(call)?;
        let rejected = |e| {
            EngineError::InvalidArgument(format!(
                "Tools: the tool call's grammar was rejected by llama.cpp ({e}); check the tool's parameters schema"
            ))
        };
        let sampler = match &call.lazy {
            Some(start) => {
                // llama.cpp feeds the grammar the output from the trigger's match on, so each
                // alternative of a call starts with what its trigger matches.
                let mut patterns = vec![regex_escape(&start.opener)];
                let one = if start.bare_object_at_start {
                    patterns.push(BARE_CALL_AT_START.to_string());
                    format!("{FORCED_CALL_ROOT} | root")
                } else {
                    FORCED_CALL_ROOT.to_string()
                };
                LlamaSampler::grammar_lazy_patterns(
                    model,
                    &format!(
                        "{LAZY_CALLS_ROOT} ::= {LAZY_CALL} (\"\\n\"* {LAZY_CALL})*\n{LAZY_CALL} ::= {one}\n{grammar}"
                    ),
                    LAZY_CALLS_ROOT,
                    &patterns,
                    &[],
                )
            }
            None => LlamaSampler::grammar(model, &grammar, FORCED_CALL_ROOT),
        }
        .map_err(rejected)?;
        chain.push(sampler);
    }
    if p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            p.penalty_last_n as i32,
            p.repeat_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        ));
    }
    if p.is_greedy() {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k as i32));
        }
        if p.typical_p < 1.0 {
            chain.push(LlamaSampler::typical(p.typical_p, 1));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        let seed = p.seed.unwrap_or_else(backend_common::sampling::random_seed);
        chain.push(LlamaSampler::dist(seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

/// The GBNF llama.cpp runs for a request's `Grammar`: GBNF as it is (checked first by the
/// shared reader, whose errors say where), a JSON schema through llama.cpp's converter.
fn gbnf_of(grammar: &str) -> Result<String, EngineError> {
    match GrammarInput::read(grammar)? {
        GrammarInput::Gbnf(_) => Ok(grammar.to_string()),
        GrammarInput::JsonSchema(schema) => {
            llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
                EngineError::InvalidArgument(format!(
                    "Grammar: this JSON schema cannot be turned into a grammar ({e}); use plain JSON-schema types, properties and required"
                ))
            })
        }
        GrammarInput::Lark(_) => Err(EngineError::InvalidArgument(
            "Grammar: `%llguidance` (Lark) grammars are run by the candle worker (backend-vllm-rs); this worker reads GBNF and JSON schemas".into(),
        )),
    }
}

/// GBNF for a forced tool call: the literal prefix, the call object as llama.cpp's
/// JSON-schema converter writes it, the literal suffix.
fn tool_call_grammar(call: &ToolCallConstraint) -> Result<String, EngineError> {
    let object = llama_cpp_2::json_schema_to_grammar(&call.schema.to_string()).map_err(|e| {
        EngineError::InvalidArgument(format!(
            "Tools: a parameters schema cannot be turned into a grammar ({e}); use plain JSON-schema types, properties and required"
        ))
    })?;
    let mut rule = format!("{FORCED_CALL_ROOT} ::=");
    for part in [
        gbnf::literal(&call.prefix),
        Some("root".to_string()),
        gbnf::literal(&call.suffix),
    ]
    .into_iter()
    .flatten()
    {
        rule.push(' ');
        rule.push_str(&part);
    }
    Ok(format!("{rule}\n{object}"))
}

/// `text` as a literal ECMAScript regular expression (llama.cpp's trigger patterns).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_literals_are_escaped() {
        assert_eq!(regex_escape("<tool_call>"), "<tool_call>");
        assert_eq!(regex_escape("functools["), "functools\\[");
        assert_eq!(regex_escape("a.b*c"), "a\\.b\\*c");
    }

    #[test]
    fn forced_call_wraps_the_schema_rule() {
        let call = ToolCallConstraint {
            prefix: "<tool_call>\n".into(),
            schema: serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": "get_weather"}},
                "required": ["name"],
            }),
            suffix: String::new(),
            lazy: None,
        };
        let grammar = tool_call_grammar(&call).unwrap();
        assert!(
            grammar.starts_with("forced-call ::= \"<tool_call>\\n\" root\n"),
            "{grammar}"
        );
        assert!(grammar.contains("root ::= "), "{grammar}");
        assert!(grammar.contains("get_weather"), "{grammar}");
    }
}
