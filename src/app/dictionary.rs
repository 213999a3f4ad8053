//! The Dictionary window's runtime (plain data, no egui): the dictionary in use (trained here,
//! opened, or the latest snapshot of a training run), the training curve as it arrives, the
//! factor atlas made once per dictionary, and the decomposition job's answer. Training and
//! decomposing are model jobs on the job runner (progress, pause and cancel in the Jobs list);
//! the view (`panels/dictionary.rs`) only draws what is here.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::circuits::Slot;
use super::worker::ModelJob;
use crate::features::dictionary::atlas::{self, Row};
use crate::features::dictionary::decompose::{self, Decomposition};
use crate::features::dictionary::{
    self, io, DictError, Dictionary, Encoding, TrainPoint, TrainSpec,
};
use crate::hooks::HookPoint;
use crate::jobs::JobError;

pub const TRAIN_JOB: &str = "Train a dictionary";
pub const DECOMPOSE_JOB: &str = "Decompose a word";

/// What a training job says while it runs.
pub enum Progress {
    Point(TrainPoint),
    /// The dictionary as it is now (every few seconds): browsable before training ends.
    Snapshot(Arc<Dictionary>),
}

/// A finished training: the dictionary and where it was saved.
pub type Trained = (Arc<Dictionary>, PathBuf);

#[derive(Default)]
pub struct Dictionaries {
    pub train: Slot<Trained>,
    progress: Option<Receiver<Progress>>,
    /// The running (or last) training's curve.
    pub curve: Vec<TrainPoint>,
    /// The dictionary in use and where it lives (`None`: a snapshot, not saved yet).
    pub current: Option<Arc<Dictionary>>,
    pub path: Option<PathBuf>,
    /// The current dictionary is a snapshot of the running training.
    pub snapshot: bool,
    /// The atlas of the current dictionary, made when it changes.
    pub atlas: Vec<Row>,
    pub decompose: Slot<Vec<Decomposition>>,
    /// The last open/export's outcome, for the window's status line.
    pub message: Option<Result<String, String>>,
    /// The dictionary a run was last asked to recode the probe for (asked once per
    /// dictionary, so a failing run is not asked again every frame).
    pub recode_sent: Option<Arc<Dictionary>>,
    /// The dictionary the worker was last told of (`Request::SetDictionary`).
    pub worker_dict: Option<Arc<Dictionary>>,
    /// The current dictionary's SHA-256 (what a scan of its features is keyed by), once asked.
    sha: Option<(Arc<Dictionary>, String)>,
}

impl Dictionaries {
    /// Starts waiting for a training job (sent by the caller): the curve starts afresh.
    pub fn start_training(&mut self) -> (Sender<Result<Trained, String>>, Sender<Progress>) {
        let (ptx, prx) = std::sync::mpsc::channel();
        self.progress = Some(prx);
        self.curve.clear();
        // Its snapshots are shown as they come (the earlier result is not put back).
        self.train.last = None;
        self.snapshot = true;
        (self.train.start(TRAIN_JOB), ptx)
    }

    /// The current dictionary's [`Dictionary::sha256`], computed once per dictionary; `None`
    /// for a training's snapshot (no scan is of it, and it changes every few seconds).
    pub fn current_sha(&mut self) -> Option<String> {
        if self.snapshot {
            return None;
        }
        let current = self.current.clone()?;
        match &self.sha {
            Some((d, sha)) if Arc::ptr_eq(d, &current) => Some(sha.clone()),
            _ => {
                let sha = current.sha256();
                self.sha = Some((current, sha.clone()));
                Some(sha)
            }
        }
    }

    pub fn is_training(&self) -> bool {
        self.train.is_running()
    }

    /// Uses `dict` from now on (the atlas is made for it here, not in the view).
    pub fn set_current(&mut self, dict: Arc<Dictionary>, path: Option<PathBuf>, layers: usize) {
        // A decomposition names atoms of the dictionary it was made with.
        if !self.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &dict)) {
            self.decompose.last = None;
        }
        self.atlas = atlas::atlas(&dict, layers);
        self.snapshot = path.is_none();
        self.current = Some(dict);
        self.path = path;
    }

    /// Codes rows of the dictionary in use with `encoding` from now on (the file is not
    /// rewritten: opening it again gives its own encoding).
    pub fn set_encoding(&mut self, encoding: Encoding, layers: usize) {
        let Some(current) = self.current.clone() else {
            return;
        };
        if current.config.encoding == encoding {
            return;
        }
        match (*current).clone().with_encoding(encoding) {
            Ok(d) => {
                let (path, snapshot) = (self.path.clone(), self.snapshot);
                let title = d.title();
                self.set_current(Arc::new(d), path, layers);
                self.snapshot = snapshot;
                self.message = Some(Ok(match encoding {
                    Encoding::Pursuit => format!(
                        "{title}: each row's code is found by pursuit over the atoms (at most k), \
                         not by the encoder"
                    ),
                    Encoding::Native => format!("{title}: codes by its encoder"),
                }));
            }
            Err(e) => self.message = Some(Err(e.to_string())),
        }
    }

    /// Opens a dictionary file or a SAELens folder.
    pub fn open(&mut self, path: &Path, layers: usize) {
        match io::load(path) {
            Ok(d) => {
                let title = d.title();
                let unlabelled = d.info.is_empty();
                self.set_current(Arc::new(d), Some(path.to_path_buf()), layers);
                self.message = Some(Ok(if unlabelled {
                    format!(
                        "opened {title}: its atoms have no labels yet (import it with `hubel dict \
                         import` to label them on the corpus)"
                    )
                } else {
                    format!("opened {title}")
                }));
            }
            Err(e) => self.message = Some(Err(e.to_string())),
        }
    }

    /// Writes the current dictionary as a SAELens folder.
    pub fn export_saelens(&mut self, dir: &Path) {
        let Some(d) = &self.current else {
            self.message = Some(Err("no dictionary to export".into()));
            return;
        };
        self.message = Some(
            io::export_saelens(d, dir)
                .map(|_| format!("SAELens folder written: {}", dir.display()))
                .map_err(|e| e.to_string()),
        );
    }

    /// Takes what the jobs sent; `layers` is the model's depth (for the atlas).
    pub fn poll(&mut self, layers: usize) {
        let mut snapshot = None;
        if let Some(rx) = &self.progress {
            loop {
                match rx.try_recv() {
                    Ok(Progress::Point(p)) => self.curve.push(p),
                    Ok(Progress::Snapshot(d)) => snapshot = Some(d),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.progress = None;
                        break;
                    }
                }
            }
        }
        if let Some(d) = snapshot {
            // A snapshot replaces a snapshot, never a dictionary the user opened meanwhile.
            if self.current.is_none() || self.snapshot {
                self.set_current(d, None, layers);
            }
        }
        self.train.poll("the dictionary training");
        if let Some(Ok((d, path))) = &self.train.last {
            if self.snapshot || self.current.is_none() {
                let (d, path) = (d.clone(), path.clone());
                self.set_current(d, Some(path), layers);
            }
        }
        self.decompose.poll("the decomposition");
    }
}

/// Where a dictionary trained in the app is saved: `<data>/dictionaries/<method>-<atoms>-<hooks>`.
pub fn default_path(assets: &Path, spec: &TrainSpec) -> PathBuf {
    let hooks: Vec<String> = spec
        .hooks
        .iter()
        .map(|h| match h.layer() {
            Some(l) => format!("L{l}"),
            None => "embed".into(),
        })
        .collect();
    assets.join("dictionaries").join(format!(
        "{}-{}-{}.safetensors",
        spec.opts.method.name(),
        spec.opts.atoms,
        hooks.join("_")
    ))
}

/// How often a training job hands its dictionary over for browsing, and saves a checkpoint.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// A model job: WordNet (fetched first if needed, examples only when `examples`) → residual
/// streams → a dictionary, saved to `out` (a checkpoint beside it while it trains); points and
/// snapshots on `progress`, the result on `tx`.
pub fn train_job(
    assets: PathBuf,
    clients: crate::assets::Clients,
    examples: bool,
    spec: TrainSpec,
    out: PathBuf,
    tx: Sender<Result<Trained, String>>,
    progress: Sender<Progress>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let result = (|| -> Result<Trained, JobError> {
            let dir = crate::jobs::fetch::fetch_corpus(ctx, &assets, &clients)?;
            ctx.set_phase("Reading WordNet");
            let mut corpus =
                crate::scan::Corpus::wordnet(&dir).map_err(|e| JobError::Failed(e.to_string()))?;
            if examples {
                corpus
                    .stimuli
                    .retain(|s| s.sense.as_ref().is_some_and(|s| s.kind == "example"));
                corpus.name = "wordnet-3.1-examples".into();
            }
            let checkpoint = out.with_extension("checkpoint.safetensors");
            let mut last = Instant::now();
            let mut on_point = |p: &TrainPoint, d: &Dictionary| -> Result<(), DictError> {
                let _ = progress.send(Progress::Point(*p));
                if last.elapsed() >= SNAPSHOT_EVERY {
                    last = Instant::now();
                    let _ = progress.send(Progress::Snapshot(Arc::new(d.clone())));
                    // A checkpoint: training cancelled or crashed leaves a usable dictionary.
                    let _ = io::save(d, &checkpoint);
                }
                Ok(())
            };
            let dict = dictionary::train_job(Some(ctx), &model, &corpus, &spec, &mut on_point)?;
            io::save(&dict, &out)?;
            let _ = std::fs::remove_file(&checkpoint);
            Ok((Arc::new(dict), out.clone()))
        })();
        match result {
            Ok(done) => {
                let summary = format!("{} saved", done.0.title());
                let _ = tx.send(Ok(done));
                Ok(summary)
            }
            Err(e) => {
                let _ = tx.send(Err(match &e {
                    JobError::Cancelled => "cancelled".into(),
                    other => other.to_string(),
                }));
                Err(e)
            }
        }
    })
}

/// A model job: `word` (in `context`) decomposed at each of `hooks`.
pub fn decompose_job(
    dict: Arc<Dictionary>,
    word: String,
    context: Option<String>,
    hooks: Vec<HookPoint>,
    tx: Sender<Result<Vec<Decomposition>, String>>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        ctx.set_phase("Decomposing");
        let result: Result<Vec<Decomposition>, DictError> = hooks
            .iter()
            .map(|&h| decompose::decompose(&model, &dict, &word, context.as_deref(), h, 12))
            .collect();
        match result {
            Ok(d) => {
                let _ = tx.send(Ok(d));
                Ok(String::new())
            }
            Err(e) => {
                let m = e.to_string();
                let _ = tx.send(Err(m.clone()));
                Err(JobError::Failed(m))
            }
        }
    })
}
