//! What an activation or an edit means for the output: distributions, losses, divergences,
//! top tokens, and the whole-probe maps the viewer draws ([`maps`]). Plain data in, plain numbers
//! out; no tensors, no egui.

pub mod maps;
pub mod pattern;

/// `log softmax(logits)`, computed stably in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// `ln Σ exp(logits)` in f64 (shifted by the maximum): `log_softmax(l)[i] = l[i] − this`.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// `KL(p || q)` between the softmaxes of two logit vectors, in nats.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter()
        .zip(&lq)
        .map(|(a, b)| a.exp() * (a - b))
        .sum::<f64>()
        .max(0.0)
}

/// Per-token negative log-likelihood of a probe: entry `i` is `-log p(token[i+1] | ..=i)`.
/// `logits` is `[pos, vocab]` row-major.
pub fn token_nll(logits: &[f32], vocab: usize, tokens: &[u32]) -> Vec<f32> {
    (1..tokens.len())
        .map(|i| {
            let row = &logits[(i - 1) * vocab..i * vocab];
            (-log_softmax(row)[tokens[i] as usize]) as f32
        })
        .collect()
}

/// Mean of a slice, `None` when empty.
pub fn mean(values: &[f32]) -> Option<f32> {
    (!values.is_empty())
        .then(|| (values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64) as f32)
}

/// The `k` highest logits as `(id, logit, probability)`, highest first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32, f32)> {
    let lp = log_softmax(logits);
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    ids.select_nth_unstable_by(k - 1, |&a, &b| {
        logits[b].total_cmp(&logits[a]).then(a.cmp(&b))
    });
    ids.truncate(k);
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    ids.into_iter()
        .map(|i| (i as u32, logits[i], lp[i].exp() as f32))
        .collect()
}

/// `(token id, value)` pairs, in rank order.
pub type Ranked = Vec<(u32, f32)>;

/// The `k` highest and the `k` lowest entries of `values` as `(id, value)`: promoted (highest
/// first) and suppressed (lowest first), ties broken by the lower id. A direct logit effect's two
/// lists.
pub fn promoted_suppressed(values: &[f32], k: usize) -> (Ranked, Ranked) {
    let k = k.min(values.len());
    let pick = |higher: bool| -> Ranked {
        if k == 0 {
            return Vec::new();
        }
        let cmp = |a: &usize, b: &usize| {
            let by_value = values[*b].total_cmp(&values[*a]);
            (if higher { by_value } else { by_value.reverse() }).then(a.cmp(b))
        };
        let mut ids: Vec<usize> = (0..values.len()).collect();
        ids.select_nth_unstable_by(k - 1, cmp);
        ids.truncate(k);
        ids.sort_by(cmp);
        ids.into_iter().map(|i| (i as u32, values[i])).collect()
    };
    (pick(true), pick(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promoted_and_suppressed_are_the_extremes_in_order() {
        let (up, down) = promoted_suppressed(&[0.5, -2.0, 3.0, -2.0, 1.0], 2);
        assert_eq!(up, vec![(2, 3.0), (4, 1.0)]);
        assert_eq!(down, vec![(1, -2.0), (3, -2.0)]);
        let (up, down) = promoted_suppressed(&[1.0], 5);
        assert_eq!((up.len(), down.len()), (1, 1));
        assert_eq!(promoted_suppressed(&[], 3), (vec![], vec![]));
    }

    #[test]
    fn kl_is_zero_for_equal_and_positive_otherwise() {
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        // p = softmax([0, ln 3]) = [0.25, 0.75], q = uniform: KL = 0.25 ln 0.5 + 0.75 ln 1.5
        let kl = kl_divergence(&[0.0, 3f32.ln()], &[0.0, 0.0]);
        assert!(
            (kl - (0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln())).abs() < 1e-6,
            "{kl}"
        );
    }

    #[test]
    fn nll_reads_the_previous_row() {
        // vocab 2; row 0 predicts token 1 with p = 0.75.
        let logits = [0.0, 3f32.ln(), 0.0, 0.0];
        let nll = token_nll(&logits, 2, &[0, 1]);
        assert_eq!(nll.len(), 1);
        assert!((nll[0] - (-(0.75f32).ln())).abs() < 1e-6);
    }

    #[test]
    fn top_k_is_sorted_with_probabilities() {
        let top = top_k(&[0.0, 5.0, 1.0, 5.0], 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f32 = top_k(&[0.0, 5.0, 1.0, 5.0], 4).iter().map(|t| t.2).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}

/// How far one run's logits are from another's on the same probe (the fast path's against the
/// exact path's): the fidelity meter.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fidelity {
    /// `KL(exact ‖ other)` of the next-token distributions after the last position, in nats.
    pub kl_last: f64,
    /// The largest such KL over all positions.
    pub kl_max: f64,
    /// The fraction of positions whose top-1 next token is the same.
    pub top1_agreement: f64,
    /// The largest `|Δ logit|` anywhere.
    pub max_abs_dlogit: f32,
    pub positions: usize,
}

/// Compares two `[pos, vocab]` logit arrays of one probe. A non-finite logit in `other` counts
/// as infinitely far (KL and |Δ| become infinite, the position disagrees).
pub fn fidelity(exact: &[f32], other: &[f32], vocab: usize) -> Fidelity {
    let positions = exact.len().min(other.len()) / vocab.max(1);
    let (mut kl_last, mut kl_max, mut agree, mut max_abs) = (0.0, 0.0f64, 0usize, 0f32);
    for p in 0..positions {
        let (e, o) = (
            &exact[p * vocab..(p + 1) * vocab],
            &other[p * vocab..(p + 1) * vocab],
        );
        let finite = o.iter().all(|v| v.is_finite());
        let kl = if finite {
            kl_divergence(e, o)
        } else {
            f64::INFINITY
        };
        kl_max = kl_max.max(kl);
        if p + 1 == positions {
            kl_last = kl;
        }
        let argmax = |v: &[f32]| top_k(v, 1).first().map(|t| t.0);
        agree += usize::from(finite && argmax(e) == argmax(o));
        for (a, b) in e.iter().zip(o) {
            let d = (a - b).abs();
            max_abs = if d.is_nan() {
                f32::INFINITY
            } else {
                max_abs.max(d)
            };
        }
    }
    Fidelity {
        kl_last,
        kl_max,
        top1_agreement: if positions == 0 {
            1.0
        } else {
            agree as f64 / positions as f64
        },
        max_abs_dlogit: max_abs,
        positions,
    }
}

#[cfg(test)]
mod fidelity_tests {
    use super::*;

    #[test]
    fn identical_logits_are_perfectly_faithful() {
        let l = [1.0, 2.0, 0.5, 3.0, -1.0, 0.0];
        let f = fidelity(&l, &l, 3);
        assert_eq!(
            (f.kl_last, f.kl_max, f.top1_agreement, f.max_abs_dlogit),
            (0.0, 0.0, 1.0, 0.0)
        );
        assert_eq!(f.positions, 2);
    }

    #[test]
    fn a_changed_top_token_and_a_nan_are_seen() {
        let exact = [1.0, 2.0, 0.5, 3.0, -1.0, 0.0];
        let moved = [1.0, 2.0, 0.5, 3.0, -1.0, 3.5];
        let f = fidelity(&exact, &moved, 3);
        assert_eq!(f.top1_agreement, 0.5);
        assert_eq!(f.max_abs_dlogit, 3.5);
        assert!(f.kl_last > 0.5 && f.kl_max == f.kl_last, "{f:?}");
        let nan = [1.0, 2.0, f32::NAN, 3.0, -1.0, 0.0];
        let f = fidelity(&exact, &nan, 3);
        assert!(f.kl_max.is_infinite() && f.max_abs_dlogit.is_infinite());
        assert_eq!(f.top1_agreement, 0.5);
    }
}
