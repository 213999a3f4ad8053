//! Everything the views draw that takes computing: heatmap rows, the layer map, colour scales,
//! the selected feature's curves, the next-token lists at the chosen position. Recomputed only
//! when one of its inputs ([`DerivedKey`]) changes; views only read it.

use std::sync::Arc;

use crate::analysis::pattern::PatternGrids;
use crate::analysis::{self, maps, maps::MapCell, maps::Measure};
use crate::circuits::dla::DlaReport;
use crate::features::{Basis, FeatureId};
use crate::hooks::ActivationRecord;

use super::state::{AppState, ViewMode};
use super::worker::{RunId, RunResult, TOP_NEXT};

/// One row of the layer heatmap.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureRow {
    pub feature: FeatureId,
    pub values: Vec<f32>,
    /// Shown because it is selected, not because it ranks in the top K.
    pub pinned: bool,
    /// Its direct effect on the target, when the rows are ranked by it.
    pub effect: Option<f32>,
}

/// The direct effects the rows may be ranked by: a baseline attribution (every layer's neurons
/// and heads) and the serial of its answer.
#[derive(Clone, Copy)]
pub struct RankEffects<'a> {
    pub serial: u64,
    pub report: &'a DlaReport,
}

/// The selected head's pattern computed on demand ([`super::patterns`]) and the serial of its
/// query.
#[derive(Clone, Copy)]
pub struct OnDemandPattern<'a> {
    pub serial: u64,
    pub computed: &'a super::worker::Computed,
}

/// What the rows are ranked by when it is the direct effect, for the caption and the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectRanking {
    /// The target token and the versus token, as shown (whitespace visible).
    pub target: String,
    pub versus: Option<String>,
    /// The attribution's position and its token (as shown).
    pub position: usize,
    pub token: String,
}

/// The next-token distributions after one position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NextTokens {
    pub position: usize,
    /// Whether `position` is the last one (the default).
    pub is_last: bool,
    pub baseline: Vec<(String, f32)>,
    pub intervened: Option<Vec<(String, f32)>>,
    /// KL(baseline ‖ intervened) at `position`, in nats.
    pub kl: Option<f64>,
}

/// The selected feature over the probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureCurve {
    pub feature: Option<FeatureId>,
    pub baseline: Vec<f32>,
    /// What the rest of the model saw in the intervened run (after the edit).
    pub intervened: Option<Vec<f32>>,
    /// Largest |baseline| outside the excluded sink.
    pub peak: f32,
    /// Largest-magnitude baseline value, with its sign (for "clamp to k × peak").
    pub signed_peak: f32,
    /// A head's attention pattern in the baseline run as the card draws it (max-pooled for
    /// long probes): recorded by the run, or computed on demand.
    pub pattern: Option<Arc<PatternGrids>>,
    /// The pattern was computed on demand (the run kept none: a long probe).
    pub pattern_on_demand: bool,
}

/// The inputs of [`Derived`]; when none changes, nothing is recomputed.
#[derive(Clone, Debug, PartialEq)]
pub struct DerivedKey {
    pub run: RunId,
    /// Whether every position's logits of the run are here (they follow its first answer).
    pub complete: bool,
    pub layer: usize,
    pub basis: Basis,
    pub top_k: usize,
    pub view: ViewMode,
    pub measure: Measure,
    pub selection: Option<FeatureId>,
    pub exclude_sink: bool,
    pub output_position: Option<usize>,
    /// The scan index the "what fires here" scales come from (its address; 0: none).
    pub index: usize,
    /// The serial of the direct effects the rows are ranked by (`None`: by activation).
    pub effects: Option<u64>,
    /// The serial of the selected head's pattern computed on demand (`None`: none).
    pub pattern: Option<u64>,
}

#[derive(Default)]
pub struct Derived {
    key: Option<DerivedKey>,
    /// The view actually shown: B and B − A fall back to A when there is no edit.
    pub view: Option<ViewMode>,
    /// The probe's tokens as every view labels them (`text::token_label`).
    pub tokens: Vec<String>,
    pub rows: Vec<FeatureRow>,
    /// Set when the rows are ranked by direct effect (else by peak |activation|).
    pub effect_ranking: Option<EffectRanking>,
    pub row_scale: f32,
    pub rows_diverging: bool,
    pub map: Vec<Vec<Option<MapCell>>>,
    pub map_scale: f32,
    pub map_diverging: bool,
    pub next: NextTokens,
    pub curve: FeatureCurve,
    /// What fires here: the strongest features of the basis shown at the output position
    /// across every layer (baseline), `(feature, activation, score)`; the score is
    /// |activation| / the feature's largest |activation| in the corpus scan when one is
    /// loaded, else |activation|.
    pub fires_here: Vec<(FeatureId, f32, f32)>,
    /// Whether `fires_here` is scaled by a scan.
    pub fires_scaled: bool,
}

/// Features listed under "what fires here".
pub const FIRES_HERE: usize = 12;

/// The first position that counts for scales and rankings.
fn first_counted(exclude_sink: bool, len: usize) -> usize {
    usize::from(exclude_sink && len > 1)
}

fn named(vocab: &[String], top: Vec<(u32, f32, f32)>) -> Vec<(String, f32)> {
    top.into_iter()
        .map(|(id, _, p)| {
            let text = vocab
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| format!("<{id}>"));
            (text, p)
        })
        .collect()
}

impl Derived {
    /// Brings the derived views up to date with `state` and `result`.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh(
        &mut self,
        state: &AppState,
        result: Option<&RunResult>,
        layers: usize,
        vocab: &[String],
        index: Option<&crate::scan::ScanIndex>,
        effects: Option<RankEffects>,
        on_demand: Option<OnDemandPattern>,
    ) {
        let Some(result) = result else {
            *self = Derived::default();
            return;
        };
        let view = match (state.view, result.intervened.is_some()) {
            (_, false) => ViewMode::Baseline,
            (v, true) => v,
        };
        let key = DerivedKey {
            run: result.id,
            complete: result.intervened.as_ref().is_none_or(|s| s.is_complete()),
            layer: state.layer,
            basis: state.basis,
            top_k: state.top_k,
            view,
            measure: state.measure,
            selection: state.selection,
            exclude_sink: state.exclude_sink,
            output_position: state.output_position,
            index: index.map_or(0, |i| i as *const _ as usize),
            effects: effects.map(|e| e.serial),
            pattern: on_demand.map(|p| p.serial),
        };
        if self.key.as_ref() == Some(&key) {
            return;
        }
        let base = &result.baseline.record;
        let inter = result.intervened.as_ref().map(|s| &s.record);
        let (record, minus): (&ActivationRecord, Option<&ActivationRecord>) = match (view, inter) {
            (ViewMode::Intervened, Some(i)) => (i, None),
            (ViewMode::Difference, Some(i)) => (i, Some(base)),
            _ => (base, None),
        };
        let len = result.tokens.len();
        let from = first_counted(state.exclude_sink, len);
        let values_of = |f: FeatureId| {
            let v = maps::feature_activations(record, f);
            match minus {
                Some(b) => v
                    .iter()
                    .zip(maps::feature_activations(b, f))
                    .map(|(a, b)| a - b)
                    .collect(),
                None => v,
            }
        };

        // Rows are ranked on the baseline, so they stay put when an edit changes the values: by
        // peak |activation|, or by |direct effect| on the target (a baseline attribution).
        let layer_effects = effects
            .and_then(|e| e.report.layers.get(state.layer))
            .and_then(|bars| bars.effects(state.basis));
        let mut features = match layer_effects {
            // Only the ~k features active at the position write anything: the rest would be
            // ties at zero.
            Some(v) if state.basis == Basis::Dictionary => {
                maps::top_by_effect(v, state.layer, state.basis, state.top_k)
                    .into_iter()
                    .filter(|f| v.get(f.index).is_some_and(|&e| e != 0.0))
                    .collect()
            }
            Some(v) => maps::top_by_effect(v, state.layer, state.basis, state.top_k),
            None => maps::top_features(base, state.layer, state.basis, state.top_k, from),
        };
        let pinned = state
            .selection
            .filter(|f| f.layer == state.layer && f.basis == state.basis)
            .filter(|f| !features.contains(f));
        features.extend(pinned);
        let rows: Vec<FeatureRow> = features
            .into_iter()
            .map(|f| FeatureRow {
                feature: f,
                values: values_of(f),
                pinned: Some(f) == pinned,
                effect: layer_effects.and_then(|v| v.get(f.index).copied()),
            })
            .collect();
        let effect_ranking = effects.filter(|_| layer_effects.is_some()).map(|e| {
            let r = e.report;
            EffectRanking {
                target: super::text::visible(&r.target.token),
                versus: r.versus.as_ref().map(|v| super::text::visible(&v.token)),
                position: r.position,
                token: r
                    .tokens
                    .get(r.position)
                    .map(|t| super::text::visible(t))
                    .unwrap_or_default(),
            }
        });
        let row_scale = maps::robust_scale(
            rows.iter()
                .flat_map(|r| r.values.iter().skip(from).copied()),
            0.98,
        );

        let mut map = maps::layer_map(record, state.measure, layers, state.selection);
        if let Some(b) = minus {
            let base_map = maps::layer_map(b, state.measure, layers, state.selection);
            for (row, base_row) in map.iter_mut().zip(base_map) {
                for (cell, b) in row.iter_mut().zip(base_row) {
                    if let (Some(c), Some(b)) = (cell.as_mut(), b) {
                        c.value -= b.value;
                        // A difference has no single strongest neuron.
                        c.neuron = None;
                    }
                }
            }
        }
        let map_scale = maps::robust_scale(
            map.iter()
                .flat_map(|row| row.iter().skip(from))
                .flatten()
                .map(|c| c.value),
            0.98,
        );

        let position = state
            .output_position
            .unwrap_or(len.saturating_sub(1))
            .min(len.saturating_sub(1));
        let next = match result.baseline.logits_at(position) {
            Some(b) => {
                let i = result
                    .intervened
                    .as_ref()
                    .and_then(|s| s.logits_at(position));
                NextTokens {
                    position,
                    is_last: position + 1 == len,
                    baseline: named(vocab, analysis::top_k(b, TOP_NEXT)),
                    intervened: i.map(|i| named(vocab, analysis::top_k(i, TOP_NEXT))),
                    kl: i.map(|i| analysis::kl_divergence(b, i)),
                }
            }
            None => NextTokens::default(),
        };

        let curve = match state.selection {
            Some(f) => {
                // The run's own record of the pattern (short probes), else one computed on
                // demand for this probe.
                let recorded = (f.basis == Basis::Heads)
                    .then(|| maps::head_pattern_slice(base, f.layer, f.index))
                    .flatten();
                let computed = on_demand.map(|p| p.computed).filter(|c| {
                    f.basis == Basis::Heads
                        && (c.pattern.layer, c.pattern.head) == (f.layer, f.index)
                        && c.pattern.len == len
                });
                let (pattern, pattern_on_demand) = match (recorded, computed) {
                    (Some((n, values)), _) => (Some(Arc::new(PatternGrids::new(values, n))), false),
                    (None, Some(c)) => (Some(c.grids.clone()), true),
                    (None, None) => (None, false),
                };
                let baseline = maps::feature_activations(base, f);
                let counted = baseline.iter().skip(from);
                let signed_peak =
                    counted
                        .clone()
                        .copied()
                        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                FeatureCurve {
                    feature: Some(f),
                    peak: signed_peak.abs(),
                    signed_peak,
                    intervened: inter.map(|i| maps::feature_activations(i, f)),
                    pattern,
                    pattern_on_demand,
                    baseline,
                }
            }
            None => FeatureCurve::default(),
        };

        let scale = |f: FeatureId| index.and_then(|i| super::receptive::max_abs(i, f));
        let fires_here = maps::strongest_at(
            base,
            position,
            state.basis,
            // Dictionary features: their codes as they are (a scan's range of another
            // dictionary's atoms would say nothing of these).
            (index.is_some() && state.basis != Basis::Dictionary)
                .then_some(&scale as &dyn Fn(FeatureId) -> Option<f32>),
            FIRES_HERE,
        );

        *self = Derived {
            key: Some(key),
            view: Some(view),
            tokens: result.tokens.iter().map(super::text::token_label).collect(),
            rows,
            effect_ranking,
            row_scale,
            rows_diverging: view == ViewMode::Difference || state.basis.signed(),
            map,
            map_scale,
            map_diverging: view == ViewMode::Difference || state.measure.signed(state.selection),
            next,
            curve,
            fires_here,
            fires_scaled: index.is_some(),
        };
    }
}
