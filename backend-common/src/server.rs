//! The `backend.Backend` gRPC service on top of an [`Engine`], and the process around it:
//! listening, bearer auth, message limits, reflection, request logging and graceful shutdown.
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::InterceptorLayer;
use tonic::{Request, Response, Status};
use tracing::info_span;

use crate::chat::ChatSetup;
use crate::cli::ServeArgs;
use crate::engine::{
    EmbedInput, Engine, EngineError, Flow, GeneratedToken, GenerationRequest, LoadRequest,
    TokenSink,
};
use crate::options::{OptionError, Options};
use crate::parsers::ChatParser;
use crate::pb::backend_server::{Backend, BackendServer};
use crate::pb::{self, Reply};
use crate::reply::ReplyBuilder;
use crate::request::generation_request;
use crate::sampling::InvalidRequest;
use crate::status::WorkerState;
use crate::{model_path, pb::PredictOptions};

/// gRPC message size limit, both ways (LocalAI's).
pub const MESSAGE_LIMIT: usize = 50 * 1024 * 1024;

/// Environment variable holding the bearer token every call must carry, when set.
pub const AUTH_TOKEN_ENV: &str = "LOCALAI_GRPC_AUTH_TOKEN";

/// The server could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::NotLoaded | EngineError::FailedPrecondition(_) => {
                Status::failed_precondition(message)
            }
            EngineError::ModelNotFound(_) | EngineError::HubModelNotCached { .. } => {
                Status::not_found(message)
            }
            EngineError::InvalidModel { .. } | EngineError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            EngineError::ResourceExhausted(_) => Status::resource_exhausted(message),
            EngineError::Unimplemented(_) => Status::unimplemented(message),
            EngineError::Internal(_) => Status::internal(message),
        }
    }
}

impl From<OptionError> for EngineError {
    fn from(e: OptionError) -> Self {
        EngineError::InvalidArgument(e.to_string())
    }
}

impl From<InvalidRequest> for EngineError {
    fn from(e: InvalidRequest) -> Self {
        EngineError::InvalidArgument(e.to_string())
    }
}

/// The gRPC service around one engine.
pub struct BackendService<E> {
    engine: Arc<E>,
    state: Arc<WorkerState>,
    shutdown: watch::Receiver<bool>,
    next_request: AtomicU64,
    chat: RwLock<Option<Arc<ChatSetup>>>,
}

impl<E: Engine> BackendService<E> {
    /// A service that stops running generations when `shutdown` turns true.
    pub fn new(engine: Arc<E>, shutdown: watch::Receiver<bool>) -> Self {
        BackendService {
            engine,
            state: Arc::new(WorkerState::default()),
            shutdown,
            next_request: AtomicU64::new(1),
            chat: RwLock::new(None),
        }
    }

    /// Validates a predict request and prepares its prompt and output parser.
    fn prepare(
        &self,
        req: &PredictOptions,
    ) -> Result<(GenerationRequest, Option<ChatParser>), Status> {
        let chat = self
            .chat
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(EngineError::NotLoaded)?;
        let prepared = chat.prepare(req)?;
        let mut generation = generation_request(req, prepared.prompt).map_err(EngineError::from)?;
        if let Some(call) = prepared.tool_call {
            if generation.grammar.is_some() && call.lazy.is_some() {
                // "auto": the request's own grammar decides the whole output.
                return Ok((generation, prepared.parser));
            }
            if generation.grammar.is_some() {
                return Err(EngineError::InvalidArgument(
                    "Grammar and a forced ToolChoice both constrain the output; send one of them (a forced call brings its own grammar)".into(),
                )
                .into());
            }
            generation.tool_call = Some(call);
        }
        Ok((generation, prepared.parser))
    }

    fn span(&self, method: &'static str, correlation: &str) -> tracing::Span {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        info_span!("rpc", id, method, correlation = correlation)
    }

    /// Runs blocking engine work off the async threads; an engine panic becomes INTERNAL.
    async fn blocking<T, F>(&self, span: tracing::Span, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&E) -> Result<T, EngineError> + Send + 'static,
    {
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&engine)))
            .await
            .map_err(|e| Status::internal(format!("engine task failed: {e}")))?
            .map_err(Status::from)
    }
}

/// Collects a whole generation for the unary `Predict`.
struct CollectSink {
    builder: ReplyBuilder,
    shutdown: watch::Receiver<bool>,
}

impl TokenSink for CollectSink {
    fn token(&mut self, token: GeneratedToken) -> Flow {
        let chunk = self.builder.push(&token);
        if chunk.stopped || *self.shutdown.borrow() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

/// Sends each token's chunk as it comes; stops when the client is gone.
struct StreamSink {
    builder: ReplyBuilder,
    tx: mpsc::Sender<Result<Reply, Status>>,
    shutdown: watch::Receiver<bool>,
}

impl TokenSink for StreamSink {
    fn token(&mut self, token: GeneratedToken) -> Flow {
        if self.tx.is_closed() || *self.shutdown.borrow() {
            return Flow::Stop;
        }
        let chunk = self.builder.push(&token);
        if let Some(reply) = chunk.reply
            && self.tx.blocking_send(Ok(reply)).is_err()
        {
            return Flow::Stop;
        }
        if chunk.stopped {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

#[tonic::async_trait]
impl<E: Engine> Backend for BackendService<E> {
    async fn health(&self, _: Request<pb::HealthMessage>) -> Result<Response<Reply>, Status> {
        Ok(Response::new(Reply {
            message: b"OK".to_vec(),
            ..Default::default()
        }))
    }

    async fn load_model(
        &self,
        request: Request<pb::ModelOptions>,
    ) -> Result<Response<pb::Result>, Status> {
        let options = request.into_inner();
        let span = self.span("LoadModel", "");
        let path = model_path::resolve(&options).map_err(Status::from)?;
        let extra = Options::parse(&options.options);
        ChatSetup::check_options(&extra).map_err(Status::from)?;
        let load = LoadRequest {
            extra: extra.clone(),
            options,
            path: path.clone(),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = self
            .blocking(span.clone(), move |engine| {
                let info = engine.load(&load)?;
                let chat = ChatSetup::new(&info, &file_name, &extra)?;
                Ok((info, chat))
            })
            .await;
        match result {
            Ok((info, chat)) => {
                *self.chat.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(chat));
                self.state.set_load_error(None);
                span.in_scope(|| tracing::info!(path = %path.display(), name = ?info.name, ctx = info.context_length, "model loaded"));
                Ok(Response::new(pb::Result {
                    message: format!("loaded {}", path.display()),
                    success: true,
                }))
            }
            Err(status) => {
                self.state
                    .set_load_error(Some(status.message().to_string()));
                span.in_scope(|| tracing::warn!(error = status.message(), "load failed"));
                Err(status)
            }
        }
    }

    async fn predict(&self, request: Request<PredictOptions>) -> Result<Response<Reply>, Status> {
        let req = request.into_inner();
        let span = self.span("Predict", &req.correlation_id);
        let (generation, parser) = self.prepare(&req)?;
        let _busy = self.state.busy();
        let shutdown = self.shutdown.clone();
        let reply = self
            .blocking(span, move |engine| {
                let mut sink = CollectSink {
                    builder: ReplyBuilder::unary(&req.stop_prompts, parser),
                    shutdown,
                };
                let stats = engine.generate(&generation, &mut sink)?;
                Ok(sink.builder.finish_unary(&stats))
            })
            .await?;
        Ok(Response::new(reply))
    }

    type PredictStreamStream = ReceiverStream<Result<Reply, Status>>;

    async fn predict_stream(
        &self,
        request: Request<PredictOptions>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let req = request.into_inner();
        let span = self.span("PredictStream", &req.correlation_id);
        let (generation, parser) = self.prepare(&req)?;
        let (tx, rx) = mpsc::channel(64);
        let engine = Arc::clone(&self.engine);
        let state = Arc::clone(&self.state);
        let shutdown = self.shutdown.clone();
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let _busy = state.busy();
            let mut sink = StreamSink {
                builder: ReplyBuilder::new(&req.stop_prompts, parser),
                tx: tx.clone(),
                shutdown,
            };
            let last = match engine.generate(&generation, &mut sink) {
                Ok(stats) => {
                    tracing::debug!(tokens = stats.completion_tokens, finish = ?stats.finish, "stream done");
                    Ok(sink.builder.finish_stream(&stats))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "generation failed");
                    Err(Status::from(e))
                }
            };
            // The client may be gone already; nothing is left to tell it then.
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tokenize_string(
        &self,
        request: Request<PredictOptions>,
    ) -> Result<Response<pb::TokenizationResponse>, Status> {
        let req = request.into_inner();
        let span = self.span("TokenizeString", &req.correlation_id);
        let tokens = self
            .blocking(span, move |engine| {
                if !engine.is_loaded() {
                    return Err(EngineError::NotLoaded);
                }
                engine.tokenize(&req.prompt, true)
            })
            .await?;
        Ok(Response::new(pb::TokenizationResponse {
            length: tokens.len() as i32,
            tokens,
        }))
    }

    async fn free(&self, _: Request<pb::HealthMessage>) -> Result<Response<pb::Result>, Status> {
        let span = self.span("Free", "");
        *self.chat.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.blocking(span, |engine| engine.unload()).await?;
        self.state.set_load_error(None);
        Ok(Response::new(pb::Result {
            message: "model freed".to_string(),
            success: true,
        }))
    }

    async fn status(
        &self,
        _: Request<pb::HealthMessage>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let memory = self.engine.memory();
        Ok(Response::new(
            self.state.report(self.engine.is_loaded(), &memory),
        ))
    }

    async fn embedding(
        &self,
        request: Request<PredictOptions>,
    ) -> Result<Response<pb::EmbeddingResult>, Status> {
        let req = request.into_inner();
        let span = self.span("Embedding", &req.correlation_id);
        // LocalAI sends token ids when the client did (OpenAI's `input` as integers).
        let input = if !req.embedding_tokens.is_empty() {
            EmbedInput::Tokens(req.embedding_tokens)
        } else if req.embeddings.is_empty() {
            EmbedInput::Text(req.prompt)
        } else {
            EmbedInput::Text(req.embeddings)
        };
        let _busy = self.state.busy();
        let embeddings = self
            .blocking(span, move |engine| {
                if !engine.is_loaded() {
                    return Err(EngineError::NotLoaded);
                }
                engine.embed(&input)
            })
            .await?;
        Ok(Response::new(pb::EmbeddingResult { embeddings }))
    }
}

/// Checks `authorization: Bearer <token>` in constant time.
#[derive(Clone)]
struct BearerAuth {
    expected: Option<Arc<[u8]>>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let token = given.strip_prefix(b"Bearer ").unwrap_or_default();
        if subtle::ConstantTimeEq::ct_eq(token, &expected[..]).into() {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong `authorization: Bearer <token>` metadata",
            ))
        }
    }
}

/// Serves `engine` on `args.addr` until `shutdown` completes; running generations then
/// stop at their next token and their streams end with a final chunk.
pub async fn serve<E: Engine>(
    engine: E,
    args: &ServeArgs,
    auth_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let host = args.addr.host.trim_start_matches('[').trim_end_matches(']');
    let listener = tokio::net::TcpListener::bind((host, args.addr.port))
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: args.addr.to_string(),
        source,
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = BackendServer::new(BackendService::new(Arc::new(engine), stop_rx))
        .max_decoding_message_size(MESSAGE_LIMIT)
        .max_encoding_message_size(MESSAGE_LIMIT);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let auth = BearerAuth {
        expected: auth_token
            .filter(|t| !t.is_empty())
            .map(|t| Arc::from(t.into_bytes())),
    };
    tracing::info!(addr = %local, auth = auth.expected.is_some(), "backend listening");
    let stopping = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing running requests");
        let _ = stop_tx.send(true);
    };
    tonic::transport::Server::builder()
        .layer(InterceptorLayer::new(auth))
        .add_service(service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            stopping,
        )
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Sets up `tracing` logs on stderr (`RUST_LOG`; by default `info`, with the engine
/// library's chatty load logs at `warn`).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The `main` of a worker: logs, a runtime, the server until SIGINT/SIGTERM.
pub fn run<E: Engine>(engine: E, args: &ServeArgs) -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let token = std::env::var(AUTH_TOKEN_ENV).ok();
    match runtime.block_on(serve(engine, args, token, termination_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
