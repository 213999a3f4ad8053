//! The probe: a multiline input (runs as you type, debounced, and on Ctrl+Enter) and the token strip.

use super::super::HubelApp;
use super::visible;

impl HubelApp {
    pub(crate) fn probe_panel_ui(&mut self, ui: &mut egui::Ui, now: f64) {
        egui::Panel::left("probe")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                ui.heading("Probe");
                let label = ui.label("Probe text");
                let edit = egui::TextEdit::multiline(&mut self.state.probe)
                    .desired_rows(5)
                    .desired_width(f32::INFINITY)
                    .hint_text("Type a sentence; the model runs as you type");
                let response = ui.add(edit).labelled_by(label.id);
                if response.changed() {
                    self.edited_at = Some(now);
                }
                ui.horizontal(|ui| {
                    if ui.button("Run").on_hover_text("Ctrl+Enter").clicked() {
                        self.request_run(now);
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
                let Some(result) = &self.result else { return };
                ui.label(format!("{} tokens", result.tokens.len()));
                egui::ScrollArea::vertical()
                    .id_salt("tokens")
                    .max_height(ui.available_height())
                    .show(ui, |ui| {
                        ui.horizontal_wrapped(|ui| {
                            ui.spacing_mut().item_spacing.x = 2.0;
                            for (pos, t) in result.tokens.iter().enumerate() {
                                ui.add(
                                    egui::Label::new(
                                        egui::RichText::new(visible(&t.text)).monospace(),
                                    )
                                    .sense(egui::Sense::hover()),
                                )
                                .on_hover_text(format!(
                                    "position {pos} · id {} · {}",
                                    t.id,
                                    visible(&t.text)
                                ));
                            }
                        });
                    });
            });
    }
}
