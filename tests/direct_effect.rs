//! Direct logit effects (issue 13): `W_U · (γ ⊙ d̃)` through the final norm's weights, checked
//! against HF transformers on the default model, against the formula computed here from the
//! safetensors of the tiny models, and, with the final norm's scale frozen, against the actual
//! change of the logits when the final residual is nudged along the direction.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use hubel::analysis::promoted_suppressed;
use hubel::effect::{self, EffectError, EffectRequest, ProbeAt};
use hubel::features::FeatureId;
use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention, Op};
use hubel::model::{EffectScale, Model};

// ---------------------------------------------------------------------------------------------
// The default model against transformers

#[test]
fn smollm2_direct_effects_match_transformers() {
    let model = common::smollm2();
    let text = std::fs::read_to_string(common::fixtures().join("smollm2/direct_effect.json"))
        .expect("direct_effect.json");
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let k = fixture["k"].as_u64().unwrap() as usize;
    let neurons = fixture["neurons"].as_array().unwrap();
    assert!(neurons.len() >= 4);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let values = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    for n in neurons {
        let (layer, neuron) = (
            n["layer"].as_u64().unwrap() as usize,
            n["neuron"].as_u64().unwrap() as usize,
        );
        let label = format!("L{layer}N{neuron}");
        let d = model.neuron_out_direction(layer, neuron).unwrap();
        let effect = model.direct_effect(&d, EffectScale::PerUnit).unwrap();
        assert_eq!(effect.len(), model.config().vocab_size);
        assert!(
            effect.iter().all(|v| v.is_finite()),
            "{label}: non-finite effect"
        );
        let (up, down) = promoted_suppressed(&effect, k);
        for (kind, ours, key) in [
            ("promoted", up, "promoted"),
            ("suppressed", down, "suppressed"),
        ] {
            let want_ids = ids(&n[format!("{key}_ids")]);
            let want = values(&n[format!("{key}_values")]);
            let got_ids: Vec<u32> = ours.iter().map(|p| p.0).collect();
            let got: Vec<f32> = ours.iter().map(|p| p.1).collect();
            assert_eq!(got_ids, want_ids, "{label} {kind} ids");
            common::assert_max_abs(&format!("{label} {kind} values"), &got, &want, 1e-4);
        }
    }
    // The numbers the issue quotes for L10N222 (with γ).
    let d = model.neuron_out_direction(10, 222).unwrap();
    let effect = model.direct_effect(&d, EffectScale::PerUnit).unwrap();
    let (up, down) = promoted_suppressed(&effect, 5);
    let text = |list: &[(u32, f32)]| -> Vec<(String, f32)> {
        list.iter()
            .map(|&(id, v)| {
                (
                    model.tokenizer().token_text(id),
                    (v * 1000.0).round() / 1000.0,
                )
            })
            .collect()
    };
    let s = |t: &str, v: f32| (t.to_string(), v);
    assert_eq!(
        text(&up),
        vec![
            s("ffes", 3.821),
            s("sembles", 3.511),
            s("sers", 3.334),
            s("spers", 3.239),
            s(" Ishma", 3.213)
        ]
    );
    assert_eq!(
        text(&down),
        vec![
            s("icit", -2.125),
            s("â", -2.037),
            s("í", -1.970),
            s("izz", -1.943),
            s("ott", -1.893)
        ]
    );
}

#[test]
fn smollm2_frozen_scale_is_the_first_order_change_of_the_logits() {
    let model = common::smollm2();
    let d = model.neuron_out_direction(10, 222).unwrap();
    let check = frozen_check(model, "She left the party early.", 3, d, false);
    // Leaving out the norm's 1/rms would fail by far.
    let per_unit = model
        .direct_effect(&check.direction, EffectScale::PerUnit)
        .unwrap();
    assert!(
        max_abs_diff(&per_unit, &check.finite_difference) > 10.0 * check.tol,
        "the test cannot tell a missing 1/rms"
    );
}

// ---------------------------------------------------------------------------------------------
// The tiny models against the formula computed here from their weights

/// A tiny fixture model's weights as read straight from its safetensors.
struct Raw {
    t: HashMap<String, Tensor>,
}

impl Raw {
    fn open(dir: &Path) -> Self {
        Raw {
            t: candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap(),
        }
    }

    /// `(shape, row-major values)`.
    fn get(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = &self.t[name];
        (
            t.dims().to_vec(),
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gpt2,
    Llama,
}

/// The tiny model's final-norm weight, `W_U` (`[vocab, d]`), and neuron `n`'s output direction,
/// all read from the safetensors.
fn raw_parts(kind: Kind, raw: &Raw, layer: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match kind {
        Kind::Gpt2 => {
            let (_, gamma) = raw.get("transformer.ln_f.weight");
            let (_, w_u) = raw.get("transformer.wte.weight");
            // Conv1D, stored [d_mlp, d_model]: row n is what neuron n writes.
            let (s, w) = raw.get(&format!("transformer.h.{layer}.mlp.c_proj.weight"));
            let d = w[n * s[1]..(n + 1) * s[1]].to_vec();
            (gamma, w_u, d)
        }
        Kind::Llama => {
            let (_, gamma) = raw.get("model.norm.weight");
            let (_, w_u) = raw.get("lm_head.weight");
            // Linear, stored [d_model, d_mlp]: column n is what neuron n writes.
            let (s, w) = raw.get(&format!("model.layers.{layer}.mlp.down_proj.weight"));
            let d = (0..s[0]).map(|i| w[i * s[1] + n]).collect();
            (gamma, w_u, d)
        }
    }
}

/// `W_U · (γ ⊙ d̃) · inv_scale` in f64, `d̃` centred for LayerNorm; `gamma: None` leaves γ out
/// (the old, wrong formula).
fn formula(w_u: &[f32], gamma: Option<&[f32]>, d: &[f32], centre: bool, inv: f64) -> Vec<f32> {
    let n = d.len();
    let mean = if centre {
        d.iter().map(|&v| v as f64).sum::<f64>() / n as f64
    } else {
        0.0
    };
    let v: Vec<f64> = (0..n)
        .map(|i| (d[i] as f64 - mean) * gamma.map_or(1.0, |g| g[i] as f64) * inv)
        .collect();
    w_u.chunks(n)
        .map(|row| row.iter().zip(&v).map(|(&w, &x)| w as f64 * x).sum::<f64>() as f32)
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The tiny GPT-2 with a non-trivial final LayerNorm (HF initialises γ = 1, β = 0, which would
/// hide a missing γ): a copy of the fixture folder with `ln_f` replaced, in a temp folder.
fn tiny_gpt2_with_gamma() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(write_tiny_gpt2_with_gamma).clone()
}

fn write_tiny_gpt2_with_gamma() -> PathBuf {
    let src = common::fixtures().join("tiny_gpt2/model");
    let dir = std::env::temp_dir().join(format!("hubel-direct-effect-gpt2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut t = Raw::open(&src).t;
    let d = t["transformer.ln_f.weight"].dims()[0];
    let gamma: Vec<f32> = (0..d).map(|i| 1.0 + 0.6 * (i as f32 * 1.7).sin()).collect();
    let beta: Vec<f32> = (0..d).map(|i| 0.5 * (i as f32 * 0.9).cos()).collect();
    t.insert(
        "transformer.ln_f.weight".into(),
        Tensor::from_vec(gamma, d, &Device::Cpu).unwrap(),
    );
    t.insert(
        "transformer.ln_f.bias".into(),
        Tensor::from_vec(beta, d, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    dir
}

fn tiny(kind: Kind) -> (Model, PathBuf) {
    let dir = match kind {
        Kind::Gpt2 => tiny_gpt2_with_gamma(),
        Kind::Llama => common::fixtures().join("tiny_llama/model"),
    };
    (Model::open(&dir).unwrap(), dir)
}

#[test]
fn tiny_models_per_unit_effects_equal_the_formula_from_their_weights() {
    for kind in [Kind::Gpt2, Kind::Llama] {
        let (model, dir) = tiny(kind);
        let raw = Raw::open(&dir);
        let cfg = model.config().clone();
        let mut centring_shows = 0f32;
        for layer in 0..cfg.n_layers {
            for n in 0..cfg.d_mlp {
                let (gamma, w_u, d_raw) = raw_parts(kind, &raw, layer, n);
                let d = model.neuron_out_direction(layer, n).unwrap();
                common::assert_max_abs(&format!("L{layer}N{n} direction"), &d, &d_raw, 0.0);
                let got = model.direct_effect(&d, EffectScale::PerUnit).unwrap();
                let want = formula(&w_u, Some(&gamma), &d_raw, kind == Kind::Gpt2, 1.0);
                let tol = 1e-5 * max_abs(&want) + 1e-6;
                common::assert_max_abs(&format!("L{layer}N{n} effect"), &got, &want, tol);
                // γ (and for GPT-2 the centring) matter: the old formula is far off.
                let old = formula(&w_u, None, &d_raw, false, 1.0);
                assert!(max_abs_diff(&got, &old) > 100.0 * tol, "L{layer}N{n}");
                if kind == Kind::Gpt2 {
                    let uncentred = formula(&w_u, Some(&gamma), &d_raw, false, 1.0);
                    centring_shows = centring_shows.max(max_abs_diff(&got, &uncentred) / tol);
                }
            }
        }
        // A direction's mean can be small, but over all neurons leaving out the centring shows.
        if kind == Kind::Gpt2 {
            assert!(centring_shows > 100.0, "{centring_shows}");
        }
    }
}

#[test]
fn tiny_models_frozen_scale_is_the_first_order_change_of_the_logits() {
    for kind in [Kind::Gpt2, Kind::Llama] {
        let (model, dir) = tiny(kind);
        let raw = Raw::open(&dir);
        let text = "hello world 123 The cat sat.";
        let (layer, n) = (1, 5);
        let d = model.neuron_out_direction(layer, n).unwrap();
        let check = frozen_check(&model, text, 2, d, kind == Kind::Gpt2);
        let (gamma, w_u, _) = raw_parts(kind, &raw, layer, n);
        // The formula from the weights agrees, and would fail without γ or without 1/scale.
        let centre = kind == Kind::Gpt2;
        let want = formula(
            &w_u,
            Some(&gamma),
            &check.direction,
            centre,
            check.inv_scale as f64,
        );
        common::assert_max_abs("formula", &check.finite_difference, &want, check.tol);
        let inv = check.inv_scale as f64;
        for (what, wrong) in [
            ("no γ", formula(&w_u, None, &check.direction, centre, inv)),
            (
                "no 1/scale",
                formula(&w_u, Some(&gamma), &check.direction, centre, 1.0),
            ),
        ] {
            assert!(
                max_abs_diff(&wrong, &check.finite_difference) > 10.0 * check.tol,
                "the test cannot tell {what}"
            );
        }
    }
}

struct FrozenCheck {
    /// The direction tested: orthogonal to the (centred) final residual, unit length.
    direction: Vec<f32>,
    inv_scale: f32,
    finite_difference: Vec<f32>,
    tol: f32,
}

/// Nudges the final residual at `pos` by `±ε·d` (`blocks.{last}.hook_resid_post`, the input of
/// the final norm) and checks that the central difference of that position's logits equals
/// `direct_effect(d, Frozen)`. `d` is first made orthogonal to the residual (centred first for
/// LayerNorm), so that the norm's scale changes only at second order: then, because the scale
/// is even in ε, the central difference is `W_U · (γ ⊙ d̃) / s(ε)` with `s(ε)` within
/// `(ε/|x|)²/2` of the frozen scale.
fn frozen_check(model: &Model, text: &str, pos: usize, d: Vec<f32>, centre: bool) -> FrozenCheck {
    let ids: Vec<u32> = model.tokenize(text).unwrap().iter().map(|t| t.id).collect();
    assert!(pos < ids.len());
    let last = HookPoint::block(model.config().n_layers - 1, BlockSite::ResidPost);
    let base = model.run(&ids, &Capture::points([last]), &[]).unwrap();
    let x = base.record.get(last).unwrap().row(pos).to_vec();
    let centred = |v: &[f32]| -> Vec<f64> {
        let m = if centre {
            v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64
        } else {
            0.0
        };
        v.iter().map(|&a| a as f64 - m).collect()
    };
    let (xc, dc) = (centred(&x), centred(&d));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let along = dot(&dc, &xc) / dot(&xc, &xc);
    let ortho: Vec<f64> = dc.iter().zip(&xc).map(|(a, b)| a - along * b).collect();
    let norm = dot(&ortho, &ortho).sqrt();
    let direction: Vec<f32> = ortho.iter().map(|v| (v / norm) as f32).collect();
    let eps = 0.02 * dot(&xc, &xc).sqrt() as f32;
    let nudged = |alpha: f32| {
        let iv = Intervention {
            hook: last,
            positions: Some(vec![pos]),
            indices: None,
            op: Op::AddDirection {
                direction: direction.clone(),
                alpha,
            },
        };
        model.run(&ids, &Capture::Nothing, &[iv]).unwrap()
    };
    let (plus, minus) = (nudged(eps), nudged(-eps));
    // Only that position's logits move: the hook point is past every attention layer.
    for p in (0..ids.len()).filter(|&p| p != pos) {
        assert_eq!(plus.logits_at(p), base.logits_at(p), "position {p}");
    }
    let finite_difference: Vec<f32> = plus
        .logits_at(pos)
        .iter()
        .zip(minus.logits_at(pos))
        .map(|(a, b)| (a - b) / (2.0 * eps))
        .collect();
    let inv_scale = model.final_norm_inv_scale(&x).unwrap();
    let frozen = model
        .direct_effect(&direction, EffectScale::Frozen { inv_scale })
        .unwrap();
    assert!(frozen.iter().all(|v| v.is_finite()));
    let tol = 2e-3 * max_abs(&frozen);
    common::assert_max_abs(
        "frozen effect vs Δlogits/ε",
        &frozen,
        &finite_difference,
        tol,
    );
    FrozenCheck {
        direction,
        inv_scale,
        finite_difference,
        tol,
    }
}

#[test]
fn final_norm_inv_scale_is_the_models_own() {
    // RMSNorm: 1/√(mean x² + ε); LayerNorm: 1/√(var x + ε).
    let (llama, _) = tiny(Kind::Llama);
    let eps = llama.config().norm_eps;
    let x: Vec<f32> = (0..llama.config().d_model)
        .map(|i| i as f32 - 3.0)
        .collect();
    let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let got = llama.final_norm_inv_scale(&x).unwrap() as f64;
    assert!((got - 1.0 / (ms + eps).sqrt()).abs() < 1e-7, "{got}");
    let (gpt2, _) = tiny(Kind::Gpt2);
    let eps = gpt2.config().norm_eps;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
    let got = gpt2.final_norm_inv_scale(&x).unwrap() as f64;
    assert!((got - 1.0 / (var + eps).sqrt()).abs() < 1e-7, "{got}");
}

#[test]
fn head_outputs_add_up_to_the_attention_output() {
    for kind in [Kind::Gpt2, Kind::Llama] {
        let (model, dir) = tiny(kind);
        let raw = Raw::open(&dir);
        let cfg = model.config().clone();
        let ids: Vec<u32> = model
            .tokenize("hello world 123 The cat sat.")
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        for layer in 0..cfg.n_layers {
            let (z_point, out_point) = (
                HookPoint::block(layer, BlockSite::Z),
                HookPoint::block(layer, BlockSite::AttnOut),
            );
            let run = model
                .run(&ids, &Capture::points([z_point, out_point]), &[])
                .unwrap();
            let bias = match kind {
                Kind::Gpt2 => {
                    raw.get(&format!("transformer.h.{layer}.attn.c_proj.bias"))
                        .1
                }
                Kind::Llama => vec![0.0; cfg.d_model],
            };
            for pos in 0..ids.len() {
                let z = run.record.get(z_point).unwrap().row(pos);
                let mut sum: Vec<f32> = bias.clone();
                for h in 0..cfg.n_heads {
                    let zh = &z[h * cfg.d_head..(h + 1) * cfg.d_head];
                    let out = model.head_out_direction(layer, h, zh).unwrap();
                    sum.iter_mut().zip(&out).for_each(|(s, o)| *s += o);
                }
                let want = run.record.get(out_point).unwrap().row(pos);
                common::assert_max_abs(&format!("L{layer} pos {pos}"), &sum, want, 1e-5);
            }
        }
    }
}

#[test]
fn bad_indices_and_lengths_are_errors_not_panics() {
    let (model, _) = tiny(Kind::Llama);
    let cfg = model.config().clone();
    let z = vec![0.0; cfg.d_head];
    assert!(model.neuron_out_direction(cfg.n_layers, 0).is_err());
    assert!(model.neuron_out_direction(0, cfg.d_mlp).is_err());
    assert!(model.neuron_out_direction(0, cfg.d_mlp - 1).is_ok());
    assert!(model.head_out_direction(cfg.n_layers, 0, &z).is_err());
    assert!(model.head_out_direction(0, cfg.n_heads, &z).is_err());
    assert!(model.head_out_direction(0, 0, &z[1..]).is_err());
    assert!(model
        .direct_effect(&[1.0; 3], EffectScale::PerUnit)
        .is_err());
    assert!(model.final_norm_inv_scale(&[1.0; 3]).is_err());
    let msg = model.neuron_out_direction(0, 999).unwrap_err().to_string();
    assert!(msg.contains("999") && msg.contains("48"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// The report and the command

#[test]
fn report_says_which_scale_it_shows() {
    let (model, _) = tiny(Kind::Llama);
    let feature = effect::parse_feature("L1N5").unwrap();
    assert_eq!(feature, FeatureId::neuron(1, 5));
    assert_eq!(
        effect::parse_feature("blocks.0.attn.hook_z[2]").unwrap(),
        FeatureId::head(0, 2)
    );
    for bad in ["L1", "blocks.0.hook_resid_post[3]", "L1N5=mean", "L1N5@2"] {
        assert!(effect::parse_feature(bad).is_err(), "{bad}");
    }
    let per_unit = effect::run(
        &model,
        &EffectRequest {
            feature,
            probe: None,
            top: 4,
        },
    )
    .unwrap();
    assert_eq!(per_unit.scale, "per unit of activation");
    assert_eq!(per_unit.promoted.len(), 4);
    assert!(per_unit.probe.is_none());
    let d = model.neuron_out_direction(1, 5).unwrap();
    let effect = model.direct_effect(&d, EffectScale::PerUnit).unwrap();
    let (up, down) = promoted_suppressed(&effect, 4);
    assert_eq!(
        per_unit
            .promoted
            .iter()
            .map(|t| (t.id, t.value))
            .collect::<Vec<_>>(),
        up
    );
    assert_eq!(
        per_unit
            .suppressed
            .iter()
            .map(|t| (t.id, t.value))
            .collect::<Vec<_>>(),
        down
    );

    let probe = |pos| EffectRequest {
        feature,
        probe: Some(ProbeAt {
            text: "hello world".into(),
            pos,
        }),
        top: 4,
    };
    let frozen = effect::run(&model, &probe(Some(1))).unwrap();
    assert_eq!(
        frozen.scale,
        "on this probe at position 1, final-norm scale frozen"
    );
    let p = frozen.probe.as_ref().unwrap();
    assert_eq!(p.position, 1);
    let frozen_effect = model
        .direct_effect(
            &d,
            EffectScale::Frozen {
                inv_scale: p.inv_scale,
            },
        )
        .unwrap();
    let (up, _) = promoted_suppressed(&frozen_effect, 4);
    assert_eq!(
        frozen
            .promoted
            .iter()
            .map(|t| (t.id, t.value))
            .collect::<Vec<_>>(),
        up
    );
    let table = effect::render_table(&frozen);
    assert!(table.contains("final-norm scale frozen") && table.contains("promotes"));

    assert!(matches!(
        effect::run(&model, &probe(Some(99))),
        Err(EffectError::PositionOutOfRange { pos: 99, .. })
    ));
    let head = EffectRequest {
        feature: FeatureId::head(1, 2),
        probe: None,
        top: 3,
    };
    assert!(matches!(
        effect::run(&model, &head),
        Err(EffectError::NeedsProbe(_))
    ));
    let head = EffectRequest {
        probe: probe(None).probe,
        ..head
    };
    let r = effect::run(&model, &head).unwrap();
    assert!(r.unit.contains("head's output"), "{}", r.unit);
    let bad = EffectRequest {
        feature: FeatureId::neuron(1, 4800),
        probe: None,
        top: 3,
    };
    assert!(effect::run(&model, &bad).is_err());
}

#[test]
fn effect_command_prints_tokens_and_the_scale() {
    let model_dir = common::fixtures().join("tiny_llama/model");
    let out = Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args([
            "effect",
            "--feature",
            "L1N5",
            "--top",
            "3",
            "--json",
            "--model",
        ])
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["feature"], "L1N5");
    assert_eq!(json["scale"], "per unit of activation");
    assert_eq!(json["promoted"].as_array().unwrap().len(), 3);
    assert_eq!(json["suppressed"].as_array().unwrap().len(), 3);

    let out = Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args([
            "effect",
            "--feature",
            "L1N5",
            "--text",
            "hello world",
            "--pos",
            "1",
        ])
        .arg("--model")
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on this probe at position 1, final-norm scale frozen"),
        "{text}"
    );
    assert!(text.contains("suppresses"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(["effect", "--feature", "L1H2", "--model"])
        .arg(&model_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--text"), "{err}");
}
