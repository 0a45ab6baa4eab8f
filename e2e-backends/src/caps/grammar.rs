//! Constrained output: a GBNF `grammar`, and the grammar LocalAI's core makes from a JSON
//! schema (`json_schema`); an invalid grammar is INVALID_ARGUMENT and costs nothing.
use backend_common::pb::PredictOptions;
use tonic::Code;

use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;

/// Two answers and nothing else.
pub const YES_NO: &str = r#"root ::= "yes" | "no""#;

/// What LocalAI's core sends for `{"type":"object","properties":{"city":{"type":"string"}},
/// "required":["city"]}`, with the string length bounded so a small model cannot ramble.
pub const CITY_SCHEMA: &str = r#"root ::= "{" space "\"city\"" space ":" space string space "}"
string ::= "\"" [A-Za-z .,'-]{1,40} "\""
space ::= " "?"#;

fn constrained(prompt: &str, grammar: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        prompt: prompt.into(),
        grammar: grammar.into(),
        tokens,
        temperature: 0.0,
        ..Default::default()
    }
}

/// The output is one of the grammar's answers; a grammar that does not parse is refused
/// with INVALID_ARGUMENT and the worker still answers afterwards.
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

/// The output of the JSON-schema grammar is a JSON object with a string `city`.
pub async fn json_schema(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let reply = client
        .predict(constrained(
            "Which city is the capital of France? Reply in JSON.\n",
            CITY_SCHEMA,
            64,
        ))
        .await
        .rpc("Predict")?;
    let answer = String::from_utf8_lossy(&reply.message).into_owned();
    ctx.note(format!("json_schema output: {answer:?}"));
    let value: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|e| CheckError::Failed(format!("the output is not JSON ({e}): {answer:?}")))?;
    ensure!(
        value.get("city").is_some_and(serde_json::Value::is_string)
            && value.as_object().is_some_and(|o| o.len() == 1),
        "the output does not follow the schema {{\"city\": string}}: {value}"
    );
    Ok(Verdict::Passed)
}
