//! Numbers checked against HF transformers on the same weights (fixtures made by
//! tools/reference/make_fixtures.py): token ids identical, logits within 1e-3, every activation
//! within 3e-5 of its array's largest magnitude plus 3e-4 of its own, and an ablated run
//! (L10N123 for SmolLM2). No value may be NaN or infinite.

mod common;

use common::{assert_close, assert_max_abs, fixtures, Fixture};
use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention};
use hubel::model::{Model, RunOutput};

const LOGIT_TOL: f32 = 1e-3;
/// Activations: `|got - want| ≤ ACT_ATOL_FRAC · max |want| + ACT_RTOL · |want|` per element.
/// The fixtures' worst element uses about 1/6 of this (`HUBEL_SHOW_DIFFS=1` prints each ratio);
/// tolerances 3× tighter still pass, with no margin to spare across machines.
const ACT_ATOL_FRAC: f32 = 3e-5;
const ACT_RTOL: f32 = 3e-4;

/// Logits at (every position, the fixture's vocab ids) of `out`.
fn pick(out: &RunOutput, ids_per_pos: &[Vec<usize>]) -> Vec<f32> {
    ids_per_pos
        .iter()
        .enumerate()
        .flat_map(|(p, ids)| ids.iter().map(move |&i| out.logits_at(p)[i]))
        .collect()
}

fn check_probe(model: &Model, fx: &Fixture) {
    let name = fx.dir.file_name().unwrap().to_string_lossy().into_owned();
    let text = fx.meta["text"].as_str().unwrap();
    let tokens: Vec<u32> = model.tokenize(text).unwrap().iter().map(|t| t.id).collect();
    let want: Vec<u32> = fx.usizes("tokens").iter().map(|&i| i as u32).collect();
    assert_eq!(tokens, want, "{name}: token ids");

    let layers = fx.usizes("layers");
    let sites = [
        BlockSite::ResidPre,
        BlockSite::Z,
        BlockSite::Pattern,
        BlockSite::AttnOut,
        BlockSite::MlpPost,
        BlockSite::ResidPost,
    ];
    let capture = Capture::points(
        layers
            .iter()
            .flat_map(|&l| sites.iter().map(move |&s| HookPoint::block(l, s))),
    );
    let cache = model.prepare(&tokens, &capture, None).unwrap();
    let out = &cache.baseline;
    let n = tokens.len();

    let top = fx.ids("top_ids");
    let random = fx.usizes("random_ids");
    let random_rows = vec![random.clone(); n];
    assert_max_abs(
        &format!("{name}: top logits"),
        &pick(out, &top),
        &fx.array("logits_top").1,
        LOGIT_TOL,
    );
    assert_max_abs(
        &format!("{name}: logits at random ids"),
        &pick(out, &random_rows),
        &fx.array("logits_random").1,
        LOGIT_TOL,
    );

    let positions = fx.usizes("positions");
    for &l in &layers {
        for site in sites {
            let point = HookPoint::block(l, site);
            let act = out.record.get(point).unwrap();
            let got: Vec<f32> = if site == BlockSite::Pattern {
                // ours [head, q, k]; the fixture keeps the stored query positions
                let heads = act.shape[0];
                (0..heads)
                    .flat_map(|h| {
                        positions.iter().flat_map(move |&q| {
                            act.data[(h * n + q) * n..(h * n + q + 1) * n]
                                .iter()
                                .copied()
                        })
                    })
                    .collect()
            } else {
                positions
                    .iter()
                    .flat_map(|&p| act.row(p).iter().copied())
                    .collect()
            };
            let (shape, want) = fx.array(&point.to_string());
            assert_eq!(
                got.len(),
                want.len(),
                "{name}: {point} size (fixture shape {shape:?})"
            );
            assert_close(
                &format!("{name}: {point}"),
                &got,
                &want,
                ACT_ATOL_FRAC,
                ACT_RTOL,
            );
        }
    }

    let (layer, neuron) = (
        fx.meta["ablate"]["layer"].as_u64().unwrap() as usize,
        fx.meta["ablate"]["neuron"].as_u64().unwrap() as usize,
    );
    let ablate = [Intervention::zero(
        HookPoint::block(layer, BlockSite::MlpPost),
        vec![neuron],
    )];
    let ab = model
        .rerun(&cache, &Capture::Nothing, &ablate, None)
        .unwrap();
    assert_max_abs(
        &format!("{name}: ablated top logits"),
        &pick(&ab, &fx.ids("ablated_top_ids")),
        &fx.array("ablated_logits_top").1,
        LOGIT_TOL,
    );
    assert_max_abs(
        &format!("{name}: ablated logits at random ids"),
        &pick(&ab, &random_rows),
        &fx.array("ablated_logits_random").1,
        LOGIT_TOL,
    );
    assert_ne!(ab.logits, out.logits, "{name}: the ablation has an effect");
}

fn tiny_fixture(kind: &str) {
    let dir = fixtures().join(format!("tiny_{kind}"));
    let model = Model::open(dir.join("model")).unwrap();
    assert_eq!(model.info().arch, kind);
    let fx = Fixture::open(dir.join("probe"));
    check_probe(&model, &fx);
    // Every logit of the last position.
    let tokens: Vec<u32> = fx.usizes("tokens").iter().map(|&i| i as u32).collect();
    let out = model.run(&tokens, &Capture::Nothing, &[]).unwrap();
    assert_max_abs(
        "last logits",
        out.last_logits(),
        &fx.array("last_logits").1,
        LOGIT_TOL,
    );
}

#[test]
fn tiny_gpt2_hf_folder_matches_transformers() {
    tiny_fixture("gpt2");
}

#[test]
fn tiny_llama_hf_folder_matches_transformers() {
    tiny_fixture("llama");
}

fn smollm2_probe(name: &str) {
    let model = common::smollm2();
    check_probe(model, &Fixture::open(fixtures().join("smollm2").join(name)));
}

#[test]
fn smollm2_matches_transformers_left_party() {
    smollm2_probe("left_party");
}

#[test]
fn smollm2_matches_transformers_repeat() {
    smollm2_probe("repeat");
}

#[test]
fn smollm2_matches_transformers_chinese_and_emoji() {
    smollm2_probe("unicode");
}

#[test]
fn smollm2_matches_transformers_code() {
    smollm2_probe("code");
}

#[test]
fn smollm2_matches_transformers_digits() {
    smollm2_probe("digits");
}

#[test]
fn smollm2_matches_transformers_420_tokens() {
    smollm2_probe("long");
}

#[test]
fn smollm2_full_last_logits_and_model_facts() {
    let model = common::smollm2();
    let info = model.info();
    assert_eq!(
        (
            info.layers,
            info.d_model,
            info.d_mlp,
            info.heads,
            info.kv_heads,
            info.vocab
        ),
        (30, 576, 1536, 9, 3, 49152)
    );
    assert_eq!(info.sha256, hubel::assets::MODEL_SHA256);
    let fx = Fixture::open(fixtures().join("smollm2").join("left_party"));
    let tokens: Vec<u32> = fx.usizes("tokens").iter().map(|&i| i as u32).collect();
    let out = model.run(&tokens, &Capture::Nothing, &[]).unwrap();
    assert_max_abs(
        "last logits",
        out.last_logits(),
        &fx.array("last_logits").1,
        LOGIT_TOL,
    );
}

/// The fast path (4-bit weight blocks × 8-bit activations) on every reference probe, against
/// the exact path: SmolLM2's block weights are Q4_1 in the file, so only the activations are
/// rounded. Targets: last-position KL(exact ‖ fast) ≤ 0.01 nats, top-1 agreement ≥ 0.98 over
/// every position of every probe.
#[test]
fn smollm2_fast_path_stays_within_its_fidelity_bounds() {
    let model = common::smollm2();
    let (mut agree, mut positions) = (0.0, 0);
    for name in ["left_party", "digits", "code", "unicode", "repeat", "long"] {
        let fx = Fixture::open(fixtures().join("smollm2").join(name));
        let text = fx.meta["text"].as_str().unwrap();
        let tokens: Vec<u32> = model.tokenize(text).unwrap().iter().map(|t| t.id).collect();
        let f = model.fidelity(&tokens, &[], None).unwrap();
        assert!(
            f.kl_last <= 0.01,
            "{name}: KL(exact ‖ fast) {} nats",
            f.kl_last
        );
        assert!(
            f.max_abs_dlogit.is_finite() && f.max_abs_dlogit > 0.0,
            "{name}: {f:?}"
        );
        agree += f.top1_agreement * f.positions as f64;
        positions += f.positions;
    }
    let agreement = agree / positions as f64;
    assert!(
        agreement >= 0.98,
        "top-1 agreement {agreement} over {positions} positions"
    );
}
