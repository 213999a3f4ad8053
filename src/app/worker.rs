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
use std::time::Instant;

use crate::features::FeatureId;
use crate::hooks::{ActivationRecord, BlockSite, Capture, Intervention};
use crate::jobs::{self, Interactive, JobCtx, JobResult, JobRunner};
use crate::model::{Generate, Model, ModelError, ModelInfo, ProbeCache, Token};
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
}

/// Which request a [`Response::Failed`] answers, so the UI stops waiting for just that one.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestKind {
    Load(PathBuf),
    Run(RunId),
    Effect(EffectRequest),
    Job,
}

impl Request {
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Load(p) => RequestKind::Load(p.clone()),
            Request::Run(r) => RequestKind::Run(r.id),
            Request::Effect(e) => RequestKind::Effect(*e),
            Request::Job { .. } | Request::ModelJob { .. } => RequestKind::Job,
        }
    }

    /// What the request was, for an error message.
    pub fn describe(&self) -> String {
        match self {
            Request::Load(p) => format!("loading {}", p.display()),
            Request::Run(r) => format!("running the probe (run {})", r.id),
            Request::Effect(e) => format!("the direct effect of {}", e.feature),
            Request::Job { name, .. } | Request::ModelJob { name, .. } => name.clone(),
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
pub struct Side {
    pub record: ActivationRecord,
    /// Next-token top 10 after the last position, the loss of every token.
    pub summary: RunSummary,
    /// Logits at every position, `[pos, vocab]` (for the next-token panel at a chosen position).
    pub logits: Vec<f32>,
    pub vocab: usize,
}

impl Side {
    pub fn logits_at(&self, pos: usize) -> Option<&[f32]> {
        self.logits.get(pos * self.vocab..(pos + 1) * self.vocab)
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
    /// The answer of a [`Request::Job`].
    JobDone {
        name: String,
        message: String,
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
                    probe: None,
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

/// The baseline of the current probe, kept while only interventions change.
struct Probe {
    text: String,
    tokens: Vec<Token>,
    cache: ProbeCache,
    baseline: Arc<Side>,
    continuation: Option<(usize, Vec<Token>)>,
}

struct Worker {
    model: Option<Arc<Model>>,
    probe: Option<Probe>,
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
        logits: out.logits,
        record: out.record,
    }
}

use jobs::panic_message;

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
                    // The probe cache may be half updated: drop it, keep the model.
                    self.probe = None;
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
                let response = job(self.model.as_deref());
                self.send(response);
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
        self.probe = None;
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

    fn compute_effect(&self, model: &Model, req: EffectRequest) -> Result<Effect, String> {
        let at = match req.position {
            None => None,
            Some(pos) => {
                let probe = self.probe.as_ref().ok_or("run a probe first")?;
                Some((&probe.baseline.record, pos))
            }
        };
        let d = crate::effect::direction(model, req.feature, at).map_err(|e| e.to_string())?;
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
        let result = (|| -> Result<RunResult, ModelError> {
            let fresh = self.probe.as_ref().is_none_or(|p| p.text != req.text);
            let mut layers_computed = 0;
            if fresh {
                self.probe = None;
                let tokens = model.tokenize(&req.text)?;
                let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
                let cache =
                    model.prepare(&ids, &capture_for(ids.len()), Some(req.cancel.clone()))?;
                layers_computed = model.config().n_layers;
                let baseline = side(model, cache.baseline.clone(), &ids);
                self.probe = Some(Probe {
                    text: req.text.clone(),
                    tokens,
                    cache,
                    baseline: Arc::new(baseline),
                    continuation: None,
                });
            }
            // Set just above when the text is new.
            let probe = self.probe.as_ref().ok_or(ModelError::EmptyText)?;
            let ids: Vec<u32> = probe.tokens.iter().map(|t| t.id).collect();
            let (intervened, kl) = if req.interventions.is_empty() {
                (None, None)
            } else {
                let out = model.rerun(
                    &probe.cache,
                    &capture_for(ids.len()),
                    &req.interventions,
                    Some(req.cancel.clone()),
                )?;
                layers_computed = layers_computed.max(out.layers_computed);
                let kl = crate::analysis::kl_divergence(
                    probe.cache.baseline.last_logits(),
                    out.last_logits(),
                );
                (Some(side(model, out, &ids)), Some(kl))
            };
            Ok(RunResult {
                id: req.id,
                tokens: probe.tokens.clone(),
                baseline: probe.baseline.clone(),
                intervened,
                kl,
                elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                layers_computed,
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
        let (Some(model), Some(probe)) = (&self.model, &mut self.probe) else {
            return Ok(());
        };
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
