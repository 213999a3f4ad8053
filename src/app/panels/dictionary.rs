//! The Dictionary window: train a sparse dictionary of the residual stream (a job; the curve of
//! FVU, L0 and dead atoms drawn as it arrives, the dictionary browsable while it trains), the
//! factor atlas (each atom's importance across the layers a shared dictionary reads, grouped by
//! the depth where it peaks: low, mid, high), and a word's meta-meanings (its residual written
//! as atoms, each with its label, top tokens and examples; each can be ablated, scaled or
//! steered in the probe). Draws the runtime's plain data; every action is a [`Command`].

use egui::{Color32, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::super::dictionary::Dictionaries;
use super::super::file_dialog::FileAction;
use super::super::state::DictionaryTab;
use super::super::{colors, AppState, Command};
use super::ViewCtx;
use crate::features::dictionary::atlas::{group_counts, Group};
use crate::features::dictionary::decompose::Decomposition;
use crate::features::dictionary::edit::Edit;
use crate::features::dictionary::{Dictionary, Encoding, Method};

pub fn dictionary_window_ui(
    ctx: &egui::Context,
    state: &mut AppState,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    screen: egui::Vec2,
) {
    if !state.dictionary_open {
        return;
    }
    let mut open = true;
    egui::Window::new("Dictionary")
        .open(&mut open)
        .resizable(true)
        .default_size([
            (screen.x * 0.62).clamp(560.0, 1100.0),
            (screen.y * 0.8).max(400.0),
        ])
        .default_pos([screen.x * 0.02, 40.0])
        .max_size(screen * 0.96)
        .show(ctx, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| window_ui(ui, state, cx, out));
        });
    if !open {
        out.push(Command::ShowDictionary(false));
    }
}

fn window_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    let d = &cx.runtime.dictionaries;
    ui.horizontal_wrapped(|ui| match &d.current {
        Some(dict) => {
            ui.label(RichText::new(dict.title()).strong());
            let where_ = match (&d.path, d.snapshot) {
                (_, true) => "a snapshot of the training in progress".to_string(),
                (Some(p), false) => p.display().to_string(),
                (None, false) => String::new(),
            };
            ui.label(RichText::new(where_).weak());
        }
        None => {
            ui.label("No dictionary yet: train one, or open one.");
        }
    });
    if let Some(dict) = d
        .current
        .as_ref()
        .filter(|x| x.config.method == Method::Topk)
    {
        ui.horizontal_wrapped(|ui| {
            ui.label("Codes by");
            for (e, text, hint) in [
                (
                    Encoding::Native,
                    "its encoder",
                    "One linear map and the top k: what the SAE was trained with",
                ),
                (
                    Encoding::Pursuit,
                    "pursuit over its atoms",
                    "Non-negative orthogonal matching pursuit over the same atoms, at most k a \
                     token: closer reconstructions of text the SAE was not trained on, at the \
                     same L0, and slower",
                ),
            ] {
                if ui
                    .selectable_label(dict.config.encoding == e, text)
                    .on_hover_text(hint)
                    .clicked()
                {
                    out.push(Command::DictionaryEncoding(e));
                }
            }
        });
    }
    ui.horizontal_wrapped(|ui| {
        if ui.button("Open dictionary…").clicked() {
            out.push(Command::AskFile(FileAction::OpenDictionary));
        }
        if ui
            .button("Open SAELens folder…")
            .on_hover_text(
                "A folder with cfg.json and sae_weights.safetensors (standard, topk or jumprelu)",
            )
            .clicked()
        {
            out.push(Command::AskFile(FileAction::ImportSaelens));
        }
        let exportable = d
            .current
            .as_ref()
            .is_some_and(|x| x.config.method.has_encoder() && x.config.hooks.len() == 1);
        if ui
            .add_enabled(exportable, egui::Button::new("Export as SAELens…"))
            .on_disabled_hover_text(
                "SAELens's format holds an SAE with an encoder on one hook (a top-k dictionary)",
            )
            .clicked()
        {
            out.push(Command::AskFile(FileAction::ExportSaelens));
        }
    });
    match &d.message {
        Some(Ok(m)) => {
            ui.label(RichText::new(m).weak());
        }
        Some(Err(e)) => {
            ui.colored_label(colors::ERROR, e);
        }
        None => {}
    }
    ui.separator();
    ui.horizontal(|ui| {
        for tab in [
            DictionaryTab::Train,
            DictionaryTab::Atlas,
            DictionaryTab::Decompose,
        ] {
            if ui
                .selectable_label(state.dictionary.tab == tab, tab.name())
                .clicked()
            {
                state.dictionary.tab = tab;
            }
        }
    });
    ui.separator();
    match state.dictionary.tab {
        DictionaryTab::Train => train_ui(ui, state, cx, out),
        DictionaryTab::Atlas => atlas_ui(ui, d),
        DictionaryTab::Decompose => decompose_ui(ui, state, cx, out),
    }
}

fn train_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    let d = &cx.runtime.dictionaries;
    let f = &mut state.dictionary;
    egui::Grid::new("dict-form").num_columns(2).show(ui, |ui| {
        ui.label("Method");
        ui.horizontal(|ui| {
            for (m, hint) in [
                (Method::Topk, "a top-k sparse autoencoder per layer (Adam; dead atoms revived by an auxiliary loss)"),
                (Method::Fista, "one non-negative dictionary shared by the layers, codes by FISTA (Yun et al. 2021)"),
                (Method::Itda, "atoms taken from real activations by matching pursuit, in seconds (Leask et al. 2025)"),
            ] {
                ui.selectable_value(&mut f.method, m, m.name()).on_hover_text(hint);
            }
        });
        ui.end_row();
        let l = ui.label("Layers");
        ui.add(
            egui::TextEdit::singleline(&mut f.layers)
                .hint_text("6   or   2,6,10,14,18,22,26   (embed for the embedding)")
                .desired_width(260.0),
        )
        .labelled_by(l.id)
        .on_hover_text("hook_resid_post of each layer; several layers need the fista method");
        ui.end_row();
        ui.label("Atoms");
        ui.add(egui::DragValue::new(&mut f.atoms).range(8..=65_536).speed(16));
        ui.end_row();
        match f.method {
            Method::Fista => {
                ui.label("λ (L1)");
                ui.add(
                    egui::DragValue::new(&mut f.lambda)
                        .range(0.0..=50.0)
                        .speed(0.05),
                );
            }
            _ => {
                ui.label("Active atoms (k)");
                ui.add(egui::DragValue::new(&mut f.k).range(1..=512));
            }
        }
        ui.end_row();
        ui.label("Tokens");
        ui.add(
            egui::DragValue::new(&mut f.tokens)
                .range(100..=5_000_000)
                .speed(500),
        )
        .on_hover_text("Residual streams collected from WordNet (position 0, the attention sink, left out)");
        ui.end_row();
        if f.method != Method::Itda {
            ui.label("Epochs");
            ui.add(egui::DragValue::new(&mut f.epochs).range(1..=1000));
            ui.end_row();
        }
        ui.label("Corpus");
        ui.checkbox(&mut f.examples_only, "WordNet example sentences only")
            .on_hover_text("Training text is drawn from the whole corpus; every 20th stimulus is held out");
        ui.end_row();
        if f.method == Method::Topk {
            ui.label("Codes");
            ui.checkbox(&mut f.pursuit, "by pursuit over the atoms")
                .on_hover_text("The trained SAE codes rows by non-negative orthogonal matching pursuit over its atoms (at most k), not by its encoder: closer reconstructions of unseen text at the same L0");
            ui.end_row();
        }
    });
    ui.horizontal_wrapped(|ui| {
        let loaded = cx.runtime.model.is_some();
        let training = d.is_training();
        if ui
            .add_enabled(loaded && !training, egui::Button::new("▶ Train"))
            .on_disabled_hover_text(if training {
                "A dictionary is training (cancel it in the Jobs list)"
            } else {
                "Load a model first"
            })
            .clicked()
        {
            out.push(Command::TrainDictionary);
        }
        if training {
            ui.spinner();
            if let Some(job) =
                cx.runtime.job_list.iter().find(|j| {
                    j.name == super::super::dictionary::TRAIN_JOB && !j.state.is_finished()
                })
            {
                ui.label(job.line());
                if ui.button("Cancel").clicked() {
                    out.push(Command::CancelJob(job.id));
                }
            }
        }
    });
    if let Some(e) = d.train.error() {
        ui.colored_label(colors::ERROR, e);
    }
    curve_ui(ui, d);
}

/// FVU and the dead fraction (left axis, 0–1) and L0 (right: its own plot) against epochs.
fn curve_ui(ui: &mut egui::Ui, d: &Dictionaries) {
    if d.curve.is_empty() {
        ui.label(RichText::new("The training curve appears here as the job runs.").weak());
        return;
    }
    let last = d.curve[d.curve.len() - 1];
    ui.label(format!(
        "epoch {:.2} · {:.1} s · FVU {:.4} (normalised space, training rows) · L0 {:.1} · dead {:.1}%",
        last.epoch,
        last.seconds,
        last.fvu,
        last.l0,
        100.0 * last.dead_frac
    ));
    let pts = |f: fn(&crate::features::dictionary::TrainPoint) -> f32| -> PlotPoints {
        d.curve
            .iter()
            .map(|p| [f64::from(p.epoch), f64::from(f(p))])
            .collect()
    };
    let w = (ui.available_width() / 2.0 - 8.0).max(200.0);
    ui.horizontal(|ui| {
        Plot::new("dict-fvu")
            .width(w)
            .height(180.0)
            .legend(Legend::default().position(egui_plot::Corner::RightTop))
            .x_axis_label("epoch")
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |p| {
                p.line(Line::new("FVU", pts(|p| p.fvu)).color(Color32::from_rgb(90, 170, 250)));
                p.line(
                    Line::new("dead fraction", pts(|p| p.dead_frac))
                        .color(Color32::from_rgb(235, 120, 90)),
                );
            });
        Plot::new("dict-l0")
            .width(w)
            .height(180.0)
            .legend(Legend::default().position(egui_plot::Corner::RightTop))
            .x_axis_label("epoch")
            .include_y(0.0)
            .show(ui, |p| {
                p.line(
                    Line::new("L0 (active atoms per token)", pts(|p| p.l0))
                        .color(Color32::from_rgb(120, 200, 120)),
                );
            });
    });
}

fn group_color(g: Group) -> Color32 {
    match g {
        Group::Low => Color32::from_rgb(110, 190, 250),
        Group::Mid => Color32::from_rgb(150, 210, 120),
        Group::High => Color32::from_rgb(240, 170, 90),
    }
}

/// The atlas: each factor's importance profile over the dictionary's layers, sorted by peak.
fn atlas_ui(ui: &mut egui::Ui, d: &Dictionaries) {
    let Some(dict) = &d.current else {
        ui.label("Train or open a dictionary to see its factors.");
        return;
    };
    if d.atlas.is_empty() {
        ui.label(
            RichText::new(
                "No atom has an importance profile yet: a dictionary's atoms are described when its \
                 training ends (a snapshot or an imported SAE has none).",
            )
            .weak(),
        );
        return;
    }
    let [low, mid, high] = group_counts(&d.atlas);
    let hooks = &dict.config.hooks;
    ui.label(format!(
        "{} atoms that fire, by the layer where their importance (mean coefficient) peaks: {low} low \
         (layers < ⅓ of the depth: word level), {mid} mid (sentence patterns), {high} high (long \
         range){}",
        d.atlas.len(),
        if hooks.len() == 1 {
            ". This dictionary reads one layer: train a shared FISTA dictionary on several layers \
             (e.g. 2,6,10,14,18,22,26) for a depth profile"
        } else {
            ""
        }
    ));
    if hooks.len() > 1 {
        profile_plot(ui, dict, d);
    }
    egui::Grid::new("atlas")
        .striped(true)
        .num_columns(5)
        .show(ui, |ui| {
            for h in ["atom", "peak", "profile", "label", "top example"] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for row in d.atlas.iter().take(200) {
                let info = &dict.info[row.atom];
                ui.label(format!("D{}", row.atom));
                ui.label(
                    RichText::new(format!(
                        "{} {}",
                        row.peak_layer.map_or("embed".into(), |l| format!("L{l}")),
                        row.group.name()
                    ))
                    .color(group_color(row.group)),
                );
                sparkline(ui, &row.profile, group_color(row.group));
                ui.label(&info.label)
                    .on_hover_text(info.top_tokens.join(", "));
                match info.source.as_ref().or(info.examples.first()) {
                    Some(e) => ui.label(format!("…{}[{}]{}", e.before, e.token, e.after)),
                    None => ui.label(""),
                };
                ui.end_row();
            }
        });
}

/// Mean normalised profile per group against the layer: where each group's factors live.
fn profile_plot(ui: &mut egui::Ui, dict: &Dictionary, d: &Dictionaries) {
    let layer_of = |h: usize| dict.config.hooks[h].layer().map_or(-1.0, |l| l as f64);
    Plot::new("dict-profile")
        .height(170.0)
        .legend(Legend::default().position(egui_plot::Corner::RightTop))
        .x_axis_label("layer")
        .y_axis_label("importance / peak")
        .include_y(0.0)
        .include_y(1.0)
        .show(ui, |p| {
            for g in [Group::Low, Group::Mid, Group::High] {
                let rows: Vec<_> = d.atlas.iter().filter(|r| r.group == g).collect();
                if rows.is_empty() {
                    continue;
                }
                let n = dict.config.hooks.len();
                let pts: PlotPoints = (0..n)
                    .map(|h| {
                        let mean = rows
                            .iter()
                            .map(|r| f64::from(r.profile.get(h).copied().unwrap_or(0.0)))
                            .sum::<f64>()
                            / rows.len() as f64;
                        [layer_of(h), mean]
                    })
                    .collect();
                p.line(
                    Line::new(format!("{} ({})", g.name(), rows.len()), pts)
                        .color(group_color(g))
                        .width(2.0),
                );
            }
        });
}

/// A small bar profile (one bar per hook), drawn in a fixed box.
fn sparkline(ui: &mut egui::Ui, values: &[f32], color: Color32) {
    let w = (values.len() as f32 * 6.0).clamp(12.0, 120.0);
    let (rect, _) = ui.allocate_exact_size(egui::vec2(w, 14.0), egui::Sense::hover());
    let bw = rect.width() / values.len().max(1) as f32;
    for (i, &v) in values.iter().enumerate() {
        let h = rect.height() * v.clamp(0.0, 1.0);
        let x = rect.left() + i as f32 * bw;
        ui.painter().rect_filled(
            egui::Rect::from_min_max(
                egui::pos2(x, rect.bottom() - h),
                egui::pos2(x + (bw - 1.0).max(1.0), rect.bottom()),
            ),
            0.0,
            color,
        );
    }
}

fn decompose_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    let d = &cx.runtime.dictionaries;
    let Some(dict) = d.current.clone() else {
        ui.label("Train or open a dictionary to decompose words with it.");
        return;
    };
    let f = &mut state.dictionary;
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Word");
        ui.add(
            egui::TextEdit::singleline(&mut f.word)
                .hint_text("apple")
                .desired_width(100.0),
        )
        .labelled_by(l.id);
        let l = ui.label("in");
        ui.add(
            egui::TextEdit::singleline(&mut f.context)
                .hint_text("a context holding the word (empty: the word alone)")
                .desired_width(280.0),
        )
        .labelled_by(l.id);
        if dict.config.hooks.len() > 1 {
            ui.label("at");
            egui::ComboBox::from_id_salt("decompose-layer")
                .selected_text(
                    f.layer
                        .map_or("the first layer".into(), |l| format!("layer {l}")),
                )
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut f.layer, None, "the first layer");
                    for h in &dict.config.hooks {
                        if let Some(l) = h.layer() {
                            ui.selectable_value(&mut f.layer, Some(l), format!("layer {l}"));
                        }
                    }
                });
        }
        let busy = d.decompose.is_running();
        if ui
            .add_enabled(
                !busy && cx.runtime.model.is_some(),
                egui::Button::new("▶ Decompose"),
            )
            .clicked()
        {
            out.push(Command::DecomposeWord);
        }
        if busy {
            ui.spinner();
        }
    });
    if let Some(e) = d.decompose.error() {
        ui.colored_label(colors::ERROR, e);
    }
    let Some(parts) = d.decompose.result() else {
        ui.label(
            RichText::new(
                "A word's residual stream, written as the dictionary's atoms: its meta-meanings \
                 (Zhang et al. 2019: apple ≈ fruit + mobile & IT + dessert + …).",
            )
            .weak(),
        );
        return;
    };
    let probe_matches = !f.context.trim().is_empty() && state.probe.trim() == f.context.trim();
    for dec in parts {
        decomposition_ui(ui, &dict, dec, probe_matches, out);
    }
    if !probe_matches && !f.context.trim().is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label(
                RichText::new("The buttons edit the probe: load the context into it to watch its output change.")
                    .weak(),
            );
            if ui.button("Probe this context").clicked() {
                out.push(Command::LoadStimulus(f.context.clone()));
            }
        });
    }
}

fn decomposition_ui(
    ui: &mut egui::Ui,
    dict: &Dictionary,
    dec: &Decomposition,
    probe_matches: bool,
    out: &mut Vec<Command>,
) {
    ui.add_space(4.0);
    ui.label(
        RichText::new(format!(
            "{} — token {:?} at position {} of {:?}; unexplained {:.1}%",
            dec.hook,
            dec.token,
            dec.position,
            dec.text,
            100.0 * dec.residual_fraction
        ))
        .strong(),
    );
    let hook = dict
        .config
        .hooks
        .iter()
        .position(|h| h.to_string() == dec.hook)
        .unwrap_or(0);
    let top = dec.parts.first().map_or(1.0, |p| p.coef).max(1e-6);
    egui::Grid::new(("parts", &dec.hook))
        .striped(true)
        .num_columns(5)
        .show(ui, |ui| {
            for p in &dec.parts {
                let (rect, _) =
                    ui.allocate_exact_size(egui::vec2(90.0, 14.0), egui::Sense::hover());
                ui.painter().rect_filled(
                    egui::Rect::from_min_size(
                        rect.min,
                        egui::vec2(rect.width() * (p.coef / top).clamp(0.0, 1.0), rect.height()),
                    ),
                    2.0,
                    Color32::from_rgb(90, 170, 250),
                );
                ui.label(format!("{:.3} × {}", p.coef, p.feature));
                let info = dict.info.get(p.atom);
                let r = ui.label(RichText::new(&p.label).strong());
                if let Some(info) = info {
                    r.on_hover_ui(|ui| {
                        ui.label(format!("top tokens: {}", info.top_tokens.join(", ")));
                        for e in info.examples.iter().take(5) {
                            ui.label(format!(
                                "{:.2}  …{}[{}]{}",
                                e.value, e.before, e.token, e.after
                            ));
                        }
                    });
                }
                ui.label(
                    RichText::new(
                        info.and_then(|i| i.examples.first())
                            .map_or(String::new(), |e| {
                                format!("…{}[{}]{}", e.before, e.token, e.after)
                            }),
                    )
                    .weak(),
                );
                ui.horizontal(|ui| {
                    let hint = if probe_matches {
                        "Edit this feature in the probe (its atom × its code at every token)"
                    } else {
                        "Edit this feature in the probe box's text (its atom × its code there)"
                    };
                    for (label, edit) in [
                        ("ablate", Edit::Ablate),
                        ("×2", Edit::Scale(2.0)),
                        ("steer +8", Edit::Add(8.0)),
                    ] {
                        if ui.small_button(label).on_hover_text(hint).clicked() {
                            out.push(Command::EditAtom {
                                hook,
                                atom: p.atom,
                                edit,
                            });
                        }
                    }
                });
                ui.end_row();
            }
        });
}
