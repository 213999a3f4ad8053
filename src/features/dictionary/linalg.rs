//! The little linear algebra dictionaries need, on plain slices: dense products through the
//! model's own packed kernel (model/kernels/f32.rs: run-time ISA detection, candle's pool), and
//! sparse codes as `(atom, value)` lists.

use crate::model::kernels::f32::PackedF32;

/// A sparse code: `(atom, value)` pairs, values non-zero.
pub type Code = Vec<(u32, f32)>;

/// `y = x · wᵀ`: `x` is `[rows, k]`, `w` is `[out, k]` (one row per output), `y` is `[rows, out]`.
pub fn matmul_t(x: &[f32], rows: usize, w: &[f32], out: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * out];
    if rows == 0 || out == 0 {
        return y;
    }
    PackedF32::pack(w, out, k).matmul(x, rows, &mut y);
    y
}

/// `y = x · wᵀ` for a weight already packed (reused across batches).
pub fn matmul_packed(x: &[f32], rows: usize, w: &PackedF32) -> Vec<f32> {
    let mut y = vec![0f32; rows * w.out()];
    if rows > 0 && w.out() > 0 {
        w.matmul(x, rows, &mut y);
    }
    y
}

/// The transpose of a row-major `[rows, cols]` matrix.
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators: the compiler vectorises this, and the sum is less order-sensitive.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += alpha · x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

pub fn norm2(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Scales `a` to unit norm (left as is when it is zero).
pub fn normalise(a: &mut [f32]) {
    let n = norm2(a).sqrt();
    if n > 0.0 {
        a.iter_mut().for_each(|v| *v /= n);
    }
}

/// The `k` largest positive entries of `row`, largest first.
pub fn top_k_positive(row: &[f32], k: usize) -> Code {
    let mut idx: Vec<u32> = (0..row.len() as u32)
        .filter(|&j| row[j as usize] > 0.0)
        .collect();
    if idx.len() > k {
        idx.select_nth_unstable_by(k, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        idx.truncate(k);
    }
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.into_iter().map(|j| (j, row[j as usize])).collect()
}

/// Runs `f` on `0..n` split into one contiguous share per core, each with its own state made by
/// `init`; returns the states in order.
pub fn par_chunks<S: Send>(
    n: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, std::ops::Range<usize>) + Sync,
) -> Vec<S> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    if threads <= 1 {
        let mut s = init();
        f(&mut s, 0..n);
        return vec![s];
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (init, f) = (&init, &f);
                scope.spawn(move || {
                    let mut s = init();
                    f(&mut s, (t * per).min(n)..((t + 1) * per).min(n));
                    s
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_the_definition() {
        let (rows, out, k) = (5, 7, 9);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let y = matmul_t(&x, rows, &w, out, k);
        for r in 0..rows {
            for o in 0..out {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum();
                assert!((y[r * out + o] - want).abs() < 1e-5, "{r},{o}");
            }
        }
        assert_eq!(transpose(&transpose(&x, rows, k), k, rows), x);
    }

    #[test]
    fn top_k_keeps_the_largest_positive_values() {
        let row = [0.5, -3.0, 2.0, 0.0, 1.5, 0.1];
        assert_eq!(top_k_positive(&row, 3), vec![(2, 2.0), (4, 1.5), (0, 0.5)]);
        assert_eq!(top_k_positive(&[-1.0, 0.0], 4), vec![]);
        assert_eq!(top_k_positive(&row, 10).len(), 4);
    }
}
