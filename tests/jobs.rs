//! The job runner on its own: progress with a rate and an ETA, cancel within one batch, pause
//! that holds and resume that finishes, a panicking job that fails alone, the interactive gate,
//! queued jobs passed over while paused, and notifications kept to about ten a second.
//! Jobs are driven step by step through channels (handshakes), never timed with sleeps; the
//! only waits with a timeout check that something does *not* happen.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hubel::jobs::{Hold, Interactive, JobCtx, JobError, JobId, JobRunner, JobState, JobStatus};

const LONG: Duration = Duration::from_secs(30);
/// How long something that must not happen is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn runner() -> JobRunner {
    JobRunner::new(Interactive::new(), || {})
}

/// Waits for job `id`'s status to satisfy `cond`; panics with the status after a long timeout.
fn wait_for(r: &JobRunner, id: JobId, what: &str, cond: impl Fn(&JobStatus) -> bool) -> JobStatus {
    let ok = r.wait_until(LONG, |jobs| jobs.iter().any(|j| j.id == id && cond(j)));
    let status = r.status(id);
    assert!(ok, "timed out waiting for {what}: {status:?}");
    status.unwrap()
}

/// A job of `n` batches, each waiting for a go from the test and reporting back when done:
/// `go.send(())` lets one batch run, `done.recv()` says it has.
struct Stepped {
    go: Sender<()>,
    done: Receiver<u64>,
}

fn stepped(r: &JobRunner, n: u64) -> (JobId, Stepped) {
    let (go, go_rx) = channel::<()>();
    let (done_tx, done) = channel();
    let id = r.submit("stepped", move |ctx: &JobCtx| {
        ctx.set_total(n, "items");
        for i in 0..n {
            // The batch is asked for first, then the checkpoint: so a pause or cancel that
            // arrives between batches is seen before the next batch does anything.
            go_rx.recv().map_err(|_| "the test went away")?;
            ctx.checkpoint()?;
            ctx.advance(1);
            let _ = done_tx.send(i);
        }
        Ok(format!("{n} items"))
    });
    (id, Stepped { go, done })
}

impl Stepped {
    fn batch(&self) -> u64 {
        self.go.send(()).unwrap();
        self.done.recv_timeout(LONG).expect("the batch ran")
    }
}

#[test]
fn a_job_reports_progress_rate_and_eta_then_done() {
    let r = runner();
    let (id, job) = stepped(&r, 10);
    for i in 0..5 {
        assert_eq!(job.batch(), i);
    }
    let s = wait_for(&r, id, "five items", |s| s.done == 5);
    assert_eq!(s.state, JobState::Running);
    assert_eq!((s.total, s.unit.as_str()), (Some(10), "items"));
    assert_eq!(s.fraction(), Some(0.5));
    assert_eq!(s.counts(), "5 / 10 items");
    let rate = s.rate.expect("a rate after five items");
    assert!(rate > 0.0 && rate.is_finite(), "{rate}");
    let eta = s.eta.expect("an ETA while running with a total");
    // Five items left at the rate shown.
    let expected = 5.0 / rate;
    assert!(
        (eta.as_secs_f64() - expected).abs() <= 0.01 * expected + 1e-3,
        "{eta:?} vs {expected}"
    );
    assert!(s.elapsed > Duration::ZERO);
    assert!(!s.eta_text().is_empty() && s.line().contains("5 / 10 items (50%)"));
    for i in 5..10 {
        assert_eq!(job.batch(), i);
    }
    let s = wait_for(&r, id, "the end", |s| s.state.is_finished());
    assert_eq!(s.state, JobState::Done("10 items".into()));
    assert_eq!(s.done, 10);
    assert_eq!(s.eta, None, "no ETA once done");
    assert!(s.line().contains("done in"), "{}", s.line());
}

#[test]
fn cancel_stops_a_job_within_one_batch() {
    let r = runner();
    let (id, job) = stepped(&r, 1000);
    for i in 0..3 {
        assert_eq!(job.batch(), i);
    }
    assert!(r.cancel(id));
    // The job is between batches; the next one it is given stops at its checkpoint.
    job.go.send(()).unwrap();
    let s = wait_for(&r, id, "the cancel", |s| s.state.is_finished());
    assert_eq!(s.state, JobState::Cancelled);
    assert_eq!(s.done, 3, "no batch ran after the cancel");
    assert!(job.done.try_recv().is_err());
    assert!(!r.cancel(id), "a finished job cannot be cancelled again");
}

#[test]
fn cancel_reaches_a_paused_job_and_a_queued_one() {
    let r = runner();
    let (id, job) = stepped(&r, 10);
    let (queued, _q) = stepped(&r, 10);
    assert_eq!(job.batch(), 0);
    r.pause(id);
    job.go.send(()).unwrap();
    wait_for(&r, id, "the pause to hold", |s| {
        s.held == Some(Hold::Paused)
    });
    assert_eq!(r.status(queued).unwrap().state, JobState::Queued);
    assert!(r.cancel(queued));
    assert_eq!(r.status(queued).unwrap().state, JobState::Cancelled);
    assert!(r.cancel(id));
    let s = wait_for(&r, id, "the cancel", |s| s.state.is_finished());
    assert_eq!((s.state, s.done), (JobState::Cancelled, 1));
}

#[test]
fn pause_holds_a_job_and_resume_finishes_it() {
    let r = runner();
    let (id, job) = stepped(&r, 4);
    assert_eq!(job.batch(), 0);
    assert!(r.pause(id));
    assert_eq!(r.status(id).unwrap().state, JobState::Paused);
    // The next batch is asked for; the job stops at its checkpoint instead.
    job.go.send(()).unwrap();
    let s = wait_for(&r, id, "the job to stand at its checkpoint", |s| {
        s.held == Some(Hold::Paused)
    });
    assert_eq!((s.state, s.done), (JobState::Paused, 1));
    // Held: no batch runs and nothing advances while paused.
    assert!(
        job.done.recv_timeout(QUIET).is_err(),
        "a batch ran while paused"
    );
    let s = r.status(id).unwrap();
    assert!(s.line().contains("[paused]"), "{}", s.line());
    assert_eq!(
        (s.state, s.done, s.held),
        (JobState::Paused, 1, Some(Hold::Paused))
    );
    assert!(r.resume(id));
    assert_eq!(job.done.recv_timeout(LONG), Ok(1), "the held batch runs");
    for i in 2..4 {
        assert_eq!(job.batch(), i);
    }
    let s = wait_for(&r, id, "the end", |s| s.state.is_finished());
    assert_eq!(
        (s.state, s.done, s.held),
        (JobState::Done("4 items".into()), 4, None)
    );
}

#[test]
fn a_paused_queued_job_is_passed_over_until_resumed() {
    let r = runner();
    let (first, _held) = {
        // The first job runs until the test says so, keeping the second queued.
        let (tx, rx) = channel::<()>();
        let id = r.submit("first", move |_| {
            rx.recv().ok();
            Ok(String::new())
        });
        (id, tx)
    };
    let (tx2, second) = channel::<&str>();
    let second_id = r.submit("second", move |_| {
        let _ = tx2.send("second");
        Ok(String::new())
    });
    let (third_tx, third_rx) = channel::<&str>();
    let third_id = r.submit("third", move |_| {
        let _ = third_tx.send("third");
        Ok(String::new())
    });
    assert!(r.pause(second_id));
    drop(_held); // the first job ends
    assert_eq!(third_rx.recv_timeout(LONG), Ok("third"), "the third runs");
    wait_for(&r, first, "the first to end", |s| s.state.is_finished());
    assert!(
        second.recv_timeout(QUIET).is_err(),
        "the paused job did not run"
    );
    assert_eq!(r.status(second_id).unwrap().state, JobState::Paused);
    r.resume(second_id);
    assert_eq!(second.recv_timeout(LONG), Ok("second"));
    wait_for(&r, third_id, "the third", |s| s.state.is_finished());
}

#[test]
fn a_panicking_job_fails_alone_and_the_runner_runs_the_next() {
    let r = runner();
    let bad = r.submit("bad", |ctx| {
        ctx.set_total(3, "items");
        ctx.advance(1);
        panic!("deliberate job panic");
    });
    let good = r.submit("good", |ctx| {
        ctx.set_total(2, "items");
        ctx.advance(2);
        Ok("fine".into())
    });
    let s = wait_for(&r, good, "the next job", |s| s.state.is_finished());
    assert_eq!(s.state, JobState::Done("fine".into()));
    let s = r.status(bad).unwrap();
    match &s.state {
        JobState::Failed(m) => assert!(m.contains("deliberate job panic"), "{m}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(s.done, 1);
    // A job's own error is a failure with its message.
    let err = r.submit("error", |_| Err(JobError::Failed("no corpus here".into())));
    let s = wait_for(&r, err, "the error", |s| s.state.is_finished());
    assert_eq!(s.state, JobState::Failed("no corpus here".into()));
    // Finished jobs can be cleared; listed ones are not.
    assert!(r.clear(bad));
    assert!(r.status(bad).is_none());
    r.clear_finished();
    assert!(r.list().is_empty());
}

#[test]
fn the_interactive_gate_holds_a_job_at_its_checkpoint() {
    let gate = Interactive::new();
    let r = JobRunner::new(gate.clone(), || {});
    let (id, job) = stepped(&r, 3);
    assert_eq!(job.batch(), 0);
    // A click: the viewer computes; the job's next batch waits for it.
    let busy = gate.begin();
    assert!(gate.is_busy());
    job.go.send(()).unwrap();
    let s = wait_for(&r, id, "the job to wait for the viewer", |s| {
        s.held == Some(Hold::Interactive)
    });
    assert_eq!((s.state, s.done), (JobState::Running, 1));
    assert!(
        job.done.recv_timeout(QUIET).is_err(),
        "a batch ran beside the click"
    );
    drop(busy);
    assert!(!gate.is_busy());
    assert_eq!(job.done.recv_timeout(LONG), Ok(1), "the job goes on");
    assert_eq!(job.batch(), 2);
    let s = wait_for(&r, id, "the end", |s| s.state.is_finished());
    assert_eq!((s.done, s.held), (3, None));
}

#[test]
fn a_cancel_reaches_a_job_waiting_for_the_viewer() {
    let gate = Interactive::new();
    let r = JobRunner::new(gate.clone(), || {});
    let (id, job) = stepped(&r, 3);
    let _busy = gate.begin();
    job.go.send(()).unwrap();
    wait_for(&r, id, "the hold", |s| s.held == Some(Hold::Interactive));
    r.cancel(id);
    let s = wait_for(&r, id, "the cancel", |s| s.state.is_finished());
    assert_eq!((s.state, s.done), (JobState::Cancelled, 0));
}

#[test]
fn notifications_come_at_most_about_ten_a_second_and_after_the_last_change() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Set by a notification that sees the job finished: the last change is announced too.
    let saw_done = Arc::new(AtomicBool::new(false));
    let runner_cell: Arc<OnceLock<JobRunner>> = Arc::new(OnceLock::new());
    let (c, seen, cell) = (calls.clone(), saw_done.clone(), runner_cell.clone());
    let r = JobRunner::new(Interactive::new(), move || {
        c.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = cell.get() {
            let jobs = r.list();
            if !jobs.is_empty() && jobs.iter().all(|j| j.state.is_finished()) {
                seen.store(true, Ordering::SeqCst);
            }
        }
    });
    runner_cell.set(r.clone()).ok();
    let started = Instant::now();
    let id = r.submit("many small steps", |ctx| {
        ctx.set_total(20_000, "items");
        for _ in 0..20_000 {
            ctx.checkpoint()?;
            ctx.advance(1);
        }
        Ok(String::new())
    });
    wait_for(&r, id, "the end", |s| s.state.is_finished());
    let (at_end, seconds) = (
        calls.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64(),
    );
    // 40 000 changes: at ten a second, plus the first one and one of slack.
    assert!(
        (at_end as f64) <= 10.0 * seconds + 2.0,
        "{at_end} notifications in {seconds:.2} s"
    );
    let deadline = Instant::now() + LONG;
    while !saw_done.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the job's end was never announced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn set_done_reports_bytes() {
    let r = runner();
    let (tx, rx) = channel::<()>();
    let id = r.submit("bytes", move |ctx| {
        ctx.set_phase("Extracting");
        ctx.set_total(2_000_000, "bytes");
        ctx.set_done(1_500_000);
        rx.recv().ok();
        Ok(String::new())
    });
    let s = wait_for(&r, id, "the bytes", |s| s.done == 1_500_000);
    assert_eq!(s.counts(), "1.5 MB / 2.0 MB");
    assert_eq!(s.phase, "Extracting");
    assert!(s.rate_text().ends_with("/s"), "{}", s.rate_text());
    drop(tx);
    wait_for(&r, id, "the end", |s| s.state.is_finished());
}
