//! Our capability `score` (current LocalAI's Score rpc, which its router uses to classify
//! with a model): each candidate continuation's log-probability given the prompt.
use backend_common::pb::{CandidateScore, PredictOptions, ScoreRequest};
use serde_json::Value;
use tonic::Code;

use super::sampling::entries;
use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;
use crate::testing::raw;

/// A continuation no model finds likely after an ordinary prompt.
const NONSENSE: &str = " zxq vbn plk";

/// How far one token's log-probability from Score may be from the one Predict reported for
/// the same token: the two are computed in different batch shapes (a prefill against one
/// decode step at a time), which moves quantized kernels' rounding a little (up to 0.04 seen
/// with Qwen2.5 Q4_K_M on both workers; scoring the wrong position is off by a whole unit).
const TOKEN_TOLERANCE: f64 = 0.1;

/// Score of the greedy continuation of the test prompt equals, token by token, the logprobs
/// Predict reported while generating it (when Predict reports logprobs); it beats a nonsense continuation; an empty
/// candidate scores 0 over 0 tokens; `length_normalize` and `include_token_logprobs` fill
/// their fields; a candidate scored alone scores as it does among others; no candidates is
/// INVALID_ARGUMENT.
pub async fn score(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let prompt = ctx.config.prompt.clone();
    let generated = client
        .predict(PredictOptions {
            logprobs: 1,
            top_logprobs: 1,
            ..raw(&prompt, 8)
        })
        .await
        .rpc("Predict")?;
    let continuation = String::from_utf8_lossy(&generated.message).into_owned();
    ensure!(
        !continuation.is_empty(),
        "the greedy Predict gave no text to score"
    );
    // Without logprobs (the `logprobs` check's business) there is nothing to compare with.
    let predicted: Option<Vec<f64>> = if generated.logprobs.is_empty() {
        None
    } else {
        Some(
            entries(&generated)?
                .iter()
                .filter_map(|e| e.get("logprob").and_then(Value::as_f64))
                .collect(),
        )
    };
    let request = |candidates: &[&str]| ScoreRequest {
        prompt: prompt.clone(),
        candidates: candidates.iter().map(|c| c.to_string()).collect(),
        include_token_logprobs: true,
        length_normalize: true,
        ..Default::default()
    };
    let scored = client
        .score(request(&[&continuation, NONSENSE, ""]))
        .await
        .rpc("Score")?
        .candidates;
    ensure!(
        scored.len() == 3,
        "Score of 3 candidates answered {} scores",
        scored.len()
    );
    for (candidate, text) in scored.iter().zip([continuation.as_str(), NONSENSE]) {
        well_formed(candidate, text)?;
    }
    let greedy = &scored[0];
    let per_token: Vec<f64> = greedy.tokens.iter().map(|t| t.log_prob).collect();
    ctx.note(format!(
        "{continuation:?}: Predict {predicted:.3?}, Score {per_token:.3?}; nonsense {:.3} per token",
        scored[1].length_normalized_log_prob
    ));
    if let Some(predicted) = predicted {
        ensure!(
            per_token.len() == predicted.len(),
            "Score split the greedy continuation {continuation:?} into {} tokens, Predict generated it in {}",
            per_token.len(),
            predicted.len()
        );
        for (k, (s, p)) in per_token.iter().zip(&predicted).enumerate() {
            ensure!(
                (s - p).abs() <= TOKEN_TOLERANCE,
                "token {k} of {continuation:?}: Score says log-probability {s:.4}, Predict said {p:.4}"
            );
        }
    }
    ensure!(
        greedy.length_normalized_log_prob > scored[1].length_normalized_log_prob,
        "the greedy continuation {continuation:?} scores {:.3} per token, no better than the nonsense {NONSENSE:?} ({:.3})",
        greedy.length_normalized_log_prob,
        scored[1].length_normalized_log_prob
    );
    ensure!(
        scored[2].num_tokens == 0 && scored[2].log_prob == 0.0 && scored[2].tokens.is_empty(),
        "an empty candidate must score 0 over 0 tokens; got {:?}",
        scored[2]
    );
    let alone = client
        .score(request(&[NONSENSE]))
        .await
        .rpc("Score")?
        .candidates;
    ensure!(
        alone.len() == 1
            && (alone[0].log_prob - scored[1].log_prob).abs()
                <= TOKEN_TOLERANCE * f64::from(alone[0].num_tokens.max(1)),
        "{NONSENSE:?} scored alone gives {alone:?}, among others {:?}",
        scored[1]
    );
    let none = client.score(request(&[])).await;
    ensure!(
        none.as_ref()
            .is_err_and(|s| s.code() == Code::InvalidArgument),
        "Score without candidates must be INVALID_ARGUMENT; got {none:?}"
    );
    Ok(Verdict::Passed)
}

/// One candidate's fields agree with each other and with its text.
fn well_formed(candidate: &CandidateScore, text: &str) -> Result<(), CheckError> {
    let n = candidate.num_tokens;
    ensure!(
        n > 0 && candidate.tokens.len() == n as usize,
        "{text:?}: num_tokens {n} with {} token logprobs",
        candidate.tokens.len()
    );
    let spelled: String = candidate.tokens.iter().map(|t| t.token.as_str()).collect();
    ensure!(
        spelled.ends_with(text.trim_start()),
        "{text:?}: the scored tokens spell {spelled:?}"
    );
    let sum: f64 = candidate.tokens.iter().map(|t| t.log_prob).sum();
    ensure!(
        candidate.log_prob < 0.0
            && (candidate.log_prob - sum).abs() < 1e-3 * f64::from(n)
            && candidate.tokens.iter().all(|t| t.log_prob <= 0.0),
        "{text:?}: log_prob {} is not the sum {sum} of its tokens' (each <= 0)",
        candidate.log_prob
    );
    ensure!(
        (candidate.length_normalized_log_prob - candidate.log_prob / f64::from(n)).abs() < 1e-6,
        "{text:?}: length_normalized_log_prob {} is not log_prob / num_tokens",
        candidate.length_normalized_log_prob
    );
    Ok(())
}
