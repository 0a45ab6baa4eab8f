//! Constrained output: a GBNF `grammar`, and the grammar LocalAI's core makes from a JSON
//! schema (`json_schema`); an invalid grammar is INVALID_ARGUMENT and costs nothing.
use backend_common::pb::PredictOptions;
use tonic::Code;

use super::{CheckError, Rpc, Verdict, collect, ensure, text};
use crate::context::Context;
use crate::testing::{chat, raw};

/// Two answers and nothing else.
pub const YES_NO: &str = r#"root ::= "yes" | "no""#;

/// What LocalAI's core sends for `{"type":"object","properties":{"name":{"type":"string"},
/// "age":{"type":"integer"}},"required":["name","age"]}`, with the lengths bounded so a
/// small model cannot ramble.
pub const PERSON_SCHEMA: &str = r#"root ::= "{" space "\"name\"" space ":" space name "," space "\"age\"" space ":" space age space "}"
name ::= "\"" [A-Za-z ]{1,20} "\""
age ::= [1-9] [0-9]?
space ::= " "?"#;

/// A greedy raw-prompt request constrained by `grammar`.
fn constrained(prompt: &str, grammar: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        grammar: grammar.into(),
        ..raw(prompt, tokens)
    }
}

/// The output is one of the grammar's answers; a grammar that is complete after its text,
/// with IgnoreEOS (which bans the end the grammar then requires), answers that text (nothing
/// else can follow it; llama.cpp's grammar sampler throws a C++ exception there, which
/// aborted the llama worker); a grammar that does not parse is refused with INVALID_ARGUMENT
/// and the worker still answers afterwards.
pub async fn grammar(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let reply = client
        .predict(constrained(
            "Is Paris the capital of France? Answer yes or no.\nAnswer:",
            YES_NO,
            8,
        ))
        .await
        .rpc("Predict")?;
    let answer = String::from_utf8_lossy(&reply.message).into_owned();
    ctx.note(format!("grammar output: {answer:?}"));
    ensure!(
        answer == "yes" || answer == "no",
        "the grammar allows only \"yes\" or \"no\"; the output is {answer:?}"
    );
    let spent = PredictOptions {
        ignore_eos: true,
        ..constrained("Hi", r#"root ::= "yes""#, 8)
    };
    let reply = client
        .predict(spent)
        .await
        .rpc("Predict with a grammar that ends, and IgnoreEOS")?;
    ensure!(
        reply.message == b"yes",
        "a grammar allowing only \"yes\", with IgnoreEOS, answered {:?}; want \"yes\"",
        String::from_utf8_lossy(&reply.message)
    );
    let invalid = client.predict(constrained("Hi", "root ::= (", 8)).await;
    match invalid {
        Err(status) => ensure!(
            status.code() == Code::InvalidArgument,
            "an invalid grammar must be INVALID_ARGUMENT; got {status}"
        ),
        Ok(reply) => {
            return Err(CheckError::Failed(format!(
                "an invalid grammar was accepted; output {:?}",
                String::from_utf8_lossy(&reply.get_ref().message)
            )));
        }
    }
    let after = client.predict(ctx.predict_options()).await.rpc("Predict")?;
    ensure!(
        !after.message.is_empty(),
        "after the invalid grammar, Predict returns nothing"
    );
    Ok(Verdict::Passed)
}

/// The output of the JSON-schema grammar, for a chat through the model's template, unary
/// and streamed, is a JSON object of a non-empty `name` and an `age` from 1 to 99.
pub async fn json_schema(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let request = PredictOptions {
        grammar: PERSON_SCHEMA.into(),
        ..chat("Describe a person as JSON with a name and an age.", 100)
    };
    let unary = client.predict(request.clone()).await.rpc("Predict")?;
    let unary = String::from_utf8_lossy(&unary.message).into_owned();
    let streamed = text(&collect("PredictStream", client.predict_stream(request).await).await?);
    for (how, answer) in [("unary", unary), ("streamed", streamed)] {
        ctx.note(format!("json_schema {how} output: {answer:?}"));
        let value: serde_json::Value = serde_json::from_str(&answer).map_err(|e| {
            CheckError::Failed(format!("the {how} output is not JSON ({e}): {answer:?}"))
        })?;
        let name = value.get("name").and_then(serde_json::Value::as_str);
        let age = value.get("age").and_then(serde_json::Value::as_u64);
        ensure!(
            name.is_some_and(|n| !n.is_empty())
                && age.is_some_and(|a| (1..100).contains(&a))
                && value.as_object().is_some_and(|o| o.len() == 2),
            "the {how} output does not follow the schema {{\"name\": string, \"age\": 1..99}}: {value}"
        );
    }
    Ok(Verdict::Passed)
}
