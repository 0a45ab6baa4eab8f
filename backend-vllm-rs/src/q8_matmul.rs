//! `x · Wᵀ` for Q8_0 weights (and Q5_0, re-encoded as Q8_0 at load) on the CPU.
//!
//! candle's Q8_0 kernel converts each block's f16 scale through a function call inside the
//! dot product, which costs more than the block's 32 multiply-adds. Here the scales are
//! widened to f32 once, at load, and the quants kept as one contiguous i8 matrix. Activations
//! are quantized per 32-block as ggml does (scale = max |x| / 127), and each block's integer
//! dot product is done with AVX-512 VNNI's or AVX2's byte multiply-adds (picked at run time; a
//! portable loop elsewhere), weight rows split over the worker's CPU pool.
//!
//! A batch of at least [`TILE`] activation rows (batched decode, prefill) takes a tiled
//! kernel on AVX-512 VNNI: two weight rows against four activation rows a pass, so each
//! weight load serves four rows and each activation load two, the next rows' weights
//! prefetched. It gives every output bit for bit what the one-row kernel gives (see
//! [`tile_avx512_vnni`]), so a sequence's logits still do not depend on the batch it is in.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;

#[cfg(target_arch = "x86_64")]
use crate::isa::{TILE, act_tiles, hsum256, pick};
use crate::q8_rows::{BLOCK, Q8Rows};
use crate::row_parallel::for_each_row;
#[cfg(target_arch = "x86_64")]
use crate::row_parallel::for_each_rows;

/// Bytes of a Q8_0 block: f16 scale, 32 signed bytes.
const BLOCK_BYTES: usize = 34;

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
        let xq = Q8Rows::quantize(&xs);
        let blocks = k / BLOCK;
        #[cfg(target_arch = "x86_64")]
        if let Some(tiled) = tiled_fn().filter(|_| m >= TILE) {
            let offsets = lane_offsets(&xq.quants);
            let acts = QuantRows {
                quants: &xq.quants,
                scales: &xq.scales,
                cols: k,
            };
            let out = for_each_rows(self.rows, ROWS, m, |r, out| {
                let n = out.len() / m;
                let rows = QuantRows {
                    quants: &self.quants[r * k..][..n * k],
                    scales: &self.scales[r * blocks..][..n * blocks],
                    cols: k,
                };
                tiled(&rows, &acts, &offsets, out);
            });
            return Tensor::from_vec(out, (m, self.rows), x.device());
        }
        let dot = dot_fn();
        let out = for_each_row(self.rows, m, |r, out| {
            let (row_q, row_s) = (
                &self.quants[r * k..][..k],
                &self.scales[r * blocks..][..blocks],
            );
            for (i, o) in out.iter_mut().enumerate() {
                *o = dot(
                    row_q,
                    row_s,
                    &xq.quants[i * k..][..k],
                    &xq.scales[i * blocks..][..blocks],
                );
            }
        });
        Tensor::from_vec(out, (m, self.rows), x.device())
    }
}

/// Weight rows one pass of the tiled kernel serves (each against up to [`TILE`] activation
/// rows).
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 2;

/// -128 times the sum of every run of four quants. `vpdpbusd` sums the products of four
/// unsigned and four signed bytes into each i32 lane; the tiled kernel's weights go in offset
/// by 128, so a lane that starts from this value ends with the products of the weights
/// themselves.
#[cfg(target_arch = "x86_64")]
fn lane_offsets(quants: &[i8]) -> Vec<i32> {
    quants
        .chunks_exact(4)
        .map(|q| -128 * q.iter().map(|&v| v as i32).sum::<i32>())
        .collect()
}

/// Consecutive rows of quants and their block scales, as the tiled kernel reads them: up to
/// [`ROWS`] weight rows, or the quantized activation rows.
#[cfg(target_arch = "x86_64")]
struct QuantRows<'a> {
    /// `count * cols` quants.
    quants: &'a [i8],
    /// `count * cols / 32` scales.
    scales: &'a [f32],
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
impl QuantRows<'_> {
    fn count(&self) -> usize {
        self.quants.len() / self.cols
    }
}

/// Writes `out[r * m + i]` = weight row `r` · activation row `i`, for every weight row and
/// every one of the `m` activation rows, given the activations' [`lane_offsets`].
#[cfg(target_arch = "x86_64")]
type TiledFn = fn(&QuantRows<'_>, &QuantRows<'_>, &[i32], &mut [f32]);

/// The tiled kernel, on a CPU that has one.
#[cfg(target_arch = "x86_64")]
fn tiled_fn() -> Option<TiledFn> {
    // SAFETY: `pick` returns this form only on a CPU with AVX-512 VNNI.
    let vnni: TiledFn = |w, x, offsets, out| unsafe { rows_avx512_vnni(w, x, offsets, out) };
    pick(Some(vnni), None, None)
}

type DotFn = fn(&[i8], &[f32], &[i8], &[f32]) -> f32;

/// The fastest block dot product this CPU runs.
#[cfg(target_arch = "x86_64")]
fn dot_fn() -> DotFn {
    // SAFETY: `pick` returns this form only on a CPU with AVX-512 VNNI.
    let vnni: DotFn = |wq, ws, xq, xs| unsafe { dot_avx512_vnni(wq, ws, xq, xs) };
    // SAFETY: `pick` returns this form only on a CPU with AVX2 and FMA.
    let avx2: DotFn = |wq, ws, xq, xs| unsafe { dot_avx2(wq, ws, xq, xs) };
    pick(vnni, avx2, dot_portable)
}

/// The only dot product elsewhere.
#[cfg(not(target_arch = "x86_64"))]
fn dot_fn() -> DotFn {
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
        hsum256(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// Two blocks per step: `vpdpbusd` multiplies unsigned by signed bytes and sums groups of
/// four into i32 lanes (lanes 0-7 the first block, 8-15 the second), so x goes in as |x| and
/// its sign moves onto w.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_avx512_vnni(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = ws
        .len()
        .min(xs.len())
        .min(wq.len() / BLOCK)
        .min(xq.len() / BLOCK);
    let pairs = blocks / 2;
    // SAFETY: pair `p` reads bytes `p * 64 .. p * 64 + 64` of both quant slices and scales
    // `2p`, `2p + 1`, all within `blocks`.
    let mut sum = unsafe {
        let zero = _mm512_setzero_si512();
        let pair = |p: usize, acc: __m512| {
            let w = _mm512_loadu_si512(wq.as_ptr().add(p * 2 * BLOCK) as *const __m512i);
            let x = _mm512_loadu_si512(xq.as_ptr().add(p * 2 * BLOCK) as *const __m512i);
            let w_signed = _mm512_mask_sub_epi8(w, _mm512_movepi8_mask(x), zero, w);
            let dot = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(x), w_signed);
            let s0 = *ws.get_unchecked(2 * p) * *xs.get_unchecked(2 * p);
            let s1 = *ws.get_unchecked(2 * p + 1) * *xs.get_unchecked(2 * p + 1);
            let scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
            _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc)
        };
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut p = 0;
        while p + 2 <= pairs {
            a0 = pair(p, a0);
            a1 = pair(p + 1, a1);
            p += 2;
        }
        if p < pairs {
            a0 = pair(p, a0);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    };
    if blocks % 2 == 1 {
        let b = blocks - 1;
        sum += dot_portable(
            &wq[b * BLOCK..][..BLOCK],
            &ws[b..b + 1],
            &xq[b * BLOCK..][..BLOCK],
            &xs[b..b + 1],
        );
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn rows_avx512_vnni(w: &QuantRows<'_>, x: &QuantRows<'_>, offsets: &[i32], out: &mut [f32]) {
    act_tiles(x.count(), |first, n| match (w.count(), n) {
        (ROWS, TILE) => tile_avx512_vnni::<ROWS, TILE>(w, x, offsets, first, out),
        (ROWS, _) => tile_avx512_vnni::<ROWS, 1>(w, x, offsets, first, out),
        (_, TILE) => tile_avx512_vnni::<1, TILE>(w, x, offsets, first, out),
        _ => tile_avx512_vnni::<1, 1>(w, x, offsets, first, out),
    });
}

/// `R` weight rows against activation rows `first..first + N`: each weight pair of blocks
/// loaded once for the `N` activation rows, each activation pair once for the `R` weight
/// rows. Bit for bit what [`dot_avx512_vnni`] gives for each output: `vpdpbusd` multiplies
/// unsigned by signed bytes, and here the weights go in offset by 128 (a flip of their top
/// bit) with each lane starting from what takes the offset off again ([`lane_offsets`]), so
/// the lanes hold the same exact integer sums as its sign trick gives; the scales, the
/// even/odd accumulators and the odd last block follow it step by step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_avx512_vnni<const R: usize, const N: usize>(
    w: &QuantRows<'_>,
    x: &QuantRows<'_>,
    offsets: &[i32],
    first: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let m = x.count();
    let blocks = w.cols / BLOCK;
    let pairs = blocks / 2;
    // SAFETY: pair `p < pairs` reads bytes `64p..64p + 64` and scales `2p`, `2p + 1` of each
    // of the `R` weight rows (`R <= count`), and of each activation row `first + n < m` the
    // same and lane offsets `16p..16p + 16`.
    unsafe {
        let zero = _mm512_setzero_si512();
        let flip = _mm512_set1_epi8(i8::MIN);
        let spread = |s: *const f32| {
            _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(*s), _mm512_set1_ps(*s.add(1)))
        };
        let mut even = [[_mm512_setzero_ps(); N]; R];
        let mut odd = [[_mm512_setzero_ps(); N]; R];
        macro_rules! pair {
            ($p:expr, $acc:ident) => {{
                let p = $p;
                let mut wv = [zero; R];
                let mut ws = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let at = r * w.cols + 2 * BLOCK * p;
                    // The same bytes of the rows the next pass takes (beyond the last row
                    // the hint reads nothing).
                    _mm_prefetch::<_MM_HINT_T0>(
                        w.quants.as_ptr().wrapping_add(at + R * w.cols).cast(),
                    );
                    let raw = _mm512_loadu_si512(w.quants.as_ptr().add(at).cast());
                    wv[r] = _mm512_xor_si512(raw, flip);
                    ws[r] = spread(w.scales.as_ptr().add(r * blocks + 2 * p));
                }
                for n in 0..N {
                    let i = first + n;
                    let at = i * x.cols + 2 * BLOCK * p;
                    let xv = _mm512_loadu_si512(x.quants.as_ptr().add(at).cast());
                    let start = _mm512_loadu_si512(offsets.as_ptr().add(at / 4).cast());
                    let xs = spread(x.scales.as_ptr().add(i * blocks + 2 * p));
                    for r in 0..R {
                        let dot = _mm512_dpbusd_epi32(start, wv[r], xv);
                        // Lane by lane the product the sign-trick kernel forms in scalars.
                        $acc[r][n] = _mm512_fmadd_ps(
                            _mm512_mul_ps(ws[r], xs),
                            _mm512_cvtepi32_ps(dot),
                            $acc[r][n],
                        );
                    }
                }
            }};
        }
        let mut p = 0;
        while p + 2 <= pairs {
            pair!(p, even);
            pair!(p + 1, odd);
            p += 2;
        }
        if p < pairs {
            pair!(p, even);
        }
        for (r, (even, odd)) in even.iter().zip(&odd).enumerate() {
            for (n, (e, o)) in even.iter().zip(odd).enumerate() {
                let i = first + n;
                let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(*e, *o));
                if blocks % 2 == 1 {
                    let b = blocks - 1;
                    sum += dot_portable(
                        &w.quants[r * w.cols + b * BLOCK..][..BLOCK],
                        &w.scales[r * blocks + b..][..1],
                        &x.quants[i * x.cols + b * BLOCK..][..BLOCK],
                        &x.scales[i * blocks + b..][..1],
                    );
                }
                out[r * m + i] = sum;
            }
        }
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
            let diff = crate::row_parallel::tests::max_abs_diff(&a, &b);
            assert!(diff < 1e-3, "m={m}: {diff}");
        }
        // Every kernel this CPU runs agrees with the portable one, odd block counts included.
        let xv: Vec<f32> = (0..160).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let xq = Q8Rows::quantize(&xv);
        let wq: Vec<i8> = (0..160)
            .map(|i| ((i * 37) % 255) as i8)
            .map(|v| v.max(-127))
            .collect();
        let ws: Vec<f32> = (0..5).map(|b| 0.01 * (b + 1) as f32).collect();
        let expected = dot_portable(&wq, &ws, &xq.quants, &xq.scales);
        assert!((dot_fn()(&wq, &ws, &xq.quants, &xq.scales) - expected).abs() < 1e-3);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA were detected just above.
            let avx2 = unsafe { dot_avx2(&wq, &ws, &xq.quants, &xq.scales) };
            assert!((avx2 - expected).abs() < 1e-3, "{avx2} {expected}");
        }
        let other = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(Q8Weight::from_qtensor(&other).unwrap().is_none());
    }

    /// The per-row products of the batched path, for `m` activation rows.
    fn by_dot(w: &Q8Weight, xq: &Q8Rows, m: usize) -> Vec<f32> {
        let (k, blocks) = (w.cols, w.cols / BLOCK);
        let mut out = vec![0f32; m * w.rows];
        for r in 0..w.rows {
            for i in 0..m {
                out[i * w.rows + r] = dot_fn()(
                    &w.quants[r * k..][..k],
                    &w.scales[r * blocks..][..blocks],
                    &xq.quants[i * k..][..k],
                    &xq.scales[i * blocks..][..blocks],
                );
            }
        }
        out
    }

    /// A batch of at least a tile takes the tiled kernel where the CPU has it, and every
    /// output is bit for bit what the one-row kernel gives: a row's result does not depend on
    /// the batch it is in. Odd numbers of weight rows, of blocks and of activation rows.
    #[test]
    fn batches_give_each_row_what_it_gets_alone() {
        let dev = Device::Cpu;
        for cols in [96, 160, 896] {
            let w = Tensor::randn(0f32, 1.0, (37, cols), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let ours = Q8Weight::from_qtensor(&q).unwrap().unwrap();
            for m in [4, 5, 8, 9] {
                let x = Tensor::randn(0f32, 1.0, (m, cols), &dev).unwrap();
                let got: Vec<f32> = ours
                    .matmul(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let expected = by_dot(&ours, &Q8Rows::quantize(&xs), m);
                for (j, (a, b)) in got.iter().zip(&expected).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "cols {cols}, m {m}, output {j}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
