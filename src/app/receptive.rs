//! The receptive-field side of the runtime (plain data, no egui): the loaded model's scan index
//! (found among the data directory's scans and loaded off the UI thread, or made by a scan
//! job), the open card's corpus examples with each token's activation (recomputed on the worker,
//! with the gate and up projections' signs for gated neurons), its occlusion map, and feature
//! search.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use crate::features::{Basis, FeatureId};
use crate::model::{FeatureRow, GluSigns, Occlusion};
use crate::scan::index::IndexMeta;
use crate::scan::labels::{self, Labels, SearchHit};
use crate::scan::{self, FeatureSummary, ScanIndex};

/// Examples per list on a card.
pub const CARD_K: usize = 20;
/// Tokens of context either side of an example's peak.
pub const CONTEXT: usize = 8;
/// Occlusion runs by itself for probes up to this many tokens (one forward of that many
/// copies); longer ones wait for a click.
pub const AUTO_OCCLUSION_TOKENS: usize = 64;

/// The scans folder of a data directory.
pub fn scans_dir(assets: &Path) -> PathBuf {
    assets.join("scans")
}

/// The loaded model's scan index.
#[derive(Clone, Default)]
pub enum IndexState {
    /// No model loaded yet.
    #[default]
    None,
    /// Looking in the scans folder, or loading the index found.
    Loading,
    /// No scan of this model: the card offers one.
    Missing,
    Ready {
        path: PathBuf,
        index: Arc<ScanIndex>,
    },
    Failed(String),
}

impl IndexState {
    pub fn index(&self) -> Option<&Arc<ScanIndex>> {
        match self {
            IndexState::Ready { index, .. } => Some(index),
            _ => None,
        }
    }
}

/// A worker answer that may still be coming.
#[derive(Clone, Debug)]
pub enum Pending<T> {
    /// Not asked for yet.
    Idle,
    Waiting(u64),
    Ready(T),
    Failed(String),
}

impl<T> Pending<T> {
    pub fn serial(&self) -> Option<u64> {
        match self {
            Pending::Waiting(s) => Some(*s),
            _ => None,
        }
    }
}

/// The open card's corpus data.
#[derive(Clone)]
pub struct CardData {
    pub feature: FeatureId,
    pub summary: Result<Arc<FeatureSummary>, String>,
    /// Each example window's activations (and gate/up for gated neurons), by window.
    pub rows: Pending<Arc<HashMap<usize, FeatureRow>>>,
}

impl CardData {
    /// The windows whose activations the card shows: top, lowest, quantile examples.
    pub fn windows(&self) -> Vec<usize> {
        let Ok(s) = &self.summary else {
            return Vec::new();
        };
        let mut w: Vec<usize> = s
            .top
            .iter()
            .chain(&s.lowest)
            .chain(s.groups.iter().flat_map(|g| &g.2))
            .map(|e| e.window)
            .collect();
        w.sort_unstable();
        w.dedup();
        w
    }

    /// The activations of `window` once they are here.
    pub fn row(&self, window: usize) -> Option<&FeatureRow> {
        match &self.rows {
            Pending::Ready(rows) => rows.get(&window),
            _ => None,
        }
    }

    /// The sign combination at `pos` of `window` (gated neurons, once computed).
    pub fn signs(&self, window: usize, pos: usize) -> Option<GluSigns> {
        self.row(window)?.glu_signs(pos)
    }

    /// How many of the top (or lowest) examples come from each sign combination, most first.
    pub fn sign_counts(&self, lowest: bool) -> Vec<(GluSigns, usize)> {
        let Ok(s) = &self.summary else {
            return Vec::new();
        };
        let list = if lowest { &s.lowest } else { &s.top };
        let mut counts: Vec<(GluSigns, usize)> = Vec::new();
        for g in list.iter().filter_map(|e| self.signs(e.window, e.pos)) {
            match counts.iter_mut().find(|(h, _)| *h == g) {
                Some((_, n)) => *n += 1,
                None => counts.push((g, 1)),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }
}

/// What an occlusion map was computed for.
#[derive(Clone, Debug, PartialEq)]
pub struct OcclusionKey {
    pub feature: FeatureId,
    pub tokens: Vec<u32>,
    pub position: usize,
    pub delete: bool,
}

#[derive(Clone)]
pub struct OcclusionState {
    pub key: OcclusionKey,
    pub result: Pending<Occlusion>,
}

/// The labelling job: it hands back the labels it made.
pub struct LabelRun {
    pub rx: Receiver<Result<Labels, String>>,
}

/// A scan running as a job: it hands back the index it made.
pub struct ScanRun {
    pub name: String,
    pub rx: Receiver<Result<(PathBuf, ScanIndex), String>>,
}

/// What the index lookup of a model found: its index (and path) with its saved labels (if
/// there are any made from this scan), none, or why it failed.
type Found = Result<Option<(PathBuf, ScanIndex, Option<Labels>)>, String>;

/// The loader's answer: for which model, its indexes, and what it found.
type Loaded = (String, Vec<(PathBuf, IndexMeta)>, Found);

/// Every feature's offline label (scan/labels.rs), computed by a job after a scan.
#[derive(Clone, Default)]
pub enum LabelsState {
    #[default]
    None,
    Computing,
    Ready(Arc<Labels>),
    Failed(String),
}

/// The receptive-field state of the runtime.
#[derive(Default)]
pub struct Receptive {
    pub index: IndexState,
    /// The model the index was looked up for (its SHA-256).
    model_sha: Option<String>,
    /// Where its indexes are.
    scans: Option<PathBuf>,
    /// Every index of the model in the scans folder (most tokens first): the card's choice of
    /// corpus.
    pub indexes: Vec<(PathBuf, IndexMeta)>,
    load_rx: Option<Receiver<Loaded>>,
    pub scanning: Option<ScanRun>,
    pub card: Option<CardData>,
    pub occlusion: Option<OcclusionState>,
    pub search: Option<(String, Vec<SearchHit>)>,
    pub labels: LabelsState,
    pub labelling: Option<LabelRun>,
    serial: u64,
    /// The SHA-256 of the dictionary in use: a dictionary feature's card reads an index that
    /// scanned exactly that dictionary.
    pub dict_sha: Option<String>,
    /// The index last loaded for the dictionary in use (tried once, so a file that fails to
    /// load is not loaded again every frame).
    dict_index_tried: Option<PathBuf>,
}

impl Receptive {
    /// Whether no answer for the card is still coming: the index lookup, the examples'
    /// activations, the occlusion map, the labels (what a picture of the card waits for).
    pub fn settled(&self) -> bool {
        !matches!(self.index, IndexState::Loading)
            && self.load_rx.is_none()
            && !matches!(self.labels, LabelsState::Computing)
            && self
                .card
                .as_ref()
                .is_none_or(|c| !matches!(c.rows, Pending::Waiting(_)))
            && self
                .occlusion
                .as_ref()
                .is_none_or(|o| !matches!(o.result, Pending::Waiting(_)))
    }

    /// The dictionary in use changed: its features' cards and occlusion maps are of the old one.
    pub fn set_dictionary(&mut self, sha: Option<String>) {
        if self.dict_sha != sha {
            self.dict_sha = sha;
            if self
                .card
                .as_ref()
                .is_some_and(|c| c.feature.basis == Basis::Dictionary)
            {
                self.card = None;
            }
            if self
                .occlusion
                .as_ref()
                .is_some_and(|o| o.key.feature.basis == Basis::Dictionary)
            {
                self.occlusion = None;
            }
        }
    }

    /// An index of the model's that scanned the dictionary in use, when the loaded one did not
    /// (each such index is offered once).
    pub fn index_for_dictionary(&mut self) -> Option<PathBuf> {
        let sha = self.dict_sha.as_ref()?;
        let has = |m: &IndexMeta| m.dictionary.as_ref().is_some_and(|d| &d.sha256 == sha);
        if self.index.index().is_some_and(|i| has(&i.meta)) || self.load_rx.is_some() {
            return None;
        }
        let path = self
            .indexes
            .iter()
            .find(|(_, m)| has(m))
            .map(|(p, _)| p.clone())?;
        if self.dict_index_tried.as_ref() == Some(&path) {
            return None;
        }
        self.dict_index_tried = Some(path.clone());
        Some(path)
    }

    pub fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Looks for `model_sha`'s index in `scans` and loads it on a thread of its own.
    pub fn find(&mut self, scans: PathBuf, model_sha: String) {
        self.find_preferring(scans, model_sha, None)
    }

    /// Loads the model's index at `path` instead (one of [`Receptive::indexes`]).
    pub fn use_index(&mut self, path: PathBuf) {
        if self.scanning.is_some() {
            return;
        }
        if let (Some(scans), Some(sha)) = (self.scans.clone(), self.model_sha.clone()) {
            self.find_preferring(scans, sha, Some(path));
        }
    }

    /// Lists `model_sha`'s indexes in `scans` and loads `prefer` if it is one of them, else
    /// the one that scanned the most tokens, on a thread of its own.
    fn find_preferring(&mut self, scans: PathBuf, model_sha: String, prefer: Option<PathBuf>) {
        self.card = None;
        self.occlusion = None;
        self.search = None;
        self.labels = LabelsState::None;
        // A labelling job of the previous index answers for that index only.
        self.labelling = None;
        self.index = IndexState::Loading;
        self.model_sha = Some(model_sha.clone());
        self.scans = Some(scans.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        self.load_rx = Some(rx);
        let spawned = std::thread::Builder::new()
            .name("hubel-scan-index".into())
            .spawn(move || {
                let list = scan::index::list_indexes(&scans, &model_sha);
                let chosen = prefer
                    .filter(|p| list.iter().any(|(q, _)| q == p))
                    .or_else(|| list.first().map(|(p, _)| p.clone()));
                let found = match chosen {
                    None => Ok(None),
                    Some(path) => ScanIndex::load(&path)
                        .map(|i| {
                            let labels = Labels::load_for(&labels::labels_path(&path), &i).ok();
                            Some((path, i, labels))
                        })
                        .map_err(|e| e.to_string()),
                };
                let _ = tx.send((model_sha, list, found));
            });
        if let Err(e) = spawned {
            self.index = IndexState::Failed(format!("cannot start a thread: {e}"));
        }
    }

    /// Takes the index load's and the scan job's results, if any; `true` when the index changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        if let Some(rx) = &self.load_rx {
            match rx.try_recv() {
                Ok((sha, list, found)) => {
                    self.load_rx = None;
                    if self.model_sha.as_deref() == Some(sha.as_str()) {
                        self.indexes = list;
                        self.index = match found {
                            Ok(Some((path, index, labels))) => {
                                if let Some(l) = labels {
                                    self.labels = LabelsState::Ready(Arc::new(l));
                                }
                                IndexState::Ready {
                                    path,
                                    index: Arc::new(index),
                                }
                            }
                            Ok(None) => IndexState::Missing,
                            Err(e) => IndexState::Failed(e),
                        };
                        changed = true;
                    }
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.load_rx = None;
                    self.index = IndexState::Failed("the index loader stopped".into());
                    changed = true;
                }
            }
        }
        if let Some(run) = &self.scanning {
            match run.rx.try_recv() {
                Ok(Ok((path, index))) => {
                    self.scanning = None;
                    if self.model_sha.as_deref() == Some(index.meta.model_sha256.as_str()) {
                        // The new scan wins over an index load of the same model still under
                        // way (its list would not hold the new index).
                        self.load_rx = None;
                        self.indexes.retain(|(p, _)| *p != path);
                        self.indexes.push((path.clone(), index.meta.clone()));
                        self.indexes
                            .sort_by_key(|(_, m)| std::cmp::Reverse(m.tokens_done));
                        self.index = IndexState::Ready {
                            path,
                            index: Arc::new(index),
                        };
                        self.card = None;
                        self.search = None;
                        // Labels of the smaller scan no longer fit.
                        self.labels = LabelsState::None;
                        changed = true;
                    }
                }
                // The job's own status (in the Jobs list) says why it ended.
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => self.scanning = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        if let Some(run) = &self.labelling {
            match run.rx.try_recv() {
                Ok(Ok(l)) => {
                    self.labelling = None;
                    let fits = self.index.index().is_some_and(|i| l.stale(i).is_none());
                    if fits {
                        self.labels = LabelsState::Ready(Arc::new(l));
                        self.search = None;
                    }
                }
                Ok(Err(e)) => {
                    self.labelling = None;
                    self.labels = LabelsState::Failed(e);
                }
                Err(TryRecvError::Disconnected) => {
                    self.labelling = None;
                    self.labels =
                        LabelsState::Failed("the labelling job ended without a result".into());
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        changed
    }

    /// Whether labels should be computed: an index without labels (made from it) and no job
    /// at it.
    pub fn needs_labels(&self) -> bool {
        self.index.index().is_some()
            && self.labelling.is_none()
            && matches!(self.labels, LabelsState::None)
    }

    /// The label of `f`, when labels are here.
    pub fn label(&self, f: &FeatureId) -> Option<&labels::Label> {
        match &self.labels {
            LabelsState::Ready(l) => l.get(f),
            _ => None,
        }
    }

    /// Features for `query` (a token, or words of their labels), best first.
    pub fn search(&mut self, query: &str) {
        let hits = match &self.labels {
            LabelsState::Ready(l) => l.search(query.trim(), None, 30),
            _ => Vec::new(),
        };
        self.search = Some((query.to_string(), hits));
    }

    /// A card query failed: the card or occlusion map waiting for it says why.
    pub fn fail_query(&mut self, serial: u64, message: String) {
        if let Some(c) = self
            .card
            .as_mut()
            .filter(|c| c.rows.serial() == Some(serial))
        {
            c.rows = Pending::Failed(message.clone());
        }
        if let Some(o) = self
            .occlusion
            .as_mut()
            .filter(|o| o.result.serial() == Some(serial))
        {
            o.result = Pending::Failed(message);
        }
    }

    /// The card's summary of `feature` (computed from the index; its activations per token
    /// are asked for separately).
    pub fn open_card(&mut self, feature: FeatureId) -> Option<&CardData> {
        let index = self.index.index()?.clone();
        if self.card.as_ref().is_some_and(|c| c.feature == feature) {
            return self.card.as_ref();
        }
        let scanned = index.meta.dictionary.as_ref().map(|d| &d.sha256);
        let summary = if feature.basis == Basis::Dictionary && scanned != self.dict_sha.as_ref() {
            Err(match &index.meta.dictionary {
                Some(d) => format!(
                    "This scan holds the features of another dictionary ({}): scan the corpus \
                     with the dictionary in use.",
                    d.title
                ),
                None => "This scan holds neurons and heads: scan the corpus with the dictionary \
                         in use to see its features' examples and histograms."
                    .to_string(),
            })
        } else {
            index.summary(&feature, CARD_K)
        }
        .map(Arc::new);
        self.card = Some(CardData {
            feature,
            summary,
            rows: Pending::Idle,
        });
        self.card.as_ref()
    }
}

/// The largest |activation| of `f` over the scanned corpus (a scale that makes different
/// features comparable).
pub fn max_abs(index: &ScanIndex, f: FeatureId) -> Option<f32> {
    let layers = match f.basis {
        Basis::Neurons => &index.neurons,
        Basis::Heads => &index.heads,
        Basis::Dictionary => return None,
    };
    let l = layers.get(f.layer)?;
    let (lo, hi) = (*l.min.get(f.index)?, *l.max.get(f.index)?);
    let m = lo.abs().max(hi.abs());
    (m.is_finite() && m > 0.0).then_some(m)
}
