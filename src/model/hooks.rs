//! The bridge between the forward pass and the plain-data hooks of [`crate::hooks`]: at every
//! hook point the model hands its tensor to [`Hooks::hook`], which applies the interventions
//! aimed at that point and records the result (when the capture filter asks for it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Tensor;

use super::Result;
use crate::hooks::{Activation, ActivationRecord, Capture, HookPoint, Intervention, View};

/// The hooks of one run: what to keep, what to change, and the record being filled.
/// Scoped to one run, as in TransformerLens.
pub struct Hooks<'a> {
    capture: &'a Capture,
    interventions: &'a [Intervention],
    /// Absolute position of the first row of the tensors seen (non-zero in a cached continuation).
    pub(crate) pos_offset: usize,
    cancel: Option<Arc<AtomicBool>>,
    /// When set, a copy of `interventions` in which each `Op::Mean` that has been applied is
    /// replaced by the `Op::MeanOf` it resolved to (see [`Hooks::resolving_means`]).
    resolved: Option<Vec<Intervention>>,
    pub record: ActivationRecord,
}

impl<'a> Hooks<'a> {
    pub fn new(capture: &'a Capture, interventions: &'a [Intervention]) -> Self {
        Hooks {
            capture,
            interventions,
            pos_offset: 0,
            cancel: None,
            resolved: None,
            record: ActivationRecord::default(),
        }
    }

    /// Makes the run stop with [`super::ModelError::Cancelled`] at the next layer once
    /// `flag` is set.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Keeps the means that `Op::Mean` interventions resolve to in this run, so that a
    /// continuation can hold them fixed ([`Hooks::resolved`]).
    pub(crate) fn resolving_means(mut self) -> Self {
        self.resolved = Some(self.interventions.to_vec());
        self
    }

    /// The interventions with every applied `Op::Mean` replaced by the `Op::MeanOf` it used
    /// (attention patterns excepted); the interventions as given without
    /// [`Hooks::resolving_means`].
    pub(crate) fn resolved(&self) -> Vec<Intervention> {
        self.resolved
            .clone()
            .unwrap_or_else(|| self.interventions.to_vec())
    }

    pub fn interventions(&self) -> &[Intervention] {
        self.interventions
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Whether [`Hooks::hook`] does anything at `point` (records or edits it).
    pub(crate) fn touches(&self, point: HookPoint) -> bool {
        self.capture.wants(point) || self.interventions.iter().any(|iv| iv.hook == point)
    }

    /// Applies the interventions aimed at `point` to `t`, then records the result if asked:
    /// the record shows what the rest of the model saw.
    pub fn hook(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        let wants = self.capture.wants(point);
        let edited = self.interventions.iter().any(|iv| iv.hook == point);
        if !wants && !edited {
            return Ok(t);
        }
        let shape = t.dims().to_vec();
        let mut data = t.flatten_all()?.to_vec1::<f32>()?;
        if !edited {
            self.record.insert(point, Activation::new(shape, data));
            return Ok(t);
        }
        let view = View::new(point.layout(), &shape);
        for (i, iv) in self.interventions.iter().enumerate() {
            if iv.hook != point {
                continue;
            }
            if let Some(resolved) = self.resolved.as_mut() {
                if let Some(fixed) = iv.resolve_mean(&data, view) {
                    fixed.apply(&mut data, view, self.pos_offset)?;
                    resolved[i] = fixed;
                    continue;
                }
            }
            iv.apply(&mut data, view, self.pos_offset)?;
        }
        if !wants {
            return Ok(Tensor::from_vec(data, shape, t.device())?);
        }
        let out = Tensor::from_slice(&data, shape.as_slice(), t.device())?;
        self.record.insert(point, Activation::new(shape, data));
        Ok(out)
    }
}
