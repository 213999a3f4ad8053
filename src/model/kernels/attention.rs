//! Causal attention of one sequence on plain slices, on candle's one thread pool (candle's own
//! matmul would bring in a second pool, rayon's, and on two cores the two pools' spinning
//! threads starve each other: 20 greedy tokens took 0.3 to 5.6 s from run to run).
//!
//! Layouts are the hook points' own: `q` `[len, heads, d_head]`, `k` and `v`
//! `[keys, kv_heads, d_head]` (keys after rotary embedding), `z` `[len, heads, d_head]`; query
//! `i` sits at absolute position `offset + i` and sees keys `j ≤ offset + i`. Query head `h`
//! reads kv head `h / (heads / kv_heads)` (grouped-query attention).
//!
//! Two ways, with the same arithmetic (so the same bits):
//! - [`attend`] never holds more than one row of scores per thread: memory O(keys), not
//!   O(heads · len · keys). Used when nobody records or edits the scores or the pattern.
//! - [`scores`], then the caller's hooks, [`softmax_rows`], hooks again, then [`mix`]: the
//!   `[heads, len, keys]` matrices materialised for the hooks.
//!
//! A masked score is `-inf`; its weight is exactly 0, so the fused way skipping masked keys and
//! the materialised way adding their zeros give identical sums.

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub len: usize,
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_head: usize,
    /// Absolute position of query 0.
    pub offset: usize,
    /// Multiplies every score (1/√d_head).
    pub scale: f32,
}

impl Dims {
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }

    /// Keys query `i` may see.
    fn visible(&self, i: usize) -> usize {
        (self.offset + i + 1).min(self.keys)
    }

    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
        let Dims {
            len,
            keys,
            heads,
            kv_heads,
            d_head,
            ..
        } = *self;
        assert!(
            kv_heads > 0 && heads.is_multiple_of(kv_heads),
            "{heads} heads over {kv_heads} kv heads"
        );
        assert_eq!(q.len(), len * heads * d_head, "q");
        assert_eq!(k.len(), keys * kv_heads * d_head, "k");
        assert_eq!(v.len(), keys * kv_heads * d_head, "v");
    }
}

/// Queries per unit of parallel work.
const QUERY_CHUNK: usize = 16;

/// `Σ a·b` in 8 interleaved lanes (vectorised by the compiler), then the lanes in order.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            lanes[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    lanes.iter().sum::<f32>() + tail
}

/// One query's scores against keys `0..n` (scaled; masked keys are the caller's business).
#[inline]
fn score_row(d: &Dims, q: &[f32], k: &[f32], i: usize, h: usize, n: usize, row: &mut [f32]) {
    let dh = d.d_head;
    let qi = &q[(i * d.heads + h) * dh..][..dh];
    let g = d.kv_head(h);
    for (j, s) in row[..n].iter_mut().enumerate() {
        *s = dot(qi, &k[(j * d.kv_heads + g) * dh..][..dh]) * d.scale;
    }
}

/// `softmax` of one row in place: `exp(x − max) / Σ`.
#[inline]
fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// `z[i, h] = Σ_j p[j] · v[j, g]` over the first `p.len()` keys.
#[inline]
fn mix_row(d: &Dims, p: &[f32], v: &[f32], h: usize, z: &mut [f32]) {
    let dh = d.d_head;
    let g = d.kv_head(h);
    z.fill(0.0);
    for (j, &w) in p.iter().enumerate() {
        let vj = &v[(j * d.kv_heads + g) * dh..][..dh];
        for (zd, &vd) in z.iter_mut().zip(vj) {
            *zd += w * vd;
        }
    }
}

/// Runs `f(head, queries)` over every head and chunk of queries on the pool.
fn for_units(d: &Dims, work: usize, f: impl Fn(usize, std::ops::Range<usize>) + Sync) {
    let chunks = d.len.div_ceil(QUERY_CHUNK);
    let units = d.heads * chunks;
    let unit = |u: usize| {
        let (h, c) = (u / chunks, u % chunks);
        f(h, c * QUERY_CHUNK..d.len.min((c + 1) * QUERY_CHUNK));
    };
    if work < 1 << 15 {
        (0..units).for_each(unit);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(units, |r| r.for_each(unit));
    }
}

/// A raw pointer that units write disjoint parts of.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every unit writes a disjoint set of elements, and the buffer outlives the pool call.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` (a method, so closures capture the whole `Out`, which is `Sync`).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Fused causal attention: `z` `[len, heads, d_head]` from `q`, `k`, `v` without holding the
/// score matrices.
pub fn attend(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    d.check(q, k, v);
    let dh = d.d_head;
    let mut z = vec![0f32; d.len * d.heads * dh];
    let out = Out(z.as_mut_ptr());
    for_units(d, d.len * d.keys * d.heads * dh, |h, queries| {
        let mut row = vec![0f32; d.keys];
        for i in queries {
            let n = d.visible(i);
            score_row(d, q, k, i, h, n, &mut row);
            softmax_row(&mut row[..n]);
            // SAFETY: (i, h) is this unit's alone; the slice lies inside z.
            let zi = unsafe { std::slice::from_raw_parts_mut(out.at((i * d.heads + h) * dh), dh) };
            mix_row(d, &row[..n], v, h, zi);
        }
    });
    z
}

/// The scaled, masked scores `[heads, len, keys]` (`-inf` where a query may not look).
pub fn scores(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    d.check(q, k, v);
    let keys = d.keys;
    let mut s = vec![f32::NEG_INFINITY; d.heads * d.len * keys];
    let out = Out(s.as_mut_ptr());
    for_units(d, d.len * keys * d.heads * d.d_head, |h, queries| {
        for i in queries {
            // SAFETY: row (h, i) is this unit's alone.
            let row =
                unsafe { std::slice::from_raw_parts_mut(out.at((h * d.len + i) * keys), keys) };
            score_row(d, q, k, i, h, d.visible(i), row);
        }
    });
    s
}

/// Softmax over the last axis of `[rows, keys]`, in place.
pub fn softmax_rows(x: &mut [f32], keys: usize) {
    if keys == 0 {
        return;
    }
    for row in x.chunks_mut(keys) {
        softmax_row(row);
    }
}

/// `z` `[len, heads, d_head]` from a pattern `[heads, len, keys]` (every key, as the hooks left
/// it) and `v`.
pub fn mix(d: &Dims, pattern: &[f32], v: &[f32]) -> Vec<f32> {
    let (dh, keys) = (d.d_head, d.keys);
    assert_eq!(pattern.len(), d.heads * d.len * keys, "pattern");
    assert_eq!(v.len(), keys * d.kv_heads * dh, "v");
    let mut z = vec![0f32; d.len * d.heads * dh];
    let out = Out(z.as_mut_ptr());
    for_units(d, d.len * keys * d.heads * dh, |h, queries| {
        for i in queries {
            let p = &pattern[(h * d.len + i) * keys..][..keys];
            // SAFETY: (i, h) is this unit's alone.
            let zi = unsafe { std::slice::from_raw_parts_mut(out.at((i * d.heads + h) * dh), dh) };
            mix_row(d, p, v, h, zi);
        }
    });
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-2, 2).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::model::kernels::test_values(n, seed)
            .into_iter()
            .map(|v| 2.0 * v)
            .collect()
    }

    /// Attention written the plain way in f64: scores, mask, softmax, weighted sum.
    fn reference(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let dh = d.d_head;
        let mut z = vec![0f64; d.len * d.heads * dh];
        for h in 0..d.heads {
            let g = h / (d.heads / d.kv_heads);
            for i in 0..d.len {
                let s: Vec<f64> = (0..d.keys)
                    .map(|j| {
                        if j > d.offset + i {
                            return f64::NEG_INFINITY;
                        }
                        (0..dh)
                            .map(|e| {
                                q[(i * d.heads + h) * dh + e] as f64
                                    * k[(j * d.kv_heads + g) * dh + e] as f64
                            })
                            .sum::<f64>()
                            * d.scale as f64
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for j in 0..d.keys {
                    for x in 0..dh {
                        z[(i * d.heads + h) * dh + x] +=
                            e[j] / sum * v[(j * d.kv_heads + g) * dh + x] as f64;
                    }
                }
            }
        }
        z
    }

    fn cases() -> Vec<Dims> {
        let d = |len, keys, heads, kv_heads, d_head, offset| Dims {
            len,
            keys,
            heads,
            kv_heads,
            d_head,
            offset,
            scale: 1.0 / (d_head as f32).sqrt(),
        };
        vec![
            d(1, 1, 1, 1, 4, 0),
            d(7, 7, 4, 2, 16, 0),
            d(40, 40, 9, 3, 64, 0),
            // A cached continuation step: one query after 29 earlier keys.
            d(1, 30, 9, 3, 64, 29),
            // A chunk of queries after a prefix.
            d(5, 12, 2, 1, 10, 7),
        ]
    }

    #[test]
    fn fused_attention_matches_f64_and_the_materialised_path_bit_for_bit() {
        for (c, d) in cases().iter().enumerate() {
            let q = random(d.len * d.heads * d.d_head, 1 + c as u64);
            let k = random(d.keys * d.kv_heads * d.d_head, 11 + c as u64);
            let v = random(d.keys * d.kv_heads * d.d_head, 21 + c as u64);
            let fused = attend(d, &q, &k, &v);
            let want = reference(d, &q, &k, &v);
            for (i, (&got, &want)) in fused.iter().zip(&want).enumerate() {
                assert!(got.is_finite(), "case {c} at {i}: {got}");
                assert!(
                    (got as f64 - want).abs() <= 2e-6 + 2e-6 * want.abs(),
                    "case {c} at {i}: {got} vs {want}"
                );
            }
            let mut p = scores(d, &q, &k, &v);
            // Masked scores are -inf, visible ones finite.
            for h in 0..d.heads {
                for i in 0..d.len {
                    for j in 0..d.keys {
                        let s = p[(h * d.len + i) * d.keys + j];
                        assert_eq!(
                            s.is_finite(),
                            j <= d.offset + i,
                            "case {c} mask at {h},{i},{j}"
                        );
                    }
                }
            }
            softmax_rows(&mut p, d.keys);
            assert_eq!(
                mix(d, &p, &v),
                fused,
                "case {c}: both ways give the same bits"
            );
        }
    }

    #[test]
    fn an_edited_pattern_is_what_the_mix_uses() {
        // Zeroing head 0's pattern zeroes its output; other heads are untouched.
        let d = cases()[2];
        let q = random(d.len * d.heads * d.d_head, 5);
        let k = random(d.keys * d.kv_heads * d.d_head, 6);
        let v = random(d.keys * d.kv_heads * d.d_head, 7);
        let mut p = scores(&d, &q, &k, &v);
        softmax_rows(&mut p, d.keys);
        let before = mix(&d, &p, &v);
        p[..d.len * d.keys].fill(0.0);
        let after = mix(&d, &p, &v);
        for i in 0..d.len {
            for h in 0..d.heads {
                let at = (i * d.heads + h) * d.d_head;
                let (a, b) = (&after[at..at + d.d_head], &before[at..at + d.d_head]);
                if h == 0 {
                    assert!(a.iter().all(|&x| x == 0.0));
                } else {
                    assert_eq!(a, b);
                }
            }
        }
    }
}
