//! Reading a `PredictOptions` into a validated [`GenerationRequest`].
use crate::engine::{GenerationRequest, Prompt};
use crate::pb::PredictOptions;
use crate::sampling::{InvalidRequest, SamplingParams};

/// Builds the engine request for `req` with its prepared prompt.
pub fn generation_request(
    req: &PredictOptions,
    prompt: Prompt,
) -> Result<GenerationRequest, InvalidRequest> {
    let max_tokens = match req.tokens {
        0 => None,
        n => Some(u32::try_from(n).map_err(|_| InvalidRequest {
            field: "Tokens",
            reason: format!("{n} is negative; use 0 for no limit or a positive maximum"),
        })?),
    };
    let logprobs = logprobs(req)?;
    Ok(GenerationRequest {
        prompt,
        sampling: SamplingParams::from_request(req)?,
        max_tokens,
        ignore_eos: req.ignore_eos,
        grammar: (!req.grammar.trim().is_empty()).then(|| req.grammar.clone()),
        tool_call: None,
        logprobs,
    })
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

    fn prompt() -> Prompt {
        Prompt {
            text: "Hi".into(),
            add_bos: true,
        }
    }

    #[test]
    fn limits_and_grammar() {
        let r = PredictOptions {
            tokens: 5,
            grammar: " ".into(),
            ..Default::default()
        };
        let g = generation_request(&r, prompt()).unwrap();
        assert_eq!(g.prompt, prompt());
        assert_eq!(g.max_tokens, Some(5));
        assert_eq!(g.grammar, None);
        assert_eq!(g.logprobs, None);
    }

    #[test]
    fn negative_tokens_are_rejected() {
        let r = PredictOptions {
            tokens: -1,
            ..Default::default()
        };
        assert_eq!(
            generation_request(&r, prompt()).unwrap_err().field,
            "Tokens"
        );
    }

    #[test]
    fn logprobs_request() {
        let r = PredictOptions {
            logprobs: 1,
            top_logprobs: 3,
            ..Default::default()
        };
        assert_eq!(generation_request(&r, prompt()).unwrap().logprobs, Some(3));
        let bad = PredictOptions {
            top_logprobs: 21,
            ..Default::default()
        };
        assert_eq!(
            generation_request(&bad, prompt()).unwrap_err().field,
            "TopLogprobs"
        );
    }
}
