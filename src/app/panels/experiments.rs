//! The Experiments window: pick or open a protocol, run it as a job, read the result — per-layer
//! selectivity with its null band and the embedding's floor, the top units (a click opens the
//! card), the induction head grid, the lesion table with zero and mean ablation side by side —
//! and export a report folder. Draws the runtime's plain data; every action is a [`Command`].

use egui::{Color32, RichText};
use egui_plot::{FilledArea, HLine, Legend, Line, LineStyle, Plot, PlotPoints, VLine};

use super::super::experiments::Finished;
use super::super::file_dialog::FileAction;
use super::super::state::ExperimentsTab;
use super::super::{colors, AppState, Command};
use super::ViewCtx;
use crate::corpus::protocol::{self, Protocol};
use crate::experiments::induction::InductionReport;
use crate::experiments::lesion::{Ablation, LesionReport};
use crate::experiments::selectivity::SelectivityReport;
use crate::experiments::Report;
use crate::features::FeatureId;

/// The colour of warnings and caveats.
const WARN: Color32 = Color32::from_rgb(235, 180, 70);

pub fn experiments_window_ui(
    ctx: &egui::Context,
    state: &mut AppState,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    screen: egui::Vec2,
) {
    if !state.experiments_open {
        return;
    }
    let mut open = true;
    egui::Window::new("Experiments")
        .open(&mut open)
        .resizable(true)
        // Over the probe panel and the maps, leaving the feature card (right) in view: a unit
        // clicked here opens there.
        .default_size([(screen.x * 0.7).clamp(560.0, 980.0), screen.y * 0.8])
        .default_pos([screen.x * 0.01, 40.0])
        .max_size(screen * 0.96)
        .show(ctx, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| window_ui(ui, state, cx, out));
        });
    if !open {
        out.push(Command::ShowExperiments(false));
    }
}

fn window_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    let ex = &cx.runtime.experiments;
    ui.horizontal_wrapped(|ui| {
        ui.label("Protocol:");
        let shown = match (&ex.protocol, &ex.protocol_file) {
            (_, Some(path)) => path
                .file_name()
                .map_or("file".into(), |n| n.to_string_lossy().into_owned()),
            (Some(Ok(p)), None) => p.name.clone(),
            _ => state.experiment.clone(),
        };
        egui::ComboBox::from_id_salt("protocol")
            .selected_text(shown)
            .show_ui(ui, |ui| {
                for name in protocol::built_in_names() {
                    let chosen = ex.protocol_file.is_none() && ex.protocol().is_some_and(|p| p.name == name);
                    if ui.selectable_label(chosen, name).clicked() {
                        out.push(Command::ChooseProtocol(name.to_string()));
                    }
                }
            });
        if ui
            .button("Open protocol…")
            .on_hover_text("A JSON file: name, kind (selectivity | induction | lesion), description, sets A and B with a label and stimuli ([[target]] marks the reading position), heldout for lesions")
            .clicked()
        {
            out.push(Command::AskFile(FileAction::OpenProtocol));
        }
    });
    let protocol = match &ex.protocol {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            ui.colored_label(colors::ERROR, e);
            return;
        }
        None => {
            // The window was restored open at start: show the protocol it showed.
            out.push(Command::ChooseProtocol(state.experiment.clone()));
            ui.label("Choose a protocol.");
            return;
        }
    };
    protocol_ui(ui, protocol, out);
    if protocol.kind == crate::corpus::protocol::Kind::Lesion {
        ui.horizontal_wrapped(|ui| {
            let l = ui.label("Hand-picked group");
            ui.add(
                egui::TextEdit::singleline(&mut state.lesion_units)
                    .hint_text("L1N971, L9N448 (optional)")
                    .desired_width(220.0),
            )
            .labelled_by(l.id);
            if let Some(f) = state
                .selection
                .filter(|f| f.basis == crate::features::Basis::Neurons)
            {
                if ui
                    .button(format!("+ {}", f.label()))
                    .on_hover_text(
                        "Add the selected neuron (its card is open) to the hand-picked group",
                    )
                    .clicked()
                {
                    let list = state.lesion_units.trim().trim_end_matches(',').to_string();
                    state.lesion_units = if list.is_empty() {
                        f.label()
                    } else {
                        format!("{list}, {}", f.label())
                    };
                }
            }
        });
    }
    ui.separator();
    ui.horizontal_wrapped(|ui| {
        let model = cx.runtime.model.is_some();
        let run = ui.add_enabled(
            model && !ex.is_running(),
            egui::Button::new(RichText::new("▶ Run").strong()),
        );
        if run.clicked() {
            out.push(Command::RunExperiment);
        }
        if let Some(r) = &ex.running {
            super::spinner(ui);
            match cx.runtime.job_list.iter().find(|j| j.name == r.name && !j.state.is_finished()) {
                Some(j) => {
                    let frac = j.fraction().unwrap_or(0.0);
                    ui.add(egui::ProgressBar::new(frac).desired_width(160.0).show_percentage());
                    ui.label(RichText::new(j.phase.clone()).weak());
                    if let Some(eta) = j.eta {
                        ui.label(RichText::new(format!("about {} left", crate::jobs::clock(eta))).weak());
                    }
                    if ui.small_button("Cancel").clicked() {
                        out.push(Command::CancelJob(j.id));
                    }
                }
                None => {
                    ui.label(format!("{}: waiting", r.protocol));
                }
            }
        }
        let done = ex.result_shown().is_some();
        if ui
            .add_enabled(done && ex.exporting.is_none(), egui::Button::new("Export report…"))
            .on_hover_text("Writes hubel-<protocol>/ in the folder you choose: report.md, report.json, protocol.json, the figure as PNG and SVG")
            .clicked()
        {
            out.push(Command::AskFile(FileAction::ExportReport));
        }
        if ex.exporting.is_some() {
            ui.label("writing the report…");
        }
    });
    if cx.runtime.model.is_none() {
        ui.label(RichText::new("Load a model to run experiments.").weak());
    }
    match &ex.exported {
        Some(Ok(dir)) => {
            ui.label(RichText::new(format!("Report written to {}", dir.display())).weak());
        }
        Some(Err(e)) => {
            ui.colored_label(
                colors::ERROR,
                format!("The report could not be written: {e}"),
            );
        }
        None => {}
    }
    if let Some(e) = &ex.error {
        ui.colored_label(colors::ERROR, e);
    }
    ui.separator();
    ui.horizontal(|ui| {
        for tab in [
            ExperimentsTab::Result,
            ExperimentsTab::Dose,
            ExperimentsTab::Discriminator,
        ] {
            ui.selectable_value(&mut state.experiments_tab, tab, tab.name());
        }
    });
    ui.separator();
    let selectivity = match ex.result_shown().map(|d| &d.report) {
        Some(Report::Selectivity(r)) => Some(r),
        _ => None,
    };
    match state.experiments_tab {
        ExperimentsTab::Result => {
            if let Some(done) = ex.result_shown() {
                result_ui(ui, done, out);
            } else if let Some(other) = &ex.result {
                ui.label(
                    RichText::new(format!(
                        "The last result is of `{}`; run this protocol to see its own.",
                        other.protocol.name
                    ))
                    .weak(),
                );
            } else {
                ui.label(RichText::new("Run the protocol to see its result here.").weak());
            }
        }
        ExperimentsTab::Dose => dose_ui(ui, state, cx, out),
        ExperimentsTab::Discriminator => discriminator_ui(ui, state, cx, selectivity, out),
    }
}

/// The dose–response form and its last result.
fn dose_ui(ui: &mut egui::Ui, state: &mut AppState, cx: &ViewCtx, out: &mut Vec<Command>) {
    use crate::experiments::dose::Mode;
    let ex = &cx.runtime.experiments;
    ui.label(RichText::new("Dose–response").strong());
    ui.label(RichText::new(format!(
        "Scale or shift features at positions 1.. over a range of strengths: the probe's next token (KL from the clean run, the target's probability) and the loss on this protocol's sets. Probe: {:?}",
        state.probe
    )).weak());
    let hint = state
        .selection
        .map_or("click a feature, or type L10N123".into(), |f| {
            format!("{} (the selection)", f.label())
        });
    let form = &mut state.dose;
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Features");
        ui.add(
            egui::TextEdit::singleline(&mut form.units)
                .hint_text(hint)
                .desired_width(160.0),
        )
        .labelled_by(l.id);
        egui::ComboBox::from_id_salt("dose mode")
            .selected_text(form.mode.name())
            .show_ui(ui, |ui| {
                for m in [Mode::Scale, Mode::Add] {
                    if ui.selectable_label(form.mode == m, m.name()).clicked() && form.mode != m {
                        form.mode = m;
                        (form.from, form.to, form.steps) = match m {
                            Mode::Scale => (0.0, 3.0, 7),
                            Mode::Add => (-8.0, 8.0, 9),
                        };
                    }
                }
            });
        ui.label("from");
        ui.add(
            egui::DragValue::new(&mut form.from)
                .speed(0.1)
                .range(-1e6..=1e6),
        );
        ui.label("to");
        ui.add(
            egui::DragValue::new(&mut form.to)
                .speed(0.1)
                .range(-1e6..=1e6),
        );
        ui.label("steps");
        ui.add(egui::DragValue::new(&mut form.steps).range(2..=201));
    });
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Target token");
        ui.add(
            egui::TextEdit::singleline(&mut form.target)
                .hint_text("the clean top token")
                .desired_width(120.0),
        )
        .labelled_by(l.id);
        ui.checkbox(&mut form.freeze, "Freeze attention at the clean pattern")
            .on_hover_text("Every layer's attention pattern is held at its value in the clean run, so the edit reaches the output only through the residual stream and the MLPs");
        let can = cx.runtime.model.is_some() && ex.dosing.is_none() && ex.protocol().is_some();
        if ui.add_enabled(can, egui::Button::new("Run dose–response")).clicked() {
            out.push(Command::RunDose);
        }
        if ex.dosing.is_some() {
            super::spinner(ui);
        }
        if ui
            .add_enabled(ex.dose.is_some() && ex.exporting.is_none(), egui::Button::new("Export dose report…"))
            .clicked()
        {
            out.push(Command::AskFile(FileAction::ExportDose));
        }
    });
    if let Some(e) = &ex.dose_error {
        ui.colored_label(colors::ERROR, e);
    }
    if let Some(done) = &ex.dose {
        if let Report::Dose(r) = &done.report {
            dose_result_ui(ui, r);
        }
    }
}

fn dose_result_ui(ui: &mut egui::Ui, r: &crate::experiments::dose::DoseReport) {
    ui.label(r.summary());
    let pts = |f: &dyn Fn(&crate::experiments::dose::DosePoint) -> f64| -> PlotPoints<'static> {
        PlotPoints::from(
            r.points
                .iter()
                .map(|p| [f64::from(p.strength), f(p)])
                .collect::<Vec<_>>(),
        )
    };
    ui.columns(2, |cols| {
        Plot::new("dose output")
            .height(170.0)
            .legend(Legend::default())
            .allow_scroll(false)
            .include_y(0.0)
            .show(&mut cols[0], |plot| {
                plot.line(
                    Line::new("KL(clean || dosed)", pts(&|p| p.kl))
                        .color(colors::INTERVENED)
                        .width(2.0),
                );
                plot.line(
                    Line::new(format!("p({})", r.target.trim()), pts(&|p| p.target_prob))
                        .color(colors::BASELINE)
                        .width(2.0),
                );
                plot.hline(
                    HLine::new("clean p(target)", r.clean_target_prob)
                        .color(Color32::from_gray(150))
                        .style(LineStyle::dashed_loose()),
                );
            });
        Plot::new("dose sets")
            .height(170.0)
            .legend(Legend::default())
            .allow_scroll(false)
            .show(&mut cols[1], |plot| {
                plot.line(
                    Line::new(format!("loss A: {}", r.labels.a), pts(&|p| p.nll.a))
                        .color(colors::BASELINE)
                        .width(2.0),
                );
                plot.line(
                    Line::new(format!("loss B: {}", r.labels.b), pts(&|p| p.nll.b))
                        .color(colors::INTERVENED)
                        .width(2.0),
                );
            });
    });
}

/// Save a top unit or a layer's probe as a classifier and try it on new text.
fn discriminator_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    r: Option<&SelectivityReport>,
    out: &mut Vec<Command>,
) {
    use crate::experiments::discriminator::Which;
    let ex = &cx.runtime.experiments;
    ui.label(RichText::new("Discriminator").strong());
    ui.label(RichText::new("Fit a neuron (threshold halfway between the sets' means) or a layer's residual-stream probe on this protocol's sets, try it on new text (one per line; [[…]] marks the token read, else the last), save it as JSON.").weak());
    let l = ui.label("Text to classify");
    ui.add(
        egui::TextEdit::multiline(&mut state.classify_text)
            .desired_rows(2)
            .desired_width(f32::INFINITY)
            .hint_text("He took a [[left]] at the lights."),
    )
    .labelled_by(l.id);
    let idle = cx.runtime.model.is_some() && ex.fitting.is_none();
    let layers = cx.runtime.layers();
    ui.horizontal_wrapped(|ui| {
        // The selectivity result's best unit and onset layer, when there is one; else the
        // selected neuron and the form's layer.
        let unit = r
            .and_then(|r| {
                r.top_units
                    .iter()
                    .filter_map(|u| FeatureId::parse(&u.feature).ok())
                    .find(|f| f.basis == crate::features::Basis::Neurons)
            })
            .or(state
                .selection
                .filter(|f| f.basis == crate::features::Basis::Neurons));
        if let Some(u) = unit {
            if ui
                .add_enabled(idle, egui::Button::new(format!("Fit {}", u.label())))
                .clicked()
            {
                out.push(Command::FitDiscriminator(Which::Unit(u)));
            }
        }
        if let Some(onset) = r.and_then(|r| r.onset_layer) {
            if ui
                .add_enabled(
                    idle,
                    egui::Button::new(format!("Fit the onset layer's probe (L{onset})")),
                )
                .clicked()
            {
                out.push(Command::FitDiscriminator(Which::Probe(onset)));
            }
        }
        ui.label("probe layer");
        ui.add(egui::DragValue::new(&mut state.probe_layer).range(0..=layers.saturating_sub(1)));
        let layer = state.probe_layer.min(layers.saturating_sub(1));
        if ui
            .add_enabled(
                idle && layers > 0,
                egui::Button::new(format!("Fit the layer-{layer} probe")),
            )
            .clicked()
        {
            out.push(Command::FitDiscriminator(Which::Probe(layer)));
        }
        if ex.fitting.is_some() {
            super::spinner(ui);
        }
        let fitted = matches!(ex.classified, Some(Ok(_)));
        if ui
            .add_enabled(fitted, egui::Button::new("Save discriminator…"))
            .clicked()
        {
            out.push(Command::AskFile(FileAction::SaveDiscriminator));
        }
    });
    match &ex.classified {
        Some(Ok(c)) => {
            ui.label(c.discriminator.describe());
            for x in &c.results {
                ui.label(format!(
                    "{} ({}): {:+.3} vs {:+.3} at {:?} — {}",
                    x.says.name(),
                    x.label,
                    x.value,
                    x.threshold,
                    x.token,
                    x.text
                ));
            }
        }
        Some(Err(e)) => {
            ui.colored_label(colors::ERROR, e);
        }
        None => {}
    }
    match &ex.saved {
        Some(Ok(p)) => {
            ui.label(RichText::new(format!("Saved as {}", p.display())).weak());
        }
        Some(Err(e)) => {
            ui.colored_label(colors::ERROR, e);
        }
        None => {}
    }
}

fn protocol_ui(ui: &mut egui::Ui, p: &Protocol, out: &mut Vec<Command>) {
    ui.label(RichText::new(format!("{} · {}", p.name, p.kind.name())).strong());
    if !p.description.is_empty() {
        ui.label(&p.description);
    }
    let held = |n: usize| {
        if n > 0 {
            format!(", {n} held out")
        } else {
            String::new()
        }
    };
    for (side, set, h) in [
        ("A", &p.sets.a, p.heldout(protocol::Side::A).len()),
        ("B", &p.sets.b, p.heldout(protocol::Side::B).len()),
    ] {
        egui::CollapsingHeader::new(format!(
            "{side}: {} ({} stimuli{})",
            set.label,
            set.stimuli.len(),
            held(h)
        ))
        .id_salt(format!("set {side} {}", p.name))
        .show(ui, |ui| {
            ui.label(RichText::new("Click a stimulus to load it into the probe.").weak());
            for s in &set.stimuli {
                let text = protocol::parse_marker(s).map_or_else(|_| s.clone(), |m| m.text);
                if ui.link(s).clicked() {
                    out.push(Command::LoadStimulus(text));
                }
            }
        });
    }
}

fn result_ui(ui: &mut egui::Ui, done: &Finished, out: &mut Vec<Command>) {
    ui.label(
        RichText::new(format!(
            "Ran in {:.1} s on {} · position 0 (the attention sink) is left out of every mean and never ablated",
            done.seconds, done.model
        ))
        .weak(),
    );
    match &done.report {
        Report::Selectivity(r) => selectivity_ui(ui, r, out),
        Report::Induction(r) => induction_ui(ui, r, out),
        Report::Lesion(r) => lesion_ui(ui, r, out),
        Report::Dose(r) => dose_result_ui(ui, r),
    }
}

fn warnings_ui(ui: &mut egui::Ui, warnings: &[String]) {
    for w in warnings {
        ui.colored_label(WARN, format!("⚠ {w}"));
    }
}

/// A feature's label as a link that opens its card.
fn feature_link(ui: &mut egui::Ui, label: &str, out: &mut Vec<Command>) {
    match FeatureId::parse(label) {
        Ok(f) => {
            if ui.link(label).on_hover_text("Open its card").clicked() {
                out.push(Command::Select(Some(f)));
            }
        }
        Err(_) => {
            ui.label(label);
        }
    }
}

fn selectivity_ui(ui: &mut egui::Ui, r: &SelectivityReport, out: &mut Vec<Command>) {
    let label = |k: &str| r.sets.get(k).map_or(String::new(), |s| s.label.clone());
    ui.label(
        RichText::new(format!(
            "{} vs {}: {}",
            label("A"),
            label("B"),
            match r.onset_layer {
                Some(l) => format!(
                    "the sets first separate at layer {l} (its max |d′| above its null band by more than the embedding's); strongest at layer {}",
                    r.peak_layer
                ),
                None => "no layer's max |d′| rises above both its null band and the embedding's".into(),
            }
        ))
        .strong(),
    );
    warnings_ui(ui, &r.warnings);
    let xs: Vec<f64> = std::iter::once(-1.0)
        .chain(r.layers.iter().map(|l| l.layer as f64))
        .collect();
    let dprime: Vec<[f64; 2]> = std::iter::once([-1.0, r.embedding.max_abs_dprime])
        .chain(r.layers.iter().map(|l| [l.layer as f64, l.max_abs_dprime]))
        .collect();
    let null: Vec<f64> = std::iter::once(r.embedding.null95)
        .chain(r.layers.iter().map(|l| l.null95))
        .collect();
    let zeros = vec![0.0; xs.len()];
    let layer_axis = || {
        egui_plot::AxisHints::new_x().formatter(|m, _| {
            if m.value < -0.5 {
                "emb".into()
            } else if m.value.fract().abs() < 1e-6 {
                format!("{}", m.value as i64)
            } else {
                String::new()
            }
        })
    };
    ui.label(RichText::new(format!(
        "max |d′| over each layer's MLP neurons at the reading position; grey: 95% of max |d′| under {} label shuffles; dashed: the embedding (the floor)",
        r.shuffles
    )).weak());
    Plot::new("selectivity d'")
        .height(190.0)
        .legend(Legend::default().position(egui_plot::Corner::RightBottom))
        .allow_scroll(false)
        .custom_x_axes(vec![layer_axis()])
        .include_y(0.0)
        .show(ui, |plot| {
            plot.add(
                FilledArea::new("null band (95%)", &xs, &zeros, &null)
                    .fill_color(Color32::from_gray(110).gamma_multiply(0.5)),
            );
            plot.hline(
                HLine::new("embedding (floor)", r.embedding.max_abs_dprime)
                    .color(colors::INTERVENED)
                    .style(LineStyle::dashed_loose()),
            );
            plot.line(
                Line::new("max |d′|", PlotPoints::from(dprime))
                    .color(colors::BASELINE)
                    .width(2.0),
            );
            if let Some(l) = r.onset_layer {
                plot.vline(
                    VLine::new(format!("onset L{l}"), l as f64)
                        .color(colors::SELECTED)
                        .style(LineStyle::dotted_dense()),
                );
            }
        });
    let probe: Vec<[f64; 2]> = std::iter::once([-1.0, r.embedding.probe_acc])
        .chain(r.layers.iter().map(|l| [l.layer as f64, l.probe_acc]))
        .collect();
    let neuron: Vec<[f64; 2]> = r
        .layers
        .iter()
        .map(|l| [l.layer as f64, l.neuron_acc])
        .collect();
    ui.label(RichText::new(format!(
        "{}-fold cross-validated accuracy: a logistic probe on the residual stream, and the best single neuron (chosen inside each fold)",
        r.folds
    )).weak());
    Plot::new("selectivity acc")
        .height(150.0)
        .legend(Legend::default().position(egui_plot::Corner::RightBottom))
        .allow_scroll(false)
        .custom_x_axes(vec![layer_axis()])
        .include_y(0.4)
        .include_y(1.0)
        .show(ui, |plot| {
            plot.hline(
                HLine::new("chance", 0.5)
                    .color(Color32::from_gray(120))
                    .style(LineStyle::dotted_dense()),
            );
            plot.hline(
                HLine::new("probe on the embedding (floor)", r.embedding.probe_acc)
                    .color(colors::INTERVENED)
                    .style(LineStyle::dashed_loose()),
            );
            plot.line(
                Line::new("probe (residual stream)", PlotPoints::from(probe))
                    .color(colors::BASELINE)
                    .width(2.0),
            );
            plot.line(
                Line::new("best single neuron", PlotPoints::from(neuron))
                    .color(colors::FAST)
                    .width(1.5),
            );
        });
    ui.label(RichText::new("Top units (click one for its card)").strong());
    egui::Grid::new("top units").striped(true).show(ui, |ui| {
        for h in [
            "unit",
            "d′",
            "AUROC",
            &format!("mean {}", label("A")),
            &format!("mean {}", label("B")),
        ] {
            ui.label(RichText::new(h).weak());
        }
        ui.end_row();
        for u in &r.top_units {
            feature_link(ui, &u.feature, out);
            ui.label(format!("{:+.2}", u.dprime));
            ui.label(format!("{:.3}", u.auroc));
            ui.label(format!("{:+.3}", u.mean_a));
            ui.label(format!("{:+.3}", u.mean_b));
            ui.end_row();
        }
    });
    let dict = r.layers.iter().any(|l| l.max_abs_dprime_dict.is_some());
    egui::CollapsingHeader::new("Per layer").show(ui, |ui| {
        egui::Grid::new("per layer").striped(true).show(ui, |ui| {
            let dict_columns: &[&str] = if dict {
                &["dictionary: max |d′|", "feature"]
            } else {
                &[]
            };
            for h in [
                "layer",
                "max |d′|",
                "null 95%",
                "probe",
                "best neuron",
                "unit",
                "heads: max |d′|",
                "head",
            ]
            .iter()
            .chain(dict_columns)
            {
                ui.label(RichText::new(*h).weak());
            }
            ui.end_row();
            ui.label("embedding");
            ui.label(format!("{:.2}", r.embedding.max_abs_dprime));
            ui.label(format!("{:.2}", r.embedding.null95));
            ui.label(format!("{:.0}%", r.embedding.probe_acc * 100.0));
            for _ in 0..4 {
                ui.label("");
            }
            ui.end_row();
            for l in &r.layers {
                let above = l.max_abs_dprime > l.null95;
                ui.label(l.layer.to_string());
                ui.label(
                    RichText::new(format!("{:.2}", l.max_abs_dprime))
                        .strong()
                        .color(if above {
                            colors::BASELINE
                        } else {
                            Color32::GRAY
                        }),
                );
                ui.label(format!("{:.2}", l.null95));
                ui.label(format!("{:.0}%", l.probe_acc * 100.0));
                ui.label(format!("{:.0}%", l.neuron_acc * 100.0));
                feature_link(ui, &l.best, out);
                ui.label(format!("{:.2}", l.max_abs_dprime_heads));
                feature_link(ui, &l.best_head, out);
                if dict {
                    match l.max_abs_dprime_dict {
                        Some(v) => {
                            ui.label(format!("{v:.2}"));
                            feature_link(ui, &l.best_dict, out);
                        }
                        None => {
                            ui.label("");
                            ui.label("");
                        }
                    }
                }
                ui.end_row();
            }
        });
    });
}

fn induction_ui(ui: &mut egui::Ui, r: &InductionReport, out: &mut Vec<Command>) {
    ui.label(
        RichText::new(format!(
            "Loss per token: first copy {:.2} · second copy {:.2} · control {:.2} nats ({} sequences of {:.1} tokens)",
            r.nll_first, r.nll_second, r.nll_control, r.sequences, r.mean_copy_tokens
        ))
        .strong(),
    );
    if r.nll_second >= r.nll_first {
        ui.colored_label(WARN, "⚠ the second copy is not predicted better than the first: no induction shows in the loss");
    }
    ui.label(RichText::new("Each head's mean attention from a token of the second copy to the token after its first occurrence; the control reads the same cells of a sequence whose second half differs. Click a cell for the head's card.").weak());
    let g = &r.grid;
    let (layers, heads, max) = (g.layers, g.heads, g.max);
    let grid = &g.cells;
    ui.horizontal(|ui| {
        for (panel, title) in ["score", "control"].into_iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(title);
                let cell = egui::vec2(22.0, (300.0 / layers.max(1) as f32).clamp(6.0, 18.0));
                let size = egui::vec2(cell.x * heads as f32 + 30.0, cell.y * layers as f32 + 14.0);
                let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
                let painter = ui.painter_at(rect);
                let origin = rect.min + egui::vec2(30.0, 0.0);
                for l in 0..layers {
                    if layers <= 12 || l % 5 == 0 {
                        painter.text(
                            egui::pos2(rect.min.x + 26.0, origin.y + (l as f32 + 0.5) * cell.y),
                            egui::Align2::RIGHT_CENTER,
                            format!("L{l}"),
                            egui::FontId::proportional(9.0),
                            ui.visuals().weak_text_color(),
                        );
                    }
                    for h in 0..heads {
                        let v = if panel == 0 {
                            grid[l * heads + h].0
                        } else {
                            grid[l * heads + h].1
                        };
                        let r = egui::Rect::from_min_size(
                            origin + egui::vec2(h as f32 * cell.x, l as f32 * cell.y),
                            cell,
                        );
                        painter.rect_filled(
                            r.shrink(0.5),
                            0.0,
                            colors::sequential(v as f32, max as f32),
                        );
                    }
                }
                if let Some(pos) = resp.hover_pos() {
                    let rel = pos - origin;
                    let (h, l) = ((rel.x / cell.x).floor(), (rel.y / cell.y).floor());
                    if h >= 0.0 && l >= 0.0 && (h as usize) < heads && (l as usize) < layers {
                        let (h, l) = (h as usize, l as usize);
                        let (s, c) = grid[l * heads + h];
                        let resp = resp
                            .clone()
                            .on_hover_text(format!("L{l}H{h}: score {s:.3}, control {c:.3}"));
                        if resp.clicked() {
                            out.push(Command::Select(Some(FeatureId::head(l, h))));
                        }
                    }
                }
            });
        }
    });
    ui.label(RichText::new("Top heads").strong());
    egui::Grid::new("top heads").striped(true).show(ui, |ui| {
        for h in ["head", "score", "control"] {
            ui.label(RichText::new(h).weak());
        }
        ui.end_row();
        for h in r.heads.iter().take(12) {
            feature_link(ui, &h.head, out);
            ui.label(format!("{:.3}", h.score));
            ui.label(format!("{:.3}", h.control));
            ui.end_row();
        }
    });
}

fn lesion_ui(ui: &mut egui::Ui, r: &LesionReport, out: &mut Vec<Command>) {
    ui.label(
        RichText::new(format!(
            "Held-out loss without a lesion: A ({}) {:.3} · B ({}) {:.3} nats per token ({} + {} tokens)",
            r.labels.a, r.baseline.a, r.labels.b, r.baseline.b, r.tokens.a, r.tokens.b
        ))
        .strong(),
    );
    ui.colored_label(WARN, format!("⚠ {}", r.caveat));
    ui.label(RichText::new(format!("Change in each set's held-out loss (nats/token) when a group is ablated at positions {}; zero and mean side by side.", r.ablated_positions)).weak());
    let ablations: Vec<Ablation> = Ablation::ALL
        .into_iter()
        .filter(|a| r.conditions.iter().any(|c| c.ablation == *a))
        .collect();
    egui::Grid::new("lesion table")
        .striped(true)
        .show(ui, |ui| {
            ui.label(RichText::new("group").weak());
            for a in &ablations {
                ui.label(RichText::new(format!("{}: ΔA", a.name())).weak());
                ui.label(RichText::new(format!("{}: ΔB", a.name())).weak());
                ui.label(RichText::new("ΔA/ΔB").weak());
            }
            ui.end_row();
            for g in &r.groups {
                ui.label(&g.name).on_hover_text(g.units.join(" "));
                for a in &ablations {
                    match r
                        .conditions
                        .iter()
                        .find(|c| c.group == g.name && c.ablation == *a)
                    {
                        Some(c) => {
                            ui.label(delta_text(c.delta.a));
                            ui.label(delta_text(c.delta.b));
                            ui.label(c.ratio.map_or("—".into(), |x| format!("{x:.2}")));
                        }
                        None => {
                            for _ in 0..3 {
                                ui.label("");
                            }
                        }
                    }
                }
                ui.end_row();
            }
        });
    for g in &r.groups {
        egui::CollapsingHeader::new(format!("{} ({} units)", g.name, g.units.len()))
            .id_salt(format!("group {}", g.name))
            .show(ui, |ui| {
                ui.horizontal_wrapped(|ui| {
                    for u in &g.units {
                        feature_link(ui, u, out);
                    }
                });
            });
    }
}

fn delta_text(v: f64) -> RichText {
    let t = RichText::new(format!("{v:+.3}"));
    if v > 0.05 {
        t.color(colors::WORSE)
    } else {
        t
    }
}
