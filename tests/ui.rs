//! The viewer driven as a person drives it, through its accessible labels (egui_kittest): type a
//! probe, click a feature in the heatmap, ablate it, see the output change and change back.
//! Most tests use the tiny random Llama fixture; one runs the real SmolLM2 end to end.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use hubel::app::{AppState, HubelApp};

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

fn harness(state: AppState) -> Harness<'static, HubelApp> {
    Harness::builder()
        .with_size([1500.0, 1700.0])
        .with_max_steps(100_000)
        .build_eframe(move |cc| {
            // The app's own font set-up: a CJK fallback found through fontconfig (.ci/run installs one).
            let cjk = hubel::app::fonts::install(&cc.egui_ctx);
            assert!(
                matches!(cjk, hubel::app::fonts::CjkFont::Loaded(_)),
                "{cjk:?}"
            );
            HubelApp::with_state(&cc.egui_ctx, state)
        })
}

/// Steps frames until `cond` holds (the worker answers on its own thread).
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

fn loaded(model: PathBuf, probe: &str) -> Harness<'static, HubelApp> {
    let state = AppState {
        probe: probe.into(),
        continuation: 4,
        ..AppState::default()
    };
    let mut h = harness(state);
    h.state_mut().load_model(model);
    let needs_run = !probe.trim().is_empty();
    wait_for(&mut h, "the model and the first run", move |a| {
        a.model.is_some() && (a.result.is_some() || !needs_run)
    });
    h
}

#[test]
fn welcome_screen_offers_fetch_and_open_and_reports_a_failed_fetch() {
    let mut h = harness(AppState::default());
    h.run_steps(2);
    h.get_by_label("Open model…");
    h.get_by_label("Open HF folder…");
    // A fetch whose client is missing says so in the window; the UI keeps running.
    let assets = std::env::temp_dir().join(format!("hubel-ui-assets-{}", std::process::id()));
    std::env::set_var("HUBEL_ASSETS", &assets);
    std::env::set_var("HUBEL_PIP", "/nonexistent/pip");
    h.get_by_label("Fetch default model").click();
    wait_for(&mut h, "the fetch to fail", |a| a.error.is_some());
    std::env::remove_var("HUBEL_PIP");
    std::env::remove_var("HUBEL_ASSETS");
    let msg = h.state().error.clone().unwrap();
    assert!(
        msg.contains("Could not fetch the default model") && msg.contains("open a local model"),
        "{msg}"
    );
    assert!(
        h.get_all_by_label_contains("Could not fetch the default model")
            .next()
            .is_some(),
        "shown in the window"
    );
    assert!(h.state().model.is_none());
    let _ = std::fs::remove_dir_all(assets);
}

/// The ablation loop: type, click a feature, ablate, output changes; remove, output is back.
fn ablation_loop(model: PathBuf) {
    let mut h = loaded(model, "");
    const TEXT: &str = "The cat sat on the mat. 苹果是一种水果 🍎";
    h.get_by_label("Probe text").focus();
    h.step();
    h.get_by_label("Probe text").type_text(TEXT);
    wait_for(&mut h, "the typed probe to run", |a| {
        a.state.probe == TEXT && a.result.is_some() && !a.is_busy()
    });
    let tokens = &h.state().result.as_ref().unwrap().tokens;
    assert!(tokens.len() > 10 && tokens[0].text == "The", "{tokens:?}");
    let baseline_top = h.state().result.as_ref().unwrap().baseline.top.clone();
    h.get_by_label("Next token: baseline");
    h.get_by_label_contains("no interventions");

    // Click the strongest feature of the layer shown.
    let label = h.state_mut().heatmap_data().unwrap().rows[0].clone();
    h.get_by_label(&label).click();
    wait_for(&mut h, "the selection", |a| {
        a.selection.is_some_and(|f| f.label() == label)
    });
    h.get_by_label(&format!("Feature {label}"));

    // Ablate it from its heatmap row.
    let runs = h.state().runs_done;
    h.get_by_label(&format!("Ablate {label}")).click();
    wait_for(&mut h, "the ablated run", move |a| {
        a.runs_done > runs && a.result.as_ref().is_some_and(|r| r.intervened.is_some())
    });
    let r = h.state().result.as_ref().unwrap();
    let kl = r.kl.unwrap();
    assert!(
        kl > 0.0,
        "ablating {label} moves the next-token distribution"
    );
    let inter = r.intervened.as_ref().unwrap();
    assert_ne!(
        inter.top.iter().map(|t| t.2).collect::<Vec<_>>(),
        baseline_top.iter().map(|t| t.2).collect::<Vec<_>>(),
        "the probabilities shown changed"
    );
    assert_eq!(
        r.baseline.top, baseline_top,
        "the baseline stays the baseline"
    );
    h.get_by_label(&format!("KL(baseline ‖ intervened) = {kl:.6} nats"));
    h.get_by_label_contains("Next token: intervened");
    h.get_by_label(&format!("Remove {label}"));
    assert!(
        r.layers_computed < h.state().model.as_ref().unwrap().layers || label.starts_with("L0"),
        "incremental re-run"
    );

    // Remove it: the output is the baseline again.
    let runs = h.state().runs_done;
    h.get_by_label(&format!("Remove {label}")).click();
    wait_for(&mut h, "the run without the ablation", move |a| {
        a.runs_done > runs
    });
    let r = h.state().result.as_ref().unwrap();
    assert!(r.intervened.is_none() && r.kl.is_none());
    assert_eq!(r.baseline.top, baseline_top);
    h.get_by_label_contains("no interventions");

    // Ctrl+Z brings the ablation back; Esc clears the selection.
    let runs = h.state().runs_done;
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    wait_for(&mut h, "the undone removal", move |a| a.runs_done > runs);
    assert_eq!(h.state().interventions.len(), 1);
    assert!(h.state().result.as_ref().unwrap().kl.unwrap() > 0.0);
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert!(h.state().selection.is_none());
}

#[test]
fn ablation_loop_on_a_tiny_model() {
    ablation_loop(tiny_llama());
}

#[test]
fn ablation_loop_on_smollm2() {
    ablation_loop(common::default_model_path());
}

#[test]
fn a_malformed_session_shows_an_error_and_keeps_the_state() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = std::env::temp_dir().join(format!("hubel-ui-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A good session round-trips.
    let label = h.state_mut().heatmap_data().unwrap().rows[0].clone();
    h.get_by_label(&format!("Ablate {label}")).click();
    wait_for(&mut h, "the ablation", |a| {
        a.result.as_ref().is_some_and(|r| r.intervened.is_some())
    });
    let good = dir.join("good.json");
    h.state_mut().save_session(&good);
    let saved = h.state().session();

    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"version\": 1, \"interventions\": 42").unwrap();
    let now = 100.0;
    h.state_mut().open_session(&bad, now);
    h.run_steps(2);
    h.get_by_label_contains("is not a Hubel session");
    assert_eq!(h.state().session(), saved, "the current state is intact");
    assert_eq!(h.state().state.probe, "hello world");

    h.state_mut().interventions.clear();
    h.state_mut().open_session(&good, now);
    wait_for(&mut h, "the reopened session", |a| {
        a.result.as_ref().is_some_and(|r| r.intervened.is_some())
    });
    assert_eq!(h.state().session(), saved);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn exports_write_png_csv_and_json() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = std::env::temp_dir().join(format!("hubel-ui-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = h.state_mut();
    app.export_heatmap(&dir.join("h.png"), true);
    app.export_heatmap(&dir.join("h.csv"), false);
    app.export_output(&dir.join("o.json"));
    assert!(app.error.is_none(), "{:?}", app.error);
    assert_eq!(&std::fs::read(dir.join("h.png")).unwrap()[..4], b"\x89PNG");
    let csv = std::fs::read_to_string(dir.join("h.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + app.state.top_k.min(48));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("o.json")).unwrap()).unwrap();
    assert_eq!(json["baseline"]["top_next"].as_array().unwrap().len(), 10);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_over_long_probe_is_a_message_not_a_freeze() {
    let mut h = loaded(tiny_llama(), "hello");
    h.state_mut().state.probe = "word ".repeat(200);
    h.state_mut().request_run(1.0);
    wait_for(&mut h, "the error", |a| a.error.is_some());
    assert!(h
        .state()
        .error
        .as_ref()
        .unwrap()
        .contains("the model's context holds 96"));
    h.get_by_label_contains("shorten the text");
}

#[test]
fn a_session_for_another_model_loads_it_then_applies_its_edits() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = std::env::temp_dir().join(format!("hubel-ui-session2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gpt2 = common::fixtures().join("tiny_gpt2").join("model");
    let session = hubel::session::Session {
        model_path: Some(gpt2.clone()),
        probe: "a different probe".into(),
        interventions: vec![hubel::hooks::Intervention::zero(
            hubel::hooks::HookPoint::block(1, hubel::hooks::BlockSite::MlpPost),
            vec![5],
        )],
        selection: Some(hubel::features::FeatureId::neuron(1, 5)),
        layer: Some(1),
        ..Default::default()
    };
    let path = dir.join("gpt2.json");
    session.save(&path).unwrap();
    h.state_mut().open_session(&path, 50.0);
    wait_for(&mut h, "the session's model and run", |a| {
        a.model.as_ref().is_some_and(|m| m.arch == "gpt2")
            && a.result.as_ref().is_some_and(|r| r.intervened.is_some())
    });
    let app = h.state();
    assert_eq!(app.state.probe, "a different probe");
    assert_eq!(app.interventions, session.interventions);
    assert_eq!(app.selection, session.selection);
    std::fs::remove_dir_all(dir).unwrap();
}
