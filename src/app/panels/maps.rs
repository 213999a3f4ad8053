//! The whole-brain layer map (layers × tokens) and the chosen layer's feature heatmap, one above
//! the other with a divider between them. Both say which run they show and colour by the view:
//! diverging (blue · white · red) for signed values and differences, sequential for norms and
//! counts.

use egui::{Rect, Sense, Vec2};

use super::super::state::RowRanking;
use super::super::{circuits, colors, text, AppState, Command, ViewMode};
use super::ViewCtx;
use crate::analysis::maps::Measure;
use crate::features::{Basis, FeatureId};
use crate::hooks::Op;

const LABEL_WIDTH: f32 = 86.0;
const ROW_HEIGHT: f32 = 14.0;
const HEADER_HEIGHT: f32 = 14.0;

/// Column width for `n` tokens in `available` pixels beside labels `label` wide: at least 8 (the
/// map scrolls sideways beyond that), at most 56.
fn cell_width(available: f32, n: usize, label: f32) -> f32 {
    ((available - label - 40.0) / n.max(1) as f32).clamp(8.0, 56.0)
}

/// A direct effect with about three significant digits and its sign: `+1.83`, `-0.042`, `+3.1e-4`.
fn effect_text(v: f32) -> String {
    if v == 0.0 {
        return "+0".into();
    }
    match v.abs() {
        a if a >= 10.0 => format!("{v:+.1}"),
        a if a >= 1.0 => format!("{v:+.2}"),
        a if a >= 0.001 => format!("{v:+.3}"),
        _ => format!("{v:+.1e}"),
    }
}

/// The metric the rows are ranked by: `logit(·Paris)` or `logit(·Paris) − logit(·Rome)`.
fn metric_text(target: &str, versus: Option<&str>) -> String {
    match versus {
        Some(v) => format!("logit({target}) − logit({v})"),
        None => format!("logit({target})"),
    }
}

/// The ranking choice of the heatmap's rows: peak |activation|, or direct effect on the pinned
/// target (disabled, saying how to pin one, when there is none).
fn ranking_ui(ui: &mut egui::Ui, state: &mut AppState) {
    let form = &state.circuits;
    let pinned = !form.target.is_empty();
    let by_effect = pinned && state.ranking == RowRanking::DirectEffect;
    ui.label("Rank by");
    if ui
        .radio(!by_effect, "Peak |activation|")
        .on_hover_text("The largest |activation| over the probe, in the baseline run")
        .clicked()
    {
        state.ranking = RowRanking::PeakActivation;
    }
    if pinned {
        let target = text::visible(&form.target);
        let name = match Some(&form.versus).filter(|v| !v.is_empty()) {
            Some(v) => format!("Direct effect on {target} − {}", text::visible(v)),
            None => format!("Direct effect on {target}"),
        };
        if ui
            .radio(by_effect, name)
            .on_hover_text(
                "Rank by |direct effect| on the target's logit (minus the versus token's) at the \
                 attribution's position (the Circuits window's Attribution tab; the last token \
                 unless chosen), in the baseline run: what each neuron or head writes along the \
                 logit direction, the final norm's scale frozen. The cells stay activations.",
            )
            .clicked()
        {
            state.ranking = RowRanking::DirectEffect;
        }
    } else {
        ui.add_enabled(
            false,
            egui::RadioButton::new(false, "Direct effect on a target"),
        )
        .on_disabled_hover_text("Pin a target token first");
        ui.label(
            egui::RichText::new(
                "No target pinned: click a next token in the output panel, or type one in \
                 Circuits (Target)",
            )
            .weak()
            .small(),
        );
    }
}

/// A gradient legend from −scale to +scale (or 0 to scale).
/// Drawn into the caller's (horizontal) layout, item by item, so a wrapping row can break it.
fn legend_ui(ui: &mut egui::Ui, scale: f32, diverging: bool, exclude_sink: bool) {
    {
        let lo = if diverging { -scale } else { 0.0 };
        ui.label(egui::RichText::new(format!("{lo:.3}")).small());
        let (rect, _) = ui.allocate_exact_size(Vec2::new(140.0, 10.0), Sense::hover());
        let steps = 40;
        for i in 0..steps {
            let t = i as f32 / (steps - 1) as f32;
            let v = lo + (scale - lo) * t;
            let x0 = rect.left() + rect.width() * i as f32 / steps as f32;
            let x1 = rect.left() + rect.width() * (i + 1) as f32 / steps as f32;
            ui.painter().rect_filled(
                Rect::from_min_max(egui::pos2(x0, rect.top()), egui::pos2(x1, rect.bottom())),
                0.0,
                colors::scaled(v, scale, diverging),
            );
        }
        let sink = if exclude_sink {
            ", position 0 (the attention sink) left out"
        } else {
            ""
        };
        ui.label(egui::RichText::new(format!("{scale:.3}")).small())
            .on_hover_text(format!(
                "The colour scale ends at the 98th percentile of |value|{sink}; larger values saturate."
            ));
    }
}

/// Which run a map shows, in words.
fn view_label(cx: &ViewCtx, chosen: ViewMode) -> String {
    match cx.derived.view {
        Some(ViewMode::Baseline) if chosen != ViewMode::Baseline => {
            "showing A: baseline (no edits)".into()
        }
        Some(v) => format!("showing {}", v.name()),
        None => String::new(),
    }
}

/// Token labels above `n` columns `w` wide, starting `indent` pixels in.
fn token_header_ui(ui: &mut egui::Ui, tokens: &[String], w: f32, indent: f32) {
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing = Vec2::ZERO;
        ui.add_space(indent);
        let (rect, response) = ui.allocate_exact_size(
            Vec2::new(w * tokens.len() as f32, HEADER_HEIGHT),
            Sense::hover(),
        );
        let painter = ui.painter_at(rect);
        let chars = ((w / 6.0) as usize).max(1);
        for (pos, t) in tokens.iter().enumerate() {
            let cell = Rect::from_min_size(
                egui::pos2(rect.left() + w * pos as f32, rect.top()),
                Vec2::new(w, HEADER_HEIGHT),
            );
            let text: String = t.chars().take(chars).collect();
            painter.text(
                cell.left_center(),
                egui::Align2::LEFT_CENTER,
                text,
                egui::FontId::monospace(9.0),
                ui.visuals().text_color(),
            );
        }
        if let Some(p) = response.hover_pos() {
            let pos = (((p.x - rect.left()) / w) as usize).min(tokens.len().saturating_sub(1));
            if let Some(t) = tokens.get(pos) {
                response.on_hover_text_at_pointer(format!("token {pos}: {t}"));
            }
        }
    });
}

/// The maps' own UI state: the "go to feature" field.
#[derive(Default)]
pub struct MapsView {
    jump: String,
    jump_error: Option<String>,
}

impl MapsView {
    pub fn layer_map_ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        cx: &ViewCtx,
        out: &mut Vec<Command>,
    ) {
        if cx.runtime.result.is_none() {
            ui.label("Run a probe to see every layer respond.");
            return;
        }
        let d = cx.derived;
        let tokens = &cx.derived.tokens;
        ui.horizontal_wrapped(|ui| {
            ui.heading("Layer map");
            ui.label(view_label(cx, state.view));
            super::precision_badge(ui, cx);
            let label = ui.label("Measure");
            egui::ComboBox::from_id_salt("measure")
                .selected_text(state.measure.name())
                .show_ui(ui, |ui| {
                    for m in Measure::ALL {
                        ui.selectable_value(&mut state.measure, m, m.name());
                    }
                })
                .response
                .labelled_by(label.id);
            ui.checkbox(&mut state.exclude_sink, "Leave out position 0")
                .on_hover_text(
                    "Position 0 is an attention sink with a huge residual norm: left out of colour \
                     scales and of the heatmap's ranking, so the other tokens are not washed out",
                );
            legend_ui(ui, d.map_scale, d.map_diverging, state.exclude_sink);
        });
        let w = cell_width(ui.available_width(), tokens.len(), LABEL_WIDTH);
        let layers = d.map.len().max(1);
        // Rows shrink to fit every layer in the panel (down to 5 px; the map scrolls below that).
        let row_height =
            ((ui.available_height() - HEADER_HEIGHT - 8.0) / layers as f32).clamp(5.0, ROW_HEIGHT);
        let scale = d.map_scale;
        let mut clicked: Option<(usize, Option<usize>)> = None;
        egui::ScrollArea::both()
            .id_salt("layer map")
            .auto_shrink([false, false])
            .show(ui, |ui| {
                // Rows touch: no spacing, no minimum widget height.
                ui.spacing_mut().item_spacing.y = 0.0;
                ui.spacing_mut().interact_size.y = row_height;
                token_header_ui(ui, tokens, w, LABEL_WIDTH);
                for (layer, row) in d.map.iter().enumerate() {
                    ui.horizontal(|ui| {
                        ui.spacing_mut().item_spacing = Vec2::ZERO;
                        let selected = layer == state.layer;
                        // A painted label (no button padding) keeps 30 rows short.
                        let (name_rect, name) = ui
                            .allocate_exact_size(Vec2::new(LABEL_WIDTH, row_height), Sense::click());
                        let layer_label = format!("Layer {layer}");
                        name.widget_info(|| {
                            egui::WidgetInfo::selected(
                                egui::Role::Button,
                                true,
                                selected,
                                &layer_label,
                            )
                        });
                        let text_color = if selected {
                            colors::SELECTED
                        } else {
                            ui.visuals().text_color()
                        };
                        // Thin rows name every fifth layer (and the chosen one), readably.
                        if row_height >= 9.0 || layer % 5 == 0 || selected {
                            ui.painter().text(
                                name_rect.right_center() - Vec2::new(6.0, 0.0),
                                egui::Align2::RIGHT_CENTER,
                                format!("L{layer}"),
                                egui::FontId::proportional(row_height.clamp(9.0, 11.0)),
                                text_color,
                            );
                        }
                        if name
                            .on_hover_text_at_pointer(format!("Open layer {layer} in the heatmap"))
                            .clicked()
                        {
                            clicked = Some((layer, None));
                        }
                        let (rect, response) = ui.allocate_exact_size(
                            Vec2::new(w * tokens.len() as f32, row_height),
                            Sense::click(),
                        );
                        let painter = ui.painter_at(rect);
                        for pos in 0..tokens.len() {
                            let color = match row.get(pos).copied().flatten() {
                                Some(c) => colors::scaled(c.value, scale, d.map_diverging),
                                None => colors::EMPTY,
                            };
                            let cell = Rect::from_min_size(
                                egui::pos2(rect.left() + w * pos as f32, rect.top()),
                                Vec2::new(w - 1.0, row_height - 1.0),
                            );
                            painter.rect_filled(cell, 0.0, color);
                        }
                        if selected {
                            painter.rect_stroke(
                                rect,
                                0.0,
                                egui::Stroke::new(1.0, colors::SELECTED),
                                egui::StrokeKind::Inside,
                            );
                        }
                        let hovered = response.hover_pos().map(|p| {
                            (((p.x - rect.left()) / w) as usize).min(tokens.len().saturating_sub(1))
                        });
                        let cell = hovered.and_then(|pos| row.get(pos).copied().flatten());
                        if let Some(pos) = hovered {
                            let text = match cell {
                                Some(c) => match c.neuron {
                                    Some(n) => format!(
                                        "L{layer}N{n}: {:.4} at \"{}\" (position {pos})\nclick: open its card",
                                        c.value, tokens[pos]
                                    ),
                                    None => format!(
                                        "layer {layer} · \"{}\" (position {pos}) · {}: {:.4}",
                                        tokens[pos],
                                        state.measure.name(),
                                        c.value
                                    ),
                                },
                                None => format!("layer {layer} · position {pos}: no data"),
                            };
                            let response = response.clone().on_hover_text_at_pointer(text);
                            if response.clicked() {
                                clicked = Some((layer, cell.and_then(|c| c.neuron)));
                            }
                        }
                    });
                }
            });
        if let Some((layer, neuron)) = clicked {
            state.layer = layer;
            if let Some(n) = neuron {
                out.push(Command::Select(Some(FeatureId::neuron(layer, n))));
            }
        }
    }

    pub fn heatmap_ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        cx: &ViewCtx,
        out: &mut Vec<Command>,
    ) {
        if cx.runtime.result.is_none() {
            return;
        }
        let d = cx.derived;
        let tokens = &cx.derived.tokens;
        let layers = cx.runtime.layers();
        ui.horizontal_wrapped(|ui| {
            ui.heading(format!("Heatmap: layer {}", state.layer));
            ui.label(view_label(cx, state.view));
            super::precision_badge(ui, cx);
            let label = ui.label("Layer");
            ui.add(egui::DragValue::new(&mut state.layer).range(0..=layers.saturating_sub(1)))
                .labelled_by(label.id);
            let label = ui.label("Basis");
            egui::ComboBox::from_id_salt("basis")
                .selected_text(state.basis.name())
                .show_ui(ui, |ui| {
                    let reads = cx
                        .runtime
                        .dictionaries
                        .current
                        .as_ref()
                        .is_some_and(|d| !d.resid_layers().is_empty());
                    for b in Basis::ALL {
                        let usable = b != Basis::Dictionary || reads;
                        ui.add_enabled_ui(usable, |ui| {
                            ui.selectable_value(&mut state.basis, b, b.name())
                                .on_disabled_hover_text(
                                    "Train or open a dictionary of a block's residual stream \
                                     (Dictionary menu) to see its features here",
                                );
                        });
                    }
                })
                .response
                .labelled_by(label.id);
            let label = ui.label("Top K");
            ui.add(egui::DragValue::new(&mut state.top_k).range(1..=256))
                .labelled_by(label.id);
            let label = ui.add(egui::Label::new("Go to").wrap_mode(egui::TextWrapMode::Extend));
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut self.jump)
                        .desired_width(70.0)
                        .hint_text("L10N123"),
                )
                .labelled_by(label.id)
                .on_hover_text(
                    "Open any feature's card by name: L10N123 (neuron), L5H3 (head), L6D42 \
                     (feature 42 of the dictionary in use, at layer 6)",
                );
            let go = ui.button("Open").clicked();
            if go || field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                let found = FeatureId::parse(&self.jump).and_then(|f| match &cx.runtime.model {
                    Some(m) => f.check(m).map(|()| f),
                    None => Ok(f),
                });
                match found {
                    Ok(f) => {
                        self.jump_error = None;
                        out.push(Command::Select(Some(f)));
                    }
                    Err(e) => self.jump_error = Some(e),
                }
            }
        });
        if let Some(e) = &self.jump_error {
            ui.colored_label(colors::ERROR, e);
        }
        let sink = if state.exclude_sink {
            " (position 0 left out)"
        } else {
            ""
        };
        let what = match state.basis {
            Basis::Neurons => "MLP neurons".to_string(),
            Basis::Heads => "Heads (‖z‖ of each head's output)".to_string(),
            Basis::Dictionary => match &cx.runtime.dictionaries.current {
                Some(dict) => format!("Features of {} (their codes)", dict.title()),
                None => "Dictionary features".to_string(),
            },
        };
        if state.basis == Basis::Dictionary && d.rows.is_empty() {
            let layers: Vec<String> = cx
                .runtime
                .dictionaries
                .current
                .as_ref()
                .map(|d| {
                    d.resid_layers()
                        .iter()
                        .map(|(l, _)| l.to_string())
                        .collect()
                })
                .unwrap_or_default();
            ui.label(if layers.is_empty() {
                "No dictionary of a block's residual stream is in use: train or open one in the \
                 Dictionary menu."
                    .to_string()
            } else if cx
                .runtime
                .result
                .as_ref()
                .is_some_and(|r| r.dictionary.is_none())
            {
                "Encoding the probe with the dictionary…".to_string()
            } else {
                format!(
                    "The dictionary in use reads the residual stream of layer {} only: choose \
                     that layer.",
                    layers.join(", ")
                )
            });
        }
        ui.horizontal_wrapped(|ui| {
            legend_ui(ui, d.row_scale, d.rows_diverging, state.exclude_sink);
            ranking_ui(ui, state);
        });
        let effects = &cx.runtime.circuits;
        let key = circuits::effects_key(state, cx.runtime.result.as_ref());
        let caption = match (&d.effect_ranking, &key) {
            (Some(r), _) => format!(
                "{what} by |direct effect| on {} at position {} (\"{}\"), in the baseline; the \
                 label shows it, the cells the activations",
                metric_text(&r.target, r.versus.as_deref()),
                r.position,
                r.token
            ),
            (None, Some(_)) if effects.effects.is_running() => format!(
                "{what} by peak |activation| over the probe{sink} until the direct effects are \
                 computed…"
            ),
            _ => {
                format!("{what} by peak |activation| over the probe{sink}, ranked in the baseline")
            }
        };
        ui.label(egui::RichText::new(caption).weak().small())
            .on_hover_text("Click a label to open its card, tick the box to zero-ablate it.");
        if let Some(e) = key.as_ref().and_then(|k| effects.effects_error(k)) {
            ui.colored_label(
                colors::ERROR,
                format!("No direct effects ({e}): ranked by peak |activation|"),
            );
        }
        // A row's name, with its direct effect when the rows are ranked by it.
        let row_name = |row: &crate::app::derived::FeatureRow| match (&d.effect_ranking, row.effect)
        {
            (Some(r), Some(v)) => {
                let versus = r.versus.as_ref().map(|v| format!(" − {v}"));
                format!(
                    "{} {} → {}{}",
                    row.feature.label(),
                    effect_text(v),
                    r.target,
                    versus.unwrap_or_default()
                )
            }
            _ => row.feature.label(),
        };
        let label_width = if d.effect_ranking.is_some() {
            // Laid out as the rows' buttons lay them out, so every row's cells start together.
            let widest = d
                .rows
                .iter()
                .map(|r| {
                    egui::WidgetText::from(egui::RichText::new(row_name(r)).small().monospace())
                        .into_galley(
                            ui,
                            Some(egui::TextWrapMode::Extend),
                            f32::INFINITY,
                            egui::TextStyle::Button,
                        )
                        .size()
                        .x
                })
                .fold(0f32, f32::max);
            // The selectable button's padding on both sides.
            (widest + 2.0 * ui.spacing().button_padding.x + 4.0).max(LABEL_WIDTH)
        } else {
            LABEL_WIDTH
        };
        let w = cell_width(ui.available_width(), tokens.len(), label_width);
        let scale = d.row_scale;
        let mut select = None;
        let mut toggle: Option<(FeatureId, bool)> = None;
        egui::ScrollArea::both()
            .id_salt("heatmap")
            .auto_shrink([false, false])
            .show(ui, |ui| {
                ui.spacing_mut().item_spacing.y = 2.0;
                ui.spacing_mut().interact_size.y = ROW_HEIGHT;
                token_header_ui(ui, tokens, w, label_width + 22.0);
                for row in &d.rows {
                    let f = row.feature;
                    let label = f.label();
                    let name_text = row_name(row);
                    let ablated = state.intervention_on(f).is_some();
                    ui.horizontal(|ui| {
                        ui.spacing_mut().item_spacing = Vec2::new(2.0, 0.0);
                        let mut on = ablated;
                        let check = ui.checkbox(&mut on, "");
                        let check_label = format!("Ablate {label}");
                        check.widget_info(|| {
                            egui::WidgetInfo::selected(egui::Role::CheckBox, true, on, &check_label)
                        });
                        if check
                            .on_hover_text(format!("Zero-ablate {label}"))
                            .changed()
                        {
                            toggle = Some((f, on));
                        }
                        let mut text = egui::RichText::new(&name_text).small().monospace();
                        if ablated {
                            text = text.color(colors::ABLATED).strikethrough();
                        }
                        if row.pinned {
                            text = text.italics();
                        }
                        let name = ui.add_sized(
                            [label_width, ROW_HEIGHT],
                            egui::Button::selectable(state.selection == Some(f), text),
                        );
                        let name = if row.pinned {
                            name.on_hover_text("Shown because it is selected; not in the top K")
                        } else {
                            name
                        };
                        let name = match (&d.effect_ranking, row.effect) {
                            (Some(r), Some(v)) => name.on_hover_text(format!(
                                "{label}'s direct effect on {} at position {}: {v:+.5} (baseline)",
                                metric_text(&r.target, r.versus.as_deref()),
                                r.position
                            )),
                            _ => name,
                        };
                        if name.clicked() {
                            select = Some(f);
                        }
                        let (rect, response) = ui.allocate_exact_size(
                            Vec2::new(w * tokens.len() as f32, ROW_HEIGHT),
                            Sense::click(),
                        );
                        let painter = ui.painter_at(rect);
                        for (pos, v) in row.values.iter().enumerate() {
                            let cell = Rect::from_min_size(
                                egui::pos2(rect.left() + w * pos as f32, rect.top()),
                                Vec2::new(w - 1.0, ROW_HEIGHT - 1.0),
                            );
                            painter.rect_filled(
                                cell,
                                0.0,
                                colors::scaled(*v, scale, d.rows_diverging),
                            );
                        }
                        if state.selection == Some(f) {
                            painter.rect_stroke(
                                rect,
                                0.0,
                                egui::Stroke::new(1.5, colors::SELECTED),
                                egui::StrokeKind::Inside,
                            );
                        }
                        if let Some(p) = response.hover_pos() {
                            let pos = (((p.x - rect.left()) / w) as usize)
                                .min(row.values.len().saturating_sub(1));
                            if let (Some(v), Some(t)) = (row.values.get(pos), tokens.get(pos)) {
                                response.clone().on_hover_text_at_pointer(format!(
                                    "{label}: {v:.5} at \"{t}\" (position {pos})"
                                ));
                            }
                        }
                        if response.clicked() {
                            select = Some(f);
                        }
                    });
                }
            });
        if let Some(f) = select {
            out.push(Command::Select(Some(f)));
        }
        if let Some((f, on)) = toggle {
            out.push(Command::SetFeatureOp(f, on.then_some(Op::Zero)));
        }
    }
}
