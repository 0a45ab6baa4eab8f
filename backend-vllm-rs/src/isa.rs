//! Which instruction set the worker's CPU kernels run with, picked at run time by what this
//! CPU has (nothing shipped needs `target-cpu=native`), and the small pieces the integer
//! matmul kernels share.

/// What this CPU runs the integer kernels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 (BW) with VNNI's byte dot products (`vpdpbusd`).
    Avx512Vnni,
    /// AVX2 with FMA (`maddubs`).
    Avx2,
    /// Plain code.
    Portable,
}

impl Isa {
    /// The best this CPU has.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Of a kernel's three forms, the one this CPU runs best. The first two may be called only
/// on a CPU with AVX-512 VNNI and AVX2 respectively, which this makes sure of.
pub fn pick<F>(avx512_vnni: F, avx2: F, portable: F) -> F {
    match Isa::detect() {
        Isa::Avx512Vnni => avx512_vnni,
        Isa::Avx2 => avx2,
        Isa::Portable => portable,
    }
}

/// Activation rows one pass over a weight row serves.
pub const TILE: usize = 4;

/// Calls `tile(first, n)` over activation rows `0..rows`: tiles of `n` = [`TILE`] rows, then
/// one by one.
#[inline(always)]
pub fn act_tiles(rows: usize, mut tile: impl FnMut(usize, usize)) {
    let mut i = 0;
    while i + TILE <= rows {
        tile(i, TILE);
        i += TILE;
    }
    while i < rows {
        tile(i, 1);
        i += 1;
    }
}

/// Calls `tile(first, outputs)` over the first `rows` activation rows' outputs, as
/// [`act_tiles`] groups them.
#[inline(always)]
pub fn for_tiles(out: &mut [f32], rows: usize, mut tile: impl FnMut(usize, &mut [f32])) {
    act_tiles(rows.min(out.len()), |first, n| {
        tile(first, &mut out[first..first + n])
    });
}

/// `Σ a[i] * b[i]` with eight partial sums, which the compiler keeps in one vector register of
/// the calling kernel's instruction set (it is inlined there).
#[inline(always)]
pub fn weighted_sum(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for lane in 0..8 {
            acc[lane] += x[lane] * y[lane];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// The sum of an AVX register's eight lanes.
///
/// # Safety
/// The CPU must have AVX2 and FMA (it is called from kernels compiled for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}

/// What the kernels' tests share.
#[cfg(test)]
pub(crate) mod testing {
    /// Whether this CPU can run the AVX2 kernels.
    pub(crate) fn has_avx2() -> bool {
        super::Isa::detect() != super::Isa::Portable
    }

    /// Asserts every named result equals the first one up to float rounding.
    pub(crate) fn assert_agree(results: &[(&str, Vec<f32>)]) {
        let (_, reference) = &results[0];
        for (name, values) in &results[1..] {
            for (a, b) in values.iter().zip(reference) {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                    "{name}: {a} against {b}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_every_row_once() {
        for rows in [0, 1, 4, 9] {
            let mut out = vec![0f32; rows];
            for_tiles(&mut out, rows, |first, tile| {
                assert!(tile.len() == TILE || tile.len() == 1);
                for (k, o) in tile.iter_mut().enumerate() {
                    *o += (first + k) as f32 + 1.0;
                }
            });
            let expected: Vec<f32> = (1..=rows).map(|r| r as f32).collect();
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn weighted_sum_of_any_length() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![2f32; 19];
        assert_eq!(weighted_sum(&a, &b), 342.0);
        assert_eq!(weighted_sum(&a[..3], &b[..3]), 6.0);
    }
}
