//! LocalAI's basic capabilities: health, load, predict, stream, tokenize, each a little
//! stricter than upstream where the wire contract says more.
use backend_common::pb::{HealthMessage, PredictOptions};

use super::{CheckError, Rpc, Verdict, collect, ensure, text};
use crate::context::Context;

/// Health answers exactly "OK", which is what LocalAI waits for.
pub async fn health(ctx: &Context) -> Result<Verdict, CheckError> {
    let reply = ctx
        .client()
        .await?
        .health(HealthMessage {})
        .await
        .rpc("Health")?;
    ensure!(
        reply.message == b"OK",
        "Health answered {:?}; LocalAI starts using a worker only once it answers exactly \"OK\"",
        String::from_utf8_lossy(&reply.message)
    );
    Ok(Verdict::Passed)
}

/// LoadModel with the configured model and options succeeds.
pub async fn load(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.client().await?;
    let options = ctx.config.options.clone();
    let embeddings = ctx.config.requested(super::Capability::Embeddings);
    let result = ctx.load(&mut client, &options, embeddings).await?;
    ctx.note(format!("LoadModel: {}", result.message));
    Ok(Verdict::Passed)
}

/// A unary Predict (LocalAI's parameters) returns text and both token counts.
pub async fn predict(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let reply = client.predict(ctx.predict_options()).await.rpc("Predict")?;
    let answer = String::from_utf8_lossy(&reply.message);
    ctx.note(format!("Predict: {answer:?}"));
    ensure!(!answer.is_empty(), "Predict returned an empty message");
    ensure!(
        reply.tokens > 0 && reply.prompt_tokens > 0,
        "the unary reply must carry the completion and prompt token counts; got tokens={} prompt_tokens={}",
        reply.tokens,
        reply.prompt_tokens
    );
    Ok(Verdict::Passed)
}

/// PredictStream returns text, the counts on its final chunk, and no final chunk that
/// repeats the whole answer (clients would show it twice).
pub async fn stream(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let replies = collect(
        "PredictStream",
        client.predict_stream(ctx.predict_options()).await,
    )
    .await?;
    ctx.note(format!("{} chunks: {:?}", replies.len(), text(&replies)));
    ensure!(
        replies.iter().any(|r| !r.message.is_empty()),
        "no chunk carried text ({} chunks)",
        replies.len()
    );
    repeated_tail(&replies)?;
    let last = replies.last().map(|r| (r.tokens, r.prompt_tokens));
    ensure!(
        last.is_some_and(|(t, p)| t > 0 && p > 0),
        "the final chunk must carry the completion and prompt token counts; got {last:?}"
    );
    Ok(Verdict::Passed)
}

/// Fails when the last chunk sends again the text of two or more earlier chunks, whole (as
/// LocalAI's Python vLLM backend did).
fn repeated_tail(replies: &[backend_common::pb::Reply]) -> Result<(), CheckError> {
    let Some((last, head)) = replies.split_last() else {
        return Ok(());
    };
    let with_text = head.iter().filter(|r| !r.message.is_empty()).count();
    let earlier: Vec<u8> = head.iter().flat_map(|r| r.message.clone()).collect();
    ensure!(
        with_text < 2 || !last.message.starts_with(&earlier),
        "the last chunk repeats the whole answer {:?}; LocalAI concatenates chunks, so clients show it twice",
        String::from_utf8_lossy(&last.message)
    );
    Ok(())
}

/// TokenizeString fills `tokens` and a matching `length`.
pub async fn tokenize(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let request = PredictOptions {
        prompt: ctx.config.prompt.clone(),
        ..Default::default()
    };
    let reply = client
        .tokenize_string(request)
        .await
        .rpc("TokenizeString")?;
    ctx.note(format!("{} tokens: {:?}", reply.length, reply.tokens));
    ensure!(
        !reply.tokens.is_empty(),
        "TokenizeString returned no tokens"
    );
    ensure!(
        reply.length as usize == reply.tokens.len(),
        "TokenizeString returned {} tokens but length={}",
        reply.tokens.len(),
        reply.length
    );
    Ok(Verdict::Passed)
}
