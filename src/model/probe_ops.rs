//! The model-side queries of a feature card (issue 8, "Receptive fields"): one feature's
//! activations over many windows, and its occlusion receptive field at one token. Both run one
//! batched forward ([`Model::run_batch`]'s packing) that stops after the feature's block
//! ([`Model::run_batch_through`]): a card for layer 3 of a 30-layer model costs 4/30 of a
//! forward. The kernels compute each token's row on its own, so every value here has the bits a
//! full [`Model::run`] of the same tokens records.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{transformer, Hooks, Model, Result};
use crate::analysis::maps::feature_activations;
use crate::features::{Basis, FeatureId};
use crate::hooks::{ActivationRecord, BlockSite, Capture, HookPoint, InterventionError};

/// One window's activations of one feature ([`Model::feature_rows`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureRow {
    /// One value per token: `blocks.L.mlp.hook_post[n]` for a neuron, ‖z_h‖ (the L2 norm of
    /// head h's slice of `blocks.L.attn.hook_z`) for a head.
    pub acts: Vec<f32>,
    /// For a neuron of a gated (SwiGLU) MLP: the gate projection's pre-activation at it
    /// (`blocks.L.mlp.hook_pre[n]`), one per token; `None` for heads and ungated MLPs.
    pub gate: Option<Vec<f32>>,
    /// For a neuron of a gated MLP: the up projection at it (`blocks.L.mlp.hook_pre_linear[n]`);
    /// `act = silu(gate) · up`.
    pub up: Option<Vec<f32>>,
}

impl FeatureRow {
    /// Which sign combination of gate and up produced the activation at `pos` (GLUScope);
    /// `None` for heads, ungated MLPs and positions outside the window.
    pub fn glu_signs(&self, pos: usize) -> Option<GluSigns> {
        let gate = *self.gate.as_ref()?.get(pos)?;
        let up = *self.up.as_ref()?.get(pos)?;
        Some(GluSigns {
            gate_positive: gate >= 0.0,
            up_positive: up >= 0.0,
        })
    }
}

/// The signs of a gated neuron's two projections at one token. `silu(g)` is positive for
/// `g > 0` and small and negative for `g < 0`, so `gate+ × up+` and `gate+ × up−` are the strong
/// (mostly linear in `up`) cases, `gate−` the weak, attenuated ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GluSigns {
    pub gate_positive: bool,
    pub up_positive: bool,
}

impl GluSigns {
    /// `gate+ × up−` (a zero counts as +).
    pub fn label(self) -> &'static str {
        match (self.gate_positive, self.up_positive) {
            (true, true) => "gate+ × up+",
            (true, false) => "gate+ × up−",
            (false, true) => "gate− × up+",
            (false, false) => "gate− × up−",
        }
    }
}

/// How [`Model::occlusion`] takes a token out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occlude {
    /// Put this token in its place (positions stay; [`Model::neutral_token`] is the usual one).
    Replace(u32),
    /// Remove it: the tokens after it, the target among them, move one position left.
    Delete,
}

/// A feature's occlusion receptive field at one token ([`Model::occlusion`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Occlusion {
    /// The feature's activation at the target position, nothing occluded.
    pub baseline: f32,
    /// `values[p]`: its activation at the target with token `p` occluded, for every
    /// `p <= position`. With [`Occlude::Delete`] the last entry (the target deleting itself) is
    /// NaN: there is no target left to measure.
    pub values: Vec<f32>,
    /// `values[p] - baseline` (NaN where `values` is).
    pub deltas: Vec<f32>,
    /// The replacement token of [`Occlude::Replace`]; `None` for [`Occlude::Delete`].
    pub replaced_with: Option<u32>,
}

/// What turns a record's residual streams into a dictionary's codes (it calls
/// `Dictionary::add_codes`): the model knows no dictionary, its caller does.
pub type Coder<'a> = &'a (dyn Fn(&mut [ActivationRecord]) + Sync);

/// A dictionary feature's values need a coder.
fn check_coder(feature: FeatureId, coder: Option<Coder>) -> Result<()> {
    if feature.basis == Basis::Dictionary && coder.is_none() {
        return Err(super::ModelError::Format(format!(
            "{feature} is a dictionary feature: open the dictionary it belongs to first"
        )));
    }
    Ok(())
}

/// The sites a record needs for `feature`'s values (and, for a gated neuron, its gate and up).
fn sites(feature: FeatureId, gated: bool) -> Vec<HookPoint> {
    let mut points = vec![feature.hook()];
    if gated && feature.basis == Basis::Neurons {
        for site in [BlockSite::MlpPre, BlockSite::MlpPreLinear] {
            points.push(HookPoint::block(feature.layer, site));
        }
    }
    points
}

/// Neuron `index`'s column of a `[pos, d_mlp]` point in `record`.
fn column(record: &ActivationRecord, point: HookPoint, index: usize) -> Option<Vec<f32>> {
    let act = record.get(point)?;
    Some(
        (0..act.shape[0])
            .map(|t| act.row(t).get(index).copied().unwrap_or(0.0))
            .collect(),
    )
}

impl Model {
    /// Whether this model has a gated (SwiGLU) MLP, whose neurons have a gate and an up
    /// projection (`mlp.hook_pre`, `mlp.hook_pre_linear`).
    fn gated(&self) -> bool {
        self.hook_size(HookPoint::block(0, BlockSite::MlpPreLinear), 1)
            .is_some()
    }

    /// An error naming the layer or index when `feature` does not exist in this model (of a
    /// dictionary feature only the layer: its atom is the dictionary's to check).
    pub fn check_feature(&self, feature: FeatureId) -> Result<()> {
        let hook = feature.hook();
        let units = self.hook_units(hook)?;
        if feature.basis != Basis::Dictionary && feature.index >= units {
            return Err(InterventionError::IndexOutOfRange {
                hook,
                index: feature.index,
                count: units,
                unit: match feature.basis {
                    Basis::Neurons => "neurons",
                    _ => "heads",
                },
            }
            .into());
        }
        Ok(())
    }

    /// [`Model::run_batch`] without interventions or logits that stops after block `last`:
    /// several sequences packed into one forward of blocks `0..=last`, each with its own record
    /// of `capture` (points after block `last` are never reached, so never recorded). Every
    /// recorded value has the bits a full [`Model::run`] of that sequence records.
    pub fn run_batch_through(
        &self,
        seqs: &[&[u32]],
        capture: &Capture,
        last: usize,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<ActivationRecord>> {
        let layers = self.config().n_layers;
        if last >= layers {
            let hook = HookPoint::block(last, BlockSite::ResidPost);
            return Err(InterventionError::NoSuchLayer {
                hook,
                layer: last,
                layers,
            }
            .into());
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        for tokens in seqs {
            self.check_tokens(tokens)?;
        }
        let mut hooks: Vec<Hooks> = seqs
            .iter()
            .map(|_| {
                let h = Hooks::new(capture, &[]);
                match &cancel {
                    Some(flag) => h.with_cancel(flag.clone()),
                    None => h,
                }
            })
            .collect();
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let x = self.weights.embed_packed(seqs, &mut hooks)?;
        let mut packed = transformer::Seqs::new(&mut hooks, &lens, self.fast());
        self.weights.run_packed_through(0, last, x, &mut packed)?;
        Ok(hooks.into_iter().map(|h| h.record).collect())
    }

    /// One feature's activations over many windows (a feature card's examples), in one batched
    /// forward that stops after the feature's block. For a neuron of a gated MLP each row also
    /// carries the gate and up projections at it (see [`FeatureRow::glu_signs`]). Values equal
    /// a full [`Model::run`]'s record bit for bit. The caller sizes the batch: every window's
    /// tokens are in one forward, and the records hold `[tokens, d_mlp]` per captured point.
    pub fn feature_rows(
        &self,
        seqs: &[&[u32]],
        feature: FeatureId,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<FeatureRow>> {
        self.feature_rows_coded(seqs, feature, None, cancel)
    }

    /// [`Model::feature_rows`] for any basis: a dictionary feature's rows need `coder`, which
    /// adds the dictionary's codes to each window's record (it holds the feature's
    /// `hook_resid_post`).
    pub fn feature_rows_coded(
        &self,
        seqs: &[&[u32]],
        feature: FeatureId,
        coder: Option<Coder>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<FeatureRow>> {
        self.check_feature(feature)?;
        check_coder(feature, coder)?;
        let gated = self.gated() && feature.basis == Basis::Neurons;
        let capture = Capture::points(sites(feature, gated));
        let mut records = self.run_batch_through(seqs, &capture, feature.layer, cancel)?;
        if let Some(code) = coder {
            code(&mut records);
        }
        Ok(records
            .iter()
            .map(|record| {
                let at =
                    |site| column(record, HookPoint::block(feature.layer, site), feature.index);
                FeatureRow {
                    acts: feature_activations(record, feature),
                    gate: if gated { at(BlockSite::MlpPre) } else { None },
                    up: if gated {
                        at(BlockSite::MlpPreLinear)
                    } else {
                        None
                    },
                }
            })
            .collect())
    }

    /// A token that says as little as possible, for [`Occlude::Replace`]: `" the"` when the
    /// tokenizer has it as one token (the commonest English word: it changes the text's
    /// content least and is no document or chat boundary, which `<|endoftext|>` and
    /// `<|im_end|>`, SmolLM2's pad and unk, would be), else `" "` (a byte-level vocabulary has
    /// it), else `"the"`, else the end-of-text token, else token 0.
    pub fn neutral_token(&self) -> u32 {
        let prefix = self
            .tokenizer
            .encode_ids("")
            .map(|ids| ids.len())
            .unwrap_or(0);
        for text in [" the", " ", "the"] {
            if let Ok(ids) = self.tokenizer.encode_ids(text) {
                if let [id] = ids[prefix.min(ids.len())..] {
                    if (id as usize) < self.config().vocab_size {
                        return id;
                    }
                }
            }
        }
        self.tokenizer
            .eos()
            .filter(|&id| (id as usize) < self.config().vocab_size)
            .unwrap_or(0)
    }

    /// `feature`'s occlusion receptive field at `position` of `tokens`: for every `p <= position`
    /// (the target itself and position 0 included) a copy of the tokens with `p` occluded
    /// (replaced, or deleted so that the target moves to `position - 1`), all copies and the
    /// original in ONE batched forward that stops after the feature's block. Only tokens
    /// `0..=position` are run: the model is causal, so later tokens cannot change the target
    /// (and the values are the bits a full run of the whole copy records). Cost: one forward of
    /// `position + 1` sequences of about `position` tokens through `layer + 1` blocks.
    ///
    /// Occluding position 0, the attention sink: with [`Occlude::Replace`] the first position
    /// stays first and mostly stays the sink, so its delta is mostly the token's own content;
    /// with [`Occlude::Delete`] the next token becomes the first position and the sink, which
    /// moves every later position's attention, so a large delta there says more about the sink
    /// than about the deleted token.
    ///
    /// Errors (no panic) for empty tokens, tokens the model cannot take, a feature or a
    /// replacement token outside the model, and a position outside the tokens.
    pub fn occlusion(
        &self,
        tokens: &[u32],
        feature: FeatureId,
        position: usize,
        mode: Occlude,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Occlusion> {
        self.occlusion_coded(tokens, feature, position, mode, None, cancel)
    }

    /// [`Model::occlusion`] for any basis: a dictionary feature's needs `coder` (see
    /// [`Model::feature_rows_coded`]).
    pub fn occlusion_coded(
        &self,
        tokens: &[u32],
        feature: FeatureId,
        position: usize,
        mode: Occlude,
        coder: Option<Coder>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Occlusion> {
        self.check_tokens(tokens)?;
        self.check_feature(feature)?;
        check_coder(feature, coder)?;
        if position >= tokens.len() {
            return Err(InterventionError::PositionOutOfRange {
                hook: feature.hook(),
                position,
                len: tokens.len(),
            }
            .into());
        }
        if let Occlude::Replace(id) = mode {
            self.check_tokens(&[id])?;
        }
        let original = &tokens[..=position];
        // Each occluded copy, with the target's position in it; `None`: nothing to run (the
        // target deleting itself: NaN; a replacement equal to the token: the baseline).
        let copies: Vec<Option<(Vec<u32>, usize)>> = (0..=position)
            .map(|p| match mode {
                Occlude::Replace(id) if original[p] == id => None,
                Occlude::Replace(id) => {
                    let mut copy = original.to_vec();
                    copy[p] = id;
                    Some((copy, position))
                }
                Occlude::Delete if p == position => None,
                Occlude::Delete => {
                    let mut copy = original.to_vec();
                    copy.remove(p);
                    Some((copy, position - 1))
                }
            })
            .collect();
        let mut batch: Vec<&[u32]> = vec![original];
        batch.extend(copies.iter().flatten().map(|(copy, _)| copy.as_slice()));
        let capture = Capture::points([feature.hook()]);
        let mut records = self.run_batch_through(&batch, &capture, feature.layer, cancel)?;
        if let Some(code) = coder {
            code(&mut records);
        }
        let at = |record: &ActivationRecord, pos: usize| {
            feature_activations(record, feature)
                .get(pos)
                .copied()
                .unwrap_or(f32::NAN)
        };
        let baseline = at(&records[0], position);
        let mut ran = records[1..].iter();
        let values: Vec<f32> = copies
            .iter()
            .map(|copy| match (copy, mode) {
                (Some((_, target)), _) => ran.next().map_or(f32::NAN, |r| at(r, *target)),
                (None, Occlude::Replace(_)) => baseline,
                (None, Occlude::Delete) => f32::NAN,
            })
            .collect();
        Ok(Occlusion {
            baseline,
            deltas: values.iter().map(|v| v - baseline).collect(),
            values,
            replaced_with: match mode {
                Occlude::Replace(id) => Some(id),
                Occlude::Delete => None,
            },
        })
    }
}
