//! Codes by non-negative orthogonal matching pursuit over a dictionary's atoms: at most `k`
//! steps, each adding the atom most correlated with what the atoms chosen so far leave
//! unexplained, then refitting every chosen atom's coefficient (least squares, coefficients
//! ≥ 0). A top-k SAE's encoder is one linear map learnt on its training rows; on text it has not
//! seen, pursuit over the same decoder reconstructs better at the same L0 (the "amortisation
//! gap"; inference-time optimisation of SAE codes). It is a choice of how a dictionary encodes
//! ([`super::Encoding::Pursuit`]), not a different dictionary.
//!
//! Everything runs on the Gram matrix G = W Wᵀ: the correlations of the residual are
//! `xWᵀ − c G_S`, each divided by its atom's length √G_jj to choose (atoms need not be unit
//! length: an imported SAELens SAE's are not), and the refit is coordinate descent on
//! ½ cᵀ G_SS c − cᵀ (xWᵀ)_S with c ≥ 0, started from the previous step's coefficients.

use super::linalg::{self, axpy, Code};

/// Coordinate-descent sweeps of one refit, at most.
const SWEEPS: usize = 200;
/// A refit stops when no coefficient moves by more than this share of the largest.
const TOL: f32 = 1e-6;
/// Pursuit stops when the residual's best (length-normalised) correlation falls under this share
/// of the first step's: what is left is below the refit's accuracy, not signal.
const FLOOR: f32 = 1e-4;

/// Codes of the rows of `x` (`[n, d]`, already centred) over the atoms `w` (`[m, d]`).
pub fn codes(w: &[f32], d: usize, x: &[f32], k: usize) -> Vec<Code> {
    let m = w.len() / d.max(1);
    let n = x.len() / d.max(1);
    if m == 0 || n == 0 || k == 0 {
        return vec![Vec::new(); n];
    }
    let g = linalg::matmul_t(w, m, w, m, d);
    let c = linalg::matmul_t(x, n, w, m, d);
    solve(&g, &c, m, n, k)
}

/// Pursuit for every row of `c` (`xWᵀ`, `[n, m]`) with the Gram matrix `g`, on both cores.
pub fn solve(g: &[f32], c: &[f32], m: usize, n: usize, k: usize) -> Vec<Code> {
    // 1/‖w_j‖ (0 for an atom of length 0: never chosen).
    let inv_len: Vec<f32> = (0..m)
        .map(|j| {
            let d = g[j * m + j];
            if d > 0.0 {
                1.0 / d.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let parts = linalg::par_chunks(n, Vec::new, |out: &mut Vec<Code>, range| {
        let mut scratch = Scratch::new(m);
        for i in range {
            out.push(row(&c[i * m..(i + 1) * m], g, &inv_len, k, &mut scratch));
        }
    });
    parts.into_iter().flatten().collect()
}

struct Scratch {
    rho: Vec<f32>,
    chosen: Vec<bool>,
    support: Vec<usize>,
    coef: Vec<f32>,
    /// G restricted to the support, `[s, s]` with stride `k`.
    gss: Vec<f32>,
}

impl Scratch {
    fn new(m: usize) -> Self {
        Scratch {
            rho: vec![0.0; m],
            chosen: vec![false; m],
            support: Vec::new(),
            coef: Vec::new(),
            gss: Vec::new(),
        }
    }
}

fn row(alpha: &[f32], g: &[f32], inv_len: &[f32], k: usize, s: &mut Scratch) -> Code {
    let m = inv_len.len();
    let k = k.min(m);
    s.rho.copy_from_slice(alpha);
    for &j in &s.support {
        s.chosen[j] = false;
    }
    s.support.clear();
    s.coef.clear();
    s.gss.clear();
    s.gss.resize(k * k, 0.0);
    let mut floor = 0f32;
    for _ in 0..k {
        let best = s
            .rho
            .iter()
            .zip(inv_len)
            .enumerate()
            .filter(|&(j, _)| !s.chosen[j])
            .map(|(j, (&r, &l))| (j, r * l))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((j, value)) = best else { break };
        if value.is_nan() || value <= floor {
            break;
        }
        if s.support.is_empty() {
            floor = value * FLOOR;
        }
        let at = s.support.len();
        s.chosen[j] = true;
        s.support.push(j);
        s.coef.push(0.0);
        let gj = &g[j * m..(j + 1) * m];
        for (b, &sb) in s.support.iter().enumerate() {
            s.gss[at * k + b] = gj[sb];
            s.gss[b * k + at] = gj[sb];
        }
        refit(alpha, s, k);
        s.rho.copy_from_slice(alpha);
        for (&sb, &cb) in s.support.iter().zip(&s.coef) {
            if cb != 0.0 {
                axpy(-cb, &g[sb * m..(sb + 1) * m], &mut s.rho);
            }
        }
    }
    let mut code: Code = s
        .support
        .iter()
        .zip(&s.coef)
        .filter(|&(_, &c)| c > 0.0)
        .map(|(&j, &c)| (j as u32, c))
        .collect();
    code.sort_by(|a, b| b.1.total_cmp(&a.1));
    code
}

/// Coordinate descent on the support's coefficients, ≥ 0.
fn refit(alpha: &[f32], s: &mut Scratch, k: usize) {
    let n = s.support.len();
    for _ in 0..SWEEPS {
        let (mut moved, mut largest) = (0f32, 0f32);
        for a in 0..n {
            let diag = s.gss[a * k + a];
            if diag <= 0.0 {
                continue;
            }
            let row = &s.gss[a * k..a * k + n];
            let grad = alpha[s.support[a]] - linalg::dot(row, &s.coef[..n]);
            let new = (s.coef[a] + grad / diag).max(0.0);
            moved = moved.max((new - s.coef[a]).abs());
            s.coef[a] = new;
            largest = largest.max(new);
        }
        if moved <= TOL * largest {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Orthonormal atoms: pursuit finds exactly the planted positive coefficients and drops the
    /// negative one.
    #[test]
    fn recovers_a_planted_code_over_orthonormal_atoms() {
        let (m, d) = (6, 8);
        let mut w = vec![0f32; m * d];
        for j in 0..m {
            w[j * d + j] = 1.0;
        }
        let x = [0.0, 3.0, 0.0, -2.0, 0.5, 0.0, 7.0, 0.0];
        let code = &codes(&w, d, &x, 4)[0];
        assert_eq!(code, &vec![(1, 3.0), (4, 0.5)]);
        assert_eq!(codes(&w, d, &x, 1)[0], vec![(1, 3.0)]);
    }

    /// Atoms of other lengths: chosen by direction, not length. A long atom at 45° to x would
    /// win on raw correlation; the atom along x is chosen and carries x alone.
    #[test]
    fn chooses_by_direction_whatever_the_atoms_length() {
        let d = 2;
        let w = [1.0, 0.0, 10.0, 10.0];
        let x = [2.0, 0.0];
        assert_eq!(codes(&w, d, &x, 1)[0], vec![(0, 2.0)]);
        let long = [4.0, 0.0, 0.0, 1.0];
        let code = &codes(&long, d, &[2.0, 3.0], 2)[0];
        assert_eq!(code.len(), 2);
        let get = |j: u32| code.iter().find(|c| c.0 == j).unwrap().1;
        assert!(
            (get(0) - 0.5).abs() < 1e-5 && (get(1) - 3.0).abs() < 1e-5,
            "{code:?}"
        );
    }
}
