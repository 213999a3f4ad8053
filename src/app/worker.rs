//! The one thread that owns the model. The UI sends [`Request`]s and drains [`Response`]s each
//! frame; nothing here blocks the UI. Every run carries a [`RunId`] and a cancel flag: a new run
//! cancels the one in flight (the model checks the flag before every block), queued runs are
//! skipped in favour of the newest, and the UI drops results whose id is stale.
//!
//! Long work runs beside it on the [`JobRunner`]: the model is an `Arc<Model>` shared read-only
//! with jobs ([`Request::ModelJob`]), and the worker holds the runner's [`Interactive`] gate
//! around each run and effect, so jobs stand at their next checkpoint while a click computes.
//!
//! The worker cannot die silently: every request runs under `catch_unwind`; a panic is answered
//! with [`Response::Failed`] naming the request, the probe cache is dropped (it may be half
//! written), and the worker goes on serving with the model it has.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analysis::pattern::PatternGrids;
use crate::analysis::Fidelity;
use crate::features::dictionary::Dictionary;
use crate::features::FeatureId;
use crate::hooks::{ActivationRecord, BlockSite, Capture, Intervention};
use crate::jobs::{self, Interactive, JobCtx, JobError, JobResult, JobRunner};
use crate::model::{
    Generate, HeadPattern, Model, ModelError, ModelInfo, Precision, ProbeCache, Token,
};
use crate::probe::{self, RunSummary};

pub type RunId = u64;

/// Probes up to this many tokens also record every attention pattern (for the head card).
pub const PATTERN_TOKENS: usize = 96;

/// Tokens listed per side in the next-token panel.
pub const TOP_NEXT: usize = 10;

/// Work for the model's thread that is not one of the fixed requests (tests).
pub type Job = Box<dyn FnOnce(Option<&Model>) -> Response + Send>;

/// Long work on the current model, run on the job runner (scan, experiments, training).
pub type ModelJob = Box<dyn FnOnce(Arc<Model>, &JobCtx) -> JobResult + Send>;

pub enum Request {
    Load(PathBuf),
    Run(RunRequest),
    /// What a feature writes to the output: tokens it promotes and suppresses.
    Effect(EffectRequest),
    /// Any other work on the model's thread; its panics are caught like every request's.
    Job {
        name: String,
        job: Job,
    },
    /// Queue a job on the job runner with the current model (it fails there when none is
    /// loaded); its progress and outcome are in the runner's list.
    ModelJob {
        name: String,
        job: ModelJob,
    },
    /// What a feature card asks of the model: example windows' activations, an occlusion map.
    Card(CardQuery),
    /// The dictionary in use changed: card queries and effects of its features asked from now
    /// on use this one (a run also brings its own).
    SetDictionary(Option<Arc<Dictionary>>),
}

/// A card's question; its answer ([`Response::Card`]) carries the same `serial`.
#[derive(Clone, Debug, PartialEq)]
pub enum CardQuery {
    /// The feature's activation at every token of each window (one batched forward, stopped
    /// after the feature's layer).
    Rows {
        serial: u64,
        feature: FeatureId,
        windows: Vec<(usize, Vec<u32>)>,
    },
    /// The change in the feature's activation at `position` when each earlier token is
    /// replaced by a neutral token (or deleted).
    Occlusion {
        serial: u64,
        feature: FeatureId,
        tokens: Vec<u32>,
        position: usize,
        delete: bool,
    },
    /// One head's baseline attention pattern over the probe `tokens` at `precision` (probes
    /// longer than [`PATTERN_TOKENS`] keep none): from the worker's cached input of its layer
    /// when that probe is the one prepared, else by a forward stopped before that layer
    /// ([`Model::head_pattern`]).
    Pattern {
        serial: u64,
        feature: FeatureId,
        tokens: Vec<u32>,
        precision: Precision,
    },
}

impl CardQuery {
    pub fn serial(&self) -> u64 {
        match self {
            CardQuery::Rows { serial, .. }
            | CardQuery::Occlusion { serial, .. }
            | CardQuery::Pattern { serial, .. } => *serial,
        }
    }
}

/// The answer to a [`CardQuery`].
#[derive(Clone, Debug)]
pub enum CardAnswer {
    Rows(Vec<(usize, crate::model::FeatureRow)>),
    Occlusion(crate::model::Occlusion),
    /// A head's pattern and the grids the card draws of it (pooled here, off the UI thread).
    Pattern(Computed),
}

/// A head's pattern computed on demand: which head, and the grids the card draws (the finest
/// is the pattern itself when it has at most 256 tokens, else max-pooled). Its `values` are
/// dropped once pooled (64 MB at 4,096 tokens that nothing else reads).
#[derive(Clone, Debug)]
pub struct Computed {
    pub pattern: Arc<HeadPattern>,
    pub grids: Arc<PatternGrids>,
}

impl Computed {
    fn new(mut pattern: HeadPattern) -> Self {
        let grids = PatternGrids::new(&pattern.values, pattern.len);
        pattern.values = Vec::new();
        Computed {
            pattern: Arc::new(pattern),
            grids: Arc::new(grids),
        }
    }
}

/// Which request a [`Response::Failed`] answers, so the UI stops waiting for just that one.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestKind {
    Load(PathBuf),
    Run(RunId),
    Effect(EffectRequest),
    Job,
    Card(u64),
}

impl Request {
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Load(p) => RequestKind::Load(p.clone()),
            Request::Run(r) => RequestKind::Run(r.id),
            Request::Effect(e) => RequestKind::Effect(*e),
            Request::Job { .. } | Request::ModelJob { .. } | Request::SetDictionary(_) => {
                RequestKind::Job
            }
            Request::Card(q) => RequestKind::Card(q.serial()),
        }
    }

    /// What the request was, for an error message.
    pub fn describe(&self) -> String {
        match self {
            Request::Load(p) => format!("loading {}", p.display()),
            Request::Run(r) => format!("running the probe (run {})", r.id),
            Request::Effect(e) => format!("the direct effect of {}", e.feature),
            Request::Job { name, .. } | Request::ModelJob { name, .. } => name.clone(),
            Request::SetDictionary(_) => "changing the dictionary in use".into(),
            Request::Card(CardQuery::Rows { feature, .. }) => {
                format!("the corpus examples of {feature}")
            }
            Request::Card(CardQuery::Occlusion { feature, .. }) => {
                format!("the occlusion map of {feature}")
            }
            Request::Card(CardQuery::Pattern { feature, .. }) => {
                format!("the attention pattern of {feature}")
            }
        }
    }
}

#[derive(Clone)]
pub struct RunRequest {
    pub id: RunId,
    pub text: String,
    pub interventions: Vec<Intervention>,
    /// Tokens of continuation to generate (0 for none).
    pub continuation: usize,
    pub cancel: Arc<AtomicBool>,
    /// Exact (f32, the reference) or the fast path; the baseline and the intervened side are
    /// both computed at this precision.
    pub precision: Precision,
    /// The dictionary in use: both sides' records get its codes (its atoms are then a basis of
    /// the maps and cards), and the cards' queries of its features use it.
    pub dictionary: Option<Arc<Dictionary>>,
}

/// A feature's direct effect on the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EffectRequest {
    pub feature: FeatureId,
    /// `None`: per unit of activation (neurons only). `Some(p)`: on the current probe at
    /// position `p`, the final norm's scale frozen at its baseline value there (a head's output
    /// direction is its `z` at `p`, so heads always need a position).
    pub position: Option<usize>,
}

/// One side (baseline or intervened) of a run, as plain data.
#[derive(Clone)]
pub struct Side {
    pub record: ActivationRecord,
    /// Next-token top 10 after the last position, the loss of every token.
    pub summary: RunSummary,
    /// Logits `[pos, vocab]` of positions `logits_from..` (for the next-token panel at a chosen
    /// position). An intervened side first comes with the last position's only
    /// (`logits_from` = its position) and the rest follows ([`Response::RunLogits`]). Shared:
    /// a recoded baseline (another dictionary's codes) keeps the same logits.
    pub logits: Arc<Vec<f32>>,
    pub logits_from: usize,
    pub vocab: usize,
}

impl Side {
    pub fn logits_at(&self, pos: usize) -> Option<&[f32]> {
        let row = pos.checked_sub(self.logits_from)?;
        self.logits.get(row * self.vocab..(row + 1) * self.vocab)
    }

    /// Whether every position's logits (and so the per-token loss) are here.
    pub fn is_complete(&self) -> bool {
        self.logits_from == 0
    }
}

pub struct RunResult {
    pub id: RunId,
    pub tokens: Vec<Token>,
    pub baseline: Arc<Side>,
    pub intervened: Option<Side>,
    /// KL(baseline ‖ intervened) of the next-token distribution after the last position.
    pub kl: Option<f64>,
    pub elapsed_ms: f64,
    /// Blocks computed for this result (0 when the baseline was reused and nothing changed).
    pub layers_computed: usize,
    /// The precision every number of this result was computed at.
    pub precision: Precision,
    /// The dictionary whose codes both sides' records hold.
    pub dictionary: Option<Arc<Dictionary>>,
    /// What the worker holds for this text (both precisions' probes when both were run): the
    /// recorded activations, every position's logits, the block inputs an edit recomputes
    /// from, and this result's intervened side (its every-position logits counted though they
    /// follow).
    pub held_bytes: usize,
}

/// A feature's effect, as the card lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    pub request: EffectRequest,
    /// Which scale the values are at, in words.
    pub scale: String,
    pub promoted: Vec<(String, f32)>,
    pub suppressed: Vec<(String, f32)>,
}

pub enum Response {
    /// A model is loaded; `vocab` labels every token id as the views show it (for next-token
    /// lists at any position).
    Loaded {
        info: ModelInfo,
        vocab: Arc<Vec<String>>,
    },
    LoadFailed {
        path: PathBuf,
        message: String,
    },
    Run(Box<RunResult>),
    /// Arrives after a run whose intervened side came with the last position's logits only:
    /// every position's, and the summary with the per-token loss.
    RunLogits {
        id: RunId,
        logits: Vec<f32>,
        summary: RunSummary,
    },
    /// Arrives after its run: the continuation of each side.
    Continuation {
        id: RunId,
        intervened: bool,
        tokens: Vec<Token>,
    },
    ContinuationFailed {
        id: RunId,
        message: String,
    },
    RunFailed {
        id: RunId,
        message: String,
    },
    Effect(Effect),
    EffectFailed {
        request: EffectRequest,
        message: String,
    },
    /// A request panicked (a bug); the worker dropped its probe cache and keeps serving.
    Failed {
        request: String,
        kind: Option<RequestKind>,
        message: String,
    },
    /// The answer of a [`Request::Card`].
    Card {
        serial: u64,
        answer: Result<CardAnswer, String>,
    },
    /// The answer of a [`Request::Job`].
    JobDone {
        name: String,
        message: String,
    },
    /// A [`Request::Job`] that answered through a channel of its own: nothing to handle (the
    /// repaint after every response wakes the UI, which polls that channel).
    JobAnswered {
        name: String,
    },
}

/// The UI's end of the worker.
pub struct WorkerHandle {
    tx: Sender<Request>,
    pub rx: Receiver<Response>,
}

impl WorkerHandle {
    /// Starts the worker thread with a job runner of its own; `repaint` is called after every
    /// response.
    pub fn spawn(repaint: impl Fn() + Send + 'static) -> Self {
        Self::spawn_with(repaint, JobRunner::new(Interactive::new(), || {}))
    }

    /// Starts the worker thread; model jobs go to `jobs`, and runs hold its interactive gate.
    pub fn spawn_with(repaint: impl Fn() + Send + 'static, jobs: JobRunner) -> Self {
        let (tx, requests) = std::sync::mpsc::channel();
        let (responses, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("hubel-model".into())
            .spawn(move || {
                Worker {
                    model: None,
                    probes: [None, None],
                    dictionary: None,
                    current: Precision::Exact,
                    interactive: jobs.interactive().clone(),
                    jobs,
                    tx: responses,
                    repaint: Box::new(repaint),
                }
                .serve(requests)
            });
        if let Err(e) = spawned {
            // Without a worker every request is answered here, as a failure the UI can show.
            let (tx2, rx2) = std::sync::mpsc::channel();
            let _ = tx2.send(Response::Failed {
                request: "starting the model thread".into(),
                kind: None,
                message: e.to_string(),
            });
            return WorkerHandle { tx, rx: rx2 };
        }
        WorkerHandle { tx, rx }
    }

    /// Sends a request; `false` when the worker is gone (the caller shows an error).
    pub fn send(&self, request: Request) -> bool {
        self.tx.send(request).is_ok()
    }
}

/// The name of the fidelity meter's jobs: the output panel shows them, the Jobs list leaves them
/// out (one comes with every fast-path click; the list would jump on each).
pub const FIDELITY_JOB: &str = "Fidelity meter";

/// How long a fidelity job waits before it computes, so that of a burst of clicks only the last
/// is measured and a click's own run never competes with the meter of the one before.
pub const FIDELITY_DELAY: Duration = Duration::from_millis(250);

/// The name of the job that makes the fast path's 4-bit weights.
pub const PREPARE_FAST_JOB: &str = "Prepare the fast path (4-bit weights)";

/// What a fidelity job hands back: the meter it was asked for (`serial`) and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct FidelityAnswer {
    pub serial: u64,
    pub result: Result<Fidelity, String>,
}

/// A model job for the fidelity meter: the probe `tokens` with `interventions`, run exactly and
/// on the fast path, compared at every position. It waits [`FIDELITY_DELAY`] first (and at
/// checkpoints while a click computes); once `stale` is set it ends as cancelled without a word.
pub fn fidelity_job(
    serial: u64,
    tokens: Vec<u32>,
    interventions: Vec<Intervention>,
    stale: Arc<AtomicBool>,
    answer: Sender<FidelityAnswer>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let waiting = Instant::now();
        loop {
            ctx.checkpoint()?;
            if stale.load(Ordering::Relaxed) {
                return Err(JobError::Cancelled);
            }
            if waiting.elapsed() >= FIDELITY_DELAY {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ctx.set_phase("Running the probe exactly and on the fast path");
        let result = match model.fidelity(&tokens, &interventions, Some(ctx.cancel_flag().clone()))
        {
            Err(ModelError::Cancelled) => return Err(JobError::Cancelled),
            other => other.map_err(|e| e.to_string()),
        };
        if stale.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        let summary = match &result {
            Ok(f) => format!(
                "KL {:.4} nats, top-1 agreement {:.3}",
                f.kl_last, f.top1_agreement
            ),
            Err(e) => e.clone(),
        };
        let failed = result.is_err();
        let _ = answer.send(FidelityAnswer { serial, result });
        if failed {
            Err(JobError::Failed(summary))
        } else {
            Ok(summary)
        }
    })
}

/// A model job that makes the fast path's 4-bit weights now (else the first fast run makes
/// those it needs).
pub fn prepare_fast_job() -> ModelJob {
    Box::new(|model, ctx| {
        ctx.set_phase("Packing 4-bit weight blocks");
        let bytes = model.prepare_fast();
        Ok(format!(
            "{} of 4-bit weights",
            jobs::human_bytes(bytes as f64)
        ))
    })
}

/// The name of the scan jobs (the default scan, or all of WordNet).
pub fn scan_job_name(all: bool) -> String {
    if all {
        "Scan all of WordNet (receptive fields)".into()
    } else {
        format!(
            "Scan {} WordNet stimuli (receptive fields)",
            crate::scan::index::DEFAULT_STIMULI
        )
    }
}

/// The name of the scan job of a text file or folder.
pub fn text_scan_job_name(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    format!("Scan {name} (receptive fields)")
}

/// What a scan job hands back: the index's path and the index, or why it failed.
type ScanAnswer = Sender<Result<(PathBuf, crate::scan::ScanIndex), String>>;

/// A model job that scans WordNet (fetched first if it is not there) into the model's index in
/// `assets/scans/` (resuming or extending it) and hands the index back on `answer`.
pub fn scan_job(
    assets: PathBuf,
    clients: crate::assets::Clients,
    all: bool,
    dictionary: Option<Arc<Dictionary>>,
    answer: ScanAnswer,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let result = (|| -> Result<_, JobError> {
            let dir = jobs::fetch::fetch_corpus(ctx, &assets, &clients)?;
            ctx.set_phase("Reading WordNet");
            let corpus =
                crate::scan::Corpus::wordnet(&dir).map_err(|e| JobError::Failed(e.to_string()))?;
            let limit = (!all).then_some(crate::scan::index::DEFAULT_STIMULI);
            scan_into_index(ctx, &model, &assets, &corpus, limit, dictionary)
        })();
        answer_scan(result, answer)
    })
}

/// A model job that scans every stimulus of a text file (one per line, blank lines skipped) or
/// of a folder's `.txt` files into an index of their own in `assets/scans/` (resuming a
/// cancelled scan of the same text) and hands it back on `answer`.
pub fn text_scan_job(assets: PathBuf, path: PathBuf, answer: ScanAnswer) -> ModelJob {
    Box::new(move |model, ctx| {
        let result = (|| -> Result<_, JobError> {
            ctx.set_phase("Reading the text");
            let corpus =
                crate::scan::Corpus::text(&path).map_err(|e| JobError::Failed(e.to_string()))?;
            scan_into_index(ctx, &model, &assets, &corpus, None, None)
        })();
        answer_scan(result, answer)
    })
}

/// Scans `corpus` (its first `limit` stimuli, or all) into the model's index of it.
fn scan_into_index(
    ctx: &jobs::JobCtx,
    model: &Model,
    assets: &std::path::Path,
    corpus: &crate::scan::Corpus,
    limit: Option<usize>,
    dictionary: Option<Arc<Dictionary>>,
) -> Result<(PathBuf, crate::scan::ScanIndex), JobError> {
    let mut out = crate::scan::index::default_index_path(
        &super::receptive::scans_dir(assets),
        &model.info().sha256,
        &corpus.name,
        &corpus.sha256(),
    );
    if let Some(d) = &dictionary {
        out = crate::scan::index::with_dictionary(&out, &d.sha256());
    }
    let opts = crate::scan::ScanOptions {
        limit,
        out: Some(out.clone()),
        save_every: Duration::from_secs(30),
        dictionary,
        ..Default::default()
    };
    let index = crate::scan::job(ctx, model, corpus, &opts)?;
    Ok((out, index))
}

/// The scan job's summary line, with the index handed back on `answer` (or why not).
fn answer_scan(
    result: Result<(PathBuf, crate::scan::ScanIndex), JobError>,
    answer: ScanAnswer,
) -> Result<String, JobError> {
    match result {
        Ok((out, index)) => {
            let m = &index.meta;
            let summary = format!(
                "{} stimuli, {} tokens in {:.0} s ({:.0} tokens/s), saved as {}",
                m.stimuli_done,
                m.tokens_done,
                m.seconds,
                m.tokens_done as f64 / m.seconds.max(1e-9),
                out.display()
            );
            let _ = answer.send(Ok((out, index)));
            Ok(summary)
        }
        Err(e) => {
            let _ = answer.send(Err(e.to_string()));
            Err(e)
        }
    }
}

/// The name of an experiment's job.
pub fn experiment_job_name(protocol: &str) -> String {
    format!("Experiment {protocol}")
}

/// A model job that runs `protocol` (by its kind, default settings; a lesion protocol with the
/// `hand_picked` group too) and hands the report back on `answer`, or why it did not finish.
pub fn experiment_job(
    protocol: crate::corpus::protocol::Protocol,
    hand_picked: Vec<FeatureId>,
    dictionary: Option<Arc<Dictionary>>,
    answer: Sender<super::experiments::Answer>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let started = Instant::now();
        let lesion = crate::experiments::lesion::Settings {
            units: hand_picked,
            ..Default::default()
        };
        let runner = crate::experiments::Runner::new(&model, Some(ctx));
        let selectivity = crate::experiments::selectivity::Settings {
            dictionary,
            ..Default::default()
        };
        let result = crate::experiments::run_with(&runner, &protocol, &selectivity, &lesion);
        finish_experiment(result, protocol, &model, started, "the experiment", answer)
    })
}

/// Hands a finished experiment (or dose–response curve) back on `answer` and says what the Jobs
/// list shows: its time, or why it stopped.
fn finish_experiment(
    result: crate::experiments::Result<crate::experiments::Report>,
    protocol: crate::corpus::protocol::Protocol,
    model: &Model,
    started: Instant,
    what: &str,
    answer: Sender<super::experiments::Answer>,
) -> JobResult {
    match result {
        Ok(report) => {
            let seconds = started.elapsed().as_secs_f64();
            let summary = format!("{} in {seconds:.1} s", protocol.name);
            let _ = answer.send(Ok(super::experiments::Finished {
                protocol,
                report,
                seconds,
                model: model.info().name.clone(),
            }));
            Ok(summary)
        }
        Err(e) => {
            let e: JobError = e.into();
            let _ = answer.send(Err(match &e {
                JobError::Cancelled => format!("{what} was cancelled"),
                other => other.to_string(),
            }));
            Err(e)
        }
    }
}

/// A model job that runs a dose–response curve on `protocol`'s sets and hands it back.
pub fn dose_job(
    protocol: crate::corpus::protocol::Protocol,
    settings: crate::experiments::dose::Settings,
    answer: Sender<super::experiments::Answer>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let started = Instant::now();
        let runner = crate::experiments::Runner::new(&model, Some(ctx));
        let result = crate::experiments::dose::run(&runner, &protocol, &settings)
            .map(crate::experiments::Report::Dose);
        finish_experiment(
            result,
            protocol,
            &model,
            started,
            "the dose–response run",
            answer,
        )
    })
}

/// A model job that fits a discriminator on `protocol` and classifies `texts` with it.
pub fn discriminator_job(
    protocol: crate::corpus::protocol::Protocol,
    which: crate::experiments::discriminator::Which,
    texts: Vec<String>,
    answer: Sender<Result<super::experiments::Classified, String>>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        let runner = crate::experiments::Runner::new(&model, Some(ctx));
        let result = crate::experiments::discriminator::fit(
            &runner,
            &protocol,
            which,
            5,
            crate::experiments::SEED,
        )
        .and_then(|d| {
            let results = d.classify(&model, &texts)?;
            Ok(super::experiments::Classified {
                discriminator: d,
                results,
            })
        });
        match result {
            Ok(c) => {
                let summary = c.discriminator.describe();
                let _ = answer.send(Ok(c));
                Ok(summary)
            }
            Err(e) => {
                let e: JobError = e.into();
                let _ = answer.send(Err(e.to_string()));
                Err(e)
            }
        }
    })
}

/// The name of the labelling job.
pub const LABEL_JOB: &str = "Label every feature (offline labels)";

/// A model job that labels every feature of `index` (firing tokens and their context, WordNet
/// enrichment with hypernyms from `wordnet` when given, promoted tokens), saves the labels at
/// `out` and hands them back on `answer`.
pub fn label_job(
    index: Arc<crate::scan::ScanIndex>,
    wordnet: Option<PathBuf>,
    out: PathBuf,
    answer: Sender<Result<crate::scan::labels::Labels, String>>,
) -> ModelJob {
    Box::new(move |model, ctx| {
        match crate::scan::labels::job(ctx, &index, Some(&model), wordnet.as_deref(), &out) {
            Ok(labels) => {
                let summary = format!(
                    "{} features labelled in {:.0} s, saved as {}",
                    labels.labels.len(),
                    labels.timings.total,
                    out.display()
                );
                let _ = answer.send(Ok(labels));
                Ok(summary)
            }
            Err(e) => {
                let _ = answer.send(Err(e.to_string()));
                Err(e)
            }
        }
    })
}

/// The baseline of the current probe, kept while only interventions change.
struct Probe {
    text: String,
    tokens: Vec<Token>,
    /// Its baseline's logits moved to `baseline` (one copy); its record shares its values.
    cache: ProbeCache,
    baseline: Arc<Side>,
    continuation: Option<(usize, Vec<Token>)>,
    /// The dictionary whose codes the baseline's record holds (`None`: none).
    coded: Option<Arc<Dictionary>>,
}

/// Whether two dictionaries in use are the same one (the same shared copy).
fn same_dict(a: &Option<Arc<Dictionary>>, b: &Option<Arc<Dictionary>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Puts `dict`'s codes in `record` (or takes every code out without one).
fn code(record: &mut ActivationRecord, dict: &Option<Arc<Dictionary>>) {
    match dict {
        Some(d) => d.add_codes(record),
        None => record.clear_codes(),
    }
}

struct Worker {
    model: Option<Arc<Model>>,
    /// The current text's probe at each precision ([`slot`]); toggling the precision prepares
    /// the other one (once), and both go when the text changes.
    probes: [Option<Probe>; 2],
    /// The precision of the latest run (its probe is the one effects read).
    current: Precision,
    /// The dictionary of the latest run (cards and effects of its features use it).
    dictionary: Option<Arc<Dictionary>>,
    jobs: JobRunner,
    interactive: Arc<Interactive>,
    tx: Sender<Response>,
    repaint: Box<dyn Fn() + Send>,
}

fn capture_for(len: usize) -> Capture {
    let mut sites = vec![
        BlockSite::MlpPost,
        BlockSite::Z,
        BlockSite::AttnOut,
        BlockSite::ResidPost,
    ];
    if len <= PATTERN_TOKENS {
        sites.push(BlockSite::Pattern);
    }
    Capture::sites(sites)
}

fn side(model: &Model, out: crate::model::RunOutput, ids: &[u32]) -> Side {
    let summary = probe::summarize(model, &out, ids, TOP_NEXT, None);
    Side {
        summary,
        vocab: out.vocab,
        logits: Arc::new(out.logits),
        logits_from: 0,
        record: out.record,
    }
}

/// An intervened side with the last position's logits only (`out` from `Model::rerun_last`):
/// the next tokens now, the per-token loss when the rest arrives.
fn side_last(model: &Model, out: crate::model::RunOutput, ids: &[u32]) -> Side {
    let summary = RunSummary {
        top_next: probe::top_tokens(model, &out.logits, TOP_NEXT),
        mean_nll: None,
        token_nll: Vec::new(),
        continuation: None,
        kl_from_baseline: None,
    };
    Side {
        summary,
        vocab: out.vocab,
        logits: Arc::new(out.logits),
        logits_from: ids.len() - 1,
        record: out.record,
    }
}

use jobs::panic_message;

/// A card's question, answered exactly (the index's numbers are exact-path numbers); a head's
/// pattern at the precision it asks (the probe's).
fn card_answer(
    model: &Model,
    query: CardQuery,
    dict: &Option<Arc<Dictionary>>,
) -> Result<CardAnswer, ModelError> {
    let add = |rs: &mut [ActivationRecord]| match dict {
        Some(d) => d.add_codes_all(rs),
        None => rs.iter_mut().for_each(|r| r.clear_codes()),
    };
    let coder: Option<crate::model::Coder> = dict.as_ref().map(|_| &add as crate::model::Coder);
    match query {
        CardQuery::Rows {
            feature, windows, ..
        } => {
            let seqs: Vec<&[u32]> = windows.iter().map(|(_, t)| t.as_slice()).collect();
            let rows = model.feature_rows_coded(&seqs, feature, coder, None)?;
            Ok(CardAnswer::Rows(
                windows.iter().map(|(w, _)| *w).zip(rows).collect(),
            ))
        }
        CardQuery::Occlusion {
            feature,
            tokens,
            position,
            delete,
            ..
        } => {
            let mode = if delete {
                crate::model::Occlude::Delete
            } else {
                crate::model::Occlude::Replace(model.neutral_token())
            };
            Ok(CardAnswer::Occlusion(model.occlusion_coded(
                &tokens, feature, position, mode, coder, None,
            )?))
        }
        // The worker answers these from its probe cache when it can (`Worker::head_pattern`).
        CardQuery::Pattern {
            feature,
            tokens,
            precision,
            ..
        } => Ok(CardAnswer::Pattern(Computed::new(
            model.with_precision(precision).head_pattern(
                &tokens,
                feature.layer,
                feature.index,
                None,
            )?,
        ))),
    }
}

/// Where a precision's probe is kept.
fn slot(precision: Precision) -> usize {
    match precision {
        Precision::Exact => 0,
        Precision::Fast => 1,
    }
}

impl Worker {
    fn send(&self, r: Response) {
        let _ = self.tx.send(r);
        (self.repaint)();
    }

    fn serve(mut self, requests: Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            // Take everything queued; of the runs only the newest is worth doing.
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            let newest_run = batch.iter().rposition(|r| matches!(r, Request::Run(_)));
            for (i, request) in batch.into_iter().enumerate() {
                if matches!(request, Request::Run(_)) && Some(i) != newest_run {
                    continue;
                }
                let (what, kind) = (request.describe(), request.kind());
                let outcome = catch_unwind(AssertUnwindSafe(|| self.handle(request)));
                if let Err(payload) = outcome {
                    // The probe caches may be half updated: drop them, keep the model.
                    self.probes = [None, None];
                    self.send(Response::Failed {
                        request: what,
                        kind: Some(kind),
                        message: panic_message(payload.as_ref()),
                    });
                }
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Run(run) => {
                // Jobs stand at their next checkpoint until this run (and its continuations)
                // is done.
                let _busy = self.interactive.begin();
                self.run(run)
            }
            Request::Load(path) => self.load(path),
            Request::Effect(req) => {
                let _busy = self.interactive.begin();
                self.effect(req)
            }
            Request::Job { job, .. } => {
                // Work on the model, like a run: jobs on the runner wait at their checkpoint.
                let _busy = self.interactive.begin();
                let response = job(self.model.as_deref());
                self.send(response);
            }
            Request::SetDictionary(dict) => self.dictionary = dict,
            Request::Card(query) => {
                let _busy = self.interactive.begin();
                let serial = query.serial();
                let answer = match &self.model {
                    None => Err("no model is loaded".to_string()),
                    Some(model) => match query {
                        CardQuery::Pattern {
                            feature,
                            tokens,
                            precision,
                            ..
                        } => self
                            .head_pattern(model, feature, &tokens, precision)
                            .map(|p| CardAnswer::Pattern(Computed::new(p))),
                        query => card_answer(model, query, &self.dictionary),
                    }
                    .map_err(|e| e.to_string()),
                };
                self.send(Response::Card { serial, answer });
            }
            Request::ModelJob { name, job } => match self.model.clone() {
                Some(model) => {
                    self.jobs.submit(name, move |ctx| job(model, ctx));
                }
                None => {
                    self.jobs
                        .submit(name, |_| Err("no model is loaded; open one first".into()));
                }
            },
        }
    }

    fn load(&mut self, path: PathBuf) {
        self.probes = [None, None];
        match Model::open(&path) {
            Ok(model) => {
                let info = model.info().clone();
                // Labels, as the views show tokens: whitespace visible, stray bytes as <E8>.
                let vocab: Vec<String> = (0..info.vocab as u32)
                    .map(|id| super::text::label_bytes(&model.tokenizer().token_bytes(id)))
                    .collect();
                self.model = Some(Arc::new(model));
                self.send(Response::Loaded {
                    info,
                    vocab: Arc::new(vocab),
                });
            }
            Err(e) => self.send(Response::LoadFailed {
                path,
                message: e.to_string(),
            }),
        }
    }

    fn effect(&self, req: EffectRequest) {
        let Some(model) = &self.model else {
            return self.send(Response::EffectFailed {
                request: req,
                message: "no model is loaded".into(),
            });
        };
        match self.compute_effect(model, req) {
            Ok(effect) => self.send(Response::Effect(effect)),
            Err(message) => self.send(Response::EffectFailed {
                request: req,
                message,
            }),
        }
    }

    /// A head's baseline pattern over `tokens` at `precision`: from the probe cache of that
    /// precision when it holds these tokens (one layer's q and k and one head's scores), else
    /// by a forward through the blocks before the head's.
    fn head_pattern(
        &self,
        model: &Model,
        feature: FeatureId,
        tokens: &[u32],
        precision: Precision,
    ) -> Result<HeadPattern, ModelError> {
        if feature.basis != crate::features::Basis::Heads {
            return Err(ModelError::Format(format!(
                "{feature} is not an attention head: only heads have a pattern"
            )));
        }
        let model = model.with_precision(precision);
        let (layer, head) = (feature.layer, feature.index);
        match self.probes[slot(precision)]
            .as_ref()
            .filter(|p| p.cache.tokens() == tokens)
        {
            Some(probe) => model.head_pattern_cached(&probe.cache, layer, head),
            None => model.head_pattern(tokens, layer, head, None),
        }
    }

    fn compute_effect(&self, model: &Model, req: EffectRequest) -> Result<Effect, String> {
        let at = match req.position {
            None => None,
            Some(pos) => {
                let probe = self.probes[slot(self.current)]
                    .as_ref()
                    .ok_or("run a probe first")?;
                Some((&probe.baseline.record, pos))
            }
        };
        let d = if req.feature.basis == crate::features::Basis::Dictionary {
            let dict = self
                .dictionary
                .as_ref()
                .ok_or("open the dictionary of this feature first")?;
            let h = dict.hook_of_layer(req.feature.layer).ok_or_else(|| {
                format!(
                    "{}: the dictionary in use reads {}",
                    req.feature,
                    dict.hooks_text()
                )
            })?;
            if req.feature.index >= dict.atoms() {
                return Err(format!(
                    "{}: the dictionary has {} atoms",
                    req.feature,
                    dict.atoms()
                ));
            }
            crate::effect::atom_direction(
                model,
                req.feature,
                dict.atom_direction(h, req.feature.index),
                at,
            )
        } else {
            crate::effect::direction(model, req.feature, at)
        }
        .map_err(|e| e.to_string())?;
        let (promoted, suppressed) =
            crate::effect::ranked(model, &d, 10).map_err(|e| e.to_string())?;
        // Labels show a byte fragment's bytes, not a replacement character.
        let name = |t: crate::effect::EffectToken| {
            (
                super::text::label_bytes(&model.tokenizer().token_bytes(t.id)),
                t.value,
            )
        };
        let scale = match req.position {
            None => d.scale.describe().to_string(),
            Some(p) => format!("{} at position {p}", d.scale.describe()),
        };
        Ok(Effect {
            request: req,
            scale,
            promoted: promoted.into_iter().map(name).collect(),
            suppressed: suppressed.into_iter().map(name).collect(),
        })
    }

    fn run(&mut self, req: RunRequest) {
        let started = Instant::now();
        let Some(model) = &self.model else {
            self.send(Response::RunFailed {
                id: req.id,
                message: "no model is loaded".into(),
            });
            return;
        };
        // A view of the one model at the run's precision (shares the weights).
        let model = &model.with_precision(req.precision);
        let slot = slot(req.precision);
        // A new text: the probes of the old one (at either precision) are of no more use.
        for p in &mut self.probes {
            if p.as_ref().is_some_and(|p| p.text != req.text) {
                *p = None;
            }
        }
        self.current = req.precision;
        // A run without codes leaves the dictionary in use (Request::SetDictionary) as it is.
        if req.dictionary.is_some() {
            self.dictionary = req.dictionary.clone();
        }
        let mut rest = None;
        let result = (|| -> Result<RunResult, ModelError> {
            let fresh = self.probes[slot].is_none();
            let mut layers_computed = 0;
            if fresh {
                let tokens = model.tokenize(&req.text)?;
                let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
                let mut cache =
                    model.prepare(&ids, &capture_for(ids.len()), Some(req.cancel.clone()))?;
                layers_computed = model.config().n_layers;
                // One copy of the baseline: the record's values are shared with the cache
                // (reruns fill their earlier layers from it), its logits move to the view's side.
                let out = crate::model::RunOutput {
                    logits: cache.take_baseline_logits(),
                    vocab: cache.baseline.vocab,
                    record: cache.baseline.record.clone(),
                    layers_computed: cache.baseline.layers_computed,
                };
                let baseline = side(model, out, &ids);
                self.probes[slot] = Some(Probe {
                    text: req.text.clone(),
                    tokens,
                    cache,
                    baseline: Arc::new(baseline),
                    continuation: None,
                    coded: None,
                });
            }
            // The baseline's codes are of the dictionary in use (recoded when it changes).
            if let Some(probe) = self.probes[slot].as_mut() {
                if !same_dict(&probe.coded, &req.dictionary) {
                    let mut side = (*probe.baseline).clone();
                    code(&mut side.record, &req.dictionary);
                    probe.baseline = Arc::new(side);
                    probe.coded = req.dictionary.clone();
                }
            }
            // Set just above when the text is new.
            let probe = self.probes[slot].as_ref().ok_or(ModelError::EmptyText)?;
            let ids: Vec<u32> = probe.tokens.iter().map(|t| t.id).collect();
            // What the user looks at first (the next token, KL, the maps); every position's
            // logits (the per-token loss) follow in a second answer.
            let (intervened, kl) = if req.interventions.is_empty() {
                (None, None)
            } else {
                let (out, finals) = model.rerun_last(
                    &probe.cache,
                    &capture_for(ids.len()),
                    &req.interventions,
                    Some(req.cancel.clone()),
                )?;
                layers_computed = layers_computed.max(out.layers_computed);
                let last = probe.baseline.logits.len() - probe.baseline.vocab;
                let kl =
                    crate::analysis::kl_divergence(&probe.baseline.logits[last..], &out.logits);
                rest = Some(finals);
                let mut side = side_last(model, out, &ids);
                code(&mut side.record, &req.dictionary);
                (Some(side), Some(kl))
            };
            let held_bytes = self
                .probes
                .iter()
                .flatten()
                .map(|p| {
                    // What the cache holds, and what the view's side holds beyond it.
                    let cached = &p.cache.baseline;
                    p.cache.input_bytes()
                        + cached.record.bytes_beyond(None)
                        + cached.logits.len() * 4
                        + p.baseline.record.bytes_beyond(Some(&cached.record))
                        + p.baseline.logits.len() * 4
                })
                .sum::<usize>()
                + intervened.as_ref().map_or(0, |s: &Side| {
                    s.record.bytes_beyond(Some(&probe.baseline.record)) + ids.len() * s.vocab * 4
                });
            Ok(RunResult {
                id: req.id,
                tokens: probe.tokens.clone(),
                baseline: probe.baseline.clone(),
                intervened,
                kl,
                elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                layers_computed,
                precision: req.precision,
                dictionary: req.dictionary.clone(),
                held_bytes,
            })
        })();
        match result {
            Ok(result) => self.send(Response::Run(Box::new(result))),
            Err(ModelError::Cancelled) => return,
            Err(e) => {
                self.send(Response::RunFailed {
                    id: req.id,
                    message: e.to_string(),
                });
                return;
            }
        }
        if let Some(finals) = rest {
            if req.cancel.load(Ordering::Relaxed) {
                return;
            }
            let ids: Vec<u32> = self.probes[slot]
                .as_ref()
                .map(|p| p.tokens.iter().map(|t| t.id).collect())
                .unwrap_or_default();
            match model.finish_logits(&finals) {
                Ok(logits) => {
                    let out = crate::model::RunOutput {
                        logits,
                        vocab: model.config().vocab_size,
                        record: Default::default(),
                        layers_computed: 0,
                    };
                    let summary = probe::summarize(model, &out, &ids, TOP_NEXT, None);
                    self.send(Response::RunLogits {
                        id: req.id,
                        logits: out.logits,
                        summary,
                    });
                }
                Err(e) => {
                    self.send(Response::RunFailed {
                        id: req.id,
                        message: e.to_string(),
                    });
                    return;
                }
            }
        }
        if let Err(e) = self.continuations(&req) {
            if !matches!(e, ModelError::Cancelled) {
                self.send(Response::ContinuationFailed {
                    id: req.id,
                    message: e.to_string(),
                });
            }
        }
    }

    /// Continuations come after the run's numbers, so a click shows its effect at once.
    fn continuations(&mut self, req: &RunRequest) -> Result<(), ModelError> {
        let (Some(model), Some(probe)) = (&self.model, &mut self.probes[slot(req.precision)])
        else {
            return Ok(());
        };
        let model = &model.with_precision(req.precision);
        if req.continuation == 0 {
            return Ok(());
        }
        let ids: Vec<u32> = probe.tokens.iter().map(|t| t.id).collect();
        let opts = Generate {
            max_tokens: req.continuation,
            ..Generate::default()
        };
        // Tokens that hold parts of one character (Chinese, emoji) are grouped until they decode
        // to whole characters, so the continuation reads as text; the group keeps its first id.
        let as_tokens = |new: Vec<u32>| {
            let mut out: Vec<Token> = Vec::new();
            let mut group: Vec<u32> = Vec::new();
            for id in new {
                group.push(id);
                let text = model.tokenizer().decode(&group).unwrap_or_default();
                if !text.contains('\u{FFFD}') || group.len() >= 4 {
                    out.push(model.tokenizer().token_group(&group));
                    group.clear();
                }
            }
            if !group.is_empty() {
                out.push(model.tokenizer().token_group(&group));
            }
            out
        };
        let baseline = match &probe.continuation {
            Some((n, tokens)) if *n == req.continuation => tokens.clone(),
            _ => as_tokens(model.generate(&ids, &[], &opts, Some(req.cancel.clone()))?),
        };
        probe.continuation = Some((req.continuation, baseline.clone()));
        let _ = self.tx.send(Response::Continuation {
            id: req.id,
            intervened: false,
            tokens: baseline,
        });
        (self.repaint)();
        if !req.interventions.is_empty() && !req.cancel.load(Ordering::Relaxed) {
            let new = model.generate(&ids, &req.interventions, &opts, Some(req.cancel.clone()))?;
            self.send(Response::Continuation {
                id: req.id,
                intervened: true,
                tokens: as_tokens(new),
            });
        }
        Ok(())
    }
}
