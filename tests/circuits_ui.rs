//! The Circuits window as a person uses it (kittest, driven by labels): the menu opens it, the
//! lens runs as a job and a cell click pins its top token as the target, the attribution's names
//! open cards, the trace's errors are shown and a cell click patches it by hand; the window fits
//! from 1000×700 to 1920×1080.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use hubel::app::fonts::FontSource;
use hubel::app::state::CircuitsForm;
use hubel::app::{AppConfig, AppState, Command, HubelApp};
use hubel::hooks::Op;

const DROID: &str = "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf";

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

fn harness(size: [f32; 2], probe: &str) -> Harness<'static, HubelApp> {
    let dir = std::env::temp_dir().join(format!("hubel-circuits-ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = AppConfig {
        assets: dir,
        native_dialogs: false,
        ..AppConfig::default()
    };
    let state = AppState {
        probe: probe.into(),
        continuation: 0,
        ..AppState::default()
    };
    Harness::builder()
        .with_size(size)
        .with_max_steps(100_000)
        .build_eframe(move |cc| {
            // The app's fonts, then a missing glyph fails the test (as in tests/ui.rs).
            let source = if std::path::Path::new(DROID).is_file() {
                FontSource::File(DROID.into())
            } else {
                FontSource::Auto
            };
            let cjk = hubel::app::fonts::install_with(&cc.egui_ctx, source);
            cc.egui_ctx
                .set_missing_glyph_policy(egui::MissingGlyphPolicy::Panic);
            let mut app = HubelApp::with_config(&cc.egui_ctx, state, config);
            app.cjk = cjk;
            app
        })
}

fn wait_for(h: &mut Harness<'static, HubelApp>, what: &str, cond: impl Fn(&HubelApp) -> bool) {
    let start = Instant::now();
    while !cond(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; error: {:?}",
            h.state().error
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.run_steps(3);
}

fn loaded(size: [f32; 2], probe: &str) -> Harness<'static, HubelApp> {
    let mut h = harness(size, probe);
    h.state_mut().load_model(tiny_llama());
    wait_for(&mut h, "the model and the first run", |a| {
        a.runtime.model.is_some() && a.runtime.result.is_some() && !a.is_busy()
    });
    h
}

/// `text` with one letter changed so that it still has as many tokens in the tiny model.
fn corrupted(text: &str) -> String {
    let model = hubel::model::Model::open(tiny_llama()).unwrap();
    let n = model.tokenize(text).unwrap().len();
    for i in (0..text.len()).rev() {
        for c in 'a'..='z' {
            let mut t = text.to_string();
            t.replace_range(i..i + 1, &c.to_string());
            if t != text && model.tokenize(&t).unwrap().len() == n {
                return t;
            }
        }
    }
    panic!("no corruption of {text:?} keeps its length");
}

fn inside(rect: egui::Rect, size: [f32; 2]) -> bool {
    rect.min.x >= 0.0 && rect.max.x <= size[0] && rect.min.y >= 0.0 && rect.max.y <= size[1]
}

#[test]
fn the_circuits_window_runs_its_three_tools_and_links_to_cards() {
    let size = [1280.0, 800.0];
    let mut h = loaded(size, "hello world");
    h.get_by_label("Circuits").click();
    h.run_steps(3);
    h.get_by_label("Logit lens of the probe").click();
    h.run_steps(2);
    assert!(h.state().state.circuits_open);
    wait_for(&mut h, "the lens", |a| {
        !a.runtime.circuits.lens.is_running() && a.runtime.circuits.lens.last.is_some()
    });
    // The default target (" Paris") is several tokens in this tiny vocabulary: said, not hidden.
    let err = h.state().runtime.circuits.lens.error().map(String::from);
    assert!(
        err.as_deref().is_some_and(|e| e.contains("not one")),
        "{err:?}"
    );
    assert!(h.get_all_by_label_contains("not one").count() >= 1);
    // Without a target, the lens shows top tokens; its last cell's top token becomes the target.
    h.state_mut().state.circuits.target.clear();
    h.get_by_label("▶ Logit lens").click();
    wait_for(&mut h, "the lens", |a| {
        a.runtime.circuits.lens.result().is_some()
    });
    let r = h.state().runtime.circuits.lens.result().unwrap().clone();
    assert_eq!(r.baseline.layers.len(), 2);
    assert_eq!(r.baseline.positions(), r.tokens.len());
    let top = r.baseline.layers[1].positions.last().unwrap().top[0]
        .token
        .clone();
    h.get_by_label_contains("the last layer on top, positions across");
    h.state_mut().state.circuits.target = top.clone();
    h.state_mut().state.circuits.versus.clear();
    // The attribution: its top component's name opens a card.
    h.state_mut().apply(Command::RunAttribution, 0.0);
    wait_for(&mut h, "the attribution", |a| {
        !a.runtime.circuits.dla.is_running() && a.runtime.circuits.dla.last.is_some()
    });
    let dla = h
        .state()
        .runtime
        .circuits
        .dla
        .result()
        .cloned()
        .unwrap_or_else(|| panic!("{:?}", h.state().runtime.circuits.dla.error()));
    assert!((dla.total - dla.sum).abs() <= 1e-3 * dla.total.abs().max(1.0));
    let neuron = dla.neurons[0].feature.clone();
    // (The main view may name the same neuron; the window is drawn last.)
    h.get_all_by_label(&neuron).last().unwrap().scroll_to_me();
    h.run_steps(30); // the scroll is animated: let it settle before clicking
    h.get_all_by_label(&neuron).last().unwrap().click();
    h.run_steps(3);
    assert_eq!(
        h.state().state.selection.map(|f| f.label()),
        Some(neuron.clone())
    );
    // The trace: different lengths are a message; then a real trace, and a cell patched by hand.
    h.state_mut().state.circuits.corrupt = "hello world and more".into();
    h.state_mut().apply(Command::RunTrace, 0.0);
    wait_for(&mut h, "the trace", |a| {
        !a.runtime.circuits.trace.is_running() && a.runtime.circuits.trace.last.is_some()
    });
    assert!(h.get_all_by_label_contains("same number of tokens").count() >= 1);
    h.state_mut().state.circuits.corrupt = corrupted("hello world");
    h.state_mut().apply(Command::RunTrace, 0.0);
    wait_for(&mut h, "the trace", |a| {
        a.runtime.circuits.trace.result().is_some()
    });
    let t = h
        .state()
        .runtime
        .circuits
        .trace
        .result()
        .unwrap()
        .report
        .clone();
    assert_eq!(t.grid.len(), 2);
    h.get_by_label("Patch it by hand").click();
    h.run_steps(2);
    let (l, p, _) = t.strongest().unwrap();
    assert_eq!(h.state().state.probe, corrupted("hello world"));
    let ivs = &h.state().state.interventions;
    assert_eq!(ivs.len(), 1);
    assert_eq!(ivs[0].positions, Some(vec![p]));
    assert_eq!(ivs[0].hook.layer(), Some(l));
    assert!(matches!(ivs[0].op, Op::MeanOf { .. }));
    wait_for(&mut h, "the patched run", |a| {
        !a.is_busy() && a.runtime.result.is_some()
    });
    assert_eq!(h.state().error, None);
}

#[test]
fn the_circuits_window_fits_from_1000x700_to_1920x1080() {
    for size in [[1000.0, 700.0], [1920.0, 1080.0]] {
        let mut h = loaded(size, "hello world");
        h.state_mut().state.circuits = CircuitsForm {
            target: "o".into(),
            versus: String::new(),
            corrupt: corrupted("hello world"),
            ..CircuitsForm::default()
        };
        h.state_mut().apply(Command::ShowCircuits(true), 0.0);
        h.state_mut().apply(Command::RunLens, 0.0);
        wait_for(&mut h, "the lens", |a| {
            a.runtime.circuits.lens.result().is_some()
        });
        let run = h.get_by_label("▶ Logit lens").rect();
        assert!(inside(run, size), "{size:?}: {run:?}");
        let tab = h.get_by_label("Causal trace").rect();
        assert!(inside(tab, size), "{size:?}: {tab:?}");
        h.get_by_label("Causal trace").click();
        h.run_steps(2);
        h.get_by_label("▶ Trace").click();
        wait_for(&mut h, "the trace", |a| {
            !a.runtime.circuits.trace.is_running() && a.runtime.circuits.trace.last.is_some()
        });
        assert!(
            h.state().runtime.circuits.trace.result().is_some(),
            "{:?}",
            h.state().runtime.circuits.trace.error()
        );
        let strongest = h.get_by_label("Patch it by hand").rect();
        assert!(inside(strongest, size), "{size:?}: {strongest:?}");
    }
}

#[test]
fn prompts_of_different_lengths_are_shown_and_padded_or_trimmed_in_the_app() {
    use hubel::circuits::patch::Fit;
    let size = [1280.0, 800.0];
    let mut h = loaded(size, "hello world");
    h.state_mut().state.circuits = CircuitsForm {
        target: "o".into(),
        versus: String::new(),
        corrupt: "hello world and more".into(),
        ..CircuitsForm::default()
    };
    h.state_mut().apply(Command::ShowCircuits(true), 0.0);
    h.state_mut().apply(Command::RunTrace, 0.0);
    let done = |a: &HubelApp| {
        !a.runtime.circuits.trace.is_running() && a.runtime.circuits.trace.last.is_some()
    };
    wait_for(&mut h, "the trace", done);
    // Both tokenizations are shown, with the offer.
    assert!(h.get_all_by_label_contains("same number of tokens").count() >= 1);
    let (n_clean, n_corrupt) = {
        let m = match &h.state().runtime.circuits.trace.last {
            Some(Err(f)) => f.mismatch.clone().expect("the mismatch's tokens"),
            other => panic!("{:?}", other.as_ref().map(|_| "a result")),
        };
        (m.clean_tokens.len(), m.corrupt_tokens.len())
    };
    assert!(n_clean < n_corrupt);
    h.get_by_label(&format!("clean ({n_clean} tokens)"));
    h.get_by_label(&format!("corrupted ({n_corrupt} tokens)"));
    // Pad: the clean prompt gets fillers after position 0 and the trace runs.
    h.get_by_label("Pad the shorter one").click();
    h.run_steps(2);
    assert_eq!(h.state().state.circuits.fit, Some(Fit::Pad));
    wait_for(&mut h, "the padded trace", done);
    let r = h
        .state()
        .runtime
        .circuits
        .trace
        .result()
        .map(|t| t.report.clone())
        .unwrap_or_else(|| panic!("{:?}", h.state().runtime.circuits.trace.error()));
    assert_eq!(r.tokens.len(), n_corrupt);
    assert_eq!(r.corrupt_tokens.len(), n_corrupt);
    assert_eq!(r.grid[0].len(), n_corrupt);
    assert!(r.fitted.as_deref().unwrap().contains("clean prompt padded"));
    h.get_by_label_contains("Lengths made equal");
    h.get_by_label(&format!("clean ({n_corrupt} tokens)"));
    assert!(h.query_by_label("Pad the shorter one").is_none());
    // Back to refusing, then trim: the corrupted prompt loses its extra tokens.
    h.get_by_label("Refuse different lengths").click();
    h.run_steps(2);
    assert_eq!(h.state().state.circuits.fit, None);
    h.state_mut().apply(Command::RunTrace, 0.0);
    wait_for(&mut h, "the trace", done);
    h.get_by_label("Trim the longer one").click();
    wait_for(&mut h, "the trimmed trace", |a| {
        a.runtime.circuits.trace.result().is_some()
    });
    let r = h
        .state()
        .runtime
        .circuits
        .trace
        .result()
        .unwrap()
        .report
        .clone();
    assert_eq!(r.tokens.len(), n_clean);
    assert_eq!(r.corrupt_tokens.len(), n_clean);
    assert!(r
        .fitted
        .as_deref()
        .unwrap()
        .contains("corrupted prompt trimmed"));
    // A patch by hand runs the trimmed corrupted prompt.
    let probe = r.corrupt_probe.clone().expect("the trimmed tokens as text");
    h.get_by_label("Patch it by hand").click();
    h.run_steps(2);
    assert_eq!(h.state().state.probe, probe);
    wait_for(&mut h, "the patched run", |a| {
        !a.is_busy() && a.runtime.result.is_some()
    });
    assert_eq!(h.state().error, None);
    assert_eq!(
        h.state().runtime.result.as_ref().unwrap().tokens.len(),
        n_clean
    );
}

#[test]
fn clicking_a_next_token_in_the_output_panel_pins_the_circuits_target() {
    let mut h = loaded([1280.0, 800.0], "hello world");
    h.state_mut().state.circuits.target = " Paris".into();
    assert!(!h.state().state.circuits_open);
    let (text, p) = h.state().derived.next.baseline[1].clone();
    h.get_by_label(&format!("{p:.4} {text}")).click();
    h.run_steps(3);
    assert_eq!(h.state().state.circuits.target, text);
    assert!(
        h.state().state.circuits_open,
        "the window opens, so the pin is seen"
    );
    // The lens runs on the pinned target.
    h.state_mut().apply(Command::RunLens, 0.0);
    wait_for(&mut h, "the lens", |a| {
        !a.runtime.circuits.lens.is_running() && a.runtime.circuits.lens.last.is_some()
    });
    let lens = h.state().runtime.circuits.lens.result().cloned();
    let lens = lens.unwrap_or_else(|| panic!("{:?}", h.state().runtime.circuits.lens.error()));
    assert_eq!(lens.target.map(|t| t.token), Some(text));
}

/// The heatmap's rows of layer 1, in order.
fn rows(h: &Harness<'static, HubelApp>) -> Vec<hubel::features::FeatureId> {
    h.state().derived.rows.iter().map(|r| r.feature).collect()
}

#[test]
fn the_heatmap_ranks_its_rows_by_direct_effect_on_the_pinned_target() {
    use hubel::analysis::maps;
    use hubel::app::state::RowRanking;
    use hubel::app::text::visible;
    use hubel::circuits::dla::{self, DlaRequest};
    use hubel::features::{Basis, FeatureId};
    let mut h = loaded([1280.0, 800.0], "hello world");
    h.state_mut().state.layer = 1;
    h.state_mut().state.circuits.target.clear();
    h.run_steps(3);
    let top_k = h.state().state.top_k;
    // Without a target the option is there, disabled, saying how to pin one.
    let option = h.get_by_label("Direct effect on a target");
    assert!(option.accesskit_node().is_disabled());
    h.get_by_label_contains("No target pinned: click a next token in the output panel");
    let base = h.state().runtime.result.as_ref().unwrap().baseline.clone();
    let by_activation = maps::top_features(&base.record, 1, Basis::Neurons, top_k, 1);
    assert_eq!(rows(&h), by_activation);
    assert!(h.state().derived.rows.iter().all(|r| r.effect.is_none()));

    // Pin a next token of the output panel (one that is a single token when typed).
    let model = hubel::model::Model::open(tiny_llama()).unwrap();
    let next = h.state().derived.next.baseline.clone();
    let (text, p) = next
        .iter()
        .find(|(t, _)| hubel::circuits::single_token(&model, t, "target").is_ok())
        .cloned()
        .expect("a next token that is one token");
    h.get_by_label(&format!("{p:.4} {text}")).click();
    h.run_steps(3);
    assert_eq!(h.state().state.circuits.target, text);
    h.state_mut().apply(Command::ShowCircuits(false), 0.0);
    h.run_steps(3);
    assert!(h.query_by_label("Direct effect on a target").is_none());

    // A versus token that is several tokens: the failure is shown, the rows stay as they were.
    h.state_mut().state.circuits.versus = "hello world".into();
    h.run_steps(2);
    let option = format!(
        "Direct effect on {} − {}",
        visible(&text),
        visible("hello world")
    );
    h.get_by_label(&option).click();
    h.run_steps(2);
    assert_eq!(h.state().state.ranking, RowRanking::DirectEffect);
    wait_for(&mut h, "the effects' failure", |a| {
        !a.runtime.circuits.effects.is_running() && a.runtime.circuits.effects.last.is_some()
    });
    let e = h.state().runtime.circuits.effects.error().map(String::from);
    assert!(e.as_deref().is_some_and(|e| e.contains("not one")), "{e:?}");
    h.get_by_label_contains("No direct effects (");
    assert_eq!(rows(&h), by_activation);

    // The target alone: the rows are the layer's neurons by |direct effect| at the last token,
    // computed on the worker's thread even while a long job (a scan, a training) holds the
    // job runner.
    let long_job = h.state().runtime.jobs.submit("a long job", |ctx| loop {
        ctx.checkpoint()?;
        std::thread::sleep(Duration::from_millis(2));
    });
    h.state_mut().state.circuits.versus.clear();
    wait_for(&mut h, "the rows ranked by effect", |a| {
        a.derived.effect_ranking.is_some()
    });
    h.state().runtime.jobs.cancel(long_job);
    let report = dla::run(
        &model,
        &DlaRequest {
            text: "hello world".into(),
            target: text.clone(),
            versus: None,
            position: None,
            neurons: usize::MAX,
            interventions: Vec::new(),
        },
    )
    .unwrap();
    let mut want: Vec<_> = report.neurons.iter().filter(|n| n.layer == 1).collect();
    want.sort_by(|a, b| {
        b.value
            .abs()
            .total_cmp(&a.value.abs())
            .then(a.neuron.cmp(&b.neuron))
    });
    let by_effect = rows(&h);
    assert_eq!(
        by_effect,
        want.iter()
            .take(top_k)
            .map(|n| FeatureId::neuron(1, n.neuron))
            .collect::<Vec<_>>()
    );
    assert_ne!(by_effect, by_activation, "the order changed");
    for (row, n) in h.state().derived.rows.iter().zip(&want) {
        let got = row.effect.expect("each row has its effect");
        common::assert_close(&row.feature.label(), &[got], &[n.value], 1e-6, 1e-6);
        // The cells are still the activations.
        assert_eq!(
            row.values,
            maps::feature_activations(&base.record, row.feature)
        );
    }
    // Each label shows the effect and the target.
    let first = &h.state().derived.rows[0];
    let label = h
        .get_all_by_label_contains(&format!("{} ", first.feature.label()))
        .filter_map(|n| n.accesskit_node().label())
        .find(|l| l.contains('→'))
        .expect("the first row's label");
    assert!(
        label.ends_with(&format!(" → {}", visible(&text))),
        "{label}"
    );
    let shown: f32 = label.split(' ').nth(1).unwrap().parse().unwrap();
    let v = first.effect.unwrap();
    assert!(
        (shown - v).abs() <= 0.0051 * v.abs().max(0.01),
        "{label}: {v}"
    );
    h.get_by_label_contains("by |direct effect| on logit(");

    // A selected feature outside the top K is pinned below the rows, with its effect.
    let last = want.last().unwrap();
    let outside = FeatureId::neuron(1, last.neuron);
    h.state_mut().apply(Command::Select(Some(outside)), 0.0);
    h.run_steps(3);
    let pinned = h.state().derived.rows.last().unwrap().clone();
    assert_eq!(pinned.feature, outside);
    assert!(pinned.pinned);
    assert_eq!(pinned.effect, Some(last.value));
    assert_eq!(rows(&h)[..top_k], by_effect[..]);

    // An edit does not move the rows: they are ranked on the baseline.
    let ablate = format!("Ablate {}", by_effect[0].label());
    h.get_by_label(&ablate).click();
    wait_for(&mut h, "the ablated run", |a| {
        !a.is_busy()
            && a.runtime
                .result
                .as_ref()
                .is_some_and(|r| r.intervened.is_some())
    });
    assert_eq!(rows(&h)[..top_k], by_effect[..]);
    assert!(h.state().derived.effect_ranking.is_some());

    // Back to peak |activation|.
    h.get_by_label("Peak |activation|").click();
    h.run_steps(3);
    assert_eq!(h.state().state.ranking, RowRanking::PeakActivation);
    assert_eq!(rows(&h)[..top_k], by_activation[..]);
    assert!(h.state().derived.effect_ranking.is_none());
    assert_eq!(h.state().error, None);
}
