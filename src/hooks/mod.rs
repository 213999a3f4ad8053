//! Hook points, recording and interventions: what makes every activation of a forward pass
//! observable and editable. Plain data: knows nothing of tensors or egui.
//!
//! The runtime's `Hooks::hook` (src/model/hooks.rs) runs at every hook point; it applies the
//! interventions aimed at that point, then records the result (when the capture filter asks for
//! it), so a record shows what the rest of the model saw.

pub mod intervention;
pub mod point;
pub mod record;
pub mod spec;

pub use intervention::{Intervention, InterventionError, Op, View};
pub use point::{BlockSite, HookPoint, Layout};
pub use record::{Activation, ActivationRecord, Capture};
