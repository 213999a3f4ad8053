//! The interventions bar: the A/B switch between the baseline and intervened views, then one chip
//! per active edit (mode and value editable, removable) and Clear all. The bar has a fixed height
//! and scrolls sideways, so adding a chip never moves anything under the cursor.

use super::super::{AppState, Command, ViewMode};
use super::ViewCtx;
use crate::hooks::Op;

/// The modes a chip offers, with their default values.
const MODES: [(&str, Op); 5] = [
    ("zero", Op::Zero),
    ("mean", Op::Mean),
    ("set", Op::Set { value: 0.0 }),
    ("add", Op::Add { value: 4.0 }),
    ("scale", Op::Scale { factor: 2.0 }),
];

/// The bar's height: one row of chips.
const BAR_HEIGHT: f32 = 30.0;

fn mode_name(op: &Op) -> &'static str {
    match op {
        Op::Zero => "zero",
        Op::Mean | Op::MeanOf { .. } => "mean",
        Op::Set { .. } => "set",
        Op::Add { .. } | Op::AddDirection { .. } | Op::AddScaled { .. } => "add",
        Op::Scale { .. } => "scale",
    }
}

/// A short label for an intervention's target: `L10N123`, `L5H3`, a dictionary feature's edit
/// (`L6D42 ablated (fruit)`), or the hook with indices.
fn target_label(iv: &crate::hooks::Intervention) -> String {
    match (crate::features::FeatureId::of_intervention(iv), &iv.op) {
        (Some(f), Op::AddScaled { label, .. }) => format!("L{}{label}", f.layer),
        (Some(f), _) => f.label(),
        (None, _) => crate::probe::describe(iv),
    }
}

pub fn interventions_bar_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
) {
    let mut next = state.interventions.clone();
    let mut changed = false;
    let has_edits = cx
        .runtime
        .result
        .as_ref()
        .is_some_and(|r| r.intervened.is_some());
    ui.allocate_ui_with_layout(
        egui::vec2(ui.available_width(), BAR_HEIGHT),
        egui::Layout::left_to_right(egui::Align::Center),
        |ui| {
            ui.set_min_height(BAR_HEIGHT);
            ui.label("View");
            for mode in [
                ViewMode::Baseline,
                ViewMode::Intervened,
                ViewMode::Difference,
            ] {
                let r = ui.add_enabled(
                    mode == ViewMode::Baseline || has_edits,
                    egui::Button::selectable(state.view == mode, mode.name()),
                );
                if r.clicked() {
                    state.view = mode;
                }
            }
            ui.separator();
            ui.label(format!("Interventions ({})", state.interventions.len()));
            if !state.interventions.is_empty() && ui.button("Clear all").clicked() {
                next.clear();
                changed = true;
            }
            egui::ScrollArea::horizontal()
                .id_salt("chips")
                .max_height(BAR_HEIGHT)
                .auto_shrink([false, true])
                .show(ui, |ui| {
                    ui.horizontal(|ui| {
                        if state.interventions.is_empty() {
                            ui.label(
                                egui::RichText::new(
                                    "none: tick a feature in the heatmap to ablate it",
                                )
                                .weak(),
                            );
                        }
                        let mut remove = None;
                        for (i, iv) in next.iter_mut().enumerate() {
                            let target = target_label(iv);
                            egui::Frame::group(ui.style())
                                .inner_margin(2.0)
                                .show(ui, |ui| {
                                    ui.horizontal(|ui| {
                                        ui.label(egui::RichText::new(&target).monospace());
                                        let label = ui.label("mode");
                                        egui::ComboBox::from_id_salt(("mode", i))
                                            .selected_text(mode_name(&iv.op))
                                            .width(56.0)
                                            .show_ui(ui, |ui| {
                                                for (name, op) in MODES.iter() {
                                                    if ui
                                                        .selectable_label(
                                                            mode_name(&iv.op) == *name,
                                                            *name,
                                                        )
                                                        .clicked()
                                                        && mode_name(&iv.op) != *name
                                                    {
                                                        iv.op = op.clone();
                                                        changed = true;
                                                    }
                                                }
                                            })
                                            .response
                                            .labelled_by(label.id);
                                        let value = match &mut iv.op {
                                            Op::Set { value } | Op::Add { value } => Some(value),
                                            Op::Scale { factor } => Some(factor),
                                            _ => None,
                                        };
                                        if let Some(value) = value {
                                            let label = ui.label("value");
                                            if ui
                                                .add(egui::DragValue::new(value).speed(0.1))
                                                .labelled_by(label.id)
                                                .changed()
                                            {
                                                changed = true;
                                            }
                                        }
                                        let remove_label = format!("Remove {target}");
                                        let button = ui.small_button("✕");
                                        button.widget_info(|| {
                                            egui::WidgetInfo::labeled(
                                                egui::Role::Button,
                                                true,
                                                &remove_label,
                                            )
                                        });
                                        if button.on_hover_text(&remove_label).clicked() {
                                            remove = Some(i);
                                        }
                                    });
                                });
                        }
                        if let Some(i) = remove {
                            next.remove(i);
                            changed = true;
                        }
                    });
                });
        },
    );
    if changed {
        out.push(Command::SetInterventions(next));
    }
}
