//! Activation rows quantized to signed bytes per block of 32 values, as ggml's
//! `quantize_row_q8_0` does, for the integer matmul kernels.

/// Values per block.
pub const BLOCK: usize = 32;

/// Rows of whole blocks: `scales[b]` (f16-rounded, as ggml stores them) times
/// `quants[b * 32..][..32]` approximates block `b`.
pub struct Q8Rows {
    /// One scale per block.
    pub scales: Vec<f32>,
    /// 32 quants per block.
    pub quants: Vec<i8>,
}

impl Q8Rows {
    /// Quantizes `xs` (a whole number of blocks) with scale `max |x| / 127` per block.
    pub fn quantize(xs: &[f32]) -> Q8Rows {
        quantize_fn()(xs)
    }

    /// `(m, cols)` rows, each zero-padded to `padded` values first (`padded` >= `cols`, both
    /// whole blocks when padded).
    pub fn quantize_padded(xs: &[f32], cols: usize, padded: usize) -> Q8Rows {
        if cols == padded {
            return Q8Rows::quantize(xs);
        }
        let mut wide = Vec::with_capacity(xs.len() / cols.max(1) * padded);
        for row in xs.chunks_exact(cols) {
            wide.extend_from_slice(row);
            wide.resize(wide.len() + padded - cols, 0.0);
        }
        Q8Rows::quantize(&wide)
    }

    /// For every run of `per` values (16 or 32), its scale times the sum of its quants: what
    /// a weight offset shared by those values multiplies.
    pub fn sums(&self, per: usize) -> Vec<f32> {
        self.quants
            .chunks_exact(per)
            .enumerate()
            .map(|(i, q)| {
                let sum: i32 = q.iter().map(|&v| v as i32).sum();
                self.scales[i * per / BLOCK] * sum as f32
            })
            .collect()
    }

    /// The values the quants stand for, `cols` of each `padded`-value row (for tests that
    /// compare a kernel with an f32 matmul of exactly what it multiplies).
    #[cfg(test)]
    pub fn dequantize(&self, cols: usize, padded: usize) -> Vec<f32> {
        self.quants
            .chunks_exact(padded)
            .enumerate()
            .flat_map(|(r, row)| {
                let scales = &self.scales[r * padded / BLOCK..];
                row[..cols]
                    .iter()
                    .enumerate()
                    .map(move |(j, &q)| scales[j / BLOCK] * q as f32)
            })
            .collect()
    }
}

/// [`Q8Rows::quantize`] in the form this CPU runs fastest: it is on the forward pass's
/// critical path (every matmul's input, while the CPU pool waits), and the portable form
/// rounds and converts one value at a time.
fn quantize_fn() -> fn(&[f32]) -> Q8Rows {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `pick` returns this form only on a CPU with AVX-512.
        let avx512: fn(&[f32]) -> Q8Rows = |xs| unsafe { quantize_avx512(xs) };
        // SAFETY: `pick` returns this form only on a CPU with AVX2.
        let avx2: fn(&[f32]) -> Q8Rows = |xs| unsafe { quantize_avx2(xs) };
        crate::isa::pick(avx512, avx2, quantize_portable)
    }
    #[cfg(not(target_arch = "x86_64"))]
    quantize_portable
}

/// Blocks of `xs` with scale `max |x| / 127`, `round_block(block, 1 / scale, quants)`
/// writing each block's quants.
#[inline(always)]
fn quantize_with(xs: &[f32], round_block: impl Fn(&[f32], f32, &mut [i8; BLOCK])) -> Q8Rows {
    let mut scales = Vec::with_capacity(xs.len() / BLOCK);
    let mut quants = Vec::with_capacity(xs.len());
    for block in xs.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        scales.push(half::f16::from_f32(d).to_f32());
        let mut q = [0i8; BLOCK];
        round_block(block, inv, &mut q);
        quants.extend_from_slice(&q);
    }
    Q8Rows { scales, quants }
}

/// Each value times `inv`, rounded half away from zero (`f32::round`).
fn quantize_portable(xs: &[f32]) -> Q8Rows {
    quantize_with(xs, |block, inv, q| {
        for (q, v) in q.iter_mut().zip(block) {
            *q = (v * inv).round() as i8;
        }
    })
}

/// As [`quantize_portable`], 16 values an instruction: rounding half away from zero is
/// truncating `x + copysign(0.49999997, x)` (how LLVM itself lowers `f32::round` on x86);
/// the rounded values are clamped to -128..=127 as `as i8` saturates (they exceed ±127 only
/// where the scale's inverse overflows, in blocks of subnormal values), and NaN, kept by the
/// clamp, converts to `i32::MIN` and so to a 0 byte, as `NaN as i8` is.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn quantize_avx512(xs: &[f32]) -> Q8Rows {
    use std::arch::x86_64::*;
    quantize_with(xs, |block, inv, q| {
        // SAFETY: 16-value halves of a 32-value block and of its 32 quants.
        unsafe {
            let sign = _mm512_set1_epi32(i32::MIN);
            let almost_half = _mm512_castps_si512(_mm512_set1_ps(0.49999997));
            let (low, high) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
            for half in 0..2 {
                let v = _mm512_mul_ps(
                    _mm512_loadu_ps(block.as_ptr().add(16 * half)),
                    _mm512_set1_ps(inv),
                );
                let nudge =
                    _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(v), sign), almost_half);
                let rounded = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                    _mm512_add_ps(v, _mm512_castsi512_ps(nudge)),
                );
                // With NaN second, `min` and `max` return it (x86's rule), as `as i8` maps it to 0.
                let clamped = _mm512_max_ps(low, _mm512_min_ps(high, rounded));
                let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(clamped));
                _mm_storeu_si128(q.as_mut_ptr().add(16 * half).cast(), bytes);
            }
        }
    })
}

/// As [`quantize_avx512`], 8 values an instruction. The converted values are cut to their
/// low byte, as there, rather than packed with saturation, so that NaN's `i32::MIN` gives
/// 0 (every other value is already within -128..=127).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_avx2(xs: &[f32]) -> Q8Rows {
    use std::arch::x86_64::*;
    quantize_with(xs, |block, inv, q| {
        // SAFETY: 8-value quarters of a 32-value block, and its 32 quants.
        unsafe {
            let sign = _mm256_set1_epi32(i32::MIN);
            let almost_half = _mm256_castps_si256(_mm256_set1_ps(0.49999997));
            let (low, high) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
            let mut ints = [_mm256_setzero_si256(); 4];
            for (quarter, ints) in ints.iter_mut().enumerate() {
                let v = _mm256_mul_ps(
                    _mm256_loadu_ps(block.as_ptr().add(8 * quarter)),
                    _mm256_set1_ps(inv),
                );
                let nudge =
                    _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(v), sign), almost_half);
                let rounded = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                    _mm256_add_ps(v, _mm256_castsi256_ps(nudge)),
                );
                let clamped = _mm256_max_ps(low, _mm256_min_ps(high, rounded));
                let converted = _mm256_cvtps_epi32(clamped);
                // NaN's i32::MIN to 0, its low byte, before the saturating packs below.
                *ints = _mm256_andnot_si256(_mm256_cmpeq_epi32(converted, sign), converted);
            }
            let words = (
                _mm256_packs_epi32(ints[0], ints[1]),
                _mm256_packs_epi32(ints[2], ints[3]),
            );
            // The packs work within 128-bit halves: put the 4-byte runs back in order.
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_packs_epi16(words.0, words.1),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            _mm256_storeu_si256(q.as_mut_ptr().cast(), bytes);
        }
    })
}

/// Quantized activation rows as the integer kernels read them.
pub struct Acts<'a> {
    /// Rows of `cols` quants.
    pub quants: &'a [i8],
    /// One per 32 values.
    pub scales: &'a [f32],
    /// Per run of values that share a weight offset (see [`Q8Rows::sums`]), the run's scale
    /// times the sum of its quants.
    pub sums: &'a [f32],
    /// Values per row.
    pub cols: usize,
}

impl Acts<'_> {
    /// Activation rows.
    pub fn rows(&self) -> usize {
        self.quants.len() / self.cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `values` quantized by every SIMD form this CPU runs.
    fn simd_forms(values: &[f32]) -> Vec<Q8Rows> {
        let mut forms = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was detected just above.
                forms.push(unsafe { quantize_avx2(values) });
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512 was detected just above.
                forms.push(unsafe { quantize_avx512(values) });
            }
        }
        forms
    }

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let xs: Vec<f32> = (0..96).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
        let q = Q8Rows::quantize(&xs);
        assert_eq!((q.scales.len(), q.quants.len()), (3, 96));
        for (i, x) in xs.iter().enumerate() {
            let d = q.scales[i / BLOCK];
            assert!((d * q.quants[i] as f32 - x).abs() <= d * 0.51 + 1e-3, "{i}");
        }
        let sums = q.sums(16);
        assert_eq!(sums.len(), 6);
        let first: i32 = q.quants[16..32].iter().map(|&v| v as i32).sum();
        assert_eq!(sums[1], q.scales[0] * first as f32);
        // The form this CPU runs gives the portable one's bits, ties (x.5) included.
        // (Each block of `ties` has scale 1: its values are multiplied by exactly 1.)
        let ties: Vec<f32> = (0..256)
            .map(|i| match i % 32 {
                0 => 127.0,
                k => (i % 64 + k) as f32 - 40.5,
            })
            .collect();
        // Magnitudes far apart, blocks holding an infinity and a NaN, and a block of
        // subnormal values (the inverse of its scale overflows to infinity).
        let mut odd: Vec<f32> = (0..128)
            .map(|i| (i as f32 * 1.37).sin() * 10f32.powi(i % 9 - 4))
            .collect();
        odd[40] = f32::INFINITY;
        odd[70] = f32::NAN;
        for (k, v) in odd[96..].iter_mut().enumerate() {
            *v = (k as f32 - 16.0) * 1e-40;
        }
        for values in [&xs[..], &ties[..], &odd[..]] {
            let portable = quantize_portable(values);
            for fast in simd_forms(values) {
                assert_eq!(fast.quants, portable.quants);
                assert_eq!(fast.scales, portable.scales);
            }
        }
        // Zero padding adds blocks of zeros with scale 0.
        let p = Q8Rows::quantize_padded(&xs[..64], 32, 64);
        assert_eq!(p.scales.len(), 4);
        assert_eq!(p.scales[1], 0.0);
        assert_eq!(&p.quants[..32], &q.quants[..32]);
        assert!(p.quants[32..64].iter().all(|&v| v == 0));
    }
}
