//! Whole-probe views of a record: the layer × token map, the strongest features of a layer, one
//! feature's activation over the probe. Plain data in and out, so the UI only draws.

use crate::features::{Basis, FeatureId};
use crate::hooks::{Activation, ActivationRecord, BlockSite, HookPoint};

/// What a cell of the layer map shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Measure {
    /// The largest |activation| of any MLP neuron at this layer and token.
    StrongestNeuron,
    /// How many MLP neurons exceed 10% of the layer's peak |activation| over the probe.
    ActiveNeurons,
    /// ‖resid_post‖ at this layer and token.
    ResidNorm,
    /// ‖attn_out‖ at this layer and token.
    AttnOutNorm,
    /// The selected feature's activation (its own layer's row only).
    Selected,
}

impl Measure {
    pub const ALL: [Measure; 5] = [
        Measure::StrongestNeuron,
        Measure::ActiveNeurons,
        Measure::ResidNorm,
        Measure::AttnOutNorm,
        Measure::Selected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::StrongestNeuron => "Strongest MLP neuron",
            Measure::ActiveNeurons => "Active MLP neurons",
            Measure::ResidNorm => "Residual norm",
            Measure::AttnOutNorm => "Attention-out norm",
            Measure::Selected => "Selected feature",
        }
    }

    /// Whether the measure can be negative (a diverging palette) or not (a sequential one).
    /// `Selected` is signed for a neuron and a norm (non-negative) for a head.
    pub fn signed(self, selected: Option<FeatureId>) -> bool {
        match self {
            Measure::Selected => selected.is_some_and(|f| f.basis.signed()),
            _ => false,
        }
    }

    /// The sites a record needs for this measure.
    pub fn site(self) -> BlockSite {
        match self {
            Measure::StrongestNeuron | Measure::ActiveNeurons => BlockSite::MlpPost,
            Measure::ResidNorm => BlockSite::ResidPost,
            Measure::AttnOutNorm => BlockSite::AttnOut,
            Measure::Selected => BlockSite::MlpPost,
        }
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// One cell of the layer map: the value and, for "strongest neuron", which neuron it was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapCell {
    pub value: f32,
    pub neuron: Option<usize>,
}

impl MapCell {
    fn plain(value: f32) -> Option<Self> {
        Some(MapCell {
            value,
            neuron: None,
        })
    }
}

/// `[layer][token]`; an empty row where the record lacks the data.
pub fn layer_map(
    record: &ActivationRecord,
    measure: Measure,
    n_layers: usize,
    selected: Option<FeatureId>,
) -> Vec<Vec<Option<MapCell>>> {
    (0..n_layers)
        .map(|layer| {
            if measure == Measure::Selected {
                return match selected {
                    Some(f) if f.layer == layer => feature_activations(record, f)
                        .into_iter()
                        .map(MapCell::plain)
                        .collect(),
                    _ => Vec::new(),
                };
            }
            let Some(act) = record.get(HookPoint::block(layer, measure.site())) else {
                return Vec::new();
            };
            let n = act.shape[0];
            match measure {
                Measure::StrongestNeuron => (0..n)
                    .map(|t| {
                        let (neuron, value) =
                            act.row(t).iter().enumerate().fold((0, 0f32), |m, (i, v)| {
                                if v.abs() > m.1 {
                                    (i, v.abs())
                                } else {
                                    m
                                }
                            });
                        Some(MapCell {
                            value,
                            neuron: Some(neuron),
                        })
                    })
                    .collect(),
                Measure::ActiveNeurons => {
                    let threshold = 0.1 * act.max_abs();
                    (0..n)
                        .map(|t| {
                            MapCell::plain(
                                act.row(t).iter().filter(|v| v.abs() > threshold).count() as f32,
                            )
                        })
                        .collect()
                }
                _ => (0..n).map(|t| MapCell::plain(norm(act.row(t)))).collect(),
            }
        })
        .collect()
}

/// The activation a feature of `basis` at `layer` is read from: `mlp.hook_post`, `attn.hook_z`,
/// or the dictionary codes added to the record.
fn source(record: &ActivationRecord, basis: Basis, layer: usize) -> Option<&Activation> {
    match basis {
        Basis::Dictionary => record.codes(layer),
        _ => record.get(HookPoint::block(layer, basis.site())),
    }
}

/// A feature's activation at each token: the neuron's value, the norm of the head's `z`, or
/// the dictionary feature's code (empty when the record has no codes of its layer).
pub fn feature_activations(record: &ActivationRecord, f: FeatureId) -> Vec<f32> {
    let Some(act) = source(record, f.basis, f.layer) else {
        return Vec::new();
    };
    let n = act.shape[0];
    match f.basis {
        Basis::Neurons | Basis::Dictionary => (0..n)
            .map(|t| act.row(t).get(f.index).copied().unwrap_or(0.0))
            .collect(),
        Basis::Heads => {
            let d_head = act.shape[2];
            (0..n)
                .map(|t| {
                    act.row(t)
                        .get(f.index * d_head..(f.index + 1) * d_head)
                        .map_or(0.0, norm)
                })
                .collect()
        }
    }
}

/// The `k` features of `layer` with the largest peak |activation| over the probe's positions
/// from `from` on (1 leaves out position 0, the attention sink), strongest first (ties by index).
pub fn top_features(
    record: &ActivationRecord,
    layer: usize,
    basis: Basis,
    k: usize,
    from: usize,
) -> Vec<FeatureId> {
    let Some(act) = source(record, basis, layer) else {
        return Vec::new();
    };
    // Neurons: [pos, d_mlp]; heads: [pos, head, d_head]; codes: [pos, atoms]. The units are
    // axis 1.
    let units = act.shape[1];
    let mut peaks: Vec<(usize, f32)> = (0..units)
        .map(|i| {
            let f = FeatureId {
                basis,
                layer,
                index: i,
            };
            (
                i,
                feature_activations(record, f)
                    .iter()
                    .skip(from)
                    .fold(0f32, |m, v| m.max(v.abs())),
            )
        })
        .collect();
    peaks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    peaks
        .into_iter()
        .take(k)
        .map(|(index, _)| FeatureId {
            basis,
            layer,
            index,
        })
        .collect()
}

/// The `k` features of `layer` with the largest |effect|, strongest first, where `effects[i]` is
/// unit `i`'s direct effect on a target (a DLA's per-layer neuron or head values). Ties go to the
/// lower index; a non-finite effect ranks below every finite one (it carries no ranking).
pub fn top_by_effect(effects: &[f32], layer: usize, basis: Basis, k: usize) -> Vec<FeatureId> {
    let magnitude = |v: f32| if v.is_finite() { v.abs() } else { -1.0 };
    let mut order: Vec<usize> = (0..effects.len()).collect();
    order.sort_by(|&a, &b| {
        magnitude(effects[b])
            .total_cmp(&magnitude(effects[a]))
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|index| FeatureId {
            basis,
            layer,
            index,
        })
        .collect()
}

/// The `n` strongest features of `basis` at position `pos`, across every layer the record holds
/// (its `mlp.hook_post` for neurons, `attn.hook_z` for heads): `(feature, activation, score)`,
/// highest score first (ties by feature: layer, then index). The activation is the neuron's
/// value or the head's ‖z_h‖, as in [`feature_activations`]. The score is |activation| divided
/// by the feature's `scale` when one is given (e.g. its max |activation| over a corpus scan, so
/// that neurons of different sizes compare), else |activation|. With a scale, a feature whose
/// scale is `None`, zero, negative or not finite has no comparable score and is left out; so are
/// non-finite activations and layers whose record does not reach `pos`.
pub fn strongest_at(
    record: &ActivationRecord,
    pos: usize,
    basis: Basis,
    scale: Option<&dyn Fn(FeatureId) -> Option<f32>>,
    n: usize,
) -> Vec<(FeatureId, f32, f32)> {
    let site = basis.site();
    let mut all = Vec::new();
    let layers: Vec<(usize, &Activation)> = match basis {
        Basis::Dictionary => record.iter_codes().collect(),
        _ => record
            .iter()
            .filter_map(|(point, act)| match *point {
                HookPoint::Block { layer, site: s } if s == site => Some((layer, act)),
                _ => None,
            })
            .collect(),
    };
    for (layer, act) in layers {
        if act.shape.first().is_none_or(|&len| pos >= len) {
            continue;
        }
        let row = act.row(pos);
        // Neurons: [pos, d_mlp]; heads: [pos, head, d_head]. Either way the units are axis 1.
        let units = act.shape.get(1).copied().unwrap_or(0);
        let width = row.len() / units.max(1);
        for (index, unit) in row.chunks_exact(width.max(1)).take(units).enumerate() {
            let f = FeatureId {
                basis,
                layer,
                index,
            };
            let value = match basis {
                Basis::Neurons | Basis::Dictionary => unit[0],
                Basis::Heads => norm(unit),
            };
            let score = match scale {
                None => value.abs(),
                Some(scale) => match scale(f) {
                    Some(s) if s.is_finite() && s > 0.0 => value.abs() / s,
                    _ => continue,
                },
            };
            if score.is_finite() {
                all.push((f, value, score));
            }
        }
    }
    all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

/// A robust colour scale: the `q` quantile of |values| (finite ones), at least `floor`.
/// SmolLM2 has a few huge residual dimensions; scaling to the maximum would wash out the rest.
pub fn robust_scale(values: impl IntoIterator<Item = f32>, q: f32) -> f32 {
    let mut abs: Vec<f32> = values
        .into_iter()
        .filter(|v| v.is_finite())
        .map(f32::abs)
        .collect();
    if abs.is_empty() {
        return 1.0;
    }
    abs.sort_by(f32::total_cmp);
    let i = ((abs.len() - 1) as f32 * q.clamp(0.0, 1.0)).round() as usize;
    let s = abs[i];
    if s > 0.0 {
        s
    } else {
        abs[abs.len() - 1].max(1e-6)
    }
}

/// A head's attention pattern in a record as one `[query, key]` slice, with its side: `(len,
/// values)`; `None` when the record holds no square pattern of that layer and head.
pub fn head_pattern_slice(
    record: &ActivationRecord,
    layer: usize,
    head: usize,
) -> Option<(usize, &[f32])> {
    let act = record.get(HookPoint::block(layer, BlockSite::Pattern))?;
    let &[heads, q, k] = act.shape.as_slice() else {
        return None;
    };
    (head < heads && q == k).then(|| (q, &act.data[head * q * k..(head + 1) * q * k]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::Activation;

    fn record() -> ActivationRecord {
        let mut r = ActivationRecord::default();
        // 2 tokens, 3 neurons
        r.insert(
            HookPoint::block(1, BlockSite::MlpPost),
            Activation::new(vec![2, 3], vec![0.1, -5.0, 1.0, 0.2, 0.3, 2.0]),
        );
        // 2 tokens, 2 heads, d_head 2
        r.insert(
            HookPoint::block(1, BlockSite::Z),
            Activation::new(vec![2, 2, 2], vec![3.0, 4.0, 0.0, 1.0, 0.0, 0.0, 6.0, 8.0]),
        );
        r
    }

    #[test]
    fn ranks_features_by_peak_magnitude() {
        let r = record();
        let top = top_features(&r, 1, Basis::Neurons, 2, 0);
        assert_eq!(top, vec![FeatureId::neuron(1, 1), FeatureId::neuron(1, 2)]);
        assert_eq!(
            feature_activations(&r, FeatureId::head(1, 1)),
            vec![1.0, 10.0]
        );
        assert_eq!(
            top_features(&r, 1, Basis::Heads, 5, 0),
            vec![FeatureId::head(1, 1), FeatureId::head(1, 0)]
        );
        assert!(top_features(&r, 0, Basis::Neurons, 5, 0).is_empty());
        // Leaving out position 0: neuron 1's -5.0 is there, so neuron 2 (2.0 at position 1) leads.
        assert_eq!(
            top_features(&r, 1, Basis::Neurons, 2, 1),
            vec![FeatureId::neuron(1, 2), FeatureId::neuron(1, 1)]
        );
    }

    #[test]
    fn ranks_features_by_absolute_effect_ties_by_index() {
        let effects = [0.5, -2.0, 1.5, 2.0, f32::NAN, -0.0, 1.5];
        let top = top_by_effect(&effects, 3, Basis::Neurons, 5);
        // |−2.0| = |2.0|: the lower index first; then 1.5 twice (index 2 before 6); then 0.5.
        assert_eq!(
            top,
            [1, 3, 2, 6, 0].map(|i| FeatureId::neuron(3, i)).to_vec()
        );
        // Everything, with the non-finite effect last (after −0.0).
        let all = top_by_effect(&effects, 3, Basis::Heads, 100);
        assert_eq!(
            all.iter().map(|f| f.index).collect::<Vec<_>>(),
            vec![1, 3, 2, 6, 0, 5, 4]
        );
        assert!(all.iter().all(|f| f.basis == Basis::Heads && f.layer == 3));
        assert!(top_by_effect(&effects, 0, Basis::Neurons, 0).is_empty());
        assert!(top_by_effect(&[], 0, Basis::Neurons, 4).is_empty());
    }

    #[test]
    fn layer_map_measures() {
        let r = record();
        let values =
            |row: &[Option<MapCell>]| row.iter().map(|c| c.map(|c| c.value)).collect::<Vec<_>>();
        let m = layer_map(&r, Measure::StrongestNeuron, 2, None);
        assert!(m[0].is_empty());
        assert_eq!(values(&m[1]), vec![Some(5.0), Some(2.0)]);
        assert_eq!(
            m[1].iter().map(|c| c.unwrap().neuron).collect::<Vec<_>>(),
            vec![Some(1), Some(2)],
            "the cell names its neuron"
        );
        let a = layer_map(&r, Measure::ActiveNeurons, 2, None);
        assert_eq!(
            values(&a[1]),
            vec![Some(2.0), Some(1.0)],
            "above 10% of the peak 5.0"
        );
        let s = layer_map(&r, Measure::Selected, 2, Some(FeatureId::neuron(1, 2)));
        assert_eq!(values(&s[1]), vec![Some(1.0), Some(2.0)]);
        assert!(Measure::Selected.signed(Some(FeatureId::neuron(1, 2))));
        assert!(!Measure::Selected.signed(Some(FeatureId::head(1, 0))));
        assert!(!Measure::ResidNorm.signed(None));
    }

    #[test]
    fn robust_scale_ignores_outliers() {
        let mut v: Vec<f32> = (1..=100).map(|i| i as f32 / 100.0).collect();
        v.push(20000.0);
        assert!(robust_scale(v, 0.98) < 2.0);
        assert_eq!(robust_scale(Vec::<f32>::new(), 0.9), 1.0);
    }
}
