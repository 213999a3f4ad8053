//! ITDA, inference-time decomposition of activations (Leask et al. 2025): the dictionary is
//! built from the activations themselves. Rows are read in a shuffled order and coded by
//! matching pursuit over the atoms so far; a row the atoms explain poorly (relative error above a
//! threshold) becomes an atom itself, unit-normalised. When a pass over the rows leaves the
//! dictionary short of its size the threshold is lowered and the rows read again. Every atom is
//! a real token in its context: a literal preferred stimulus.
//!
//! Codes are non-negative matching pursuit: at most `k` steps, each adding the atom with the
//! largest positive correlation with the residual (an atom may be chosen twice), updated through
//! the Gram matrix.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::linalg::{self, dot, Code};
use super::{DictConfig, DictError, Dictionary, Normaliser, OnPoint, TrainOptions, TrainPoint};

/// Matching pursuit for one row: `rho` holds ⟨x, w_j⟩ on entry (overwritten); `g(j)` is row j of
/// the Gram matrix.
fn pursue_row<'g>(rho: &mut [f32], k: usize, g: impl Fn(usize) -> &'g [f32]) -> Code {
    let mut code: Code = Vec::with_capacity(k.min(rho.len()));
    for _ in 0..k {
        let (j, &best) = match rho.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
            Some(x) => x,
            None => break,
        };
        if best <= 0.0 {
            break;
        }
        match code.iter_mut().find(|(i, _)| *i as usize == j) {
            Some((_, v)) => *v += best,
            None => code.push((j as u32, best)),
        }
        linalg::axpy(-best, g(j), rho);
    }
    code.sort_by(|a, b| b.1.total_cmp(&a.1));
    code
}

/// Codes of the rows of `x` (`[n, d]`) over the unit atoms `w` (`[m, d]`).
pub fn pursue(w: &[f32], d: usize, x: &[f32], k: usize) -> Vec<Code> {
    let m = w.len() / d.max(1);
    let n = x.len() / d.max(1);
    if m == 0 {
        return vec![Vec::new(); n];
    }
    let g = linalg::matmul_t(w, m, w, m, d);
    let c = linalg::matmul_t(x, n, w, m, d);
    let parts = linalg::par_chunks(n, Vec::new, |out: &mut Vec<Code>, range| {
        for i in range {
            let mut rho = c[i * m..(i + 1) * m].to_vec();
            out.push(pursue_row(&mut rho, k, |j| &g[j * m..(j + 1) * m]));
        }
    });
    parts.into_iter().flatten().collect()
}

/// Rows per matching-pursuit batch while the dictionary grows.
const BATCH: usize = 256;
/// Two candidates closer than this (cosine) in one batch: only the first becomes an atom.
const DUPLICATE_COS: f32 = 0.9;

pub fn train(
    x: &[f32],
    d: usize,
    config: DictConfig,
    norms: Vec<Normaliser>,
    opts: &TrainOptions,
    on_point: &mut OnPoint<'_>,
) -> Result<Dictionary, DictError> {
    let started = Instant::now();
    let n = x.len() / d;
    let (m_max, k) = (opts.atoms, opts.k.max(1));
    let mut w: Vec<f32> = Vec::with_capacity(m_max * d);
    // The Gram matrix, stride m_max.
    let mut g = vec![0f32; m_max * m_max];
    let mut sources: Vec<u32> = Vec::new();
    let mut is_atom = vec![false; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(opts.seed));
    let mut threshold = 0.5f32;
    let mut last_report = Instant::now();
    let (mut run_err, mut run_tot, mut run_active, mut run_rows) = (0f64, 0f64, 0usize, 0usize);
    let passes = 8;
    let dict = |w: &Vec<f32>, sources: &Vec<u32>, config: &DictConfig| Dictionary {
        sources: sources.clone(),
        ..Dictionary::decoder_only(
            DictConfig {
                atoms: w.len() / d,
                k,
                ..config.clone()
            },
            norms.clone(),
            w.clone(),
        )
    };
    'passes: for pass in 0..passes {
        for (bi, rows) in order.chunks(BATCH).enumerate() {
            let m = w.len() / d;
            if m >= m_max {
                break 'passes;
            }
            let rows: Vec<usize> = rows.iter().copied().filter(|&r| !is_atom[r]).collect();
            let mut xb = Vec::with_capacity(rows.len() * d);
            for &r in &rows {
                xb.extend_from_slice(&x[r * d..(r + 1) * d]);
            }
            let c = linalg::matmul_t(&xb, rows.len(), &w, m, d);
            let mut added: Vec<usize> = Vec::new();
            for (i, &r) in rows.iter().enumerate() {
                let xi = &xb[i * d..(i + 1) * d];
                let norm = linalg::norm2(xi);
                if norm == 0.0 {
                    continue;
                }
                let code = if m > 0 {
                    let mut rho = c[i * m..(i + 1) * m].to_vec();
                    pursue_row(&mut rho, k, |j| &g[j * m_max..j * m_max + m])
                } else {
                    Vec::new()
                };
                let mut res = xi.to_vec();
                for &(j, v) in &code {
                    linalg::axpy(-v, &w[j as usize * d..(j as usize + 1) * d], &mut res);
                }
                let err = linalg::norm2(&res);
                run_err += f64::from(err);
                run_tot += f64::from(norm);
                run_active += code.len();
                run_rows += 1;
                if err / norm <= threshold || w.len() / d >= m_max {
                    continue;
                }
                let mut atom = xi.to_vec();
                linalg::normalise(&mut atom);
                if added
                    .iter()
                    .any(|&a| dot(&w[a * d..(a + 1) * d], &atom) > DUPLICATE_COS)
                {
                    continue;
                }
                // The new atom's row and column of the Gram matrix.
                let j = w.len() / d;
                for a in 0..j {
                    let v = dot(&w[a * d..(a + 1) * d], &atom);
                    g[a * m_max + j] = v;
                    g[j * m_max + a] = v;
                }
                g[j * m_max + j] = 1.0;
                w.extend_from_slice(&atom);
                sources.push(r as u32);
                is_atom[r] = true;
                added.push(j);
            }
            if last_report.elapsed().as_secs_f32() >= 0.5 {
                let point = TrainPoint {
                    epoch: pass as f32 + (bi + 1) as f32 * BATCH as f32 / n as f32,
                    loss: (run_err / run_rows.max(1) as f64) as f32,
                    fvu: (run_err / run_tot.max(1e-12)) as f32,
                    l0: run_active as f32 / run_rows.max(1) as f32,
                    dead_frac: 0.0,
                    seconds: started.elapsed().as_secs_f32(),
                };
                let mut snapshot = dict(&w, &sources, &config);
                snapshot.config.trained = Some(point);
                on_point(&point, &snapshot)?;
                (run_err, run_tot, run_active, run_rows) = (0.0, 0.0, 0, 0);
                last_report = Instant::now();
            }
        }
        threshold *= 0.6;
    }
    if w.is_empty() {
        return Err(DictError::Invalid("no row could become an atom".into()));
    }
    let mut out = dict(&w, &sources, &config);
    // The final figures over every row, with the finished dictionary.
    let codes = pursue(&out.w_dec, d, x, k);
    let (mut err, mut tot, mut active) = (0f64, 0f64, 0usize);
    let mut used = vec![false; out.atoms()];
    for (i, code) in codes.iter().enumerate() {
        let xi = &x[i * d..(i + 1) * d];
        let mut res = xi.to_vec();
        for &(j, v) in code {
            linalg::axpy(-v, out.atom(j as usize), &mut res);
            used[j as usize] = true;
        }
        err += f64::from(linalg::norm2(&res));
        tot += f64::from(linalg::norm2(xi));
        active += code.len();
    }
    let point = TrainPoint {
        epoch: 1.0,
        loss: (err / n as f64) as f32,
        fvu: (err / tot.max(1e-12)) as f32,
        l0: active as f32 / n as f32,
        dead_frac: used.iter().filter(|&&u| !u).count() as f32 / used.len() as f32,
        seconds: started.elapsed().as_secs_f32(),
    };
    out.config.trained = Some(point);
    out.config.seconds = point.seconds;
    on_point(&point, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_pursuit_recovers_a_planted_combination() {
        // Orthonormal atoms: one pursuit step per atom, exact coefficients.
        let d = 3;
        let w = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let x = vec![0.5, 2.0, -1.0];
        let code = &pursue(&w, d, &x, 3)[0];
        assert_eq!(code, &vec![(1, 2.0), (0, 0.5)], "negative parts stay out");
        let code = &pursue(&w, d, &x, 1)[0];
        assert_eq!(code, &vec![(1, 2.0)]);
    }
}
