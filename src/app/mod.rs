//! The viewer: type a probe, see every layer respond, click a feature, ablate or steer it, watch
//! the output change. Never touches a tensor: the model lives on the worker thread
//! ([`worker`]), and this module only draws the plain data it sends back.
//!
//! The split follows rerun's: [`AppState`] is the saved working state; [`Runtime`] is the UI's
//! end of the worker (the model's description, the run in flight, the latest results);
//! [`derived::Derived`] computes what the views draw; the views (`panels/`) own their own UI
//! state, draw, and return [`Command`]s, which [`HubelApp::apply`] carries out in one place.
//!
//! Layout: menu on top, status line at the bottom, probe on the left, feature card on the right,
//! output below; in the centre the interventions bar, then the layer map and the chosen layer's
//! heatmap, split by a draggable divider so both are always in view.

pub mod circuits;
pub mod colors;
pub mod derived;
pub mod dictionary;
pub mod experiments;
pub mod export;
pub mod file_dialog;
pub mod fonts;
pub mod icon;
mod panels;
pub mod patterns;
pub mod receptive;
pub mod state;
pub mod text;
pub mod tour;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::analysis::Fidelity;
use crate::assets;
use crate::features::dictionary::Dictionary;
use crate::features::FeatureId;
use crate::hooks::{Intervention, Op};
use crate::jobs::{Interactive, JobError, JobId, JobRunner, JobState, JobStatus};
use crate::model::{ModelInfo, Precision, Token};
use crate::session::Session;
use derived::Derived;
use file_dialog::{FileAction, FileDialogs};
pub use state::{AppConfig, AppState, ViewMode};
use worker::{
    CardAnswer, CardQuery, Effect, EffectRequest, FidelityAnswer, Request, RequestKind, Response,
    RunId, RunRequest, RunResult, WorkerHandle,
};

/// How long typing must pause before the probe runs.
const DEBOUNCE_SECS: f64 = 0.3;

/// What a view asks the app to do. Views never change the runtime themselves.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    LoadModel(PathBuf),
    FetchDefaultModel,
    CancelFetch,
    PauseJob(JobId),
    ResumeJob(JobId),
    CancelJob(JobId),
    /// Take a finished job off the list (`None`: every finished job).
    ClearJobs(Option<JobId>),
    /// Run the probe now (Ctrl+Enter, the Run button).
    Run,
    /// The probe text changed: run once typing pauses.
    ProbeEdited,
    /// Load a stimulus into the probe box and run it.
    LoadStimulus(String),
    SetInterventions(Vec<Intervention>),
    /// Compute exactly (the reference) or on the fast path; runs again.
    SetPrecision(Precision),
    /// Add, replace or (with `None`) remove the edit of one feature.
    SetFeatureOp(FeatureId, Option<Op>),
    Select(Option<FeatureId>),
    /// Choose the position whose next-token distribution the output panel shows.
    SetOutputPosition(Option<usize>),
    /// The card's effect display changed (per unit / on this probe).
    RefreshEffect,
    /// Scan WordNet for receptive fields: the default few thousand stimuli, or all of it (the
    /// same index, extended).
    /// Scan the default corpus with the dictionary in use: its features' examples and
    /// histograms for their cards.
    StartDictionaryScan,
    StartScan {
        all: bool,
    },
    /// Use this index of the model (another corpus) on the cards.
    UseIndex(PathBuf),
    /// Occlusion map by replacing each earlier token with a neutral one, or by deleting it.
    SetOcclusionDelete(bool),
    /// Compute the occlusion map now (probes too long for it to run by itself).
    Occlude,
    /// Compute this head's attention pattern over the probe shown (probes too long for every
    /// pattern to be kept).
    ComputePattern(FeatureId),
    /// Features that fire on a token or whose label holds the words.
    SearchFeatures(String),
    /// Show or hide the Experiments window.
    ShowExperiments(bool),
    /// Show a built-in protocol in the Experiments window.
    ChooseProtocol(String),
    /// Run the protocol shown as a job.
    RunExperiment,
    /// Run the dose–response form (its features, or the selected feature) on the protocol
    /// shown's sets and the probe.
    RunDose,
    /// Fit a discriminator on the protocol shown and classify the form's text with it.
    FitDiscriminator(crate::experiments::discriminator::Which),
    /// Show or hide the Circuits window.
    ShowCircuits(bool),
    /// Compute the logit lens of the probe (baseline, and with the edits) as a job.
    RunLens,
    /// Compute the direct logit attribution at the form's position as a job.
    RunAttribution,
    /// Run the causal trace (probe = clean, the form's corrupted prompt) as a job.
    RunTrace,
    /// Patch one cell of the last trace by hand: the probe becomes the corrupted prompt, with
    /// the clean run's value at that layer and position as its one edit.
    PatchCell {
        layer: usize,
        position: usize,
    },
    /// Show or hide the Dictionary window.
    ShowDictionary(bool),
    /// Train a dictionary from the window's form, as a job.
    TrainDictionary,
    /// Code rows of the dictionary in use by its own encoder or by pursuit over its atoms.
    DictionaryEncoding(crate::features::dictionary::Encoding),
    /// Decompose the form's word (in its context) with the dictionary in use, as a job.
    DecomposeWord,
    /// Edit one dictionary feature in the probe: its atom times its code change at every token
    /// (computed from the probe's baseline residual at the dictionary's hook `hook`).
    EditAtom {
        hook: usize,
        atom: usize,
        edit: crate::features::dictionary::edit::Edit,
    },
    /// Edit a dictionary feature of the layer map or its card (its layer's hook of the
    /// dictionary in use).
    EditFeature(FeatureId, crate::features::dictionary::edit::Edit),
    /// Trace again with prompts of different lengths made equal (pad the shorter or trim the
    /// longer, after the first token); the form keeps the choice for later traces.
    FitTrace(crate::circuits::patch::Fit),
    /// Make this token the Circuits target (a click in the output panel's next-token lists);
    /// opens the Circuits window, so the pin is seen.
    PinTarget(String),
    Undo,
    /// Show a file dialog for an action; its answer comes back as [`Command::FileChosen`].
    AskFile(FileAction),
    FileChosen(FileAction, PathBuf),
    DismissError,
}

/// The default model's fetch, a job on the runner; its result arrives on `result`.
pub struct Fetching {
    pub job: JobId,
    result: std::sync::mpsc::Receiver<Result<PathBuf, JobError>>,
}

/// The run in flight.
struct InFlight {
    id: RunId,
    cancel: Arc<AtomicBool>,
    sent_at: f64,
}

/// The card's direct-effect list: asked for, arrived, or failed.
#[derive(Clone, Debug, PartialEq)]
pub enum EffectState {
    Pending(EffectRequest),
    Ready(Effect),
    Failed(EffectRequest, String),
}

impl EffectState {
    pub fn request(&self) -> EffectRequest {
        match self {
            EffectState::Pending(r) | EffectState::Failed(r, _) => *r,
            EffectState::Ready(e) => e.request,
        }
    }
}

/// The fidelity meter: how far the fast path's logits are from the exact path's on the probe
/// (with the edits) the output panel shows, measured by a job in the background.
#[derive(Clone, Debug)]
pub struct Meter {
    /// Which request the answers must carry.
    pub serial: u64,
    /// The token ids and interventions measured.
    key: (Vec<u32>, Vec<Intervention>),
    /// Set when a newer probe or edit makes this one stale.
    stale: Arc<AtomicBool>,
    pub state: MeterState,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MeterState {
    Measuring,
    Ready(Fidelity),
    Failed(String),
}

/// The fidelity meter warns above this KL(exact ‖ fast) after the last position, in nats…
pub const FIDELITY_WARN_KL: f64 = 0.01;
/// …or below this top-1 agreement over the probe's positions.
pub const FIDELITY_WARN_AGREEMENT: f64 = 0.98;

/// The UI's end of the worker: what it has told us and what we are waiting for.
pub struct Runtime {
    worker: WorkerHandle,
    /// Long work (fetch, and later scans and experiments) beside the worker.
    pub jobs: JobRunner,
    /// The runner's jobs as of this frame, for the views.
    pub job_list: Vec<JobStatus>,
    pub model: Option<ModelInfo>,
    /// Every token id's text, for next-token lists at any position.
    pub vocab: Arc<Vec<String>>,
    pub loading: Option<PathBuf>,
    pub fetching: Option<Fetching>,
    next_id: RunId,
    in_flight: Option<InFlight>,
    /// The cancel flag of the run whose continuations are still being generated.
    continuing: Option<Arc<AtomicBool>>,
    pub result: Option<RunResult>,
    pub continuations: [Option<Vec<Token>>; 2],
    pub effect: Option<EffectState>,
    /// Wall time from a run request to its result, for the status line.
    pub last_round_trip_ms: Option<f64>,
    pub runs_done: u64,
    /// A session (or the restored working state) waiting for the model at this path to load.
    pending_session: Option<(PathBuf, Session)>,
    /// The fast path's weights were asked for (a job) for the loaded model.
    fast_requested: bool,
    /// The fidelity meter of the result shown, when it is a fast-path result.
    pub fidelity: Option<Meter>,
    /// The scan index of the loaded model, the card's corpus examples, occlusion, search.
    pub receptive: receptive::Receptive,
    /// The Experiments window's protocol, job and results.
    pub experiments: experiments::Experiments,
    /// The Circuits window's jobs and results.
    pub circuits: circuits::Circuits,
    /// The Dictionary window's dictionary, training and decompositions.
    pub dictionaries: dictionary::Dictionaries,
    /// Occlusion deletes tokens rather than replacing them.
    pub occlusion_delete: bool,
    /// The occlusion map was asked for by a click (long probes).
    occlusion_asked: bool,
    /// Heads' patterns computed on demand for the probe shown (long probes).
    pub patterns: patterns::Patterns,
    fidelity_serial: u64,
    fidelity_tx: std::sync::mpsc::Sender<FidelityAnswer>,
    fidelity_rx: std::sync::mpsc::Receiver<FidelityAnswer>,
}

impl Runtime {
    fn new(worker: WorkerHandle, jobs: JobRunner) -> Self {
        let (fidelity_tx, fidelity_rx) = std::sync::mpsc::channel();
        Runtime {
            worker,
            jobs,
            job_list: Vec::new(),
            model: None,
            vocab: Arc::new(Vec::new()),
            loading: None,
            fetching: None,
            next_id: 1,
            in_flight: None,
            continuing: None,
            result: None,
            continuations: [None, None],
            effect: None,
            last_round_trip_ms: None,
            runs_done: 0,
            pending_session: None,
            fast_requested: false,
            fidelity: None,
            receptive: receptive::Receptive::default(),
            experiments: experiments::Experiments::default(),
            circuits: circuits::Circuits::default(),
            dictionaries: dictionary::Dictionaries::default(),
            occlusion_delete: false,
            occlusion_asked: false,
            patterns: patterns::Patterns::default(),
            fidelity_serial: 0,
            fidelity_tx,
            fidelity_rx,
        }
    }

    /// The precision of the result shown.
    pub fn precision(&self) -> Option<Precision> {
        self.result.as_ref().map(|r| r.precision)
    }

    /// Stops the fidelity meter: its job (queued, waiting or running) is cancelled.
    fn stop_fidelity(&mut self) {
        if let Some(m) = self.fidelity.take() {
            m.stale.store(true, Ordering::Relaxed);
        }
        for j in self.jobs.list() {
            if j.name == worker::FIDELITY_JOB && !j.state.is_finished() {
                self.jobs.cancel(j.id);
            }
        }
    }

    /// Takes the jobs' status for this frame; finished meter jobs leave the runner's list (the
    /// meter shows them), and the Jobs list shows the rest.
    fn refresh_jobs(&mut self) {
        while let Ok(a) = self.fidelity_rx.try_recv() {
            if let Some(m) = self.fidelity.as_mut().filter(|m| m.serial == a.serial) {
                m.state = match a.result {
                    Ok(f) => MeterState::Ready(f),
                    Err(e) => MeterState::Failed(e),
                };
            }
        }
        let mut list = self.jobs.list();
        list.retain(|j| {
            let meter = j.name == worker::FIDELITY_JOB;
            if meter && j.state.is_finished() {
                self.jobs.clear(j.id);
            }
            !meter
        });
        self.job_list = list;
    }

    pub fn is_busy(&self) -> bool {
        self.loading.is_some() || self.in_flight.is_some() || self.fetching.is_some()
    }

    pub fn run_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn layers(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.layers)
    }

    /// The fetch job's status, while the default model is being fetched.
    pub fn fetch_status(&self) -> Option<&JobStatus> {
        let id = self.fetching.as_ref()?.job;
        self.job_list.iter().find(|j| j.id == id)
    }
}

pub struct HubelApp {
    pub state: AppState,
    pub config: AppConfig,
    pub runtime: Runtime,
    pub derived: Derived,
    views: panels::Views,
    pub dialogs: FileDialogs,
    undo: Vec<Vec<Intervention>>,
    /// The last failure, shown in the window until dismissed.
    pub error: Option<String>,
    /// The error came from a run: the next successful run clears it.
    error_from_run: bool,
    /// When the probe text last changed and has not run yet.
    edited_at: Option<f64>,
    pub cjk: fonts::CjkFont,
    /// The state as eframe last saved it: a change schedules a frame after the save interval,
    /// so an idle window still writes it (eframe saves only on frames).
    saved: Option<AppState>,
}

/// How often eframe writes the working state while it changes.
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl HubelApp {
    /// The app as eframe starts it: restores the saved state (edits and selection included) and
    /// reopens the last model.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let state: AppState = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        let mut app = Self::with_config(&cc.egui_ctx, state, AppConfig::default());
        app.cjk = fonts::install(&cc.egui_ctx);
        app.restore();
        app
    }

    /// The app with a given state and no model (tests and tools load one explicitly).
    pub fn with_state(ctx: &egui::Context, state: AppState) -> Self {
        Self::with_config(ctx, state, AppConfig::default())
    }

    pub fn with_config(ctx: &egui::Context, state: AppState, config: AppConfig) -> Self {
        let repaint_ctx = ctx.clone();
        let jobs_ctx = ctx.clone();
        // Job changes repaint the window, at most ten times a second.
        let jobs = JobRunner::new(Interactive::new(), move || jobs_ctx.request_repaint());
        let worker = WorkerHandle::spawn_with(move || repaint_ctx.request_repaint(), jobs.clone());
        HubelApp {
            dialogs: FileDialogs::new(config.native_dialogs),
            state,
            config,
            runtime: Runtime::new(worker, jobs),
            derived: Derived::default(),
            views: panels::Views::default(),
            undo: Vec::new(),
            error: None,
            error_from_run: false,
            edited_at: None,
            cjk: fonts::CjkFont::Missing("fonts not set up".into()),
            saved: None,
        }
    }

    /// Reopens the saved model; its saved edits and selection are applied once it has loaded
    /// and checked against it.
    pub fn restore(&mut self) {
        let path = match self.state.model_path.clone() {
            Some(p) if p.exists() => Some(p),
            Some(p) => {
                self.fail(format!(
                    "the last model, {}, is no longer there: open it again (File) or fetch the default model",
                    p.display()
                ));
                self.state.model_path = None;
                None
            }
            // A default model fetched earlier is opened without asking.
            None => Some(assets::default_model_path(&self.config.assets)).filter(|p| p.is_file()),
        };
        if let Some(path) = path {
            let mut saved = self.state.session();
            saved.model_path = Some(path.clone());
            self.runtime.pending_session = Some((path.clone(), saved));
            self.load_model(path);
        }
    }

    /// Shows a failure until it is dismissed (a successful run does not clear it).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
        self.error_from_run = false;
    }

    fn send(&mut self, request: Request) {
        if !self.runtime.worker.send(request) {
            // Nothing will answer: stop waiting.
            self.runtime.loading = None;
            self.runtime.in_flight = None;
            self.runtime.fetching = None;
            self.fail("the model thread has stopped; restart Hubel (your work is saved)");
        }
    }

    /// Loads a model on the worker; the UI stays live and shows a spinner.
    pub fn load_model(&mut self, path: PathBuf) {
        self.runtime.loading = Some(path.clone());
        self.send(Request::Load(path));
    }

    pub fn is_busy(&self) -> bool {
        self.runtime.is_busy()
    }

    /// Fetches the default model as a job; it is opened when the job hands back its path.
    fn start_fetch(&mut self) {
        if self.runtime.fetching.is_some() {
            return;
        }
        let (tx, result) = std::sync::mpsc::channel();
        let (dir, clients) = (self.config.assets.clone(), self.config.clients.clone());
        let job = self
            .runtime
            .jobs
            .submit("Fetch the default model", move |ctx| {
                let fetched = crate::jobs::fetch::fetch_model(ctx, &dir, &clients);
                let _ = tx.send(fetched.clone());
                fetched.map(|p| format!("saved as {}", p.display()))
            });
        self.runtime.fetching = Some(Fetching { job, result });
        self.runtime.job_list = self.runtime.jobs.list();
    }

    /// Takes the fetch job's result, if it has one: opens the model, or says why not.
    fn poll_fetch(&mut self) {
        let Some(f) = &self.runtime.fetching else {
            return;
        };
        let outcome = match f.result.try_recv() {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            // The job ended without a word (it panicked): its status says how.
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                match self.runtime.jobs.status(f.job).map(|s| s.state) {
                    Some(JobState::Failed(m)) => Err(JobError::Failed(m)),
                    Some(JobState::Cancelled) => Err(JobError::Cancelled),
                    Some(s) if !s.is_finished() => return,
                    _ => Err(JobError::Failed("the fetch ended without a result".into())),
                }
            }
        };
        self.runtime.fetching = None;
        match outcome {
            Ok(path) => self.load_model(path),
            Err(JobError::Cancelled) => {}
            Err(JobError::Failed(m)) => {
                self.fail(format!("Could not fetch the default model: {m}"))
            }
        }
    }

    /// Runs the probe with the current interventions; a run in flight is cancelled.
    pub fn request_run(&mut self, now: f64) {
        self.edited_at = None;
        if self.runtime.model.is_none() {
            return;
        }
        if let Some(f) = self.runtime.in_flight.take() {
            f.cancel.store(true, Ordering::Relaxed);
        }
        // A continuation still being generated for an older run is not worth waiting for.
        if let Some(c) = self.runtime.continuing.take() {
            c.store(true, Ordering::Relaxed);
        }
        if self.state.probe.trim().is_empty() {
            // Nothing to run while the box is empty: the maps wait for text, no error.
            self.runtime.result = None;
            self.sync_patterns();
            return;
        }
        let id = self.runtime.next_id;
        self.runtime.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.runtime.in_flight = Some(InFlight {
            id,
            cancel: cancel.clone(),
            sent_at: now,
        });
        let precision = self.state.precision;
        if precision == Precision::Fast && !self.runtime.fast_requested {
            // The 4-bit weights, made as a job the Jobs list shows; the run makes any it needs
            // first itself, so it never waits for the job's queue.
            self.runtime.fast_requested = true;
            self.send(Request::ModelJob {
                name: worker::PREPARE_FAST_JOB.into(),
                job: worker::prepare_fast_job(),
            });
        }
        self.send(Request::Run(RunRequest {
            id,
            text: self.state.probe.clone(),
            interventions: self.state.interventions.clone(),
            continuation: self.state.continuation,
            cancel,
            precision,
            // Codes only while dictionary features are on screen: encoding is not free (FISTA
            // solves every position), and a click that recomputes should not pay for it.
            dictionary: self
                .codes_wanted()
                .then(|| self.runtime.dictionaries.current.clone())
                .flatten(),
        }));
    }

    /// Switches between the exact path and the fast path, and runs again.
    pub fn set_precision(&mut self, precision: Precision, now: f64) {
        if self.state.precision != precision {
            self.state.precision = precision;
            self.request_run(now);
        }
    }

    /// Asks for the fidelity meter of the result shown when it is a fast-path result (once per
    /// probe and edits); a meter of another probe or edits is stopped.
    fn update_fidelity(&mut self) {
        let rt = &mut self.runtime;
        let key = match &rt.result {
            Some(r) if r.precision == Precision::Fast => (
                r.tokens.iter().map(|t| t.id).collect::<Vec<u32>>(),
                self.state.interventions.clone(),
            ),
            _ => return rt.stop_fidelity(),
        };
        if rt
            .fidelity
            .as_ref()
            .is_some_and(|m| m.key == key && !matches!(m.state, MeterState::Failed(_)))
        {
            return;
        }
        rt.stop_fidelity();
        rt.fidelity_serial += 1;
        let stale = Arc::new(AtomicBool::new(false));
        let job = worker::fidelity_job(
            rt.fidelity_serial,
            key.0.clone(),
            key.1.clone(),
            stale.clone(),
            rt.fidelity_tx.clone(),
        );
        rt.fidelity = Some(Meter {
            serial: rt.fidelity_serial,
            key,
            stale,
            state: MeterState::Measuring,
        });
        self.send(Request::ModelJob {
            name: worker::FIDELITY_JOB.into(),
            job,
        });
    }

    /// Replaces the interventions (undoably) and re-runs.
    pub fn set_interventions(&mut self, interventions: Vec<Intervention>, now: f64) {
        if interventions == self.state.interventions {
            return;
        }
        let old = std::mem::replace(&mut self.state.interventions, interventions);
        self.undo.push(old);
        self.request_run(now);
    }

    pub fn undo(&mut self, now: f64) {
        if let Some(previous) = self.undo.pop() {
            self.state.interventions = previous;
            self.request_run(now);
        }
    }

    /// The intervention on `feature`, if any.
    pub fn intervention_on(&self, feature: FeatureId) -> Option<usize> {
        self.state.intervention_on(feature)
    }

    /// Adds, replaces or (with `None`) removes the intervention on `feature`.
    pub fn set_feature_op(&mut self, feature: FeatureId, op: Option<Op>, now: f64) {
        if feature.basis == crate::features::Basis::Dictionary {
            // A dictionary feature is edited along its atom (`Op::AddScaled`): a zero of its
            // code is its ablation; other ops come as `Command::EditAtom`.
            match op {
                Some(_) => self.edit_dictionary_feature(
                    feature,
                    crate::features::dictionary::edit::Edit::Ablate,
                    now,
                ),
                None => {
                    if let Some(i) = self.intervention_on(feature) {
                        let mut next = self.state.interventions.clone();
                        next.remove(i);
                        self.set_interventions(next, now);
                    }
                }
            }
            return;
        }
        let mut next = self.state.interventions.clone();
        match (self.intervention_on(feature), op) {
            (Some(i), Some(op)) => next[i].op = op,
            (Some(i), None) => {
                next.remove(i);
            }
            (None, Some(op)) => next.push(Intervention {
                hook: feature.hook(),
                positions: None,
                indices: Some(vec![feature.index]),
                op,
            }),
            (None, None) => {}
        }
        self.set_interventions(next, now);
    }

    pub fn select(&mut self, feature: Option<FeatureId>) {
        self.state.selection = feature;
        if let Some(f) = feature {
            self.state.layer = f.layer;
            self.state.basis = f.basis;
        }
        self.request_effect();
    }

    /// Asks the worker for the selected feature's direct effect, at the scale the card shows.
    fn request_effect(&mut self) {
        let Some(feature) = self.state.selection else {
            self.runtime.effect = None;
            return;
        };
        let len = self.runtime.result.as_ref().map_or(0, |r| r.tokens.len());
        let position = (self.state.effect_on_probe
            || feature.basis == crate::features::Basis::Heads)
            .then(|| {
                self.state
                    .output_position
                    .unwrap_or(len.saturating_sub(1))
                    .min(len.saturating_sub(1))
            });
        let request = EffectRequest { feature, position };
        if position.is_some() && len == 0 {
            return; // asked again when the first run arrives
        }
        if self
            .runtime
            .effect
            .as_ref()
            .is_some_and(|e| e.request() == request && !matches!(e, EffectState::Failed(..)))
        {
            return;
        }
        self.runtime.effect = Some(EffectState::Pending(request));
        self.send(Request::Effect(request));
    }

    /// Opens a session file; a bad file leaves everything as it was and says why.
    pub fn open_session(&mut self, path: &Path, now: f64) {
        match Session::load(path) {
            Ok(s) => {
                if let Some(model) = &s.model_path {
                    if self.state.model_path.as_ref() != Some(model) || self.runtime.model.is_none()
                    {
                        // Apply the rest once that model is loaded (loading resets the edits).
                        self.runtime.pending_session = Some((model.clone(), s.clone()));
                        self.load_model(model.clone());
                        return;
                    }
                }
                self.apply_session(s, now);
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Applies a session to the loaded model, if it fits; otherwise says what does not.
    fn apply_session(&mut self, s: Session, now: f64) {
        if let Some(info) = &self.runtime.model {
            if let Err(e) = s.check(info) {
                self.fail(format!(
                    "the session does not fit {}: {e}; nothing of it was applied",
                    info.describe()
                ));
                if self.runtime.result.is_none() {
                    self.request_run(now);
                }
                return;
            }
        }
        self.state.probe = s.probe;
        self.state.basis = s.basis;
        if let Some(layer) = s.layer {
            self.state.layer = layer;
        }
        self.state.output_position = None;
        self.undo.push(std::mem::replace(
            &mut self.state.interventions,
            s.interventions,
        ));
        self.error = None;
        self.request_run(now);
        self.select(s.selection);
    }

    pub fn session(&self) -> Session {
        self.state.session()
    }

    pub fn save_session(&mut self, path: &Path) {
        if let Err(e) = self.session().save(path) {
            self.fail(e.to_string());
        }
    }

    /// The on-demand patterns belong to the probe shown: another text (or precision) drops them.
    /// Called where the result shown can change (a worker's answer, an emptied probe, a click
    /// that asks), not every frame.
    fn sync_patterns(&mut self) {
        let rt = &mut self.runtime;
        let tokens: Option<Vec<u32>> = rt
            .result
            .as_ref()
            .map(|r| r.tokens.iter().map(|t| t.id).collect());
        let precision = rt.precision().unwrap_or_default();
        rt.patterns.sync(tokens.as_deref(), precision);
    }

    /// Handles everything the worker sent since the last frame, and takes the jobs' status.
    pub fn drain_responses(&mut self, now: f64) {
        let mut any = false;
        while let Ok(response) = self.runtime.worker.rx.try_recv() {
            self.handle(response, now);
            any = true;
        }
        if any {
            self.sync_patterns();
        }
        self.runtime.refresh_jobs();
        self.poll_fetch();
        self.runtime.receptive.poll();
        self.runtime.experiments.poll();
        self.runtime.circuits.poll();
        let layers = self.runtime.layers();
        self.runtime.dictionaries.poll(layers);
        self.dictionary_changed();
        self.recode_if_needed(now);
        if self.runtime.receptive.needs_labels() && self.runtime.model.is_some() {
            self.start_labels();
        }
        self.refresh_receptive();
    }

    /// When the dictionary in use changed: the worker is told (its features' card queries and
    /// effects use it from now on), and what was computed of its features with the old one (the
    /// card's examples, occlusion map, direct effect) is asked again.
    fn dictionary_changed(&mut self) {
        let d = &mut self.runtime.dictionaries;
        let same = match (&d.worker_dict, &d.current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        d.worker_dict = d.current.clone();
        let dict = d.current.clone();
        self.send(Request::SetDictionary(dict));
        let rt = &mut self.runtime;
        let atom = |f: &FeatureId| f.basis == crate::features::Basis::Dictionary;
        if rt.receptive.card.as_ref().is_some_and(|c| atom(&c.feature)) {
            rt.receptive.card = None;
        }
        if rt
            .receptive
            .occlusion
            .as_ref()
            .is_some_and(|o| atom(&o.key.feature))
        {
            rt.receptive.occlusion = None;
        }
        if self.state.selection.as_ref().is_some_and(atom) {
            self.runtime.effect = None;
            self.request_effect();
        }
    }

    /// Whether the views show dictionary features (the heatmap's basis or the selected card).
    fn codes_wanted(&self) -> bool {
        self.state.basis == crate::features::Basis::Dictionary
            || self
                .state
                .selection
                .is_some_and(|f| f.basis == crate::features::Basis::Dictionary)
    }

    /// Runs again (nothing is recomputed but the codes) when the views show dictionary
    /// features and the result's codes are not of the dictionary in use (it was opened,
    /// trained, or a training snapshot replaced it).
    fn recode_if_needed(&mut self, now: f64) {
        let wanted = self.codes_wanted();
        if !wanted {
            // Runs go without codes meanwhile: the next time they are wanted, ask again.
            self.runtime.dictionaries.recode_sent = None;
            return;
        }
        let current = &self.runtime.dictionaries.current;
        let stale = self
            .runtime
            .result
            .as_ref()
            .is_some_and(|r| !match (&r.dictionary, current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            });
        let asked = match (&self.runtime.dictionaries.recode_sent, current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if wanted && stale && !asked && self.runtime.in_flight.is_none() {
            self.runtime.dictionaries.recode_sent = current.clone();
            self.request_run(now);
        }
    }

    /// Labels every feature of the index as a job (once per index; saved beside it).
    fn start_labels(&mut self) {
        let r = &mut self.runtime.receptive;
        let receptive::IndexState::Ready { path, index } = &r.index else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let wordnet = Some(assets::corpus_dir(&self.config.assets)).filter(|d| d.is_dir());
        let job = worker::label_job(
            index.clone(),
            wordnet,
            crate::scan::labels::labels_path(path),
            tx,
        );
        r.labelling = Some(receptive::LabelRun { rx });
        r.labels = receptive::LabelsState::Computing;
        self.send(Request::ModelJob {
            name: worker::LABEL_JOB.into(),
            job,
        });
    }

    /// Runs the protocol shown as a job (one experiment at a time).
    fn start_experiment(&mut self) {
        let ex = &mut self.runtime.experiments;
        if ex.is_running() || self.runtime.model.is_none() {
            return;
        }
        let Some(protocol) = ex.protocol().cloned() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let name = worker::experiment_job_name(&protocol.name);
        ex.running = Some(experiments::ExperimentRun {
            name: name.clone(),
            protocol: protocol.name.clone(),
            rx,
        });
        ex.error = None;
        let hand_picked = if protocol.kind == crate::corpus::protocol::Kind::Lesion {
            match crate::experiments::cli::parse_units(&self.state.lesion_units) {
                Ok(units) => units,
                Err(_) if self.state.lesion_units.trim().is_empty() => Vec::new(),
                Err(e) => {
                    ex.running = None;
                    ex.error = Some(format!("the hand-picked group: {e:#}"));
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let dictionary = self.runtime.dictionaries.current.clone();
        let job = worker::experiment_job(protocol, hand_picked, dictionary, tx);
        self.send(Request::ModelJob { name, job });
    }
    /// Trains a dictionary from the window's form as a job (one at a time); its snapshots can
    /// be browsed while it runs.
    fn start_dictionary_training(&mut self) {
        let layers = self.runtime.layers();
        let d = &mut self.runtime.dictionaries;
        if d.is_training() || layers == 0 {
            return;
        }
        let form = &self.state.dictionary;
        let hooks = match crate::features::dictionary::parse_layers(&form.layers, layers) {
            Ok(h) => h,
            Err(e) => {
                d.message = Some(Err(e.to_string()));
                return;
            }
        };
        let mut opts = crate::features::dictionary::TrainOptions::new(form.method, form.atoms);
        opts.k = form.k;
        opts.lambda = form.lambda;
        opts.epochs = form.epochs.max(1);
        if form.pursuit && form.method == crate::features::dictionary::Method::Topk {
            opts.encoding = crate::features::dictionary::Encoding::Pursuit;
        }
        let spec = crate::features::dictionary::TrainSpec {
            hooks,
            tokens: form.tokens.max(1),
            opts,
        };
        let out = dictionary::default_path(&self.config.assets, &spec);
        let (tx, progress) = d.start_training();
        d.message = None;
        let job = dictionary::train_job(
            self.config.assets.clone(),
            self.config.clients.clone(),
            form.examples_only,
            spec,
            out,
            tx,
            progress,
        );
        self.send(Request::ModelJob {
            name: dictionary::TRAIN_JOB.into(),
            job,
        });
    }

    /// Decomposes the form's word at the embedding (when the dictionary reads it) and at the
    /// form's layer, as a job.
    fn start_decompose(&mut self) {
        let loaded = self.runtime.model.is_some();
        let d = &mut self.runtime.dictionaries;
        if d.decompose.is_running() || !loaded {
            return;
        }
        let Some(dict) = d.current.clone() else {
            d.decompose.last = Some(Err("train or open a dictionary first".into()));
            return;
        };
        let form = &self.state.dictionary;
        let mut hooks = Vec::new();
        if dict.config.hooks.contains(&crate::hooks::HookPoint::Embed) {
            hooks.push(crate::hooks::HookPoint::Embed);
        }
        match crate::features::dictionary::decompose::hook_for(&dict, form.layer) {
            Ok(h) if !hooks.contains(&h) => hooks.push(h),
            Ok(_) => {}
            Err(e) => {
                d.decompose.last = Some(Err(e.to_string()));
                return;
            }
        }
        let context = Some(form.context.clone()).filter(|c| !c.trim().is_empty());
        let tx = d.decompose.start(dictionary::DECOMPOSE_JOB);
        let job = dictionary::decompose_job(dict, form.word.clone(), context, hooks, tx);
        self.send(Request::ModelJob {
            name: dictionary::DECOMPOSE_JOB.into(),
            job,
        });
    }

    /// Edits dictionary feature `feature` (its layer's residual, as the dictionary in use
    /// reads it): a message when the dictionary does not read that layer or is not open.
    pub fn edit_dictionary_feature(
        &mut self,
        feature: FeatureId,
        edit: crate::features::dictionary::edit::Edit,
        now: f64,
    ) {
        let hook = self
            .runtime
            .dictionaries
            .current
            .as_ref()
            .map(|d| d.hook_of_layer(feature.layer));
        match hook {
            Some(Some(h)) => self.edit_atom(h, feature.index, edit, now),
            Some(None) => {
                self.error = Some(format!(
                    "{feature}: the dictionary in use does not read layer {}",
                    feature.layer
                ))
            }
            None => self.error = Some(format!("{feature}: open its dictionary first")),
        }
    }

    /// Adds (or replaces) the edit of one dictionary feature in the probe's interventions.
    fn edit_atom(
        &mut self,
        hook: usize,
        atom: usize,
        edit: crate::features::dictionary::edit::Edit,
        now: f64,
    ) {
        let Some(dict) = self.runtime.dictionaries.current.clone() else {
            return;
        };
        let Some(&point) = dict.config.hooks.get(hook) else {
            return;
        };
        let x = self
            .runtime
            .result
            .as_ref()
            .and_then(|r| r.baseline.record.get(point))
            .map(|a| a.data.clone());
        let Some(x) = x else {
            self.error = Some(format!(
                "{point} is not recorded for this probe: run the probe first (the embedding is \
                 not kept; edit a dictionary of a block's residual stream)"
            ));
            return;
        };
        match crate::features::dictionary::edit::intervention(&dict, hook, atom, &x, edit) {
            Ok(Some(iv)) => {
                let prefix = format!("D{atom} ");
                let mut ivs: Vec<Intervention> = self
                    .state
                    .interventions
                    .iter()
                    .filter(|i| {
                        !matches!(&i.op, Op::AddScaled { label, .. }
                            if i.hook == point && label.starts_with(&prefix))
                    })
                    .cloned()
                    .collect();
                ivs.push(iv);
                self.set_interventions(ivs, now);
            }
            Ok(None) => {
                self.runtime.dictionaries.message = Some(Err(format!(
                    "D{atom} is silent at every token of the probe (positions 1..): ablating or \
                     scaling it changes nothing; steer it instead"
                )));
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    /// The logit lens of the probe as a job: the baseline, and the run with the edits.
    fn start_lens(&mut self) {
        let c = &mut self.runtime.circuits;
        if c.lens.is_running() || self.runtime.model.is_none() {
            return;
        }
        let target = Some(self.state.circuits.target.clone()).filter(|t| !t.is_empty());
        let tx = c.lens.start(circuits::LENS_JOB);
        let job = circuits::lens_job(
            self.state.probe.clone(),
            target,
            self.state.interventions.clone(),
            tx,
        );
        self.send(Request::ModelJob {
            name: circuits::LENS_JOB.into(),
            job,
        });
    }

    /// The direct logit attribution at the form's position as a job.
    fn start_attribution(&mut self) {
        let c = &mut self.runtime.circuits;
        if c.dla.is_running() || self.runtime.model.is_none() {
            return;
        }
        let form = &self.state.circuits;
        let req = crate::circuits::dla::DlaRequest {
            text: self.state.probe.clone(),
            target: form.target.clone(),
            versus: Some(form.versus.clone()).filter(|v| !v.is_empty()),
            position: form.position,
            neurons: 40,
            interventions: Vec::new(),
        };
        let tx = c.dla.start(circuits::DLA_JOB);
        let job = circuits::dla_job(req, tx);
        self.send(Request::ModelJob {
            name: circuits::DLA_JOB.into(),
            job,
        });
    }

    /// What the heatmap's ranking by direct effect needs computed now: `None` unless that
    /// ranking is chosen, a target is pinned and a run is shown.
    pub fn effects_key(&self) -> Option<circuits::EffectsKey> {
        circuits::effects_key(&self.state, self.runtime.result.as_ref())
    }

    /// Starts the heatmap's effects job when its key changed (the probe, the target, the
    /// versus token, the position or the precision), once the run of the probe is shown: never
    /// while typing or while a run is in flight.
    fn update_effects(&mut self) {
        if self.edited_at.is_some() || self.runtime.run_in_flight() {
            return;
        }
        let Some(key) = self.effects_key() else {
            return;
        };
        let c = &mut self.runtime.circuits;
        if !c.effects_wanted(&key) {
            return;
        }
        let tx = c.effects.start(circuits::EFFECTS_JOB);
        c.effects_key = Some(key.clone());
        let dictionary = self
            .runtime
            .result
            .as_ref()
            .and_then(|r| r.dictionary.clone());
        let job = circuits::effects_job(key, dictionary, tx);
        self.send(Request::Job {
            name: circuits::EFFECTS_JOB.into(),
            job,
        });
    }

    /// The causal trace as a job: the probe is the clean prompt.
    fn start_trace(&mut self) {
        let c = &mut self.runtime.circuits;
        if c.trace.is_running() || self.runtime.model.is_none() {
            return;
        }
        let form = &self.state.circuits;
        let req = crate::circuits::patch::PatchRequest {
            clean: self.state.probe.clone(),
            corrupt: form.corrupt.clone(),
            target: form.target.clone(),
            versus: Some(form.versus.clone()).filter(|v| !v.is_empty()),
            site: form.site,
            fit: form.fit,
        };
        let name = circuits::trace_job_name(form.site);
        let tx = c.trace.start(&name);
        let job = circuits::trace_job(req, tx);
        self.send(Request::ModelJob { name, job });
    }

    /// One cell of the last trace patched by hand: the corrupted prompt becomes the probe, with
    /// the clean run's value at that cell as its only edit (the output panel shows what it
    /// restores; Undo brings the edits back).
    fn patch_cell(&mut self, layer: usize, position: usize, now: f64) {
        let Some(t) = self.runtime.circuits.trace.result() else {
            return;
        };
        let Some(probe) = t.report.corrupt_probe.clone() else {
            let why = "no text tokenizes to the fitted corrupted tokens (the filler would merge \
                       with the next word): trim instead of pad, or give prompts of the same length";
            return self.fail(format!(
                "patching layer {layer}, position {position} by hand: {why}"
            ));
        };
        match crate::circuits::patch::cell_intervention(&t.clean, t.report.site, layer, position) {
            Ok(iv) => {
                self.state.probe = probe;
                if self.state.interventions == [iv.clone()] {
                    self.request_run(now);
                } else {
                    self.set_interventions(vec![iv], now);
                }
            }
            Err(e) => self.fail(format!("patching layer {layer}, position {position}: {e}")),
        }
    }

    /// Runs the dose–response form as a job: its features (else the selected feature) over its
    /// range, on the probe and the protocol shown's sets.
    fn start_dose(&mut self) {
        let ex = &mut self.runtime.experiments;
        if ex.dosing.is_some() || self.runtime.model.is_none() {
            return;
        }
        let Some(protocol) = ex.protocol().cloned() else {
            return;
        };
        let form = &self.state.dose;
        let units = if form.units.trim().is_empty() {
            self.state.selection.into_iter().collect()
        } else {
            match crate::experiments::cli::parse_units(&form.units) {
                Ok(u) => u,
                Err(e) => {
                    ex.dose_error = Some(format!("{e:#}"));
                    return;
                }
            }
        };
        if units.is_empty() {
            ex.dose_error = Some(
                "choose a feature: click one (it becomes the selection) or type L10N123".into(),
            );
            return;
        }
        let strengths = match crate::experiments::dose::parse_range(&format!(
            "{}:{}:{}",
            form.from, form.to, form.steps
        )) {
            Ok(s) => s,
            Err(e) => {
                ex.dose_error = Some(e);
                return;
            }
        };
        let settings = crate::experiments::dose::Settings {
            units,
            mode: form.mode,
            strengths,
            freeze_attention: form.freeze,
            probe: self.state.probe.clone(),
            target: Some(form.target.clone()).filter(|t| !t.is_empty()),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let name = format!("Dose–response on {}", protocol.name);
        ex.dosing = Some(experiments::ExperimentRun {
            name: name.clone(),
            protocol: protocol.name.clone(),
            rx,
        });
        ex.dose_error = None;
        let job = worker::dose_job(protocol, settings, tx);
        self.send(Request::ModelJob { name, job });
    }

    /// Fits a discriminator on the protocol shown and classifies the form's text (one line a
    /// text) with it, as a job.
    fn start_discriminator(&mut self, which: crate::experiments::discriminator::Which) {
        let ex = &mut self.runtime.experiments;
        if ex.fitting.is_some() || self.runtime.model.is_none() {
            return;
        }
        let Some(protocol) = ex.protocol().cloned() else {
            return;
        };
        let texts: Vec<String> = self
            .state
            .classify_text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        ex.fitting = Some(rx);
        ex.classified = None;
        ex.saved = None;
        let job = worker::discriminator_job(protocol, which, texts, tx);
        self.send(Request::ModelJob {
            name: "Fit a discriminator".into(),
            job,
        });
    }

    /// Starts a scan of WordNet as a job (one at a time).
    /// `dictionary`: its features are scanned too, into an index of their own.
    fn start_scan(&mut self, all: bool, dictionary: Option<Arc<Dictionary>>) {
        if self.runtime.receptive.scanning.is_some() || self.runtime.model.is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let name = match &dictionary {
            Some(d) => format!("{} with {}", worker::scan_job_name(all), d.title()),
            None => worker::scan_job_name(all),
        };
        let job = worker::scan_job(
            self.config.assets.clone(),
            self.config.clients.clone(),
            all,
            dictionary,
            tx,
        );
        self.runtime.receptive.scanning = Some(receptive::ScanRun {
            name: name.clone(),
            rx,
        });
        self.send(Request::ModelJob { name, job });
    }

    /// Starts a scan of a text file (one stimulus per line) or a folder of `.txt` files as a
    /// job: every stimulus, into an index of its own beside WordNet's.
    fn start_text_scan(&mut self, path: PathBuf) {
        if self.runtime.receptive.scanning.is_some() || self.runtime.model.is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let name = worker::text_scan_job_name(&path);
        let job = worker::text_scan_job(self.config.assets.clone(), path, tx);
        self.runtime.receptive.scanning = Some(receptive::ScanRun {
            name: name.clone(),
            rx,
        });
        self.send(Request::ModelJob { name, job });
    }

    /// Keeps the card's corpus data in step with the selection: its summary from the index, its
    /// examples' activations and the occlusion map from the worker (asked for once each).
    fn refresh_receptive(&mut self) {
        let Some(f) = self.state.selection else {
            self.runtime.receptive.card = None;
            return;
        };
        if f.basis == crate::features::Basis::Dictionary {
            let sha = self.runtime.dictionaries.current_sha();
            self.runtime.receptive.set_dictionary(sha);
            // A scan of this dictionary among the model's indexes: use it.
            if let Some(path) = self.runtime.receptive.index_for_dictionary() {
                self.runtime.receptive.use_index(path);
                return;
            }
        }
        let rt = &mut self.runtime;
        let mut ask = Vec::new();
        if let Some(card) = rt.receptive.open_card(f) {
            if matches!(card.rows, receptive::Pending::Idle) {
                let windows = card.windows();
                if let Some(index) = rt.receptive.index.index() {
                    let windows: Vec<(usize, Vec<u32>)> = windows
                        .into_iter()
                        .map(|w| (w, index.windows.get(w).to_vec()))
                        .collect();
                    let serial = rt.receptive.next_serial();
                    if let Some(card) = rt.receptive.card.as_mut() {
                        card.rows = if windows.is_empty() {
                            receptive::Pending::Ready(Arc::default())
                        } else {
                            ask.push(CardQuery::Rows {
                                serial,
                                feature: f,
                                windows,
                            });
                            receptive::Pending::Waiting(serial)
                        };
                    }
                }
            }
        }
        // The occlusion map at the output position, for the probe shown.
        if let Some(r) = &rt.result {
            let tokens: Vec<u32> = r.tokens.iter().map(|t| t.id).collect();
            let position = self
                .state
                .output_position
                .unwrap_or(tokens.len().saturating_sub(1))
                .min(tokens.len().saturating_sub(1));
            let key = receptive::OcclusionKey {
                feature: f,
                tokens,
                position,
                delete: rt.occlusion_delete,
            };
            let current = rt
                .receptive
                .occlusion
                .as_ref()
                .is_some_and(|o| o.key == key);
            if !current {
                rt.receptive.occlusion = None;
                if !key.tokens.is_empty()
                    && (key.tokens.len() <= receptive::AUTO_OCCLUSION_TOKENS || rt.occlusion_asked)
                {
                    rt.occlusion_asked = false;
                    let serial = rt.receptive.next_serial();
                    ask.push(CardQuery::Occlusion {
                        serial,
                        feature: f,
                        tokens: key.tokens.clone(),
                        position,
                        delete: key.delete,
                    });
                    rt.receptive.occlusion = Some(receptive::OcclusionState {
                        key,
                        result: receptive::Pending::Waiting(serial),
                    });
                }
            }
        }
        for q in ask {
            self.send(Request::Card(q));
        }
    }

    /// Handles one response from the worker.
    pub fn handle(&mut self, response: Response, now: f64) {
        let rt = &mut self.runtime;
        match response {
            Response::Loaded { info, vocab } => {
                let path = info.path.clone();
                if rt.loading.as_ref() == Some(&path) {
                    rt.loading = None;
                }
                self.state.model_path = Some(path.clone());
                if self.state.layer >= info.layers {
                    self.state.layer = 0;
                }
                rt.receptive.find(
                    receptive::scans_dir(&self.config.assets),
                    info.sha256.clone(),
                );
                rt.model = Some(info);
                rt.vocab = vocab;
                rt.result = None;
                rt.effect = None;
                rt.fast_requested = false;
                rt.stop_fidelity();
                rt.circuits.clear_effects();
                self.error = None;
                self.state.selection = None;
                self.state.interventions.clear();
                self.state.output_position = None;
                self.undo.clear();
                match rt.pending_session.take() {
                    Some((p, session)) if p == path => self.apply_session(session, now),
                    other => {
                        // A session for a model still queued waits for that one.
                        rt.pending_session = other;
                        self.request_run(now);
                    }
                }
            }
            Response::LoadFailed { path, message } => {
                if rt.loading.as_ref() == Some(&path) {
                    rt.loading = None;
                }
                // A session that waited for this model is not applied to another.
                if rt.pending_session.as_ref().is_some_and(|(p, _)| *p == path) {
                    rt.pending_session = None;
                }
                if self.state.model_path.as_ref() == Some(&path) && rt.model.is_none() {
                    self.state.model_path = None;
                }
                self.fail(format!("Could not open the model: {message}"));
            }
            Response::Run(result) => {
                let Some(f) = &rt.in_flight else { return };
                if result.id != f.id {
                    return; // stale
                }
                rt.last_round_trip_ms = Some((now - f.sent_at) * 1e3);
                // Its continuations follow; a newer run cancels them.
                rt.continuing = Some(f.cancel.clone());
                rt.in_flight = None;
                rt.runs_done += 1;
                let same_baseline = rt
                    .result
                    .as_ref()
                    .is_some_and(|r| Arc::ptr_eq(&r.baseline, &result.baseline));
                // The same text at another precision keeps the position and the selection.
                let same_text = same_baseline
                    || rt
                        .result
                        .as_ref()
                        .is_some_and(|r| r.tokens == result.tokens);
                if !same_baseline {
                    rt.continuations = [None, None];
                }
                if !same_text {
                    self.state.output_position = None;
                    if let Some(f) = self.state.selection {
                        if f.layer >= rt.layers() {
                            self.state.selection = None;
                        }
                    }
                }
                rt.continuations[1] = None;
                if self.error_from_run {
                    self.error = None;
                }
                let old = rt.result.replace(*result);
                if !same_text && old.is_some() {
                    // The old text's record and logits (shared with the worker, which dropped
                    // its copy) go now; give their pages back to the system.
                    drop(old);
                    crate::release_freed_memory();
                }
                // An effect read on the old baseline (a head's, or "on this probe") is stale.
                if !same_baseline
                    && rt
                        .effect
                        .as_ref()
                        .is_some_and(|e| e.request().position.is_some())
                {
                    rt.effect = None;
                }
                if self.state.selection.is_some() {
                    self.request_effect();
                }
                self.update_fidelity();
            }
            Response::RunLogits {
                id,
                logits,
                summary,
            } => {
                if let Some(side) = rt
                    .result
                    .as_mut()
                    .filter(|r| r.id == id)
                    .and_then(|r| r.intervened.as_mut())
                {
                    side.logits = Arc::new(logits);
                    side.logits_from = 0;
                    side.summary = summary;
                }
            }
            Response::Continuation {
                id,
                intervened,
                tokens,
            } => {
                if rt.result.as_ref().is_some_and(|r| r.id == id) {
                    rt.continuations[usize::from(intervened)] = Some(tokens);
                }
            }
            Response::ContinuationFailed { id, message } => {
                if rt.result.as_ref().is_some_and(|r| r.id == id) {
                    // Show the failure in place of the continuation and as an error.
                    for c in rt.continuations.iter_mut().filter(|c| c.is_none()) {
                        *c = Some(Vec::new());
                    }
                    self.fail(format!("Could not continue the text: {message}"));
                }
            }
            Response::RunFailed { id, message } => {
                if rt.in_flight.as_ref().is_some_and(|f| f.id == id) {
                    rt.in_flight = None;
                    self.error = Some(message);
                    self.error_from_run = true;
                } else if rt.result.as_ref().is_some_and(|r| r.id == id) {
                    // The run's second answer (every position's logits) failed after its first.
                    self.error = Some(message);
                    self.error_from_run = true;
                }
            }
            Response::Effect(effect) => {
                if rt
                    .effect
                    .as_ref()
                    .is_some_and(|e| e.request() == effect.request)
                {
                    rt.effect = Some(EffectState::Ready(effect));
                }
            }
            Response::EffectFailed { request, message } => {
                if rt.effect.as_ref().is_some_and(|e| e.request() == request) {
                    rt.effect = Some(EffectState::Failed(request, message));
                }
            }
            Response::Failed {
                request,
                kind,
                message,
            } => {
                // A bug on the worker: what that request would have sent will not arrive, so stop
                // waiting for it (and only for it).
                match kind {
                    Some(RequestKind::Load(path)) => {
                        if rt.loading.as_ref() == Some(&path) {
                            rt.loading = None;
                        }
                        if rt.pending_session.as_ref().is_some_and(|(p, _)| *p == path) {
                            rt.pending_session = None;
                        }
                    }
                    Some(RequestKind::Run(id)) => {
                        if rt.in_flight.as_ref().is_some_and(|f| f.id == id) {
                            rt.in_flight = None;
                        }
                        // It may have panicked while continuing the text.
                        if rt.result.as_ref().is_some_and(|r| r.id == id) {
                            for c in rt.continuations.iter_mut().filter(|c| c.is_none()) {
                                *c = Some(Vec::new());
                            }
                        }
                    }
                    Some(RequestKind::Effect(r)) => {
                        if rt.effect.as_ref().is_some_and(|e| e.request() == r) {
                            rt.effect = Some(EffectState::Failed(r, message.clone()));
                        }
                    }
                    Some(RequestKind::Card(serial)) => {
                        rt.receptive.fail_query(serial, message.clone());
                        rt.patterns.answer(serial, Err(message.clone()));
                    }
                    Some(RequestKind::Job) | None => {}
                }
                self.fail(format!(
                    "Internal error while {request}: {message}. The model thread recovered; \
                     please report this."
                ));
            }
            Response::Card { serial, answer } => {
                let r = &mut rt.receptive;
                let error = answer.as_ref().err().cloned();
                match answer {
                    Ok(CardAnswer::Rows(rows)) => {
                        if let Some(c) = r.card.as_mut().filter(|c| c.rows.serial() == Some(serial))
                        {
                            c.rows =
                                receptive::Pending::Ready(Arc::new(rows.into_iter().collect()));
                        }
                    }
                    Ok(CardAnswer::Occlusion(o)) => {
                        if let Some(s) = r
                            .occlusion
                            .as_mut()
                            .filter(|s| s.result.serial() == Some(serial))
                        {
                            s.result = receptive::Pending::Ready(o);
                        }
                    }
                    Ok(CardAnswer::Pattern(p)) => rt.patterns.answer(serial, Ok(p)),
                    Err(_) => {}
                }
                if let Some(m) = error {
                    r.fail_query(serial, m.clone());
                    rt.patterns.answer(serial, Err(m));
                }
            }
            Response::JobDone { name, message } => {
                self.fail(format!("{name}: {message}"));
            }
            Response::JobAnswered { .. } => {}
        }
    }

    /// Brings the derived views up to date.
    pub fn refresh_derived(&mut self) {
        let layers = self.runtime.layers();
        let key = self.effects_key();
        let c = &self.runtime.circuits;
        let effects = key
            .as_ref()
            .and_then(|k| c.effects_for(k))
            .map(|e| derived::RankEffects {
                serial: c.effects_serial,
                report: &e.report,
            });
        // The selected head's pattern, when it was computed on demand for this probe.
        let on_demand = self
            .state
            .selection
            .and_then(|f| self.runtime.patterns.get(f))
            .and_then(|e| match &e.state {
                receptive::Pending::Ready(computed) => Some(derived::OnDemandPattern {
                    serial: e.serial,
                    computed,
                }),
                _ => None,
            });
        self.derived.refresh(
            &self.state,
            self.runtime.result.as_ref(),
            layers,
            &self.runtime.vocab,
            self.runtime.receptive.index.index().map(|i| &**i),
            effects,
            on_demand,
        );
    }

    /// The heatmap as shown, for export.
    pub fn heatmap_data(&mut self) -> Option<export::HeatmapData> {
        self.refresh_derived();
        let result = self.runtime.result.as_ref()?;
        Some(export::HeatmapData {
            rows: self
                .derived
                .rows
                .iter()
                .map(|r| r.feature.label())
                .collect(),
            // As shown: a byte fragment as <E8>, not a replacement character.
            cols: result.tokens.iter().map(text::token_label).collect(),
            values: self.derived.rows.iter().map(|r| r.values.clone()).collect(),
            scale: self.derived.row_scale,
            diverging: self.derived.rows_diverging,
        })
    }

    /// The output panel's content as JSON.
    pub fn output_json(&mut self) -> Option<serde_json::Value> {
        self.refresh_derived();
        let r = self.runtime.result.as_ref()?;
        let side = |s: &worker::Side, cont: &Option<Vec<Token>>| {
            serde_json::json!({
                "top_next": s.summary.top_next,
                "token_nll": s.summary.token_nll,
                "mean_nll": s.summary.mean_nll,
                "continuation": cont.as_ref().map(|c| c.iter().map(|t| t.text.as_str()).collect::<String>()),
            })
        };
        let next = &self.derived.next;
        Some(serde_json::json!({
            "model": self.runtime.model,
            "probe": self.state.probe,
            "tokens": r.tokens,
            "interventions": self.state.interventions.iter().map(crate::probe::describe).collect::<Vec<_>>(),
            "baseline": side(&r.baseline, &self.runtime.continuations[0]),
            "intervened": r.intervened.as_ref().map(|s| side(s, &self.runtime.continuations[1])),
            "kl_from_baseline": r.kl,
            "next_at_position": {
                "position": next.position,
                "baseline": next.baseline,
                "intervened": next.intervened,
                "kl": next.kl,
            },
        }))
    }

    pub fn export_heatmap(&mut self, path: &Path, png: bool) {
        let Some(data) = self.heatmap_data() else {
            return;
        };
        let written = if png {
            export::heatmap_png(path, &data)
        } else {
            export::heatmap_csv(path, &data)
        };
        if let Err(e) = written {
            self.fail(e);
        }
    }

    pub fn export_output(&mut self, path: &Path) {
        let Some(json) = self.output_json() else {
            return;
        };
        if let Err(e) = crate::npy::write_json(path, &json) {
            self.fail(format!("cannot write {}: {e}", path.display()));
        }
    }

    /// Carries out one command: the one place where views' wishes change the app.
    pub fn apply(&mut self, command: Command, now: f64) {
        match command {
            Command::LoadModel(path) => self.load_model(path),
            Command::FetchDefaultModel => self.start_fetch(),
            Command::CancelFetch => {
                if let Some(f) = &self.runtime.fetching {
                    self.runtime.jobs.cancel(f.job);
                }
            }
            Command::PauseJob(id) => {
                self.runtime.jobs.pause(id);
            }
            Command::ResumeJob(id) => {
                self.runtime.jobs.resume(id);
            }
            Command::CancelJob(id) => {
                self.runtime.jobs.cancel(id);
            }
            Command::ClearJobs(Some(id)) => {
                self.runtime.jobs.clear(id);
            }
            Command::ClearJobs(None) => self.runtime.jobs.clear_finished(),
            Command::Run => self.request_run(now),
            Command::ProbeEdited => self.edited_at = Some(now),
            Command::LoadStimulus(text) => {
                self.state.probe = text;
                self.request_run(now);
            }
            Command::SetInterventions(ivs) => self.set_interventions(ivs, now),
            Command::SetPrecision(p) => self.set_precision(p, now),
            Command::SetFeatureOp(f, op) => self.set_feature_op(f, op, now),
            Command::Select(f) => self.select(f),
            Command::SetOutputPosition(p) => {
                self.state.output_position = p;
                // A head's effect, or one "on this probe", is read at the output position.
                self.request_effect();
            }
            Command::RefreshEffect => self.request_effect(),
            Command::StartScan { all } => self.start_scan(all, None),
            Command::StartDictionaryScan => {
                let dict = self.runtime.dictionaries.current.clone();
                if dict.is_some() {
                    self.start_scan(false, dict);
                }
            }
            Command::UseIndex(path) => {
                self.runtime.receptive.use_index(path);
                self.refresh_receptive();
            }
            Command::SearchFeatures(query) => self.runtime.receptive.search(&query),
            Command::SetOcclusionDelete(delete) => {
                self.runtime.occlusion_delete = delete;
                self.refresh_receptive();
            }
            Command::Occlude => {
                self.runtime.occlusion_asked = true;
                self.runtime.receptive.occlusion = None;
                self.refresh_receptive();
            }
            Command::ComputePattern(f) => {
                self.sync_patterns();
                let serial = self.runtime.receptive.next_serial();
                if let Some(query) = self.runtime.patterns.ask(f, serial) {
                    self.send(Request::Card(query));
                }
            }
            Command::ShowExperiments(open) => {
                self.state.experiments_open = open;
                if open && self.runtime.experiments.protocol.is_none() {
                    let name = self.state.experiment.clone();
                    self.runtime.experiments.choose(&name);
                }
            }
            Command::ChooseProtocol(name) => {
                self.state.experiments_open = true;
                self.state.experiment = name.clone();
                self.runtime.experiments.choose(&name);
            }
            Command::RunExperiment => {
                self.state.experiments_tab = state::ExperimentsTab::Result;
                self.start_experiment();
            }
            Command::RunDose => {
                self.state.experiments_tab = state::ExperimentsTab::Dose;
                self.start_dose();
            }
            Command::FitDiscriminator(which) => self.start_discriminator(which),
            Command::ShowCircuits(open) => self.state.circuits_open = open,
            Command::RunLens => {
                self.state.circuits.tab = state::CircuitsTab::Lens;
                self.start_lens();
            }
            Command::RunAttribution => {
                self.state.circuits.tab = state::CircuitsTab::Attribution;
                self.start_attribution();
            }
            Command::RunTrace => {
                self.state.circuits.tab = state::CircuitsTab::Trace;
                self.start_trace();
            }
            Command::PatchCell { layer, position } => self.patch_cell(layer, position, now),
            Command::ShowDictionary(open) => self.state.dictionary_open = open,
            Command::TrainDictionary => self.start_dictionary_training(),
            Command::DictionaryEncoding(e) => {
                let layers = self.runtime.layers();
                self.runtime.dictionaries.set_encoding(e, layers);
            }
            Command::DecomposeWord => self.start_decompose(),
            Command::EditAtom { hook, atom, edit } => self.edit_atom(hook, atom, edit, now),
            Command::EditFeature(f, edit) => self.edit_dictionary_feature(f, edit, now),
            Command::FitTrace(fit) => {
                self.state.circuits.fit = Some(fit);
                self.state.circuits.tab = state::CircuitsTab::Trace;
                self.start_trace();
            }
            Command::PinTarget(token) => {
                self.state.circuits.target = token;
                self.state.circuits_open = true;
            }
            Command::Undo => self.undo(now),
            Command::AskFile(action) => self.dialogs.ask(action, self.state.builtin_file_dialog),
            Command::FileChosen(action, path) => match action {
                FileAction::OpenModel | FileAction::OpenModelFolder => self.load_model(path),
                FileAction::OpenSession => self.open_session(&path, now),
                FileAction::SaveSession => self.save_session(&path),
                FileAction::ExportHeatmapPng => self.export_heatmap(&path, true),
                FileAction::ExportHeatmapCsv => self.export_heatmap(&path, false),
                FileAction::ExportOutputJson => self.export_output(&path),
                FileAction::ScanTextFile | FileAction::ScanTextFolder => self.start_text_scan(path),
                FileAction::OpenProtocol => {
                    self.state.experiments_open = true;
                    self.runtime.experiments.open(&path);
                }
                FileAction::ExportReport => self.runtime.experiments.export(&path),
                FileAction::ExportDose => self.runtime.experiments.export_dose(&path),
                FileAction::SaveDiscriminator => self.runtime.experiments.save_discriminator(&path),
                FileAction::OpenDictionary | FileAction::ImportSaelens => {
                    self.state.dictionary_open = true;
                    let layers = self.runtime.layers();
                    self.runtime.dictionaries.open(&path, layers);
                }
                FileAction::ExportSaelens => self.runtime.dictionaries.export_saelens(&path),
            },
            Command::DismissError => self.error = None,
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context, commands: &mut Vec<Command>) {
        let (run, undo, escape) = ctx.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter),
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Z),
                i.consume_key(egui::Modifiers::NONE, egui::Key::Escape),
            )
        });
        if run {
            commands.push(Command::Run);
        }
        if undo {
            commands.push(Command::Undo);
        }
        if escape && !self.dialogs.is_open() {
            commands.push(Command::Select(None));
            commands.push(Command::DismissError);
        }
    }
}

impl eframe::App for HubelApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let now = ctx.input(|i| i.time);
        self.drain_responses(now);
        let mut commands = Vec::new();
        self.shortcuts(&ctx, &mut commands);
        if let Some(t) = self.edited_at {
            let wait = DEBOUNCE_SECS - (now - t);
            if wait <= 0.0 {
                self.request_run(now);
            } else {
                ctx.request_repaint_after(std::time::Duration::from_secs_f64(wait));
            }
        }
        if self.runtime.fetching.is_some()
            || self.runtime.loading.is_some()
            || self.runtime.experiments.exporting.is_some()
        {
            // Poll while a long job reports progress; idle otherwise.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        self.refresh_derived();
        let view = panels::ViewCtx {
            runtime: &self.runtime,
            derived: &self.derived,
            error: self.error.as_deref(),
            cjk: &self.cjk,
        };
        self.views.ui(ui, &mut self.state, &view, &mut commands);
        if let Some((action, path)) = self.dialogs.ui(&ctx) {
            commands.push(Command::FileChosen(action, path));
        }
        for c in commands {
            self.apply(c, now);
        }
        // After the views: a ranking chosen this frame asks for its effects now.
        self.update_effects();
        if self.saved.as_ref() != Some(&self.state) {
            ctx.request_repaint_after(SAVE_INTERVAL + std::time::Duration::from_millis(200));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.state);
        self.saved = Some(self.state.clone());
    }

    fn auto_save_interval(&self) -> std::time::Duration {
        SAVE_INTERVAL
    }
}

/// Opens the viewer window. Settings are kept in [`assets::settings_file`] (the platform's data
/// directory, or the one `--data-dir` / `$HUBEL_ASSETS` names).
pub fn run_native() -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Hubel")
        // Matches the desktop entry (packaging/linux/hubel.desktop) on Wayland.
        .with_app_id("hubel")
        .with_inner_size([1400.0, 900.0])
        .with_min_inner_size([800.0, 560.0]);
    match icon::window_icon() {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(e) => eprintln!("warning: no window icon: {e}"),
    }
    let settings =
        assets::settings_file(&assets::data_dir(), assets::platform_data_dir().as_deref());
    if let Some(dir) = settings.as_deref().and_then(Path::parent) {
        // eframe writes the file but does not create its folder.
        let _ = std::fs::create_dir_all(dir);
    }
    let options = eframe::NativeOptions {
        viewport,
        persistence_path: settings,
        ..Default::default()
    };
    eframe::run_native(
        "Hubel",
        options,
        Box::new(|cc| Ok(Box::new(HubelApp::new(cc)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
