//! The card's receptive field: what drives the feature over the scanned corpus (top and lowest
//! examples with every token coloured by its activation and the peak centred, the histogram
//! with the firing density, quantile-group examples, the tokens it fires on, the gate/up sign
//! combination of a gated neuron's examples) and, on the probe, its occlusion map. Draws only:
//! the data comes from `Runtime::receptive`.

use egui::{RichText, Sense, Vec2};
use egui_plot::{Bar, BarChart, Plot};

use super::super::file_dialog::FileAction;
use super::super::receptive::{CardData, IndexState, LabelsState, Pending, CONTEXT};
use super::super::{colors, text, Command};
use super::ViewCtx;
use crate::features::{Basis, FeatureId};
use crate::scan::index::IndexMeta;
use crate::scan::{ExampleView, ScanIndex};

/// Tokens per second assumed for an estimate before this machine has scanned anything.
const NOMINAL_TOKENS_PER_S: f64 = 400.0;
/// WordNet's stimuli average about this many tokens (SmolLM2's tokenizer).
const TOKENS_PER_STIMULUS: f64 = 10.3;
/// WordNet 3.1's glosses and examples (what `Corpus::wordnet` reads), before a scan says.
const WORDNET_STIMULI: usize = 166_362;

fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// The scan offer: how much, and about how long at this machine's last measured rate.
fn scan_buttons(
    ui: &mut egui::Ui,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    index: Option<&ScanIndex>,
) {
    if let Some(run) = &cx.runtime.receptive.scanning {
        // Wrapped: in one row this line widened the card while a scan ran.
        ui.horizontal_wrapped(|ui| {
            super::spinner(ui);
            ui.label(format!("{}: progress and ETA in Jobs below.", run.name));
        });
        return;
    }
    // The WordNet index's numbers, whichever corpus the cards read now.
    let wordnet = index
        .map(|i| &i.meta)
        .filter(|m| is_wordnet(m))
        .or_else(|| {
            let r = &cx.runtime.receptive;
            r.indexes.iter().map(|(_, m)| m).find(|m| is_wordnet(m))
        });
    let (rate, measured) = match index
        .map(|i| &i.meta)
        .or(wordnet)
        .filter(|m| m.seconds > 1.0)
    {
        Some(m) => (m.tokens_done as f64 / m.seconds, true),
        None => (NOMINAL_TOKENS_PER_S, false),
    };
    let how = if measured {
        format!("at this machine's {rate:.0} tokens/s")
    } else {
        format!("at about {rate:.0} tokens/s (2 laptop cores)")
    };
    let done = wordnet.map_or(0, |m| m.stimuli_done);
    let total = wordnet.map_or(WORDNET_STIMULI, |m| m.corpus_stimuli);
    if done < crate::scan::index::DEFAULT_STIMULI {
        let n = crate::scan::index::DEFAULT_STIMULI - done;
        let tokens = n as f64 * TOKENS_PER_STIMULUS;
        if ui
            .button(format!(
                "Scan {} WordNet stimuli",
                crate::scan::index::DEFAULT_STIMULI
            ))
            .on_hover_text(format!(
                "Glosses and example sentences of WordNet 3.1, a sample spread over every part \
                 of speech; about {:.0}k tokens, {} {how}. Runs as a job: the viewer stays \
                 usable, and it can be paused or cancelled (a cancelled scan resumes).",
                tokens / 1e3,
                duration(tokens / rate)
            ))
            .clicked()
        {
            out.push(Command::StartScan { all: false });
        }
        ui.label(
            RichText::new(format!(
                "≈ {:.0}k tokens, about {} {how}",
                tokens / 1e3,
                duration(tokens / rate)
            ))
            .weak()
            .small(),
        );
    }
    if done < total {
        let tokens = (total - done) as f64 * TOKENS_PER_STIMULUS;
        if ui
            .button(format!("Scan all of WordNet ({total} stimuli)"))
            .on_hover_text("Extends the same index; a cancelled scan resumes where it stopped.")
            .clicked()
        {
            out.push(Command::StartScan { all: true });
        }
        ui.label(
            RichText::new(format!(
                "≈ {:.1}M more tokens, about {} {how}",
                tokens / 1e6,
                duration(tokens / rate)
            ))
            .weak()
            .small(),
        );
    }
}

fn is_wordnet(m: &IndexMeta) -> bool {
    m.corpus == crate::scan::WORDNET_CORPUS
}

/// The corpora scanned for this model (the one the cards read is chosen here) and a scan of the
/// user's own text: a file, one stimulus per line, or a folder of `.txt` files.
fn corpora_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>) {
    let r = &cx.runtime.receptive;
    let current = match &r.index {
        IndexState::Ready { path, .. } => Some(path),
        _ => None,
    };
    egui::CollapsingHeader::new(format!("Corpora ({} scanned)", r.indexes.len()))
        .id_salt("corpora")
        .show(ui, |ui| {
            for (path, m) in &r.indexes {
                let label = format!(
                    "{}: {} stimuli, {} tokens{}",
                    m.corpus,
                    m.stimuli_done,
                    m.tokens_done,
                    if m.complete { " (all)" } else { "" }
                );
                let chosen = current == Some(path);
                if ui
                    .add_enabled(r.scanning.is_none(), egui::RadioButton::new(chosen, label))
                    .on_hover_text(path.display().to_string())
                    .clicked()
                    && !chosen
                {
                    out.push(Command::UseIndex(path.clone()));
                }
            }
            let idle = r.scanning.is_none();
            ui.horizontal_wrapped(|ui| {
                if ui
                    .add_enabled(idle, egui::Button::new("Scan a text file…"))
                    .on_hover_text(
                        "One stimulus per line (blank lines skipped); a stimulus longer than 128 \
                         tokens is split into windows. Every line is scanned, as a job, into an \
                         index of its own, which the cards then read (choose another here).",
                    )
                    .clicked()
                {
                    out.push(Command::AskFile(FileAction::ScanTextFile));
                }
                if ui
                    .add_enabled(idle, egui::Button::new("Scan a folder of .txt files…"))
                    .on_hover_text("Every .txt file in the folder, one stimulus per line.")
                    .clicked()
                {
                    out.push(Command::AskFile(FileAction::ScanTextFolder));
                }
            });
        });
}

/// The receptive-field part of the card of `f`.
pub fn receptive_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>, f: FeatureId) {
    ui.label(RichText::new("Receptive field (corpus scan)").strong());
    let r = &cx.runtime.receptive;
    if f.basis == Basis::Dictionary {
        dictionary_scan_button(ui, cx, out, r);
    }
    let index = match &r.index {
        IndexState::None | IndexState::Loading => {
            ui.horizontal(|ui| {
                super::spinner(ui);
                ui.label("Looking for a scan of this model…");
            });
            return;
        }
        IndexState::Missing => {
            ui.label(
                "No corpus scan of this model yet. A scan runs a corpus through the model and \
                 keeps, for every neuron and head, its top and lowest examples, histogram and \
                 firing tokens.",
            );
            scan_buttons(ui, cx, out, None);
            corpora_ui(ui, cx, out);
            return;
        }
        IndexState::Failed(e) => {
            ui.colored_label(
                colors::ERROR,
                format!("The scan index could not be read: {e}"),
            );
            scan_buttons(ui, cx, out, None);
            corpora_ui(ui, cx, out);
            return;
        }
        IndexState::Ready { index, .. } => index,
    };
    let m = &index.meta;
    ui.label(
        RichText::new(format!(
            "{}: {} stimuli, {} tokens{}; {}.",
            m.corpus,
            m.stimuli_done,
            m.tokens_done,
            if m.complete { " (all)" } else { "" },
            m.position0
        ))
        .weak()
        .small(),
    );
    corpora_ui(ui, cx, out);
    let Some(card) = r.card.as_ref().filter(|c| c.feature == f) else {
        super::spinner(ui);
        return;
    };
    let s = match &card.summary {
        Ok(s) => s,
        Err(e) if f.basis == Basis::Dictionary => {
            ui.label(e);
            return;
        }
        Err(e) => {
            ui.colored_label(colors::ERROR, e);
            return;
        }
    };
    label_ui(ui, cx, f);
    let signed = f.basis == Basis::Neurons;
    let scale = s.max.abs().max(s.min.abs()).max(1e-6);
    ui.label(format!(
        "density {:.3} (activation > {}), mean {:.3}, range {:.3} … {:.3}, over {} positions",
        s.density, s.threshold, s.mean, s.min, s.max, s.positions
    ));
    histogram_ui(ui, s);
    if let Pending::Failed(e) = &card.rows {
        ui.colored_label(
            colors::ERROR,
            format!("The examples' activations could not be computed: {e}"),
        );
    }
    ui.label(RichText::new("Top examples").strong())
        .on_hover_text(
            "One per window, at its highest activation; click one to make it the probe.",
        );
    if signed {
        signs_ui(ui, card, false);
    }
    examples_ui(ui, out, card, &s.top, scale, signed);
    egui::CollapsingHeader::new(RichText::new("Lowest examples").strong())
        .id_salt("lowest examples")
        .default_open(signed)
        .show(ui, |ui| {
            if signed {
                signs_ui(ui, card, true);
            }
            examples_ui(ui, out, card, &s.lowest, scale, signed);
        });
    egui::CollapsingHeader::new(RichText::new("Examples by activation interval").strong())
        .id_salt("quantile examples")
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "Ten equal-width intervals of the activation range, each with a uniform \
                     sample of its positions (as sae_vis does).",
                )
                .weak()
                .small(),
            );
            for ((lo, hi), n, examples) in s.groups.iter().rev() {
                if *n == 0 {
                    continue;
                }
                ui.label(format!("[{lo:.3}, {hi:.3}): {n} positions"));
                examples_ui(ui, out, card, examples, scale, signed);
            }
        });
    ui.label(RichText::new("Fires most on").strong())
        .on_hover_text(format!(
            "Tokens at positions where the activation is above {}: how often it surely fired on \
         each (a range where the bounded sketch cannot say exactly), the token's count in the \
         corpus, and the log-odds of firing on it against the corpus. Tokens with fewer than {} \
         sure firings, or a wider range than that, are left out.",
            s.threshold,
            crate::scan::FiringToken::MIN_COUNT
        ));
    let reliable: Vec<_> = s.firing_tokens.iter().filter(|t| t.reliable()).collect();
    if reliable.is_empty() {
        ui.label(
            RichText::new(format!(
                "No token stands out: none surely fired here {} times or more with its count \
                 known to within that (above {} at {:.0}% of positions; the scan counts firing \
                 tokens in a 32-counter sketch).",
                crate::scan::FiringToken::MIN_COUNT,
                s.threshold,
                100.0 * s.density
            ))
            .weak(),
        );
        return scan_more(ui, cx, out, index, m);
    }
    egui::Grid::new(("firing tokens", f))
        .striped(true)
        .show(ui, |ui| {
            ui.label(RichText::new("token").weak());
            ui.label(RichText::new("fired").weak());
            ui.label(RichText::new("in corpus").weak());
            ui.label(RichText::new("log-odds").weak());
            ui.end_row();
            for t in reliable.iter().take(10) {
                ui.label(RichText::new(text::visible(&t.token)).monospace());
                let (sure, most) = (t.guaranteed(), t.at_most());
                if most > sure {
                    ui.label(format!("{sure}–{most}"));
                } else {
                    ui.label(sure.to_string());
                }
                ui.label(t.corpus_count.to_string());
                ui.label(format!("{:+.2}", t.log_odds));
                ui.end_row();
            }
        });
    scan_more(ui, cx, out, index, m);
}

/// The offer to extend a partial scan.
fn scan_more(
    ui: &mut egui::Ui,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    index: &ScanIndex,
    m: &IndexMeta,
) {
    // A partial scan, or a text corpus (WordNet can then still be scanned from here).
    if !m.complete || !is_wordnet(m) {
        egui::CollapsingHeader::new("Scan more")
            .id_salt("scan more")
            .show(ui, |ui| scan_buttons(ui, cx, out, Some(index)));
    }
}

fn histogram_ui(ui: &mut egui::Ui, s: &crate::scan::FeatureSummary) {
    let bars: Vec<Bar> = s
        .hist
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| {
            Bar::new(
                s.hist_start + (i as f64 + 0.5) * s.hist_width,
                f64::from(*c),
            )
            .width(s.hist_width)
        })
        .collect();
    Plot::new(("histogram", &s.feature))
        .height(90.0)
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .show_y(false)
        .y_axis_label("positions")
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("activations", bars).color(colors::BASELINE));
        });
}

/// How many of the top (or lowest) examples each gate/up sign combination made.
fn signs_ui(ui: &mut egui::Ui, card: &CardData, lowest: bool) {
    let counts = card.sign_counts(lowest);
    if counts.is_empty() {
        return;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(g, n)| format!("{n} {}", g.label()))
        .collect();
    ui.label(RichText::new(format!("by gate × up sign: {}", parts.join(", "))).small())
        .on_hover_text(
            "SwiGLU: activation = silu(gate) · up. A positive activation comes from gate+ up+ \
             or from gate− up− (silu is slightly negative below 0): different receptive fields \
             (GLUScope).",
        );
}

/// One list of examples: each a line of ±CONTEXT tokens around its peak, every token coloured
/// by its activation once computed (until then only the peak), the peak underlined.
fn examples_ui(
    ui: &mut egui::Ui,
    out: &mut Vec<Command>,
    card: &CardData,
    examples: &[ExampleView],
    scale: f32,
    signed: bool,
) {
    // Coloured on the list's own scale (its largest |peak|, at least 1% of the feature's), so a
    // mostly negative neuron's top examples are not washed out by its lowest ones.
    let own = examples
        .iter()
        .fold(0f32, |m, e| m.max(e.activation.abs()))
        .max(scale * 0.01);
    let scale = if own > 0.0 { own } else { scale };
    for e in examples {
        let row = card.row(e.window);
        let lo = e.pos.saturating_sub(CONTEXT);
        let hi = (e.pos + CONTEXT + 1).min(e.tokens.len());
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = Vec2::new(1.0, 2.0);
            let mut clicked = false;
            let tag = match card.signs(e.window, e.pos) {
                Some(g) => format!(" {}", g.label()),
                None => String::new(),
            };
            clicked |= ui
                .add(
                    egui::Button::new(
                        RichText::new(format!("{:+.3}{tag}", e.activation))
                            .monospace()
                            .small(),
                    )
                    .small(),
                )
                .on_hover_text(format!(
                    "Make this example the probe.\n{}\nposition {} of window {}{}",
                    e.source,
                    e.pos,
                    e.window,
                    card.signs(e.window, e.pos)
                        .map(|g| format!("; {}", g.label()))
                        .unwrap_or_default()
                ))
                .clicked();
            if lo > 0 {
                ui.label(RichText::new("…").weak());
            }
            for p in lo..hi {
                let v = match row {
                    Some(r) => r.acts.get(p).copied(),
                    None => (p == e.pos).then_some(e.activation),
                };
                let mut t = RichText::new(text::visible(&e.tokens[p])).monospace();
                if let Some(v) = v {
                    t = t
                        .background_color(colors::scaled(v, scale, signed))
                        .color(colors::CELL_TEXT);
                }
                if p == e.pos {
                    t = t.underline().strong();
                }
                let hover = match v {
                    Some(v) => format!("\"{}\" (position {p}): {v:.4}", e.tokens[p]),
                    None => format!("\"{}\" (position {p})", e.tokens[p]),
                };
                clicked |= ui
                    .add(egui::Label::new(t).sense(Sense::click()))
                    .on_hover_text(hover)
                    .clicked();
            }
            if hi < e.tokens.len() {
                ui.label(RichText::new("…").weak());
            }
            if clicked {
                out.push(Command::LoadStimulus(e.text.clone()));
            }
        });
    }
}

/// The occlusion map: how the feature's activation at the output position changes when each
/// earlier token of the probe is replaced by a neutral token (or deleted).
pub fn occlusion_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>, f: FeatureId) {
    let position = cx.derived.next.position;
    let tokens = &cx.derived.tokens;
    ui.label(RichText::new("Occlusion receptive field").strong())
        .on_hover_text(
            "Each earlier token is occluded in turn (all copies in one batched forward, stopped \
             after this feature's layer) and the change in the activation at the output position \
             is shown over the token it removed: red raised it when removed (the token \
             suppressed the feature), blue lowered it (the token drives it).",
        );
    ui.horizontal_wrapped(|ui| {
        let mut delete = cx.runtime.occlusion_delete;
        ui.label(format!(
            "at position {position} \"{}\", each earlier token",
            tokens.get(position).map_or("", String::as_str)
        ));
        let a = ui.radio_value(&mut delete, false, "replaced by a neutral token");
        let b = ui.radio_value(&mut delete, true, "deleted");
        if a.changed() || b.changed() {
            out.push(Command::SetOcclusionDelete(delete));
        }
    });
    let Some(o) = &cx.runtime.receptive.occlusion else {
        if ui
            .button("Compute the occlusion map")
            .on_hover_text(format!(
                "One forward of {} copies of the probe (it runs by itself for probes up to {} tokens).",
                position + 1,
                super::super::receptive::AUTO_OCCLUSION_TOKENS
            ))
            .clicked()
        {
            out.push(Command::Occlude);
        }
        return;
    };
    if o.key.feature != f {
        super::spinner(ui);
        return;
    }
    match &o.result {
        Pending::Idle | Pending::Waiting(_) => {
            super::spinner(ui);
        }
        Pending::Failed(e) => {
            ui.colored_label(colors::ERROR, format!("Could not compute it: {e}"));
            if ui.button("Retry").clicked() {
                out.push(Command::Occlude);
            }
        }
        Pending::Ready(occ) => {
            let scale = occ
                .deltas
                .iter()
                .fold(0f32, |m, d| m.max(d.abs()))
                .max(1e-6);
            ui.horizontal_wrapped(|ui| {
                ui.spacing_mut().item_spacing = Vec2::new(1.0, 2.0);
                for (p, t) in tokens.iter().enumerate().take(o.key.position + 1) {
                    let mut text = RichText::new(t).monospace();
                    let hover = match occ.deltas.get(p) {
                        Some(d) => {
                            text = text
                                .background_color(colors::diverging(*d, scale))
                                .color(colors::CELL_TEXT);
                            format!(
                                "\"{t}\" (position {p}) occluded: activation {:.4} ({d:+.4})",
                                occ.values.get(p).copied().unwrap_or(f32::NAN)
                            )
                        }
                        None => format!("\"{t}\" (position {p})"),
                    };
                    if p == o.key.position {
                        text = text.underline();
                    }
                    ui.label(text).on_hover_text(hover);
                }
            });
            ui.label(
                RichText::new(format!(
                    "activation {:.4} without occlusion; largest change {:+.4}{}",
                    occ.baseline,
                    occ.deltas
                        .iter()
                        .copied()
                        .max_by(|a, b| a.abs().total_cmp(&b.abs()))
                        .unwrap_or(0.0),
                    occ.replaced_with
                        .and_then(|id| cx.runtime.vocab.get(id as usize))
                        .map(|t| format!("; neutral token \"{t}\""))
                        .unwrap_or_default()
                ))
                .weak()
                .small(),
            );
        }
    }
}

/// What fires here: the strongest features at the output position across every layer, each
/// clickable to its card.
pub fn fires_here_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>) {
    let d = cx.derived;
    let position = d.next.position;
    ui.label(
        RichText::new(format!(
            "What fires at position {position} \"{}\"",
            d.tokens.get(position).map_or("", String::as_str)
        ))
        .strong(),
    )
    .on_hover_text("Choose the position in the token strip under Output.");
    ui.label(
        RichText::new(if d.fires_scaled {
            "ranked by |activation| ÷ the feature's largest |activation| in the corpus scan"
        } else {
            "ranked by |activation| (scan a corpus to compare features by their own range)"
        })
        .weak()
        .small(),
    );
    // One feature a row, its label below (wrapped to the card's width).
    for (f, v, score) in &d.fires_here {
        ui.horizontal(|ui| {
            // The value in the link keeps its name apart from the heatmap's row of the feature.
            if ui
                .link(RichText::new(format!("{} {v:+.3}", f.label())).monospace())
                .on_hover_text("Open its card")
                .clicked()
            {
                out.push(Command::Select(Some(*f)));
            }
            if d.fires_scaled {
                ui.label(RichText::new(format!("{:.0}% of max", score * 100.0)).weak());
            }
        });
        if let Some(l) = cx.runtime.receptive.label(f) {
            ui.indent(("fires label", *f), |ui| {
                ui.label(RichText::new(&l.text).small().weak());
            });
        }
    }
}

/// The feature's offline label: its text, how well it predicts firing, the enrichments with
/// their p-values, the tokens it promotes.
fn label_ui(ui: &mut egui::Ui, cx: &ViewCtx, f: FeatureId) {
    if f.basis == Basis::Dictionary {
        // Its label is the dictionary's own, at the card's top; the scan labels neurons and heads.
        return;
    }
    let r = &cx.runtime.receptive;
    match &r.labels {
        LabelsState::None | LabelsState::Computing => {
            ui.horizontal(|ui| {
                super::spinner(ui);
                ui.label(RichText::new("Labelling every feature (a job)…").weak());
            });
        }
        LabelsState::Failed(e) => {
            ui.colored_label(colors::ERROR, format!("No labels: {e}"));
        }
        LabelsState::Ready(_) => {
            let Some(l) = r.label(&f) else {
                ui.label(RichText::new("No label for this feature.").weak());
                return;
            };
            ui.label(RichText::new(format!("Label: {}", l.text)).strong())
                .on_hover_text(
                    "Computed without a language model: the tokens it fires on (log-odds against \
                     the corpus) and their context, WordNet categories over-represented among \
                     its top examples (one-sided hypergeometric test, Bonferroni-corrected), the \
                     tokens it promotes.",
                );
            ui.label(
                RichText::new(format!(
                    "label score F1 {:.2} (precision {:.2}, recall {:.2} of firing on its top {} \
                     token{})",
                    l.score.f1,
                    l.score.precision,
                    l.score.recall,
                    l.score.tokens,
                    if l.score.tokens == 1 { "" } else { "s" }
                ))
                .weak()
                .small(),
            )
            .on_hover_text(
                "Precision: of the positions holding the label's tokens, the share where the \
                 feature fires; recall: of the positions where it fires, the share holding them.",
            );
            for e in l.enrichment.iter().take(4) {
                ui.label(
                    RichText::new(format!(
                        "WordNet {} {}: {} of {} top-example synsets (p = {:.1e}, corrected)",
                        e.kind, e.name, e.k, e.n, e.p_corrected
                    ))
                    .small(),
                );
            }
        }
    }
}

/// Search features by a token they fire on or by words of their labels.
pub fn search_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>, query: &mut String) {
    let r = &cx.runtime.receptive;
    if r.index.index().is_none() {
        return;
    }
    let ready = matches!(r.labels, LabelsState::Ready(_));
    ui.horizontal(|ui| {
        let label = ui.label("Find features");
        let edit = ui
            .add_enabled(
                ready,
                egui::TextEdit::singleline(query)
                    .hint_text("a token (left) or label words")
                    .desired_width(150.0),
            )
            .labelled_by(label.id);
        let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.add_enabled(ready, egui::Button::new("Search")).clicked() || enter)
            && !query.trim().is_empty()
        {
            out.push(Command::SearchFeatures(query.clone()));
        }
    });
    if let Some((q, hits)) = &r.search {
        if hits.is_empty() {
            ui.label(RichText::new(format!("No feature fires on or is labelled \"{q}\".")).weak());
        }
        for h in hits.iter().take(15) {
            let Ok(f) = FeatureId::parse(&h.feature) else {
                continue;
            };
            if ui
                .link(format!("{} ({})", h.feature, h.kind))
                .on_hover_text(&h.why)
                .clicked()
            {
                out.push(Command::Select(Some(f)));
            }
            ui.indent(("search hit", f), |ui| {
                ui.label(RichText::new(&h.text).small().weak());
            });
        }
    }
}

/// A dictionary feature's offer: scan the default corpus with the dictionary in use, unless the
/// loaded index holds its features already (or a scan runs).
fn dictionary_scan_button(
    ui: &mut egui::Ui,
    cx: &ViewCtx,
    out: &mut Vec<Command>,
    r: &crate::app::receptive::Receptive,
) {
    let scanned = r
        .index
        .index()
        .and_then(|i| i.meta.dictionary.as_ref())
        .is_some_and(|d| Some(&d.sha256) == r.dict_sha.as_ref());
    if scanned || cx.runtime.dictionaries.current.is_none() {
        return;
    }
    if r.dict_sha.is_none() {
        ui.label(
            RichText::new("A training's snapshot: scan its features once the training is done.")
                .weak()
                .small(),
        );
        return;
    }
    if let Some(run) = &r.scanning {
        ui.horizontal(|ui| {
            super::spinner(ui);
            ui.label(format!("{} (see Jobs)", run.name));
        });
        return;
    }
    if ui
        .button(format!(
            "Scan {} WordNet stimuli with this dictionary",
            crate::scan::index::DEFAULT_STIMULI
        ))
        .on_hover_text(
            "Its features' top and lowest examples, histograms and firing tokens, beside every \
             neuron's and head's, in an index of their own (a job: pause or cancel it in Jobs)",
        )
        .clicked()
    {
        out.push(Command::StartDictionaryScan);
    }
}
