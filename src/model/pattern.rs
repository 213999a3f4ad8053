//! One head's attention pattern on demand (issue 14, "Long probes"): a probe too long for the
//! viewer to keep every layer's `hook_pattern` (`[heads, len, len]` per layer) still shows the
//! pattern of the head a card asks for, computed alone.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{transformer, Hooks, Model, ModelError, ProbeCache, Result};
use crate::features::FeatureId;
use crate::hooks::Capture;

/// One head's baseline attention pattern over a probe ([`Model::head_pattern`]).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadPattern {
    pub layer: usize,
    pub head: usize,
    /// Tokens of the probe: the pattern is `[len, len]`.
    pub len: usize,
    /// `[query, key]`, row-major: row `i` is query `i`'s softmax over keys `0..=i` (later keys
    /// are masked: exactly 0), so each row sums to 1.
    pub values: Vec<f32>,
}

impl HeadPattern {
    /// Query `q`'s weights over every key.
    pub fn row(&self, q: usize) -> &[f32] {
        &self.values[q * self.len..(q + 1) * self.len]
    }

    /// The bytes its values hold (`4 · len²`).
    pub fn bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<f32>()
    }
}

impl Model {
    /// Head `head`'s attention pattern in block `layer` of the baseline run of `tokens` (no
    /// interventions), `[len, len]`, computed alone: blocks `0..layer` run as a forward does
    /// (nothing recorded, no later block, no logits), then block `layer`'s first norm and its q
    /// and k projections, and this head's scores and softmax only. It equals, bit for bit, this
    /// head's slice of what a run capturing `blocks.{layer}.attn.hook_pattern` records, at this
    /// model's precision ([`Model::with_precision`]: a fast-path pattern comes from the fast
    /// path's forward).
    ///
    /// Cost: `layer / n_layers` of a forward, plus one layer's q and k projections and
    /// `len² · d_head` multiply-adds. Memory: a forward's working set (no record) and the
    /// pattern's `len²` floats (`4 · len²` bytes: 64 MB at 4,096 tokens), where keeping every
    /// layer's patterns would take `n_layers · n_heads` times that.
    ///
    /// Stops with [`ModelError::Cancelled`] before the next block once `cancel` is set. Errors
    /// (no panic) for empty tokens, tokens the model cannot take, and a head or layer outside
    /// the model.
    pub fn head_pattern(
        &self,
        tokens: &[u32],
        layer: usize,
        head: usize,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<HeadPattern> {
        self.check_tokens(tokens)?;
        self.check_feature(FeatureId::head(layer, head))?;
        let capture = Capture::Nothing;
        let mut hooks = Hooks::new(&capture, &[]);
        if let Some(flag) = cancel {
            hooks = hooks.with_cancel(flag);
        }
        let mut x = self.weights.embed(tokens, &mut hooks)?;
        if layer > 0 {
            let lens = [tokens.len()];
            let mut seqs =
                transformer::Seqs::new(std::slice::from_mut(&mut hooks), &lens, self.fast());
            x = self
                .weights
                .run_packed_through(0, layer - 1, x, &mut seqs)?;
        }
        if hooks.is_cancelled() {
            return Err(ModelError::Cancelled);
        }
        Ok(HeadPattern {
            layer,
            head,
            len: tokens.len(),
            values: self.weights.head_pattern(layer, head, &x, self.fast())?,
        })
    }

    /// [`Model::head_pattern`] of a prepared probe, from the baseline's cached input of block
    /// `layer` ([`Model::prepare`]): no block is run, only that layer's q and k projections and
    /// this head's scores (the same bits). The cache must have been prepared at this model's
    /// precision.
    pub fn head_pattern_cached(
        &self,
        cache: &ProbeCache,
        layer: usize,
        head: usize,
    ) -> Result<HeadPattern> {
        self.check_feature(FeatureId::head(layer, head))?;
        if cache.fast != self.fast() {
            let how = |fast| if fast { "on the fast path" } else { "exactly" };
            return Err(ModelError::Format(format!(
                "the probe was prepared {} but the pattern is asked {}",
                how(cache.fast),
                how(self.fast())
            )));
        }
        let x = cache.resid_pre.get(layer).ok_or_else(|| {
            ModelError::Format(format!(
                "the probe's cache holds {} block inputs",
                cache.resid_pre.len()
            ))
        })?;
        Ok(HeadPattern {
            layer,
            head,
            len: cache.tokens.len(),
            values: self.weights.head_pattern(layer, head, x, self.fast())?,
        })
    }
}
