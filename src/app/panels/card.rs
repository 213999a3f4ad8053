//! The feature card: the selected feature's activation over the probe (highlighted text and a
//! plot), what it writes to the output, its attention pattern (heads), and ablate/steer controls.

use egui::{Rect, Sense, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::super::{colors, HubelApp};
use super::visible;
use crate::analysis::maps;
use crate::features::Basis;
use crate::hooks::Op;

impl HubelApp {
    pub(crate) fn feature_card_ui(&mut self, ui: &mut egui::Ui, now: f64) {
        egui::Panel::right("card")
            .resizable(true)
            .default_size(360.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .id_salt("card")
                    .show(ui, |ui| self.card_contents_ui(ui, now));
            });
    }

    fn card_contents_ui(&mut self, ui: &mut egui::Ui, now: f64) {
        let (Some(f), Some(result)) = (self.selection, &self.result) else {
            ui.heading("Feature card");
            ui.label("Click a feature in the heatmap to open its card.");
            return;
        };
        ui.heading(format!("Feature {}", f.label()));
        ui.label(
            egui::RichText::new(format!("{} · {}", f.hook(), f.basis.name()))
                .weak()
                .small(),
        );
        let base = maps::feature_activations(&result.baseline.record, f);
        let inter = result
            .intervened
            .as_ref()
            .map(|s| maps::feature_activations(&s.record, f));
        let peak = base.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = peak.max(1e-6);

        ui.label("Activation over the probe");
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = Vec2::new(1.0, 2.0);
            for (t, v) in result.tokens.iter().zip(&base) {
                let text = egui::RichText::new(visible(&t.text))
                    .monospace()
                    .background_color(colors::diverging(*v, scale))
                    .color(colors::CELL_TEXT);
                ui.add(egui::Label::new(text).sense(Sense::hover()))
                    .on_hover_text(format!("{}: {v:.4}", visible(&t.text)));
            }
        });
        let line = |v: &[f32]| {
            PlotPoints::from_iter(v.iter().enumerate().map(|(i, y)| [i as f64, f64::from(*y)]))
        };
        Plot::new("feature plot")
            .height(120.0)
            .legend(Legend::default())
            .allow_scroll(false)
            .show(ui, |plot| {
                plot.line(Line::new("baseline", line(&base)).color(colors::BASELINE));
                if let Some(inter) = &inter {
                    plot.line(Line::new("intervened", line(inter)).color(colors::INTERVENED));
                }
            });
        ui.label(format!("peak |activation| {peak:.4}"));

        ui.separator();
        ui.label("Intervene");
        let current = self
            .intervention_on(f)
            .map(|i| self.interventions[i].op.clone());
        let mut op: Option<Option<Op>> = None;
        ui.horizontal(|ui| {
            for (mode, label) in [(Op::Zero, "Ablate (zero)"), (Op::Mean, "Ablate (mean)")] {
                let active = current.as_ref() == Some(&mode);
                if ui.selectable_label(active, label).clicked() {
                    // Clicking the active mode switches the edit off.
                    op = Some((!active).then_some(mode));
                }
            }
            if current.is_some() && ui.button("Remove").clicked() {
                op = Some(None);
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Steer α");
            ui.add(egui::Slider::new(&mut self.steer_alpha, -20.0..=20.0))
                .labelled_by(label.id);
            if ui
                .button("Steer")
                .on_hover_text("Add α to this feature at every position")
                .clicked()
            {
                op = Some(Some(Op::Add {
                    value: self.steer_alpha,
                }));
            }
        });
        if f.basis == Basis::Neurons {
            ui.horizontal(|ui| {
                let label = ui.label("Clamp k×max");
                ui.add(
                    egui::DragValue::new(&mut self.clamp_k)
                        .speed(0.1)
                        .range(-10.0..=10.0),
                )
                .labelled_by(label.id);
                if ui
                    .button("Clamp")
                    .on_hover_text("Set this neuron to k times its peak activation on the probe")
                    .clicked()
                {
                    let signed_peak =
                        base.iter()
                            .copied()
                            .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                    op = Some(Some(Op::Set {
                        value: self.clamp_k * signed_peak,
                    }));
                }
            });
        } else {
            ui.label(
                egui::RichText::new("For a head, steering scales its output: α is a factor.")
                    .weak()
                    .small(),
            );
        }
        ui.separator();
        match f.basis {
            Basis::Neurons => {
                ui.label("Direct effect on the output (its output weights · unembedding)");
                match &self.effect {
                    Some(e) if e.feature == f => {
                        ui.columns(2, |cols| {
                            cols[0].label(egui::RichText::new("promotes").strong());
                            for (t, v) in &e.promoted {
                                cols[0].label(format!("{} {v:+.3}", visible(t)));
                            }
                            cols[1].label(egui::RichText::new("suppresses").strong());
                            for (t, v) in &e.suppressed {
                                cols[1].label(format!("{} {v:+.3}", visible(t)));
                            }
                        });
                    }
                    _ => {
                        ui.spinner();
                    }
                }
            }
            Basis::Heads => {
                ui.label("Attention pattern (query ↓ × key →)");
                match maps::head_pattern(&result.baseline.record, f.layer, f.index) {
                    Some(pattern) => pattern_ui(
                        ui,
                        &pattern,
                        &result
                            .tokens
                            .iter()
                            .map(|t| t.text.clone())
                            .collect::<Vec<_>>(),
                    ),
                    None => {
                        ui.label(format!(
                            "Patterns are recorded for probes up to {} tokens.",
                            super::super::worker::PATTERN_TOKENS
                        ));
                    }
                }
            }
        }
        ui.separator();
        ui.label(
            egui::RichText::new(
                "Receptive field (top corpus examples): coming with the corpus scan.",
            )
            .weak()
            .small(),
        );
        if let Some(op) = op {
            // For heads, "Steer" multiplies the head's output by α rather than adding to all d_head values.
            let op = match (f.basis, op) {
                (Basis::Heads, Some(Op::Add { value })) => Some(Op::Scale { factor: value }),
                (_, op) => op,
            };
            self.set_feature_op(f, op, now);
        }
    }
}

fn pattern_ui(ui: &mut egui::Ui, pattern: &[Vec<f32>], tokens: &[String]) {
    let n = pattern.len();
    let side = (ui.available_width() / n.max(1) as f32).clamp(3.0, 24.0);
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(side * n as f32), Sense::hover());
    let painter = ui.painter_at(rect);
    for (q, row) in pattern.iter().enumerate() {
        for (k, p) in row.iter().enumerate() {
            let cell = Rect::from_min_size(
                egui::pos2(rect.left() + side * k as f32, rect.top() + side * q as f32),
                Vec2::splat(side),
            );
            painter.rect_filled(cell, 0.0, colors::sequential(*p, 1.0));
        }
    }
    if let Some(p) = response.hover_pos() {
        let k = (((p.x - rect.left()) / side) as usize).min(n - 1);
        let q = (((p.y - rect.top()) / side) as usize).min(n - 1);
        response.on_hover_text(format!(
            "query {q} {} → key {k} {}: {:.4}",
            visible(&tokens[q]),
            visible(&tokens[k]),
            pattern[q][k]
        ));
    }
}
