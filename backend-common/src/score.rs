//! The Score call: how likely the model finds each candidate continuation of a prompt.
//!
//! As LocalAI's own backends do, a candidate is scored on the tokens of `prompt + candidate`
//! tokenized as one text, from the first token where they differ from the prompt's own
//! tokens (a merge across the boundary can change the prompt's last token), and the prompt
//! is tokenized as a raw prompt is, BOS included where the model wants one. A candidate's
//! `log_prob` is the sum of log P(token | everything before it) over those tokens.
use crate::engine::{EngineError, ScoredSequence};
use crate::pb;

/// Most candidates one Score call may carry.
pub const MAX_CANDIDATES: usize = 256;

/// A Score request turned into token sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePlan {
    /// One per candidate with at least one scored token, in candidate order.
    pub sequences: Vec<ScoredSequence>,
    /// For each candidate, its index in `sequences` (`None`: nothing to score).
    candidates: Vec<Option<usize>>,
}

/// Tokenizes `request` into the sequences an engine scores; every sequence must fit in
/// `context_length` tokens.
pub fn plan(
    request: &pb::ScoreRequest,
    context_length: u32,
    tokenize: impl Fn(&str) -> Result<Vec<i32>, EngineError>,
) -> Result<ScorePlan, EngineError> {
    if request.candidates.is_empty() {
        return Err(EngineError::InvalidArgument(
            "candidates must be non-empty: send the continuations to score".into(),
        ));
    }
    if request.candidates.len() > MAX_CANDIDATES {
        return Err(EngineError::InvalidArgument(format!(
            "{} candidates in one Score call; at most {MAX_CANDIDATES}, split the request",
            request.candidates.len()
        )));
    }
    let prompt = tokenize(&request.prompt)?;
    let mut sequences = Vec::new();
    let mut candidates = Vec::with_capacity(request.candidates.len());
    for (index, candidate) in request.candidates.iter().enumerate() {
        let tokens = tokenize(&format!("{}{candidate}", request.prompt))?;
        let from = prompt
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        if from == tokens.len() {
            candidates.push(None);
            continue;
        }
        if from == 0 {
            return Err(EngineError::InvalidArgument(format!(
                "candidate {index}: the prompt gives no token before the candidate (this model adds no BOS), so its first token has nothing to be predicted from; send a non-empty prompt"
            )));
        }
        if tokens.len() > context_length as usize {
            return Err(EngineError::InvalidArgument(format!(
                "candidate {index}: prompt and candidate are {} tokens, more than the context of {context_length}; shorten them or load with a larger ContextSize",
                tokens.len()
            )));
        }
        candidates.push(Some(sequences.len()));
        sequences.push(ScoredSequence { tokens, from });
    }
    Ok(ScorePlan {
        sequences,
        candidates,
    })
}

impl ScorePlan {
    /// The reply, from the engine's log-probabilities of each sequence's scored tokens;
    /// `piece` gives a token's text.
    pub fn response(
        &self,
        request: &pb::ScoreRequest,
        logprobs: &[Vec<f32>],
        piece: impl Fn(i32) -> Result<String, EngineError>,
    ) -> Result<pb::ScoreResponse, EngineError> {
        let mut candidates = Vec::with_capacity(self.candidates.len());
        for (index, sequence) in self.candidates.iter().enumerate() {
            let Some(sequence) = sequence else {
                candidates.push(pb::CandidateScore::default());
                continue;
            };
            let scored = &self.sequences[*sequence];
            let tokens = &scored.tokens[scored.from..];
            let values = logprobs.get(*sequence).map(Vec::as_slice).unwrap_or(&[]);
            if values.len() != tokens.len() || values.iter().any(|v| !v.is_finite()) {
                return Err(EngineError::Internal(format!(
                    "candidate {index}: the engine scored {} of its {} tokens, or gave a value that is not a number",
                    values.len(),
                    tokens.len()
                )));
            }
            let log_prob: f64 = values.iter().map(|&v| f64::from(v)).sum();
            let num_tokens = tokens.len() as i32;
            let token_logprobs = if request.include_token_logprobs {
                tokens
                    .iter()
                    .zip(values)
                    .map(|(&id, &v)| {
                        Ok(pb::TokenLogProb {
                            token: piece(id)?,
                            log_prob: f64::from(v),
                        })
                    })
                    .collect::<Result<_, EngineError>>()?
            } else {
                Vec::new()
            };
            candidates.push(pb::CandidateScore {
                log_prob,
                // Set only when asked, as LocalAI's backends do (0 otherwise).
                length_normalized_log_prob: if request.length_normalize {
                    log_prob / f64::from(num_tokens)
                } else {
                    0.0
                },
                tokens: token_logprobs,
                num_tokens,
            });
        }
        Ok(pb::ScoreResponse { candidates })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer of one token per character, with BOS (0) first; "ab" merges into 99.
    fn chars(text: &str) -> Result<Vec<i32>, EngineError> {
        let mut ids = vec![0];
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("ab") {
                ids.push(99);
                rest = &rest[2..];
            } else {
                ids.push(c as i32);
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok(ids)
    }

    fn request(prompt: &str, candidates: &[&str]) -> pb::ScoreRequest {
        pb::ScoreRequest {
            prompt: prompt.into(),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_candidate_is_scored_from_where_its_tokens_leave_the_prompts() {
        let plan = plan(&request("xa", &["b", "c", ""]), 100, chars).unwrap();
        // "xab" merges the prompt's last "a" with "b": scoring starts at that merged token.
        assert_eq!(
            plan.sequences,
            vec![
                ScoredSequence {
                    tokens: vec![0, 'x' as i32, 99],
                    from: 2
                },
                ScoredSequence {
                    tokens: vec![0, 'x' as i32, 'a' as i32, 'c' as i32],
                    from: 3
                },
            ]
        );
        assert_eq!(plan.candidates, vec![Some(0), Some(1), None]);
    }

    #[test]
    fn the_response_sums_and_normalises_only_when_asked() {
        let mut req = request("x", &["yz", ""]);
        let plan = plan(&req, 100, chars).unwrap();
        let logprobs = vec![vec![-1.0, -2.0]];
        let piece = |id: i32| Ok(char::from_u32(id as u32).unwrap().to_string());
        let plain = plan.response(&req, &logprobs, piece).unwrap();
        assert_eq!(plain.candidates[0].log_prob, -3.0);
        assert_eq!(plain.candidates[0].num_tokens, 2);
        assert_eq!(plain.candidates[0].length_normalized_log_prob, 0.0);
        assert!(plain.candidates[0].tokens.is_empty());
        assert_eq!(plain.candidates[1], pb::CandidateScore::default());
        req.length_normalize = true;
        req.include_token_logprobs = true;
        let full = plan.response(&req, &logprobs, piece).unwrap();
        assert_eq!(full.candidates[0].length_normalized_log_prob, -1.5);
        let tokens: Vec<_> = full.candidates[0]
            .tokens
            .iter()
            .map(|t| (t.token.as_str(), t.log_prob))
            .collect();
        assert_eq!(tokens, vec![("y", -1.0), ("z", -2.0)]);
        let short = plan.response(&req, &[vec![-1.0]], piece).unwrap_err();
        assert!(short.to_string().contains("scored 1 of its 2"), "{short}");
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        let none = plan(&request("x", &[]), 100, chars).unwrap_err();
        assert!(none.to_string().contains("candidates must be non-empty"));
        let long = plan(&request("x", &["abcdefgh"]), 5, chars).unwrap_err();
        assert!(long.to_string().contains("larger ContextSize"), "{long}");
        let no_bos = |text: &str| Ok(chars(text)?[1..].to_vec());
        let empty = plan(&request("", &["y"]), 100, no_bos).unwrap_err();
        assert!(empty.to_string().contains("non-empty prompt"), "{empty}");
        let many = vec!["y"; MAX_CANDIDATES + 1];
        let err = plan(&request("x", &many), 100, chars).unwrap_err();
        assert!(err.to_string().contains("split the request"), "{err}");
    }
}
