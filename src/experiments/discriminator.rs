//! Discriminators: one MLP neuron with a threshold, or a logistic probe on one layer's residual
//! stream, fitted on a protocol's two sets and saved as JSON, then applied to new text (read at
//! a `[[marked]]` target, else at the last token, as the protocol's stimuli are).

use serde::{Deserialize, Serialize};

use super::lesion::PerSet;
use super::stats::{self, Matrix, ProbeFit, Threshold};
use super::{ExperimentError, Result, Runner};
use crate::corpus::protocol::{self, Protocol, Side, Tokenized};
use crate::features::{Basis, FeatureId};
use crate::hooks::{BlockSite, Capture, HookPoint};
use crate::model::{Logits, Model};

/// What a discriminator reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Detector {
    /// One MLP neuron (`blocks.L.mlp.hook_post[i]`) against a threshold.
    Unit {
        feature: String,
        threshold: Threshold,
    },
    /// A logistic probe on `blocks.L.hook_resid_post` (positive: A).
    Probe { layer: usize, probe: ProbeFit },
}

/// A saved classifier: what it reads, how well it did on the protocol's sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Discriminator {
    pub format: String,
    pub version: u32,
    pub protocol: String,
    pub labels: PerSet<String>,
    pub model: String,
    pub model_sha256: String,
    pub detector: Detector,
    /// Accuracy on the protocol's stimuli when fitted on all of them (optimistic).
    pub accuracy: f64,
    /// k-fold cross-validated accuracy (fitted on the other folds).
    pub cv_accuracy: f64,
    pub folds: usize,
    pub stimuli: PerSet<usize>,
}

pub const FORMAT: &str = "hubel-discriminator";

/// What to fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Which {
    Unit(FeatureId),
    Probe(usize),
}

/// The hook point a detector reads.
fn point_of(which: Which) -> HookPoint {
    match which {
        Which::Unit(f) => HookPoint::block(f.layer, BlockSite::MlpPost),
        Which::Probe(layer) => HookPoint::block(layer, BlockSite::ResidPost),
    }
}

/// Each stimulus's row of `point` at its reading position (batched runs without logits).
fn read(runner: &Runner, set: &[&Tokenized], point: HookPoint) -> Result<Matrix> {
    let seqs: Vec<Vec<u32>> = set.iter().map(|t| t.ids()).collect();
    let mut data = Vec::new();
    let mut width = 0;
    runner.batched(
        &seqs,
        &Capture::points([point]),
        &[],
        Logits::None,
        |i, out| {
            let a = out
                .record
                .get(point)
                .ok_or_else(|| ExperimentError::Invalid(format!("the run recorded no {point}")))?;
            let row = a.row(set[i].read_at);
            width = row.len();
            data.extend_from_slice(row);
            Ok(())
        },
    )?;
    Ok(Matrix::new(set.len(), width, data))
}

fn check(model: &Model, which: Which) -> Result<()> {
    let layers = model.config().n_layers;
    match which {
        Which::Unit(f) => {
            if f.basis != Basis::Neurons {
                return Err(ExperimentError::Invalid(format!(
                    "{f}: a unit discriminator reads an MLP neuron (L10N123); use a probe for other directions"
                )));
            }
            f.check(model.info()).map_err(ExperimentError::Invalid)
        }
        Which::Probe(layer) if layer >= layers => Err(ExperimentError::Invalid(format!(
            "layer {layer} is out of range: the model has {layers} layers (0–{})",
            layers - 1
        ))),
        Which::Probe(_) => Ok(()),
    }
}

/// Fits a discriminator on the protocol's two sets (a unit: the threshold halfway between the
/// two means; a probe: L2 logistic regression on standardised dimensions).
pub fn fit(
    runner: &Runner,
    p: &Protocol,
    which: Which,
    folds: usize,
    seed: u64,
) -> Result<Discriminator> {
    let model = runner.model;
    check(model, which)?;
    let a = p.tokenize(model, Side::A)?;
    let b = p.tokenize(model, Side::B)?;
    if a.len() < folds || b.len() < folds {
        return Err(ExperimentError::Invalid(format!(
            "protocol `{}`: {folds}-fold cross-validation needs at least {folds} stimuli a set (A has {}, B has {})",
            p.name,
            a.len(),
            b.len()
        )));
    }
    let all: Vec<&Tokenized> = a.iter().chain(&b).collect();
    let tokens: u64 = all.iter().map(|t| t.tokens.len() as u64).sum();
    runner.phase("Reading the protocol's stimuli", tokens);
    let full = read(runner, &all, point_of(which))?;
    let labels: Vec<bool> = (0..all.len()).map(|i| i < a.len()).collect();
    let rows: Vec<usize> = (0..all.len()).collect();
    let (detector, accuracy, cv_accuracy) = match which {
        Which::Unit(f) => {
            let column = Matrix::new(full.rows, 1, full.column(f.index));
            let t = Threshold::fit(&column, &labels, &rows);
            let acc = t.accuracy(&column, &labels, &rows);
            let cv = stats::best_unit_accuracy(&column, &labels, folds, seed);
            (
                Detector::Unit {
                    feature: f.label(),
                    threshold: t,
                },
                acc,
                cv,
            )
        }
        Which::Probe(layer) => {
            let probe = stats::fit_probe(&full, &labels, &rows);
            let acc = rows
                .iter()
                .filter(|&&i| (probe.score(full.row(i)) > 0.0) == labels[i])
                .count() as f64
                / rows.len() as f64;
            let cv = stats::probe_accuracy(&full, &labels, folds, seed);
            (Detector::Probe { layer, probe }, acc, cv)
        }
    };
    Ok(Discriminator {
        format: FORMAT.into(),
        version: 1,
        protocol: p.name.clone(),
        labels: PerSet {
            a: p.label(Side::A).to_string(),
            b: p.label(Side::B).to_string(),
        },
        model: model.info().name.clone(),
        model_sha256: model.info().sha256.clone(),
        detector,
        accuracy,
        cv_accuracy,
        folds,
        stimuli: PerSet {
            a: a.len(),
            b: b.len(),
        },
    })
}

/// One text classified.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    pub text: String,
    /// The token read and its position.
    pub token: String,
    pub position: usize,
    /// The neuron's activation, or the probe's logit.
    pub value: f64,
    /// The value the decision turns on (the unit's threshold; 0 for a probe).
    pub threshold: f64,
    pub says: Side,
    pub label: String,
}

impl Discriminator {
    pub fn from_json(file: &str, json: &str) -> Result<Self> {
        let d: Discriminator = serde_json::from_str(json)
            .map_err(|e| ExperimentError::Invalid(format!("{file}: not a discriminator: {e}")))?;
        if d.format != FORMAT || d.version != 1 {
            return Err(ExperimentError::Invalid(format!(
                "{file}: not a discriminator of this version (format {:?}, version {})",
                d.format, d.version
            )));
        }
        Ok(d)
    }

    /// Saves it as JSON (atomically).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::atomic_write(path, json.as_bytes())
    }

    fn which(&self) -> Result<Which> {
        Ok(match &self.detector {
            Detector::Unit { feature, .. } => {
                Which::Unit(FeatureId::parse(feature).map_err(ExperimentError::Invalid)?)
            }
            Detector::Probe { layer, .. } => Which::Probe(*layer),
        })
    }

    /// One line: what it reads, its threshold and accuracy.
    pub fn describe(&self) -> String {
        let what = match &self.detector {
            Detector::Unit { feature, threshold } => format!(
                "{feature} {} {:.3} says A ({})",
                if threshold.sign > 0.0 { ">" } else { "<" },
                threshold.threshold,
                self.labels.a
            ),
            Detector::Probe { layer, .. } => format!(
                "logistic probe on blocks.{layer}.hook_resid_post > 0 says A ({})",
                self.labels.a
            ),
        };
        format!(
            "{what}, else B ({}); on `{}`: {:.0}% fitted on all, {:.0}% {}-fold cross-validated",
            self.labels.b,
            self.protocol,
            self.accuracy * 100.0,
            self.cv_accuracy * 100.0,
            self.folds
        )
    }

    /// Classifies each text (a `[[target]]` marks the token read; else the last token).
    pub fn classify(&self, model: &Model, texts: &[String]) -> Result<Vec<Classification>> {
        if model.info().sha256 != self.model_sha256 && !self.model_sha256.is_empty() {
            return Err(ExperimentError::Invalid(format!(
                "this discriminator was fitted on {} (sha256 {}…), not on the model loaded ({})",
                self.model,
                self.model_sha256.chars().take(12).collect::<String>(),
                model.info().name
            )));
        }
        let which = self.which()?;
        check(model, which)?;
        if let Detector::Probe { probe, .. } = &self.detector {
            let d = model.config().d_model;
            if probe.weights.len() != d || probe.mean.len() != d || probe.sd.len() != d {
                return Err(ExperimentError::Invalid(format!(
                    "this probe reads {} dimensions; the model's residual stream has {d}",
                    probe.weights.len()
                )));
            }
        }
        let point = point_of(which);
        let mut out = Vec::new();
        for (i, raw) in texts.iter().enumerate() {
            let place = || format!("text {}", i + 1);
            let s = protocol::parse_marker(raw).map_err(|_| {
                ExperimentError::Invalid(format!(
                    "{}: a broken [[…]] marker (two, unclosed or empty); write one [[target]] or none",
                    place()
                ))
            })?;
            if s.text.trim().is_empty() {
                return Err(ExperimentError::Invalid(format!("{} is empty", place())));
            }
            let tokens = model.tokenize_with_offsets(&s.text)?;
            let offsets: Vec<(usize, usize)> = tokens.iter().map(|(_, o)| *o).collect();
            let at = protocol::reading_position(&offsets, s.target).ok_or_else(|| {
                ExperimentError::Invalid(format!(
                    "{}: no token overlaps the marked target",
                    place()
                ))
            })?;
            let ids: Vec<u32> = tokens.iter().map(|(t, _)| t.id).collect();
            let run =
                model.run_batch(&[&ids], &Capture::points([point]), &[], Logits::None, None)?;
            let row = run[0]
                .record
                .get(point)
                .ok_or_else(|| ExperimentError::Invalid(format!("the run recorded no {point}")))?
                .row(at);
            let (value, threshold, says_a) = match &self.detector {
                Detector::Unit { threshold, .. } => {
                    let Which::Unit(f) = which else {
                        unreachable!()
                    };
                    let v = row[f.index];
                    (
                        f64::from(v),
                        f64::from(threshold.threshold),
                        threshold.says_a(v),
                    )
                }
                Detector::Probe { probe, .. } => {
                    let z = probe.score(row);
                    (z, 0.0, z > 0.0)
                }
            };
            let says = if says_a { Side::A } else { Side::B };
            out.push(Classification {
                text: s.text.clone(),
                token: tokens[at].0.text.clone(),
                position: at,
                value,
                threshold,
                says,
                label: match says {
                    Side::A => self.labels.a.clone(),
                    Side::B => self.labels.b.clone(),
                },
            });
        }
        Ok(out)
    }
}
