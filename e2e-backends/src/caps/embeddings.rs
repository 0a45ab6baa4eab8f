//! LocalAI's `embeddings`: the model loaded with `Embeddings=true` returns a vector, the same
//! one for the same text and another one for another text.
use backend_common::pb::PredictOptions;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;

/// Embedding returns a finite, non-zero, deterministic vector that depends on the text.
pub async fn embeddings(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let embed = |text: &str| PredictOptions {
        embeddings: text.into(),
        ..Default::default()
    };
    let a = client
        .embedding(embed(&ctx.config.prompt))
        .await
        .rpc("Embedding")?
        .embeddings;
    ctx.note(format!("{} dimensions", a.len()));
    ensure!(!a.is_empty(), "Embedding returned an empty vector");
    ensure!(
        a.iter().all(|x| x.is_finite()) && a.iter().any(|x| *x != 0.0),
        "the embedding is not a finite non-zero vector"
    );
    let again = client
        .embedding(embed(&ctx.config.prompt))
        .await
        .rpc("Embedding")?
        .embeddings;
    ensure!(a == again, "the same text gave two different embeddings");
    let other = client
        .embedding(embed("A recipe for apple pie"))
        .await
        .rpc("Embedding")?
        .embeddings;
    ensure!(
        other.len() == a.len() && other != a,
        "another text gave the same embedding or another dimension ({} vs {})",
        other.len(),
        a.len()
    );
    Ok(Verdict::Passed)
}
