//! Induction heads: set A's sequences repeated (`a a`), against controls at the same positions
//! (`a b`, b = set B's sequence of the same index, trimmed or extended to a's length).
//!
//! A head's induction score is its mean attention from each token of the second copy to the
//! token after that token's first occurrence (TransformerLens's `pattern.diagonal(1 − len)`):
//! with the first copy at positions `o..o+L` (o = 1 after a BOS), query `o+L+j`, key `o+j+1`,
//! j = 0..L. The control's score reads the same cells of the control's pattern.

use serde::Serialize;

use super::{ExperimentError, Result, Runner};
use crate::corpus::protocol::{Protocol, Side};
use crate::features::FeatureId;
use crate::hooks::{BlockSite, Capture, HookPoint};
use crate::model::Logits;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HeadScore {
    pub head: String,
    pub layer: usize,
    pub score: f64,
    pub control: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InductionReport {
    pub protocol: String,
    pub kind: &'static str,
    /// Every head, highest induction score first.
    pub heads: Vec<HeadScore>,
    /// Mean loss per predicted token (nats) on the first copy (its positions 1.. of the copy),
    /// on the second copy and on the control's second half.
    pub nll_first: f64,
    pub nll_second: f64,
    pub nll_control: f64,
    pub sequences: usize,
    /// Mean tokens of one copy.
    pub mean_copy_tokens: f64,
    /// The same scores as a layers × heads grid, for the views and the figure (not in the JSON).
    #[serde(skip)]
    pub grid: HeadGrid,
}

/// Every head's score and control, `cells[layer * heads + head]`, with the largest of them all
/// (the colour scale both share).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadGrid {
    pub layers: usize,
    pub heads: usize,
    pub cells: Vec<(f64, f64)>,
    pub max: f64,
}

/// A repeated sequence, its control, and where the first copy starts.
pub struct Pair {
    pub repeated: Vec<u32>,
    pub control: Vec<u32>,
    pub offset: usize,
    pub len: usize,
}

/// The pairs of a protocol: `a a` and `a b` for each index; `b`'s tokens are extended with the
/// next controls' (cyclically) when shorter than `a`'s, then cut to `a`'s length.
pub fn pairs(runner: &Runner, protocol: &Protocol) -> Result<Vec<Pair>> {
    let model = runner.model;
    let bos = super::special_prefix(model).len();
    let a = protocol.tokenize(model, Side::A)?;
    let b = protocol.tokenize(model, Side::B)?;
    let body = |ids: Vec<u32>| ids[bos.min(ids.len())..].to_vec();
    let bodies_b: Vec<Vec<u32>> = b.iter().map(|t| body(t.ids())).collect();
    if bodies_b.iter().all(Vec::is_empty) {
        return Err(ExperimentError::Invalid(format!(
            "protocol `{}`: set B's controls have no tokens",
            protocol.name
        )));
    }
    let mut out = Vec::new();
    for (i, t) in a.iter().enumerate() {
        let ids = t.ids();
        let first = body(ids.clone());
        let len = first.len();
        if len < 2 {
            return Err(ExperimentError::Invalid(format!(
                "protocol `{}`: stimulus {} of set A is {} long; a repeated sequence needs at least 2 tokens",
                protocol.name,
                i + 1,
                crate::count(len, "token", "tokens")
            )));
        }
        let mut control: Vec<u32> = Vec::with_capacity(len);
        let mut k = i;
        while control.len() < len {
            control.extend_from_slice(&bodies_b[k % bodies_b.len()]);
            k += 1;
        }
        control.truncate(len);
        let prefix = &ids[..bos.min(ids.len())];
        let repeated: Vec<u32> = prefix.iter().chain(&first).chain(&first).copied().collect();
        let control: Vec<u32> = prefix
            .iter()
            .chain(&first)
            .chain(&control)
            .copied()
            .collect();
        let n_ctx = model.config().n_ctx;
        if repeated.len() > n_ctx {
            return Err(ExperimentError::Invalid(format!(
                "protocol `{}`: stimulus {} of set A repeated is {} tokens, beyond the model's context of {n_ctx}",
                protocol.name,
                i + 1,
                repeated.len()
            )));
        }
        out.push(Pair {
            repeated,
            control,
            offset: prefix.len(),
            len,
        });
    }
    Ok(out)
}

/// Mean attention of head `h` from `o+L+j` to `o+j+1`, j = 0..L, in a `[heads, q, k]` pattern.
pub fn induction_score(pattern: &[f32], seq: usize, h: usize, offset: usize, len: usize) -> f64 {
    let mut sum = 0.0;
    for j in 0..len {
        let (q, k) = (offset + len + j, offset + j + 1);
        sum += f64::from(pattern[(h * seq + q) * seq + k]);
    }
    sum / len.max(1) as f64
}

pub fn run(runner: &Runner, protocol: &Protocol) -> Result<InductionReport> {
    let model = runner.model;
    let pairs = pairs(runner, protocol)?;
    let (layers, heads) = (model.config().n_layers, model.config().n_heads);
    let capture = Capture::points((0..layers).map(|l| HookPoint::block(l, BlockSite::Pattern)));
    let vocab = model.config().vocab_size;
    let tokens: u64 = pairs
        .iter()
        .map(|p| (p.repeated.len() + p.control.len()) as u64)
        .sum();
    runner.phase(&format!("Running {} sequence pairs", pairs.len()), tokens);
    let mut score = vec![0f64; layers * heads];
    let mut control = vec![0f64; layers * heads];
    let (mut first, mut second, mut ctrl) = ((0.0, 0usize), (0.0, 0usize), (0.0, 0usize));
    let seqs: Vec<Vec<u32>> = pairs
        .iter()
        .flat_map(|p| [p.repeated.clone(), p.control.clone()])
        .collect();
    runner.batched(&seqs, &capture, &[], Logits::All, |i, out| {
        let p = &pairs[i / 2];
        let is_control = i % 2 == 1;
        let seq = &seqs[i];
        let n = seq.len();
        let target = if is_control { &mut control } else { &mut score };
        for l in 0..layers {
            let pattern = out
                .record
                .get(HookPoint::block(l, BlockSite::Pattern))
                .ok_or_else(|| {
                    ExperimentError::Invalid("the run recorded no attention pattern".into())
                })?;
            for h in 0..heads {
                target[l * heads + h] += induction_score(&pattern.data, n, h, p.offset, p.len);
            }
        }
        // nll[t - 1] is the loss of token t.
        let nll = crate::analysis::token_nll(&out.logits, out.vocab.max(vocab), seq);
        let (o, len) = (p.offset, p.len);
        let add = |acc: &mut (f64, usize), from: usize, to: usize| {
            for t in from.max(1)..to {
                acc.0 += f64::from(nll[t - 1]);
                acc.1 += 1;
            }
        };
        if is_control {
            add(&mut ctrl, o + len, o + 2 * len);
        } else {
            add(&mut first, o + 1, o + len);
            add(&mut second, o + len, o + 2 * len);
        }
        Ok(())
    })?;
    let n = pairs.len().max(1) as f64;
    let cells: Vec<(f64, f64)> = (0..layers * heads)
        .map(|i| (score[i] / n, control[i] / n))
        .collect();
    let grid = HeadGrid {
        layers,
        heads,
        max: cells.iter().flat_map(|&(s, c)| [s, c]).fold(1e-9, f64::max),
        cells,
    };
    let mut list: Vec<HeadScore> = (0..layers * heads)
        .map(|i| HeadScore {
            head: FeatureId::head(i / heads, i % heads).label(),
            layer: i / heads,
            score: score[i] / n,
            control: control[i] / n,
        })
        .collect();
    list.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.head.cmp(&b.head)));
    let mean = |acc: (f64, usize)| acc.0 / acc.1.max(1) as f64;
    Ok(InductionReport {
        protocol: protocol.name.clone(),
        kind: "induction",
        heads: list,
        nll_first: mean(first),
        nll_second: mean(second),
        nll_control: mean(ctrl),
        sequences: pairs.len(),
        mean_copy_tokens: pairs.iter().map(|p| p.len as f64).sum::<f64>() / n,
        grid,
    })
}

impl InductionReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Induction: {} ({} sequences of {:.1} tokens, repeated; controls at the same positions)",
            self.protocol, self.sequences, self.mean_copy_tokens
        );
        let _ = writeln!(
            s,
            "loss per token: first copy {:.3} · second copy {:.3} · control {:.3} nats",
            self.nll_first, self.nll_second, self.nll_control
        );
        let _ = writeln!(s, "{:<8} {:>6} {:>8}", "head", "score", "control");
        for h in self.heads.iter().take(15) {
            let _ = writeln!(s, "{:<8} {:>6.3} {:>8.3}", h.head, h.score, h.control);
        }
        s
    }
}
