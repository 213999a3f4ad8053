//! What the viewer remembers: [`AppState`] is the working state a user would lose on a crash or
//! a restart (probe, interventions, selection, views); it is saved by eframe's persistence and
//! restored at start, with the interventions and selection checked against the model first.
//! [`AppConfig`] is how the app is set up (where assets go, which registry clients and dialogs
//! to use), passed in explicitly so tests never touch process-wide environment variables.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::analysis::maps::Measure;
use crate::assets::{self, Clients};
use crate::features::{Basis, FeatureId};
use crate::hooks::Intervention;
use crate::model::Precision;
use crate::session::Session;

/// Which run the maps show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewMode {
    /// A: the run without edits.
    Baseline,
    /// B: the run with the edits; every site shows what the rest of the model saw.
    Intervened,
    /// B − A.
    Difference,
}

impl ViewMode {
    pub fn name(self) -> &'static str {
        match self {
            ViewMode::Baseline => "A: baseline",
            ViewMode::Intervened => "B: intervened",
            ViewMode::Difference => "B − A",
        }
    }
}

/// How the chosen layer's feature rows (the heatmap) are ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowRanking {
    /// By peak |activation| over the probe.
    #[default]
    PeakActivation,
    /// By |direct effect| on the Circuits target (minus the versus token) at the attribution's
    /// position, in the baseline run; needs a target.
    DirectEffect,
}

/// The saved working state (`#[serde(default)]`, so old settings survive new fields).
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
    pub interventions: Vec<Intervention>,
    pub selection: Option<FeatureId>,
    /// The position whose next-token distribution the output panel shows; `None`: the last.
    pub output_position: Option<usize>,
    /// Leave position 0 (the attention sink, with a huge residual norm) out of colour scales
    /// and of the heatmap's ranking.
    pub exclude_sink: bool,
    /// How the heatmap's rows are ranked.
    pub ranking: RowRanking,
    /// The card's direct effect on this probe (final-norm scale frozen at the output position)
    /// rather than per unit of activation.
    pub effect_on_probe: bool,
    /// Always use the built-in file dialog (set on systems whose desktop dialog misbehaves).
    pub builtin_file_dialog: bool,
    /// Exact (f32, the reference) or the fast path (4-bit weights × 8-bit activations).
    pub precision: Precision,
    /// The Experiments window is open.
    pub experiments_open: bool,
    /// The built-in protocol it shows first.
    pub experiment: String,
    /// The dose–response form.
    pub dose: DoseForm,
    /// The discriminator form: the text to classify.
    pub classify_text: String,
    /// A lesion protocol's hand-picked group, e.g. `L1N971, L9N448` (empty: none).
    pub lesion_units: String,
    /// The Experiments window's part in view.
    pub experiments_tab: ExperimentsTab,
    /// The discriminator form's probe layer.
    pub probe_layer: usize,
    /// The Circuits window is open.
    pub circuits_open: bool,
    /// The Circuits window's form and display choices.
    pub circuits: CircuitsForm,
    /// The Dictionary window is open.
    pub dictionary_open: bool,
    /// The Dictionary window's forms.
    pub dictionary: DictionaryForm,
}

/// The parts of the Dictionary window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DictionaryTab {
    #[default]
    Train,
    Atlas,
    Decompose,
}

impl DictionaryTab {
    pub fn name(self) -> &'static str {
        match self {
            DictionaryTab::Train => "Train",
            DictionaryTab::Atlas => "Factor atlas",
            DictionaryTab::Decompose => "Meta-meanings",
        }
    }
}

/// The Dictionary window's training form and decomposition form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DictionaryForm {
    pub tab: DictionaryTab,
    pub method: crate::features::dictionary::Method,
    /// `6`, `2,6,10` or `embed, 4`.
    pub layers: String,
    pub atoms: usize,
    pub k: usize,
    pub lambda: f32,
    pub tokens: usize,
    pub epochs: usize,
    /// WordNet's example sentences only (else glosses and examples).
    pub examples_only: bool,
    /// A top-k dictionary codes rows by pursuit over its atoms, not by its encoder.
    pub pursuit: bool,
    /// The decomposition's word, context (empty: the word alone) and layer (`None`: the
    /// dictionary's first).
    pub word: String,
    pub context: String,
    pub layer: Option<usize>,
}

impl Default for DictionaryForm {
    fn default() -> Self {
        DictionaryForm {
            tab: DictionaryTab::Train,
            method: crate::features::dictionary::Method::Topk,
            layers: "6".into(),
            atoms: 1024,
            k: 32,
            lambda: 2.0,
            tokens: 20_000,
            epochs: 30,
            examples_only: false,
            pursuit: false,
            word: "apple".into(),
            context: "She ate an apple and a pear.".into(),
            layer: None,
        }
    }
}

/// The parts of the Circuits window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CircuitsTab {
    #[default]
    Lens,
    Attribution,
    Trace,
}

impl CircuitsTab {
    pub const ALL: [CircuitsTab; 3] = [
        CircuitsTab::Lens,
        CircuitsTab::Attribution,
        CircuitsTab::Trace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CircuitsTab::Lens => "Logit lens",
            CircuitsTab::Attribution => "Attribution",
            CircuitsTab::Trace => "Causal trace",
        }
    }
}

/// What the logit lens's cells show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LensShow {
    /// The top token and its probability.
    #[default]
    Top,
    /// The target's probability.
    TargetProb,
    /// The target's rank.
    TargetRank,
}

impl LensShow {
    pub const ALL: [LensShow; 3] = [LensShow::Top, LensShow::TargetProb, LensShow::TargetRank];

    pub fn name(self) -> &'static str {
        match self {
            LensShow::Top => "Top token",
            LensShow::TargetProb => "p(target)",
            LensShow::TargetRank => "Target rank",
        }
    }
}

/// The Circuits window's form: the clean prompt is the probe; the rest is here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitsForm {
    pub tab: CircuitsTab,
    /// One token, e.g. ` Paris` (empty: none; the lens then shows top tokens only).
    pub target: String,
    /// One token to subtract (empty: the target's logit alone).
    pub versus: String,
    /// The corrupted prompt of the causal trace (same token count as the probe).
    pub corrupt: String,
    pub site: crate::circuits::patch::Site,
    /// When the probe and the corrupted prompt differ in length: pad or trim (`None`: refuse).
    pub fit: Option<crate::circuits::patch::Fit>,
    pub lens_show: LensShow,
    /// The attribution's position (`None`: the last token).
    pub position: Option<usize>,
}

impl Default for CircuitsForm {
    fn default() -> Self {
        CircuitsForm {
            tab: CircuitsTab::Lens,
            target: " Paris".into(),
            versus: " Rome".into(),
            corrupt: "The Colosseum is in the city of".into(),
            site: crate::circuits::patch::Site::Resid,
            fit: None,
            lens_show: LensShow::Top,
            position: None,
        }
    }
}

/// The parts of the Experiments window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExperimentsTab {
    /// The protocol's result.
    #[default]
    Result,
    Dose,
    Discriminator,
}

impl ExperimentsTab {
    pub fn name(self) -> &'static str {
        match self {
            ExperimentsTab::Result => "Result",
            ExperimentsTab::Dose => "Dose–response",
            ExperimentsTab::Discriminator => "Discriminator",
        }
    }
}

/// What the Experiments window's dose–response form holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DoseForm {
    /// Features, e.g. `L10N123, L5H3` (empty: the selected feature).
    pub units: String,
    pub mode: crate::experiments::dose::Mode,
    pub from: f32,
    pub to: f32,
    pub steps: usize,
    pub freeze: bool,
    /// The watched next token (empty: the clean run's top token).
    pub target: String,
}

impl Default for DoseForm {
    fn default() -> Self {
        DoseForm {
            units: String::new(),
            mode: crate::experiments::dose::Mode::Scale,
            from: 0.0,
            to: 3.0,
            steps: 7,
            freeze: false,
            target: String::new(),
        }
    }
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
            interventions: Vec::new(),
            selection: None,
            output_position: None,
            exclude_sink: true,
            ranking: RowRanking::PeakActivation,
            effect_on_probe: false,
            builtin_file_dialog: false,
            precision: Precision::Exact,
            experiments_open: false,
            experiment: "sense-left".into(),
            dose: DoseForm::default(),
            classify_text: String::new(),
            lesion_units: String::new(),
            experiments_tab: ExperimentsTab::Result,
            probe_layer: 0,
            circuits_open: false,
            circuits: CircuitsForm::default(),
            dictionary_open: false,
            dictionary: DictionaryForm::default(),
        }
    }
}

impl AppState {
    /// The intervention that edits `feature` as a whole, if any.
    pub fn intervention_on(&self, feature: FeatureId) -> Option<usize> {
        self.interventions
            .iter()
            .position(|iv| FeatureId::of_intervention(iv) == Some(feature))
    }

    /// The part of the state a session file holds.
    pub fn session(&self) -> Session {
        Session {
            model_path: self.model_path.clone(),
            probe: self.probe.clone(),
            interventions: self.interventions.clone(),
            selection: self.selection,
            layer: Some(self.layer),
            basis: self.basis,
            ..Session::default()
        }
    }
}

/// How the app is set up; not saved.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Where the default model is fetched to and looked for.
    pub assets: PathBuf,
    pub clients: Clients,
    /// Try the desktop's file dialog (xdg portal / zenity) before the built-in one.
    pub native_dialogs: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            assets: assets::assets_dir(),
            clients: Clients::default(),
            native_dialogs: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_ranking_is_saved_and_old_states_load_without_it() {
        let state = AppState {
            ranking: RowRanking::DirectEffect,
            ..AppState::default()
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["ranking"], "DirectEffect");
        let back: AppState = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.ranking, RowRanking::DirectEffect);
        // A state saved before the choice existed: by peak |activation|, the rest kept.
        let mut old = json;
        old.as_object_mut().unwrap().remove("ranking");
        old["probe"] = "an old probe".into();
        let back: AppState = serde_json::from_value(old).unwrap();
        assert_eq!(back.ranking, RowRanking::PeakActivation);
        assert_eq!(back.probe, "an old probe");
    }
}
