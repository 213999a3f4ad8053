//! Dictionaries on tiny random models: each figure checked against a direct computation that
//! does not go through the dictionary code's batching (one `Model::run` per window, sums by hand).

use hubel::features::dictionary::{
    self, collect, decompose, edit, eval, fista, io, linalg, pursuit, Activations, DictConfig,
    Dictionary, Encoding, Method, Normaliser, Split, TrainOptions, TrainPoint,
};
use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention, Op};
use hubel::model::config::Arch;
use hubel::model::random::{random_model, tiny_config};
use hubel::model::Model;
use hubel::scan::Corpus;

const HOOK: HookPoint = HookPoint::Block {
    layer: 1,
    site: BlockSite::ResidPost,
};

fn model() -> Model {
    random_model(&tiny_config(Arch::Llama), 7).unwrap().0
}

fn corpus() -> Corpus {
    let words = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "turn left at the corner",
        "she left the room early",
        "apples and pears are fruit",
        "the bank of the river",
        "money in the bank",
        "one two three four five",
    ];
    let texts: Vec<String> = (0..120)
        .map(|i| {
            format!(
                "{} {}",
                words[i % words.len()],
                words[(i * 3 + 1) % words.len()]
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Corpus::from_texts("tiny", &refs)
}

fn no_progress() -> impl FnMut(&TrainPoint, &Dictionary) -> Result<(), dictionary::DictError> {
    |_, _| Ok(())
}

fn finite(v: f64, what: &str) -> f64 {
    assert!(v.is_finite(), "{what} is {v}");
    v
}

fn collect_rows(model: &Model, tokens: usize) -> Activations {
    collect(model, &corpus(), &[HOOK], tokens, None).unwrap()
}

#[test]
fn collection_skips_position_zero_and_matches_single_runs() {
    let model = model();
    let acts = collect_rows(&model, 300);
    assert_eq!(acts.len(), 300);
    assert!(
        acts.rows.iter().all(|&(_, p)| p >= 1),
        "position 0 is left out"
    );
    // Row i is window w at position p: the same values as that window run alone.
    for i in [0, 17, 299] {
        let (w, p) = acts.rows[i];
        let out = model
            .run(&acts.windows[w as usize], &Capture::points([HOOK]), &[])
            .unwrap();
        let want = out.record.get(HOOK).unwrap().row(p as usize);
        assert_eq!(acts.row(0, i), want, "row {i}");
    }
}

#[test]
fn fista_recovers_a_planted_sparse_code() {
    // 24 random unit atoms in 64 dimensions (nearly orthogonal, linearly independent): x built
    // from two of them has exactly one least-squares code, which FISTA reaches with a small λ.
    let (m, d) = (24, 64);
    let w = dictionary::random_atoms(m, d, 3);
    let mut x = vec![0f32; d];
    linalg::axpy(3.0, &w[5 * d..6 * d], &mut x);
    linalg::axpy(1.5, &w[17 * d..18 * d], &mut x);
    let code = &fista::codes(&w, d, &x, 1e-3, 500)[0];
    let get = |j: u32| code.iter().find(|c| c.0 == j).map_or(0.0, |c| c.1);
    assert!((get(5) - 3.0).abs() < 0.01, "{code:?}");
    assert!((get(17) - 1.5).abs() < 0.01, "{code:?}");
    let rest: f32 = code
        .iter()
        .filter(|c| c.0 != 5 && c.0 != 17)
        .map(|c| c.1)
        .sum();
    assert!(rest < 0.02, "other atoms carry {rest}: {code:?}");
}

fn check_training(method: Method, atoms: usize) -> (Dictionary, Vec<TrainPoint>, Activations) {
    let epochs = if method == Method::Fista { 6 } else { 40 };
    train_for(method, atoms, epochs)
}

fn train_for(
    method: Method,
    atoms: usize,
    epochs: usize,
) -> (Dictionary, Vec<TrainPoint>, Activations) {
    let model = model();
    let acts = collect_rows(&model, 1500);
    let mut opts = TrainOptions::new(method, atoms);
    opts.k = 4;
    opts.epochs = epochs;
    opts.batch = 128;
    opts.lambda = 0.5;
    let mut points = Vec::new();
    let mut on_point = |p: &TrainPoint, _: &Dictionary| {
        assert!(p.fvu.is_finite() && p.l0.is_finite(), "{p:?}");
        points.push(*p);
        Ok(())
    };
    let mut dict = dictionary::train(&acts, &opts, &mut on_point).unwrap();
    assert!(!points.is_empty(), "no progress was reported");
    decompose::describe(&mut dict, &acts, &model);
    assert_eq!(dict.info.len(), dict.atoms());
    (dict, points, acts)
}

#[test]
fn topk_training_reduces_the_error_and_keeps_k_active() {
    let (dict, points, acts) = check_training(Method::Topk, 64);
    let (_, short, _) = train_for(Method::Topk, 64, 1);
    let (first, last) = (*short.last().unwrap(), *points.last().unwrap());
    assert!(
        last.fvu < 0.8 * first.fvu,
        "fvu after 1 epoch {}, after 40 {}",
        first.fvu,
        last.fvu
    );
    assert!(last.l0 <= 4.0 + 1e-6, "l0 {}", last.l0);
    // The decoder's atoms are unit vectors.
    for j in 0..dict.atoms() {
        let n = linalg::norm2(dict.atom(j)).sqrt();
        assert!((n - 1.0).abs() < 1e-4, "atom {j} has norm {n}");
    }
    // Codes of the training rows use at most k atoms.
    let codes = dict.encode(0, &acts.data[0][..50 * acts.d]);
    assert!(codes.iter().all(|c| c.len() <= 4));
    // The atoms' labels come from real tokens of the corpus.
    let labelled = dict.info.iter().filter(|i| !i.label.is_empty()).count();
    assert!(labelled > dict.atoms() / 2, "{labelled} labelled atoms");
}

#[test]
fn fista_training_reduces_the_error() {
    let (_, points, _) = check_training(Method::Fista, 48);
    let (_, short, _) = train_for(Method::Fista, 48, 1);
    let (first, last) = (*short.last().unwrap(), *points.last().unwrap());
    assert!(
        last.fvu < first.fvu,
        "fvu after 1 epoch {}, after 6 {}",
        first.fvu,
        last.fvu
    );
    assert!(last.l0 > 0.0 && last.l0 < 48.0, "l0 {}", last.l0);
}

#[test]
fn itda_atoms_are_real_activations() {
    let (dict, points, acts) = check_training(Method::Itda, 40);
    assert!(dict.atoms() > 1 && dict.atoms() <= 40);
    assert!(points.last().unwrap().fvu < 1.0);
    // Every atom is its source row, normalised (in the dictionary's normalised space).
    for (j, info) in dict.info.iter().enumerate() {
        assert!(info.source.is_some(), "atom {j} has no source token");
    }
    let norm = &dict.norms[0];
    let mut hits = 0;
    for j in 0..dict.atoms() {
        // Find the row equal to this atom up to scale.
        let atom = dict.atom(j);
        let best = (0..acts.len())
            .map(|i| {
                let mut r = norm.apply_rows(acts.row(0, i));
                linalg::normalise(&mut r);
                linalg::dot(&r, atom)
            })
            .fold(f32::MIN, f32::max);
        if best > 0.9999 {
            hits += 1;
        }
    }
    assert_eq!(hits, dict.atoms(), "every atom is a training row");
}

/// FVU, L0, dead fraction and ce_recovered, recomputed window by window with `Model::run`.
#[test]
fn evaluation_matches_a_direct_computation() {
    let model = model();
    let (dict, _, _) = check_training(Method::Topk, 64);
    let corpus = corpus();
    let windows =
        eval::heldout_windows(&model, &corpus, 200, dict.config.split, dict.config.stimuli)
            .unwrap();
    let report = eval::evaluate(&model, &dict, &windows, None).unwrap();
    let d = dict.d();
    let (mut err, mut xs, mut active, mut rows) = (0f64, Vec::<f32>::new(), 0usize, 0usize);
    let mut used = vec![false; dict.atoms()];
    let (mut clean, mut spliced, mut ablated, mut predicted) = (0f64, 0f64, 0f64, 0usize);
    let nll = |logits: &[f32], vocab: usize, w: &[u32]| -> f64 {
        // −log p(w[p+1] | ..p) for p ≥ 1, by hand.
        (1..w.len() - 1)
            .map(|p| {
                let row = &logits[p * vocab..(p + 1) * vocab];
                let max = row.iter().cloned().fold(f32::MIN, f32::max);
                let z: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
                -(f64::from(row[w[p + 1] as usize] - max) - z.ln())
            })
            .sum()
    };
    for w in &windows {
        let out = model.run(w, &Capture::points([HOOK]), &[]).unwrap();
        clean += nll(&out.logits, out.vocab, w);
        let act = out.record.get(HOOK).unwrap();
        let mut splice = Vec::new();
        for p in 1..w.len() {
            let x = act.row(p);
            let code = &dict.encode(0, x)[0];
            let xhat = dict.decode(0, code);
            err += x
                .iter()
                .zip(&xhat)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>();
            xs.extend_from_slice(x);
            active += code.len();
            rows += 1;
            code.iter().for_each(|c| used[c.0 as usize] = true);
            splice.push(Intervention {
                hook: HOOK,
                positions: Some(vec![p]),
                indices: None,
                op: Op::MeanOf { values: xhat },
            });
        }
        let s = model.run(w, &Capture::Nothing, &splice).unwrap();
        spliced += nll(&s.logits, s.vocab, w);
        let mean = Intervention {
            hook: HOOK,
            positions: Some((1..w.len()).collect()),
            indices: None,
            op: Op::MeanOf {
                values: dict.norms[0].shift.clone(),
            },
        };
        let a = model.run(w, &Capture::Nothing, &[mean]).unwrap();
        ablated += nll(&a.logits, a.vocab, w);
        predicted += w.len() - 2;
    }
    let mut mean = vec![0f64; d];
    for r in xs.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += f64::from(v) / rows as f64;
        }
    }
    let tot: f64 = xs
        .chunks_exact(d)
        .map(|r| {
            r.iter()
                .zip(&mean)
                .map(|(&v, m)| (f64::from(v) - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    let p = predicted as f64;
    let (clean, spliced, ablated) = (clean / p, spliced / p, ablated / p);
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (finite(a, what) - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        );
    };
    assert_eq!(report.tokens, rows);
    close(report.fvu, err / tot, "fvu");
    close(report.l0, active as f64 / rows as f64, "l0");
    close(
        report.dead_frac,
        used.iter().filter(|&&u| !u).count() as f64 / used.len() as f64,
        "dead_frac",
    );
    close(report.nll_clean, clean, "clean loss");
    close(report.nll_spliced, spliced, "spliced loss");
    close(report.nll_mean_ablated, ablated, "mean-ablated loss");
    close(
        report.ce_recovered,
        (ablated - spliced) / (ablated - clean),
        "ce_recovered",
    );
    assert!(report.fvu > 0.0 && report.fvu < 1.0, "{report:?}");
}

#[test]
fn heldout_text_never_overlaps_training() {
    let model = model();
    let c = corpus();
    let n = c.stimuli.len();
    let held: Vec<usize> = (0..n).filter(|&i| collect::is_heldout(i)).collect();
    assert_eq!(held.len(), n / collect::HELDOUT_EVERY);
    // Training reads every other stimulus and none of the held-out ones.
    let all = collect(&model, &c, &[HOOK], 100_000, None).unwrap();
    let mut read: Vec<u32> = all.stimulus.clone();
    read.sort_unstable();
    read.dedup();
    assert_eq!(read.len() + held.len(), n);
    assert!(held
        .iter()
        .all(|&i| read.binary_search(&(i as u32)).is_err()));
    assert_eq!(all.stimuli(), read.len());
    // A small budget draws from the whole corpus, not its first stimuli.
    let few = collect(&model, &c, &[HOOK], 150, None).unwrap();
    assert!(few.stimuli() < n / 4, "{} stimuli", few.stimuli());
    assert!(few.stimulus.iter().any(|&s| (s as usize) < n / 2));
    assert!(few.stimulus.iter().any(|&s| (s as usize) >= n / 2));
    // Held-out windows are the held-out stimuli's tokens, each once.
    let mut got = eval::heldout_windows(&model, &c, 100_000, Split::Spread, 0).unwrap();
    let mut want: Vec<Vec<u32>> = held
        .iter()
        .map(|&i| model.tokenizer().encode_ids(&c.stimuli[i].text).unwrap())
        .collect();
    assert!(want
        .iter()
        .all(|w| w.len() >= 3 && w.len() <= collect::WINDOW));
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // A budget stops early.
    let one = eval::heldout_windows(&model, &c, 1, Split::Spread, 0).unwrap();
    assert_eq!(one.len(), 1);

    // Dictionaries saved before the spread split were trained on the first `stimuli`: their
    // held-out text is read from the end, never one of those.
    let err = eval::heldout_windows(&model, &c, 100_000, Split::Head, n).unwrap_err();
    assert!(err.to_string().contains("no held-out text"), "{err}");
    let tail = eval::heldout_windows(&model, &c, 100_000, Split::Head, n - 7).unwrap();
    let want: Vec<Vec<u32>> = (n - 7..n)
        .rev()
        .map(|i| model.tokenizer().encode_ids(&c.stimuli[i].text).unwrap())
        .collect();
    assert_eq!(tail, want);
    // Too few stimuli for a held-out one: said so.
    let small = Corpus::from_texts("small", &["one two three four", "five six seven eight"]);
    let err = eval::heldout_windows(&model, &small, 100, Split::Spread, 0).unwrap_err();
    assert!(err.to_string().contains("every 20th"), "{err}");
    // A config written before the split (and before encodings) reads as the old split.
    let mut json = serde_json::to_value(DictConfig::new(Method::Topk, vec![HOOK], 8, 4)).unwrap();
    assert_eq!(json["split"], "spread");
    assert!(
        json.get("encoding").is_none(),
        "a native encoding is not written"
    );
    json.as_object_mut().unwrap().remove("split");
    let old: DictConfig = serde_json::from_value(json).unwrap();
    assert_eq!((old.split, old.encoding), (Split::Head, Encoding::Native));
}

#[test]
fn pursuit_recovers_a_planted_sparse_code() {
    // 48 random unit atoms in 64 dimensions: x made of three of them is found exactly, and a
    // larger k adds nothing once x is explained.
    let (m, d) = (48, 64);
    let w = dictionary::random_atoms(m, d, 3);
    let mut x = vec![0f32; d];
    for (j, v) in [(5, 3.0), (17, 1.5), (30, 0.8)] {
        linalg::axpy(v, &w[j * d..(j + 1) * d], &mut x);
    }
    for k in [3, 10] {
        let mut code = pursuit::codes(&w, d, &x, k).remove(0);
        code.sort_by_key(|c| c.0);
        assert_eq!(
            code.iter().map(|c| c.0).collect::<Vec<_>>(),
            [5, 17, 30],
            "k {k}"
        );
        for (&(_, got), want) in code.iter().zip([3.0, 1.5, 0.8]) {
            assert!((got - want).abs() < 1e-4, "k {k}: {code:?}");
        }
    }
    // A negative part is left out: non-negative codes.
    linalg::axpy(-2.0, &w[9 * d..10 * d], &mut x);
    let code = pursuit::codes(&w, d, &x, 4).remove(0);
    assert!(code.iter().all(|&(j, v)| v > 0.0 && j != 9), "{code:?}");
}

#[test]
fn pursuit_codes_are_least_squares_on_their_atoms() {
    // Any row, an overcomplete dictionary: at most k atoms, every coefficient positive and
    // optimal given the others (the residual is orthogonal to each chosen atom), and the
    // residual no larger than the best single atom's.
    let (m, d, k) = (40, 16, 6);
    let w = dictionary::random_atoms(m, d, 11);
    let x: Vec<f32> = (0..3 * d).map(|i| (i as f32 * 0.731).sin() * 2.0).collect();
    for (r, code) in pursuit::codes(&w, d, &x, k).iter().enumerate() {
        let xr = &x[r * d..(r + 1) * d];
        assert!(!code.is_empty() && code.len() <= k, "{code:?}");
        let mut res = xr.to_vec();
        for &(j, v) in code {
            assert!(v > 0.0 && v.is_finite());
            linalg::axpy(-v, &w[j as usize * d..(j as usize + 1) * d], &mut res);
        }
        for &(j, _) in code {
            let corr = linalg::dot(&res, &w[j as usize * d..(j as usize + 1) * d]);
            assert!(
                corr.abs() < 1e-3,
                "row {r}, atom {j}: residual · atom = {corr}"
            );
        }
        let best_single = (0..m)
            .map(|j| linalg::dot(xr, &w[j * d..(j + 1) * d]).max(0.0))
            .fold(0f32, f32::max);
        let single = linalg::norm2(xr) - best_single * best_single;
        assert!(linalg::norm2(&res) <= single + 1e-4, "row {r}");
    }
}

#[test]
fn a_topk_dictionary_coded_by_pursuit() {
    let model = model();
    let (dict, _, acts) = check_training(Method::Topk, 64);
    let pursued = dict.clone().with_encoding(Encoding::Pursuit).unwrap();
    assert_ne!(
        dict.sha256(),
        pursued.sha256(),
        "scans keyed by the hash see the change"
    );
    // The Gram matrix is made by the first encode and kept; atoms changed afterwards get a new
    // one from with_encoding (the codes are those of a Gram matrix made from the new atoms).
    let rows = &acts.data[0][..40 * dict.d()];
    assert!(!pursued.gram.is_made());
    let first = pursued.encode(0, rows);
    assert!(pursued.gram.is_made());
    assert_eq!(pursued.encode(0, rows), first);
    let mut moved = pursued.clone();
    moved.w_dec.swap(0, dict.d() + 1);
    let moved = moved.with_encoding(Encoding::Pursuit).unwrap();
    let xn = moved.norms[0].apply_rows(rows);
    let centred: Vec<f32> = xn
        .chunks_exact(dict.d())
        .flat_map(|r| r.iter().zip(&moved.b_dec).map(|(v, b)| v - b))
        .collect();
    assert_eq!(
        moved.encode(0, rows),
        pursuit::codes(&moved.w_dec, dict.d(), &centred, dict.config.k)
    );
    assert_ne!(moved.encode(0, rows), first);
    // Same atoms; codes of at most k atoms that reconstruct the training rows better.
    let x = &acts.data[0];
    let d = dict.d();
    let (mut err_native, mut err_pursuit) = (0f64, 0f64);
    for (codes, err) in [
        (dict.encode(0, x), &mut err_native),
        (pursued.encode(0, x), &mut err_pursuit),
    ] {
        for (i, code) in codes.iter().enumerate() {
            assert!(code.len() <= dict.config.k);
            let xh = dict.decode(0, code);
            *err += x[i * d..(i + 1) * d]
                .iter()
                .zip(&xh)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>();
        }
    }
    assert!(
        finite(err_pursuit, "pursuit error") < finite(err_native, "encoder error"),
        "pursuit {err_pursuit}, encoder {err_native}"
    );
    // Saved and loaded with its encoding; evaluated with it.
    let dir = std::env::temp_dir().join(format!("hubel-pursuit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("d.safetensors");
    io::save(&pursued, &path).unwrap();
    assert_eq!(
        io::load(&path).unwrap(),
        pursued,
        "the encoding and its Gram matrix"
    );
    let windows = eval::heldout_windows(&model, &corpus(), 200, Split::Spread, 0).unwrap();
    let native = eval::evaluate(&model, &dict, &windows, None).unwrap();
    let report = eval::evaluate(&model, &pursued, &windows, None).unwrap();
    assert!(
        report.l0 <= dict.config.k as f64 && report.l0 > 0.0,
        "{report:?}"
    );
    assert!(
        report.fvu < native.fvu,
        "pursuit {report:?}, encoder {native:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Pursuit needs k and a Gram matrix it can hold.
    let (fista, _, _) = check_training(Method::Fista, 16);
    let err = fista.with_encoding(Encoding::Pursuit).unwrap_err();
    assert!(err.to_string().contains("λ"), "{err}");
    let mut opts = TrainOptions::new(Method::Fista, 16);
    opts.encoding = Encoding::Pursuit;
    let err = dictionary::train(&acts, &opts, &mut no_progress()).unwrap_err();
    assert!(err.to_string().contains("pursuit"), "{err}");
}

#[test]
fn save_load_and_saelens_round_trips() {
    let model = model();
    let (dict, _, acts) = check_training(Method::Topk, 64);
    let dir = std::env::temp_dir().join(format!("hubel-dict-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("d.safetensors");
    io::save(&dict, &path).unwrap();
    let back = io::load(&path).unwrap();
    assert_eq!(
        back,
        Dictionary {
            sources: Vec::new(),
            ..dict.clone()
        }
    );

    // SAELens: the normalisation folded into the weights; codes on raw rows are ours.
    let sae = dir.join("sae");
    io::export_saelens(&dict, &sae).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sae.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["hook_name"], "blocks.1.hook_resid_post");
    assert_eq!(cfg["d_sae"], 64);
    assert_eq!(cfg["architecture"], "topk");
    let imported = io::load(&sae).unwrap();
    assert_eq!(imported.norms[0], Normaliser::identity(dict.d()));
    let x = &acts.data[0][..20 * acts.d];
    let (ours, theirs) = (dict.encode(0, x), imported.encode(0, x));
    for (a, b) in ours.iter().zip(&theirs) {
        let ja: Vec<u32> = a.iter().map(|c| c.0).collect();
        let jb: Vec<u32> = b.iter().map(|c| c.0).collect();
        assert_eq!(ja, jb);
        for (ca, cb) in a.iter().zip(b) {
            assert!(
                (ca.1 - cb.1).abs() < 1e-3 * ca.1.abs().max(1.0),
                "{ca:?} {cb:?}"
            );
        }
        let (ra, rb) = (dict.decode(0, a), imported.decode(0, b));
        for (u, v) in ra.iter().zip(&rb) {
            assert!((u - v).abs() < 1e-3 * u.abs().max(1.0), "{u} {v}");
        }
    }
    // And back into our format, through the CLI's import path (labels from the corpus).
    let mut re = io::import_saelens(&sae).unwrap();
    let acts2 = collect(&model, &corpus(), &re.config.hooks, 300, None).unwrap();
    decompose::describe(&mut re, &acts2, &model);
    io::save(&re, &dir.join("re.safetensors")).unwrap();
    assert_eq!(
        io::load(&dir.join("re.safetensors")).unwrap().info.len(),
        64
    );

    // Damaged files are refused with a message, never a panic.
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = io::load(&path).unwrap_err().to_string();
    assert!(err.contains("not a usable dictionary"), "{err}");
    // FISTA dictionaries have no encoder: SAELens cannot hold them.
    let (fista_dict, _, _) = check_training(Method::Fista, 16);
    let err = io::export_saelens(&fista_dict, &dir.join("f")).unwrap_err();
    assert!(err.to_string().contains("no encoder"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ablating_an_atom_changes_the_residual_by_its_code_times_its_atom() {
    let model = model();
    let (dict, _, _) = check_training(Method::Topk, 64);
    let tokens = model
        .tokenizer()
        .encode_ids("turn left at the bank")
        .unwrap();
    let clean = model.run(&tokens, &Capture::points([HOOK]), &[]).unwrap();
    let x = clean.record.get(HOOK).unwrap().data.clone();
    let d = dict.d();
    // The atom most active at the last position.
    let last = tokens.len() - 1;
    let code = &dict.encode(0, &x[last * d..(last + 1) * d])[0];
    let (atom, a) = code[0];
    let iv = edit::intervention(&dict, 0, atom as usize, &x, edit::Edit::Ablate)
        .unwrap()
        .expect("the atom is active");
    let out = model.run(&tokens, &Capture::points([HOOK]), &[iv]).unwrap();
    let y = &out.record.get(HOOK).unwrap().data;
    let dir = dict.atom_direction(0, atom as usize);
    for i in 0..d {
        let want = x[last * d + i] - a * dir[i];
        assert!(
            (y[last * d + i] - want).abs() <= 1e-5 * want.abs().max(1.0),
            "dimension {i}: {} vs {want}",
            y[last * d + i]
        );
    }
    // Position 0 and positions where the atom is silent are untouched.
    assert_eq!(&y[..d], &x[..d]);
    let codes = dict.encode(0, &x[d..]);
    let mut silent = 0;
    for (i, c) in codes.iter().enumerate() {
        if !c.iter().any(|e| e.0 == atom) {
            let p = i + 1;
            assert_eq!(
                &y[p * d..(p + 1) * d],
                &x[p * d..(p + 1) * d],
                "position {p}"
            );
            silent += 1;
        }
    }
    assert!(
        silent > 0,
        "the test needs a position where the atom is silent"
    );
    // The atom's coefficient is gone; the others keep theirs.
    let after = &dict.encode(0, &y[last * d..(last + 1) * d])[0];
    let get = |c: &linalg::Code, j: u32| c.iter().find(|e| e.0 == j).map_or(0.0, |e| e.1);
    assert!(get(after, atom) < 0.05 * a, "{a} → {}", get(after, atom));
    // The output changes.
    assert_ne!(out.logits, clean.logits);
    let err = edit::intervention(&dict, 0, 64, &x, edit::Edit::Ablate).unwrap_err();
    assert!(err.to_string().contains("64 atoms"), "{err}");
}

#[test]
fn decompose_returns_planted_atoms() {
    let model = model();
    let hook = HookPoint::Embed;
    let d = model.info().d_model;
    // The word's embedding, and a dictionary in which it is 0.5·v plus a multiple of u.
    let ids = model.tokenizer().encode_ids("q").unwrap();
    let x = model.run(&ids, &Capture::points([hook]), &[]).unwrap();
    let x = x.record.get(hook).unwrap().row(0).to_vec();
    let mut w = dictionary::random_atoms(12, d, 9);
    let v = w[3 * d..4 * d].to_vec();
    let mut u = x.clone();
    linalg::axpy(-0.5, &v, &mut u);
    let cu = linalg::norm2(&u).sqrt();
    linalg::normalise(&mut u);
    w[7 * d..8 * d].copy_from_slice(&u);
    let dict = Dictionary {
        config: DictConfig {
            lambda: 1e-4,
            ..DictConfig::new(Method::Fista, vec![hook], d, 12)
        },
        norms: vec![Normaliser::identity(d)],
        w_dec: w,
        b_dec: vec![0.0; d],
        w_enc: Vec::new(),
        b_enc: Vec::new(),
        threshold: Vec::new(),
        info: Vec::new(),
        sources: Vec::new(),
        gram: Default::default(),
    };
    let out = decompose::decompose(&model, &dict, "q", None, hook, 5).unwrap();
    assert_eq!(out.token, "q");
    let get = |j: usize| {
        out.parts
            .iter()
            .find(|p| p.atom == j)
            .map_or(0.0, |p| p.coef)
    };
    assert_eq!(
        out.parts[0].atom,
        if cu > 0.5 { 7 } else { 3 },
        "{:?}",
        out.parts
    );
    assert!(
        (get(7) - cu).abs() < 0.02 * cu,
        "{:?} (want {cu})",
        out.parts
    );
    assert!((get(3) - 0.5).abs() < 0.02, "{:?}", out.parts);
    assert!(out.residual_fraction < 1e-3, "{}", out.residual_fraction);
    assert_eq!(out.parts[0].feature, format!("D{}", out.parts[0].atom));
    // In a context the word must be there; a layer the dictionary does not read is refused.
    let err = decompose::decompose(&model, &dict, "q", Some("no such word"), hook, 5).unwrap_err();
    assert!(err.to_string().contains("does not contain"), "{err}");
    let err = decompose::hook_for(&dict, Some(2)).unwrap_err();
    assert!(err.to_string().contains("nothing in layer 2"), "{err}");
}

#[test]
fn bad_requests_get_messages() {
    let model = model();
    let err = dictionary::parse_layers("9", 3).unwrap_err();
    assert!(err.to_string().contains("layer 9 does not exist"), "{err}");
    assert!(dictionary::parse_layers("", 3).is_err());
    assert_eq!(
        dictionary::parse_layers("embed, 1", 3).unwrap(),
        vec![HookPoint::Embed, HOOK]
    );
    let err = collect(
        &model,
        &corpus(),
        &[HookPoint::block(1, BlockSite::MlpPost)],
        10,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a residual stream"), "{err}");
    let acts = collect_rows(&model, 50);
    let mut two = acts.clone();
    two.hooks.push(HookPoint::Embed);
    two.data.push(two.data[0].clone());
    let err = dictionary::train(
        &two,
        &TrainOptions::new(Method::Topk, 8),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--method fista"), "{err}");
    let err = dictionary::train(
        &acts,
        &TrainOptions::new(Method::Topk, 0),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--atoms"), "{err}");
    // A cancelled training stops with Cancelled.
    let err = dictionary::train(&acts, &TrainOptions::new(Method::Topk, 8), &mut |_, _| {
        Err(dictionary::DictError::Cancelled)
    })
    .unwrap_err();
    assert!(matches!(err, dictionary::DictError::Cancelled));
}
