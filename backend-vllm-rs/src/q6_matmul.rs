//! `x · Wᵀ` for Q6_K weights on the CPU.
//!
//! candle keeps a second, repacked copy of every Q6_K weight it multiplies on x86 (its tile
//! layout, made at the first matmul of more than one row). Here the weight is unpacked once, at
//! load, to one unsigned byte per value (`q` in 0..64, standing for `scale * (q - 32)`) and a
//! scale per 16 values (the super-block's `d` times the sub-block's signed 8-bit scale, in f32
//! as ggml's dequantization multiplies them). The bytes go to AVX-512 VNNI's `vpdpbusd` or
//! AVX2's `maddubs` against the activations' signed bytes as they are; the `- 32` is taken off
//! once per sub-block against sums made once per activation row. Activations are quantized per
//! 32 as for Q8_0. Each weight row serves up to four activation rows per pass.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;

#[cfg(target_arch = "x86_64")]
use crate::isa::hsum256;
use crate::isa::{TILE, for_tiles, pick, weighted_sum};
use crate::q8_rows::{Acts, BLOCK, Q8Rows};
use crate::row_parallel::for_each_row;

/// Values per scale.
const SUB: usize = 16;
/// Values in a Q6_K super-block.
const SUPER: usize = 256;
/// Bytes of a Q6_K super-block: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed
/// scales, f16 d.
const Q6_K_BYTES: usize = 210;
/// The zero point of the unsigned 6-bit values.
const ZERO: f32 = 32.0;

/// A Q6_K weight matrix, `(rows, cols)`, unpacked.
#[derive(Debug)]
pub struct Q6Weight {
    rows: usize,
    cols: usize,
    /// `rows * cols / 16` scales.
    scales: Vec<f32>,
    /// `rows * cols` values in 0..64.
    quants: Vec<u8>,
}

impl Q6Weight {
    /// The weight of a Q6_K tensor; `None` for other types.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        if t.dtype() != GgmlDType::Q6K {
            return Ok(None);
        }
        let (rows, cols) = t.shape().dims2()?;
        let data = t.data()?;
        let supers = rows * cols / SUPER;
        if !cols.is_multiple_of(SUPER) || data.len() != supers * Q6_K_BYTES {
            candle_core::bail!(
                "Q6_K tensor: {} bytes for {rows} rows of {cols} values",
                data.len()
            );
        }
        let mut w = Q6Weight {
            rows,
            cols,
            scales: Vec::with_capacity(rows * cols / SUB),
            quants: Vec::with_capacity(rows * cols),
        };
        for b in data.chunks_exact(Q6_K_BYTES) {
            let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
            w.scales
                .extend(b[192..208].iter().map(|&sc| d * sc as i8 as f32));
            let mut q = [0u8; SUPER];
            // ggml's `dequantize_row_q6_K`: each half of 128 values takes 64 bytes of low
            // nibbles and 32 of high bit pairs.
            for half in 0..2 {
                let ql = &b[64 * half..][..64];
                let qh = &b[128 + 32 * half..][..32];
                let y = &mut q[128 * half..][..128];
                for l in 0..32 {
                    y[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            w.quants.extend_from_slice(&q);
        }
        Ok(Some(w))
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        (self.scales.len() * 4 + self.quants.len()) as u64
    }

    /// `x · Wᵀ`: `x` is `(m, cols)` f32; returns `(m, rows)` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("Q6_K matmul: x has {k} columns, the weight {}", self.cols);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let xq = Q8Rows::quantize(&xs);
        let acts = Acts {
            quants: &xq.quants,
            scales: &xq.scales,
            sums: &xq.sums(SUB),
            cols: k,
        };
        let row_fn = row_fn();
        let subs = k / SUB;
        let out = for_each_row(self.rows, m, |r, out| {
            let row = Row {
                quants: &self.quants[r * k..][..k],
                scales: &self.scales[r * subs..][..subs],
            };
            row_fn(&row, &acts, out);
        });
        Tensor::from_vec(out, (m, self.rows), x.device())
    }
}

/// One weight row.
struct Row<'a> {
    quants: &'a [u8],
    scales: &'a [f32],
}

/// Writes `out[i]` = weight row · activation row `i`, for every activation row.
type RowFn = fn(&Row<'_>, &Acts<'_>, &mut [f32]);

/// The fastest kernel this CPU runs.
#[cfg(target_arch = "x86_64")]
fn row_fn() -> RowFn {
    // SAFETY: `pick` returns this form only on a CPU with AVX-512 VNNI.
    let vnni: RowFn = |w, x, out| unsafe { row_avx512_vnni(w, x, out) };
    // SAFETY: `pick` returns this form only on a CPU with AVX2 and FMA.
    let avx2: RowFn = |w, x, out| unsafe { row_avx2(w, x, out) };
    pick(vnni, avx2, row_portable)
}

/// The only kernel elsewhere.
#[cfg(not(target_arch = "x86_64"))]
fn row_fn() -> RowFn {
    row_portable
}

/// The zero point's share of row `i`: `-32 Σ scale[j] * sums[j]`.
#[inline(always)]
fn zero_point_dot(w: &Row<'_>, x: &Acts<'_>, i: usize) -> f32 {
    let subs = w.scales.len();
    -ZERO * weighted_sum(w.scales, &x.sums[i * subs..][..subs])
}

fn row_portable(w: &Row<'_>, x: &Acts<'_>, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate().take(x.rows()) {
        let xq = &x.quants[i * x.cols..][..x.cols];
        let xs = &x.scales[i * x.cols / BLOCK..][..x.cols / BLOCK];
        let mut sum = 0f32;
        for (j, (wq, xq)) in w
            .quants
            .chunks_exact(SUB)
            .zip(xq.chunks_exact(SUB))
            .enumerate()
        {
            let dot: i32 = wq.iter().zip(xq).map(|(&a, &b)| a as i32 * b as i32).sum();
            sum += w.scales[j] * xs[j * SUB / BLOCK] * dot as f32;
        }
        *o = sum + zero_point_dot(w, x, i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(w: &Row<'_>, x: &Acts<'_>, out: &mut [f32]) {
    for_tiles(out, x.rows(), |i, out| match out.len() {
        TILE => tile_avx2::<TILE>(w, x, i, out),
        _ => tile_avx2::<1>(w, x, i, out),
    });
}

/// Activation rows `first..first + N` against one weight row, 32 values per step: `maddubs`
/// (unsigned weight times signed activation bytes), pairs summed to i32 (lanes 0-3 the first
/// 16 values, 4-7 the next), each half scaled by its own weight scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2<const N: usize>(w: &Row<'_>, x: &Acts<'_>, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = x.cols / BLOCK;
    // SAFETY: block `b` reads weight bytes `32b..32b + 32` and scales `2b`, `2b + 1` of the
    // row (`cols / 16` of them), and of each activation row `i` (`first + N <= rows`) bytes
    // `32b..32b + 32` of its `cols` and its scale `b`.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let wv = _mm256_loadu_si256(w.quants.as_ptr().add(BLOCK * b) as *const __m256i);
            let ws = _mm256_set_m128(
                _mm_set1_ps(*w.scales.get_unchecked(2 * b + 1)),
                _mm_set1_ps(*w.scales.get_unchecked(2 * b)),
            );
            for (n, a) in acc.iter_mut().enumerate() {
                let i = first + n;
                let xq = x.quants.as_ptr().add(i * x.cols + BLOCK * b);
                let xv = _mm256_loadu_si256(xq as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                let scale =
                    _mm256_mul_ps(ws, _mm256_set1_ps(*x.scales.get_unchecked(i * blocks + b)));
                *a = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *a);
            }
        }
        for (n, a) in acc.iter().enumerate() {
            let v = hsum256(*a);
            out[n] = v + zero_point_dot(w, x, first + n);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn row_avx512_vnni(w: &Row<'_>, x: &Acts<'_>, out: &mut [f32]) {
    for_tiles(out, x.rows(), |i, out| match out.len() {
        TILE => tile_avx512_vnni::<TILE>(w, x, i, out),
        _ => tile_avx512_vnni::<1>(w, x, i, out),
    });
}

/// As [`tile_avx2`], 64 values per step: `vpdpbusd` gives four lanes per 16 values, scaled by
/// the four weight scales spread over their lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_avx512_vnni<const N: usize>(w: &Row<'_>, x: &Acts<'_>, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let groups = x.cols / 64;
    let blocks = x.cols / BLOCK;
    // SAFETY: group `g` reads weight bytes `64g..64g + 64` and scales `4g..4g + 4` of the row,
    // and of each activation row `i` (`first + N <= rows`) bytes `64g..64g + 64` and scales
    // `2g`, `2g + 1`; `cols` is a multiple of 256.
    unsafe {
        let zero = _mm512_setzero_si512();
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); N];
        for g in 0..groups {
            let wv = _mm512_loadu_si512(w.quants.as_ptr().add(64 * g) as *const __m512i);
            let ws4 = _mm_loadu_ps(w.scales.as_ptr().add(4 * g));
            let ws = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(ws4));
            for (n, a) in acc.iter_mut().enumerate() {
                let i = first + n;
                let xq = x.quants.as_ptr().add(i * x.cols + 64 * g);
                let xs = x.scales.as_ptr().add(i * blocks + 2 * g);
                let dot = _mm512_dpbusd_epi32(zero, wv, _mm512_loadu_si512(xq as *const __m512i));
                let scale = _mm512_mul_ps(
                    ws,
                    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(*xs), _mm512_set1_ps(*xs.add(1))),
                );
                *a = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), *a);
            }
        }
        for (n, a) in acc.iter().enumerate() {
            out[n] = _mm512_reduce_add_ps(*a) + zero_point_dot(w, x, first + n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::testing::{assert_agree, has_avx2};
    use candle_core::Device;

    #[test]
    fn q6_k_matches_its_dequantized_weights() {
        let dev = Device::Cpu;
        let (rows, cols) = (21, 768);
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q6K).unwrap();
        let ours = Q6Weight::from_qtensor(&q).unwrap().unwrap();
        let exact = q.dequantize(&dev).unwrap();
        for m in [1, 4, 7] {
            let x = Tensor::randn(0f32, 1.0, (m, cols), &dev).unwrap();
            let got = ours.matmul(&x).unwrap();
            // Exactly what the kernel multiplies, in f32: the weight's values and the
            // activations as quantized.
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let xq = Q8Rows::quantize_padded(&xs, cols, cols);
            let xd = Tensor::from_vec(xq.dequantize(cols, cols), (m, cols), &dev).unwrap();
            let expected = xd.matmul(&exact.t().unwrap()).unwrap();
            let diff = crate::row_parallel::tests::max_abs_diff(&got, &expected);
            assert!(diff < 1e-3, "m={m}: {diff}");
            // Every kernel this CPU runs gives what the portable one gives.
            let sums = xq.sums(SUB);
            let acts = Acts {
                quants: &xq.quants,
                scales: &xq.scales,
                sums: &sums,
                cols,
            };
            for r in [0, rows - 1] {
                let row = Row {
                    quants: &ours.quants[r * cols..][..cols],
                    scales: &ours.scales[r * cols / SUB..][..cols / SUB],
                };
                let run = |f: RowFn| {
                    let mut out = vec![0f32; m];
                    f(&row, &acts, &mut out);
                    out
                };
                let mut results = vec![("portable", run(row_portable)), ("fastest", run(row_fn()))];
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: this CPU has AVX2 and FMA (checked just above).
                    results.push(("avx2", run(|w, x, out| unsafe { row_avx2(w, x, out) })));
                }
                assert_agree(&results);
            }
        }
        let other = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(Q6Weight::from_qtensor(&other).unwrap().is_none());
    }
}
