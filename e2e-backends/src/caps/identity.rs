//! Our capabilities for current LocalAI's rpcs and fields: `detokenize` (token ids back to
//! text) and `model_identity` (a request naming another model than the loaded one is
//! refused, LocalAI's guard against a recycled port answering from the wrong model).
use backend_common::pb::{DetokenizeRequest, PredictOptions, ScoreRequest};
use tonic::Code;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;
use crate::testing::raw;

/// Texts that must survive TokenizeString then Detokenize: plain words, multi-byte UTF-8
/// (accents, CJK, an emoji of four bytes, which byte-level vocabularies split into pieces
/// that are not UTF-8 alone), blanks and newlines.
const ROUND_TRIP: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld — 東京タワー 🚀 naïve café",
    "  two leading spaces,\n\ta tab and a newline ",
    "fn main() { println!(\"{}\", 1 + 2); }",
];

/// Detokenize gives back every text TokenizeString split (a BOS the tokenizer put first
/// aside), and refuses an id outside the vocabulary with INVALID_ARGUMENT.
pub async fn detokenize(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    for text in ROUND_TRIP {
        let tokens = client
            .tokenize_string(PredictOptions {
                prompt: text.into(),
                ..Default::default()
            })
            .await
            .rpc("TokenizeString")?
            .tokens;
        let whole = client
            .detokenize(DetokenizeRequest {
                tokens: tokens.clone(),
            })
            .await
            .rpc("Detokenize")?
            .content;
        let without_first = client
            .detokenize(DetokenizeRequest {
                tokens: tokens.get(1..).unwrap_or_default().to_vec(),
            })
            .await
            .rpc("Detokenize")?
            .content;
        ctx.note(format!("{text:?} -> {} tokens -> {whole:?}", tokens.len()));
        ensure!(
            whole == text || without_first == text,
            "Detokenize of TokenizeString({text:?}) gave {whole:?}"
        );
    }
    let outside = client
        .detokenize(DetokenizeRequest {
            tokens: vec![1, i32::MAX],
        })
        .await;
    ensure!(
        outside
            .as_ref()
            .is_err_and(|s| s.code() == Code::InvalidArgument),
        "Detokenize of an id outside the vocabulary must be INVALID_ARGUMENT; got {outside:?}"
    );
    Ok(Verdict::Passed)
}

/// A request whose ModelIdentity names the loaded model (or is empty) is served; one naming
/// another model is NOT_FOUND with `model identity mismatch`, on Predict, PredictStream,
/// TokenizeString, Embedding and Score alike, and the model keeps serving.
pub async fn model_identity(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let loaded = ctx.model_options(&ctx.config.options, false).await?.model;
    let named = |identity: &str| PredictOptions {
        model_identity: identity.into(),
        ..raw("Hello", 3)
    };
    for identity in ["", loaded.as_str()] {
        let reply = client.predict(named(identity)).await.rpc("Predict")?;
        ensure!(
            !reply.message.is_empty(),
            "Predict with ModelIdentity {identity:?} (the loaded model is {loaded:?}) generated nothing"
        );
    }
    let other = format!("{loaded}-another-model");
    let mismatch = |what: &str, result: Result<(), tonic::Status>| -> Result<(), CheckError> {
        match result {
            Err(s)
                if s.code() == Code::NotFound
                    && s.message().contains("model identity mismatch") =>
            {
                Ok(())
            }
            got => Err(CheckError::Failed(format!(
                "{what} with ModelIdentity {other:?} while {loaded:?} is loaded must be NOT_FOUND \"model identity mismatch ...\"; got {got:?}"
            ))),
        }
    };
    mismatch("Predict", client.predict(named(&other)).await.map(|_| ()))?;
    let stream = match client.predict_stream(named(&other)).await {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    mismatch("PredictStream", stream)?;
    mismatch(
        "TokenizeString",
        client.tokenize_string(named(&other)).await.map(|_| ()),
    )?;
    mismatch(
        "Embedding",
        client.embedding(named(&other)).await.map(|_| ()),
    )?;
    let score = ScoreRequest {
        prompt: "Hello".into(),
        candidates: vec![" world".into()],
        model_identity: other.clone(),
        ..Default::default()
    };
    mismatch("Score", client.score(score).await.map(|_| ()))?;
    let after = client.predict(named("")).await.rpc("Predict")?;
    ensure!(
        !after.message.is_empty(),
        "after the refusals, Predict generates nothing"
    );
    Ok(Verdict::Passed)
}
