//! The output panel: the next-token top 10 after the chosen position (baseline vs intervened)
//! with the KL between them, the loss of every token, and the continuations side by side.

use egui::{Rect, Sense, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use super::super::{
    colors, AppState, Command, Meter, MeterState, FIDELITY_WARN_AGREEMENT, FIDELITY_WARN_KL,
};
use super::{token_label, ViewCtx};
use crate::model::{Precision, Token};

/// A next-token list; a click on a token pins it as the Circuits target.
fn bars_ui(
    ui: &mut egui::Ui,
    title: &str,
    top: &[(String, f32)],
    color: egui::Color32,
    out: &mut Vec<Command>,
) {
    ui.vertical(|ui| {
        ui.label(egui::RichText::new(title).strong());
        for (text, p) in top {
            ui.horizontal(|ui| {
                let (rect, _) = ui.allocate_exact_size(Vec2::new(80.0, 12.0), Sense::hover());
                ui.painter().rect_filled(
                    Rect::from_min_size(rect.min, Vec2::new(80.0 * p.clamp(0.0, 1.0), 12.0)),
                    0.0,
                    color,
                );
                let label = egui::Label::new(
                    egui::RichText::new(format!("{p:.4} {text}"))
                        .monospace()
                        .small(),
                )
                .sense(Sense::click());
                if ui
                    .add(label)
                    .on_hover_text(format!("Click to pin {text:?} as the Circuits target"))
                    .clicked()
                {
                    out.push(Command::PinTarget(text.clone()));
                }
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
    ui.label(egui::RichText::new(title).strong());
    match tokens {
        None => {
            super::spinner(ui);
        }
        Some(tokens) if tokens.is_empty() => {
            ui.label(egui::RichText::new("(none: see the error below)").weak());
        }
        Some(tokens) => {
            ui.horizontal_wrapped(|ui| {
                ui.spacing_mut().item_spacing.x = 0.0;
                for (i, t) in tokens.iter().enumerate() {
                    let differs = other.is_some_and(|o| o.get(i).map(|x| x.id) != Some(t.id));
                    // A group that still holds part of a character shows its stray bytes.
                    let shown = if t.text.contains('\u{FFFD}') {
                        token_label(t)
                    } else {
                        t.text.clone()
                    };
                    let text = egui::RichText::new(shown).monospace();
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
}

/// The fidelity meter of a fast-path result: how far its logits are from the exact path's.
fn fidelity_ui(ui: &mut egui::Ui, meter: Option<&Meter>, edited: bool) {
    ui.horizontal_wrapped(|ui| {
        ui.label(egui::RichText::new("Fidelity").strong());
        let edits = if edited {
            " Both runs have the same edits."
        } else {
            ""
        };
        match meter.map(|m| &m.state) {
            None | Some(MeterState::Measuring) => {
                super::spinner(ui);
                ui.label(egui::RichText::new("measuring the fast path against the exact path…").weak());
            }
            Some(MeterState::Failed(e)) => {
                ui.colored_label(colors::ERROR, format!("could not measure: {e}"));
            }
            Some(MeterState::Ready(f)) => {
                // A NaN warns too.
                let warn = f.kl_last.is_nan()
                    || f.kl_last > FIDELITY_WARN_KL
                    || f.top1_agreement.is_nan()
                    || f.top1_agreement < FIDELITY_WARN_AGREEMENT;
                let text = egui::RichText::new(format!(
                    "KL(exact‖fast) {:.4} nats · top-1 agreement {:.3} · max |Δlogit| {:.2}",
                    f.kl_last, f.top1_agreement, f.max_abs_dlogit
                ));
                let text = if warn {
                    text.color(colors::ERROR)
                } else {
                    text
                };
                let warning = if warn {
                    format!(
                        "\n\nAbove {FIDELITY_WARN_KL} nats or below {FIDELITY_WARN_AGREEMENT} \
                         agreement: check these numbers on the exact path before relying on them."
                    )
                } else {
                    String::new()
                };
                ui.label(text).on_hover_text(format!(
                    "This probe run on the exact path (f32, the reference) and on the fast path \
                     (4-bit weights × 8-bit activations), compared at each of its {} positions.{edits}\n\
                     KL(exact‖fast): how much the fast next-token distribution after the last \
                     position differs from the exact one, in nats (0: identical; the worst \
                     position: {:.4}).\n\
                     top-1 agreement: the fraction of positions whose most likely next token is \
                     the same on both paths.\n\
                     max |Δlogit|: the largest difference of any logit at any position.{warning}",
                    f.positions, f.kl_max
                ));
            }
        }
    });
}

pub fn output_panel_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    height: f32,
) {
    egui::Panel::bottom("output")
        .resizable(true)
        .default_size(height)
        .show(ui, |ui| {
            // Fill the panel, so its size is the one chosen, not its first content's.
            ui.set_min_height(ui.available_height());
            let Some(result) = &cx.runtime.result else {
                ui.label("Output appears after the first run.");
                return;
            };
            let next = &cx.derived.next;
            let base = &result.baseline.summary;
            let inter = result.intervened.as_ref().map(|s| &s.summary);
            let tokens = &cx.derived.tokens;
            let after = tokens.get(next.position).map_or("", String::as_str);
            egui::ScrollArea::vertical()
                .id_salt("output")
                .show(ui, |ui| {
                    ui.horizontal_wrapped(|ui| {
                        ui.heading("Output");
                        super::precision_badge(ui, cx);
                        ui.label(format!(
                            "next token after position {} \"{after}\"{}",
                            next.position,
                            if next.is_last { " (the last)" } else { "" }
                        ));
                        match next.kl {
                            Some(kl) => {
                                ui.label(format!("KL(baseline ‖ intervened) = {kl:.6} nats"))
                            }
                            None => {
                                ui.label("no interventions: the intervened run equals the baseline")
                            }
                        };
                        let nll = |m: Option<f32>| m.map_or("n/a".into(), |m| format!("{m:.4}"));
                        match inter {
                            Some(i) => ui.label(format!(
                                "mean NLL {} → {}",
                                nll(base.mean_nll),
                                nll(i.mean_nll)
                            )),
                            None => ui.label(format!("mean NLL {}", nll(base.mean_nll))),
                        };
                        let label = ui.label("Continuation tokens");
                        let changed = ui
                            .add(egui::DragValue::new(&mut state.continuation).range(0..=64))
                            .labelled_by(label.id)
                            .changed();
                        if changed {
                            // Runs again once the value settles; the baseline is cached, so
                            // only the continuations are computed.
                            out.push(Command::ProbeEdited);
                        }
                    });
                    if result.precision == Precision::Fast {
                        fidelity_ui(ui, cx.runtime.fidelity.as_ref(), inter.is_some());
                    }
                    ui.horizontal_top(|ui| {
                        bars_ui(
                            ui,
                            "Next token: baseline",
                            &next.baseline,
                            colors::BASELINE,
                            out,
                        );
                        if let Some(i) = &next.intervened {
                            bars_ui(ui, "Next token: intervened", i, colors::INTERVENED, out);
                        }
                        ui.vertical(|ui| {
                            ui.label(
                                egui::RichText::new("Loss per token (red: got worse)").strong(),
                            );
                            // Entry i of token_nll is the loss of token i + 1.
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
                            super::token_plot(Plot::new("loss plot"), tokens, "loss ")
                                .height(140.0)
                                .width(ui.available_width().clamp(160.0, 460.0))
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
                    if state.continuation > 0 {
                        ui.separator();
                        let (b, i) = (
                            cx.runtime.continuations[0].as_ref(),
                            cx.runtime.continuations[1].as_ref(),
                        );
                        if inter.is_some() {
                            ui.columns(2, |cols| {
                                continuation_ui(&mut cols[0], "Continuation: baseline", b, None);
                                // The gutter: a rule between the two texts.
                                let r = cols[1].max_rect();
                                cols[1].painter().vline(
                                    r.left() - 4.0,
                                    r.y_range(),
                                    egui::Stroke::new(1.0, colors::GUTTER),
                                );
                                continuation_ui(&mut cols[1], "Continuation: intervened", i, b);
                            });
                        } else {
                            continuation_ui(ui, "Continuation: baseline", b, None);
                        }
                    }
                });
        });
}
