//! The viewer driven as a person drives it, through its accessible labels (egui_kittest): type a
//! probe, click a feature in the heatmap, ablate it, see the output change and change back; save
//! through the built-in file dialog; restore the working state; survive bad sessions.
//! Most tests use the tiny random Llama fixture; one runs the real SmolLM2 end to end.
//!
//! The fonts are the hard case on purpose: where `fonts-droid-fallback` is installed (CI installs
//! it), its DroidSansFallbackFull, which lacks ↵ → ‖ ✕, is forced in as the CJK fallback, and the
//! missing-glyph policy is set back to Panic after the app's own set-up (which chooses boxes), so
//! any symbol the UI draws that no bundled font has fails these tests.
//! Configuration is passed explicitly ([`AppConfig`]), never through process-wide environment.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use hubel::app::fonts::{CjkFont, FontSource};
use hubel::app::{AppConfig, AppState, HubelApp, ViewMode};
use hubel::features::FeatureId;
use hubel::hooks::{BlockSite, HookPoint, Intervention};
use hubel::session::Session;

const DROID: &str = "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf";

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

/// A fresh folder of this test's own (tests run in parallel in one process).
fn temp_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hubel-ui-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The font the tests force in: Droid where installed (the harder case), else fontconfig's pick.
fn cjk_source() -> FontSource {
    if Path::new(DROID).is_file() {
        FontSource::File(DROID.into())
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs fonts-droid-fallback (.ci/run): {DROID} is missing"
        );
        FontSource::Auto
    }
}

fn test_config() -> AppConfig {
    AppConfig {
        // Never the real asset folder, never a desktop dialog.
        assets: temp_dir("assets"),
        native_dialogs: false,
        ..AppConfig::default()
    }
}

fn harness_sized(state: AppState, config: AppConfig, size: [f32; 2]) -> Harness<'static, HubelApp> {
    Harness::builder()
        .with_size(size)
        .with_max_steps(100_000)
        .build_eframe(move |cc| {
            let cjk = hubel::app::fonts::install_with(&cc.egui_ctx, cjk_source());
            assert!(matches!(cjk, CjkFont::Loaded(_)), "{cjk:?}");
            // install_with chose boxes for missing glyphs; here a missing glyph must fail.
            cc.egui_ctx
                .set_missing_glyph_policy(egui::MissingGlyphPolicy::Panic);
            let mut app = HubelApp::with_config(&cc.egui_ctx, state, config);
            app.cjk = cjk;
            app
        })
}

fn harness(state: AppState) -> Harness<'static, HubelApp> {
    harness_sized(state, test_config(), [1500.0, 1000.0])
}

/// Steps frames until `cond` holds (the worker answers on its own thread).
fn wait_for(h: &mut Harness<'static, HubelApp>, what: &str, cond: impl Fn(&HubelApp) -> bool) {
    let start = Instant::now();
    while !cond(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; error: {:?}; jobs: {:?}",
            h.state().error,
            h.state()
                .runtime
                .job_list
                .iter()
                .map(|j| (&j.name, &j.state))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.run_steps(3);
}

fn probe_state(probe: &str) -> AppState {
    AppState {
        probe: probe.into(),
        continuation: 4,
        ..AppState::default()
    }
}

fn load(
    mut h: Harness<'static, HubelApp>,
    model: PathBuf,
    needs_run: bool,
) -> Harness<'static, HubelApp> {
    h.state_mut().load_model(model);
    wait_for(&mut h, "the model and the first run", move |a| {
        a.runtime.model.is_some() && (a.runtime.result.is_some() || !needs_run) && !a.is_busy()
    });
    h
}

fn loaded(model: PathBuf, probe: &str) -> Harness<'static, HubelApp> {
    load(harness(probe_state(probe)), model, !probe.trim().is_empty())
}

#[test]
fn welcome_screen_offers_fetch_and_open_and_reports_a_failed_fetch() {
    // A fetch whose client is missing says so in the window; the UI keeps running.
    let mut config = test_config();
    config.clients.pip = vec!["/nonexistent/pip".into()];
    let mut h = harness_sized(AppState::default(), config, [1280.0, 720.0]);
    h.run_steps(2);
    h.get_by_label("Open model…");
    h.get_by_label("Open HF folder…");
    h.get_by_label("Fetch default model").click();
    wait_for(&mut h, "the fetch to fail", |a| a.error.is_some());
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
    assert!(h.state().runtime.model.is_none());
}

/// A job shows in the Jobs list with its progress; Pause, Resume and Cancel act on it, and a
/// finished job can be cleared, which hides the list. At the smallest window size supported.
#[test]
fn a_job_shows_in_the_jobs_list_and_cancel_cancels_it() {
    use egui_kittest::kittest::NodeT;
    let size = [1000.0, 700.0];
    let mut h = harness_sized(AppState::default(), test_config(), size);
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("Jobs").is_none(),
        "no list without jobs"
    );
    let id = h.state().runtime.jobs.submit("Scan the corpus", |ctx| {
        ctx.set_total(10, "items");
        ctx.advance(3);
        // Small batches until it is cancelled.
        loop {
            ctx.checkpoint()?;
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let job = |a: &HubelApp| a.runtime.job_list.iter().find(|j| j.id == id).cloned();
    wait_for(&mut h, "the job's progress", move |a| {
        job(a).is_some_and(|j| j.done == 3)
    });
    h.get_by_label("Jobs · 1 running");
    h.get_by_label("Scan the corpus");
    h.get_by_label("3 / 10 items");
    let bar = h.get_by_label("30%");
    assert_eq!(bar.accesskit_node().numeric_value(), Some(30.0));
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(size[0], size[1]));
    for label in ["30%", "Pause", "Cancel"] {
        let rect = h.get_by_label(label).rect();
        assert!(
            window.contains_rect(rect),
            "{label} at {rect:?} is outside the window"
        );
    }

    h.get_by_label("Pause").click();
    wait_for(&mut h, "the pause", move |a| {
        job(a).is_some_and(|j| j.state == hubel::jobs::JobState::Paused)
    });
    h.get_by_label("paused");
    h.get_by_label("Resume").click();
    wait_for(&mut h, "the resume", move |a| {
        job(a).is_some_and(|j| j.state == hubel::jobs::JobState::Running)
    });

    h.get_by_label("Cancel").click();
    wait_for(&mut h, "the cancel", move |a| {
        job(a).is_some_and(|j| j.state == hubel::jobs::JobState::Cancelled)
    });
    assert_eq!(job(h.state()).unwrap().done, 3);
    h.get_by_label("Cancelled");
    h.get_by_label("Jobs");
    assert!(
        h.query_by_label("Cancel").is_none(),
        "a finished job has no Cancel"
    );
    h.get_by_label("Clear").click();
    wait_for(&mut h, "the list to clear", |a| {
        a.runtime.job_list.is_empty()
    });
    assert!(
        h.query_by_label_contains("Jobs").is_none(),
        "the list is gone"
    );
}

/// The ablation loop: type, click a feature, ablate, output changes; remove, output is back.
fn ablation_loop(model: PathBuf) {
    let mut h = loaded(model, "");
    const TEXT: &str = "The cat sat on the mat. 苹果是一种水果 🍎";
    h.get_by_label("Probe text").focus();
    h.step();
    h.get_by_label("Probe text").type_text(TEXT);
    wait_for(&mut h, "the typed probe to run", |a| {
        a.state.probe == TEXT && a.runtime.result.is_some() && !a.is_busy()
    });
    let tokens = &h.state().runtime.result.as_ref().unwrap().tokens;
    assert!(tokens.len() > 10 && tokens[0].text == "The", "{tokens:?}");
    let baseline_top = h.state().derived.next.baseline.clone();
    h.get_by_label("Next token: baseline");
    h.get_by_label_contains("no interventions");

    // Click the strongest feature of the layer shown.
    let label = h.state_mut().heatmap_data().unwrap().rows[0].clone();
    let feature = FeatureId::parse(&label).unwrap();
    h.get_by_label(&label).click();
    wait_for(&mut h, "the selection", move |a| {
        a.state.selection == Some(feature)
    });
    h.get_by_label(&format!("Feature {label}"));

    // Ablate it from its heatmap row.
    let runs = h.state().runtime.runs_done;
    h.get_by_label(&format!("Ablate {label}")).click();
    wait_for(&mut h, "the ablated run", move |a| {
        a.runtime.runs_done > runs
            && a.runtime
                .result
                .as_ref()
                .is_some_and(|r| r.intervened.is_some())
    });
    let r = h.state().runtime.result.as_ref().unwrap();
    let kl = r.kl.unwrap();
    assert!(
        kl > 0.0,
        "ablating {label} moves the next-token distribution"
    );
    let next = h.state().derived.next.clone();
    assert_eq!(next.kl, Some(kl), "the panel's KL is the last position's");
    assert_ne!(
        next.intervened
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.1)
            .collect::<Vec<_>>(),
        baseline_top.iter().map(|t| t.1).collect::<Vec<_>>(),
        "the probabilities shown changed"
    );
    assert_eq!(
        next.baseline, baseline_top,
        "the baseline stays the baseline"
    );
    h.get_by_label(&format!("KL(baseline ‖ intervened) = {kl:.6} nats"));
    h.get_by_label_contains("Next token: intervened");
    h.get_by_label(&format!("Remove {label}"));
    assert!(
        r.layers_computed < h.state().runtime.layers() || label.starts_with("L0"),
        "incremental re-run"
    );

    // View B shows what the rest of the model saw: the ablated neuron is zero everywhere; B − A
    // shows the removed activation; A keeps it.
    let row_of = |a: &HubelApp| {
        a.derived
            .rows
            .iter()
            .find(|r| r.feature == feature)
            .map(|r| r.values.clone())
            .unwrap()
    };
    h.state_mut().state.view = ViewMode::Intervened;
    h.run_steps(2);
    h.get_all_by_label_contains("showing B: intervened")
        .next()
        .unwrap();
    let b = row_of(h.state());
    assert!(b.iter().all(|v| *v == 0.0), "B: {b:?}");
    h.state_mut().state.view = ViewMode::Baseline;
    h.run_steps(2);
    let a = row_of(h.state());
    assert!(a.iter().any(|v| *v != 0.0), "A keeps the clean values");
    h.state_mut().state.view = ViewMode::Difference;
    h.run_steps(2);
    h.get_all_by_label_contains("showing B − A").next().unwrap();
    let d = row_of(h.state());
    for (d, a) in d.iter().zip(&a) {
        assert_eq!(
            *d, -a,
            "B − A at the ablated neuron is minus its activation"
        );
    }
    assert!(h.state().derived.rows_diverging && h.state().derived.map_diverging);
    let curve = h.state().derived.curve.intervened.clone().unwrap();
    assert!(
        curve.iter().all(|v| *v == 0.0),
        "the card's intervened curve too"
    );

    // Remove it: the output is the baseline again, and the maps say so.
    let runs = h.state().runtime.runs_done;
    h.get_by_label(&format!("Remove {label}")).click();
    wait_for(&mut h, "the run without the ablation", move |a| {
        a.runtime.runs_done > runs
    });
    let r = h.state().runtime.result.as_ref().unwrap();
    assert!(r.intervened.is_none() && r.kl.is_none());
    assert_eq!(h.state().derived.next.baseline, baseline_top);
    h.get_by_label_contains("no interventions");
    assert_eq!(h.state().derived.view, Some(ViewMode::Baseline));
    h.get_all_by_label_contains("showing A: baseline (no edits)")
        .next()
        .unwrap();
    assert!(
        !h.state().derived.map_diverging,
        "no difference colours for the baseline's norms"
    );

    // Ctrl+Z brings the ablation back; Esc clears the selection.
    let runs = h.state().runtime.runs_done;
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    wait_for(&mut h, "the undone removal", move |a| {
        a.runtime.runs_done > runs
    });
    assert_eq!(h.state().state.interventions.len(), 1);
    assert!(h.state().runtime.result.as_ref().unwrap().kl.unwrap() > 0.0);
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert!(h.state().state.selection.is_none());
}

#[test]
fn ablation_loop_on_a_tiny_model() {
    ablation_loop(tiny_llama());
}

#[test]
fn ablation_loop_on_smollm2() {
    ablation_loop(common::default_model_path());
    // The status line names the model as people do, not by its GGUF `general.name`.
    let h = loaded(common::default_model_path(), "hi");
    h.get_by_label("SmolLM2-135M-Instruct · Q4_1 GGUF, computed in f32");
}

#[test]
fn a_malformed_session_shows_an_error_and_keeps_the_state() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = temp_dir("session");
    // A good session round-trips.
    let label = h.state_mut().heatmap_data().unwrap().rows[0].clone();
    h.get_by_label(&format!("Ablate {label}")).click();
    wait_for(&mut h, "the ablation", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
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

    h.state_mut().state.interventions.clear();
    h.state_mut().open_session(&good, now);
    wait_for(&mut h, "the reopened session", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
    });
    assert_eq!(h.state().session(), saved);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_session_that_does_not_fit_the_model_is_refused_with_a_message_and_the_worker_serves_on() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = temp_dir("session-unfit");
    let layers = h.state().runtime.layers();
    for (name, session, needle) in [
        (
            "layer.json",
            Session {
                probe: "other text".into(),
                selection: Some(FeatureId::neuron(layers + 7, 1)),
                ..Session::default()
            },
            "does not exist in this model",
        ),
        (
            "edit.json",
            Session {
                probe: "other text".into(),
                interventions: vec![Intervention::zero(
                    HookPoint::block(layers + 3, BlockSite::MlpPost),
                    vec![1],
                )],
                ..Session::default()
            },
            "names layer",
        ),
        (
            "index.json",
            Session {
                probe: "other text".into(),
                interventions: vec![Intervention::zero(
                    HookPoint::block(0, BlockSite::MlpPost),
                    vec![1_000_000],
                )],
                ..Session::default()
            },
            "names index 1000000",
        ),
    ] {
        let path = dir.join(name);
        session.save(&path).unwrap();
        h.state_mut().open_session(&path, 10.0);
        wait_for(&mut h, "the message", |a| a.error.is_some() && !a.is_busy());
        let e = h.state().error.clone().unwrap();
        assert!(
            e.contains("does not fit") && e.contains(needle),
            "{name}: {e}"
        );
        assert_eq!(
            h.state().state.probe,
            "hello world",
            "{name}: nothing applied"
        );
        assert!(h.state().state.interventions.is_empty());
    }
    // The worker is alive: a new probe runs.
    h.state_mut().state.probe = "still serving".into();
    let runs = h.state().runtime.runs_done;
    h.state_mut().request_run(20.0);
    wait_for(&mut h, "a run after the refusals", move |a| {
        a.runtime.runs_done > runs
    });
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_load_drops_the_session_that_waited_for_it() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = temp_dir("session-failed-load");
    let session = Session {
        model_path: Some(dir.join("no-such-model.gguf")),
        probe: "the session's probe".into(),
        interventions: vec![Intervention::zero(
            HookPoint::block(0, BlockSite::MlpPost),
            vec![1],
        )],
        ..Session::default()
    };
    let path = dir.join("s.json");
    session.save(&path).unwrap();
    h.state_mut().open_session(&path, 1.0);
    wait_for(&mut h, "the failed load", |a| {
        a.error.is_some() && !a.is_busy()
    });
    assert!(h
        .state()
        .error
        .as_ref()
        .unwrap()
        .contains("Could not open the model"));
    // The next successful load must not apply the session.
    h = load(h, tiny_llama(), true);
    assert_eq!(h.state().state.probe, "hello world");
    assert!(h.state().state.interventions.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_working_state_comes_back_after_a_restart() {
    let ablated = Intervention::zero(HookPoint::block(1, BlockSite::MlpPost), vec![5]);
    let state = AppState {
        model_path: Some(tiny_llama()),
        probe: "restored probe".into(),
        interventions: vec![ablated.clone()],
        selection: Some(FeatureId::neuron(1, 5)),
        layer: 1,
        view: ViewMode::Difference,
        ..AppState::default()
    };
    // What eframe saved is what eframe gives back.
    let json = serde_json::to_string(&state).unwrap();
    let state: AppState = serde_json::from_str(&json).unwrap();
    let mut h = harness(state);
    h.state_mut().restore();
    wait_for(&mut h, "the restored run", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
            && !a.is_busy()
    });
    let app = h.state();
    assert_eq!(app.state.probe, "restored probe");
    assert_eq!(app.state.interventions, vec![ablated]);
    assert_eq!(app.state.selection, Some(FeatureId::neuron(1, 5)));
    assert_eq!(app.state.view, ViewMode::Difference);
}

#[test]
fn a_saved_model_that_has_moved_is_reported_at_start() {
    let state = AppState {
        model_path: Some(temp_dir("moved").join("gone.gguf")),
        ..AppState::default()
    };
    let mut h = harness(state);
    h.state_mut().restore();
    h.run_steps(2);
    assert!(!h.state().is_busy());
    assert!(h.state().error.as_ref().unwrap().contains("gone.gguf"));
    h.get_all_by_label_contains("is no longer there")
        .next()
        .unwrap();
}

#[test]
fn save_session_works_through_the_built_in_dialog() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = temp_dir("save-dialog");
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Save session…").click();
    h.run_steps(3);
    assert!(h.state().dialogs.is_open(), "the built-in dialog opened");
    h.get_by_label("Folder").focus();
    h.run_steps(1);
    // Replace the folder and the file name as a user types them.
    h.state_mut().dialogs.built_in().unwrap().folder = dir.display().to_string();
    h.run_steps(1);
    h.get_by_label("File name").focus();
    h.state_mut().dialogs.built_in().unwrap().name = String::new();
    h.run_steps(1);
    h.get_by_label("File name").type_text("mine.json");
    h.run_steps(2);
    h.get_by_label("Save").click();
    h.run_steps(3);
    let path = dir.join("mine.json");
    assert!(!h.state().dialogs.is_open());
    let saved = Session::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(saved.probe, "hello world");
    std::fs::remove_dir_all(dir).unwrap();
}

/// With desktop dialogs on, where none can open (no D-Bus session, no zenity: CI, containers),
/// Save session falls back to the built-in dialog, says why, and the file is written.
#[test]
fn where_no_desktop_dialog_answers_the_built_in_one_opens_says_why_and_saves() {
    let has_zenity = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("zenity").is_file()));
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() || has_zenity {
        eprintln!("skipped: a desktop dialog could open here");
        return;
    }
    let mut config = test_config();
    config.native_dialogs = true;
    let mut h = harness_sized(probe_state("hello"), config, [1280.0, 720.0]);
    h = load(h, tiny_llama(), true);
    let dir = temp_dir("portal-less");
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Save session…").click();
    let start = Instant::now();
    while h.state_mut().dialogs.built_in().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "no fallback");
        std::thread::sleep(Duration::from_millis(10));
        h.step();
    }
    h.run_steps(2);
    h.get_by_label_contains("did not open");
    let d = h.state_mut().dialogs.built_in().unwrap();
    d.folder = dir.display().to_string();
    d.name = "fallback.json".into();
    h.run_steps(5);
    h.get_by_label("Save").click();
    h.run_steps(3);
    assert!(!h.state().dialogs.is_open(), "error: {:?}", h.state().error);
    let saved = Session::load(&dir.join("fallback.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(saved.probe, "hello");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A result that arrives for a run the app no longer waits for is dropped; the newest is shown.
#[test]
fn a_stale_result_is_dropped() {
    let mut h = loaded(tiny_llama(), "hello world");
    // A result with another run's id, computed by a second worker.
    let w = hubel::app::worker::WorkerHandle::spawn(|| {});
    w.send(hubel::app::worker::Request::Load(tiny_llama()));
    w.send(hubel::app::worker::Request::Run(
        hubel::app::worker::RunRequest {
            id: 1_000,
            text: "a stale text".into(),
            interventions: Vec::new(),
            continuation: 0,
            cancel: Default::default(),
            precision: hubel::model::Precision::Exact,
            dictionary: None,
        },
    ));
    let stale = loop {
        match w.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            hubel::app::worker::Response::Run(r) => break r,
            _ => continue,
        }
    };
    h.state_mut().state.probe = "the newest text".into();
    h.state_mut().request_run(5.0);
    let runs = h.state().runtime.runs_done;
    // The stale one arrives while the newest is in flight: ignored.
    h.state_mut()
        .handle(hubel::app::worker::Response::Run(stale), 5.1);
    assert_eq!(h.state().runtime.runs_done, runs);
    assert!(h.state().runtime.result.as_ref().unwrap().tokens[0].text != "a");
    wait_for(&mut h, "the newest run", move |a| {
        a.runtime.runs_done > runs
    });
    let r = h.state().runtime.result.as_ref().unwrap();
    let text: String = r.tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(text, "the newest text");
}

#[test]
fn exports_write_png_csv_and_json() {
    let mut h = loaded(tiny_llama(), "hello world");
    let dir = temp_dir("export");
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
    let dir = temp_dir("session2");
    let gpt2 = common::fixtures().join("tiny_gpt2").join("model");
    let session = Session {
        model_path: Some(gpt2.clone()),
        probe: "a different probe".into(),
        interventions: vec![Intervention::zero(
            HookPoint::block(1, BlockSite::MlpPost),
            vec![5],
        )],
        selection: Some(FeatureId::neuron(1, 5)),
        layer: Some(1),
        ..Default::default()
    };
    let path = dir.join("gpt2.json");
    session.save(&path).unwrap();
    h.state_mut().open_session(&path, 50.0);
    wait_for(&mut h, "the session's model and run", |a| {
        a.runtime.model.as_ref().is_some_and(|m| m.arch == "gpt2")
            && a.runtime
                .result
                .as_ref()
                .is_some_and(|r| r.intervened.is_some())
    });
    let app = h.state();
    assert_eq!(app.state.probe, "a different probe");
    assert_eq!(app.state.interventions, session.interventions);
    assert_eq!(app.state.selection, session.selection);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn go_to_opens_any_feature_and_names_a_bad_one() {
    let mut h = loaded(tiny_llama(), "hello world");
    let d_mlp = h.state().runtime.model.as_ref().unwrap().d_mlp;
    // The weakest neuron of layer 1 is not among the top 3 shown.
    h.state_mut().state.top_k = 3;
    h.run_steps(2);
    let target = FeatureId::neuron(1, d_mlp - 1);
    let shown: Vec<FeatureId> = h.state().derived.rows.iter().map(|r| r.feature).collect();
    let target = if shown.contains(&target) {
        FeatureId::neuron(1, d_mlp - 2)
    } else {
        target
    };
    h.get_by_label("Go to").focus();
    h.get_by_label("Go to").type_text(&target.label());
    h.get_by_label("Open").click();
    wait_for(&mut h, "the card", move |a| {
        a.state.selection == Some(target)
    });
    h.get_by_label(&format!("Feature {target}"));
    assert_eq!(h.state().state.layer, 1);
    let pinned = h.state().derived.rows.last().unwrap();
    assert!(
        pinned.feature == target && pinned.pinned,
        "the feature gets a row"
    );

    let retype = |h: &mut Harness<'static, HubelApp>, text: &str| {
        h.get_by_label("Go to").focus();
        h.run_steps(1);
        h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
        h.key_press(egui::Key::Backspace);
        h.get_by_label("Go to").type_text(text);
        h.run_steps(1);
    };
    retype(&mut h, "L999N1");
    h.get_by_label("Open").click();
    h.run_steps(3);
    h.get_by_label_contains("L999N1: the model has");
    retype(&mut h, "xyz");
    h.get_by_label("Open").click();
    h.run_steps(3);
    h.get_by_label_contains("is not a feature name");
}

#[test]
fn a_token_in_the_strip_chooses_the_output_position() {
    let mut h = loaded(tiny_llama(), "hello world again");
    let tokens = h.state().runtime.result.as_ref().unwrap().tokens.clone();
    assert!(tokens.len() >= 3);
    let last = tokens.len() - 1;
    assert_eq!(h.state().derived.next.position, last);
    h.get_by_label_contains(&format!("after position {last}"));
    // A position before the last whose token is shown once (the strip is the only place).
    let labels: Vec<String> = tokens.iter().map(hubel::app::text::token_label).collect();
    let pos = (0..last)
        .find(|&p| labels.iter().filter(|l| **l == labels[p]).count() == 1)
        .expect("a token that occurs once");
    h.get_by_label(&labels[pos]).click();
    h.run_steps(3);
    assert_eq!(h.state().state.output_position, Some(pos));
    assert_eq!(h.state().derived.next.position, pos);
    h.get_by_label_contains(&format!("next token after position {pos}"));
    // The distribution shown is the model's at that position, not the last one's.
    assert_ne!(
        h.state().derived.next.baseline,
        h.state()
            .runtime
            .result
            .as_ref()
            .unwrap()
            .baseline
            .summary
            .top_next
            .iter()
            .map(|t| (t.token.clone(), t.prob))
            .collect::<Vec<_>>()
    );
}

/// Everything the centre shows is inside the window, and the layer map and the heatmap are both
/// in view, at the sizes people use.
#[test]
fn the_layout_fits_small_and_large_windows() {
    for size in [[1000.0, 700.0], [1280.0, 720.0], [1920.0, 1080.0]] {
        let h = load(
            harness_sized(probe_state("The cat sat on the mat."), test_config(), size),
            tiny_llama(),
            true,
        );
        let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(size[0], size[1]));
        for label in [
            "Layer map",
            "Top K",
            "Go to",
            "Measure",
            "Next token: baseline",
            "Loss per token (red: got worse)",
            "Probe text",
        ] {
            let rect = h.get_by_label(label).rect();
            assert!(
                window.contains_rect(rect),
                "{size:?}: {label} at {rect:?} is outside the window"
            );
        }
        let map = h.get_by_label("Layer 0").rect();
        let heat = h.get_by_label("Top K").rect();
        assert!(
            map.bottom() < heat.top(),
            "{size:?}: the map sits above the heatmap"
        );
        let first_row = h.state().derived.rows[0].feature.label();
        let row = h.get_by_label(&first_row).rect();
        assert!(
            window.contains_rect(row),
            "{size:?}: the heatmap's first row {row:?} is in view"
        );
    }
}

/// Sixteen chips do not push the maps down: the bar keeps its height.
#[test]
fn the_chip_bar_keeps_its_height() {
    let mut h = loaded(tiny_llama(), "hello world");
    let before = h.get_by_label("Layer map").rect();
    let ivs: Vec<Intervention> = (0..16)
        .map(|i| Intervention::zero(HookPoint::block(0, BlockSite::MlpPost), vec![i]))
        .collect();
    h.state_mut().set_interventions(ivs, 1.0);
    wait_for(&mut h, "the edited run", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
            && !a.is_busy()
    });
    let after = h.get_by_label("Layer map").rect();
    assert_eq!(before.top(), after.top(), "the layer map did not move");
    h.get_by_label("Remove L0N0");
}

/// The Fast toggle runs the probe again on the fast path: the headers and the status line say
/// so, the fidelity meter appears with numbers (its jobs stay out of the Jobs list, the job that
/// made the 4-bit weights is in it), an edit is measured again, and toggling back shows the exact
/// numbers again with no mark and no meter.
#[test]
fn the_fast_toggle_reruns_on_the_fast_path_with_a_fidelity_meter() {
    use hubel::app::MeterState;
    use hubel::model::Precision;
    let mut h = loaded(tiny_llama(), "The cat sat on the mat.");
    let exact = h.state().runtime.result.as_ref().unwrap();
    assert_eq!(exact.precision, Precision::Exact);
    let exact_logits = exact.baseline.logits.clone();
    h.get_by_label("exact");
    assert!(h.query_by_label("fast path (4-bit)").is_none());
    assert!(h.query_by_label("Fidelity").is_none());

    let runs = h.state().runtime.runs_done;
    h.get_by_label("Fast (4-bit)").click();
    let measured = |a: &HubelApp| {
        a.runtime.precision() == Some(Precision::Fast)
            && matches!(
                a.runtime.fidelity.as_ref().map(|m| &m.state),
                Some(MeterState::Ready(_))
            )
    };
    wait_for(&mut h, "the fast run and its meter", move |a| {
        a.runtime.runs_done > runs && measured(a)
    });
    assert_eq!(
        h.state().state.precision,
        Precision::Fast,
        "saved in the state"
    );
    let r = h.state().runtime.result.as_ref().unwrap();
    assert_ne!(r.baseline.logits, exact_logits, "fast numbers");
    // The layer map, the heatmap and the output each say so; so does the status line.
    assert_eq!(h.get_all_by_label("fast path (4-bit)").count(), 3);
    h.get_by_label("fast path");
    let Some(MeterState::Ready(f)) = h.state().runtime.fidelity.as_ref().map(|m| m.state.clone())
    else {
        unreachable!()
    };
    assert_eq!(f.positions, r.tokens.len());
    assert!(f.kl_last > 0.0 && f.kl_last.is_finite() && f.max_abs_dlogit > 0.0);
    h.get_by_label("Fidelity");
    h.get_by_label(&format!(
        "KL(exact‖fast) {:.4} nats · top-1 agreement {:.3} · max |Δlogit| {:.2}",
        f.kl_last, f.top1_agreement, f.max_abs_dlogit
    ));
    wait_for(&mut h, "the 4-bit weights' job", |a| {
        a.runtime
            .job_list
            .iter()
            .any(|j| j.name == hubel::app::worker::PREPARE_FAST_JOB && j.state.is_finished())
    });
    h.get_by_label(hubel::app::worker::PREPARE_FAST_JOB);
    assert!(
        h.query_by_label(hubel::app::worker::FIDELITY_JOB).is_none(),
        "the meter's jobs are not listed"
    );

    // An ablation on the fast path: the meter measures the edited runs.
    let feature = h.state().derived.rows[0].feature;
    let serial = h.state().runtime.fidelity.as_ref().unwrap().serial;
    h.state_mut()
        .set_feature_op(feature, Some(hubel::hooks::Op::Zero), 10.0);
    wait_for(&mut h, "the edited run's meter", move |a| {
        measured(a)
            && a.runtime.fidelity.as_ref().unwrap().serial > serial
            && a.runtime
                .result
                .as_ref()
                .is_some_and(|r| r.intervened.is_some())
    });
    assert_eq!(
        h.state().runtime.result.as_ref().unwrap().precision,
        Precision::Fast,
        "both sides on the fast path"
    );
    h.get_by_label_contains("KL(exact‖fast)");
    h.state_mut().set_feature_op(feature, None, 11.0);
    wait_for(&mut h, "the unedited run", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_none())
            && !a.is_busy()
    });

    // Back to exact: the reference numbers, unmarked, no meter.
    let runs = h.state().runtime.runs_done;
    h.get_by_label("Fast (4-bit)").click();
    wait_for(&mut h, "the exact run", move |a| {
        a.runtime.runs_done > runs && a.runtime.precision() == Some(Precision::Exact)
    });
    let r = h.state().runtime.result.as_ref().unwrap();
    assert_eq!(r.baseline.logits, exact_logits);
    assert!(h.state().runtime.fidelity.is_none());
    assert!(h.query_by_label("fast path (4-bit)").is_none());
    assert!(h.query_by_label("Fidelity").is_none());
    h.get_by_label("exact");
}

/// A WordNet of a few synsets in `assets`' corpus folder, stamped as fetched, so a scan reads it
/// without a network.
fn small_wordnet(assets: &Path) {
    let dir = hubel::assets::corpus_dir(assets);
    std::fs::create_dir_all(&dir).unwrap();
    let nouns = [
        (
            "cat",
            "feline mammal usually having thick soft fur",
            "the cat sat on the mat",
        ),
        (
            "dog",
            "a member of the genus Canis",
            "the dog barked all night",
        ),
        (
            "river",
            "a large natural stream of water",
            "they swam across the river",
        ),
        (
            "left",
            "the side to the north when a person faces east",
            "take the road on the left",
        ),
        (
            "bread",
            "food made from dough of flour and water",
            "she baked fresh bread today",
        ),
        (
            "music",
            "an artistic form of auditory communication",
            "the music was very loud",
        ),
    ];
    let mut noun = String::from("  1 This software and database is being provided to you\n");
    for (i, (word, gloss, example)) in nouns.iter().enumerate() {
        noun.push_str(&format!(
            "{:08} 05 n 01 {word} 0 000 | {gloss}; \"{example}\"  \n",
            1000 + 100 * i
        ));
    }
    let verb = "00002000 30 v 01 leave 0 000 01 + 02 00 | go away from a place; \"She left the party early\"  \n";
    let adj = "00003000 00 a 01 quick 0 000 | moving fast; \"a quick walk\"  \n";
    let adv = "00004000 02 r 01 quickly 0 000 | with speed; \"she answered quickly\"  \n";
    for (name, text) in [
        ("data.noun", noun.as_str()),
        ("data.verb", verb),
        ("data.adj", adj),
        ("data.adv", adv),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::fs::write(dir.join(".sha256"), hubel::assets::CORPUS_TARBALL_SHA256).unwrap();
}

/// The tiny Llama loaded with a small WordNet in its data directory and no scan yet, the card
/// of L1N3 open.
fn card_without_a_scan(config: AppConfig) -> (Harness<'static, HubelApp>, FeatureId) {
    use hubel::app::receptive::IndexState;
    small_wordnet(&config.assets);
    let h = harness_sized(probe_state("the cat sat"), config, [1500.0, 1000.0]);
    let mut h = load(h, tiny_llama(), true);
    wait_for(&mut h, "the index lookup", |a| {
        matches!(a.runtime.receptive.index, IndexState::Missing)
    });
    let f = FeatureId::neuron(1, 3);
    h.state_mut()
        .apply(hubel::app::Command::Select(Some(f)), 0.0);
    h.run_steps(3);
    (h, f)
}

/// Issue 8 in the viewer: the card offers a scan; the scan runs as a job; the card then shows
/// the feature's top examples with every token's activation (recomputed, equal to the scan's at
/// the peak), the histogram and the occlusion map; clicking an example makes it the probe.
#[test]
fn a_scan_from_the_card_shows_examples_and_one_click_makes_one_the_probe() {
    use hubel::app::receptive::{IndexState, Pending};
    let config = test_config();
    let (mut h, f) = card_without_a_scan(config);
    h.get_by_label_contains("No corpus scan of this model yet");
    let scan = format!(
        "Scan {} WordNet stimuli",
        hubel::scan::index::DEFAULT_STIMULI
    );
    h.get_by_label(&scan).scroll_to_me();
    h.run_steps(30);
    h.get_by_label(&scan).click();
    h.run_steps(2);
    assert!(
        h.state().runtime.receptive.scanning.is_some(),
        "the click starts a scan"
    );
    wait_for(&mut h, "the scan", |a| {
        matches!(a.runtime.receptive.index, IndexState::Ready { .. })
    });
    let index = h.state().runtime.receptive.index.index().unwrap().clone();
    // Glosses and examples of the 9 synsets.
    assert_eq!(index.meta.stimuli_done, 18);
    assert!(index
        .meta
        .model_sha256
        .eq(&h.state().runtime.model.as_ref().unwrap().sha256));
    wait_for(&mut h, "the examples' activations", |a| {
        a.runtime
            .receptive
            .card
            .as_ref()
            .is_some_and(|c| matches!(c.rows, Pending::Ready(_)))
    });
    let card = h.state().runtime.receptive.card.clone().unwrap();
    let summary = card.summary.clone().unwrap();
    assert_eq!(summary.top.len(), 18, "one top example per window");
    let lists = [(&summary.top, false), (&summary.lowest, true)];
    for (e, lowest) in lists
        .iter()
        .flat_map(|(l, low)| l.iter().map(move |e| (e, *low)))
    {
        let row = card.row(e.window).expect("every example's activations");
        assert_eq!(row.acts.len(), e.tokens.len());
        let v = row.acts[e.pos];
        assert!(
            (v - e.activation).abs() <= 1e-6 * e.activation.abs().max(1.0),
            "window {} position {}: recomputed {v}, scanned {}",
            e.window,
            e.pos,
            e.activation
        );
        // The example is the window's best (position 0 left out).
        assert!(
            row.acts[1..]
                .iter()
                .all(|&a| if lowest { a >= v } else { a <= v }),
            "{:?} at {}",
            row.acts,
            e.pos
        );
        let signs = row.glu_signs(e.pos).expect("a gated neuron's signs");
        assert_eq!(
            (signs.gate_positive, signs.up_positive),
            (
                row.gate.as_ref().unwrap()[e.pos] >= 0.0,
                row.up.as_ref().unwrap()[e.pos] >= 0.0
            )
        );
    }
    h.get_by_label("Top examples");
    h.get_by_label_contains("density");
    // The occlusion map of the probe at its last position.
    wait_for(&mut h, "the occlusion map", |a| {
        a.runtime
            .receptive
            .occlusion
            .as_ref()
            .is_some_and(|o| matches!(o.result, Pending::Ready(_)))
    });
    let occ = h.state().runtime.receptive.occlusion.clone().unwrap();
    let Pending::Ready(o) = &occ.result else {
        unreachable!()
    };
    assert_eq!(o.values.len(), occ.key.position + 1);
    assert_eq!(occ.key.tokens.len(), occ.key.position + 1);
    h.get_by_label_contains("without occlusion");

    // Labels follow the scan as a job; then the card shows its label and search finds features.
    wait_for(&mut h, "the labels", |a| {
        matches!(
            a.runtime.receptive.labels,
            hubel::app::receptive::LabelsState::Ready(_)
        )
    });
    let label = h
        .state()
        .runtime
        .receptive
        .label(&f)
        .expect("a label")
        .text
        .clone();
    h.get_by_label(&format!("Label: {label}"));
    assert!(
        hubel::scan::labels::labels_path(match &h.state().runtime.receptive.index {
            IndexState::Ready { path, .. } => path,
            _ => unreachable!(),
        })
        .is_file(),
        "the labels are saved beside the index"
    );
    h.state_mut()
        .apply(hubel::app::Command::SearchFeatures("cat".into()), 0.0);
    h.run_steps(3);
    let hits = h.state().runtime.receptive.search.clone().unwrap().1;
    assert!(!hits.is_empty(), "some feature fires on \" cat\"");
    let first = FeatureId::parse(&hits[0].feature).unwrap();
    h.get_by_label("Find features").scroll_to_me();
    h.run_steps(30);

    // Click the best example: it becomes the probe and runs.
    let best = summary.top[0].clone();
    let signs = card.signs(best.window, best.pos).unwrap();
    let runs = h.state().runtime.runs_done;
    let label = format!("{:+.3} {}", best.activation, signs.label());
    h.get_by_label(&label).scroll_to_me();
    // Until the scroll's animation has settled (a click hits last frame's layout).
    h.run_steps(30);
    h.get_by_label(&label).click();
    h.run_steps(2);
    assert_eq!(h.state().state.probe, best.text);
    wait_for(&mut h, "the example's run", move |a| {
        a.runtime.runs_done > runs && !a.is_busy()
    });
    let shown: String = h
        .state()
        .runtime
        .result
        .as_ref()
        .unwrap()
        .tokens
        .iter()
        .map(|t| t.text.as_str())
        .collect();
    assert!(
        shown.contains(best.text.trim()),
        "{shown:?} vs {:?}",
        best.text
    );
    // With no feature selected the card lists the search's hits; one click opens a card.
    h.state_mut().apply(hubel::app::Command::Select(None), 0.0);
    h.run_steps(3);
    h.get_by_label(&format!("{} ({})", hits[0].feature, hits[0].kind))
        .click();
    h.run_steps(3);
    assert_eq!(h.state().state.selection, Some(first));
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
}

/// A text file of the user's, chosen in the card's Corpora section through the built-in dialog,
/// is scanned as a job into an index of its own; its examples come from its lines; a WordNet scan
/// makes a second index, and the Corpora choice switches the cards between the two.
#[test]
fn a_text_file_scanned_from_the_card_gives_its_own_examples_and_the_corpus_can_be_switched() {
    use hubel::app::receptive::IndexState;
    let config = test_config();
    let dir = temp_dir("text-corpus");
    let lines = [
        "the cat sat on the mat",
        "",
        "a dog ran in the park",
        "birds sing at dawn",
    ];
    std::fs::write(dir.join("mine.txt"), lines.join("\n")).unwrap();
    let (mut h, f) = card_without_a_scan(config);
    h.get_by_label("Corpora (0 scanned)").scroll_to_me();
    h.run_steps(5);
    h.get_by_label("Corpora (0 scanned)").click();
    h.run_steps(5);
    h.get_by_label("Scan a text file…").scroll_to_me();
    h.run_steps(5);
    h.get_by_label("Scan a text file…").click();
    h.run_steps(3);
    assert!(h.state().dialogs.is_open(), "the built-in dialog opened");
    h.state_mut().dialogs.built_in().unwrap().folder = dir.display().to_string();
    h.state_mut().dialogs.built_in().unwrap().name = "mine.txt".into();
    h.run_steps(2);
    // The dialog's Open (the heatmap's Go to has one too): the dialog's window is drawn last.
    h.get_all_by_label("Open").last().unwrap().click();
    h.run_steps(3);
    assert!(!h.state().dialogs.is_open());
    // The scan of three lines on the tiny model may be over already.
    assert!(
        h.state().runtime.receptive.scanning.is_some()
            || matches!(h.state().runtime.receptive.index, IndexState::Ready { .. }),
        "choosing the file starts its scan"
    );
    wait_for(&mut h, "the text scan", |a| {
        a.runtime.receptive.scanning.is_none()
            && matches!(a.runtime.receptive.index, IndexState::Ready { .. })
    });
    let text_index = h.state().runtime.receptive.index.index().unwrap().clone();
    assert_eq!(text_index.meta.corpus, "mine.txt");
    assert_eq!(text_index.meta.stimuli_done, 3, "blank lines are skipped");
    assert!(text_index.meta.complete, "every line is scanned");
    let IndexState::Ready {
        path: text_path, ..
    } = h.state().runtime.receptive.index.clone()
    else {
        unreachable!()
    };
    wait_for(&mut h, "the card's summary", |a| {
        a.runtime
            .receptive
            .card
            .as_ref()
            .is_some_and(|c| c.feature == f && c.summary.is_ok())
    });
    let summary = h
        .state()
        .runtime
        .receptive
        .card
        .clone()
        .unwrap()
        .summary
        .unwrap();
    assert_eq!(summary.top.len(), 3, "one top example per line");
    for e in &summary.top {
        assert!(
            lines.contains(&e.text.as_str()) && e.source.starts_with("mine.txt:"),
            "{} from {}",
            e.text,
            e.source
        );
    }
    // A WordNet scan beside it: two corpora, the cards read the new one.
    h.state_mut()
        .apply(hubel::app::Command::StartScan { all: false }, 0.0);
    wait_for(&mut h, "the WordNet scan", |a| {
        a.runtime.receptive.scanning.is_none()
            && a.runtime
                .receptive
                .index
                .index()
                .is_some_and(|i| i.meta.corpus.starts_with("wordnet"))
    });
    assert_eq!(h.state().runtime.receptive.indexes.len(), 2);
    h.run_steps(3);
    h.get_by_label("Corpora (2 scanned)").scroll_to_me();
    h.run_steps(5);
    let label = "mine.txt: 3 stimuli";
    if h.query_by_label_contains(label).is_none() {
        h.get_by_label("Corpora (2 scanned)").click();
        h.run_steps(5);
    }
    h.get_by_label_contains(label).scroll_to_me();
    h.run_steps(5);
    h.get_by_label_contains(label).click();
    h.run_steps(2);
    wait_for(
        &mut h,
        "the text index again",
        |a| matches!(&a.runtime.receptive.index, IndexState::Ready { path, .. } if *path == text_path),
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The Experiments window as a person uses it: the menu opens it on a built-in protocol, Run
/// starts a job, the result's top units open their card with a click, a lesion protocol shows
/// zero and mean ablation side by side with the caveat, and the report folder is written through
/// the built-in dialog.
#[test]
fn an_experiment_runs_from_the_menu_and_its_units_open_their_cards() {
    use hubel::experiments::Report;
    let config = test_config();
    let h = harness_sized(probe_state("Turn left here"), config, [1280.0, 800.0]);
    let mut h = load(h, tiny_llama(), true);
    h.get_by_label("Experiments").click();
    h.run_steps(3);
    h.get_by_label("Protocol: sense-left").click();
    h.run_steps(3);
    assert!(h.state().state.experiments_open);
    h.get_by_label_contains("sense-left · selectivity");
    // A stimulus of a set loads into the probe (its marker taken out).
    h.get_by_label("A: left = direction (40 stimuli)").click();
    h.run_steps(3);
    h.get_by_label("Turn [[left]] at the corner and walk on.")
        .click();
    h.run_steps(3);
    assert_eq!(
        h.state().state.probe,
        "Turn left at the corner and walk on."
    );
    h.get_by_label("A: left = direction (40 stimuli)").click();
    h.run_steps(3);
    h.get_by_label("▶ Run").click();
    h.run_steps(2);
    wait_for(&mut h, "the experiment", |a| {
        !a.runtime.experiments.is_running() && a.runtime.experiments.result.is_some()
    });
    assert_eq!(h.state().runtime.experiments.error, None);
    let done = h.state().runtime.experiments.result.clone().unwrap();
    let Report::Selectivity(r) = &done.report else {
        panic!("sense-left is a selectivity protocol");
    };
    assert_eq!(r.layers.len(), 2, "one row per block of the tiny model");
    h.get_by_label("Top units (click one for its card)");
    let first = r.top_units[0].feature.clone();
    h.get_by_label(&first).scroll_to_me();
    h.run_steps(3);
    h.get_by_label(&first).click();
    h.run_steps(3);
    assert_eq!(
        h.state().state.selection.map(|f| f.label()),
        Some(first.clone()),
        "a top unit's link opens its card"
    );
    // The report folder, through the built-in dialog (no desktop portal in tests).
    let out = temp_dir("report");
    h.get_by_label("Export report…").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("Export report…").click();
    h.run_steps(3);
    assert!(h.state().dialogs.is_open(), "the built-in dialog opened");
    h.state_mut().dialogs.built_in().unwrap().folder = out.display().to_string();
    h.run_steps(2);
    h.get_by_label("Open this folder").click();
    h.run_steps(2);
    assert!(!h.state().dialogs.is_open());
    wait_for(&mut h, "the report folder", |a| {
        a.runtime.experiments.exported.is_some()
    });
    let dir = out.join("hubel-sense-left");
    assert_eq!(
        h.state().runtime.experiments.exported.clone().unwrap(),
        Ok(dir.clone())
    );
    for f in [
        "report.md",
        "report.json",
        "protocol.json",
        "selectivity.png",
        "selectivity.svg",
    ] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["protocol"], "sense-left");
    assert_eq!(json["layers"].as_array().unwrap().len(), 2);
    // The discriminator: the best unit fitted on the sets and tried on new text.
    h.get_by_label("Discriminator").click();
    h.run_steps(2);
    h.state_mut().state.classify_text = "Turn [[left]] here\nShe left early".into();
    h.run_steps(2);
    let first_neuron = r
        .top_units
        .iter()
        .find(|u| u.feature.contains('N'))
        .unwrap()
        .feature
        .clone();
    h.get_by_label(&format!("Fit {first_neuron}")).click();
    wait_for(&mut h, "the discriminator", |a| {
        a.runtime.experiments.fitting.is_none() && a.runtime.experiments.classified.is_some()
    });
    let classified = h.state().runtime.experiments.classified.clone().unwrap();
    let c = classified.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.results.len(), 2);
    assert_eq!(c.results[0].text, "Turn left here");
    assert!(h.query_all_by_label_contains("fitted on all").count() >= 1);
    // Dose–response of the selected unit on the probe.
    h.get_by_label("Dose–response").click();
    h.run_steps(2);
    h.get_by_label("Run dose–response").click();
    wait_for(&mut h, "the dose–response curve", |a| {
        a.runtime.experiments.dosing.is_none() && a.runtime.experiments.dose.is_some()
    });
    assert_eq!(h.state().runtime.experiments.dose_error, None);
    let done = h.state().runtime.experiments.dose.clone().unwrap();
    let Report::Dose(d) = &done.report else {
        panic!("a dose report");
    };
    assert_eq!(d.units, vec![first.clone()], "the selection is dosed");
    assert_eq!(d.points.len(), 7);
    assert!(d.points[1..].iter().all(|p| p.kl.is_finite()));
    h.get_by_label("Result").click();
    h.run_steps(2);
    // A lesion protocol: zero and mean side by side, with the caveat.
    h.state_mut().apply(
        hubel::app::Command::ChooseProtocol("lesion-zh-en".into()),
        0.0,
    );
    h.run_steps(2);
    // A hand-picked group: the selected neuron added with its button.
    h.state_mut().select(Some(FeatureId::neuron(1, 5)));
    h.run_steps(2);
    h.get_by_label("+ L1N5").click();
    h.run_steps(2);
    assert_eq!(h.state().state.lesion_units, "L1N5");
    h.get_by_label("▶ Run").click();
    wait_for(&mut h, "the lesion experiment", |a| {
        !a.runtime.experiments.is_running() && a.runtime.experiments.result_shown().is_some()
    });
    h.get_by_label("zero: ΔA");
    h.get_by_label("mean: ΔA");
    h.get_by_label_contains("Zero-ablation moves a neuron to 0");
    let done = h.state().runtime.experiments.result.clone().unwrap();
    let Report::Lesion(r) = &done.report else {
        panic!("a lesion report");
    };
    let picked = r
        .groups
        .iter()
        .find(|g| g.name == "hand-picked")
        .expect("the hand-picked group");
    assert_eq!(picked.units, vec!["L1N5".to_string()]);
    std::fs::remove_dir_all(out).unwrap();
}

/// A short window: at the smallest the viewer allows (800×560) with the Jobs list showing three
/// jobs, the centre was so short that the layer map's bounds crossed and `clamp` panicked (here
/// 800×420 without jobs leaves the centre as short). It draws, with the Experiments window open.
#[test]
fn a_short_window_draws_without_a_panic() {
    let state = AppState {
        experiments_open: true,
        ..probe_state("She left the party early.")
    };
    let h = harness_sized(state, test_config(), [800.0, 420.0]);
    let mut h = load(h, tiny_llama(), true);
    h.run_steps(5);
    // The restored window shows the protocol it showed.
    assert!(h.state().runtime.experiments.protocol().is_some());
    h.get_by_label("▶ Run");
}

/// The Experiments window at the smallest and a large supported size: it fits the window, and
/// a run's result (top units) can be reached.
#[test]
fn the_experiments_window_fits_from_1000x700_to_1920x1080() {
    for size in [[1000.0, 700.0], [1920.0, 1080.0]] {
        let h = harness_sized(probe_state("Turn left here"), test_config(), size);
        let mut h = load(h, tiny_llama(), true);
        h.state_mut().apply(
            hubel::app::Command::ChooseProtocol("sense-left".into()),
            0.0,
        );
        h.run_steps(3);
        h.get_by_label("▶ Run").click();
        wait_for(&mut h, "the experiment", |a| {
            !a.runtime.experiments.is_running() && a.runtime.experiments.result.is_some()
        });
        // Before any scrolling, the window's controls are on screen.
        let run = h.get_by_label("▶ Run").rect();
        assert!(
            run.min.x >= 0.0 && run.max.x <= size[0] && run.min.y >= 0.0 && run.max.y <= size[1],
            "{size:?}: {run:?}"
        );
        h.get_by_label("Top units (click one for its card)")
            .scroll_to_me();
        h.run_steps(3);
        let rect = h.get_by_label("Top units (click one for its card)").rect();
        assert!(
            rect.min.x >= 0.0
                && rect.max.x <= size[0]
                && rect.min.y >= 0.0
                && rect.max.y <= size[1],
            "{size:?}: {rect:?}"
        );
    }
}

/// Issue 10 in the viewer: a dictionary feature's card offers a scan with the dictionary in use;
/// the scan runs as a job into an index of its own; the card then shows the feature's top
/// examples and histogram, each example's codes recomputed by the worker equal to the scan's at
/// the peak and to a window run alone and encoded by hand.
#[test]
fn a_dictionary_feature_s_card_scans_with_its_dictionary() {
    use hubel::app::receptive::{IndexState, Pending};
    use hubel::features::dictionary::Normaliser;
    use std::sync::Arc;
    let config = test_config();
    let (mut h, _) = card_without_a_scan(config);
    let info = h.state().runtime.model.clone().unwrap();
    let (d, atoms) = (info.d_model, 12);
    let hook = HookPoint::block(1, BlockSite::ResidPost);
    let dictionary = Arc::new(common::tied_topk(
        hook,
        d,
        atoms,
        3,
        9,
        Normaliser::identity(d),
    ));
    let layers = info.layers;
    // As if opened from a file (a training's snapshot has no scan).
    let path = Some(PathBuf::from("opened.safetensors"));
    h.state_mut()
        .runtime
        .dictionaries
        .set_current(dictionary.clone(), path, layers);
    let f = FeatureId::atom(1, 4);
    h.state_mut()
        .apply(hubel::app::Command::Select(Some(f)), 0.0);
    wait_for(&mut h, "the probe coded with the dictionary", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.dictionary.is_some())
    });
    let scan = format!(
        "Scan {} WordNet stimuli with this dictionary",
        hubel::scan::index::DEFAULT_STIMULI
    );
    h.get_by_label(&scan).scroll_to_me();
    h.run_steps(3);
    h.get_by_label(&scan).click();
    h.run_steps(2);
    assert!(h.state().runtime.receptive.scanning.is_some());
    wait_for(&mut h, "the dictionary scan", |a| {
        matches!(&a.runtime.receptive.index, IndexState::Ready { index, .. }
            if index.meta.dictionary.is_some())
    });
    let index = h.state().runtime.receptive.index.index().unwrap().clone();
    assert_eq!(
        index.meta.dictionary.as_ref().unwrap().sha256,
        dictionary.sha256()
    );
    assert_eq!(index.meta.stimuli_done, 18);
    wait_for(&mut h, "the examples' codes", |a| {
        a.runtime
            .receptive
            .card
            .as_ref()
            .is_some_and(|c| c.feature == f && matches!(c.rows, Pending::Ready(_)))
    });
    let card = h.state().runtime.receptive.card.clone().unwrap();
    let summary = card.summary.clone().unwrap();
    assert!(!summary.top.is_empty());
    let model = hubel::model::Model::open(tiny_llama()).unwrap();
    for e in &summary.top {
        let row = card.row(e.window).expect("every example's codes");
        assert_eq!(row.acts[e.pos], e.activation, "window {}", e.window);
        let tokens = index.windows.get(e.window);
        let mut record = model
            .run(tokens, &hubel::hooks::Capture::points([hook]), &[])
            .unwrap()
            .record;
        dictionary.add_codes(&mut record);
        assert_eq!(
            hubel::analysis::maps::feature_activations(&record, f)[e.pos],
            e.activation
        );
    }
    h.get_by_label("Top examples");
    h.get_by_label_contains("density");
    assert!(h.query_by_label(&scan).is_none(), "scanned: no more offer");
}

/// The tiny Llama fixture with a context long enough for probes beyond PATTERN_TOKENS (its
/// weights do not depend on the context length: rotary tables are computed).
fn tiny_llama_long_context() -> PathBuf {
    let dir = temp_dir("tiny-llama-long");
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_llama().join(file), dir.join(file)).unwrap();
    }
    let text = std::fs::read_to_string(tiny_llama().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["max_position_embeddings"] = 512.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// Issue 14: a probe longer than PATTERN_TOKENS keeps no pattern. The head card says so and
/// what keeping every pattern would cost, and a click computes that head's alone (equal, bit for
/// bit, to `Model::head_pattern`), which the card then draws, max-pooled to fit; it is kept for
/// the probe, at its precision, and dropped when the text changes.
#[test]
fn a_long_probe_offers_one_heads_pattern_and_the_card_draws_it() {
    use egui_kittest::kittest::NodeT;
    use hubel::app::receptive::Pending;
    use hubel::app::worker::PATTERN_TOKENS;
    use hubel::app::Command;
    use hubel::model::{HeadPattern, Model, Precision};
    let dir = tiny_llama_long_context();
    let probe = "The cat sat on the mat. ".repeat(24);
    let mut h = loaded(dir.clone(), &probe);
    let ids: Vec<u32> = h
        .state()
        .runtime
        .result
        .as_ref()
        .unwrap()
        .tokens
        .iter()
        .map(|t| t.id)
        .collect();
    let len = ids.len();
    // Longer than the card is wide at 3 px a cell (the card is at most a third of 1500 px).
    assert!(len > PATTERN_TOKENS.max(170), "{len} tokens");
    let f = FeatureId::head(1, 2);
    h.state_mut().apply(Command::Select(Some(f)), 0.0);
    h.run_steps(3);
    assert!(
        h.state().derived.curve.pattern.is_none(),
        "the run kept none"
    );
    let info = h.state().runtime.model.clone().unwrap();
    let message = format!(
        "Patterns are kept for probes up to {PATTERN_TOKENS} tokens; this probe has {len} tokens \
         (keeping all {} patterns would take {}).",
        info.layers * info.heads,
        hubel::jobs::human_bytes((info.layers * info.heads * len * len * 4) as f64)
    );
    h.get_by_label(&message);

    let model = Model::open(&dir).unwrap();
    let bits = |p: &HeadPattern| p.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let computed = |h: &Harness<'static, HubelApp>| match h
        .state()
        .runtime
        .patterns
        .get(f)
        .map(|e| e.state.clone())
    {
        Some(Pending::Ready(c)) => c.pattern,
        other => panic!("no pattern: {other:?}"),
    };
    for precision in [Precision::Exact, Precision::Fast] {
        if precision == Precision::Fast {
            h.state_mut().apply(Command::SetPrecision(precision), 0.0);
            wait_for(&mut h, "the fast run", |a| {
                a.runtime.precision() == Some(Precision::Fast) && !a.is_busy()
            });
            assert!(
                h.state().runtime.patterns.get(f).is_none(),
                "the exact path's pattern is not the fast path's"
            );
        }
        let button = "Compute L1H2's pattern";
        // Answers still arriving (the card's effect, occlusion, a continuation) can move the
        // button between the scroll and the click on a loaded machine: click until it asks.
        for attempt in 0.. {
            h.get_by_label(button).scroll_to_me();
            h.run_steps(30);
            h.get_by_label(button).click();
            h.run_steps(2);
            if h.state().runtime.patterns.get(f).is_some() {
                break;
            }
            assert!(attempt < 5, "clicking {button} asks for nothing");
        }
        wait_for(&mut h, "the pattern", move |a| {
            a.runtime
                .patterns
                .get(f)
                .is_some_and(|e| matches!(e.state, Pending::Ready(_) | Pending::Failed(_)))
        });
        let shown = computed(&h);
        let direct = model
            .with_precision(precision)
            .head_pattern(&ids, 1, 2, None)
            .unwrap();
        assert_eq!((shown.layer, shown.head, shown.len), (1, 2, len));
        assert!(shown.values.is_empty(), "only the grids are kept");
        // The card draws it, max-pooled to its width; the finest grid is the pattern itself.
        let curve = h.state().derived.curve.clone();
        assert!(curve.pattern_on_demand);
        let grids = curve.pattern.expect("the card's pattern");
        assert_eq!(grids.levels[0].block, 1);
        let finest: Vec<u32> = grids.levels[0].values.iter().map(|v| v.to_bits()).collect();
        assert!(finest == bits(&direct), "{precision:?}");
        assert_eq!(
            *grids,
            hubel::analysis::pattern::PatternGrids::new(&direct.values, len)
        );
        let drawn = format!("Attention pattern of L1H2: {len} × {len} tokens, max-pooled");
        h.get_by_label_contains(&drawn).scroll_to_me();
        h.run_steps(30);
        h.get_by_label_contains("computed for this probe on demand");
        assert!(
            h.query_by_label(button).is_none(),
            "no offer once it is drawn"
        );
        // Hover names a cell's query and key ranges and its value: the largest of its block.
        h.get_by_label_contains(&drawn).hover();
        h.run_steps(5);
        let hover = h
            .get_by_label_contains("→ keys")
            .accesskit_node()
            .value()
            .unwrap_or_default();
        let range = |after: &str| -> std::ops::Range<usize> {
            let rest = &hover[hover.find(after).unwrap() + after.len()..];
            let (a, rest) = rest.split_once('–').unwrap();
            let b = rest.split_once(' ').unwrap().0;
            a.parse().unwrap()..b.parse::<usize>().unwrap() + 1
        };
        let (queries, keys) = (range("queries "), range("→ keys "));
        assert!(queries.len() > 1 && queries.len() == keys.len(), "{hover}");
        let max = queries
            .flat_map(|q| keys.clone().map(move |k| (q, k)))
            .map(|(q, k)| direct.values[q * len + k])
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(hover.ends_with(&format!(": max {max:.4}")), "{hover}");
    }

    // Another text: the pattern is of the old probe, dropped.
    h.state_mut().state.probe = "The dog sat on the mat. ".repeat(24);
    h.state_mut().request_run(0.0);
    wait_for(&mut h, "the new text's run", move |a| {
        !a.is_busy()
            && a.runtime.result.as_ref().is_some_and(|r| {
                r.tokens.len() != len || r.tokens.iter().zip(&ids).any(|(t, i)| t.id != *i)
            })
    });
    assert!(h.state().runtime.patterns.get(f).is_none());
    assert!(h.state().derived.curve.pattern.is_none());
    h.get_by_label("Compute L1H2's pattern");

    // A short probe: its run keeps the pattern, drawn cell by cell as before.
    h.state_mut().state.probe = "The cat sat.".into();
    h.state_mut().request_run(0.0);
    wait_for(&mut h, "the short probe's run", |a| {
        !a.is_busy()
            && a.runtime
                .result
                .as_ref()
                .is_some_and(|r| r.tokens.len() < 20)
    });
    let n = h.state().runtime.result.as_ref().unwrap().tokens.len();
    let curve = h.state().derived.curve.clone();
    assert!(!curve.pattern_on_demand);
    assert_eq!(curve.pattern.unwrap().levels[0].block, 1);
    h.get_by_label(&format!("Attention pattern of L1H2: {n} × {n} tokens"));
    assert!(h.query_by_label("Compute L1H2's pattern").is_none());
}
