//! Lesions: groups of MLP neurons ablated, scored by the mean loss per predicted token on each
//! set's held-out sentences.
//!
//! Groups: the top-N neurons selective for A and for B (d′ of each neuron's mean over a
//! stimulus's positions 1.., between the protocol's two stimulus sets), N random neurons from
//! the same layers as the A group (several draws), and a hand-picked list. Ablations, at every
//! position but 0 (the attention sink, left as it is):
//! - zero: the neuron set to 0;
//! - mean: set to its mean over the protocol's stimulus sets (positions 1..);
//! - resample: set, at each position, to its value at a random position of a random reference
//!   stimulus (the same draw for every neuron of the group, so their joint values stay real).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::selectivity::{self, Reading};
use super::stats;
use super::{ExperimentError, Result, Runner};
use crate::corpus::protocol::{Protocol, Side, Tokenized};
use crate::features::{Basis, FeatureId};
use crate::hooks::{BlockSite, Capture, HookPoint, Intervention, Op};
use crate::model::Logits;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ablation {
    Zero,
    Mean,
    Resample,
}

impl Ablation {
    pub const ALL: [Ablation; 3] = [Ablation::Zero, Ablation::Mean, Ablation::Resample];

    pub fn name(self) -> &'static str {
        match self {
            Ablation::Zero => "zero",
            Ablation::Mean => "mean",
            Ablation::Resample => "resample",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        Ablation::ALL
            .into_iter()
            .find(|a| a.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("`{s}` is not an ablation: zero, mean or resample"))
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Neurons in each top-selective group (and in each random group).
    pub top_n: usize,
    /// Random groups drawn.
    pub random_draws: usize,
    /// A hand-picked group (empty: none).
    pub units: Vec<FeatureId>,
    pub ablations: Vec<Ablation>,
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            top_n: 10,
            random_draws: 3,
            units: Vec::new(),
            ablations: Ablation::ALL.to_vec(),
            seed: 0x1E_5104,
        }
    }
}

/// A value for each set.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct PerSet<T> {
    #[serde(rename = "A")]
    pub a: T,
    #[serde(rename = "B")]
    pub b: T,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Group {
    pub name: String,
    pub units: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Condition {
    pub group: String,
    pub ablation: Ablation,
    pub n: usize,
    pub nll: PerSet<f64>,
    pub baseline: PerSet<f64>,
    /// `nll − baseline` for each set.
    pub delta: PerSet<f64>,
    /// ΔA / ΔB; `None` when B's loss did not change.
    pub ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LesionReport {
    pub protocol: String,
    pub kind: &'static str,
    pub labels: PerSet<String>,
    pub groups: Vec<Group>,
    pub conditions: Vec<Condition>,
    pub baseline: PerSet<f64>,
    /// Predicted tokens scored in each held-out set.
    pub tokens: PerSet<usize>,
    pub ablated_positions: &'static str,
    pub caveat: &'static str,
}

pub const POSITIONS: &str = "1..n-1 (position 0, the attention sink, is left as it is)";

pub const CAVEAT: &str = "Zero-ablation moves a neuron to 0, which for a SwiGLU neuron that is \
strongly negative on one set is a large push on that set: compare it with mean ablation (the \
neuron's typical value) before reading a zero-ablation effect as a capability removed.";

/// The reference activations of the neurons that groups ablate: per layer, the neurons, their
/// means over the reference stimuli's positions 1.., and every (stimulus, position) sample.
pub struct Reference {
    d_mlp: usize,
    layers: BTreeMap<usize, RefLayer>,
    samples: usize,
}

struct RefLayer {
    units: Vec<usize>,
    /// `[d_mlp]`: the mean of each of `units` (0 elsewhere).
    means: Vec<f32>,
    /// `[samples × units.len()]`.
    rows: Vec<f32>,
}

impl Reference {
    /// Runs `stimuli` and keeps the activations of `units` at positions 1...
    pub fn collect(runner: &Runner, stimuli: &[Vec<u32>], units: &[FeatureId]) -> Result<Self> {
        let d_mlp = runner.model.config().d_mlp;
        let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for u in units {
            by_layer.entry(u.layer).or_default().push(u.index);
        }
        for v in by_layer.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        let capture = Capture::points(
            by_layer
                .keys()
                .map(|&l| HookPoint::block(l, BlockSite::MlpPost)),
        );
        let mut layers: BTreeMap<usize, RefLayer> = by_layer
            .into_iter()
            .map(|(l, units)| {
                (
                    l,
                    RefLayer {
                        units,
                        means: vec![0.0; d_mlp],
                        rows: Vec::new(),
                    },
                )
            })
            .collect();
        let mut samples = 0;
        runner.batched(stimuli, &capture, &[], Logits::None, |i, out| {
            let len = stimuli[i].len();
            for (&l, layer) in layers.iter_mut() {
                let a = out
                    .record
                    .get(HookPoint::block(l, BlockSite::MlpPost))
                    .ok_or_else(|| {
                        ExperimentError::Invalid("the run recorded no MLP neurons".into())
                    })?;
                for p in 1..len {
                    let row = a.row(p);
                    layer.rows.extend(layer.units.iter().map(|&u| row[u]));
                }
            }
            samples += len.saturating_sub(1);
            Ok(())
        })?;
        if samples == 0 {
            return Err(ExperimentError::Invalid(
                "the reference stimuli have no position after 0 to take values from".into(),
            ));
        }
        for layer in layers.values_mut() {
            let k = layer.units.len();
            for (j, &u) in layer.units.iter().enumerate() {
                let sum: f64 = (0..samples).map(|s| f64::from(layer.rows[s * k + j])).sum();
                layer.means[u] = (sum / samples as f64) as f32;
            }
        }
        Ok(Reference {
            d_mlp,
            layers,
            samples,
        })
    }

    /// A neuron's mean over the reference.
    pub fn mean(&self, f: &FeatureId) -> Option<f32> {
        self.layers.get(&f.layer).map(|l| l.means[f.index])
    }

    /// The interventions that ablate `units` in a sequence of `len` tokens.
    pub fn interventions(
        &self,
        units: &[FeatureId],
        ablation: Ablation,
        len: usize,
        rng: &mut impl Rng,
    ) -> Vec<Intervention> {
        if len < 2 || units.is_empty() {
            return Vec::new();
        }
        let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for u in units {
            by_layer.entry(u.layer).or_default().push(u.index);
        }
        let positions: Vec<usize> = (1..len).collect();
        let hook = |l: usize| HookPoint::block(l, BlockSite::MlpPost);
        match ablation {
            Ablation::Zero => by_layer
                .into_iter()
                .map(|(l, indices)| Intervention {
                    hook: hook(l),
                    positions: Some(positions.clone()),
                    indices: Some(indices),
                    op: Op::Zero,
                })
                .collect(),
            Ablation::Mean => by_layer
                .into_iter()
                .map(|(l, indices)| Intervention {
                    hook: hook(l),
                    positions: Some(positions.clone()),
                    indices: Some(indices),
                    op: Op::MeanOf {
                        values: self.layers[&l].means.clone(),
                    },
                })
                .collect(),
            Ablation::Resample => {
                let mut out = Vec::new();
                for p in 1..len {
                    let s = rng.random_range(0..self.samples);
                    for (&l, indices) in &by_layer {
                        let layer = &self.layers[&l];
                        let k = layer.units.len();
                        let mut values = vec![0.0; self.d_mlp];
                        for (j, &u) in layer.units.iter().enumerate() {
                            values[u] = layer.rows[s * k + j];
                        }
                        out.push(Intervention {
                            hook: hook(l),
                            positions: Some(vec![p]),
                            indices: Some(indices.clone()),
                            op: Op::MeanOf { values },
                        });
                    }
                }
                out
            }
        }
    }
}

/// Mean loss per predicted token over `seqs` (positions 1..n−1 predicted), and the count.
fn pooled(nll: &[(f64, usize)]) -> (f64, usize) {
    let (s, n) = nll.iter().fold((0.0, 0), |(s, n), &(a, b)| (s + a, n + b));
    (s / n.max(1) as f64, n)
}

/// The baseline loss of each held-out set: (mean per token, tokens).
pub fn baseline(runner: &Runner, heldout: &PerSet<Vec<Vec<u32>>>) -> Result<PerSet<(f64, usize)>> {
    let mut out = PerSet::default();
    for side in Side::BOTH {
        let seqs = side_of(heldout, side);
        let mut sums = Vec::new();
        runner.batched(seqs, &Capture::Nothing, &[], Logits::All, |i, run| {
            let nll = crate::analysis::token_nll(&run.logits, run.vocab, &seqs[i]);
            sums.push((nll.iter().map(|&v| f64::from(v)).sum(), nll.len()));
            Ok(())
        })?;
        *side_of_mut(&mut out, side) = pooled(&sums);
    }
    Ok(out)
}

/// The loss of each held-out set with `units` ablated.
pub fn ablated(
    runner: &Runner,
    heldout: &PerSet<Vec<Vec<u32>>>,
    reference: &Reference,
    units: &[FeatureId],
    ablation: Ablation,
    seed: u64,
) -> Result<PerSet<(f64, usize)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = PerSet::default();
    for side in Side::BOTH {
        let seqs = side_of(heldout, side);
        let ivs: Vec<Vec<Intervention>> = seqs
            .iter()
            .map(|seq| reference.interventions(units, ablation, seq.len(), &mut rng))
            .collect();
        let mut sums = Vec::new();
        runner.batched_each(seqs, &Capture::Nothing, &ivs, Logits::All, |i, run| {
            let nll = crate::analysis::token_nll(&run.logits, run.vocab, &seqs[i]);
            sums.push((nll.iter().map(|&v| f64::from(v)).sum(), nll.len()));
            Ok(())
        })?;
        *side_of_mut(&mut out, side) = pooled(&sums);
    }
    Ok(out)
}

fn side_of<T>(p: &PerSet<T>, side: Side) -> &T {
    match side {
        Side::A => &p.a,
        Side::B => &p.b,
    }
}

fn side_of_mut<T>(p: &mut PerSet<T>, side: Side) -> &mut T {
    match side {
        Side::A => &mut p.a,
        Side::B => &mut p.b,
    }
}

/// The protocol's held-out text tokenized, refusing a protocol without it.
pub fn heldout(runner: &Runner, protocol: &Protocol) -> Result<PerSet<Vec<Vec<u32>>>> {
    if protocol.heldout(Side::A).is_empty() || protocol.heldout(Side::B).is_empty() {
        return Err(crate::corpus::protocol::ProtocolError::NoHeldout {
            name: protocol.name.clone(),
        }
        .into());
    }
    Ok(PerSet {
        a: protocol.tokenize_heldout(runner.model, Side::A)?,
        b: protocol.tokenize_heldout(runner.model, Side::B)?,
    })
}

/// Checks a hand-picked group against the model: MLP neurons that exist.
pub fn check_units(runner: &Runner, units: &[FeatureId]) -> Result<()> {
    for u in units {
        if u.basis != Basis::Neurons {
            return Err(ExperimentError::Invalid(format!(
                "{u}: lesions ablate MLP neurons (L10N123); heads are not supported here yet"
            )));
        }
        u.check(runner.model.info())
            .map_err(ExperimentError::Invalid)?;
    }
    Ok(())
}

fn stimuli_ids(sets: [&[Tokenized]; 2]) -> Vec<Vec<u32>> {
    sets.iter()
        .flat_map(|s| s.iter().map(Tokenized::ids))
        .collect()
}

/// What `hubel lesion` prints: one group, one ablation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UnitsLesion {
    pub baseline: PerSet<f64>,
    pub ablated: PerSet<f64>,
    pub tokens: PerSet<usize>,
}

/// Ablates `units` by `ablation` and scores each held-out set; the mean (and the resample
/// values) come from the protocol's stimulus sets.
pub fn run_units(
    runner: &Runner,
    protocol: &Protocol,
    units: &[FeatureId],
    ablation: Ablation,
    seed: u64,
) -> Result<UnitsLesion> {
    check_units(runner, units)?;
    if units.is_empty() {
        return Err(ExperimentError::Invalid("no units to ablate".into()));
    }
    let held = heldout(runner, protocol)?;
    let a = protocol.tokenize(runner.model, Side::A)?;
    let b = protocol.tokenize(runner.model, Side::B)?;
    let reference = Reference::collect(runner, &stimuli_ids([&a, &b]), units)?;
    let base = baseline(runner, &held)?;
    let abl = ablated(runner, &held, &reference, units, ablation, seed)?;
    Ok(UnitsLesion {
        baseline: PerSet {
            a: base.a.0,
            b: base.b.0,
        },
        ablated: PerSet {
            a: abl.a.0,
            b: abl.b.0,
        },
        tokens: PerSet {
            a: base.a.1,
            b: base.b.1,
        },
    })
}

/// The groups of a lesion protocol: top-N selective for A and for B, random draws from the A
/// group's layers, the hand-picked list.
pub fn groups(
    runner: &Runner,
    sets: [&[Tokenized]; 2],
    settings: &Settings,
) -> Result<Vec<(String, Vec<FeatureId>)>> {
    let r = selectivity::collect(runner, sets, Reading::MeanFrom1, false)?;
    let mut all: Vec<(f64, FeatureId)> = Vec::new();
    for (l, m) in r.neurons.iter().enumerate() {
        for (j, d) in stats::dprimes(m, &r.labels).into_iter().enumerate() {
            all.push((d, FeatureId::neuron(l, j)));
        }
    }
    let n = settings.top_n;
    all.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let top_a: Vec<FeatureId> = all.iter().take(n).map(|x| x.1).collect();
    let top_b: Vec<FeatureId> = all.iter().rev().take(n).map(|x| x.1).collect();
    let mut out = vec![
        (format!("top-{n} A-selective"), top_a.clone()),
        (format!("top-{n} B-selective"), top_b.clone()),
    ];
    let d_mlp = runner.model.config().d_mlp;
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let mut per_layer: BTreeMap<usize, usize> = BTreeMap::new();
    for f in &top_a {
        *per_layer.entry(f.layer).or_default() += 1;
    }
    for draw in 0..settings.random_draws {
        let mut group = Vec::new();
        for (&l, &k) in &per_layer {
            let taken: Vec<usize> = top_a
                .iter()
                .filter(|f| f.layer == l)
                .map(|f| f.index)
                .collect();
            let pool: Vec<usize> = (0..d_mlp).filter(|j| !taken.contains(j)).collect();
            for i in stats::sample_indices(pool.len(), k, &mut rng) {
                group.push(FeatureId::neuron(l, pool[i]));
            }
        }
        group.sort();
        out.push((format!("random {n} (draw {})", draw + 1), group));
    }
    if !settings.units.is_empty() {
        out.push(("hand-picked".into(), settings.units.clone()));
    }
    Ok(out)
}

/// Runs a lesion protocol: every group under every ablation, scored on the held-out text.
pub fn run(runner: &Runner, protocol: &Protocol, settings: &Settings) -> Result<LesionReport> {
    check_units(runner, &settings.units)?;
    let held = heldout(runner, protocol)?;
    let a = protocol.tokenize(runner.model, Side::A)?;
    let b = protocol.tokenize(runner.model, Side::B)?;
    let stimuli = stimuli_ids([&a, &b]);
    let stimulus_tokens: u64 = stimuli.iter().map(|s| s.len() as u64).sum();
    runner.phase(
        "Choosing groups: selectivity of every neuron",
        stimulus_tokens,
    );
    let groups = groups(runner, [&a, &b], settings)?;
    let union: Vec<FeatureId> = groups.iter().flat_map(|g| g.1.iter().copied()).collect();
    runner.phase("Reference activations (means, resampling)", stimulus_tokens);
    let reference = Reference::collect(runner, &stimuli, &union)?;
    let held_tokens: u64 = held.a.iter().chain(&held.b).map(|s| s.len() as u64).sum();
    runner.phase(
        &format!(
            "Scoring {} conditions on the held-out text",
            groups.len() * settings.ablations.len()
        ),
        held_tokens * (1 + groups.len() * settings.ablations.len()) as u64,
    );
    let base = baseline(runner, &held)?;
    let baseline = PerSet {
        a: base.a.0,
        b: base.b.0,
    };
    let mut conditions = Vec::new();
    for (g, (name, units)) in groups.iter().enumerate() {
        for (k, &ablation) in settings.ablations.iter().enumerate() {
            let seed = settings.seed ^ ((g as u64) << 32) ^ (k as u64);
            let r = ablated(runner, &held, &reference, units, ablation, seed)?;
            let delta = PerSet {
                a: r.a.0 - baseline.a,
                b: r.b.0 - baseline.b,
            };
            conditions.push(Condition {
                group: name.clone(),
                ablation,
                n: units.len(),
                nll: PerSet { a: r.a.0, b: r.b.0 },
                baseline,
                delta,
                ratio: (delta.b.abs() > 1e-9).then(|| delta.a / delta.b),
            });
        }
    }
    Ok(LesionReport {
        protocol: protocol.name.clone(),
        kind: "lesion",
        labels: PerSet {
            a: protocol.label(Side::A).to_string(),
            b: protocol.label(Side::B).to_string(),
        },
        groups: groups
            .into_iter()
            .map(|(name, units)| Group {
                name,
                units: units.iter().map(FeatureId::label).collect(),
            })
            .collect(),
        conditions,
        baseline,
        tokens: PerSet {
            a: base.a.1,
            b: base.b.1,
        },
        ablated_positions: POSITIONS,
        caveat: CAVEAT,
    })
}

impl LesionReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Lesion: {} (A = {}, B = {}; mean loss per token on held-out text, {} + {} tokens; ablated at positions {})",
            self.protocol, self.labels.a, self.labels.b, self.tokens.a, self.tokens.b, self.ablated_positions
        );
        let _ = writeln!(
            s,
            "baseline: A {:.3} · B {:.3} nats",
            self.baseline.a, self.baseline.b
        );
        let _ = writeln!(
            s,
            "{:<24} {:<9} {:>4} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "group", "ablation", "n", "A", "B", "ΔA", "ΔB", "ΔA/ΔB"
        );
        for c in &self.conditions {
            let _ = writeln!(
                s,
                "{:<24} {:<9} {:>4} {:>8.3} {:>8.3} {:>+8.3} {:>+8.3} {:>7}",
                c.group,
                c.ablation.name(),
                c.n,
                c.nll.a,
                c.nll.b,
                c.delta.a,
                c.delta.b,
                c.ratio.map_or("—".into(), |r| format!("{r:.2}"))
            );
        }
        let _ = writeln!(s, "caveat: {}", self.caveat);
        for g in &self.groups {
            let _ = writeln!(s, "  {}: {}", g.name, g.units.join(" "));
        }
        s
    }
}
