//! What an activation or an edit means for the output: distributions, losses, divergences,
//! top tokens, and the whole-probe maps the viewer draws ([`maps`]). Plain data in, plain numbers
//! out; no tensors, no egui.

pub mod maps;

/// `log softmax(logits)`, computed stably in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
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
