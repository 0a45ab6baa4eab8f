//! Attention over the paged KV cache on the CPU, reading keys and values in place through
//! each sequence's block table.
//!
//! Gathering a sequence's keys and values out of the cache into new tensors and running a
//! chain of candle ops (matmul, mask, softmax, matmul, reshapes) per sequence per layer is, for
//! a decode step, mostly copying and op overhead. Here one task per (sequence, up to 16 of its
//! new tokens, KV head) reads each key and value row once for all the query heads that share
//! it, on the worker's CPU pool, with a plain softmax in f32.
//!
//! Each query row's result depends only on that row and the keys it sees, summed in position
//! order: not on how many tokens were computed with it, nor on the other sequences of the
//! batch. With the matmul kernels (also row by row), a sequence's logits are the same whether
//! its prompt was prefilled at once, in chunks, after a prefix-cache hit, or beside others.
use std::ops::Range;

use crate::cpu_pool::cpu_pool;
use crate::isa::weighted_sum;
use crate::row_parallel::SharedOut;

/// New tokens one task computes: their query rows and scores stay in the first caches.
const CHUNK: usize = 16;

/// The shape of the attention and of the cache.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each shared by `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions per cache block.
    pub block_size: usize,
    /// Positions of one KV head in the cache (`blocks * block_size`).
    pub cache_rows: usize,
    /// Keys a query may look back over, itself included, when the model has a sliding window.
    pub window: Option<usize>,
}

/// What every task reads.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    shape: Shape,
    /// Queries, rows of `heads * head_dim`.
    q: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    /// Where the results go, rows like the queries'.
    out: SharedOut,
}

/// One sequence of the batch: its new tokens are rows `first..first + n` of the queries, at
/// positions `start..start + n`.
pub struct Item<'a> {
    /// Row of its first new token in the packed queries.
    pub first: usize,
    /// New tokens.
    pub n: usize,
    /// Position of its first new token.
    pub start: usize,
    /// Its cache blocks, in order.
    pub table: &'a [u32],
}

/// `out` (rows of `heads * head_dim`) = softmax(q · kᵀ / √d) · v for every new token of every
/// item, causal (and windowed), keys and values read from `k_cache` / `v_cache` (`(kv_heads,
/// cache_rows, head_dim)`, already holding the new tokens' own keys and values).
pub fn attend(
    shape: Shape,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    items: &[Item<'_>],
    out: &mut [f32],
) {
    let width = shape.heads * shape.head_dim;
    debug_assert!(out.len() >= items.iter().map(|i| i.first + i.n).max().unwrap_or(0) * width);
    let one = one_fn();
    let inputs = Inputs {
        shape,
        q,
        k_cache,
        v_cache,
        out: SharedOut::new(out),
    };
    let tasks: Vec<Task<'_, '_>> = items
        .iter()
        .flat_map(|item| {
            (0..item.n.div_ceil(CHUNK)).flat_map(move |c| {
                let tokens = c * CHUNK..((c + 1) * CHUNK).min(item.n);
                (0..shape.kv_heads).map(move |kv_head| Task {
                    item,
                    tokens: tokens.clone(),
                    kv_head,
                })
            })
        })
        .collect();
    cpu_pool().run(tasks.len(), |range| {
        for task in &tasks[range] {
            // SAFETY: a task writes only its own tokens' rows, at the columns of the query
            // heads of its KV head; tasks' (rows, heads) are disjoint and the pool runs each
            // task once, so no two tasks write the same element, and nothing reads `out`
            // meanwhile. The CPU runs the instructions `one` enables (see `one_fn`).
            unsafe { one(&inputs, task) };
        }
    });
}

/// A unit of work: some new tokens of one item, for the query heads of one KV head.
struct Task<'i, 't> {
    item: &'i Item<'t>,
    tokens: Range<usize>,
    kv_head: usize,
}

/// [`attend_one`]; unsafe as it is.
type OneFn = unsafe fn(&Inputs<'_>, &Task<'_, '_>);

/// [`attend_one`] compiled for the widest vectors this CPU has.
fn one_fn() -> OneFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return attend_one_avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return attend_one_avx2;
        }
    }
    attend_one
}

/// [`attend_one`] with AVX-512; the CPU must have it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_one_avx512(inputs: &Inputs<'_>, task: &Task<'_, '_>) {
    // SAFETY: as the caller's.
    unsafe { attend_one(inputs, task) }
}

/// [`attend_one`] with AVX2 and FMA; the CPU must have them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_one_avx2(inputs: &Inputs<'_>, task: &Task<'_, '_>) {
    // SAFETY: as the caller's.
    unsafe { attend_one(inputs, task) }
}

/// One task: its tokens' query rows of the heads sharing its KV head, against the keys they
/// see. Inlined into the callers above, so its loops are vectorized with their instruction
/// sets.
///
/// # Safety
/// No other thread may write the output elements this call writes (see [`attend`]).
#[inline(always)]
unsafe fn attend_one(inputs: &Inputs<'_>, task: &Task<'_, '_>) {
    let Inputs {
        shape,
        q,
        k_cache,
        v_cache,
        out,
    } = *inputs;
    let Task {
        item,
        ref tokens,
        kv_head,
    } = *task;
    let (hd, bs) = (shape.head_dim, shape.block_size);
    let group = shape.heads / shape.kv_heads;
    let width = shape.heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let cache_row = |p: usize| {
        let row = item.table[p / bs] as usize * bs + p % bs;
        (kv_head * shape.cache_rows + row) * hd
    };
    // Keys position `p` sees: causal, and within the window.
    let visible = |p: usize| shape.window.map_or(0, |w| (p + 1).saturating_sub(w))..p + 1;
    let (first, last) = (item.start + tokens.start, item.start + tokens.end - 1);
    let span = visible(first).start..last + 1;
    // Scores of every (head of the group, new token) against the span's keys, row-major;
    // keys a row does not see stay at -inf and weigh exactly 0.
    let n = tokens.len();
    let rows = group * n;
    let width_s = span.len();
    let mut scores = vec![f32::NEG_INFINITY; rows * width_s];
    for j in span.clone() {
        let k = &k_cache[cache_row(j)..][..hd];
        for (t, i) in tokens.clone().enumerate() {
            if !visible(item.start + i).contains(&j) {
                continue;
            }
            for h in 0..group {
                let head = kv_head * group + h;
                let qr = &q[(item.first + i) * width + head * hd..][..hd];
                scores[(h * n + t) * width_s + j - span.start] = weighted_sum(qr, k) * scale;
            }
        }
    }
    for row in scores.chunks_exact_mut(width_s) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
    let mut acc = vec![0f32; rows * hd];
    for j in span.clone() {
        let v = &v_cache[cache_row(j)..][..hd];
        for (r, a) in acc.chunks_exact_mut(hd).enumerate() {
            let p = scores[r * width_s + j - span.start];
            if p != 0.0 {
                axpy(p, v, a);
            }
        }
    }
    for h in 0..group {
        let head = kv_head * group + h;
        for (t, i) in tokens.clone().enumerate() {
            let r = h * n + t;
            // SAFETY: the caller guarantees this task alone writes these elements.
            let dst = unsafe { out.slice((item.first + i) * width + head * hd, hd) };
            dst.copy_from_slice(&acc[r * hd..][..hd]);
        }
    }
}

/// `a += p * v`.
#[inline(always)]
fn axpy(p: f32, v: &[f32], a: &mut [f32]) {
    for (a, v) in a.iter_mut().zip(v) {
        *a += p * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out the obvious way over a contiguous cache.
    fn naive(shape: Shape, q: &[f32], k: &[f32], v: &[f32], start: usize, n: usize) -> Vec<f32> {
        let hd = shape.head_dim;
        let group = shape.heads / shape.kv_heads;
        let mut out = vec![0f32; n * shape.heads * hd];
        for i in 0..n {
            let p = start + i;
            for head in 0..shape.heads {
                let g = head / group;
                let qr = &q[(i * shape.heads + head) * hd..][..hd];
                let from = shape.window.map_or(0, |w| (p + 1).saturating_sub(w));
                let s: Vec<f32> = (from..=p)
                    .map(|j| {
                        let kr = &k[(g * shape.cache_rows + j) * hd..][..hd];
                        qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                    })
                    .collect();
                let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                let total: f32 = e.iter().sum();
                for (idx, j) in (from..=p).enumerate() {
                    let vr = &v[(g * shape.cache_rows + j) * hd..][..hd];
                    for d in 0..hd {
                        out[(i * shape.heads + head) * hd + d] += e[idx] / total * vr[d];
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.731).sin())
            .collect()
    }

    #[test]
    fn paged_equals_contiguous_for_every_item() {
        for window in [None, Some(5)] {
            let shape = Shape {
                heads: 6,
                kv_heads: 2,
                head_dim: 16,
                block_size: 4,
                cache_rows: 32,
                window,
            };
            let (hd, rows) = (shape.head_dim, shape.cache_rows);
            // Contiguous keys/values per sequence, and the same rows scattered into the
            // paged cache through each sequence's table (blocks interleaved).
            let tables: [Vec<u32>; 2] = [vec![6, 1, 4, 3], vec![0, 7, 2, 5]];
            let lens = [13, 7];
            let news = [1, 3];
            let mut k_cache = vec![0f32; shape.kv_heads * rows * hd];
            let mut v_cache = k_cache.clone();
            let mut contiguous = Vec::new();
            for (s, table) in tables.iter().enumerate() {
                let k = values(shape.kv_heads * rows * hd, 10.0 * s as f32);
                let v = values(shape.kv_heads * rows * hd, 100.0 + s as f32);
                for g in 0..shape.kv_heads {
                    for p in 0..lens[s] {
                        let dst = (g * rows + table[p / 4] as usize * 4 + p % 4) * hd;
                        let src = (g * rows + p) * hd;
                        k_cache[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                        v_cache[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                    }
                }
                contiguous.push((k, v));
            }
            let width = shape.heads * hd;
            let q = values((news[0] + news[1]) * width, 7.0);
            let items = [
                Item {
                    first: 0,
                    n: news[0],
                    start: lens[0] - news[0],
                    table: &tables[0],
                },
                Item {
                    first: news[0],
                    n: news[1],
                    start: lens[1] - news[1],
                    table: &tables[1],
                },
            ];
            let mut out = vec![0f32; q.len()];
            attend(shape, &q, &k_cache, &v_cache, &items, &mut out);
            for (s, item) in items.iter().enumerate() {
                let (k, v) = &contiguous[s];
                let q_item = &q[item.first * width..(item.first + item.n) * width];
                let expected = naive(shape, q_item, k, v, item.start, item.n);
                let got = &out[item.first * width..(item.first + item.n) * width];
                for (a, b) in got.iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-5, "window {window:?} item {s}: {a} {b}");
                }
            }
        }
    }

    #[test]
    fn a_row_is_the_same_however_the_tokens_are_split() {
        let shape = Shape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            block_size: 4,
            cache_rows: 48,
            window: None,
        };
        let width = shape.heads * shape.head_dim;
        let len = 40;
        // One sequence in blocks 11, 10, ..., 2 (reversed), keys and values all written.
        let table: Vec<u32> = (2..12).rev().collect();
        let k_cache = values(shape.kv_heads * shape.cache_rows * shape.head_dim, 3.0);
        let v_cache = values(k_cache.len(), 50.0);
        let q = values(len * width, 9.0);
        let run = |splits: &[usize]| {
            let mut out = vec![0f32; len * width];
            let mut start = 0;
            for &n in splits {
                let item = Item {
                    first: 0,
                    n,
                    start,
                    table: &table,
                };
                let mut part = vec![0f32; n * width];
                let q_part = &q[start * width..(start + n) * width];
                attend(shape, q_part, &k_cache, &v_cache, &[item], &mut part);
                out[start * width..(start + n) * width].copy_from_slice(&part);
                start += n;
            }
            out
        };
        let whole = run(&[len]);
        assert_eq!(run(&[17, 1, 22]), whole);
        assert_eq!(run(&[1; 40]), whole);
        // And it is attention: against the obvious computation over the sequence in order.
        let mut k_seq = vec![0f32; k_cache.len()];
        let mut v_seq = k_seq.clone();
        let hd = shape.head_dim;
        for g in 0..shape.kv_heads {
            for p in 0..len {
                let src = (g * shape.cache_rows + table[p / 4] as usize * 4 + p % 4) * hd;
                let dst = (g * shape.cache_rows + p) * hd;
                k_seq[dst..dst + hd].copy_from_slice(&k_cache[src..src + hd]);
                v_seq[dst..dst + hd].copy_from_slice(&v_cache[src..src + hd]);
            }
        }
        let expected = naive(shape, &q, &k_seq, &v_seq, 0, len);
        for (a, b) in whole.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }
}
