//! Image snapshots of the main views (egui_kittest renders them with wgpu on a CPU rasterizer,
//! Mesa's lavapipe, which .ci/run installs): a layout regression shows as an image diff.
//! The images are in tests/snapshots/; `UPDATE_SNAPSHOTS=1 cargo test --test snapshots` rewrites
//! them after an intended change (look at them before committing).
//!
//! The content is made deterministic: the tiny random Llama fixture, ASCII text (so the CJK font
//! found does not matter), no continuation, and the run time in the status line fixed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::{Harness, SnapshotOptions};
use hubel::app::fonts::FontSource;
use hubel::app::{AppConfig, AppState, HubelApp, ViewMode};
use hubel::hooks::Op;

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

fn harness(size: [f32; 2], state: AppState) -> Harness<'static, HubelApp> {
    let assets = std::env::temp_dir().join(format!("hubel-snap-assets-{}", std::process::id()));
    Harness::builder()
        .with_size(size)
        .with_max_steps(100_000)
        .build_eframe(move |cc| {
            let mut app = HubelApp::with_config(
                &cc.egui_ctx,
                state,
                AppConfig {
                    assets,
                    native_dialogs: false,
                    ..AppConfig::default()
                },
            );
            // Only the bundled fonts: the picture must not depend on the system's CJK font.
            app.cjk = hubel::app::fonts::install_with(&cc.egui_ctx, FontSource::None);
            app
        })
}

fn settle(h: &mut Harness<'static, HubelApp>, what: &str, cond: impl Fn(&HubelApp) -> bool) {
    let start = Instant::now();
    // The card's answers (occlusion, index lookup) come after the run: wait for them too, or a
    // slower machine photographs the card half-filled.
    while !cond(h.state()) || h.state().is_busy() || !h.state().runtime.receptive.settled() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {:?}",
            h.state().error
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    if let Some(r) = h.state_mut().runtime.result.as_mut() {
        r.elapsed_ms = 12.0;
    }
    // Let animations (panel fades, tooltips) finish.
    for _ in 0..30 {
        h.step();
    }
}

fn options() -> SnapshotOptions {
    // A moved panel or a lost row changes thousands of pixels; anti-aliasing differences a few.
    SnapshotOptions::new().max_failed_pixels(40)
}

fn main_view(size: [f32; 2], name: &str) {
    let state = AppState {
        continuation: 0,
        layer: 1,
        ..AppState::default()
    };
    let mut h = harness(size, state);
    // The model first, the probe after frames of the empty view: when the load and the first run
    // both landed before the first frame, the card's panel had a different history (its scroll
    // area 8 px narrower) and the picture differed now and then on a loaded machine.
    h.state_mut().load_model(tiny_llama());
    settle(&mut h, "the model", |a| a.runtime.model.is_some());
    h.state_mut().state.probe = "The cat sat on the mat.".into();
    h.state_mut().request_run(0.0);
    settle(&mut h, "the first run", |a| a.runtime.result.is_some());
    // Open the strongest neuron's card, ablate it, show B − A.
    let f = h.state().derived.rows[0].feature;
    h.state_mut().select(Some(f));
    h.state_mut().set_feature_op(f, Some(Op::Zero), 1.0);
    h.state_mut().state.view = ViewMode::Difference;
    settle(&mut h, "the ablated run and the effect", |a| {
        a.runtime
            .result
            .as_ref()
            .is_some_and(|r| r.intervened.is_some())
            && matches!(a.runtime.effect, Some(hubel::app::EffectState::Ready(_)))
    });
    h.snapshot_options(name, &options());
}

#[test]
fn main_view_at_1280x720() {
    main_view([1280.0, 720.0], "main_1280x720");
}

#[test]
fn main_view_at_1000x700() {
    main_view([1000.0, 700.0], "main_1000x700");
}

/// The heatmap ranked by direct effect on a pinned target: each label shows its effect.
#[test]
fn main_view_ranked_by_direct_effect() {
    let mut state = AppState {
        continuation: 0,
        layer: 1,
        ranking: hubel::app::state::RowRanking::DirectEffect,
        ..AppState::default()
    };
    state.circuits.target = "b".into();
    state.circuits.versus.clear();
    let mut h = harness([1280.0, 720.0], state);
    h.state_mut().load_model(tiny_llama());
    settle(&mut h, "the model", |a| a.runtime.model.is_some());
    h.state_mut().state.probe = "The cat sat on the mat.".into();
    h.state_mut().request_run(0.0);
    settle(&mut h, "the rows ranked by effect", |a| {
        a.derived.effect_ranking.is_some()
    });
    h.snapshot_options("main_effect_1280x720", &options());
}

#[test]
fn welcome_at_1280x720() {
    let mut h = harness([1280.0, 720.0], AppState::default());
    for _ in 0..30 {
        h.step();
    }
    h.snapshot_options("welcome_1280x720", &options());
}
