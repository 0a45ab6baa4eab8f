//! Reading a `PredictOptions` into a validated [`GenerationRequest`]: its limits, sampling,
//! the constraint on its output, and its prompt checked against the loaded model.
use crate::chat::PreparedPrompt;
use crate::engine::{EngineError, GenerationRequest};
use crate::parsers::ChatParser;
use crate::pb::PredictOptions;
use crate::sampling::{InvalidRequest, SamplingParams};

/// What a generation request is checked against: the loaded model and its load settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelLimits {
    /// Context length in tokens: a prompt must be shorter.
    pub context_length: u32,
    /// Number of token ids (logit biases must name one).
    pub vocab_size: u32,
    /// The load's default seed, for requests that send none.
    pub seed: Option<u32>,
    /// The load's `GrammarTriggers`.
    pub grammar_triggers: Vec<String>,
}

/// Builds the engine request for `req`, whose prompt was prepared by the chat layer and
/// tokenized by the model into `tokens`; also returns the parser of its output.
pub fn generation_request(
    req: &PredictOptions,
    prepared: PreparedPrompt,
    tokens: Vec<i32>,
    model: &ModelLimits,
) -> Result<(GenerationRequest, Option<ChatParser>), EngineError> {
    for (field, given) in [
        ("Images", req.images.len()),
        ("Videos", req.videos.len()),
        ("Audios", req.audios.len()),
    ] {
        if given > 0 {
            return Err(EngineError::InvalidArgument(format!(
                "{field}: {given} given, but this backend serves text-only models (it has no multimodal projector); send text only"
            )));
        }
    }
    if tokens.is_empty() {
        return Err(EngineError::InvalidArgument(
            "the prompt tokenizes to nothing; send some text".into(),
        ));
    }
    if tokens.len() >= model.context_length as usize {
        return Err(EngineError::InvalidArgument(format!(
            "the prompt has {} tokens but the context holds {} per request; shorten it or load the model with a larger context (ContextSize / max_model_len)",
            tokens.len(),
            model.context_length
        )));
    }
    let max_tokens = match req.tokens {
        0 => None,
        n => Some(u32::try_from(n).map_err(|_| InvalidRequest {
            field: "Tokens",
            reason: format!("{n} is negative; use 0 for no limit or a positive maximum"),
        })?),
    };
    let mut sampling = SamplingParams::from_request(req)?;
    sampling.seed = sampling.seed.or(model.seed);
    if let Some(&(id, _)) = sampling
        .logit_bias
        .iter()
        .find(|(id, _)| u32::try_from(*id).map_or(true, |id| id >= model.vocab_size))
    {
        return Err(EngineError::InvalidArgument(format!(
            "LogitBias: token id {id} is outside the vocabulary (0..{})",
            model.vocab_size
        )));
    }
    let grammar = (!req.grammar.trim().is_empty()).then(|| req.grammar.clone());
    if let Some(grammar) = &grammar {
        crate::gbnf::check_group_depth(grammar).map_err(|e| InvalidRequest {
            field: "Grammar",
            reason: e.to_string(),
        })?;
    }
    let tool_call = match prepared.tool_call {
        // "auto": the request's own grammar decides the whole output.
        Some(call) if grammar.is_some() && call.lazy.is_some() => None,
        Some(_) if grammar.is_some() => {
            return Err(EngineError::InvalidArgument(
                "Grammar and a forced ToolChoice both constrain the output; send one of them (a forced call brings its own grammar)".into(),
            ));
        }
        call => call,
    };
    let generation = GenerationRequest {
        prompt: tokens,
        sampling,
        max_tokens,
        ignore_eos: req.ignore_eos,
        grammar_triggers: if grammar.is_some() {
            model.grammar_triggers.clone()
        } else {
            Vec::new()
        },
        grammar,
        tool_call,
        logprobs: logprobs(req)?,
    };
    Ok((generation, prepared.parser))
}

/// `Logprobs` switches log-probabilities on; `TopLogprobs` asks for alternatives (at most 20,
/// OpenAI's limit).
fn logprobs(req: &PredictOptions) -> Result<Option<u32>, InvalidRequest> {
    if req.logprobs < 0 || !(0..=20).contains(&req.top_logprobs) {
        return Err(InvalidRequest {
            field: "TopLogprobs",
            reason: format!(
                "Logprobs={} TopLogprobs={}: both must be >= 0 and TopLogprobs <= 20",
                req.logprobs, req.top_logprobs
            ),
        });
    }
    Ok((req.logprobs > 0 || req.top_logprobs > 0).then_some(req.top_logprobs as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CallStart, Prompt, ToolCallConstraint};

    fn prepared(tool_call: Option<ToolCallConstraint>) -> PreparedPrompt {
        PreparedPrompt {
            prompt: Prompt {
                text: "Hi".into(),
                add_bos: true,
            },
            parser: None,
            tool_call,
        }
    }

    fn limits() -> ModelLimits {
        ModelLimits {
            context_length: 8,
            vocab_size: 100,
            seed: Some(9),
            grammar_triggers: vec!["<tool_call>".into()],
        }
    }

    fn build(req: &PredictOptions, tokens: Vec<i32>) -> Result<GenerationRequest, EngineError> {
        generation_request(req, prepared(None), tokens, &limits()).map(|(g, _)| g)
    }

    fn call(lazy: bool) -> ToolCallConstraint {
        ToolCallConstraint {
            prefix: "<tool_call>".into(),
            schema: serde_json::json!({}),
            suffix: "</tool_call>".into(),
            lazy: lazy.then(|| CallStart {
                opener: "<tool_call>".into(),
                bare_object_at_start: false,
            }),
        }
    }

    #[test]
    fn media_and_deep_grammars_are_refused_naming_the_field() {
        let media = PredictOptions {
            audios: vec!["aGk=".into()],
            ..Default::default()
        };
        let error = build(&media, vec![1]).unwrap_err().to_string();
        assert!(error.starts_with("Audios: 1 given"), "{error}");
        let deep = PredictOptions {
            grammar: format!("root ::= {}\"a\"{}", "(".repeat(500), ")".repeat(500)),
            ..Default::default()
        };
        let error = build(&deep, vec![1]).unwrap_err().to_string();
        assert!(
            error.contains("Grammar") && error.contains("nested"),
            "{error}"
        );
    }

    #[test]
    fn limits_grammar_and_load_defaults() {
        let r = PredictOptions {
            tokens: 5,
            grammar: " ".into(),
            ..Default::default()
        };
        let g = build(&r, vec![1, 2]).unwrap();
        assert_eq!(g.prompt, vec![1, 2]);
        assert_eq!(g.max_tokens, Some(5));
        assert_eq!((g.grammar, g.grammar_triggers.len()), (None, 0));
        assert_eq!(g.logprobs, None);
        assert_eq!(g.sampling.seed, Some(9), "the load's seed is the default");
        let own_seed = PredictOptions {
            seed: 3,
            grammar: "root ::= \"a\"".into(),
            ..Default::default()
        };
        let g = build(&own_seed, vec![1]).unwrap();
        assert_eq!(g.sampling.seed, Some(3));
        assert_eq!(g.grammar_triggers, vec!["<tool_call>"]);
    }

    #[test]
    fn prompts_must_fit_the_context() {
        let r = PredictOptions::default();
        let empty = build(&r, vec![]).unwrap_err();
        assert!(empty.to_string().contains("nothing"), "{empty}");
        let long = build(&r, vec![1; 8]).unwrap_err();
        assert!(long.to_string().contains("8 tokens"), "{long}");
        assert!(build(&r, vec![1; 7]).is_ok());
    }

    #[test]
    fn bad_numbers_are_rejected() {
        for (r, field) in [
            (
                PredictOptions {
                    tokens: -1,
                    ..Default::default()
                },
                "Tokens",
            ),
            (
                PredictOptions {
                    top_logprobs: 21,
                    ..Default::default()
                },
                "TopLogprobs",
            ),
            (
                PredictOptions {
                    logit_bias: r#"{"100": 1}"#.into(),
                    ..Default::default()
                },
                "LogitBias",
            ),
        ] {
            let e = build(&r, vec![1]).unwrap_err();
            assert!(
                matches!(&e, EngineError::InvalidArgument(m) if m.contains(field)),
                "{field}: {e}"
            );
        }
        let r = PredictOptions {
            logprobs: 1,
            top_logprobs: 3,
            ..Default::default()
        };
        assert_eq!(build(&r, vec![1]).unwrap().logprobs, Some(3));
    }

    #[test]
    fn grammar_and_tool_calls() {
        let with_grammar = PredictOptions {
            grammar: "root ::= \"a\"".into(),
            ..Default::default()
        };
        let forced = generation_request(
            &with_grammar,
            prepared(Some(call(false))),
            vec![1],
            &limits(),
        );
        assert!(matches!(forced, Err(EngineError::InvalidArgument(_))));
        let (lazy, _) = generation_request(
            &with_grammar,
            prepared(Some(call(true))),
            vec![1],
            &limits(),
        )
        .unwrap();
        assert!(lazy.tool_call.is_none() && lazy.grammar.is_some());
        let (alone, _) = generation_request(
            &PredictOptions::default(),
            prepared(Some(call(false))),
            vec![1],
            &limits(),
        )
        .unwrap();
        assert_eq!(alone.tool_call, Some(call(false)));
    }
}
