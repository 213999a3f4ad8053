//! The Dictionary window as a person uses it (kittest, driven by labels): the menu opens it, a
//! dictionary trains as a job with its curve drawn while it runs, the factor atlas lists its
//! atoms, a word is decomposed into atoms, and ablating one edits the probe, whose output
//! changes; the window fits from 1000×700 to 1920×1080. The corpus is WordNet from the data
//! directory (fetched by `hubel fetch`, as CI does), the model a tiny fixture.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use hubel::app::fonts::FontSource;
use hubel::app::state::DictionaryForm;
use hubel::app::{AppConfig, AppState, Command, HubelApp};
use hubel::features::dictionary::{io, Encoding, Method};
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

    // Its codes by pursuit over the same atoms: the dictionary in use changes (and the worker is
    // told), the file and the atoms do not; the steps below (atlas, decomposition, ablation) use
    // the dictionary coded by pursuit.
    h.get_by_label("pursuit over its atoms").click();
    h.run_steps(3);
    let d = &h.state().runtime.dictionaries;
    let current = d.current.clone().unwrap();
    assert_eq!(current.config.encoding, Encoding::Pursuit);
    assert_eq!(current.w_dec, dict.w_dec);
    assert_eq!(d.path.as_ref(), Some(&path));
    assert!(Arc::ptr_eq(d.worker_dict.as_ref().unwrap(), &current));
    assert_eq!(io::load(&path).unwrap().config.encoding, Encoding::Native);
    assert!(current.title().ends_with("codes by pursuit"));
    h.get_by_label(&current.title());

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

/// The dictionary's features as the layer map's basis: chosen in the Basis menu (disabled
/// until a dictionary is in use), rows of its features ranked by their peak code with the codes
/// the worker added, a click opens the feature's card (its label and examples), and its ablate
/// box edits the probe along the atom.
#[test]
fn dictionary_features_are_a_basis_of_the_layer_map_and_the_card() {
    use hubel::features::{Basis, FeatureId};
    let mut h = loaded([1280.0, 800.0]);
    // Before any dictionary, the basis cannot be chosen.
    h.get_by_label("Basis").click();
    h.run_steps(2);
    assert!(h
        .get_by_label("Dictionary features")
        .accesskit_node()
        .is_disabled());
    // A second click closes the menu.
    h.get_by_label("Basis").click();
    h.run_steps(2);
    assert!(h.query_by_label("Dictionary features").is_none());
    h.state_mut().apply(Command::TrainDictionary, 0.0);
    trained(&mut h);
    let dict = h.state().runtime.dictionaries.current.clone().unwrap();
    assert_eq!(dict.resid_layers(), vec![(0, 0)]);

    h.get_by_label("Basis").click();
    h.run_steps(2);
    h.get_by_label("Dictionary features").click();
    wait_for(&mut h, "the probe coded with the dictionary", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.dictionary.is_some())
            && !a.is_busy()
    });
    assert_eq!(h.state().state.basis, Basis::Dictionary);
    h.state_mut().state.layer = 0;
    h.run_steps(3);
    let rows = h.state().derived.rows.clone();
    assert!(!rows.is_empty(), "dictionary rows");
    let record = &h.state().runtime.result.as_ref().unwrap().baseline.record;
    let codes = record.codes(0).expect("the worker added codes");
    for r in &rows {
        assert_eq!(r.feature.basis, Basis::Dictionary);
        assert_eq!(r.feature.layer, 0);
        let column: Vec<f32> = (0..codes.shape[0])
            .map(|p| codes.row(p)[r.feature.index])
            .collect();
        assert_eq!(r.values, column, "{}", r.feature);
    }
    let top = rows[0].feature;
    let peak =
        |f: FeatureId| (1..codes.shape[0]).fold(0f32, |m, p| m.max(codes.row(p)[f.index].abs()));
    let best = (0..dict.atoms())
        .map(|j| peak(FeatureId::atom(0, j)))
        .fold(0f32, f32::max);
    assert_eq!(peak(top), best, "the first row has the largest code");
    assert!(best > 0.0);

    // Its card: the label and the dictionary's examples, the occlusion map of the worker.
    h.get_by_label(&top.label()).click();
    h.run_steps(3);
    assert_eq!(h.state().state.selection, Some(top));
    h.get_by_label(&format!("Feature {}", top.label()));
    assert!(h
        .get_all_by_label_contains("Examples (the dictionary's training text)")
        .next()
        .is_some());
    assert!(h
        .get_all_by_label_contains(&dict.label(top.index))
        .next()
        .is_some());

    // Its ablate box: one AddScaled edit of this atom at layer 0; the output changes.
    h.get_by_label(&format!("Ablate {}", top.label())).click();
    h.run_steps(2);
    let ivs = h.state().state.interventions.clone();
    assert_eq!(ivs.len(), 1, "{ivs:?}");
    assert_eq!(FeatureId::of_intervention(&ivs[0]), Some(top));
    wait_for(&mut h, "the intervened run", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
            && !a.is_busy()
    });
    let r = h.state().runtime.result.as_ref().unwrap();
    let after =
        hubel::analysis::maps::feature_activations(&r.intervened.as_ref().unwrap().record, top);
    let before = hubel::analysis::maps::feature_activations(&r.baseline.record, top);
    let p = (1..before.len())
        .max_by(|&a, &b| before[a].total_cmp(&before[b]))
        .unwrap();
    assert!(after[p] <= 0.05 * before[p], "{} → {}", before[p], after[p]);
    // Unticking removes it.
    h.get_by_label(&format!("Ablate {}", top.label())).click();
    h.run_steps(2);
    assert!(h.state().state.interventions.is_empty());

    // Ranked by direct effect on the model's own next token: its features' effects.
    wait_for(&mut h, "the run without edits", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_none())
            && !a.is_busy()
    });
    let next = h
        .state()
        .runtime
        .result
        .as_ref()
        .unwrap()
        .baseline
        .summary
        .top_next[0]
        .token
        .clone();
    h.state_mut().state.circuits.target = next;
    h.state_mut().state.circuits.versus.clear();
    h.state_mut().state.ranking = hubel::app::state::RowRanking::DirectEffect;
    wait_for(&mut h, "the rows ranked by direct effect", |a| {
        a.derived.effect_ranking.is_some()
    });
    let report = h
        .state()
        .runtime
        .circuits
        .effects
        .result()
        .unwrap()
        .report
        .clone();
    let effects = report.layers[0]
        .effects(Basis::Dictionary)
        .unwrap()
        .to_vec();
    let rows = h.state().derived.rows.clone();
    // The selected feature stays as a pinned row below the top K.
    let ranked: Vec<FeatureId> = rows
        .iter()
        .filter(|r| !r.pinned)
        .map(|r| r.feature)
        .collect();
    let by_effect: Vec<FeatureId> =
        hubel::analysis::maps::top_by_effect(&effects, 0, Basis::Dictionary, 16)
            .into_iter()
            .filter(|f| effects[f.index] != 0.0)
            .collect();
    assert_eq!(
        ranked, by_effect,
        "the features that write to the target, by |effect|"
    );
    for r in &rows {
        assert_eq!(r.effect, Some(effects[r.feature.index]));
    }
    assert!(rows[0].effect.unwrap().abs() > 0.0);
}
