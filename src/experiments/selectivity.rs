//! Selectivity across depth: which MLP neurons, and from which layer on, tell set A from set B.
//!
//! Every stimulus is read at its reading position (the marked target's last token, else the last
//! token): each block's `mlp.hook_post` (the neurons) and `hook_resid_post` (for the probe), and
//! `blocks.0.hook_resid_pre` (the embedding, the floor every layer is compared with).

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::{self, Matrix};
use super::{Result, Runner};
use crate::corpus::protocol::{Protocol, Side, Tokenized};
use crate::features::{Basis, FeatureId};
use crate::hooks::{BlockSite, Capture, HookPoint};
use crate::model::Logits;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Label shuffles for the null band (at least 200).
    pub shuffles: usize,
    /// Folds of the cross-validated probe and of the nested best-neuron classifier.
    pub folds: usize,
    /// Neurons listed in `top_units`.
    pub top: usize,
    pub seed: u64,
    /// A dictionary whose features are ranked beside the neurons and heads: its codes of each
    /// stimulus's residual stream at the reading position, at every layer it reads.
    pub dictionary: Option<std::sync::Arc<crate::features::dictionary::Dictionary>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shuffles: 200,
            folds: 5,
            top: 20,
            seed: super::SEED,
            dictionary: None,
        }
    }
}

/// How a stimulus's activations become one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// At its reading position.
    Target,
    /// The mean over positions 1.. (the whole sentence's response; position 0 left out).
    MeanFrom1,
}

/// Every stimulus's row at each site: `neurons[l]` and `resid[l]` per block, `embed`.
pub struct Readings {
    pub neurons: Vec<Matrix>,
    /// Each head's output norm ‖z_h‖ (the scan's head feature), `[stimuli × heads]` per block;
    /// empty matrices unless asked for (with the residual stream, at the reading position).
    pub heads: Vec<Matrix>,
    pub resid: Vec<Matrix>,
    pub embed: Matrix,
    /// True for set A's rows (A's stimuli first, then B's).
    pub labels: Vec<bool>,
}

/// Runs both sets and reads every stimulus (`Reading`), A's rows first.
pub fn collect(
    runner: &Runner,
    sets: [&[Tokenized]; 2],
    reading: Reading,
    with_resid: bool,
) -> Result<Readings> {
    let model = runner.model;
    let layers = model.config().n_layers;
    let mut points = vec![HookPoint::block(0, BlockSite::ResidPre)];
    let with_heads = with_resid && reading == Reading::Target;
    for l in 0..layers {
        points.push(HookPoint::block(l, BlockSite::MlpPost));
        if with_resid {
            points.push(HookPoint::block(l, BlockSite::ResidPost));
        }
        if with_heads {
            points.push(HookPoint::block(l, BlockSite::Z));
        }
    }
    let capture = Capture::points(points);
    let all: Vec<&Tokenized> = sets.iter().flat_map(|s| s.iter()).collect();
    let seqs: Vec<Vec<u32>> = all.iter().map(|t| t.ids()).collect();
    let (d_mlp, d_model) = (model.config().d_mlp, model.config().d_model);
    let mut neurons = vec![Vec::with_capacity(all.len() * d_mlp); layers];
    let mut resid =
        vec![Vec::with_capacity(if with_resid { all.len() * d_model } else { 0 }); layers];
    let mut embed = Vec::with_capacity(all.len() * d_model);
    let n_heads = model.config().n_heads;
    let mut heads =
        vec![Vec::with_capacity(if with_heads { all.len() * n_heads } else { 0 }); layers];
    runner.batched(&seqs, &capture, &[], Logits::None, |i, out| {
        let row = |point: HookPoint, out_row: &mut Vec<f32>| {
            let Some(a) = out.record.get(point) else {
                return;
            };
            match reading {
                Reading::Target => out_row.extend_from_slice(a.row(all[i].read_at)),
                Reading::MeanFrom1 => {
                    let len = all[i].tokens.len();
                    let width = a.row(0).len();
                    let (from, n) = if len > 1 { (1, len - 1) } else { (0, 1) };
                    let mut sum = vec![0f64; width];
                    for p in from..len {
                        for (s, &v) in sum.iter_mut().zip(a.row(p)) {
                            *s += f64::from(v);
                        }
                    }
                    out_row.extend(sum.into_iter().map(|s| (s / n as f64) as f32));
                }
            }
        };
        row(HookPoint::block(0, BlockSite::ResidPre), &mut embed);
        for l in 0..layers {
            row(HookPoint::block(l, BlockSite::MlpPost), &mut neurons[l]);
            if with_resid {
                row(HookPoint::block(l, BlockSite::ResidPost), &mut resid[l]);
            }
            if let Some(z) = out.record.get(HookPoint::block(l, BlockSite::Z)) {
                let z = z.row(all[i].read_at);
                let d_head = z.len() / n_heads.max(1);
                heads[l].extend(z.chunks(d_head.max(1)).map(|h| {
                    h.iter()
                        .map(|&v| f64::from(v) * f64::from(v))
                        .sum::<f64>()
                        .sqrt() as f32
                }));
            }
        }
        Ok(())
    })?;
    let n = all.len();
    let labels = (0..n).map(|i| i < sets[0].len()).collect();
    Ok(Readings {
        neurons: neurons
            .into_iter()
            .map(|d| Matrix::new(n, d_mlp, d))
            .collect(),
        resid: resid
            .into_iter()
            .map(|d| Matrix::new(if with_resid { n } else { 0 }, d_model, d))
            .collect(),
        embed: Matrix::new(n, d_model, embed),
        heads: heads
            .into_iter()
            .map(|d| Matrix::new(if with_heads { n } else { 0 }, n_heads, d))
            .collect(),
        labels,
    })
}

/// One block's row of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerRow {
    pub layer: usize,
    /// The largest |d′| over the block's MLP neurons.
    pub max_abs_dprime: f64,
    /// The 95th percentile of that maximum with the labels shuffled.
    pub null95: f64,
    /// Cross-validated accuracy of a logistic probe on the block's `hook_resid_post`.
    pub probe_acc: f64,
    /// Nested cross-validated accuracy of the best single neuron of the block.
    pub neuron_acc: f64,
    /// The neuron with the largest |d′|.
    pub best: String,
    /// The largest |d′| of a head's output norm ‖z_h‖ in the block, and that head.
    pub max_abs_dprime_heads: f64,
    pub best_head: String,
    /// With a dictionary that reads this block's residual stream: the largest |d′| of its
    /// features' codes, and that feature (`L6D42`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_dprime_dict: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub best_dict: String,
}

/// The embedding's separation: the floor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Floor {
    pub max_abs_dprime: f64,
    pub null95: f64,
    pub probe_acc: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Unit {
    pub feature: String,
    pub layer: usize,
    pub dprime: f64,
    pub auroc: f64,
    pub mean_a: f64,
    pub mean_b: f64,
}

/// Mean reading position, mean length and the reading tokens of one set.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SetSummary {
    pub label: String,
    pub stimuli: usize,
    pub mean_read_at: f64,
    pub mean_tokens: f64,
    /// The tokens read at, most frequent first, with their counts (at most 5).
    pub read_tokens: Vec<(String, usize)>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SelectivityReport {
    pub protocol: String,
    pub kind: &'static str,
    pub sets: BTreeMap<&'static str, SetSummary>,
    pub embedding: Floor,
    pub layers: Vec<LayerRow>,
    pub top_units: Vec<Unit>,
    /// The first block whose largest |d′| is above its null band by more than the embedding's
    /// is above its own (each maximum against the null of as many columns).
    pub onset_layer: Option<usize>,
    /// The block with the largest |d′| overall.
    pub peak_layer: usize,
    /// Confounds the tool can see (positions, reading tokens, lengths, the embedding floor).
    pub warnings: Vec<String>,
    pub shuffles: usize,
    pub folds: usize,
}

/// What a set looks like to the tokenizer.
pub fn summarize(label: &str, set: &[Tokenized]) -> SetSummary {
    let n = set.len().max(1) as f64;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in set {
        *counts.entry(t.tokens[t.read_at].text.clone()).or_default() += 1;
    }
    let mut read_tokens: Vec<(String, usize)> = counts.into_iter().collect();
    read_tokens.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    read_tokens.truncate(5);
    SetSummary {
        label: label.to_string(),
        stimuli: set.len(),
        mean_read_at: set.iter().map(|t| t.read_at as f64).sum::<f64>() / n,
        mean_tokens: set.iter().map(|t| t.tokens.len() as f64).sum::<f64>() / n,
        read_tokens,
    }
}

/// The confounds visible without a model run: reading positions, reading tokens, lengths.
pub fn confounds(a: &[Tokenized], b: &[Tokenized]) -> Vec<String> {
    let (sa, sb) = (summarize("A", a), summarize("B", b));
    let mut out = Vec::new();
    if (sa.mean_read_at - sb.mean_read_at).abs() >= 0.5 {
        out.push(format!(
            "the target sits at different positions: mean token {:.1} in A, {:.1} in B (position alone can separate the sets)",
            sa.mean_read_at, sb.mean_read_at
        ));
    }
    let ids = |s: &[Tokenized]| -> std::collections::BTreeSet<u32> {
        s.iter().map(|t| t.tokens[t.read_at].id).collect()
    };
    let (ia, ib) = (ids(a), ids(b));
    if ia != ib {
        let only = |x: &std::collections::BTreeSet<u32>,
                    y: &std::collections::BTreeSet<u32>,
                    s: &[Tokenized]| {
            s.iter()
                .filter(|t| {
                    !y.contains(&t.tokens[t.read_at].id) && x.contains(&t.tokens[t.read_at].id)
                })
                .count()
        };
        out.push(format!(
            "the sets are read at different tokens: {} of A's stimuli end on a token no B stimulus is read at, {} of B's likewise (A: {}; B: {}) — the token itself separates them at the embedding",
            only(&ia, &ib, a),
            only(&ib, &ia, b),
            fmt_tokens(&sa.read_tokens),
            fmt_tokens(&sb.read_tokens),
        ));
    }
    if (sa.mean_tokens - sb.mean_tokens).abs() >= 1.0 {
        out.push(format!(
            "different lengths: {:.1} tokens a stimulus in A, {:.1} in B",
            sa.mean_tokens, sb.mean_tokens
        ));
    }
    out
}

fn fmt_tokens(t: &[(String, usize)]) -> String {
    t.iter()
        .map(|(s, n)| format!("{s:?}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a selectivity protocol.
pub fn run(runner: &Runner, protocol: &Protocol, settings: &Settings) -> Result<SelectivityReport> {
    let model = runner.model;
    let a = protocol.tokenize(model, Side::A)?;
    let b = protocol.tokenize(model, Side::B)?;
    if a.len() < 2 || b.len() < 2 {
        return Err(super::ExperimentError::Invalid(format!(
            "protocol `{}`: selectivity needs at least 2 stimuli a set (A has {}, B has {})",
            protocol.name,
            a.len(),
            b.len()
        )));
    }
    let tokens: u64 = a.iter().chain(&b).map(|t| t.tokens.len() as u64).sum();
    runner.phase(&format!("Running {} stimuli", a.len() + b.len()), tokens);
    let r = collect(runner, [&a, &b], Reading::Target, true)?;
    if let Some(ctx) = runner.ctx {
        ctx.set_phase("Statistics: d′, null, probes");
        ctx.clear_total();
    }
    let mut report = analyse(&r, settings, runner)?;
    report.protocol = protocol.name.clone();
    report
        .sets
        .insert("A", summarize(protocol.label(Side::A), &a));
    report
        .sets
        .insert("B", summarize(protocol.label(Side::B), &b));
    let mut warnings = confounds(&a, &b);
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    Ok(report)
}

/// The dictionary's codes of each stimulus's residual at every block it reads, `[stimuli ×
/// atoms]` by layer (none without a dictionary). An error when the residual rows were not read
/// or are not the dictionary's width (a dictionary of another model).
fn dictionary_codes(r: &Readings, settings: &Settings) -> Result<BTreeMap<usize, Matrix>> {
    let mut out = BTreeMap::new();
    let Some(dict) = &settings.dictionary else {
        return Ok(out);
    };
    for (l, h) in dict.resid_layers() {
        let Some(x) = r.resid.get(l).filter(|x| x.rows > 0) else {
            continue;
        };
        if x.cols != dict.d() {
            // A dictionary of another model: its features are left out (the report says so).
            return Ok(BTreeMap::new());
        }
        let codes = dict.dense_codes(h, &x.data, false);
        out.insert(l, Matrix::new(x.rows, dict.atoms(), codes));
    }
    Ok(out)
}

/// The statistics of collected readings (separate from the model run, so they can be tested on
/// planted matrices).
pub fn analyse(r: &Readings, settings: &Settings, runner: &Runner) -> Result<SelectivityReport> {
    let labels = &r.labels;
    let seed = settings.seed;
    let mut mats: Vec<&Matrix> = r.neurons.iter().collect();
    mats.push(&r.embed);
    let nulls = stats::permutation_null(&mats, labels, settings.shuffles, seed);
    let embed_d = stats::dprimes(&r.embed, labels);
    let embedding = Floor {
        max_abs_dprime: stats::max_abs(&embed_d),
        null95: nulls[r.neurons.len()],
        probe_acc: stats::probe_accuracy(&r.embed, labels, settings.folds, seed),
    };
    runner.checkpoint()?;
    let layer_ids: Vec<usize> = (0..r.neurons.len()).collect();
    let codes = dictionary_codes(r, settings)?;
    let per_layer = stats::par_map(&layer_ids, |&l| {
        let m = &r.neurons[l];
        let d = stats::dprimes(m, labels);
        let best = (0..m.cols)
            .max_by(|&x, &y| d[x].abs().total_cmp(&d[y].abs()).then(y.cmp(&x)))
            .unwrap_or(0);
        let probe_acc = match r.resid.get(l) {
            Some(x) if x.rows > 0 => stats::probe_accuracy(x, labels, settings.folds, seed),
            _ => f64::NAN,
        };
        let dh = match r.heads.get(l) {
            Some(h) if h.rows > 0 => stats::dprimes(h, labels),
            _ => Vec::new(),
        };
        let best_head = (0..dh.len())
            .max_by(|&x, &y| dh[x].abs().total_cmp(&dh[y].abs()).then(y.cmp(&x)))
            .map_or(String::new(), |h| FeatureId::head(l, h).label());
        let dd = codes
            .get(&l)
            .map_or(Vec::new(), |c| stats::dprimes(c, labels));
        let best_dict = (0..dd.len())
            .max_by(|&x, &y| dd[x].abs().total_cmp(&dd[y].abs()).then(y.cmp(&x)))
            .map_or(String::new(), |j| FeatureId::atom(l, j).label());
        let row = LayerRow {
            layer: l,
            max_abs_dprime: stats::max_abs(&d),
            null95: nulls[l],
            probe_acc,
            neuron_acc: stats::best_unit_accuracy(m, labels, settings.folds, seed),
            best: FeatureId::neuron(l, best).label(),
            max_abs_dprime_heads: stats::max_abs(&dh),
            best_head,
            max_abs_dprime_dict: (!dd.is_empty()).then(|| stats::max_abs(&dd)),
            best_dict,
        };
        (row, d, dh, dd)
    });
    runner.checkpoint()?;
    let mut layers = Vec::new();
    // (feature, |d′| ranking value): neurons, heads and dictionary features ranked together.
    let mut units: Vec<(FeatureId, f64)> = Vec::new();
    for (row, d, dh, dd) in per_layer {
        let l = row.layer;
        layers.push(row);
        units.extend(
            d.into_iter()
                .enumerate()
                .map(|(j, v)| (FeatureId::neuron(l, j), v)),
        );
        units.extend(
            dh.into_iter()
                .enumerate()
                .map(|(h, v)| (FeatureId::head(l, h), v)),
        );
        units.extend(
            dd.into_iter()
                .enumerate()
                .map(|(j, v)| (FeatureId::atom(l, j), v)),
        );
    }
    units.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0)));
    units.truncate(settings.top);
    let top_units = units
        .into_iter()
        .map(|(f, dprime)| {
            let col = match f.basis {
                Basis::Neurons => r.neurons[f.layer].column(f.index),
                Basis::Heads => r.heads[f.layer].column(f.index),
                Basis::Dictionary => codes[&f.layer].column(f.index),
            };
            let (va, vb): (Vec<f32>, Vec<f32>) = split(&col, labels);
            let mean =
                |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
            Unit {
                feature: f.label(),
                layer: f.layer,
                dprime,
                auroc: stats::auroc(&va, &vb),
                mean_a: mean(&va),
                mean_b: mean(&vb),
            }
        })
        .collect();
    let onset_layer = layers
        .iter()
        .find(|row| {
            // Each maximum against its own null: a layer has 1536 neurons and the embedding 576
            // dimensions, and the maximum of more columns is larger by chance alone.
            let excess = row.max_abs_dprime - row.null95;
            excess > 0.0 && excess > embedding.max_abs_dprime - embedding.null95
        })
        .map(|row| row.layer);
    let peak_layer = layers
        .iter()
        .max_by(|x, y| {
            x.max_abs_dprime
                .total_cmp(&y.max_abs_dprime)
                .then(y.layer.cmp(&x.layer))
        })
        .map_or(0, |row| row.layer);
    let mut warnings = Vec::new();
    if let Some(dict) = settings.dictionary.as_ref().filter(|_| codes.is_empty()) {
        warnings.push(format!(
            "the dictionary {} was left out: it reads no block's residual stream of this model \
             with its {} dimensions",
            dict.title(),
            dict.d()
        ));
    } else if settings.dictionary.is_some() {
        warnings.push(
            "dictionary features' max |d′| per layer has no shuffle null of its own: with many \
             sparse atoms it is inflated by the number of comparisons"
                .into(),
        );
    }
    if embedding.max_abs_dprime > embedding.null95 {
        warnings.push(format!(
            "the sets already separate at the embedding (max |d′| {:.2} above its null {:.2}; probe accuracy {:.0}%): separation in later layers says little about depth",
            embedding.max_abs_dprime,
            embedding.null95,
            embedding.probe_acc * 100.0
        ));
    }
    Ok(SelectivityReport {
        protocol: String::new(),
        kind: "selectivity",
        sets: BTreeMap::new(),
        embedding,
        layers,
        top_units,
        onset_layer,
        peak_layer,
        warnings,
        shuffles: settings.shuffles,
        folds: settings.folds,
    })
}

fn split(col: &[f32], labels: &[bool]) -> (Vec<f32>, Vec<f32>) {
    let a = col
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l)
        .map(|(&v, _)| v)
        .collect();
    let b = col
        .iter()
        .zip(labels)
        .filter(|(_, &l)| !l)
        .map(|(&v, _)| v)
        .collect();
    (a, b)
}

impl SelectivityReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let label = |k: &str| self.sets.get(k).map_or(String::new(), |x| x.label.clone());
        let _ = writeln!(
            s,
            "Selectivity: {} (A = {}, B = {}; d′ of every MLP neuron and head output norm at the reading position; null: 95th percentile of {} label shuffles; probes: {}-fold CV)",
            self.protocol,
            label("A"),
            label("B"),
            self.shuffles,
            self.folds
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let _ = writeln!(
            s,
            "{:>9}  {:>8}  {:>7}  {:>6}  {:>6}  {:<9} {:>6}  best head",
            "layer", "max|d′|", "null95", "probe", "neuron", "best", "heads"
        );
        let e = &self.embedding;
        let _ = writeln!(
            s,
            "{:>9}  {:>8.2}  {:>7.2}  {:>5.0}%  {:>6}",
            "embedding",
            e.max_abs_dprime,
            e.null95,
            e.probe_acc * 100.0,
            ""
        );
        for row in &self.layers {
            let mark = if row.max_abs_dprime > row.null95 {
                "*"
            } else {
                " "
            };
            let _ = writeln!(
                s,
                "{:>9}  {:>7.2}{mark}  {:>7.2}  {:>5.0}%  {:>5.0}%  {:<9} {:>6.2}  {}",
                row.layer,
                row.max_abs_dprime,
                row.null95,
                row.probe_acc * 100.0,
                row.neuron_acc * 100.0,
                row.best,
                row.max_abs_dprime_heads,
                row.best_head
            );
        }
        let _ = writeln!(
            s,
            "onset: {} · peak: layer {}   (* above the null band)",
            self.onset_layer.map_or(
                "no layer beats its null and the embedding".into(),
                |l| format!("layer {l}")
            ),
            self.peak_layer
        );
        let _ = writeln!(s, "top units:");
        for u in &self.top_units {
            let _ = writeln!(
                s,
                "  {:<10} d′ {:>+7.2}  AUROC {:.3}  mean A {:+.3} B {:+.3}",
                u.feature, u.dprime, u.auroc, u.mean_a, u.mean_b
            );
        }
        s
    }
}
