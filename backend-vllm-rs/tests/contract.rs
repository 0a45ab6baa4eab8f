//! The conformance suite (`e2e-backends`) against this worker's binary, with the Qwen GGUF:
//! every capability candle's worker offers so far, one trial each, so `cargo test -p
//! backend-vllm-rs --test contract -- stream` runs one of them. What is particular to this
//! engine is in `grpc.rs`.
use std::process::ExitCode;

use e2e_backends::caps::Capability;

fn main() -> ExitCode {
    let left_out = [
        // Needs a model that reasons, or a load option that makes the worker replay a text
        // with think tags (BACKEND_TEST_REPLAY_OPTION): the test models do not reason and
        // this worker has no such option.
        Capability::Reasoning,
    ];
    let caps: Vec<_> = Capability::ALL
        .into_iter()
        .filter(|cap| !left_out.contains(cap))
        .collect();
    e2e_backends::testing::contract(env!("CARGO_BIN_EXE_backend-vllm-rs"), &caps)
}
