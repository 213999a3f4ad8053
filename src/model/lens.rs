//! What the circuit tools ([`crate::circuits`]) need of the model's last steps: residual rows
//! read through the final norm and the unembedding (the logit lens), and a token's logit
//! direction in the residual stream with the weights that read components along it (direct
//! logit attribution). Plain slices in and out; the final norm and the unembedding are the
//! run's own, so the lens of the last block's output is bitwise the run's logits.

use candle_core::Tensor;

use super::transformer::Norm;
use super::{Model, ModelError, Result};
use crate::hooks::{BlockSite, HookPoint, InterventionError};

/// Rows of residual stream unembedded at a time by [`Model::unembed_resid`]'s callers (a
/// `[rows, vocab]` block of logits: 50 MB for SmolLM2 at 256 rows).
pub const LENS_ROWS: usize = 256;

impl Model {
    /// Residual-stream rows `resid` (`[rows, d_model]`, row-major) through the final norm and
    /// the unembedding: logits `[rows, vocab]`, at this model's precision. For the last block's
    /// `hook_resid_post` these are bitwise the logits of the run that recorded it.
    pub fn unembed_resid(&self, resid: &[f32]) -> Result<Vec<f32>> {
        let d = self.config().d_model;
        if resid.is_empty() || !resid.len().is_multiple_of(d) {
            return Err(ModelError::WrongLength {
                what: "the residual rows",
                got: resid.len(),
                expected: d * (resid.len() / d).max(1),
            });
        }
        let rows = resid.len() / d;
        let x = Tensor::from_vec(resid.to_vec(), (rows, d), &self.weights.device)?;
        let y = self.weights.ln_final.forward(&x)?;
        self.weights.unembed_all(&y, self.fast())
    }

    /// The direction in the final residual stream along which `token`'s logit grows, per unit
    /// of the final norm's `1/scale`: `γ ⊙ W_U[token]`, centred for LayerNorm (which subtracts
    /// the mean of its input). With the scale `s` of a position frozen, a component `c` written
    /// into that position's residual stream adds `(c · direction) / s` to the logit.
    pub fn logit_direction(&self, token: u32) -> Result<Vec<f32>> {
        let vocab = self.config().vocab_size;
        if token as usize >= vocab {
            return Err(ModelError::BadToken { id: token, vocab });
        }
        let row = self.weights.unembed.row(token as usize);
        let (gamma, centre) = match &self.weights.ln_final {
            Norm::Rms { w, .. } => (w.clone(), false),
            Norm::Layer { w, .. } => (w.to_vec1::<f32>()?, true),
        };
        let mut v: Vec<f32> = row.iter().zip(&gamma).map(|(u, g)| u * g).collect();
        if centre {
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            v.iter_mut().for_each(|x| *x = (*x as f64 - mean) as f32);
        }
        Ok(v)
    }

    /// What the final norm's bias adds to `token`'s logit whatever the residual: `β · W_U[token]`
    /// for LayerNorm, 0 for RMSNorm.
    pub fn final_norm_bias_logit(&self, token: u32) -> Result<f32> {
        let vocab = self.config().vocab_size;
        if token as usize >= vocab {
            return Err(ModelError::BadToken { id: token, vocab });
        }
        match &self.weights.ln_final {
            Norm::Rms { .. } => Ok(0.0),
            Norm::Layer { b, .. } => {
                let b = b.to_vec1::<f32>()?;
                let row = self.weights.unembed.row(token as usize);
                Ok(b.iter()
                    .zip(&row)
                    .map(|(&x, &u)| x as f64 * u as f64)
                    .sum::<f64>() as f32)
            }
        }
    }

    /// How much each MLP neuron of `layer` writes along `direction` (`[d_model]`) per unit of
    /// its activation (`mlp.hook_post`): `W_outᵀ · direction`, `[d_mlp]`.
    pub fn neuron_reads(&self, layer: usize, direction: &[f32]) -> Result<Vec<f32>> {
        let point = HookPoint::block(layer, BlockSite::MlpPost);
        let block = self
            .weights
            .blocks
            .get(layer)
            .ok_or(InterventionError::NoSuchHook { hook: point })?;
        let w = block.mlp.out_weight().weight(); // [d_model, d_mlp]
        self.check_direction(direction)?;
        Ok((0..w.k())
            .map(|n| {
                (0..w.out())
                    .map(|o| w.get(o, n) as f64 * direction[o] as f64)
                    .sum::<f64>() as f32
            })
            .collect())
    }

    /// How much each element of `attn.hook_z` of `layer` (`[heads · d_head]`, head-major) writes
    /// along `direction` (`[d_model]`): `W_Oᵀ · direction`. A head's contribution at a position
    /// is its `z` there dotted with its `d_head` slice of this.
    pub fn head_reads(&self, layer: usize, direction: &[f32]) -> Result<Vec<f32>> {
        let point = HookPoint::block(layer, BlockSite::Z);
        let block = self
            .weights
            .blocks
            .get(layer)
            .ok_or(InterventionError::NoSuchHook { hook: point })?;
        let w = block.attn.o.weight(); // [d_model, heads · d_head]
        self.check_direction(direction)?;
        Ok((0..w.k())
            .map(|i| {
                (0..w.out())
                    .map(|o| w.get(o, i) as f64 * direction[o] as f64)
                    .sum::<f64>() as f32
            })
            .collect())
    }

    fn check_direction(&self, direction: &[f32]) -> Result<()> {
        let d = self.config().d_model;
        if direction.len() != d {
            return Err(ModelError::WrongLength {
                what: "the direction",
                got: direction.len(),
                expected: d,
            });
        }
        Ok(())
    }
}
