//! Talking to LocalAI backend workers from the outside: a gRPC client with LocalAI's bearer
//! auth, and a supervisor that starts a worker binary the way LocalAI does.
pub mod client;
pub mod worker;
