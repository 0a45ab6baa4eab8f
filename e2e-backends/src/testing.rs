//! Helpers for tests that drive a real worker: where the test models are, raw requests, and
//! reading a whole stream. They panic on failure, as test code does.
use std::path::PathBuf;

use backend_common::pb::{PredictOptions, Reply};

use crate::client::Client;

/// The path of a test model in `$MODELS_DIR` (default: `models/` at the workspace root);
/// panics with the command that fetches it when it is missing.
pub fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (or make models) first",
        path.display()
    );
    path
}

/// A greedy raw-prompt request for `tokens` new tokens.
pub fn raw(prompt: &str, tokens: i32) -> PredictOptions {
    PredictOptions {
        prompt: prompt.into(),
        tokens,
        temperature: 0.0,
        ..Default::default()
    }
}

/// Every chunk of a PredictStream, in order.
pub async fn collect(client: &mut Client, req: PredictOptions) -> Vec<Reply> {
    let mut stream = client.predict_stream(req).await.unwrap().into_inner();
    let mut replies = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        replies.push(r);
    }
    replies
}

/// The visible text of a stream's chunks, joined.
pub fn text(replies: &[Reply]) -> String {
    replies
        .iter()
        .map(|r| String::from_utf8_lossy(&r.message).into_owned())
        .collect()
}
