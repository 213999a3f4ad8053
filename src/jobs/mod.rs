//! Long work off the interactive path: a [`JobRunner`] owns one thread that runs queued jobs one
//! at a time (scans, experiments, dictionary training, fetches), next to the worker that answers
//! clicks. No egui and no candle here: a job is a closure, and whatever it needs (an
//! `Arc<Model>`, a folder) it captures.
//!
//! A job talks to the runner through its [`JobCtx`]: [`JobCtx::set_total`] / [`JobCtx::advance`]
//! report progress in a unit ("items", "tokens", "bytes"), and [`JobCtx::checkpoint`], called
//! between batches, is where it can be stopped: it returns [`Cancelled`] once the job is
//! cancelled, blocks while the job is paused, and blocks while an interactive run is in flight
//! (the shared [`Interactive`] gate the worker holds around each run), so a click waits behind at
//! most one job batch.
//!
//! What the UI and the CLI see is plain data: [`JobStatus`] (state, done/total, a smoothed rate,
//! an ETA). A job's panic is caught and becomes [`JobState::Failed`]; the runner serves on.
//! Changes are announced through a callback (the app passes `request_repaint`), at most
//! [`NOTIFY_HZ`] times a second and never dropping the last change.

pub mod fetch;
pub mod progress;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub type JobId = u64;

/// How often, at most, the change callback is called.
pub const NOTIFY_HZ: u32 = 10;

/// The rate is re-estimated from progress at most this often, and smoothed.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// Where a job is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    /// Asked to pause: it stops at its next checkpoint (a queued one is not started).
    Paused,
    /// Finished; what it produced, in a few words.
    Done(String),
    Failed(String),
    Cancelled,
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Done(_) | JobState::Failed(_) | JobState::Cancelled
        )
    }
}

/// Why a job is standing at a checkpoint right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    Paused,
    /// An interactive run is in flight; the job goes on when it has finished.
    Interactive,
}

/// A job as the UI and the CLI see it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    /// What it is doing now ("Extracting the model"); empty when it has not said.
    pub phase: String,
    pub done: u64,
    /// `None` until the job knows how much there is.
    pub total: Option<u64>,
    pub unit: String,
    /// Units per second, smoothed; time spent paused or waiting for the viewer is left out.
    pub rate: Option<f64>,
    /// Time to finish at `rate` (running jobs with a total only).
    pub eta: Option<Duration>,
    /// Wall time since it started (until it finished).
    pub elapsed: Duration,
    pub held: Option<Hold>,
}

impl JobStatus {
    /// 0..=1 when the total is known.
    pub fn fraction(&self) -> Option<f32> {
        self.total.map(|t| {
            if t == 0 {
                1.0
            } else {
                (self.done as f64 / t as f64).clamp(0.0, 1.0) as f32
            }
        })
    }

    /// `12.3 MB / 93.0 MB`, `3 / 10 items`, or `3 items` while the total is unknown.
    pub fn counts(&self) -> String {
        match self.total {
            Some(t) if self.unit == "bytes" => {
                format!(
                    "{} / {}",
                    human_bytes(self.done as f64),
                    human_bytes(t as f64)
                )
            }
            Some(t) => format!("{} / {t} {}", self.done, self.unit),
            None if self.unit == "bytes" => human_bytes(self.done as f64),
            None => format!("{} {}", self.done, self.unit),
        }
    }

    /// `4.1 MB/s`, `812 tokens/s`; empty when there is no rate yet.
    pub fn rate_text(&self) -> String {
        match self.rate {
            Some(r) if self.unit == "bytes" => format!("{}/s", human_bytes(r)),
            Some(r) if r >= 10.0 => format!("{r:.0} {}/s", self.unit),
            Some(r) => format!("{r:.2} {}/s", self.unit),
            None => String::new(),
        }
    }

    /// `ETA 1:05`; empty without an estimate.
    pub fn eta_text(&self) -> String {
        self.eta
            .map(|d| format!("ETA {}", clock(d)))
            .unwrap_or_default()
    }

    /// One line for a log: name, phase, counts, percent, rate, ETA (or the outcome).
    pub fn line(&self) -> String {
        let mut parts = vec![self.name.clone()];
        if !self.phase.is_empty() && !self.state.is_finished() {
            parts.push(self.phase.clone());
        }
        let mut out = parts.join(": ");
        match &self.state {
            JobState::Done(summary) => {
                out.push_str(&format!(": done in {}", clock(self.elapsed)));
                if self.done > 0 {
                    let all = JobStatus {
                        total: None,
                        ..self.clone()
                    };
                    out.push_str(&format!(", {}", all.counts()));
                }
                if !summary.is_empty() {
                    out.push_str(&format!(" ({summary})"));
                }
            }
            JobState::Failed(m) => out.push_str(&format!(": failed: {m}")),
            JobState::Cancelled => out.push_str(": cancelled"),
            state => {
                if self.total.is_some() || self.done > 0 {
                    out.push_str(&format!(" {}", self.counts()));
                }
                if let Some(f) = self.fraction() {
                    out.push_str(&format!(" ({:.0}%)", f * 100.0));
                }
                for extra in [self.rate_text(), self.eta_text()] {
                    if !extra.is_empty() {
                        out.push_str(&format!(", {extra}"));
                    }
                }
                if *state == JobState::Paused {
                    out.push_str(" [paused]");
                }
            }
        }
        out
    }
}

/// `93.0 MB`, `512 B`.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `0:07`, `12:34`, `1:02:03`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// What [`JobCtx::checkpoint`] returns once the job is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the job was cancelled")]
pub struct Cancelled;

/// How a job ends other than well.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl From<Cancelled> for JobError {
    fn from(_: Cancelled) -> Self {
        JobError::Cancelled
    }
}

impl From<String> for JobError {
    fn from(m: String) -> Self {
        JobError::Failed(m)
    }
}

impl From<&str> for JobError {
    fn from(m: &str) -> Self {
        JobError::Failed(m.into())
    }
}

/// A job's outcome: a summary for its Done line, or why not.
pub type JobResult = Result<String, JobError>;

pub type JobFn = Box<dyn FnOnce(&JobCtx) -> JobResult + Send>;

/// The gate between interactive runs and jobs: the worker holds [`Interactive::begin`]'s guard
/// while it computes for a click; jobs wait at their next checkpoint until it is dropped.
#[derive(Default)]
pub struct Interactive {
    busy: Mutex<usize>,
    idle: Condvar,
    /// How many runs have begun, ever (tests check that the worker marks its runs).
    entered: std::sync::atomic::AtomicU64,
}

/// Held while an interactive run is in flight.
pub struct Busy(Arc<Interactive>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut n = lock(&self.0.busy);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Interactive {
    pub fn new() -> Arc<Self> {
        Arc::new(Interactive::default())
    }

    /// Marks an interactive run in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        *lock(&self.busy) += 1;
        self.entered.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    pub fn is_busy(&self) -> bool {
        *lock(&self.busy) > 0
    }

    /// How many interactive runs have begun since the gate was made.
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for no run to be in flight; true when none is.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let busy = lock(&self.busy);
        let (busy, _) = self
            .idle
            .wait_timeout_while(busy, timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *busy == 0
    }
}

/// A lock that survives a poisoned mutex (nothing here panics while holding one, but a job's
/// panic must never take the runner down).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One job's book-keeping.
struct Entry {
    id: JobId,
    name: String,
    state: JobState,
    paused: bool,
    phase: String,
    done: u64,
    total: Option<u64>,
    unit: String,
    cancel: Arc<AtomicBool>,
    job: Option<JobFn>,
    started: Option<Instant>,
    finished: Option<Instant>,
    /// Time spent held at checkpoints (paused, waiting for the viewer), left out of the rate.
    held_for: Duration,
    held: Option<(Hold, Instant)>,
    /// The rate: progress since the last sample, smoothed.
    sample: (Instant, u64),
    smoothed: Option<f64>,
}

impl Entry {
    fn status(&self, now: Instant) -> JobStatus {
        let end = self.finished.unwrap_or(now);
        let elapsed = self.started.map_or(Duration::ZERO, |s| end - s);
        let held_now = self.held.map_or(Duration::ZERO, |(_, since)| end - since);
        let active = elapsed.saturating_sub(self.held_for + held_now);
        let average = (self.done > 0 && active > Duration::ZERO)
            .then(|| self.done as f64 / active.as_secs_f64());
        let rate = if self.finished.is_some() {
            average
        } else {
            self.smoothed.or(average)
        };
        let state = match &self.state {
            JobState::Queued | JobState::Running if self.paused => JobState::Paused,
            s => s.clone(),
        };
        let eta = match (rate, self.total, &state) {
            (Some(r), Some(t), JobState::Running | JobState::Paused) if r > 0.0 => Some(
                Duration::from_secs_f64((t.saturating_sub(self.done) as f64 / r).min(1e9)),
            ),
            _ => None,
        };
        JobStatus {
            id: self.id,
            name: self.name.clone(),
            state,
            phase: self.phase.clone(),
            done: self.done,
            total: self.total,
            unit: self.unit.clone(),
            rate,
            eta,
            elapsed,
            held: self.held.map(|(h, _)| h),
        }
    }

    fn restart_rate(&mut self, now: Instant) {
        self.sample = (now, self.done);
    }
}

struct Inner {
    jobs: Vec<Entry>,
    next_id: JobId,
    shutdown: bool,
    /// Set when the runner's thread could not be started: jobs fail with this at once.
    no_thread: Option<String>,
}

impl Inner {
    fn entry(&mut self, id: JobId) -> Option<&mut Entry> {
        self.jobs.iter_mut().find(|e| e.id == id)
    }
}

/// Coalesces change notifications: the callback runs on its own thread, at most [`NOTIFY_HZ`]
/// times a second, and always once after the last change.
struct Notifier {
    /// (a change is pending, shut down)
    flags: Mutex<(bool, bool)>,
    wake: Condvar,
}

impl Notifier {
    fn poke(&self) {
        lock(&self.flags).0 = true;
        self.wake.notify_one();
    }

    fn stop(&self) {
        lock(&self.flags).1 = true;
        self.wake.notify_one();
    }

    fn serve(&self, callback: &dyn Fn()) {
        let interval = Duration::from_secs(1) / NOTIFY_HZ;
        loop {
            {
                let flags = lock(&self.flags);
                let mut flags = self
                    .wake
                    .wait_while(flags, |(pending, stop)| !*pending && !*stop)
                    .unwrap_or_else(|e| e.into_inner());
                if flags.1 {
                    return;
                }
                flags.0 = false;
            }
            callback();
            std::thread::sleep(interval);
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled on every change: the runner waits for work, paused jobs for resume, and
    /// [`JobRunner::wait_until`] for anything.
    changed: Condvar,
    interactive: Arc<Interactive>,
    notifier: Arc<Notifier>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn announce(&self) {
        self.changed.notify_all();
        self.notifier.poke();
    }

    /// Changes job `id` (if it is still listed) and announces the change.
    fn update(&self, id: JobId, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().entry(id) {
            f(e);
        }
        self.announce();
    }
}

/// What a running job holds: progress reports, cancellation, and its checkpoint.
pub struct JobCtx {
    id: JobId,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl JobCtx {
    pub fn id(&self) -> JobId {
        self.id
    }

    /// How much there is to do, in `unit` ("items", "tokens", "bytes"). A new unit starts a new
    /// count (a job moving from one phase to the next).
    pub fn set_total(&self, total: u64, unit: &str) {
        self.shared.update(self.id, |e| {
            if e.unit != unit {
                e.unit = unit.to_string();
                e.done = 0;
                e.smoothed = None;
                e.restart_rate(Instant::now());
            }
            e.total = Some(total);
        });
    }

    /// Forgets the total (a phase of unknown length follows).
    pub fn clear_total(&self) {
        self.shared.update(self.id, |e| e.total = None);
    }

    /// What the job is doing now, in a few words.
    pub fn set_phase(&self, phase: &str) {
        self.shared.update(self.id, |e| {
            if e.phase != phase {
                e.phase = phase.to_string();
            }
        });
    }

    /// `n` more units done.
    pub fn advance(&self, n: u64) {
        self.shared.update(self.id, |e| {
            e.done += n;
            note_progress(e);
        });
    }

    /// Sets the count of units done (for work that reports a position, like bytes written);
    /// going backwards starts a new rate estimate.
    pub fn set_done(&self, done: u64) {
        self.shared.update(self.id, |e| {
            if done < e.done {
                e.smoothed = None;
                e.done = done;
                e.restart_rate(Instant::now());
            } else {
                e.done = done;
                note_progress(e);
            }
        });
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The job's cancel flag, for code that takes one (a model run, a fetch).
    pub fn cancel_flag(&self) -> &Arc<AtomicBool> {
        &self.cancel
    }

    /// Call between batches: `Err(Cancelled)` once the job is cancelled; blocks while it is
    /// paused and while an interactive run is in flight.
    pub fn checkpoint(&self) -> Result<(), Cancelled> {
        let result = loop {
            if self.is_cancelled() {
                break Err(Cancelled);
            }
            {
                let mut inner = self.shared.lock();
                let paused = match inner.entry(self.id) {
                    Some(e) if e.paused && !self.is_cancelled() => Some(self.hold(e, Hold::Paused)),
                    _ => None,
                };
                if let Some(changed) = paused {
                    if changed {
                        self.shared.announce();
                    }
                    // Woken by resume and cancel (the lock is held from the check to the wait,
                    // so no wake-up is missed); the timeout is only a guard.
                    let _ = self
                        .shared
                        .changed
                        .wait_timeout(inner, Duration::from_millis(200));
                    continue;
                }
            }
            if self.shared.interactive.is_busy() {
                let changed = {
                    let mut inner = self.shared.lock();
                    inner
                        .entry(self.id)
                        .is_some_and(|e| self.hold(e, Hold::Interactive))
                };
                if changed {
                    self.shared.announce();
                }
                // Short waits, so a cancel is seen while the viewer computes.
                self.shared.interactive.wait_idle(Duration::from_millis(50));
                continue;
            }
            break Ok(());
        };
        let released = {
            let mut inner = self.shared.lock();
            match inner.entry(self.id) {
                Some(e) => match e.held.take() {
                    Some((_, since)) => {
                        let now = Instant::now();
                        e.held_for += now - since;
                        e.restart_rate(now);
                        true
                    }
                    None => false,
                },
                None => false,
            }
        };
        if released {
            self.shared.announce();
        }
        result
    }

    /// Marks the job held for `why`; true when that changed.
    fn hold(&self, e: &mut Entry, why: Hold) -> bool {
        match e.held {
            Some((h, _)) if h == why => false,
            Some((_, since)) => {
                e.held = Some((why, since));
                true
            }
            None => {
                e.held = Some((why, Instant::now()));
                true
            }
        }
    }
}

fn note_progress(e: &mut Entry) {
    let now = Instant::now();
    let (at, done_then) = e.sample;
    let dt = now - at;
    if dt >= RATE_WINDOW {
        let recent = e.done.saturating_sub(done_then) as f64 / dt.as_secs_f64();
        e.smoothed = Some(match e.smoothed {
            None => recent,
            Some(r) => 0.7 * r + 0.3 * recent,
        });
        e.sample = (now, e.done);
    }
}

/// Shuts the runner down when the last handle goes: queued and running jobs are cancelled.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        {
            let mut inner = self.0.lock();
            inner.shutdown = true;
            for e in &mut inner.jobs {
                e.cancel.store(true, Ordering::Relaxed);
            }
        }
        self.0.changed.notify_all();
        self.0.notifier.stop();
    }
}

/// The jobs' thread and the handle to everything about them. Clones share the runner; it stops
/// (cancelling what is left) when the last clone is dropped.
#[derive(Clone)]
pub struct JobRunner {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl JobRunner {
    /// Starts the runner; `notify` is called (on a thread of its own, at most [`NOTIFY_HZ`] times
    /// a second) after changes. Jobs yield to runs marked on `interactive`.
    pub fn new(interactive: Arc<Interactive>, notify: impl Fn() + Send + 'static) -> Self {
        let notifier = Arc::new(Notifier {
            flags: Mutex::new((false, false)),
            wake: Condvar::new(),
        });
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                jobs: Vec::new(),
                next_id: 1,
                shutdown: false,
                no_thread: None,
            }),
            changed: Condvar::new(),
            interactive,
            notifier: notifier.clone(),
        });
        let n = notifier.clone();
        // Without this thread there are no notifications; the jobs still run.
        let _ = std::thread::Builder::new()
            .name("hubel-jobs-notify".into())
            .spawn(move || n.serve(&notify));
        let s = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("hubel-jobs".into())
            .spawn(move || serve(&s))
        {
            shared.lock().no_thread = Some(format!("the jobs thread could not start: {e}"));
        }
        JobRunner {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        }
    }

    /// The gate jobs wait at while the viewer computes.
    pub fn interactive(&self) -> &Arc<Interactive> {
        &self.shared.interactive
    }

    /// Queues a job; it runs after those queued before it.
    pub fn submit(
        &self,
        name: impl Into<String>,
        job: impl FnOnce(&JobCtx) -> JobResult + Send + 'static,
    ) -> JobId {
        let now = Instant::now();
        let id = {
            let mut inner = self.shared.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            let (state, job, finished): (_, Option<JobFn>, _) = match &inner.no_thread {
                Some(why) => (JobState::Failed(why.clone()), None, Some(now)),
                None => (JobState::Queued, Some(Box::new(job)), None),
            };
            inner.jobs.push(Entry {
                id,
                name: name.into(),
                state,
                paused: false,
                phase: String::new(),
                done: 0,
                total: None,
                unit: "items".into(),
                cancel: Arc::new(AtomicBool::new(false)),
                job,
                started: finished,
                finished,
                held_for: Duration::ZERO,
                held: None,
                sample: (now, 0),
                smoothed: None,
            });
            id
        };
        self.shared.announce();
        id
    }

    /// Every listed job, oldest first.
    pub fn list(&self) -> Vec<JobStatus> {
        let now = Instant::now();
        self.shared
            .lock()
            .jobs
            .iter()
            .map(|e| e.status(now))
            .collect()
    }

    pub fn status(&self, id: JobId) -> Option<JobStatus> {
        let now = Instant::now();
        self.shared.lock().entry(id).map(|e| e.status(now))
    }

    /// Cancels a job: a queued one at once, a running one at its next checkpoint (or sooner,
    /// where it watches its cancel flag). False when it is not listed or already finished.
    pub fn cancel(&self, id: JobId) -> bool {
        let mut ok = false;
        self.shared.update(id, |e| {
            if e.state.is_finished() {
                return;
            }
            ok = true;
            e.cancel.store(true, Ordering::Relaxed);
            if e.state == JobState::Queued {
                e.state = JobState::Cancelled;
                e.job = None;
                e.finished = Some(Instant::now());
                e.started.get_or_insert(Instant::now());
            }
        });
        ok
    }

    /// Pauses a job: a running one stops at its next checkpoint, a queued one is passed over.
    pub fn pause(&self, id: JobId) -> bool {
        self.set_paused(id, true)
    }

    pub fn resume(&self, id: JobId) -> bool {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: JobId, paused: bool) -> bool {
        let mut ok = false;
        self.shared.update(id, |e| {
            if !e.state.is_finished() {
                e.paused = paused;
                ok = true;
            }
        });
        ok
    }

    /// Removes a finished job from the list; false when it is not finished.
    pub fn clear(&self, id: JobId) -> bool {
        let removed = {
            let mut inner = self.shared.lock();
            let before = inner.jobs.len();
            inner
                .jobs
                .retain(|e| !(e.id == id && e.state.is_finished()));
            inner.jobs.len() != before
        };
        if removed {
            self.shared.announce();
        }
        removed
    }

    /// Removes every finished job from the list.
    pub fn clear_finished(&self) {
        self.shared.lock().jobs.retain(|e| !e.state.is_finished());
        self.shared.announce();
    }

    /// Waits (up to `timeout`) until `pred` holds for the job list; returns whether it does.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[JobStatus]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            let now = Instant::now();
            let list: Vec<JobStatus> = inner.jobs.iter().map(|e| e.status(now)).collect();
            if pred(&list) {
                return true;
            }
            if now >= deadline {
                return false;
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for job `id` to finish; returns its status then (`None` when it is
    /// not listed).
    pub fn wait(&self, id: JobId, timeout: Duration) -> Option<JobStatus> {
        self.wait_until(timeout, |jobs| {
            jobs.iter()
                .find(|j| j.id == id)
                .is_none_or(|j| j.state.is_finished())
        });
        self.status(id)
    }
}

/// The runner's thread: takes the oldest queued job that is not paused, runs it under
/// `catch_unwind`, records how it ended.
fn serve(shared: &Arc<Shared>) {
    loop {
        let (id, job, cancel) = {
            let mut inner = shared.lock();
            loop {
                if inner.shutdown {
                    return;
                }
                let next = inner
                    .jobs
                    .iter_mut()
                    .find(|e| e.state == JobState::Queued && !e.paused && e.job.is_some());
                if let Some(e) = next {
                    let now = Instant::now();
                    e.state = JobState::Running;
                    e.started = Some(now);
                    e.restart_rate(now);
                    let job = e.job.take();
                    break (e.id, job, e.cancel.clone());
                }
                inner = shared
                    .changed
                    .wait(inner)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        shared.announce();
        let Some(job) = job else { continue };
        let ctx = JobCtx {
            id,
            cancel: cancel.clone(),
            shared: shared.clone(),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| job(&ctx)));
        let state = match outcome {
            Ok(Ok(summary)) => JobState::Done(summary),
            Ok(Err(JobError::Cancelled)) => JobState::Cancelled,
            // A job that stopped with an error after being cancelled was cancelled.
            Ok(Err(JobError::Failed(_))) if cancel.load(Ordering::Relaxed) => JobState::Cancelled,
            Ok(Err(JobError::Failed(m))) => JobState::Failed(m),
            Err(payload) => JobState::Failed(format!(
                "the job panicked (a bug; please report it): {}",
                panic_message(payload.as_ref())
            )),
        };
        shared.update(id, |e| {
            e.state = state;
            e.finished = Some(Instant::now());
            if let Some((_, since)) = e.held.take() {
                e.held_for += Instant::now() - since;
            }
        });
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
