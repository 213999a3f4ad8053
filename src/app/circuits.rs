//! The Circuits window's runtime (plain data, no egui): the logit lens, the direct logit
//! attribution and the causal trace, each computed by a model job on the job runner (progress,
//! pause and cancel in the Jobs list) and handed back here through a channel. The view
//! (`panels/circuits.rs`) only draws what is here. The heatmap's ranking by direct effect is
//! here too: a baseline attribution computed on the worker's thread ([`effects_job`]).

use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

use crate::circuits::dla::{self, DlaReport, DlaRequest};
use crate::circuits::lens::{self, Grid};
use crate::circuits::patch::{self, PatchReport, PatchRequest};
use crate::circuits::{single_token, tokenize, TokenRef};
use crate::hooks::{ActivationRecord, Intervention};
use crate::model::Precision;

use super::state::{AppState, RowRanking};
use super::worker::{Job, ModelJob, Response, RunResult};

/// The lens of the probe: the baseline, and the run with the edits when there are some.
#[derive(Clone, Debug)]
pub struct LensResult {
    pub text: String,
    pub tokens: Vec<String>,
    pub target: Option<TokenRef>,
    pub baseline: Grid,
    pub intervened: Option<Grid>,
    /// The edits of the intervened grid.
    pub interventions: Vec<Intervention>,
}

/// A finished trace with the clean run's values of the patched site, for patches by hand.
#[derive(Clone, Debug)]
pub struct TraceResult {
    pub report: PatchReport,
    pub clean: ActivationRecord,
}

/// Why a trace has no result, and when the prompts' lengths differ, both tokenizations (the
/// view shows them and offers to pad or trim).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceFailure {
    pub message: String,
    pub mismatch: Option<Mismatch>,
}

/// The clean and corrupted prompts' tokens, of different lengths.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub clean_tokens: Vec<String>,
    pub corrupt_tokens: Vec<String>,
}

impl AsRef<str> for TraceFailure {
    fn as_ref(&self) -> &str {
        &self.message
    }
}

impl From<String> for TraceFailure {
    fn from(message: String) -> Self {
        TraceFailure {
            message,
            mismatch: None,
        }
    }
}

/// A job in flight: its name (to find it in the Jobs list) and its answer's channel.
pub struct Pending<T, E = String> {
    pub name: String,
    pub rx: Receiver<Result<T, E>>,
}

/// One tool's state: the job in flight and the last answer (a result or why there is none).
pub struct Slot<T, E = String> {
    pub running: Option<Pending<T, E>>,
    pub last: Option<Result<T, E>>,
}

impl<T, E> Default for Slot<T, E> {
    fn default() -> Self {
        Slot {
            running: None,
            last: None,
        }
    }
}

impl<T, E: AsRef<str> + From<String>> Slot<T, E> {
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn result(&self) -> Option<&T> {
        self.last.as_ref().and_then(|r| r.as_ref().ok())
    }

    pub fn error(&self) -> Option<&str> {
        self.last
            .as_ref()
            .and_then(|r| r.as_ref().err().map(AsRef::as_ref))
    }

    /// Starts waiting for a job's answer (the job itself is sent by the caller).
    pub fn start(&mut self, name: &str) -> Sender<Result<T, E>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.running = Some(Pending {
            name: name.to_string(),
            rx,
        });
        tx
    }

    /// Takes the answer if it came.
    pub fn poll(&mut self, what: &str) {
        let Some(p) = &self.running else {
            return;
        };
        match p.rx.try_recv() {
            Ok(answer) => {
                self.last = Some(answer);
                self.running = None;
            }
            Err(TryRecvError::Disconnected) => {
                self.last = Some(Err(E::from(format!("{what} ended without an answer"))));
                self.running = None;
            }
            Err(TryRecvError::Empty) => {}
        }
    }
}

/// What the heatmap's ranking by direct effect is computed for: the probe, the target (minus
/// the versus token), the attribution's position and the precision of the run shown. The edits
/// are not part of it: the rows are ranked on the baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectsKey {
    pub text: String,
    pub target: String,
    pub versus: Option<String>,
    /// `None`: the last token.
    pub position: Option<usize>,
    pub precision: Precision,
    /// The dictionary whose codes the run shown holds (its address while in use): its features'
    /// effects are added.
    pub dictionary: Option<usize>,
}

/// What the heatmap's ranking by direct effect needs computed for `state` and the run shown:
/// `None` unless that ranking is chosen, a target is pinned and a run is shown.
pub fn effects_key(state: &AppState, result: Option<&RunResult>) -> Option<EffectsKey> {
    let form = &state.circuits;
    if state.ranking != RowRanking::DirectEffect || form.target.is_empty() {
        return None;
    }
    Some(EffectsKey {
        text: state.probe.clone(),
        target: form.target.clone(),
        versus: Some(form.versus.clone()).filter(|v| !v.is_empty()),
        position: form.position,
        precision: result?.precision,
        dictionary: result?.dictionary.as_ref().map(|d| Arc::as_ptr(d) as usize),
    })
}

/// The baseline attribution the heatmap's rows are ranked by (every layer's neurons and heads).
#[derive(Clone, Debug)]
pub struct RowEffects {
    pub key: EffectsKey,
    pub report: DlaReport,
}

/// The Circuits window's results.
#[derive(Default)]
pub struct Circuits {
    pub lens: Slot<LensResult>,
    pub dla: Slot<DlaReport>,
    pub trace: Slot<TraceResult, TraceFailure>,
    /// The heatmap's ranking by direct effect: an attribution of the baseline, asked for by
    /// itself when that ranking is chosen and its key changes.
    pub effects: Slot<RowEffects>,
    /// The key of the effects job last started (its answer, or the one in flight).
    pub effects_key: Option<EffectsKey>,
    /// Counts the effects' answers (the derived rows are recomputed on a new one).
    pub effects_serial: u64,
}

pub const LENS_JOB: &str = "Logit lens";
pub const DLA_JOB: &str = "Direct logit attribution";
/// The heatmap's effects, computed on the worker's thread (not the job runner: one forward
/// pass, like a run, that must not wait behind a scan or a training).
pub const EFFECTS_JOB: &str = "computing the heatmap's direct effects";

/// The trace job's name in the Jobs list.
pub fn trace_job_name(site: patch::Site) -> String {
    format!("Causal trace ({})", site.title())
}

impl Circuits {
    pub fn poll(&mut self) {
        self.lens.poll("the logit lens");
        self.dla.poll("the attribution");
        self.trace.poll("the causal trace");
        if self.effects.is_running() {
            self.effects.poll("the direct effects");
            if !self.effects.is_running() {
                self.effects_serial += 1;
            }
        }
    }

    /// The effects of `key`, when they have arrived.
    pub fn effects_for(&self, key: &EffectsKey) -> Option<&RowEffects> {
        self.effects.result().filter(|e| e.key == *key)
    }

    /// Why there are no effects for `key`: its job failed (its message), when that is so.
    pub fn effects_error(&self, key: &EffectsKey) -> Option<&str> {
        (!self.effects.is_running() && self.effects_key.as_ref() == Some(key))
            .then(|| self.effects.error())
            .flatten()
    }

    /// Whether an effects job should start for `key`: none has for it, and none is in flight
    /// (a stale one finishes first; it is one forward pass).
    pub fn effects_wanted(&self, key: &EffectsKey) -> bool {
        !self.effects.is_running() && self.effects_key.as_ref() != Some(key)
    }

    /// Forgets the effects (another model).
    pub fn clear_effects(&mut self) {
        self.effects = Slot::default();
        self.effects_key = None;
        self.effects_serial += 1;
    }

    pub fn is_running(&self) -> bool {
        self.lens.is_running() || self.dla.is_running() || self.trace.is_running()
    }
}

/// Sends `result` (errors as their message; a cancel says so).
fn answer<T, E: From<String>>(
    tx: &Sender<Result<T, E>>,
    result: crate::circuits::Result<T>,
) -> crate::jobs::JobResult {
    answer_with(tx, result, |e| E::from(e.to_string()))
}

/// [`answer`] with the error made by `error`.
fn answer_with<T, E: From<String>>(
    tx: &Sender<Result<T, E>>,
    result: crate::circuits::Result<T>,
    error: impl FnOnce(&crate::circuits::CircuitError) -> E,
) -> crate::jobs::JobResult {
    match result {
        Ok(v) => {
            let _ = tx.send(Ok(v));
            Ok(String::new())
        }
        Err(crate::circuits::CircuitError::Cancelled) => {
            let _ = tx.send(Err(E::from("cancelled".into())));
            Err(crate::jobs::JobError::Cancelled)
        }
        Err(e) => {
            let _ = tx.send(Err(error(&e)));
            Err(crate::jobs::JobError::Failed(e.to_string()))
        }
    }
}

/// A model job: the lens of `text` (baseline, and with `interventions` when there are some).
pub fn lens_job(
    text: String,
    target: Option<String>,
    interventions: Vec<Intervention>,
    tx: Sender<Result<LensResult, String>>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let result = (|| {
            let target = target
                .as_deref()
                .map(|t| single_token(&model, t, "target"))
                .transpose()?;
            let (ids, tokens) = tokenize(&model, &text)?;
            model.check_interventions(&interventions, ids.len())?;
            let runs = if interventions.is_empty() { 1 } else { 2 };
            ctx.set_total(runs, "runs");
            let t = target.as_ref().map(|t| t.id);
            let cancel = Some(ctx.cancel_flag().clone());
            ctx.checkpoint()?;
            let baseline = lens::grid(&model, &ids, &[], t, 3, cancel.clone())?;
            ctx.advance(1);
            let intervened = if interventions.is_empty() {
                None
            } else {
                ctx.checkpoint()?;
                let g = lens::grid(&model, &ids, &interventions, t, 3, cancel)?;
                ctx.advance(1);
                Some(g)
            };
            Ok(LensResult {
                text: text.clone(),
                tokens,
                target,
                baseline,
                intervened,
                interventions: interventions.clone(),
            })
        })();
        answer(&tx, result)
    })
}

/// A model job: the attribution of `req`.
pub fn dla_job(req: DlaRequest, tx: Sender<Result<DlaReport, String>>) -> ModelJob {
    Box::new(move |model, ctx| {
        let result = ctx
            .checkpoint()
            .map_err(Into::into)
            .and_then(|_| dla::run(&model, &req));
        answer(&tx, result)
    })
}

/// A job on the worker's thread: the baseline attribution of `key` for the heatmap's rows (the
/// same `dla::run` as the Attribution tab's), at the key's precision (the run shown), every
/// neuron of every layer kept (`LayerBars::neurons`); the answer (or why there is none) goes
/// to `tx`.
pub fn effects_job(
    key: EffectsKey,
    dictionary: Option<Arc<crate::features::dictionary::Dictionary>>,
    tx: Sender<Result<RowEffects, String>>,
) -> Job {
    Box::new(move |model| {
        let req = DlaRequest {
            text: key.text.clone(),
            target: key.target.clone(),
            versus: key.versus.clone(),
            position: key.position,
            neurons: 0,
            interventions: Vec::new(),
        };
        let result = match model {
            Some(model) => {
                let model = model.with_precision(key.precision);
                dla::run(&model, &req)
                    .map_err(|e| e.to_string())
                    .and_then(|mut report| {
                        if let Some(d) = &dictionary {
                            crate::features::dictionary::effects::add_to(&model, d, &mut report)
                                .map_err(|e| e.to_string())?;
                        }
                        Ok(RowEffects { key, report })
                    })
            }
            None => Err("no model is loaded".to_string()),
        };
        let _ = tx.send(result);
        Response::JobAnswered {
            name: EFFECTS_JOB.into(),
        }
    })
}

/// A model job: the causal trace of `req`, with the clean values for patches by hand; prompts
/// of different lengths fail with both tokenizations.
pub fn trace_job(req: PatchRequest, tx: Sender<Result<TraceResult, TraceFailure>>) -> ModelJob {
    Box::new(move |model, ctx| {
        let result = patch::trace(&model, &req, Some(ctx))
            .map(|(report, clean)| TraceResult { report, clean });
        answer_with(&tx, result, |e| TraceFailure {
            message: e.to_string(),
            mismatch: match e {
                crate::circuits::CircuitError::LengthMismatch { .. } => {
                    match (tokenize(&model, &req.clean), tokenize(&model, &req.corrupt)) {
                        (Ok((_, clean_tokens)), Ok((_, corrupt_tokens))) => Some(Mismatch {
                            clean_tokens,
                            corrupt_tokens,
                        }),
                        _ => None,
                    }
                }
                _ => None,
            },
        })
    })
}
