//! The decoder-only transformer of Llama, Mistral, Qwen2 and Qwen3, written for batches.
//!
//! One [`Model::forward`] runs any number of sequences, each at its own position: their new
//! tokens are packed into one `(tokens, hidden)` matrix so every weight matmul is done once
//! for the whole batch (the cost that dominates), while attention runs per sequence over
//! that sequence's keys and values, read from the paged [`KvCache`] through its block table.
//! This is the layout of vLLM's varlen paged attention.
//!
//! Per layer (pre-norm): `x += Wo · attn(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x))`, then
//! `x += Wdown · (silu(Wgate·n(x)) ⊙ Wup·n(x))`, with RMSNorm `n`, rotary embeddings in
//! the half-split ("NeoX") layout and grouped-query attention. Qwen2 adds biases to the Q,
//! K and V projections; Qwen3 instead normalises each head's query and key (RMSNorm over
//! the head) before the rotation.
//!
//! Activations, the KV cache and every non-matmul weight are in the model's compute dtype
//! (f32 on the CPU, where candle computes in f32 whatever the storage); matmul weights keep
//! their own form: GGUF quantized blocks, or dense f32, f16 or bf16 (the last through
//! [`crate::bf16_matmul`]).
use std::ops::Range;

use candle_core::quantized::QMatMul;

use crate::cpu_pool::cpu_pool;
use crate::paged_attention;
use crate::q4_matmul::Q4Weight;
use crate::q6_matmul::Q6Weight;
use crate::q8_matmul::Q8Weight;
use crate::row_parallel::SharedOut;
use candle_core::{DType, Device, Module, Storage, Tensor};

/// A failure inside the tensor code.
#[derive(Debug, thiserror::Error)]
#[error("model computation failed: {0}")]
pub struct ModelError(#[from] candle_core::Error);

/// Result of model code.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Architectures this model code implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2: no attention biases.
    Llama,
    /// Mistral: Llama's layer, with a sliding attention window in some versions.
    Mistral,
    /// Qwen2 / Qwen2.5: biases on the Q, K and V projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm of queries and keys, no biases.
    Qwen3,
}

/// The compute dtype on the CPU (activations, KV cache, norms and biases): candle has no bf16
/// or f16 kernels there for most of them and widens to f32 anyway.
pub const CPU_COMPUTE_DTYPE: DType = DType::F32;

/// Names of the implemented architectures, for error messages.
pub const SUPPORTED_ARCHS: &str = "llama, mistral, qwen2, qwen3";

impl Arch {
    /// The architecture called `name` in GGUF `general.architecture`, if implemented.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    /// The architecture of a Hugging Face `config.json` (`architectures[0]` such as
    /// `Qwen2ForCausalLM`, or its `model_type`), if implemented.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Arch::Llama),
            "MistralForCausalLM" | "mistral" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    /// Whether the Q, K and V projections carry biases.
    pub fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Whether queries and keys are RMS-normalised per head.
    pub fn has_qk_norm(self) -> bool {
        self == Arch::Qwen3
    }

    /// Whether llama.cpp's GGUF converter permuted the Q/K rows (see [`crate::gguf`]).
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }
}

/// Hyper-parameters of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which architecture.
    pub arch: Arch,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Number of decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Context the model was trained on.
    pub context_length: usize,
    /// Keys a query sees at most (itself and the `w - 1` before it), as Mistral 7B v0.1's
    /// `sliding_window` in Hugging Face and vLLM; `None` for full attention.
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// Bytes of KV cache one token takes (keys and values of all layers in `dtype`).
    pub fn kv_bytes_per_token(&self, dtype: DType) -> u64 {
        (2 * self.layers * self.kv_heads * self.head_dim * dtype.size_in_bytes()) as u64
    }
}

/// A weight matmul, in the form this CPU runs fastest.
pub enum Linear {
    /// candle's quantized (k-quants) or dense f32/f16 matmul.
    Candle(QMatMul),
    /// bf16 weights, through [`crate::bf16_matmul`].
    Bf16(Tensor),
    /// Q8_0 weights, through [`crate::q8_matmul`].
    Q8(Q8Weight),
    /// Q4_1 and Q4_K weights, through [`crate::q4_matmul`].
    Q4(Q4Weight),
    /// Q6_K weights, through [`crate::q6_matmul`].
    Q6(Q6Weight),
}

impl Linear {
    /// The fastest form of `m`: Q8_0, Q4_1, Q4_K and Q6_K blocks and bf16 tensors get this
    /// crate's kernels.
    pub fn new(m: QMatMul) -> candle_core::Result<Self> {
        Ok(match m {
            QMatMul::QTensor(q) => {
                if let Some(w) = Q8Weight::from_qtensor(&q)? {
                    Linear::Q8(w)
                } else if let Some(w) = Q4Weight::from_qtensor(&q)? {
                    Linear::Q4(w)
                } else if let Some(w) = Q6Weight::from_qtensor(&q)? {
                    Linear::Q6(w)
                } else {
                    Linear::Candle(QMatMul::QTensor(q))
                }
            }
            QMatMul::Tensor(t) if t.dtype() == DType::BF16 => Linear::Bf16(t),
            other => Linear::Candle(other),
        })
    }

    /// `x · wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Candle(m) => m.forward(x)?,
            Linear::Bf16(w) => crate::bf16_matmul::matmul(w, x)?,
            Linear::Q8(w) => w.matmul(x)?,
            Linear::Q4(w) => w.matmul(x)?,
            Linear::Q6(w) => w.matmul(x)?,
        })
    }

    /// Bytes of the weight.
    pub fn bytes(&self) -> u64 {
        match self {
            Linear::Candle(m) => matmul_bytes(m),
            Linear::Bf16(t) => tensor_bytes(t),
            Linear::Q8(w) => w.bytes(),
            Linear::Q4(w) => w.bytes(),
            Linear::Q6(w) => w.bytes(),
        }
    }
}

/// Projections of one input (a layer's Q, K and V; its MLP gate and up) computed as one
/// matmul where their weights stack (GGUF blocks of one type and width, see
/// [`crate::gguf`]): the input is then quantized once and the CPU pool run once, not once per
/// projection. Each output is the same dot products either way.
pub enum Projections {
    /// One weight holding every projection's rows, and each projection's row count.
    Stacked(Linear, Vec<usize>),
    /// Weights of different kinds, each its own matmul.
    Separate(Vec<Linear>),
}

impl Projections {
    /// Each projection of `x`, in order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Stacked(weight, rows) => {
                let all = weight.forward(x)?;
                let mut start = 0;
                let mut outs = Vec::with_capacity(rows.len());
                for &n in rows {
                    outs.push(all.narrow(1, start, n)?);
                    start += n;
                }
                Ok(outs)
            }
            Projections::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
        }
    }

    /// `silu(gate) * up` of a gate and an up projection (a gated MLP's activation). Stacked,
    /// it is one pass over the matmul's output into the result, so a prefill chunk holds one
    /// activation-sized buffer beside that output, not two (`silu(gate)`, then the product).
    pub fn silu_gated(&self, x: &Tensor) -> Result<Tensor> {
        let candle_ops = |gate: &Tensor, up: &Tensor| Ok((candle_nn::ops::silu(gate)? * up)?);
        let both = match self {
            Projections::Stacked(weight, rows) if matches!(rows[..], [g, u] if g == u) => {
                weight.forward(x)?
            }
            _ => {
                let [gate, up] = projections::<2>(self.forward(x)?)?;
                return candle_ops(&gate, &up);
            }
        };
        let (m, width) = both.dims2()?;
        let n = width / 2;
        let (storage, layout) = both.storage_and_layout();
        let values = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(cpu), Some((start, end))) if both.dtype() == DType::F32 => {
                &cpu.as_slice::<f32>()?[start..end]
            }
            _ => return candle_ops(&both.narrow(1, 0, n)?, &both.narrow(1, n, n)?),
        };
        let mut out = Vec::with_capacity(m * n);
        for row in values.chunks_exact(2 * n) {
            let (gate, up) = row.split_at(n);
            // candle's `silu` (x / (1 + e^-x)), then the product, value by value.
            out.extend(
                gate.iter()
                    .zip(up)
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u),
            );
        }
        Ok(Tensor::from_vec(out, (m, n), x.device())?)
    }

    /// Bytes of the weights.
    pub fn bytes(&self) -> u64 {
        match self {
            Projections::Stacked(weight, _) => weight.bytes(),
            Projections::Separate(parts) => parts.iter().map(Linear::bytes).sum(),
        }
    }
}

/// One decoder layer's weights.
pub struct Layer {
    /// RMSNorm before attention.
    pub attn_norm: Tensor,
    /// Query, key and value projections, the first two's rows in half-split RoPE order.
    pub qkv: Projections,
    /// Q/K/V biases (Qwen2).
    pub qkv_bias: Option<[Tensor; 3]>,
    /// Per-head RMSNorm weights of queries and keys (Qwen3).
    pub qk_norm: Option<[Tensor; 2]>,
    /// Attention output projection.
    pub o: Linear,
    /// RMSNorm before the MLP.
    pub ffn_norm: Tensor,
    /// MLP gate and up projections.
    pub gate_up: Projections,
    /// MLP down projection.
    pub down: Linear,
}

/// All weights of a model, quantized or not.
pub struct Weights {
    /// Token embeddings, `(vocab, hidden)`.
    pub embed: QMatMul,
    /// Decoder layers.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub norm: Tensor,
    /// Output projection; the same storage as `embed` when `tied`.
    pub lm_head: Linear,
    /// Whether the output projection is the embedding itself.
    pub tied: bool,
    /// Per-frequency divisors of the RoPE inverse frequencies (Llama 3 long context).
    pub rope_factors: Option<Vec<f32>>,
    /// Compute dtype: activations, KV cache and the non-matmul weights.
    pub dtype: DType,
}

/// The paged KV cache: for every layer, the keys and the values of every block, each
/// `(kv_heads, blocks * block_size, head_dim)`. Position `p` of a sequence is row
/// `block_table[p / block_size] * block_size + p % block_size` of that middle axis, so a
/// block's rows are contiguous per head, and a sequence whose blocks are consecutive reads
/// its keys as one slice (no copy), as a contiguous cache would.
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    block_size: usize,
    blocks: usize,
}

impl KvCache {
    /// A cache of `blocks` blocks of `block_size` positions for `config`, zeroed.
    ///
    /// An f32 cache is written once here so that the OS commits all of it now: the cache is
    /// reserved at load, as vLLM and llama.cpp reserve theirs, and the worker's resident size
    /// after loading is what it keeps under any load. (Left to the OS, it was committed page
    /// by page as blocks were first written, and grew towards the whole budget as the prefix
    /// cache kept finished prompts.)
    pub fn new(
        config: &ModelConfig,
        dtype: DType,
        blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let shape = (config.kv_heads, blocks * block_size, config.head_dim);
        let zeros = || match dtype {
            DType::F32 => {
                Tensor::from_vec(committed_zeros(shape.0 * shape.1 * shape.2), shape, device)
            }
            _ => Tensor::zeros(shape, dtype, device),
        };
        let layers = (0..config.layers)
            .map(|_| Ok((zeros()?, zeros()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            block_size,
            blocks,
        })
    }

    /// Bytes one block takes (keys and values of all layers).
    pub fn block_bytes(config: &ModelConfig, dtype: DType, block_size: usize) -> u64 {
        block_size as u64 * config.kv_bytes_per_token(dtype)
    }

    /// Writes the keys or values `new` (`(kv_heads, n, head_dim)`, positions `start..start
    /// + n`) of one layer through `table`, one contiguous run per block touched.
    fn write(&self, cache: &Tensor, new: &Tensor, start: usize, table: &[u32]) -> Result<()> {
        let bs = self.block_size;
        let n = new.dim(1)?;
        let mut done = 0;
        while done < n {
            let p = start + done;
            let run = (bs - p % bs).min(n - done);
            let row = table[p / bs] as usize * bs + p % bs;
            cache.slice_set(&new.narrow(1, done, run)?.contiguous()?, 1, row)?;
            done += run;
        }
        Ok(())
    }
}

/// `n` zeros in memory the OS has committed: one write per page, on the CPU pool.
fn committed_zeros(n: usize) -> Vec<f32> {
    const PER_PAGE: usize = 4096 / std::mem::size_of::<f32>();
    let mut values = vec![0f32; n];
    let shared = SharedOut::new(&mut values);
    cpu_pool().run(n.div_ceil(PER_PAGE), |pages| {
        let start = pages.start * PER_PAGE;
        let end = (pages.end * PER_PAGE).min(n);
        // SAFETY: the pool hands each page to one call only, and `values` outlives the run.
        let part = unsafe { shared.slice(start, end - start) };
        for value in part.iter_mut().step_by(PER_PAGE) {
            // Volatile: the allocator's memory is known to be zero, so a plain store of zero
            // could be dropped, and the page with it.
            // SAFETY: `value` is a valid, exclusive reference.
            unsafe { std::ptr::write_volatile(value, 0.0) };
        }
    });
    values
}

/// Block size of [`SingleSequence`]'s cache.
const SINGLE_BLOCK: usize = 16;

/// One sequence run without a scheduler (tests, tools): a cache of its own, blocks in order.
pub struct SingleSequence {
    kv: KvCache,
    table: Vec<u32>,
    len: usize,
}

impl SingleSequence {
    /// A sequence of at most `capacity` positions for `model`.
    pub fn new(model: &Model, capacity: usize) -> Result<Self> {
        let blocks = capacity.div_ceil(SINGLE_BLOCK);
        Ok(SingleSequence {
            kv: model.kv_cache(blocks, SINGLE_BLOCK)?,
            table: (0..blocks as u32).collect(),
            len: 0,
        })
    }

    /// Positions computed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was computed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `tokens` after what was fed before; the logits after the last, `(1, vocab)`.
    pub fn feed(&mut self, model: &Model, tokens: &[u32]) -> Result<Tensor> {
        let item = BatchItem {
            tokens,
            start: self.len,
            block_table: &self.table,
            logits: tokens.len().saturating_sub(1)..tokens.len(),
            hidden: false,
        };
        let logits = model.forward(&self.kv, &[item])?;
        self.len += tokens.len();
        logits.ok_or_else(|| ModelError(candle_core::Error::Msg("no logits".into())))
    }
}

/// One sequence's part of a forward pass (see `engine_core::ScheduledSeq`).
pub struct BatchItem<'a> {
    /// Tokens to run, in order.
    pub tokens: &'a [u32],
    /// Position of the first of them; the positions before it are in the cache.
    pub start: usize,
    /// The sequence's blocks, covering every position up to the last new token.
    pub block_table: &'a [u32],
    /// Rows of `tokens` whose logits are wanted (row `r` gives the distribution of the
    /// token after `tokens[r]`): the last one to sample, every scored one to score, none
    /// for a prefill chunk.
    pub logits: Range<usize>,
    /// Whether the final hidden state (after the last norm) of every token is wanted: an
    /// embedding reads them.
    pub hidden: bool,
}

/// What one forward pass gives back.
pub struct ForwardOutput {
    /// The logits of the rows the items asked for, in batch order, `(rows, vocab)` in f32.
    pub logits: Option<Tensor>,
    /// The final hidden states of every token of the items that asked, in batch order,
    /// `(tokens, hidden)` in f32.
    pub hidden: Option<Tensor>,
}

/// A loaded model ready to run.
pub struct Model {
    config: ModelConfig,
    weights: Weights,
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
    device: Device,
}

impl Model {
    /// A model over `weights`, able to run positions `0..max_positions`.
    pub fn new(
        config: ModelConfig,
        weights: Weights,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = rope_tables(
            &config,
            weights.rope_factors.as_deref(),
            max_positions,
            device,
        )?;
        let (cos, sin) = (cos.to_dtype(weights.dtype)?, sin.to_dtype(weights.dtype)?);
        Ok(Model {
            config,
            weights,
            cos,
            sin,
            max_positions,
            device: device.clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// An empty paged cache of `blocks` blocks of `block_size` positions for this model.
    pub fn kv_cache(&self, blocks: usize, block_size: usize) -> Result<KvCache> {
        KvCache::new(
            &self.config,
            self.weights.dtype,
            blocks,
            block_size,
            &self.device,
        )
    }

    /// Positions a sequence may reach.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> u64 {
        let w = &self.weights;
        let mut total = matmul_bytes(&w.embed);
        if !w.tied {
            total += w.lm_head.bytes();
        }
        total += tensor_bytes(&w.norm);
        for l in &w.layers {
            total += l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes();
            total += tensor_bytes(&l.attn_norm) + tensor_bytes(&l.ffn_norm);
            let extra = l
                .qkv_bias
                .iter()
                .flatten()
                .chain(l.qk_norm.iter().flatten());
            total += extra.map(tensor_bytes).sum::<u64>();
        }
        total
    }

    /// Bytes of weights one decode step reads: every matmul once, the embedding row aside
    /// (the output projection is read whole, tied or not).
    pub fn bytes_read_per_token(&self) -> u64 {
        let w = &self.weights;
        if w.tied {
            self.weight_bytes()
        } else {
            self.weight_bytes() - matmul_bytes(&w.embed)
        }
    }

    /// Runs the new tokens of every item, writing their keys and values into `kv`, and
    /// returns the logits of the rows each item asks for, in batch order, `(rows, vocab)` in
    /// f32 (`None` when no item asks for any: the output layer is then skipped).
    pub fn forward(&self, kv: &KvCache, batch: &[BatchItem<'_>]) -> Result<Option<Tensor>> {
        Ok(self.forward_all(kv, batch)?.logits)
    }

    /// [`Model::forward`], with the final hidden states of the items that ask for them.
    pub fn forward_all(&self, kv: &KvCache, batch: &[BatchItem<'_>]) -> Result<ForwardOutput> {
        let cfg = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut sample_rows = Vec::new();
        let mut hidden_rows = Vec::new();
        for item in batch {
            let (start, n) = (item.start, item.tokens.len());
            let fail = |msg: String| Err(ModelError(candle_core::Error::Msg(msg)));
            if n == 0 {
                return fail("a batch item has no tokens".into());
            }
            if start + n > self.max_positions {
                return fail(format!(
                    "position {} is past the {} positions this model was set up for",
                    start + n,
                    self.max_positions
                ));
            }
            let blocks = (start + n).div_ceil(kv.block_size);
            if item.block_table.len() < blocks
                || item.block_table[..blocks]
                    .iter()
                    .any(|&b| b as usize >= kv.blocks)
            {
                return fail(format!(
                    "the block table does not cover positions 0..{} with blocks of the cache",
                    start + n
                ));
            }
            if item.logits.end > n {
                return fail(format!(
                    "logits of rows {:?} asked of a batch item with {n} tokens",
                    item.logits
                ));
            }
            let base = ids.len() as u32;
            sample_rows.extend(item.logits.clone().map(|r| base + r as u32));
            if item.hidden {
                hidden_rows.extend((0..n as u32).map(|r| base + r));
            }
            ids.extend_from_slice(item.tokens);
            positions.extend((start..start + n).map(|p| p as u32));
        }
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let mut x = self
            .weights
            .embed
            .embedding(&ids)?
            .to_dtype(self.weights.dtype)?;
        for (index, layer) in self.weights.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps as f32)?;
            let attn = self.attention(kv, index, layer, &h, &cos, &sin, batch)?;
            x = (x + attn)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps as f32)?;
            let mlp = layer.down.forward(&layer.gate_up.silu_gated(&h)?)?;
            x = (x + mlp)?;
        }
        let normed_rows = |rows: Vec<u32>| -> Result<Option<Tensor>> {
            if rows.is_empty() {
                return Ok(None);
            }
            let n = rows.len();
            let rows = Tensor::from_vec(rows, n, &self.device)?;
            let picked = x.index_select(&rows, 0)?;
            Ok(Some(candle_nn::ops::rms_norm(
                &picked,
                &self.weights.norm,
                cfg.rms_eps as f32,
            )?))
        };
        let hidden = normed_rows(hidden_rows)?
            .map(|h| h.to_dtype(DType::F32))
            .transpose()?;
        let logits = match normed_rows(sample_rows)? {
            Some(last) => Some(self.weights.lm_head.forward(&last)?.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(ForwardOutput { logits, hidden })
    }

    /// Attention of layer `index` for the packed rows `h`. Every item's new keys and values
    /// are written into `kv` before any item reads, so a sequence may read blocks another
    /// sequence of the same batch fills (a prefix shared within one step).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &KvCache,
        index: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        batch: &[BatchItem<'_>],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let total = h.dim(0)?;
        let (hd, heads, kv_heads) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
        let [mut q, mut k, mut v] = projections::<3>(layer.qkv.forward(h)?)?;
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let mut q = q.reshape((1, total, heads, hd))?;
        let mut k = k.reshape((1, total, kv_heads, hd))?;
        if let Some([q_norm, k_norm]) = &layer.qk_norm {
            let eps = cfg.rms_eps as f32;
            q = candle_nn::ops::rms_norm(&q.contiguous()?, q_norm, eps)?;
            k = candle_nn::ops::rms_norm(&k.contiguous()?, k_norm, eps)?;
        }
        let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?.squeeze(0)?;
        let v = v.reshape((total, kv_heads, hd))?;
        let (k_cache, v_cache) = &kv.layers[index];
        let mut items = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for item in batch {
            let n = item.tokens.len();
            let new_k = k.narrow(0, offset, n)?.transpose(0, 1)?;
            let new_v = v.narrow(0, offset, n)?.transpose(0, 1)?;
            kv.write(k_cache, &new_k, item.start, item.block_table)?;
            kv.write(v_cache, &new_v, item.start, item.block_table)?;
            items.push(paged_attention::Item {
                first: offset,
                n,
                start: item.start,
                table: item.block_table,
            });
            offset += n;
        }
        let shape = paged_attention::Shape {
            heads,
            kv_heads,
            head_dim: hd,
            block_size: kv.block_size,
            cache_rows: kv.blocks * kv.block_size,
            window: cfg.sliding_window,
        };
        let queries: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; total * heads * hd];
        let (k_storage, k_layout) = k_cache.storage_and_layout();
        let (v_storage, v_layout) = v_cache.storage_and_layout();
        let (Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) = (&*k_storage, &*v_storage) else {
            return Err(ModelError(candle_core::Error::Msg(
                "attention reads the KV cache in CPU memory only".into(),
            )));
        };
        let keys = &k_cpu.as_slice::<f32>()?[k_layout.start_offset()..];
        let values = &v_cpu.as_slice::<f32>()?[v_layout.start_offset()..];
        paged_attention::attend(shape, &queries, keys, values, &items, &mut out);
        let out = Tensor::from_vec(out, (total, heads * hd), &self.device)?;
        layer.o.forward(&out)
    }
}

/// The `N` outputs of a layer's [`Projections`].
fn projections<const N: usize>(outs: Vec<Tensor>) -> Result<[Tensor; N]> {
    outs.try_into().map_err(|outs: Vec<Tensor>| {
        ModelError(candle_core::Error::Msg(format!(
            "{} projections where the layer has {N}",
            outs.len()
        )))
    })
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

fn matmul_bytes(m: &QMatMul) -> u64 {
    match m {
        QMatMul::QTensor(q) => q.storage_size_in_bytes() as u64,
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => tensor_bytes(t),
    }
}

/// Cosine and sine of every position's rotation angles, `(positions, head_dim / 2)`.
fn rope_tables(
    config: &ModelConfig,
    factors: Option<&[f32]>,
    positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0
                / config
                    .rope_theta
                    .powf(2.0 * i as f32 / config.head_dim as f32);
            f / factors.and_then(|fs| fs.get(i)).copied().unwrap_or(1.0)
        })
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (positions, half), device)?,
        Tensor::from_vec(sin, (positions, half), device)?,
    ))
}
