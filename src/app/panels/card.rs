//! The feature card: the selected feature's activation over the probe (highlighted text and a
//! plot with token labels), what it writes to the output, its attention pattern (heads), and
//! ablate / steer / clamp controls.

use egui::{Rect, Sense, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::super::{colors, AppState, Command, EffectState};
use super::ViewCtx;
use crate::analysis::pattern::{PatternGrids, MAX_CELLS};
use crate::features::Basis;
use crate::hooks::Op;

/// The range the steer and clamp fields accept, said next to them.
const STEER_RANGE: std::ops::RangeInclusive<f32> = -100.0..=100.0;
const CLAMP_RANGE: std::ops::RangeInclusive<f32> = -20.0..=20.0;

/// The card's own UI state.
pub struct CardView {
    steer_alpha: f32,
    clamp_k: f32,
    /// The feature search's query.
    search: String,
    /// The head whose on-demand pattern the card last scrolled to (a pattern asked for is
    /// brought into view once when it arrives: it lands below the card's other sections).
    shown_pattern: Option<crate::features::FeatureId>,
}

impl Default for CardView {
    fn default() -> Self {
        CardView {
            steer_alpha: 4.0,
            clamp_k: 2.0,
            search: String::new(),
            shown_pattern: None,
        }
    }
}

impl CardView {
    pub fn panel_ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        cx: &ViewCtx,
        out: &mut Vec<Command>,
        width: f32,
    ) {
        // At most a third of the window (a long line in the card widened it until the heatmap's
        // toolbar was cut off at 1000×700); each feature's card scrolls on its own, so a new card
        // opens at its top.
        let max = (ui.available_width() * 0.34).max(width);
        let feature = cx.derived.curve.feature;
        egui::Panel::right("card")
            .resizable(true)
            .default_size(width)
            .max_size(max)
            .show(ui, |ui| {
                super::within_panel(ui, |ui| {
                    egui::ScrollArea::vertical()
                        .id_salt(("card", feature))
                        .show(ui, |ui| self.contents_ui(ui, state, cx, out));
                })
            });
    }

    fn contents_ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        cx: &ViewCtx,
        out: &mut Vec<Command>,
    ) {
        let curve = &cx.derived.curve;
        let (Some(f), Some(_)) = (curve.feature, &cx.runtime.result) else {
            ui.heading("Feature card");
            ui.label(
                "Click a feature in the heatmap (or type its name in Go to) to open its card.",
            );
            super::receptive::search_ui(ui, cx, out, &mut self.search);
            if cx.runtime.result.is_some() {
                ui.separator();
                super::receptive::fires_here_ui(ui, cx, out);
            }
            return;
        };
        let tokens = &cx.derived.tokens;
        ui.heading(format!("Feature {}", f.label()));
        ui.label(
            egui::RichText::new(format!("{} · {}", f.hook(), f.basis.name()))
                .weak()
                .small(),
        );
        if f.basis == Basis::Dictionary {
            let dict = cx.runtime.dictionaries.current.as_ref();
            let label = dict
                .filter(|d| f.index < d.atoms())
                .map(|d| d.label(f.index));
            ui.label(egui::RichText::new(label.unwrap_or_else(|| {
                "not an atom of the dictionary in use".into()
            })));
        }
        let signed = f.basis.signed();
        let scale = curve.peak.max(1e-6);
        ui.label("Activation over the probe (baseline)");
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = Vec2::new(1.0, 2.0);
            for (pos, (t, v)) in tokens.iter().zip(&curve.baseline).enumerate() {
                let text = egui::RichText::new(t)
                    .monospace()
                    .background_color(colors::scaled(*v, scale, signed))
                    .color(colors::CELL_TEXT);
                ui.add(egui::Label::new(text).sense(Sense::hover()))
                    .on_hover_text(format!("\"{t}\" (position {pos}): {v:.4}"));
            }
        });
        let line = |v: &[f32]| {
            PlotPoints::from_iter(v.iter().enumerate().map(|(i, y)| [i as f64, f64::from(*y)]))
        };
        super::token_plot(Plot::new("feature plot"), tokens, "")
            .height(130.0)
            .legend(Legend::default())
            .allow_scroll(false)
            .show(ui, |plot| {
                plot.line(Line::new("baseline", line(&curve.baseline)).color(colors::BASELINE));
                if let Some(inter) = &curve.intervened {
                    plot.line(
                        Line::new("intervened (after the edit)", line(inter))
                            .color(colors::INTERVENED),
                    );
                }
            });
        let sink = if state.exclude_sink {
            " (position 0 left out)"
        } else {
            ""
        };
        ui.label(format!("peak |activation| {:.4}{sink}", curve.peak));

        ui.separator();
        ui.label("Intervene");
        if f.basis == Basis::Dictionary {
            self.atom_edit_ui(ui, state, out, f);
            ui.separator();
            super::receptive::receptive_ui(ui, cx, out, f);
            ui.separator();
            dictionary_examples_ui(ui, cx, f);
            ui.separator();
            super::receptive::occlusion_ui(ui, cx, out, f);
            ui.separator();
            self.effect_ui(ui, state, cx, out, f);
            return;
        }
        let current = state
            .intervention_on(f)
            .map(|i| state.interventions[i].op.clone());
        let mut op: Option<Option<Op>> = None;
        ui.horizontal_wrapped(|ui| {
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
        ui.horizontal_wrapped(|ui| {
            let (what, hover) = match f.basis {
                Basis::Neurons | Basis::Dictionary => {
                    ("Steer: add α", "Add α to this neuron at every position")
                }
                Basis::Heads => (
                    "Steer: scale by α",
                    "Multiply this head's output by α at every position",
                ),
            };
            let label = ui.label(format!(
                "{what} ({} … {})",
                STEER_RANGE.start(),
                STEER_RANGE.end()
            ));
            ui.add(
                egui::DragValue::new(&mut self.steer_alpha)
                    .speed(0.1)
                    .range(STEER_RANGE),
            )
            .labelled_by(label.id);
            if ui.button("Steer").on_hover_text(hover).clicked() {
                op = Some(Some(match f.basis {
                    Basis::Neurons | Basis::Dictionary => Op::Add {
                        value: self.steer_alpha,
                    },
                    Basis::Heads => Op::Scale {
                        factor: self.steer_alpha,
                    },
                }));
            }
        });
        if f.basis == Basis::Neurons {
            ui.horizontal_wrapped(|ui| {
                let label = ui.label(format!(
                    "Clamp to k × peak (k {} … {})",
                    CLAMP_RANGE.start(),
                    CLAMP_RANGE.end()
                ));
                ui.add(
                    egui::DragValue::new(&mut self.clamp_k)
                        .speed(0.1)
                        .range(CLAMP_RANGE),
                )
                .labelled_by(label.id);
                if ui
                    .button("Clamp")
                    .on_hover_text(
                        "Set this neuron to k times its signed peak activation on the probe",
                    )
                    .clicked()
                {
                    op = Some(Some(Op::Set {
                        value: self.clamp_k * curve.signed_peak,
                    }));
                }
            });
        }
        ui.separator();
        super::receptive::receptive_ui(ui, cx, out, f);
        ui.separator();
        super::receptive::occlusion_ui(ui, cx, out, f);
        ui.separator();
        self.effect_ui(ui, state, cx, out, f);
        if f.basis == Basis::Heads {
            ui.separator();
            ui.label("Attention pattern, baseline (query ↓ × key →)");
            match &curve.pattern {
                Some(grids) => {
                    if curve.pattern_on_demand {
                        ui.label(
                            egui::RichText::new(format!(
                                "computed for this probe on demand (patterns are kept for probes \
                                 up to {} tokens)",
                                super::super::worker::PATTERN_TOKENS
                            ))
                            .weak()
                            .small(),
                        );
                    }
                    let rect = pattern_ui(ui, grids, tokens, f);
                    if curve.pattern_on_demand && self.shown_pattern != Some(f) {
                        ui.scroll_to_rect(rect, Some(egui::Align::Center));
                        self.shown_pattern = Some(f);
                    }
                }
                None => pattern_offer_ui(ui, cx, out, f),
            }
        }
        ui.separator();
        egui::CollapsingHeader::new("What fires here")
            .id_salt("fires here")
            .show(ui, |ui| super::receptive::fires_here_ui(ui, cx, out));
        egui::CollapsingHeader::new("Find features")
            .id_salt("find features")
            .show(ui, |ui| {
                super::receptive::search_ui(ui, cx, out, &mut self.search)
            });
        if let Some(op) = op {
            out.push(Command::SetFeatureOp(f, op));
        }
    }

    /// A dictionary feature's edits: along its atom, so the reconstruction error and every
    /// other feature stay as they were (`dictionary::edit`).
    fn atom_edit_ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &AppState,
        out: &mut Vec<Command>,
        f: crate::features::FeatureId,
    ) {
        use crate::features::dictionary::edit::Edit;
        let current = state.intervention_on(f);
        ui.horizontal_wrapped(|ui| {
            if ui
                .button("Ablate")
                .on_hover_text("Subtract its code × its atom at every token (its code becomes 0)")
                .clicked()
            {
                out.push(Command::EditFeature(f, Edit::Ablate));
            }
            if ui
                .button("×2")
                .on_hover_text("Add its code × its atom again at every token")
                .clicked()
            {
                out.push(Command::EditFeature(f, Edit::Scale(2.0)));
            }
            let label = ui.label("Steer: add α ×atom");
            ui.add(
                egui::DragValue::new(&mut self.steer_alpha)
                    .speed(0.1)
                    .range(STEER_RANGE),
            )
            .labelled_by(label.id);
            if ui
                .button("Steer")
                .on_hover_text("Add α times its atom at every token after the first")
                .clicked()
            {
                out.push(Command::EditFeature(f, Edit::Add(self.steer_alpha)));
            }
            if current.is_some() && ui.button("Remove").clicked() {
                out.push(Command::SetFeatureOp(f, None));
            }
        });
        if let Some(i) = current {
            if let Op::AddScaled { label, .. } = &state.interventions[i].op {
                ui.label(egui::RichText::new(format!("now: {label}")).weak().small());
            }
        }
    }

    fn effect_ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        cx: &ViewCtx,
        out: &mut Vec<Command>,
        f: crate::features::FeatureId,
    ) {
        let position = cx.derived.next.position;
        ui.label("Direct effect on the logits (through the final norm's weights)");
        if f.basis != Basis::Heads {
            ui.horizontal_wrapped(|ui| {
                let before = state.effect_on_probe;
                ui.radio_value(&mut state.effect_on_probe, false, "per unit of activation");
                ui.radio_value(
                    &mut state.effect_on_probe,
                    true,
                    format!("on this probe at position {position}"),
                )
                .on_hover_text(
                    "The final norm's scale frozen at its value at the output position (choose it in the token strip)",
                );
                if state.effect_on_probe != before {
                    out.push(Command::RefreshEffect);
                }
            });
        } else {
            ui.label(
                egui::RichText::new(format!(
                    "This head's output at position {position} (choose it in the token strip), final-norm scale frozen there"
                ))
                .weak()
                .small(),
            );
        }
        match &cx.runtime.effect {
            // Shown only when it is the one asked for (a head's is read at the current position).
            Some(EffectState::Ready(e))
                if e.request.feature == f && e.request.position.is_none_or(|p| p == position) =>
            {
                ui.label(
                    egui::RichText::new(format!("shown: {}", e.scale))
                        .weak()
                        .small(),
                );
                ui.columns(2, |cols| {
                    cols[0].label(egui::RichText::new("promotes").strong());
                    for (t, v) in &e.promoted {
                        cols[0].label(format!("{t} {v:+.3}"));
                    }
                    cols[1].label(egui::RichText::new("suppresses").strong());
                    for (t, v) in &e.suppressed {
                        cols[1].label(format!("{t} {v:+.3}"));
                    }
                });
            }
            Some(EffectState::Failed(r, message)) if r.feature == f => {
                ui.colored_label(colors::ERROR, format!("Could not compute it: {message}"));
                if ui.button("Retry").clicked() {
                    out.push(Command::RefreshEffect);
                }
            }
            _ => {
                super::spinner(ui);
            }
        }
    }
}

/// `1,234`.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A head whose pattern the run did not keep (a long probe): what keeping them all would cost,
/// and a button that computes this head's alone (its answer, or why it failed).
fn pattern_offer_ui(
    ui: &mut egui::Ui,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    f: crate::features::FeatureId,
) {
    use super::super::receptive::Pending;
    let limit = super::super::worker::PATTERN_TOKENS;
    let len = cx.derived.tokens.len();
    ui.label(match &cx.runtime.model {
        Some(info) if len > limit => format!(
            "Patterns are kept for probes up to {limit} tokens; this probe has {} tokens \
             (keeping all {} patterns would take {}).",
            grouped(len),
            grouped(info.layers * info.heads),
            crate::jobs::human_bytes(info.pattern_bytes(len) as f64)
        ),
        _ => format!("Patterns are kept for probes up to {limit} tokens; this run kept none."),
    });
    let name = f.label();
    let ask = |ui: &mut egui::Ui, label: &str, out: &mut Vec<Command>| {
        let bytes = crate::jobs::human_bytes((4 * len * len) as f64);
        if ui
            .button(label)
            .on_hover_text(format!(
                "This head's scores and softmax alone over the probe's {} tokens: {} × {} \
                 values ({bytes}), from the probe's input of layer {}",
                grouped(len),
                grouped(len),
                grouped(len),
                f.layer
            ))
            .clicked()
        {
            out.push(Command::ComputePattern(f));
        }
    };
    match cx.runtime.patterns.get(f).map(|e| &e.state) {
        None => ask(ui, &format!("Compute {name}'s pattern"), out),
        Some(Pending::Failed(e)) => {
            ui.colored_label(
                colors::ERROR,
                format!("Could not compute {name}'s pattern: {e}"),
            );
            ask(ui, "Retry", out);
        }
        // Ready: drawn from the next frame's derived grids.
        Some(Pending::Idle | Pending::Waiting(_) | Pending::Ready(_)) => {
            ui.horizontal(|ui| {
                super::spinner(ui);
                ui.label(format!("Computing {name}'s pattern…"));
            });
        }
    }
}

/// A head's pattern: every query × key cell, or, where cells would be narrower than 3 px, the
/// finest max-pooled grid whose cells are not (made by `analysis::pattern`; this only picks one
/// and draws it). Hover names a cell's queries and keys (positions and tokens) and its value.
fn pattern_ui(
    ui: &mut egui::Ui,
    grids: &PatternGrids,
    tokens: &[String],
    f: crate::features::FeatureId,
) -> Rect {
    const AXIS: f32 = 46.0;
    const MIN_CELL: f32 = 3.0;
    let avail = ui.available_width() - AXIS;
    let fit = ((avail / MIN_CELL).floor().max(1.0) as usize).min(MAX_CELLS);
    let grid = grids.finest_within(fit);
    let (n, pooled) = (grid.cells, grid.block > 1);
    let side = (avail / n.max(1) as f32).clamp(MIN_CELL, 24.0);
    let (outer, response) = ui.allocate_exact_size(
        Vec2::splat(side * n as f32) + Vec2::splat(AXIS),
        Sense::hover(),
    );
    let description = if pooled {
        format!(
            "Attention pattern of {}: {} × {} tokens, max-pooled in blocks of {} × {} ({} × {} cells)",
            f.label(),
            grid.n,
            grid.n,
            grid.block,
            grid.block,
            n,
            n
        )
    } else {
        format!(
            "Attention pattern of {}: {} × {} tokens",
            f.label(),
            grid.n,
            grid.n
        )
    };
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &description));
    let rect = Rect::from_min_size(outer.min + Vec2::splat(AXIS), Vec2::splat(side * n as f32));
    let painter = ui.painter_at(outer);
    let font = egui::FontId::monospace(side.clamp(6.0, 9.0));
    let short = |t: &str| t.chars().take(6).collect::<String>();
    // Every cell labelled where there is room; else every few (a pooled axis by the position
    // its block starts at).
    let step = if pooled {
        (10.0 / side).ceil().max(1.0) as usize
    } else if side >= 6.0 {
        1
    } else {
        ((6.0 / side).ceil() as usize).max(1)
    };
    for i in (0..n).step_by(step) {
        let text = if pooled {
            grid.span(i).start.to_string()
        } else {
            short(tokens.get(i).map_or("", String::as_str))
        };
        // Query labels on the left, key labels above (drawn along the column).
        painter.text(
            egui::pos2(rect.left() - 2.0, rect.top() + side * (i as f32 + 0.5)),
            egui::Align2::RIGHT_CENTER,
            &text,
            font.clone(),
            ui.visuals().text_color(),
        );
        painter.add(
            egui::epaint::TextShape::new(
                egui::pos2(rect.left() + side * i as f32, rect.top() - 2.0),
                ui.painter()
                    .layout_no_wrap(text, font.clone(), ui.visuals().text_color()),
                ui.visuals().text_color(),
            )
            .with_angle(-std::f32::consts::FRAC_PI_2),
        );
    }
    for q in 0..n {
        for k in 0..n {
            let cell = Rect::from_min_size(
                egui::pos2(rect.left() + side * k as f32, rect.top() + side * q as f32),
                Vec2::splat(side),
            );
            painter.rect_filled(cell, 0.0, colors::sequential(grid.at(q, k), 1.0));
        }
    }
    if let Some(p) = response.hover_pos().filter(|p| rect.contains(*p)) {
        let k = (((p.x - rect.left()) / side) as usize).min(n - 1);
        let q = (((p.y - rect.top()) / side) as usize).min(n - 1);
        let token = |i: usize| tokens.get(i).map_or("", String::as_str);
        let text = if pooled {
            let (qs, ks) = (grid.span(q), grid.span(k));
            let range = |r: std::ops::Range<usize>| {
                let last = r.end.saturating_sub(1);
                format!(
                    "{}–{last} (\"{}\" … \"{}\")",
                    r.start,
                    token(r.start),
                    token(last)
                )
            };
            format!(
                "queries {} → keys {}: max {:.4}",
                range(qs),
                range(ks),
                grid.at(q, k)
            )
        } else {
            format!(
                "query {q} \"{}\" → key {k} \"{}\": {:.4}",
                token(q),
                token(k),
                grid.at(q, k)
            )
        };
        response.on_hover_text_at_pointer(text);
    }
    outer
}

/// What the dictionary knows of a feature from the text it was trained on: its density, the
/// tokens it fires on most, and its strongest examples.
fn dictionary_examples_ui(ui: &mut egui::Ui, cx: &ViewCtx, f: crate::features::FeatureId) {
    ui.label(egui::RichText::new("Examples (the dictionary's training text)").strong());
    let Some(dict) = cx.runtime.dictionaries.current.as_ref() else {
        ui.label("Open its dictionary (Dictionary menu) to see its examples.");
        return;
    };
    let Some(info) = dict.info.get(f.index) else {
        ui.label(format!(
            "{} has no description of its atoms yet (import it with `hubel dict import` to \
             describe them on a corpus).",
            dict.title()
        ));
        return;
    };
    ui.label(format!(
        "{}: active on {:.2}% of training tokens",
        dict.title(),
        100.0 * info.density
    ));
    if !info.top_tokens.is_empty() {
        ui.label(format!("fires most on: {}", info.top_tokens.join(" · ")));
    }
    let peak = info
        .examples
        .iter()
        .fold(0f32, |m, e| m.max(e.value.abs()))
        .max(1e-6);
    for e in &info.examples {
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 0.0;
            ui.label(
                egui::RichText::new(format!("{:>7.3}  ", e.value))
                    .monospace()
                    .small(),
            );
            ui.label(egui::RichText::new(&e.before).small());
            ui.label(
                egui::RichText::new(&e.token)
                    .small()
                    .strong()
                    .background_color(colors::scaled(e.value, peak, false))
                    .color(colors::CELL_TEXT),
            );
            ui.label(egui::RichText::new(&e.after).small());
        });
    }
}
