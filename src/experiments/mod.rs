//! Experiments: neuroscience protocols run on stimulus sets ([`crate::corpus::protocol`]).
//!
//! - [`selectivity`]: which MLP neurons tell set A from set B at the reading position, layer by
//!   layer: d′ and AUROC per neuron, each layer's largest |d′| against a permutation null, a
//!   cross-validated logistic probe on the residual stream, the best single neuron under nested
//!   cross-validation, and the embedding's separation as the floor;
//! - [`induction`]: every head's induction score on repeated sequences against controls at the
//!   same positions, and the loss on the first copy, the second copy and the control;
//! - [`lesion`]: groups of neurons ablated (zero, mean, resample), scored by the mean loss per
//!   token on each set's held-out text;
//! - [`dose`]: a feature scaled or shifted over a range of strengths, with the probe's KL and
//!   target probability and the sets' losses at each, attention free or frozen;
//! - [`discriminator`]: a neuron with a threshold, or a residual-stream probe, fitted on the two
//!   sets, saved, and applied to new text.
//!
//! Everything here is plain data in, plain data out: the model runs in batches through
//! [`Runner`], which takes the job's checkpoint between batches (cancel, pause, yielding to the
//! viewer's clicks) and reports tokens done. Position 0 (the attention sink of SmolLM2, with
//! huge residual norms) is left out of every mean and never ablated.

pub mod cli;
pub mod discriminator;
pub mod dose;
pub mod figure;
pub mod induction;
pub mod lesion;
pub mod report;
pub mod selectivity;
pub mod stats;

use std::sync::Arc;

use crate::corpus::protocol::{Kind, Protocol, ProtocolError};
use crate::hooks::{Capture, Intervention};
use crate::jobs::JobCtx;
use crate::model::{Logits, Model, ModelError, RunOutput};

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error("the experiment was cancelled")]
    Cancelled,
    #[error("{0}")]
    Invalid(String),
}

impl From<ModelError> for ExperimentError {
    fn from(e: ModelError) -> Self {
        ExperimentError::Model(Box::new(e))
    }
}

impl From<crate::jobs::Cancelled> for ExperimentError {
    fn from(_: crate::jobs::Cancelled) -> Self {
        ExperimentError::Cancelled
    }
}

impl From<ExperimentError> for crate::jobs::JobError {
    fn from(e: ExperimentError) -> Self {
        match e {
            ExperimentError::Cancelled => crate::jobs::JobError::Cancelled,
            e => crate::jobs::JobError::Failed(e.to_string()),
        }
    }
}

pub type Result<T, E = ExperimentError> = std::result::Result<T, E>;

/// The experiments' default seed (label shuffles, folds, random groups).
pub const SEED: u64 = 0x005E_1EC7;

/// Tokens run in one batched forward (the scan's default).
pub const BATCH_TOKENS: usize = 2048;

/// Runs sequences through the model in batches, with the job's checkpoint between batches.
pub struct Runner<'a> {
    pub model: &'a Model,
    pub ctx: Option<&'a JobCtx>,
    pub batch_tokens: usize,
}

impl<'a> Runner<'a> {
    pub fn new(model: &'a Model, ctx: Option<&'a JobCtx>) -> Self {
        Runner {
            model,
            ctx,
            batch_tokens: BATCH_TOKENS,
        }
    }

    pub fn phase(&self, phase: &str, tokens: u64) {
        if let Some(ctx) = self.ctx {
            ctx.set_phase(phase);
            ctx.set_total(tokens, "tokens");
            ctx.set_done(0);
        }
    }

    pub fn checkpoint(&self) -> Result<()> {
        match self.ctx {
            Some(ctx) => Ok(ctx.checkpoint()?),
            None => Ok(()),
        }
    }

    fn cancel(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        self.ctx.map(|c| c.cancel_flag().clone())
    }

    fn model_error(e: ModelError) -> ExperimentError {
        match e {
            ModelError::Cancelled => ExperimentError::Cancelled,
            e => e.into(),
        }
    }

    /// Runs every sequence with the same capture and interventions, in batches of about
    /// `batch_tokens`, calling `each(i, output)` in order.
    pub fn batched(
        &self,
        seqs: &[Vec<u32>],
        capture: &Capture,
        interventions: &[Intervention],
        logits: Logits,
        each: impl FnMut(usize, RunOutput) -> Result<()>,
    ) -> Result<()> {
        self.batches(seqs, capture, &|_| interventions, logits, each)
    }

    /// [`Runner::batched`] with each sequence's own interventions (`interventions[i]`).
    pub fn batched_each(
        &self,
        seqs: &[Vec<u32>],
        capture: &Capture,
        interventions: &[Vec<Intervention>],
        logits: Logits,
        each: impl FnMut(usize, RunOutput) -> Result<()>,
    ) -> Result<()> {
        if interventions.len() != seqs.len() {
            return Err(ExperimentError::Invalid(format!(
                "{} sequences but {} lists of interventions",
                seqs.len(),
                interventions.len()
            )));
        }
        self.batches(
            seqs,
            capture,
            &|i| interventions[i].as_slice(),
            logits,
            each,
        )
    }

    fn batches<'i>(
        &self,
        seqs: &[Vec<u32>],
        capture: &Capture,
        interventions: &dyn Fn(usize) -> &'i [Intervention],
        logits: Logits,
        mut each: impl FnMut(usize, RunOutput) -> Result<()>,
    ) -> Result<()> {
        let mut i = 0;
        while i < seqs.len() {
            self.checkpoint()?;
            let mut j = i + 1;
            let mut n = seqs[i].len();
            while j < seqs.len() && n + seqs[j].len() <= self.batch_tokens {
                n += seqs[j].len();
                j += 1;
            }
            let batch: Vec<&[u32]> = seqs[i..j].iter().map(Vec::as_slice).collect();
            let ivs: Vec<&[Intervention]> = (i..j).map(interventions).collect();
            let outs = self
                .model
                .run_batch_each(&batch, capture, &ivs, logits, self.cancel())
                .map_err(Self::model_error)?;
            for (k, out) in outs.into_iter().enumerate() {
                each(i + k, out)?;
            }
            if let Some(ctx) = self.ctx {
                ctx.advance(n as u64);
            }
            i = j;
        }
        Ok(())
    }

    /// One sequence with its own interventions (every logit).
    pub fn one(
        &self,
        tokens: &[u32],
        capture: &Capture,
        interventions: &[Intervention],
    ) -> Result<RunOutput> {
        self.checkpoint()?;
        let out = self
            .model
            .run_cancellable(tokens, capture, interventions, self.cancel())
            .map_err(Self::model_error)?;
        if let Some(ctx) = self.ctx {
            ctx.advance(tokens.len() as u64);
        }
        Ok(out)
    }
}

/// The tokens the tokenizer puts before every text (a BOS; none for SmolLM2): what an empty
/// text encodes to. Read from the tokenizer itself, so an HF folder whose tokenizer.json adds a
/// BOS in its post-processor is handled as a GGUF's BOS is.
pub fn special_prefix(model: &Model) -> Vec<u32> {
    model.tokenizer().encode_ids("").unwrap_or_default()
}

/// A token as text for a report: its UTF-8, or, for a token that holds part of a character, its
/// bytes as `<E7><83>` (a lossy decode would print "�" for every such token alike).
pub fn token_display(model: &Model, id: u32) -> String {
    let bytes = model.tokenizer().token_bytes(id);
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e
            .into_bytes()
            .iter()
            .map(|b| {
                if b.is_ascii() && !b.is_ascii_control() {
                    (*b as char).to_string()
                } else {
                    format!("<{b:02X}>")
                }
            })
            .collect(),
    }
}

/// Any experiment's report, tagged by its kind (what `hubel experiment run --json` prints).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Report {
    Selectivity(selectivity::SelectivityReport),
    Induction(induction::InductionReport),
    Lesion(lesion::LesionReport),
    Dose(dose::DoseReport),
}

impl Report {
    /// The report as text for a terminal or a Markdown file.
    pub fn render(&self) -> String {
        match self {
            Report::Selectivity(r) => r.render(),
            Report::Induction(r) => r.render(),
            Report::Lesion(r) => r.render(),
            Report::Dose(r) => r.render(),
        }
    }
}

/// Runs `protocol` by its kind with default settings.
pub fn run(model: &Model, protocol: &Protocol, ctx: Option<&JobCtx>) -> Result<Report> {
    run_with(
        &Runner::new(model, ctx),
        protocol,
        &selectivity::Settings::default(),
        &lesion::Settings::default(),
    )
}

/// Runs `protocol` by its kind: selectivity and lesion protocols with their settings.
pub fn run_with(
    runner: &Runner,
    protocol: &Protocol,
    selectivity: &selectivity::Settings,
    lesion: &lesion::Settings,
) -> Result<Report> {
    Ok(match protocol.kind {
        Kind::Selectivity => Report::Selectivity(selectivity::run(runner, protocol, selectivity)?),
        Kind::Induction => Report::Induction(induction::run(runner, protocol)?),
        Kind::Lesion => Report::Lesion(lesion::run(runner, protocol, lesion)?),
    })
}
