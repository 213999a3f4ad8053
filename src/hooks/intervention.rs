//! Interventions: edits applied to a hook point's activation during a run (ablation, steering,
//! clamping). An intervention is plain data, so the UI and the CLI build them, sessions save
//! them, and the runtime applies them at every step of a run, continuation included.

use super::point::{HookPoint, Layout};

/// What to do to the selected values.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// Set to 0 (zero-ablation).
    Zero,
    /// Replace by the mean over all of this probe's positions (mean-ablation).
    Mean,
    /// Replace by a supplied per-position vector (one value per element of a position's slice,
    /// e.g. `d_mlp` values for `mlp.hook_post`); used for dataset means and for the
    /// continuation, where `Mean` is resolved once over the prompt.
    MeanOf { values: Vec<f32> },
    /// Set to a constant (clamping).
    Set { value: f32 },
    /// Add a constant.
    Add { value: f32 },
    /// Add `alpha · direction` (steering); `direction` has one value per element of a
    /// position's slice.
    AddDirection { direction: Vec<f32>, alpha: f32 },
    /// Add `alphas[p] · direction` at each absolute position `p` (nothing past the end of
    /// `alphas`): a dictionary feature's edit, its atom times the change of its code at each
    /// token (features/dictionary/edit.rs). `label` names the feature for a person.
    AddScaled {
        direction: Vec<f32>,
        alphas: Vec<f32>,
        label: String,
    },
    /// Multiply by a factor.
    Scale { factor: f32 },
}

/// One edit: a hook point, which positions (absolute token positions; `None` = all), which
/// indices (neurons, dimensions, or heads for `attn.hook_z`/`attn.hook_pattern`; `None` = all)
/// and what to do.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Intervention {
    pub hook: HookPoint,
    #[serde(default)]
    pub positions: Option<Vec<usize>>,
    #[serde(default)]
    pub indices: Option<Vec<usize>>,
    pub op: Op,
}

/// An intervention that cannot apply to this model or this tensor.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InterventionError {
    #[error(
        "{hook}: index {index} is out of range (this hook point has {})",
        crate::count(*.count, &singular(.unit), .unit)
    )]
    IndexOutOfRange {
        hook: HookPoint,
        index: usize,
        count: usize,
        unit: &'static str,
    },
    #[error(
        "{hook}: position {position} is out of range (the probe has {})",
        crate::count(*.len, "token", "tokens")
    )]
    PositionOutOfRange {
        hook: HookPoint,
        position: usize,
        len: usize,
    },
    #[error("{hook}: a vector of {got} values was given, {expected} are needed")]
    WrongLength {
        hook: HookPoint,
        got: usize,
        expected: usize,
    },
    #[error("{hook} does not exist in this model")]
    NoSuchHook { hook: HookPoint },
    #[error("{hook}: layer {layer} does not exist: the model has {}", layer_count(*.layers))]
    NoSuchLayer {
        hook: HookPoint,
        layer: usize,
        layers: usize,
    },
}

/// `30 layers (0–29)`, `1 layer (0)`.
pub fn layer_count(layers: usize) -> String {
    match layers {
        0 => "no layers".to_string(),
        1 => "1 layer (0)".to_string(),
        n => format!("{n} layers (0–{})", n - 1),
    }
}

/// `neurons or dimensions` → `neuron or dimension`.
fn singular(plural: &str) -> String {
    plural
        .split(" or ")
        .map(|w| w.strip_suffix('s').unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The shape of one hook point's tensor as `[outer, pos, inner]`, with the meaning of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub outer: usize,
    pub pos: usize,
    pub inner: usize,
    pub layout: Layout,
    /// Number of indexable units (neurons, dimensions or heads).
    pub units: usize,
}

impl View {
    /// Builds the view of a tensor with `shape` at a point with `layout`.
    pub fn new(layout: Layout, shape: &[usize]) -> Self {
        match layout {
            Layout::PosWidth => View {
                outer: 1,
                pos: shape[0],
                inner: shape[1],
                layout,
                units: shape[1],
            },
            Layout::PosHeadDim => View {
                outer: 1,
                pos: shape[0],
                inner: shape[1] * shape[2],
                layout,
                units: shape[1],
            },
            Layout::HeadQueryKey => View {
                outer: shape[0],
                pos: shape[1],
                inner: shape[2],
                layout,
                units: shape[0],
            },
        }
    }

    /// Elements of one position's slice (`outer · inner`).
    pub fn per_position(&self) -> usize {
        self.outer * self.inner
    }

    pub fn unit_name(&self) -> &'static str {
        match self.layout {
            Layout::PosWidth => "neurons or dimensions",
            _ => "heads",
        }
    }

    /// The (outer, inner-range) pairs that index `unit` covers.
    fn unit_cells(&self, unit: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        match self.layout {
            Layout::PosWidth => (0..1, unit..unit + 1),
            Layout::PosHeadDim => {
                let d_head = self.inner / self.units;
                (0..1, unit * d_head..(unit + 1) * d_head)
            }
            Layout::HeadQueryKey => (unit..unit + 1, 0..self.inner),
        }
    }
}

impl Intervention {
    /// Zero-ablates `indices` at `hook`, at every position.
    pub fn zero(hook: HookPoint, indices: Vec<usize>) -> Self {
        Intervention {
            hook,
            positions: None,
            indices: Some(indices),
            op: Op::Zero,
        }
    }

    /// Checks indices against the hook point's size and vectors against its width.
    /// `units` is the number of indexable units, `per_position` the elements of one
    /// position's slice (both from the model's dimensions).
    pub fn check(
        &self,
        units: usize,
        per_position: usize,
        unit_name: &'static str,
    ) -> Result<(), InterventionError> {
        if let Some(indices) = &self.indices {
            if let Some(&index) = indices.iter().find(|&&i| i >= units) {
                return Err(InterventionError::IndexOutOfRange {
                    hook: self.hook,
                    index,
                    count: units,
                    unit: unit_name,
                });
            }
        }
        let vector_len = match &self.op {
            Op::MeanOf { values } => Some(values.len()),
            Op::AddDirection { direction, .. } | Op::AddScaled { direction, .. } => {
                Some(direction.len())
            }
            _ => None,
        };
        match vector_len {
            Some(got) if got != per_position => Err(InterventionError::WrongLength {
                hook: self.hook,
                got,
                expected: per_position,
            }),
            _ => Ok(()),
        }
    }

    /// Checks positions against the probe length.
    pub fn check_positions(&self, len: usize) -> Result<(), InterventionError> {
        if let Some(&position) = self.positions.iter().flatten().find(|&&p| p >= len) {
            return Err(InterventionError::PositionOutOfRange {
                hook: self.hook,
                position,
                len,
            });
        }
        Ok(())
    }

    /// For an `Op::Mean` outside attention patterns: the same edit as an `Op::MeanOf` with the
    /// means over `data` (laid out as `view`), which gives bitwise the same result when applied
    /// to `data` and can be held fixed afterwards (a continuation's cached steps). `None` for
    /// other ops and for patterns, whose width grows with the sequence.
    pub fn resolve_mean(&self, data: &[f32], view: View) -> Option<Intervention> {
        if self.op != Op::Mean || view.layout == Layout::HeadQueryKey {
            return None;
        }
        Some(Intervention {
            op: Op::MeanOf {
                values: column_means(data, view),
            },
            ..self.clone()
        })
    }

    /// Applies the edit in place to `data`, laid out as `view`, whose position axis starts at
    /// absolute position `pos_offset` (non-zero during a cached continuation).
    pub fn apply(
        &self,
        data: &mut [f32],
        view: View,
        pos_offset: usize,
    ) -> Result<(), InterventionError> {
        self.check(view.units, view.per_position(), view.unit_name())?;
        let means: Vec<f32> = if matches!(self.op, Op::Mean) {
            column_means(data, view)
        } else {
            Vec::new()
        };
        let all_units: Vec<usize>;
        let units: &[usize] = match &self.indices {
            Some(indices) => indices,
            None => {
                all_units = (0..view.units).collect();
                &all_units
            }
        };
        for p in 0..view.pos {
            let abs = p + pos_offset;
            if let Some(positions) = &self.positions {
                if !positions.contains(&abs) {
                    continue;
                }
            }
            for &unit in units {
                let (outer, inner) = view.unit_cells(unit);
                for o in outer {
                    let base = (o * view.pos + p) * view.inner;
                    for i in inner.clone() {
                        let cell = o * view.inner + i;
                        let v = &mut data[base + i];
                        *v = match &self.op {
                            Op::Zero => 0.0,
                            Op::Mean => means[cell],
                            Op::MeanOf { values } => values[cell],
                            Op::Set { value } => *value,
                            Op::Add { value } => *v + value,
                            Op::AddDirection { direction, alpha } => *v + alpha * direction[cell],
                            Op::AddScaled {
                                direction, alphas, ..
                            } => *v + alphas.get(abs).copied().unwrap_or(0.0) * direction[cell],
                            Op::Scale { factor } => *v * factor,
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// The mean of each element of a position's slice over every position of `data`, `[per_position]`.
fn column_means(data: &[f32], view: View) -> Vec<f32> {
    let mut sums = vec![0f64; view.per_position()];
    for o in 0..view.outer {
        for p in 0..view.pos {
            let base = (o * view.pos + p) * view.inner;
            for i in 0..view.inner {
                sums[o * view.inner + i] += f64::from(data[base + i]);
            }
        }
    }
    sums.iter()
        .map(|s| (*s / view.pos.max(1) as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::point::BlockSite;

    fn mlp() -> HookPoint {
        HookPoint::block(0, BlockSite::MlpPost)
    }

    #[test]
    fn zero_touches_only_the_chosen_neuron_and_positions() {
        let mut data: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // [3 pos, 2 neurons]
        let view = View::new(Layout::PosWidth, &[3, 2]);
        let iv = Intervention {
            hook: mlp(),
            positions: Some(vec![1, 2]),
            indices: Some(vec![1]),
            op: Op::Zero,
        };
        iv.apply(&mut data, view, 0).unwrap();
        assert_eq!(data, vec![1.0, 2.0, 3.0, 0.0, 5.0, 0.0]);
    }

    #[test]
    fn mean_uses_every_position_and_offsets_shift_positions() {
        let mut data = vec![1.0, 10.0, 3.0, 20.0]; // [2 pos, 2]
        let view = View::new(Layout::PosWidth, &[2, 2]);
        let iv = Intervention {
            hook: mlp(),
            positions: Some(vec![5]),
            indices: Some(vec![0]),
            op: Op::Mean,
        };
        iv.apply(&mut data, view, 4).unwrap(); // rows are positions 4 and 5
        assert_eq!(data, vec![1.0, 10.0, 2.0, 20.0]);
    }

    #[test]
    fn head_index_covers_all_of_its_d_head_values() {
        let mut data = vec![1.0f32; 2 * 3 * 2]; // [2 pos, 3 heads, 2 d_head]
        let view = View::new(Layout::PosHeadDim, &[2, 3, 2]);
        Intervention {
            hook: HookPoint::block(0, BlockSite::Z),
            positions: None,
            indices: Some(vec![1]),
            op: Op::Scale { factor: 3.0 },
        }
        .apply(&mut data, view, 0)
        .unwrap();
        assert_eq!(
            data,
            vec![1.0, 1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 1.0, 1.0]
        );
    }

    #[test]
    fn pattern_index_is_a_head_and_positions_are_queries() {
        let mut data = vec![1.0f32; 2 * 2 * 2]; // [2 heads, 2 q, 2 k]
        let view = View::new(Layout::HeadQueryKey, &[2, 2, 2]);
        Intervention {
            hook: HookPoint::block(0, BlockSite::Pattern),
            positions: Some(vec![1]),
            indices: Some(vec![0]),
            op: Op::Set { value: 0.5 },
        }
        .apply(&mut data, view, 0)
        .unwrap();
        assert_eq!(data, vec![1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn steering_adds_alpha_times_direction() {
        let mut data = vec![0.0f32; 4];
        let view = View::new(Layout::PosWidth, &[2, 2]);
        Intervention {
            hook: mlp(),
            positions: None,
            indices: None,
            op: Op::AddDirection {
                direction: vec![1.0, -1.0],
                alpha: 2.0,
            },
        }
        .apply(&mut data, view, 0)
        .unwrap();
        assert_eq!(data, vec![2.0, -2.0, 2.0, -2.0]);
    }

    #[test]
    fn bad_indices_and_lengths_are_errors() {
        let view = View::new(Layout::PosWidth, &[2, 2]);
        let mut data = vec![0.0f32; 4];
        let err = Intervention::zero(mlp(), vec![2])
            .apply(&mut data, view, 0)
            .unwrap_err();
        assert!(err.to_string().contains("index 2 is out of range"), "{err}");
        let err = Intervention {
            hook: mlp(),
            positions: None,
            indices: None,
            op: Op::MeanOf { values: vec![1.0] },
        }
        .apply(&mut data, view, 0)
        .unwrap_err();
        assert!(matches!(
            err,
            InterventionError::WrongLength {
                got: 1,
                expected: 2,
                ..
            }
        ));
    }
}
