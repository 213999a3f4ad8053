//! The Circuits window: the logit lens of the probe (top token or the target's probability or
//! rank per layer × position, the commitment row, A / B / B − A with the edits), the direct
//! logit attribution at a position (bars per layer, heads and MLP apart; the top heads, MLPs and
//! neurons link to their cards) and the causal trace between the probe (clean) and a corrupted
//! prompt (a layer × position heatmap; a click patches that cell by hand). Each is computed by
//! a job; this view draws the runtime's plain data and pushes [`Command`]s.

use egui::{Color32, RichText};
use egui_plot::{Bar, BarChart, Legend, Plot};

use super::super::circuits::{Circuits, LensResult, Slot, TraceFailure, TraceResult};
use super::super::state::{CircuitsTab, LensShow};
use super::super::{colors, text, AppState, Command, ViewMode};
use super::ViewCtx;
use crate::circuits::dla::DlaReport;
use crate::circuits::lens::{Cell, Grid};
use crate::circuits::patch::{Fit, Site};
use crate::features::FeatureId;

pub fn circuits_window_ui(
    ctx: &egui::Context,
    state: &mut AppState,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    screen: egui::Vec2,
) {
    if !state.circuits_open {
        return;
    }
    let mut open = true;
    egui::Window::new("Circuits")
        .open(&mut open)
        .resizable(true)
        .default_size([
            (screen.x * 0.72).clamp(560.0, 1200.0),
            (screen.y * 0.82).max(420.0),
        ])
        .default_pos([screen.x * 0.01, 36.0])
        .max_size(screen * 0.96)
        .show(ctx, |ui| window_ui(ui, state, cx, out));
    if !open {
        out.push(Command::ShowCircuits(false));
    }
}

fn window_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    let c = &cx.runtime.circuits;
    ui.horizontal_wrapped(|ui| {
        ui.label("Probe (clean prompt)");
        ui.label(RichText::new(format!("{:?}", state.probe)).strong())
            .on_hover_text(
                "The probe box's text: the lens, the attribution and the trace's clean prompt",
            );
    });
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Target");
        ui.add(
            egui::TextEdit::singleline(&mut state.circuits.target)
                .hint_text("\" Paris\"")
                .desired_width(90.0),
        )
        .labelled_by(l.id)
        .on_hover_text("One token, with its leading space for a word (\" Paris\"); click a lens cell to pin its top token");
        let l = ui.label("versus");
        ui.add(
            egui::TextEdit::singleline(&mut state.circuits.versus)
                .hint_text("(none)")
                .desired_width(90.0),
        )
        .labelled_by(l.id)
        .on_hover_text("One token whose logit is subtracted (attribution and trace): why the target and not this one; empty for the target's logit alone");
    });
    ui.horizontal(|ui| {
        for tab in CircuitsTab::ALL {
            if ui
                .add(egui::Button::selectable(
                    state.circuits.tab == tab,
                    tab.name(),
                ))
                .clicked()
            {
                state.circuits.tab = tab;
            }
        }
    });
    ui.separator();
    if cx.runtime.model.is_none() {
        ui.label(RichText::new("Load a model first.").weak());
        return;
    }
    egui::ScrollArea::both()
        .auto_shrink([false, false])
        .show(ui, |ui| match state.circuits.tab {
            CircuitsTab::Lens => lens_tab_ui(ui, state, cx, c, out),
            CircuitsTab::Attribution => dla_tab_ui(ui, state, cx, c, out),
            CircuitsTab::Trace => trace_tab_ui(ui, state, cx, c, out),
        });
}

/// The run button, and while its job runs: progress, phase and Cancel.
fn run_row_ui<T, E: AsRef<str> + From<String>>(
    ui: &mut egui::Ui,
    cx: &ViewCtx,
    slot: &Slot<T, E>,
    label: &str,
    hover: &str,
    command: Command,
    out: &mut Vec<Command>,
) {
    ui.horizontal_wrapped(|ui| {
        let run = ui
            .add_enabled(
                !slot.is_running(),
                egui::Button::new(RichText::new(label).strong()),
            )
            .on_hover_text(hover);
        if run.clicked() {
            out.push(command);
        }
        if let Some(p) = &slot.running {
            super::spinner(ui);
            match cx
                .runtime
                .job_list
                .iter()
                .find(|j| j.name == p.name && !j.state.is_finished())
            {
                Some(j) => {
                    if let Some(frac) = j.fraction() {
                        ui.add(
                            egui::ProgressBar::new(frac)
                                .desired_width(160.0)
                                .show_percentage(),
                        );
                        ui.label(RichText::new(j.counts()).weak());
                    }
                    ui.label(RichText::new(j.phase.clone()).weak());
                    if ui.small_button("Cancel").clicked() {
                        out.push(Command::CancelJob(j.id));
                    }
                }
                None => {
                    ui.label(RichText::new("waiting").weak());
                }
            }
        }
    });
    if let Some(e) = slot.error() {
        ui.colored_label(colors::ERROR, e);
    }
}

/// A readable text colour on `fill`.
fn text_on(fill: Color32) -> Color32 {
    let lum = 0.299 * fill.r() as f32 + 0.587 * fill.g() as f32 + 0.114 * fill.b() as f32;
    if lum > 140.0 {
        colors::CELL_TEXT
    } else {
        Color32::from_gray(235)
    }
}

/// `text` cut to about `chars` characters.
fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(chars.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Cell width for `n` columns in `width` pixels.
fn cell_width(width: f32, n: usize, min: f32, max: f32) -> f32 {
    ((width - 60.0) / n.max(1) as f32).clamp(min, max)
}

/// Column headers: the tokens, cut to the cell width.
fn token_header_ui(ui: &mut egui::Ui, tokens: &[String], cell: f32, mark: &[bool]) {
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(52.0 + cell * tokens.len() as f32, 16.0),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    for (p, t) in tokens.iter().enumerate() {
        let color = if mark.get(p).copied().unwrap_or(false) {
            colors::INTERVENED
        } else {
            ui.visuals().text_color()
        };
        painter.text(
            egui::pos2(rect.min.x + 52.0 + (p as f32 + 0.5) * cell, rect.center().y),
            egui::Align2::CENTER_CENTER,
            cut(&text::visible(t), (cell / 6.5) as usize),
            egui::FontId::proportional(10.5),
            color,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Logit lens

fn lens_tab_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    c: &Circuits,
    out: &mut Vec<Command>,
) {
    run_row_ui(
        ui,
        cx,
        &c.lens,
        "▶ Logit lens",
        "Each layer's residual stream through the final norm and the unembedding, at every position of the probe (with the edits too, when there are some)",
        Command::RunLens,
        out,
    );
    let Some(r) = c.lens.result() else {
        ui.label(RichText::new("Run the lens to see which token each layer would predict.").weak());
        return;
    };
    ui.horizontal_wrapped(|ui| {
        ui.label("Cells show");
        for show in LensShow::ALL {
            let enabled = show == LensShow::Top || r.target.is_some();
            if ui
                .add_enabled(
                    enabled,
                    egui::Button::selectable(state.circuits.lens_show == show, show.name()),
                )
                .on_disabled_hover_text("Give a target token and run the lens again")
                .clicked()
            {
                state.circuits.lens_show = show;
            }
        }
        ui.separator();
        for mode in [
            ViewMode::Baseline,
            ViewMode::Intervened,
            ViewMode::Difference,
        ] {
            let enabled = mode == ViewMode::Baseline
                || (r.intervened.is_some() && (mode != ViewMode::Difference || r.target.is_some()));
            if ui
                .add_enabled(
                    enabled,
                    egui::Button::selectable(state.view == mode, mode.name()),
                )
                .on_disabled_hover_text("Needs edits when the lens ran (B − A: and a target)")
                .clicked()
            {
                state.view = mode;
            }
        }
    });
    let show = if r.target.is_none() {
        LensShow::Top
    } else {
        state.circuits.lens_show
    };
    let mode = match (&r.intervened, state.view) {
        (None, _) => ViewMode::Baseline,
        (Some(_), ViewMode::Difference) if r.target.is_none() => ViewMode::Intervened,
        (Some(_), m) => m,
    };
    let mut caption = format!(
        "{:?}: the last layer on top, positions across. ",
        cut(&r.text, 60)
    );
    caption += match (show, mode) {
        (_, ViewMode::Difference) => "Cells: p(target) with the edits minus without (red: raised).",
        (LensShow::Top, _) => "Cells: the top token (· is a space) and its probability (bright: confident). Click a cell to make its token the target.",
        (LensShow::TargetProb, _) => "Cells: the target's probability.",
        (LensShow::TargetRank, _) => "Cells: the target's rank (1: top).",
    };
    if let Some(t) = &r.target {
        caption += &format!(" Target {:?}.", t.token);
    }
    if r.text != state.probe {
        caption += " (The probe has changed since: run the lens again.)";
    }
    ui.label(RichText::new(caption).weak());
    let grid = match mode {
        ViewMode::Intervened => r.intervened.as_ref().unwrap_or(&r.baseline),
        _ => &r.baseline,
    };
    lens_grid_ui(ui, state, r, grid, show, mode);
}

fn lens_grid_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    r: &LensResult,
    grid: &Grid,
    show: LensShow,
    mode: ViewMode,
) {
    let n = grid.positions();
    let layers = grid.layers.len();
    let cell = egui::vec2(cell_width(ui.available_width(), n, 46.0, 96.0), 17.0);
    token_header_ui(ui, &r.tokens, cell.x, &[]);
    let size = egui::vec2(52.0 + cell.x * n as f32, cell.y * (layers + 1) as f32 + 4.0);
    let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
    let painter = ui.painter_at(rect);
    let origin = rect.min + egui::vec2(52.0, 0.0);
    let font = egui::FontId::proportional(10.0);
    let delta = |l: usize, p: usize| -> f32 {
        let b = r
            .intervened
            .as_ref()
            .and_then(|g| g.cell(l, p))
            .and_then(|c| c.target_prob);
        let a = r.baseline.cell(l, p).and_then(|c| c.target_prob);
        b.zip(a).map_or(0.0, |(b, a)| b - a)
    };
    let diff_scale = if mode == ViewMode::Difference {
        (0..layers)
            .flat_map(|l| (0..n).map(move |p| (l, p)))
            .map(|(l, p)| delta(l, p).abs())
            .fold(1e-3f32, f32::max)
    } else {
        1.0
    };
    // The last layer on top (the output), layer 0 at the bottom, then the commitment row.
    for (l, layer) in grid.layers.iter().enumerate() {
        let y = origin.y + (layers - 1 - l) as f32 * cell.y;
        if layers <= 16 || l % 2 == 0 {
            painter.text(
                egui::pos2(rect.min.x + 48.0, y + cell.y * 0.5),
                egui::Align2::RIGHT_CENTER,
                format!("L{l}"),
                egui::FontId::proportional(9.5),
                ui.visuals().weak_text_color(),
            );
        }
        for (p, c) in layer.positions.iter().enumerate() {
            let (fill, label) = lens_cell(c, show, mode, delta(l, p), diff_scale, cell.x);
            let rc = egui::Rect::from_min_size(egui::pos2(origin.x + p as f32 * cell.x, y), cell);
            painter.rect_filled(rc.shrink(0.5), 0.0, fill);
            painter.text(
                rc.center(),
                egui::Align2::CENTER_CENTER,
                label,
                font.clone(),
                text_on(fill),
            );
        }
    }
    // The commitment row.
    let y = origin.y + layers as f32 * cell.y + 4.0;
    painter.text(
        egui::pos2(rect.min.x + 48.0, y + cell.y * 0.5),
        egui::Align2::RIGHT_CENTER,
        "commit",
        egui::FontId::proportional(9.5),
        ui.visuals().strong_text_color(),
    );
    for (p, &c) in grid.commit_layer.iter().enumerate() {
        let rc = egui::Rect::from_min_size(egui::pos2(origin.x + p as f32 * cell.x, y), cell);
        let fill = colors::sequential(1.0 - c as f32 / layers.max(1) as f32, 1.0);
        painter.rect_filled(rc.shrink(0.5), 0.0, fill);
        painter.text(
            rc.center(),
            egui::Align2::CENTER_CENTER,
            format!("L{c}"),
            font.clone(),
            text_on(fill),
        );
    }
    let Some(pos) = resp.hover_pos() else {
        return;
    };
    let rel = pos - origin;
    let (p, l) = ((rel.x / cell.x).floor(), (rel.y / cell.y).floor());
    if p < 0.0 || l < 0.0 || p as usize >= n || l as usize >= layers {
        return;
    }
    let (p, l) = (p as usize, layers - 1 - l as usize);
    let c = &grid.layers[l].positions[p];
    let mut tip = format!(
        "layer {l}, position {p} ({:?})\n",
        r.tokens.get(p).map_or("", String::as_str)
    );
    for t in &c.top {
        tip += &format!("  {:?} {:.3}\n", t.token, t.prob);
    }
    if let (Some(t), Some(prob), Some(rank)) = (&r.target, c.target_prob, c.target_rank) {
        tip += &format!("target {:?}: p {:.4}, rank {rank}", t.token, prob);
        if r.intervened.is_some() {
            tip += &format!("; B − A {:+.4}", delta(l, p));
        }
        tip.push('\n');
    }
    tip += &format!(
        "final top-1 from layer {} on",
        grid.commit_layer.get(p).copied().unwrap_or(0)
    );
    let resp = resp.on_hover_text(tip);
    if resp.clicked() {
        if let Some(t) = c.top.first() {
            state.circuits.target = t.token.clone();
            state.circuits.lens_show = LensShow::TargetProb;
        }
    }
}

/// A lens cell's colour and text.
fn lens_cell(
    c: &Cell,
    show: LensShow,
    mode: ViewMode,
    delta: f32,
    diff_scale: f32,
    width: f32,
) -> (Color32, String) {
    if mode == ViewMode::Difference {
        return (colors::diverging(delta, diff_scale), format!("{delta:+.2}"));
    }
    match show {
        LensShow::Top => match c.top.first() {
            Some(t) => {
                let chars = ((width - 30.0) / 6.0).max(2.0) as usize;
                (
                    colors::sequential(t.prob, 1.0),
                    format!(
                        "{}  {:.0}%",
                        cut(&text::visible(&t.token), chars),
                        t.prob * 100.0
                    ),
                )
            }
            None => (colors::EMPTY, String::new()),
        },
        LensShow::TargetProb => {
            let p = c.target_prob.unwrap_or(0.0);
            (colors::sequential(p, 1.0), format!("{p:.2}"))
        }
        LensShow::TargetRank => {
            let rank = c.target_rank.unwrap_or(usize::MAX);
            // Rank 1 bright, 1000+ dark, on a log scale.
            let v = 1.0 - ((rank as f32).ln() / 1000f32.ln()).clamp(0.0, 1.0);
            (colors::sequential(v, 1.0), format!("{rank}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Direct logit attribution

fn dla_tab_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    c: &Circuits,
    out: &mut Vec<Command>,
) {
    let tokens: Vec<String> = cx
        .runtime
        .result
        .as_ref()
        .map(|r| r.tokens.iter().map(|t| t.text.clone()).collect())
        .unwrap_or_default();
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("At position");
        let shown = match state.circuits.position {
            None => "the last token".to_string(),
            Some(p) => format!(
                "{p}: {}",
                tokens.get(p).map_or(String::new(), |t| text::visible(t))
            ),
        };
        egui::ComboBox::from_id_salt("dla position")
            .selected_text(shown)
            .show_ui(ui, |ui| {
                if ui
                    .selectable_label(state.circuits.position.is_none(), "the last token")
                    .clicked()
                {
                    state.circuits.position = None;
                }
                for (p, t) in tokens.iter().enumerate() {
                    let label = format!("{p}: {}", text::visible(t));
                    if ui
                        .selectable_label(state.circuits.position == Some(p), label)
                        .clicked()
                    {
                        state.circuits.position = Some(p);
                    }
                }
            })
            .response
            .labelled_by(l.id);
    });
    run_row_ui(
        ui,
        cx,
        &c.dla,
        "▶ Attribute",
        "What the embedding, every head, every MLP and every neuron write along the target's logit direction (minus the versus token's) at the position, the final norm's scale frozen",
        Command::RunAttribution,
        out,
    );
    let Some(r) = c.dla.result() else {
        ui.label(
            RichText::new("Attribute the target's logit to the components that wrote it.").weak(),
        );
        return;
    };
    dla_result_ui(ui, r, out);
}

fn dla_result_ui(ui: &mut egui::Ui, r: &DlaReport, out: &mut Vec<Command>) {
    ui.label(
        RichText::new(format!(
            "{} at position {} ({:?}) = {:.3}",
            r.metric, r.position, r.tokens[r.position], r.total
        ))
        .strong(),
    );
    ui.label(
        RichText::new(format!(
            "The components sum to {:.3} with the final norm's scale frozen (1/{:.3}); residual {:+.4} (the norm's and attention's biases, rounding).",
            r.sum,
            1.0 / r.inv_scale,
            r.residual
        ))
        .weak(),
    );
    let embed = r
        .components
        .iter()
        .find(|c| c.name == "embed")
        .map_or(0.0, |c| c.value);
    let attn: Vec<Bar> = r
        .layers
        .iter()
        .map(|l| {
            Bar::new(l.layer as f64 - 0.2, l.attn as f64)
                .width(0.4)
                .name(format!("L{} attention", l.layer))
        })
        .collect();
    let mlp: Vec<Bar> = r
        .layers
        .iter()
        .map(|l| {
            Bar::new(l.layer as f64 + 0.2, l.mlp as f64)
                .width(0.4)
                .name(format!("L{}.mlp", l.layer))
        })
        .collect();
    let emb = vec![Bar::new(-1.0, embed as f64).width(0.6).name("embed")];
    let plot = Plot::new("dla bars")
        .height(220.0)
        .legend(Legend::default())
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .x_axis_label("layer (−1: the embedding)")
        .y_axis_label("logit contribution")
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("embedding", emb).color(colors::GUTTER));
            plot.bar_chart(BarChart::new("attention (all heads)", attn).color(colors::BASELINE));
            plot.bar_chart(BarChart::new("MLP", mlp).color(colors::INTERVENED));
        });
    // A click on a bar opens the card of its strongest head or neuron.
    if plot.response.clicked() {
        if let Some(pos) = plot.response.interact_pointer_pos() {
            let v = plot.transform.value_from_position(pos);
            let layer = (v.x - 0.0).round();
            if layer >= 0.0 && (layer as usize) < r.layers.len() {
                let bars = &r.layers[layer as usize];
                let feature = if v.x < layer {
                    strongest_head(bars).map(|h| FeatureId::head(bars.layer, h))
                } else {
                    bars.strongest_neuron
                        .as_ref()
                        .map(|n| FeatureId::neuron(n.layer, n.neuron))
                };
                if let Some(f) = feature {
                    out.push(Command::Select(Some(f)));
                }
            }
        }
    }
    ui.label(RichText::new("Click a bar for the card of its strongest head (left bar) or neuron (right bar), or a name below.").weak());
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.label(RichText::new("Top components").strong());
            egui::Grid::new("dla components").striped(true).show(ui, |ui| {
                for comp in r.components.iter().take(14) {
                    match (comp.layer, comp.head) {
                        (Some(l), Some(h)) => {
                            if ui.link(&comp.name).on_hover_text("Open the head's card").clicked() {
                                out.push(Command::Select(Some(FeatureId::head(l, h))));
                            }
                        }
                        (Some(l), None) => {
                            let n = r.layers.get(l).and_then(|b| b.strongest_neuron.clone());
                            match n {
                                Some(n) => {
                                    if ui
                                        .link(&comp.name)
                                        .on_hover_text(format!("Open the card of its strongest neuron here, {} ({:+.3})", n.feature, n.value))
                                        .clicked()
                                    {
                                        out.push(Command::Select(Some(FeatureId::neuron(n.layer, n.neuron))));
                                    }
                                }
                                None => {
                                    ui.label(&comp.name);
                                }
                            }
                        }
                        _ => {
                            ui.label(&comp.name);
                        }
                    }
                    ui.label(format!("{:+.3}", comp.value));
                    ui.end_row();
                }
            });
        });
        ui.add_space(24.0);
        ui.vertical(|ui| {
            ui.label(RichText::new("Top neurons").strong());
            egui::Grid::new("dla neurons").striped(true).show(ui, |ui| {
                for n in r.neurons.iter().take(14) {
                    if ui
                        .link(&n.feature)
                        .on_hover_text(format!("activation {:+.3}; open its card", n.activation))
                        .clicked()
                    {
                        out.push(Command::Select(Some(FeatureId::neuron(n.layer, n.neuron))));
                    }
                    ui.label(format!("{:+.3}", n.value));
                    ui.end_row();
                }
            });
        });
    });
}

fn strongest_head(bars: &crate::circuits::dla::LayerBars) -> Option<usize> {
    bars.heads
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .map(|(h, _)| h)
}

// ---------------------------------------------------------------------------------------------
// Causal trace

fn trace_tab_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    c: &Circuits,
    out: &mut Vec<Command>,
) {
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Corrupted prompt");
        ui.add(
            egui::TextEdit::singleline(&mut state.circuits.corrupt)
                .hint_text("the probe with the subject changed, same number of tokens")
                .desired_width(320.0),
        )
        .labelled_by(l.id);
        let l = ui.label("Patch");
        egui::ComboBox::from_id_salt("trace site")
            .selected_text(state.circuits.site.title())
            .show_ui(ui, |ui| {
                for site in Site::ALL {
                    ui.selectable_value(&mut state.circuits.site, site, site.title());
                }
            })
            .response
            .labelled_by(l.id);
    });
    if let Some(fit) = state.circuits.fit {
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(match fit {
                Fit::Pad => "Different lengths: the shorter prompt is padded with filler tokens after its first token.",
                Fit::Trim => "Different lengths: the longer prompt's extra tokens after its first token are dropped.",
            }).weak());
            if ui
                .small_button("Refuse different lengths")
                .on_hover_text("Trace only prompts of the same token length, as typed")
                .clicked()
            {
                state.circuits.fit = None;
            }
        });
    }
    run_row_ui(
        ui,
        cx,
        &c.trace,
        "▶ Trace",
        "Run the corrupted prompt once per layer × position with the probe's (clean) value patched in there, and show how much of the clean − corrupted difference each patch restores",
        Command::RunTrace,
        out,
    );
    if let Some(Err(TraceFailure {
        mismatch: Some(m), ..
    })) = &c.trace.last
    {
        if !c.trace.is_running() {
            token_rows_ui(ui, "trace mismatch", &m.clean_tokens, &m.corrupt_tokens);
            ui.horizontal_wrapped(|ui| {
                if ui
                    .button("Pad the shorter one")
                    .on_hover_text("Insert filler tokens (the model's neutral token, \" the\" where it is one token) into the shorter prompt right after its first token, then trace. The prompts end aligned: the last position is each one's own last token, and \" is in the city of\" lines up")
                    .clicked()
                {
                    out.push(Command::FitTrace(Fit::Pad));
                }
                if ui
                    .button("Trim the longer one")
                    .on_hover_text("Drop the longer prompt's extra tokens right after its first token, then trace. No filler, but the dropped tokens' content is lost")
                    .clicked()
                {
                    out.push(Command::FitTrace(Fit::Trim));
                }
            });
        }
    }
    let Some(t) = c.trace.result() else {
        ui.label(RichText::new("Which layer and position carry what makes the clean prompt's answer? Type a corrupted prompt of the same length and trace.").weak());
        return;
    };
    trace_result_ui(ui, t, out);
}

/// The two prompts' tokens, one row each (· for a space).
fn token_rows_ui(ui: &mut egui::Ui, id: &str, clean: &[String], corrupt: &[String]) {
    egui::Grid::new(id).spacing([4.0, 2.0]).show(ui, |ui| {
        for (name, tokens) in [("clean", clean), ("corrupted", corrupt)] {
            ui.label(format!("{name} ({} tokens)", tokens.len()));
            ui.horizontal_wrapped(|ui| {
                ui.spacing_mut().item_spacing.x = 2.0;
                for (p, t) in tokens.iter().enumerate() {
                    let differs = clean.get(p) != corrupt.get(p);
                    let text = RichText::new(text::visible(t)).monospace();
                    ui.label(if differs {
                        text.color(colors::INTERVENED)
                    } else {
                        text
                    });
                }
            });
            ui.end_row();
        }
    });
}

fn trace_result_ui(ui: &mut egui::Ui, t: &TraceResult, out: &mut Vec<Command>) {
    let r = &t.report;
    if let Some(f) = &r.fitted {
        ui.label(RichText::new(format!("Lengths made equal: {f}.")).strong());
        token_rows_ui(ui, "trace fitted", &r.tokens, &r.corrupt_tokens);
    }
    ui.label(
        RichText::new(format!(
            "{}: clean {:.3}, corrupted {:.3} · {} patched at layer × position ({} runs, {:.1} s)",
            r.metric,
            r.clean,
            r.corrupt,
            r.site.title(),
            r.runs,
            r.seconds
        ))
        .strong(),
    );
    ui.label(RichText::new("Cells: the fraction of the difference the patch restores (red 1: all of it; blue: the wrong way). Orange tokens differ between the prompts. Click a cell to patch it by hand: the probe becomes the corrupted prompt with that one edit.").weak());
    let n = r.tokens.len();
    let layers = r.grid.len();
    let differ: Vec<bool> = r
        .tokens
        .iter()
        .zip(&r.corrupt_tokens)
        .map(|(a, b)| a != b)
        .collect();
    let cell = egui::vec2(cell_width(ui.available_width(), n, 30.0, 72.0), 15.0);
    token_header_ui(ui, &r.tokens, cell.x, &differ);
    let size = egui::vec2(52.0 + cell.x * n as f32, cell.y * layers as f32);
    let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
    let painter = ui.painter_at(rect);
    let origin = rect.min + egui::vec2(52.0, 0.0);
    let scale = r.grid.iter().flatten().fold(1.0f32, |m, v| m.max(v.abs()));
    for (l, row) in r.grid.iter().enumerate() {
        if layers <= 16 || l % 2 == 0 {
            painter.text(
                egui::pos2(rect.min.x + 48.0, origin.y + (l as f32 + 0.5) * cell.y),
                egui::Align2::RIGHT_CENTER,
                format!("L{l}"),
                egui::FontId::proportional(9.5),
                ui.visuals().weak_text_color(),
            );
        }
        for (p, &v) in row.iter().enumerate() {
            let rc = egui::Rect::from_min_size(
                origin + egui::vec2(p as f32 * cell.x, l as f32 * cell.y),
                cell,
            );
            let fill = colors::diverging(v, scale);
            painter.rect_filled(rc.shrink(0.5), 0.0, fill);
            if cell.x >= 34.0 {
                painter.text(
                    rc.center(),
                    egui::Align2::CENTER_CENTER,
                    format!("{v:.2}"),
                    egui::FontId::proportional(9.5),
                    text_on(fill),
                );
            }
        }
    }
    if let Some(pos) = resp.hover_pos() {
        let rel = pos - origin;
        let (p, l) = ((rel.x / cell.x).floor(), (rel.y / cell.y).floor());
        if p >= 0.0 && l >= 0.0 && (p as usize) < n && (l as usize) < layers {
            let (p, l) = (p as usize, l as usize);
            let resp = resp.clone().on_hover_text(format!(
                "layer {l}, position {p} ({:?} / {:?}): restores {:.3} (metric {:.3})\nClick to patch it by hand",
                r.tokens[p], r.corrupt_tokens[p], r.grid[l][p], r.patched[l][p]
            ));
            if resp.clicked() {
                out.push(Command::PatchCell {
                    layer: l,
                    position: p,
                });
            }
        }
    }
    if let Some((l, p, v)) = r.strongest() {
        ui.horizontal_wrapped(|ui| {
            ui.label(format!(
                "Strongest: layer {l}, position {p} ({:?}), {v:.3}",
                r.tokens[p]
            ));
            if ui.button("Patch it by hand").clicked() {
                out.push(Command::PatchCell {
                    layer: l,
                    position: p,
                });
            }
        });
    }
}
