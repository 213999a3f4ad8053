//! The corpus scan (issue 8, engine half): its statistics against brute force over every
//! position of a small corpus on a tiny random model, position 0 left out, the index file's round
//! trip and model key, resuming, the WordNet reader on lines in the real format, and
//! `hubel scan` + `hubel top --json` against the library.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hubel::features::FeatureId;
use hubel::hooks::{BlockSite, Capture, HookPoint};
use hubel::model::config::Arch;
use hubel::model::random::{random_model, tiny_config};
use hubel::model::Model;
use hubel::scan::stats::{BINS, EXP0, GROUPS, GROUP_BINS};
use hubel::scan::{self, Corpus, Example, ScanConfig, ScanError, ScanIndex, ScanOptions};

const TEXTS: &[&str] = &[
    "She left the party early.",
    "Turn left at the second light.",
    "The cat sat on the mat, and the dog sat on the log.",
    "x",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24.",
    "A long sentence that runs past the tiny model's context of sixty-four tokens, so that it is cut into windows, each scanned as its own sequence by the model.",
    "def f(x): return x * 2",
    "Il pleut des cordes ce matin.",
    "He left his keys on the table.",
    "What is left over after the party?",
    "1 2 3",
    "The quick brown fox jumps over the lazy dog.",
];

fn tiny() -> Model {
    random_model(&tiny_config(Arch::Llama), 7).unwrap().0
}

fn config() -> ScanConfig {
    ScanConfig {
        k: 4,
        per_group: 3,
        batch_tokens: 90,
        ..ScanConfig::default()
    }
}

fn scan(
    model: &Model,
    corpus: &Corpus,
    cfg: ScanConfig,
    out: Option<PathBuf>,
    limit: Option<usize>,
) -> ScanIndex {
    let opts = ScanOptions {
        config: cfg,
        limit,
        out,
        ..ScanOptions::default()
    };
    scan::run(model, corpus, &opts, None).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hubel-scan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Per window, per layer: `[len, units]` values of neurons and of head norms, each window run
/// alone with `Model::run`.
struct Brute {
    windows: Vec<Vec<u32>>,
    neurons: Vec<Vec<Vec<f32>>>,
    heads: Vec<Vec<Vec<f32>>>,
}

fn brute(model: &Model, corpus: &Corpus, cfg: &ScanConfig) -> Brute {
    let ws = scan::windows(model, corpus, usize::MAX, cfg).unwrap();
    let info = model.info();
    let capture = Capture::sites([BlockSite::MlpPost, BlockSite::Z]);
    let mut b = Brute {
        windows: Vec::new(),
        neurons: Vec::new(),
        heads: Vec::new(),
    };
    for (_, _, tokens) in ws {
        let out = model.run(&tokens, &capture, &[]).unwrap();
        let mut n = Vec::new();
        let mut h = Vec::new();
        for l in 0..info.layers {
            n.push(
                out.record
                    .get(HookPoint::block(l, BlockSite::MlpPost))
                    .unwrap()
                    .data
                    .to_vec(),
            );
            let z = &out
                .record
                .get(HookPoint::block(l, BlockSite::Z))
                .unwrap()
                .data;
            let d = info.d_head;
            h.push(
                z.chunks_exact(d)
                    .map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
                    .collect(),
            );
        }
        b.windows.push(tokens);
        b.neurons.push(n);
        b.heads.push(h);
    }
    b
}

/// Checks one basis of `index` against brute force.
fn check_basis(index: &ScanIndex, b: &Brute, heads: bool, first: usize) {
    let (stats, units, values) = if heads {
        (&index.heads, index.meta.heads, &b.heads)
    } else {
        (&index.neurons, index.meta.d_mlp, &b.neurons)
    };
    let name = if heads { "head" } else { "neuron" };
    check_layers(index, stats, units, &b.windows, values, first, name);
}

/// Checks layers of statistics (`stats[l]`, `units` each) against brute-force values
/// (`values[window][l]`, `[len, units]`).
fn check_layers(
    index: &ScanIndex,
    stats: &[hubel::scan::stats::LayerStats],
    units: usize,
    windows: &[Vec<u32>],
    values: &[Vec<Vec<f32>>],
    first: usize,
    name: &str,
) {
    let cfg = &index.meta.config;
    assert!(!stats.is_empty(), "{name}: no layers to check");
    assert_eq!(stats.len(), values[0].len(), "{name}: layers");
    for (l, stats) in stats.iter().enumerate() {
        for u in 0..units {
            let what = format!("{name} L{l} unit {u}");
            let mut all = Vec::new(); // (window, pos, act, token)
            let mut best = Vec::new();
            let mut worst = Vec::new();
            for (w, tokens) in windows.iter().enumerate() {
                let acts = &values[w][l];
                let mut hi: Option<Example> = None;
                let mut lo: Option<Example> = None;
                for (p, &t) in tokens.iter().enumerate().skip(first) {
                    let e = Example {
                        window: w as u32,
                        pos: p as u32,
                        act: acts[p * units + u],
                    };
                    all.push((e, t));
                    if hi.is_none_or(|h| e.act > h.act) {
                        hi = Some(e);
                    }
                    if lo.is_none_or(|h| e.act < h.act) {
                        lo = Some(e);
                    }
                }
                best.extend(hi);
                worst.extend(lo);
            }
            // Top and lowest: one per window, ties to the earlier window.
            best.sort_by(|a, b| {
                b.act
                    .partial_cmp(&a.act)
                    .unwrap()
                    .then(a.window.cmp(&b.window))
            });
            worst.sort_by(|a, b| {
                a.act
                    .partial_cmp(&b.act)
                    .unwrap()
                    .then(a.window.cmp(&b.window))
            });
            best.truncate(cfg.k);
            worst.truncate(cfg.k);
            assert_eq!(stats.top(u), best, "{what}: top");
            assert_eq!(stats.lowest(u), worst, "{what}: lowest");
            // Counts, density, mean, range.
            assert_eq!(stats.n[u], all.len() as u64, "{what}: n");
            let fired = all.iter().filter(|(e, _)| e.act > cfg.threshold).count() as u64;
            assert_eq!(stats.fired[u], fired, "{what}: fired");
            let min = all.iter().map(|(e, _)| e.act).fold(f32::INFINITY, f32::min);
            let max = all
                .iter()
                .map(|(e, _)| e.act)
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!((stats.min[u], stats.max[u]), (min, max), "{what}: range");
            let sum: f64 = all.iter().map(|(e, _)| f64::from(e.act)).sum();
            assert!(
                (stats.sum[u] - sum).abs() <= 1e-9 * sum.abs().max(1.0),
                "{what}: sum"
            );
            // Histogram: the smallest power-of-two width ≥ 2^EXP0 whose aligned 50-bin window
            // holds [min, max], computed here from scratch.
            let mut e = EXP0;
            let (start, w) = loop {
                let w = 2f64.powi(e);
                let lo = (f64::from(min) / w).floor() as i64;
                let hi = (f64::from(max) / w).floor() as i64;
                let a = lo.div_euclid(5) * 5;
                if hi < a + BINS as i64 {
                    break (a, w);
                }
                e += 1;
            };
            let mut hist = [0u32; BINS];
            for (x, _) in &all {
                hist[((f64::from(x.act) / w).floor() as i64 - start) as usize] += 1;
            }
            let (left, width, got) = stats.histogram(u);
            assert_eq!((left, width), (start as f64 * w, w), "{what}: bins");
            assert_eq!(got, &hist[..], "{what}: histogram");
            // Quantile groups: counts are the 5-bin sums; samples are distinct members.
            for (g, ((a, b), n, ex)) in stats.groups(u).into_iter().enumerate() {
                let want: u32 = hist[g * GROUP_BINS..(g + 1) * GROUP_BINS].iter().sum();
                assert_eq!(n, want, "{what}: group {g} count");
                assert_eq!(
                    ex.len(),
                    (n as usize).min(cfg.per_group),
                    "{what}: group {g} sample"
                );
                for x in &ex {
                    assert!(
                        f64::from(x.act) >= a && f64::from(x.act) < b,
                        "{what}: group {g} {x:?}"
                    );
                    assert!(
                        all.iter().any(|(e, _)| e == x),
                        "{what}: {x:?} is a real position"
                    );
                }
                let mut keys: Vec<(u32, u32)> = ex.iter().map(|e| (e.window, e.pos)).collect();
                keys.dedup();
                keys.sort();
                keys.dedup();
                assert_eq!(keys.len(), ex.len(), "{what}: group {g} repeats an example");
            }
            assert_eq!(stats.groups(u).len(), GROUPS);
            // Firing tokens: Space-Saving bounds (true ≤ count ≤ true + err).
            for (tok, count, err) in stats.firing_tokens(u) {
                let truth = all
                    .iter()
                    .filter(|(e, t)| *t == tok && e.act > cfg.threshold)
                    .count() as u32;
                assert!(
                    truth <= count && count <= truth + err,
                    "{what}: token {tok}: {truth} vs {count}±{err}"
                );
            }
        }
    }
}

#[test]
fn statistics_match_brute_force_over_every_position() {
    let model = tiny();
    let corpus = Corpus::from_texts("t", TEXTS);
    let cfg = config();
    let index = scan(&model, &corpus, cfg.clone(), None, None);
    let b = brute(&model, &corpus, &cfg);
    assert!(
        b.windows.len() > TEXTS.len(),
        "a long stimulus is split into windows"
    );
    assert!(b.windows.len() > cfg.k, "more windows than the heaps hold");
    assert_eq!(index.windows.len(), b.windows.len());
    for (w, t) in b.windows.iter().enumerate() {
        assert_eq!(index.windows.get(w), &t[..]);
    }
    check_basis(&index, &b, false, 1);
    check_basis(&index, &b, true, 1);
    // Corpus token frequencies over the counted positions.
    let mut counts = vec![0u64; model.info().vocab];
    for t in &b.windows {
        for &id in &t[1..] {
            counts[id as usize] += 1;
        }
    }
    assert_eq!(index.token_counts, counts);
    assert!(index.meta.complete);
}

#[test]
fn position_zero_is_left_out_unless_asked() {
    let model = tiny();
    let corpus = Corpus::from_texts("t", TEXTS);
    let index = scan(&model, &corpus, config(), None, None);
    let tokens: u64 = index.meta.tokens_done;
    let windows = index.windows.len() as u64;
    assert_eq!(index.meta.positions_counted, tokens - windows);
    assert!(index.meta.position0.contains("attention sink"));
    for stats in index.neurons.iter().chain(&index.heads) {
        assert!(stats.n.iter().all(|&n| n == tokens - windows));
        for u in 0..stats.units {
            let groups: Vec<Example> = stats.groups(u).into_iter().flat_map(|g| g.2).collect();
            for e in stats.top(u).iter().chain(&stats.lowest(u)).chain(&groups) {
                assert_ne!(e.pos, 0, "{e:?}");
            }
        }
    }
    // Included on request: every position counted, and checked against brute force.
    let cfg = ScanConfig {
        exclude_first: false,
        ..config()
    };
    let all = scan(&model, &corpus, cfg.clone(), None, None);
    assert_eq!(all.meta.positions_counted, tokens);
    check_basis(&all, &brute(&model, &corpus, &cfg), false, 0);
}

#[test]
fn index_round_trip_resume_and_model_key() {
    let dir = tmp("index");
    let path = dir.join("i.scan.safetensors");
    let model =
        hubel::model::Model::open(common::fixtures().join("tiny_llama").join("model")).unwrap();
    let corpus = Corpus::from_texts("t", TEXTS);
    let full = scan(&model, &corpus, config(), Some(path.clone()), None);
    let t = std::time::Instant::now();
    let loaded = ScanIndex::load(&path).unwrap();
    assert!(t.elapsed().as_secs_f64() < 1.0);
    assert_eq!(loaded, full);
    loaded.check_model(model.info()).unwrap();
    let f = FeatureId::neuron(1, 5);
    assert_eq!(loaded.summary(&f, 3).unwrap(), full.summary(&f, 3).unwrap());

    // Resumed in two parts: the same statistics (the sampler's state is saved too).
    let part = dir.join("p.scan.safetensors");
    let first = scan(&model, &corpus, config(), Some(part.clone()), Some(5));
    assert_eq!(first.meta.stimuli_done, 5);
    assert!(!first.meta.complete);
    let resumed = scan(&model, &corpus, config(), Some(part.clone()), None);
    assert_eq!(resumed.neurons, full.neurons);
    assert_eq!(resumed.heads, full.heads);
    assert_eq!(resumed.windows, full.windows);
    assert_eq!(resumed.token_counts, full.token_counts);

    // Another model is refused, with both models named.
    let other =
        hubel::model::Model::open(common::fixtures().join("tiny_gpt2").join("model")).unwrap();
    let e = loaded.check_model(other.info()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ScanError::WrongModel { .. }));
    assert!(
        msg.contains(&model.info().sha256) && msg.contains(&other.info().sha256),
        "{msg}"
    );
    let opts = ScanOptions {
        config: config(),
        out: Some(path.clone()),
        ..ScanOptions::default()
    };
    assert!(matches!(
        scan::run(&other, &corpus, &opts, None),
        Err(ScanError::WrongModel { .. })
    ));
    // Another corpus into the same file is refused too.
    let c2 = Corpus::from_texts("u", &TEXTS[..3]);
    assert!(matches!(
        scan::run(&model, &c2, &opts, None),
        Err(ScanError::Mismatch { .. })
    ));
    // A damaged file is an error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        ScanIndex::load(&bad),
        Err(ScanError::Format { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

const SAMPLE_VERB: &str = "  1 This software and database is being provided to you, the LICENSEE, by  
  2 Princeton University under the following license.  
00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 * 00004227 v 0000 + 03121972 a 0301 + 00832852 n 0303 + 04087945 n 0301 + 04257960 n 0105 + 00832852 n 0101 ^ 00004227 v 0103 ^ 00005041 v 0103 $ 00002325 v 0000 $ 00002573 v 0000 ~ 00002573 v 0000 ~ 00002724 v 0000 ~ 00002942 v 0000 ~ 00003826 v 0000 ~ 00004032 v 0000 ~ 00004227 v 0000 ~ 00005041 v 0000 ~ 00006697 v 0000 ~ 00007328 v 0000 ~ 00017024 v 0000 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; \"I can breathe better when the air is clean\"; \"The patient is respiring\"  
00002573 29 v 01 respire 2 003 $ 00001740 v 0000 @ 00001740 v 0000 + 03121972 a 0101 01 + 02 00 | breathe easily again, as after exertion or anxiety  
";
const SAMPLE_ADJ: &str = "  1 This software and database is being provided to you, the LICENSEE, by  
00001740 00 a 01 able 0 005 = 05207437 n 0000 = 05624029 n 0000 + 05624029 n 0101 + 05207437 n 0101 ! 00002098 a 0101 | (usually followed by `to') having the necessary means or skill or know-how or authority to do something; \"able to swim\"; \"she was able to program her computer\"  
00002312 00 s 02 left(a) 0 far_left 1 001 & 00002098 a 0000 | being on the left side; \"left hand\"  
";
const SAMPLE_NOUN: &str = "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 | that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  
";
const SAMPLE_ADV: &str = "00001740 02 r 01 a_cappella 0 001 \\ 02926236 a 0101 | without musical accompaniment; \"they performed a cappella\"  
";

#[test]
fn wordnet_files_become_stimuli_with_their_senses() {
    let dir = tmp("wordnet");
    for (name, text) in [
        ("data.noun", SAMPLE_NOUN),
        ("data.verb", SAMPLE_VERB),
        ("data.adj", SAMPLE_ADJ),
        ("data.adv", SAMPLE_ADV),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let corpus = Corpus::wordnet(&dir).unwrap();
    // Glosses: 1 noun + 2 verbs + 2 adjectives + 1 adverb; examples: 2 + 2 + 1 + 1.
    assert_eq!(corpus.stimuli.len(), 12);
    let find = |t: &str| {
        corpus
            .stimuli
            .iter()
            .find(|s| s.text == t)
            .unwrap_or_else(|| panic!("no stimulus {t:?}"))
    };
    let s = find("The patient is respiring");
    let sense = s.sense.as_ref().unwrap();
    assert_eq!(sense.pos, "verb");
    assert_eq!(sense.offset, 1740);
    assert_eq!(sense.lexname, "verb.body");
    assert_eq!(
        sense.lemmas,
        ["breathe", "take a breath", "respire", "suspire"]
    );
    assert_eq!(sense.lex_ids, [0, 0, 0, 3]);
    assert_eq!((sense.kind.as_str(), sense.example), ("example", Some(2)));
    assert!(s.source.contains("verb sense of \"breathe"), "{}", s.source);
    let left = find("being on the left side").sense.as_ref().unwrap();
    assert_eq!(
        (left.pos.as_str(), left.kind.as_str()),
        ("adjective", "gloss")
    );
    assert_eq!(left.lemmas, ["left", "far left"]);
    find("left hand");
    find("(usually followed by `to') having the necessary means or skill or know-how or authority to do something");
    find("that which is perceived or known or inferred to have its own distinct existence (living or nonliving)");
    find("they performed a cappella");
    // A missing file says how to get the corpus.
    std::fs::remove_file(dir.join("data.adv")).unwrap();
    let e = Corpus::wordnet(&dir).unwrap_err().to_string();
    assert!(e.contains("hubel fetch --corpus"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_corpus_skips_blank_lines_and_reads_folders() {
    let dir = tmp("text");
    std::fs::write(dir.join("b.txt"), "one\n\n  \ntwo\n").unwrap();
    std::fs::write(dir.join("a.txt"), "zero\n").unwrap();
    std::fs::write(dir.join("skip.md"), "not me\n").unwrap();
    let c = Corpus::text(&dir).unwrap();
    let texts: Vec<&str> = c.stimuli.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["zero", "one", "two"]);
    assert_eq!(c.stimuli[2].source, "b.txt:4");
    let f = Corpus::text(&dir.join("b.txt")).unwrap();
    assert_eq!(f.stimuli.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn hubel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(args)
        .output()
        .expect("hubel runs")
}

#[test]
fn cli_scan_then_top_agree_with_the_library() {
    let dir = tmp("cli");
    let data = dir.join("data");
    let file = dir.join("corpus.txt");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("{} {i}", TEXTS[i % TEXTS.len()]))
        .collect();
    std::fs::write(&file, lines.join("\n\n")).unwrap();
    let model_dir = common::fixtures().join("tiny_llama").join("model");
    let s = |p: &Path| p.display().to_string();
    let out = hubel(&[
        "--data-dir",
        &s(&data),
        "scan",
        "--model",
        &s(&model_dir),
        "--corpus",
        &s(&file),
        "--limit",
        "20",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("scanned 20 stimuli"), "{stdout}");
    let out = hubel(&["--data-dir", &s(&data), "top", "L0N3", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<scan::ExampleView> = serde_json::from_slice(&out.stdout).unwrap();
    // The same scan in the library.
    let model = Model::open(&model_dir).unwrap();
    let corpus = Corpus::text(&file).unwrap();
    let index = scan(&model, &corpus, ScanConfig::default(), None, Some(20));
    let want = index.examples(&FeatureId::neuron(0, 3), false, 10).unwrap();
    assert_eq!(got, want);
    assert!(!got.is_empty() && got.windows(2).all(|w| w[0].activation >= w[1].activation));
    for e in &got {
        assert!(e.pos > 0 && e.pos < e.tokens.len());
        assert!(e.source.starts_with("corpus.txt:"));
    }
    // --lowest: lowest first.
    let out = hubel(&[
        "--data-dir",
        &s(&data),
        "top",
        "L0N3",
        "--json",
        "--lowest",
        "--k",
        "3",
    ]);
    let low: Vec<scan::ExampleView> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        low,
        index.examples(&FeatureId::neuron(0, 3), true, 3).unwrap()
    );
    // A feature the model lacks is a message.
    let out = hubel(&["--data-dir", &s(&data), "top", "L9N3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("layers"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dictionary scanned with the neurons and heads: its features' statistics match brute force
/// over its codes of each window run alone, the index keeps them through a save and load, names
/// the dictionary, answers `L1D3` summaries, and refuses to resume with another dictionary.
#[test]
fn a_dictionarys_features_are_scanned_like_neurons() {
    use hubel::features::dictionary::Normaliser;
    let model = tiny();
    let corpus = Corpus::from_texts("t", TEXTS);
    let cfg = config();
    let d = model.config().d_model;
    let layer = 1;
    let hook = HookPoint::block(layer, BlockSite::ResidPost);
    let make = |seed| common::tied_topk(hook, d, 12, 3, seed, Normaliser::identity(d));
    let dictionary = std::sync::Arc::new(make(5));
    let dir = tmp("dict");
    let out = dir.join("d.scan.safetensors");
    let opts = ScanOptions {
        config: cfg.clone(),
        out: Some(out.clone()),
        dictionary: Some(dictionary.clone()),
        ..ScanOptions::default()
    };
    let index = scan::run(&model, &corpus, &opts, None).unwrap();
    let meta = index
        .meta
        .dictionary
        .clone()
        .expect("the dictionary is named");
    assert_eq!(meta.layers, vec![layer]);
    assert_eq!(meta.atoms, 12);
    assert_eq!(meta.sha256, dictionary.sha256());
    // Brute force: each window alone, its codes at layer 1 (one "layer" of 12 units).
    let windows = scan::windows(&model, &corpus, usize::MAX, &cfg).unwrap();
    let mut ws = Vec::new();
    let mut codes = Vec::new();
    for (_, _, tokens) in windows {
        let out = model.run(&tokens, &Capture::points([hook]), &[]).unwrap();
        let x = &out.record.get(hook).unwrap().data;
        codes.push(vec![dictionary.dense_codes(0, x, true)]);
        ws.push(tokens);
    }
    assert!(codes.iter().any(|c| c[0].iter().any(|&v| v > 0.0)));
    check_layers(&index, &index.dictionary, 12, &ws, &codes, 1, "dictionary");
    // The neurons are still scanned as without a dictionary.
    let plain = scan(&model, &corpus, cfg.clone(), None, None);
    assert_eq!(plain.neurons, index.neurons);
    assert!(plain.meta.dictionary.is_none() && plain.dictionary.is_empty());
    // Saved and loaded whole; a summary of a feature by its name.
    let loaded = ScanIndex::load(&out).unwrap();
    assert_eq!(loaded, index);
    let f = FeatureId::parse("L1D3").unwrap();
    let s = loaded.summary(&f, 4).unwrap();
    assert_eq!(s.top[0].activation, loaded.dictionary[0].top(3)[0].act);
    assert!(
        loaded.summary(&FeatureId::atom(0, 3), 4).is_err(),
        "layer 0 is not read"
    );
    assert!(
        loaded.summary(&FeatureId::atom(1, 12), 4).is_err(),
        "12 atoms"
    );
    assert!(plain
        .summary(&f, 4)
        .unwrap_err()
        .contains("neurons and heads only"));
    // Resuming into the same file with another dictionary is refused.
    let other = ScanOptions {
        dictionary: Some(std::sync::Arc::new(make(6))),
        ..opts
    };
    match scan::run(&model, &corpus, &other, None) {
        Err(ScanError::Mismatch { what, .. }) => assert!(what.contains("dictionary"), "{what}"),
        r => panic!("expected a mismatch, got {:?}", r.map(|i| i.meta)),
    }
    assert_eq!(
        hubel::scan::index::with_dictionary(&out, &meta.sha256)
            .file_name()
            .unwrap()
            .to_string_lossy(),
        format!("d.dict-{}.scan.safetensors", &meta.sha256[..12])
    );
}
