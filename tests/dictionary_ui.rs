//! The Dictionary window as a person uses it (kittest, driven by labels): the menu opens it, a
//! dictionary trains as a job with its curve drawn while it runs, the factor atlas lists its
//! atoms, a word is decomposed into atoms, and ablating one edits the probe, whose output
//! changes; the window fits from 1000×700 to 1920×1080. The corpus is WordNet from the data
//! directory (fetched by `hubel fetch`, as CI does), the model a tiny fixture.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use hubel::app::fonts::FontSource;
use hubel::app::state::DictionaryForm;
use hubel::app::{AppConfig, AppState, Command, HubelApp};
use hubel::features::dictionary::Method;
use hubel::hooks::Op;

const DROID: &str = "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf";
const PROBE: &str = "She ate an apple and a pear.";

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

/// The data directory holding WordNet (fetched through the program's own code, as the model is).
fn data_dir() -> PathBuf {
    let dir = hubel::assets::assets_dir();
    hubel::assets::fetch_corpus(
        &dir,
        &hubel::assets::Clients::default(),
        &mut |_| {},
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap_or_else(|e| panic!("fetching WordNet: {e}"));
    dir
}

fn harness(size: [f32; 2]) -> Harness<'static, HubelApp> {
    let config = AppConfig {
        assets: data_dir(),
        native_dialogs: false,
        ..AppConfig::default()
    };
    let state = AppState {
        probe: PROBE.into(),
        continuation: 0,
        dictionary: DictionaryForm {
            method: Method::Topk,
            layers: "0".into(),
            atoms: 32,
            k: 4,
            tokens: 1500,
            epochs: 4,
            word: "apple".into(),
            context: PROBE.into(),
            ..DictionaryForm::default()
        },
        ..AppState::default()
    };
    Harness::builder()
        .with_size(size)
        .with_max_steps(100_000)
        .build_eframe(move |cc| {
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
            start.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}; error: {:?}, message: {:?}",
            h.state().error,
            h.state().runtime.dictionaries.message
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.run_steps(3);
}

fn loaded(size: [f32; 2]) -> Harness<'static, HubelApp> {
    let mut h = harness(size);
    h.state_mut().load_model(tiny_llama());
    wait_for(&mut h, "the model and the first run", |a| {
        a.runtime.model.is_some() && a.runtime.result.is_some() && !a.is_busy()
    });
    h
}

fn inside(rect: egui::Rect, size: [f32; 2]) -> bool {
    rect.min.x >= 0.0 && rect.max.x <= size[0] && rect.min.y >= 0.0 && rect.max.y <= size[1]
}

fn trained(h: &mut Harness<'static, HubelApp>) {
    wait_for(h, "the training", |a| {
        !a.runtime.dictionaries.is_training() && a.runtime.dictionaries.train.last.is_some()
    });
    let d = &h.state().runtime.dictionaries;
    assert!(d.train.result().is_some(), "{:?}", d.train.error());
}

#[test]
fn a_dictionary_trains_and_a_word_is_decomposed_and_ablated() {
    let mut h = loaded([1280.0, 800.0]);
    h.get_by_label("Dictionary").click();
    h.run_steps(2);
    h.get_by_label("Open the Dictionary window").click();
    h.run_steps(3);
    h.get_by_label("▶ Train").click();
    h.run_steps(2);
    assert!(
        h.state().runtime.dictionaries.is_training(),
        "the Train button starts a job"
    );
    trained(&mut h);
    let d = &h.state().runtime.dictionaries;
    let curve = &d.curve;
    assert!(!curve.is_empty(), "the curve arrived while it ran");
    assert!(curve
        .iter()
        .all(|p| p.fvu.is_finite() && p.l0 <= 4.0 + 1e-6));
    let (dict, path) = d.train.result().unwrap().clone();
    assert_eq!(d.current.as_ref().unwrap().title(), dict.title());
    assert!(path.is_file(), "saved at {}", path.display());
    assert_eq!(dict.atoms(), 32);
    h.get_by_label_contains("epoch ");
    assert!(h.get_all_by_label_contains(&dict.title()).next().is_some());

    // The atlas lists the atoms that fire, each with its label.
    h.get_by_label("Factor atlas").click();
    h.run_steps(3);
    h.get_by_label_contains("atoms that fire");
    let row = &h.state().runtime.dictionaries.atlas[0];
    h.get_all_by_label(&format!("D{}", row.atom))
        .next()
        .unwrap();

    // Meta-meanings of "apple" in the probe's text, then one atom ablated in the probe.
    h.get_by_label("Meta-meanings").click();
    h.run_steps(2);
    h.get_by_label("▶ Decompose").click();
    wait_for(&mut h, "the decomposition", |a| {
        a.runtime.dictionaries.decompose.last.is_some()
            && !a.runtime.dictionaries.decompose.is_running()
    });
    let parts = h.state().runtime.dictionaries.decompose.result().cloned();
    let parts =
        parts.unwrap_or_else(|| panic!("{:?}", h.state().runtime.dictionaries.decompose.error()));
    let first = &parts[0].parts[0];
    assert!(first.coef > 0.0);
    h.get_by_label_contains(&format!("× {}", first.feature));
    let before = h
        .state()
        .runtime
        .result
        .as_ref()
        .unwrap()
        .baseline
        .logits
        .clone();
    h.get_all_by_label("ablate").next().unwrap().click();
    h.run_steps(2);
    let ivs = &h.state().state.interventions;
    assert_eq!(ivs.len(), 1, "{ivs:?}");
    assert!(
        matches!(&ivs[0].op, Op::AddScaled { label, .. } if label.starts_with(&format!("{} ablated", first.feature))),
        "{:?}",
        ivs[0].op
    );
    wait_for(&mut h, "the intervened run", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
            && !a.is_busy()
    });
    let r = h.state().runtime.result.as_ref().unwrap();
    assert!(r.kl.unwrap() > 0.0, "the output changed: KL {:?}", r.kl);
    assert_eq!(r.baseline.logits, before, "the baseline is untouched");
    // The chip names the feature.
    assert!(h
        .get_all_by_label_contains(&format!("{} ablated", first.feature))
        .next()
        .is_some());
}

#[test]
fn the_dictionary_window_fits_from_1000x700_to_1920x1080() {
    for size in [[1000.0, 700.0], [1920.0, 1080.0]] {
        let mut h = loaded(size);
        h.state_mut().state.dictionary.method = Method::Itda;
        h.state_mut().apply(Command::ShowDictionary(true), 0.0);
        h.state_mut().apply(Command::TrainDictionary, 0.0);
        trained(&mut h);
        for label in [
            "▶ Train",
            "Factor atlas",
            "Meta-meanings",
            "Open dictionary…",
        ] {
            let r = h.get_by_label(label).rect();
            assert!(inside(r, size), "{label} at {size:?}: {r:?}");
        }
        h.get_by_label("Meta-meanings").click();
        h.run_steps(2);
        let r = h.get_by_label("▶ Decompose").rect();
        assert!(inside(r, size), "Decompose at {size:?}: {r:?}");
        // A word the context lacks is refused with a message in the window.
        h.state_mut().state.dictionary.context = "no such thing here".into();
        h.get_by_label("▶ Decompose").click();
        wait_for(&mut h, "the decomposition", |a| {
            a.runtime.dictionaries.decompose.last.is_some()
                && !a.runtime.dictionaries.decompose.is_running()
        });
        assert!(h
            .get_all_by_label_contains("does not contain")
            .next()
            .is_some());
    }
}
