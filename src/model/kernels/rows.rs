//! Row-wise and element-wise steps of a block in one pass each, on candle's one pool: RMSNorm
//! and SwiGLU's `silu(gate) · up`. Written as candle ops they took 6–8 passes and as many
//! allocated tensors per call: a third of a 512-token scan batch.

/// Runs `f(first_row, part)` over chunks of rows of `out` (`width` values a row; the last row
/// may be shorter) on the pool.
fn for_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let width = width.max(1);
    let rows = out.len().div_ceil(width);
    if rows == 0 {
        return;
    }
    const CHUNK: usize = 16;
    if out.len() < 1 << 15 {
        f(0, out);
        return;
    }
    let (addr, len) = (out.as_mut_ptr() as usize, out.len());
    candle_core::utils::barrier_pool().execute_chunked(rows.div_ceil(CHUNK), |units| {
        for u in units {
            let (r0, r1) = (u * CHUNK, rows.min((u + 1) * CHUNK));
            let (a, b) = (r0 * width, len.min(r1 * width));
            // SAFETY: chunks of rows are disjoint and `out` outlives the pool call.
            let part = unsafe { std::slice::from_raw_parts_mut((addr as *mut f32).add(a), b - a) };
            f(r0, part);
        }
    });
}

/// RMSNorm as HF computes it in f32: `w · x / √(mean(x²) + ε)`, per row of `x` `[rows, width]`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let width = w.len();
    assert_eq!(x.len() % width.max(1), 0, "rows of {width}");
    let mut out = vec![0f32; x.len()];
    for_rows(&mut out, width, |r0, part| {
        for (i, row) in part.chunks_mut(width).enumerate() {
            let xr = &x[(r0 + i) * width..][..width];
            let mut lanes = [0f32; 8];
            let chunks = width / 8;
            for c in 0..chunks {
                for l in 0..8 {
                    let v = xr[c * 8 + l];
                    lanes[l] += v * v;
                }
            }
            let tail: f32 = xr[chunks * 8..].iter().map(|v| v * v).sum();
            let mean = (lanes.iter().sum::<f32>() + tail) / width as f32;
            let inv = 1.0 / (mean + eps).sqrt();
            for ((o, &v), &g) in row.iter_mut().zip(xr).zip(w) {
                *o = v * inv * g;
            }
        }
    });
    out
}

/// SwiGLU's `silu(gate) · up` element by element (`silu(g) = g / (1 + e^−g)`).
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len());
    let mut out = vec![0f32; gate.len()];
    const WIDTH: usize = 1024;
    for_rows(&mut out, WIDTH, |r0, part| {
        let at = r0 * WIDTH;
        for (i, o) in part.iter_mut().enumerate() {
            let g = gate[at + i];
            *o = g / (1.0 + (-g).exp()) * up[at + i];
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_f64() {
        let (rows, width) = (70, 576);
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7919) % 1001) as f32 / 50.0 - 10.0)
            .collect();
        let w: Vec<f32> = (0..width).map(|i| 0.5 + (i % 13) as f32 / 10.0).collect();
        let got = rms_norm(&x, &w, 1e-5);
        for r in 0..rows {
            let xr = &x[r * width..(r + 1) * width];
            let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
            for j in 0..width {
                let want = xr[j] as f64 / (ms + 1e-5).sqrt() * w[j] as f64;
                let g = got[r * width + j] as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{r},{j}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn silu_mul_matches_f64_on_every_size() {
        for n in [1, 7, 1536, 70 * 1536 + 5] {
            let g: Vec<f32> = (0..n)
                .map(|i| ((i * 31) % 200) as f32 / 10.0 - 10.0)
                .collect();
            let u: Vec<f32> = (0..n)
                .map(|i| ((i * 17) % 100) as f32 / 25.0 - 2.0)
                .collect();
            let got = silu_mul(&g, &u);
            for i in 0..n {
                let (gi, ui) = (g[i] as f64, u[i] as f64);
                let want = gi / (1.0 + (-gi).exp()) * ui;
                assert!(
                    (got[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{n} at {i}"
                );
            }
        }
    }
}
