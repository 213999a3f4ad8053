//! The model-side queries of a feature card (issue 8), on tiny random Llama and GPT-2 models:
//! one feature's rows over many windows and its occlusion receptive field equal, bit for bit,
//! what full runs record; the early-stopped batch equals unbatched runs; `strongest_at` equals a
//! brute-force ranking; bad input is an error, not a panic. The timings on the real model are an
//! ignored test (`cargo test --release --test occlusion -- --ignored --nocapture`).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hubel::analysis::maps::{feature_activations, strongest_at};
use hubel::features::{Basis, FeatureId};
use hubel::hooks::{ActivationRecord, BlockSite, Capture, HookPoint, InterventionError};
use hubel::model::config::Arch;
use hubel::model::random::{random_model, random_q4_model, tiny_config};
use hubel::model::{Model, ModelError, Occlude, Precision};

fn tiny(arch: Arch) -> Model {
    random_model(&tiny_config(arch), 7).unwrap().0
}

fn ids(model: &Model, text: &str) -> Vec<u32> {
    model
        .tokenize(text)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect()
}

const WINDOWS: [&str; 4] = [
    "The cat sat on the mat.",
    "苹果 🍎 12",
    "a",
    "Colourless green ideas sleep furiously, said nobody at all.",
];

/// Some features of every layer: neurons and heads, first and last index included.
fn features(m: &Model) -> Vec<FeatureId> {
    let c = m.config();
    let mut all = Vec::new();
    for layer in 0..c.n_layers {
        for index in [0, 5, c.d_mlp - 1] {
            all.push(FeatureId::neuron(layer, index));
        }
        for index in [0, c.n_heads - 1] {
            all.push(FeatureId::head(layer, index));
        }
    }
    all
}

/// What a full run of `tokens` records for `feature`.
fn full_run(m: &Model, tokens: &[u32], feature: FeatureId) -> Vec<f32> {
    let out = m
        .run(tokens, &Capture::points([feature.hook()]), &[])
        .unwrap();
    feature_activations(&out.record, feature)
}

/// A neuron's column of a `[pos, width]` point of a full run (`Capture::All`).
fn column(record: &ActivationRecord, layer: usize, site: BlockSite, index: usize) -> Vec<f32> {
    let act = record.get(HookPoint::block(layer, site)).unwrap();
    (0..act.shape[0]).map(|t| act.row(t)[index]).collect()
}

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

#[test]
fn feature_rows_equal_full_runs_bit_for_bit() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let windows: Vec<Vec<u32>> = WINDOWS.iter().map(|t| ids(&m, t)).collect();
        let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
        let fulls: Vec<_> = windows
            .iter()
            .map(|w| m.run(w, &Capture::All, &[]).unwrap())
            .collect();
        for f in features(&m) {
            let rows = m.feature_rows(&refs, f, None).unwrap();
            assert_eq!(
                rows.len(),
                windows.len(),
                "{arch:?} {f}: one row per window"
            );
            for (w, (row, full)) in rows.iter().zip(&fulls).enumerate() {
                let what = format!("{arch:?} {f} window {w}");
                let want = feature_activations(&full.record, f);
                assert_eq!(row.acts.len(), windows[w].len(), "{what}: one per token");
                assert!(
                    row.acts.iter().all(|v| v.is_finite()) && row.acts.iter().any(|v| *v != 0.0),
                    "{what}: live values, so equality means something: {:?}",
                    row.acts
                );
                assert_eq!(
                    row.acts, want,
                    "{what}: the bits of a full run (Capture::All)"
                );
                assert_eq!(
                    row.acts,
                    full_run(&m, &windows[w], f),
                    "{what}: the bits of a full run capturing only that point"
                );
                let gated = arch == Arch::Llama && f.basis == Basis::Neurons;
                assert_eq!(row.gate.is_some(), gated, "{what}: gate");
                assert_eq!(row.up.is_some(), gated, "{what}: up");
                if !gated {
                    assert_eq!(row.glu_signs(0), None);
                    continue;
                }
                let (gate, up) = (row.gate.as_ref().unwrap(), row.up.as_ref().unwrap());
                assert_eq!(
                    gate,
                    &column(&full.record, f.layer, BlockSite::MlpPre, f.index),
                    "{what}: gate = hook_pre"
                );
                assert_eq!(
                    up,
                    &column(&full.record, f.layer, BlockSite::MlpPreLinear, f.index),
                    "{what}: up = hook_pre_linear"
                );
                for (t, &act) in row.acts.iter().enumerate() {
                    let product = silu(gate[t]) * up[t];
                    assert!(
                        (product - act).abs() <= 1e-6 * act.abs(),
                        "{what} token {t}: silu({}) · {} = {product}, act {act}",
                        gate[t],
                        up[t]
                    );
                    let s = row.glu_signs(t).unwrap();
                    assert_eq!(s.gate_positive, gate[t] >= 0.0);
                    assert_eq!(s.up_positive, up[t] >= 0.0);
                    // The sign combination decides the activation's sign.
                    assert_eq!(act > 0.0, s.gate_positive == s.up_positive, "{what} {t}");
                }
                assert_eq!(row.glu_signs(row.acts.len()), None, "past the window");
            }
        }
        // No windows: no rows.
        assert!(m
            .feature_rows(&[], FeatureId::neuron(0, 0), None)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn the_sign_combinations_are_all_seen_and_labelled() {
    let m = tiny(Arch::Llama);
    let windows: Vec<Vec<u32>> = WINDOWS.iter().map(|t| ids(&m, t)).collect();
    let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for index in 0..m.config().d_mlp {
        for row in m
            .feature_rows(&refs, FeatureId::neuron(1, index), None)
            .unwrap()
        {
            for t in 0..row.acts.len() {
                seen.insert(row.glu_signs(t).unwrap().label());
            }
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["gate+ × up+", "gate+ × up−", "gate− × up+", "gate− × up−"]
    );
}

#[test]
fn the_early_stopped_batch_equals_unbatched_full_runs_up_to_its_block() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let windows: Vec<Vec<u32>> = WINDOWS.iter().map(|t| ids(&m, t)).collect();
        let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
        for last in 0..m.config().n_layers {
            let records = m
                .run_batch_through(&refs, &Capture::All, last, None)
                .unwrap();
            for (w, (got, tokens)) in records.iter().zip(&windows).enumerate() {
                let full = m.run(tokens, &Capture::All, &[]).unwrap();
                let what = format!("{arch:?} through block {last}, window {w}");
                let reached = |p: &HookPoint| match p.layer() {
                    Some(l) => l <= last,
                    None => *p != HookPoint::LnFinal,
                };
                let want: Vec<_> = full.record.iter().filter(|(p, _)| reached(p)).collect();
                let have: Vec<_> = got.iter().collect();
                assert_eq!(
                    have.iter().map(|(p, _)| **p).collect::<Vec<_>>(),
                    want.iter().map(|(p, _)| **p).collect::<Vec<_>>(),
                    "{what}: exactly the points up to block {last} (it stopped there)"
                );
                for ((p, a), (_, b)) in have.iter().zip(&want) {
                    assert_eq!(a.shape, b.shape, "{what}: {p}");
                    assert_eq!(a.data, b.data, "{what}: {p}");
                }
            }
        }
        let err = m
            .run_batch_through(&refs, &Capture::All, m.config().n_layers, None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Intervention(InterventionError::NoSuchLayer { .. })
            ),
            "{err}"
        );
    }
}

#[test]
fn the_fast_path_batches_bit_for_bit_too() {
    let exact = random_q4_model(&tiny_config(Arch::Llama), 7).unwrap().0;
    let m = exact.with_precision(Precision::Fast);
    let windows: Vec<Vec<u32>> = WINDOWS.iter().map(|t| ids(&m, t)).collect();
    let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
    for f in [FeatureId::neuron(2, 7), FeatureId::head(1, 2)] {
        let rows = m.feature_rows(&refs, f, None).unwrap();
        let exact_rows = exact.feature_rows(&refs, f, None).unwrap();
        for (w, row) in rows.iter().enumerate() {
            assert_eq!(row.acts, full_run(&m, &windows[w], f), "{f} window {w}");
            assert_ne!(row.acts, exact_rows[w].acts, "{f}: it is the fast path");
        }
    }
}

/// The occluded copy of `tokens` for `p`, whole (not cut at the target), and the target in it.
fn occluded(tokens: &[u32], p: usize, position: usize, mode: Occlude) -> (Vec<u32>, usize) {
    let mut copy = tokens.to_vec();
    match mode {
        Occlude::Replace(id) => {
            copy[p] = id;
            (copy, position)
        }
        Occlude::Delete => {
            copy.remove(p);
            (copy, position - 1)
        }
    }
}

#[test]
fn occlusion_equals_running_each_copy_alone() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let tokens = ids(&m, "The cat sat on the mat, 12.");
        let neutral = m.neutral_token();
        let mut moved = 0;
        for f in features(&m) {
            for position in [0, 1, 6, tokens.len() - 1] {
                for mode in [
                    Occlude::Replace(neutral),
                    Occlude::Replace(tokens[2]),
                    Occlude::Delete,
                ] {
                    let what = format!("{arch:?} {f} at {position}, {mode:?}");
                    let o = m.occlusion(&tokens, f, position, mode, None).unwrap();
                    let base = full_run(&m, &tokens, f)[position];
                    assert_eq!(o.baseline, base, "{what}: baseline");
                    assert_eq!(o.values.len(), position + 1, "{what}");
                    assert_eq!(o.deltas.len(), position + 1, "{what}");
                    assert_eq!(
                        o.replaced_with,
                        match mode {
                            Occlude::Replace(id) => Some(id),
                            Occlude::Delete => None,
                        }
                    );
                    for p in 0..=position {
                        let (got, delta) = (o.values[p], o.deltas[p]);
                        if mode == Occlude::Delete && p == position {
                            assert!(got.is_nan() && delta.is_nan(), "{what}: no target left");
                            continue;
                        }
                        let (copy, target) = occluded(&tokens, p, position, mode);
                        let want = full_run(&m, &copy, f)[target];
                        assert_eq!(got, want, "{what}: occluding {p}");
                        assert_eq!(delta, want - base, "{what}: delta at {p}");
                        moved += usize::from(delta != 0.0);
                    }
                }
            }
        }
        assert!(
            moved > 100,
            "{arch:?}: occlusions move the features ({moved})"
        );
    }
}

#[test]
fn occlusion_checks_its_input() {
    let m = tiny(Arch::Llama);
    let tokens = ids(&m, "The cat sat.");
    let f = FeatureId::neuron(1, 3);
    let run = |tokens: &[u32], f, position, mode| m.occlusion(tokens, f, position, mode, None);
    let err = run(&tokens, f, tokens.len(), Occlude::Delete).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Intervention(InterventionError::PositionOutOfRange { position, len, .. })
                if position == tokens.len() && len == tokens.len()
        ),
        "{err}"
    );
    let message = format!("position {} is out of range", tokens.len());
    assert!(err.to_string().contains(&message), "{err}");
    let err = run(&[], f, 0, Occlude::Delete).unwrap_err();
    assert!(matches!(err, ModelError::EmptyText), "{err}");
    let layers = m.config().n_layers;
    for bad in [FeatureId::neuron(layers, 0), FeatureId::head(layers + 5, 0)] {
        let err = run(&tokens, bad, 0, Occlude::Delete).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Intervention(InterventionError::NoSuchLayer { .. })
            ),
            "{bad}: {err}"
        );
        assert!(m.feature_rows(&[&tokens], bad, None).is_err());
    }
    for bad in [
        FeatureId::neuron(0, m.config().d_mlp),
        FeatureId::head(2, m.config().n_heads),
    ] {
        let err = run(&tokens, bad, 0, Occlude::Delete).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Intervention(InterventionError::IndexOutOfRange { .. })
            ),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = m.feature_rows(&[&tokens], bad, None).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Intervention(InterventionError::IndexOutOfRange { .. })
            ),
            "{bad}: {err}"
        );
    }
    let vocab = m.config().vocab_size as u32;
    let err = run(&tokens, f, 2, Occlude::Replace(vocab)).unwrap_err();
    assert!(matches!(err, ModelError::BadToken { .. }), "{err}");
    let err = m.feature_rows(&[&tokens, &[]], f, None).unwrap_err();
    assert!(matches!(err, ModelError::EmptyText), "{err}");
    // Position 0 deleting itself: nothing left to run but the baseline.
    let o = run(&tokens, f, 0, Occlude::Delete).unwrap();
    assert_eq!(o.values.len(), 1);
    assert!(o.values[0].is_nan());
    // Cancelled before the first block.
    let cancel = Arc::new(AtomicBool::new(true));
    let err = m
        .occlusion(&tokens, f, 3, Occlude::Delete, Some(cancel.clone()))
        .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled), "{err}");
    let err = m.feature_rows(&[&tokens], f, Some(cancel)).unwrap_err();
    assert!(matches!(err, ModelError::Cancelled), "{err}");
}

#[test]
fn the_neutral_token_is_one_plain_token() {
    let m = tiny(Arch::Llama);
    let id = m.neutral_token();
    // The byte-level test vocabulary has no " the": a space is its one-token stand-in.
    assert_eq!(m.tokenizer().token_text(id), " ");
    assert_eq!(ids(&m, " "), vec![id]);
}

/// Every feature of `basis` at `pos` with its activation, brute force from
/// `feature_activations`.
fn brute(
    record: &ActivationRecord,
    m: &Model,
    pos: usize,
    basis: Basis,
    scale: Option<&dyn Fn(FeatureId) -> Option<f32>>,
) -> Vec<(FeatureId, f32, f32)> {
    let c = m.config();
    let units = match basis {
        Basis::Neurons => c.d_mlp,
        Basis::Heads => c.n_heads,
        Basis::Dictionary => panic!("this reference knows neurons and heads"),
    };
    let mut all = Vec::new();
    for layer in 0..c.n_layers {
        for index in 0..units {
            let f = FeatureId {
                basis,
                layer,
                index,
            };
            let acts = feature_activations(record, f);
            let Some(&a) = acts.get(pos) else { continue };
            let score = match scale {
                None => a.abs(),
                Some(s) => match s(f) {
                    Some(s) if s > 0.0 => a.abs() / s,
                    _ => continue,
                },
            };
            all.push((f, a, score));
        }
    }
    // Highest score first; equal scores by feature.
    all.sort_by(|x, y| y.2.partial_cmp(&x.2).unwrap().then(x.0.cmp(&y.0)));
    all
}

#[test]
fn strongest_at_equals_a_brute_force_ranking() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let tokens = ids(&m, "The cat sat on the mat.");
        let record = m.run(&tokens, &Capture::All, &[]).unwrap().record;
        for basis in [Basis::Neurons, Basis::Heads] {
            // A corpus-like scale: each feature's max |activation| over the probe; none known
            // for every fifth index.
            let peak = |f: FeatureId| -> Option<f32> {
                (!f.index.is_multiple_of(5)).then(|| {
                    feature_activations(&record, f)
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs()))
                })
            };
            for pos in [0, 3, tokens.len() - 1] {
                for scale in [None, Some(&peak as &dyn Fn(FeatureId) -> Option<f32>)] {
                    let want = brute(&record, &m, pos, basis, scale);
                    assert!(want.len() >= 9, "every layer's units, less every fifth");
                    for n in [0, 1, 7, want.len() + 3] {
                        let got = strongest_at(&record, pos, basis, scale, n);
                        let what = format!(
                            "{arch:?} {basis:?} pos {pos} n {n} scaled {}",
                            scale.is_some()
                        );
                        assert_eq!(got, want[..n.min(want.len())], "{what}");
                    }
                    if scale.is_some() {
                        let got = strongest_at(&record, pos, basis, scale, usize::MAX);
                        assert!(got
                            .iter()
                            .all(|(f, _, s)| !f.index.is_multiple_of(5) && *s <= 1.0));
                    }
                }
            }
        }
        // Scaling changes the ranking: the raw top neuron is not always the scaled one.
        let raw = strongest_at(&record, 3, Basis::Neurons, None, 5);
        let unit = |_: FeatureId| Some(2.0f32);
        let halved = strongest_at(&record, 3, Basis::Neurons, Some(&unit), 5);
        for (a, b) in raw.iter().zip(&halved) {
            assert_eq!((a.0, a.1), (b.0, b.1));
            assert_eq!(a.2 / 2.0, b.2);
        }
        // A position past the probe, or a record without the basis: nothing.
        assert!(strongest_at(&record, tokens.len(), Basis::Heads, None, 5).is_empty());
        let empty = ActivationRecord::default();
        assert!(strongest_at(&empty, 0, Basis::Neurons, None, 5).is_empty());
    }
}

/// Timings on the real model (SmolLM2-135M, exact path): `cargo test --release --test
/// occlusion -- --ignored --nocapture`.
#[test]
#[ignore = "needs the default model; a timing, run by hand in release"]
fn timings_on_the_default_model() {
    use std::time::Instant;
    let m = common::smollm2();
    let neutral = m.neutral_token();
    println!(
        "neutral token: {neutral} {:?}",
        m.tokenizer().token_text(neutral)
    );
    let text = "The old lighthouse keeper climbed the spiral stairs each evening to light the lamp that guided the fishing boats safely past the rocks, and on stormy nights he stayed awake until dawn.";
    let mut tokens = ids(m, text);
    tokens.truncate(30);
    assert_eq!(tokens.len(), 30, "a 30-token probe");
    let time = |what: &str, f: &mut dyn FnMut()| {
        f();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{what}: {:.0} ms (best of 3)", best * 1e3);
    };
    let n_layers = m.config().n_layers;
    time("full run, 30 tokens, no capture", &mut || {
        m.run(&tokens, &Capture::Nothing, &[]).unwrap();
    });
    for layer in [3, 15, n_layers - 1] {
        for mode in [Occlude::Replace(neutral), Occlude::Delete] {
            time(
                &format!("occlusion L{layer}N100 at position 29, {mode:?}"),
                &mut || {
                    m.occlusion(&tokens, FeatureId::neuron(layer, 100), 29, mode, None)
                        .unwrap();
                },
            );
        }
    }
    let windows: Vec<Vec<u32>> = (0..16)
        .map(|i| (0..64).map(|t| tokens[(i + t) % 30]).collect())
        .collect();
    let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
    for layer in [3, 15, n_layers - 1] {
        time(
            &format!("feature_rows L{layer}N100, 16 windows × 64 tokens"),
            &mut || {
                m.feature_rows(&refs, FeatureId::neuron(layer, 100), None)
                    .unwrap();
            },
        );
    }
    time(
        "run_batch (full, no logits), 16 windows × 64 tokens",
        &mut || {
            m.run_batch(
                &refs,
                &Capture::Nothing,
                &[],
                hubel::model::Logits::None,
                None,
            )
            .unwrap();
        },
    );
    // And the occlusion's values on the real model equal running one copy alone.
    let f = FeatureId::neuron(3, 100);
    let o = m
        .occlusion(&tokens, f, 29, Occlude::Replace(neutral), None)
        .unwrap();
    let (copy, target) = occluded(&tokens, 28, 29, Occlude::Replace(neutral));
    assert_eq!(o.values[28], full_run(m, &copy, f)[target]);
}
