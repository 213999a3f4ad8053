//! The output panel: next-token top 10 (baseline vs intervened) with the KL between them,
//! per-token loss of the probe, and the continuations side by side.

use egui::{Rect, Sense, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use super::super::{colors, HubelApp};
use super::visible;
use crate::model::Token;

fn bars_ui(ui: &mut egui::Ui, title: &str, top: &[(u32, String, f32)], color: egui::Color32) {
    ui.vertical(|ui| {
        ui.label(egui::RichText::new(title).strong());
        for (_, text, p) in top {
            ui.horizontal(|ui| {
                let (rect, _) = ui.allocate_exact_size(Vec2::new(90.0, 12.0), Sense::hover());
                ui.painter().rect_filled(
                    Rect::from_min_size(rect.min, Vec2::new(90.0 * p.clamp(0.0, 1.0), 12.0)),
                    0.0,
                    color,
                );
                ui.label(
                    egui::RichText::new(format!("{p:.4} {}", visible(text)))
                        .monospace()
                        .small(),
                );
            });
        }
    });
}

fn continuation_ui(
    ui: &mut egui::Ui,
    title: &str,
    tokens: Option<&Vec<Token>>,
    other: Option<&Vec<Token>>,
) {
    ui.vertical(|ui| {
        ui.label(egui::RichText::new(title).strong());
        match tokens {
            None => {
                ui.spinner();
            }
            Some(tokens) => {
                ui.horizontal_wrapped(|ui| {
                    ui.spacing_mut().item_spacing.x = 0.0;
                    for (i, t) in tokens.iter().enumerate() {
                        let differs = other.is_some_and(|o| o.get(i).map(|x| x.id) != Some(t.id));
                        let text = egui::RichText::new(t.text.replace('\u{FFFD}', "?")).monospace();
                        let text = if differs {
                            text.background_color(colors::WORSE)
                                .color(colors::CELL_TEXT)
                        } else {
                            text
                        };
                        ui.label(text);
                    }
                });
            }
        }
    });
}

impl HubelApp {
    pub(crate) fn output_panel_ui(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("output")
            .resizable(true)
            .default_size(250.0)
            .show(ui, |ui| {
                let Some(result) = &self.result else {
                    ui.label("Output appears after the first run.");
                    return;
                };
                let base = &result.baseline;
                let inter = result.intervened.as_ref();
                ui.horizontal(|ui| {
                    ui.heading("Output");
                    match result.kl {
                        Some(kl) => ui.label(format!("KL(baseline ‖ intervened) = {kl:.6} nats")),
                        None => {
                            ui.label("no interventions: the intervened run equals the baseline")
                        }
                    };
                    let nll = |v: &[f32]| {
                        crate::analysis::mean(v).map_or("n/a".into(), |m| format!("{m:.4}"))
                    };
                    match inter {
                        Some(i) => ui.label(format!(
                            "mean NLL {} → {}",
                            nll(&base.token_nll),
                            nll(&i.token_nll)
                        )),
                        None => ui.label(format!("mean NLL {}", nll(&base.token_nll))),
                    };
                    let label = ui.label("Continuation tokens");
                    ui.add(egui::DragValue::new(&mut self.state.continuation).range(0..=64))
                        .labelled_by(label.id);
                });
                ui.horizontal_top(|ui| {
                    bars_ui(ui, "Next token: baseline", &base.top, colors::BASELINE);
                    if let Some(i) = inter {
                        bars_ui(ui, "Next token: intervened", &i.top, colors::INTERVENED);
                    }
                    ui.vertical(|ui| {
                        ui.label(egui::RichText::new("Loss per token (red: got worse)").strong());
                        let pts = |v: &[f32]| {
                            PlotPoints::from_iter(
                                v.iter()
                                    .enumerate()
                                    .map(|(i, y)| [i as f64 + 1.0, f64::from(*y)]),
                            )
                        };
                        let worse: Vec<[f64; 2]> = inter
                            .map(|i| {
                                i.token_nll
                                    .iter()
                                    .zip(&base.token_nll)
                                    .enumerate()
                                    .filter(|(_, (a, b))| **a > **b + 1e-3)
                                    .map(|(k, (a, _))| [k as f64 + 1.0, f64::from(*a)])
                                    .collect()
                            })
                            .unwrap_or_default();
                        Plot::new("loss plot")
                            .height(150.0)
                            .width(ui.available_width().min(420.0))
                            .legend(Legend::default())
                            .allow_scroll(false)
                            .show(ui, |plot| {
                                plot.line(
                                    Line::new("baseline", pts(&base.token_nll))
                                        .color(colors::BASELINE),
                                );
                                if let Some(i) = inter {
                                    plot.line(
                                        Line::new("intervened", pts(&i.token_nll))
                                            .color(colors::INTERVENED),
                                    );
                                    plot.points(
                                        Points::new("got worse", worse)
                                            .radius(3.0)
                                            .color(colors::WORSE),
                                    );
                                }
                            });
                    });
                });
                if self.state.continuation > 0 {
                    ui.separator();
                    ui.horizontal_top(|ui| {
                        let (b, i) = (
                            self.continuations[0].as_ref(),
                            self.continuations[1].as_ref(),
                        );
                        continuation_ui(ui, "Continuation: baseline", b, None);
                        if inter.is_some() {
                            continuation_ui(ui, "Continuation: intervened", i, b);
                        }
                    });
                }
            });
    }
}
