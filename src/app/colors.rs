//! Colour maps and design tokens. No colour literal appears anywhere else in the app.

use egui::Color32;

/// Cells with no data.
pub const EMPTY: Color32 = Color32::from_gray(40);
/// Baseline series (plots, bars).
pub const BASELINE: Color32 = Color32::from_rgb(120, 160, 220);
/// Intervened series.
pub const INTERVENED: Color32 = Color32::from_rgb(235, 130, 60);
/// A token whose loss got worse, a continuation token that differs.
pub const WORSE: Color32 = Color32::from_rgb(220, 70, 70);
/// Selection outline.
pub const SELECTED: Color32 = Color32::from_rgb(250, 220, 80);
/// An ablated row's marker.
pub const ABLATED: Color32 = Color32::from_rgb(200, 60, 60);
/// Errors and warnings in text.
pub const ERROR: Color32 = Color32::from_rgb(240, 90, 90);
/// The rule between side-by-side texts.
pub const GUTTER: Color32 = Color32::from_gray(90);
/// The fast path's marker: numbers that are not the exact reference.
pub const FAST: Color32 = Color32::from_rgb(80, 200, 210);
/// Text on a coloured cell.
pub const CELL_TEXT: Color32 = Color32::from_gray(20);

const NEG: [f32; 3] = [49.0, 104.0, 200.0];
const MID: [f32; 3] = [245.0, 245.0, 245.0];
const POS: [f32; 3] = [200.0, 45.0, 45.0];

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> Color32 {
    let c = |i: usize| (a[i] + (b[i] - a[i]) * t).round().clamp(0.0, 255.0) as u8;
    Color32::from_rgb(c(0), c(1), c(2))
}

/// Diverging map: blue (−scale) · white (0) · red (+scale); values beyond ±scale saturate.
pub fn diverging(value: f32, scale: f32) -> Color32 {
    if !value.is_finite() {
        return EMPTY;
    }
    let t = (value / scale.max(1e-12)).clamp(-1.0, 1.0);
    if t >= 0.0 {
        mix(MID, POS, t)
    } else {
        mix(MID, NEG, -t)
    }
}

/// Sequential map for non-negative measures: dark (0) to bright yellow (scale).
pub fn sequential(value: f32, scale: f32) -> Color32 {
    if !value.is_finite() {
        return EMPTY;
    }
    let t = (value / scale.max(1e-12)).clamp(0.0, 1.0);
    if t < 0.5 {
        mix([20.0, 24.0, 60.0], [160.0, 40.0, 120.0], t * 2.0)
    } else {
        mix([160.0, 40.0, 120.0], [250.0, 230.0, 90.0], (t - 0.5) * 2.0)
    }
}

/// The diverging map for signed values, the sequential one for non-negative measures.
pub fn scaled(value: f32, scale: f32, diverging: bool) -> Color32 {
    if diverging {
        self::diverging(value, scale)
    } else {
        sequential(value, scale)
    }
}

/// RGB bytes of a colour, for PNG export.
pub fn rgb(c: Color32) -> [u8; 3] {
    [c.r(), c.g(), c.b()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_is_white_at_zero_and_saturates() {
        assert_eq!(diverging(0.0, 1.0), Color32::from_rgb(245, 245, 245));
        assert_eq!(diverging(5.0, 1.0), diverging(1.0, 1.0));
        assert_eq!(diverging(-1.0, 1.0), Color32::from_rgb(49, 104, 200));
        assert_eq!(diverging(f32::NAN, 1.0), EMPTY);
    }
}
