//! The views of the viewer. Each draws from plain data ([`ViewCtx`]: the runtime's results and
//! the derived maps), may change display settings in [`AppState`], keeps its own UI state, and
//! pushes [`Command`]s for anything else; `HubelApp::apply` carries them out. The Jobs list
//! (`jobs`) sits above the status line whenever a job is listed.

mod card;
mod chrome;
mod circuits;
mod dictionary;
mod experiments;
mod interventions;
mod jobs;
mod maps;
mod output;
mod probe;
mod receptive;

use super::derived::Derived;
use super::fonts::CjkFont;
use super::{AppState, Command, Runtime};

/// How token text is shown (whitespace made visible, stray bytes as `<E8>`): see `app/text.rs`.
pub use super::text::{bytes_hover, token_label};

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

/// Grid marks at whole token positions for a plot over `n` tokens: every token when few, every
/// 5th or 10th when many, so the axis labels (the tokens) do not overlap.
fn token_grid(n: usize) -> Box<dyn Fn(egui_plot::GridInput) -> Vec<egui_plot::GridMark>> {
    let step = match n {
        0..=16 => 1.0,
        17..=60 => 5.0,
        _ => 10.0,
    };
    egui_plot::uniform_grid_spacer(move |_| [step, step * 5.0, step * 10.0])
}

/// An x axis labelled with the probe's tokens at whole positions; labels stay visible down to
/// 24 px apart (egui_plot's default hides x labels closer than 60 px).
fn token_x_axis(tokens: Vec<String>) -> egui_plot::AxisHints<'static> {
    egui_plot::AxisHints::new_x()
        .formatter(move |mark, _| {
            let v = mark.value;
            if v.fract().abs() > 1e-6 || v < 0.0 {
                return String::new();
            }
            tokens.get(v as usize).cloned().unwrap_or_default()
        })
        .label_spacing(24.0..=36.0)
}

/// A plot over the probe's tokens: grid marks at whole positions, the tokens as x labels, and a
/// hover label naming the token and the `what` (e.g. `loss `) of the nearest point.
fn token_plot<'a>(
    plot: egui_plot::Plot<'a>,
    tokens: &[String],
    what: &'static str,
) -> egui_plot::Plot<'a> {
    let hover_tokens = tokens.to_vec();
    plot.x_grid_spacer(token_grid(tokens.len()))
        .custom_x_axes(vec![token_x_axis(tokens.to_vec())])
        .label_formatter(move |hover| {
            let egui_plot::HoverPosition::NearDataPoint {
                plot_name,
                position: p,
                ..
            } = hover
            else {
                return None;
            };
            let pos = p.x.round().max(0.0) as usize;
            let t = hover_tokens.get(pos).map_or("", String::as_str);
            Some(format!(
                "{plot_name}\n\"{t}\" (position {pos}): {what}{:.4}",
                p.y
            ))
        })
}

/// Marks numbers computed on the fast path (nothing for the exact path, the reference), so
/// nobody compares them with the reference by mistake.
fn precision_badge(ui: &mut egui::Ui, cx: &ViewCtx) {
    if cx.runtime.precision() == Some(crate::model::Precision::Fast) {
        ui.label(
            egui::RichText::new("fast path (4-bit)")
                .color(super::colors::FAST)
                .strong(),
        )
        .on_hover_text(
            "These numbers come from the fast path: 4-bit weight blocks × 8-bit activations. \
             The exact path (f32, matching HF transformers) is the reference; the fidelity \
             meter under Output says how far this probe's logits are from it.",
        );
    }
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
        jobs::jobs_panel_ui(ui, cx, out);
        if cx.runtime.model.is_none() {
            chrome::welcome_ui(ui, cx, out);
            return;
        }
        let (left, right) = side_widths(width);
        probe::probe_panel_ui(ui, state, cx, out, left);
        self.card.panel_ui(ui, state, cx, out, right);
        output::output_panel_ui(ui, state, cx, out, (height * 0.28).clamp(150.0, 300.0));
        egui::CentralPanel::default().show(ui, |ui| {
            interventions::interventions_bar_ui(ui, state, cx, out);
            ui.separator();
            let h = ui.available_height();
            // Room for every layer at 5-6 px a row plus the header, within half of the centre.
            // (Not `clamp`: below a 240 px centre its bounds cross, and clamp panics.)
            let map = (cx.runtime.layers() as f32 * 5.5 + 64.0)
                .max(120.0)
                .min((h * 0.5).max(60.0));
            egui::Panel::top("layer map panel")
                .resizable(true)
                .default_size(map)
                .min_size(60.0)
                .max_size((h - 80.0).max(60.0))
                .show(ui, |ui| {
                    // Fill the panel, so its size is the one chosen, not its first content's.
                    ui.set_min_height(ui.available_height());
                    self.maps.layer_map_ui(ui, state, cx, out)
                });
            self.maps.heatmap_ui(ui, state, cx, out);
        });
        experiments::experiments_window_ui(ui.ctx(), state, cx, out, egui::vec2(width, height));
        circuits::circuits_window_ui(ui.ctx(), state, cx, out, egui::vec2(width, height));
        dictionary::dictionary_window_ui(ui.ctx(), state, cx, out, egui::vec2(width, height));
    }
}

/// Shows a side panel's contents in exactly the panel's present width: a line wider than the
/// panel is clipped instead of widening it, so only a drag of its edge changes the width (a panel
/// that grew to its widest content had a width that depended on which answers had arrived in
/// which frame).
pub(crate) fn within_panel<R>(ui: &mut egui::Ui, add: impl FnOnce(&mut egui::Ui) -> R) -> R {
    let rect = ui.available_rect_before_wrap();
    let mut child = ui.new_child(egui::UiBuilder::new().max_rect(rect).layout(*ui.layout()));
    child.set_clip_rect(rect.intersect(ui.clip_rect()));
    let r = add(&mut child);
    ui.allocate_rect(rect, egui::Sense::hover());
    r
}

/// A busy indicator that steps four times a second. egui's spinner asks for a new frame every
/// frame; without a GPU each frame is drawn by the CPU (Mesa's llvmpipe: during a series of
/// ablation clicks under Xvfb its threads used 1.9 of the 2 cores' 3 seconds), taking it from
/// the model while it computes.
pub(crate) fn spinner(ui: &mut egui::Ui) -> egui::Response {
    let size = ui.style().spacing.interact_size.y;
    let (rect, response) = ui.allocate_exact_size(egui::vec2(size, size), egui::Sense::hover());
    if ui.is_rect_visible(rect) {
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(250));
        let color = ui.visuals().strong_text_color();
        let radius = rect.height().min(rect.width()) * 0.5 - 2.0;
        // A quarter-turn arc that steps round with time.
        let start = (ui.input(|i| i.time) * 4.0).floor() / 4.0 * std::f64::consts::TAU;
        let points: Vec<egui::Pos2> = (0..12)
            .map(|i| {
                let angle = start + i as f64 / 11.0 * std::f64::consts::FRAC_PI_2 * 1.5;
                let (sin, cos) = angle.sin_cos();
                rect.center() + radius * egui::vec2(cos as f32, sin as f32)
            })
            .collect();
        ui.painter()
            .add(egui::Shape::line(points, egui::Stroke::new(3.0, color)));
    }
    response
}
