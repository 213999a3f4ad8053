//! A dictionary's atoms as a basis wherever neurons are (issue 10, "Use"): codes added to a
//! run's record, the layer map's rows, a card's example rows and occlusion map, a feature's
//! direct effect, and the worker that codes both sides of a run. Every value is checked against
//! a direct computation: one `Model::run` per sequence and `Dictionary::encode` of its rows.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hubel::analysis::maps;
use hubel::app::worker::{Request, Response, RunRequest, WorkerHandle};
use hubel::features::dictionary::{edit, Dictionary, Normaliser};
use hubel::features::{Basis, FeatureId};
use hubel::hooks::{ActivationRecord, BlockSite, Capture, HookPoint};
use hubel::model::{Model, Occlude, Precision};

const LAYER: usize = 1;
const HOOK: HookPoint = HookPoint::Block {
    layer: LAYER,
    site: BlockSite::ResidPost,
};
const TEXT: &str = "turn left at the bank of the river";

fn tiny_llama() -> std::path::PathBuf {
    common::fixtures().join("tiny_llama").join("model")
}

/// A top-k dictionary of `atoms` pseudo-random unit atoms over `model`'s layer-1 residual,
/// normalised by the residual's own spread on `TEXT` (as training would), encoder = decoder.
fn dictionary(model: &Model, atoms: usize, k: usize) -> Dictionary {
    let d = model.config().d_model;
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let x = model.run(&ids, &Capture::points([HOOK]), &[]).unwrap();
    let rows = &x.record.get(HOOK).unwrap().data[d..];
    common::tied_topk(HOOK, d, atoms, k, 11, Normaliser::fit(rows, d))
}

/// Codes `[len, atoms]` of `x` (`[len, d]`) computed one row at a time, row 0 zero.
fn codes_by_hand(dict: &Dictionary, x: &[f32]) -> Vec<Vec<f32>> {
    let d = dict.d();
    (0..x.len() / d)
        .map(|p| {
            let mut row = vec![0f32; dict.atoms()];
            if p > 0 {
                for (j, v) in &dict.encode(0, &x[p * d..(p + 1) * d])[0] {
                    row[*j as usize] = *v;
                }
            }
            row
        })
        .collect()
}

fn run_coded(model: &Model, dict: &Dictionary, ids: &[u32]) -> ActivationRecord {
    let mut record = model
        .run(ids, &Capture::points([HOOK]), &[])
        .unwrap()
        .record;
    dict.add_codes(&mut record);
    record
}

#[test]
fn codes_in_a_record_are_the_dictionary_s_codes_of_each_position() {
    let model = Model::open(tiny_llama()).unwrap();
    let dict = dictionary(&model, 24, 3);
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let record = run_coded(&model, &dict, &ids);
    let x = &record.get(HOOK).unwrap().data;
    let want = codes_by_hand(&dict, x);
    let codes = record.codes(LAYER).expect("codes of layer 1");
    assert_eq!(codes.shape, vec![ids.len(), 24]);
    for (p, row) in want.iter().enumerate() {
        assert_eq!(codes.row(p), row.as_slice(), "position {p}");
        let active = row.iter().filter(|&&v| v != 0.0).count();
        assert!(
            p == 0 && active == 0 || p > 0 && active == 3,
            "position {p}: {active} active"
        );
    }
    assert!(
        record.codes(0).is_none(),
        "the dictionary reads layer 1 only"
    );

    // A feature's activations are its column; the layer's top features rank by peak code.
    let f = FeatureId::atom(LAYER, 5);
    let column: Vec<f32> = want.iter().map(|r| r[5]).collect();
    assert_eq!(maps::feature_activations(&record, f), column);
    let top = maps::top_features(&record, LAYER, Basis::Dictionary, 4, 1);
    let peak = |j: usize| want[1..].iter().fold(0f32, |m, r| m.max(r[j].abs()));
    assert_eq!(top.len(), 4);
    assert!(top
        .iter()
        .all(|f| f.basis == Basis::Dictionary && f.layer == LAYER));
    for pair in top.windows(2) {
        assert!(peak(pair[0].index) >= peak(pair[1].index), "{top:?}");
    }
    let best = (0..24).map(peak).fold(0f32, f32::max);
    assert_eq!(peak(top[0].index), best);
    assert!(best > 0.0);
    // What fires at a position, across layers: the codes of the last token, strongest first.
    let last = ids.len() - 1;
    let strongest = maps::strongest_at(&record, last, Basis::Dictionary, None, 3);
    let mut by_hand: Vec<(usize, f32)> = want[last]
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| *v != 0.0)
        .collect();
    by_hand.sort_by(|a, b| b.1.total_cmp(&a.1));
    let got: Vec<(usize, f32)> = strongest.iter().map(|(f, v, _)| (f.index, *v)).collect();
    assert_eq!(got, by_hand);

    // Recoding with another dictionary replaces the codes; clearing removes them.
    let mut again = record.clone();
    let other = dictionary(&model, 8, 2);
    other.add_codes(&mut again);
    assert_eq!(again.codes(LAYER).unwrap().shape, vec![ids.len(), 8]);
    again.clear_codes();
    assert!(again.codes(LAYER).is_none());
    assert!(maps::feature_activations(&again, f).is_empty());
}

#[test]
fn card_rows_and_occlusion_of_a_dictionary_feature_match_single_runs() {
    let model = Model::open(tiny_llama()).unwrap();
    let dict = dictionary(&model, 24, 3);
    let coder = |r: &mut [ActivationRecord]| dict.add_codes_all(r);
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let last = ids.len() - 1;
    let record = run_coded(&model, &dict, &ids);
    // The feature most active at the last token.
    let codes = record.codes(LAYER).unwrap();
    let atom = (0..24)
        .max_by(|&a, &b| codes.row(last)[a].total_cmp(&codes.row(last)[b]))
        .unwrap();
    let f = FeatureId::atom(LAYER, atom);

    // Example rows: each window's codes, as a full run of it gives.
    let short = &ids[..4];
    let rows = model
        .feature_rows_coded(&[&ids, short], f, Some(&coder), None)
        .unwrap();
    assert_eq!(rows[0].acts, maps::feature_activations(&record, f));
    let alone = run_coded(&model, &dict, short);
    assert_eq!(rows[1].acts, maps::feature_activations(&alone, f));
    assert!(rows[0].gate.is_none(), "a dictionary feature has no gate");

    // Occlusion: each earlier token replaced, the code at the last token read from a full run.
    let neutral = model.neutral_token();
    let o = model
        .occlusion_coded(&ids, f, last, Occlude::Replace(neutral), Some(&coder), None)
        .unwrap();
    assert_eq!(o.baseline, codes.row(last)[atom]);
    assert!(o.baseline > 0.0);
    let mut changed = 0;
    for p in 0..=last {
        let mut copy = ids.clone();
        copy[p] = neutral;
        let want = if ids[p] == neutral {
            o.baseline
        } else {
            maps::feature_activations(&run_coded(&model, &dict, &copy), f)[last]
        };
        assert_eq!(o.values[p], want, "position {p}");
        assert_eq!(o.deltas[p], want - o.baseline);
        changed += usize::from(o.deltas[p] != 0.0);
    }
    assert!(changed > 0, "some token matters");

    // Without the dictionary there is nothing to read: a message, not a panic.
    let err = model
        .feature_rows(&[&ids], f, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dictionary feature"), "{err}");
    let err = model
        .occlusion(&ids, f, last, Occlude::Delete, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("open the dictionary"), "{err}");
}

#[test]
fn a_dictionary_feature_s_direct_effect_is_its_atom_through_the_unembedding() {
    let model = Model::open(tiny_llama()).unwrap();
    let dict = dictionary(&model, 24, 3);
    let f = FeatureId::atom(LAYER, 7);
    let atom = dict.atom_direction(0, 7);
    let per_unit = hubel::effect::atom_direction(&model, f, atom.clone(), None).unwrap();
    assert_eq!(per_unit.vector, atom);
    assert_eq!(per_unit.activation, None);
    // At a position: the final norm's scale frozen there, the activation is the code.
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let last_block = HookPoint::block(model.config().n_layers - 1, BlockSite::ResidPost);
    let mut record = model
        .run(&ids, &Capture::points([HOOK, last_block]), &[])
        .unwrap()
        .record;
    dict.add_codes(&mut record);
    let pos = ids.len() - 1;
    let at = hubel::effect::atom_direction(&model, f, atom.clone(), Some((&record, pos))).unwrap();
    assert_eq!(
        at.activation,
        Some(record.codes(LAYER).unwrap().row(pos)[7])
    );
    let inv = model
        .final_norm_inv_scale(record.get(last_block).unwrap().row(pos))
        .unwrap();
    assert!(
        matches!(at.scale, hubel::model::EffectScale::Frozen { inv_scale } if inv_scale == inv)
    );
    // The effect itself: W_U · (γ ⊙ atom) · 1/scale, by hand for a few tokens.
    let effect = model.direct_effect(&at.vector, at.scale).unwrap();
    let per = model
        .direct_effect(&atom, hubel::model::EffectScale::PerUnit)
        .unwrap();
    for t in [0usize, 5, 17] {
        let want = per[t] * inv;
        assert!(
            (effect[t] - want).abs() <= 1e-5 * want.abs().max(1e-3),
            "token {t}: {} vs {want}",
            effect[t]
        );
    }
    let wrong = hubel::effect::atom_direction(&model, f, vec![1.0; 3], None);
    assert!(wrong.is_err());
    let err = hubel::effect::direction(&model, f, None).err().unwrap();
    assert!(err.to_string().contains("dictionary feature"), "{err}");
}

#[test]
fn a_dictionary_feature_edit_names_its_feature() {
    let model = Model::open(tiny_llama()).unwrap();
    let dict = dictionary(&model, 24, 3);
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let record = run_coded(&model, &dict, &ids);
    let x = &record.get(HOOK).unwrap().data;
    let codes = record.codes(LAYER).unwrap();
    let atom = (0..24).find(|&j| codes.row(2)[j] > 0.0).unwrap();
    let iv = edit::intervention(&dict, 0, atom, x, edit::Edit::Ablate)
        .unwrap()
        .unwrap();
    assert_eq!(
        FeatureId::of_intervention(&iv),
        Some(FeatureId::atom(LAYER, atom))
    );
    // Its code after the edit is gone at every position where it fired.
    let after = {
        let mut r = model
            .run(&ids, &Capture::points([HOOK]), &[iv])
            .unwrap()
            .record;
        dict.add_codes(&mut r);
        maps::feature_activations(&r, FeatureId::atom(LAYER, atom))
    };
    let before = maps::feature_activations(&record, FeatureId::atom(LAYER, atom));
    for (p, (a, b)) in after.iter().zip(&before).enumerate() {
        assert!(*a <= 0.05 * b.max(1e-3), "position {p}: {b} → {a}");
    }
}

fn next_run(w: &WorkerHandle) -> Box<hubel::app::worker::RunResult> {
    loop {
        match w.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Response::Run(r) => return r,
            Response::RunFailed { message, .. } | Response::Failed { message, .. } => {
                panic!("{message}")
            }
            _ => continue,
        }
    }
}

#[test]
fn the_worker_codes_both_sides_with_the_dictionary_in_use() {
    let model = Model::open(tiny_llama()).unwrap();
    let dict = Arc::new(dictionary(&model, 24, 3));
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let w = WorkerHandle::spawn(|| {});
    w.send(Request::Load(tiny_llama()));
    let request = |id, dictionary: Option<Arc<Dictionary>>, ivs| {
        Request::Run(RunRequest {
            id,
            text: TEXT.into(),
            interventions: ivs,
            continuation: 0,
            cancel: Arc::new(AtomicBool::new(false)),
            precision: Precision::Exact,
            dictionary,
        })
    };
    // Without a dictionary: no codes.
    w.send(request(1, None, Vec::new()));
    let plain = next_run(&w);
    assert!(plain.baseline.record.codes(LAYER).is_none());
    assert!(plain.dictionary.is_none());
    // With one: the cached baseline is coded, as a direct run coded by hand.
    w.send(request(2, Some(dict.clone()), Vec::new()));
    let coded = next_run(&w);
    assert_eq!(coded.layers_computed, 0, "the baseline was reused");
    assert!(Arc::ptr_eq(coded.dictionary.as_ref().unwrap(), &dict));
    let by_hand = run_coded(&model, &dict, &ids);
    assert_eq!(coded.baseline.record.codes(LAYER), by_hand.codes(LAYER));
    // An edit of one feature: the intervened side is coded too, and its code is gone.
    let x = &by_hand.get(HOOK).unwrap().data;
    let last = ids.len() - 1;
    let atom = (0..24)
        .find(|&j| by_hand.codes(LAYER).unwrap().row(last)[j] > 0.0)
        .unwrap();
    let iv = edit::intervention(&dict, 0, atom, x, edit::Edit::Ablate)
        .unwrap()
        .unwrap();
    w.send(request(3, Some(dict.clone()), vec![iv]));
    let edited = next_run(&w);
    let side = edited.intervened.as_ref().unwrap();
    let f = FeatureId::atom(LAYER, atom);
    let before = maps::feature_activations(&edited.baseline.record, f)[last];
    let after = maps::feature_activations(&side.record, f)[last];
    assert!(before > 0.0 && after <= 0.05 * before, "{before} → {after}");
    // The card's queries use the run's dictionary.
    w.send(Request::Card(hubel::app::worker::CardQuery::Rows {
        serial: 9,
        feature: f,
        windows: vec![(0, ids.clone())],
    }));
    let rows = loop {
        match w.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Response::Card { serial: 9, answer } => break answer.unwrap(),
            _ => continue,
        }
    };
    match rows {
        hubel::app::worker::CardAnswer::Rows(rows) => {
            assert_eq!(rows[0].1.acts, maps::feature_activations(&by_hand, f))
        }
        other => panic!("{other:?}"),
    }
    // Its direct effect too.
    w.send(Request::Effect(hubel::app::worker::EffectRequest {
        feature: f,
        position: None,
    }));
    loop {
        match w.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Response::Effect(e) => {
                // The atom's own promoted tokens: its direction through the unembedding.
                let d =
                    hubel::effect::atom_direction(&model, f, dict.atom_direction(0, atom), None)
                        .unwrap();
                let (up, _) = hubel::effect::ranked(&model, &d, 10).unwrap();
                assert_eq!(e.promoted.len(), 10);
                for ((_, got), want) in e.promoted.iter().zip(&up) {
                    assert_eq!(*got, want.value);
                }
                break;
            }
            Response::EffectFailed { message, .. } => panic!("{message}"),
            _ => continue,
        }
    }
    // Another dictionary in use: the card's queries use it from then on.
    let other = Arc::new(dictionary(&model, 8, 2));
    w.send(Request::SetDictionary(Some(other.clone())));
    w.send(Request::Card(hubel::app::worker::CardQuery::Rows {
        serial: 10,
        feature: FeatureId::atom(LAYER, 5),
        windows: vec![(0, ids.clone())],
    }));
    let rows = loop {
        match w.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Response::Card { serial: 10, answer } => break answer.unwrap(),
            _ => continue,
        }
    };
    let by_other = run_coded(&model, &other, &ids);
    match rows {
        hubel::app::worker::CardAnswer::Rows(rows) => assert_eq!(
            rows[0].1.acts,
            maps::feature_activations(&by_other, FeatureId::atom(LAYER, 5))
        ),
        other => panic!("{other:?}"),
    }
    // Back to no dictionary: the codes go.
    w.send(request(4, None, Vec::new()));
    let plain = next_run(&w);
    assert!(plain.baseline.record.codes(LAYER).is_none());
}

/// A dictionary feature's direct effect on a target (the heatmap's ranking of its features):
/// `code × atomᵀ·dir × 1/scale` at the attribution's position, by hand; the effects of all its
/// features sum to its reconstruction's (less the bias's) read along the same direction.
#[test]
fn dictionary_features_direct_effects_sum_to_the_reconstruction_s() {
    use hubel::circuits::dla::{self, DlaRequest};
    let model = Model::open(tiny_llama()).unwrap();
    let dict = dictionary(&model, 24, 3);
    let req = DlaRequest {
        text: TEXT.into(),
        target: "e".into(),
        versus: Some("o".into()),
        position: None,
        neurons: 0,
        interventions: Vec::new(),
    };
    let mut report = dla::run(&model, &req).unwrap();
    assert_eq!(report.layers[LAYER].effects(Basis::Dictionary), None);
    hubel::features::dictionary::effects::add_to(&model, &dict, &mut report).unwrap();
    let effects = report.layers[LAYER]
        .effects(Basis::Dictionary)
        .unwrap()
        .to_vec();
    assert_eq!(effects.len(), 24);
    assert!(report.layers[0].effects(Basis::Dictionary).is_none());
    // By hand: the residual at the position, its code, the direction target − versus.
    let ids = model.tokenizer().encode_ids(TEXT).unwrap();
    let pos = report.position;
    assert_eq!(pos, ids.len() - 1);
    let x = model
        .run(&ids, &Capture::points([HOOK]), &[])
        .unwrap()
        .record
        .get(HOOK)
        .unwrap()
        .row(pos)
        .to_vec();
    let code = &dict.encode(0, &x)[0];
    let mut dir = model.logit_direction(report.target.id).unwrap();
    let other = model
        .logit_direction(report.versus.as_ref().unwrap().id)
        .unwrap();
    dir.iter_mut().zip(&other).for_each(|(a, b)| *a -= b);
    let dot = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    };
    let inv = f64::from(report.inv_scale);
    for (j, &effect) in effects.iter().enumerate() {
        let c = code.iter().find(|e| e.0 as usize == j).map_or(0.0, |e| e.1);
        let want = f64::from(c) * dot(&dict.atom_direction(0, j), &dir) * inv;
        assert!(
            (f64::from(effect) - want).abs() <= 1e-5 * want.abs().max(1e-4),
            "L{LAYER}D{j}: {effect} vs {want}"
        );
        assert_eq!(
            effect == 0.0,
            c == 0.0,
            "only active features have an effect"
        );
    }
    let reconstruction: Vec<f32> = dict
        .decode(0, code)
        .iter()
        .zip(dict.decode(0, &Vec::new()))
        .map(|(a, b)| a - b)
        .collect();
    let sum: f64 = effects.iter().map(|&e| f64::from(e)).sum();
    let want = dot(&reconstruction, &dir) * inv;
    assert!(
        (sum - want).abs() <= 1e-4 * want.abs().max(1e-3),
        "{sum} vs {want}"
    );
}
