//! A job's progress on stderr, for the CLI: a bar (indicatif) on a terminal, and where stderr is
//! not a terminal (a log, CI) a plain line when something changes phase and otherwise every few
//! seconds, so a log gets a handful of lines, not one per percent. Every CLI job goes through
//! [`run_reporting`].

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Interactive, JobCtx, JobError, JobRunner, JobState, JobStatus};

/// How often the non-terminal printer writes a line while nothing else changes.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// Decides when a plain progress line is due; time is passed in, so it is tested without
/// sleeping.
pub struct LinePrinter {
    every: Duration,
    /// When the last line was printed, and the phase and state it showed.
    last: Option<(Duration, String)>,
    finished: bool,
}

impl LinePrinter {
    pub fn new(every: Duration) -> Self {
        LinePrinter {
            every,
            last: None,
            finished: false,
        }
    }

    /// The line to print for `status` seen at `now` (time since any fixed start), if one is
    /// due: the first, one whenever the phase or state changes, one every `every` otherwise,
    /// and the last (once the job has finished).
    pub fn line(&mut self, status: &JobStatus, now: Duration) -> Option<String> {
        if self.finished {
            return None;
        }
        if status.state.is_finished() {
            self.finished = true;
            return Some(status.line());
        }
        let key = format!("{}\u{0}{:?}", status.phase, status.state);
        match &self.last {
            Some((at, k)) if *k == key && now < *at + self.every => None,
            _ => {
                self.last = Some((now, key));
                Some(status.line())
            }
        }
    }
}

/// Shows one job's progress on stderr.
pub enum Reporter {
    Bar {
        bar: indicatif::ProgressBar,
        has_total: bool,
    },
    Lines {
        printer: LinePrinter,
        start: Instant,
    },
}

impl Reporter {
    /// A bar when stderr is a terminal, lines every [`LINE_EVERY`] when it is not.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(style(false));
            bar.enable_steady_tick(Duration::from_millis(100));
            Reporter::Bar {
                bar,
                has_total: false,
            }
        } else {
            Reporter::lines(LINE_EVERY)
        }
    }

    pub fn lines(every: Duration) -> Self {
        Reporter::Lines {
            printer: LinePrinter::new(every),
            start: Instant::now(),
        }
    }

    pub fn update(&mut self, s: &JobStatus) {
        match self {
            Reporter::Bar { bar, has_total } => {
                if s.total.is_some() != *has_total {
                    *has_total = s.total.is_some();
                    bar.set_style(style(*has_total));
                }
                bar.set_prefix(if s.phase.is_empty() {
                    s.name.clone()
                } else {
                    s.phase.clone()
                });
                if let Some(t) = s.total {
                    bar.set_length(t.max(1));
                    bar.set_position(s.done.min(t));
                }
                let mut msg = Vec::new();
                if s.total.is_some() || s.done > 0 {
                    msg.push(s.counts());
                }
                msg.extend(
                    [s.rate_text(), s.eta_text()]
                        .into_iter()
                        .filter(|t| !t.is_empty()),
                );
                if s.state == JobState::Paused {
                    msg.push("paused".into());
                }
                bar.set_message(msg.join(", "));
            }
            Reporter::Lines { printer, start } => {
                if let Some(line) = printer.line(s, start.elapsed()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Clears the bar and prints how the job ended (a failure is left to the caller, which
    /// prints its error once).
    pub fn finish(&mut self, s: &JobStatus) {
        if let Reporter::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
        if matches!(s.state, JobState::Failed(_)) {
            return;
        }
        match self {
            Reporter::Bar { .. } => eprintln!("{}", s.line()),
            Reporter::Lines { printer, start } => {
                if let Some(line) = printer.line(s, start.elapsed()) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn style(with_total: bool) -> indicatif::ProgressStyle {
    let template = if with_total {
        "{prefix} [{bar:24}] {percent:>3}% {wide_msg}"
    } else {
        "{spinner} {prefix} {wide_msg}"
    };
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Runs `job` on a job runner of its own, showing its progress on stderr until it ends; returns
/// what it returned.
pub fn run_reporting<T: Send + 'static>(
    name: &str,
    job: impl FnOnce(&JobCtx) -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    let runner = JobRunner::new(Interactive::new(), || {});
    let (tx, rx) = mpsc::channel();
    let id = runner.submit(name, move |ctx| {
        let value = job(ctx)?;
        let _ = tx.send(value);
        Ok(String::new())
    });
    let mut reporter = Reporter::for_stderr();
    let last = loop {
        match runner.wait(id, Duration::from_millis(100)) {
            Some(s) if s.state.is_finished() => break s,
            Some(s) => reporter.update(&s),
            None => return Err(JobError::Failed("the job disappeared".into())),
        }
    };
    reporter.finish(&last);
    match last.state {
        JobState::Done(_) => rx
            .recv()
            .map_err(|_| JobError::Failed("the job ended without a result".into())),
        JobState::Failed(m) => Err(JobError::Failed(m)),
        _ => Err(JobError::Cancelled),
    }
}
