//! What a run captured: plain `Vec<f32>` + shape per hook point, so that nothing outside the
//! model runtime (the UI, the analysis code, the CLI) ever touches a tensor.

use std::collections::{BTreeMap, BTreeSet};

use super::point::{BlockSite, HookPoint};

/// One captured activation, row-major. The values are shared: a clone (a probe's baseline kept
/// by the worker and shown by the view, an edited run's unchanged earlier layers) costs no copy.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Activation {
    pub shape: Vec<usize>,
    pub data: std::sync::Arc<Vec<f32>>,
}

impl Activation {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Activation {
            shape,
            data: std::sync::Arc::new(data),
        }
    }

    /// Bytes of its values.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// The row at `pos` of a `[pos, width]` activation.
    pub fn row(&self, pos: usize) -> &[f32] {
        let width: usize = self.shape[1..].iter().product();
        &self.data[pos * width..(pos + 1) * width]
    }

    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(
            0.0f32,
            |m, v| if v.is_finite() { m.max(v.abs()) } else { m },
        )
    }
}

/// Which hook points a run keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Capture {
    /// Keep nothing (the fastest run).
    #[default]
    Nothing,
    /// Keep every hook point (what a probe in the viewer records).
    All,
    /// Keep exactly these points.
    Points(BTreeSet<HookPoint>),
    /// Keep these sites in every block.
    Sites(BTreeSet<BlockSite>),
}

impl Capture {
    pub fn points(points: impl IntoIterator<Item = HookPoint>) -> Self {
        Capture::Points(points.into_iter().collect())
    }

    pub fn sites(sites: impl IntoIterator<Item = BlockSite>) -> Self {
        Capture::Sites(sites.into_iter().collect())
    }

    pub fn wants(&self, point: HookPoint) -> bool {
        match self {
            Capture::Nothing => false,
            Capture::All => true,
            Capture::Points(set) => set.contains(&point),
            Capture::Sites(sites) => match point {
                HookPoint::Block { site, .. } => sites.contains(&site),
                _ => false,
            },
        }
    }
}

/// The activations of one run, in execution order; and, where someone holding a dictionary
/// added them, its codes (`[pos, atoms]`) of the residual stream leaving a block: derived values,
/// not a point of the forward pass, so no intervention can aim at them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivationRecord {
    map: BTreeMap<HookPoint, Activation>,
    codes: BTreeMap<usize, Activation>,
}

impl ActivationRecord {
    pub fn get(&self, point: HookPoint) -> Option<&Activation> {
        self.map.get(&point)
    }

    pub fn insert(&mut self, point: HookPoint, activation: Activation) {
        self.map.insert(point, activation);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HookPoint, &Activation)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// A dictionary's codes `[pos, atoms]` of `blocks.{layer}.hook_resid_post`, if added.
    pub fn codes(&self, layer: usize) -> Option<&Activation> {
        self.codes.get(&layer)
    }

    /// Bytes of the values it holds that `shared` does not (a value buffer both hold counts
    /// once: an edited run's earlier layers are the baseline's own).
    pub fn bytes_beyond(&self, shared: Option<&ActivationRecord>) -> usize {
        let held_by_shared = |a: &Activation| {
            shared.is_some_and(|s| {
                s.map
                    .values()
                    .chain(s.codes.values())
                    .any(|b| std::sync::Arc::ptr_eq(&a.data, &b.data))
            })
        };
        self.map
            .values()
            .chain(self.codes.values())
            .filter(|a| !held_by_shared(a))
            .map(Activation::bytes)
            .sum()
    }

    /// Every layer's codes, in layer order.
    pub fn iter_codes(&self) -> impl Iterator<Item = (usize, &Activation)> {
        self.codes.iter().map(|(l, a)| (*l, a))
    }

    pub fn set_codes(&mut self, layer: usize, codes: Activation) {
        self.codes.insert(layer, codes);
    }

    /// Drops every code (the dictionary they came from is no longer in use).
    pub fn clear_codes(&mut self) {
        self.codes.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Moves in every entry of `earlier` that lies before layer `layer` (used by the
    /// incremental re-run, which only recomputes from `layer` on).
    pub fn fill_before_layer(&mut self, earlier: &ActivationRecord, layer: usize) {
        for (point, act) in earlier.iter() {
            let before = match point.layer() {
                Some(l) => l < layer,
                None => *point != HookPoint::LnFinal,
            };
            if before {
                self.map.entry(*point).or_insert_with(|| act.clone());
            }
        }
    }
}
