//! LocalAI's basic capabilities: health, load, predict, stream, tokenize, each a little
//! stricter than upstream where the wire contract says more.
use std::collections::HashMap;

use backend_common::pb::{HealthMessage, PredictOptions, Reply};

use super::{CheckError, Rpc, Verdict, collect, ensure, seeded, text, words};
use crate::client::Client;
use crate::context::Context;
use crate::testing::{chat, raw};

/// Tokens of the greedy and seeded requests of `predict` and `stream`.
const SHORT: i32 = 12;
/// The chat question of `predict`; its answer must name [`CHAT_ANSWER`].
const CHAT_QUESTION: &str = "What is the capital of France? Answer in one sentence.";
/// What the answer to [`CHAT_QUESTION`] must contain.
const CHAT_ANSWER: &str = "Paris";
/// The token limit of the chat: far more than one sentence needs, so the model ends it.
const CHAT_LIMIT: i32 = 64;

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

/// A unary Predict (LocalAI's parameters) returns text, both token counts (at least a
/// token a word of the prompt) and its timings; then [`repeatable`] and [`chat_answer`].
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
    let prompt_words = words(&ctx.config.prompt);
    ensure!(
        reply.prompt_tokens >= prompt_words,
        "prompt_tokens={} for the {prompt_words} words of {:?}",
        reply.prompt_tokens,
        ctx.config.prompt
    );
    ensure!(
        reply.timing_prompt_processing > 0.0 && reply.timing_token_generation > 0.0,
        "the unary reply must carry its timings; got prompt {} ms, generation {} ms",
        reply.timing_prompt_processing,
        reply.timing_token_generation
    );
    repeatable(ctx, &mut client).await?;
    chat_answer(&mut client).await?;
    Ok(Verdict::Passed)
}

/// Greedy decoding gives the same text twice, with IgnoreEOS exactly Tokens tokens; a
/// fixed Seed samples the same text twice.
async fn repeatable(ctx: &Context, client: &mut Client) -> Result<(), CheckError> {
    let exact = PredictOptions {
        ignore_eos: true,
        ..raw(&ctx.config.prompt, SHORT)
    };
    let a = client.predict(exact.clone()).await.rpc("Predict")?;
    let b = client.predict(exact).await.rpc("Predict")?;
    ensure!(
        a.message == b.message,
        "greedy decoding gave two texts: {:?} and {:?}",
        String::from_utf8_lossy(&a.message),
        String::from_utf8_lossy(&b.message)
    );
    ensure!(
        a.tokens == SHORT,
        "with IgnoreEOS and Tokens={SHORT} the reply counts {} tokens",
        a.tokens
    );
    let a = client
        .predict(seeded(&ctx.config.prompt, SHORT))
        .await
        .rpc("Predict")?;
    let b = client
        .predict(seeded(&ctx.config.prompt, SHORT))
        .await
        .rpc("Predict")?;
    ensure!(
        !a.message.is_empty() && a.message == b.message,
        "the same Seed sampled two texts: {:?} and {:?}",
        String::from_utf8_lossy(&a.message),
        String::from_utf8_lossy(&b.message)
    );
    Ok(())
}

/// A chat through the model's template (thinking off) answers [`CHAT_QUESTION`] in one
/// ChatDelta whose content is the message, free of template markup, and ends by itself
/// before [`CHAT_LIMIT`]; with IgnoreEOS it goes on to exactly the limit.
async fn chat_answer(client: &mut Client) -> Result<(), CheckError> {
    let request = PredictOptions {
        // The answer is wanted as content, from a model that reasons too.
        metadata: HashMap::from([("enable_thinking".to_string(), "false".to_string())]),
        ..chat(CHAT_QUESTION, CHAT_LIMIT)
    };
    let reply = client.predict(request.clone()).await.rpc("Predict")?;
    let answer = String::from_utf8_lossy(&reply.message).into_owned();
    ensure!(
        answer.contains(CHAT_ANSWER),
        "asked {CHAT_QUESTION:?}, the model answered {answer:?}"
    );
    ensure!(
        !answer.contains("<|") && !answer.contains("|>"),
        "the chat answer shows template markup: {answer:?}"
    );
    let contents: Vec<_> = reply.chat_deltas.iter().map(|d| &d.content).collect();
    ensure!(
        contents == [&answer],
        "a unary chat reply carries its answer as the content of one ChatDelta; got {contents:?} for {answer:?}"
    );
    ensure!(
        reply.tokens < CHAT_LIMIT,
        "the chat answer did not end by itself: {} tokens of {CHAT_LIMIT}",
        reply.tokens
    );
    let forced = PredictOptions {
        ignore_eos: true,
        ..request
    };
    let forced = client.predict(forced).await.rpc("Predict")?;
    ensure!(
        forced.tokens == CHAT_LIMIT,
        "with IgnoreEOS the chat must run to Tokens={CHAT_LIMIT}; it counts {}",
        forced.tokens
    );
    Ok(())
}

/// PredictStream returns text, the counts on its final chunk, no final chunk that repeats
/// the whole answer (clients would show it twice) and not the same text in its first two
/// chunks (upstream's guard against a first token sent twice); then [`like_unary`] and
/// [`stop_string`].
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
    // Upstream's guard against a first token sent twice: the first two text chunks differ.
    let texts: Vec<&[u8]> = replies
        .iter()
        .map(|r| r.message.as_slice())
        .filter(|m| !m.is_empty())
        .take(2)
        .collect();
    ensure!(
        texts.len() < 2 || texts[0] != texts[1],
        "the first two text chunks are the same ({:?}): the first token was sent twice",
        String::from_utf8_lossy(texts[0])
    );
    let last = replies.last().map(|r| (r.tokens, r.prompt_tokens));
    ensure!(
        last.is_some_and(|(t, p)| t > 0 && p > 0),
        "the final chunk must carry the completion and prompt token counts; got {last:?}"
    );
    like_unary(ctx, &mut client).await?;
    stop_string(&mut client).await?;
    Ok(Verdict::Passed)
}

/// The unary reply to `request` and the chunks of the same request streamed.
async fn both_ways(
    client: &mut Client,
    request: PredictOptions,
) -> Result<(Reply, Vec<Reply>), CheckError> {
    let unary = client.predict(request.clone()).await.rpc("Predict")?;
    let streamed = collect("PredictStream", client.predict_stream(request).await).await?;
    Ok((unary, streamed))
}

/// A greedy stream with IgnoreEOS comes token by token, says the unary reply's text, and
/// carries the counts on its last chunk only (exactly Tokens, and the unary reply's where
/// that has them: whether it must is the `predict` check's business); a seeded stream says
/// the seeded unary reply's text.
async fn like_unary(ctx: &Context, client: &mut Client) -> Result<(), CheckError> {
    let exact = PredictOptions {
        ignore_eos: true,
        ..raw(&ctx.config.prompt, SHORT)
    };
    let (unary, replies) = both_ways(client, exact).await?;
    let streamed = text(&replies);
    ensure!(
        replies.len() > 2,
        "{SHORT} tokens came in {} chunks; stream them as they are generated",
        replies.len()
    );
    ensure!(
        streamed.as_bytes() == unary.message,
        "the stream says {streamed:?}, the unary reply {:?}",
        String::from_utf8_lossy(&unary.message)
    );
    let early: Vec<_> = replies[..replies.len() - 1]
        .iter()
        .map(|r| (r.tokens, r.prompt_tokens))
        .filter(|&counts| counts != (0, 0))
        .collect();
    ensure!(
        early.is_empty(),
        "counts belong on the last chunk only; earlier chunks carry {early:?}"
    );
    let last = replies
        .last()
        .map_or((0, 0), |r| (r.tokens, r.prompt_tokens));
    ensure!(
        last.0 == SHORT,
        "with IgnoreEOS and Tokens={SHORT} the stream counts {} tokens",
        last.0
    );
    ensure!(
        unary.tokens == 0 || last == (unary.tokens, unary.prompt_tokens),
        "the stream counts (tokens, prompt_tokens) = {last:?}, the unary reply {:?}",
        (unary.tokens, unary.prompt_tokens)
    );
    let (unary, replies) = both_ways(client, seeded(&ctx.config.prompt, SHORT)).await?;
    ensure!(
        text(&replies).as_bytes() == unary.message,
        "with the same Seed the stream says {:?}, the unary reply {:?}",
        text(&replies),
        String::from_utf8_lossy(&unary.message)
    );
    Ok(())
}

/// A stop string taken from the greedy text is never sent: the stream ends just before it.
async fn stop_string(client: &mut Client) -> Result<(), CheckError> {
    let count = raw("1, 2, 3, 4, 5,", 16);
    let free = client.predict(count.clone()).await.rpc("Predict")?;
    let free = String::from_utf8_lossy(&free.message).into_owned();
    ensure!(!free.is_empty(), "Predict returned an empty message");
    // A piece past the start, so that the stream has text to send before it.
    let stop = free
        .split(',')
        .nth(2)
        .map_or_else(|| free.clone(), |piece| format!("{piece},"));
    let stopped = PredictOptions {
        stop_prompts: vec![stop.clone()],
        ..count
    };
    let stopped = text(&collect("PredictStream", client.predict_stream(stopped).await).await?);
    ensure!(
        !stopped.contains(&stop) && free.starts_with(&stopped) && stopped.len() < free.len(),
        "with StopPrompts [{stop:?}] the stream must say what comes before it in {free:?}; it says {stopped:?}"
    );
    Ok(())
}

/// Fails when the last chunk sends again the text of two or more earlier chunks, whole (as
/// LocalAI's Python vLLM backend did).
fn repeated_tail(replies: &[Reply]) -> Result<(), CheckError> {
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

/// LocalAI's `tokenize`: TokenizeString of the test prompt gives tokens.
pub async fn tokenize(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let reply = client
        .tokenize_string(PredictOptions {
            prompt: ctx.config.prompt.clone(),
            ..Default::default()
        })
        .await
        .rpc("TokenizeString")?;
    ensure!(
        !reply.tokens.is_empty(),
        "TokenizeString returned no tokens for a non-empty prompt"
    );
    Ok(Verdict::Passed)
}

/// Our `tokenize_length`: TokenizeString fills `tokens` and a matching `length`, at least a
/// token a word, the same each time.
pub async fn tokenize_length(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let request = PredictOptions {
        prompt: ctx.config.prompt.clone(),
        ..Default::default()
    };
    let reply = client
        .tokenize_string(request.clone())
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
    let prompt_words = words(&ctx.config.prompt);
    ensure!(
        reply.length >= prompt_words,
        "{} tokens for the {prompt_words} words of {:?}",
        reply.length,
        ctx.config.prompt
    );
    let again = client
        .tokenize_string(request)
        .await
        .rpc("TokenizeString")?;
    ensure!(
        again == reply,
        "the same text tokenized twice gave {:?} and {:?}",
        reply.tokens,
        again.tokens
    );
    Ok(Verdict::Passed)
}
