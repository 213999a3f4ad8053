//! The Experiments side of the runtime (plain data, no egui): the protocol chosen (built in or
//! opened from a file), the experiment job's answer, the last result per protocol and the
//! report-folder export. The job runs on the job runner (`worker::experiment_job`) with
//! progress, pause and cancel in the Jobs list; the view only draws what is here.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use crate::corpus::protocol::{self, Protocol};
use crate::experiments::Report;

/// A finished experiment.
#[derive(Clone)]
pub struct Finished {
    pub protocol: Protocol,
    pub report: Report,
    pub seconds: f64,
    pub model: String,
}

/// What the experiment job hands back.
pub type Answer = Result<Finished, String>;

/// The experiment in flight.
pub struct ExperimentRun {
    pub name: String,
    pub protocol: String,
    pub rx: Receiver<Answer>,
}

/// The export in flight (a thread writes the folder: PNG rasterising takes a moment).
pub struct Export {
    pub rx: Receiver<Result<PathBuf, String>>,
}

#[derive(Default)]
pub struct Experiments {
    /// The protocol the panel shows, or why the file chosen is not one.
    pub protocol: Option<Result<Protocol, String>>,
    /// Where an opened protocol came from (`None`: built in).
    pub protocol_file: Option<PathBuf>,
    pub running: Option<ExperimentRun>,
    /// The last result (of the protocol shown or another).
    pub result: Option<Finished>,
    /// The last run's failure (cancelled runs say so).
    pub error: Option<String>,
    pub exporting: Option<Export>,
    /// The last export's outcome, for the panel's line.
    pub exported: Option<Result<PathBuf, String>>,
    /// The dose–response job in flight, and its last result (a [`Report::Dose`]).
    pub dosing: Option<ExperimentRun>,
    pub dose: Option<Finished>,
    pub dose_error: Option<String>,
    /// The discriminator job in flight, and the last fitted discriminator with what it said.
    pub fitting: Option<Receiver<Result<Classified, String>>>,
    pub classified: Option<Result<Classified, String>>,
    /// The last save of a discriminator.
    pub saved: Option<Result<PathBuf, String>>,
}

/// A discriminator fitted on the protocol shown, and the texts it classified.
#[derive(Clone)]
pub struct Classified {
    pub discriminator: crate::experiments::discriminator::Discriminator,
    pub results: Vec<crate::experiments::discriminator::Classification>,
}

impl Experiments {
    /// Shows a built-in protocol.
    pub fn choose(&mut self, name: &str) {
        self.protocol_file = None;
        self.protocol = Some(match protocol::built_in(name) {
            Some(p) => p.map_err(|e| e.to_string()),
            None => Err(format!("no built-in protocol is called `{name}`")),
        });
    }

    /// Shows a protocol file (or why it cannot be read).
    pub fn open(&mut self, path: &Path) {
        self.protocol_file = Some(path.to_path_buf());
        self.protocol = Some(Protocol::open(path).map_err(|e| e.to_string()));
    }

    /// The protocol shown, when it is valid.
    pub fn protocol(&self) -> Option<&Protocol> {
        self.protocol.as_ref().and_then(|p| p.as_ref().ok())
    }

    /// The result for the protocol shown (a result of another protocol is kept, not shown).
    pub fn result_shown(&self) -> Option<&Finished> {
        let p = self.protocol()?;
        self.result.as_ref().filter(|r| r.protocol == *p)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Takes the job's and the export's answers, if they came.
    pub fn poll(&mut self) {
        if let Some(run) = &self.dosing {
            match run.rx.try_recv() {
                Ok(r) => {
                    match r {
                        Ok(done) => {
                            self.dose = Some(done);
                            self.dose_error = None;
                        }
                        Err(e) => self.dose_error = Some(e),
                    }
                    self.dosing = None;
                }
                Err(TryRecvError::Disconnected) => {
                    self.dose_error = Some("the dose–response run ended without an answer".into());
                    self.dosing = None;
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        if let Some(rx) = &self.fitting {
            match rx.try_recv() {
                Ok(r) => {
                    self.classified = Some(r);
                    self.fitting = None;
                }
                Err(TryRecvError::Disconnected) => {
                    self.classified =
                        Some(Err("the discriminator job ended without an answer".into()));
                    self.fitting = None;
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        if let Some(run) = &self.running {
            match run.rx.try_recv() {
                Ok(Ok(done)) => {
                    self.result = Some(done);
                    self.error = None;
                    self.running = None;
                }
                Ok(Err(e)) => {
                    self.error = Some(e);
                    self.running = None;
                }
                Err(TryRecvError::Disconnected) => {
                    self.error = Some("the experiment ended without an answer".into());
                    self.running = None;
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        if let Some(export) = &self.exporting {
            match export.rx.try_recv() {
                Ok(r) => {
                    self.exported = Some(r);
                    self.exporting = None;
                }
                Err(TryRecvError::Disconnected) => {
                    self.exported = Some(Err("the export stopped without a word".into()));
                    self.exporting = None;
                }
                Err(TryRecvError::Empty) => {}
            }
        }
    }

    /// Writes the shown result's report folder under `parent` (as `hubel-<protocol>/`) on a
    /// thread of its own.
    pub fn export(&mut self, parent: &Path) {
        let Some(done) = self.result_shown().cloned() else {
            self.exported = Some(Err(
                "run the experiment first: there is nothing to export".into()
            ));
            return;
        };
        let dir = report_dir(parent, &done.protocol.name);
        self.write_report(done, dir);
    }

    /// Writes `done`'s report folder at `dir` on a thread of its own (rasterising the figure
    /// takes a moment); the outcome arrives through `exporting`.
    fn write_report(&mut self, done: Finished, dir: PathBuf) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = crate::experiments::report::write_folder(
                &dir,
                &done.report,
                &done.protocol,
                &done.model,
                done.seconds,
            )
            .map(|_| dir)
            .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        self.exporting = Some(Export { rx });
        self.exported = None;
    }
}

impl Experiments {
    /// Writes the dose–response result's report folder under `parent` (`hubel-dose-<protocol>/`).
    pub fn export_dose(&mut self, parent: &Path) {
        let Some(done) = self.dose.clone() else {
            self.exported = Some(Err("run a dose–response curve first".into()));
            return;
        };
        let dir = report_dir(parent, &format!("dose-{}", done.protocol.name));
        self.write_report(done, dir);
    }

    /// Saves the last fitted discriminator as JSON at `path`.
    pub fn save_discriminator(&mut self, path: &Path) {
        self.saved = Some(match &self.classified {
            Some(Ok(c)) => c
                .discriminator
                .save(path)
                .map(|_| path.to_path_buf())
                .map_err(|e| format!("{}: {e}", path.display())),
            _ => Err("fit a discriminator first".into()),
        });
    }
}

/// The report folder of `protocol` under `parent`: `hubel-<name>` with the name's characters
/// that are not safe in a file name replaced.
pub fn report_dir(parent: &Path, protocol: &str) -> PathBuf {
    let safe: String = protocol
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    parent.join(format!("hubel-{safe}"))
}
