//! The logit lens (nostalgebraist 2020): each layer's residual stream (`hook_resid_post`) read
//! as if it were the last, through the model's own final norm and unembedding
//! ([`Model::unembed_resid`]). At every layer × position: the top tokens with their
//! probabilities, and a target token's probability and rank; per position the layer from which
//! the final top-1 token stays top-1 (its commitment).

use serde::Serialize;

use super::{single_token, token_text, tokenize, Result, TokenRef};
use crate::hooks::{BlockSite, Capture, HookPoint, Intervention};
use crate::model::{Logits, Model};

/// How many top tokens a cell lists by default.
pub const DEFAULT_TOP: usize = 5;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenProb {
    pub token: String,
    pub id: u32,
    pub prob: f32,
}

/// One layer × position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    /// Highest first.
    pub top: Vec<TokenProb>,
    /// The target's probability here (`null` without a target).
    pub target_prob: Option<f32>,
    /// The target's rank here: 1 for the top token (`null` without a target).
    pub target_rank: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layer {
    pub layer: usize,
    pub positions: Vec<Cell>,
}

/// The lens of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Grid {
    pub layers: Vec<Layer>,
    /// Per position, the first layer from which the final layer's top-1 token is the top-1 at
    /// every later layer (`n_layers − 1` when only the last layer has it).
    pub commit_layer: Vec<usize>,
}

impl Grid {
    pub fn cell(&self, layer: usize, pos: usize) -> Option<&Cell> {
        self.layers.get(layer)?.positions.get(pos)
    }

    pub fn positions(&self) -> usize {
        self.layers.first().map_or(0, |l| l.positions.len())
    }
}

/// `hubel lens --json`: the grid of the run asked for (with its interventions), and the
/// baseline's beside it when there are interventions.
#[derive(Clone, Debug, Serialize)]
pub struct LensReport {
    pub model: String,
    pub text: String,
    pub tokens: Vec<String>,
    pub target: Option<TokenRef>,
    /// The interventions of the run shown, as specs.
    pub interventions: Vec<String>,
    #[serde(flatten)]
    pub grid: Grid,
    /// The run without interventions (only when there are some).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Grid>,
}

/// The lens of `tokens` run with `interventions`: `top` tokens per cell (at least 1) and the
/// `target`'s probability and rank.
pub fn grid(
    model: &Model,
    tokens: &[u32],
    interventions: &[Intervention],
    target: Option<u32>,
    top: usize,
    cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Result<Grid> {
    let top = top.max(1);
    let n_layers = model.config().n_layers;
    let capture = Capture::sites([BlockSite::ResidPost]);
    let out = model
        .run_batch(
            &[tokens],
            &capture,
            interventions,
            Logits::None,
            cancel.clone(),
        )?
        .pop()
        .expect("one sequence in, one out");
    let d = model.config().d_model;
    let vocab = model.config().vocab_size;
    let mut layers = Vec::with_capacity(n_layers);
    for layer in 0..n_layers {
        if cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(super::CircuitError::Cancelled);
        }
        let point = HookPoint::block(layer, BlockSite::ResidPost);
        let act = out
            .record
            .get(point)
            .ok_or_else(|| crate::model::ModelError::Format(format!("{point} was not recorded")))?;
        let mut positions = Vec::with_capacity(tokens.len());
        for rows in act.data.chunks(crate::model::LENS_ROWS * d) {
            let logits = model.unembed_resid(rows)?;
            for row in logits.chunks(vocab) {
                positions.push(cell(model, row, target, top));
            }
        }
        layers.push(Layer { layer, positions });
    }
    let commit_layer = commitment(&layers);
    Ok(Grid {
        layers,
        commit_layer,
    })
}

/// One cell from its logits.
fn cell(model: &Model, logits: &[f32], target: Option<u32>, top: usize) -> Cell {
    let top = crate::analysis::top_k(logits, top)
        .into_iter()
        .map(|(id, _, prob)| TokenProb {
            token: token_text(model, id),
            id,
            prob,
        })
        .collect();
    let (target_prob, target_rank) = match target.map(|t| t as usize) {
        Some(t) if t < logits.len() => {
            let lp = crate::analysis::log_softmax(logits);
            let v = logits[t];
            // Ties count in the target's favour unless a lower id has them (top_k's order).
            let above = logits
                .iter()
                .enumerate()
                .filter(|&(i, &l)| l > v || (l == v && i < t))
                .count();
            (Some(lp[t].exp() as f32), Some(above + 1))
        }
        _ => (None, None),
    };
    Cell {
        top,
        target_prob,
        target_rank,
    }
}

/// Per position, the first layer from which the last layer's top-1 stays top-1.
pub fn commitment(layers: &[Layer]) -> Vec<usize> {
    let Some(last) = layers.last() else {
        return Vec::new();
    };
    (0..last.positions.len())
        .map(|p| {
            let final_top = last.positions[p].top.first().map(|t| t.id);
            let mut commit = layers.len() - 1;
            for l in (0..layers.len()).rev() {
                if layers[l].positions[p].top.first().map(|t| t.id) == final_top {
                    commit = l;
                } else {
                    break;
                }
            }
            commit
        })
        .collect()
}

/// What `hubel lens` asks for.
#[derive(Clone, Debug)]
pub struct LensRequest {
    pub text: String,
    pub target: Option<String>,
    pub interventions: Vec<Intervention>,
    pub top: usize,
}

/// The report: the grid of the run with the interventions, and the baseline's when there are
/// any.
pub fn run(model: &Model, req: &LensRequest) -> Result<LensReport> {
    let target = req
        .target
        .as_deref()
        .map(|t| single_token(model, t, "target"))
        .transpose()?;
    let (ids, texts) = tokenize(model, &req.text)?;
    model.check_interventions(&req.interventions, ids.len())?;
    let t = target.as_ref().map(|t| t.id);
    let shown = grid(model, &ids, &req.interventions, t, req.top, None)?;
    let baseline = if req.interventions.is_empty() {
        None
    } else {
        Some(grid(model, &ids, &[], t, req.top, None)?)
    };
    Ok(LensReport {
        model: model.info().describe_at(model.precision()),
        text: req.text.clone(),
        tokens: texts,
        target,
        interventions: req
            .interventions
            .iter()
            .map(crate::probe::describe)
            .collect(),
        grid: shown,
        baseline,
    })
}

/// The report as a table: one line per layer, the top-1 token and its probability per
/// position (or the target's probability and rank), then the commitment row.
pub fn render(r: &LensReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "model  {}", r.model);
    let _ = writeln!(s, "text   {:?}", r.text);
    if !r.interventions.is_empty() {
        let _ = writeln!(s, "with   {}", r.interventions.join(", "));
    }
    let label = |t: &str| {
        let t = format!("{t:?}");
        if t.chars().count() > 10 {
            format!("{}…", t.chars().take(9).collect::<String>())
        } else {
            t
        }
    };
    let _ = write!(s, "{:>6}", "");
    for t in &r.tokens {
        let _ = write!(s, " {:>17}", label(t));
    }
    let _ = writeln!(s);
    for layer in &r.grid.layers {
        let _ = write!(s, "{:>6}", format!("L{}", layer.layer));
        for c in &layer.positions {
            let text = match (&r.target, c.target_prob, c.target_rank) {
                (Some(_), Some(p), Some(rank)) => format!("{p:.3} #{rank}"),
                _ => c.top.first().map_or(String::new(), |t| {
                    format!("{} {:.2}", label(&t.token), t.prob)
                }),
            };
            let _ = write!(s, " {text:>17}");
        }
        let _ = writeln!(s);
    }
    let _ = write!(s, "{:>6}", "commit");
    for c in &r.grid.commit_layer {
        let _ = write!(s, " {:>17}", format!("L{c}"));
    }
    let _ = writeln!(s);
    if let Some(t) = &r.target {
        let _ = writeln!(s, "cells: p({:?}) and its rank", t.token);
    }
    s
}
