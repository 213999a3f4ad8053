//! Experiments on tiny models with planted structure, each number checked against a direct
//! computation that does not go through the experiment code (no batching, no shared helpers).

mod common;

use hubel::corpus::protocol::{Kind, Protocol, Side};
use hubel::experiments::induction;
use hubel::experiments::lesion::{self, Ablation};
use hubel::experiments::selectivity::{self, Settings};
use hubel::experiments::Runner;
use hubel::features::FeatureId;
use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention, Op};
use hubel::model::config::Arch;
use hubel::model::random::{random_model_edited, tiny_config};
use hubel::model::Model;

const PLANTED_LAYER: usize = 2;
const PLANTED_NEURON: usize = 17;

/// Fillers shared by both sets, so that A and B differ only in their first byte.
fn fillers() -> Vec<String> {
    let words = [
        "ab", "cd", "efg", "hi", "jk", "lmn", "op", "st", "uvw", "xy",
    ];
    let mut out = Vec::new();
    for i in 0..words.len() {
        for j in 0..3 {
            out.push(format!(
                "{} {}",
                words[i],
                words[(i + 3 * j + 1) % words.len()]
            ));
        }
    }
    out
}

/// A: `q<filler> [[z]]`, B: `r<filler> [[z]]`: the same reading token at the same position.
fn qr_protocol() -> Protocol {
    let a: Vec<String> = fillers().iter().map(|f| format!("q{f} [[z]]")).collect();
    let b: Vec<String> = fillers().iter().map(|f| format!("r{f} [[z]]")).collect();
    let json = serde_json::json!({
        "name": "planted", "kind": "selectivity", "description": "q vs r, read at z",
        "sets": {"A": {"label": "q", "stimuli": a}, "B": {"label": "r", "stimuli": b}},
    });
    Protocol::parse("planted", &json.to_string()).unwrap()
}

/// A tiny Llama whose first two blocks write nothing (their attention outputs and every MLP's
/// output are zero): the reading token's residual stream is its embedding up to block 2's
/// attention, the first place the first byte can reach it. With `plant` (gate and up rows),
/// neuron L2N17 reads it.
fn layered_model(plant: Option<&(Vec<f32>, Vec<f32>)>) -> Model {
    let cfg = tiny_config(Arch::Llama);
    let vocab = hubel::model::random::byte_vocab();
    let id = |c: &str| vocab.tokens.iter().position(|t| t == c).unwrap();
    let (q, r) = (id("q"), id("r"));
    random_model_edited(&cfg, 11, &mut |name, dims, values| {
        if name == "model.embed_tokens.weight" {
            // Dimension 0 belongs to the first byte alone: +8 for q, −8 for r, 0 elsewhere, so
            // block 2's attention carries a clear signal of it to the reading token.
            let d = dims[1];
            for row in 0..dims[0] {
                values[row * d] = if row == q {
                    8.0
                } else if row == r {
                    -8.0
                } else {
                    0.0
                };
            }
        }
        let silent_attn =
            (0..PLANTED_LAYER).any(|l| name == format!("model.layers.{l}.self_attn.o_proj.weight"));
        if silent_attn || name.ends_with("mlp.down_proj.weight") {
            values.fill(0.0);
        }
        if let Some((gate, up)) = plant {
            // Block 2's other neurons are silenced (gate rows 0: silu(0) = 0): the planted one is
            // the block's only neuron that responds at all.
            let l = PLANTED_LAYER;
            let d = dims.get(1).copied().unwrap_or(0);
            let row = PLANTED_NEURON * d..(PLANTED_NEURON + 1) * d;
            if name == format!("model.layers.{l}.mlp.gate_proj.weight") {
                values.fill(0.0);
                values[row].copy_from_slice(gate);
            } else if name == format!("model.layers.{l}.mlp.up_proj.weight") {
                values[row].copy_from_slice(up);
            }
        }
    })
    .unwrap()
    .0
}

/// One stimulus's value at `point` at its reading position, by a plain single run.
fn read_alone(model: &Model, ids: &[u32], at: usize, point: HookPoint) -> Vec<f32> {
    let out = model.run(ids, &Capture::points([point]), &[]).unwrap();
    out.record.get(point).unwrap().row(at).to_vec()
}

/// d′ by the textbook: two passes, unbiased variances.
fn dprime_direct(a: &[f64], b: &[f64]) -> f64 {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var =
        |v: &[f64], m: f64| v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64;
    let (ma, mb) = (mean(a), mean(b));
    (ma - mb) / ((var(a, ma) + var(b, mb)) / 2.0).sqrt()
}

fn auroc_direct(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for x in a {
        for y in b {
            s += if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (a.len() * b.len()) as f64
}

/// The planted neuron's reading direction: Fisher's discriminant of block 2's MLP input (the
/// second norm's output) at the reading position, (Σ_within + εI)⁻¹ (mean_A − mean_B), scaled
/// (see below): the linear read-out with the largest d′, which no random neuron can beat.
fn planted_direction(model: &Model, p: &Protocol) -> (Vec<f32>, Vec<f32>) {
    let point = HookPoint::block(PLANTED_LAYER, BlockSite::Ln2Normalized);
    let d = model.config().d_model;
    let rows = |side| -> Vec<Vec<f64>> {
        p.tokenize(model, side)
            .unwrap()
            .iter()
            .map(|t| {
                read_alone(model, &t.ids(), t.read_at, point)
                    .into_iter()
                    .map(f64::from)
                    .collect()
            })
            .collect()
    };
    let (a, b) = (rows(Side::A), rows(Side::B));
    let mean = |x: &[Vec<f64>]| -> Vec<f64> {
        (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / x.len() as f64)
            .collect()
    };
    let (ma, mb) = (mean(&a), mean(&b));
    // Pooled within-set covariance, with a small ridge.
    let mut cov = vec![vec![0f64; d]; d];
    for (x, m) in [(&a, &ma), (&b, &mb)] {
        for r in x.iter() {
            for i in 0..d {
                for j in 0..d {
                    cov[i][j] += (r[i] - m[i]) * (r[j] - m[j]);
                }
            }
        }
    }
    let n = (a.len() + b.len() - 2) as f64;
    let trace: f64 = (0..d).map(|i| cov[i][i] / n).sum();
    for (i, row) in cov.iter_mut().enumerate() {
        for v in row.iter_mut() {
            *v /= n;
        }
        row[i] += 0.3 * trace / d as f64;
    }
    // Solve cov · w = mean_A − mean_B by Gaussian elimination with partial pivoting.
    let mut m: Vec<Vec<f64>> = cov
        .into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            row.push(ma[i] - mb[i]);
            row
        })
        .collect();
    for c in 0..d {
        let pivot = (c..d)
            .max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))
            .unwrap();
        m.swap(c, pivot);
        for r in 0..d {
            if r != c {
                let f = m[r][c] / m[c][c];
                let pivot_row = m[c].clone();
                for (x, p) in m[r].iter_mut().zip(&pivot_row).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    let w: Vec<f64> = (0..d).map(|i| m[i][d] / m[i][i]).collect();
    // Scaled so that the two sets' mean gate values lie 8 apart, A above: SwiGLU's
    // g·silu(g) is then near-linear on A's side and near 0 on B's (near 0 it is g²/2, which
    // would not tell the sides apart).
    let gap: f64 = w
        .iter()
        .zip(ma.iter().zip(&mb))
        .map(|(w, (a, b))| w * (a - b))
        .sum();
    assert!(gap.is_finite() && gap > 0.0);
    let gate: Vec<f32> = w.iter().map(|v| (8.0 * v / gap) as f32).collect();
    (gate.clone(), gate)
}

#[test]
fn a_planted_neuron_is_found_at_its_layer_with_the_directly_computed_d_prime() {
    let p = qr_protocol();
    let unplanted = layered_model(None);
    let w = planted_direction(&unplanted, &p);
    let model = layered_model(Some(&w));
    let settings = Settings {
        shuffles: 200,
        ..Settings::default()
    };
    let runner = Runner {
        batch_tokens: 37, // several sequences a batch, split unevenly
        ..Runner::new(&model, None)
    };
    let r = selectivity::run(&runner, &p, &settings).unwrap();

    // Blocks 0 and 1 see only the reading token: nothing separates there, nor at the embedding.
    assert_eq!(r.embedding.max_abs_dprime, 0.0);
    for l in 0..PLANTED_LAYER {
        assert_eq!(r.layers[l].max_abs_dprime, 0.0, "layer {l}");
        assert!(
            (r.layers[l].probe_acc - 0.5).abs() <= 0.2,
            "layer {l}: {}",
            r.layers[l].probe_acc
        );
    }
    // The planted block separates, above its null band, and the planted neuron leads.
    let row = &r.layers[PLANTED_LAYER];
    assert!(row.max_abs_dprime > row.null95, "{row:?}");
    assert!(row.null95 > 0.0 && row.null95 < 1.5, "{row:?}");
    assert_eq!(r.onset_layer, Some(PLANTED_LAYER));
    assert_eq!(r.peak_layer, PLANTED_LAYER);
    let planted = FeatureId::neuron(PLANTED_LAYER, PLANTED_NEURON).label();
    assert_eq!(row.best, planted);
    // The first neuron of the ranking (heads are ranked with them: blocks 0 and 1's heads see
    // the first byte too, though their outputs are discarded).
    let top_neuron = r
        .top_units
        .iter()
        .find(|u| u.feature.contains('N'))
        .unwrap();
    assert_eq!(top_neuron.feature, planted);
    assert!(row.probe_acc >= 0.9, "{row:?}");
    assert!(row.neuron_acc >= 0.8, "{row:?}");
    // No confound: the same token at the same mean position, the same lengths.
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    let column = |side: Side, j: usize| -> Vec<f64> {
        let point = HookPoint::block(PLANTED_LAYER, BlockSite::MlpPost);
        p.tokenize(&model, side)
            .unwrap()
            .iter()
            .map(|t| f64::from(read_alone(&model, &t.ids(), t.read_at, point)[j]))
            .collect()
    };
    let (a, b) = (
        column(Side::A, PLANTED_NEURON),
        column(Side::B, PLANTED_NEURON),
    );
    let d = dprime_direct(&a, &b);
    assert!(d > 1.0, "the planted neuron fires on A: d′ {d}");
    assert!(
        (top_neuron.dprime - d).abs() <= 1e-6 * d,
        "{} vs {d}",
        top_neuron.dprime
    );
    assert!((top_neuron.auroc - auroc_direct(&a, &b)).abs() < 1e-12);
}

/// Every listed unit's d′ and AUROC, on a model with random neurons everywhere, against single
/// runs and the textbook formulas.
#[test]
fn reported_d_primes_equal_single_runs_and_the_formula() {
    let p = qr_protocol();
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 4)
        .unwrap()
        .0;
    let runner = Runner {
        batch_tokens: 50,
        ..Runner::new(&model, None)
    };
    let r = selectivity::run(&runner, &p, &Settings::default()).unwrap();
    assert_eq!(r.top_units.len(), 20);
    let mut kinds = [0, 0];
    for u in &r.top_units {
        // A neuron's activation, or a head's output norm ‖z_h‖ (8 values a head here).
        let f = FeatureId::parse(&u.feature).unwrap();
        let (site, neuron) = match f.basis {
            hubel::features::Basis::Neurons => (BlockSite::MlpPost, true),
            hubel::features::Basis::Heads => (BlockSite::Z, false),
            hubel::features::Basis::Dictionary => panic!("no dictionary was given: {f}"),
        };
        kinds[usize::from(!neuron)] += 1;
        let point = HookPoint::block(u.layer, site);
        let column = |side: Side| -> Vec<f64> {
            p.tokenize(&model, side)
                .unwrap()
                .iter()
                .map(|t| {
                    let row = read_alone(&model, &t.ids(), t.read_at, point);
                    if neuron {
                        f64::from(row[f.index])
                    } else {
                        let d = model.config().d_head;
                        row[f.index * d..(f.index + 1) * d]
                            .iter()
                            .map(|&v| f64::from(v) * f64::from(v))
                            .sum::<f64>()
                            .sqrt()
                    }
                })
                .collect()
        };
        let (a, b) = (column(Side::A), column(Side::B));
        let d = dprime_direct(&a, &b);
        assert!(d.is_finite());
        assert!(
            (u.dprime - d).abs() <= 1e-6 * d.abs().max(1.0),
            "{}: {} vs {d}",
            u.feature,
            u.dprime
        );
        assert!(
            (u.auroc - auroc_direct(&a, &b)).abs() < 1e-12,
            "{}",
            u.feature
        );
    }
    assert!(
        kinds[0] > 0 && kinds[1] > 0,
        "neurons and heads ranked together: {kinds:?}"
    );
    // Each layer's max |d′| is its best unit's, and the list is sorted by |d′|.
    assert!(r
        .top_units
        .windows(2)
        .all(|w| w[0].dprime.abs() >= w[1].dprime.abs()));
    let top = r
        .top_units
        .iter()
        .find(|u| u.feature.contains('N'))
        .unwrap();
    assert_eq!(r.layers[top.layer].max_abs_dprime, top.dprime.abs());
    let head = r
        .top_units
        .iter()
        .find(|u| u.feature.contains('H'))
        .unwrap();
    assert_eq!(r.layers[head.layer].max_abs_dprime_heads, head.dprime.abs());
    assert_eq!(r.layers[head.layer].best_head, head.feature);
}

#[test]
fn identical_sets_separate_nowhere() {
    let model = layered_model(None);
    let a: Vec<String> = fillers().iter().map(|f| format!("q{f} z")).collect();
    let json = serde_json::json!({
        "name": "same", "kind": "selectivity",
        "sets": {"A": {"label": "a", "stimuli": a}, "B": {"label": "b", "stimuli": a}},
    });
    let p = Protocol::parse("same", &json.to_string()).unwrap();
    let r = selectivity::run(&Runner::new(&model, None), &p, &Settings::default()).unwrap();
    assert_eq!(r.onset_layer, None);
    for row in &r.layers {
        assert_eq!(row.max_abs_dprime, 0.0);
    }
}

#[test]
fn confounds_are_named() {
    let model = layered_model(None);
    let json = serde_json::json!({
        "name": "confounded", "kind": "selectivity",
        "sets": {"A": {"label": "a", "stimuli": ["ab [[x]] cd", "ef [[x]] gh", "ij [[x]] kl", "mn [[x]] op",
                                                 "qr [[x]] st", "uv [[x]] wx", "ya [[x]] bc", "de [[x]] fg"]},
                 "B": {"label": "b", "stimuli": ["long prefix here y", "another long one y", "and a third y",
                                                 "the fourth is here y", "fifth of them all y", "sixth one comes y",
                                                 "seventh in line y", "last of the set y"]}},
    });
    let p = Protocol::parse("c", &json.to_string()).unwrap();
    let r = selectivity::run(&Runner::new(&model, None), &p, &Settings::default()).unwrap();
    let all = r.warnings.join("\n");
    assert!(all.contains("different positions"), "{all}");
    assert!(all.contains("read at different tokens"), "{all}");
    assert!(all.contains("different lengths"), "{all}");
    assert!(all.contains("already separate at the embedding"), "{all}");
}

#[test]
fn induction_scores_read_the_diagonal_of_a_constructed_pattern() {
    // 2 heads, a BOS at 0, a copy of 3 tokens at 1..4 repeated at 4..7.
    let (heads, seq, offset, len) = (2, 7, 1, 3);
    let mut pattern = vec![0f32; heads * seq * seq];
    for q in 0..seq {
        // Head 0 spreads evenly over the keys it may see; head 1 attends to the token after
        // the current token's earlier copy.
        for k in 0..=q {
            pattern[q * seq + k] = 1.0 / (q + 1) as f32;
        }
        let target = if q >= offset + len { q - len + 1 } else { 0 };
        pattern[(seq + q) * seq + target] = 1.0;
    }
    let s0 = induction::induction_score(&pattern, seq, 0, offset, len);
    let s1 = induction::induction_score(&pattern, seq, 1, offset, len);
    assert_eq!(s1, 1.0);
    let expected = (1.0 / 5.0 + 1.0 / 6.0 + 1.0 / 7.0) / 3.0;
    assert!((s0 - expected).abs() < 1e-7, "{s0} vs {expected}");
}

#[test]
fn induction_report_equals_single_runs() {
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 5)
        .unwrap()
        .0;
    // Controls shorter and longer than their sequences: each is extended with the next ones
    // (cyclically) and cut to its sequence's length.
    let words = ["abcdefg", "hijkl", "mnopqrs"];
    let json = serde_json::json!({
        "name": "ind", "kind": "induction",
        "sets": {"A": {"label": "repeated", "stimuli": words},
                 "B": {"label": "control", "stimuli": ["tu", "ABCDEFGHIJ", "FGH"]}},
    });
    let controls = ["tuABCDE", "ABCDE", "FGHtuAB"];
    let p = Protocol::parse("ind", &json.to_string()).unwrap();
    let runner = Runner {
        batch_tokens: 20,
        ..Runner::new(&model, None)
    };
    let r = induction::run(&runner, &p).unwrap();
    let cfg = model.config();
    assert_eq!(r.heads.len(), cfg.n_layers * cfg.n_heads);
    assert!(r.heads.windows(2).all(|w| w[0].score >= w[1].score));
    let ids = |t: &str| -> Vec<u32> { model.tokenize(t).unwrap().iter().map(|t| t.id).collect() };
    let nll = |out: &hubel::model::RunOutput, seq: &[u32], t: usize| nll_at(out, seq, t);
    // One head by hand: the mean over sequences of the mean attention from second-copy token j
    // to first-copy token j + 1; and every copy's loss.
    let (layer, head) = (1, 3);
    let point = HookPoint::block(layer, BlockSite::Pattern);
    let (mut score, mut control) = (0.0, 0.0);
    let mut losses = [(0.0, 0usize); 3]; // first copy, second copy, control
    for (w, c) in words.iter().zip(controls) {
        let (a, ctrl) = (ids(w), ids(c));
        let len = a.len();
        assert_eq!(ctrl.len(), len);
        for (is_control, seq) in [
            (false, [a.clone(), a.clone()].concat()),
            (true, [a.clone(), ctrl].concat()),
        ] {
            let out = model.run(&seq, &Capture::points([point]), &[]).unwrap();
            let pat = out.record.get(point).unwrap();
            let n = seq.len();
            let s: f64 = (0..len)
                .map(|j| f64::from(pat.data[(head * n + len + j) * n + j + 1]))
                .sum();
            if is_control {
                control += s / len as f64;
                for t in len..2 * len {
                    losses[2].0 += nll(&out, &seq, t);
                    losses[2].1 += 1;
                }
            } else {
                score += s / len as f64;
                for t in 1..len {
                    losses[0].0 += nll(&out, &seq, t);
                    losses[0].1 += 1;
                }
                for t in len..2 * len {
                    losses[1].0 += nll(&out, &seq, t);
                    losses[1].1 += 1;
                }
            }
        }
    }
    let h = r
        .heads
        .iter()
        .find(|h| h.head == format!("L{layer}H{head}"))
        .unwrap();
    assert!(
        (h.score - score / 3.0).abs() < 1e-6,
        "{} vs {}",
        h.score,
        score / 3.0
    );
    assert!(
        (h.control - control / 3.0).abs() < 1e-6,
        "{} vs {}",
        h.control,
        control / 3.0
    );
    for (got, (sum, n), what) in [
        (r.nll_first, losses[0], "first"),
        (r.nll_second, losses[1], "second"),
        (r.nll_control, losses[2], "control"),
    ] {
        let direct = sum / n as f64;
        assert!((got - direct).abs() < 1e-4, "{what}: {got} vs {direct}");
    }
}

fn lesion_protocol() -> Protocol {
    let json = serde_json::json!({
        "name": "les", "kind": "lesion",
        "sets": {"A": {"label": "lower", "stimuli": ["abc def", "ghi jkl", "mno pqr", "stu vwx"]},
                 "B": {"label": "upper", "stimuli": ["ABC DEF", "GHI JKL", "MNO PQR", "STU VWX"]}},
        "heldout": {"A": ["the cat sat", "on a mat", "x"], "B": ["THE DOG RAN", "TO THE PARK"]},
    });
    Protocol::parse("les", &json.to_string()).unwrap()
}

/// Mean loss per predicted token over `texts` with `interventions(len)` applied, by single runs
/// and a log-sum-exp written here.
fn pooled_nll(
    model: &Model,
    texts: &[String],
    interventions: &dyn Fn(usize) -> Vec<Intervention>,
) -> (f64, usize) {
    let (mut sum, mut n) = (0.0, 0);
    for text in texts {
        let ids: Vec<u32> = model.tokenize(text).unwrap().iter().map(|t| t.id).collect();
        let out = model
            .run(&ids, &Capture::Nothing, &interventions(ids.len()))
            .unwrap();
        for t in 1..ids.len() {
            sum += nll_at(&out, &ids, t);
            n += 1;
        }
    }
    (sum / n as f64, n)
}

/// The loss of token t of `seq` from the logits before it, with a log-sum-exp written here (not
/// the crate's analysis functions).
fn nll_at(out: &hubel::model::RunOutput, seq: &[u32], t: usize) -> f64 {
    let v = out.vocab;
    let row = &out.logits[(t - 1) * v..t * v];
    let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - row[seq[t] as usize] as f64
}

#[test]
fn lesion_losses_equal_a_direct_computation() {
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 3)
        .unwrap()
        .0;
    let p = lesion_protocol();
    let units = [
        FeatureId::neuron(0, 5),
        FeatureId::neuron(0, 9),
        FeatureId::neuron(2, 40),
    ];
    let runner = Runner::new(&model, None);
    let heldout = |side| p.heldout(side).to_vec();

    // The mean of each unit over the protocol's stimuli, positions 1.., by single runs.
    let mut means = std::collections::BTreeMap::new();
    for u in &units {
        let point = HookPoint::block(u.layer, BlockSite::MlpPost);
        let (mut s, mut n) = (0.0f64, 0);
        for side in Side::BOTH {
            for raw in p.stimuli(side) {
                let ids: Vec<u32> = model.tokenize(raw).unwrap().iter().map(|t| t.id).collect();
                let out = model.run(&ids, &Capture::points([point]), &[]).unwrap();
                for pos in 1..ids.len() {
                    s += f64::from(out.record.get(point).unwrap().row(pos)[u.index]);
                    n += 1;
                }
            }
        }
        means.insert(*u, (s / n as f64) as f32);
    }
    let d_mlp = model.config().d_mlp;
    for ablation in [Ablation::Zero, Ablation::Mean] {
        let r = lesion::run_units(&runner, &p, &units, ablation, 1).unwrap();
        let ivs = |len: usize| -> Vec<Intervention> {
            units
                .iter()
                .map(|u| Intervention {
                    hook: HookPoint::block(u.layer, BlockSite::MlpPost),
                    positions: Some((1..len).collect()),
                    indices: Some(vec![u.index]),
                    op: match ablation {
                        Ablation::Zero => Op::Set { value: 0.0 },
                        _ => {
                            let mut values = vec![0.0; d_mlp];
                            values[u.index] = means[u];
                            Op::MeanOf { values }
                        }
                    },
                })
                .collect()
        };
        let none = |_: usize| Vec::new();
        for (side, base, abl, tokens) in [
            (Side::A, r.baseline.a, r.ablated.a, r.tokens.a),
            (Side::B, r.baseline.b, r.ablated.b, r.tokens.b),
        ] {
            let (b, n) = pooled_nll(&model, &heldout(side), &none);
            let (a, _) = pooled_nll(&model, &heldout(side), &ivs);
            assert_eq!(tokens, n);
            assert!(
                (base - b).abs() < 1e-5,
                "{ablation:?} {side:?} baseline {base} vs {b}"
            );
            assert!(
                (abl - a).abs() < 1e-5,
                "{ablation:?} {side:?} ablated {abl} vs {a}"
            );
            assert!(
                (abl - base).abs() > 1e-6,
                "{ablation:?} {side:?}: the ablation changes the loss"
            );
        }
    }
    // The held-out "x" has no predicted token: A counts 10 + 7 + 0 tokens.
    let r = lesion::run_units(&runner, &p, &units, Ablation::Resample, 1).unwrap();
    assert_eq!(r.tokens.a, 10 + 7);
    assert!(
        (r.ablated.a - r.baseline.a).abs() > 1e-6,
        "resampling changes the loss"
    );
    // The same seed draws the same samples; another seed others.
    let again = lesion::run_units(&runner, &p, &units, Ablation::Resample, 1).unwrap();
    assert_eq!(again, r);
    let other = lesion::run_units(&runner, &p, &units, Ablation::Resample, 2).unwrap();
    assert_ne!(other.ablated, r.ablated);
}

#[test]
fn a_lesion_protocol_runs_every_group_and_ablation() {
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 3)
        .unwrap()
        .0;
    let p = lesion_protocol();
    let settings = lesion::Settings {
        top_n: 4,
        random_draws: 2,
        units: vec![FeatureId::neuron(1, 1)],
        ..Default::default()
    };
    let r = lesion::run(&Runner::new(&model, None), &p, &settings).unwrap();
    // top-A, top-B, 2 random, hand-picked; × zero, mean, resample.
    assert_eq!(r.groups.len(), 5);
    assert_eq!(r.conditions.len(), 15);
    // The baseline and the hand-picked group's zero ablation, by single runs.
    let none = |_: usize| Vec::new();
    let (base_a, _) = pooled_nll(&model, p.heldout(Side::A), &none);
    assert!(
        (r.baseline.a - base_a).abs() < 1e-5,
        "{} vs {base_a}",
        r.baseline.a
    );
    let zero_l1n1 = |len: usize| {
        vec![Intervention {
            hook: HookPoint::block(1, BlockSite::MlpPost),
            positions: Some((1..len).collect()),
            indices: Some(vec![1]),
            op: Op::Set { value: 0.0 },
        }]
    };
    let (za, _) = pooled_nll(&model, p.heldout(Side::A), &zero_l1n1);
    let (zb, _) = pooled_nll(&model, p.heldout(Side::B), &zero_l1n1);
    let c = r
        .conditions
        .iter()
        .find(|c| c.group == "hand-picked" && c.ablation == Ablation::Zero)
        .unwrap();
    assert!(
        (c.nll.a - za).abs() < 1e-5 && (c.nll.b - zb).abs() < 1e-5,
        "{c:?} vs {za} {zb}"
    );
    assert!((c.delta.a - (za - base_a)).abs() < 1e-5);
    // The top groups hold the most selective neurons (d′ of the stimulus means over
    // positions 1..): top-A's first unit has a positive d′, top-B's a negative one, by hand.
    let mean_over_positions = |f: &FeatureId, side: Side| -> Vec<f64> {
        let point = HookPoint::block(f.layer, BlockSite::MlpPost);
        p.stimuli(side)
            .iter()
            .map(|t| {
                let ids: Vec<u32> = model.tokenize(t).unwrap().iter().map(|t| t.id).collect();
                let out = model.run(&ids, &Capture::points([point]), &[]).unwrap();
                let a = out.record.get(point).unwrap();
                (1..ids.len())
                    .map(|q| f64::from(a.row(q)[f.index]))
                    .sum::<f64>()
                    / (ids.len() - 1) as f64
            })
            .collect()
    };
    for (g, sign) in [(0, 1.0), (1, -1.0)] {
        let f = FeatureId::parse(&r.groups[g].units[0]).unwrap();
        let d = dprime_direct(
            &mean_over_positions(&f, Side::A),
            &mean_over_positions(&f, Side::B),
        );
        assert!(sign * d > 1.0, "{}: d′ {d}", r.groups[g].name);
    }
    // The random groups come from the A group's layers and avoid its units.
    let top_a = &r.groups[0].units;
    let layer_of = |u: &String| FeatureId::parse(u).unwrap().layer;
    let mut a_layers: Vec<usize> = top_a.iter().map(layer_of).collect();
    a_layers.sort();
    for g in &r.groups[2..4] {
        assert_eq!(g.units.len(), 4);
        let mut layers: Vec<usize> = g.units.iter().map(layer_of).collect();
        layers.sort();
        assert_eq!(layers, a_layers);
        for u in &g.units {
            assert!(!top_a.contains(u));
        }
    }
    let e = lesion::run(
        &Runner::new(&model, None),
        &p,
        &lesion::Settings {
            units: vec![FeatureId::neuron(9, 1)],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("L9N1"), "{e}");
}

#[test]
fn every_built_in_protocol_tokenizes_for_a_byte_model() {
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 1)
        .unwrap()
        .0;
    for name in hubel::corpus::protocol::built_in_names() {
        let p = hubel::corpus::protocol::built_in(name).unwrap().unwrap();
        for side in Side::BOTH {
            // Byte tokens: the tiny model's context (64) is shorter than some stimuli, which
            // must be an error naming the first of them, not a panic.
            let too_long = p.stimuli(side).iter().position(|raw| {
                let text = hubel::corpus::protocol::parse_marker(raw).unwrap().text;
                text.len() > model.config().n_ctx
            });
            match (p.tokenize(&model, side), too_long) {
                (Ok(set), None) => {
                    assert_eq!(set.len(), p.stimuli(side).len());
                    for t in &set {
                        assert!(t.read_at < t.tokens.len());
                    }
                }
                (Err(e), Some(i)) => {
                    let place = format!("stimulus {} of set {}", i + 1, side.name());
                    assert!(e.to_string().contains(&place), "{name}: {e}");
                }
                (r, i) => panic!(
                    "{name} {side:?}: {:?} with the first too long at {i:?}",
                    r.map(|s| s.len())
                ),
            }
        }
        if p.kind == Kind::Lesion {
            assert!(!p.heldout(Side::A).is_empty());
        }
    }
}

#[test]
fn dose_response_at_the_identity_is_the_clean_run_and_at_zero_a_zero_ablation() {
    use hubel::experiments::dose::{self, Mode};
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 3)
        .unwrap()
        .0;
    let p = lesion_protocol();
    let units = vec![FeatureId::neuron(1, 7), FeatureId::head(2, 1)];
    let settings = dose::Settings {
        units: units.clone(),
        mode: Mode::Scale,
        strengths: vec![0.0, 1.0, 2.5],
        freeze_attention: false,
        probe: "the cat sat on".into(),
        target: Some("t".into()),
    };
    let runner = Runner {
        batch_tokens: 16,
        ..Runner::new(&model, None)
    };
    let r = dose::run(&runner, &p, &settings).unwrap();
    assert_eq!(r.sets_scored, "held-out");
    let none = |_: usize| Vec::new();
    let (base_a, _) = pooled_nll(&model, p.heldout(Side::A), &none);
    let (base_b, _) = pooled_nll(&model, p.heldout(Side::B), &none);
    // Strength 1: nothing changes.
    let one = &r.points[1];
    assert!(one.kl.abs() < 1e-9, "{}", one.kl);
    assert!((one.target_prob - r.clean_target_prob).abs() < 1e-9);
    assert!((one.nll.a - base_a).abs() < 1e-5 && (one.nll.b - base_b).abs() < 1e-5);
    // Strength 0: the neuron and the head zeroed at positions 1.., by hand.
    let zero = |len: usize| -> Vec<Intervention> {
        vec![
            Intervention {
                hook: HookPoint::block(1, BlockSite::MlpPost),
                positions: Some((1..len).collect()),
                indices: Some(vec![7]),
                op: Op::Set { value: 0.0 },
            },
            Intervention {
                hook: HookPoint::block(2, BlockSite::Z),
                positions: Some((1..len).collect()),
                indices: Some(vec![1]),
                op: Op::Set { value: 0.0 },
            },
        ]
    };
    let (za, _) = pooled_nll(&model, p.heldout(Side::A), &zero);
    let (zb, _) = pooled_nll(&model, p.heldout(Side::B), &zero);
    assert!(
        (r.points[0].nll.a - za).abs() < 1e-5,
        "{} vs {za}",
        r.points[0].nll.a
    );
    assert!((r.points[0].nll.b - zb).abs() < 1e-5);
    let probe: Vec<u32> = model
        .tokenize("the cat sat on")
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let clean = model.run(&probe, &Capture::Nothing, &[]).unwrap();
    let zeroed = model
        .run(&probe, &Capture::Nothing, &zero(probe.len()))
        .unwrap();
    let kl = hubel::analysis::kl_divergence(clean.last_logits(), zeroed.last_logits());
    assert!(
        (r.points[0].kl - kl).abs() < 1e-9 && kl > 0.0,
        "{} vs {kl}",
        r.points[0].kl
    );
    assert!(r.points[2].kl > 0.0);
    // The target: one token or a clear error.
    let bad = dose::Settings {
        target: Some("two".into()),
        ..settings.clone()
    };
    let e = dose::run(&runner, &p, &bad).unwrap_err().to_string();
    assert!(e.contains("3 tokens"), "{e}");
    assert!(dose::parse_range("0:3:7").unwrap() == vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    assert!(dose::parse_range("0:3:1").is_err() && dose::parse_range("a:b").is_err());
    // A token holding part of a character is shown by its bytes, not as "�".
    let bytes: Vec<u32> = model.tokenize("物").unwrap().iter().map(|t| t.id).collect();
    assert_eq!(bytes.len(), 3);
    assert_eq!(hubel::experiments::token_display(&model, bytes[0]), "<E7>");
    let t: Vec<u32> = model.tokenize("t").unwrap().iter().map(|t| t.id).collect();
    assert_eq!(hubel::experiments::token_display(&model, t[0]), "t");
}

#[test]
fn frozen_attention_holds_every_pattern_at_the_clean_run() {
    use hubel::experiments::dose;
    let model = hubel::model::random::random_model(&tiny_config(Arch::Llama), 8)
        .unwrap()
        .0;
    let tokens: Vec<u32> = model
        .tokenize("frozen pattern")
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let layers = model.config().n_layers;
    let patterns = Capture::points((0..layers).map(|l| HookPoint::block(l, BlockSite::Pattern)));
    let clean = model.run(&tokens, &patterns, &[]).unwrap();
    // A large edit in block 0 changes later patterns; frozen, they stay the clean ones.
    let mut ivs = dose::interventions(
        &[FeatureId::neuron(0, 3)],
        dose::Mode::Add,
        50.0,
        tokens.len(),
    );
    let free = model.run(&tokens, &patterns, &ivs).unwrap();
    ivs.extend(dose::freeze(&model, &tokens).unwrap());
    let frozen = model.run(&tokens, &patterns, &ivs).unwrap();
    let p2 = HookPoint::block(2, BlockSite::Pattern);
    let differs = |x: &hubel::model::RunOutput| {
        x.record
            .get(p2)
            .unwrap()
            .data
            .iter()
            .zip(clean.record.get(p2).unwrap().data.iter())
            .any(|(a, b)| (a - b).abs() > 1e-4)
    };
    assert!(differs(&free), "the edit moves block 2's attention");
    for l in 0..layers {
        let p = HookPoint::block(l, BlockSite::Pattern);
        assert_eq!(
            frozen.record.get(p).unwrap().data,
            clean.record.get(p).unwrap().data,
            "layer {l}"
        );
    }
    // And the output still changes (through the residual stream and the MLPs).
    assert!(hubel::analysis::kl_divergence(clean.last_logits(), frozen.last_logits()) > 0.0);

    // Through dose::run: at the identity, frozen attention is the clean run; with the edit,
    // each set's loss is that of single runs with the same freeze.
    let p = lesion_protocol();
    let unit = FeatureId::neuron(0, 3);
    let settings = dose::Settings {
        units: vec![unit],
        mode: dose::Mode::Add,
        strengths: vec![0.0, 50.0],
        freeze_attention: true,
        probe: "frozen pattern".into(),
        target: None,
    };
    let runner = Runner {
        batch_tokens: 24,
        ..Runner::new(&model, None)
    };
    let r = dose::run(&runner, &p, &settings).unwrap();
    assert!(r.frozen_attention);
    let none = |_: usize| Vec::new();
    let (base_a, _) = pooled_nll(&model, p.heldout(Side::A), &none);
    assert!(r.points[0].kl.abs() < 1e-9);
    assert!(
        (r.points[0].nll.a - base_a).abs() < 1e-5,
        "{} vs {base_a}",
        r.points[0].nll.a
    );
    let (mut sum, mut n) = (0.0, 0);
    for text in p.heldout(Side::A) {
        let ids: Vec<u32> = model.tokenize(text).unwrap().iter().map(|t| t.id).collect();
        let (s1, n1) = pooled_nll(&model, std::slice::from_ref(text), &|len| {
            let mut ivs = dose::interventions(&[unit], dose::Mode::Add, 50.0, len);
            ivs.extend(dose::freeze(&model, &ids).unwrap());
            ivs
        });
        if n1 > 0 {
            sum += s1 * n1 as f64;
            n += n1;
        }
    }
    let direct = sum / n as f64;
    assert!(
        (r.points[1].nll.a - direct).abs() < 1e-5,
        "{} vs {direct}",
        r.points[1].nll.a
    );
    assert!(
        (r.points[1].nll.a - base_a).abs() > 1e-4,
        "the edit changes the loss"
    );
    // Adding to a head is refused with a reason.
    let bad = dose::Settings {
        units: vec![FeatureId::head(1, 0)],
        ..settings
    };
    assert!(dose::run(&runner, &p, &bad)
        .unwrap_err()
        .to_string()
        .contains("not a direction"));
}

#[test]
fn a_discriminator_is_fitted_saved_and_applied_to_new_text() {
    use hubel::experiments::discriminator::{self, Discriminator, Which};
    let p = qr_protocol();
    let unplanted = layered_model(None);
    let w = planted_direction(&unplanted, &p);
    let model = layered_model(Some(&w));
    let runner = Runner::new(&model, None);
    let planted = FeatureId::neuron(PLANTED_LAYER, PLANTED_NEURON);
    let d = discriminator::fit(&runner, &p, Which::Unit(planted), 5, 1).unwrap();
    assert!(
        d.accuracy >= 0.8 && d.cv_accuracy >= 0.75,
        "{}",
        d.describe()
    );
    // New text, in neither set (other pairs of the filler words): mostly told apart.
    let words = [
        "ab", "cd", "efg", "hi", "jk", "lmn", "op", "st", "uvw", "xy",
    ];
    let mut texts = Vec::new();
    for i in 0..words.len() {
        for first in ["q", "r"] {
            texts.push(format!(
                "{first}{} {} [[z]]",
                words[i],
                words[(i + 2) % words.len()]
            ));
        }
    }
    let out = d.classify(&model, &texts).unwrap();
    let right = out
        .iter()
        .zip(&texts)
        .filter(|(c, t)| (c.says == Side::A) == t.starts_with('q'))
        .count();
    assert!(right >= 15, "{right} of 20 new texts classified right");
    assert_eq!(out[0].token, "z");
    assert_eq!(out[0].text, "qab efg z");
    assert_eq!(out[0].position, 8);
    assert_eq!(out[0].label, if out[0].says == Side::A { "q" } else { "r" });
    let plain = d.classify(&model, &["qab efg z".to_string()]).unwrap();
    assert_eq!(
        plain[0].position, 8,
        "unmarked text is read at its last token"
    );
    // The value is the neuron's activation there, by a single run.
    let ids: Vec<u32> = model
        .tokenize("qab efg z")
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let v = read_alone(
        &model,
        &ids,
        ids.len() - 1,
        HookPoint::block(PLANTED_LAYER, BlockSite::MlpPost),
    )[PLANTED_NEURON];
    assert_eq!(out[0].value, f64::from(v));
    // Saved and read back: the same classifier.
    let dir = std::env::temp_dir().join(format!("hubel-disc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("d.json");
    d.save(&file).unwrap();
    let back =
        Discriminator::from_json("d.json", &std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(back, d);
    assert!(Discriminator::from_json("x", "{\"format\": 1}")
        .unwrap_err()
        .to_string()
        .contains("not a discriminator"));
    // A probe at block 0 sees only the reading token: chance.
    let probe0 = discriminator::fit(&runner, &p, Which::Probe(0), 5, 1).unwrap();
    assert!(
        (probe0.cv_accuracy - 0.5).abs() < 0.2,
        "{}",
        probe0.describe()
    );
    let probe2 = discriminator::fit(&runner, &p, Which::Probe(2), 5, 1).unwrap();
    assert!(probe2.cv_accuracy >= 0.9, "{}", probe2.describe());
    // Another model: refused, by name.
    let other = hubel::model::random::random_model(&tiny_config(Arch::Llama), 99)
        .unwrap()
        .0;
    let mut foreign = d.clone();
    foreign.model_sha256 = "0123456789abcdef".into();
    let e = foreign.classify(&other, &texts).unwrap_err().to_string();
    assert!(e.contains("was fitted on"), "{e}");
    // Bad requests are errors, not panics.
    assert!(discriminator::fit(&runner, &p, Which::Probe(7), 5, 1)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    assert!(discriminator::fit(&runner, &p, Which::Unit(FeatureId::head(1, 1)), 5, 1).is_err());
    assert!(d.classify(&model, &["a [[b".to_string()]).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// With a dictionary, its features are ranked with the neurons and heads: each listed one's d′
/// and AUROC are those of its code, computed by hand from single runs' residual rows; only the
/// layer it reads gets a dictionary column.
#[test]
fn dictionary_features_are_ranked_with_their_directly_computed_d_prime() {
    use hubel::features::dictionary::Normaliser;
    let p = qr_protocol();
    let unplanted = layered_model(None);
    let w = planted_direction(&unplanted, &p);
    let model = layered_model(Some(&w));
    let layer = PLANTED_LAYER;
    let hook = HookPoint::block(layer, BlockSite::ResidPost);
    let d = model.config().d_model;
    let atoms = 40;
    // Normalised by the stimuli's own residual rows, as training would.
    let rows: Vec<f32> = [Side::A, Side::B]
        .iter()
        .flat_map(|&s| p.tokenize(&model, s).unwrap())
        .flat_map(|t| read_alone(&model, &t.ids(), t.read_at, hook))
        .collect();
    let dictionary = common::tied_topk(hook, d, atoms, 6, 3, Normaliser::fit(&rows, d));
    let settings = Settings {
        top: 100_000,
        dictionary: Some(std::sync::Arc::new(dictionary.clone())),
        ..Settings::default()
    };
    let r = selectivity::run(&Runner::new(&model, None), &p, &settings).unwrap();
    for row in &r.layers {
        assert_eq!(
            row.max_abs_dprime_dict.is_some(),
            row.layer == layer,
            "{row:?}"
        );
    }
    let listed: Vec<_> = r
        .top_units
        .iter()
        .filter(|u| u.feature.contains('D'))
        .collect();
    assert!(!listed.is_empty());
    let code = |side: Side, j: usize| -> Vec<f64> {
        p.tokenize(&model, side)
            .unwrap()
            .iter()
            .map(|t| {
                let x = read_alone(&model, &t.ids(), t.read_at, hook);
                let c = &dictionary.encode(0, &x)[0];
                f64::from(c.iter().find(|e| e.0 as usize == j).map_or(0.0, |e| e.1))
            })
            .collect()
    };
    let mut checked = 0;
    for u in listed.iter().take(5) {
        let f = FeatureId::parse(&u.feature).unwrap();
        assert_eq!((f.layer, u.layer), (layer, layer));
        let (a, b) = (code(Side::A, f.index), code(Side::B, f.index));
        let want = dprime_direct(&a, &b);
        if !want.is_finite() {
            continue; // silent on every stimulus: no spread to divide by
        }
        assert!(
            (u.dprime - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{}: {} vs {want}",
            u.feature,
            u.dprime
        );
        assert!((u.auroc - auroc_direct(&a, &b)).abs() < 1e-12);
        checked += 1;
    }
    assert!(checked > 0);
    let best = &r.layers[layer];
    assert_eq!(best.best_dict, listed[0].feature);
    assert!((best.max_abs_dprime_dict.unwrap() - listed[0].dprime.abs()).abs() < 1e-12);
}
