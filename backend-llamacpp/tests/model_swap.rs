//! The model's life cycle: Free restarting the worker in place (e2e_backends::free), and
//! LoadModel swapping SmolLM2 and Qwen2.5 while a client streams: every reply comes from one
//! and the same model (e2e_backends::model_swap).
#[tokio::test(flavor = "multi_thread")]
async fn every_reply_comes_from_one_model_while_loads_swap_them() {
    e2e_backends::model_swap::check(env!("CARGO_BIN_EXE_backend-llamacpp").as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn free_restarts_the_worker_in_place() {
    e2e_backends::free::restarts_in_place(env!("CARGO_BIN_EXE_backend-llamacpp").as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn free_keeps_the_process_when_told() {
    e2e_backends::free::keeps_the_process_when_told(
        env!("CARGO_BIN_EXE_backend-llamacpp").as_ref(),
    )
    .await;
}
