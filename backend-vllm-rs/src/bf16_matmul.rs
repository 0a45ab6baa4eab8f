//! `x · Wᵀ` for bf16 weights and f32 activations on the CPU.
//!
//! candle widens both operands of a bf16 matmul to f32 on every call, which for a decode step
//! (a handful of rows) reads each weight once and writes and re-reads it twice as wide: about
//! three times the memory traffic the step needs. Here each weight row is read once, widened
//! in registers (a bf16 is the top half of an f32) and dotted with every activation row, the
//! rows split over rayon's threads. The inner loop is compiled three times (AVX-512, AVX2+FMA,
//! baseline) and picked at run time, so nothing shipped needs `target-cpu=native`.
//!
//! Prefill (many rows) is compute-bound, and there widening the weight once per call is
//! cheap next to the matmul: it goes through candle.
use candle_core::{DType, Result, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

/// Activation rows up to which the row-streaming kernel is used.
const MAX_STREAMED_ROWS: usize = 16;
/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 64;
/// Lanes of the accumulators: one AVX-512 register of f32, two AVX2 ones.
const LANES: usize = 16;

/// `x · wᵀ`: `x` is `(m, k)` f32, `w` is `(n, k)` bf16; returns `(m, n)` f32.
pub fn matmul(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let (m, xk) = x.dims2()?;
    if xk != k {
        candle_core::bail!("bf16 matmul: x has {xk} columns, the weight {k}");
    }
    if m > MAX_STREAMED_ROWS || !w.device().is_cpu() || !w.is_contiguous() {
        return x.matmul(&w.to_dtype(DType::F32)?.t()?);
    }
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("bf16 matmul: the weight is not in CPU memory");
    };
    let all: &[bf16] = cpu.as_slice()?;
    let weights = &all[layout.start_offset()..layout.start_offset() + n * k];
    let mut out = vec![0f32; m * n];
    let dot = dot_fn();
    // Output is (m, n) row-major; tasks own blocks of weight rows, so they write columns.
    // Collect per-task blocks laid out (rows, m) and scatter after.
    let blocks: Vec<(usize, Vec<f32>)> = weights
        .par_chunks(ROWS_PER_TASK * k)
        .enumerate()
        .map(|(task, rows)| {
            let count = rows.len() / k;
            let mut block = vec![0f32; count * m];
            for (r, row) in rows.chunks_exact(k).enumerate() {
                for (i, xrow) in xs.chunks_exact(k).enumerate() {
                    block[r * m + i] = dot(row, xrow);
                }
            }
            (task * ROWS_PER_TASK, block)
        })
        .collect();
    for (first, block) in blocks {
        for (r, values) in block.chunks_exact(m).enumerate() {
            for (i, v) in values.iter().enumerate() {
                out[i * n + first + r] = *v;
            }
        }
    }
    drop(storage);
    Tensor::from_vec(out, (m, n), w.device())
}

type DotFn = fn(&[bf16], &[f32]) -> f32;

/// The fastest dot product this CPU runs.
fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return |w, x| unsafe { dot_avx512(w, x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return |w, x| unsafe { dot_avx2(w, x) };
        }
    }
    dot_portable
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(w: &[bf16], x: &[f32]) -> f32 {
    dot_lanes(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(w: &[bf16], x: &[f32]) -> f32 {
    dot_lanes(w, x)
}

fn dot_portable(w: &[bf16], x: &[f32]) -> f32 {
    dot_lanes(w, x)
}

/// The dot product with [`LANES`] independent accumulators, a shape the compiler turns into
/// vector code for whatever features the caller enables.
#[inline(always)]
fn dot_lanes(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (w_body, w_tail) = w.split_at(w.len() / LANES * LANES);
    let (x_body, x_tail) = x.split_at(w_body.len());
    for (wc, xc) in w_body.chunks_exact(LANES).zip(x_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += widen(wc[l]) * xc[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (a, b) in w_tail.iter().zip(x_tail) {
        sum += widen(*a) * b;
    }
    sum
}

/// A bf16 as f32: its bits are the f32's upper half.
#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_for_decode_and_prefill_shapes() {
        let dev = Device::Cpu;
        // k not a multiple of the lanes, n not a multiple of the task size.
        let w = Tensor::randn(0f32, 1.0, (200, 77), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let reference_w = w.to_dtype(DType::F32).unwrap();
        for m in [1, 3, MAX_STREAMED_ROWS, MAX_STREAMED_ROWS + 1] {
            let x = Tensor::randn(0f32, 1.0, (m, 77), &dev).unwrap();
            let ours = matmul(&w, &x).unwrap();
            let expected = x.matmul(&reference_w.t().unwrap()).unwrap();
            let diff = (ours - expected)
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
        let bad = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        assert!(matmul(&w, &bad).is_err());
    }
}
