//! `x · Wᵀ` for 4-bit weights with a scale and an offset per 32 values (Q4_1, Q4_K) on the CPU.
//!
//! candle multiplies Q4_1 with scalar code, and keeps a second, repacked copy of every Q4_K
//! weight it multiplies on x86. Both types are, per block of 32 values, unsigned 4-bit
//! integers `q` standing for `scale * q + offset` (Q4_K's 6-bit sub-block scale and min
//! multiplied by its super-block's `d` and `dmin` in f32, as ggml's dequantization does), so
//! they share one layout here: per 64 values, 32 bytes holding value `j` in the low nibble of
//! byte `j` and value `32 + j` in its high nibble (Q4_K's own order). A mask and a shift give
//! two blocks of unsigned bytes, which AVX-512 VNNI's `vpdpbusd` or AVX2's `maddubs` multiply
//! with the activations' signed bytes as they are. Activations are quantized per 32 as for
//! Q8_0; the offsets' share is `offset * scale_x * Σ q_x` per block, against sums made once per
//! activation row. Each weight row is unpacked once for up to four activation rows.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;

#[cfg(target_arch = "x86_64")]
use crate::isa::hsum256;
use crate::isa::{TILE, for_tiles, pick, weighted_sum};
use crate::q8_rows::{Acts, BLOCK, Q8Rows};
use crate::row_parallel::for_each_row;

/// Values per packed group: two blocks.
const GROUP: usize = 64;
/// Bytes of a Q4_1 block: f16 scale, f16 offset, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Values in a Q4_K super-block.
const SUPER: usize = 256;
/// Bytes of a Q4_K super-block: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 of
/// nibbles.
const Q4_K_BYTES: usize = 144;

/// A 4-bit weight matrix, `(rows, cols)`, each row padded with zero blocks to whole groups.
#[derive(Debug)]
pub struct Q4Weight {
    rows: usize,
    cols: usize,
    /// Values per row once padded (a multiple of 64).
    padded: usize,
    /// `rows * padded / 32` block scales.
    scales: Vec<f32>,
    /// `rows * padded / 32` block offsets.
    offsets: Vec<f32>,
    /// `rows * padded / 2` bytes of nibbles, in groups of 64 values.
    quants: Vec<u8>,
}

/// One block as read from the file: scale, offset, 32 integers in 0..16.
type Block = (f32, f32, [u8; BLOCK]);

/// Appends the blocks of one unit of a type's bytes (a block, or a super-block).
type Decode = fn(&[u8], &mut Vec<Block>);

impl Q4Weight {
    /// The weight of a Q4_1 or Q4_K tensor; `None` for other types.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let (rows, cols) = t.shape().dims2()?;
        let (per_unit, unit_bytes, decode): (usize, usize, Decode) = match t.dtype() {
            GgmlDType::Q4_1 => (BLOCK, Q4_1_BYTES, decode_q4_1),
            GgmlDType::Q4K => (SUPER, Q4_K_BYTES, decode_q4_k),
            _ => return Ok(None),
        };
        if !cols.is_multiple_of(per_unit) {
            return Ok(None);
        }
        let data = t.data()?;
        let row_bytes = cols / per_unit * unit_bytes;
        if data.len() != rows * row_bytes {
            candle_core::bail!(
                "{:?} tensor: {} bytes for {rows} rows of {row_bytes}",
                t.dtype(),
                data.len()
            );
        }
        let padded = cols.div_ceil(GROUP) * GROUP;
        let blocks = padded / BLOCK;
        let mut w = Q4Weight {
            rows,
            cols,
            padded,
            scales: Vec::with_capacity(rows * blocks),
            offsets: Vec::with_capacity(rows * blocks),
            quants: Vec::with_capacity(rows * padded / 2),
        };
        let mut row = Vec::with_capacity(blocks);
        for bytes in data.chunks_exact(row_bytes) {
            row.clear();
            for unit in bytes.chunks_exact(unit_bytes) {
                decode(unit, &mut row);
            }
            row.resize(blocks, (0.0, 0.0, [0; BLOCK]));
            for pair in row.chunks_exact(2) {
                let ((s0, o0, q0), (s1, o1, q1)) = (pair[0], pair[1]);
                w.scales.extend([s0, s1]);
                w.offsets.extend([o0, o1]);
                w.quants
                    .extend(q0.iter().zip(&q1).map(|(lo, hi)| lo | (hi << 4)));
            }
        }
        Ok(Some(w))
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        ((self.scales.len() + self.offsets.len()) * 4 + self.quants.len()) as u64
    }

    /// `x · Wᵀ`: `x` is `(m, cols)` f32; returns `(m, rows)` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("4-bit matmul: x has {k} columns, the weight {}", self.cols);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let xq = Q8Rows::quantize_padded(&xs, k, self.padded);
        let acts = Acts {
            quants: &xq.quants,
            scales: &xq.scales,
            sums: &xq.sums(BLOCK),
            cols: self.padded,
        };
        let row_fn = row_fn();
        let blocks = self.padded / BLOCK;
        let out = for_each_row(self.rows, m, |r, out| {
            let row = Row {
                quants: &self.quants[r * self.padded / 2..][..self.padded / 2],
                scales: &self.scales[r * blocks..][..blocks],
                offsets: &self.offsets[r * blocks..][..blocks],
            };
            row_fn(&row, &acts, out);
        });
        Tensor::from_vec(out, (m, self.rows), x.device())
    }
}

/// Q4_1: `d * q + m`, value `j < 16` in the low nibble of byte `j`, `16 + j` in its high one.
fn decode_q4_1(b: &[u8], out: &mut Vec<Block>) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let mut q = [0u8; BLOCK];
    for (j, byte) in b[4..Q4_1_BYTES].iter().enumerate() {
        q[j] = byte & 0x0F;
        q[j + 16] = byte >> 4;
    }
    out.push((d, m, q));
}

/// Q4_K: eight sub-blocks of 32, `d * sc * q - dmin * mn` (ggml's `dequantize_row_q4_K`).
fn decode_q4_k(b: &[u8], out: &mut Vec<Block>) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let scales = &b[4..16];
    let qs = &b[16..Q4_K_BYTES];
    for (chunk, bytes) in qs.chunks_exact(32).enumerate() {
        for half in 0..2 {
            let (sc, mn) = scale_min_k4(2 * chunk + half, scales);
            let mut q = [0u8; BLOCK];
            for (v, byte) in q.iter_mut().zip(bytes) {
                *v = if half == 0 { byte & 0x0F } else { byte >> 4 };
            }
            out.push((d * sc as f32, -(dmin * mn as f32), q));
        }
    }
}

/// Sub-block `j`'s 6-bit scale and min (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One weight row.
struct Row<'a> {
    quants: &'a [u8],
    scales: &'a [f32],
    offsets: &'a [f32],
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

/// The offsets' share of row `i`: `Σ offset[b] * sums[b]`.
#[inline(always)]
fn offset_dot(w: &Row<'_>, x: &Acts<'_>, i: usize) -> f32 {
    let blocks = w.offsets.len();
    weighted_sum(w.offsets, &x.sums[i * blocks..][..blocks])
}

fn row_portable(w: &Row<'_>, x: &Acts<'_>, out: &mut [f32]) {
    let blocks = w.scales.len();
    for (i, o) in out.iter_mut().enumerate().take(x.rows()) {
        let xq = &x.quants[i * x.cols..][..x.cols];
        let xs = &x.scales[i * blocks..][..blocks];
        let mut sum = 0f32;
        for (g, bytes) in w.quants.chunks_exact(32).enumerate() {
            let (mut lo, mut hi) = (0i32, 0i32);
            for (j, byte) in bytes.iter().enumerate() {
                lo += (byte & 0x0F) as i32 * xq[g * GROUP + j] as i32;
                hi += (byte >> 4) as i32 * xq[g * GROUP + 32 + j] as i32;
            }
            sum += w.scales[2 * g] * xs[2 * g] * lo as f32;
            sum += w.scales[2 * g + 1] * xs[2 * g + 1] * hi as f32;
        }
        *o = sum + offset_dot(w, x, i);
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

/// Activation rows `first..first + N` against one weight row: per group, both blocks
/// unpacked once, then per activation row `maddubs` (unsigned weight times signed
/// activation bytes), pairs summed to i32 and scaled into an f32 accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2<const N: usize>(w: &Row<'_>, x: &Acts<'_>, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let groups = w.quants.len() / 32;
    let blocks = w.scales.len();
    // SAFETY: group `g` reads weight bytes `32g..32g + 32` (within `groups * 32`), scales
    // `2g`, `2g + 1` of the row (`blocks = 2 * groups`), and of each activation row `i`
    // (`first + N <= rows`) bytes `64g..64g + 64` of its `cols` (padded: `64 * groups`) and its
    // scales `2g`, `2g + 1`.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for g in 0..groups {
            let raw = _mm256_loadu_si256(w.quants.as_ptr().add(32 * g) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
            let (s0, s1) = (
                *w.scales.get_unchecked(2 * g),
                *w.scales.get_unchecked(2 * g + 1),
            );
            for (n, a) in acc.iter_mut().enumerate() {
                let i = first + n;
                let xq = x.quants.as_ptr().add(i * x.cols + GROUP * g);
                let xs = x.scales.as_ptr().add(i * blocks + 2 * g);
                let x0 = _mm256_loadu_si256(xq as *const __m256i);
                let x1 = _mm256_loadu_si256(xq.add(32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), ones);
                *a = _mm256_fmadd_ps(_mm256_set1_ps(s0 * *xs), _mm256_cvtepi32_ps(p0), *a);
                *a = _mm256_fmadd_ps(_mm256_set1_ps(s1 * *xs.add(1)), _mm256_cvtepi32_ps(p1), *a);
            }
        }
        for (n, a) in acc.iter().enumerate() {
            let v = hsum256(*a);
            out[n] = v + offset_dot(w, x, first + n);
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

/// As [`tile_avx2`], a whole group per step: the two unpacked blocks side by side in one
/// register, `vpdpbusd` giving lanes 0-7 for the first block and 8-15 for the second.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_avx512_vnni<const N: usize>(w: &Row<'_>, x: &Acts<'_>, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let groups = w.quants.len() / 32;
    let blocks = w.scales.len();
    // SAFETY: as in `tile_avx2`: every read is within the group's bytes and scales.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); N];
        for g in 0..groups {
            let raw = _mm256_loadu_si256(w.quants.as_ptr().add(32 * g) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
            let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let ws = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(*w.scales.get_unchecked(2 * g)),
                _mm512_set1_ps(*w.scales.get_unchecked(2 * g + 1)),
            );
            for (n, a) in acc.iter_mut().enumerate() {
                let i = first + n;
                let xq = x.quants.as_ptr().add(i * x.cols + GROUP * g);
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
            out[n] = _mm512_reduce_add_ps(*a) + offset_dot(w, x, first + n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::testing::{assert_agree, has_avx2};
    use candle_core::Device;

    /// Our matmul against the dequantized weight's f32 matmul, for every kernel this CPU has.
    fn check(dtype: GgmlDType, rows: usize, cols: usize) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours = Q4Weight::from_qtensor(&q).unwrap().unwrap();
        let exact = q.dequantize(&dev).unwrap();
        for m in [1, 3, 4, 9] {
            let x = Tensor::randn(0f32, 1.0, (m, cols), &dev).unwrap();
            let got = ours.matmul(&x).unwrap();
            // Exactly what the kernel multiplies, in f32: the weight's values and the
            // activations as quantized.
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let xq = Q8Rows::quantize_padded(&xs, cols, ours.padded);
            let xd = Tensor::from_vec(xq.dequantize(cols, ours.padded), (m, cols), &dev).unwrap();
            let expected = xd.matmul(&exact.t().unwrap()).unwrap();
            let diff = crate::row_parallel::tests::max_abs_diff(&got, &expected);
            assert!(diff < 1e-3, "m={m}: {diff}");
            // Every kernel this CPU runs gives what the portable one gives.
            let sums = xq.sums(BLOCK);
            let acts = Acts {
                quants: &xq.quants,
                scales: &xq.scales,
                sums: &sums,
                cols: ours.padded,
            };
            let blocks = ours.padded / BLOCK;
            for r in [0, rows - 1] {
                let row = Row {
                    quants: &ours.quants[r * ours.padded / 2..][..ours.padded / 2],
                    scales: &ours.scales[r * blocks..][..blocks],
                    offsets: &ours.offsets[r * blocks..][..blocks],
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
    }

    #[test]
    fn q4_1_matches_its_dequantized_weights() {
        // 96 columns: three blocks, the last group padded.
        check(GgmlDType::Q4_1, 37, 96);
        check(GgmlDType::Q4_1, 8, 576);
    }

    #[test]
    fn q4_k_matches_its_dequantized_weights() {
        check(GgmlDType::Q4K, 19, 512);
    }

    #[test]
    fn other_types_are_not_taken() {
        let w = Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            assert!(Q4Weight::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
        }
    }
}
