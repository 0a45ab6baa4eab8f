//! LoadModel swapping SmolLM2 and Qwen2.5 while a client streams: every reply comes from one
//! and the same model (e2e_backends::model_swap).
#[tokio::test(flavor = "multi_thread")]
async fn every_reply_comes_from_one_model_while_loads_swap_them() {
    e2e_backends::model_swap::check(env!("CARGO_BIN_EXE_backend-llamacpp").as_ref()).await;
}
