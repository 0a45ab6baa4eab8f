//! LocalAI's `embeddings`: the model loaded with `Embeddings=true` returns a vector, the same
//! one for the same text, another one for another text, closer for a text that means the
//! same; token ids (LocalAI forwards an integer `input` as EmbeddingTokens) embed like their
//! text.
use backend_common::pb::PredictOptions;
use tonic::Code;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::client::Client;
use crate::context::Context;
use crate::testing::raw;

/// A sentence, one that means nearly the same, and one about something else.
const SIMILAR: [&str; 3] = [
    "The cat sat on the mat.",
    "A kitten was sitting on the rug.",
    "Quarterly revenue grew by eight percent.",
];

/// An Embedding request for `text`.
fn of_text(text: &str) -> PredictOptions {
    PredictOptions {
        embeddings: text.into(),
        ..Default::default()
    }
}

/// An Embedding request for token ids.
fn of_ids(ids: Vec<i32>) -> PredictOptions {
    PredictOptions {
        embedding_tokens: ids,
        ..Default::default()
    }
}

/// The vector of one Embedding request.
async fn embed(client: &mut Client, request: PredictOptions) -> Result<Vec<f32>, CheckError> {
    Ok(client.embedding(request).await.rpc("Embedding")?.embeddings)
}

/// The cosine similarity of two vectors.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Embedding returns a finite, non-zero, deterministic vector that depends on the text and
/// its meaning; EmbeddingTokens give the text's own vector, and ids outside the vocabulary
/// or an empty input are INVALID_ARGUMENT; the model still generates.
pub async fn embeddings(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let a = embed(&mut client, of_text(&ctx.config.prompt)).await?;
    ctx.note(format!("{} dimensions", a.len()));
    ensure!(!a.is_empty(), "Embedding returned an empty vector");
    ensure!(
        a.iter().all(|x| x.is_finite()) && a.iter().any(|x| *x != 0.0),
        "the embedding is not a finite non-zero vector"
    );
    let again = embed(&mut client, of_text(&ctx.config.prompt)).await?;
    ensure!(a == again, "the same text gave two different embeddings");
    let other = embed(&mut client, of_text("A recipe for apple pie")).await?;
    ensure!(
        other.len() == a.len() && other != a,
        "another text gave the same embedding or another dimension ({} vs {})",
        other.len(),
        a.len()
    );
    let [cat, kitten, revenue] = SIMILAR;
    let cat_vector = embed(&mut client, of_text(cat)).await?;
    let kitten_vector = embed(&mut client, of_text(kitten)).await?;
    let revenue_vector = embed(&mut client, of_text(revenue)).await?;
    let (near, far) = (
        cosine(&cat_vector, &kitten_vector),
        cosine(&cat_vector, &revenue_vector),
    );
    ctx.note(format!("cosine: similar {near}, unrelated {far}"));
    ensure!(
        near > far,
        "{cat:?} must be closer to {kitten:?} (cosine {near}) than to {revenue:?} (cosine {far})"
    );
    token_ids(&mut client, cat, &cat_vector).await?;
    let empty = client.embedding(of_text("")).await.err();
    ensure!(
        empty.as_ref().map(|s| s.code()) == Some(Code::InvalidArgument),
        "an Embedding of nothing must be INVALID_ARGUMENT; got {}",
        empty.map_or("success".to_string(), |s| s.to_string())
    );
    let reply = client
        .predict(raw(&ctx.config.prompt, 4))
        .await
        .rpc("Predict")?;
    ensure!(
        !reply.message.is_empty(),
        "the model loaded for embeddings no longer generates"
    );
    Ok(Verdict::Passed)
}

/// The ids TokenizeString gives for `sentence` embed as `expected` (its text's vector);
/// a negative id and one past any vocabulary are INVALID_ARGUMENT naming EmbeddingTokens.
async fn token_ids(
    client: &mut Client,
    sentence: &str,
    expected: &[f32],
) -> Result<(), CheckError> {
    let tokens = client
        .tokenize_string(PredictOptions {
            prompt: sentence.into(),
            ..Default::default()
        })
        .await
        .rpc("TokenizeString")?
        .tokens;
    let by_ids = embed(
        client,
        PredictOptions {
            embeddings: "ignored when ids are sent".into(),
            ..of_ids(tokens.clone())
        },
    )
    .await?;
    let similarity = cosine(&by_ids, expected);
    ensure!(
        similarity > 0.9999,
        "the token ids of {sentence:?} must embed as its text does; cosine {similarity}"
    );
    let first = tokens.first().copied().unwrap_or(0);
    for bad in [vec![-1], vec![first, 1 << 30]] {
        let error = client.embedding(of_ids(bad.clone())).await.err();
        ensure!(
            error
                .as_ref()
                .is_some_and(|s| s.code() == Code::InvalidArgument
                    && s.message().contains("EmbeddingTokens")),
            "EmbeddingTokens {bad:?} must be INVALID_ARGUMENT naming EmbeddingTokens; got {}",
            error.map_or("success".to_string(), |s| s.to_string())
        );
    }
    Ok(())
}
