//! `x · Wᵀ` for Q8_0 weights (and Q5_0, re-encoded as Q8_0 at load) on the CPU.
//!
//! candle's Q8_0 kernel converts each block's f16 scale through a function call inside the
//! dot product, which costs more than the block's 32 multiply-adds. Here the scales are
//! widened to f32 once, at load, and the quants kept as one contiguous i8 matrix. Activations
//! are quantized per 32-block as ggml does (scale = max |x| / 127), and each block's integer
//! dot product is done with AVX2's byte multiply-add (picked at run time; a portable loop
//! elsewhere), weight rows split over rayon's threads.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per block.
const BLOCK: usize = 32;
/// Bytes of a Q8_0 block: f16 scale, 32 signed bytes.
const BLOCK_BYTES: usize = 34;
/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 32;

/// A Q8_0 weight matrix, `(rows, cols)`, with f32 block scales.
#[derive(Debug)]
pub struct Q8Weight {
    rows: usize,
    cols: usize,
    /// `rows * cols / 32` scales, row-major.
    scales: Vec<f32>,
    /// `rows * cols` quants, row-major.
    quants: Vec<i8>,
}

/// Activation rows quantized like the weights.
struct Q8Rows {
    scales: Vec<f32>,
    quants: Vec<i8>,
}

impl Q8Weight {
    /// The weight of a Q8_0 tensor; `None` for other types.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        if t.dtype() != GgmlDType::Q8_0 {
            return Ok(None);
        }
        let (rows, cols) = t.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let data = t.data()?;
        let blocks = rows * cols / BLOCK;
        if data.len() != blocks * BLOCK_BYTES {
            candle_core::bail!("Q8_0 tensor: {} bytes for {blocks} blocks", data.len());
        }
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(rows * cols);
        for block in data.chunks_exact(BLOCK_BYTES) {
            scales.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            quants.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Some(Q8Weight {
            rows,
            cols,
            scales,
            quants,
        }))
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        (self.scales.len() * 4 + self.quants.len()) as u64
    }

    /// `x · Wᵀ`: `x` is `(m, cols)` f32; returns `(m, rows)` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("Q8_0 matmul: x has {k} columns, the weight {}", self.cols);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let xq = quantize_rows(&xs);
        let blocks = k / BLOCK;
        let dot = dot_fn();
        let n = self.rows;
        // Tasks own blocks of weight rows: each writes a (rows, m) block, scattered after.
        let parts: Vec<Vec<f32>> = self
            .quants
            .par_chunks(ROWS_PER_TASK * k)
            .zip(self.scales.par_chunks(ROWS_PER_TASK * blocks))
            .map(|(wq, ws)| {
                let count = wq.len() / k;
                let mut part = vec![0f32; count * m];
                for r in 0..count {
                    let (row_q, row_s) = (&wq[r * k..][..k], &ws[r * blocks..][..blocks]);
                    for i in 0..m {
                        part[r * m + i] = dot(
                            row_q,
                            row_s,
                            &xq.quants[i * k..][..k],
                            &xq.scales[i * blocks..][..blocks],
                        );
                    }
                }
                part
            })
            .collect();
        let mut out = vec![0f32; m * n];
        for (task, part) in parts.iter().enumerate() {
            for (r, values) in part.chunks_exact(m).enumerate() {
                for (i, v) in values.iter().enumerate() {
                    out[i * n + task * ROWS_PER_TASK + r] = *v;
                }
            }
        }
        Tensor::from_vec(out, (m, n), x.device())
    }
}

/// Quantizes rows of whole blocks as ggml's `quantize_row_q8_0` does.
fn quantize_rows(xs: &[f32]) -> Q8Rows {
    let mut scales = Vec::with_capacity(xs.len() / BLOCK);
    let mut quants = Vec::with_capacity(xs.len());
    for block in xs.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        scales.push(f16::from_f32(d).to_f32());
        quants.extend(block.iter().map(|v| (v * inv).round() as i8));
    }
    Q8Rows { scales, quants }
}

type DotFn = fn(&[i8], &[f32], &[i8], &[f32]) -> f32;

/// The fastest block dot product this CPU runs.
fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features `dot_avx2` enables were detected on this CPU.
        return |wq, ws, xq, xs| unsafe { dot_avx2(wq, ws, xq, xs) };
    }
    dot_portable
}

/// Sum over blocks of `ws[b] * xs[b] * (wq[b] · xq[b])`.
fn dot_portable(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    wq.chunks_exact(BLOCK)
        .zip(xq.chunks_exact(BLOCK))
        .zip(ws.iter().zip(xs))
        .map(|((w, x), (dw, dx))| {
            let dot: i32 = w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum();
            dw * dx * dot as f32
        })
        .sum()
}

/// One block per step: |w| times x with w's sign (`maddubs` multiplies unsigned by signed
/// bytes), pairs summed to i32, scaled by both block scales into an f32 accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = ws
        .len()
        .min(xs.len())
        .min(wq.len() / BLOCK)
        .min(xq.len() / BLOCK);
    // SAFETY: block `b` reads bytes `b * 32 .. b * 32 + 32` of both quant slices, within
    // `blocks * 32`, and scale `b` of both scale slices.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let block = |b: usize, acc: __m256| {
            let w = _mm256_loadu_si256(wq.as_ptr().add(b * BLOCK) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK) as *const __m256i);
            let products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
            let scale = _mm256_set1_ps(*ws.get_unchecked(b) * *xs.get_unchecked(b));
            _mm256_fmadd_ps(scale, sums, acc)
        };
        // Four accumulators, so consecutive blocks do not wait on each other's fmadd.
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut b = 0;
        while b + 4 <= blocks {
            for (lane, a) in acc.iter_mut().enumerate() {
                *a = block(b + lane, *a);
            }
            b += 4;
        }
        while b < blocks {
            acc[0] = block(b, acc[0]);
            b += 1;
        }
        let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let v = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_core::quantized::QMatMul;

    #[test]
    fn matches_candles_q8_0_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 96), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8Weight::from_qtensor(&q).unwrap().unwrap();
        let theirs = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 5] {
            let x = Tensor::randn(0f32, 1.0, (m, 96), &dev).unwrap();
            let a = ours.matmul(&x).unwrap();
            let b = candle_core::Module::forward(&theirs, &x).unwrap();
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "m={m}: {diff}");
        }
        let xq = quantize_rows(&[0.5; 64]);
        let wq = vec![3i8; 64];
        let ws = [2.0f32; 2];
        let expected = dot_portable(&wq, &ws, &xq.quants, &xq.scales);
        assert!((dot_fn()(&wq, &ws, &xq.quants, &xq.scales) - expected).abs() < 1e-3);
        let other = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(Q8Weight::from_qtensor(&other).unwrap().is_none());
    }
}
