//! Offline labels (issue 8): a planted feature in an index whose statistics are built by hand
//! (it fires only on " left" in verb.motion stimuli) is labelled with that token, its context
//! and its lexname/hypernym, a randomly firing control is not; the hypergeometric tail against
//! exact values; search; a stale label file is refused; promoted tokens equal
//! `Model::direct_effect` on tiny random models (both norms); `hubel label` / `hubel search`
//! against the library.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hubel::corpus::wordnet::Sense;
use hubel::features::{Basis, FeatureId};
use hubel::model::config::Arch;
use hubel::model::random::{random_model, tiny_config};
use hubel::model::{EffectScale, Model};
use hubel::scan::labels::{
    self, hypergeom_sf, label_all, label_all_with, labels_path, LabelConfig, LabelError, Labels,
};
use hubel::scan::{
    self, Corpus, LayerStats, ScanConfig, ScanIndex, ScanOptions, StoredStimulus, Windows,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hubel-labels-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `x` after a trip through JSON (as a saved file or `--json` gives it back: serde_json's float
/// parsing may differ from the value in the last bit).
fn rt<T: serde::Serialize + serde::de::DeserializeOwned>(x: &T) -> T {
    serde_json::from_str(&serde_json::to_string(x).unwrap()).unwrap()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f32 {
    (splitmix(state) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

const WORDS: [&str; 20] = [
    "<s>", " the", " a", " cat", " dog", " ran", " left", " right", " turn", " house", " tree",
    " big", " small", " of", " to", " and", ".", " it", " went", " saw",
];
const LEFT: u32 = 6;
const TURN: u32 = 8;

/// The six groups of stimuli: lexname, part of speech, lexicographer file number, lemmas,
/// and the hypernym of the group's synsets (an offset in the same data file; 0: none).
const GROUPS: [(&str, &str, u32, &[&str], u32); 6] = [
    ("verb.motion", "verb", 38, &["walk", "run", "jog"], 50),
    ("verb.communication", "verb", 32, &["say", "tell"], 450),
    ("noun.animal", "noun", 5, &["dog", "cat"], 1050),
    ("noun.artifact", "noun", 6, &["house", "car"], 1150),
    ("noun.plant", "noun", 20, &["tree"], 1250),
    ("adj.all", "adjective", 0, &["big", "small"], 0),
];

/// Stimulus `i`'s synset (each stimulus its own): group, offset, lemma.
fn synset_of(i: usize) -> (usize, u32, &'static str) {
    let g = i % 6;
    let lemmas = GROUPS[g].3;
    (g, 10_000 + 10 * i as u32, lemmas[(i / 6) % lemmas.len()])
}

/// WordNet data files for the stimuli's synsets: the motion verbs are kinds of travel, the
/// communication verbs of communicate, animals (an organism), plants (an organism, through an
/// instance pointer `@i`), artifacts; adjectives have no hypernym.
fn write_wordnet(dir: &Path) {
    let mut verb = "\
  1 a licence header line
00000050 38 v 01 travel 0 000 | change location
00000450 32 v 01 communicate 0 000 | transmit information
"
    .to_string();
    let mut noun = "\
00001050 05 n 01 animal 0 001 @ 00001060 n 0000 | a living organism that moves
00001060 03 n 01 organism 0 000 | a living thing
00001150 06 n 01 artifact 0 000 | a man-made object
00001250 20 n 01 plant 0 001 @ 00001060 n 0000 | a living organism lacking the power of locomotion
"
    .to_string();
    let mut adj = String::new();
    for i in 0..STIMULI {
        let (g, offset, lemma) = synset_of(i);
        let (_, pos, lexnum, _, parent) = GROUPS[g];
        let letter = &pos[..1];
        let ptr = if parent == 0 {
            "000".to_string()
        } else {
            let sym = if g == 4 { "@i" } else { "@" };
            format!("001 {sym} {parent:08} {letter} 0000")
        };
        let line = format!("{offset:08} {lexnum:02} {letter} 01 {lemma} 0 {ptr} | sense {i}\n");
        match pos {
            "verb" => verb.push_str(&line),
            "noun" => noun.push_str(&line),
            _ => adj.push_str(&line),
        }
    }
    for (name, text) in [
        ("data.verb", verb.as_str()),
        ("data.noun", noun.as_str()),
        ("data.adj", adj.as_str()),
        ("data.adv", ""),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

const STIMULI: usize = 300;
const PLANTED: FeatureId = FeatureId {
    basis: Basis::Neurons,
    layer: 0,
    index: 0,
};
const CONTROL: FeatureId = FeatureId {
    basis: Basis::Neurons,
    layer: 0,
    index: 1,
};

/// An index of a tiny random model's shape whose layer-0 statistics are built from chosen
/// activations over 300 stimuli of word tokens (WORDS), each of its own synset: stimulus `i` is
/// in group `i % 6`, and
/// holds " turn left" when `(i / 6)` is even (25 stimuli of each group). Neuron 0 fires (≈3)
/// only on " left" in verb.motion stimuli; every other unit (neuron 1, the control) is uniform
/// in [−1, 1] everywhere.
fn planted_index() -> ScanIndex {
    let model = random_model(&tiny_config(Arch::Llama), 7).unwrap().0;
    let mut rng = 0x1abe1u64;
    let mut stimuli = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..STIMULI {
        let (g, offset, lemma) = synset_of(i);
        let (lexname, pos, ..) = GROUPS[g];
        let len = 8 + (splitmix(&mut rng) % 5) as usize;
        let filler: Vec<u32> = (0..20u32)
            .filter(|&t| t != 0 && t != LEFT && t != TURN)
            .collect();
        let mut t: Vec<u32> = (0..len)
            .map(|_| filler[(splitmix(&mut rng) % filler.len() as u64) as usize])
            .collect();
        if (i / 6) % 2 == 0 {
            let at = 1 + (splitmix(&mut rng) % (len as u64 - 2)) as usize;
            t[at] = TURN;
            t[at + 1] = LEFT;
        }
        let text: String = t.iter().map(|&x| WORDS[x as usize]).collect();
        stimuli.push(StoredStimulus {
            text,
            source: format!("planted:{}", i + 1),
            sense: Some(Sense {
                pos: pos.into(),
                offset,
                lexname: lexname.into(),
                lemmas: vec![lemma.into()],
                lex_ids: vec![0],
                kind: "gloss".into(),
                example: None,
            }),
        });
        tokens.push(t);
    }
    let corpus = Corpus {
        name: "planted".into(),
        stimuli: stimuli
            .iter()
            .map(|s| scan::Stimulus {
                text: s.text.clone(),
                source: s.source.clone(),
                sense: s.sense.clone(),
            })
            .collect(),
    };
    let cfg = ScanConfig {
        k: 20,
        ..ScanConfig::default()
    };
    let mut index = ScanIndex::new(&model, &corpus, &cfg, STIMULI);
    for (i, w) in WORDS.iter().enumerate() {
        index.vocab[i] = w.to_string();
    }
    let (d_mlp, heads) = (index.meta.d_mlp, index.meta.heads);
    let mut neurons = LayerStats::new(d_mlp, cfg.sizes(), 1);
    let mut head_stats = LayerStats::new(heads, cfg.sizes(), 2);
    index.windows = Windows::new();
    index.token_counts.iter_mut().for_each(|c| *c = 0);
    let mut noise = 0x5eedu64;
    for (i, t) in tokens.iter().enumerate() {
        let motion = i % 6 == 0;
        let mut acts = vec![0f32; t.len() * d_mlp];
        let mut hacts = vec![0f32; t.len() * heads];
        for (p, &tok) in t.iter().enumerate() {
            for u in 0..d_mlp {
                acts[p * d_mlp + u] = uniform(&mut noise);
            }
            acts[p * d_mlp] = if motion && tok == LEFT {
                3.0 + 0.01 * (i % 7) as f32
            } else {
                -0.1
            };
            for h in 0..heads {
                hacts[p * heads + h] = uniform(&mut noise).abs();
            }
            if p >= 1 {
                index.token_counts[tok as usize] += 1;
            }
        }
        neurons.add_window(i as u32, t, &acts, 1, cfg.threshold);
        head_stats.add_window(i as u32, t, &hacts, 1, cfg.threshold);
        index.windows.push(t, i as u32, 0);
        index.meta.tokens_done += t.len() as u64;
        index.meta.positions_counted += t.len() as u64 - 1;
    }
    index.neurons[0] = neurons;
    index.heads[0] = head_stats;
    index.stimuli = stimuli;
    index.meta.stimuli_done = STIMULI;
    index.meta.windows_done = STIMULI;
    index.meta.complete = true;
    index
}

#[test]
fn hypergeometric_tail_matches_exact_values() {
    // P(X ≥ k), X ~ Hypergeometric(N, K, n): Σ_{i≥k} C(K,i)·C(N−K,n−i) / C(N,n), computed
    // exactly with Python's fractions and math.comb (scipy.stats.hypergeom.sf(k−1, N, K, n)
    // gives the same).
    for (k, big_n, big_k, n, want) in [
        (5, 50, 10, 8, 0.0049515938098860885),
        (20, 300, 50, 20, 6.283531560811065e-18),
        (3, 2000, 40, 20, 0.006676223965035544),
        (1, 10, 3, 4, 0.8333333333333334),
        (7, 1000, 7, 7, 5.147194091799413e-18),
    ] {
        let got = hypergeom_sf(k, big_n, big_k, n);
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "sf({k}; {big_n}, {big_k}, {n}) = {got}, want {want}"
        );
    }
    assert_eq!(hypergeom_sf(0, 10, 3, 4), 1.0);
    // More in the category than it holds: impossible.
    assert_eq!(hypergeom_sf(4, 10, 3, 4), 0.0);
}

#[test]
fn planted_feature_is_labelled_and_the_control_is_not() {
    let index = planted_index();
    let wn = tmp("wordnet");
    write_wordnet(&wn);
    let labels = label_all(&index, None, Some(&wn), None).unwrap();
    assert!(labels.hypernyms && !labels.promoted);
    assert_eq!(labels.labels.len(), 3 * (64 + 4));
    let l = labels.get(&PLANTED).unwrap();
    assert_eq!(l.feature, "L0N0");
    // Firing tokens: " left" alone; it fires on all 25 verb.motion " left"s and nowhere else.
    assert_eq!(l.tokens.len(), 1, "{:?}", l.tokens);
    let t = &l.tokens[0];
    assert_eq!(
        (t.token.as_str(), t.id, t.count, t.corpus_count),
        (" left", LEFT, 25, 150)
    );
    let total: u64 = index.token_counts.iter().sum();
    let want = (25.5f64 / 0.5).ln() - (150.5 / (total as f64 - 150.0 + 0.5)).ln();
    // Kept to 4 decimals.
    assert!(
        (t.log_odds - want).abs() <= 5e-5,
        "{} vs {want}",
        t.log_odds
    );
    // Score: precision 25/150, recall 25/25.
    assert_eq!(l.score.tokens, 1);
    assert!((l.score.precision - 25.0 / 150.0).abs() <= 5e-5);
    assert_eq!(l.score.recall, 1.0);
    let f1 = 2.0 * (1.0 / 6.0) / (1.0 / 6.0 + 1.0);
    assert!((l.score.f1 - f1).abs() <= 5e-5);
    // Context: every peak is " left" after " turn".
    assert_eq!(l.examples, 20);
    assert_eq!(l.peaks[0].token, " left");
    assert_eq!(l.peaks[0].count, 20);
    assert_eq!(
        (
            l.before[0].first.as_str(),
            l.before[0].second.as_str(),
            l.before[0].count
        ),
        (" turn", " left", 20)
    );
    // Enrichment: all 20 top stimuli are verb.motion (50 of 300) and kinds of travel.
    let find = |kind: &str, name: &str| {
        l.enrichment
            .iter()
            .find(|e| e.kind == kind && e.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {:#?}", l.enrichment))
    };
    let e = find("lexname", "verb.motion");
    assert_eq!((e.k, e.n, e.big_k, e.big_n), (20, 20, 50, 300));
    // The same numbers as the exact value above (p-values kept to 3 significant digits).
    assert!((e.p / 6.283531560811065e-18 - 1.0).abs() < 1e-3, "{}", e.p);
    assert!((e.p_corrected / (e.p * l.tested as f64) - 1.0).abs() < 1e-2);
    assert!(e.p_corrected < 0.01);
    let h = find("hypernym", "travel (v00000050)");
    assert_eq!((h.k, h.big_k), (20, 50));
    // Nothing that is not over-represented: no noun, no animal.
    assert!(l
        .enrichment
        .iter()
        .all(|e| e.name != "noun" && !e.name.contains("animal")));
    // A synset counts once: two top stimuli of one synset (a gloss and its example) are one
    // unit of the foreground and of the background.
    let mut dup = index.clone();
    let top = index.examples(&PLANTED, false, 20).unwrap();
    let (a, b) = (top[0].stimulus, top[1].stimulus);
    dup.stimuli[b].sense = dup.stimuli[a].sense.clone();
    let d = label_all(&dup, None, Some(&wn), None).unwrap();
    let e = d
        .get(&PLANTED)
        .unwrap()
        .enrichment
        .iter()
        .find(|e| e.name == "verb.motion")
        .unwrap()
        .clone();
    assert_eq!((e.k, e.n, e.big_k, e.big_n), (19, 19, 49, 299));
    assert!(l.text.contains("\" left\" (after \" turn\""), "{}", l.text);
    assert!(l.text.contains("verb.motion p="), "{}", l.text);

    // The control fires at random: categories were tested, none is significant.
    let c = labels.get(&CONTROL).unwrap();
    assert!(c.tested > 0 && c.examples == 20);
    assert!(c.enrichment.is_empty(), "{:#?}", c.enrichment);
    // Random firing is not selective: no token is much more likely where it fires.
    assert!(c.tokens.iter().all(|t| t.log_odds < 0.5), "{:?}", c.tokens);
    assert!(!c.text.contains("verb.motion"), "{}", c.text);

    // Without the WordNet files: the sense's categories, no hypernyms.
    let plain = label_all(&index, None, None, None).unwrap();
    let l2 = plain.get(&PLANTED).unwrap();
    assert!(!plain.hypernyms);
    assert!(l2.enrichment.iter().any(|e| e.name == "verb.motion"));
    assert!(l2.enrichment.iter().all(|e| e.kind != "hypernym"));
    assert!(l2.tested < l.tested);
    let _ = std::fs::remove_dir_all(&wn);
}

#[test]
fn search_finds_the_planted_feature_first() {
    let index = planted_index();
    let labels = label_all(&index, None, None, None).unwrap();
    for q in ["left", " left"] {
        let hits = labels.search(q, None, 5);
        assert_eq!(hits[0].feature, "L0N0", "{q:?}: {hits:#?}");
        assert_eq!(hits[0].kind, "token");
        // Ranked by the token's log-odds.
        assert!(hits
            .windows(2)
            .all(|w| w[0].score >= w[1].score || w[1].kind != "token"));
    }
    // Exact token text: part of a token is not a token match.
    assert!(labels
        .search("eft", None, 5)
        .iter()
        .all(|h| h.kind == "words"));
    // Without firing tokens (a minimum count above any), the top examples' peaks still find it.
    let cfg = LabelConfig {
        min_count: 1000,
        ..LabelConfig::default()
    };
    let peaks = label_all_with(&index, None, None, &cfg, None).unwrap();
    assert!(peaks.get(&PLANTED).unwrap().tokens.is_empty());
    let hits = peaks.search("left", None, 5);
    assert_eq!(
        (
            hits[0].feature.as_str(),
            hits[0].kind.as_str(),
            hits[0].score
        ),
        ("L0N0", "peak", 1.0),
        "{hits:#?}"
    );
    assert!(peaks
        .get(&PLANTED)
        .unwrap()
        .text
        .starts_with("peaks on \" left\" (after \" turn\""));
    // Words of the label: the enrichment's lexname.
    let hits = labels.search("motion", None, 5);
    assert_eq!(hits[0].feature, "L0N0", "{hits:#?}");
    assert_eq!(hits[0].kind, "words");
    // Basis filter.
    let heads = labels.search("left", Some(Basis::Heads), 50);
    assert!(heads.iter().all(|h| h.feature.contains('H')), "{heads:#?}");
    assert!(labels.search("left", None, 1).len() == 1);
}

#[test]
fn stale_label_file_is_refused() {
    let mut index = planted_index();
    let labels = label_all(&index, None, None, None).unwrap();
    let dir = tmp("stale");
    let index_path = dir.join("x.scan.safetensors");
    let path = labels_path(&index_path);
    assert_eq!(path, dir.join("x.scan.safetensors.labels.json"));
    labels.save(&path).unwrap();
    let back = Labels::load_for(&path, &index).unwrap();
    assert_eq!(back, rt(&labels));
    // The scan went on: more tokens.
    index.meta.tokens_done += 7;
    match Labels::load_for(&path, &index) {
        Err(e @ LabelError::Stale { .. }) => {
            let m = e.to_string();
            assert!(m.contains("tokens") && m.contains("--recompute"), "{m}");
        }
        other => panic!("not refused: {other:?}"),
    }
    index.meta.tokens_done -= 7;
    index.meta.corpus_sha256 = "0".repeat(64);
    let e = Labels::load_for(&path, &index).unwrap_err().to_string();
    assert!(e.contains("corpus"), "{e}");
    // Not a label file.
    std::fs::write(&path, b"{}").unwrap();
    assert!(matches!(
        Labels::load(&path),
        Err(LabelError::Format { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

const TEXTS: &[&str] = &[
    "She left the party early.",
    "Turn left at the second light.",
    "The cat sat on the mat, and the dog sat on the log.",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "He left his keys on the table.",
    "What is left over after the party?",
    "The quick brown fox jumps over the lazy dog.",
];

fn small_scan(model: &Model) -> ScanIndex {
    let corpus = Corpus::from_texts("small", TEXTS);
    let opts = ScanOptions {
        config: ScanConfig {
            k: 4,
            ..ScanConfig::default()
        },
        ..ScanOptions::default()
    };
    scan::run(model, &corpus, &opts, None).unwrap()
}

#[test]
fn promoted_tokens_equal_direct_effect() {
    for arch in [Arch::Llama, Arch::Gpt2] {
        let model = random_model(&tiny_config(arch), 11).unwrap().0;
        let index = small_scan(&model);
        // Row blocks of 7: 64 neurons in 10 blocks, the last short.
        let cfg = LabelConfig {
            promoted_rows: 7,
            ..LabelConfig::default()
        };
        let labels = label_all_with(&index, Some(&model), None, &cfg, None).unwrap();
        assert!(labels.promoted);
        let info = model.info();
        for layer in 0..info.layers {
            for n in 0..info.d_mlp {
                let d = model.neuron_out_direction(layer, n).unwrap();
                let e = model.direct_effect(&d, EffectScale::PerUnit).unwrap();
                let mut desc: Vec<u32> = (0..e.len() as u32).collect();
                desc.sort_by(|&a, &b| e[b as usize].total_cmp(&e[a as usize]).then(a.cmp(&b)));
                let mut asc: Vec<u32> = (0..e.len() as u32).collect();
                asc.sort_by(|&a, &b| e[a as usize].total_cmp(&e[b as usize]).then(a.cmp(&b)));
                let l = labels.get(&FeatureId::neuron(layer, n)).unwrap();
                let pairs = |ids: &[u32]| -> Vec<(u32, f32)> {
                    ids.iter().map(|&i| (i, e[i as usize])).collect()
                };
                let got: Vec<(u32, f32)> = l.promotes.iter().map(|t| (t.id, t.logit)).collect();
                assert_eq!(got, pairs(&desc[..5]), "{arch:?} L{layer}N{n} promotes");
                let got: Vec<(u32, f32)> = l.suppresses.iter().map(|t| (t.id, t.logit)).collect();
                assert_eq!(got, pairs(&asc[..5]), "{arch:?} L{layer}N{n} suppresses");
                let want = pairs(&desc[..1]);
                assert_eq!(l.promotes[0].token, index.vocab[want[0].0 as usize].clone());
                assert!(l.text.contains("→ promotes"), "{}", l.text);
            }
            // Heads have no promoted tokens.
            assert!(labels
                .get(&FeatureId::head(layer, 0))
                .unwrap()
                .promotes
                .is_empty());
        }
    }
    // An index of another model is refused (random models have no file, so no SHA-256: the
    // index's is changed instead).
    let model = random_model(&tiny_config(Arch::Llama), 11).unwrap().0;
    let mut index = small_scan(&model);
    index.meta.model_sha256 = "f".repeat(64);
    assert!(matches!(
        label_all(&index, Some(&model), None, None),
        Err(LabelError::Scan(scan::ScanError::WrongModel { .. }))
    ));
}

fn hubel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(args)
        .output()
        .expect("hubel runs")
}

#[test]
fn cli_label_and_search_agree_with_the_library() {
    let dir = tmp("cli");
    let data = dir.join("data");
    let file = dir.join("corpus.txt");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("{} {i}", TEXTS[i % TEXTS.len()]))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let index_path = dir.join("small.scan.safetensors");
    let model_dir = common::fixtures().join("tiny_llama").join("model");
    let s = |p: &Path| p.display().to_string();
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = hubel(&[
        "--data-dir",
        &s(&data),
        "scan",
        "--model",
        &s(&model_dir),
        "--corpus",
        &s(&file),
        "--limit",
        "30",
        "--out",
        &s(&index_path),
    ]);
    ok(&out);
    // `label` computes every label once (with the model: promoted tokens) and keeps them.
    let out = hubel(&[
        "--data-dir",
        &s(&data),
        "label",
        "L1N5",
        "--index",
        &s(&index_path),
        "--model",
        &s(&model_dir),
        "--json",
    ]);
    ok(&out);
    let got: labels::Label = serde_json::from_slice(&out.stdout).unwrap();
    let model = Model::open(&model_dir).unwrap();
    let index = ScanIndex::load(&index_path).unwrap();
    let lib = label_all(&index, Some(&model), None, None).unwrap();
    let want = lib.get(&FeatureId::neuron(1, 5)).unwrap();
    assert_eq!(got, rt(want));
    assert!(!got.promotes.is_empty());
    let saved = Labels::load_for(&labels_path(&index_path), &index).unwrap();
    assert_eq!(saved.labels, rt(&lib.labels));
    // `search` reads the saved labels: the same hits as the library's.
    let query = lib
        .labels
        .iter()
        .find_map(|l| l.tokens.first())
        .map(|t| t.token.clone())
        .expect("some feature has a firing token");
    let out = hubel(&[
        "--data-dir",
        &s(&data),
        "search",
        &query,
        "--index",
        &s(&index_path),
        "--n",
        "7",
        "--json",
    ]);
    ok(&out);
    let hits: Vec<labels::SearchHit> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits, rt(&lib.search(&query, None, 7)));
    assert!(!hits.is_empty());
    // A label file of another scan is refused with a clear message.
    let mut other = index.clone();
    other.meta.tokens_done += 1;
    label_all(&other, None, None, None)
        .unwrap()
        .save(&labels_path(&index_path))
        .unwrap();
    let out = hubel(&["label", "L1N5", "--index", &s(&index_path)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another scan") && err.contains("--recompute"),
        "{err}"
    );
    // Without a usable model: labels without promoted tokens, and it says so.
    let out = hubel(&[
        "--data-dir",
        &s(&data),
        "label",
        "L1N5",
        "--index",
        &s(&index_path),
        "--model",
        &s(&dir.join("missing.gguf")),
        "--recompute",
        "--json",
    ]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without promoted tokens"), "{err}");
    let got: labels::Label = serde_json::from_slice(&out.stdout).unwrap();
    assert!(got.promotes.is_empty());
    assert_eq!(got.tokens, rt(&want.tokens));
    let _ = std::fs::remove_dir_all(&dir);
}
