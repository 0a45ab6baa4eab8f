//! The real GGUF test models through this crate's model code, and how logits are compared.
use anyhow::Result;
use candle_core::{Device, Tensor};

use backend_vllm_rs::gguf::GgufFile;
use backend_vllm_rs::model::Model;
use backend_vllm_rs::tokenizer::ModelTokenizer;

/// GGUF test model `name` (fetched by `scripts/fetch-models.sh`), able to run 512 positions.
pub fn gguf_model(name: &str) -> Result<(Model, ModelTokenizer)> {
    let mut file = GgufFile::open(&e2e_backends::testing::model(name))?;
    let header = file.header()?;
    let tokenizer = ModelTokenizer::new(&header.vocab)?;
    let weights = file.weights(&header.config, &Device::Cpu)?;
    Ok((
        Model::new(header.config, weights, 512, &Device::Cpu)?,
        tokenizer,
    ))
}

/// The largest absolute difference between two tensors of the same size.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let (a, b) = (a.flatten_all()?, b.flatten_all()?);
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f32>()?)
}
