//! An experiment report's figures as SVG text, rasterised to PNG by resvg with egui's bundled
//! fonts (the same picture on every machine, no display needed). Plain data in: the reports.

use std::fmt::Write;

use super::induction::InductionReport;
use super::lesion::LesionReport;
use super::selectivity::SelectivityReport;

/// Colours of the figures (the viewer's palette lives in app/colors.rs; these are for print).
const INK: &str = "#222";
const GRID: &str = "#ddd";
const LINE_A: &str = "#1f6fb4";
const LINE_B: &str = "#d2691e";
const NULL_BAND: &str = "#cfcfcf";
const FLOOR: &str = "#9a2d8f";

/// A plot area: data ranges mapped to a pixel rectangle (y grows upwards in data).
struct Axes {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.width
    }

    fn py(&self, y: f64) -> f64 {
        self.top + self.height - (y - self.y.0) / (self.y.1 - self.y.0) * self.height
    }

    /// Frame, horizontal grid lines with labels at `ticks`, a title and the axis names.
    fn frame(&self, s: &mut String, title: &str, x_name: &str, y_name: &str, ticks: &[f64]) {
        for &t in ticks {
            let y = self.py(t);
            let _ = write!(
                s,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{GRID}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="{INK}">{}</text>"#,
                self.left,
                self.left + self.width,
                self.left - 5.0,
                y + 4.0,
                trim(t)
            );
        }
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="{INK}"/>"#,
            self.left, self.top, self.width, self.height
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="14" fill="{INK}">{}</text>"#,
            self.left,
            self.top - 10.0,
            esc(title)
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="{INK}">{}</text>"#,
            self.left + self.width / 2.0,
            self.top + self.height + 36.0,
            esc(x_name)
        );
        let (cx, cy) = (self.left - 42.0, self.top + self.height / 2.0);
        let _ = write!(
            s,
            r#"<text x="{cx:.1}" y="{cy:.1}" font-size="12" text-anchor="middle" fill="{INK}" transform="rotate(-90 {cx:.1} {cy:.1})">{}</text>"#,
            esc(y_name)
        );
    }

    /// Labels under the x axis at whole values `from..=to` every `step`, `name(x)` each.
    fn x_labels(
        &self,
        s: &mut String,
        xs: impl Iterator<Item = f64>,
        name: impl Fn(f64) -> String,
    ) {
        for x in xs {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="{INK}">{}</text>"#,
                self.px(x),
                self.top + self.height + 16.0,
                esc(&name(x))
            );
        }
    }

    fn polyline(&self, s: &mut String, points: &[(f64, f64)], color: &str, dash: bool) {
        let pts: Vec<String> = points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let dash = if dash {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in points.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                self.px(p.0),
                self.py(p.1)
            );
        }
    }
}

fn legend(s: &mut String, x: f64, y: f64, items: &[(&str, &str, bool)]) {
    for (i, (color, name, dash)) in items.iter().enumerate() {
        let yy = y + i as f64 * 16.0;
        let dash = if *dash {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{color}" stroke-width="{}"{dash}/><text x="{:.1}" y="{:.1}" font-size="11" fill="{INK}">{}</text>"#,
            x + 22.0,
            if *color == NULL_BAND { 8 } else { 2 },
            x + 28.0,
            yy + 4.0,
            esc(name)
        );
    }
}

fn svg(width: f64, height: f64, body: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}</svg>"#
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Round tick values covering `0..=max`.
fn ticks(max: f64) -> Vec<f64> {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * mag);
    (0..=((max / step).ceil() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

/// Selectivity across depth: each layer's max |d′| with its null band and the embedding's as
/// the floor (left); the probe's and the best single neuron's cross-validated accuracy (right).
pub fn selectivity(r: &SelectivityReport) -> String {
    let mut s = String::new();
    let n = r.layers.len();
    let x = (-1.0, n as f64 - 0.5);
    let ymax = r
        .layers
        .iter()
        .flat_map(|l| [l.max_abs_dprime, l.null95])
        .chain([r.embedding.max_abs_dprime, r.embedding.null95])
        .fold(0.5f64, f64::max)
        * 1.1;
    let t = ticks(ymax);
    let a = Axes {
        left: 70.0,
        top: 40.0,
        width: 420.0,
        height: 260.0,
        x: (x.0 - 0.5, x.1),
        y: (0.0, *t.last().unwrap_or(&ymax)),
    };
    // The null band: from 0 to the 95th percentile of each layer's max |d′| under shuffles.
    let mut band: Vec<(f64, f64)> = vec![(-1.0, r.embedding.null95)];
    band.extend(r.layers.iter().map(|l| (l.layer as f64, l.null95)));
    let mut pts: Vec<String> = band
        .iter()
        .map(|&(xx, y)| format!("{:.1},{:.1}", a.px(xx), a.py(y)))
        .collect();
    pts.push(format!(
        "{:.1},{:.1}",
        a.px(band.last().map_or(0.0, |b| b.0)),
        a.py(0.0)
    ));
    pts.push(format!("{:.1},{:.1}", a.px(-1.0), a.py(0.0)));
    let _ = write!(
        s,
        r#"<polygon points="{}" fill="{NULL_BAND}" opacity="0.7"/>"#,
        pts.join(" ")
    );
    a.frame(
        &mut s,
        &format!("{}: max |d'| per layer", r.protocol),
        "layer (emb = the embedding)",
        "max |d'| over MLP neurons",
        &t,
    );
    let floor = a.py(r.embedding.max_abs_dprime);
    let _ = write!(
        s,
        r#"<line x1="{:.1}" y1="{floor:.1}" x2="{:.1}" y2="{floor:.1}" stroke="{FLOOR}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
        a.left,
        a.left + a.width
    );
    let mut d: Vec<(f64, f64)> = vec![(-1.0, r.embedding.max_abs_dprime)];
    d.extend(r.layers.iter().map(|l| (l.layer as f64, l.max_abs_dprime)));
    a.polyline(&mut s, &d, LINE_A, false);
    // Layer labels every 5 when there are many (layer 0 then unlabelled: it would touch "emb").
    let step = if n > 16 { 5 } else { 1 };
    let first = if step > 1 { step } else { 0 };
    let layer_labels = |axes: &Axes, s: &mut String| {
        axes.x_labels(
            s,
            std::iter::once(-1.0).chain((first..n).step_by(step).map(|l| l as f64)),
            |v| {
                if v < 0.0 {
                    "emb".into()
                } else {
                    format!("{v}")
                }
            },
        )
    };
    layer_labels(&a, &mut s);
    if let Some(onset) = r.onset_layer {
        let xx = a.px(onset as f64);
        let _ = write!(
            s,
            r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="{INK}" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" font-size="11" fill="{INK}">onset L{onset}</text>"#,
            a.top,
            a.top + a.height,
            xx + 3.0,
            a.top + 14.0
        );
    }
    legend(
        &mut s,
        a.left + 8.0,
        a.top + a.height + 52.0,
        &[
            (LINE_A, "max |d'|", false),
            (
                NULL_BAND,
                "null: 95th percentile under label shuffles",
                false,
            ),
            (FLOOR, "the embedding's max |d'| (floor)", true),
        ],
    );
    // Accuracies, from 0.4 (or lower, to hold every value: paired probes can fall below chance).
    let low = r
        .layers
        .iter()
        .flat_map(|l| [l.probe_acc, l.neuron_acc])
        .chain([r.embedding.probe_acc])
        .filter(|v| v.is_finite())
        .fold(0.4f64, f64::min);
    let low = (low * 10.0).floor() / 10.0;
    let acc_ticks: Vec<f64> = (0..=((1.0 - low) * 10.0).round() as usize)
        .map(|i| low + i as f64 / 10.0)
        .collect();
    let b = Axes {
        left: 600.0,
        top: 40.0,
        width: 420.0,
        height: 260.0,
        x: a.x,
        y: (low, 1.0),
    };
    b.frame(
        &mut s,
        &format!("cross-validated accuracy ({}-fold)", r.folds),
        "layer (emb = the embedding)",
        "accuracy",
        &acc_ticks,
    );
    let mut probe: Vec<(f64, f64)> = vec![(-1.0, r.embedding.probe_acc)];
    probe.extend(r.layers.iter().map(|l| (l.layer as f64, l.probe_acc)));
    b.polyline(&mut s, &probe, LINE_A, false);
    let neuron: Vec<(f64, f64)> = r
        .layers
        .iter()
        .map(|l| (l.layer as f64, l.neuron_acc))
        .collect();
    b.polyline(&mut s, &neuron, LINE_B, false);
    let floor = b.py(r.embedding.probe_acc.max(low));
    let _ = write!(
        s,
        r#"<line x1="{:.1}" y1="{floor:.1}" x2="{:.1}" y2="{floor:.1}" stroke="{FLOOR}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
        b.left,
        b.left + b.width
    );
    layer_labels(&b, &mut s);
    legend(
        &mut s,
        b.left + 8.0,
        b.top + b.height + 52.0,
        &[
            (LINE_A, "logistic probe on the residual stream", false),
            (LINE_B, "best single neuron (nested CV)", false),
            (FLOOR, "probe on the embedding (floor)", true),
        ],
    );
    svg(1060.0, 410.0, &s)
}

/// A white-to-blue colour for `v` in 0..=1.
fn blue(v: f64) -> String {
    let v = v.clamp(0.0, 1.0);
    let c = |lo: f64, hi: f64| (lo + (hi - lo) * v).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        c(255.0, 8.0),
        c(255.0, 69.0),
        c(255.0, 148.0)
    )
}

/// Induction scores as a layers × heads grid, beside the controls' on the same scale.
pub fn induction(r: &InductionReport) -> String {
    let g = &r.grid;
    let (layers, heads, max) = (g.layers, g.heads, g.max);
    let cell = (360.0 / layers.max(1) as f64).clamp(8.0, 24.0);
    let cw = 22.0;
    let mut s = String::new();
    for (panel, title) in ["score (repeated)", "control"].into_iter().enumerate() {
        let left = 60.0 + panel as f64 * (heads as f64 * cw + 80.0);
        let top = 50.0;
        let _ = write!(
            s,
            r#"<text x="{left:.1}" y="{:.1}" font-size="14" fill="{INK}">{}</text>"#,
            top - 12.0,
            esc(title)
        );
        for (i, &(score, control)) in g.cells.iter().enumerate() {
            let (l, h) = (i / heads.max(1), i % heads.max(1));
            let v = if panel == 0 { score } else { control };
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{cw:.1}" height="{cell:.1}" fill="{}" stroke="white" stroke-width="0.5"><title>L{l}H{h} {:.3}</title></rect>"#,
                left + h as f64 * cw,
                top + l as f64 * cell,
                blue(v / max),
                v
            );
        }
        for l in (0..layers).step_by(if layers > 12 { 5 } else { 1 }) {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="{INK}">L{l}</text>"#,
                left - 4.0,
                top + l as f64 * cell + cell * 0.75
            );
        }
        for h in 0..heads {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="{INK}">H{h}</text>"#,
                left + h as f64 * cw + cw / 2.0,
                top + layers as f64 * cell + 14.0
            );
        }
    }
    let top3: Vec<String> = r
        .heads
        .iter()
        .take(3)
        .map(|h| format!("{} {:.2} (control {:.2})", h.head, h.score, h.control))
        .collect();
    let bottom = 50.0 + layers as f64 * cell + 40.0;
    let lines = [
        format!("colour: attention to the token after the earlier copy, 0 (white) to {max:.2}"),
        format!("top: {}", top3.join(", ")),
        format!(
            "loss per token: first copy {:.2} · second copy {:.2} · control {:.2} nats",
            r.nll_first, r.nll_second, r.nll_control
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="60" y="{:.1}" font-size="12" fill="{INK}">{}</text>"#,
            bottom + 18.0 * i as f64,
            esc(line)
        );
    }
    let width = 60.0 + 2.0 * (heads as f64 * cw + 80.0) + 40.0;
    svg(width.max(620.0), bottom + 60.0, &s)
}

/// The change in each set's held-out loss for every group and ablation: bars of ΔA and ΔB.
pub fn lesion(r: &LesionReport) -> String {
    let rows = r.conditions.len().max(1);
    let row_h = 22.0;
    let max = r
        .conditions
        .iter()
        .flat_map(|c| [c.delta.a.abs(), c.delta.b.abs()])
        .fold(1e-6f64, f64::max);
    let (label_w, bar_w) = (260.0, 360.0);
    let top = 60.0;
    let zero_x = label_w + bar_w / 2.0;
    let scale = bar_w / 2.0 / max;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<text x="10" y="24" font-size="14" fill="{INK}">{}: change in held-out loss (nats/token) when a group is ablated</text>"#,
        esc(&r.protocol)
    );
    let _ = write!(
        s,
        r#"<text x="10" y="44" font-size="11" fill="{INK}">baseline A ({}) {:.3} · B ({}) {:.3}; bars: ΔA blue, ΔB orange; axis ±{:.3}</text>"#,
        esc(&r.labels.a),
        r.baseline.a,
        esc(&r.labels.b),
        r.baseline.b,
        max
    );
    for (i, c) in r.conditions.iter().enumerate() {
        let y = top + i as f64 * row_h;
        if i > 0 && r.conditions[i - 1].group != c.group {
            let _ = write!(
                s,
                r#"<line x1="10" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{GRID}"/>"#,
                y - 2.0,
                label_w + bar_w,
                y - 2.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="10" y="{:.1}" font-size="11" fill="{INK}">{} · {}</text>"#,
            y + 14.0,
            esc(&c.group),
            c.ablation.name()
        );
        for (k, (v, color)) in [(c.delta.a, LINE_A), (c.delta.b, LINE_B)]
            .into_iter()
            .enumerate()
        {
            let w = v * scale;
            let x = if w >= 0.0 { zero_x } else { zero_x + w };
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="8" fill="{color}"/>"#,
                y + 2.0 + k as f64 * 9.0,
                w.abs().max(0.5)
            );
        }
    }
    let bottom = top + rows as f64 * row_h;
    let _ = write!(
        s,
        r#"<line x1="{zero_x:.1}" y1="{:.1}" x2="{zero_x:.1}" y2="{bottom:.1}" stroke="{INK}"/>"#,
        top - 4.0
    );
    svg(label_w + bar_w + 20.0, bottom + 20.0, &s)
}

/// Dose–response: KL from the clean next-token distribution, the target's probability, and
/// each set's loss, against strength (three panels side by side).
pub fn dose(r: &super::dose::DoseReport) -> String {
    let xs: Vec<f64> = r.points.iter().map(|p| f64::from(p.strength)).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let span = (x1 - x0).max(1e-9);
    let x = (x0 - span * 0.04, x1 + span * 0.04);
    let mut s = String::new();
    let panel = |s: &mut String,
                 i: usize,
                 title: &str,
                 y_name: &str,
                 series: &[(&[f64], &str, &str)],
                 floor: Option<f64>| {
        let max = series
            .iter()
            .flat_map(|(v, _, _)| v.iter().copied())
            .chain(floor)
            .filter(|v| v.is_finite())
            .fold(1e-9f64, f64::max)
            * 1.1;
        let t = ticks(max);
        let a = Axes {
            left: 70.0 + i as f64 * 340.0,
            top: 60.0,
            width: 250.0,
            height: 220.0,
            x,
            y: (0.0, *t.last().unwrap_or(&max)),
        };
        a.frame(
            s,
            title,
            &format!("strength ({})", r.mode.name()),
            y_name,
            &t,
        );
        if let Some(f) = floor {
            let y = a.py(f);
            let _ = write!(
                s,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{FLOOR}" stroke-dasharray="6 4"/>"#,
                a.left,
                a.left + a.width
            );
        }
        for (values, color, _) in series {
            let pts: Vec<(f64, f64)> = xs.iter().copied().zip(values.iter().copied()).collect();
            a.polyline(s, &pts, color, false);
        }
        let labels = [x0, (x0 + x1) / 2.0, x1];
        a.x_labels(s, labels.into_iter(), trim);
        let items: Vec<(&str, &str, bool)> =
            series.iter().map(|(_, c, n)| (*c, *n, false)).collect();
        legend(s, a.left + 4.0, a.top + a.height + 50.0, &items);
    };
    let kl: Vec<f64> = r.points.iter().map(|p| p.kl).collect();
    let prob: Vec<f64> = r.points.iter().map(|p| p.target_prob).collect();
    let na: Vec<f64> = r.points.iter().map(|p| p.nll.a).collect();
    let nb: Vec<f64> = r.points.iter().map(|p| p.nll.b).collect();
    let _ = write!(
        s,
        r#"<text x="20" y="24" font-size="14" fill="{INK}">{} ({}) on {}; attention {}</text>"#,
        esc(&r.units.join(" ")),
        r.mode.name(),
        esc(&format!("{:?}", r.probe)),
        if r.frozen_attention {
            "frozen at the clean pattern"
        } else {
            "free"
        }
    );
    panel(
        &mut s,
        0,
        "KL(clean ‖ dosed)",
        "nats",
        &[(&kl, LINE_A, "KL")],
        None,
    );
    panel(
        &mut s,
        1,
        &format!("p({})", r.target.trim()),
        "probability",
        &[(&prob, LINE_A, "target probability")],
        Some(r.clean_target_prob),
    );
    let a_name = format!("A: {}", r.labels.a);
    let b_name = format!("B: {}", r.labels.b);
    panel(
        &mut s,
        2,
        &format!("loss per token ({})", r.sets_scored),
        "nats",
        &[(&na, LINE_A, &a_name), (&nb, LINE_B, &b_name)],
        None,
    );
    svg(1060.0, 370.0, &s)
}

/// Fonts for the figures: egui's bundled sans-serif and monospace, and the symbols font the
/// viewer bundles (′, Δ, arrows).
fn font_options() -> resvg::usvg::Options<'static> {
    let mut opt = resvg::usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
    db.load_font_data(epaint_default_fonts::HACK_REGULAR.to_vec());
    db.load_font_data(include_bytes!("../../assets/fonts/DejaVuSans-symbols.ttf").to_vec());
    let family = db
        .faces()
        .next()
        .and_then(|f| f.families.first().map(|(name, _)| name.clone()));
    if let Some(family) = family {
        db.set_sans_serif_family(family);
    }
    opt
}

#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("the figure's SVG is invalid: {0}")]
    Svg(String),
    #[error("the figure is empty or too large ({0}×{1} px)")]
    Size(u32, u32),
    #[error("encoding the PNG: {0}")]
    Png(String),
}

/// Rasterises an SVG made here to PNG bytes at `scale` (2 for a sharp figure on a HiDPI screen).
pub fn to_png(svg: &str, scale: f32) -> Result<Vec<u8>, FigureError> {
    use resvg::tiny_skia;
    let tree = resvg::usvg::Tree::from_str(svg, &font_options())
        .map_err(|e| FigureError::Svg(e.to_string()))?;
    let size = tree.size();
    let (w, h) = (
        (size.width() * scale).ceil() as u32,
        (size.height() * scale).ceil() as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or(FigureError::Size(w, h))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| FigureError::Png(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(1.0);
        assert_eq!(t.len(), 6);
        for (v, want) in t.iter().zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) {
            assert!((v - want).abs() < 1e-12, "{t:?}");
        }
        let t = ticks(7.3);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() >= 7.3 && t.len() <= 7, "{t:?}");
    }

    #[test]
    fn an_svg_rasterises_with_its_text() {
        let body = r#"<text x="10" y="40" font-size="30" fill="black">max |d′| ΔA</text>"#;
        let png = to_png(&svg(300.0, 60.0, body), 1.0).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (300, 60));
        // Text was drawn: some pixels are dark (a missing font draws nothing).
        let dark = buf.chunks(4).filter(|p| p[0] < 100).count();
        assert!(dark > 200, "{dark} dark pixels");
    }
}
