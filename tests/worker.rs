//! The model's thread on its own: the newest run wins, stale results are dropped, a panicking
//! request is reported and the thread keeps serving, errors of every request come back; a job
//! on the shared model computes beside the worker, which keeps answering and marks its runs.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hubel::app::worker::{EffectRequest, Request, Response, RunRequest, WorkerHandle};
use hubel::features::FeatureId;
use hubel::jobs::{Interactive, JobRunner, JobState};
use hubel::model::Precision;

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

fn next(w: &WorkerHandle) -> Response {
    w.rx.recv_timeout(Duration::from_secs(60))
        .expect("the worker answers")
}

fn run(id: u64, text: &str) -> Request {
    Request::Run(RunRequest {
        id,
        text: text.into(),
        interventions: Vec::new(),
        continuation: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        precision: Precision::Exact,
        dictionary: None,
    })
}

fn loaded() -> WorkerHandle {
    let w = WorkerHandle::spawn(|| {});
    assert!(w.send(Request::Load(tiny_llama())));
    match next(&w) {
        Response::Loaded { info, vocab } => assert_eq!(vocab.len(), info.vocab),
        _ => panic!("expected Loaded"),
    }
    w
}

#[test]
fn of_queued_runs_only_the_newest_is_done() {
    let w = WorkerHandle::spawn(|| {});
    // The runs queue up behind the load; the worker takes them together and does the newest.
    w.send(Request::Load(tiny_llama()));
    for id in 1..=3 {
        w.send(run(id, &format!("probe number {id}")));
    }
    let mut runs = Vec::new();
    loop {
        match next(&w) {
            Response::Loaded { .. } => {}
            Response::Run(r) => {
                runs.push(r.id);
                if r.id == 3 {
                    break;
                }
            }
            Response::RunFailed { id, message } => panic!("run {id} failed: {message}"),
            _ => {}
        }
    }
    assert_eq!(runs, vec![3], "runs 1 and 2 were skipped");
}

#[test]
fn a_panicking_request_is_reported_and_the_worker_keeps_serving() {
    let w = loaded();
    w.send(Request::Job {
        name: "a job that panics".into(),
        job: Box::new(|_| panic!("deliberate test panic")),
    });
    match next(&w) {
        Response::Failed {
            request,
            kind,
            message,
        } => {
            assert_eq!(request, "a job that panics");
            assert_eq!(kind, Some(hubel::app::worker::RequestKind::Job));
            assert!(message.contains("deliberate test panic"), "{message}");
        }
        _ => panic!("expected Failed"),
    }
    w.send(run(7, "still alive"));
    match next(&w) {
        Response::Run(r) => assert_eq!(r.id, 7),
        _ => panic!("expected the run"),
    }
}

#[test]
fn effect_errors_come_back_as_messages() {
    let w = loaded();
    // A neuron that does not exist: an error, not a panic and not silence.
    let bad = EffectRequest {
        feature: FeatureId::neuron(99, 0),
        position: None,
    };
    w.send(Request::Effect(bad));
    match next(&w) {
        Response::EffectFailed { request, message } => {
            assert_eq!(request, bad);
            assert!(message.contains("layer 99"), "{message}");
        }
        Response::Failed { message, .. } => panic!("it panicked: {message}"),
        _ => panic!("expected EffectFailed"),
    }
    // A head needs a probe position; without a probe that is said too.
    let head = EffectRequest {
        feature: FeatureId::head(0, 0),
        position: Some(0),
    };
    w.send(Request::Effect(head));
    match next(&w) {
        Response::EffectFailed { message, .. } => {
            assert!(message.contains("run a probe"), "{message}")
        }
        _ => panic!("expected EffectFailed"),
    }
    // With a probe, both scales work.
    w.send(run(1, "hello world"));
    assert!(matches!(next(&w), Response::Run(_)));
    for request in [
        EffectRequest {
            feature: FeatureId::neuron(1, 3),
            position: None,
        },
        EffectRequest {
            feature: FeatureId::neuron(1, 3),
            position: Some(1),
        },
        head,
    ] {
        w.send(Request::Effect(request));
        match next(&w) {
            Response::Effect(e) => {
                assert_eq!(e.request, request);
                assert_eq!(e.promoted.len(), 10);
                assert!(e.promoted[0].1 >= e.suppressed[0].1);
                let expected = if request.position.is_some() {
                    "frozen"
                } else {
                    "per unit"
                };
                assert!(e.scale.contains(expected), "{}", e.scale);
            }
            Response::EffectFailed { message, .. } => panic!("{request:?}: {message}"),
            _ => panic!("expected Effect"),
        }
    }
}

#[test]
fn a_run_without_a_model_fails_with_a_message() {
    let w = WorkerHandle::spawn(|| {});
    w.send(run(1, "hello"));
    match next(&w) {
        Response::RunFailed { id, message } => {
            assert_eq!(id, 1);
            assert!(message.contains("no model"), "{message}");
        }
        _ => panic!("expected RunFailed"),
    }
}

#[test]
fn a_model_job_shares_the_model_while_the_worker_keeps_serving_runs() {
    let gate = Interactive::new();
    let jobs = JobRunner::new(gate.clone(), || {});
    let w = WorkerHandle::spawn_with(|| {}, jobs.clone());
    w.send(Request::Load(tiny_llama()));
    assert!(matches!(next(&w), Response::Loaded { .. }));
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    w.send(Request::ModelJob {
        name: "hold the model".into(),
        job: Box::new(move |model, ctx| {
            ctx.set_total(1, "items");
            let n = model
                .tokenize("hello world")
                .map_err(|e| e.to_string())?
                .len();
            started_tx.send(n).unwrap();
            // The job is mid-batch, with the model, until the test lets it go.
            release.recv().ok();
            ctx.checkpoint()?;
            ctx.advance(1);
            Ok(format!("{n} tokens"))
        }),
    });
    let n = started
        .recv_timeout(Duration::from_secs(60))
        .expect("the job started with the model");
    // The worker answers a run (and an effect) while the job holds the model.
    let before = gate.entered();
    w.send(run(1, "hello world"));
    match next(&w) {
        Response::Run(r) => assert_eq!(r.tokens.len(), n),
        _ => panic!("expected the run"),
    }
    w.send(Request::Effect(EffectRequest {
        feature: FeatureId::neuron(0, 0),
        position: None,
    }));
    assert!(matches!(next(&w), Response::Effect(_)));
    assert_eq!(
        gate.entered(),
        before + 2,
        "the run and the effect each held the interactive gate"
    );
    let job = jobs.list().pop().unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "the run did not wait for the job"
    );
    release_tx.send(()).unwrap();
    let done = jobs.wait(job.id, Duration::from_secs(60)).unwrap();
    assert_eq!(done.state, JobState::Done(format!("{n} tokens")));
    assert_eq!(done.done, 1);
}

#[test]
fn a_model_job_without_a_model_fails_in_the_list() {
    let jobs = JobRunner::new(Interactive::new(), || {});
    let w = WorkerHandle::spawn_with(|| {}, jobs.clone());
    w.send(Request::ModelJob {
        name: "needs a model".into(),
        job: Box::new(|_, _| Ok(String::new())),
    });
    assert!(
        jobs.wait_until(Duration::from_secs(60), |j| j.iter().any(
            |j| matches!(&j.state, JobState::Failed(m) if m.contains("no model"))
        )),
        "{:?}",
        jobs.list()
    );
}

fn run_at(id: u64, text: &str, precision: Precision) -> Request {
    match run(id, text) {
        Request::Run(r) => Request::Run(RunRequest { precision, ..r }),
        _ => unreachable!(),
    }
}

fn next_run(w: &WorkerHandle) -> Box<hubel::app::worker::RunResult> {
    loop {
        match next(w) {
            Response::Run(r) => return r,
            Response::RunFailed { message, .. } | Response::Failed { message, .. } => {
                panic!("{message}")
            }
            _ => continue,
        }
    }
}

/// A fast run says so and differs from the exact one (the worker keeps a probe per precision:
/// going back to exact reuses its baseline, bitwise); the fidelity job on the same probe reports
/// the KL between exactly those two runs' last logits, and values within their bounds; a stale
/// fidelity job ends cancelled without an answer.
#[test]
fn a_fast_run_says_so_and_its_fidelity_job_measures_it() {
    use hubel::app::worker::{fidelity_job, prepare_fast_job};
    let jobs = JobRunner::new(Interactive::new(), || {});
    let w = WorkerHandle::spawn_with(|| {}, jobs.clone());
    w.send(Request::Load(tiny_llama()));
    assert!(matches!(next(&w), Response::Loaded { .. }));
    const TEXT: &str = "The cat sat on the mat, and then it slept.";
    w.send(run_at(1, TEXT, Precision::Exact));
    let exact = next_run(&w);
    assert_eq!(exact.precision, Precision::Exact);

    w.send(Request::ModelJob {
        name: "prepare".into(),
        job: prepare_fast_job(),
    });
    w.send(run_at(2, TEXT, Precision::Fast));
    let fast = next_run(&w);
    assert_eq!(fast.precision, Precision::Fast);
    assert_eq!(fast.tokens, exact.tokens);
    assert_eq!(
        fast.layers_computed, 2,
        "the fast probe was prepared, not reused"
    );
    let (e, f) = (&exact.baseline.logits, &fast.baseline.logits);
    assert_eq!(e.len(), f.len());
    assert!(e != f, "the fast path computes other numbers");
    let prepared = jobs.wait_until(Duration::from_secs(60), |j| {
        j.iter()
            .any(|j| j.name == "prepare" && j.state.is_finished())
    });
    assert!(prepared, "{:?}", jobs.list());
    let prepared = jobs
        .list()
        .into_iter()
        .find(|j| j.name == "prepare")
        .unwrap();
    assert!(
        matches!(&prepared.state, JobState::Done(m) if m.contains("4-bit")),
        "{:?}",
        prepared.state
    );

    // Back to exact: the exact probe is still there, nothing recomputed, the same numbers.
    w.send(run_at(3, TEXT, Precision::Exact));
    let again = next_run(&w);
    assert_eq!(again.precision, Precision::Exact);
    assert_eq!(again.layers_computed, 0);
    assert_eq!(again.baseline.logits, exact.baseline.logits);

    let ids: Vec<u32> = exact.tokens.iter().map(|t| t.id).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    w.send(Request::ModelJob {
        name: "fidelity".into(),
        job: fidelity_job(7, ids.clone(), Vec::new(), Default::default(), tx.clone()),
    });
    let answer = rx.recv_timeout(Duration::from_secs(60)).expect("an answer");
    assert_eq!(answer.serial, 7);
    let m = answer.result.unwrap();
    assert_eq!(m.positions, ids.len());
    let vocab = exact.baseline.vocab;
    let last = |l: &[f32]| l[l.len() - vocab..].to_vec();
    let kl = hubel::analysis::kl_divergence(&last(e), &last(f));
    assert!(
        (m.kl_last - kl).abs() <= 1e-9 * kl.max(1e-12) + 1e-12,
        "the meter measures the runs shown: {} vs {kl}",
        m.kl_last
    );
    assert!(m.kl_last > 0.0 && m.kl_last <= m.kl_max && m.kl_max.is_finite());
    assert!((0.0..=1.0).contains(&m.top1_agreement));
    let dmax = e
        .iter()
        .zip(f.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(
        m.max_abs_dlogit, dmax,
        "the largest |Δlogit| of the two runs"
    );
    assert!(m.max_abs_dlogit > 0.0);

    // Stale before it computes: cancelled, no answer.
    let stale = Arc::new(AtomicBool::new(true));
    w.send(Request::ModelJob {
        name: "stale fidelity".into(),
        job: fidelity_job(8, ids, Vec::new(), stale, tx),
    });
    assert!(jobs.wait_until(Duration::from_secs(60), |j| j
        .iter()
        .any(|j| j.name == "stale fidelity" && j.state == JobState::Cancelled)));
    assert!(rx.try_recv().is_err(), "a stale meter answers nothing");
}

#[test]
fn an_ablation_answers_the_next_token_first_and_every_position_after() {
    let w = loaded();
    let text = "The cat sat on the mat.";
    let neuron = hubel::hooks::Intervention::zero(
        hubel::hooks::HookPoint::block(1, hubel::hooks::BlockSite::MlpPost),
        vec![3],
    );
    w.send(Request::Run(RunRequest {
        interventions: vec![neuron.clone()],
        ..match run(1, text) {
            Request::Run(r) => r,
            _ => unreachable!(),
        }
    }));
    let first = next_run(&w);
    let side = first.intervened.as_ref().expect("an intervened side");
    let n = first.tokens.len();
    assert!(
        !side.is_complete(),
        "the first answer holds the last position only"
    );
    assert_eq!(side.logits.len(), side.vocab);
    assert!(side.logits_at(0).is_none() && side.logits_at(n - 1).is_some());
    assert!(side.summary.token_nll.is_empty() && side.summary.top_next.len() == 10);
    // The rest: what a one-piece re-run gives.
    let (logits, summary) = loop {
        match next(&w) {
            Response::RunLogits {
                id,
                logits,
                summary,
            } => {
                assert_eq!(id, 1);
                break (logits, summary);
            }
            Response::RunFailed { message, .. } => panic!("{message}"),
            _ => {}
        }
    };
    let model = hubel::model::Model::open(tiny_llama()).unwrap();
    let ids: Vec<u32> = first.tokens.iter().map(|t| t.id).collect();
    let cache = model
        .prepare(&ids, &hubel::hooks::Capture::Nothing, None)
        .unwrap();
    let whole = model
        .rerun(&cache, &hubel::hooks::Capture::Nothing, &[neuron], None)
        .unwrap();
    assert_eq!(logits, whole.logits);
    assert_eq!(&side.logits[..], whole.last_logits());
    assert_eq!(summary.token_nll.len(), n - 1);
    assert_eq!(
        summary.top_next.iter().map(|t| t.id).collect::<Vec<_>>(),
        side.summary
            .top_next
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    );
}

/// The memory a probe holds, as the status bar states it, counted from the model's shapes by
/// hand: what every layer records (MLP neurons, head outputs, attention output, residual stream,
/// and each head's pattern for a short probe), every position's logits and the block inputs,
/// once (the view's baseline shares the worker's). An ablation at layer 2 adds only what it
/// recomputes (layers 2 on) and its logits; a second precision's probe adds its own.
#[test]
fn a_probe_states_the_memory_it_holds() {
    let w = loaded();
    let info = hubel::model::Model::open(tiny_llama())
        .unwrap()
        .info()
        .clone();
    let text = "The cat sat on the mat.";
    w.send(run(1, text));
    let first = next_run(&w);
    let n = first.tokens.len();
    assert!(n <= hubel::app::worker::PATTERN_TOKENS);
    let per_layer =
        n * (info.d_mlp + info.heads * info.d_head + 2 * info.d_model) + info.heads * n * n;
    let logits = n * info.vocab;
    let inputs = (info.layers + 1) * n * info.d_model;
    let probe = 4 * (info.layers * per_layer + logits + inputs);
    assert_eq!(first.held_bytes, probe);
    assert_eq!(
        first.baseline.logits.len(),
        logits,
        "the view has the logits"
    );
    // Each recorded value buffer is held twice, not copied: by the worker's cache (reruns fill
    // their earlier layers from it) and by the view's side; the logits by the side alone.
    for (point, act) in first.baseline.record.iter() {
        assert_eq!(Arc::strong_count(&act.data), 2, "{point}");
    }
    assert_eq!(Arc::strong_count(&first.baseline.logits), 1);

    let layer = 2.min(info.layers - 1);
    let neuron = hubel::hooks::Intervention::zero(
        hubel::hooks::HookPoint::block(layer, hubel::hooks::BlockSite::MlpPost),
        vec![3],
    );
    w.send(Request::Run(RunRequest {
        interventions: vec![neuron],
        ..match run(2, text) {
            Request::Run(r) => r,
            _ => unreachable!(),
        }
    }));
    let edited = next_run(&w);
    let recomputed = 4 * ((info.layers - layer) * per_layer + logits);
    assert_eq!(edited.held_bytes, probe + recomputed);

    w.send(run_at(3, text, Precision::Fast));
    let fast = next_run(&w);
    assert_eq!(fast.precision, Precision::Fast);
    assert_eq!(
        fast.held_bytes,
        2 * probe,
        "both precisions' probes are kept"
    );
}
