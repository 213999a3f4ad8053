//! The views of the viewer. Each draws from plain data ([`ViewCtx`]: the runtime's results and
//! the derived maps), may change display settings in [`AppState`], keeps its own UI state, and
//! pushes [`Command`]s for anything else; `HubelApp::apply` carries them out.

mod card;
mod chrome;
mod interventions;
mod maps;
mod output;
mod probe;

use super::derived::Derived;
use super::fonts::CjkFont;
use super::{AppState, Command, Runtime};

/// How token text is shown (whitespace made visible, stray bytes as `<E8>`): see `app/text.rs`.
pub use super::text::{bytes_hover, token_label, visible};

/// What every view may read.
pub struct ViewCtx<'a> {
    pub runtime: &'a Runtime,
    pub derived: &'a Derived,
    pub error: Option<&'a str>,
    pub cjk: &'a CjkFont,
}

/// The views with UI state of their own.
#[derive(Default)]
pub struct Views {
    maps: maps::MapsView,
    card: card::CardView,
}

/// Side panels' default widths for a window `width` wide: narrow windows keep the centre usable.
fn side_widths(width: f32) -> (f32, f32) {
    (
        (width * 0.2).clamp(190.0, 300.0),
        (width * 0.26).clamp(250.0, 380.0),
    )
}

impl Views {
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        cx: &ViewCtx,
        out: &mut Vec<Command>,
    ) {
        let (width, height) = (ui.available_width(), ui.available_height());
        chrome::menu_bar_ui(ui, state, cx, out);
        chrome::status_bar_ui(ui, cx, out);
        if cx.runtime.model.is_none() {
            chrome::welcome_ui(ui, cx, out);
            return;
        }
        let (left, right) = side_widths(width);
        probe::probe_panel_ui(ui, state, cx, out, left);
        self.card.panel_ui(ui, state, cx, out, right);
        output::output_panel_ui(ui, state, cx, out, (height * 0.3).clamp(170.0, 300.0));
        egui::CentralPanel::default().show(ui, |ui| {
            interventions::interventions_bar_ui(ui, state, cx, out);
            ui.separator();
            let h = ui.available_height();
            egui::Panel::top("layer map panel")
                .resizable(true)
                .default_size(h * 0.45)
                .min_size(60.0)
                .max_size((h - 80.0).max(60.0))
                .show(ui, |ui| self.maps.layer_map_ui(ui, state, cx, out));
            self.maps.heatmap_ui(ui, state, cx, out);
        });
    }
}
