//! One head's attention pattern computed alone (issue 14, "Long probes"): `Model::head_pattern`
//! and `Model::head_pattern_cached` equal, bit for bit, that head's slice of a run recording the
//! layer's `hook_pattern` (grouped-query Llama and GPT-2, exact and fast path); a run recording
//! one layer's pattern records that layer only, with the numbers of the all-layers capture; the
//! card's max-pooled grids equal a brute-force maximum over each block; the viewer keeps a
//! bounded number of patterns per probe.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hubel::analysis::pattern::{pool_max, PatternGrids, MAX_CELLS};
use hubel::hooks::{BlockSite, Capture, HookPoint};
use hubel::model::config::{Arch, Config};
use hubel::model::random::{random_model, random_q4_model, tiny_config};
use hubel::model::{Model, ModelError, Precision};

/// Tokens enough for several query chunks and key tiles (the kernels' 16), under n_ctx.
const LEN: usize = 150;

fn config(arch: Arch) -> Config {
    Config {
        n_ctx: 192,
        ..tiny_config(arch)
    }
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % 256) as u32).collect()
}

fn pattern_point(layer: usize) -> HookPoint {
    HookPoint::block(layer, BlockSite::Pattern)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Row `i` sums to 1, its keys `0..=i` are positive and the later ones exactly 0.
fn check_rows(values: &[f32], n: usize, what: &str) {
    assert_eq!(values.len(), n * n, "{what}");
    for (i, row) in values.chunks(n).enumerate() {
        let sum: f64 = row.iter().map(|&x| f64::from(x)).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{what}: row {i} sums to {sum}");
        assert!(
            row[..=i].iter().all(|&x| x > 0.0 && x <= 1.0),
            "{what}: row {i} has a visible key outside (0, 1]"
        );
        assert!(
            row[i + 1..].iter().all(|&x| x.to_bits() == 0),
            "{what}: row {i} has a masked key that is not exactly 0"
        );
    }
}

/// Every head of every layer, alone and from a prepared probe, against the full capture.
fn every_head_equals_the_capture(model: &Model, what: &str) {
    let cfg = model.config().clone();
    let ids = tokens(LEN);
    let full = model
        .run(&ids, &Capture::sites([BlockSite::Pattern]), &[])
        .unwrap();
    let cache = model.prepare(&ids, &Capture::Nothing, None).unwrap();
    for layer in 0..cfg.n_layers {
        let act = full.record.get(pattern_point(layer)).unwrap();
        assert_eq!(act.shape, vec![cfg.n_heads, LEN, LEN]);
        for head in 0..cfg.n_heads {
            let slice = &act.data[head * LEN * LEN..(head + 1) * LEN * LEN];
            let alone = model.head_pattern(&ids, layer, head, None).unwrap();
            assert_eq!((alone.layer, alone.head, alone.len), (layer, head, LEN));
            assert_eq!(alone.bytes(), 4 * LEN * LEN);
            assert!(
                bits(&alone.values) == bits(slice),
                "{what}: L{layer}H{head} alone differs from the capture"
            );
            let cached = model.head_pattern_cached(&cache, layer, head).unwrap();
            assert!(
                bits(&cached.values) == bits(slice),
                "{what}: L{layer}H{head} from the cache differs from the capture"
            );
            check_rows(&alone.values, LEN, &format!("{what} L{layer}H{head}"));
            assert_eq!(alone.row(7), &slice[7 * LEN..8 * LEN]);
        }
    }
}

#[test]
fn a_head_alone_equals_its_slice_of_the_recorded_pattern_gqa_llama() {
    let cfg = config(Arch::Llama);
    assert!(cfg.n_kv_heads < cfg.n_heads, "grouped-query attention");
    let model = random_model(&cfg, 11).unwrap().0;
    every_head_equals_the_capture(&model, "llama");
}

#[test]
fn a_head_alone_equals_its_slice_of_the_recorded_pattern_gpt2() {
    let model = random_model(&config(Arch::Gpt2), 12).unwrap().0;
    every_head_equals_the_capture(&model, "gpt2");
}

/// On the fast path the pattern is the fast path's (its own forward), not the exact one's.
#[test]
fn a_fast_path_pattern_comes_from_the_fast_forward() {
    let exact = random_q4_model(&config(Arch::Llama), 13).unwrap().0;
    let fast = exact.with_precision(Precision::Fast);
    every_head_equals_the_capture(&fast, "llama fast");
    let ids = tokens(LEN);
    // Layer 1: its input went through block 0's 4-bit products.
    let f = fast.head_pattern(&ids, 1, 2, None).unwrap();
    let e = exact.head_pattern(&ids, 1, 2, None).unwrap();
    assert!(
        bits(&f.values) != bits(&e.values),
        "the fast path's pattern is a different computation"
    );
    // A cache of one precision is refused by the other.
    let cache = exact.prepare(&ids, &Capture::Nothing, None).unwrap();
    let err = fast.head_pattern_cached(&cache, 1, 2).unwrap_err();
    assert!(err.to_string().contains("prepared exactly"), "{err}");
}

#[test]
fn head_pattern_refuses_what_does_not_exist_and_stops_when_cancelled() {
    let model = random_model(&config(Arch::Llama), 14).unwrap().0;
    let cfg = model.config().clone();
    let ids = tokens(20);
    assert!(model.head_pattern(&ids, cfg.n_layers, 0, None).is_err());
    let err = model.head_pattern(&ids, 0, cfg.n_heads, None).unwrap_err();
    assert!(err.to_string().contains("heads"), "{err}");
    assert!(matches!(
        model.head_pattern(&[], 0, 0, None),
        Err(ModelError::EmptyText)
    ));
    let cancel = Arc::new(AtomicBool::new(true));
    assert!(matches!(
        model.head_pattern(&ids, 2, 0, Some(cancel)),
        Err(ModelError::Cancelled)
    ));
    // Layer 0 runs no block: its pattern is there at once.
    let p = model.head_pattern(&ids, 0, 1, None).unwrap();
    check_rows(&p.values, 20, "layer 0");
}

/// Recording one layer's pattern materialises that layer only: the record holds it alone, with
/// the numbers of the all-layers capture, and the logits are those of a run recording nothing.
#[test]
fn recording_one_layers_pattern_records_that_layer_only() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let model = random_model(&config(arch), 15).unwrap().0;
        let ids = tokens(LEN);
        let all = model
            .run(&ids, &Capture::sites([BlockSite::Pattern]), &[])
            .unwrap();
        let none = model.run(&ids, &Capture::Nothing, &[]).unwrap();
        for layer in 0..model.config().n_layers {
            let one = model
                .run(&ids, &Capture::points([pattern_point(layer)]), &[])
                .unwrap();
            let points: Vec<HookPoint> = one.record.iter().map(|(p, _)| *p).collect();
            assert_eq!(points, vec![pattern_point(layer)], "{arch:?}");
            assert_eq!(
                one.record.get(pattern_point(layer)),
                all.record.get(pattern_point(layer)),
                "{arch:?} layer {layer}"
            );
            assert!(
                bits(&one.logits) == bits(&none.logits),
                "{arch:?}: the materialised layer gives the fused layer's bits"
            );
        }
    }
}

/// The largest value of each block, computed the obvious way.
fn brute_force(values: &[f32], n: usize, block: usize) -> Vec<f32> {
    let cells = n.div_ceil(block);
    let mut out = Vec::new();
    for r in 0..cells {
        for c in 0..cells {
            let mut m = f32::NEG_INFINITY;
            for q in r * block..((r + 1) * block).min(n) {
                for k in c * block..((c + 1) * block).min(n) {
                    m = m.max(values[q * n + k]);
                }
            }
            out.push(m);
        }
    }
    out
}

#[test]
fn pooled_grids_equal_a_brute_force_maximum_over_blocks() {
    // A real pattern (causal zeros above the diagonal) and a side that no block divides.
    let model = random_model(&config(Arch::Llama), 16).unwrap().0;
    let p = model.head_pattern(&tokens(LEN), 2, 3, None).unwrap();
    for block in [1, 2, 3, 7, 16, 149, 150, 151] {
        let g = pool_max(&p.values, LEN, block);
        assert_eq!(g.cells, LEN.div_ceil(block));
        assert_eq!(
            g.values,
            brute_force(&p.values, LEN, block),
            "block {block}"
        );
        let last = g.cells - 1;
        assert_eq!(g.span(last), last * block..LEN);
    }
    // A long one (more than MAX_CELLS tokens a side): every level of its grids.
    let n = 600;
    let values: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1009) as f32 / 1009.0)
        .collect();
    let grids = PatternGrids::new(&values, n);
    assert_eq!(grids.len(), n);
    let first = &grids.levels[0];
    assert!(first.cells <= MAX_CELLS && first.block == n.div_ceil(MAX_CELLS));
    for (i, g) in grids.levels.iter().enumerate() {
        assert_eq!(g.block, first.block << i, "each level pools the last by 2");
        assert_eq!(g.values, brute_force(&values, n, g.block), "level {i}");
    }
    assert!(grids.levels.last().unwrap().cells <= 8);
    // The finest grid that fits.
    assert_eq!(grids.finest_within(300).block, first.block);
    let fit = grids.finest_within(100);
    assert!(fit.cells <= 100 && fit.cells * 2 > 100, "{}", fit.cells);
    assert_eq!(grids.finest_within(1), grids.levels.last().unwrap());
    // A short pattern is drawn as it is.
    let short = PatternGrids::new(&p.values, LEN);
    assert_eq!(short.levels[0].block, 1);
    assert_eq!(short.levels[0].values, p.values);
}

/// The viewer keeps a probe's on-demand patterns: at most `KEPT` and `KEPT_BYTES` (one always),
/// oldest first out, all dropped with the probe (its tokens or precision); a late answer for a
/// dropped query is ignored.
#[test]
fn the_viewer_keeps_a_bounded_number_of_patterns_per_probe() {
    use hubel::app::patterns::{capacity, Patterns, KEPT, KEPT_BYTES};
    use hubel::app::receptive::Pending;
    use hubel::app::worker::Computed;
    use hubel::features::FeatureId;
    use hubel::model::HeadPattern;

    assert_eq!(capacity(100), KEPT);
    assert_eq!(capacity(4096), KEPT_BYTES / (4 * 4096 * 4096));
    assert_eq!(capacity(100_000), 1, "one is kept whatever its size");

    let ids = tokens(100);
    let mut kept = Patterns::default();
    assert!(kept.ask(FeatureId::head(0, 0), 1).is_none(), "no probe yet");
    kept.sync(Some(&ids), Precision::Exact);
    let answer = |serial: u64, f: FeatureId| {
        let values = vec![serial as f32; 100 * 100];
        Ok(Computed {
            grids: Arc::new(PatternGrids::new(&values, 100)),
            pattern: Arc::new(HeadPattern {
                layer: f.layer,
                head: f.index,
                len: 100,
                values,
            }),
        })
    };
    let heads: Vec<FeatureId> = (0..KEPT + 1).map(|h| FeatureId::head(1, h)).collect();
    for (i, &f) in heads.iter().enumerate() {
        let serial = 10 + i as u64;
        let q = kept.ask(f, serial).expect("a query");
        assert_eq!(q.serial(), serial);
        assert!(kept.ask(f, 99).is_none(), "asked once");
        assert!(!kept.settled());
        kept.answer(serial, answer(serial, f));
        assert!(kept.settled());
    }
    assert!(kept.get(heads[0]).is_none(), "the oldest went");
    for &f in &heads[1..] {
        assert!(matches!(kept.get(f).unwrap().state, Pending::Ready(_)));
    }
    // A failure is shown, and may be asked again.
    let f = FeatureId::head(2, 0);
    kept.ask(f, 50).unwrap();
    kept.answer(50, Err("no".into()));
    assert!(matches!(&kept.get(f).unwrap().state, Pending::Failed(m) if m == "no"));
    assert!(kept.ask(f, 51).is_some());
    // The same tokens at the other precision are another probe.
    kept.sync(Some(&ids), Precision::Fast);
    assert!(heads.iter().all(|&f| kept.get(f).is_none()));
    kept.answer(51, answer(51, f));
    assert!(kept.get(f).is_none(), "a dropped query's answer is ignored");
    kept.ask(f, 52).unwrap();
    kept.sync(Some(&tokens(99)), Precision::Fast);
    assert!(kept.get(f).is_none(), "another text drops them");
}
