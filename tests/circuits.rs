//! Circuits (issue 11): the logit lens, direct logit attribution and activation patching, on tiny
//! random models (one with a planted path) computed independently here, and `hubel lens|dla|patch`
//! end to end on the default model.

mod common;

use std::process::{Command, Output};

use candle_core::Tensor;
use hubel::circuits::dla::{self, DlaRequest};
use hubel::circuits::lens::{self, LensRequest};
use hubel::circuits::patch::{self, PatchRequest, Site};
use hubel::circuits::{single_token, CircuitError};
use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention};
use hubel::model::random::{random_model, random_model_edited, tiny_config};
use hubel::model::{Arch, Logits, Model};

fn ids(model: &Model, text: &str) -> Vec<u32> {
    model.tokenize(text).unwrap().iter().map(|t| t.id).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn finite(what: &str, v: f32) -> f32 {
    assert!(v.is_finite(), "{what} is {v}");
    v
}

// ---------------------------------------------------------------------------------------------
// Logit lens

#[test]
fn lens_at_the_last_layer_is_the_models_logits() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let (model, _) = random_model(&tiny_config(arch), 3).unwrap();
        let tokens = ids(&model, "the lens reads");
        let run = model.run(&tokens, &Capture::All, &[]).unwrap();
        let last = model.config().n_layers - 1;
        let resid = run
            .record
            .get(HookPoint::block(last, BlockSite::ResidPost))
            .unwrap();
        // The model's own final norm and unembedding: bitwise the run's logits.
        assert_eq!(
            model.unembed_resid(&resid.data).unwrap(),
            run.logits,
            "{arch:?}"
        );
        let target = single_token(&model, "s", "target").unwrap();
        let grid = lens::grid(&model, &tokens, &[], Some(target.id), 5, None).unwrap();
        assert_eq!(grid.layers.len(), model.config().n_layers);
        assert_eq!(grid.positions(), tokens.len());
        for (p, cell) in grid.layers[last].positions.iter().enumerate() {
            let logits = run.logits_at(p);
            let want = hubel::analysis::top_k(logits, 5);
            let got_ids: Vec<u32> = cell.top.iter().map(|t| t.id).collect();
            let want_ids: Vec<u32> = want.iter().map(|t| t.0).collect();
            assert_eq!(got_ids, want_ids, "{arch:?} position {p}");
            let got: Vec<f32> = cell.top.iter().map(|t| t.prob).collect();
            let want_p: Vec<f32> = want.iter().map(|t| t.2).collect();
            common::assert_max_abs("top probabilities", &got, &want_p, 1e-6);
            // The target's probability and rank, computed here from the logits.
            let lse = {
                let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                m + logits
                    .iter()
                    .map(|&l| (l as f64 - m).exp())
                    .sum::<f64>()
                    .ln()
            };
            let t = target.id as usize;
            let p_t = ((logits[t] as f64) - lse).exp() as f32;
            common::assert_max_abs("target prob", &[cell.target_prob.unwrap()], &[p_t], 1e-6);
            let rank = 1 + logits.iter().filter(|&&l| l > logits[t]).count();
            assert_eq!(cell.target_rank, Some(rank), "{arch:?} position {p}");
        }
        // Commitment: from commit_layer on, the top-1 is the last layer's; just before, not.
        for (p, &c) in grid.commit_layer.iter().enumerate() {
            let final_top = grid.layers[last].positions[p].top[0].id;
            for l in c..=last {
                assert_eq!(grid.layers[l].positions[p].top[0].id, final_top);
            }
            if c > 0 {
                assert_ne!(grid.layers[c - 1].positions[p].top[0].id, final_top);
            }
        }
    }
}

#[test]
fn lens_of_an_earlier_layer_reads_that_layers_residual_stream() {
    let (model, _) = random_model(&tiny_config(Arch::Llama), 5).unwrap();
    let tokens = ids(&model, "abc");
    let grid = lens::grid(&model, &tokens, &[], None, 3, None).unwrap();
    // Zero the residual stream after layer 0 from layer 1's input on: the lens of layer 0 must
    // not change (it is read before the edit), the last layer's must.
    let edit = Intervention {
        hook: HookPoint::block(1, BlockSite::ResidPre),
        positions: None,
        indices: Some((0..16).collect()),
        op: hubel::hooks::Op::Zero,
    };
    let edited = lens::grid(&model, &tokens, &[edit], None, 3, None).unwrap();
    assert_eq!(grid.layers[0], edited.layers[0]);
    assert_ne!(grid.layers[2], edited.layers[2]);
    // Layer 1's lens by hand: its resid_post through the final norm and the unembedding.
    let run = model.run(&tokens, &Capture::All, &[]).unwrap();
    let r1 = run
        .record
        .get(HookPoint::block(1, BlockSite::ResidPost))
        .unwrap();
    let logits = model.unembed_resid(&r1.data).unwrap();
    let vocab = model.config().vocab_size;
    for p in 0..tokens.len() {
        let want = hubel::analysis::top_k(&logits[p * vocab..(p + 1) * vocab], 3);
        let got: Vec<u32> = grid.layers[1].positions[p]
            .top
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(got, want.iter().map(|t| t.0).collect::<Vec<_>>());
    }
}

#[test]
fn lens_report_has_a_baseline_only_with_interventions() {
    let (model, _) = random_model(&tiny_config(Arch::Llama), 6).unwrap();
    let req = LensRequest {
        text: "hello".into(),
        target: Some("o".into()),
        interventions: Vec::new(),
        top: 2,
    };
    let r = lens::run(&model, &req).unwrap();
    assert!(r.baseline.is_none());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 3);
    let cell = &v["layers"][0]["positions"][0];
    assert!(cell["top"][0]["token"].is_string() && cell["top"][0]["prob"].is_number());
    assert!(cell["target_prob"].is_number() && cell["target_rank"].is_u64());
    assert_eq!(v["commit_layer"].as_array().unwrap().len(), 5);
    let with = LensRequest {
        interventions: vec![hubel::hooks::spec::parse("L1N3").unwrap()],
        ..req
    };
    let r = lens::run(&model, &with).unwrap();
    assert!(r.baseline.is_some());
    assert_ne!(r.baseline.as_ref().unwrap(), &r.grid);
}

// ---------------------------------------------------------------------------------------------
// Direct logit attribution

/// The DLA of a tiny Llama (RMSNorm, no biases) computed here from the model's tensors and the
/// recorded embedding, attention and MLP outputs: each layer's attention (the sum of its heads),
/// each MLP (the sum of its neurons), the embedding, and their sum equal to the logit.
#[test]
fn dla_components_sum_to_the_logit_with_the_norm_scale_frozen() {
    let cfg = tiny_config(Arch::Llama);
    let (model, tensors) = random_model(&cfg, 7).unwrap();
    let text = "a probe of bytes";
    let tokens = ids(&model, text);
    let run = model.run(&tokens, &Capture::All, &[]).unwrap();
    let gamma = values(&tensors["model.norm.weight"]);
    let w_u = values(
        tensors
            .get("lm_head.weight")
            .unwrap_or(&tensors["model.embed_tokens.weight"]),
    );
    let d = cfg.d_model;
    let (t, v) = (
        single_token(&model, "e", "target").unwrap(),
        single_token(&model, "x", "versus").unwrap(),
    );
    for pos in [3, tokens.len() - 1] {
        for versus in [None, Some(&v)] {
            let report = dla::run(
                &model,
                &DlaRequest {
                    text: text.into(),
                    target: t.token.clone(),
                    versus: versus.map(|v| v.token.clone()),
                    position: Some(pos),
                    neurons: cfg.n_layers * cfg.d_mlp,
                    interventions: Vec::new(),
                },
            )
            .unwrap();
            // By hand: the frozen scale, the direction, each recorded component along it.
            let x = run
                .record
                .get(HookPoint::block(cfg.n_layers - 1, BlockSite::ResidPost))
                .unwrap()
                .row(pos);
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + cfg.norm_eps).sqrt();
            let dir: Vec<f32> = (0..d)
                .map(|i| {
                    let u = w_u[t.id as usize * d + i]
                        - versus.map_or(0.0, |v| w_u[v.id as usize * d + i]);
                    gamma[i] * u
                })
                .collect();
            let along = |point: HookPoint| -> f32 {
                let act = run.record.get(point).unwrap();
                (dot(act.row(pos), &dir) * inv) as f32
            };
            let logits = run.logits_at(pos);
            let total = logits[t.id as usize] - versus.map_or(0.0, |v| logits[v.id as usize]);
            common::assert_max_abs("total", &[report.total], &[total], 0.0);
            let mut by_hand = vec![along(HookPoint::Embed)];
            let mut ours = vec![
                report
                    .components
                    .iter()
                    .find(|c| c.name == "embed")
                    .unwrap()
                    .value,
            ];
            let mut sum = by_hand[0] as f64;
            for l in 0..cfg.n_layers {
                let bars = &report.layers[l];
                let (attn, mlp) = (
                    along(HookPoint::block(l, BlockSite::AttnOut)),
                    along(HookPoint::block(l, BlockSite::MlpOut)),
                );
                sum += attn as f64 + mlp as f64;
                // The layer's heads sum to its attention output, its MLP is its output, and its
                // neurons sum to that too (no biases).
                let neurons: f64 = report
                    .neurons
                    .iter()
                    .filter(|n| n.layer == l)
                    .map(|n| n.value as f64)
                    .sum();
                by_hand.extend([attn, mlp, mlp]);
                ours.extend([bars.attn, bars.mlp, neurons as f32]);
                // The heads listed as components are the bars' heads.
                for (h, &value) in bars.heads.iter().enumerate() {
                    let c = report
                        .components
                        .iter()
                        .find(|c| c.name == format!("L{l}H{h}"))
                        .unwrap();
                    assert_eq!(c.value, value);
                }
            }
            common::assert_close("components", &ours, &by_hand, 1e-5, 1e-4);
            // RMSNorm without biases: the parts add up to the logit exactly (up to rounding).
            common::assert_close(
                "sum = logit",
                &[report.sum, sum as f32],
                &[total, total],
                1e-5,
                1e-4,
            );
            assert!(
                report.residual.abs() <= 1e-4 * total.abs().max(1.0),
                "{}",
                report.residual
            );
            assert_eq!(
                report.components.len(),
                1 + cfg.n_layers * (cfg.n_heads + 1)
            );
            let sorted = report
                .components
                .windows(2)
                .all(|w| w[0].value.abs() >= w[1].value.abs());
            assert!(sorted, "components sorted by |value|");
            assert!(finite("inv_scale", report.inv_scale) > 0.0);
        }
    }
}

#[test]
fn dla_refuses_bad_tokens_and_positions() {
    let (model, _) = random_model(&tiny_config(Arch::Llama), 7).unwrap();
    let req = |target: &str, versus: Option<&str>, position: Option<usize>| DlaRequest {
        text: "abc".into(),
        target: target.into(),
        versus: versus.map(String::from),
        position,
        neurons: 5,
        interventions: Vec::new(),
    };
    let err = |r: DlaRequest| dla::run(&model, &r).unwrap_err();
    assert!(matches!(
        err(req("", None, None)),
        CircuitError::EmptyToken { .. }
    ));
    let e = err(req("ab", None, None));
    assert!(matches!(e, CircuitError::NotOneToken { n: 2, .. }), "{e}");
    assert!(e.to_string().contains("2 tokens"), "{e}");
    assert!(matches!(
        err(req("a", Some("a"), None)),
        CircuitError::SameTokens(_)
    ));
    let e = err(req("a", None, Some(3)));
    assert!(
        matches!(e, CircuitError::PositionOutOfRange { pos: 3, len: 3 }),
        "{e}"
    );
    assert!(e.to_string().contains("0..2"), "{e}");
    let e = dla::run(
        &model,
        &DlaRequest {
            text: String::new(),
            ..req("a", None, None)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn dla_of_an_ablated_run_reads_the_intervened_run() {
    let cfg = tiny_config(Arch::Llama);
    let (model, _) = random_model(&cfg, 7).unwrap();
    let req = |interventions: Vec<Intervention>| DlaRequest {
        text: "a probe of bytes".into(),
        target: "e".into(),
        versus: Some("x".into()),
        position: None,
        neurons: cfg.n_layers * cfg.d_mlp,
        interventions,
    };
    let base = dla::run(&model, &req(Vec::new())).unwrap();
    assert!(base.interventions.is_empty());
    // Ablate the baseline's strongest neuron: it writes nothing, and the parts still sum to
    // the intervened run's logit difference.
    let top = base.neurons[0].clone();
    let spec = format!("L{}N{}", top.layer, top.neuron);
    let iv = hubel::hooks::spec::parse(&spec).unwrap();
    let r = dla::run(&model, &req(vec![iv.clone()])).unwrap();
    assert_eq!(r.interventions.len(), 1);
    let ablated = r.neurons.iter().find(|n| n.feature == top.feature).unwrap();
    assert_eq!(ablated.value, 0.0);
    assert_eq!(ablated.activation, 0.0);
    let tokens = ids(&model, "a probe of bytes");
    let run = model.run(&tokens, &Capture::Nothing, &[iv]).unwrap();
    let (e, x) = (ids(&model, "e")[0] as usize, ids(&model, "x")[0] as usize);
    let logits = run.last_logits();
    assert_eq!(r.total, logits[e] - logits[x]);
    assert_ne!(
        r.total, base.total,
        "the ablation moves the logit difference"
    );
    assert!(
        (r.total - r.sum).abs() <= 1e-4 * r.total.abs().max(1.0),
        "{} vs {}",
        r.total,
        r.sum
    );
    assert!(dla::render(&r, 5).contains(&format!("edits  {}", r.interventions[0])));
    // An edit that does not fit the model is refused.
    let bad = hubel::hooks::spec::parse("L9N1").unwrap();
    assert!(dla::run(&model, &req(vec![bad])).is_err());
}

/// The heatmap's ranking by direct effect (`maps::top_by_effect` over `LayerBars::neurons`): every
/// neuron's value is act × (W_outᵀ·dir) × 1/scale computed here from the model's tensors, the
/// first ranked is the largest |value|, and a neuron whose output weights are zeroed, first by
/// peak |activation|, is last by effect.
#[test]
fn ranking_a_layers_neurons_by_direct_effect() {
    use hubel::analysis::maps;
    use hubel::features::{Basis, FeatureId};
    let cfg = tiny_config(Arch::Llama);
    let (l, d, d_mlp) = (1, cfg.d_model, cfg.d_mlp);
    let text = "a probe of bytes";
    // The layer's strongest neuron by peak |activation| (position 0 left out, as the app does).
    let (plain, _) = random_model(&cfg, 7).unwrap();
    let tokens = ids(&plain, text);
    let run = plain.run(&tokens, &Capture::All, &[]).unwrap();
    let by_activation = maps::top_features(&run.record, l, Basis::Neurons, d_mlp, 1);
    let peak = by_activation[0].index;
    // The same model with that neuron's output weights zeroed: its activations (read before the
    // down projection) are the same, its direct effect is exactly 0.
    let down = format!("model.layers.{l}.mlp.down_proj.weight");
    let mut edited = false;
    let (model, tensors) = random_model_edited(&cfg, 7, &mut |name, dims, values| {
        if name == down {
            assert_eq!(dims, [d, d_mlp]);
            (0..d).for_each(|i| values[i * d_mlp + peak] = 0.0);
            edited = true;
        }
    })
    .unwrap();
    assert!(edited, "{down} not built");
    let run = model.run(&tokens, &Capture::All, &[]).unwrap();
    assert_eq!(
        maps::top_features(&run.record, l, Basis::Neurons, d_mlp, 1),
        by_activation,
        "the activations do not depend on the output weights"
    );
    let (t, v) = (
        single_token(&model, "e", "target").unwrap(),
        single_token(&model, "x", "versus").unwrap(),
    );
    let pos = tokens.len() - 1;
    let report = dla::run(
        &model,
        &DlaRequest {
            text: text.into(),
            target: t.token.clone(),
            versus: Some(v.token.clone()),
            position: None,
            neurons: 0,
            interventions: Vec::new(),
        },
    )
    .unwrap();
    assert!(report.neurons.is_empty(), "none listed, all kept per layer");
    // By hand: the frozen scale, the direction, the layer's activations and output weights.
    let x = run
        .record
        .get(HookPoint::block(cfg.n_layers - 1, BlockSite::ResidPost))
        .unwrap()
        .row(pos);
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
    let inv = 1.0 / (ms + cfg.norm_eps).sqrt();
    let gamma = values(&tensors["model.norm.weight"]);
    let w_u = values(&tensors["lm_head.weight"]);
    let dir: Vec<f32> = (0..d)
        .map(|i| gamma[i] * (w_u[t.id as usize * d + i] - w_u[v.id as usize * d + i]))
        .collect();
    let w_out = values(&tensors[&down]);
    let act = run
        .record
        .get(HookPoint::block(l, BlockSite::MlpPost))
        .unwrap()
        .row(pos);
    let by_hand: Vec<f32> = (0..d_mlp)
        .map(|n| {
            let read: f64 = (0..d)
                .map(|i| w_out[i * d_mlp + n] as f64 * dir[i] as f64)
                .sum();
            (act[n] as f64 * read * inv) as f32
        })
        .collect();
    let effects = report.layers[l].effects(Basis::Neurons).unwrap();
    assert_eq!(effects.len(), d_mlp);
    common::assert_close("every neuron's effect", effects, &by_hand, 1e-5, 1e-6);
    assert_eq!(
        report.layers[l].effects(Basis::Heads),
        Some(report.layers[l].heads.as_slice())
    );
    assert_eq!(report.layers[l].effects(Basis::Dictionary), None);
    // The ranking: the largest |effect| by hand first, with its value.
    let ranked = maps::top_by_effect(effects, l, Basis::Neurons, d_mlp);
    let first = (0..d_mlp)
        .max_by(|&a, &b| {
            by_hand[a]
                .abs()
                .total_cmp(&by_hand[b].abs())
                .then(b.cmp(&a))
        })
        .unwrap();
    assert_eq!(ranked[0], FeatureId::neuron(l, first));
    common::assert_close(
        "the first's effect",
        &[effects[ranked[0].index]],
        &[by_hand[first]],
        1e-5,
        1e-6,
    );
    assert!(by_hand[first].abs() > 1e-3, "{}", by_hand[first]);
    let sorted = ranked
        .windows(2)
        .all(|w| effects[w[0].index].abs() >= effects[w[1].index].abs());
    assert!(sorted, "ranked by |effect|");
    // The strongest by activation writes nothing along the direction: last by effect.
    assert_eq!(effects[peak], 0.0);
    assert_eq!(ranked[d_mlp - 1], FeatureId::neuron(l, peak));
    assert_ne!(ranked[0], by_activation[0]);
    // `hubel dla --json` is unchanged: the per-layer neuron values are not serialised.
    let json = serde_json::to_value(&report).unwrap();
    let mut keys: Vec<&str> = json["layers"][l]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["attn", "heads", "layer", "mlp", "strongest_neuron"]);
}

// ---------------------------------------------------------------------------------------------
// Activation patching

fn patch_req(clean: &str, corrupt: &str, site: Site) -> PatchRequest {
    PatchRequest {
        clean: clean.into(),
        corrupt: corrupt.into(),
        target: "e".into(),
        versus: Some("o".into()),
        site,
        fit: None,
    }
}

#[test]
fn patching_identical_prompts_restores_nothing() {
    let (model, _) = random_model(&tiny_config(Arch::Llama), 8).unwrap();
    for site in Site::ALL {
        let r = patch::run(&model, &patch_req("same text", "same text", site), None).unwrap();
        assert_eq!(r.clean, r.corrupt);
        assert_eq!(r.grid.len(), 3);
        for row in &r.grid {
            assert_eq!(row.len(), 9);
            for &v in row {
                assert_eq!(finite("cell", v), 0.0, "{site:?}");
            }
        }
        for row in &r.patched {
            for &m in row {
                assert_eq!(m, r.corrupt, "a no-op patch changes nothing ({site:?})");
            }
        }
    }
}

#[test]
fn patching_every_position_of_a_layers_residual_stream_gives_the_clean_logits() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let (model, _) = random_model(&tiny_config(arch), 9).unwrap();
        let (clean, corrupt) = (ids(&model, "clean one"), ids(&model, "dirty two"));
        let capture = Capture::sites([BlockSite::ResidPre]);
        let clean_run = model.run(&clean, &capture, &[]).unwrap();
        let corrupt_run = model.run(&corrupt, &Capture::Nothing, &[]).unwrap();
        assert_ne!(clean_run.logits, corrupt_run.logits);
        for layer in 0..model.config().n_layers {
            let ivs: Vec<Intervention> = (0..clean.len())
                .map(|p| {
                    patch::cell_intervention(&clean_run.record, Site::Resid, layer, p).unwrap()
                })
                .collect();
            let patched = model.run(&corrupt, &Capture::Nothing, &ivs).unwrap();
            assert_eq!(patched.logits, clean_run.logits, "{arch:?} layer {layer}");
            // Batched with other patched copies: the same bits.
            let seqs: Vec<&[u32]> = vec![&corrupt, &corrupt];
            let out = model
                .run_batch_each(&seqs, &Capture::Nothing, &[&ivs, &[]], Logits::Last, None)
                .unwrap();
            assert_eq!(out[0].last_logits(), clean_run.last_logits());
            assert_eq!(out[1].last_logits(), corrupt_run.last_logits());
            // From the corrupted run's cached input of the layer (how a trace runs its copies).
            let cache = model.prepare(&corrupt, &Capture::Nothing, None).unwrap();
            let out = model
                .rerun_batch_each(&cache, &Capture::Nothing, &[&[], &ivs], Logits::All, None)
                .unwrap();
            assert_eq!(out[0].logits, corrupt_run.logits, "{arch:?} layer {layer}");
            assert_eq!(out[1].logits, clean_run.logits, "{arch:?} layer {layer}");
        }
    }
}

/// Layer 1's attention is the only path between positions (layers 0 and 2 write nothing from
/// attention), and the prompts differ at position 1 only: the residual stream carries the
/// difference at position 1 into layer 1, and at the last position after it. The trace must show
/// exactly that: 1 at (0, 1), (1, 1) and (2, last), 0 everywhere else; and for attention outputs,
/// 1 at (1, last) only.
#[test]
fn a_planted_path_is_found() {
    let cfg = tiny_config(Arch::Llama);
    let (model, _) = random_model_edited(&cfg, 21, &mut |name, _dims, values| {
        for l in [0, 2] {
            if name == format!("model.layers.{l}.self_attn.o_proj.weight") {
                values.fill(0.0);
            }
        }
    })
    .unwrap();
    let (clean, corrupt) = ("xqzzzy", "xrzzzy");
    // Choose the pair of tokens whose metric differs most between the prompts.
    let mut req = patch_req(clean, corrupt, Site::Resid);
    let r = patch::run(&model, &req, None).unwrap();
    let span = (r.clean - r.corrupt).abs();
    assert!(
        span > 1e-3,
        "the planted path must move the metric ({span})"
    );
    let last = 5;
    let mut want = vec![vec![0f32; 6]; 3];
    want[0][1] = 1.0;
    want[1][1] = 1.0;
    want[2][last] = 1.0;
    for (l, want) in want.iter().enumerate() {
        common::assert_max_abs(&format!("resid row {l}"), &r.grid[l], want, 1e-4);
    }
    req.site = Site::Attn;
    let r = patch::run(&model, &req, None).unwrap();
    let mut want = vec![vec![0f32; 6]; 3];
    want[1][last] = 1.0;
    for (l, want) in want.iter().enumerate() {
        common::assert_max_abs(&format!("attn row {l}"), &r.grid[l], want, 1e-4);
    }
    assert_eq!(r.strongest().map(|s| (s.0, s.1)), Some((1, last)));
}

#[test]
fn patching_refuses_prompts_of_different_lengths_and_bad_tokens() {
    let (model, _) = random_model(&tiny_config(Arch::Llama), 8).unwrap();
    let e = patch::run(&model, &patch_req("abc", "abcd", Site::Resid), None).unwrap_err();
    assert!(
        matches!(
            e,
            CircuitError::LengthMismatch {
                clean: 3,
                corrupt: 4,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("same number of tokens"), "{e}");
    let mut req = patch_req("abc", "abd", Site::Mlp);
    req.target = "ee".into();
    let e = patch::run(&model, &req, None).unwrap_err();
    assert!(matches!(e, CircuitError::NotOneToken { .. }), "{e}");
    req.target = String::new();
    assert!(matches!(
        patch::run(&model, &req, None).unwrap_err(),
        CircuitError::EmptyToken { .. }
    ));
    let e = patch::run(&model, &patch_req("", "", Site::Resid), None).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    assert_eq!(patch::fraction(1.0, 1.0, 1.0), 0.0, "0/0 is 0");
    assert_eq!(patch::fraction(2.0, 3.0, 1.0), 0.5);
}

#[test]
fn fitting_pads_or_trims_after_the_first_token_and_keeps_the_last() {
    use patch::{fit_ids, Fit, Side};
    let (short, long) = (vec![1u32, 2, 3, 4], vec![5u32, 6, 7, 8, 9, 10]);
    // Pad: the shorter gets the filler right after position 0; the other is untouched.
    let f = fit_ids(&short, &long, Fit::Pad, 0, 1).unwrap();
    assert_eq!(f.clean, vec![1, 0, 0, 2, 3, 4]);
    assert_eq!(f.corrupt, long);
    assert_eq!((f.changed, f.count), (Some(Side::Clean), 2));
    let f = fit_ids(&long, &short, Fit::Pad, 0, 1).unwrap();
    assert_eq!(f.corrupt, vec![1, 0, 0, 2, 3, 4]);
    assert_eq!(f.changed, Some(Side::Corrupt));
    // Trim: the longer loses its extra tokens right after position 0.
    let f = fit_ids(&short, &long, Fit::Trim, 0, 1).unwrap();
    assert_eq!(f.corrupt, vec![5, 8, 9, 10]);
    assert_eq!(f.clean, short);
    assert_eq!((f.changed, f.count), (Some(Side::Corrupt), 2));
    // After a BOS (at = 2) the first word stays too.
    let f = fit_ids(&short, &long, Fit::Pad, 0, 2).unwrap();
    assert_eq!(f.clean, vec![1, 2, 0, 0, 3, 4]);
    let f = fit_ids(&short, &long, Fit::Trim, 0, 2).unwrap();
    assert_eq!(f.corrupt, vec![5, 6, 9, 10]);
    // Every case: equal lengths, the same first and last tokens as before.
    for fit in Fit::ALL {
        for at in [1, 2, 3] {
            for (a, b) in [(&short, &long), (&long, &short)] {
                let f = fit_ids(a, b, fit, 0, at).unwrap();
                assert_eq!(f.clean.len(), f.corrupt.len(), "{fit:?} at {at}");
                assert_eq!(f.clean.last(), a.last());
                assert_eq!(f.corrupt.last(), b.last());
                assert_eq!(f.clean[..at], a[..at]);
                assert_eq!(f.corrupt[..at], b[..at]);
            }
        }
    }
    // Equal lengths: nothing changes.
    let f = fit_ids(&short, &[9, 9, 9, 9], Fit::Pad, 0, 1).unwrap();
    assert_eq!((f.changed, f.count, &f.clean), (None, 0, &short));
    assert_eq!(patch::describe_fit(Fit::Pad, &f, " the", 1), None);
    // Bad cases say why.
    let e = fit_ids(&[], &long, Fit::Pad, 0, 1).unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = fit_ids(&[7], &long, Fit::Pad, 0, 1).unwrap_err();
    assert!(e.contains("last token"), "{e}");
    let e = fit_ids(&short, &long, Fit::Trim, 0, 4).unwrap_err();
    assert!(e.contains("last token"), "{e}");
    let f = fit_ids(&long, &short, Fit::Pad, 0, 1).unwrap();
    assert_eq!(
        patch::describe_fit(Fit::Pad, &f, " the", 1).as_deref(),
        Some("the corrupted prompt padded with 2 × \" the\" after position 0")
    );
    assert_eq!(Fit::parse("trim"), Ok(Fit::Trim));
    assert!(Fit::parse("sideways").unwrap_err().contains("pad or trim"));
}

#[test]
fn a_trace_of_prompts_of_different_lengths_runs_padded_or_trimmed() {
    use patch::Fit;
    let (model, _) = random_model(&tiny_config(Arch::Llama), 8).unwrap();
    let filler = model.neutral_token();
    let mut req = patch_req("abc", "abcdef", Site::Resid);
    assert!(matches!(
        patch::run(&model, &req, None).unwrap_err(),
        CircuitError::LengthMismatch { .. }
    ));
    // Pad: the clean prompt (the shorter) gets three fillers after position 0.
    req.fit = Some(Fit::Pad);
    let r = patch::run(&model, &req, None).unwrap();
    let f = hubel::circuits::token_text(&model, filler);
    assert_eq!(r.tokens, ["a", &f, &f, &f, "b", "c"]);
    assert_eq!(r.corrupt_tokens, ["a", "b", "c", "d", "e", "f"]);
    assert!(r
        .fitted
        .as_deref()
        .unwrap()
        .contains("clean prompt padded with 3"));
    assert_eq!(r.corrupt_probe.as_deref(), Some("abcdef"));
    assert_eq!((r.grid.len(), r.grid[0].len()), (3, 6));
    // The trace ran on the padded ids: its clean metric is the padded prompt's.
    let padded = [ids(&model, "a"), vec![filler; 3], ids(&model, "bc")].concat();
    let run = model.run(&padded, &Capture::Nothing, &[]).unwrap();
    let last = run.last_logits();
    let (e, o) = (ids(&model, "e")[0] as usize, ids(&model, "o")[0] as usize);
    assert_eq!(r.clean, last[e] - last[o]);
    // Trim: the corrupted prompt (the longer) loses "bcd"; a patch by hand's probe is "aef".
    req.fit = Some(Fit::Trim);
    let r = patch::run(&model, &req, None).unwrap();
    assert_eq!(r.tokens, ["a", "b", "c"]);
    assert_eq!(r.corrupt_tokens, ["a", "e", "f"]);
    assert_eq!(r.corrupt_probe.as_deref(), Some("aef"));
    assert!(patch::render(&r).contains("trimmed"));
    // A padded corrupted prompt: the probe for a patch by hand tokenizes to the padded ids.
    let mut req = patch_req("abcdef", "abc", Site::Mlp);
    req.fit = Some(Fit::Pad);
    let r = patch::run(&model, &req, None).unwrap();
    assert_eq!(r.corrupt_tokens.len(), 6);
    let probe = r
        .corrupt_probe
        .clone()
        .expect("byte-level fillers round-trip");
    let back: Vec<String> = hubel::circuits::tokenize(&model, &probe).unwrap().1;
    assert_eq!(back, r.corrupt_tokens);
    // Too short to fit: a message, not a panic.
    let mut req = patch_req("a", "abc", Site::Resid);
    req.fit = Some(Fit::Pad);
    let e = patch::run(&model, &req, None).unwrap_err();
    assert!(matches!(e, CircuitError::CannotFit(_)), "{e}");
}

#[test]
fn a_trace_as_a_job_reports_progress_and_can_be_cancelled() {
    use hubel::jobs::{Interactive, JobRunner, JobState};
    use std::sync::Arc;
    use std::time::Duration;
    let (model, _) = random_model(&tiny_config(Arch::Llama), 8).unwrap();
    let model = Arc::new(model);
    let runner = JobRunner::new(Interactive::new(), || {});
    let m = model.clone();
    let id = runner.submit("trace", move |ctx| {
        let r = patch::run(
            &m,
            &patch_req("abcdefgh", "abcdefgx", Site::Resid),
            Some(ctx),
        )?;
        Ok(format!("{} runs", r.runs))
    });
    let s = runner.wait(id, Duration::from_secs(60)).unwrap();
    assert!(
        matches!(&s.state, JobState::Done(m) if m == "24 runs"),
        "{:?}",
        s.state
    );
    assert_eq!((s.done, s.total), (24, Some(24)));
    // Cancelled before it starts: ends Cancelled, not Failed.
    let gate = runner.interactive().begin();
    let m = model.clone();
    let id = runner.submit("trace", move |ctx| {
        patch::run(
            &m,
            &patch_req("abcdefgh", "abcdefgx", Site::Resid),
            Some(ctx),
        )?;
        Ok(String::new())
    });
    runner.cancel(id);
    drop(gate);
    let s = runner.wait(id, Duration::from_secs(60)).unwrap();
    assert!(matches!(s.state, JobState::Cancelled), "{:?}", s.state);
}

// ---------------------------------------------------------------------------------------------
// The CLI on the default model

fn hubel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(args)
        .output()
        .expect("hubel runs")
}

const CLEAN: &str = "The Eiffel Tower is in the city of";
const CORRUPT: &str = "The Colosseum is in the city of";

fn json_of(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_lens_dla_and_patch_on_the_default_model() {
    let model = common::default_model_path().display().to_string();
    let m = common::smollm2();
    for word in [" Paris", " Rome"] {
        single_token(m, word, "target").unwrap_or_else(|e| panic!("{e}"));
    }
    // The lens: the last layer's top-1 at the last position is the model's prediction.
    let v = json_of(&hubel(&[
        "lens", "--text", CLEAN, "--target", " Paris", "--json", "--model", &model,
    ]));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    let n = v["tokens"].as_array().unwrap().len();
    assert_eq!(v["commit_layer"].as_array().unwrap().len(), n);
    let last = &layers[29]["positions"][n - 1];
    let run = m.run(&ids(m, CLEAN), &Capture::Nothing, &[]).unwrap();
    let top = hubel::analysis::top_k(run.last_logits(), 1)[0];
    assert_eq!(last["top"][0]["id"].as_u64(), Some(top.0 as u64));
    let p = last["target_prob"].as_f64().unwrap() as f32;
    assert!(p > 0.05 && p <= 1.0, "p(Paris) = {p}");
    // DLA: the components' sum is the logit difference (RMSNorm, no biases).
    let v = json_of(&hubel(&[
        "dla", "--text", CLEAN, "--target", " Paris", "--versus", " Rome", "--json", "--model",
        &model,
    ]));
    let total = v["total"].as_f64().unwrap();
    let sum = v["sum"].as_f64().unwrap();
    assert!(total > 0.0, "Paris over Rome: {total}");
    assert!(
        (total - sum).abs() < 1e-3 * total.abs().max(1.0),
        "{total} vs {sum}"
    );
    let comps = v["components"].as_array().unwrap();
    assert_eq!(comps.len(), 1 + 30 * 10);
    assert!(comps[0]["name"].is_string() && comps[0]["value"].is_number());
    assert!(v["neurons"][0]["feature"]
        .as_str()
        .unwrap()
        .starts_with('L'));
    // Patching: the residual stream at the subject's tokens early on restores most of it, and
    // at the last token late.
    let v = json_of(&hubel(&[
        "patch",
        "--clean",
        CLEAN,
        "--corrupt",
        CORRUPT,
        "--target",
        " Paris",
        "--versus",
        " Rome",
        "--json",
        "--model",
        &model,
    ]));
    let (clean, corrupt) = (v["clean"].as_f64().unwrap(), v["corrupt"].as_f64().unwrap());
    assert!(clean > corrupt, "{clean} vs {corrupt}");
    let grid = v["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 30);
    let row = |l: usize| -> Vec<f64> {
        grid[l]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    assert_eq!(row(0).len(), n);
    // Late layers carry it at the last token (not all of it: layer 29's attention still reads
    // the corrupted subject).
    let last_row = row(29);
    assert!(last_row[n - 1] > 0.5, "{last_row:?}");
    let first_row = row(0);
    let best = first_row.iter().cloned().fold(f64::MIN, f64::max);
    assert!(best > 0.5, "layer 0 somewhere restores most: {first_row:?}");
    assert!(
        first_row[n - 1].abs() < 1e-6,
        "the last token is the same in both prompts: {first_row:?}"
    );
}

#[test]
fn cli_circuits_refuse_bad_input_with_a_message() {
    let model = common::default_model_path().display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["dla", "--text", CLEAN, "--target", " Paris France"],
            "not one",
        ),
        (vec!["dla", "--text", CLEAN, "--target", ""], "empty"),
        (
            vec![
                "dla",
                "--text",
                CLEAN,
                "--target",
                " Paris",
                "--position",
                "99",
            ],
            "out of range",
        ),
        (vec!["lens", "--text", "", "--target", " Paris"], "empty"),
        (
            vec![
                "patch",
                "--clean",
                CLEAN,
                "--corrupt",
                "The Colosseum in Rome is in the city of",
                "--target",
                " Paris",
            ],
            "same number of tokens",
        ),
        (
            vec![
                "patch",
                "--clean",
                CLEAN,
                "--corrupt",
                CORRUPT,
                "--target",
                " Paris",
                "--site",
                "heads",
            ],
            "--site takes",
        ),
        (
            vec![
                "patch",
                "--clean",
                CLEAN,
                "--corrupt",
                CORRUPT,
                "--target",
                " Paris",
                "--fit",
                "sideways",
            ],
            "--fit takes pad or trim",
        ),
        (
            vec!["lens", "--text", CLEAN, "--ablate", "L99N1"],
            "layer 99",
        ),
    ];
    for (args, want) in cases {
        let mut args = args.clone();
        args.extend(["--model", &model]);
        let out = hubel(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
