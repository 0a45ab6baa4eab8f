//! vLLM's engine core without the model: what each forward step computes, and where the
//! keys and values of every sequence live.
//!
//! - [`BlockPool`]: the KV cache as fixed-size blocks, reference-counted, with a prefix
//!   cache of full blocks keyed by their content and everything before it.
//! - [`Scheduler`]: waiting and running queues, FCFS admission under a token budget and a
//!   sequence cap, chunked prefill, and preemption by recompute when blocks run out.
//!
//! Nothing here knows about tensors: an engine asks [`Scheduler::schedule`] for a [`Step`],
//! runs one forward pass over its sequences (new tokens, first position, block table),
//! samples where [`ScheduledSeq::sample`] says so, and reports the tokens back with
//! [`Scheduler::append`]. The same scheduler serves a CPU or a GPU model.
mod block_pool;
mod scheduler;

pub use block_pool::{BlockHash, BlockId, BlockPool};
pub use scheduler::{AdmitError, KvStats, ScheduledSeq, Scheduler, SchedulerConfig, SeqId, Step};
