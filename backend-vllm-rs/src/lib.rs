//! `backend-vllm-rs`: a LocalAI backend worker on candle, the Rust counterpart of LocalAI's
//! Python vLLM backend.
//!
//! The model code ([`model`]) is ours and runs batches of sequences at different positions
//! in one forward; [`gguf`] loads quantized GGUF weights and [`hf`] Hugging Face folders,
//! [`tokenizer`] rebuilds the model's tokenizer from GGUF metadata or reads `tokenizer.json`;
//! [`export`] writes a GGUF out as a Hugging Face folder; [`engine`] serves them through
//! backend-common's gRPC service, chat templates and parsers, every request batched with
//! the others by [`engine_thread`] under engine-core's scheduler and paged KV cache.

pub mod bf16_matmul;
pub mod constrained;
pub mod cpu_pool;
pub mod engine;
pub mod engine_thread;
pub mod export;
pub mod gguf;
pub mod hf;
pub mod isa;
pub mod model;
pub mod paged_attention;
pub mod q4_matmul;
pub mod q6_matmul;
pub mod q8_matmul;
pub mod q8_rows;
pub mod row_parallel;
pub mod sampler;
pub mod settings;
pub mod tokenizer;
