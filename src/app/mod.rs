//! The viewer: type a probe, see every layer respond, click a feature, ablate or steer it, watch
//! the output change. Never touches a tensor: the model lives on the worker thread
//! ([`worker`]), and this module only draws the plain data it sends back.
//!
//! Layout: menu and interventions bar on top, status line at the bottom, probe on the left,
//! feature card on the right, output below the maps, and the layer map with the chosen layer's
//! heatmap in the centre. The saved part of the state is [`AppState`] (`#[serde(default)]`, so
//! old settings survive new fields).

pub mod colors;
pub mod export;
pub mod fonts;
mod panels;
pub mod text;
pub mod tour;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analysis::maps::{self, Measure};
use crate::assets::{self, Progress};
use crate::features::{Basis, FeatureId};
use crate::hooks::{ActivationRecord, Intervention, Op};
use crate::model::{ModelInfo, Token};
use crate::session::Session;
use worker::{Request, Response, RunId, RunRequest, RunResult, WorkerHandle};

/// How long typing must pause before the probe runs.
const DEBOUNCE_SECS: f64 = 0.3;

/// Which run the maps show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewMode {
    Baseline,
    Intervened,
    Difference,
}

/// What survives a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppState {
    pub model_path: Option<PathBuf>,
    pub probe: String,
    pub top_k: usize,
    pub measure: Measure,
    pub basis: Basis,
    pub layer: usize,
    pub continuation: usize,
    pub view: ViewMode,
    pub layer_map_open: bool,
}

impl Default for AppState {
    fn default() -> Self {
        AppState {
            model_path: None,
            probe: "She left the party early.".into(),
            top_k: 16,
            measure: Measure::StrongestNeuron,
            basis: Basis::Neurons,
            layer: 0,
            continuation: 12,
            view: ViewMode::Intervened,
            layer_map_open: true,
        }
    }
}

/// A fetch in progress.
struct Fetching {
    cancel: Arc<AtomicBool>,
    progress: Option<Progress>,
}

/// What a neuron writes to the output.
pub struct Effect {
    pub feature: FeatureId,
    pub promoted: Vec<(String, f32)>,
    pub suppressed: Vec<(String, f32)>,
}

/// One row of the layer heatmap.
pub struct FeatureRow {
    pub feature: FeatureId,
    pub values: Vec<f32>,
}

/// Derived views, recomputed only when their inputs change.
#[derive(Default)]
struct Derived {
    key: Option<(
        RunId,
        usize,
        Basis,
        usize,
        ViewMode,
        Measure,
        Option<FeatureId>,
    )>,
    rows: Vec<FeatureRow>,
    row_scale: f32,
    map: Vec<Vec<Option<f32>>>,
    map_scale: f32,
}

pub struct HubelApp {
    pub state: AppState,
    worker: WorkerHandle,
    pub model: Option<ModelInfo>,
    loading: Option<PathBuf>,
    fetching: Option<Fetching>,
    next_id: RunId,
    in_flight: Option<(RunId, Arc<AtomicBool>, f64)>,
    pub result: Option<RunResult>,
    pub continuations: [Option<Vec<Token>>; 2],
    pub interventions: Vec<Intervention>,
    undo: Vec<Vec<Intervention>>,
    pub selection: Option<FeatureId>,
    effect: Option<Effect>,
    /// The last failure, shown in the window until dismissed.
    pub error: Option<String>,
    /// When the probe text last changed and has not run yet.
    edited_at: Option<f64>,
    steer_alpha: f32,
    clamp_k: f32,
    cjk: fonts::CjkFont,
    derived: Derived,
    /// Wall time from a run request to its result, for the status line.
    pub last_round_trip_ms: Option<f64>,
    pub runs_done: u64,
    /// A session waiting for its model to load.
    pending_session: Option<Session>,
}

impl HubelApp {
    /// The app as eframe starts it: restores the saved state and reopens the last model.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let state: AppState = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        let mut app = Self::with_state(&cc.egui_ctx, state);
        app.cjk = fonts::install(&cc.egui_ctx);
        if let Some(path) = app.state.model_path.clone() {
            if path.exists() {
                app.load_model(path);
            }
        } else {
            // A default model fetched earlier is opened without asking.
            let default = assets::default_model_path(&assets::assets_dir());
            if default.is_file() {
                app.load_model(default);
            }
        }
        app
    }

    /// The app with a given state and no model (tests and tools load one explicitly).
    pub fn with_state(ctx: &egui::Context, state: AppState) -> Self {
        let repaint_ctx = ctx.clone();
        HubelApp {
            state,
            worker: WorkerHandle::spawn(move || repaint_ctx.request_repaint()),
            model: None,
            loading: None,
            fetching: None,
            next_id: 1,
            in_flight: None,
            result: None,
            continuations: [None, None],
            interventions: Vec::new(),
            undo: Vec::new(),
            selection: None,
            effect: None,
            error: None,
            edited_at: None,
            steer_alpha: 4.0,
            clamp_k: 2.0,
            cjk: fonts::CjkFont::Missing("fonts not set up".into()),
            derived: Derived::default(),
            last_round_trip_ms: None,
            runs_done: 0,
            pending_session: None,
        }
    }

    /// Loads a model on the worker; the UI stays live and shows a spinner.
    pub fn load_model(&mut self, path: PathBuf) {
        self.loading = Some(path.clone());
        self.worker.send(Request::Load(path));
    }

    pub fn is_busy(&self) -> bool {
        self.loading.is_some() || self.in_flight.is_some() || self.fetching.is_some()
    }

    fn start_fetch(&mut self) {
        let cancel = Arc::new(AtomicBool::new(false));
        self.fetching = Some(Fetching {
            cancel: cancel.clone(),
            progress: None,
        });
        self.worker.send(Request::Fetch { cancel });
    }

    /// Runs the probe with the current interventions; a run in flight is cancelled.
    pub fn request_run(&mut self, now: f64) {
        self.edited_at = None;
        if self.model.is_none() {
            return;
        }
        if self.state.probe.trim().is_empty() {
            // Nothing to run while the box is empty: the maps wait for text, no error.
            if let Some((_, cancel, _)) = self.in_flight.take() {
                cancel.store(true, Ordering::Relaxed);
            }
            self.result = None;
            return;
        }
        if let Some((_, cancel, _)) = &self.in_flight {
            cancel.store(true, Ordering::Relaxed);
        }
        let id = self.next_id;
        self.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.in_flight = Some((id, cancel.clone(), now));
        self.worker.send(Request::Run(RunRequest {
            id,
            text: self.state.probe.clone(),
            interventions: self.interventions.clone(),
            continuation: self.state.continuation,
            cancel,
        }));
    }

    /// Replaces the interventions (undoably) and re-runs.
    pub fn set_interventions(&mut self, interventions: Vec<Intervention>, now: f64) {
        if interventions == self.interventions {
            return;
        }
        let old = std::mem::replace(&mut self.interventions, interventions);
        self.undo.push(old);
        self.request_run(now);
    }

    pub fn undo(&mut self, now: f64) {
        if let Some(previous) = self.undo.pop() {
            self.interventions = previous;
            self.request_run(now);
        }
    }

    /// The intervention on `feature`, if any.
    pub fn intervention_on(&self, feature: FeatureId) -> Option<usize> {
        self.interventions
            .iter()
            .position(|iv| FeatureId::of_intervention(iv) == Some(feature))
    }

    /// Adds, replaces or (with `None`) removes the intervention on `feature`.
    pub fn set_feature_op(&mut self, feature: FeatureId, op: Option<Op>, now: f64) {
        let mut next = self.interventions.clone();
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
        self.selection = feature;
        if let Some(f) = feature {
            self.state.layer = f.layer;
            if self.effect.as_ref().is_none_or(|e| e.feature != f) {
                self.effect = None;
                self.worker.send(Request::Effect(f));
            }
        }
    }

    /// Opens a session file; a bad file leaves everything as it was and says why.
    pub fn open_session(&mut self, path: &Path, now: f64) {
        match Session::load(path) {
            Ok(s) => {
                if let Some(model) = &s.model_path {
                    if self.state.model_path.as_ref() != Some(model) {
                        // Apply the rest once that model is loaded (loading resets the edits).
                        self.load_model(model.clone());
                        self.pending_session = Some(s);
                        return;
                    }
                }
                self.apply_session(s, now);
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn apply_session(&mut self, s: Session, now: f64) {
        self.state.probe = s.probe;
        self.state.basis = s.basis;
        if let Some(layer) = s.layer {
            self.state.layer = layer;
        }
        self.undo
            .push(std::mem::replace(&mut self.interventions, s.interventions));
        self.select(s.selection);
        self.error = None;
        self.request_run(now);
    }

    pub fn session(&self) -> Session {
        Session {
            model_path: self.state.model_path.clone(),
            probe: self.state.probe.clone(),
            interventions: self.interventions.clone(),
            selection: self.selection,
            layer: Some(self.state.layer),
            basis: self.state.basis,
            ..Session::default()
        }
    }

    pub fn save_session(&mut self, path: &Path) {
        if let Err(e) = self.session().save(path) {
            self.error = Some(e.to_string());
        }
    }

    /// Handles everything the worker sent since the last frame.
    pub fn drain_responses(&mut self, now: f64) {
        while let Ok(response) = self.worker.rx.try_recv() {
            match response {
                Response::Loaded(info) => {
                    let path = self.loading.take().unwrap_or_else(|| info.path.clone());
                    self.state.model_path = Some(path);
                    if self.state.layer >= info.layers {
                        self.state.layer = 0;
                    }
                    self.model = Some(info);
                    self.result = None;
                    self.error = None;
                    self.selection = None;
                    self.interventions.clear();
                    self.undo.clear();
                    match self.pending_session.take() {
                        Some(session) => self.apply_session(session, now),
                        None => self.request_run(now),
                    }
                }
                Response::LoadFailed { path, message } => {
                    self.loading = None;
                    if self.state.model_path.as_ref() == Some(&path) && self.model.is_none() {
                        self.state.model_path = None;
                    }
                    self.error = Some(format!("Could not open the model: {message}"));
                }
                Response::FetchProgress(p) => {
                    if let Some(f) = &mut self.fetching {
                        f.progress = Some(p);
                    }
                }
                Response::Fetched(path) => {
                    self.fetching = None;
                    self.loading = Some(path);
                }
                Response::FetchFailed(message) => {
                    self.fetching = None;
                    self.error = Some(format!("Could not fetch the default model: {message}"));
                }
                Response::Run(result) => {
                    let Some((id, _, sent)) = &self.in_flight else {
                        continue;
                    };
                    if result.id != *id {
                        continue; // stale
                    }
                    self.last_round_trip_ms = Some((now - sent) * 1e3);
                    self.in_flight = None;
                    self.runs_done += 1;
                    let same_text = self
                        .result
                        .as_ref()
                        .is_some_and(|r| Arc::ptr_eq(&r.baseline, &result.baseline));
                    if !same_text {
                        self.continuations = [None, None];
                        if let Some(f) = self.selection {
                            if f.layer >= self.model.as_ref().map_or(0, |m| m.layers) {
                                self.selection = None;
                            }
                        }
                    }
                    self.continuations[1] = None;
                    self.error = None;
                    self.result = Some(*result);
                }
                Response::Continuation {
                    id,
                    intervened,
                    tokens,
                } => {
                    if self.result.as_ref().is_some_and(|r| r.id == id) {
                        self.continuations[usize::from(intervened)] = Some(tokens);
                    }
                }
                Response::RunFailed { id, message } => {
                    if self.in_flight.as_ref().is_some_and(|(i, _, _)| *i == id) {
                        self.in_flight = None;
                        self.error = Some(message);
                    }
                }
                Response::Effect {
                    feature,
                    promoted,
                    suppressed,
                } => {
                    if self.selection == Some(feature) {
                        self.effect = Some(Effect {
                            feature,
                            promoted,
                            suppressed,
                        });
                    }
                }
            }
        }
    }

    /// The record a map shows for the current view mode (and, for differences, the baseline).
    fn viewed(&self) -> Option<(&ActivationRecord, Option<&ActivationRecord>)> {
        let r = self.result.as_ref()?;
        let intervened = r.intervened.as_ref().map(|s| &s.record);
        Some(match (self.state.view, intervened) {
            (ViewMode::Baseline, _) | (_, None) => (&r.baseline.record, None),
            (ViewMode::Intervened, Some(i)) => (i, None),
            (ViewMode::Difference, Some(i)) => (i, Some(&r.baseline.record)),
        })
    }

    /// Recomputes the heatmap rows and the layer map when their inputs changed.
    fn refresh_derived(&mut self) {
        let (Some(result), Some(model)) = (&self.result, &self.model) else {
            self.derived = Derived::default();
            return;
        };
        let key = (
            result.id,
            self.state.layer,
            self.state.basis,
            self.state.top_k,
            self.state.view,
            self.state.measure,
            self.selection,
        );
        if self.derived.key == Some(key) {
            return;
        }
        let Some((record, minus)) = self.viewed() else {
            return;
        };
        // Rows are ranked on the baseline, so they stay put when an edit changes the values.
        let features = maps::top_features(
            &result.baseline.record,
            self.state.layer,
            self.state.basis,
            self.state.top_k,
        );
        let values_of = |f: FeatureId| {
            let v = maps::feature_activations(record, f);
            match minus {
                Some(base) => v
                    .iter()
                    .zip(maps::feature_activations(base, f))
                    .map(|(a, b)| a - b)
                    .collect(),
                None => v,
            }
        };
        let rows: Vec<FeatureRow> = features
            .into_iter()
            .map(|f| FeatureRow {
                feature: f,
                values: values_of(f),
            })
            .collect();
        let row_scale =
            maps::robust_scale(rows.iter().flat_map(|r| r.values.iter().copied()), 0.98);
        let mut map = maps::layer_map(record, self.state.measure, model.layers, self.selection);
        if let Some(base) = minus {
            let base_map = maps::layer_map(base, self.state.measure, model.layers, self.selection);
            for (row, base_row) in map.iter_mut().zip(base_map) {
                for (v, b) in row.iter_mut().zip(base_row) {
                    if let (Some(v), Some(b)) = (v.as_mut(), b) {
                        *v -= b;
                    }
                }
            }
        }
        let map_scale = maps::robust_scale(map.iter().flatten().flatten().copied(), 0.98);
        self.derived = Derived {
            key: Some(key),
            rows,
            row_scale,
            map,
            map_scale,
        };
    }

    /// The heatmap as shown, for export.
    pub fn heatmap_data(&mut self) -> Option<export::HeatmapData> {
        self.refresh_derived();
        let result = self.result.as_ref()?;
        Some(export::HeatmapData {
            rows: self
                .derived
                .rows
                .iter()
                .map(|r| r.feature.label())
                .collect(),
            cols: result.tokens.iter().map(|t| t.text.clone()).collect(),
            values: self.derived.rows.iter().map(|r| r.values.clone()).collect(),
            scale: self.derived.row_scale,
        })
    }

    /// The output panel's content as JSON.
    pub fn output_json(&self) -> Option<serde_json::Value> {
        let r = self.result.as_ref()?;
        let side = |s: &worker::Side, cont: &Option<Vec<Token>>| {
            serde_json::json!({
                "top_next": s.top.iter().map(|(id, t, p)| serde_json::json!({"id": id, "token": t, "prob": p})).collect::<Vec<_>>(),
                "token_nll": s.token_nll,
                "mean_nll": crate::analysis::mean(&s.token_nll),
                "continuation": cont.as_ref().map(|c| c.iter().map(|t| t.text.as_str()).collect::<String>()),
            })
        };
        Some(serde_json::json!({
            "model": self.model.as_ref().map(|m| &m.name),
            "probe": self.state.probe,
            "tokens": r.tokens,
            "interventions": self.interventions.iter().map(crate::probe::describe).collect::<Vec<_>>(),
            "baseline": side(&r.baseline, &self.continuations[0]),
            "intervened": r.intervened.as_ref().map(|s| side(s, &self.continuations[1])),
            "kl_from_baseline": r.kl,
        }))
    }

    fn shortcuts(&mut self, ctx: &egui::Context, now: f64) {
        let (run, undo, escape) = ctx.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter),
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Z),
                i.consume_key(egui::Modifiers::NONE, egui::Key::Escape),
            )
        });
        if run {
            self.request_run(now);
        }
        if undo {
            self.undo(now);
        }
        if escape {
            self.selection = None;
            self.error = None;
        }
    }
}

impl eframe::App for HubelApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let now = ctx.input(|i| i.time);
        self.drain_responses(now);
        self.shortcuts(&ctx, now);
        if let Some(t) = self.edited_at {
            let wait = DEBOUNCE_SECS - (now - t);
            if wait <= 0.0 {
                self.request_run(now);
            } else {
                ctx.request_repaint_after(std::time::Duration::from_secs_f64(wait));
            }
        }
        if self.fetching.is_some() || self.loading.is_some() {
            // Poll while a long job reports progress; idle otherwise.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        self.refresh_derived();
        self.menu_bar_ui(ui, now);
        self.status_bar_ui(ui);
        if self.model.is_none() {
            self.welcome_ui(ui);
            return;
        }
        self.probe_panel_ui(ui, now);
        self.feature_card_ui(ui, now);
        self.output_panel_ui(ui);
        egui::CentralPanel::default().show(ui, |ui| {
            self.interventions_bar_ui(ui, now);
            ui.separator();
            egui::ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    self.layer_map_ui(ui);
                    ui.separator();
                    self.heatmap_ui(ui, now);
                });
        });
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.state);
    }
}

/// Opens the viewer window.
pub fn run_native() -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Hubel")
            .with_inner_size([1400.0, 900.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Hubel",
        options,
        Box::new(|cc| Ok(Box::new(HubelApp::new(cc)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
