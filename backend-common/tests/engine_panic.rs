//! An engine that panics in the middle of a generation (a bug in engine code): the stream
//! ends with INTERNAL instead of a clean end without its final chunk, the unary call gets
//! INTERNAL too, and the loaded model keeps serving.
//!
//! The engine here is a stand-in for a buggy one; the server, its gRPC transport and the
//! client are the real ones, over loopback.
use std::time::Duration;

use backend_common::cli::{ServeArgs, parse_addr};
use backend_common::engine::{
    Engine, EngineError, FinishReason, Flow, GeneratedToken, GenerationRequest, GenerationStats,
    LoadedModel, MemoryReport, ModelInfo, TokenSink,
};
use backend_common::load::LoadRequest;
use backend_common::pb::backend_client::BackendClient;
use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, ModelOptions, PredictOptions};
use backend_common::server::serve;
use tonic::Code;

/// Prompts holding this word make the engine panic after two tokens.
const TRIGGER: &str = "panic";

struct PanickingEngine;

/// Generates the prompt's first two bytes back, one token each.
struct PanickingModel;

impl Engine for PanickingEngine {
    type Model = PanickingModel;
    type Plan = ();
    const OPTIONS: &'static [&'static str] = &[];

    fn plan(&self, _request: &LoadRequest) -> Result<(), EngineError> {
        Ok(())
    }

    fn load(&self, (): ()) -> Result<(PanickingModel, ModelInfo), EngineError> {
        let info = ModelInfo {
            context_length: 256,
            vocab_size: 256,
            ..Default::default()
        };
        Ok((PanickingModel, info))
    }
}

impl LoadedModel for PanickingModel {
    fn tokenize(&self, text: &str, _add_bos: bool) -> Result<Vec<i32>, EngineError> {
        Ok(text.bytes().map(i32::from).collect())
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError> {
        let prompt: Vec<u8> = request.prompt.iter().map(|&b| b as u8).collect();
        for &byte in &prompt[..2] {
            let token = GeneratedToken {
                id: i32::from(byte),
                piece: vec![byte],
                special: false,
                logprob: None,
            };
            if sink.token(token) == Flow::Stop {
                break;
            }
        }
        if prompt
            .windows(TRIGGER.len())
            .any(|w| w == TRIGGER.as_bytes())
        {
            panic!("injected engine bug");
        }
        Ok(GenerationStats {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: 2,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            finish: FinishReason::Length,
        })
    }

    fn memory(&self) -> MemoryReport {
        MemoryReport::default()
    }
}

fn raw(prompt: &str) -> PredictOptions {
    PredictOptions {
        prompt: prompt.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_a_stream_ends_it_with_internal_and_the_model_keeps_serving() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = ServeArgs {
        addr: parse_addr(&format!("127.0.0.1:{port}")).unwrap(),
        restart_on_free: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(PanickingEngine, &args, None, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut client = loop {
        match BackendClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let loaded = client
        .load_model(ModelOptions {
            model_file: "stand-in".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(loaded.success);

    let mut stream = client
        .predict_stream(raw("Hi, panic now"))
        .await
        .unwrap()
        .into_inner();
    let mut text = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(reply)) => text.extend(reply.message),
            Ok(None) => {
                panic!("the stream ended cleanly after {text:?}; it must end with INTERNAL")
            }
            Err(status) => break status,
        }
    };
    assert_eq!(text, b"Hi", "the tokens before the panic still arrive");
    assert_eq!(end.code(), Code::Internal, "{end:?}");
    assert!(end.message().contains("injected engine bug"), "{end:?}");

    let unary = client.predict(raw("panic again")).await.unwrap_err();
    assert_eq!(unary.code(), Code::Internal, "{unary:?}");

    let reply = client.predict(raw("OK then")).await.unwrap().into_inner();
    assert_eq!(
        reply.message, b"OK",
        "the model keeps serving after the panics"
    );
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    assert_eq!(
        status.state,
        State::Ready as i32,
        "no request is left counted as running"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
