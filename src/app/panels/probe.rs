//! The probe: a multiline input (runs as you type, debounced, and on Ctrl+Enter) and the token
//! strip, whose tokens choose the position the output panel reads.

use super::super::{colors, AppState, Command};
use super::{bytes_hover, token_label, ViewCtx};

pub fn probe_panel_ui(
    ui: &mut egui::Ui,
    state: &mut AppState,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    width: f32,
) {
    egui::Panel::left("probe")
        .resizable(true)
        .default_size(width)
        .show(ui, |ui| {
            super::within_panel(ui, |ui| {
            ui.heading("Probe");
            let label = ui.label("Probe text");
            let edit = egui::TextEdit::multiline(&mut state.probe)
                .desired_rows(5)
                .desired_width(f32::INFINITY)
                .hint_text("Type a sentence; the model runs as you type");
            let response = ui.add(edit).labelled_by(label.id);
            if response.changed() {
                out.push(Command::ProbeEdited);
            }
            ui.horizontal_wrapped(|ui| {
                if ui.button("Run").on_hover_text("Ctrl+Enter").clicked() {
                    out.push(Command::Run);
                }
                ui.label(
                    egui::RichText::new(
                        "Ctrl+Enter runs · Ctrl+Z undoes an edit · Esc clears the selection",
                    )
                    .weak()
                    .small(),
                );
            });
            ui.separator();
            let Some(result) = &cx.runtime.result else {
                return;
            };
            let n = result.tokens.len();
            let chosen = cx.derived.next.position;
            ui.label(crate::count(n, "token", "tokens"));
            ui.label(
                egui::RichText::new(format!(
                    "Click a token to read the next-token distribution after it (now: position {chosen}{})",
                    if cx.derived.next.is_last { ", the last" } else { "" }
                ))
                .weak()
                .small(),
            );
            egui::ScrollArea::vertical()
                .id_salt("tokens")
                .max_height(ui.available_height())
                .show(ui, |ui| {
                    ui.horizontal_wrapped(|ui| {
                        ui.spacing_mut().item_spacing.x = 2.0;
                        for (pos, t) in result.tokens.iter().enumerate() {
                            let mut text = egui::RichText::new(token_label(t)).monospace();
                            if pos == chosen {
                                text = text.background_color(colors::SELECTED).color(colors::CELL_TEXT);
                            }
                            let r = ui
                                .add(egui::Label::new(text).sense(egui::Sense::click()))
                                .on_hover_text(format!(
                                    "position {pos} · id {} · {} · {}\nclick: show the next token after it",
                                    t.id,
                                    token_label(t),
                                    bytes_hover(t)
                                ));
                            if r.clicked() {
                                let p = (pos + 1 < n).then_some(pos);
                                out.push(Command::SetOutputPosition(p));
                            }
                        }
                    });
                });
            })
        });
}
