//! Requests whose client went away while they queued cost no prefill
//! (e2e_backends::abandoned). A test binary of its own: its answer-time bound must not share
//! the two cores with other tests of the worker, nor slow their timings.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_queued_requests_cost_no_prefill() {
    e2e_backends::abandoned::check(
        env!("CARGO_BIN_EXE_backend-llamacpp").as_ref(),
        "parallel:1",
    )
    .await;
}
