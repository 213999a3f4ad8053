//! Direct logit effects: what a vector written into the final residual stream does to the logits
//! when it goes straight to the unembedding, through the final norm.
//!
//! The final norm is `γ ⊙ x / s(x)` (RMSNorm, `s = √(mean x² + ε)`) or
//! `γ ⊙ (x − mean x) / s(x) + β` (LayerNorm, `s = √(var x + ε)`). Adding `d` to `x` with the
//! scale `s` held fixed changes the logits by `W_U · (γ ⊙ d̃) / s`, where `d̃` is `d` for RMSNorm
//! and `d − mean d` for LayerNorm (which subtracts the mean). LayerNorm's `β` adds the same
//! vector at every token whatever a feature does, so it is no part of a feature's effect.
//! [`EffectScale::PerUnit`] leaves `1/s` out: `W_U · (γ ⊙ d̃)` is TransformerLens's `W_U` with
//! `ln_final.w` folded in, a property of the weights alone. [`EffectScale::Frozen`] multiplies by
//! `1/s` at one position of a probe ([`Model::final_norm_inv_scale`]): the first-order change of
//! that position's logits for the part of `d` orthogonal to the (centred) residual, whose scale
//! then does not change to first order.

use super::transformer::Norm;
use super::{Model, ModelError, Result};
use crate::hooks::{BlockSite, HookPoint, InterventionError};

/// Which final-norm scale a direct effect is shown at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EffectScale {
    /// Per unit of activation: `W_U · (γ ⊙ d̃)`, the norm's `1/scale` left out.
    PerUnit,
    /// On a probe at one position, the norm's scale frozen: `W_U · (γ ⊙ d̃) · inv_scale`, with
    /// `inv_scale` from [`Model::final_norm_inv_scale`] of that position's final residual.
    Frozen { inv_scale: f32 },
}

impl EffectScale {
    /// How the scale is described to a user.
    pub fn describe(&self) -> &'static str {
        match self {
            EffectScale::PerUnit => "per unit of activation",
            EffectScale::Frozen { .. } => "on this probe, final-norm scale frozen",
        }
    }
}

impl Model {
    /// The direct logit effect of `direction` (`[d_model]`) written into the final residual
    /// stream: `W_U · (γ ⊙ d̃) · scale`, `[vocab]` (see the module docs for `d̃` and the scale).
    pub fn direct_effect(&self, direction: &[f32], scale: EffectScale) -> Result<Vec<f32>> {
        let d_model = self.config().d_model;
        check_len("the direction", direction.len(), d_model)?;
        let (gamma, centre) = match &self.weights.ln_final {
            Norm::Rms { w, .. } => (w.clone(), false),
            Norm::Layer { w, .. } => (w.to_vec1::<f32>()?, true),
        };
        let mean = if centre {
            direction.iter().map(|&v| v as f64).sum::<f64>() / d_model as f64
        } else {
            0.0
        };
        let factor = match scale {
            EffectScale::PerUnit => 1.0,
            EffectScale::Frozen { inv_scale } => inv_scale as f64,
        };
        let v: Vec<f32> = direction
            .iter()
            .zip(&gamma)
            .map(|(&d, &g)| ((d as f64 - mean) * g as f64 * factor) as f32)
            .collect();
        let unembed = &self.weights.unembed;
        let mut logits = vec![0f32; unembed.out()];
        unembed.matmul(&v, 1, &mut logits);
        Ok(logits)
    }

    /// `1 / s(x)` of the final norm for one position's final residual `x` (`[d_model]`, the
    /// last block's `hook_resid_post`): `1/√(mean x² + ε)` for RMSNorm, `1/√(var x + ε)` for
    /// LayerNorm, with the model's own ε. Feeds [`EffectScale::Frozen`].
    pub fn final_norm_inv_scale(&self, final_resid: &[f32]) -> Result<f32> {
        let n = self.config().d_model;
        check_len("the final residual", final_resid.len(), n)?;
        let x: Vec<f64> = final_resid.iter().map(|&v| v as f64).collect();
        let (mean, eps) = match &self.weights.ln_final {
            Norm::Rms { eps, .. } => (0.0, *eps),
            Norm::Layer { eps, .. } => (x.iter().sum::<f64>() / n as f64, *eps),
        };
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        Ok((1.0 / (var + eps).sqrt()) as f32)
    }

    /// What MLP neuron `neuron` of `layer` writes into the residual stream per unit of its
    /// activation (`mlp.hook_post`): its column of the down projection, `[d_model]`.
    pub fn neuron_out_direction(&self, layer: usize, neuron: usize) -> Result<Vec<f32>> {
        let point = HookPoint::block(layer, BlockSite::MlpPost);
        let block = self
            .weights
            .blocks
            .get(layer)
            .ok_or(InterventionError::NoSuchHook { hook: point })?;
        let w = block.mlp.out_weight().weight(); // [d_model, d_mlp]
        let d_mlp = w.k();
        if neuron >= d_mlp {
            return Err(InterventionError::IndexOutOfRange {
                hook: point,
                index: neuron,
                count: d_mlp,
                unit: "neurons",
            }
            .into());
        }
        Ok(w.column(neuron))
    }

    /// What attention head `head` of `layer` writes into the residual stream at a position where
    /// its output (`attn.hook_z`) is `z` (`[d_head]`): `W_O[:, head] · z`, `[d_model]`. The
    /// output projection's bias (GPT-2) belongs to no head and is left out.
    pub fn head_out_direction(&self, layer: usize, head: usize, z: &[f32]) -> Result<Vec<f32>> {
        let point = HookPoint::block(layer, BlockSite::Z);
        let block = self
            .weights
            .blocks
            .get(layer)
            .ok_or(InterventionError::NoSuchHook { hook: point })?;
        let (n_heads, d_head) = (self.config().n_heads, self.config().d_head);
        if head >= n_heads {
            return Err(InterventionError::IndexOutOfRange {
                hook: point,
                index: head,
                count: n_heads,
                unit: "heads",
            }
            .into());
        }
        check_len("the head's z", z.len(), d_head)?;
        let w = block.attn.o.weight(); // [d_model, n_heads · d_head]
        Ok((0..w.out())
            .map(|o| {
                z.iter()
                    .enumerate()
                    .map(|(j, &zj)| w.get(o, head * d_head + j) * zj)
                    .sum()
            })
            .collect())
    }
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(ModelError::WrongLength {
            what,
            got,
            expected,
        });
    }
    Ok(())
}
