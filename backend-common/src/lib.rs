//! Everything two LocalAI backend workers share.
//!
//! A backend implements [`engine::Engine`] (plan and load a model) and
//! [`engine::LoadedModel`] (tokenize, generate, embed: the engine-specific part) and calls
//! [`server::run`]; this crate provides the gRPC service (`backend.Backend`,
//! wire-compatible with LocalAI), its command line, bearer auth, limits, graceful shutdown,
//! reflection, `key:value` options, sampling parameters, stop sequences and the assembly of
//! replies from generated tokens.

pub mod chat;
pub mod cli;
pub mod constraint;
pub mod engine;
pub mod gbnf;
pub mod gguf;
pub mod host;
pub mod load;
pub mod logprobs;
pub mod message_limit;
pub mod metrics;
pub mod model_path;
pub mod options;
pub mod parent_watch;
pub mod parsers;
pub mod pb;
pub mod reply;
pub mod request;
pub mod restart;
pub mod sampling;
pub mod score;
pub mod server;
pub mod status;
pub mod stop;
pub mod template;
pub mod text;
