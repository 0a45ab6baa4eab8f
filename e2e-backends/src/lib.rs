//! Talking to LocalAI backend workers from the outside: a gRPC client with LocalAI's bearer
//! auth, a supervisor that starts a worker binary the way LocalAI does, and the conformance
//! harness (`e2e-backends`): its configuration, shared context, capability checks, trial
//! runner and JUnit output.
pub mod abandoned;
pub mod caps;
pub mod client;
pub mod config;
pub mod container;
pub mod context;
pub mod free;
pub mod image;
pub mod junit;
pub mod model_swap;
pub mod suite;
pub mod testing;
pub mod worker;
