//! Yun et al.'s dictionary: one set of unit atoms shared by several layers' residual streams,
//! non-negative codes by FISTA (Beck & Teboulle 2009) on ½‖x − aW‖² + λ‖a‖₁, a ≥ 0, and the
//! atoms updated by Adam steps on the reconstruction error, renormalised to unit length. Atoms
//! unused for an epoch restart at a training row.
//!
//! A code is found with the Gram matrix G = W Wᵀ: the gradient aG − xWᵀ needs only the rows of G
//! where a is non-zero, so an iteration costs O(nnz · atoms), not O(atoms · d).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::linalg::{self, axpy, Code};
use super::{
    normalise_rows, project_out_radial, random_atoms, Adam, DictConfig, DictError, Dictionary,
    Normaliser, OnPoint, Reporter, TrainOptions,
};

/// The largest eigenvalue of the symmetric `[m, m]` matrix `g` (power iteration): FISTA's
/// Lipschitz constant.
pub fn lipschitz(g: &[f32], m: usize) -> f32 {
    let mut v = vec![1.0 / (m as f32).sqrt(); m];
    let mut lambda = 1.0;
    for _ in 0..50 {
        let mut w = vec![0f32; m];
        for (i, &vi) in v.iter().enumerate() {
            if vi != 0.0 {
                axpy(vi, &g[i * m..(i + 1) * m], &mut w);
            }
        }
        let n = linalg::norm2(&w).sqrt();
        if n == 0.0 {
            return 1.0;
        }
        lambda = n;
        w.iter_mut().for_each(|x| *x /= n);
        v = w;
    }
    // A little above the estimate: a step of 1/L must not overshoot.
    lambda * 1.01
}

/// Non-negative codes of the rows of `x` (`[n, d]`) over the atoms `w` (`[m, d]`).
pub fn codes(w: &[f32], d: usize, x: &[f32], lambda: f32, iters: usize) -> Vec<Code> {
    let m = w.len() / d.max(1);
    let n = x.len() / d.max(1);
    if m == 0 || n == 0 {
        return vec![Vec::new(); n];
    }
    let g = linalg::matmul_t(w, m, w, m, d);
    let l = lipschitz(&g, m);
    let c = linalg::matmul_t(x, n, w, m, d);
    solve(&g, &c, m, n, l, lambda, iters)
}

/// FISTA for every row of `c` (`xWᵀ`, `[n, m]`), on both cores.
pub fn solve(
    g: &[f32],
    c: &[f32],
    m: usize,
    n: usize,
    l: f32,
    lambda: f32,
    iters: usize,
) -> Vec<Code> {
    let parts = linalg::par_chunks(n, Vec::new, |out: &mut Vec<Code>, range| {
        let (mut a, mut a_new, mut y, mut grad) =
            (vec![0f32; m], vec![0f32; m], vec![0f32; m], vec![0f32; m]);
        for i in range {
            let ci = &c[i * m..(i + 1) * m];
            a.fill(0.0);
            y.fill(0.0);
            let mut t = 1.0f32;
            for _ in 0..iters {
                for (g, &c) in grad.iter_mut().zip(ci) {
                    *g = -c;
                }
                for (j, &yj) in y.iter().enumerate() {
                    if yj != 0.0 {
                        axpy(yj, &g[j * m..(j + 1) * m], &mut grad);
                    }
                }
                for ((an, &yv), &gv) in a_new.iter_mut().zip(&y).zip(&grad) {
                    *an = (yv - (gv + lambda) / l).max(0.0);
                }
                let t_new = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
                let mom = (t - 1.0) / t_new;
                for ((yv, &an), &ao) in y.iter_mut().zip(&a_new).zip(&a) {
                    let v = an + mom * (an - ao);
                    *yv = v.max(0.0);
                }
                std::mem::swap(&mut a, &mut a_new);
                t = t_new;
            }
            let mut code: Code = a
                .iter()
                .enumerate()
                .filter(|(_, &v)| v > 0.0)
                .map(|(j, &v)| (j as u32, v))
                .collect();
            code.sort_by(|x, y| y.1.total_cmp(&x.1));
            out.push(code);
        }
    });
    parts.into_iter().flatten().collect()
}

/// Trains one dictionary on the rows of every hook (`xn[h]`, each normalised on its own).
pub fn train(
    xn: &[Vec<f32>],
    d: usize,
    config: DictConfig,
    norms: Vec<Normaliser>,
    opts: &TrainOptions,
    on_point: &mut OnPoint<'_>,
) -> Result<Dictionary, DictError> {
    let m = opts.atoms;
    if opts.lambda.is_nan() || opts.lambda < 0.0 {
        return Err(DictError::Invalid(format!(
            "--lambda must be ≥ 0, not {}",
            opts.lambda
        )));
    }
    let per = xn[0].len() / d;
    let n = per * xn.len();
    let row = |i: usize| -> &[f32] {
        let (h, r) = (i / per, i % per);
        &xn[h][r * d..(r + 1) * d]
    };
    let mut dict = Dictionary::decoder_only(config, norms, random_atoms(m, d, opts.seed));
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    // Start from real rows: random directions in 576 dimensions explain nothing, and FISTA would
    // leave every code at zero.
    for j in 0..m {
        let r = row(rng.random_range(0..n)).to_vec();
        if linalg::norm2(&r) > 0.0 {
            dict.w_dec[j * d..(j + 1) * d].copy_from_slice(&r);
        }
    }
    normalise_rows(&mut dict.w_dec, d);
    let mut adam = Adam::new(m * d, opts.lr);
    let tot: f64 = xn
        .iter()
        .flat_map(|x| x.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / n as f64;
    let mut order: Vec<usize> = (0..n).collect();
    let batch = opts.batch.max(1).min(n) * 4;
    let batches = n.div_ceil(batch);
    let mut report = Reporter::new(tot);
    let mut used = vec![false; m];
    'epochs: for epoch in 0..opts.epochs.max(1) {
        order.shuffle(&mut rng);
        used.fill(false);
        for (bi, rows) in order.chunks(batch).enumerate() {
            let b = rows.len();
            let mut xb = Vec::with_capacity(b * d);
            for &r in rows {
                xb.extend_from_slice(row(r));
            }
            let codes = codes(&dict.w_dec, d, &xb, opts.lambda, super::FISTA_ITERS);
            let mut grad = vec![0f32; m * d];
            let mut r = vec![0f32; d];
            for (i, code) in codes.iter().enumerate() {
                r.copy_from_slice(&xb[i * d..(i + 1) * d]);
                for &(j, v) in code {
                    axpy(-v, dict.atom(j as usize), &mut r);
                    used[j as usize] = true;
                }
                report.add(f64::from(linalg::norm2(&r)), 1, code.len());
                // ∂/∂W_j of ½‖r‖² / B
                for &(j, v) in code {
                    let j = j as usize;
                    axpy(-v / b as f32, &r, &mut grad[j * d..(j + 1) * d]);
                }
            }
            project_out_radial(&dict.w_dec, &mut grad, d);
            adam.step(&mut dict.w_dec, &grad);
            normalise_rows(&mut dict.w_dec, d);
            let over = report.over(opts);
            let last = (epoch + 1 == opts.epochs.max(1) && bi + 1 == batches) || over;
            let dead = || used.iter().filter(|&&u| !u).count() as f32 / m as f32;
            report.step((epoch, bi, batches), last, dead, &mut dict, on_point)?;
            if over {
                break 'epochs;
            }
        }
        // Atoms no row used this epoch restart at a random row.
        if epoch + 1 < opts.epochs.max(1) {
            for (j, _) in used.iter().enumerate().filter(|(_, &u)| !u) {
                let r = row(rng.random_range(0..n)).to_vec();
                dict.w_dec[j * d..(j + 1) * d].copy_from_slice(&r);
                linalg::normalise(&mut dict.w_dec[j * d..(j + 1) * d]);
                adam.reset(j * d..(j + 1) * d);
            }
        }
    }
    Ok(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An orthonormal dictionary: FISTA's answer is soft thresholding, max(0, ⟨x, w_j⟩ − λ).
    #[test]
    fn fista_solves_an_orthonormal_problem() {
        let d = 4;
        let w = vec![
            1.0, 0.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, 0.0, //
            0.0, 0.0, 1.0, 0.0,
        ];
        let x = vec![3.0, -2.0, 0.5, 7.0];
        let code = &codes(&w, d, &x, 0.25, 200)[0];
        assert_eq!(code.len(), 2, "{code:?}");
        assert_eq!(code[0].0, 0);
        assert!((code[0].1 - 2.75).abs() < 1e-4, "{code:?}");
        assert_eq!(code[1].0, 2);
        assert!((code[1].1 - 0.25).abs() < 1e-4, "{code:?}");
    }
}
