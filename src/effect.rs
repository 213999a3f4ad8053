//! `hubel effect`: a feature's direct effect on the logits, the tokens it promotes and
//! suppresses when what it writes goes straight to the unembedding through the final norm
//! ([`Model::direct_effect`]). The report's JSON shape is a public interface (see the README).

use serde::Serialize;

use crate::analysis;
use crate::features::{Basis, FeatureId};
use crate::hooks::{ActivationRecord, BlockSite, Capture, HookPoint, Intervention};
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

/// What a feature writes into the residual stream, and the scale its direct effect is read at.
pub struct Direction {
    pub vector: Vec<f32>,
    pub scale: EffectScale,
    /// The neuron's activation (`mlp.hook_post`) or the norm of the head's `z` at the position;
    /// `None` per unit of activation.
    pub activation: Option<f32>,
    /// What one unit is, in words.
    pub unit: String,
}

/// A feature's output direction, per unit of activation (`at = None`, neurons only), or at a
/// position of a run whose record holds the last block's `hook_resid_post` and the feature's own
/// hook point (its `z` for a head): then the final norm's scale is frozen at its value there.
/// The one place the CLI and the viewer's card get a direct effect's input from.
pub fn direction(
    model: &Model,
    feature: FeatureId,
    at: Option<(&ActivationRecord, usize)>,
) -> Result<Direction, EffectError> {
    if feature.basis == Basis::Dictionary {
        return Err(EffectError::Model(ModelError::Format(format!(
            "{feature} is a dictionary feature: its direction is the dictionary's (open it first)"
        ))));
    }
    // An unknown layer or index gets the same message as an edit of it would.
    model.check_interventions(
        &[Intervention::zero(feature.hook(), vec![feature.index])],
        1,
    )?;
    let Some((record, pos)) = at else {
        if feature.basis == Basis::Heads {
            return Err(EffectError::NeedsProbe(feature.label()));
        }
        return Ok(Direction {
            vector: model.neuron_out_direction(feature.layer, feature.index)?,
            scale: EffectScale::PerUnit,
            activation: None,
            unit: "one unit of the neuron's activation".into(),
        });
    };
    let last = HookPoint::block(model.config().n_layers - 1, BlockSite::ResidPost);
    let row = |point: HookPoint| -> Result<&[f32], EffectError> {
        let act = record
            .get(point)
            .ok_or(ModelError::Format(format!("{point} was not recorded")))?;
        if pos >= act.shape[0] {
            return Err(EffectError::PositionOutOfRange {
                pos,
                len: act.shape[0],
            });
        }
        Ok(act.row(pos))
    };
    let inv_scale = model.final_norm_inv_scale(row(last)?)?;
    let acts = row(feature.hook())?;
    let (vector, activation, unit) = match feature.basis {
        Basis::Neurons => (
            model.neuron_out_direction(feature.layer, feature.index)?,
            acts[feature.index],
            "one unit of the neuron's activation".to_string(),
        ),
        Basis::Dictionary => unreachable!("handled above"),
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
    Ok(Direction {
        vector,
        scale: EffectScale::Frozen { inv_scale },
        activation: Some(activation),
        unit,
    })
}

/// A dictionary feature's output direction: its atom in the residual's original space
/// (`atom`, what one unit of its code adds), per unit of code (`at = None`) or at a position of
/// a run whose record holds the last block's `hook_resid_post` and the feature's codes: then
/// the final norm's scale is frozen at its value there and the activation is its code.
pub fn atom_direction(
    model: &Model,
    feature: FeatureId,
    atom: Vec<f32>,
    at: Option<(&ActivationRecord, usize)>,
) -> Result<Direction, EffectError> {
    let d_model = model.config().d_model;
    if atom.len() != d_model {
        return Err(EffectError::Model(ModelError::Format(format!(
            "{feature}'s atom has {} dimensions; this model's residual stream has {d_model}",
            atom.len()
        ))));
    }
    let unit = "one unit of the feature's code".to_string();
    let Some((record, pos)) = at else {
        return Ok(Direction {
            vector: atom,
            scale: EffectScale::PerUnit,
            activation: None,
            unit,
        });
    };
    let last = HookPoint::block(model.config().n_layers - 1, BlockSite::ResidPost);
    let act = record
        .get(last)
        .ok_or(ModelError::Format(format!("{last} was not recorded")))?;
    if pos >= act.shape[0] {
        return Err(EffectError::PositionOutOfRange {
            pos,
            len: act.shape[0],
        });
    }
    let inv_scale = model.final_norm_inv_scale(act.row(pos))?;
    let activation = analysis::maps::feature_activations(record, feature)
        .get(pos)
        .copied();
    Ok(Direction {
        vector: atom,
        scale: EffectScale::Frozen { inv_scale },
        activation,
        unit,
    })
}

/// The `top` tokens a direction promotes (highest first) and suppresses (lowest first).
pub fn ranked(
    model: &Model,
    d: &Direction,
    top: usize,
) -> Result<(Vec<EffectToken>, Vec<EffectToken>), EffectError> {
    let effect = model.direct_effect(&d.vector, d.scale)?;
    let (up, down) = analysis::promoted_suppressed(&effect, top);
    let named = |list: Vec<(u32, f32)>| {
        list.into_iter()
            .map(|(id, value)| EffectToken {
                id,
                token: model.tokenizer().token_text(id),
                value,
            })
            .collect()
    };
    Ok((named(up), named(down)))
}

/// Computes the report.
pub fn run(model: &Model, req: &EffectRequest) -> Result<EffectReport, EffectError> {
    let feature = req.feature;
    let (d, probe) = match &req.probe {
        None => (direction(model, feature, None)?, None),
        Some(at) => {
            // Check the feature before running anything.
            model.check_interventions(
                &[Intervention::zero(feature.hook(), vec![feature.index])],
                1,
            )?;
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
            let d = direction(model, feature, Some((&out.record, pos)))?;
            let summary = ProbeSummary {
                text: at.text.clone(),
                position: pos,
                token: tokens[pos].text.clone(),
                inv_scale: match d.scale {
                    EffectScale::Frozen { inv_scale } => inv_scale,
                    EffectScale::PerUnit => 1.0,
                },
                activation: d.activation.unwrap_or(0.0),
            };
            (d, Some(summary))
        }
    };
    let (promoted, suppressed) = ranked(model, &d, req.top)?;
    let scale = match &probe {
        None => d.scale.describe().to_string(),
        Some(p) => format!(
            "on this probe at position {}, final-norm scale frozen",
            p.position
        ),
    };
    Ok(EffectReport {
        model: model.info().clone(),
        feature: feature.label(),
        scale,
        unit: d.unit,
        probe,
        promoted,
        suppressed,
    })
}

/// The report as readable text.
pub fn render_table(r: &EffectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "model  {} ({})", r.model.describe(), r.model.shape());
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
