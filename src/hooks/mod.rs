//! Hook points, recording and interventions: what makes every activation of a forward pass
//! observable and editable. Knows nothing of egui.
//!
//! The model calls [`Hooks::hook`] at every hook point; the hook records the tensor (when the
//! capture filter asks for it), then applies the interventions aimed at that point.

pub mod intervention;
pub mod point;
pub mod record;
pub mod spec;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Tensor;

pub use intervention::{Intervention, InterventionError, Op, View};
pub use point::{BlockSite, HookPoint, Layout};
pub use record::{Activation, ActivationRecord, Capture};

/// The hooks of one run: what to keep, what to change, and the record being filled.
/// Scoped to one run, as in TransformerLens.
pub struct Hooks<'a> {
    capture: &'a Capture,
    interventions: &'a [Intervention],
    /// Absolute position of the first row of the tensors seen (non-zero in a cached continuation).
    pub(crate) pos_offset: usize,
    cancel: Option<Arc<AtomicBool>>,
    pub record: ActivationRecord,
}

impl<'a> Hooks<'a> {
    pub fn new(capture: &'a Capture, interventions: &'a [Intervention]) -> Self {
        Hooks {
            capture,
            interventions,
            pos_offset: 0,
            cancel: None,
            record: ActivationRecord::default(),
        }
    }

    /// Makes the run stop with [`crate::model::ModelError::Cancelled`] at the next layer once
    /// `flag` is set.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    pub fn interventions(&self) -> &[Intervention] {
        self.interventions
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Records `t` at `point` if asked, then applies the interventions aimed at `point`.
    pub fn hook(&mut self, point: HookPoint, t: Tensor) -> crate::model::Result<Tensor> {
        let wants = self.capture.wants(point);
        let mut edits = self
            .interventions
            .iter()
            .filter(|iv| iv.hook == point)
            .peekable();
        if !wants && edits.peek().is_none() {
            return Ok(t);
        }
        let shape = t.dims().to_vec();
        let mut data = t.flatten_all()?.to_vec1::<f32>()?;
        if wants {
            self.record.insert(
                point,
                Activation {
                    shape: shape.clone(),
                    data: data.clone(),
                },
            );
        }
        if edits.peek().is_none() {
            return Ok(t);
        }
        let view = View::new(point.layout(), &shape);
        for iv in edits {
            iv.apply(&mut data, view, self.pos_offset)?;
        }
        Ok(Tensor::from_vec(data, shape, t.device())?)
    }
}
