//! Runs a kernel over the rows of a weight matrix on the worker's CPU pool
//! ([`crate::cpu_pool`]).
use crate::cpu_pool::cpu_pool;

/// An output buffer the pool's threads write disjoint parts of.
#[derive(Clone, Copy)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: only used to write disjoint elements from the pool's threads (see `slice`).
unsafe impl Send for SharedOut {}
// SAFETY: as for `Send`: threads never write the same element, and nothing reads while they
// write.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Shares `out`, which must outlive every use of the result.
    pub fn new(out: &mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// Elements `offset..offset + len` of the buffer.
    ///
    /// # Safety
    /// The buffer must still be alive, and no other thread may read or write these elements
    /// while the slice is in use.
    pub unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        assert!(offset + len <= self.len, "output slice out of bounds");
        // SAFETY: in bounds (checked above); exclusivity and liveness are the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// Sets element `index` of the buffer.
    ///
    /// # Safety
    /// As for [`SharedOut::slice`]: the buffer must still be alive, and no other thread may
    /// read or write this element meanwhile.
    pub unsafe fn write(self, index: usize, value: f32) {
        assert!(index < self.len, "output element out of bounds");
        // SAFETY: in bounds (checked above); exclusivity and liveness are the caller's.
        unsafe { *self.ptr.add(index) = value }
    }
}

/// Calls `kernel(r, out)` for every weight row `r < rows`, `out` being that row's `m` outputs
/// (one per activation row), and returns the `(m, rows)` result row-major.
pub fn for_each_row(rows: usize, m: usize, kernel: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    for_each_rows(rows, 1, m, kernel)
}

/// As [`for_each_row`], `step` weight rows a call: `kernel(r, out)` gets rows `r..r + n`
/// (`n` is `step`, fewer at the end), `out` holding their outputs one row after the other.
///
/// The pool's threads put their outputs in place in the `(m, rows)` result themselves, so
/// the caller has no transposition to do after the kernels (with a batch, that serial pass
/// over the output layer's `m * vocab` logits kept the other threads waiting).
pub fn for_each_rows(
    rows: usize,
    step: usize,
    m: usize,
    kernel: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let step = step.max(1);
    let mut out = vec![0f32; rows * m];
    let shared = SharedOut::new(&mut out);
    cpu_pool().run(rows.div_ceil(step), |range| {
        let mut by_row = vec![0f32; step * m];
        for chunk in range {
            let r = chunk * step;
            let n = step.min(rows - r);
            let by_row = &mut by_row[..n * m];
            if m == 1 {
                // SAFETY: the pool hands each chunk index to exactly one call, so elements
                // `r..r + n` are written by one thread only, and `out` outlives the pool call.
                kernel(r, unsafe { shared.slice(r, n) });
                continue;
            }
            by_row.fill(0.0);
            kernel(r, by_row);
            for (j, values) in by_row.chunks_exact(m).enumerate() {
                for (i, v) in values.iter().enumerate() {
                    // SAFETY: as above: element `i * rows + r + j` belongs to weight row
                    // `r + j` of this chunk only.
                    unsafe { shared.write(i * rows + r + j, *v) };
                }
            }
        }
    });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The largest absolute difference between two tensors, for the kernels' tests.
    pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }

    #[test]
    fn every_row_once_transposed() {
        let out = for_each_row(1000, 3, |r, out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o += (r * 10 + i) as f32;
            }
        });
        for i in 0..3 {
            for r in 0..1000 {
                assert_eq!(out[i * 1000 + r], (r * 10 + i) as f32);
            }
        }
        assert_eq!(
            for_each_row(5, 1, |r, out| out[0] = r as f32),
            [0., 1., 2., 3., 4.]
        );
    }

    #[test]
    fn rows_in_steps_cover_every_row_once() {
        // Five rows two at a time: calls at 0, 2 and 4 (the last with one row).
        let out = for_each_rows(5, 2, 3, |r, out| {
            assert!(out.len() == 6 || (r == 4 && out.len() == 3));
            for (j, o) in out.iter_mut().enumerate() {
                *o += ((r + j / 3) * 10 + j % 3) as f32;
            }
        });
        for i in 0..3 {
            for r in 0..5 {
                assert_eq!(out[i * 5 + r], (r * 10 + i) as f32);
            }
        }
    }
}
