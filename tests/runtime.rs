//! The runtime on tiny random Llama and GPT-2 models built in memory: hook shapes, recording and
//! empty intervention sets change nothing, ablation does, incremental equals full, the KV cache
//! equals re-running, and the GGUF path round-trips.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention, Op};
use hubel::model::config::Arch;
use hubel::model::random::{random_model, random_q4_model, tiny_config};
use hubel::model::{Generate, Logits, Model, ModelError, Precision, Sampling};

fn tiny(arch: Arch) -> Model {
    random_model(&tiny_config(arch), 7).unwrap().0
}

const TEXT: &str = "The cat sat. 苹果 🍎 12";

fn ids(model: &Model) -> Vec<u32> {
    model
        .tokenize(TEXT)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect()
}

#[test]
fn every_hook_point_has_its_documented_shape() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let c = m.config().clone();
        let tokens = ids(&m);
        let n = tokens.len();
        let out = m.run(&tokens, &Capture::All, &[]).unwrap();
        assert_eq!(
            out.record.len(),
            m.hook_points().len(),
            "{arch:?}: every point recorded"
        );
        for (point, act) in out.record.iter() {
            let want: Vec<usize> = match point {
                HookPoint::Block { site, .. } => match site {
                    BlockSite::Q | BlockSite::Z => vec![n, c.n_heads, c.d_head],
                    BlockSite::K | BlockSite::V => vec![n, c.n_kv_heads, c.d_head],
                    BlockSite::AttnScores | BlockSite::Pattern => vec![c.n_heads, n, n],
                    BlockSite::MlpPre | BlockSite::MlpPreLinear | BlockSite::MlpPost => {
                        vec![n, c.d_mlp]
                    }
                    _ => vec![n, c.d_model],
                },
                _ => vec![n, c.d_model],
            };
            assert_eq!(act.shape, want, "{arch:?} {point}");
            assert_eq!(act.data.len(), want.iter().product::<usize>());
        }
        let has = |p| out.record.get(p).is_some();
        assert_eq!(has(HookPoint::PosEmbed), arch == Arch::Gpt2);
        assert_eq!(
            has(HookPoint::block(0, BlockSite::MlpPreLinear)),
            arch == Arch::Llama
        );
        // Attention rows are distributions over visible keys only.
        let pattern = out
            .record
            .get(HookPoint::block(1, BlockSite::Pattern))
            .unwrap();
        for q in 0..n {
            let row = &pattern.data[q * n..(q + 1) * n];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(row[q + 1..].iter().all(|&p| p == 0.0), "causal");
        }
    }
}

#[test]
fn recording_and_empty_interventions_change_nothing() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        let bare = m.run(&t, &Capture::Nothing, &[]).unwrap();
        let all = m.run(&t, &Capture::All, &[]).unwrap();
        assert_eq!(
            bare.logits, all.logits,
            "{arch:?}: recording is bitwise invisible"
        );
        let cache = m.prepare(&t, &Capture::Nothing, None).unwrap();
        let empty = m.rerun(&cache, &Capture::Nothing, &[], None).unwrap();
        assert_eq!(bare.logits, empty.logits);
        assert_eq!(empty.layers_computed, 0, "nothing to recompute");
    }
}

#[test]
fn zero_ablation_changes_the_logits_and_only_from_its_layer_on() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        let base = m.run(&t, &Capture::All, &[]).unwrap();
        let point = HookPoint::block(1, BlockSite::MlpPost);
        let iv = Intervention::zero(point, vec![3, 5]);
        let ab = m.run(&t, &Capture::All, &[iv]).unwrap();
        assert_ne!(base.logits, ab.logits, "{arch:?}");
        // Earlier points are untouched; the edited point records its output (edit, then record).
        let same = |p| base.record.get(p) == ab.record.get(p);
        assert!(same(HookPoint::block(0, BlockSite::ResidPost)));
        assert!(same(HookPoint::block(1, BlockSite::MlpPre)));
        assert!(!same(point));
        assert!(!same(HookPoint::block(1, BlockSite::MlpOut)));
        assert!(!same(HookPoint::block(2, BlockSite::ResidPre)));
    }
}

/// `[pos, width]` values of `point` in `out`.
fn values(out: &hubel::model::RunOutput, point: HookPoint) -> (usize, Vec<f32>) {
    let act = out.record.get(point).unwrap();
    (act.shape[1], act.data.to_vec())
}

#[test]
fn the_record_at_an_edited_point_shows_what_the_model_saw() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        let cache = m.prepare(&t, &Capture::All, None).unwrap();
        let point = HookPoint::block(1, BlockSite::MlpPost);
        let (width, base) = values(&cache.baseline, point);
        let neuron = 5;
        assert!(
            base.chunks(width).all(|row| row[neuron] != 0.0),
            "{arch:?}: the neuron is active, so zeroing it shows"
        );
        let zero = [Intervention::zero(point, vec![neuron])];
        let add = [Intervention {
            op: Op::Add { value: 2.5 },
            ..Intervention::zero(point, vec![neuron])
        }];
        for (ivs, edit) in [(&zero, (|_| 0.0) as fn(f32) -> f32), (&add, |v| v + 2.5)] {
            let full = m.run(&t, &Capture::All, ivs).unwrap();
            let inc = m.rerun(&cache, &Capture::All, ivs, None).unwrap();
            for (how, out) in [("run", &full), ("rerun", &inc)] {
                let (_, got) = values(out, point);
                for (p, (row, base_row)) in got.chunks(width).zip(base.chunks(width)).enumerate() {
                    for i in 0..width {
                        let want = if i == neuron {
                            edit(base_row[i])
                        } else {
                            base_row[i]
                        };
                        assert_eq!(row[i], want, "{arch:?} {how} {ivs:?}: pos {p} neuron {i}");
                    }
                }
                // What the rest of the model saw: the block's MLP output is the down projection
                // of the recorded (edited) values, so it moved.
                let mlp_out = HookPoint::block(1, BlockSite::MlpOut);
                assert_ne!(
                    out.record.get(mlp_out),
                    cache.baseline.record.get(mlp_out),
                    "{arch:?} {how}"
                );
            }
        }
        // The baseline records the unedited value.
        let plain = m.run(&t, &Capture::All, &[]).unwrap();
        assert_eq!(values(&plain, point).1, base);
    }
}

#[test]
fn mean_ablation_in_a_continuation_holds_the_prompts_mean() {
    // The continuation replaces with the mean over the prompt of the values the edit saw (after
    // any earlier edit of the same point, before its own), held fixed for every new token.
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        let point = HookPoint::block(1, BlockSite::MlpPost);
        let cols = vec![3, 4];
        let mean = Intervention {
            hook: point,
            positions: None,
            indices: Some(cols.clone()),
            op: Op::Mean,
        };
        let add = Intervention {
            op: Op::Add { value: 2.0 },
            ..mean.clone()
        };
        let base = m.run(&t, &Capture::points([point]), &[]).unwrap();
        let (width, data) = values(&base, point);
        // Column means over the prompt, after adding `shift` to the edited columns.
        let means = |shift: f32| -> Vec<f32> {
            let rows = data.len() / width;
            (0..width)
                .map(|i| {
                    let s: f64 = data
                        .chunks(width)
                        .map(|r| {
                            f64::from(if cols.contains(&i) {
                                r[i] + shift
                            } else {
                                r[i]
                            })
                        })
                        .sum();
                    (s / rows as f64) as f32
                })
                .collect()
        };
        let held = |shift| Intervention {
            op: Op::MeanOf {
                values: means(shift),
            },
            ..mean.clone()
        };
        for (ivs, reference) in [
            (vec![mean.clone()], vec![held(0.0)]),
            (
                vec![mean.clone(), add.clone()],
                vec![held(0.0), add.clone()],
            ),
            (
                vec![add.clone(), mean.clone()],
                vec![add.clone(), held(2.0)],
            ),
        ] {
            let opts = Generate {
                max_tokens: 6,
                stop_at_eos: false,
                ..Generate::default()
            };
            let got = m.generate(&t, &ivs, &opts, None).unwrap();
            let mut seq = t.clone();
            for _ in 0..6 {
                let out = m.run(&seq, &Capture::Nothing, &reference).unwrap();
                seq.push(hubel::model::generate::argmax(out.last_logits()));
            }
            assert_eq!(got, seq[t.len()..].to_vec(), "{arch:?} {ivs:?}");
        }
    }
}

#[test]
fn incremental_rerun_is_bitwise_equal_to_a_full_run() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        let cache = m.prepare(&t, &Capture::All, None).unwrap();
        let sets: Vec<Vec<Intervention>> = vec![
            vec![Intervention::zero(
                HookPoint::block(2, BlockSite::MlpPost),
                vec![1],
            )],
            vec![Intervention {
                hook: HookPoint::block(1, BlockSite::Z),
                positions: Some(vec![2]),
                indices: Some(vec![0]),
                op: Op::Mean,
            }],
            vec![
                Intervention {
                    hook: HookPoint::block(1, BlockSite::ResidPost),
                    positions: None,
                    indices: Some(vec![4]),
                    op: Op::Add { value: 3.0 },
                },
                Intervention {
                    hook: HookPoint::block(2, BlockSite::Pattern),
                    positions: None,
                    indices: Some(vec![1]),
                    op: Op::Scale { factor: 0.5 },
                },
            ],
            vec![Intervention {
                hook: HookPoint::LnFinal,
                positions: None,
                indices: Some(vec![0]),
                op: Op::Set { value: 2.0 },
            }],
            vec![Intervention::zero(HookPoint::Embed, vec![0])],
            vec![Intervention::zero(
                HookPoint::block(0, BlockSite::ResidPre),
                vec![2],
            )],
        ];
        for ivs in sets {
            let full = m.run(&t, &Capture::All, &ivs).unwrap();
            let inc = m.rerun(&cache, &Capture::All, &ivs, None).unwrap();
            assert_eq!(full.logits, inc.logits, "{arch:?} {ivs:?}");
            assert_ne!(
                full.logits, cache.baseline.logits,
                "{arch:?} {ivs:?} had an effect"
            );
            // The record is complete: earlier layers come from the baseline.
            assert_eq!(full.record, inc.record, "{arch:?} {ivs:?}");
        }
        let from_2 = m
            .rerun(
                &cache,
                &Capture::Nothing,
                &[Intervention::zero(
                    HookPoint::block(2, BlockSite::MlpPost),
                    vec![1],
                )],
                None,
            )
            .unwrap();
        assert_eq!(from_2.layers_computed, 1);
    }
}

#[test]
fn kv_cache_continuation_matches_rerunning_the_whole_sequence() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        for ivs in [
            vec![],
            vec![Intervention::zero(
                HookPoint::block(1, BlockSite::MlpPost),
                vec![2, 7],
            )],
        ] {
            let opts = Generate {
                max_tokens: 8,
                stop_at_eos: false,
                ..Generate::default()
            };
            let cached = m.generate(&t, &ivs, &opts, None).unwrap();
            let mut seq = t.clone();
            for _ in 0..8 {
                let out = m.run(&seq, &Capture::Nothing, &ivs).unwrap();
                seq.push(hubel::model::generate::argmax(out.last_logits()));
            }
            assert_eq!(cached, seq[t.len()..].to_vec(), "{arch:?} {ivs:?}");
        }
    }
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let m = tiny(Arch::Llama);
    let t = ids(&m);
    let opts = |seed| Generate {
        max_tokens: 12,
        stop_at_eos: false,
        sampling: Sampling::Temperature {
            temperature: 1.5,
            top_p: 0.95,
            seed,
        },
    };
    let a = m.generate(&t, &[], &opts(1), None).unwrap();
    assert_eq!(a, m.generate(&t, &[], &opts(1), None).unwrap());
    assert_ne!(a, m.generate(&t, &[], &opts(2), None).unwrap());
}

#[test]
fn a_cancelled_run_stops_with_cancelled() {
    let m = tiny(Arch::Llama);
    let flag = Arc::new(AtomicBool::new(true));
    let err = m
        .run_cancellable(&ids(&m), &Capture::Nothing, &[], Some(flag))
        .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled));
}

#[test]
fn bad_probes_and_interventions_are_clear_errors() {
    let m = tiny(Arch::Llama);
    assert!(matches!(m.tokenize(""), Err(ModelError::EmptyText)));
    let long = "a".repeat(200);
    let err = m.tokenize(&long).unwrap_err();
    assert!(
        err.to_string().contains("the model's context holds 64"),
        "{err}"
    );
    let t = ids(&m);
    let bad = |iv: Intervention| m.run(&t, &Capture::Nothing, &[iv]).unwrap_err().to_string();
    assert!(bad(Intervention::zero(
        HookPoint::block(1, BlockSite::MlpPost),
        vec![64]
    ))
    .contains("index 64 is out of range"));
    assert!(bad(Intervention::zero(
        HookPoint::block(3, BlockSite::MlpPost),
        vec![0]
    ))
    .contains("does not exist"));
    assert!(bad(Intervention::zero(HookPoint::PosEmbed, vec![0])).contains("does not exist"));
    assert!(bad(Intervention::zero(
        HookPoint::block(1, BlockSite::Z),
        vec![4]
    ))
    .contains("4 heads"));
    let at = Intervention {
        positions: Some(vec![99]),
        ..Intervention::zero(HookPoint::block(0, BlockSite::MlpPost), vec![0])
    };
    assert!(bad(at).contains("position 99 is out of range"));
}

/// Several probes of different lengths, including one token alone.
fn batch_texts() -> [&'static str; 4] {
    [TEXT, "Turn left at the corner.", "x", "苹果 apple 🍎 pomme"]
}

#[test]
fn a_batched_run_equals_each_sequence_run_alone() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let seqs: Vec<Vec<u32>> = batch_texts()
            .iter()
            .map(|t| m.tokenize(t).unwrap().iter().map(|t| t.id).collect())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let layer = m.config().n_layers / 2;
        let interventions = [
            Intervention::zero(HookPoint::block(layer, BlockSite::MlpPost), vec![3, 5]),
            Intervention {
                positions: Some(vec![0]),
                ..Intervention::zero(HookPoint::block(0, BlockSite::Pattern), vec![1])
            },
            Intervention {
                op: Op::Mean,
                ..Intervention::zero(HookPoint::block(layer, BlockSite::ResidMid), vec![2])
            },
        ];
        for ivs in [&interventions[..0], &interventions[..]] {
            let batch = m
                .run_batch(&refs, &Capture::All, ivs, Logits::All, None)
                .unwrap();
            assert_eq!(batch.len(), seqs.len());
            for (s, (tokens, got)) in seqs.iter().zip(&batch).enumerate() {
                let alone = m.run(tokens, &Capture::All, ivs).unwrap();
                let what = format!("{arch:?} sequence {s} with {} interventions", ivs.len());
                assert_eq!(got.len(), tokens.len(), "{what}: one logits row per token");
                common::assert_finite(&what, &got.logits, &alone.logits);
                // Each token's row is computed on its own: batching changes no bit.
                assert_eq!(got.logits, alone.logits, "{what}: logits");
                assert_eq!(got.record.len(), alone.record.len(), "{what}: points");
                for (point, act) in alone.record.iter() {
                    let b = got
                        .record
                        .get(*point)
                        .unwrap_or_else(|| panic!("{what}: {point}"));
                    assert_eq!(b.shape, act.shape, "{what}: {point} shape");
                    assert_eq!(b.data, act.data, "{what}: {point}");
                }
            }
            // Last-position logits only, and none at all for a scan.
            let last = m
                .run_batch(&refs, &Capture::Nothing, ivs, Logits::Last, None)
                .unwrap();
            let none = m
                .run_batch(&refs, &Capture::Nothing, ivs, Logits::None, None)
                .unwrap();
            for ((l, n), full) in last.iter().zip(&none).zip(&batch) {
                assert_eq!(l.logits, full.last_logits(), "{arch:?}: last logits");
                assert!(n.logits.is_empty() && n.record.is_empty());
            }
        }
    }
}

#[test]
fn a_batch_checks_every_sequence_and_can_be_cancelled() {
    let m = tiny(Arch::Llama);
    let ok = ids(&m);
    let too_long = vec![1u32; m.config().n_ctx + 1];
    let err = m
        .run_batch(&[&ok, &[]], &Capture::Nothing, &[], Logits::All, None)
        .unwrap_err();
    assert!(matches!(err, ModelError::EmptyText), "{err}");
    let err = m
        .run_batch(&[&ok, &too_long], &Capture::Nothing, &[], Logits::All, None)
        .unwrap_err();
    assert!(matches!(err, ModelError::TooLong { .. }), "{err}");
    assert!(m
        .run_batch(&[], &Capture::Nothing, &[], Logits::All, None)
        .unwrap()
        .is_empty());
    let cancel = Arc::new(AtomicBool::new(true));
    let err = m
        .run_batch(
            &[&ok, &ok],
            &Capture::Nothing,
            &[],
            Logits::None,
            Some(cancel),
        )
        .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled), "{err}");
}

#[test]
fn the_fast_path_is_close_to_exact_and_hooks_work_the_same() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        // Weights a 4-bit file could hold exactly, as SmolLM2's are: only activations are
        // rounded (the tests of kernels::q4 cover the weights' rounding).
        let exact = random_q4_model(&tiny_config(arch), 7).unwrap().0;
        let fast = exact.with_precision(Precision::Fast);
        assert_eq!(fast.precision(), Precision::Fast);
        let tokens = ids(&exact);
        let a = exact.run(&tokens, &Capture::All, &[]).unwrap();
        let b = fast.run(&tokens, &Capture::All, &[]).unwrap();
        common::assert_finite("fast logits", &b.logits, &a.logits);
        assert_ne!(
            a.logits, b.logits,
            "{arch:?}: the fast path computes differently"
        );
        // Measured: worst KL 0.024 (Llama) and 0.0004 (GPT-2) nats; this random model's logits
        // are sharper than SmolLM2's, whose bound (0.01 at the last position) is checked
        // in tests/reference.rs.
        let f = hubel::analysis::fidelity(&a.logits, &b.logits, a.vocab);
        eprintln!("{arch:?}: {f:?}");
        assert!(f.kl_max < 0.05, "{arch:?}: {f:?}");
        assert!(f.top1_agreement >= 0.9, "{arch:?}: {f:?}");
        assert_eq!(exact.fidelity(&tokens, &[], None).unwrap(), f);
        // Every hook point recorded with the same shapes.
        assert_eq!(a.record.len(), b.record.len());
        for (point, act) in a.record.iter() {
            assert_eq!(
                b.record.get(*point).unwrap().shape,
                act.shape,
                "{arch:?} {point}"
            );
        }
        // An ablation works the same: the recorded neuron is zero, later layers change.
        let layer = 1;
        let post = HookPoint::block(layer, BlockSite::MlpPost);
        let iv = [Intervention::zero(post, vec![5])];
        let ablated = fast.run(&tokens, &Capture::All, &iv).unwrap();
        let (width, values) = values(&ablated, post);
        assert!(values.iter().skip(5).step_by(width).all(|&v| v == 0.0));
        assert_ne!(ablated.logits, b.logits);
        // The incremental re-run and the batch give the fast path's own numbers, bit for bit.
        let cache = fast.prepare(&tokens, &Capture::Nothing, None).unwrap();
        assert_eq!(cache.baseline.logits, b.logits);
        let rerun = fast.rerun(&cache, &Capture::Nothing, &iv, None).unwrap();
        assert_eq!(rerun.logits, ablated.logits);
        let other: Vec<u32> = tokens.iter().rev().copied().collect();
        let batch = fast
            .run_batch(
                &[&tokens, &other],
                &Capture::Nothing,
                &iv,
                Logits::All,
                None,
            )
            .unwrap();
        assert_eq!(batch[0].logits, ablated.logits);
        // Generation runs on the fast path too.
        let gen = Generate {
            max_tokens: 5,
            stop_at_eos: false,
            ..Generate::default()
        };
        assert_eq!(fast.generate(&tokens, &[], &gen, None).unwrap().len(), 5);
    }
}

/// The probe's bounded-memory path: the last position's logits and every token's loss, computed
/// a few positions at a time, equal (bitwise) what the full `[pos, vocab]` logits give, with and
/// without interventions.
#[test]
fn token_loss_in_blocks_equals_the_loss_of_every_positions_logits() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let m = tiny(arch);
        let t = ids(&m);
        assert!(t.len() > 7, "several blocks of 3");
        for ivs in [
            vec![],
            vec![Intervention::zero(
                HookPoint::block(1, BlockSite::MlpPost),
                vec![2, 7],
            )],
        ] {
            let full = m.run(&t, &Capture::Nothing, &ivs).unwrap();
            let want = hubel::analysis::token_nll(&full.logits, full.vocab, &t);
            assert_eq!(want.len(), t.len() - 1);
            let (last, finals) = m.run_last(&t, &Capture::Nothing, &ivs, None).unwrap();
            assert_eq!(last.len(), 1, "{arch:?}: one row of logits");
            assert_eq!(last.last_logits(), full.last_logits(), "{arch:?} {ivs:?}");
            for block in [1, 3, t.len(), 1000] {
                let got = m.token_nll_by(&finals, &t, block).unwrap();
                assert_eq!(got, want, "{arch:?} {ivs:?} block {block}");
            }
            assert_eq!(m.token_nll(&finals, &t).unwrap(), want);
            assert!(want.iter().all(|x| x.is_finite() && *x >= 0.0));
        }
    }
}
