//! File dialogs that always work. The desktop's dialog (rfd: xdg portal, then zenity) runs on
//! its own thread so the window never blocks; where it cannot open (no portal, no zenity: bare
//! X11, tiling window managers, containers) rfd answers "nothing chosen" at once, which no
//! person does, so an answer within [`NATIVE_FAILS_WITHIN`] counts as a failure and the built-in
//! dialog opens in its place, saying why. The built-in one is a folder listing with a path and
//! a file-name field; it is also used when the user asks for it.
//!
//! (egui-file-dialog was the crate to use; its releases so far target egui 0.36, not 0.37.)

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// What a chosen path is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAction {
    OpenModel,
    OpenModelFolder,
    OpenSession,
    SaveSession,
    ExportHeatmapPng,
    ExportHeatmapCsv,
    ExportOutputJson,
    /// A text file to scan for receptive fields (one stimulus per line).
    ScanTextFile,
    /// A folder of `.txt` files to scan.
    ScanTextFolder,
    /// An experiment protocol (JSON).
    OpenProtocol,
    /// The folder an experiment's report folder is written in.
    ExportReport,
    /// The folder a dose–response report folder is written in.
    ExportDose,
    /// Where a fitted discriminator is saved (JSON).
    SaveDiscriminator,
    /// A dictionary (safetensors) to use.
    OpenDictionary,
    /// A SAELens folder (cfg.json + sae_weights.safetensors) to use.
    ImportSaelens,
    /// The folder the dictionary in use is written to in SAELens's format.
    ExportSaelens,
}

impl FileAction {
    pub fn title(self) -> &'static str {
        match self {
            FileAction::OpenModel => "Open model file",
            FileAction::OpenModelFolder => "Open HF model folder",
            FileAction::OpenSession => "Open session",
            FileAction::SaveSession => "Save session",
            FileAction::ExportHeatmapPng => "Export heatmap as PNG",
            FileAction::ExportHeatmapCsv => "Export heatmap as CSV",
            FileAction::ExportOutputJson => "Export output as JSON",
            FileAction::ScanTextFile => "Scan a text file (one stimulus per line)",
            FileAction::ScanTextFolder => "Scan a folder of .txt files",
            FileAction::OpenProtocol => "Open an experiment protocol",
            FileAction::ExportReport => "Export the report into a folder",
            FileAction::ExportDose => "Export the dose–response report into a folder",
            FileAction::SaveDiscriminator => "Save the discriminator",
            FileAction::OpenDictionary => "Open a dictionary",
            FileAction::ImportSaelens => "Open a SAELens SAE folder",
            FileAction::ExportSaelens => "Export the dictionary as a SAELens folder",
        }
    }

    fn saves(self) -> bool {
        matches!(
            self,
            FileAction::SaveSession
                | FileAction::ExportHeatmapPng
                | FileAction::ExportHeatmapCsv
                | FileAction::ExportOutputJson
                | FileAction::SaveDiscriminator
        )
    }

    fn picks_folder(self) -> bool {
        matches!(
            self,
            FileAction::OpenModelFolder
                | FileAction::ScanTextFolder
                | FileAction::ExportReport
                | FileAction::ExportDose
                | FileAction::ImportSaelens
                | FileAction::ExportSaelens
        )
    }

    /// The file name offered when saving, and the extension listed when opening.
    fn default_name(self) -> &'static str {
        match self {
            FileAction::SaveSession | FileAction::OpenSession => "session.json",
            FileAction::ExportHeatmapPng => "heatmap.png",
            FileAction::ExportHeatmapCsv => "heatmap.csv",
            FileAction::ExportOutputJson => "output.json",
            FileAction::OpenModel => "model.gguf",
            FileAction::ScanTextFile => "corpus.txt",
            FileAction::OpenProtocol => "protocol.json",
            FileAction::SaveDiscriminator => "discriminator.json",
            FileAction::OpenDictionary => "dictionary.safetensors",
            FileAction::OpenModelFolder
            | FileAction::ScanTextFolder
            | FileAction::ExportReport
            | FileAction::ExportDose
            | FileAction::ImportSaelens
            | FileAction::ExportSaelens => "",
        }
    }

    fn extension(self) -> Option<&'static str> {
        Path::new(self.default_name())
            .extension()
            .and_then(|e| e.to_str())
    }
}

/// A native dialog that answers "nothing chosen" sooner than this did not open.
pub const NATIVE_FAILS_WITHIN: Duration = Duration::from_millis(400);

/// One entry of the built-in dialog's listing.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    is_dir: bool,
}

/// The built-in dialog.
pub struct BuiltIn {
    pub action: FileAction,
    /// The folder listed; editable as text.
    pub folder: String,
    /// The file name (saving) or the chosen file (opening).
    pub name: String,
    /// Why the built-in dialog is shown instead of the desktop's.
    pub reason: Option<String>,
    entries: Vec<Entry>,
    listed: String,
    error: Option<String>,
}

impl BuiltIn {
    fn new(action: FileAction, folder: &Path, reason: Option<String>) -> Self {
        let name = if action.saves() {
            action.default_name().to_string()
        } else {
            String::new()
        };
        let mut d = BuiltIn {
            action,
            folder: folder.display().to_string(),
            name,
            reason,
            entries: Vec::new(),
            listed: String::new(),
            error: None,
        };
        d.list();
        d
    }

    fn list(&mut self) {
        self.listed = self.folder.clone();
        self.entries.clear();
        match std::fs::read_dir(&self.folder) {
            Ok(rd) => {
                let ext = self.action.extension();
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let is_dir = e.path().is_dir();
                    let shown = is_dir
                        || self.action.picks_folder()
                        || ext
                            .is_none_or(|x| name.to_ascii_lowercase().ends_with(&format!(".{x}")));
                    if shown && (is_dir || !self.action.picks_folder()) {
                        self.entries.push(Entry { name, is_dir });
                    }
                }
                self.entries
                    .sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then(a.name.cmp(&b.name)));
                self.error = None;
            }
            Err(e) => self.error = Some(format!("cannot list {}: {e}", self.folder)),
        }
    }

    /// The path the dialog would return now.
    pub fn chosen(&self) -> Result<PathBuf, String> {
        let folder = PathBuf::from(self.folder.trim());
        if self.action.picks_folder() {
            return if folder.is_dir() {
                Ok(folder)
            } else {
                Err(format!("{} is not a folder", folder.display()))
            };
        }
        let name = self.name.trim();
        if name.is_empty() {
            return Err("type a file name".into());
        }
        let path = folder.join(name);
        if self.action.saves() {
            match path.parent() {
                Some(p) if p.is_dir() => Ok(path),
                _ => Err(format!("the folder {} does not exist", folder.display())),
            }
        } else if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} is not a file", path.display()))
        }
    }

    /// Draws the dialog; `Some(Some(path))` when confirmed, `Some(None)` when cancelled.
    fn ui(&mut self, ctx: &egui::Context) -> Option<Option<PathBuf>> {
        let mut outcome = None;
        let mut open = true;
        egui::Window::new(self.action.title())
            .collapsible(false)
            .resizable(true)
            .default_size([520.0, 380.0])
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .open(&mut open)
            .show(ctx, |ui| {
                if let Some(reason) = &self.reason {
                    ui.label(egui::RichText::new(reason).weak().small());
                }
                ui.horizontal(|ui| {
                    let label = ui.label("Folder");
                    let edit = ui
                        .add(egui::TextEdit::singleline(&mut self.folder).desired_width(360.0))
                        .labelled_by(label.id);
                    let up = ui.button("Up").clicked() && self.up();
                    if edit.lost_focus() || up {
                        self.list();
                    }
                });
                if self.listed != self.folder && !ui.ctx().memory(|m| m.focused().is_some()) {
                    self.list();
                }
                egui::ScrollArea::vertical()
                    .max_height(220.0)
                    .auto_shrink([false, true])
                    .show(ui, |ui| {
                        let mut enter = None;
                        for e in &self.entries {
                            let text = if e.is_dir {
                                format!("{}/", e.name)
                            } else {
                                e.name.clone()
                            };
                            let selected = !e.is_dir && e.name == self.name;
                            let r = ui.selectable_label(selected, text);
                            if r.double_clicked() && !e.is_dir {
                                self.name = e.name.clone();
                                outcome = Some(self.chosen().ok());
                            } else if r.clicked() {
                                if e.is_dir {
                                    enter = Some(e.name.clone());
                                } else {
                                    self.name = e.name.clone();
                                }
                            }
                        }
                        if let Some(dir) = enter {
                            self.folder = Path::new(&self.folder).join(dir).display().to_string();
                            self.list();
                        }
                    });
                if !self.action.picks_folder() {
                    ui.horizontal(|ui| {
                        let label = ui.label("File name");
                        ui.add(egui::TextEdit::singleline(&mut self.name).desired_width(300.0))
                            .labelled_by(label.id);
                    });
                }
                if let Some(e) = &self.error {
                    ui.colored_label(super::colors::ERROR, e);
                }
                ui.horizontal(|ui| {
                    let confirm = if self.action.saves() {
                        "Save"
                    } else if self.action.picks_folder() {
                        "Open this folder"
                    } else {
                        "Open"
                    };
                    if ui.button(confirm).clicked() {
                        match self.chosen() {
                            Ok(p) => outcome = Some(Some(p)),
                            Err(e) => self.error = Some(e),
                        }
                    }
                    if ui.button("Cancel").clicked() {
                        outcome = Some(None);
                    }
                });
            });
        if !open {
            outcome = Some(None);
        }
        outcome
    }

    fn up(&mut self) -> bool {
        match Path::new(&self.folder).parent() {
            Some(p) => {
                self.folder = p.display().to_string();
                true
            }
            None => false,
        }
    }
}

enum Open {
    Native {
        action: FileAction,
        /// The answer and how long the desktop's dialog took to give it (timed on its thread,
        /// not when the UI next looks).
        rx: Receiver<(Option<PathBuf>, Duration)>,
    },
    BuiltIn(BuiltIn),
}

/// The app's file dialogs: at most one open at a time.
pub struct FileDialogs {
    /// Whether to try the desktop's dialog first.
    native: bool,
    /// Set once the desktop's dialog failed to open: later dialogs go straight to the built-in one.
    native_failed: Option<String>,
    open: Option<Open>,
    folder: PathBuf,
}

impl FileDialogs {
    pub fn new(native: bool) -> Self {
        let folder = std::env::current_dir()
            .ok()
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/"));
        FileDialogs {
            native,
            native_failed: None,
            open: None,
            folder,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The built-in dialog, when it is the one open (tests drive it).
    pub fn built_in(&mut self) -> Option<&mut BuiltIn> {
        match &mut self.open {
            Some(Open::BuiltIn(d)) => Some(d),
            _ => None,
        }
    }

    /// Opens a dialog for `action`; `use_builtin` skips the desktop's dialog.
    pub fn ask(&mut self, action: FileAction, use_builtin: bool) {
        if self.open.is_some() {
            return;
        }
        if !self.native || use_builtin || self.native_failed.is_some() {
            let reason = self.native_failed.clone().or_else(|| {
                (!self.native || use_builtin).then(|| "Hubel's built-in file dialog".to_string())
            });
            self.open = Some(Open::BuiltIn(BuiltIn::new(action, &self.folder, reason)));
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let folder = self.folder.clone();
        let spawned = std::thread::Builder::new()
            .name("hubel-file-dialog".into())
            .spawn(move || {
                let started = Instant::now();
                let mut d = rfd::FileDialog::new()
                    .set_title(action.title())
                    .set_directory(&folder);
                if let Some(ext) = action.extension() {
                    d = d.add_filter(ext.to_uppercase(), &[ext]);
                }
                let chosen = if action.picks_folder() {
                    d.pick_folder()
                } else if action.saves() {
                    d.set_file_name(action.default_name()).save_file()
                } else {
                    d.pick_file()
                };
                let _ = tx.send((chosen, started.elapsed()));
            });
        self.open = Some(match spawned {
            Ok(_) => Open::Native { action, rx },
            Err(e) => Open::BuiltIn(BuiltIn::new(
                action,
                &self.folder,
                Some(format!("cannot start the desktop file dialog ({e})")),
            )),
        });
    }

    /// Shows the open dialog; returns the action and path once one is chosen.
    pub fn ui(&mut self, ctx: &egui::Context) -> Option<(FileAction, PathBuf)> {
        let open = self.open.take()?;
        match open {
            Open::Native { action, rx } => match rx.try_recv() {
                Ok((Some(path), _)) => self.chosen(action, path),
                Ok((None, took)) if took < NATIVE_FAILS_WITHIN => {
                    let reason = "The desktop's file dialog did not open (no xdg-desktop-portal \
                                  or zenity answered), so Hubel uses its own."
                        .to_string();
                    self.native_failed = Some(reason.clone());
                    self.open = Some(Open::BuiltIn(BuiltIn::new(
                        action,
                        &self.folder,
                        Some(reason),
                    )));
                    ctx.request_repaint();
                    None
                }
                Ok((None, _)) => None,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    // Waiting for the desktop's dialog; offer the built-in one meanwhile.
                    let mut switch = false;
                    egui::Window::new("Waiting for the file dialog")
                        .collapsible(false)
                        .anchor(egui::Align2::CENTER_BOTTOM, [0.0, -40.0])
                        .show(ctx, |ui| {
                            ui.label(format!("{}: the desktop's dialog is open.", action.title()));
                            switch = ui.button("Use Hubel's own dialog instead").clicked();
                        });
                    self.open = Some(if switch {
                        Open::BuiltIn(BuiltIn::new(action, &self.folder, None))
                    } else {
                        Open::Native { action, rx }
                    });
                    ctx.request_repaint_after(Duration::from_millis(100));
                    None
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.native_failed =
                        Some("The desktop's file dialog crashed; Hubel uses its own.".into());
                    self.open = Some(Open::BuiltIn(BuiltIn::new(
                        action,
                        &self.folder,
                        self.native_failed.clone(),
                    )));
                    None
                }
            },
            Open::BuiltIn(mut d) => match d.ui(ctx) {
                Some(Some(path)) => self.chosen(d.action, path),
                Some(None) => None,
                None => {
                    self.open = Some(Open::BuiltIn(d));
                    None
                }
            },
        }
    }

    fn chosen(&mut self, action: FileAction, path: PathBuf) -> Option<(FileAction, PathBuf)> {
        if let Some(f) = path.parent().filter(|f| f.is_dir()) {
            self.folder = f.to_path_buf();
        }
        Some((action, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_dialog_lists_filters_and_checks_paths() {
        let dir = std::env::temp_dir().join(format!("hubel-dialog-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.json"), "{}").unwrap();
        std::fs::write(dir.join("b.txt"), "").unwrap();
        let open = BuiltIn::new(FileAction::OpenSession, &dir, None);
        let names: Vec<&str> = open.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["sub", "a.json"],
            "folders first, only .json files"
        );
        let mut save = BuiltIn::new(FileAction::SaveSession, &dir, None);
        assert_eq!(save.chosen().unwrap(), dir.join("session.json"));
        save.name = " ".into();
        assert!(save.chosen().unwrap_err().contains("type a file name"));
        save.folder = dir.join("missing").display().to_string();
        save.name = "x.json".into();
        assert!(save.chosen().unwrap_err().contains("does not exist"));
        let mut open = BuiltIn::new(FileAction::OpenSession, &dir, None);
        open.name = "nope.json".into();
        assert!(open.chosen().unwrap_err().contains("is not a file"));
        open.name = "a.json".into();
        assert_eq!(open.chosen().unwrap(), dir.join("a.json"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
