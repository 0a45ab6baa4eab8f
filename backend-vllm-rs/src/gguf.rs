//! Loading a GGUF file: hyper-parameters and vocabulary from its metadata, quantized
//! weights kept as they are (candle's quantized matmul runs them directly).
//!
//! llama.cpp's converter permutes the rows of Llama's Q and K projections so its RoPE can
//! rotate adjacent pairs; [`unpermute_rows`] restores the Hugging Face order on the raw
//! quantized rows (a row is quantized on its own, so moving whole rows is exact), and one
//! half-split RoPE then serves every architecture and both file formats.
use std::borrow::Cow;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use backend_common::load::Pooling;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Tensor};

use crate::model::{Arch, CPU_COMPUTE_DTYPE, Layer, Linear, ModelConfig, Projections, Weights};
use crate::tokenizer::VocabSpec;

/// A GGUF file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Not readable as GGUF.
    #[error("not a readable GGUF file: {0}")]
    Format(String),
    /// The architecture is not implemented.
    #[error(
        "architecture `{0}` is not supported by this backend (supported: {archs})",
        archs = crate::model::SUPPORTED_ARCHS
    )]
    UnsupportedArch(String),
    /// A metadata key is missing or has the wrong type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is missing or unreadable.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor's GGUF name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a GGUF file holds besides its weights.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// The model's hyper-parameters.
    pub config: ModelConfig,
    /// Its vocabulary.
    pub vocab: VocabSpec,
    /// `general.name`.
    pub name: Option<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `<arch>.pooling_type` of an embedding model (llama.cpp's 1 mean, 2 CLS, 3 last).
    pub pooling: Option<Pooling>,
}

/// An open GGUF file.
pub struct GgufFile {
    content: Content,
    reader: BufReader<File>,
}

fn metadata_error(key: &str, reason: impl Into<String>) -> GgufError {
    GgufError::Metadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl GgufFile {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::Format(e.to_string()))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| GgufError::Format(e.to_string()))?;
        Ok(GgufFile { content, reader })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| metadata_error(key, "missing"))
    }

    fn u32_of(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get(key)
            .map(|v| {
                value_u32(v).ok_or_else(|| metadata_error(key, format!("not an integer: {v:?}")))
            })
            .transpose()
    }

    fn usize_required(&self, key: &str) -> Result<usize, GgufError> {
        self.u32_of(key)?
            .map(|v| v as usize)
            .ok_or_else(|| metadata_error(key, "missing"))
    }

    fn f32_of(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get(key)
            .map(|v| match v {
                Value::F32(f) => Ok(*f),
                Value::F64(f) => Ok(*f as f32),
                other => Err(metadata_error(key, format!("not a number: {other:?}"))),
            })
            .transpose()
    }

    fn string_of(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        match self.require(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(metadata_error(key, format!("holds a non-string {other:?}"))),
                })
                .collect(),
            other => Err(metadata_error(key, format!("not an array: {other:?}"))),
        }
    }

    /// The architecture name (`general.architecture`).
    pub fn architecture(&self) -> Result<String, GgufError> {
        self.string_of("general.architecture")
            .ok_or_else(|| metadata_error("general.architecture", "missing"))
    }

    /// Reads hyper-parameters, vocabulary, name and chat template.
    pub fn header(&self) -> Result<GgufHeader, GgufError> {
        let arch_name = self.architecture()?;
        let arch = Arch::from_gguf_name(&arch_name)
            .ok_or(GgufError::UnsupportedArch(arch_name.clone()))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden = self.usize_required(&key("embedding_length"))?;
        let heads = self.usize_required(&key("attention.head_count"))?;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(metadata_error(
                &key("attention.head_count"),
                format!("{heads} does not divide {hidden}"),
            ));
        }
        let kv_heads = self
            .u32_of(&key("attention.head_count_kv"))?
            .map_or(heads, |v| v as usize);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(metadata_error(
                &key("attention.head_count_kv"),
                format!("{kv_heads} does not divide {heads} heads"),
            ));
        }
        let head_dim = self
            .u32_of(&key("attention.key_length"))?
            .map_or(hidden / heads, |v| v as usize);
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let model = self.string_of("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(metadata_error(
                "tokenizer.ggml.model",
                format!("`{model}` is not supported (only byte-level BPE, `gpt2`)"),
            ));
        }
        let types = match self.get("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| value_u32(v).map_or(1, |t| t as i32))
                .collect(),
            _ => vec![crate::tokenizer::token_type::NORMAL; tokens.len()],
        };
        let merges = self
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(metadata_error(
                    "tokenizer.ggml.merges",
                    format!("`{m}` is not `A B`"),
                )),
            })
            .collect::<Result<_, _>>()?;
        let add_bos = match self.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => false,
        };
        let config = ModelConfig {
            arch,
            hidden,
            layers: self.usize_required(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            vocab: tokens.len(),
            rms_eps: self
                .f32_of(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| {
                    metadata_error(&key("attention.layer_norm_rms_epsilon"), "missing")
                })? as f64,
            rope_theta: self.f32_of(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            context_length: self.usize_required(&key("context_length"))?,
            sliding_window: self
                .u32_of(&key("attention.sliding_window"))?
                .map(|w| w as usize),
        };
        let vocab = VocabSpec {
            tokens,
            types,
            merges,
            pre: self
                .string_of("tokenizer.ggml.pre")
                .unwrap_or_else(|| "default".into()),
            bos: self.u32_of("tokenizer.ggml.bos_token_id")?,
            eos: self.u32_of("tokenizer.ggml.eos_token_id")?,
            eot: self.u32_of("tokenizer.ggml.eot_token_id")?,
            add_bos,
        };
        Ok(GgufHeader {
            config,
            vocab,
            name: self.string_of("general.name"),
            chat_template: self.string_of("tokenizer.chat_template"),
            pooling: match self.u32_of(&key("pooling_type"))? {
                Some(1) => Some(Pooling::Mean),
                Some(2) => Some(Pooling::Cls),
                Some(3) => Some(Pooling::Last),
                _ => None,
            },
        })
    }

    fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, GgufError> {
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| GgufError::Tensor {
                name: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// Whether the file holds tensor `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name` dequantized to f32; Q/K rows back in Hugging Face order for `rope_heads`
    /// heads when given (see [`unpermute_rows`]).
    pub fn dequantized(
        &mut self,
        name: &str,
        rope_heads: Option<usize>,
        device: &Device,
    ) -> Result<Tensor, GgufError> {
        let mut t = self.tensor(name, device)?;
        if let Some(heads) = rope_heads {
            t = unpermute_rows(&t, heads, device).map_err(|reason| GgufError::Tensor {
                name: name.to_string(),
                reason,
            })?;
        }
        t.dequantize(device).map_err(|e| GgufError::Tensor {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    fn dense(&mut self, name: &str, device: &Device) -> Result<Tensor, GgufError> {
        let t = self.tensor(name, device)?;
        t.dequantize(device).map_err(|e| GgufError::Tensor {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    fn matmul(&mut self, name: &str, device: &Device) -> Result<Linear, GgufError> {
        let t = self.tensor(name, device)?;
        matmul_form(t, name, device)
    }

    /// Projections of one input, each `(tensor name, heads)` (heads for a Q or K projection,
    /// see [`Self::rope_tensor`]): stacked into one matmul where their blocks, once in their
    /// fast form, are of one type and width, each its own matmul otherwise.
    fn projections(
        &mut self,
        parts: &[(String, Option<usize>)],
        arch: Arch,
        device: &Device,
    ) -> Result<Projections, GgufError> {
        let mut tensors = Vec::with_capacity(parts.len());
        for (name, heads) in parts {
            let t = match heads {
                Some(heads) => self.rope_tensor(name, arch, *heads, device)?,
                None => self.tensor(name, device)?,
            };
            tensors.push(fast_form(t, name, device)?);
        }
        let first = &parts[0].0;
        let stacked = stack_rows(&tensors, device).map_err(|e| GgufError::Tensor {
            name: first.clone(),
            reason: e.to_string(),
        })?;
        match stacked {
            Some((stacked, rows)) => Ok(Projections::Stacked(linear(stacked, first)?, rows)),
            None => tensors
                .into_iter()
                .zip(parts)
                .map(|(t, (name, _))| linear(t, name))
                .collect::<Result<_, _>>()
                .map(Projections::Separate),
        }
    }

    /// Tensor `name` of a Q or K projection, its rows in half-split RoPE order (llama.cpp's
    /// row permutation undone for Llama).
    fn rope_tensor(
        &mut self,
        name: &str,
        arch: Arch,
        heads: usize,
        device: &Device,
    ) -> Result<QTensor, GgufError> {
        let t = self.tensor(name, device)?;
        if !arch.gguf_permutes_qk() {
            return Ok(t);
        }
        unpermute_rows(&t, heads, device).map_err(|reason| GgufError::Tensor {
            name: name.to_string(),
            reason,
        })
    }

    /// Reads every weight of the model described by `config`.
    pub fn weights(&mut self, config: &ModelConfig, device: &Device) -> Result<Weights, GgufError> {
        let embed = Arc::new(self.tensor("token_embd.weight", device)?);
        let has_head = self.has_tensor("output.weight");
        let tensor_error = |e: candle_core::Error| GgufError::Tensor {
            name: "token_embd.weight".into(),
            reason: e.to_string(),
        };
        let lm_head = if has_head {
            self.matmul("output.weight", device)?
        } else if needs_fast_form(embed.dtype()) {
            self.matmul("token_embd.weight", device)?
        } else {
            Linear::new(QMatMul::from_arc(Arc::clone(&embed)).map_err(tensor_error)?)
                .map_err(tensor_error)?
        };
        // Tied when the output projection is the embedding's own storage (not a repacked copy).
        let tied = !has_head && matches!(lm_head, Linear::Candle(_));
        let rope_factors = if self.has_tensor("rope_freqs.weight") {
            let t = self.dense("rope_freqs.weight", device)?;
            Some(t.to_vec1::<f32>().map_err(|e| GgufError::Tensor {
                name: "rope_freqs.weight".into(),
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("blk.{i}");
            let qkv_bias = if config.arch.has_qkv_bias() {
                Some([
                    self.dense(&format!("{p}.attn_q.bias"), device)?,
                    self.dense(&format!("{p}.attn_k.bias"), device)?,
                    self.dense(&format!("{p}.attn_v.bias"), device)?,
                ])
            } else {
                None
            };
            let qk_norm = if config.arch.has_qk_norm() {
                Some([
                    self.dense(&format!("{p}.attn_q_norm.weight"), device)?,
                    self.dense(&format!("{p}.attn_k_norm.weight"), device)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: self.dense(&format!("{p}.attn_norm.weight"), device)?,
                qkv: self.projections(
                    &[
                        (format!("{p}.attn_q.weight"), Some(config.heads)),
                        (format!("{p}.attn_k.weight"), Some(config.kv_heads)),
                        (format!("{p}.attn_v.weight"), None),
                    ],
                    config.arch,
                    device,
                )?,
                qkv_bias,
                qk_norm,
                o: self.matmul(&format!("{p}.attn_output.weight"), device)?,
                ffn_norm: self.dense(&format!("{p}.ffn_norm.weight"), device)?,
                gate_up: self.projections(
                    &[
                        (format!("{p}.ffn_gate.weight"), None),
                        (format!("{p}.ffn_up.weight"), None),
                    ],
                    config.arch,
                    device,
                )?,
                down: self.matmul(&format!("{p}.ffn_down.weight"), device)?,
            });
        }
        Ok(Weights {
            embed: QMatMul::QTensor(embed),
            layers,
            norm: self.dense("output_norm.weight", device)?,
            lm_head,
            tied,
            rope_factors,
            dtype: CPU_COMPUTE_DTYPE,
        })
    }
}

/// Whether a matmul weight of `dtype` is re-encoded at load: Q5_0, which llama.cpp's Q4_K_M
/// uses for every matrix whose rows are not a multiple of 256 and which candle multiplies with
/// scalar code only. (Q4_1, Q4_K and Q6_K have kernels of their own, see [`Linear::new`].)
fn needs_fast_form(dtype: GgmlDType) -> bool {
    dtype == GgmlDType::Q5_0
}

/// The matmul of `t` (see [`Linear::new`]); Q5_0 becomes Q8_0 (AVX2 and AVX-512 kernels) with identical values,
/// its 5-bit integers fitting Q8_0's 8 under the same scale.
fn matmul_form(t: QTensor, name: &str, device: &Device) -> Result<Linear, GgufError> {
    linear(fast_form(t, name, device)?, name)
}

/// The matmul of `t` as it is.
fn linear(t: QTensor, name: &str) -> Result<Linear, GgufError> {
    QMatMul::from_qtensor(t)
        .and_then(Linear::new)
        .map_err(|e| GgufError::Tensor {
            name: name.to_string(),
            reason: e.to_string(),
        })
}

/// `t` in the block type it is multiplied in (Q5_0 as Q8_0, see [`matmul_form`]).
fn fast_form(t: QTensor, name: &str, device: &Device) -> Result<QTensor, GgufError> {
    if !needs_fast_form(t.dtype()) {
        return Ok(t);
    }
    q5_0_as_q8_0(&t, device).map_err(|reason| GgufError::Tensor {
        name: name.to_string(),
        reason,
    })
}

/// The rows of `parts` one under the other, as one tensor, with each part's row count; `None`
/// unless all are matrices of one block type and width (their rows are then whole blocks,
/// stored one after the other, so the stacked bytes are the parts' bytes in turn).
fn stack_rows(
    parts: &[QTensor],
    device: &Device,
) -> candle_core::Result<Option<(QTensor, Vec<usize>)>> {
    let Some(dims) = parts
        .iter()
        .map(|t| t.shape().dims2().ok())
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let (Some(first), Some(&(_, cols))) = (parts.first(), dims.first()) else {
        return Ok(None);
    };
    let dtype = first.dtype();
    if parts
        .iter()
        .zip(&dims)
        .any(|(t, d)| t.dtype() != dtype || d.1 != cols)
    {
        return Ok(None);
    }
    let data = parts
        .iter()
        .map(QTensor::data)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let storage = QStorage::from_data(Cow::Owned(data.concat()), device, dtype)?;
    let rows: Vec<usize> = dims.iter().map(|d| d.0).collect();
    let stacked = QTensor::new(storage, (rows.iter().sum::<usize>(), cols))?;
    Ok(Some((stacked, rows)))
}

/// Bytes of a Q5_0 block: f16 scale, 32 high bits, 16 bytes of low nibbles.
const Q5_0_BLOCK: usize = 22;
/// Bytes of a Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BLOCK: usize = 34;

/// `t` (Q5_0) as Q8_0 with identical values: each 5-bit quant `q` becomes the byte `q - 16`
/// under the same scale (ggml's `dequantize_row_q5_0` layout).
pub fn q5_0_as_q8_0(t: &QTensor, device: &Device) -> Result<QTensor, String> {
    let data = t.data().map_err(|e| e.to_string())?;
    if data.len() % Q5_0_BLOCK != 0 {
        return Err(format!("{} bytes are not whole Q5_0 blocks", data.len()));
    }
    let mut out = Vec::with_capacity(data.len() / Q5_0_BLOCK * Q8_0_BLOCK);
    for block in data.chunks_exact(Q5_0_BLOCK) {
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        let qs = &block[6..];
        let mut q = [0u8; 32];
        for j in 0..16 {
            let high0 = (((qh >> j) << 4) & 0x10) as u8;
            let high1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((qs[j] & 0x0F) | high0).wrapping_sub(16);
            q[j + 16] = ((qs[j] >> 4) | high1).wrapping_sub(16);
        }
        out.extend_from_slice(&block[..2]);
        out.extend_from_slice(&q);
    }
    let storage =
        QStorage::from_data(Cow::Owned(out), device, GgmlDType::Q8_0).map_err(|e| e.to_string())?;
    QTensor::new(storage, t.shape()).map_err(|e| e.to_string())
}

fn value_u32(v: &Value) -> Option<u32> {
    match v {
        Value::U8(x) => Some(*x as u32),
        Value::I8(x) => u32::try_from(*x).ok(),
        Value::U16(x) => Some(*x as u32),
        Value::I16(x) => u32::try_from(*x).ok(),
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

/// The HF row order of a Q/K projection from llama.cpp's: within each head, GGUF row
/// `2i + j` (pair `i`, member `j`) is HF row `j * (head_dim / 2) + i`.
pub fn unpermute_rows(t: &QTensor, heads: usize, device: &Device) -> Result<QTensor, String> {
    let (rows, cols) = t.shape().dims2().map_err(|e| e.to_string())?;
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(format!(
            "{rows} rows do not split into {heads} heads of pairs"
        ));
    }
    let dtype: GgmlDType = t.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = t.data().map_err(|e| e.to_string())?;
    if data.len() != rows * row_bytes {
        return Err(format!(
            "{} bytes for {rows} rows of {row_bytes}",
            data.len()
        ));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), device, dtype).map_err(|e| e.to_string())?;
    QTensor::new(storage, (rows, cols)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Stacked projections give each projection exactly what its own matmul gives (the
    /// types this crate's kernels take, Q5_0 re-encoded, and one candle multiplies), for one
    /// row and for a batch; a stacked gate and up give candle's silu and product; tensors of
    /// different types are not stacked.
    #[test]
    fn stacked_projections_give_each_its_own_output() {
        let device = Device::Cpu;
        let quantized = |rows: usize, dtype: GgmlDType| {
            let w = Tensor::randn(0f32, 1.0, (rows, 256), &device).unwrap();
            fast_form(QTensor::quantize(&w, dtype).unwrap(), "w", &device).unwrap()
        };
        let linear = |t: QTensor| Linear::new(QMatMul::from_qtensor(t).unwrap()).unwrap();
        let stacked = |parts: &[QTensor]| {
            let (t, rows) = stack_rows(parts, &device).unwrap().unwrap();
            Projections::Stacked(linear(t), rows)
        };
        let batches = [1, 5].map(|m| Tensor::randn(0f32, 1.0, (m, 256), &device).unwrap());
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q4_0,
        ] {
            let parts: Vec<QTensor> = [64, 32, 32].map(|rows| quantized(rows, dtype)).into();
            let projections = stacked(&parts);
            assert!(matches!(&projections, Projections::Stacked(_, rows) if rows == &[64, 32, 32]));
            let alone: Vec<Linear> = parts.into_iter().map(linear).collect();
            for x in &batches {
                let outs = projections.forward(x).unwrap();
                assert_eq!(outs.len(), 3);
                for (out, one) in outs.iter().zip(&alone) {
                    assert_eq!(bits(out), bits(&one.forward(x).unwrap()), "{dtype:?}");
                }
            }
            let parts: Vec<QTensor> = [48, 48].map(|rows| quantized(rows, dtype)).into();
            let gate_up = stacked(&parts);
            let mut alone = parts.into_iter().map(linear);
            let (gate, up) = (alone.next().unwrap(), alone.next().unwrap());
            for x in &batches {
                let expected = candle_nn::ops::silu(&gate.forward(x).unwrap()).unwrap()
                    * up.forward(x).unwrap();
                let got = gate_up.silu_gated(x).unwrap();
                assert_eq!(bits(&got), bits(&expected.unwrap()), "{dtype:?}");
            }
        }
        let mixed = [GgmlDType::Q8_0, GgmlDType::Q4K].map(|dtype| quantized(32, dtype));
        assert!(stack_rows(&mixed, &device).unwrap().is_none());
    }

    #[test]
    fn q5_0_becomes_q8_0_with_the_same_values() {
        let device = Device::Cpu;
        let t = Tensor::randn(0f32, 1.0, (4, 64), &device).unwrap();
        let q5 = QTensor::quantize(&t, GgmlDType::Q5_0).unwrap();
        let q8 = q5_0_as_q8_0(&q5, &device).unwrap();
        assert_eq!(q8.dtype(), GgmlDType::Q8_0);
        let a: Vec<f32> = q5
            .dequantize(&device)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = q8
            .dequantize(&device)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unpermute_moves_pairs_to_halves() {
        // 2 heads of 4 rows, one f32 column: row values are their GGUF index.
        let device = Device::Cpu;
        let t = Tensor::from_vec(
            (0..8).map(|v| v as f32).collect::<Vec<_>>(),
            (8, 1),
            &device,
        )
        .unwrap();
        let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
        let u = unpermute_rows(&q, 2, &device).unwrap();
        let rows: Vec<f32> = u
            .dequantize(&device)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Head 0: GGUF rows (0,1) (2,3) are pairs (x0,y0) (x1,y1): HF order x0 x1 y0 y1.
        assert_eq!(rows, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}
