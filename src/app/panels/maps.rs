//! The whole-brain layer map (layers × tokens) and the chosen layer's feature heatmap.

use egui::{Rect, Sense, Vec2};

use super::super::{colors, HubelApp, ViewMode};
use super::visible;
use crate::analysis::maps::Measure;
use crate::features::{Basis, FeatureId};
use crate::hooks::Op;

const LABEL_WIDTH: f32 = 86.0;
const ROW_HEIGHT: f32 = 14.0;

fn cell_width(ui: &egui::Ui, n: usize) -> f32 {
    ((ui.available_width() - LABEL_WIDTH - 40.0) / n.max(1) as f32).clamp(8.0, 56.0)
}

/// A gradient legend from −scale to +scale (or 0 to scale).
fn legend_ui(ui: &mut egui::Ui, scale: f32, diverging: bool) {
    ui.horizontal(|ui| {
        let lo = if diverging { -scale } else { 0.0 };
        ui.label(egui::RichText::new(format!("{lo:.3}")).small());
        let (rect, _) = ui.allocate_exact_size(Vec2::new(160.0, 10.0), Sense::hover());
        let steps = 40;
        for i in 0..steps {
            let t = i as f32 / (steps - 1) as f32;
            let v = lo + (scale - lo) * t;
            let c = if diverging {
                colors::diverging(v, scale)
            } else {
                colors::sequential(v, scale)
            };
            let x0 = rect.left() + rect.width() * i as f32 / steps as f32;
            let x1 = rect.left() + rect.width() * (i + 1) as f32 / steps as f32;
            ui.painter().rect_filled(
                Rect::from_min_max(egui::pos2(x0, rect.top()), egui::pos2(x1, rect.bottom())),
                0.0,
                c,
            );
        }
        ui.label(egui::RichText::new(format!("{scale:.3}")).small());
        ui.label(
            egui::RichText::new("(98th percentile of |value|; larger values saturate)")
                .weak()
                .small(),
        );
    });
}

impl HubelApp {
    fn view_label(&self) -> &'static str {
        let intervened = self.result.as_ref().is_some_and(|r| r.intervened.is_some());
        match (self.state.view, intervened) {
            (_, false) | (ViewMode::Baseline, _) => "baseline",
            (ViewMode::Intervened, true) => "intervened",
            (ViewMode::Difference, true) => "intervened − baseline",
        }
    }

    pub(crate) fn layer_map_ui(&mut self, ui: &mut egui::Ui) {
        let Some(result) = &self.result else {
            ui.label("Run a probe to see every layer respond.");
            return;
        };
        let tokens: Vec<String> = result.tokens.iter().map(|t| t.text.clone()).collect();
        ui.horizontal(|ui| {
            ui.heading("Layer map");
            ui.label(format!("({})", self.view_label()));
            let label = ui.label("Measure");
            egui::ComboBox::from_id_salt("measure")
                .selected_text(self.state.measure.name())
                .show_ui(ui, |ui| {
                    for m in Measure::ALL {
                        ui.selectable_value(&mut self.state.measure, m, m.name());
                    }
                })
                .response
                .labelled_by(label.id);
            let toggle = if self.state.layer_map_open {
                "Hide"
            } else {
                "Show"
            };
            if ui
                .button(toggle)
                .on_hover_text("Fold the layer map to give the layer heatmap room")
                .clicked()
            {
                self.state.layer_map_open = !self.state.layer_map_open;
            }
        });
        if !self.state.layer_map_open {
            return;
        }
        let diverging =
            self.state.view == ViewMode::Difference || self.state.measure == Measure::Selected;
        legend_ui(ui, self.derived.map_scale, diverging);
        let w = cell_width(ui, tokens.len());
        // Compact rows for deep models, so the layer's heatmap stays in view below.
        let row_height = (320.0 / self.derived.map.len().max(1) as f32).clamp(7.0, ROW_HEIGHT);
        let scale = self.derived.map_scale;
        let mut clicked_layer = None;
        for (layer, row) in self.derived.map.iter().enumerate() {
            ui.horizontal(|ui| {
                ui.spacing_mut().item_spacing = Vec2::new(0.0, 0.0);
                let selected = layer == self.state.layer;
                // A painted label (no button padding) keeps 30 rows short.
                let (name_rect, name) =
                    ui.allocate_exact_size(Vec2::new(LABEL_WIDTH, row_height), Sense::click());
                let layer_label = format!("Layer {layer}");
                name.widget_info(|| {
                    egui::WidgetInfo::selected(egui::Role::Button, true, selected, &layer_label)
                });
                let text_color = if selected {
                    colors::SELECTED
                } else {
                    ui.visuals().text_color()
                };
                ui.painter().text(
                    name_rect.right_center() - Vec2::new(6.0, 0.0),
                    egui::Align2::RIGHT_CENTER,
                    format!("L{layer}"),
                    egui::FontId::proportional(row_height.clamp(7.0, 11.0)),
                    text_color,
                );
                if name
                    .on_hover_text(format!("Open layer {layer} below"))
                    .clicked()
                {
                    clicked_layer = Some(layer);
                }
                let (rect, response) = ui.allocate_exact_size(
                    Vec2::new(w * tokens.len() as f32, row_height),
                    Sense::click(),
                );
                let painter = ui.painter_at(rect);
                for (pos, _) in tokens.iter().enumerate() {
                    let value = row.get(pos).copied().flatten();
                    let color = match value {
                        Some(v) if diverging => colors::diverging(v, scale),
                        Some(v) => colors::sequential(v, scale),
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
                if let Some(p) = response.hover_pos() {
                    let pos =
                        (((p.x - rect.left()) / w) as usize).min(tokens.len().saturating_sub(1));
                    let value = row.get(pos).copied().flatten();
                    response.clone().on_hover_text(format!(
                        "layer {layer} · token {pos} {} · {}: {}",
                        visible(&tokens[pos]),
                        self.state.measure.name(),
                        value.map_or("n/a".into(), |v| format!("{v:.4}"))
                    ));
                }
                if response.clicked() {
                    clicked_layer = Some(layer);
                }
            });
        }
        if let Some(layer) = clicked_layer {
            self.state.layer = layer;
        }
    }

    pub(crate) fn heatmap_ui(&mut self, ui: &mut egui::Ui, now: f64) {
        let Some(result) = &self.result else { return };
        let tokens: Vec<String> = result.tokens.iter().map(|t| t.text.clone()).collect();
        let layers = self.model.as_ref().map_or(1, |m| m.layers);
        ui.horizontal(|ui| {
            ui.heading(format!("Layer {}", self.state.layer));
            ui.label(format!("({})", self.view_label()));
            let label = ui.label("Layer");
            ui.add(egui::DragValue::new(&mut self.state.layer).range(0..=layers.saturating_sub(1)))
                .labelled_by(label.id);
            let label = ui.label("Basis");
            egui::ComboBox::from_id_salt("basis")
                .selected_text(self.state.basis.name())
                .show_ui(ui, |ui| {
                    for b in Basis::ALL {
                        ui.selectable_value(&mut self.state.basis, b, b.name());
                    }
                })
                .response
                .labelled_by(label.id);
            let label = ui.label("Top K");
            ui.add(egui::DragValue::new(&mut self.state.top_k).range(1..=256))
                .labelled_by(label.id);
        });
        ui.label(egui::RichText::new("Features ranked by peak |activation| over the probe; click a label to open its card, tick to ablate.").weak().small());
        legend_ui(ui, self.derived.row_scale, true);
        let w = cell_width(ui, tokens.len());
        // Token header.
        ui.horizontal(|ui| {
            ui.spacing_mut().item_spacing = Vec2::new(0.0, 0.0);
            ui.add_space(LABEL_WIDTH + 22.0);
            let (rect, _) = ui.allocate_exact_size(
                Vec2::new(w * tokens.len() as f32, ROW_HEIGHT),
                Sense::hover(),
            );
            let painter = ui.painter_at(rect);
            for (pos, t) in tokens.iter().enumerate() {
                let cell = Rect::from_min_size(
                    egui::pos2(rect.left() + w * pos as f32, rect.top()),
                    Vec2::new(w, ROW_HEIGHT),
                );
                let text: String = visible(t)
                    .chars()
                    .take(((w / 6.0) as usize).max(1))
                    .collect();
                painter.text(
                    cell.left_center(),
                    egui::Align2::LEFT_CENTER,
                    text,
                    egui::FontId::monospace(9.0),
                    ui.visuals().text_color(),
                );
            }
        });
        let scale = self.derived.row_scale;
        let mut select = None;
        let mut toggle: Option<(FeatureId, bool)> = None;
        for row in &self.derived.rows {
            let f = row.feature;
            let label = f.label();
            let ablated = self.intervention_on(f).is_some();
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
                let text = egui::RichText::new(&label).small().monospace();
                let text = if ablated {
                    text.color(colors::ABLATED).strikethrough()
                } else {
                    text
                };
                let name = ui.add_sized(
                    [LABEL_WIDTH, ROW_HEIGHT],
                    egui::Button::selectable(self.selection == Some(f), text),
                );
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
                    painter.rect_filled(cell, 0.0, colors::diverging(*v, scale));
                }
                if self.selection == Some(f) {
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
                    if let Some(v) = row.values.get(pos) {
                        response.clone().on_hover_text(format!(
                            "{label} · token {pos} {} · {v:.5}",
                            visible(&tokens[pos])
                        ));
                    }
                }
                if response.clicked() {
                    select = Some(f);
                }
            });
        }
        if let Some(f) = select {
            self.select(Some(f));
        }
        if let Some((f, on)) = toggle {
            self.set_feature_op(f, on.then_some(Op::Zero), now);
        }
    }
}
