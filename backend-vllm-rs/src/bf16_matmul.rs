//! `x · Wᵀ` for bf16 weights and f32 activations on the CPU.
//!
//! candle widens both operands of a bf16 matmul to f32 on every call, which for a decode step
//! (a handful of rows) reads each weight once and writes and re-reads it twice as wide: about
//! three times the memory traffic the step needs. Here each weight row is read once, widened
//! in registers (a bf16 is the top half of an f32) and dotted with every activation row, the
//! rows split over the worker's CPU pool. The dot product exists for AVX-512, AVX2+FMA and plain
//! x86-64, picked at run time, so nothing shipped needs `target-cpu=native`.
//!
//! Prefill (many rows) is compute-bound, and there widening the weight once per call is
//! cheap next to the matmul: it goes through candle.
use candle_core::{DType, Result, Storage, Tensor};
use half::bf16;

use crate::row_parallel::for_each_row;

/// Activation rows up to which the row-streaming kernel is used.
const MAX_STREAMED_ROWS: usize = 16;

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
    let dot = dot_fn();
    let out = for_each_row(n, m, |r, out| {
        let row = &weights[r * k..][..k];
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot(row, &xs[i * k..][..k]);
        }
    });
    drop(storage);
    Tensor::from_vec(out, (m, n), w.device())
}

type DotFn = fn(&[bf16], &[f32]) -> f32;

/// The fastest dot product this CPU runs.
fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the features the function enables were detected on this CPU just above.
            return |w, x| unsafe { dot_avx512(w, x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the function enables were detected on this CPU just above.
            return |w, x| unsafe { dot_avx2(w, x) };
        }
    }
    dot_portable
}

/// 32 products per step in two AVX-512 accumulators; bf16 widened by a 16-bit shift.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(w: &[bf16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let body = n / 32 * 32;
    let (wp, xp) = (w.as_ptr() as *const __m256i, x.as_ptr());
    // SAFETY: every load reads 16 bf16 / 16 f32 below `body`, which is within both slices.
    let mut sum = unsafe {
        let widen = |p: *const __m256i| {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p),
            )))
        };
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i < body {
            a0 = _mm512_fmadd_ps(widen(wp.add(i / 16)), _mm512_loadu_ps(xp.add(i)), a0);
            a1 = _mm512_fmadd_ps(
                widen(wp.add(i / 16 + 1)),
                _mm512_loadu_ps(xp.add(i + 16)),
                a1,
            );
            i += 32;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    };
    for (a, b) in w[body..n].iter().zip(&x[body..n]) {
        sum += widen(*a) * b;
    }
    sum
}

/// 16 products per step in two AVX2 accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(w: &[bf16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let body = n / 16 * 16;
    let (wp, xp) = (w.as_ptr() as *const __m128i, x.as_ptr());
    // SAFETY: every load reads 8 bf16 / 8 f32 below `body`, which is within both slices.
    let mut sum = unsafe {
        let widen = |p: *const __m128i| {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p),
            )))
        };
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < body {
            a0 = _mm256_fmadd_ps(widen(wp.add(i / 8)), _mm256_loadu_ps(xp.add(i)), a0);
            a1 = _mm256_fmadd_ps(widen(wp.add(i / 8 + 1)), _mm256_loadu_ps(xp.add(i + 8)), a1);
            i += 16;
        }
        let v = _mm256_add_ps(a0, a1);
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
    };
    for (a, b) in w[body..n].iter().zip(&x[body..n]) {
        sum += widen(*a) * b;
    }
    sum
}

/// The portable dot product, for CPUs without AVX2.
fn dot_portable(w: &[bf16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| widen(*a) * b).sum()
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
            let diff = crate::row_parallel::tests::max_abs_diff(&ours, &expected);
            assert!(diff < 1e-3, "m={m}: {diff}");
        }
        // Every kernel this CPU runs gives the portable result.
        let wv: Vec<bf16> = (0..77)
            .map(|i| bf16::from_f32(i as f32 / 7.0 - 5.0))
            .collect();
        let xv: Vec<f32> = (0..77).map(|i| (i as f32).sin()).collect();
        let expected = dot_portable(&wv, &xv);
        assert!((dot_fn()(&wv, &xv) - expected).abs() < 1e-3);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA were detected just above.
            let avx2 = unsafe { dot_avx2(&wv, &xv) };
            assert!((avx2 - expected).abs() < 1e-3);
        }
        let bad = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        assert!(matmul(&w, &bad).is_err());
    }
}
