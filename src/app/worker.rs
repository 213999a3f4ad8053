//! The one thread that owns the model. The UI sends [`Request`]s and drains [`Response`]s each
//! frame; nothing here blocks the UI. Every run carries a [`RunId`] and a cancel flag: a new run
//! cancels the one in flight (the model checks the flag before every block), queued runs are
//! skipped in favour of the newest, and the UI drops results whose id is stale.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use crate::analysis;
use crate::assets::{self, Clients, Progress};
use crate::features::{Basis, FeatureId};
use crate::hooks::{ActivationRecord, BlockSite, Capture, Intervention};
use crate::model::{Generate, Model, ModelError, ModelInfo, ProbeCache, RunOutput, Token};

pub type RunId = u64;

/// Probes up to this many tokens also record every attention pattern (for the head card).
pub const PATTERN_TOKENS: usize = 96;

pub enum Request {
    Load(PathBuf),
    Fetch {
        cancel: Arc<AtomicBool>,
    },
    Run(RunRequest),
    /// What a feature writes to the output: tokens it promotes and suppresses.
    Effect(FeatureId),
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

/// One side (baseline or intervened) of a run, as plain data.
pub struct Side {
    pub record: ActivationRecord,
    /// Next-token top 10: (id, text, probability).
    pub top: Vec<(u32, String, f32)>,
    pub last_logits: Vec<f32>,
    pub token_nll: Vec<f32>,
}

pub struct RunResult {
    pub id: RunId,
    pub tokens: Vec<Token>,
    pub baseline: Arc<Side>,
    pub intervened: Option<Side>,
    pub kl: Option<f64>,
    pub elapsed_ms: f64,
    /// Blocks computed for this result (0 when the baseline was reused and nothing changed).
    pub layers_computed: usize,
}

pub enum Response {
    Loaded(ModelInfo),
    LoadFailed {
        path: PathBuf,
        message: String,
    },
    FetchProgress(Progress),
    Fetched(PathBuf),
    FetchFailed(String),
    Run(Box<RunResult>),
    /// Arrives after its run: the continuation of each side.
    Continuation {
        id: RunId,
        intervened: bool,
        tokens: Vec<Token>,
    },
    RunFailed {
        id: RunId,
        message: String,
    },
    Effect {
        feature: FeatureId,
        promoted: Vec<(String, f32)>,
        suppressed: Vec<(String, f32)>,
    },
}

/// The UI's end of the worker.
pub struct WorkerHandle {
    tx: Sender<Request>,
    pub rx: Receiver<Response>,
}

impl WorkerHandle {
    /// Starts the worker thread; `repaint` is called after every response.
    pub fn spawn(repaint: impl Fn() + Send + 'static) -> Self {
        let (tx, requests) = std::sync::mpsc::channel();
        let (responses, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("hubel-model".into())
            .spawn(move || {
                Worker {
                    model: None,
                    probe: None,
                    tx: responses,
                    repaint: Box::new(repaint),
                }
                .serve(requests)
            });
        if let Err(e) = spawned {
            // Without a worker every request is answered here, as a failure the UI can show.
            let (tx2, rx2) = std::sync::mpsc::channel();
            let _ = tx2.send(Response::LoadFailed {
                path: PathBuf::new(),
                message: format!("cannot start the model thread: {e}"),
            });
            return WorkerHandle { tx, rx: rx2 };
        }
        WorkerHandle { tx, rx }
    }

    pub fn send(&self, request: Request) {
        // A closed channel means the worker is gone; the UI shows no result and stays usable.
        let _ = self.tx.send(request);
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
    model: Option<Model>,
    probe: Option<Probe>,
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

fn side(model: &Model, out: RunOutput, ids: &[u32]) -> Side {
    let top = analysis::top_k(out.last_logits(), 10)
        .into_iter()
        .map(|(id, _, p)| (id, model.tokenizer().token_text(id), p))
        .collect();
    let token_nll = analysis::token_nll(&out.logits, out.vocab, ids);
    Side {
        top,
        last_logits: out.last_logits().to_vec(),
        token_nll,
        record: out.record,
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
                match request {
                    Request::Run(run) if Some(i) == newest_run => self.run(run),
                    Request::Run(_) => {}
                    Request::Load(path) => self.load(path),
                    Request::Fetch { cancel } => self.fetch(&cancel),
                    Request::Effect(feature) => self.effect(feature),
                }
            }
        }
    }

    fn load(&mut self, path: PathBuf) {
        self.probe = None;
        match Model::open(&path) {
            Ok(model) => {
                let info = model.info().clone();
                self.model = Some(model);
                self.send(Response::Loaded(info));
            }
            Err(e) => self.send(Response::LoadFailed {
                path,
                message: e.to_string(),
            }),
        }
    }

    fn fetch(&mut self, cancel: &AtomicBool) {
        let tx = self.tx.clone();
        let mut progress = |p: Progress| {
            let _ = tx.send(Response::FetchProgress(p));
        };
        // Progress repaints come from the UI's own polling while a fetch is shown.
        match assets::fetch_model(
            &assets::assets_dir(),
            &Clients::default(),
            &mut progress,
            cancel,
        ) {
            Ok(path) => {
                self.send(Response::Fetched(path.clone()));
                self.load(path);
            }
            Err(e) => self.send(Response::FetchFailed(e.to_string())),
        }
    }

    fn effect(&self, feature: FeatureId) {
        let Some(model) = &self.model else { return };
        if feature.basis != Basis::Neurons {
            return;
        }
        let result = model
            .neuron_out_direction(feature.layer, feature.index)
            .and_then(|dir| model.direct_logit_effect(&dir));
        if let Ok(effect) = result {
            let mut order: Vec<usize> = (0..effect.len()).collect();
            order.sort_by(|&a, &b| effect[b].total_cmp(&effect[a]));
            let name = |i: usize| (model.tokenizer().token_text(i as u32), effect[i]);
            let promoted = order.iter().take(10).map(|&i| name(i)).collect();
            let suppressed = order.iter().rev().take(10).map(|&i| name(i)).collect();
            self.send(Response::Effect {
                feature,
                promoted,
                suppressed,
            });
        }
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
                let s = side(model, out, &ids);
                let kl = analysis::kl_divergence(&probe.baseline.last_logits, &s.last_logits);
                (Some(s), Some(kl))
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
        self.continuations(&req);
    }

    /// Continuations come after the run's numbers, so a click shows its effect at once.
    fn continuations(&mut self, req: &RunRequest) {
        let (Some(model), Some(probe)) = (&self.model, &mut self.probe) else {
            return;
        };
        if req.continuation == 0 {
            return;
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
            _ => match model.generate(&ids, &[], &opts, Some(req.cancel.clone())) {
                Ok(new) => as_tokens(new),
                Err(_) => return,
            },
        };
        probe.continuation = Some((req.continuation, baseline.clone()));
        let _ = self.tx.send(Response::Continuation {
            id: req.id,
            intervened: false,
            tokens: baseline,
        });
        (self.repaint)();
        if !req.interventions.is_empty() && !req.cancel.load(Ordering::Relaxed) {
            if let Ok(new) =
                model.generate(&ids, &req.interventions, &opts, Some(req.cancel.clone()))
            {
                self.send(Response::Continuation {
                    id: req.id,
                    intervened: true,
                    tokens: as_tokens(new),
                });
            }
        }
    }
}
