//! Dose–response: one feature (or a group) scaled or shifted over a range of strengths; at each
//! strength the probe's next-token distribution against the clean one (KL, the target token's
//! probability) and the mean loss per token of each of the protocol's sets. Optionally with
//! attention frozen at the clean run's pattern (every layer's `hook_pattern` set to its clean
//! value), so only the feature's direct path and the MLPs respond — the comparison Neuronpedia
//! users ask for (#147).
//!
//! The edit applies at every position but 0 (the attention sink); the target is read at the
//! probe's last position.

use serde::{Deserialize, Serialize};

use super::lesion::PerSet;
use super::{ExperimentError, Result, Runner};
use crate::analysis;
use crate::corpus::protocol::{self, Protocol, Side};
use crate::features::{Basis, FeatureId};
use crate::hooks::{BlockSite, Capture, HookPoint, Intervention, Op};
use crate::model::{Logits, Model};

/// How the strength acts on the feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Multiply the feature by the strength (1 = clean, 0 = zero-ablated).
    Scale,
    /// Add the strength to the feature (0 = clean).
    Add,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Scale => "scale",
            Mode::Add => "add",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scale" => Ok(Mode::Scale),
            "add" => Ok(Mode::Add),
            _ => Err(format!("`{s}` is not a dose mode: scale or add")),
        }
    }

    /// The strength that leaves the feature as it is.
    pub fn identity(self) -> f32 {
        match self {
            Mode::Scale => 1.0,
            Mode::Add => 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub units: Vec<FeatureId>,
    pub mode: Mode,
    pub strengths: Vec<f32>,
    pub freeze_attention: bool,
    /// The text whose next token is watched.
    pub probe: String,
    /// The watched token's text (exactly one token); `None`: the clean run's top token.
    pub target: Option<String>,
}

/// `FROM:TO:N` → N strengths evenly from FROM to TO (N ≥ 2, at most 201).
pub fn parse_range(s: &str) -> std::result::Result<Vec<f32>, String> {
    let bad = || format!("`{s}` is not a range: write FROM:TO:N, e.g. -8:8:9 or 0:3:7");
    let parts: Vec<&str> = s.split(':').collect();
    let [from, to, n] = parts.as_slice() else {
        return Err(bad());
    };
    let from: f32 = from.trim().parse().map_err(|_| bad())?;
    let to: f32 = to.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if !from.is_finite() || !to.is_finite() || from.abs() > 1e6 || to.abs() > 1e6 {
        return Err(format!("{s}: strengths must be finite and within ±1e6"));
    }
    if !(2..=201).contains(&n) {
        return Err(format!("{s}: between 2 and 201 strengths, got {n}"));
    }
    Ok((0..n)
        .map(|i| from + (to - from) * i as f32 / (n - 1) as f32)
        .collect())
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DosePoint {
    pub strength: f32,
    /// KL(clean ‖ dosed) of the probe's next token, nats.
    pub kl: f64,
    pub target_prob: f64,
    /// The dosed run's most likely next token.
    pub top: String,
    /// Mean loss per predicted token of each set.
    pub nll: PerSet<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DoseReport {
    pub protocol: String,
    pub kind: &'static str,
    pub labels: PerSet<String>,
    pub probe: String,
    pub target: String,
    pub clean_target_prob: f64,
    pub units: Vec<String>,
    pub mode: Mode,
    pub frozen_attention: bool,
    /// "held-out" when the protocol has held-out text, else "stimuli".
    pub sets_scored: &'static str,
    pub tokens: PerSet<usize>,
    pub positions: &'static str,
    pub points: Vec<DosePoint>,
}

/// The edit of `units` at `strength` in a sequence of `len` tokens.
pub fn interventions(
    units: &[FeatureId],
    mode: Mode,
    strength: f32,
    len: usize,
) -> Vec<Intervention> {
    if len < 2 {
        return Vec::new();
    }
    let positions: Vec<usize> = (1..len).collect();
    let mut by_hook: std::collections::BTreeMap<HookPoint, Vec<usize>> = Default::default();
    for u in units {
        let site = u.basis.site();
        by_hook
            .entry(HookPoint::block(u.layer, site))
            .or_default()
            .push(u.index);
    }
    by_hook
        .into_iter()
        .map(|(hook, indices)| Intervention {
            hook,
            positions: Some(positions.clone()),
            indices: Some(indices),
            op: match mode {
                Mode::Scale => Op::Scale { factor: strength },
                Mode::Add => Op::Add { value: strength },
            },
        })
        .collect()
}

/// Interventions that hold every layer's attention pattern at `clean`'s (one per layer and
/// query position: the pattern's `[head, key]` slice).
pub fn freeze(model: &Model, tokens: &[u32]) -> Result<Vec<Intervention>> {
    let layers = model.config().n_layers;
    let points: Vec<HookPoint> = (0..layers)
        .map(|l| HookPoint::block(l, BlockSite::Pattern))
        .collect();
    let clean = model.run(tokens, &Capture::points(points.iter().copied()), &[])?;
    let n = tokens.len();
    let mut out = Vec::with_capacity(layers * n);
    for point in points {
        let pat = clean
            .record
            .get(point)
            .ok_or_else(|| ExperimentError::Invalid("the clean run recorded no pattern".into()))?;
        let heads = pat.data.len() / (n * n);
        for q in 0..n {
            let mut values = vec![0f32; heads * n];
            for h in 0..heads {
                values[h * n..(h + 1) * n]
                    .copy_from_slice(&pat.data[(h * n + q) * n..(h * n + q + 1) * n]);
            }
            out.push(Intervention {
                hook: point,
                positions: Some(vec![q]),
                indices: None,
                op: Op::MeanOf { values },
            });
        }
    }
    Ok(out)
}

fn check(model: &Model, s: &Settings) -> Result<()> {
    if s.units.is_empty() {
        return Err(ExperimentError::Invalid(
            "no feature to dose: give one or more (L10N123, L5H3)".into(),
        ));
    }
    for u in &s.units {
        u.check(model.info()).map_err(ExperimentError::Invalid)?;
        if u.basis == Basis::Dictionary {
            return Err(ExperimentError::Invalid(format!(
                "{u}: a dose–response edits neurons and heads; edit a dictionary feature from its \
                 card or the Dictionary window"
            )));
        }
        if s.mode == Mode::Add && u.basis == Basis::Heads {
            return Err(ExperimentError::Invalid(format!(
                "{u}: adding a constant to every value of a head's output is not a direction; scale a head (mode scale), or add to neurons"
            )));
        }
    }
    if s.strengths.is_empty() || s.strengths.iter().any(|v| !v.is_finite()) {
        return Err(ExperimentError::Invalid(
            "the strengths must be finite numbers".into(),
        ));
    }
    if s.probe.trim().is_empty() {
        return Err(ExperimentError::Invalid("the probe text is empty".into()));
    }
    Ok(())
}

/// The one token `text` must be (a BOS the tokenizer adds to every text is not counted).
pub fn one_token(model: &Model, text: &str) -> Result<u32> {
    let prefix = super::special_prefix(model);
    let ids: Vec<u32> = model.tokenize(text)?.iter().map(|t| t.id).collect();
    let ids = ids.strip_prefix(prefix.as_slice()).unwrap_or(&ids);
    match ids {
        [id] => Ok(*id),
        _ => Err(ExperimentError::Invalid(format!(
            "the target {text:?} is {} tokens; give exactly one (with its leading space: \" Paris\")",
            ids.len()
        ))),
    }
}

/// Runs the dose–response curve.
pub fn run(runner: &Runner, protocol: &Protocol, s: &Settings) -> Result<DoseReport> {
    let model = runner.model;
    check(model, s)?;
    let probe: Vec<u32> = model.tokenize(&s.probe)?.iter().map(|t| t.id).collect();
    let (texts, scored) =
        if protocol.heldout(Side::A).is_empty() || protocol.heldout(Side::B).is_empty() {
            let strip = |side| -> Vec<String> {
                protocol
                    .stimuli(side)
                    .iter()
                    .map(|raw| protocol::parse_marker(raw).map_or_else(|_| raw.clone(), |m| m.text))
                    .collect()
            };
            (
                PerSet {
                    a: strip(Side::A),
                    b: strip(Side::B),
                },
                "stimuli",
            )
        } else {
            (
                PerSet {
                    a: protocol.heldout(Side::A).to_vec(),
                    b: protocol.heldout(Side::B).to_vec(),
                },
                "held-out",
            )
        };
    let tokenize = |texts: &[String]| -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| Ok(model.tokenize(t)?.iter().map(|t| t.id).collect()))
            .collect()
    };
    let sets = PerSet {
        a: tokenize(&texts.a)?,
        b: tokenize(&texts.b)?,
    };
    let set_tokens: u64 = sets.a.iter().chain(&sets.b).map(|s| s.len() as u64).sum();
    runner.phase(
        &format!(
            "{} strengths × {} sequences",
            s.strengths.len(),
            sets.a.len() + sets.b.len() + 1
        ),
        (set_tokens + probe.len() as u64) * s.strengths.len() as u64 + probe.len() as u64,
    );
    // Frozen patterns of every sequence, from its clean run.
    let frozen = |tokens: &[u32]| -> Result<Vec<Intervention>> {
        if s.freeze_attention {
            runner.checkpoint()?;
            freeze(model, tokens)
        } else {
            Ok(Vec::new())
        }
    };
    let probe_frozen = frozen(&probe)?;
    let sets_frozen = PerSet {
        a: sets
            .a
            .iter()
            .map(|t| frozen(t))
            .collect::<Result<Vec<_>>>()?,
        b: sets
            .b
            .iter()
            .map(|t| frozen(t))
            .collect::<Result<Vec<_>>>()?,
    };
    let clean = runner.one(&probe, &Capture::Nothing, &[])?;
    let clean_last = clean.last_logits().to_vec();
    let target = match &s.target {
        Some(t) => one_token(model, t)?,
        None => analysis::top_k(&clean_last, 1)
            .first()
            .map(|t| t.0)
            .ok_or_else(|| ExperimentError::Invalid("the clean run has no logits".into()))?,
    };
    let prob = |logits: &[f32]| analysis::log_softmax(logits)[target as usize].exp();
    let mut points = Vec::new();
    let mut tokens = PerSet::default();
    for &strength in &s.strengths {
        let mut ivs = interventions(&s.units, s.mode, strength, probe.len());
        ivs.extend(probe_frozen.iter().cloned());
        let run = runner.one(&probe, &Capture::Nothing, &ivs)?;
        let last = run.last_logits();
        let top = analysis::top_k(last, 1).first().map_or(0, |t| t.0);
        let mut nll = PerSet::default();
        for side in Side::BOTH {
            let (seqs, freezes) = match side {
                Side::A => (&sets.a, &sets_frozen.a),
                Side::B => (&sets.b, &sets_frozen.b),
            };
            let (mut sum, mut n) = (0.0, 0);
            let ivs: Vec<Vec<Intervention>> = seqs
                .iter()
                .enumerate()
                .map(|(i, seq)| {
                    let mut ivs = interventions(&s.units, s.mode, strength, seq.len());
                    if let Some(f) = freezes.get(i) {
                        ivs.extend(f.iter().cloned());
                    }
                    ivs
                })
                .collect();
            runner.batched_each(seqs, &Capture::Nothing, &ivs, Logits::All, |i, r| {
                let l = analysis::token_nll(&r.logits, r.vocab, &seqs[i]);
                sum += l.iter().map(|&v| f64::from(v)).sum::<f64>();
                n += l.len();
                Ok(())
            })?;
            let mean = sum / n.max(1) as f64;
            match side {
                Side::A => {
                    nll.a = mean;
                    tokens.a = n;
                }
                Side::B => {
                    nll.b = mean;
                    tokens.b = n;
                }
            }
        }
        points.push(DosePoint {
            strength,
            kl: analysis::kl_divergence(&clean_last, last),
            target_prob: prob(last),
            top: super::token_display(model, top),
            nll,
        });
    }
    Ok(DoseReport {
        protocol: protocol.name.clone(),
        kind: "dose",
        labels: PerSet {
            a: protocol.label(Side::A).to_string(),
            b: protocol.label(Side::B).to_string(),
        },
        probe: s.probe.clone(),
        target: super::token_display(model, target),
        clean_target_prob: prob(&clean_last),
        units: s.units.iter().map(FeatureId::label).collect(),
        mode: s.mode,
        frozen_attention: s.freeze_attention,
        sets_scored: scored,
        tokens,
        positions: super::lesion::POSITIONS,
        points,
    })
}

impl DoseReport {
    /// One line: what was dosed on what, the target, attention, the sets scored.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}) on {:?}, target {:?} (clean p = {:.4}); attention {}; sets: {} ({} vs {}, {} + {} tokens)",
            self.units.join(" "),
            self.mode.name(),
            self.probe,
            self.target,
            self.clean_target_prob,
            if self.frozen_attention { "frozen at the clean pattern" } else { "free" },
            self.sets_scored,
            self.labels.a,
            self.labels.b,
            self.tokens.a,
            self.tokens.b
        )
    }

    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "Dose–response: {}", self.summary());
        let _ = writeln!(
            s,
            "{:>9} {:>9} {:>9} {:>9} {:>9}  top",
            "strength", "KL", "p(target)", "NLL A", "NLL B"
        );
        for p in &self.points {
            let _ = writeln!(
                s,
                "{:>9.3} {:>9.4} {:>9.4} {:>9.4} {:>9.4}  {:?}",
                p.strength, p.kl, p.target_prob, p.nll.a, p.nll.b, p.top
            );
        }
        s
    }
}
