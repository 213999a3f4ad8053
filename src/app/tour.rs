//! Scripted runs of the real window: `hubel --screenshots DIR` walks through the app and saves
//! what it shows (welcome, a probe, a feature card, an ablation diff, the fast path with its
//! fidelity meter, Chinese text, the Experiments window on each built-in protocol and a
//! dose–response curve); `hubel --bench-ui` measures launch-to-first-heatmap, clicks
//! that turn an ablation on (a recompute) and off (the cached baseline) on the exact path and then
//! on the fast path, frame times and idle CPU, inside the app, and prints them as JSON. Both close
//! the window when done.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{HubelApp, MeterState};
use crate::analysis::Fidelity;
use crate::features::FeatureId;
use crate::hooks::Op;
use crate::model::Precision;

/// Clicks of each kind (on, off) per precision.
const CLICKS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Screenshots,
    BenchUi,
}

pub struct Tour {
    app: HubelApp,
    mode: Mode,
    model: PathBuf,
    dir: PathBuf,
    step: usize,
    /// Frames to wait before acting, so the window shows the latest state.
    settle: u32,
    shot_pending: Arc<Mutex<Option<Result<(), String>>>>,
    waiting_shot: bool,
    started: Instant,
    feature: Option<FeatureId>,
    bench: BenchUi,
}

#[derive(Default, Debug, serde::Serialize)]
pub struct BenchUi {
    pub launch_to_first_heatmap_ms: f64,
    pub probe_tokens: usize,
    /// The neuron whose ablation the clicks turn on and off.
    pub feature: String,
    /// Clicks on the exact path (the default), then on the fast path.
    pub exact: Clicks,
    pub fast: Clicks,
    /// From switching to the fast path (its 4-bit weights made by a job and by the first run)
    /// to the fast result on screen.
    pub fast_switch_ms: f64,
    /// The fidelity meter on the probe (no edits) once the fast path was on.
    pub fidelity: Option<Fidelity>,
    pub frame_ms_idle_median: f64,
    pub frame_ms_in_flight_median: f64,
    pub idle_cpu_percent: f64,
    #[serde(skip)]
    frames_idle: Vec<f64>,
    #[serde(skip)]
    frames_busy: Vec<f64>,
    #[serde(skip)]
    clicks: usize,
    #[serde(skip)]
    last_on: bool,
    #[serde(skip)]
    switched_at: Option<Instant>,
    #[serde(skip)]
    idle_since: Option<(Instant, f64)>,
}

/// Click to output at one precision: a click that turns the ablation on (the worker recomputes
/// from the ablated layer) and one that turns it off (the cached baseline, nothing recomputed),
/// each as the whole round trip (click to the frame that shows it) and the worker's part of it.
#[derive(Default, Debug, serde::Serialize)]
pub struct Clicks {
    pub on_click_median_ms: f64,
    pub off_click_median_ms: f64,
    pub on_click_ms: Vec<f64>,
    pub off_click_ms: Vec<f64>,
    pub on_click_worker_median_ms: f64,
    pub off_click_worker_median_ms: f64,
    pub on_click_worker_ms: Vec<f64>,
    pub off_click_worker_ms: Vec<f64>,
    /// Blocks an on-click recomputed.
    pub layers_recomputed: usize,
}

impl Clicks {
    fn done(&self) -> bool {
        self.on_click_ms.len() >= CLICKS && self.off_click_ms.len() >= CLICKS
    }

    fn finish(&mut self) {
        self.on_click_median_ms = median(&self.on_click_ms);
        self.off_click_median_ms = median(&self.off_click_ms);
        self.on_click_worker_median_ms = median(&self.on_click_worker_ms);
        self.off_click_worker_median_ms = median(&self.off_click_worker_ms);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// User + system CPU seconds of this process (Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted from after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

impl Tour {
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        mode: Mode,
        model: PathBuf,
        dir: PathBuf,
        started: Instant,
    ) -> Self {
        let mut app = HubelApp::with_state(&cc.egui_ctx, super::AppState::default());
        app.cjk = super::fonts::install(&cc.egui_ctx);
        // Screenshots show what a user of the desktop dialog-less machine gets.
        app.state.builtin_file_dialog = true;
        if mode == Mode::BenchUi {
            app.state.continuation = 0;
            app.load_model(model.clone());
        }
        Tour {
            app,
            mode,
            model,
            dir,
            step: 0,
            settle: 0,
            shot_pending: Arc::new(Mutex::new(None)),
            waiting_shot: false,
            started,
            feature: None,
            bench: BenchUi::default(),
        }
    }

    fn shot(&mut self, ctx: &egui::Context, name: &str) {
        let path = self.dir.join(format!("{name}.png"));
        let done = self.shot_pending.clone();
        let repaint = ctx.clone();
        ctx.request_screenshot(move |image| {
            let result = super::export::screenshot_png(&path, &image);
            if let Ok(mut slot) = done.lock() {
                *slot = Some(result);
            }
            repaint.request_repaint();
        });
        self.waiting_shot = true;
    }

    fn ready(&mut self, cond: bool) -> bool {
        if !cond || self.app.is_busy() {
            self.settle = 0;
            return false;
        }
        self.settle += 1;
        self.settle > 15
    }

    fn top_feature(&mut self) -> Option<FeatureId> {
        self.app.refresh_derived();
        self.app.derived.rows.first().map(|r| r.feature)
    }

    /// L10N222 where the model has it (the README's example), else the layer's strongest.
    fn card_feature(&mut self) -> Option<FeatureId> {
        let f = FeatureId::neuron(10, 222);
        match &self.app.runtime.model {
            Some(m) if f.check(m).is_ok() => Some(f),
            _ => self.top_feature(),
        }
    }

    fn effect_ready(&self) -> bool {
        matches!(&self.app.runtime.effect, Some(super::EffectState::Ready(e)) if Some(e.request.feature) == self.feature)
    }

    /// The card's corpus part has settled: no index, or its examples' activations and the
    /// occlusion map are in.
    fn receptive_ready(&self) -> bool {
        use super::receptive::{IndexState, Pending};
        let r = &self.app.runtime.receptive;
        match &r.index {
            IndexState::None | IndexState::Loading => false,
            IndexState::Missing | IndexState::Failed(_) => true,
            IndexState::Ready { .. } => {
                r.card
                    .as_ref()
                    .is_some_and(|c| !matches!(c.rows, Pending::Idle | Pending::Waiting(_)))
                    && r.occlusion
                        .as_ref()
                        .is_none_or(|o| !matches!(o.result, Pending::Idle | Pending::Waiting(_)))
            }
        }
    }

    /// The experiment asked for has its result on screen.
    fn dictionary_trained(&self) -> bool {
        let d = &self.app.runtime.dictionaries;
        !d.is_training() && d.train.result().is_some() && !d.snapshot
    }

    fn decomposed(&self) -> bool {
        let d = &self.app.runtime.dictionaries;
        !d.decompose.is_running() && d.decompose.last.is_some()
    }

    fn experiment_done(&self) -> bool {
        let ex = &self.app.runtime.experiments;
        !ex.is_running() && ex.result_shown().is_some()
    }

    /// One action per step; a screenshot step changes nothing else, so the picture shows the
    /// state the previous steps settled into.
    fn screenshots_step(&mut self, ctx: &egui::Context, now: f64) {
        let step = self.step;
        let advance = match step {
            0 if self.ready(true) => {
                self.shot(ctx, "welcome");
                true
            }
            1 => {
                self.app.load_model(self.model.clone());
                true
            }
            2 if self.ready(
                self.app.runtime.result.is_some() && self.app.runtime.continuations[0].is_some(),
            ) =>
            {
                let layers = self.app.runtime.layers();
                self.app.state.layer = 10.min(layers - 1);
                true
            }
            3 if self.ready(true) => {
                self.shot(ctx, "main");
                true
            }
            4 => {
                self.feature = self.card_feature();
                self.app.select(self.feature);
                true
            }
            5 if self.ready(self.effect_ready() && self.receptive_ready()) => {
                self.shot(ctx, "feature_card");
                true
            }
            6 => {
                if let Some(f) = self.feature {
                    self.app.set_feature_op(f, Some(Op::Zero), now);
                }
                true
            }
            7 if self.ready(
                self.app
                    .runtime
                    .result
                    .as_ref()
                    .is_some_and(|r| r.intervened.is_some())
                    && self.app.runtime.continuations[1].is_some(),
            ) =>
            {
                self.shot(ctx, "ablation");
                true
            }
            8 => {
                self.app.state.view = super::ViewMode::Difference;
                true
            }
            9 if self.ready(true) => {
                self.shot(ctx, "ablation_diff");
                true
            }
            10 => {
                // The fast path on the ablation: its numbers marked, its fidelity meter.
                self.app.state.view = super::ViewMode::Intervened;
                self.app.set_precision(Precision::Fast, now);
                true
            }
            11 if self.ready(
                self.app.runtime.precision() == Some(Precision::Fast)
                    && matches!(
                        self.app.runtime.fidelity.as_ref().map(|m| &m.state),
                        Some(MeterState::Ready(_))
                    )
                    && self.app.runtime.continuations[1].is_some(),
            ) =>
            {
                self.shot(ctx, "fast_path");
                true
            }
            12 => {
                self.app.apply(super::Command::ClearJobs(None), now);
                self.app.set_precision(Precision::Exact, now);
                self.app.set_interventions(Vec::new(), now);
                self.app.state.view = super::ViewMode::Intervened;
                self.app.state.basis = crate::features::Basis::Heads;
                self.feature = self.top_feature();
                self.app.select(self.feature);
                true
            }
            13 if self.ready(
                self.effect_ready()
                    && self
                        .app
                        .runtime
                        .result
                        .as_ref()
                        .is_some_and(|r| r.intervened.is_none()),
            ) =>
            {
                self.shot(ctx, "head_card");
                true
            }
            14 => {
                self.app.state.basis = crate::features::Basis::Neurons;
                self.app.state.probe = "苹果是一种水果 🍎 An apple is a kind of fruit.".into();
                self.app.select(None);
                self.app.request_run(now);
                true
            }
            15 if self.ready(
                self.app
                    .runtime
                    .result
                    .as_ref()
                    .is_some_and(|r| r.tokens.len() > 8)
                    && self.app.runtime.continuations[0].is_some(),
            ) =>
            {
                self.shot(ctx, "chinese");
                true
            }
            // The Experiments window: each built-in protocol run as a job, then a dose–response.
            16 | 18 | 20 => {
                let name = match step {
                    16 => "sense-left",
                    18 => "induction",
                    _ => "lesion-zh-en",
                };
                self.app.select(None);
                self.app
                    .apply(super::Command::ChooseProtocol(name.into()), now);
                self.app.apply(super::Command::RunExperiment, now);
                true
            }
            17 | 19 | 21 if self.ready(self.experiment_done()) => {
                let name = match step {
                    17 => "experiment_selectivity",
                    19 => "experiment_induction",
                    _ => "experiment_lesion",
                };
                self.shot(ctx, name);
                true
            }
            22 => {
                // Scaling a Chinese-selective neuron of the lesion protocol from 0 to 2 on a
                // Chinese probe: the probe's next token and both held-out sets' losses.
                self.app.state.probe = "今天早上我喝了一杯热".into();
                self.app.request_run(now);
                self.app.state.dose = super::state::DoseForm {
                    units: "L1N971".into(),
                    from: 0.0,
                    to: 2.0,
                    steps: 9,
                    ..Default::default()
                };
                self.app.apply(super::Command::RunDose, now);
                true
            }
            23 if self.ready(
                self.app.runtime.experiments.dose.is_some()
                    && self.app.runtime.experiments.dosing.is_none(),
            ) =>
            {
                self.shot(ctx, "experiment_dose");
                true
            }
            // The Circuits window on the README's example: the lens, the attribution, the trace,
            // and the card of the strongest MLP's strongest neuron.
            24 => {
                self.app.apply(super::Command::ShowExperiments(false), now);
                self.app.state.probe = "The Eiffel Tower is in the city of".into();
                self.app.state.interventions.clear();
                self.app.request_run(now);
                self.app.state.circuits = super::state::CircuitsForm::default();
                self.app.apply(super::Command::ShowCircuits(true), now);
                self.app.apply(super::Command::RunLens, now);
                true
            }
            25 if self.ready(
                self.app.runtime.circuits.lens.result().is_some()
                    && !self.app.runtime.circuits.is_running(),
            ) =>
            {
                self.shot(ctx, "circuits_lens");
                true
            }
            26 => {
                self.app.apply(super::Command::RunAttribution, now);
                true
            }
            27 if self.ready(
                self.app.runtime.circuits.dla.result().is_some()
                    && !self.app.runtime.circuits.is_running(),
            ) =>
            {
                self.shot(ctx, "circuits_attribution");
                true
            }
            28 => {
                self.app.apply(super::Command::RunTrace, now);
                true
            }
            29 if self.ready(
                self.app.runtime.circuits.trace.result().is_some()
                    && !self.app.runtime.circuits.is_running(),
            ) =>
            {
                self.shot(ctx, "circuits_trace");
                true
            }
            30 => {
                // The strongest MLP component's strongest neuron: its card.
                let neuron = self.app.runtime.circuits.dla.result().and_then(|r| {
                    let layer = r.components.iter().find(|c| c.head.is_none())?.layer?;
                    r.layers.get(layer)?.strongest_neuron.clone()
                });
                self.feature = neuron.map(|n| FeatureId::neuron(n.layer, n.neuron));
                self.app.apply(super::Command::Select(self.feature), now);
                // Its layer's rows ranked by their direct effect on " Paris" − " Rome" (the
                // window closed, so the heatmap shows).
                self.app.state.ranking = super::state::RowRanking::DirectEffect;
                self.app.apply(super::Command::ShowCircuits(false), now);
                self.app.apply(super::Command::ClearJobs(None), now);
                true
            }
            31 if self.ready(
                self.effect_ready()
                    && self.receptive_ready()
                    && self.app.derived.effect_ranking.is_some(),
            ) =>
            {
                self.shot(ctx, "circuits_card");
                true
            }
            32 => {
                // The Dictionary window: a 1,024-atom top-k SAE of layer 6 trained on 20k
                // WordNet tokens, shot while it trains and when it is done.
                self.app.apply(super::Command::ShowCircuits(false), now);
                self.app.select(None);
                self.app.state.ranking = super::state::RowRanking::PeakActivation;
                self.app.state.dictionary = super::state::DictionaryForm::default();
                self.app.apply(super::Command::ShowDictionary(true), now);
                self.app.apply(super::Command::TrainDictionary, now);
                true
            }
            33 if self.ready(self.app.runtime.dictionaries.curve.len() >= 12) => {
                self.shot(ctx, "dictionary_training");
                true
            }
            34 if self.ready(self.dictionary_trained()) => {
                self.shot(ctx, "dictionary_trained");
                true
            }
            35 => {
                // "apple" in a sentence, at layer 6; the probe is the same sentence.
                self.app.state.probe = self.app.state.dictionary.context.clone();
                self.app.request_run(now);
                self.app.state.dictionary.tab = super::state::DictionaryTab::Decompose;
                self.app.apply(super::Command::DecomposeWord, now);
                true
            }
            36 if self.ready(self.decomposed() && self.app.runtime.result.is_some()) => {
                self.shot(ctx, "dictionary_apple");
                true
            }
            37 => {
                // Ablate its strongest atom in the probe.
                let atom = self
                    .app
                    .runtime
                    .dictionaries
                    .decompose
                    .result()
                    .and_then(|d| d.first()?.parts.first().map(|p| p.atom));
                if let Some(atom) = atom {
                    self.app.apply(
                        super::Command::EditAtom {
                            hook: 0,
                            atom,
                            edit: crate::features::dictionary::edit::Edit::Ablate,
                        },
                        now,
                    );
                }
                true
            }
            38 if self.ready(
                self.app
                    .runtime
                    .result
                    .as_ref()
                    .is_some_and(|r| r.intervened.is_some()),
            ) =>
            {
                // The main view: the edit's chip, the output with and without it.
                self.app.apply(super::Command::ShowDictionary(false), now);
                true
            }
            39 if self.ready(true) => {
                self.shot(ctx, "dictionary_ablate");
                true
            }
            40 => {
                self.app.apply(super::Command::ShowDictionary(true), now);
                self.app
                    .apply(super::Command::SetInterventions(Vec::new()), now);
                self.app.state.dictionary.word = "left".into();
                self.app.state.dictionary.context = "Turn left at the corner.".into();
                self.app.apply(super::Command::DecomposeWord, now);
                true
            }
            41 if self.ready(self.decomposed()) => {
                self.shot(ctx, "dictionary_left");
                true
            }
            42 => {
                // The same dictionary as a basis of the main view: layer 6's features on the
                // apple sentence.
                self.app.apply(super::Command::ShowDictionary(false), now);
                // The finished jobs' list would take the heatmap's room.
                self.app.apply(super::Command::ClearJobs(None), now);
                self.app.state.probe = "She ate an apple and a pear.".into();
                self.app.state.basis = crate::features::Basis::Dictionary;
                self.app.state.layer = 6;
                self.app.request_run(now);
                true
            }
            43 => {
                let coded = self
                    .app
                    .runtime
                    .result
                    .as_ref()
                    .is_some_and(|r| r.dictionary.is_some());
                let top = self
                    .top_feature()
                    .filter(|f| f.basis == crate::features::Basis::Dictionary);
                match top {
                    Some(f) if self.ready(coded) => {
                        self.app.select(Some(f));
                        true
                    }
                    _ => false,
                }
            }
            44 if self.ready(self.receptive_ready()) => {
                self.shot(ctx, "dictionary_basis");
                true
            }
            45 => {
                self.app.apply(super::Command::StartDictionaryScan, now);
                true
            }
            46 if self.ready(
                self.app.runtime.receptive.scanning.is_none()
                    && self
                        .app
                        .runtime
                        .receptive
                        .index
                        .index()
                        .is_some_and(|i| i.meta.dictionary.is_some())
                    && self.receptive_ready(),
            ) =>
            {
                self.app.apply(super::Command::ClearJobs(None), now);
                true
            }
            47 if self.ready(self.receptive_ready()) => {
                self.shot(ctx, "dictionary_card");
                true
            }
            48 => {
                // A dictionary shared by seven layers (FISTA), for the depth profile.
                self.app.state.dictionary = super::state::DictionaryForm {
                    method: crate::features::dictionary::Method::Fista,
                    layers: "2,6,10,14,18,22,26".into(),
                    atoms: 256,
                    tokens: 4000,
                    epochs: 4,
                    tab: super::state::DictionaryTab::Atlas,
                    ..Default::default()
                };
                // The window was closed for the main view's shots: the atlas is in it.
                self.app.apply(super::Command::ShowDictionary(true), now);
                self.app.apply(super::Command::TrainDictionary, now);
                true
            }
            49 if self.ready(self.dictionary_trained()) => {
                self.shot(ctx, "dictionary_atlas");
                true
            }
            50 => {
                self.app.apply(super::Command::ShowDictionary(false), now);
                // The built-in file dialog, as a user without a desktop portal sees it.
                self.app.apply(
                    super::Command::AskFile(super::file_dialog::FileAction::SaveSession),
                    now,
                );
                true
            }
            51 if self.ready(self.app.dialogs.is_open()) && self.settle > 40 => {
                self.shot(ctx, "save_dialog");
                true
            }
            // A long probe: its heads keep no pattern; the card computes one on demand.
            52 => {
                // The save dialog of the step before, closed as Cancel would.
                self.app.dialogs = super::file_dialog::FileDialogs::new(false);
                self.app.state.basis = crate::features::Basis::Heads;
                self.app.state.probe =
                    "The quick brown fox jumps over the lazy dog. Researchers record \
                    every neuron of every layer. A probe viewer shows which features fire on which \
                    tokens. She left the party early. "
                        .repeat(3);
                self.app.apply(super::Command::ClearJobs(None), now);
                self.app.select(None);
                self.app.request_run(now);
                true
            }
            53 if self.ready(
                self.app
                    .runtime
                    .result
                    .as_ref()
                    .is_some_and(|r| r.tokens.len() > super::worker::PATTERN_TOKENS),
            ) =>
            {
                self.feature = Some(FeatureId::head(4, 3));
                self.app.select(self.feature);
                if let Some(f) = self.feature {
                    self.app.apply(super::Command::ComputePattern(f), now);
                }
                true
            }
            54 if self.ready(self.feature.is_some_and(|f| {
                self.app
                    .runtime
                    .patterns
                    .get(f)
                    .is_some_and(|e| matches!(e.state, super::receptive::Pending::Ready(_)))
            })) =>
            {
                self.shot(ctx, "head_pattern_long");
                true
            }
            55 => {
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                false
            }
            _ => false,
        };
        if advance {
            self.step += 1;
        }
    }

    fn bench_step(&mut self, ctx: &egui::Context, now: f64, frame_ms: f64) {
        if self.app.runtime.run_in_flight() {
            self.bench.frames_busy.push(frame_ms);
        }
        let step = self.step;
        match step {
            // Launch to the first heatmap on screen.
            0 if self.app.runtime.result.is_some() && !self.app.is_busy() => {
                self.bench.launch_to_first_heatmap_ms = self.started.elapsed().as_secs_f64() * 1e3;
                // A 32-token probe, as in `hubel bench`.
                self.app.state.probe = crate::bench::TEXT.repeat(2);
                self.app.request_run(now);
                self.step = 1;
            }
            1 if self
                .app
                .runtime
                .result
                .as_ref()
                .is_some_and(|r| r.tokens.len() > 32)
                && !self.app.is_busy() =>
            {
                // Trim to exactly 32 tokens of text.
                if let Some(r) = &self.app.runtime.result {
                    self.app.state.probe = r.tokens[..32].iter().map(|t| t.text.as_str()).collect();
                }
                self.app.request_run(now);
                self.step = 2;
            }
            2 if self.app.runtime.result.is_some() && !self.app.is_busy() => {
                let layers = self.app.runtime.layers().max(1);
                self.app.state.layer = (layers / 3).min(layers - 1);
                self.bench.probe_tokens = self
                    .app
                    .runtime
                    .result
                    .as_ref()
                    .map_or(0, |r| r.tokens.len());
                self.feature = self.top_feature();
                self.bench.feature = self.feature.map(|f| f.label()).unwrap_or_default();
                self.step = 3;
            }
            // Clicks: toggle the feature's ablation, wait for the new output; exact, then fast.
            3 | 13 if !self.app.is_busy() => {
                let fast = step == 13;
                if let Some(ms) = self.app.runtime.last_round_trip_ms.take() {
                    let result = self.app.runtime.result.as_ref();
                    let worker = result.map_or(0.0, |r| r.elapsed_ms);
                    let clicks = if fast {
                        &mut self.bench.fast
                    } else {
                        &mut self.bench.exact
                    };
                    if self.bench.clicks > 0 {
                        if self.bench.last_on {
                            clicks.on_click_ms.push(ms);
                            clicks.on_click_worker_ms.push(worker);
                            clicks.layers_recomputed = result.map_or(0, |r| r.layers_computed);
                        } else {
                            clicks.off_click_ms.push(ms);
                            clicks.off_click_worker_ms.push(worker);
                        }
                    }
                }
                let clicks = if fast {
                    &mut self.bench.fast
                } else {
                    &mut self.bench.exact
                };
                if clicks.done()
                    && self
                        .feature
                        .and_then(|f| self.app.intervention_on(f))
                        .is_none()
                {
                    clicks.finish();
                    self.bench.clicks = 0;
                    if fast {
                        self.step = 4;
                        self.bench.idle_since = Some((Instant::now(), cpu_seconds()));
                    } else {
                        self.bench.switched_at = Some(Instant::now());
                        self.app.set_precision(Precision::Fast, now);
                        self.step = 12;
                    }
                    return;
                }
                if let Some(f) = self.feature {
                    let on = self.app.intervention_on(f).is_none();
                    self.app.set_feature_op(f, on.then_some(Op::Zero), now);
                    self.bench.last_on = on;
                }
                self.bench.clicks += 1;
            }
            // The switch to the fast path: its result on screen, then its fidelity meter (so
            // that no meter job runs beside the first clicks).
            12 if !self.app.is_busy() && self.app.runtime.precision() == Some(Precision::Fast) => {
                if let Some(t) = self.bench.switched_at.take() {
                    self.bench.fast_switch_ms = t.elapsed().as_secs_f64() * 1e3;
                }
                let meter = self.app.runtime.fidelity.as_ref().map(|m| &m.state);
                if let Some(MeterState::Ready(f)) = meter {
                    self.bench.fidelity = Some(*f);
                }
                let jobs_idle = self
                    .app
                    .runtime
                    .job_list
                    .iter()
                    .all(|j| j.state.is_finished());
                if !matches!(meter, Some(MeterState::Measuring)) && jobs_idle {
                    self.app.runtime.last_round_trip_ms = None;
                    self.step = 13;
                }
            }
            // Idle: frames on request for a second, then no repaints for three seconds.
            4 => {
                // The last click's fidelity meter first.
                if matches!(
                    self.app.runtime.fidelity.as_ref().map(|m| &m.state),
                    Some(MeterState::Measuring)
                ) {
                    return;
                }
                self.bench.frames_idle.push(frame_ms);
                if self.bench.frames_idle.len() >= 60 {
                    self.bench.idle_since = Some((Instant::now(), cpu_seconds()));
                    self.step = 5;
                    ctx.request_repaint_after(std::time::Duration::from_secs(3));
                }
            }
            5 => {
                let Some((t0, cpu0)) = self.bench.idle_since else {
                    return;
                };
                let wall = t0.elapsed().as_secs_f64();
                if wall < 2.9 {
                    ctx.request_repaint_after(std::time::Duration::from_secs_f64(3.0 - wall));
                    return;
                }
                self.bench.idle_cpu_percent = (cpu_seconds() - cpu0) / wall * 100.0;
                self.bench.frame_ms_idle_median = median(&self.bench.frames_idle);
                self.bench.frame_ms_in_flight_median = median(&self.bench.frames_busy);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&self.bench).unwrap_or_default()
                );
                self.step = 6;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            _ => {}
        }
    }
}

impl eframe::App for Tour {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let t = Instant::now();
        eframe::App::ui(&mut self.app, ui, frame);
        let frame_ms = t.elapsed().as_secs_f64() * 1e3;
        let now = ctx.input(|i| i.time);
        if self.waiting_shot {
            let done = self.shot_pending.lock().ok().and_then(|mut s| s.take());
            match done {
                Some(Ok(())) => self.waiting_shot = false,
                Some(Err(e)) => {
                    eprintln!("screenshot failed: {e}");
                    self.waiting_shot = false;
                }
                None => {}
            }
            ctx.request_repaint();
            return;
        }
        match self.mode {
            Mode::Screenshots => {
                self.screenshots_step(&ctx, now);
                let ex = &self.app.runtime.experiments;
                if ex.is_running() || ex.dosing.is_some() {
                    // A long job: poll four times a second instead of drawing every frame in
                    // software, which took a core from it (the lesion ran 3× slower).
                    ctx.request_repaint_after(std::time::Duration::from_millis(250));
                } else {
                    ctx.request_repaint();
                }
            }
            Mode::BenchUi => {
                self.bench_step(&ctx, now, frame_ms);
                if self.step != 5 && self.step != 6 {
                    // Polls the script's next step without spinning the UI thread, which would
                    // take a core from the model (answers repaint at once on their own).
                    ctx.request_repaint_after(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

/// Runs a tour in a real window.
pub fn run(mode: Mode, model: PathBuf, dir: PathBuf, size: [f32; 2]) -> anyhow::Result<()> {
    let started = Instant::now();
    if mode == Mode::Screenshots {
        std::fs::create_dir_all(&dir)?;
    }
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Hubel")
            .with_inner_size(size),
        persist_window: false,
        ..Default::default()
    };
    eframe::run_native(
        "Hubel tour",
        options,
        Box::new(move |cc| Ok(Box::new(Tour::new(cc, mode, model, dir, started)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
