//! `hubel effect`: a feature's direct effect on the logits, the tokens it promotes and
//! suppresses when what it writes goes straight to the unembedding through the final norm
//! ([`Model::direct_effect`]). The report's JSON shape is a public interface (see the README).

use serde::Serialize;

use crate::analysis;
use crate::features::{Basis, FeatureId};
use crate::hooks::{BlockSite, Capture, HookPoint, Intervention};
use crate::model::{EffectScale, Model, ModelError, ModelInfo};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    #[error(
        "{0} is a head: its direct effect depends on its output at a position, so give a probe \
         (--text TEXT [--pos P])"
    )]
    NeedsProbe(String),
    #[error("position {pos} is out of range (the probe has {len} tokens, 0..{len})")]
    PositionOutOfRange { pos: usize, len: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct EffectRequest {
    pub feature: FeatureId,
    /// A probe and a position in it: shows the effect there, with the final norm's scale at
    /// that position frozen. Needed for a head, whose output depends on the position.
    pub probe: Option<ProbeAt>,
    pub top: usize,
}

#[derive(Clone, Debug)]
pub struct ProbeAt {
    pub text: String,
    /// Absolute token position; `None` for the last token.
    pub pos: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct EffectToken {
    pub id: u32,
    pub token: String,
    /// Change of the logit.
    pub value: f32,
}

#[derive(Debug, Serialize)]
pub struct ProbeSummary {
    pub text: String,
    pub position: usize,
    /// The token at `position`.
    pub token: String,
    /// `1 / scale` of the final norm at `position` (1/rms for RMSNorm, 1/σ for LayerNorm).
    pub inv_scale: f32,
    /// The neuron's activation (`mlp.hook_post`) or the norm of the head's `z` at `position`.
    pub activation: f32,
}

#[derive(Debug, Serialize)]
pub struct EffectReport {
    pub model: ModelInfo,
    pub feature: String,
    /// "per unit of activation", or "on this probe at position P, final-norm scale frozen".
    pub scale: String,
    /// What one unit is: the neuron's activation, or the head's output at the position.
    pub unit: String,
    pub probe: Option<ProbeSummary>,
    /// Highest first.
    pub promoted: Vec<EffectToken>,
    /// Lowest first.
    pub suppressed: Vec<EffectToken>,
}

/// Reads a feature as the shorthand `L10N222` / `L5H3` or a one-index spec
/// (`blocks.10.mlp.hook_post[222]`, `blocks.5.attn.hook_z[3]`).
pub fn parse_feature(s: &str) -> std::result::Result<FeatureId, String> {
    let bad = || {
        format!(
            "`{s}` is not a feature: expected an MLP neuron like L10N222 or an attention head \
             like L5H3"
        )
    };
    let iv = crate::hooks::spec::parse(s).map_err(|_| bad())?;
    if iv.op != crate::hooks::Op::Zero {
        return Err(bad());
    }
    FeatureId::of_intervention(&iv).ok_or_else(bad)
}

/// Computes the report.
pub fn run(model: &Model, req: &EffectRequest) -> Result<EffectReport, EffectError> {
    let feature = req.feature;
    // An unknown layer or index gets the same message as an edit of it would.
    model.check_interventions(
        &[Intervention::zero(feature.hook(), vec![feature.index])],
        1,
    )?;
    let (direction, scale, unit, probe) = match &req.probe {
        None => {
            if feature.basis == Basis::Heads {
                return Err(EffectError::NeedsProbe(feature.label()));
            }
            let d = model.neuron_out_direction(feature.layer, feature.index)?;
            (
                d,
                EffectScale::PerUnit,
                "one unit of the neuron's activation".to_string(),
                None,
            )
        }
        Some(at) => {
            let tokens = model.tokenize(&at.text)?;
            let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            let pos = at.pos.unwrap_or(ids.len() - 1);
            if pos >= ids.len() {
                return Err(EffectError::PositionOutOfRange {
                    pos,
                    len: ids.len(),
                });
            }
            let last = HookPoint::block(model.config().n_layers - 1, BlockSite::ResidPost);
            let out = model.run(&ids, &Capture::points([last, feature.hook()]), &[])?;
            let row = |point: HookPoint| {
                out.record
                    .get(point)
                    .map(|a| a.row(pos).to_vec())
                    .ok_or(ModelError::Format(format!("{point} was not recorded")))
            };
            let inv_scale = model.final_norm_inv_scale(&row(last)?)?;
            let acts = row(feature.hook())?;
            let (d, activation, unit) = match feature.basis {
                Basis::Neurons => (
                    model.neuron_out_direction(feature.layer, feature.index)?,
                    acts[feature.index],
                    "one unit of the neuron's activation".to_string(),
                ),
                Basis::Heads => {
                    let d_head = model.config().d_head;
                    let z = &acts[feature.index * d_head..(feature.index + 1) * d_head];
                    let norm = z.iter().map(|v| v * v).sum::<f32>().sqrt();
                    (
                        model.head_out_direction(feature.layer, feature.index, z)?,
                        norm,
                        format!("the head's output at position {pos}"),
                    )
                }
            };
            let summary = ProbeSummary {
                text: at.text.clone(),
                position: pos,
                token: tokens[pos].text.clone(),
                inv_scale,
                activation,
            };
            (d, EffectScale::Frozen { inv_scale }, unit, Some(summary))
        }
    };
    let effect = model.direct_effect(&direction, scale)?;
    let (up, down) = analysis::promoted_suppressed(&effect, req.top);
    let named = |list: Vec<(u32, f32)>| {
        list.into_iter()
            .map(|(id, value)| EffectToken {
                id,
                token: model.tokenizer().token_text(id),
                value,
            })
            .collect()
    };
    let scale = match &probe {
        None => scale.describe().to_string(),
        Some(p) => format!(
            "on this probe at position {}, final-norm scale frozen",
            p.position
        ),
    };
    Ok(EffectReport {
        model: model.info().clone(),
        feature: feature.label(),
        scale,
        unit,
        probe,
        promoted: named(up),
        suppressed: named(down),
    })
}

/// The report as readable text.
pub fn render_table(r: &EffectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model  {} ({}, {} layers)",
        r.model.name, r.model.arch, r.model.layers
    );
    let _ = writeln!(
        s,
        "{}: direct effect on the logits, {} (W_U · final norm's γ; unit: {})",
        r.feature, r.scale, r.unit
    );
    if let Some(p) = &r.probe {
        let _ = writeln!(
            s,
            "probe  {:?}, position {} = {:?}; activation {:.4}, final norm 1/scale {:.4}",
            p.text, p.position, p.token, p.activation, p.inv_scale
        );
    }
    for (title, list) in [("promotes", &r.promoted), ("suppresses", &r.suppressed)] {
        let _ = writeln!(s, "{title}");
        for t in list {
            let _ = writeln!(
                s,
                "  {:>+9.4}  {:<24} id {}",
                t.value,
                format!("{:?}", t.token),
                t.id
            );
        }
    }
    s
}
